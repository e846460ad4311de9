/* config.c: config.json of the decoder families config.h lists (see config.h and
 * docs/llama-checkpoint.md). Reading accepts both transformers layouts; writing uses the
 * 4.x one through the Python-compatible dumper, so the file reads like transformers' own. */
#include "config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "formats/pyjson.h"
#include "core/json_in.h"

#define SUPPORTED_ARCHS "llama, mistral, qwen2, qwen3, gemma2, gemma3_text, phi3"

static const char *arch_names[] = {"llama", "mistral", "qwen2", "qwen3", "gemma3_text", "phi3", "gemma2"};
static const char *arch_classes[] = {"LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM",
                                     "Gemma3ForCausalLM", "Phi3ForCausalLM", "Gemma2ForCausalLM"};

const char *config_arch_name(model_arch a) { return (unsigned)a < ARCH_COUNT ? arch_names[a] : "?"; }

int config_arch_from_name(const char *name, model_arch *a) {
    if (!strcmp(name, "gemma3")) name = "gemma3_text"; /* the text model is the one we build */
    for (int i = 0; i < ARCH_COUNT; i++)
        if (!strcmp(name, arch_names[i])) { *a = (model_arch)i; return 0; }
    return err_set(ERR_USAGE, "unknown architecture '%s' (supported: " SUPPORTED_ARCHS ")", name);
}

void config_free(model_config *c) {
    json_decref(c->skip_modules);
    c->skip_modules = NULL;
}

/* ---- reading ---- */

static int get_int(const json_t *j, const char *key, int64_t def, int64_t min, int64_t *out, const char *path) {
    return json_in_int(j, key, path, def, min, INT64_MAX, out);
}

static int get_num(const json_t *j, const char *key, double def, double *out, const char *path) {
    return json_in_num(j, key, path, def, out);
}

static int get_bool(const json_t *j, const char *key, bool def, bool *out, const char *path) {
    return json_in_bool(j, key, path, def, out);
}

/* a token id: an integer, null (-1) or, for eos, a list whose first entry counts */
static int get_token(const json_t *j, const char *key, int def, int *out, const char *path) {
    json_t *v = json_object_get(j, key);
    if (!v) { *out = def; return 0; }
    if (json_is_null(v)) { *out = -1; return 0; }
    if (json_is_array(v)) v = json_array_get(v, 0);
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > INT32_MAX)
        return err_set(ERR_DATA, "%s: \"%s\" must be a token id, a list of ids or null (got %s)", path, key,
                       v ? json_in_type_name(v) : "an empty list");
    *out = (int)json_integer_value(v);
    return 0;
}

/* one list of longrope factors (positive numbers) into dst; *n: how many */
static int get_factors(const json_t *r, const char *list, const char *key, const char *path, double *dst, int *n) {
    json_t *v = json_object_get(r, list);
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > CONFIG_MAX_ROPE_FACTORS)
        return err_set(ERR_DATA, "%s: %s.%s must be a list of 1..%d numbers (one per rotated frequency)", path, key,
                       list, CONFIG_MAX_ROPE_FACTORS);
    for (size_t i = 0; i < json_array_size(v); i++) {
        json_t *e = json_array_get(v, i);
        if (!json_is_number(e) || json_number_value(e) <= 0)
            return err_set(ERR_DATA, "%s: %s.%s[%zu] must be a positive number", path, key, list, i);
        dst[i] = json_number_value(e);
    }
    *n = (int)json_array_size(v);
    return 0;
}

/* phi3's longrope ("su" in the first 128k configs): short and long factors, the original context
 * length (here or at the top level, see parse_phi3), an optional factor and attention_factor */
static int parse_longrope(model_config *c, const json_t *r, const char *key, const char *path) {
    int ns = 0, nl = 0, rc;
    c->rope_type = ROPE_LONGROPE;
    if ((rc = get_factors(r, "short_factor", key, path, c->rope_short_factor, &ns))) return rc;
    if ((rc = get_factors(r, "long_factor", key, path, c->rope_long_factor, &nl))) return rc;
    if (ns != nl)
        return err_set(ERR_DATA, "%s: %s has %d short_factor and %d long_factor entries (they must be as many)", path,
                       key, ns, nl);
    c->n_rope_factors = ns;
    if (json_object_get(r, "original_max_position_embeddings") &&
        (rc = get_int(r, "original_max_position_embeddings", 4096, 1, &c->rope_original_max_position, path)))
        return rc;
    c->rope_factor = 0; /* 0: max_position_embeddings / original, as transformers derives it */
    json_t *f = json_object_get(r, "factor");
    if (f && !json_is_null(f) && (rc = get_num(r, "factor", 1.0, &c->rope_factor, path))) return rc;
    c->rope_attn_factor = 0;
    f = json_object_get(r, "attention_factor");
    if (f && !json_is_null(f) && (rc = get_num(r, "attention_factor", 1.0, &c->rope_attn_factor, path))) return rc;
    if (c->rope_factor < 0 || c->rope_attn_factor < 0)
        return err_set(ERR_DATA, "%s: %s factor and attention_factor must be positive", path, key);
    return 0;
}

/* rope_scaling (4.x) or rope_parameters (5.x): both are {"rope_type"|"type": ..., ...} */
static int parse_rope(model_config *c, const json_t *r, const char *key, const char *path) {
    if (!r || json_is_null(r)) return 0;
    if (!json_is_object(r)) return err_set(ERR_DATA, "%s: \"%s\" must be an object or null", path, key);
    json_t *t = json_object_get(r, "rope_type");
    if (!t) t = json_object_get(r, "type");
    const char *type = json_is_string(t) ? json_string_value(t) : "default";
    int rc = 0;
    if (json_object_get(r, "rope_theta")) rc = get_num(r, "rope_theta", c->rope_theta, &c->rope_theta, path);
    if (!rc && json_object_get(r, "partial_rotary_factor"))
        rc = get_num(r, "partial_rotary_factor", 1.0, &c->partial_rotary_factor, path);
    if (rc) return rc;
    if (!strcmp(type, "default")) { c->rope_type = ROPE_DEFAULT; return 0; }
    if (c->arch == ARCH_PHI3 && (!strcmp(type, "longrope") || !strcmp(type, "su"))) return parse_longrope(c, r, key, path);
    if (!strcmp(type, "linear")) c->rope_type = ROPE_LINEAR;
    else if (!strcmp(type, "dynamic")) c->rope_type = ROPE_DYNAMIC;
    else if (!strcmp(type, "llama3")) c->rope_type = ROPE_LLAMA3;
    else if (c->arch == ARCH_PHI3)
        return err_set(ERR_DATA, "%s: %s type '%s' is not supported for phi3 (supported: default, longrope, su)", path, key, type);
    else return err_set(ERR_DATA, "%s: %s type '%s' is not supported (supported: default, linear, dynamic, llama3)", path, key, type);
    if ((rc = get_num(r, "factor", 1.0, &c->rope_factor, path))) return rc;
    if (c->rope_factor <= 0) return err_set(ERR_DATA, "%s: %s factor must be positive", path, key);
    if (c->rope_type == ROPE_LLAMA3) {
        if ((rc = get_num(r, "low_freq_factor", 1.0, &c->rope_low_freq_factor, path))) return rc;
        if ((rc = get_num(r, "high_freq_factor", 4.0, &c->rope_high_freq_factor, path))) return rc;
        if ((rc = get_int(r, "original_max_position_embeddings", 8192, 1, &c->rope_original_max_position, path))) return rc;
        if (c->rope_high_freq_factor <= c->rope_low_freq_factor)
            return err_set(ERR_DATA, "%s: %s: high_freq_factor must be larger than low_freq_factor", path, key);
    }
    return 0;
}

