/* config.h: a Hugging Face model's config.json for the llama, mistral, qwen2, qwen3, gemma2,
 * gemma3 (text) and phi3 (Phi-3 / Phi-4 mini) families.
 *
 * config_load reads config.json (transformers 4.x or 5.x style: rope_theta/rope_scaling or
 * rope_parameters, torch_dtype or dtype) and, when present, quantization_config. Any other
 * model_type is an ERR_DATA naming the supported ones. config_save writes the 4.x style
 * (sorted keys, indent 2, trailing newline), which transformers 4 and 5, llama.cpp's
 * converter and vLLM all read. */
#ifndef MODEL_CONFIG_H
#define MODEL_CONFIG_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

typedef enum model_arch { ARCH_LLAMA, ARCH_MISTRAL, ARCH_QWEN2, ARCH_QWEN3, ARCH_GEMMA3, ARCH_PHI3, ARCH_GEMMA2, ARCH_COUNT } model_arch;
typedef enum rope_kind { ROPE_DEFAULT, ROPE_LINEAR, ROPE_DYNAMIC, ROPE_LLAMA3, ROPE_LONGROPE } rope_kind;

#define CONFIG_MAX_ROPE_FACTORS 256 /* longrope: one factor per rotated frequency (rope_dim / 2) */

typedef struct model_config {
    model_arch arch;
    int64_t vocab_size, hidden_size, intermediate_size;
    int num_layers, num_heads, num_kv_heads, head_dim;
    int64_t max_position_embeddings;
    double rms_norm_eps, rope_theta, initializer_range;
    rope_kind rope_type;
    double rope_factor, rope_low_freq_factor, rope_high_freq_factor;
    int64_t rope_original_max_position;
    bool tie_word_embeddings, attention_bias, mlp_bias;
    int bos_token_id, eos_token_id, pad_token_id; /* -1 when null; eos: the first of a list */
    char dtype[16];                               /* "bfloat16", "float16", "float32" */
    int64_t sliding_window;                       /* 0: none */
    int max_window_layers;                        /* qwen2/3: layers >= this one use the window */
    bool qk_norm;                                 /* qwen3, gemma3: RMSNorm over each head of q and k before RoPE */
    /* gemma3 (model_type gemma3_text): norms scale by (1 + w), four norms a layer, embeddings
     * times sqrt(hidden), GeGLU (tanh GELU), scores scaled by query_pre_attn_scalar^-0.5, every
     * sliding_window_pattern-th layer global (rope_theta + scaling), the others local
     * (sliding_window, rope_local_base_freq, no scaling) */
    double query_pre_attn_scalar;
    double rope_local_theta;
    int sliding_window_pattern;
    /* gemma2 (Gemma2ForCausalLM): gemma3's layer without q/k norms, one rope base (rope_local_theta
     * = rope_theta), sliding and global layers alternating (sliding_window_pattern 2: layer 0
     * slides), and soft-capping, cap * tanh(x / cap) (0: none; gemma3 reads them too): of the
     * attention scores after their scale (attn_logit_softcapping) and of the final logits
     * (final_logit_softcapping), which the loss, evaluation and generation all see */
    double attn_softcap, final_softcap;
    /* phi3: q/k/v in one qkv_proj [(nh + 2 nkv) hd, C], gate and up in one gate_up_proj [2 I, C]
     * (gate first), rotary on the first rope_dim of each head only (partial_rotary_factor), and
     * longrope (4.x "su"): inv_freq[i] = 1 / (factor[i] * theta^(2i/rope_dim)) with the short factors
     * while the longest sequence of a batch is within rope_original_max_position, the long ones
     * beyond it; cos and sin scaled by rope_attn_factor (transformers' attention_factor) */
    int rope_dim;                /* rotated dims of a head (0: head_dim) */
    double partial_rotary_factor; /* 1 when the config has none */
    int n_rope_factors;          /* longrope: rope_dim / 2 */
    double rope_short_factor[CONFIG_MAX_ROPE_FACTORS], rope_long_factor[CONFIG_MAX_ROPE_FACTORS];
    double rope_attn_factor;     /* longrope: 1 when max_position <= original */
    /* quantization_config (bitsandbytes 4-bit), when the checkpoint is pre-quantized */
    bool quantized;
    char quant_type[8];     /* "nf4" | "fp4" */
    bool double_quant;
    char compute_dtype[16]; /* bnb_4bit_compute_dtype */
    json_t *skip_modules;   /* llm_int8_skip_modules (array or NULL), owned */
} model_config;

int config_load(model_config *c, const char *dir);               /* dir/config.json */
int config_from_json(model_config *c, const json_t *j, const char *path); /* path: for messages */
json_t *config_to_json(const model_config *c);                   /* new reference */
int config_save(const model_config *c, const char *dir);         /* atomic */
void config_free(model_config *c);                               /* frees skip_modules */
const char *config_arch_name(model_arch a);                      /* "llama" ... */
/* Presets for init-model: tiny|1b|7b|13b|70b and the named shapes of real models (llama3-8b,
 * qwen3-8b, ...: config_preset_names); returns ERR_USAGE naming them for an unknown name. */
int config_preset(model_config *c, model_arch arch, const char *preset);
/* a real model's shape ("qwen3-8b"), which fixes the architecture (*arch, may be NULL) */
bool config_preset_is_named(const char *name, model_arch *arch);
extern const char *const config_preset_names; /* "tiny, 1b, ..., mistral-7b" for messages */
int64_t config_param_count(const model_config *c);
/* "llama"|"mistral"|... -> arch; ERR_USAGE naming the supported ones otherwise */
int config_arch_from_name(const char *name, model_arch *a);
/* sizes consistent (positive, heads a multiple of kv heads, even head_dim); ERR_USAGE */
int config_check(const model_config *c);
/* the sliding window of layer l (0: full attention) */
int64_t config_layer_window(const model_config *c, int l);
/* the Gemma layer: (1 + w) norms, four a layer, GeGLU, embeddings x sqrt(hidden), query_pre_attn_scalar */
static inline bool config_gemma(const model_config *c) { return c->arch == ARCH_GEMMA3 || c->arch == ARCH_GEMMA2; }
/* phi3's fused projections: qkv_proj and gate_up_proj hold q|k|v and gate|up, row blocks in that order */
static inline bool config_fused(const model_config *c) { return c->arch == ARCH_PHI3; }
/* rotated dims of each head (partial rotary: fewer than head_dim) */
static inline int config_rope_dim(const model_config *c) { return c->rope_dim > 0 ? c->rope_dim : c->head_dim; }

/* The checkpoint's tensors as transformers names and shapes them (docs/llama-checkpoint.md),
 * in state-dict order: embeddings, then per layer, then the final norm and lm_head. */
typedef enum tensor_role { TROLE_EMBED, TROLE_NORM, TROLE_LINEAR, TROLE_BIAS, TROLE_LM_HEAD } tensor_role;
typedef struct config_tensor {
    char name[96];
    tensor_role role;
    int layer;        /* -1 outside the decoder layers */
    int ndim;
    int64_t shape[2]; /* [out, in] for linears, [n] for norms and biases */
} config_tensor;
/* *out: malloc'd array of *n entries (caller frees) */
int config_tensors(const model_config *c, config_tensor **out, size_t *n);
/* out/in features of a Linear module path ("model.layers.3.mlp.up_proj", "lm_head");
 * ERR_DATA if the model has no such module */
int config_linear_shape(const model_config *c, const char *module, int64_t *out_features, int64_t *in_features);

#endif
