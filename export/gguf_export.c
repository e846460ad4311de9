/* gguf_export.c: merged model -> GGUF (see gguf_export.h). */
#include "export/gguf_export.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"
#include "core/fsutil.h"
#include "tokenizer/tokfile.h"

int gguf_export_type(const char *name, ggml_type *t) {
    if (!strcmp(name, "f16")) *t = GGML_TYPE_F16;
    else if (!strcmp(name, "bf16")) *t = GGML_TYPE_BF16;
    else if (!strcmp(name, "q8_0")) *t = GGML_TYPE_Q8_0;
    else if (!strcmp(name, "f32")) *t = GGML_TYPE_F32;
    else return err_set(ERR_USAGE, "unknown gguf type '%s' (f16, bf16, q8_0 or f32)", name);
    return 0;
}

/* gemma2's and gemma3's four norms a layer, as llama.cpp names them (its post_attention_layernorm follows o) */
static int gemma_norm_name(const char *hf, char *out, size_t n) {
    static const struct { const char *hf, *gg; } g[] = {
        {"post_attention_layernorm", "post_attention_norm"}, {"pre_feedforward_layernorm", "ffn_norm"},
        {"post_feedforward_layernorm", "post_ffw_norm"}};
    int layer, used = 0;
    char mod[64];
    if (sscanf(hf, "model.layers.%d.%63[a-z_].weight%n", &layer, mod, &used) != 2 || (size_t)used != strlen(hf)) return -1;
    for (size_t i = 0; i < sizeof g / sizeof *g; i++)
        if (!strcmp(mod, g[i].hf)) { snprintf(out, n, "blk.%d.%s.weight", layer, g[i].gg); return 0; }
    return -1;
}

/* phi3's fused projections, as llama.cpp's converter names them: qkv_proj -> attn_qkv, and
 * gate_up_proj -> ffn_up (which holds gate and up, gate first; llama.cpp splits it) */
static int phi3_name(const char *hf, char *out, size_t n) {
    static const struct { const char *hf, *gg; } g[] = {{"self_attn.qkv_proj", "attn_qkv"}, {"mlp.gate_up_proj", "ffn_up"}};
    int layer, used = 0;
    char mod[64];
    if (sscanf(hf, "model.layers.%d.%63[a-z_.]%n", &layer, mod, &used) != 2 || (size_t)used != strlen(hf)) return -1;
    char *dot = strrchr(mod, '.');
    if (!dot || strcmp(dot, ".weight")) return -1;
    *dot = 0;
    for (size_t i = 0; i < sizeof g / sizeof *g; i++)
        if (!strcmp(mod, g[i].hf)) { snprintf(out, n, "blk.%d.%s.weight", layer, g[i].gg); return 0; }
    return -1;
}

int gguf_export_tensor_name_arch(const model_config *c, const char *hf, char *out, size_t n) {
    if (config_gemma(c) && gemma_norm_name(hf, out, n) == 0) return 0;
    if (c->arch == ARCH_PHI3 && phi3_name(hf, out, n) == 0) return 0;
    return gguf_export_tensor_name(hf, out, n);
}

