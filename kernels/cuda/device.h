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

/* Fills info for device 0; returns 0 with info->count == 0 when there is no usable GPU. */
int cuda_device_query(cuda_device_info *info);

#ifdef __cplusplus
}
#endif
#endif
