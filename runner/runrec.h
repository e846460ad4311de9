/* runrec.h: reading and summarising run records (runs/<recipe>/<UTC time>/).
 *
 * A run record holds recipe.yaml (resolved), events.jsonl (one JSON object per event), the
 * stage logs and, written at the end of the run, summary.json:
 *   {"format": "qlora-run-summary", "version": 1, "recipe", "run", "time", "ok", "code",
 *    "error", "seconds", "device", "program_version",
 *    "stages": {NAME: {"kind", "key", "status": ran|cached|failed|not run|not selected, "seconds",
 *                      "metrics", "report" (the manifest's tables, when under 256 KiB)}},
 *    "gates": [gate rows, see gates.h]}
 * A record without summary.json (an older program, or a run that was killed) is summarised
 * from its events.jsonl instead, so history and gates see every run that ended.
 * Every function returns new references; NULL when the record cannot be read. */
#ifndef RUNNER_RUNREC_H
#define RUNNER_RUNREC_H

#include <jansson.h>
#include <stdbool.h>

#define RUNREC_SUMMARY_VERSION 1

/* The runs root of a recipe: its runs_dir, else $QLORA_RUNS, else ./runs (malloc'd). */
char *runrec_base(const char *runs_dir);
/* The summary of one run record (summary.json, or rebuilt from events.jsonl). */
json_t *runrec_summary(const char *run_dir);
/* Summaries of the runs in recipe_dir (runs/<recipe>), oldest first, at most `max` (the
 * newest ones), leaving out `exclude` (a run directory's name) when not NULL. Each gets
 * "run": its directory name and "dir": its path. */
json_t *runrec_history(const char *recipe_dir, const char *exclude, int max);
/* The value of STAGE.METRIC in the newest successful run of history; false if none has it. */
bool runrec_last_ok_value(const json_t *history, const char *stage, const char *metric, double *value,
                          const char **run);
/* The run directory named by a command-line argument: a path to a record, or a recipe's name
 * under runs_base (its newest run), or NULL: the newest run of any recipe. malloc'd. */
char *runrec_resolve(const char *runs_base, const char *arg);
/* Write summary.json atomically. */
int runrec_write_summary(const char *run_dir, const json_t *summary);

#endif
