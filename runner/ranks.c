/* ranks.c: starting, checking and spawning the ranks of a data-parallel run (see ranks.h). */
#define _GNU_SOURCE
#include "runner/ranks.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/collective.h"
#include "core/err.h"
#include "core/hash.h"
#include "core/log.h"
#include "model/device.h"
#include "runner/yaml_tree.h"

int ranks_start(void) {
    int rc = coll_init();
    if (coll_rank() > 0) log_set_quiet(true);
    return rc;
}

/* the program's own bytes: two builds of one version differ here */
static void program_hash(char out[HASH_HEX_LEN]) {
    if (hash_file_hex("/proc/self/exe", out)) {
        err_clear();
        snprintf(out, HASH_HEX_LEN, "%s", "unreadable");
    }
}

int ranks_check_same(const recipe *r, int load_rc) {
    if (coll_world() == 1) return load_rc;
    /* recipe_load's message is this rank's; the agreement carries the lowest failing rank's */
    char mine[2 * HASH_HEX_LEN], prog[HASH_HEX_LEN], theirs[2 * HASH_HEX_LEN] = "";
    program_hash(prog);
    char *y = r ? yt_emit_json(r->resolved) : NULL;
    char rh[HASH_HEX_LEN] = "";
    if (y) hash_bytes_hex(y, strlen(y), rh);
    free(y);
    snprintf(mine, sizeof mine, "%.32s%.32s", rh, prog);
    memcpy(theirs, mine, sizeof theirs);
    int rc = coll_bcast(theirs, sizeof theirs, 0);
    if (!rc && !load_rc) {
        if (memcmp(mine + 32, theirs + 32, 32))
            rc = err_set(ERR_USAGE,
                         "this rank runs another qlora-run program than rank 0 (%s %s, binary %.12s vs %.12s): "
                         "install the same build on every machine",
                         coll_launcher(), QLORA_VERSION, prog, theirs + 32);
        else if (memcmp(mine, theirs, 32))
            rc = err_set(ERR_RECIPE,
                         "the resolved recipe '%s' differs from rank 0's (hash %.12s vs %.12s): every rank must "
                         "read the same recipe, --set options and included files",
                         r->path, rh, theirs);
    }
    return coll_agree(load_rc ? load_rc : rc, NULL);
}

int ranks_wanted(int want, int *n) {
    *n = want > 0 ? want : 1;
    if (want != 0) return 0;
    if ((*n = device_count()) > 0) return 0;
    return err_set(ERR_USAGE, "gpus: all, but this machine shows no GPU (or qlora-run was built without CUDA)");
}

/* mpirun on PATH, or beside the MPI we were built with */
static char *find_mpirun(void) {
    const char *path = getenv("PATH");
    char *copy = strdup(path ? path : "/usr/bin:/bin"), *save = NULL;
    for (char *d = strtok_r(copy, ":", &save); d; d = strtok_r(NULL, ":", &save)) {
        char *p;
        if (asprintf(&p, "%s/mpirun", *d ? d : ".") < 0) break;
        if (access(p, X_OK) == 0) {
            free(copy);
            return p;
        }
        free(p);
    }
    free(copy);
    return NULL;
}

int ranks_spawn(int n, int argc, char **argv) {
    if (!coll_have_mpi())
        return err_set(ERR_USAGE,
                       "--gpus %d needs MPI, and this qlora-run was built without it: install Open MPI "
                       "(apt-get install libopenmpi-dev openmpi-bin) and rebuild",
                       n);
    char *mpirun = find_mpirun();
    if (!mpirun)
        return err_set(ERR_USAGE, "--gpus %d starts its ranks with mpirun, which is not on PATH: install openmpi-bin, "
                                  "or start the ranks yourself (mpirun -np %d, srun)", n, n);
    /* NVLink multicast off unless the user chose otherwise (docs/multi-gpu.md) */
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    char self[4096];
    ssize_t sl = readlink("/proc/self/exe", self, sizeof self - 1);
    if (sl <= 0) snprintf(self, sizeof self, "%s", argv[0]);
    else self[sl] = 0;
    char np[16];
    snprintf(np, sizeof np, "%d", n);
    char **args = calloc((size_t)argc + 16, sizeof *args);
    int k = 0;
    args[k++] = mpirun;
    args[k++] = "-np";
    args[k++] = np;
    if (getuid() == 0) args[k++] = "--allow-run-as-root";
    args[k++] = "-x";
    args[k++] = "NCCL_NVLS_ENABLE";
    args[k++] = self;
    args[k++] = "run";
    for (int i = 1; i < argc; i++) { /* argv[0] is "run" or the program: the recipe and options follow */
        if (!strcmp(argv[i], "--gpus")) {
            i++;
            continue;
        }
        if (!strncmp(argv[i], "--gpus=", 7)) continue;
        args[k++] = argv[i];
    }
    args[k] = NULL;
    notef("starting %d ranks: %s -np %d ...", n, mpirun, n);
    fflush(NULL);
    execv(mpirun, args);
    int rc = err_errno(ERR_STAGE, "cannot start '%s'", mpirun);
    free(args);
    free(mpirun);
    return rc;
}
