/* device.c: the backend selector and the questions a run asks it (see device.h). */
#include "model/device.h"

#include <stdio.h>
#include <string.h>

#include "core/err.h"

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

void device_info_get(const ops_table *ops, device_info *out) {
    memset(out, 0, sizeof *out);
    out->attention = "";
    snprintf(out->name, sizeof out->name, "%s", ops->name);
    if (ops->info) ops->info(out);
}

void device_lean_scratch(const ops_table *ops, bool lean) {
    if (ops->scratch_cap_set) ops->scratch_cap_set(lean ? DEVICE_LEAN_SCRATCH : 0);
}