int gguf_export_tensor_name(const char *hf, char *out, size_t n) {
    static const struct { const char *hf, *gg; } top[] = {
        {"model.embed_tokens.weight", "token_embd.weight"}, {"model.norm.weight", "output_norm.weight"}, {"lm_head.weight", "output.weight"}};
    for (size_t i = 0; i < sizeof top / sizeof *top; i++)
        if (!strcmp(hf, top[i].hf)) { snprintf(out, n, "%s", top[i].gg); return 0; }
    static const struct { const char *hf, *gg; } blk[] = {
        {"input_layernorm", "attn_norm"}, {"self_attn.q_proj", "attn_q"}, {"self_attn.k_proj", "attn_k"},
        {"self_attn.v_proj", "attn_v"}, {"self_attn.o_proj", "attn_output"}, {"post_attention_layernorm", "ffn_norm"},
        {"mlp.gate_proj", "ffn_gate"}, {"mlp.up_proj", "ffn_up"}, {"mlp.down_proj", "ffn_down"},
        {"self_attn.q_norm", "attn_q_norm"}, {"self_attn.k_norm", "attn_k_norm"}};
    int layer, used = 0;
    char mod[64], kind[16];
    if (sscanf(hf, "model.layers.%d.%63[a-z_.]%n", &layer, mod, &used) == 2 && (size_t)used == strlen(hf)) {
        char *dot = strrchr(mod, '.');
        if (dot && (!strcmp(dot, ".weight") || !strcmp(dot, ".bias"))) {
            snprintf(kind, sizeof kind, "%s", dot + 1);
            *dot = 0;
            for (size_t i = 0; i < sizeof blk / sizeof *blk; i++)
                if (!strcmp(mod, blk[i].hf)) { snprintf(out, n, "blk.%d.%s.%s", layer, blk[i].gg, kind); return 0; }
        }
    }
    return err_set(ERR_STAGE, "no GGUF name for tensor '%s'", hf);
}

void gguf_permute_qk(float *w, int n_head, int64_t n_rows, int64_t row_len) {
    /* within each head of d rows: GGUF row 2i+j = HF row j*d/2+i (undoes rotate_half) */
    int64_t d = n_rows / n_head;
    float *tmp = malloc((size_t)(d * row_len) * sizeof *tmp);
    if (!tmp) return;
    for (int h = 0; h < n_head; h++) {
        float *head = w + (int64_t)h * d * row_len;
        memcpy(tmp, head, (size_t)(d * row_len) * sizeof *tmp);
        for (int64_t i = 0; i < d / 2; i++)
            for (int j = 0; j < 2; j++)
                memcpy(head + (2 * i + j) * row_len, tmp + (j * d / 2 + i) * row_len, (size_t)row_len * sizeof *tmp);
    }
    free(tmp);
}

/* ---- tensors ---- */

typedef struct ex_tensor {
    const config_tensor *ct; /* NULL for the rope tensors below */
    int rope;                /* with ct NULL: 0 rope_freqs (llama3), 1 rope_factors_long, 2 rope_factors_short (phi3) */
    ggml_type type;
    int permute_heads;       /* 0: none */
} ex_tensor;

typedef struct ex_ctx {
    merge_src *m;
    ex_tensor *t;
    size_t n;
    char (*names)[64];
    float *buf;
    int64_t cap;
    uint64_t done, total;
    int (*progress)(void *, uint64_t, uint64_t);
    void *arg;
} ex_ctx;

/* llama3 scaling as llama.cpp's converter stores it: per-frequency divisors */
static void rope_freqs(const model_config *c, float *out) {
    int half = c->head_dim / 2;
    double lo = c->rope_original_max_position / c->rope_low_freq_factor;
    double hi = c->rope_original_max_position / c->rope_high_freq_factor;
    for (int i = 0; i < half; i++) {
        double freq = 1.0 / pow(c->rope_theta, 2.0 * i / c->head_dim), wavelen = 2 * M_PI / freq;
        if (wavelen < hi) out[i] = 1.0f;
        else if (wavelen > lo) out[i] = (float)c->rope_factor;
        else {
            double s = ((double)c->rope_original_max_position / wavelen - c->rope_low_freq_factor) /
                       (c->rope_high_freq_factor - c->rope_low_freq_factor);
            out[i] = (float)(1.0 / ((1 - s) / c->rope_factor + s));
        }
    }
}