static int parse_quant(model_config *c, const json_t *q, const char *path) {
    if (!q || json_is_null(q)) return 0;
    if (!json_is_object(q)) return err_set(ERR_DATA, "%s: \"quantization_config\" must be an object", path);
    json_t *m = json_object_get(q, "quant_method");
    const char *method = json_is_string(m) ? json_string_value(m) : "?";
    if (strcmp(method, "bitsandbytes"))
        return err_set(ERR_DATA, "%s: quantization method '%s' is not supported (only bitsandbytes 4-bit checkpoints)", path, method);
    if (!json_is_true(json_object_get(q, "load_in_4bit")))
        return err_set(ERR_DATA, "%s: only bitsandbytes 4-bit checkpoints are supported (load_in_4bit is not true)", path);
    c->quantized = true;
    json_t *v = json_object_get(q, "bnb_4bit_quant_type");
    const char *qt = json_is_string(v) ? json_string_value(v) : "fp4"; /* transformers' default */
    if (strcmp(qt, "nf4") && strcmp(qt, "fp4")) return err_set(ERR_DATA, "%s: bnb_4bit_quant_type '%s' (expected nf4 or fp4)", path, qt);
    snprintf(c->quant_type, sizeof c->quant_type, "%s", qt);
    int rc = get_bool(q, "bnb_4bit_use_double_quant", false, &c->double_quant, path);
    if (rc) return rc;
    v = json_object_get(q, "bnb_4bit_compute_dtype");
    snprintf(c->compute_dtype, sizeof c->compute_dtype, "%s", json_is_string(v) ? json_string_value(v) : "float32");
    v = json_object_get(q, "llm_int8_skip_modules");
    if (json_is_array(v)) c->skip_modules = json_deep_copy(v);
    return 0;
}

/* a soft-capping key: a positive number, or null (none); def when absent */
static int get_softcap(const json_t *j, const char *key, double def, double *out, const char *path) {
    json_t *v = json_object_get(j, key);
    if (!v) { *out = def; return 0; }
    if (json_is_null(v)) { *out = 0; return 0; }
    if (!json_is_number(v) || !(json_number_value(v) > 0) || !isfinite(json_number_value(v)))
        return err_set(ERR_DATA, "%s: \"%s\" must be a positive number or null (got %s)", path, key,
                       json_is_number(v) ? "a number <= 0" : json_in_type_name(v));
    *out = json_number_value(v);
    return 0;
}

/* gemma2's and gemma3_text's own keys (transformers' Gemma2Config / Gemma3TextConfig defaults
 * where a key is absent) */
static int parse_gemma(model_config *c, const json_t *j, const char *path) {
    int64_t v;
    bool g2 = c->arch == ARCH_GEMMA2;
    int rc = json_in_num(j, "query_pre_attn_scalar", path, 256, &c->query_pre_attn_scalar);
    if (!rc && !g2) rc = json_in_num(j, "rope_local_base_freq", path, 10000.0, &c->rope_local_theta);
    if (!rc && !g2) rc = json_in_int(j, "sliding_window_pattern", path, 6, 1, 1 << 20, &v);
    if (rc) return rc;
    /* gemma2: every other layer slides, from layer 0 on (4.x: not layer_idx % 2), one rope base */
    c->sliding_window_pattern = g2 ? 2 : (int)v;
    if (c->query_pre_attn_scalar <= 0) return err_set(ERR_DATA, "%s: \"query_pre_attn_scalar\" must be positive", path);
    if (!json_object_get(j, "sliding_window")) c->sliding_window = 4096;
    const char *act;
    if ((rc = json_in_str(j, "hidden_activation", path, "gelu_pytorch_tanh", &act))) return rc;
    if (strcmp(act, "gelu_pytorch_tanh"))
        return err_set(ERR_DATA, "%s: hidden_activation '%s' is not supported (supported: gelu_pytorch_tanh)", path, act);
    /* Gemma2Config's defaults are 50 and 30; Gemma3TextConfig's null */
    if ((rc = get_softcap(j, "attn_logit_softcapping", g2 ? 50.0 : 0, &c->attn_softcap, path))) return rc;
    if ((rc = get_softcap(j, "final_logit_softcapping", g2 ? 30.0 : 0, &c->final_softcap, path))) return rc;
    if (json_is_true(json_object_get(j, "use_bidirectional_attention")))
        return err_set(ERR_DATA, "%s: \"use_bidirectional_attention\" true (an encoder) is not supported; it must be "
                                 "false or absent", path);
    /* 5.x: rope_parameters per layer type, {"full_attention": {...}, "sliding_attention": {...}} */
    json_t *rp = json_object_get(j, "rope_parameters");
    bool per_type = json_is_object(rp) && json_object_get(rp, "sliding_attention");
    if (g2) {
        if (per_type)
            return err_set(ERR_DATA, "%s: gemma2 with rope_parameters per layer type is not supported (its layers share "
                                     "one rope: {\"rope_type\": ..., \"rope_theta\": ...})", path);
        c->rope_local_theta = c->rope_theta;
        return 0;
    }
    if (per_type) {
        json_t *sl = json_object_get(rp, "sliding_attention"), *fu = json_object_get(rp, "full_attention");
        if ((rc = json_in_num(sl, "rope_theta", path, c->rope_local_theta, &c->rope_local_theta))) return rc;
        const char *t;
        if ((rc = json_in_str(sl, "rope_type", path, "default", &t))) return rc;
        if (strcmp(t, "default"))
            return err_set(ERR_DATA, "%s: rope_parameters.sliding_attention type '%s' is not supported (supported: default)", path, t);
        if ((rc = parse_rope(c, fu, "rope_parameters.full_attention", path))) return rc;
    }
    return 0;
}

