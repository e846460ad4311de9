/* outdir.h: a recipe's output_dir (or `--out` on the run command): where users find the exports
 * without the cache's hash paths. Each export stage's exports (adapter/, model/, model-*.gguf,
 * nf4/) are copied to OUTPUT_DIR/STAGE/ when the stage is complete (ran or cached), written under
 * a temp name and renamed into place. OUTPUT_DIR holds a marker, .qlora-run-output, naming the
 * recipe that writes there: a non-empty folder without it, or with another recipe's, is refused
 * before any stage runs, and nothing but the STAGE folders is ever replaced (a user's notes
 * beside them stay). A STAGE folder holding files an export did not write is refused too, by the
 * rules `qlora-run export --out` follows (export_check_out). */
#ifndef RUNNER_OUTDIR_H
#define RUNNER_OUTDIR_H

/* 0 when `dir` is missing, empty, or a previous output_dir of recipe `name`; ERR_USAGE saying
 * why not and what to do otherwise */
int outdir_check(const char *dir, const char *name);
/* 0 when dir/stage is missing or holds nothing but exports (export_check_out) */
int outdir_check_stage(const char *dir, const char *stage);
/* copy the exports of `artifact` (a stage's artifact directory) to dir/stage */
int outdir_publish(const char *dir, const char *name, const char *stage, const char *artifact);

#endif
