/* collective.c: ranks, MPI and NCCL (see collective.h). */
#define _GNU_SOURCE
#include "collective.h"

#include <dlfcn.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/collective_rdv.h"
#include "core/err.h"

#ifdef QLORA_HAVE_MPI
#include <mpi.h>
#endif

static struct {
    bool ready, mpi_up;
    bool rendezvous; /* srun without PMI: the world is joined through MASTER_ADDR:MASTER_PORT */
    int rank, world, local_rank, local_world;
    const char *launcher;
    int agreed_rc; /* sticky failure of coll_agree (0: none) */
    char agreed_msg[2048];
#ifdef QLORA_HAVE_MPI
    MPI_Comm comm; /* MPI_COMM_WORLD, or the world joined by the rendezvous */
    MPI_Request *pending; /* gradient all-reduces in flight (coll_allreduce_grads_f64) */
    int n_pending, cap_pending;
#endif
} g = {.world = 1, .local_world = 1, .launcher = "single"};

static int env_int(const char *name, int fallback) {
    const char *v = getenv(name);
    if (!v || !*v) return fallback;
    char *end;
    long x = strtol(v, &end, 10);
    return *end || x < 0 || x > INT_MAX ? fallback : (int)x;
}

/* Slurm's task count for a step of srun: SLURM_STEP_NUM_TASKS, which only srun sets; or
 * SLURM_NTASKS when MASTER_PORT asks for the rendezvous (a launch by hand, or a site's srun
 * wrapper that exports the task count only) */
static int slurm_world(void) {
    if (!getenv("SLURM_PROCID")) return 0;
    if (getenv("SLURM_STEP_NUM_TASKS")) return env_int("SLURM_STEP_NUM_TASKS", 0);
    if (getenv("MASTER_PORT") && getenv("SLURM_NTASKS")) return env_int("SLURM_NTASKS", 0);
    return 0;
}

/* The first launcher whose variables are set wins; Slurm's SLURM_NTASKS alone is not a launch
 * (a batch script's own shell has it): only a step started by srun sets SLURM_STEP_NUM_TASKS. */
static void read_env(void) {
    if (getenv("OMPI_COMM_WORLD_SIZE")) {
        g.launcher = "mpirun";
        g.world = env_int("OMPI_COMM_WORLD_SIZE", 1);
        g.rank = env_int("OMPI_COMM_WORLD_RANK", 0);
        g.local_rank = env_int("OMPI_COMM_WORLD_LOCAL_RANK", 0);
        g.local_world = env_int("OMPI_COMM_WORLD_LOCAL_SIZE", 1);
    } else if (getenv("PMI_SIZE")) {
        g.launcher = "pmi";
        g.world = env_int("PMI_SIZE", 1);
        g.rank = env_int("PMI_RANK", 0);
        g.local_rank = env_int("MPI_LOCALRANKID", 0);
        g.local_world = env_int("MPI_LOCALNRANKS", 1);
    } else if (slurm_world() > 0) {
        g.launcher = "srun";
        g.world = slurm_world();
        g.rank = env_int("SLURM_PROCID", 0);
        g.local_rank = env_int("SLURM_LOCALID", 0);
        /* "2(x3),1": the first node's count is enough for a GPU index */
        const char *t = getenv("SLURM_STEP_TASKS_PER_NODE");
        g.local_world = t && atoi(t) > 0 ? atoi(t) : 1;
        /* srun --mpi=pmix (or pmi2) hands MPI its bootstrap; plain srun does not: then the
         * ranks meet at MASTER_ADDR:MASTER_PORT (coll_rendezvous.c) */
        g.rendezvous = !getenv("PMIX_RANK") && !getenv("PMI_FD") && !getenv("PMIX_NAMESPACE");
    }
    if (g.world < 1) g.world = 1;
    if (g.rank >= g.world) g.rank = 0;
}

int coll_env_world(void) {
    if (getenv("OMPI_COMM_WORLD_SIZE")) return env_int("OMPI_COMM_WORLD_SIZE", 0);
    if (getenv("PMI_SIZE")) return env_int("PMI_SIZE", 0);
    return slurm_world();
}

bool coll_have_mpi(void) {
#ifdef QLORA_HAVE_MPI
    return true;
#else
    return false;
#endif
}

