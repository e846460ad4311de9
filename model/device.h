/* device.h: the one backend selector (a stage's or a command's `device` to an op table) and
 * what a run asks the chosen backend, through the table's own questions (kernels/ops.h), never
 * by comparing its name. Train, evaluate, generate and the planner's `auto` all come here. */
#ifndef MODEL_DEVICE_H
#define MODEL_DEVICE_H

#include <stdbool.h>
#include <stddef.h>

#include "kernels/ops.h"

/* "cpu" -> ops_cpu(); "cuda" -> ops_cuda() when built with CUDA and a device is present,
 * else ERR_STAGE saying so (NULL: cpu); "auto" -> cuda when available, cpu otherwise; anything
 * else is ERR_USAGE. */
int device_ops(const char *device, const ops_table **out);
/* "auto" resolved to the name of the table device_ops would pick ("cpu" or "cuda"); "cpu" and
 * "cuda" as given (a missing device is reported when a stage asks for its table) */
const char *device_resolve(const char *device);

/* What a training run says at start about the backend: for cuda the device's name, its total and
 * free memory, the attention kernels, the bytes allocated so far and their peak; for cpu only
 * name = "cpu" (the other fields 0 / ""). */
typedef ops_backend_info device_info;
void device_info_get(const ops_table *ops, device_info *out);
/* the device memory in use (total less free: on a device of its own, all of this process's, the
 * CUDA context and the libraries' modules too), which a memory_budget bounds; 0 on cpu */
double device_used_bytes(const ops_table *ops);
/* the host RAM this process's pinned allocations (alloc_host) may still take: the backend's
 * host_free_bytes, else, for a device with memory of its own, /proc/meminfo's MemAvailable; an
 * even share of it with several ranks on the machine (coll_local_world); 0 when not known.
 * Reads /proc/meminfo: for plans, not for a step. */
double device_host_free_bytes(const ops_table *ops);

/* Deterministic mode (a recipe's `deterministic`, docs/determinism.md): tell the backend, before
 * any op runs. 0, or ERR_RECIPE naming what cannot be made fixed-order (the tiled attention
 * backward; with world > 1 on cuda an NCCL reduction that runs in the switch: NCCL_ALGO with NVLS
 * or CollNet, NCCL_NVLS_ENABLE or NCCL_COLLNET_ENABLE other than 0; unset ones are set to 0). */
int device_deterministic(const ops_table *ops, bool on, int world);
/* deterministic mode and the model: on cuda, attention with head dims over 128 runs on the tiled
 * kernels, whose backward has no fixed-order form: ERR_RECIPE naming the model's head dim, before
 * any weight is loaded (train; the forward alone is fixed-order everywhere) */
int device_deterministic_model(const ops_table *ops, bool on, int head_dim, const char *model_dir);

/* The lean plan of a run that checkpoints every layer: cap the backend's largest scratch (the
 * dequantized weight, shared with the cross-entropy chunk and attention's dq) at
 * DEVICE_LEAN_SCRATCH bytes, or lift the cap. No-op on a backend without that scratch (cpu). */
#define DEVICE_LEAN_SCRATCH ((size_t)32 << 20)
void device_lean_scratch(const ops_table *ops, bool lean);

/* Data parallel: the gradient all-reduce of this backend (core/collective.h). On cuda, NCCL on a
 * stream of its own when world > 1 (or on one rank with QLORA_NCCL=1: the communicator is made,
 * but a world of one queues no all-reduce); on cpu nothing to start: MPI sums host memory. A
 * collective: every rank calls it. */
int device_collective(const ops_table *ops, int world);
/* Data parallel: the GPU of this process, by its local rank (core/collective.h); an error naming
 * the rank when the machine shows too few GPUs. No-op for device cpu or without a GPU. */
int device_select_rank(const char *want, int rank, int local_rank, int local_world);
/* GPUs this process sees (0 without CUDA or a GPU) */
int device_count(void);

#endif
