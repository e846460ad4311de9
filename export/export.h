/* export.h: what users take away from a run, shared by the export stage and `qlora-run export`.
 *
 * Into an existing directory `dir`:
 *   adapter/            the PEFT adapter (validated against the base, re-saved as peft writes it)
 *   model/              the merged model: bf16 safetensors shards, config.json (no
 *                       quantization_config), generation_config.json, tokenizer files
 *   model-<type>.gguf   the merged model as GGUF (f16, bf16, q8_0 or f32)
 *   nf4/                the base's bitsandbytes 4-bit checkpoint, copied (include_nf4)
 * Everything is validated (base config and tensors, adapter shapes and targets) before the
 * first byte is written; each output is written under a temp name and renamed when complete. */
#ifndef MODEL_EXPORT_H
#define MODEL_EXPORT_H

#include <stdbool.h>
#include <stdint.h>

#include "formats/gguf.h"
#include "formats/safetensors.h"

enum export_format { EXPORT_PEFT = 1, EXPORT_MERGED = 2, EXPORT_GGUF = 4 };

typedef struct export_opts {
    const char *base;         /* HF model directory (bf16 or bitsandbytes 4-bit) */
    const char *adapter;      /* PEFT adapter directory; NULL exports the base alone */
    unsigned formats;         /* EXPORT_* bits */
    ggml_type gguf_type;
    st_dtype merged_dtype;    /* the merged model's tensors: ST_BF16 (0, ST_BOOL, too), ST_F16 or ST_F32 */
    bool include_nf4;
    const char *name;         /* GGUF general.name; NULL: the base directory's name */
    bool set_base_model;      /* write base_model below into adapter_config.json, not the adapter's own */
    const char *base_model;   /* base_model_name_or_path (NULL writes null): docs/exports.md */
    uint64_t max_shard_bytes; /* 0: 5 GB */
    int threads;
    int (*progress)(void *arg, const char *what, uint64_t done, uint64_t total); /* nonzero: stop */
    void *progress_arg;
} export_opts;

/* "bf16"|"f16"|"f32" (as st_float_dtype_parse names them) -> ST_BF16|ST_F16|ST_F32 (the merged
 * model's dtype); ERR_USAGE otherwise */
int export_merged_dtype(const char *name, st_dtype *dtype);
/* "peft"|"merged"|"gguf" -> EXPORT_* bit; ERR_USAGE naming the formats otherwise */
int export_format_from_name(const char *name, unsigned *bit);
int export_run(const export_opts *o, const char *dir);
/* the GGUF file name for a type: "model-q8_0.gguf" */
void export_gguf_name(ggml_type t, char *out, size_t n);

/* GGUF general.name for a base known as model_name (a hub repo id or a folder; NULL: a generated
 * model): its last part, as llama.cpp's converter names a model, or "generated-<arch>" read from
 * base_dir's config.json (malloc'd; NULL with the error set when that config cannot be read) */
char *export_model_name(const char *model_name, const char *base_dir);

/* The entries an export writes into its directory: adapter/, model/, nf4/, model-*.gguf (and
 * their temp names). A directory holding anything else belongs to a user and is never replaced. */
bool export_entry(const char *name);
/* 0 when `out` is missing, empty, or holds nothing but export entries; ERR_USAGE naming up to
 * three foreign entries otherwise ("label 'out' holds ..."); label: "--out", "output_dir", ... */
int export_check_out(const char *out, const char *label);
/* Copy the export entries of directory `from` (an export stage's artifact) to `to`, written
 * under a temp name and renamed into place (an existing `to` must pass export_check_out). */
int export_copy_out(const char *from, const char *to, const char *label);

#endif