int coll_init(void) {
    if (g.ready) return 0;
    read_env();
    g.ready = true;
    if (g.world == 1) return 0;
#ifdef QLORA_HAVE_MPI
    g.comm = MPI_COMM_WORLD;
    if (g.rendezvous) {
        int rc = coll_rendezvous_join(g.rank, g.world, &g.comm);
        if (rc) {
            g.world = 1;
            g.rank = 0;
            return rc;
        }
        g.mpi_up = true;
        setvbuf(stdout, NULL, _IOLBF, 0);
        return 0;
    }
    int flag = 0;
    MPI_Initialized(&flag);
    if (!flag && MPI_Init(NULL, NULL) != MPI_SUCCESS)
        return err_set(ERR_STAGE, "cannot start MPI for rank %d of %d (launched by %s)", g.rank, g.world, g.launcher);
    g.mpi_up = true;
    int r = 0, w = 1;
    MPI_Comm_rank(g.comm, &r);
    MPI_Comm_size(g.comm, &w);
    if (r != g.rank || w != g.world) { /* a launcher's variables that MPI does not confirm */
        g.rank = r;
        g.world = w;
    }
    /* stdout and stderr of the ranks are merged by the launcher: no partial lines */
    setvbuf(stdout, NULL, _IOLBF, 0);
    return 0;
#else
    int w = g.world;
    g.world = 1;
    g.rank = 0;
    return err_set(ERR_USAGE,
                   "%s started %d processes, but this qlora-run was built without MPI: install Open MPI "
                   "(apt-get install libopenmpi-dev openmpi-bin) and rebuild, or run one process",
                   g.launcher, w);
#endif
}

void coll_shard(int64_t n, int world, int rank, int64_t *lo, int64_t *hi) {
    if (world < 1) world = 1;
    int64_t per = (n + world - 1) / world;
    per = (per + 63) / 64 * 64;
    int64_t a = (int64_t)rank * per;
    *lo = a < n ? a : n;
    *hi = *lo + per < n ? *lo + per : n;
}

int coll_rank(void) { return g.rank; }
int coll_world(void) { return g.world; }
int coll_local_rank(void) { return g.local_rank; }
int coll_local_world(void) { return g.local_world; }
const char *coll_launcher(void) { return g.launcher; }

/* ---- MPI helpers ---- */

#ifdef QLORA_HAVE_MPI
/* Wait for a nonblocking collective without spinning a core: ranks that wait for rank 0 to
 * build a dataset (or for a slow GPU) sleep; the first millisecond polls, for short waits. */
static int wait_request(MPI_Request *req) {
    int done = 0;
    long sleep_ns = 0;
    double t0 = clock_now_s();
    for (;;) {
        if (MPI_Test(req, &done, MPI_STATUS_IGNORE) != MPI_SUCCESS) return err_set(ERR_STAGE, "MPI: a collective failed");
        if (done) return 0;
        if (clock_now_s() - t0 < 1e-3) continue;
        sleep_ns = sleep_ns ? (sleep_ns * 2 > 5000000 ? 5000000 : sleep_ns * 2) : 50000;
        struct timespec ts = {0, sleep_ns};
        nanosleep(&ts, NULL);
    }
}
#endif

int coll_allreduce_f64(double *buf, int n) {
    if (g.world == 1 || n <= 0) return 0;
#ifdef QLORA_HAVE_MPI
    MPI_Request req;
    if (MPI_Iallreduce(MPI_IN_PLACE, buf, n, MPI_DOUBLE, MPI_SUM, g.comm, &req) != MPI_SUCCESS)
        return err_set(ERR_STAGE, "MPI: all-reduce of %d values failed", n);
    return wait_request(&req);
#else
    return 0;
#endif
}

int coll_allreduce_f32(float *buf, int64_t n) {
    if (g.world == 1 || n <= 0) return 0;
#ifdef QLORA_HAVE_MPI
    /* MPI counts are int: large buffers go in pieces */
    for (int64_t off = 0; off < n; off += INT_MAX / 2) {
        int c = (int)(n - off < INT_MAX / 2 ? n - off : INT_MAX / 2);
        if (MPI_Allreduce(MPI_IN_PLACE, buf + off, c, MPI_FLOAT, MPI_SUM, g.comm) != MPI_SUCCESS)
            return err_set(ERR_STAGE, "MPI: all-reduce of %lld gradients failed", (long long)n);
    }
    return 0;
#else
    return 0;
#endif
}