/* phi3's own keys (transformers' Phi3Config defaults where a key is absent) */
static int parse_phi3(model_config *c, const json_t *j, const char *path) {
    const char *act;
    int rc = json_in_str(j, "hidden_act", path, "silu", &act);
    if (rc) return rc;
    if (strcmp(act, "silu")) return err_set(ERR_DATA, "%s: hidden_act '%s' is not supported (supported: silu)", path, act);
    /* dropout inside the model would make training differ from transformers' */
    static const char *drops[] = {"resid_pdrop", "embd_pdrop", "attention_dropout"};
    for (int i = 0; i < 3; i++) {
        double p;
        if ((rc = json_in_num(j, drops[i], path, 0.0, &p))) return rc;
        if (p != 0) return err_set(ERR_DATA, "%s: \"%s\" is %g: dropout inside the model is not supported (it must be 0)", path, drops[i], p);
    }
    if (c->head_dim * c->num_heads != c->hidden_size)
        return err_set(ERR_DATA, "%s: phi3's head_dim must be hidden_size / num_attention_heads (%lld), not %d", path,
                       (long long)(c->hidden_size / c->num_heads), c->head_dim);
    if (c->partial_rotary_factor == 0 && (rc = json_in_num(j, "partial_rotary_factor", path, 1.0, &c->partial_rotary_factor)))
        return rc;
    double prf = c->partial_rotary_factor;
    int dim = (int)(c->head_dim * prf); /* transformers: int(head_dim * partial_rotary_factor) */
    if (!(prf > 0 && prf <= 1) || dim < 2 || dim % 2)
        return err_set(ERR_DATA, "%s: partial_rotary_factor %g gives %d rotated dims of a head of %d (expected an even "
                                 "number in 2..head_dim)", path, prf, dim, c->head_dim);
    c->rope_dim = dim;
    if (!c->rope_original_max_position &&
        (rc = get_int(j, "original_max_position_embeddings", 4096, 1, &c->rope_original_max_position, path)))
        return rc;
    if (c->rope_type != ROPE_LONGROPE) return 0;
    if (c->n_rope_factors != dim / 2)
        return err_set(ERR_DATA, "%s: longrope has %d short/long factors, but %d rotated dims need %d", path,
                       c->n_rope_factors, dim, dim / 2);
    double factor = c->rope_factor > 0 ? c->rope_factor
                  : (double)c->max_position_embeddings / (double)c->rope_original_max_position;
    if (c->rope_attn_factor == 0)
        c->rope_attn_factor = factor <= 1 ? 1.0 : sqrt(1 + log(factor) / log((double)c->rope_original_max_position));
    return 0;
}

/* transformers 5.x writes layer_types, one per layer; it must agree with the window rule of the
 * family (config_layer_window), the only layouts this engine runs */
static int check_layer_types(const model_config *c, const json_t *lt, const char *path) {
    if (!lt || json_is_null(lt)) return 0;
    if (!json_is_array(lt) || json_array_size(lt) != (size_t)c->num_layers)
        return err_set(ERR_DATA, "%s: \"layer_types\" must be a list of %d entries (one per layer)", path, c->num_layers);
    for (int l = 0; l < c->num_layers; l++) {
        const char *t = json_string_value(json_array_get(lt, (size_t)l));
        bool sliding = t && !strcmp(t, "sliding_attention");
        if (!t || (!sliding && strcmp(t, "full_attention")))
            return err_set(ERR_DATA, "%s: \"layer_types\"[%d] must be \"full_attention\" or \"sliding_attention\"", path, l);
        if (sliding != (config_layer_window(c, l) > 0))
            return err_set(ERR_DATA, "%s: \"layer_types\"[%d] is \"%s\", which disagrees with sliding_window, "
                                     "use_sliding_window and max_window_layers (a layout this engine does not run)", path, l, t);
    }
    return 0;
}

int64_t config_layer_window(const model_config *c, int l) {
    if (c->sliding_window <= 0) return 0;
    if (config_gemma(c)) return (l + 1) % c->sliding_window_pattern ? c->sliding_window : 0;
    if ((c->arch == ARCH_QWEN2 || c->arch == ARCH_QWEN3) && l < c->max_window_layers) return 0;
    return c->sliding_window;
}

int config_from_json(model_config *c, const json_t *j, const char *path) {
    memset(c, 0, sizeof *c);
    if (!json_is_object(j)) return err_set(ERR_DATA, "%s: not a JSON object", path);
    json_t *mt = json_object_get(j, "model_type");
    if (!json_is_string(mt)) return err_set(ERR_DATA, "%s: no \"model_type\" (supported: " SUPPORTED_ARCHS ")", path);
    int a = -1;
    for (int i = 0; i < ARCH_COUNT; i++)
        if (!strcmp(json_string_value(mt), arch_names[i])) a = i;
    if (a < 0 && !strcmp(json_string_value(mt), "gemma3"))
        return err_set(ERR_DATA, "%s: model_type 'gemma3' is the multimodal Gemma3ForConditionalGeneration (its text "
                                 "model's weights live under language_model.); only the text model (model_type "
                                 "'gemma3_text', Gemma3ForCausalLM, e.g. gemma-3-1b) is supported", path);
    if (a < 0) return err_set(ERR_DATA, "%s: model_type '%s' is not supported (supported: " SUPPORTED_ARCHS ")", path, json_string_value(mt));
    c->arch = (model_arch)a;
    int64_t v;
    int rc;
#define INT_FIELD(key, def, min, dst) do { if ((rc = get_int(j, key, def, min, &v, path))) goto fail; dst = v; } while (0)
    INT_FIELD("vocab_size", 32000, 1, c->vocab_size);
    INT_FIELD("hidden_size", 4096, 1, c->hidden_size);
    INT_FIELD("intermediate_size", 11008, 1, c->intermediate_size);
    INT_FIELD("num_hidden_layers", 32, 1, c->num_layers);
    INT_FIELD("num_attention_heads", 32, 1, c->num_heads);
    INT_FIELD("num_key_value_heads", c->num_heads, 1, c->num_kv_heads);
    if (c->num_heads > 65536 || c->num_layers > 65536) { rc = err_set(ERR_DATA, "%s: absurd head or layer count", path); goto fail; }
    if (c->num_heads % c->num_kv_heads) {
        rc = err_set(ERR_DATA, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path, c->num_heads, c->num_kv_heads);
        goto fail;
    }
    if (!json_object_get(j, "head_dim") || json_is_null(json_object_get(j, "head_dim"))) {
        if (c->hidden_size % c->num_heads) {
            rc = err_set(ERR_DATA, "%s: hidden_size %lld is not a multiple of num_attention_heads %d (and no head_dim is given)", path, (long long)c->hidden_size, c->num_heads);
            goto fail;
        }
    }
    INT_FIELD("head_dim", c->hidden_size / c->num_heads, 2, c->head_dim);
    if (c->head_dim % 2) { rc = err_set(ERR_DATA, "%s: head_dim %d must be even for rotary embeddings", path, c->head_dim); goto fail; }
    INT_FIELD("max_position_embeddings", 2048, 1, c->max_position_embeddings);
    if ((rc = get_num(j, "rms_norm_eps", 1e-6, &c->rms_norm_eps, path))) goto fail;
    if ((rc = get_num(j, "rope_theta", 10000.0, &c->rope_theta, path))) goto fail;
    if ((rc = get_num(j, "initializer_range", 0.02, &c->initializer_range, path))) goto fail;
    c->rope_type = ROPE_DEFAULT;
    c->rope_factor = 1.0;
    /* 5.x folds rope_theta into rope_parameters; 4.x keeps rope_scaling next to rope_theta */
    json_t *rp = json_object_get(j, "rope_parameters");
    if (json_is_object(rp) && json_object_get(rp, "sliding_attention")) rp = NULL; /* gemma3: parse_gemma */
    if ((rc = parse_rope(c, rp, "rope_parameters", path))) goto fail;
    if ((rc = parse_rope(c, json_object_get(j, "rope_scaling"), "rope_scaling", path))) goto fail;
    /* Gemma2Config and Gemma3TextConfig tie by default (gemma-2-2b's config.json has no such key) */
    if ((rc = get_bool(j, "tie_word_embeddings", config_gemma(c), &c->tie_word_embeddings, path))) goto fail;
    /* Qwen2 always has q/k/v biases (and none on o_proj); its config has no key for it */
    if ((rc = get_bool(j, "attention_bias", c->arch == ARCH_QWEN2, &c->attention_bias, path))) goto fail;
    if (c->arch == ARCH_QWEN2) c->attention_bias = true;
    if ((rc = get_bool(j, "mlp_bias", false, &c->mlp_bias, path))) goto fail;
    if ((rc = get_token(j, "bos_token_id", 1, &c->bos_token_id, path))) goto fail;
    if ((rc = get_token(j, "eos_token_id", 2, &c->eos_token_id, path))) goto fail;
    if ((rc = get_token(j, "pad_token_id", -1, &c->pad_token_id, path))) goto fail;
    json_t *dt = json_object_get(j, "torch_dtype");
    if (!json_is_string(dt)) dt = json_object_get(j, "dtype");
    const char *dts = json_is_string(dt) ? json_string_value(dt) : "float32";
    if (strcmp(dts, "bfloat16") && strcmp(dts, "float16") && strcmp(dts, "float32")) {
        rc = err_set(ERR_DATA, "%s: dtype '%s' is not supported (bfloat16, float16 or float32)", path, dts);
        goto fail;
    }
    snprintf(c->dtype, sizeof c->dtype, "%s", dts);
    /* Qwen2/3 only slide when use_sliding_window says so, and then from max_window_layers on */
    bool qwen = c->arch == ARCH_QWEN2 || c->arch == ARCH_QWEN3;
    bool use_sw = !qwen;
    if ((rc = get_bool(j, "use_sliding_window", use_sw, &use_sw, path))) goto fail;
    INT_FIELD("sliding_window", 0, 0, c->sliding_window);
    if (!use_sw) c->sliding_window = 0;
    INT_FIELD("max_window_layers", 28, 0, c->max_window_layers);
    if (!qwen) c->max_window_layers = 0;
    c->qk_norm = c->arch == ARCH_QWEN3 || c->arch == ARCH_GEMMA3;
    if (config_gemma(c) && (rc = parse_gemma(c, j, path))) goto fail;
    /* 4.x keeps partial_rotary_factor at the top level; 5.x in rope_parameters (read above) */
    if (c->partial_rotary_factor == 0 && json_object_get(j, "partial_rotary_factor") &&
        (rc = get_num(j, "partial_rotary_factor", 1.0, &c->partial_rotary_factor, path)))
        goto fail;
    if (c->arch == ARCH_PHI3 && (rc = parse_phi3(c, j, path))) goto fail;
    if (c->arch != ARCH_PHI3 && c->partial_rotary_factor != 0 && c->partial_rotary_factor != 1) {
        rc = err_set(ERR_DATA, "%s: partial_rotary_factor %g is only supported for phi3", path, c->partial_rotary_factor);
        goto fail;
    }
    if (c->partial_rotary_factor == 0) c->partial_rotary_factor = 1;
    if ((rc = check_layer_types(c, json_object_get(j, "layer_types"), path))) goto fail;
#undef INT_FIELD
    if ((rc = parse_quant(c, json_object_get(j, "quantization_config"), path))) goto fail;
    return 0;
fail:
    config_free(c);
    return rc;
}

