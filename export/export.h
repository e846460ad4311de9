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

enum export_format { EXPORT_PEFT = 1, EXPORT_MERGED = 2, EXPORT_GGUF = 4 };

typedef struct export_opts {
    const char *base;         /* HF model directory (bf16 or bitsandbytes 4-bit) */
    const char *adapter;      /* PEFT adapter directory; NULL exports the base alone */
    unsigned formats;         /* EXPORT_* bits */
    ggml_type gguf_type;
    bool include_nf4;
    const char *name;         /* GGUF general.name; NULL: the base directory's name */
    uint64_t max_shard_bytes; /* 0: 5 GB */
    int threads;
    int (*progress)(void *arg, const char *what, uint64_t done, uint64_t total); /* nonzero: stop */
    void *progress_arg;
} export_opts;

/* "peft"|"merged"|"gguf" -> EXPORT_* bit; ERR_USAGE naming the formats otherwise */
int export_format_from_name(const char *name, unsigned *bit);
int export_run(const export_opts *o, const char *dir);
/* the GGUF file name for a type: "model-q8_0.gguf" */
void export_gguf_name(ggml_type t, char *out, size_t n);

#endif
