/* ranks.h: the runner's side of data-parallel runs (docs/multi-gpu.md).
 *
 * Every rank runs the whole runner over the same recipe and the same shared cache. A stage whose
 * kind is data_parallel (train) runs on every rank together; any other runs once, on rank 0, and
 * the other ranks wait for it at an agreement (core/collective.h) and then read its artifact from
 * the cache. Rank 0 alone takes --lock, writes the run record and events, and prints; the others
 * write their own stage logs (<stage>.rank<N>.log) and stay quiet, ending with rank 0's code. */
#ifndef RUNNER_RANKS_H
#define RUNNER_RANKS_H

#include "runner/recipe.h"

/* Join the launcher's world (coll_init); ranks other than 0 are quiet from here on. */
int ranks_start(void);
/* At start: every rank loaded the same resolved recipe with the same program. load_rc is this
 * rank's recipe_load result (r NULL when it failed). An agreement: returns the first failure. */
int ranks_check_same(const recipe *r, int load_rc);
/* The processes --gpus / gpus: asks for on this machine (want 0 = all GPUs): 1 means no spawn. */
int ranks_wanted(int want, int *n);
/* Start n ranks of this very command through mpirun, --gpus left out; returns only on failure. */
int ranks_spawn(int n, int argc, char **argv);

#endif