int config_load(model_config *c, const char *dir) {
    memset(c, 0, sizeof *c);
    char *path = fs_join(dir, "config.json");
    json_t *j = NULL;
    int rc;
    if (!fs_exists(path)) rc = err_set(ERR_DATA, "%s: no config.json (not a Hugging Face model directory)", dir);
    else if (!(rc = json_in_load_file(path, JSON_REJECT_DUPLICATES, &j))) rc = config_from_json(c, j, path);
    json_decref(j);
    free(path);
    return rc;
}

/* ---- writing ---- */

static json_t *token_json(int id) { return id < 0 ? json_null() : json_integer(id); }

/* config.json's rope_scaling: null, longrope's factors (phi3), or linear/dynamic/llama3 */
static json_t *rope_scaling_json(const model_config *c) {
    if (c->rope_type == ROPE_DEFAULT) return json_null();
    if (c->rope_type == ROPE_LONGROPE) {
        json_t *r = json_object(), *sf = json_array(), *lf = json_array();
        for (int i = 0; i < c->n_rope_factors; i++) {
            json_array_append_new(sf, json_real(c->rope_short_factor[i]));
            json_array_append_new(lf, json_real(c->rope_long_factor[i]));
        }
        json_object_set_new(r, "type", json_string("longrope"));
        json_object_set_new(r, "short_factor", sf);
        json_object_set_new(r, "long_factor", lf);
        /* transformers 4.x's Phi3Config takes exactly type, short_factor and long_factor: the others
         * only when they are not what max_position / original implies */
        double f = (double)c->max_position_embeddings / (double)c->rope_original_max_position;
        double af = f <= 1 ? 1.0 : sqrt(1 + log(f) / log((double)c->rope_original_max_position));
        if (c->rope_factor > 0 && c->rope_factor != f) json_object_set_new(r, "factor", json_real(c->rope_factor));
        if (fabs(c->rope_attn_factor - af) > 1e-12 * af || json_object_get(r, "factor"))
            json_object_set_new(r, "attention_factor", json_real(c->rope_attn_factor));
        return r;
    }
    static const char *names[] = {"default", "linear", "dynamic", "llama3"};
    json_t *r = json_object();
    json_object_set_new(r, "rope_type", json_string(names[c->rope_type]));
    json_object_set_new(r, "factor", json_real(c->rope_factor));
    if (c->rope_type == ROPE_LLAMA3) {
        json_object_set_new(r, "low_freq_factor", json_real(c->rope_low_freq_factor));
        json_object_set_new(r, "high_freq_factor", json_real(c->rope_high_freq_factor));
        json_object_set_new(r, "original_max_position_embeddings", json_integer(c->rope_original_max_position));
    }
    return r;
}

