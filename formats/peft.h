/* peft.h: PEFT LoRA adapters, read and written exactly as huggingface/peft writes them.
 *
 * A directory holds adapter_config.json (json.dumps(indent=2, sort_keys=True), no trailing
 * newline, every key peft 0.21 writes) and adapter_model.safetensors (F32 tensors
 * `base_model.model.<module>.lora_A.weight` [r, in] and `.lora_B.weight` [out, r], with
 * __metadata__ {"format": "pt"}). See docs/peft.md.
 *
 * Keys of a loaded adapter_config.json that this struct does not model (rank_pattern,
 * modules_to_save, ...) are kept in `extra` and written back unchanged on save, so a
 * load/save round trip loses nothing. The forward pass is y = W x + scale * B (A x).
 * Ownership: peft_adapter_init/peft_adapter_load fill a caller-owned struct that
 * peft_adapter_free releases (every string and array in it is owned). */
#ifndef FORMATS_PEFT_H
#define FORMATS_PEFT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define PEFT_CONFIG_FILE "adapter_config.json"
#define PEFT_WEIGHTS_FILE "adapter_model.safetensors"
#define PEFT_VERSION_WRITTEN "0.21.0"

typedef struct peft_lora {
    char *module;      /* HF module path: "model.layers.0.self_attn.q_proj" */
    int r;             /* rank of this module (rank_pattern may differ from the default r) */
    int64_t in, out;   /* the base Linear's in_features / out_features */
    float *A;          /* (r, in)  row-major */
    float *B;          /* (out, r) row-major */
} peft_lora;

typedef struct peft_adapter {
    int r;                      /* default rank */
    double alpha;               /* lora_alpha */
    double dropout;             /* lora_dropout */
    bool use_rslora;            /* scale = alpha / sqrt(r) instead of alpha / r */
    char **targets;             /* target_modules as a list of suffixes (n_targets of them) */
    size_t n_targets;
    char *target_regex;         /* target_modules given as one string (regex / "all-linear"); NULL otherwise */
    char *base_model;           /* base_model_name_or_path; NULL writes null */
    char *task_type;            /* "CAUSAL_LM" unless loaded otherwise; NULL writes null */
    peft_lora *lora;            /* n_lora modules, in the order added (saved sorted by name) */
    size_t n_lora;
    json_t *extra;              /* other adapter_config.json keys from a load; NULL when none */
} peft_adapter;

/* defaults: r 8, alpha 8, dropout 0, task CAUSAL_LM, no targets, no modules */
void peft_adapter_init(peft_adapter *a);
void peft_adapter_free(peft_adapter *a);

int peft_adapter_add_target(peft_adapter *a, const char *target);
/* add a module with zeroed A (r, in) and B (out, r) of rank a->r; *out points at it (valid
 * until the next add). ERR_STAGE on a duplicate module or bad sizes. */
int peft_adapter_add(peft_adapter *a, const char *module, int64_t in, int64_t out, peft_lora **lora);
peft_lora *peft_adapter_find(const peft_adapter *a, const char *module); /* NULL if absent */

/* the scaling factor applied to B A for module l: alpha / r (or / sqrt(r) with rslora),
 * honouring alpha_pattern / rank_pattern overrides kept in `extra` */
double peft_adapter_scale(const peft_adapter *a, const peft_lora *l);

/* true if target-module list entry `target` selects `module` (peft's rule for a list:
 * the module name equals the target or ends with "." + target) */
bool peft_target_matches(const char *target, const char *module);

/* the exact adapter_config.json text (malloc'd, no trailing newline) */
char *peft_config_text(const peft_adapter *a);
/* write dir/adapter_config.json and dir/adapter_model.safetensors; the directory appears
 * complete or not at all (built under a temp name, then renamed; an existing one is replaced) */
int peft_adapter_save(const peft_adapter *a, const char *dir);
/* read and validate an adapter directory: every lora_A has its lora_B, shapes agree with r,
 * dtypes are float (F32/F16/BF16, converted to f32); ERR_DATA naming the file and tensor */
int peft_adapter_load(peft_adapter *a, const char *dir); /* a: uninitialised or zeroed (not init: it would leak) */

#endif