int coll_bcast(void *buf, size_t bytes, int root) {
    if (g.world == 1 || bytes == 0) return 0;
#ifdef QLORA_HAVE_MPI
    if (bytes > INT_MAX) return err_set(ERR_STAGE, "MPI: broadcast of %zu bytes is too large", bytes);
    MPI_Request req;
    if (MPI_Ibcast(buf, (int)bytes, MPI_BYTE, root, g.comm, &req) != MPI_SUCCESS)
        return err_set(ERR_STAGE, "MPI: broadcast failed");
    return wait_request(&req);
#else
    (void)root;
    return 0;
#endif
}

int coll_bcast_str(char **s, int root) {
    if (g.world == 1) return 0;
    int64_t len = g.rank == root && *s ? (int64_t)strlen(*s) : -1;
    int rc = coll_bcast(&len, sizeof len, root);
    if (rc || len < 0) return rc;
    if (g.rank == root) return coll_bcast(*s, (size_t)len, root);
    free(*s);
    *s = malloc((size_t)len + 1);
    if (!*s) return err_set(ERR_STAGE, "out of memory");
    (*s)[len] = 0;
    return coll_bcast(*s, (size_t)len, root);
}

/* ---- agreement ---- */

void coll_agree_reset(void) { g.agreed_rc = 0; }

int coll_agree(int rc, int *interrupted) {
    if (g.agreed_rc) return err_set(g.agreed_rc, "%s", g.agreed_msg);
    if (g.world == 1) return rc;
    /* [world - rank of a failing rank (0: fine), interrupted]: MAX picks the lowest failing rank */
    double v[2] = {rc ? (double)(g.world - g.rank) : 0.0, interrupted && *interrupted ? 1.0 : 0.0};
#ifdef QLORA_HAVE_MPI
    MPI_Request req;
    if (MPI_Iallreduce(MPI_IN_PLACE, v, 2, MPI_DOUBLE, MPI_MAX, g.comm, &req) != MPI_SUCCESS)
        return err_set(ERR_STAGE, "MPI: agreement failed");
    int w = wait_request(&req);
    if (w) return w;
#endif
    if (interrupted) *interrupted = v[1] > 0;
    if (v[0] == 0) return 0;
    int from = g.world - (int)v[0];
    int32_t code = rc;
    char msg[sizeof g.agreed_msg - 64];
    snprintf(msg, sizeof msg, "%s", g.rank == from ? err_msg() : "");
    int b = coll_bcast(&code, sizeof code, from);
    if (!b) b = coll_bcast(msg, sizeof msg, from);
    if (b) return b;
    msg[sizeof msg - 1] = 0;
    g.agreed_rc = code ? code : ERR_STAGE;
    if (g.rank == from) snprintf(g.agreed_msg, sizeof g.agreed_msg, "%s", msg);
    else snprintf(g.agreed_msg, sizeof g.agreed_msg, "rank %d: %s", from, msg);
    return err_set(g.agreed_rc, "%s", g.agreed_msg);
}

/* ---- NCCL, opened at run time ----
 * The few declarations we need, from NCCL's public ABI (nccl.h): the unique id is 128 opaque
 * bytes, results and enums are ints (ncclSuccess 0, ncclFloat32 7, ncclSum 0). */

#define NCCL_ID_BYTES 128
typedef struct { char internal[NCCL_ID_BYTES]; } nccl_unique_id;
typedef void *nccl_comm;

static struct {
    void *lib;
    nccl_comm comm;
    void *stream;
    void (*before)(void), (*after)(void);
    int (*get_unique_id)(nccl_unique_id *);
    int (*comm_init_rank)(nccl_comm *, int, nccl_unique_id, int);
    int (*all_reduce)(const void *, void *, size_t, int, int, nccl_comm, void *);
    int (*comm_destroy)(nccl_comm);
    const char *(*error_string)(int);
    /* for the sharded optimizer's gather of the parameters (optional: older NCCLs have them too) */
    int (*broadcast)(const void *, void *, size_t, int, int, nccl_comm, void *);
    int (*group_start)(void), (*group_end)(void);
} nccl;

enum { NCCL_FLOAT32 = 7, NCCL_SUM = 0 };

static const char *nccl_err(int r) { return nccl.error_string ? nccl.error_string(r) : "unknown NCCL error"; }