/* the keys of config.json that only one family's config class has */
static void family_keys_json(json_t *j, const model_config *c) {
    switch (c->arch) {
    case ARCH_LLAMA:
        json_object_set_new(j, "attention_bias", json_boolean(c->attention_bias));
        json_object_set_new(j, "mlp_bias", json_boolean(c->mlp_bias));
        json_object_set_new(j, "pretraining_tp", json_integer(1));
        json_object_set_new(j, "pad_token_id", token_json(c->pad_token_id));
        break;
    case ARCH_MISTRAL:
        json_object_set_new(j, "sliding_window", c->sliding_window ? json_integer(c->sliding_window) : json_null());
        if (c->pad_token_id >= 0) json_object_set_new(j, "pad_token_id", json_integer(c->pad_token_id));
        break;
    case ARCH_QWEN2:
    case ARCH_QWEN3:
        if (c->arch == ARCH_QWEN3) json_object_set_new(j, "attention_bias", json_boolean(c->attention_bias));
        json_object_set_new(j, "use_sliding_window", json_boolean(c->sliding_window > 0));
        json_object_set_new(j, "sliding_window", c->sliding_window ? json_integer(c->sliding_window) : json_null());
        json_object_set_new(j, "max_window_layers", json_integer(c->sliding_window ? c->max_window_layers : c->num_layers));
        if (c->pad_token_id >= 0) json_object_set_new(j, "pad_token_id", json_integer(c->pad_token_id));
        break;
    case ARCH_GEMMA3:
    case ARCH_GEMMA2:
        json_object_set_new(j, "attention_bias", json_false());
        json_object_set_new(j, "hidden_activation", json_string("gelu_pytorch_tanh"));
        /* an int in transformers 5.x (its strict config refuses 24.0) */
        json_object_set_new(j, "query_pre_attn_scalar", c->query_pre_attn_scalar == floor(c->query_pre_attn_scalar) ? json_integer((json_int_t)c->query_pre_attn_scalar) : json_real(c->query_pre_attn_scalar));
        if (c->arch == ARCH_GEMMA3) {
            json_object_set_new(j, "rope_local_base_freq", json_real(c->rope_local_theta));
            json_object_set_new(j, "sliding_window_pattern", json_integer(c->sliding_window_pattern));
        }
        json_object_set_new(j, "sliding_window", json_integer(c->sliding_window));
        json_t *lt = json_array(); /* what transformers >= 4.53 and 5.x read */
        for (int l = 0; l < c->num_layers; l++)
            json_array_append_new(lt, json_string(config_layer_window(c, l) ? "sliding_attention" : "full_attention"));
        json_object_set_new(j, "layer_types", lt);
        json_object_set_new(j, "final_logit_softcapping", c->final_softcap > 0 ? json_real(c->final_softcap) : json_null());
        json_object_set_new(j, "attn_logit_softcapping", c->attn_softcap > 0 ? json_real(c->attn_softcap) : json_null());
        json_object_set_new(j, "pad_token_id", token_json(c->pad_token_id));
        /* Gemma2's checkpoints carry both names of the activation; Gemma3's only hidden_activation */
        if (c->arch == ARCH_GEMMA2) json_object_set_new(j, "hidden_act", json_string("gelu_pytorch_tanh"));
        else json_object_del(j, "hidden_act");
        break;
    case ARCH_PHI3:
        /* Phi3Config has no head_dim (hidden / heads) nor attention_bias */
        json_object_del(j, "head_dim");
        json_object_set_new(j, "original_max_position_embeddings", json_integer(c->rope_original_max_position));
        if (c->partial_rotary_factor != 1) json_object_set_new(j, "partial_rotary_factor", json_real(c->partial_rotary_factor));
        json_object_set_new(j, "resid_pdrop", json_real(0.0));
        json_object_set_new(j, "embd_pdrop", json_real(0.0));
        json_object_set_new(j, "sliding_window", c->sliding_window ? json_integer(c->sliding_window) : json_null());
        json_object_set_new(j, "pad_token_id", token_json(c->pad_token_id));
        break;
    case ARCH_COUNT:
        break;
    }
}

/* a quantized checkpoint's quantization_config, as transformers writes bitsandbytes' */
static json_t *quantization_json(const model_config *c) {
    json_t *q = json_object();
    json_object_set_new(q, "_load_in_4bit", json_true());
    json_object_set_new(q, "_load_in_8bit", json_false());
    json_object_set_new(q, "bnb_4bit_compute_dtype", json_string(c->compute_dtype[0] ? c->compute_dtype : "float32"));
    json_object_set_new(q, "bnb_4bit_quant_storage", json_string("uint8"));
    json_object_set_new(q, "bnb_4bit_quant_type", json_string(c->quant_type[0] ? c->quant_type : "nf4"));
    json_object_set_new(q, "bnb_4bit_use_double_quant", json_boolean(c->double_quant));
    json_object_set_new(q, "llm_int8_enable_fp32_cpu_offload", json_false());
    json_object_set_new(q, "llm_int8_has_fp16_weight", json_false());
    json_object_set_new(q, "llm_int8_skip_modules", c->skip_modules ? json_deep_copy(c->skip_modules) : json_null());
    json_object_set_new(q, "llm_int8_threshold", json_real(6.0));
    json_object_set_new(q, "load_in_4bit", json_true());
    json_object_set_new(q, "load_in_8bit", json_false());
    json_object_set_new(q, "quant_method", json_string("bitsandbytes"));
    return q;
}

json_t *config_to_json(const model_config *c) {
    json_t *j = json_object();
    json_object_set_new(j, "architectures", json_pack("[s]", arch_classes[c->arch]));
    json_object_set_new(j, "model_type", json_string(arch_names[c->arch]));
    json_object_set_new(j, "vocab_size", json_integer(c->vocab_size));
    json_object_set_new(j, "hidden_size", json_integer(c->hidden_size));
    json_object_set_new(j, "intermediate_size", json_integer(c->intermediate_size));
    json_object_set_new(j, "num_hidden_layers", json_integer(c->num_layers));
    json_object_set_new(j, "num_attention_heads", json_integer(c->num_heads));
    json_object_set_new(j, "num_key_value_heads", json_integer(c->num_kv_heads));
    json_object_set_new(j, "head_dim", json_integer(c->head_dim));
    json_object_set_new(j, "hidden_act", json_string("silu"));
    json_object_set_new(j, "max_position_embeddings", json_integer(c->max_position_embeddings));
    json_object_set_new(j, "initializer_range", json_real(c->initializer_range));
    json_object_set_new(j, "rms_norm_eps", json_real(c->rms_norm_eps));
    json_object_set_new(j, "rope_theta", json_real(c->rope_theta));
    json_object_set_new(j, "rope_scaling", rope_scaling_json(c));
    json_object_set_new(j, "attention_dropout", json_real(0.0));
    json_object_set_new(j, "tie_word_embeddings", json_boolean(c->tie_word_embeddings));
    json_object_set_new(j, "bos_token_id", token_json(c->bos_token_id));
    json_object_set_new(j, "eos_token_id", token_json(c->eos_token_id));
    json_object_set_new(j, "torch_dtype", json_string(c->dtype[0] ? c->dtype : "float32"));
    json_object_set_new(j, "transformers_version", json_string("4.46.0"));
    json_object_set_new(j, "use_cache", json_true());
    family_keys_json(j, c);
    if (c->quantized) json_object_set_new(j, "quantization_config", quantization_json(c));
    return j;
}

int config_save(const model_config *c, const char *dir) {
    json_t *j = config_to_json(c);
    int rc = pyjson_write_config(j, dir, "config.json");
    json_decref(j);
    return rc;
}

/* ---- presets ---- */

typedef struct preset {
    const char *name;
    int64_t hidden, inter, vocab, max_pos;
    int layers, heads, kv;
    double eps, theta;
    bool tie;
} preset;

/* llama: a CPU-trainable demo size, TinyLlama-1.1B, Llama-2-7B/13B/70B */
static const preset llama_presets[] = {
    {"tiny", 128, 352, 259, 512, 4, 4, 2, 1e-5, 10000.0, false},
    {"1b", 2048, 5632, 32000, 2048, 22, 32, 4, 1e-5, 10000.0, false},
    {"7b", 4096, 11008, 32000, 4096, 32, 32, 32, 1e-5, 10000.0, false},
    {"13b", 5120, 13824, 32000, 4096, 40, 40, 40, 1e-5, 10000.0, false},
    {"70b", 8192, 28672, 32000, 4096, 80, 64, 8, 1e-5, 10000.0, false},
    {0}};