static int ex_fill(void *arg, const char *name, void *dst, uint64_t nbytes) {
    ex_ctx *c = arg;
    const ex_tensor *e = NULL;
    for (size_t i = 0; i < c->n && !e; i++)
        if (!strcmp(c->names[i], name)) e = &c->t[i];
    if (!e) return err_set(ERR_STAGE, "internal: unknown gguf tensor '%s'", name);
    const model_config *cfg = merge_config(c->m);
    if (!e->ct && e->rope) { /* longrope's factors as the config gives them */
        float *f = dst;
        for (int i = 0; i < cfg->n_rope_factors; i++)
            f[i] = (float)(e->rope == 1 ? cfg->rope_long_factor[i] : cfg->rope_short_factor[i]);
        return 0;
    }
    if (!e->ct) {
        rope_freqs(cfg, dst);
        return 0;
    }
    int64_t n = e->ct->shape[0] * (e->ct->ndim > 1 ? e->ct->shape[1] : 1);
    if (n > c->cap) {
        free(c->buf);
        c->cap = n;
        if (!(c->buf = malloc((size_t)n * sizeof *c->buf))) return err_set(ERR_STAGE, "out of memory for tensor '%s'", name);
    }
    int rc = merge_read(c->m, e->ct->name, c->buf);
    if (rc) return rc;
    /* gemma2's and gemma3's norms scale by 1 + w; llama.cpp's converter stores 1 + w */
    if (config_gemma(cfg) && e->ct->role == TROLE_NORM)
        for (int64_t i = 0; i < n; i++) c->buf[i] += 1.0f;
    if (e->permute_heads) gguf_permute_qk(c->buf, e->permute_heads, e->ct->shape[0], e->ct->ndim > 1 ? e->ct->shape[1] : 1);
    ggml_encode(e->type, c->buf, dst, n);
    c->done += nbytes;
    if (c->progress && c->progress(c->arg, c->done, c->total)) return err_set(ERR_INTERRUPTED, "interrupted while writing '%s'", name);
    return 0;
}

/* ---- tokenizer keys ---- */

typedef struct strmap {
    const char **keys;
    int32_t *vals;
    size_t cap;
} strmap;

static uint64_t str_hash(const char *s, size_t n) {
    uint64_t h = 0xcbf29ce484222325ull;
    for (size_t i = 0; i < n; i++) h = (h ^ (unsigned char)s[i]) * 0x100000001b3ull;
    return h;
}

static int strmap_init(strmap *m, size_t n) {
    m->cap = 16;
    while (m->cap < 2 * n) m->cap *= 2;
    m->keys = calloc(m->cap, sizeof *m->keys);
    m->vals = calloc(m->cap, sizeof *m->vals);
    return m->keys && m->vals ? 0 : err_set(ERR_STAGE, "out of memory");
}

static void strmap_put(strmap *m, const char *k, int32_t v) {
    size_t i = str_hash(k, strlen(k)) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], k)) i = (i + 1) & (m->cap - 1);
    if (!m->keys[i]) { m->keys[i] = k; m->vals[i] = v; }
}

/* lookup of the concatenation a+b without building it */
static int32_t strmap_get2(const strmap *m, const char *a, size_t la, const char *b, size_t lb) {
    char tmp[512];
    if (la + lb >= sizeof tmp) return -1;
    memcpy(tmp, a, la);
    memcpy(tmp + la, b, lb);
    tmp[la + lb] = 0;
    size_t i = str_hash(tmp, la + lb) & (m->cap - 1);
    while (m->keys[i]) {
        if (!strcmp(m->keys[i], tmp)) return m->vals[i];
        i = (i + 1) & (m->cap - 1);
    }
    return -1;
}

static bool is_byte_token(const char *s) {
    return strlen(s) == 6 && !strncmp(s, "<0x", 3) && s[5] == '>' && strchr("0123456789ABCDEF", s[3]) && strchr("0123456789ABCDEF", s[4]);
}

/* An added token that tokenizer.json marks non-special but that looks like a control token
 * ("<|im_start|>"-like, DeepSeek's "<｜...｜>", Gemma's "<unusedN>", "<pad>", "<mask>"): llama.cpp's
 * converter writes it as a control token, and llama.cpp warns about a user-defined one of that
 * shape ("this is probably a bug in the model"), so it is written as control here too. */
