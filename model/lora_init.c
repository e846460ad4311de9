/* lora_init.c: LoRA target selection and fresh adapters (see lora_init.h). */
#include "lora_init.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "core/err.h"
#include "core/rng.h"

const char *const lora_module_kinds[LORA_N_KINDS] = {"q_proj",  "k_proj",    "v_proj",   "o_proj",      "gate_proj",
                                                     "up_proj", "down_proj", "qkv_proj", "gate_up_proj"};

bool lora_kind_of(const model_config *c, int kind) {
    bool fused_only = kind >= 7, both = kind == 3 || kind == 6;
    return both || fused_only == config_fused(c);
}

void lora_module_dims(const model_config *c, int kind, int64_t *in, int64_t *out) {
    int64_t C = c->hidden_size, I = c->intermediate_size;
    int64_t q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    switch (kind) {
    case 0: *in = C, *out = q; break;
    case 1:
    case 2: *in = C, *out = kv; break;
    case 3: *in = q, *out = C; break;
    case 4:
    case 5: *in = C, *out = I; break;
    case 7: *in = C, *out = q + 2 * kv; break;
    case 8: *in = C, *out = 2 * I; break;
    default: *in = I, *out = C; break;
    }
}

void lora_module_path(char *buf, size_t n, int layer, int kind) {
    bool attn = kind < 4 || kind == 7;
    snprintf(buf, n, "model.layers.%d.%s.%s", layer, attn ? "self_attn" : "mlp", lora_module_kinds[kind]);
}

static int select_one(const char *t, bool sel[LORA_N_KINDS]) {
    if (!strcmp(t, "all-linear")) {
        for (int k = 0; k < LORA_N_KINDS; k++) sel[k] = true;
        return 0;
    }
    bool any = false;
    char path[128];
    for (int k = 0; k < LORA_N_KINDS; k++) {
        lora_module_path(path, sizeof path, 0, k);
        if (peft_target_matches(t, path)) sel[k] = any = true;
    }
    if (!any)
        return err_set(ERR_RECIPE,
                       "target '%s' matches no module: use q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, "
                       "down_proj (phi3: qkv_proj, o_proj, gate_up_proj, down_proj) or all-linear",
                       t);
    return 0;
}

int lora_targets_select(const json_t *targets, bool sel[LORA_N_KINDS]) {
    for (int k = 0; k < LORA_N_KINDS; k++) sel[k] = false;
    if (json_is_string(targets)) return select_one(json_string_value(targets), sel);
    if (!json_is_array(targets) || json_array_size(targets) == 0)
        return err_set(ERR_RECIPE, "targets must be a non-empty list of module names");
    size_t i;
    json_t *v;
    json_array_foreach(targets, i, v) {
        if (!json_is_string(v)) return err_set(ERR_RECIPE, "targets[%zu] must be a module name string", i);
        int rc = select_one(json_string_value(v), sel);
        if (rc) return rc;
    }
    return 0;
}

/* every target (already a valid list: lora_targets_select) must name a module of c's family
 * (q_proj is none of phi3's, qkv_proj none of llama's) */
static int targets_check_family(const json_t *targets, const model_config *c) {
    size_t n = json_is_array(targets) ? json_array_size(targets) : 1;
    for (size_t i = 0; i < n; i++) {
        const json_t *v = json_is_array(targets) ? json_array_get(targets, i) : targets;
        bool sel[LORA_N_KINDS] = {false}, any = false;
        int rc = select_one(json_string_value(v), sel);
        if (rc) return rc;
        for (int k = 0; k < LORA_N_KINDS; k++) any |= sel[k] && lora_kind_of(c, k);
        if (!any)
            return err_set(ERR_RECIPE, "target '%s' matches no module of a %s model (its modules: %s)",
                           json_string_value(v), config_arch_name(c->arch),
                           config_fused(c) ? "qkv_proj, o_proj, gate_up_proj, down_proj"
                                           : "q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj");
    }
    return 0;
}

int lora_targets_check(const json_t *targets, const model_config *c, bool sel[LORA_N_KINDS]) {
    int rc = lora_targets_select(targets, sel);
    return rc ? rc : targets_check_family(targets, c);
}

int lora_adapter_create(peft_adapter *a, const model_config *c, const lora_init_opts *o) {
    bool sel[LORA_N_KINDS];
    int rc = lora_targets_check(o->targets, c, sel);
    if (rc) return rc;
    for (int k = 0; k < LORA_N_KINDS; k++) sel[k] = sel[k] && lora_kind_of(c, k);
    /* the order of a layer's modules in the adapter: as the family's layer lists them */
    static const int order_plain[] = {0, 1, 2, 3, 4, 5, 6}, order_fused[] = {7, 3, 8, 6};
    const int *order = config_fused(c) ? order_fused : order_plain;
    int n_order = config_fused(c) ? 4 : 7;
    if (o->r < 1) return err_set(ERR_RECIPE, "r must be at least 1");
    peft_adapter_init(a);
    a->r = o->r;
    a->alpha = o->alpha;
    a->dropout = o->dropout;
    a->use_rslora = o->use_rslora;
    if (o->base_model) a->base_model = strdup(o->base_model);
    /* target_modules as the recipe names them; "all-linear" is saved expanded to the module
     * names, as peft does once it has seen the model */
    bool all = json_is_string(o->targets) && !strcmp(json_string_value(o->targets), "all-linear");
    size_t i;
    json_t *v;
    json_array_foreach(o->targets, i, v) all = all || !strcmp(json_string_value(v), "all-linear");
    if (all) {
        for (int oi = 0; !rc && oi < n_order; oi++) rc = peft_adapter_add_target(a, lora_module_kinds[order[oi]]);
    } else if (json_is_string(o->targets)) {
        rc = peft_adapter_add_target(a, json_string_value(o->targets));
    } else {
        json_array_foreach(o->targets, i, v) if (!rc) rc = peft_adapter_add_target(a, json_string_value(v));
    }
    for (int l = 0; !rc && l < c->num_layers; l++)
        for (int oi = 0; !rc && oi < n_order; oi++) {
            int k = order[oi];
            if (!sel[k]) continue;
            char path[128];
            lora_module_path(path, sizeof path, l, k);
            int64_t in, out;
            lora_module_dims(c, k, &in, &out);
            peft_lora *m;
            if ((rc = peft_adapter_add(a, path, in, out, &m))) break;
            /* kaiming_uniform_(a=sqrt(5)): gain sqrt(2/(1+5)), bound gain*sqrt(3/in) = 1/sqrt(in) */
            float bound = 1.0f / sqrtf((float)in); /* the same float expression as llama_lora_init_peft */
            char stream[192]; /* the PEFT tensor name: the engine's llama_lora_init_peft draws the same */
            snprintf(stream, sizeof stream, "base_model.model.%s.lora_A.weight", path);
            uint64_t sid = rng_stream_of(stream);
            for (int64_t e = 0; e < (int64_t)m->r * in; e++)
                m->A[e] = (2.0f * rng_uniform(o->seed, sid, (uint64_t)e) - 1.0f) * bound;
        }
    if (rc) peft_adapter_free(a);
    return rc;
}

int64_t lora_adapter_param_count(const peft_adapter *a) {
    int64_t n = 0;
    for (size_t i = 0; i < a->n_lora; i++) n += (int64_t)a->lora[i].r * (a->lora[i].in + a->lora[i].out);
    return n;
}