/* mistral: Mistral-7B-v0.2's shape at 7b; the llama sizes with 8 kv heads elsewhere */
static const preset mistral_presets[] = {
    {"tiny", 128, 352, 259, 512, 4, 4, 2, 1e-5, 1000000.0, false},
    {"1b", 2048, 5632, 32000, 32768, 22, 32, 8, 1e-5, 1000000.0, false},
    {"7b", 4096, 14336, 32000, 32768, 32, 32, 8, 1e-5, 1000000.0, false},
    {"13b", 5120, 13824, 32000, 32768, 40, 40, 8, 1e-5, 1000000.0, false},
    {"70b", 8192, 28672, 32000, 32768, 80, 64, 8, 1e-5, 1000000.0, false},
    {0}};
/* qwen2: Qwen2-1.5B, Qwen2-7B, Qwen2-72B (there is no 13B Qwen2; 14B is Qwen2.5) */
static const preset qwen2_presets[] = {
    {"tiny", 128, 352, 259, 512, 4, 4, 2, 1e-6, 1000000.0, true},
    {"1b", 1536, 8960, 151936, 32768, 28, 12, 2, 1e-6, 1000000.0, true},
    {"7b", 3584, 18944, 152064, 32768, 28, 28, 4, 1e-6, 1000000.0, false},
    {"13b", 5120, 13824, 152064, 32768, 48, 40, 8, 1e-6, 1000000.0, false},
    {"70b", 8192, 29568, 152064, 32768, 80, 64, 8, 1e-6, 1000000.0, false},
    {0}};

/* gemma3 (text): a tiny of the 1b's layout (one kv head, heads wider than hidden / heads) */
static const preset gemma3_presets[] = {
    {"tiny", 128, 352, 259, 512, 4, 4, 1, 1e-6, 1000000.0, true},
    {0}}; /* the real sizes are the named presets gemma3-1b ... gemma3-27b */

/* gemma2: a tiny of the 2b's layout (grouped kv heads, heads wider than hidden / heads) */
static const preset gemma2_presets[] = {
    {"tiny", 128, 352, 259, 512, 4, 4, 2, 1e-6, 10000.0, true},
    {0}}; /* the real sizes are the named presets gemma2-2b ... gemma2-27b */

/* phi3: a tiny of Phi-3-mini's layout (multi-head, untied, the window of the 4k model scaled down) */
static const preset phi3_presets[] = {
    {"tiny", 128, 352, 259, 512, 4, 4, 4, 1e-5, 10000.0, false},
    {0}}; /* the real size is the named preset phi3-mini */

/* qwen3: heads of 48 at tiny (4 x 48 != 128: head_dim independent of hidden/heads, as in Qwen3) */
static const preset qwen3_presets[] = {
    {"tiny", 128, 352, 259, 512, 4, 4, 2, 1e-6, 1000000.0, true},
    {0}}; /* the real sizes are the named presets qwen3-0.6b, qwen3-8b, qwen3-32b */

/* The shapes of real models, as their config.json gives them (the weights are random): for the
 * benchmarks and the memory reports, and the named presets of init-model. */
typedef struct named_preset {
    const char *name;
    model_arch arch;
    preset p;
    int head_dim;        /* 0: hidden / heads */
    bool llama3_rope;    /* Llama-3.1's rope_scaling: factor 8, low 1, high 4, original 8192 */
    int bos, eos;
    /* gemma3: sliding window, query_pre_attn_scalar, linear rope factor of the global layers (0: none) */
    int window;
    double qpas, rope_linear;
} named_preset;

static const named_preset named_presets[] = {
    /* Llama-3.1-8B / -70B (meta-llama, config.json of the Instruct and base repos) */
    {"llama3-8b", ARCH_LLAMA, {"", 4096, 14336, 128256, 131072, 32, 32, 8, 1e-5, 500000.0, false}, 0, true, 128000, 128001, 0, 0, 0},
    {"llama3-70b", ARCH_LLAMA, {"", 8192, 28672, 128256, 131072, 80, 64, 8, 1e-5, 500000.0, false}, 0, true, 128000, 128001, 0, 0, 0},
    /* Qwen3-0.6B / -8B / -32B */
    {"qwen3-0.6b", ARCH_QWEN3, {"", 1024, 3072, 151936, 40960, 28, 16, 8, 1e-6, 1000000.0, true}, 128, false, 151643, 151645, 0, 0, 0},
    {"qwen3-8b", ARCH_QWEN3, {"", 4096, 12288, 151936, 40960, 36, 32, 8, 1e-6, 1000000.0, false}, 128, false, 151643, 151645, 0, 0, 0},
    {"qwen3-32b", ARCH_QWEN3, {"", 5120, 25600, 151936, 40960, 64, 64, 8, 1e-6, 1000000.0, false}, 128, false, 151643, 151645, 0, 0, 0},
    /* Mistral-7B-v0.3 (32768-token vocabulary, no sliding window) */
    {"mistral-7b", ARCH_MISTRAL, {"", 4096, 14336, 32768, 32768, 32, 32, 8, 1e-5, 1000000.0, false}, 0, false, 1, 2, 0, 0, 0},
    /* Gemma-3 1B (gemma-3-1b-pt) and the text models of 4B / 12B / 27B (their language_model) */
    {"gemma3-1b", ARCH_GEMMA3, {"", 1152, 6912, 262144, 32768, 26, 4, 1, 1e-6, 1000000.0, true}, 256, false, 2, 1, 512, 256, 0},
    {"gemma3-4b", ARCH_GEMMA3, {"", 2560, 10240, 262208, 131072, 34, 8, 4, 1e-6, 1000000.0, true}, 256, false, 2, 1, 1024, 256, 8},
    {"gemma3-12b", ARCH_GEMMA3, {"", 3840, 15360, 262208, 131072, 48, 16, 8, 1e-6, 1000000.0, true}, 256, false, 2, 1, 1024, 256, 8},
    {"gemma3-27b", ARCH_GEMMA3, {"", 5376, 21504, 262208, 131072, 62, 32, 16, 1e-6, 1000000.0, true}, 128, false, 2, 1, 1024, 168, 8},
    /* Gemma-2 2B / 9B / 27B (gemma-2-*b: one rope base, soft-capping 50 and 30, a window of 4096) */
    {"gemma2-2b", ARCH_GEMMA2, {"", 2304, 9216, 256000, 8192, 26, 8, 4, 1e-6, 10000.0, true}, 256, false, 2, 1, 4096, 256, 0},
    {"gemma2-9b", ARCH_GEMMA2, {"", 3584, 14336, 256000, 8192, 42, 16, 8, 1e-6, 10000.0, true}, 256, false, 2, 1, 4096, 256, 0},
    {"gemma2-27b", ARCH_GEMMA2, {"", 4608, 36864, 256000, 8192, 46, 32, 16, 1e-6, 10000.0, true}, 128, false, 2, 1, 4096, 144, 0},
    /* Phi-3-mini-4k-instruct (3.8B: fused qkv_proj and gate_up_proj, a window of 2047) */
    {"phi3-mini", ARCH_PHI3, {"", 3072, 8192, 32064, 4096, 32, 32, 32, 1e-5, 10000.0, false}, 0, false, 1, 32000, 2047, 0, 0},
    /* Phi-4 (microsoft/phi-4, 14.7B: the phi3 layer with grouped-query attention 40/10, full rotary,
     * no window) */
    {"phi4", ARCH_PHI3, {"", 5120, 17920, 100352, 16384, 40, 40, 10, 1e-5, 250000.0, false}, 0, false, 100257, 100265, 0, 0, 0},
    {0}};