static bool token_looks_special(const char *s) {
    size_t n = strlen(s);
    static const char *named[] = {"<pad>", "<mask>", "<2mass>", "[@BOS@]"};
    for (size_t i = 0; i < sizeof named / sizeof *named; i++)
        if (!strcmp(s, named[i])) return true;
    if (n >= 4 && !strncmp(s, "<|", 2) && !strcmp(s + n - 2, "|>")) return true;
    static const char fw_open[] = "<\xef\xbd\x9c", fw_close[] = "\xef\xbd\x9c>"; /* "<｜", "｜>" */
    if (n >= 8 && !strncmp(s, fw_open, 4) && !strcmp(s + n - 4, fw_close)) return true;
    return n >= 8 && !strncmp(s, "<unused", 7) && s[n - 1] == '>';
}

/* tokenizer.ggml.*: bos/eos fall back to config.json's ids when the tokenizer names none (Qwen's
 * tokenizer_config.json has bos_token null; without the key llama.cpp takes token 11 as BOS) */
static int tokenizer_keys(gguf_writer *w, const tokfile *tf, const model_config *c) {
    int64_t n_vocab = c->vocab_size;
    if (n_vocab < tf->n_vocab)
        return err_set(ERR_DATA, "the tokenizer has %d ids but the model's vocabulary only %lld rows", tf->n_vocab, (long long)n_vocab);
    const char **tokens = calloc((size_t)n_vocab, sizeof *tokens);
    int32_t *types = calloc((size_t)n_vocab, sizeof *types);
    float *scores = calloc((size_t)n_vocab, sizeof *scores);
    char (*pads)[32] = calloc((size_t)n_vocab, sizeof *pads);
    strmap map = {0};
    int rc = tokens && types && scores && pads ? strmap_init(&map, (size_t)n_vocab) : err_set(ERR_STAGE, "out of memory");
    bool spm = tf->style == TOKFILE_SENTENCEPIECE;
    for (int64_t i = 0; i < n_vocab && !rc; i++) {
        const char *s = i < tf->n_vocab ? tf->tokens[i] : NULL;
        if (!s) {
            /* holes (and rows past the tokenizer) become unused [PADn] tokens, as the converter does */
            snprintf(pads[i], sizeof pads[i], "[PAD%lld]", (long long)i);
            tokens[i] = pads[i];
            types[i] = 5;
            continue;
        }
        tokens[i] = s;
        strmap_put(&map, s, (int32_t)i);
        if (i == tf->unk) types[i] = 2;
        else if (tf->added[i]) types[i] = tf->special[i] || token_looks_special(s) ? 3 : 4;
        else if (spm && is_byte_token(s)) types[i] = 6;
        else types[i] = 1;
    }
    if (!rc && spm) {
        /* SentencePiece scores rank pieces for merging: the piece made by merge rank r scores
         * -r, so llama.cpp's highest-score-first merging follows the BPE merge order */
        for (size_t r = tf->n_merges; r-- > 0;) {
            const char *m = tf->merges[r], *sp = strchr(m, ' ');
            if (!sp) continue;
            int32_t id = strmap_get2(&map, m, (size_t)(sp - m), sp + 1, strlen(sp + 1));
            if (id >= 0) scores[id] = -(float)r;
        }
    }
    if (!rc) rc = gguf_set_str(w, "tokenizer.ggml.model", spm ? "llama" : "gpt2");
    if (!rc) rc = gguf_set_str(w, "tokenizer.ggml.pre", spm ? "default" : tf->pre);
    if (!rc) rc = gguf_set_str_array(w, "tokenizer.ggml.tokens", tokens, (uint64_t)n_vocab);
    if (!rc && spm) rc = gguf_set_array(w, "tokenizer.ggml.scores", GGUF_VALUE_F32, scores, (uint64_t)n_vocab);
    if (!rc) rc = gguf_set_array(w, "tokenizer.ggml.token_type", GGUF_VALUE_I32, types, (uint64_t)n_vocab);
    if (!rc && !spm) rc = gguf_set_str_array(w, "tokenizer.ggml.merges", (const char *const *)tf->merges, tf->n_merges);
    int64_t bos = tf->bos >= 0 ? tf->bos : c->bos_token_id, eos = tf->eos >= 0 ? tf->eos : c->eos_token_id;
    if (!rc && bos >= 0 && bos < n_vocab) rc = gguf_set_u32(w, "tokenizer.ggml.bos_token_id", (uint32_t)bos);
    if (!rc && eos >= 0 && eos < n_vocab) rc = gguf_set_u32(w, "tokenizer.ggml.eos_token_id", (uint32_t)eos);
    if (!rc && tf->unk >= 0) rc = gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", (uint32_t)tf->unk);
    if (!rc && tf->pad >= 0) rc = gguf_set_u32(w, "tokenizer.ggml.padding_token_id", (uint32_t)tf->pad);
    if (!rc) rc = gguf_set_bool(w, "tokenizer.ggml.add_bos_token", tf->add_bos);
    if (!rc) rc = gguf_set_bool(w, "tokenizer.ggml.add_eos_token", tf->add_eos);
    if (!rc && tf->chat_template) rc = gguf_set_str(w, "tokenizer.chat_template", tf->chat_template);
    free(tokens);
    free(types);
    free(scores);
    free(pads);
    free(map.keys);
    free(map.vals);
    return rc;
}

