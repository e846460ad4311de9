/* gates.h: checking a recipe's quality gates (`gates:`, parsed by recipe.c).
 *
 * A gate is checked as soon as its stage ends (ran or cached) against the metric in the
 * stage's manifest: `min` and `max` are absolute bounds; `max_regression: r` compares with
 * the same metric of the newest successful run of the recipe (its run records): for a metric
 * that is better lower the value may be at most previous + r*|previous|, for one better
 * higher at least previous - r*|previous|. No earlier successful run: that condition passes.
 * A metric the stage did not record fails its gate.
 *
 * A gate row (JSON, in events.jsonl, summary.json, the report and on_run_end's summary):
 *   {"gate": "eval.val_loss", "stage", "metric", "better": lower|higher|neither,
 *    "value": x|null, "min"?, "max"?, "max_regression"?, "previous"?, "previous_run"?,
 *    "bound"?: the regression bound, "result": "pass"|"fail"|"not checked", "why": text} */
#ifndef RUNNER_GATES_H
#define RUNNER_GATES_H

#include <jansson.h>
#include <stdbool.h>

#include "runner/recipe.h"

/* Check every gate on stage `stage` given its manifest; append one row per gate to rows.
 * Returns the number of gates that failed; *first_failure (malloc'd, may be NULL) says why. */
int gates_check_stage(const recipe *r, const char *stage, const json_t *manifest, const json_t *history,
                      json_t *rows, char **first_failure);
/* Rows for gates that never got checked (their stage did not finish). */
void gates_add_unchecked(const recipe *r, json_t *rows);
/* Whether any gate is on stage `stage`. */
bool gates_on_stage(const recipe *r, const char *stage);
/* "max 1.2, max_regression 2%" (malloc'd) */
char *gates_conditions_text(const recipe_gate *g);

#endif