#define PRESET_NAMES "tiny, 1b, 7b, 13b, 70b, llama3-8b, llama3-70b, qwen3-0.6b, qwen3-8b, qwen3-32b, mistral-7b, " \
                     "gemma2-2b, gemma2-9b, gemma2-27b, gemma3-1b, gemma3-4b, gemma3-12b, gemma3-27b, phi3-mini, phi4"
const char *const config_preset_names = PRESET_NAMES;

static void fill_preset(model_config *c, model_arch arch, const preset *p, int head_dim) {
    memset(c, 0, sizeof *c);
    c->arch = arch;
    c->vocab_size = p->vocab;
    c->hidden_size = p->hidden;
    c->intermediate_size = p->inter;
    c->num_layers = p->layers;
    c->num_heads = p->heads;
    c->num_kv_heads = p->kv;
    c->head_dim = head_dim ? head_dim : (int)(p->hidden / p->heads);
    c->max_position_embeddings = p->max_pos;
    c->rms_norm_eps = p->eps;
    c->rope_theta = p->theta;
    c->initializer_range = 0.02;
    c->rope_type = ROPE_DEFAULT;
    c->rope_factor = 1.0;
    c->tie_word_embeddings = p->tie;
    c->attention_bias = arch == ARCH_QWEN2;
    c->qk_norm = arch == ARCH_QWEN3 || arch == ARCH_GEMMA3;
    if (arch == ARCH_GEMMA3) {
        c->query_pre_attn_scalar = c->head_dim;
        c->rope_local_theta = 10000.0;
        c->sliding_window_pattern = 6;
        c->sliding_window = 512;
    }
    if (arch == ARCH_GEMMA2) {
        c->query_pre_attn_scalar = c->head_dim;
        c->rope_local_theta = c->rope_theta;
        c->sliding_window_pattern = 2;
        c->sliding_window = 128; /* tiny: shorter than its context, so that it counts */
        c->attn_softcap = 50.0;
        c->final_softcap = 30.0;
    }
    c->max_window_layers = arch == ARCH_QWEN2 || arch == ARCH_QWEN3 ? p->layers : 0;
    c->partial_rotary_factor = 1;
    if (arch == ARCH_PHI3) {
        c->rope_original_max_position = p->max_pos;
        c->sliding_window = p->max_pos / 2 - 1; /* as the 4k model's 2047 */
    }
    c->bos_token_id = 1;
    c->eos_token_id = 2;
    c->pad_token_id = -1;
    snprintf(c->dtype, sizeof c->dtype, "bfloat16");
}

bool config_preset_is_named(const char *name, model_arch *arch) {
    for (const named_preset *n = named_presets; n->name; n++)
        if (!strcmp(n->name, name)) {
            if (arch) *arch = n->arch;
            return true;
        }
    return false;
}

int config_preset(model_config *c, model_arch arch, const char *name) {
    for (const named_preset *n = named_presets; n->name; n++) {
        if (strcmp(n->name, name)) continue;
        fill_preset(c, n->arch, &n->p, n->head_dim);
        if (n->llama3_rope) {
            c->rope_type = ROPE_LLAMA3;
            c->rope_factor = 8.0;
            c->rope_low_freq_factor = 1.0;
            c->rope_high_freq_factor = 4.0;
            c->rope_original_max_position = 8192;
        }
        c->bos_token_id = n->bos;
        c->eos_token_id = n->eos;
        if (n->arch == ARCH_PHI3) {
            c->sliding_window = n->window;
            c->pad_token_id = 32000;
        }
        if (config_gemma(c)) {
            c->sliding_window = n->window;
            c->query_pre_attn_scalar = n->qpas;
            c->pad_token_id = 0;
            if (n->rope_linear > 0) {
                c->rope_type = ROPE_LINEAR;
                c->rope_factor = n->rope_linear;
            }
        }
        return 0;
    }
    const preset *tab = arch == ARCH_MISTRAL ? mistral_presets : arch == ARCH_QWEN2 ? qwen2_presets
                      : arch == ARCH_QWEN3 ? qwen3_presets : arch == ARCH_GEMMA3 ? gemma3_presets
                      : arch == ARCH_GEMMA2 ? gemma2_presets
                      : arch == ARCH_PHI3 ? phi3_presets : llama_presets;
    const preset *p = NULL;
    for (const preset *q = tab; q->name; q++)
        if (!strcmp(q->name, name)) p = q;
    if (!p) return err_set(ERR_USAGE, "unknown preset '%s' (presets: " PRESET_NAMES ")", name);
    /* qwen3's heads are 128 wide whatever the hidden size; tiny keeps them independent too (48) */
    fill_preset(c, arch, p, arch == ARCH_QWEN3 ? 48 : arch == ARCH_GEMMA3 || arch == ARCH_GEMMA2 ? 64 : 0);
    return 0;
}

int config_check(const model_config *c) {
    if (c->vocab_size < 1 || c->hidden_size < 1 || c->intermediate_size < 1 || c->num_layers < 1 || c->num_heads < 1 || c->num_kv_heads < 1)
        return err_set(ERR_USAGE, "model sizes must all be positive");
    if (c->num_heads % c->num_kv_heads)
        return err_set(ERR_USAGE, "heads (%d) must be a multiple of kv heads (%d)", c->num_heads, c->num_kv_heads);
    if (c->head_dim < 2 || c->head_dim % 2) return err_set(ERR_USAGE, "head dimension %d must be even (hidden %lld / heads %d)", c->head_dim, (long long)c->hidden_size, c->num_heads);
    return 0;
}

int64_t config_param_count(const model_config *c) {
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    int64_t layer = H * q + 2 * H * kv + q * H + 3 * H * I + 2 * H;
    if (c->attention_bias) layer += q + 2 * kv + (c->arch == ARCH_QWEN2 ? 0 : H);
    if (c->qk_norm) layer += 2 * c->head_dim;
    if (config_gemma(c)) layer += 2 * H;
    if (c->mlp_bias) layer += 2 * I + H;
    return V * H + c->num_layers * layer + H + (c->tie_word_embeddings ? 0 : V * H);
}

/* ---- tensor layout ---- */

static void put_tensor(config_tensor *t, size_t *n, tensor_role role, int layer, int64_t d0, int64_t d1, const char *fmt, ...)
    ERR_PRINTF(7, 8);
