/* test_collective.c: core/collective in one process: which launcher's variables count as a
 * world, the agreement and the collectives on a world of one, and NCCL's clear failure when the
 * library is missing. The several-rank path runs in tests/test_data_parallel.sh (mpirun -np 2). */
#define _GNU_SOURCE
#include <stdlib.h>

#include "core/collective.h"
#include "core/err.h"
#include "test.h"

static void clear_env(void) {
    const char *vars[] = {"OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_SIZE", "PMI_RANK",
                          "SLURM_NTASKS", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS", "SLURM_LOCALID", "MASTER_PORT"};
    for (size_t i = 0; i < sizeof vars / sizeof vars[0]; i++) unsetenv(vars[i]);
}

TEST(env_world) {
    clear_env();
    CHECK_EQ_INT(coll_env_world(), 0);
    /* a batch script's own shell: SLURM_NTASKS without a step is one process */
    setenv("SLURM_NTASKS", "4", 1);
    setenv("SLURM_PROCID", "0", 1);
    CHECK_EQ_INT(coll_env_world(), 0);
    /* ... unless MASTER_PORT asks for the rendezvous of an srun without PMI */
    setenv("MASTER_PORT", "29500", 1);
    CHECK_EQ_INT(coll_env_world(), 4);
    unsetenv("MASTER_PORT");
    setenv("SLURM_STEP_NUM_TASKS", "4", 1);
    CHECK_EQ_INT(coll_env_world(), 4);
    setenv("OMPI_COMM_WORLD_SIZE", "3", 1); /* mpirun's variables come first */
    CHECK_EQ_INT(coll_env_world(), 3);
    setenv("OMPI_COMM_WORLD_SIZE", "x", 1);
    CHECK_EQ_INT(coll_env_world(), 0);
    clear_env();
    setenv("PMI_SIZE", "2", 1);
    CHECK_EQ_INT(coll_env_world(), 2);
    clear_env();
}

TEST(world_of_one) {
    clear_env();
    CHECK_EQ_INT(coll_init(), 0);
    CHECK_EQ_INT(coll_world(), 1);
    CHECK_EQ_INT(coll_rank(), 0);
    CHECK_EQ_INT(coll_local_rank(), 0);
    CHECK_EQ_STR(coll_launcher(), "single");
    float g[3] = {1, 2, 3};
    CHECK_EQ_INT(coll_allreduce_grads(g, 3), 0);
    CHECK(g[0] == 1 && g[1] == 2 && g[2] == 3);
    double d[2] = {0.5, 4};
    CHECK_EQ_INT(coll_allreduce_f64(d, 2), 0);
    CHECK(d[0] == 0.5 && d[1] == 4);
    char *s = strdup("x");
    CHECK_EQ_INT(coll_bcast_str(&s, 0), 0);
    CHECK_EQ_STR(s, "x");
    free(s);
}

/* world 1: the gradient collectives touch nothing and wait for nothing */
TEST(grads_alone) {
    double d[2] = {0.25, -3};
    CHECK_EQ_INT(coll_allreduce_grads_f64(d, 2), 0);
    coll_grads_progress();
    CHECK_EQ_INT(coll_grads_wait(), 0);
    CHECK(d[0] == 0.25 && d[1] == -3);
    float p[4] = {1, 2, 3, 4};
    int64_t off[2] = {0, 4};
    CHECK_EQ_INT(coll_allgather_f32(p, off), 0);
    CHECK_EQ_INT(coll_gather_f32(p, off, 0), 0);
    CHECK(p[0] == 1 && p[3] == 4);
}

/* the sharded optimizer's pieces: contiguous, in rank order, covering everything once, 64-aligned */
TEST(shard_pieces) {
    const int64_t ns[] = {0, 1, 63, 64, 65, 1000, 262144 + 17};
    for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++)
        for (int w = 1; w <= 9; w++) {
            int64_t end = 0, big = 0;
            for (int r = 0; r < w; r++) {
                int64_t lo, hi;
                coll_shard(ns[i], w, r, &lo, &hi);
                CHECK(lo == end);
                CHECK(hi >= lo);
                CHECK(lo % 64 == 0 || lo == ns[i]);
                if (hi - lo > big) big = hi - lo;
                end = hi;
            }
            CHECK(end == ns[i]);
            CHECK(big <= (ns[i] + w - 1) / w + 63); /* no rank holds much more than its share */
        }
    int64_t lo, hi;
    coll_shard(1000, 2, 1, &lo, &hi);
    CHECK(lo == 512 && hi == 1000);
}

TEST(agreement_alone) {
    int intr = 1;
    CHECK_EQ_INT(coll_agree(0, &intr), 0);
    CHECK_EQ_INT(intr, 1);
    err_set(ERR_DATA, "bad row 3");
    CHECK_EQ_INT(coll_agree(ERR_DATA, NULL), ERR_DATA);
    CHECK_EQ_STR(err_msg(), "bad row 3");
    err_clear();
    coll_agree_reset();
    CHECK_EQ_INT(coll_agree(0, NULL), 0);
}

TEST(nccl_missing) {
    setenv("QLORA_NCCL_LIB", "/nonexistent/libnccl.so.2", 1);
    int rc = coll_nccl_init(NULL, NULL, NULL);
    CHECK_EQ_INT(rc, ERR_STAGE);
    CHECK(strstr(err_msg(), "cannot open NCCL ('/nonexistent/libnccl.so.2'") != NULL);
    CHECK(strstr(err_msg(), "QLORA_NCCL_LIB") != NULL);
    CHECK(!coll_nccl_active());
    err_clear();
    coll_agree_reset();
    unsetenv("QLORA_NCCL_LIB");
}

int main(void) {
    RUN(env_world);
    RUN(world_of_one);
    RUN(agreement_alone);
    RUN(grads_alone);
    RUN(shard_pieces);
    RUN(nccl_missing);
    coll_finalize();
    return test_summary();
}
