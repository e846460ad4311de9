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
/* Also hand every event (the whole object: "t", "type" and its fields) to fn, in the order they
 * are written, under the log's lock (another consumer, such as TensorBoard files). One tap. */
typedef void (*events_tap_fn)(void *ud, const char *type, const json_t *ev);
void events_set_tap(events *e, events_tap_fn fn, void *ud);

#endif
