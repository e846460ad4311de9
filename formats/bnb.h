/* bnb.h: the bitsandbytes 4-bit checkpoint layout (transformers + bitsandbytes save format).
 *
 * Writing: bnb_quantize_dir turns an HF model directory (bf16/f16/f32 safetensors, single file
 * or sharded) into the directory transformers writes after loading it with
 * BitsAndBytesConfig(load_in_4bit=True, ...) and save_pretrained (docs/bitsandbytes.md): every
 * Linear weight P.weight becomes P.weight (U8 [(n+1)/2, 1]), P.weight.absmax (U8 codes when
 * double-quantized, else F32), P.weight.quant_map, P.weight.nested_absmax,
 * P.weight.nested_quant_map and P.weight.quant_state.bitsandbytes__nf4|__fp4 (Python json.dumps
 * bytes); embeddings, norms, lm_head, biases and skip_modules stay as they are; config.json gains
 * quantization_config (BitsAndBytesConfig.to_dict); tokenizer and generation files are copied.
 * Work streams tensor by tensor from the mmapped input (two passes over each Linear: absmax
 * first, since the header must know every quant_state's length, then the codes while writing),
 * so memory stays near the largest single tensor plus the u8 absmax codes. The output is
 * built in a temp directory and renamed into place only when complete.
 *
 * Reading: bnb_linear_load gives one quantized Linear of such a checkpoint (ours or a user's
 * pre-quantized "-bnb-4bit" repo) as an ops_nf4: codes point into the mapping, absmax is
 * de-nested to f32 (owned), quant_map copied. */
#ifndef MODEL_BNB_H
#define MODEL_BNB_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "formats/safetensors.h"
#include "kernels/ops.h"

typedef struct bnb_opts {
    int quant_type;              /* OPS_NF4 (default) | OPS_FP4 */
    int blocksize;               /* 64; any of 32..4096 (powers of two) */
    bool double_quant;           /* true: absmax stored as 8-bit codes (nested blocksize 256) */
    const char *compute_dtype;   /* "bfloat16" | "float16" | "float32" (recorded only) */
    const char *const *skip;     /* module names kept in full precision (llm_int8_skip_modules) */
    int n_skip;
    int nthreads;                /* 2 */
    volatile int *interrupted;   /* polled between tensors (may be NULL) */
    /* called after each Linear of each pass: input bytes done / total over both passes (may be NULL) */
    void (*progress)(void *arg, double done, double total);
    void *progress_arg;
} bnb_opts;

void bnb_opts_default(bnb_opts *o);

typedef struct bnb_tensor_stat {
    char *name;               /* the input tensor */
    char module_type[32];     /* "q_proj", "embed_tokens", "input_layernorm", ... */
    int64_t numel;
    uint64_t bytes_before, bytes_after; /* after: every stored piece incl. quant_state */
    bool quantized;
    double rel_rmse;          /* ||W - dequant(quant(W))|| / ||W|| (0 when kept) */
} bnb_tensor_stat;

typedef struct bnb_report {
    bnb_tensor_stat *t;       /* in the input's name order */
    size_t n;
    int64_t params, params_quantized;
    uint64_t bytes_before, bytes_after;                 /* all tensors */
    uint64_t quant_bytes_before, quant_bytes_after;     /* quantized tensors only */
    double bits_per_param;    /* quantized tensors: 8 * stored bytes / parameters (~4.127 nested, bs 64) */
    double rel_rmse;          /* over all quantized parameters */
    double seconds;
    int shards;               /* output files */
} bnb_report;

void bnb_report_free(bnb_report *r);
/* The end-of-run table (per module type, then the totals), handed out one line at a time so the
 * stage (stage_logf) and the command (outf) print the same text. */
void bnb_report_lines(const bnb_report *r, void (*line)(void *arg, const char *text), void *arg);
/* {"tensors": [{name, module, numel, quantized, bytes_before, bytes_after, rel_rmse}...],
 *  "totals": {...}} for a manifest (new reference) */
json_t *bnb_report_json(const bnb_report *r);

/* ---- inspect: what a model's weights take in each format, from the headers alone ---- */
typedef struct bnb_inspect_row {
    char module_type[32]; /* "q_proj", ...; the last row is "total" */
    int tensors;
    int64_t params;
    bool quantizable;     /* a Linear bitsandbytes would quantize */
    double bytes_bf16, bytes_nf4, bytes_nf4_dq, bytes_stored; /* nf4: blocksize 64, f32 absmax */
} bnb_inspect_row;
/* rows: malloc'd (caller frees), grouped by module type in first-seen order, then "total".
 * A quantized checkpoint counts each Linear by its quant_state shape. */
int bnb_inspect(const char *dir, bnb_inspect_row **rows, size_t *n);

/* Quantize the model directory in_dir into out_dir (replaced atomically if it exists).
 * Errors (nothing is left under out_dir): ERR_DATA for an input that is not a safetensors
 * model, already quantized, a Linear weight of an unsupported dtype or a shape bitsandbytes
 * cannot take (empty, >= 2^31 elements), or NaN/Inf weights (the message names the tensor and the
 * first bad flat index); ERR_USAGE for bad options; ERR_STAGE for I/O (a full disk). */
int bnb_quantize_dir(const char *in_dir, const char *out_dir, const bnb_opts *o, bnb_report *rep);

/* true when a tensor of this name and rank is a Linear weight bitsandbytes would quantize */
bool bnb_should_quantize(const char *name, int ndim, const char *const *skip, int n_skip);
/* "q_proj" from "model.layers.0.self_attn.q_proj.weight" (into buf) */
const char *bnb_module_type(const char *name, char *buf, size_t n);

/* ---- reading ---- */

typedef struct bnb_linear {
    ops_nf4 w;            /* codes -> the mapping; absmax -> absmax below; quant_map -> qmap */
    float qmap[16];
    float *absmax;        /* [ceil(rows*cols/blocksize)], de-nested, owned */
    int quant_type;       /* OPS_NF4 | OPS_FP4 */
    bool nested;
    /* when nested: the stored double-quant form, for engines that keep it (1 byte a block) */
    const uint8_t *absmax_q; /* [blocks] -> the mapping */
    float *nested_absmax;    /* [n_nested], owned */
    int64_t n_nested;
    float nested_map[256];
    float nested_offset;
    char dtype[16];       /* the original weight dtype: "bfloat16", "float16", "float32" */
} bnb_linear;

/* true when prefix ("model.layers.0.self_attn.q_proj") has a quantized weight in m */
bool bnb_linear_present(const st_model *m, const char *prefix);
/* Load a quantized Linear; ERR_DATA naming the tensor when a piece is missing or inconsistent.
 * The st_model must outlive the result (codes point into it). */
int bnb_linear_load(const st_model *m, const char *prefix, bnb_linear *out);
void bnb_linear_free(bnb_linear *l);
/* the f32 weight [rows, cols] of a loaded Linear (dst: rows*cols floats) */
void bnb_linear_dequant(const bnb_linear *l, float *dst);

#endif