/* ---- the file ---- */

static int model_keys(gguf_writer *w, const model_config *c, const char *arch, const char *name, ggml_type type) {
    char k[128];
    int rc = gguf_set_str(w, "general.architecture", arch);
    if (!rc) rc = gguf_set_str(w, "general.name", name);
    uint32_t ft = type == GGML_TYPE_F32 ? 0 : type == GGML_TYPE_F16 ? 1 : type == GGML_TYPE_Q8_0 ? 7 : 32;
    if (!rc) rc = gguf_set_u32(w, "general.file_type", ft);
    if (!rc && type == GGML_TYPE_Q8_0) rc = gguf_set_u32(w, "general.quantization_version", 2);
#define KEY(suffix) (snprintf(k, sizeof k, "%s.%s", arch, suffix), k)
    if (!rc) rc = gguf_set_u32(w, KEY("context_length"), (uint32_t)c->max_position_embeddings);
    if (!rc) rc = gguf_set_u32(w, KEY("embedding_length"), (uint32_t)c->hidden_size);
    if (!rc) rc = gguf_set_u32(w, KEY("block_count"), (uint32_t)c->num_layers);
    if (!rc) rc = gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)c->intermediate_size);
    if (!rc) rc = gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)c->num_heads);
    if (!rc) rc = gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)c->num_kv_heads);
    if (!rc) rc = gguf_set_f32(w, KEY("rope.freq_base"), (float)c->rope_theta);
    if (!rc) rc = gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), (float)c->rms_norm_eps);
    if (!rc) rc = gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)config_rope_dim(c));
    if (!rc) rc = gguf_set_u32(w, KEY("vocab_size"), (uint32_t)c->vocab_size);
    if (!rc && (int64_t)c->head_dim * c->num_heads != c->hidden_size) {
        rc = gguf_set_u32(w, KEY("attention.key_length"), (uint32_t)c->head_dim);
        if (!rc) rc = gguf_set_u32(w, KEY("attention.value_length"), (uint32_t)c->head_dim);
    }
    /* phi3: the converter always writes it, 0 without a window (how llama.cpp tells Phi-4 apart) */
    if (!rc && (c->sliding_window > 0 || c->arch == ARCH_PHI3))
        rc = gguf_set_u32(w, KEY("attention.sliding_window"), (uint32_t)c->sliding_window);
    if (!rc && c->arch == ARCH_PHI3)
        rc = gguf_set_u32(w, KEY("rope.scaling.original_context_length"), (uint32_t)c->rope_original_max_position);
    if (!rc && c->rope_type == ROPE_LONGROPE) rc = gguf_set_f32(w, KEY("rope.scaling.attn_factor"), (float)c->rope_attn_factor);
    /* gemma2: the converter writes both caps (llama.cpp assumes 50 and 30 when a file has none) */
    if (!rc && c->arch == ARCH_GEMMA2) rc = gguf_set_f32(w, KEY("attn_logit_softcapping"), (float)c->attn_softcap);
    if (!rc && c->arch == ARCH_GEMMA2) rc = gguf_set_f32(w, KEY("final_logit_softcapping"), (float)c->final_softcap);
    if (!rc && c->rope_type == ROPE_LINEAR) {
        rc = gguf_set_str(w, KEY("rope.scaling.type"), "linear");
        if (!rc) rc = gguf_set_f32(w, KEY("rope.scaling.factor"), (float)c->rope_factor);
    }
