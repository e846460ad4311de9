/* cmd_doctor.c: `qlora-run doctor`: checks, in one screen, what a run will need and says what
 * is missing and how to get it: the program itself, the GPU and its memory, the CUDA driver
 * and runtime, cuBLAS, a Hugging Face token (never printed), the artifact cache (writable, free
 * space), the hub (reachable within a short timeout), and MPI and NCCL for --gpus. A missing
 * GPU or hub is a warning (runs still work: on the CPU, from the cache); a check that fails
 * makes the exit code 1. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "core/clock.h"
#include "core/err.h"
#include "core/fsutil.h"
#include "hub/hub.h"
#include "kernels/cuda/device.h"
#include "net/http.h"
#include "runner/cache.h"
#include "runner/commands.h"
#include "runner/version.h"

typedef struct doctor_args {
    bool offline;
    int64_t timeout;
} doctor_args;

static const cli_opt doctor_opts[] = {
    {"offline", 0, CLI_FLAG, NULL, "do not try to reach the hub", CLI_AT(doctor_args, offline), 0, 0},
    {"timeout", 0, CLI_INT, "S", "seconds to wait for the hub (5)", CLI_AT(doctor_args, timeout), 1, 120},
    {0},
};

const cli_cmd cli_doctor = {
    .name = "doctor",
    .usage = "doctor [--offline] [--timeout S]",
    .summary = "check what a run needs (GPU, CUDA, cache, hub, token, MPI) and say what is missing",
    .about = "Checks the GPU and its memory, the CUDA driver and runtime, cuBLAS, the Hugging Face token\n"
             "(found or not; never printed), the artifact cache (writable, free space), the hub (reachable\n"
             "within the timeout) and, for --gpus, MPI and NCCL. One line a check: ok, warn or FAIL.",
    .footer = "Exit status: 0 when no check failed (warnings allowed), 1 when one did, 2 usage.",
    .max_pos = 0, .opts = doctor_opts,
};

typedef struct tally {
    int warn, fail;
} tally;

static void line(tally *t, const char *status, const char *what, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void line(tally *t, const char *status, const char *what, const char *fmt, ...) {
    if (!strcmp(status, "warn")) t->warn++;
    if (!strcmp(status, "FAIL")) t->fail++;
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    printf("%-5s %-10s %s\n", status, what, msg);
}

static void check_gpu(tally *t) {
#ifdef QLORA_HAVE_CUDA
    int driver = 0, runtime = 0;
    cuda_versions(&driver, &runtime);
    if (!driver) {
        line(t, "warn", "gpu", "no NVIDIA driver found: training runs on the CPU (install the driver for a GPU)");
        return;
    }
    line(t, "ok", "cuda", "driver %d.%d, runtime %d.%d", driver / 1000, driver % 1000 / 10, runtime / 1000,
         runtime % 1000 / 10);
    if (driver < runtime)
        line(t, "FAIL", "cuda", "the driver (%d.%d) is older than the CUDA runtime this build uses (%d.%d): update the driver",
             driver / 1000, driver % 1000 / 10, runtime / 1000, runtime % 1000 / 10);
    cuda_device_info d;
    if (cuda_device_query(&d) || d.count == 0) {
        line(t, "warn", "gpu", "no GPU visible (CUDA_VISIBLE_DEVICES='%s'): training runs on the CPU",
             getenv("CUDA_VISIBLE_DEVICES") ? getenv("CUDA_VISIBLE_DEVICES") : "");
        return;
    }
    line(t, "ok", "gpu", "%d visible; device 0: %s (sm_%d%d, %d SMs), %.1f GiB, %.1f GiB free", d.count, d.name,
         d.cc_major, d.cc_minor, d.sm_count, d.total_bytes / 1073741824.0, d.free_bytes / 1073741824.0);
    char msg[600];
    if (cuda_cublas_probe(msg, sizeof msg)) line(t, "FAIL", "cublas", "%s", msg);
    else line(t, "ok", "cublas", "loadable");
#else
    line(t, "warn", "gpu", "this build has no CUDA (CPU only): rebuild on a machine with nvcc for GPU training");
#endif
}

static void check_cache(tally *t) {
    cache c;
    if (cache_open(&c, NULL)) {
        line(t, "FAIL", "cache", "%s: set QLORA_CACHE to a writable directory", err_msg());
        err_clear();
        return;
    }
    char *probe = fs_join(c.root, "tmp/doctor-probe-XXXXXX");
    int fd = probe ? mkstemp(probe) : -1;
    if (fd < 0) {
        line(t, "FAIL", "cache", "'%s' is not writable: set QLORA_CACHE to a writable directory", c.root);
    } else {
        close(fd);
        unlink(probe);
        struct statvfs sv;
        double free_gb = statvfs(c.root, &sv) == 0 ? (double)sv.f_bavail * sv.f_frsize / 1e9 : -1;
        if (free_gb >= 0 && free_gb < 20)
            line(t, "warn", "cache", "'%s': writable, only %.1f GB free (a 7B model needs ~20 GB of cache)", c.root, free_gb);
        else
            line(t, "ok", "cache", "'%s': writable, %.1f GB free", c.root, free_gb);
    }
    free(probe);
    cache_close(&c);
}

static void check_hub(tally *t, const doctor_args *a) {
    hub_config cfg;
    if (hub_config_from_env(&cfg)) {
        line(t, "FAIL", "hub", "%s", err_msg());
        err_clear();
        return;
    }
    if (cfg.token) line(t, "ok", "token", "a Hugging Face token is set (%s)", getenv("HF_TOKEN") && *getenv("HF_TOKEN") ? "HF_TOKEN" : "$HF_HOME/token");
    else line(t, "warn", "token", "no Hugging Face token (HF_TOKEN or $HF_HOME/token): gated models such as Llama need one");
    if (a->offline || cfg.offline) {
        line(t, "ok", "hub", "not checked (%s)", cfg.offline ? "HF_HUB_OFFLINE=1" : "--offline");
        hub_config_free(&cfg);
        return;
    }
    net_init();
    CURL *e = curl_easy_init();
    char url[1024], errbuf[CURL_ERROR_SIZE];
    snprintf(url, sizeof url, "%s/api/models?limit=1", cfg.endpoint);
    net_opts o = {.timeout_s = (long)a->timeout, .ca_file = cfg.ca_file};
    net_easy_setup(e, &o, url, NULL, errbuf);
    curl_easy_setopt(e, CURLOPT_NOBODY, 1L);
    curl_easy_setopt(e, CURLOPT_TIMEOUT, (long)a->timeout);
    double t0 = clock_now_s();
    CURLcode c = curl_easy_perform(e);
    long status = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_cleanup(e);
    if (c != CURLE_OK) {
        net_curl_error(c, errbuf, url, 1);
        line(t, "warn", "hub", "%s: downloads will fail; cached models still work", err_msg());
        err_clear();
    } else {
        line(t, status < 500 ? "ok" : "warn", "hub", "%s answered HTTP %ld in %.0f ms", cfg.endpoint, status,
             (clock_now_s() - t0) * 1e3);
    }
    hub_config_free(&cfg);
}

/* the first directory of PATH holding an executable called name (malloc'd), or NULL */
static char *which(const char *name) {
    const char *path = getenv("PATH");
    if (!path) return NULL;
    char *copy = strdup(path), *save = NULL, *found = NULL;
    for (char *d = strtok_r(copy, ":", &save); d && !found; d = strtok_r(NULL, ":", &save)) {
        char *p = fs_join(d, name);
        if (access(p, X_OK) == 0) found = p;
        else free(p);
    }
    free(copy);
    return found;
}