static void put_tensor(config_tensor *t, size_t *n, tensor_role role, int layer, int64_t d0, int64_t d1, const char *fmt, ...) {
    config_tensor *e = &t[(*n)++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    e->role = role;
    e->layer = layer;
    e->ndim = d1 ? 2 : 1;
    e->shape[0] = d0;
    e->shape[1] = d1;
}

int config_tensors(const model_config *c, config_tensor **out, size_t *n) {
    int rc = config_check(c);
    if (rc) return rc;
    int64_t H = c->hidden_size, I = c->intermediate_size, V = c->vocab_size;
    int64_t q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    size_t cap = 3 + (size_t)c->num_layers * 20;
    config_tensor *t = calloc(cap, sizeof *t);
    if (!t) return err_set(ERR_STAGE, "out of memory");
    size_t k = 0;
    put_tensor(t, &k, TROLE_EMBED, -1, V, H, "model.embed_tokens.weight");
    bool o_bias = c->attention_bias && c->arch != ARCH_QWEN2;
    for (int l = 0; l < c->num_layers && config_fused(c); l++) {
        put_tensor(t, &k, TROLE_NORM, l, H, 0, "model.layers.%d.input_layernorm.weight", l);
        put_tensor(t, &k, TROLE_LINEAR, l, q + 2 * kv, H, "model.layers.%d.self_attn.qkv_proj.weight", l);
        put_tensor(t, &k, TROLE_LINEAR, l, H, q, "model.layers.%d.self_attn.o_proj.weight", l);
        put_tensor(t, &k, TROLE_NORM, l, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        put_tensor(t, &k, TROLE_LINEAR, l, 2 * I, H, "model.layers.%d.mlp.gate_up_proj.weight", l);
        put_tensor(t, &k, TROLE_LINEAR, l, H, I, "model.layers.%d.mlp.down_proj.weight", l);
    }
    for (int l = 0; l < c->num_layers && !config_fused(c); l++) {
        put_tensor(t, &k, TROLE_NORM, l, H, 0, "model.layers.%d.input_layernorm.weight", l);
        put_tensor(t, &k, TROLE_LINEAR, l, q, H, "model.layers.%d.self_attn.q_proj.weight", l);
        if (c->attention_bias) put_tensor(t, &k, TROLE_BIAS, l, q, 0, "model.layers.%d.self_attn.q_proj.bias", l);
        put_tensor(t, &k, TROLE_LINEAR, l, kv, H, "model.layers.%d.self_attn.k_proj.weight", l);
        if (c->attention_bias) put_tensor(t, &k, TROLE_BIAS, l, kv, 0, "model.layers.%d.self_attn.k_proj.bias", l);
        put_tensor(t, &k, TROLE_LINEAR, l, kv, H, "model.layers.%d.self_attn.v_proj.weight", l);
        if (c->attention_bias) put_tensor(t, &k, TROLE_BIAS, l, kv, 0, "model.layers.%d.self_attn.v_proj.bias", l);
        put_tensor(t, &k, TROLE_LINEAR, l, H, q, "model.layers.%d.self_attn.o_proj.weight", l);
        if (o_bias) put_tensor(t, &k, TROLE_BIAS, l, H, 0, "model.layers.%d.self_attn.o_proj.bias", l);
        if (c->qk_norm) {
            put_tensor(t, &k, TROLE_NORM, l, c->head_dim, 0, "model.layers.%d.self_attn.q_norm.weight", l);
            put_tensor(t, &k, TROLE_NORM, l, c->head_dim, 0, "model.layers.%d.self_attn.k_norm.weight", l);
        }
        put_tensor(t, &k, TROLE_NORM, l, H, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        if (config_gemma(c)) {
            put_tensor(t, &k, TROLE_NORM, l, H, 0, "model.layers.%d.pre_feedforward_layernorm.weight", l);
            put_tensor(t, &k, TROLE_NORM, l, H, 0, "model.layers.%d.post_feedforward_layernorm.weight", l);
        }
        put_tensor(t, &k, TROLE_LINEAR, l, I, H, "model.layers.%d.mlp.gate_proj.weight", l);
        if (c->mlp_bias) put_tensor(t, &k, TROLE_BIAS, l, I, 0, "model.layers.%d.mlp.gate_proj.bias", l);
        put_tensor(t, &k, TROLE_LINEAR, l, I, H, "model.layers.%d.mlp.up_proj.weight", l);
        if (c->mlp_bias) put_tensor(t, &k, TROLE_BIAS, l, I, 0, "model.layers.%d.mlp.up_proj.bias", l);
        put_tensor(t, &k, TROLE_LINEAR, l, H, I, "model.layers.%d.mlp.down_proj.weight", l);
        if (c->mlp_bias) put_tensor(t, &k, TROLE_BIAS, l, H, 0, "model.layers.%d.mlp.down_proj.bias", l);
    }
    put_tensor(t, &k, TROLE_NORM, -1, H, 0, "model.norm.weight");
    if (!c->tie_word_embeddings) put_tensor(t, &k, TROLE_LM_HEAD, -1, V, H, "lm_head.weight");
    *out = t;
    *n = k;
    return 0;
}

int config_linear_shape(const model_config *c, const char *module, int64_t *out_features, int64_t *in_features) {
    int64_t H = c->hidden_size, I = c->intermediate_size;
    int64_t q = (int64_t)c->num_heads * c->head_dim, kv = (int64_t)c->num_kv_heads * c->head_dim;
    if (!strcmp(module, "lm_head")) { *out_features = c->vocab_size; *in_features = H; return 0; }
    int layer, used = 0;
    char name[32];
    if (sscanf(module, "model.layers.%d.%31[a-z_.]%n", &layer, name, &used) == 2 && (size_t)used == strlen(module) &&
        layer >= 0 && layer < c->num_layers) {
        /* 'f': fused, phi3 only ('Q': q + 2 kv, 'J': 2 I); 'u': unfused, every other family */
        static const struct { const char *n; int o, i, only; } lin[] = {
            {"self_attn.q_proj", 'q', 'H', 'u'}, {"self_attn.k_proj", 'k', 'H', 'u'}, {"self_attn.v_proj", 'k', 'H', 'u'},
            {"self_attn.o_proj", 'H', 'q', 0}, {"mlp.gate_proj", 'I', 'H', 'u'}, {"mlp.up_proj", 'I', 'H', 'u'},
            {"mlp.down_proj", 'H', 'I', 0}, {"self_attn.qkv_proj", 'Q', 'H', 'f'}, {"mlp.gate_up_proj", 'J', 'H', 'f'}};
        for (size_t k = 0; k < sizeof lin / sizeof *lin; k++) {
            if (strcmp(name, lin[k].n) || (lin[k].only && (lin[k].only == 'f') != config_fused(c))) continue;
            int64_t dims[2];
            int sel[2] = {lin[k].o, lin[k].i};
            for (int d = 0; d < 2; d++)
                dims[d] = sel[d] == 'q' ? q : sel[d] == 'k' ? kv : sel[d] == 'I' ? I : sel[d] == 'Q' ? q + 2 * kv
                        : sel[d] == 'J' ? 2 * I : H;
            *out_features = dims[0];
            *in_features = dims[1];
            return 0;
        }
    }
    if (config_fused(c))
        return err_set(ERR_DATA, "'%s' is not a linear module of this %s model (%d layers; modules: model.layers.N.self_attn.{qkv,o}_proj, model.layers.N.mlp.{gate_up,down}_proj, lm_head)",
                       module, arch_names[c->arch], c->num_layers);
    return err_set(ERR_DATA, "'%s' is not a linear module of this %s model (%d layers; modules: model.layers.N.self_attn.{q,k,v,o}_proj, model.layers.N.mlp.{gate,up,down}_proj, lm_head)",
                   module, arch_names[c->arch], c->num_layers);
}
