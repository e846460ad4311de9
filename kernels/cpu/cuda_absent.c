/* cuda_absent.c: what a build without CUDA (cmake -DQLORA_CUDA=OFF, sanitizer builds) answers
 * for the CUDA backend: no device and no table, as ops.h and kernels/cuda/device.h promise. */
#ifndef QLORA_HAVE_CUDA
#include <string.h>

#include "kernels/cuda/device.h"
#include "kernels/ops.h"

const ops_table *ops_cuda(void) { return NULL; }

int cuda_device_query(cuda_device_info *info) {
    memset(info, 0, sizeof *info);
    return 0;
}
#else
/* ISO C forbids an empty translation unit */
typedef int cuda_absent_unused;
#endif
