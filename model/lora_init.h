/* lora_init.h: which linear modules of a Llama-family model get LoRA, and a fresh adapter.
 *
 * The linear modules of a decoder layer, in the order every adapter here lists them (layer by
 * layer): self_attn.{q,k,v,o}_proj and mlp.{gate,up,down}_proj; phi3's are self_attn.qkv_proj,
 * self_attn.o_proj, mlp.gate_up_proj and mlp.down_proj (its fused projections). A target is a
 * module-name suffix as peft matches it ("q_proj", "self_attn.q_proj"); "all-linear" selects
 * all of the family's (peft's shortcut, which never includes lm_head).
 *
 * A fresh adapter is peft's init_lora_weights=true: A ~ kaiming_uniform(a=sqrt(5)), i.e.
 * U(-1/sqrt(in), 1/sqrt(in)), B = 0. Element i of A is
 * rng_uniform(seed, rng_stream_of(<PEFT tensor name>), i) scaled to that range, a pure function
 * of the seed, so the same recipe gives the same bytes on every machine. */
#ifndef MODEL_LORA_INIT_H
#define MODEL_LORA_INIT_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "formats/peft.h"
#include "model/config.h"

#define LORA_N_KINDS 9
/* "q_proj", ..., "down_proj" (0..6), then phi3's "qkv_proj" (7) and "gate_up_proj" (8) */
extern const char *const lora_module_kinds[LORA_N_KINDS];
/* true when kind k is a module of c's family */
bool lora_kind_of(const model_config *c, int kind);

/* in/out features of module kind k (0..8) */
void lora_module_dims(const model_config *c, int kind, int64_t *in, int64_t *out);
/* "model.layers.<layer>.self_attn.q_proj" etc. into buf */
void lora_module_path(char *buf, size_t n, int layer, int kind);

/* Expand a recipe's targets (a JSON list of strings or one string; "all-linear") into the
 * list of kinds it selects (sel[k] true) in any family. Returns ERR_RECIPE naming a target that
 * matches no module of any family; lora_adapter_create checks them against the model's family. */
int lora_targets_select(const json_t *targets, bool sel[LORA_N_KINDS]);
/* The same, and every target a module of c's family (q_proj is none of phi3's): ERR_RECIPE naming
 * the target and the family's modules. */
int lora_targets_check(const json_t *targets, const model_config *c, bool sel[LORA_N_KINDS]);

typedef struct lora_init_opts {
    int r;
    double alpha, dropout;
    bool use_rslora;
    uint64_t seed;
    const json_t *targets; /* as in the recipe */
    const char *base_model; /* base_model_name_or_path, may be NULL */
} lora_init_opts;

/* Build a fresh adapter for config c into a (peft_adapter_init'ed by this function). */
int lora_adapter_create(peft_adapter *a, const model_config *c, const lora_init_opts *o);

/* trainable values in the adapter */
int64_t lora_adapter_param_count(const peft_adapter *a);

#endif