static int nccl_open(void) {
    if (nccl.lib) return 0;
    const char *path = getenv("QLORA_NCCL_LIB");
    if (!path || !*path) path = "libnccl.so.2";
    nccl.lib = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!nccl.lib)
        return err_set(ERR_STAGE,
                       "cannot open NCCL ('%s': %s): install libnccl2, or set QLORA_NCCL_LIB to the path of "
                       "libnccl.so.2 (pip's nvidia-nccl wheels hold one under nvidia/nccl/lib)",
                       path, dlerror());
    *(void **)&nccl.get_unique_id = dlsym(nccl.lib, "ncclGetUniqueId");
    *(void **)&nccl.comm_init_rank = dlsym(nccl.lib, "ncclCommInitRank");
    *(void **)&nccl.all_reduce = dlsym(nccl.lib, "ncclAllReduce");
    *(void **)&nccl.comm_destroy = dlsym(nccl.lib, "ncclCommDestroy");
    *(void **)&nccl.error_string = dlsym(nccl.lib, "ncclGetErrorString");
    *(void **)&nccl.broadcast = dlsym(nccl.lib, "ncclBroadcast");
    *(void **)&nccl.group_start = dlsym(nccl.lib, "ncclGroupStart");
    *(void **)&nccl.group_end = dlsym(nccl.lib, "ncclGroupEnd");
    if (!nccl.get_unique_id || !nccl.comm_init_rank || !nccl.all_reduce || !nccl.comm_destroy) {
        dlclose(nccl.lib);
        nccl.lib = NULL;
        return err_set(ERR_STAGE, "'%s' lacks the NCCL functions qlora-run calls (ncclCommInitRank, ncclAllReduce)", path);
    }
    return 0;
}

int coll_nccl_init(void *stream, void (*before)(void), void (*after)(void)) {
    if (nccl.comm) return 0;
    int rc = nccl_open();
    nccl_unique_id id;
    memset(&id, 0, sizeof id);
    /* rank 0 makes the id; every rank must learn whether that worked before it waits for it */
    if (!rc && g.rank == 0) {
        int r = nccl.get_unique_id(&id);
        if (r) rc = err_set(ERR_STAGE, "ncclGetUniqueId: %s", nccl_err(r));
    }
    if ((rc = coll_agree(rc, NULL))) return rc;
    if ((rc = coll_bcast(&id, sizeof id, 0))) return rc;
    int r = nccl.comm_init_rank(&nccl.comm, g.world, id, g.rank);
    if (r) {
        nccl.comm = NULL;
        rc = err_set(ERR_STAGE, "ncclCommInitRank (rank %d of %d): %s", g.rank, g.world, nccl_err(r));
    }
    if ((rc = coll_agree(rc, NULL))) return rc;
    nccl.stream = stream;
    nccl.before = before;
    nccl.after = after;
    return 0;
}

bool coll_nccl_active(void) { return nccl.comm != NULL; }

int coll_allreduce_grads(float *buf, int64_t n) {
    /* one rank without NCCL: nothing to sum; with a communicator (QLORA_NCCL=1, train_gpu --nccl on)
     * a world of one runs the same buckets, streams and events as several ranks (issue 18) */
    if ((g.world == 1 && !nccl.comm) || n <= 0) return 0;
    if (nccl.comm) {
        if (nccl.before) nccl.before();
        int r = nccl.all_reduce(buf, buf, (size_t)n, NCCL_FLOAT32, NCCL_SUM, nccl.comm, nccl.stream);
        return r ? err_set(ERR_STAGE, "ncclAllReduce of %lld gradients: %s", (long long)n, nccl_err(r)) : 0;
    }
    return coll_allreduce_f32(buf, n);
}

int coll_allreduce_grads_f64(double *buf, int64_t n) {
    if (g.world == 1 || n <= 0) return 0;
#ifdef QLORA_HAVE_MPI
    for (int64_t off = 0; off < n; off += INT_MAX / 2) {
        int c = (int)(n - off < INT_MAX / 2 ? n - off : INT_MAX / 2);
        if (g.n_pending == g.cap_pending) {
            int cap = g.cap_pending ? 2 * g.cap_pending : 16;
            MPI_Request *p = realloc(g.pending, (size_t)cap * sizeof *p);
            if (!p) return err_set(ERR_STAGE, "out of memory");
            g.pending = p;
            g.cap_pending = cap;
        }
        if (MPI_Iallreduce(MPI_IN_PLACE, buf + off, c, MPI_DOUBLE, MPI_SUM, g.comm, &g.pending[g.n_pending]) !=
            MPI_SUCCESS)
            return err_set(ERR_STAGE, "MPI: all-reduce of %lld gradients failed", (long long)n);
        g.n_pending++;
        /* a nudge: Open MPI moves a nonblocking collective only inside MPI calls */
        int flag;
        MPI_Testall(g.n_pending, g.pending, &flag, MPI_STATUSES_IGNORE);
    }
    return 0;
#else
    return 0;
#endif
}

