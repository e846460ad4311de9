/* device.c: the backend selector and the questions a run asks it (see device.h). */
#define _GNU_SOURCE /* strcasestr */
#include "model/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/collective.h"
#include "core/err.h"
#include "kernels/cuda/cuda_ext.h"
#include "kernels/cuda/device.h"

/* The CUDA extras exist only in builds with the CUDA kernels: without them a weak reference reads
 * NULL (with them the references must be strong, to pull the members out of the static library). */
#ifndef QLORA_HAVE_CUDA
#pragma weak cuda_comm_stream
#pragma weak cuda_device_query
#pragma weak cuda_device_select
#pragma weak cuda_comm_after_main
#pragma weak cuda_main_after_comm
#define HAVE_FN(f) ((f) != NULL)
#else
#define HAVE_FN(f) 1
#endif

int device_ops(const char *device, const ops_table **out) {
    const ops_table *cuda = ops_cuda();
    if (!device || !strcmp(device, "cpu")) {
        *out = ops_cpu();
    } else if (!strcmp(device, "auto")) {
        *out = cuda ? cuda : ops_cpu();
    } else if (!strcmp(device, "cuda")) {
        if (!cuda) return err_set(ERR_STAGE, "device 'cuda' requested but no CUDA device is usable (built without "
                                             "CUDA, or no GPU): use device: cpu");
        *out = cuda;
    } else {
        return err_set(ERR_USAGE, "unknown device '%s' (cpu, cuda or auto)", device);
    }
    return 0;
}

const char *device_resolve(const char *device) {
    if (device && !strcmp(device, "cpu")) return "cpu";
    if (device && !strcmp(device, "cuda")) return "cuda";
    return ops_cuda() ? "cuda" : "cpu";
}

/* the host RAM the kernel could still give without swapping (/proc/meminfo's MemAvailable: free
 * pages, plus the page cache and reclaimable slabs it can drop); 0 when not known */
static double host_available_bytes(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    double kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kib) == 1) break;
    fclose(f);
    return kib * 1024.0;
}

void device_info_get(const ops_table *ops, device_info *out) {
    memset(out, 0, sizeof *out);
    out->attention = "";
    snprintf(out->name, sizeof out->name, "%s", ops->name);
    out->deterministic = ops->deterministic_set == NULL; /* such a backend is deterministic always */
    if (ops->info) ops->info(out);
}

double device_used_bytes(const ops_table *ops) {
    device_info di;
    device_info_get(ops, &di);
    return di.total_bytes - di.free_bytes;
}

double device_host_free_bytes(const ops_table *ops) {
    device_info di;
    device_info_get(ops, &di);
    double avail = di.host_free_bytes;
    if (avail <= 0 && ops->own_memory && ops->alloc_host) avail = host_available_bytes();
    /* the ranks of a data-parallel run on this machine plan at about the same time, each seeing
     * the RAM before the others pin theirs: each counts on its share */
    return coll_local_world() > 1 ? avail / coll_local_world() : avail;
}

int device_deterministic_model(const ops_table *ops, bool on, int head_dim, const char *model_dir) {
    if (!on || !ops->deterministic_set || strcmp(ops->name, "cuda") || head_dim <= 128) return 0;
    return err_set(ERR_RECIPE, "deterministic: true cannot be honoured for the model in '%s': its head_dim is %d, and "
                               "attention with head dims over 128 runs on the tiled kernels, whose backward has no "
                               "fixed-order form; set deterministic: false (or train on device: cpu)",
                   model_dir, head_dim);
}

int device_deterministic(const ops_table *ops, bool on, int world) {
    char why[512] = "";
    if (ops->deterministic_set && ops->deterministic_set(on ? 1 : 0, why, sizeof why))
        return err_set(ERR_RECIPE, "deterministic: true cannot be honoured on device %s: %s", ops->name, why);
    if (!on || world <= 1 || strcmp(ops->name, "cuda")) return 0;
    /* NCCL's ring and tree all-reduce add in an order fixed by the world size, the topology and
     * the NCCL version; NVLink SHARP (NVLS) and CollNet reduce inside the switch or the network,
     * in an order NCCL does not document as fixed: refuse them, and keep NCCL from picking them */
    const char *algo = getenv("NCCL_ALGO");
    if (algo && (strcasestr(algo, "nvls") || strcasestr(algo, "collnet")))
        return err_set(ERR_RECIPE, "deterministic: true with %d GPUs cannot be honoured with NCCL_ALGO=%s: NVLS and "
                                   "CollNet reduce in the switch in no documented order; use NCCL_ALGO=Ring (or "
                                   "unset it) or set deterministic: false", world, algo);
    const char *nvls = getenv("NCCL_NVLS_ENABLE"), *cn = getenv("NCCL_COLLNET_ENABLE");
    if ((nvls && strcmp(nvls, "0")) || (cn && strcmp(cn, "0")))
        return err_set(ERR_RECIPE, "deterministic: true with %d GPUs cannot be honoured with %s=%s: those "
                                   "reductions run in the switch in no documented order; set it to 0 or set "
                                   "deterministic: false", world, nvls && strcmp(nvls, "0") ? "NCCL_NVLS_ENABLE" : "NCCL_COLLNET_ENABLE",
                       nvls && strcmp(nvls, "0") ? nvls : cn);
    setenv("NCCL_NVLS_ENABLE", "0", 0);
    setenv("NCCL_COLLNET_ENABLE", "0", 0);
    return 0;
}

void device_lean_scratch(const ops_table *ops, bool lean) {
    if (ops->scratch_cap_set) ops->scratch_cap_set(lean ? DEVICE_LEAN_SCRATCH : 0);
}

int device_collective(const ops_table *ops, int world) {
    const char *force = getenv("QLORA_NCCL");
    bool want = world > 1 || (force && !strcmp(force, "1"));
    if (strcmp(ops->name, "cuda") || !want || !HAVE_FN(cuda_comm_stream)) return 0;
    return coll_nccl_init(cuda_comm_stream(), cuda_comm_after_main, cuda_main_after_comm);
}

int device_select_rank(const char *want, int rank, int local_rank, int local_world) {
    if (!strcmp(want, "cpu")) return 0;
    if (!HAVE_FN(cuda_device_query) || !HAVE_FN(cuda_device_select)) return 0;
    cuda_device_info info;
    if (cuda_device_query(&info) || info.count == 0) return 0; /* no GPU: device_ops says so if cuda is wanted */
    /* one GPU visible per process (Slurm's --gpus-per-task, a CUDA_VISIBLE_DEVICES per rank): that one */
    if (info.count == 1) return 0;
    if (local_rank >= info.count)
        return err_set(ERR_USAGE,
                       "rank %d cannot see a GPU of its own: it is local rank %d of %d on this machine, which shows "
                       "%d GPUs; start at most %d processes a machine",
                       rank, local_rank, local_world, info.count, info.count);
    cuda_device_select(local_rank);
    return 0;
}

int device_count(void) {
    cuda_device_info info;
    if (!HAVE_FN(cuda_device_query) || cuda_device_query(&info)) return 0;
    return info.count;
}