static void check_multi_gpu(tally *t) {
    char *mpirun = which("mpirun");
    if (mpirun) line(t, "ok", "mpi", "mpirun at '%s'", mpirun);
    else line(t, "warn", "mpi", "no mpirun: --gpus N and mpirun launches need OpenMPI (apt-get install openmpi-bin)");
    free(mpirun);
    void *nccl = dlopen("libnccl.so.2", RTLD_NOW | RTLD_LOCAL);
    if (nccl) {
        int (*get)(int *) = (int (*)(int *))dlsym(nccl, "ncclGetVersion");
        int v = 0;
        if (get) get(&v);
        line(t, "ok", "nccl", "libnccl.so.2 loadable (version %d.%d.%d)", v / 10000, v / 100 % 100, v % 100);
        dlclose(nccl);
    } else {
        line(t, "warn", "nccl", "libnccl.so.2 not loadable: several GPUs need NCCL (add its directory to LD_LIBRARY_PATH)");
    }
}

int cmd_doctor(int argc, char **argv) {
    doctor_args a = {.timeout = 5};
    int n_pos, rc = cli_parse(&cli_doctor, &a, argc, argv, NULL, &n_pos);
    if (rc) return rc == CLI_HELP ? 0 : rc;
    tally t = {0};
    line(&t, "ok", "program", "qlora-run %s", version_short());
    check_gpu(&t);
    check_cache(&t);
    check_hub(&t, &a);
    check_multi_gpu(&t);
    printf("%d warning%s, %d failed\n", t.warn, t.warn == 1 ? "" : "s", t.fail);
    return t.fail ? ERR_STAGE : 0;
}
