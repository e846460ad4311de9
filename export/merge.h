/* merge.h: a base model plus a LoRA adapter, read tensor by tensor as merged f32 weights.
 *
 * The base is a Hugging Face checkpoint in bf16/f16/f32, or a bitsandbytes 4-bit one (NF4 or
 * FP4, with or without double quantization), which is dequantized first (model/bnb.h): merging into the
 * 4-bit codes is what loses quality, so we never do it. For every linear the adapter targets,
 * W' = W + scale * (B @ A), computed in fp32 (peft's get_delta_weight). Each tensor is
 * produced on demand into a caller buffer, so exporters (merged safetensors, GGUF) hold one
 * tensor at a time; the base's pages are released after each read.
 * Ownership: merge_open / merge_close. */
#ifndef MODEL_MERGE_H
#define MODEL_MERGE_H

#include <stdint.h>

#include "formats/peft.h"
#include "formats/safetensors.h"
#include "model/config.h"

typedef struct merge_src merge_src;

/* adapter_dir may be NULL (the base alone, dequantized). The adapter is validated against
 * the base's config (adapter.h) and every tensor the config implies must be present with
 * its shape: ERR_DATA naming what is wrong, before any output is written. */
int merge_open(merge_src **m, const char *base_dir, const char *adapter_dir, int threads);
void merge_close(merge_src **m);

/* the base's config with quantization_config removed and dtype bfloat16 */
const model_config *merge_config(const merge_src *m);
/* the tensors of the merged model (config_tensors order) */
const config_tensor *merge_tensors(const merge_src *m, size_t *n);
/* the base directory (for its tokenizer files) and the adapter (NULL if none) */
const char *merge_base_dir(const merge_src *m);
const peft_adapter *merge_adapter(const merge_src *m);
/* the merged tensor `name` as f32 into dst (numel elements) */
int merge_read(merge_src *m, const char *name, float *dst);

/* Write the merged model as an HF directory: safetensors in dtype (ST_BF16, ST_F16 or ST_F32;
 * config.json's dtype says which; anything else: bf16) (sharded above
 * max_shard_bytes, 0: 5 GB), config.json without quantization_config,
 * generation_config.json and the tokenizer files of the base. Complete or not at all.
 * progress: as in init_model.h (may be NULL). */
int merge_write_model(merge_src *m, const char *out_dir, st_dtype dtype, uint64_t max_shard_bytes,
                      int (*progress)(void *arg, uint64_t done, uint64_t total), void *arg);

#endif