void coll_grads_progress(void) {
#ifdef QLORA_HAVE_MPI
    if (g.n_pending) {
        int flag;
        MPI_Testall(g.n_pending, g.pending, &flag, MPI_STATUSES_IGNORE);
    }
#endif
}

int coll_grads_wait(void) {
    if (g.world == 1 && !nccl.comm) return 0;
    if (nccl.comm && nccl.after) nccl.after();
    int rc = 0;
#ifdef QLORA_HAVE_MPI
    for (int i = 0; i < g.n_pending; i++) {
        int w = wait_request(&g.pending[i]);
        if (w && !rc) rc = w;
    }
    g.n_pending = 0;
#endif
    return rc;
}

int coll_allgather_f32(float *buf, const int64_t *off) {
    if (g.world == 1) return 0;
    if (nccl.comm) {
        if (!nccl.broadcast || !nccl.group_start || !nccl.group_end)
            return err_set(ERR_STAGE, "this NCCL lacks ncclBroadcast or ncclGroupStart: turn shard_optimizer off");
        if (nccl.before) nccl.before();
        /* an all-gather of unequal pieces: every rank broadcasts its own, in one group */
        int r = nccl.group_start();
        for (int k = 0; k < g.world && !r; k++)
            if (off[k + 1] > off[k])
                r = nccl.broadcast(buf + off[k], buf + off[k], (size_t)(off[k + 1] - off[k]), NCCL_FLOAT32, k, nccl.comm,
                                   nccl.stream);
        int e = nccl.group_end();
        if (!r) r = e;
        if (nccl.after) nccl.after();
        return r ? err_set(ERR_STAGE, "NCCL: gathering the updated parameters: %s", nccl_err(r)) : 0;
    }
#ifdef QLORA_HAVE_MPI
    int *counts = malloc(2 * sizeof(int) * (size_t)g.world), rc = 0;
    if (!counts) return err_set(ERR_STAGE, "out of memory");
    int *displs = counts + g.world;
    if (off[g.world] > INT_MAX) rc = err_set(ERR_STAGE, "MPI: %lld parameters are too many for one gather", (long long)off[g.world]);
    for (int k = 0; k < g.world && !rc; k++) {
        counts[k] = (int)(off[k + 1] - off[k]);
        displs[k] = (int)off[k];
    }
    if (!rc && MPI_Allgatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, g.comm) != MPI_SUCCESS)
        rc = err_set(ERR_STAGE, "MPI: gathering the updated parameters failed");
    free(counts);
    return rc;
#else
    return 0;
#endif
}

int coll_gather_f32(float *buf, const int64_t *off, int root) {
    if (g.world == 1) return 0;
#ifdef QLORA_HAVE_MPI
    int *counts = malloc(2 * sizeof(int) * (size_t)g.world), rc = 0;
    if (!counts) return err_set(ERR_STAGE, "out of memory");
    int *displs = counts + g.world;
    if (off[g.world] > INT_MAX) rc = err_set(ERR_STAGE, "MPI: %lld values are too many for one gather", (long long)off[g.world]);
    for (int k = 0; k < g.world && !rc; k++) {
        counts[k] = (int)(off[k + 1] - off[k]);
        displs[k] = (int)off[k];
    }
    if (!rc) {
        int r = g.rank == root ? MPI_Gatherv(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, buf, counts, displs, MPI_FLOAT, root, g.comm)
                               : MPI_Gatherv(buf + off[g.rank], counts[g.rank], MPI_FLOAT, NULL, NULL, NULL, MPI_FLOAT,
                                             root, g.comm);
        if (r != MPI_SUCCESS) rc = err_set(ERR_STAGE, "MPI: gathering the optimizer state failed");
    }
    free(counts);
    return rc;
#else
    (void)buf;
    (void)off;
    (void)root;
    return 0;
#endif
}

void coll_finalize(void) {
    if (nccl.comm) nccl.comm_destroy(nccl.comm);
    nccl.comm = NULL;
#ifdef QLORA_HAVE_MPI
    if (g.mpi_up) {
        int fin = 0;
        MPI_Finalized(&fin);
        if (!fin) {
            /* a world joined by connect/accept: MPI_Finalize lets go of it (MPI_Comm_disconnect
             * waits forever in Open MPI 4.1's fence between the singletons) */
            MPI_Finalize();
        }
    }
    free(g.pending);
    g.pending = NULL;
    g.n_pending = g.cap_pending = 0;
#endif
    g.mpi_up = false;
    coll_rendezvous_end();
}