#undef KEY
    return rc;
}

/* a config llama.cpp would run as another model (its fixed assumptions for gemma2/gemma3, or a
 * rope scaling GGUF cannot say) has no GGUF form: refused, with the reason */
static int gguf_form_check(const model_config *c) {
    if (c->rope_type == ROPE_DYNAMIC) return err_set(ERR_DATA, "dynamic rope scaling has no GGUF form");
    /* llama.cpp fixes these for gemma3 (every sixth layer global, local rope base 1e4, scores
     * scaled by head_dim^-0.5, or (hidden/heads)^-0.5 for the 62-layer 27B) */
    if (c->arch == ARCH_GEMMA3) {
        double want = c->num_layers == 62 ? (double)c->hidden_size / c->num_heads : c->head_dim;
        if (c->sliding_window_pattern != 6 || c->rope_local_theta != 10000.0 || c->query_pre_attn_scalar != want)
            return err_set(ERR_DATA, "this gemma3 (sliding_window_pattern %d, rope_local_base_freq %g, "
                                     "query_pre_attn_scalar %g) has no GGUF form llama.cpp runs as it is: llama.cpp "
                                     "assumes 6, 10000 and %g", c->sliding_window_pattern, c->rope_local_theta,
                           c->query_pre_attn_scalar, want);
        if (c->attn_softcap > 0 || c->final_softcap > 0)
            return err_set(ERR_DATA, "this gemma3 soft-caps its %s (attn_logit_softcapping %g, final_logit_softcapping %g): "
                                     "llama.cpp's gemma3 does not, so it has no GGUF form",
                           c->attn_softcap > 0 ? "attention scores" : "final logits", c->attn_softcap, c->final_softcap);
    }
    /* llama.cpp's gemma2: every other layer sliding from layer 0, scores scaled by head_dim^-0.5
     * (hidden/heads for the 46-layer 27B), both caps on, one rope base */
    if (c->arch == ARCH_GEMMA2) {
        double want = c->num_layers == 46 ? (double)c->hidden_size / c->num_heads : c->head_dim;
        if (c->query_pre_attn_scalar != want || c->attn_softcap <= 0 || c->final_softcap <= 0 || c->rope_type != ROPE_DEFAULT)
            return err_set(ERR_DATA, "this gemma2 (query_pre_attn_scalar %g, attn_logit_softcapping %g, "
                                     "final_logit_softcapping %g, rope type %s) has no GGUF form llama.cpp runs as it is: "
                                     "llama.cpp assumes a query_pre_attn_scalar of %g, both soft-caps set and the default rope (the merged "
                                     "and peft formats carry it as it is)",
                           c->query_pre_attn_scalar, c->attn_softcap, c->final_softcap,
                           c->rope_type == ROPE_DEFAULT ? "default" : "scaled", want);
    }
    return 0;
}

/* the tensors llama.cpp reads for scaled rope: llama3's rope_freqs, longrope's two factor lists
 * (llama.cpp picks by its context size) */
static int add_rope_tensors(gguf_writer *w, ex_ctx *x, const model_config *c) {
    int rc = 0;
    if (c->rope_type == ROPE_LLAMA3) {
        ex_tensor *e = &x->t[x->n];
        e->ct = NULL;
        e->type = GGML_TYPE_F32;
        snprintf(x->names[x->n], 64, "rope_freqs.weight");
        int64_t ne[1] = {c->head_dim / 2};
        rc = gguf_add_tensor(w, x->names[x->n], GGML_TYPE_F32, 1, ne, ex_fill, x);
        x->n++;
    }
    /* longrope: both factor lists, llama.cpp picks by its context size */
    for (int r = 1; !rc && r <= 2 && c->rope_type == ROPE_LONGROPE; r++) {
        ex_tensor *e = &x->t[x->n];
        e->ct = NULL;
        e->rope = r;
        e->type = GGML_TYPE_F32;
        snprintf(x->names[x->n], 64, "%s", r == 1 ? "rope_factors_long.weight" : "rope_factors_short.weight");
        int64_t ne[1] = {c->n_rope_factors};
        rc = gguf_add_tensor(w, x->names[x->n], GGML_TYPE_F32, 1, ne, ex_fill, x);
        x->n++;
    }
    return rc;
}

