// device.cu: device discovery for `device: auto` (see device.h).
#include "device.h"

#include <cuda_runtime.h>
#include <stdio.h>
#include <string.h>

static int g_device;

extern "C" void cuda_device_select(int device) { g_device = device; }
extern "C" int cuda_device_selected(void) { return g_device; }

extern "C" int cuda_device_query(cuda_device_info *info) {
    memset(info, 0, sizeof *info);
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess || n == 0) {
        cudaGetLastError(); // clear the sticky "no driver" error
        return 0;
    }
    cudaDeviceProp p;
    if (g_device >= n || cudaGetDeviceProperties(&p, g_device) != cudaSuccess) return 0;
    info->count = n;
    strncpy(info->name, p.name, sizeof info->name - 1);
    info->cc_major = p.major;
    info->cc_minor = p.minor;
    info->sm_count = p.multiProcessorCount;
    cudaSetDevice(g_device);
    cudaMemGetInfo(&info->free_bytes, &info->total_bytes);
    return 0;
}

extern "C" void cuda_versions(int *driver, int *runtime) {
    *driver = *runtime = 0;
    if (cudaDriverGetVersion(driver) != cudaSuccess) *driver = 0;
    if (cudaRuntimeGetVersion(runtime) != cudaSuccess) *runtime = 0;
    cudaGetLastError();
}

// The first line reads "NVRM version: NVIDIA UNIX x86_64 Kernel Module  580.159.04  <date>" or, for
// the open kernel modules, "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04
// Release Build ...": the release is the first word after "Kernel Module" that starts with a digit.
extern "C" void cuda_driver_release(char *out, size_t cap) {
    if (!cap) return;
    out[0] = 0;
    FILE *f = fopen("/proc/driver/nvidia/version", "r");
    if (!f) return;
    char line[512];
    if (fgets(line, sizeof line, f)) {
        const char *p = strstr(line, "Kernel Module");
        while (p && *p) {
            p += strcspn(p, " \t\n");
            p += strspn(p, " \t\n");
            if (*p >= '0' && *p <= '9') {
                size_t n = strcspn(p, " \t\n");
                if (n >= cap) n = cap - 1;
                memcpy(out, p, n);
                out[n] = 0;
                break;
            }
        }
    }
    fclose(f);
}
