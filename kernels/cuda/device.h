/* device.h: what CUDA device, if any, this process can use. C-callable; the
 * CPU-only build (no QLORA_HAVE_CUDA) reports no device. */
#ifndef KERNELS_CUDA_DEVICE_H
#define KERNELS_CUDA_DEVICE_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cuda_device_info {
    int count;          /* devices visible; 0 when none or no driver */
    char name[256];     /* device 0 */
    size_t total_bytes, free_bytes;
    int cc_major, cc_minor;
    int sm_count;
} cuda_device_info;

/* Fills info for the selected device (0 unless cuda_device_select said otherwise); returns 0 with
 * info->count == 0 when there is no usable GPU. */
int cuda_device_query(cuda_device_info *info);
/* The device every op runs on: one process a GPU, the process's local rank (data parallel). Call
 * before the first op; later calls have no effect on the ops' stream. */
void cuda_device_select(int device);
int cuda_device_selected(void);

/* The CUDA driver's and this program's runtime version as CUDA writes them (13000 = 13.0);
 * *driver is 0 when no driver is installed. */
void cuda_versions(int *driver, int *runtime);

/* The NVIDIA kernel driver's release ("580.159.04"), read from /proc/driver/nvidia/version;
 * "" when there is none. */
void cuda_driver_release(char *out, size_t cap);

/* Whether cuBLAS can be loaded (it is opened on first use, see cublas_lazy.cu): 0, or -1 with
 * the reason and what to do in msg. */
int cuda_cublas_probe(char *msg, size_t cap);

#ifdef __cplusplus
}
#endif
#endif
