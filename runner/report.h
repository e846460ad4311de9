/* report.h: a run's report.html, one self-contained page (inline CSS and SVG; no script, no
 * font or image from the network) that a person opens in the morning, on a phone too:
 * status and gates, plots over training steps (loss with val loss, learning rate, gradient
 * norm, tokens/s), the stage timeline (ran / cached, durations), the evaluate table (base vs
 * tuned) and sample generations, the history of the recipe's earlier runs (metric trends),
 * the resolved recipe and the environment.
 *
 * Everything comes from the run record (summary.json or events.jsonl, recipe.yaml) and the
 * records of the same recipe's other runs: `qlora-run report RUN` rebuilds it at any time.
 * When training was cached in this run, the step plots come from the newest earlier run
 * that trained the same artifact (same cache key). */
#ifndef RUNNER_REPORT_H
#define RUNNER_REPORT_H

/* Write <run_dir>/report.html atomically; 0 or an ERR_* code with a message. */
int report_write(const char *run_dir);

#endif
