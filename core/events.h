/* events.h: the run's event log. One JSON object per line in runs/<recipe>/<time>/events.jsonl,
 * each with "t" (UTC ISO-8601 with ms), "type" and the event's fields; with --json the same
 * lines go to stdout. Thread-safe. */
#ifndef CORE_EVENTS_H
#define CORE_EVENTS_H

#include <jansson.h>
#include <stdbool.h>

typedef struct events events;

int events_open(events **out, const char *path, bool to_stdout); /* path may be NULL */
void events_close(events **e);
/* steals ev (may be NULL: an event with only type and time) */
void events_emit(events *e, const char *type, json_t *ev);

#endif
