/* collective.h: the collective-communication shim of data-parallel training (docs/multi-gpu.md).
 *
 * One process a GPU (or, on the CPU backend, one process a share of the batch). Who we are
 * comes from the launcher's environment, read once by coll_init():
 *   mpirun (Open MPI)  OMPI_COMM_WORLD_RANK / _SIZE / _LOCAL_RANK / _LOCAL_SIZE
 *   MPICH-style PMI    PMI_RANK / PMI_SIZE (local rank from MPI_LOCAL_RANKID when set)
 *   srun (Slurm)       SLURM_PROCID / SLURM_STEP_NUM_TASKS / SLURM_LOCALID (SLURM_NTASKS when
 *                      MASTER_PORT is set); without PMIx or PMI (no PMIX_RANK, PMI_FD) the ranks
 *                      meet at MASTER_ADDR:MASTER_PORT (core/collective_rdv.h)
 *   nothing            rank 0 of 1
 * A world larger than one needs MPI (the build finds Open MPI's libopenmpi-dev); MPI does the
 * process bootstrap and the CPU collectives. On CUDA, NCCL all-reduces the gradients in device
 * memory: rank 0 makes the ncclUniqueId and MPI broadcasts it (llm.c's bootstrap). libnccl.so.2
 * is opened with dlopen when a GPU run asks for it, so the program builds without NCCL's headers
 * and starts without the library when it trains on one GPU without it.
 *
 * Agreement: ranks never stop on their own. coll_agree() is the one point where every rank
 * says whether it failed (and whether it was interrupted); a failure on any rank is then the
 * failure of all, with the message and code of the lowest failing rank. Once an agreement has
 * failed, later ones return that failure at once without communicating (all ranks saw it at the
 * same call), until coll_agree_reset(). The runner and the trainer call it at fixed points, so
 * every rank passes the same sequence of collectives whatever fails where.
 *
 * Every function is safe with a world of one (no MPI touched); the collectives then return at
 * once and leave the buffers as they are. Not thread-safe: one thread does the communication. */
#ifndef CORE_COLLECTIVE_H
#define CORE_COLLECTIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Read the launcher's environment and start MPI when the world is larger than one. Returns 0,
 * or ERR_USAGE when the world needs MPI and this build has none (with how to get it). Safe to
 * call more than once. */
int coll_init(void);
/* End MPI and NCCL (at exit; after an error too). */
void coll_finalize(void);

int coll_rank(void);
int coll_world(void);
int coll_local_rank(void);  /* rank among the processes of this machine: its GPU */
int coll_local_world(void);
const char *coll_launcher(void); /* "mpirun", "pmi", "srun" or "single" */
bool coll_have_mpi(void);        /* built with MPI */

/* The piece [*lo, *hi) of n values that rank owns when they are split over world ranks (the sharded
 * optimizer's): contiguous, in rank order, of ceil(n / world) rounded up to 64 values (aligned
 * vector loads on a GPU); the last ranks' pieces may be shorter or empty. */
void coll_shard(int64_t n, int world, int rank, int64_t *lo, int64_t *hi);

/* The world size the environment announces, without starting anything (0 when none does). */
int coll_env_world(void);

/* Agreement (above): rc is this rank's status (0 or an ERR_* code with err_set's message),
 * *interrupted (may be NULL) is or-ed over the ranks. Returns 0 when every rank is fine; else
 * the code of the lowest failing rank, whose message is the current error on every rank
 * ("rank N: ..." on the others). */
int coll_agree(int rc, int *interrupted);
void coll_agree_reset(void);

/* Sums in place over the ranks, host memory. */
int coll_allreduce_f64(double *buf, int n);
int coll_allreduce_f32(float *buf, int64_t n);
/* Bytes from root to everyone. */
int coll_bcast(void *buf, size_t bytes, int root);
/* A string from root: on other ranks *s is replaced by a malloc'd copy (the old one freed). */
int coll_bcast_str(char **s, int root);

/* NCCL over the ranks, on the current CUDA device. stream is the cudaStream_t the all-reduces are
 * queued on (a stream of their own); before() makes it wait for the work queued so far on the
 * compute stream, after() makes the compute stream wait for it. Opens libnccl.so.2
 * ($QLORA_NCCL_LIB names another path). Returns ERR_STAGE with what is missing when NCCL cannot
 * start. */
int coll_nccl_init(void *stream, void (*before)(void), void (*after)(void));
bool coll_nccl_active(void);
/* One bucket of the gradient all-reduce (sums in place): with NCCL queued on its stream after
 * everything queued on the compute stream so far, and returns at once; with MPI done on return
 * (host memory). A world of one returns at once, NCCL or not: no call, no event, no wait. */
int coll_allreduce_grads(float *buf, int64_t n);
/* The same for fp64 sums in host memory (the CPU backend's exact reduction, train/trainer.h):
 * started with MPI_Iallreduce and left in flight; coll_grads_progress() lets MPI move them while
 * the backward goes on; coll_grads_wait() finishes them. */
int coll_allreduce_grads_f64(double *buf, int64_t n);
void coll_grads_progress(void);
/* Orders the compute stream after every NCCL bucket queued, and waits for the MPI ones in flight.
 * A world of one returns at once. */
int coll_grads_wait(void);
/* The sharded optimizer (ZeRO-1): rank k holds buf[off[k] .. off[k+1]) up to date, off[0..world]
 * ascending; afterwards every rank holds all of it. NCCL in device memory when NCCL is up, else
 * MPI in host memory. coll_gather_f32 brings every piece to root only (host memory, MPI). */
int coll_allgather_f32(float *buf, const int64_t *off);
int coll_gather_f32(float *buf, const int64_t *off, int root);

#endif
