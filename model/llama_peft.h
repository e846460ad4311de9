/* llama_peft.h: a PEFT adapter in and out of the engine's one contiguous LoRA buffer, and
 * the choice of backend for a stage's `device`.
 *
 * llama_peft_attach creates the model's LoRA tensors from the adapter's r, alpha, dropout,
 * rslora and targets and uploads every A and B to its offset in lora_params; llama_peft_read
 * downloads them back into the adapter's A/B (same modules, same shapes), ready for
 * peft_adapter_save. An adapter whose modules do not cover every targeted linear of every
 * layer, or that uses per-module ranks, is an ERR_DATA naming the module. */
#ifndef MODEL_LLAMA_PEFT_H
#define MODEL_LLAMA_PEFT_H

#include <stdbool.h>
#include <stddef.h>

#include "formats/peft.h"
#include "kernels/ops.h"
#include "model/llama.h"

int llama_peft_attach(llama_model *m, const peft_adapter *a, const char *where);
int llama_peft_read(const llama_model *m, peft_adapter *a);
/* after attach: load another adapter of the same shape (ERR_DATA naming a mismatch) */
int llama_peft_upload(llama_model *m, const peft_adapter *a, const char *where);
/* zero every LoRA value: the model then computes the base model exactly (B = 0) */
void llama_peft_zero(llama_model *m);

/* "cpu" -> ops_cpu(); "cuda" -> ops_cuda() when built with CUDA and a device is present,
 * else ERR_STAGE saying so; "auto" -> cuda when available, cpu otherwise. */
int device_ops(const char *device, const ops_table **out);

/* What a training run says at start about the backend: for cuda the device's name, its total and
 * free memory, the attention kernels, the bytes allocated so far and their peak; for cpu only
 * name = "cpu" (the other fields 0 / ""). */
typedef struct device_info {
    char name[256];
    double total_bytes, free_bytes; /* cudaMemGetInfo */
    double live_bytes, peak_bytes;  /* allocated through the op table and the ops' scratch */
    const char *attention;          /* "mma" | "tiled" | "" */
    size_t scratch_cap;             /* device_lean_scratch: 0 when uncapped */
} device_info;
void device_info_get(const ops_table *ops, device_info *out);
/* The lean plan of a run that checkpoints every layer: cap the backend's largest scratch (the
 * dequantized weight, shared with the cross-entropy chunk and attention's dq) at
 * DEVICE_LEAN_SCRATCH bytes, or lift the cap. No-op on cpu. */
#define DEVICE_LEAN_SCRATCH ((size_t)32 << 20)
void device_lean_scratch(const ops_table *ops, bool lean);

#endif