int gguf_export_write(merge_src *m, const char *path, ggml_type type, const char *name,
                      int (*progress)(void *arg, uint64_t done, uint64_t total), void *arg) {
    const model_config *c = merge_config(m);
    int rc = gguf_form_check(c);
    if (rc) return rc;
    /* llama.cpp's names; llama and mistral share "llama" (interleaved rope: q/k rows permuted) */
    const char *arch = c->arch == ARCH_QWEN2 ? "qwen2" : c->arch == ARCH_QWEN3 ? "qwen3" : c->arch == ARCH_GEMMA3 ? "gemma3"
                     : c->arch == ARCH_GEMMA2 ? "gemma2" : c->arch == ARCH_PHI3 ? "phi3" : "llama";
    bool permute = c->arch == ARCH_LLAMA || c->arch == ARCH_MISTRAL;
    size_t n;
    const config_tensor *ts = merge_tensors(m, &n);
    ex_ctx x = {m, calloc(n + 2, sizeof(ex_tensor)), 0, calloc(n + 2, 64), NULL, 0, 0, 0, progress, arg};
    gguf_writer *w = NULL;
    tokfile tf;
    bool have_tf = false;
    rc = x.t && x.names ? gguf_writer_open(&w) : err_set(ERR_STAGE, "out of memory");
    char *base_name = NULL;
    if (!rc && !name) {
        char *b = strdup(merge_base_dir(m));
        size_t l = strlen(b);
        while (l > 1 && b[l - 1] == '/') b[--l] = 0;
        const char *slash = strrchr(b, '/');
        base_name = strdup(slash ? slash + 1 : b);
        free(b);
        name = base_name;
    }
    if (!rc) rc = model_keys(w, c, arch, name, type);
    if (!rc) {
        rc = tokfile_load(&tf, merge_base_dir(m));
        have_tf = !rc;
        if (rc) err_wrap("the base model's tokenizer");
    }
    if (!rc) rc = tokenizer_keys(w, &tf, c);
    for (size_t i = 0; i < n && !rc; i++) {
        ex_tensor *e = &x.t[x.n];
        e->ct = &ts[i];
        rc = gguf_export_tensor_name_arch(c, ts[i].name, x.names[x.n], 64);
        if (rc) break;
        bool one_d = ts[i].ndim == 1;
        e->type = one_d ? GGML_TYPE_F32 : type;
        int64_t ne[2] = {one_d ? ts[i].shape[0] : ts[i].shape[1], ts[i].shape[0]};
        if (!ggml_row_bytes(e->type, ne[0])) e->type = GGML_TYPE_F16; /* q8_0 needs rows of 32 */
        if (permute && strstr(ts[i].name, "self_attn.q_proj")) e->permute_heads = c->num_heads;
        if (permute && strstr(ts[i].name, "self_attn.k_proj")) e->permute_heads = c->num_kv_heads;
        x.total += ggml_row_bytes(e->type, ne[0]) * (one_d ? 1 : (uint64_t)ne[1]);
        rc = gguf_add_tensor(w, x.names[x.n], e->type, one_d ? 1 : 2, ne, ex_fill, &x);
        x.n++;
    }
    if (!rc) rc = add_rope_tensors(w, &x, c);
    if (!rc) rc = gguf_writer_write(&w, path);
    gguf_writer_free(&w);
    if (have_tf) tokfile_free(&tf);
    free(x.t);
    free(x.names);
    free(x.buf);
    free(base_name);
    return rc;
}
