/* llama.c: the llama / mistral / qwen2 / qwen3 decoder with NF4 base weights and LoRA (see llama.h).
 *
 * One decoder layer, as transformers computes it (x: the residual stream, [T, C]):
 *   n1 = rmsnorm(x) ; q, k, v = qlinear(n1) ; [qwen3: q, k = rmsnorm per head(qr, kr)]
 *   rope(q, k) ; a = attention(q, k, v) [sliding window where the layer has one]
 *   h  = x + o(a)   ; n2 = rmsnorm(h) ; m = silu(gate(n2)) * up(n2) ; out = h + down(m)
 * The backward walks the same list in reverse with one residual-gradient buffer (dres): the
 * residual adds pass it through unchanged and each rmsnorm_bwd accumulates into it. Frozen
 * weights get no gradient; only the LoRA branches of the qlinear ops accumulate dA, dB.
 *
 * Memory: the frozen weights are carved from one backend allocation, the activations of a plan
 * from another (carve_take, run once to count and once to hand out pointers). With
 * checkpointing, only each layer's input is kept; all layers share one set of per-layer buffers,
 * and the backward re-runs a layer's forward into them just before its backward (the MLP part
 * chunk by chunk of rows, inside the backward: plan_layout says which buffer holds what when). */
#include "model/llama.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/collective.h"
#include "core/err.h"
#include "core/half.h"
#include "core/rng.h"
#include "formats/safetensors.h"
#include "kernels/cpu/nf4.h"
#include "formats/bnb.h"

/* per-layer saved activations; act type unless float * */
typedef struct layer_acts {
    void *n1, *q, *k, *v, *att, *res_mid, *n2, *gate, *up, *act;
    void *qr, *kr;        /* qwen3: q, k before their per-head norm (NULL otherwise) */
    void *o_raw, *d_raw;  /* gemma: o's and down's outputs before their norms [T, C] (checkpointed:
                           * d_raw is dact's [rows, I] slot, one MLP chunk at a time) */
    float *rstd_po, *rstd_pd;
    float *rstdq, *rstdk; /* [T * nh], [T * nkv] */
    float *rstd1, *rstd2; /* [T] */
    float *lse;           /* [nh, T] */
    float *xa[LLAMA_NTARGETS]; /* [T, r] for targeted linears */
} layer_acts;

struct llama_acts {
    layer_acts *layer; /* [L], or [1] with checkpointing */
    void **res;        /* [L+1] residual stream at each layer input (res[L]: the last output); offloaded:
                        * res[l] is ring buffer l % 3, the input itself is host_in + l * T*C */
    char *host_in;     /* offload_inputs: the layer inputs in host memory (ops->alloc_host) */
    size_t in_bytes;   /* one layer input of the plan's T tokens */
    void *nf;          /* final norm output [T, C] */
    float *rstdf;
    /* backward scratch, shared by all layers */
    void *dres, *dn, *datt, *dq, *dk, *dv, *dgate, *dup, *dact, *tmp;
    void *dqr, *dkr;   /* qwen3: gradients of q, k before their norm */
    bool windowed;     /* the batch has a sequence longer than a layer's sliding window */
    int mlp_rows;      /* tokens per MLP chunk (checkpointing: the [rows, I] buffers; T otherwise) */
    float *losses;     /* [T] */
    float *logits;     /* [V]: generation */
    int32_t *ids, *seq_start, *pos, *target; /* [T], backend */
    /* host staging */
    int32_t *h_seq_start, *h_pos, *h_target;
    float *h_losses;
};

static const char *target_names[LLAMA_NTARGETS] = {"q_proj", "k_proj", "v_proj", "o_proj",
                                                   "gate_proj", "up_proj", "down_proj"};
static const char *target_paths[LLAMA_NTARGETS] = {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj",
                                                   "self_attn.o_proj", "mlp.gate_proj", "mlp.up_proj",
                                                   "mlp.down_proj"};

const char *llama_target_name(llama_target t) { return target_names[t]; }
const char *llama_target_path(llama_target t) { return target_paths[t]; }

llama_target llama_target_group(const model_config *c, llama_target t) {
    if (!config_fused(c)) return t;
    return t == LLAMA_K || t == LLAMA_V ? LLAMA_Q : t == LLAMA_UP ? LLAMA_GATE : t;
}

const char *llama_target_module(const model_config *c, llama_target t) {
    if (!config_fused(c)) return target_paths[t];
    if (llama_target_group(c, t) != t) return NULL;
    return t == LLAMA_Q ? "self_attn.qkv_proj" : t == LLAMA_GATE ? "mlp.gate_up_proj" : target_paths[t];
}

int llama_targets_parse(uint32_t *mask, const char *const *names, int n) {
    *mask = 0;
    for (int i = 0; i < n; i++) {
        const char *s = names[i];
        if (!strcmp(s, "all-linear") || !strcmp(s, "all_linear") || !strcmp(s, "all")) {
            *mask |= LLAMA_TARGETS_ALL;
            continue;
        }
        if (!strcmp(s, "qkv_proj")) { /* phi3's fused projections */
            *mask |= (1u << LLAMA_Q) | (1u << LLAMA_K) | (1u << LLAMA_V);
            continue;
        }
        if (!strcmp(s, "gate_up_proj")) {
            *mask |= (1u << LLAMA_GATE) | (1u << LLAMA_UP);
            continue;
        }
        int found = -1;
        for (int t = 0; t < LLAMA_NTARGETS; t++) {
            size_t len = strlen(target_names[t]) - 5; /* "q" of "q_proj" */
            if (!strcmp(s, target_names[t]) || (strlen(s) == len && !strncmp(s, target_names[t], len))) found = t;
        }
        if (found < 0)
            return err_set(ERR_USAGE, "unknown LoRA target '%s' (expected q_proj, k_proj, v_proj, o_proj, gate_proj, "
                                      "up_proj, down_proj, phi3's qkv_proj and gate_up_proj, or all-linear)", s);
        *mask |= 1u << found;
    }
    return 0;
}

/* ---- carving one allocation into tensors ---- */

typedef struct carve {
    char *base; /* NULL: counting pass */
    int64_t off;
} carve;

static void *carve_take(carve *c, int64_t bytes) {
    void *p = c->base ? c->base + c->off : NULL;
    c->off += (bytes + 255) & ~(int64_t)255; /* 256-byte aligned, what vectorised kernels like */
    return p;
}

static void *act_at(const llama_model *m, void *p, int64_t elems) {
    return (char *)p + elems * (int64_t)ops_act_size(m->ops);
}

/* ---- rotary frequencies (transformers' modeling_rope_utils) ---- */

/* hd: the rotated dims (phi3's partial rotary: fewer than head_dim); long: longrope's long factors */
static void rope_inv_freq(const model_config *c, int hd, float *inv, bool local, bool long_factors) {
    for (int i = 0; i < hd / 2; i++) {
        double f = 1.0 / pow(local ? c->rope_local_theta : c->rope_theta, (double)(2 * i) / hd);
        if (local) { /* gemma3's sliding layers: the default rope of their own base */
            inv[i] = (float)f;
            continue;
        }
        if (c->rope_type == ROPE_LONGROPE) {
            /* transformers: 1 / (ext * base ** (arange(0, dim, 2).float() / dim)), in fp32 */
            float expo = (float)(2 * i) / (float)hd;
            float ext = (float)(long_factors ? c->rope_long_factor[i] : c->rope_short_factor[i]);
            inv[i] = 1.0f / (ext * powf((float)c->rope_theta, expo));
            continue;
        }
        if (c->rope_type == ROPE_LINEAR) {
            f /= c->rope_factor;
        } else if (c->rope_type == ROPE_LLAMA3) {
            /* keep high frequencies, divide low ones by factor, interpolate in between */
            double orig = (double)c->rope_original_max_position, lo = c->rope_low_freq_factor,
                   hi = c->rope_high_freq_factor, wavelen = 2 * M_PI / f;
            if (wavelen > orig / lo) {
                f /= c->rope_factor;
            } else if (wavelen >= orig / hi) {
                double s = (orig / wavelen - lo) / (hi - lo);
                f = (1 - s) * f / c->rope_factor + s * f;
            }
        }
        /* ROPE_DYNAMIC equals the default up to the original context length, all we train at */
        inv[i] = (float)f;
    }
}

/* ---- loading ---- */

typedef struct loader {
    llama_model *m;
    st_model *st;
    const char *path;
    llama_load_opts opts;
    carve cv;
    /* the fused tensor whose de-nested absmax was computed last (fused_absmax), for its next blocks */
    char fused_name[256];
    float *fused_a;
} loader;

static int loader_find(loader *ld, const char *name, int64_t numel, const st_tensor **out) {
    const st_tensor *t = st_find(ld->st, name);
    if (!t) return err_set(ERR_DATA, "%s: missing tensor '%s'", ld->path, name);
    if (st_numel(t) != numel)
        return err_set(ERR_DATA, "%s: tensor '%s' has %lld elements where the config implies %lld", ld->path, name,
                       (long long)st_numel(t), (long long)numel);
    *out = t;
    return 0;
}

/* a frozen dense tensor, stored bf16 (norms too: gemma's 1 + w is summed in fp32 by the op, as
 * transformers does, never rounded to bf16: m->norm_add) */
static int load_dense(loader *ld, const char *name, int64_t numel, uint16_t **dst) {
    *dst = carve_take(&ld->cv, numel * 2);
    if (!ld->cv.base) return 0;
    const st_tensor *t;
    int rc = loader_find(ld, name, numel, &t);
    if (rc) return rc;
    if (t->dtype == ST_BF16) {
        ld->m->ops->upload(*dst, t->data, (size_t)numel * 2);
        return 0;
    }
    float *f = malloc(sizeof(float) * (size_t)numel);
    uint16_t *h = malloc(2 * (size_t)numel);
    if (!f || !h) {
        free(f);
        free(h);
        return err_set(ERR_STAGE, "out of memory loading '%s'", name);
    }
    rc = st_read_f32(t, 0, numel, f);
    for (int64_t i = 0; !rc && i < numel; i++) h[i] = f32_to_bf16(f[i]);
    if (!rc) ld->m->ops->upload(*dst, h, (size_t)numel * 2);
    free(f);
    free(h);
    return rc;
}

/* a float linear kept as it is (llama_load_opts.dense): its values in the backend's activation
 * dtype (exact on the cpu, whose activations are fp32) */
static int load_linear_dense(loader *ld, const char *prefix, int64_t row0, int64_t total, int64_t out, int64_t in,
                             llama_linear *lin) {
    const ops_table *o = ld->m->ops;
    int64_t n = out * in, esz = (int64_t)ops_act_size(o);
    void *w = carve_take(&ld->cv, n * esz);
    lin->w = (ops_nf4){.rows = out, .cols = in, .blocksize = 64, .dense = w};
    if (!ld->cv.base) return 0;
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    const st_tensor *t;
    int rc = loader_find(ld, name, total * in, &t);
    if (rc) return rc;
    if (t->dtype != ST_F32 && t->dtype != ST_F16 && t->dtype != ST_BF16)
        return err_set(ERR_DATA, "%s: tensor '%s' has dtype %s (expected BF16, F16 or F32)", ld->path, name,
                       st_dtype_name(t->dtype));
    int64_t skip = row0 * in * (t->dtype == ST_F32 ? 4 : 2); /* a block of phi3's fused tensors */
    if (t->dtype == ST_BF16 && esz == 2) {
        o->upload(w, (const uint8_t *)t->data + skip, (size_t)n * 2);
        return 0;
    }
    void *h = malloc((size_t)(n * esz));
    if (!h) return err_set(ERR_STAGE, "out of memory loading '%s'", name);
    const uint8_t *src = (const uint8_t *)t->data + skip;
    for (int64_t i = 0; i < n; i++) {
        float v;
        if (t->dtype == ST_F32) memcpy(&v, src + 4 * i, 4);
        else {
            uint16_t u;
            memcpy(&u, src + 2 * i, 2);
            v = t->dtype == ST_F16 ? f16_to_f32(u) : bf16_to_f32(u);
        }
        if (esz == 4) ((float *)h)[i] = v;
        else ((uint16_t *)h)[i] = f32_to_bf16(v);
    }
    o->upload(w, h, (size_t)(n * esz));
    free(h);
    return 0;
}

/* a frozen linear [out, in]: read as stored from a bitsandbytes 4-bit checkpoint, or quantized to
 * NF4 here from a float one, or kept as it is (dense) when the options say so. It is rows [row0, row0 + out) of the checkpoint's [total, in] tensor
 * prefix.weight: the whole of it (row0 0, total out), or a block of phi3's fused qkv_proj or
 * gate_up_proj (NF4 blocks never straddle two blocks of rows: each holds a multiple of 64 values) */
/* a pre-quantized Linear's codes, scales and code table (rows row0.. of a fused tensor) to the
 * backend, as bitsandbytes stored them */
/* the backend buffers a linear's NF4 weight was carved into (lin->w holds them as const) */
typedef struct nf4_bufs {
    uint8_t *codes, *absmax_q;
    float *absmax, *nested, *nmap, *qmap;
} nf4_bufs;

static void upload_prequantized(loader *ld, llama_linear *lin, const nf4_bufs *B, bnb_linear *bl, int64_t row0,
                                bool dq) {
    const ops_table *o = ld->m->ops;
    int64_t in = lin->w.cols, n = lin->w.rows * in, bs = lin->w.blocksize, nb = nf4_nblocks(n, (int)bs);
    o->upload(B->codes, bl->w.codes + row0 * in / 2, (size_t)nf4_packed_bytes(n));
    if (dq) {
        o->upload(B->absmax_q, bl->absmax_q, (size_t)nb);
        o->upload(B->nested, bl->nested_absmax, sizeof(float) * (size_t)nf4_nblocks(nb, NF4_NESTED_BLOCKSIZE));
        o->upload(B->nmap, bl->nested_map, sizeof bl->nested_map);
        lin->w.nested_offset = bl->nested_offset;
    } else {
        o->upload(B->absmax, bl->absmax + row0 * in / bs, sizeof(float) * (size_t)nb);
    }
    o->upload(B->qmap, bl->qmap, sizeof bl->qmap);
}

/* A block of rows of a fused tensor (phi3's qkv_proj, gate_up_proj) with double quant: bitsandbytes
 * quantizes the fused Linear whole, so the offset and the nested groups of 256 blocks are the whole
 * tensor's. Its absmax is double-quantized whole and de-nested here (once: the tensor's other blocks,
 * loaded next, take it from ld), and the rows' share of it (ha: nb blocks from block b0) kept in
 * f32, as a pre-quantized fused tensor's is: the same weights as bitsandbytes', bit for bit. */
static int fused_absmax(loader *ld, float *ha, const char *name, const void *data, int src, int64_t all, int bs,
                        int64_t b0, int64_t nb, int threads) {
    if (!ld->fused_a || strcmp(ld->fused_name, name)) {
        int64_t nball = nf4_nblocks(all, bs), nn = nf4_nblocks(nball, NF4_NESTED_BLOCKSIZE);
        float *a = malloc(sizeof(float) * (size_t)nball), *hn = malloc(sizeof(float) * (size_t)nn);
        uint8_t *q = malloc((size_t)nball);
        if (!a || !hn || !q) {
            free(a), free(hn), free(q);
            return err_set(ERR_STAGE, "out of memory quantizing '%s'", name);
        }
        float map[NF4_DYNAMIC_MAP_SIZE];
        nf4_dynamic_map(map);
        nf4_absmax(a, data, src, all, bs, threads); /* finiteness: the rows' own pass reports it */
        float offset = nf4_absmax_mean(a, nball);
        nf4_double_quant(q, hn, a, nball, offset, map);
        nf4_double_dequant(a, q, hn, map, nball, offset);
        free(hn), free(q);
        free(ld->fused_a);
        ld->fused_a = a;
        snprintf(ld->fused_name, sizeof ld->fused_name, "%s", name);
    }
    memcpy(ha, ld->fused_a + b0, sizeof(float) * (size_t)nb);
    return 0;
}

/* the checkpoint's bf16/f16/f32 weight prefix.weight (rows row0.. of total) quantized to NF4 here,
 * double-quantized as bitsandbytes' compress_statistics when dq (fused_dq: a block of a fused
 * tensor, see fused_absmax), and uploaded to the backend */
static int quantize_and_upload(loader *ld, const char *prefix, llama_linear *lin, const nf4_bufs *B, int64_t row0,
                               int64_t total, bool dq, bool fused_dq) {
    const ops_table *o = ld->m->ops;
    int64_t in = lin->w.cols, n = lin->w.rows * in, bs = lin->w.blocksize, nb = nf4_nblocks(n, (int)bs);
    int64_t nn = nf4_nblocks(nb, NF4_NESTED_BLOCKSIZE);
    uint8_t *codes = B->codes, *absmax_q = B->absmax_q;
    float *absmax = B->absmax, *nested = B->nested, *nmap = B->nmap, *qmap = B->qmap;
    char name[256];
    snprintf(name, sizeof name, "%s.weight", prefix);
    const st_tensor *t;
    int rc = loader_find(ld, name, total * in, &t);
    if (rc) return rc;
    int src;
    const char *data = (const char *)t->data, *whole = data;
    switch (t->dtype) {
    case ST_F32: src = NF4_SRC_F32, data += row0 * in * 4; break;
    case ST_F16: src = NF4_SRC_F16, data += row0 * in * 2; break;
    case ST_BF16: src = NF4_SRC_BF16, data += row0 * in * 2; break;
    default:
        return err_set(ERR_DATA, "%s: tensor '%s' has dtype %s (expected BF16, F16 or F32)", ld->path, name,
                       st_dtype_name(t->dtype));
    }
    uint8_t *hc = malloc((size_t)nf4_packed_bytes(n));
    float *ha = malloc(sizeof(float) * (size_t)nb);
    if (!hc || !ha) {
        free(hc);
        free(ha);
        return err_set(ERR_STAGE, "out of memory quantizing '%s'", name);
    }
    long cpus = sysconf(_SC_NPROCESSORS_ONLN); /* the machine's cores, up to 16: a 7B loads in seconds */
    int threads = cpus < 2 ? 2 : cpus > 16 ? 16 : (int)cpus;
    int64_t bad = nf4_quantize(hc, ha, data, src, n, (int)bs, OPS_NF4, threads);
    if (bad >= 0) {
        free(hc);
        free(ha);
        return err_set(ERR_DATA, "%s: tensor '%s' holds a NaN or Inf at element %lld", ld->path, name,
                       (long long)(bad + row0 * in));
    }
    if (fused_dq && (rc = fused_absmax(ld, ha, name, whole, src, total * in, (int)bs, row0 * in / bs, nb, threads))) {
        free(hc);
        free(ha);
        return rc;
    }
    if (dq) { /* what bitsandbytes' compress_statistics keeps of absmax */
        float map[NF4_DYNAMIC_MAP_SIZE];
        nf4_dynamic_map(map);
        float offset = nf4_absmax_mean(ha, nb);
        uint8_t *q = malloc((size_t)nb);
        float *hn = malloc(sizeof(float) * (size_t)nn);
        if (!q || !hn) {
            free(q), free(hn), free(hc), free(ha);
            return err_set(ERR_STAGE, "out of memory quantizing '%s'", name);
        }
        nf4_double_quant(q, hn, ha, nb, offset, map);
        o->upload(absmax_q, q, (size_t)nb);
        o->upload(nested, hn, sizeof(float) * (size_t)nn);
        o->upload(nmap, map, sizeof map);
        lin->w.nested_offset = offset;
        free(q);
        free(hn);
    } else {
        o->upload(absmax, ha, sizeof(float) * (size_t)nb);
    }
    o->upload(codes, hc, (size_t)nf4_packed_bytes(n));
    o->upload(qmap, nf4_quant_map(OPS_NF4), 16 * 4);
    free(hc);
    free(ha);
    return 0;
}

static int load_linear(loader *ld, const char prefix[200], int64_t row0, int64_t total, int64_t out, int64_t in,
                       bool bias, llama_linear *lin) {
    char name[256];
    bool part = row0 != 0 || total != out;
    lin->bias = NULL;
    lin->in = in;
    lin->out = out;
    if (bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        int rc = load_dense(ld, name, out, &lin->bias);
        if (rc) return rc;
    }
    /* a pre-quantized Linear brings its own blocksize and code table (NF4 or FP4) */
    bnb_linear bl;
    memset(&bl, 0, sizeof bl);
    bool pre = bnb_linear_present(ld->st, prefix);
    int64_t n = out * in, bs = ld->opts.blocksize;
    if (pre) {
        int rc = bnb_linear_load(ld->st, prefix, &bl);
        if (rc) return rc;
        if (bl.w.rows != total || bl.w.cols != in) {
            bnb_linear_free(&bl);
            return err_set(ERR_DATA, "%s: '%s.weight' is [%lld, %lld] where the config implies [%lld, %lld]", ld->path,
                           prefix, (long long)bl.w.rows, (long long)bl.w.cols, (long long)total, (long long)in);
        }
        bs = bl.w.blocksize;
        if (part && ((row0 * in) % bs || n % bs)) {
            bnb_linear_free(&bl);
            return err_set(ERR_DATA, "%s: '%s.weight' is quantized in blocks of %lld values, which do not split at its "
                                     "fused projections' boundaries", ld->path, prefix, (long long)bs);
        }
    }
    if (ld->opts.dense && !pre) return load_linear_dense(ld, prefix, row0, total, out, in, lin);
    int64_t nb = nf4_nblocks(n, (int)bs), nn = nf4_nblocks(nb, NF4_NESTED_BLOCKSIZE);
    /* double quant stays as bitsandbytes stores it (1 byte a block + a scale per 256 blocks):
     * 3 bytes per 64 weights less than fp32 absmax, de-nested block by block inside the ops */
    /* a block of a fused tensor, pre-quantized or quantized here, keeps the de-nested scales of
     * the whole tensor's double quant (the nested groups of 256 blocks need not align with it) */
    bool dq = pre ? bl.nested && !part : ld->opts.double_quant && !part;
    uint8_t *codes = carve_take(&ld->cv, nf4_packed_bytes(n));
    float *absmax = dq ? NULL : carve_take(&ld->cv, nb * 4);
    uint8_t *absmax_q = dq ? carve_take(&ld->cv, nb) : NULL;
    float *nested = dq ? carve_take(&ld->cv, nn * 4) : NULL;
    float *nmap = dq ? carve_take(&ld->cv, NF4_DYNAMIC_MAP_SIZE * 4) : NULL;
    float *qmap = carve_take(&ld->cv, 16 * 4);
    lin->w = (ops_nf4){.codes = codes, .absmax = absmax, .quant_map = qmap, .rows = out, .cols = in,
                       .blocksize = (int)bs, .absmax_q = absmax_q, .nested_absmax = nested, .nested_map = nmap};
    if (!ld->cv.base) {
        bnb_linear_free(&bl);
        return 0;
    }
    nf4_bufs B = {codes, absmax_q, absmax, nested, nmap, qmap};
    if (pre) {
        upload_prequantized(ld, lin, &B, &bl, row0, dq);
        bnb_linear_free(&bl);
        return 0;
    }
    return quantize_and_upload(ld, prefix, lin, &B, row0, total, dq, part && ld->opts.double_quant);
}

static bool has_bias(const model_config *c, llama_target t) {
    if (t <= LLAMA_V) return c->arch == ARCH_QWEN2 || c->attention_bias;
    if (t == LLAMA_O) return c->arch != ARCH_QWEN2 && c->attention_bias;
    return c->mlp_bias;
}

/* the whole layout; counting pass when ld->cv.base is NULL */
static int load_all(loader *ld) {
    llama_model *m = ld->m;
    int rc;
    bool gemma = config_gemma(&m->cfg), local, lng;
    llama_rope_needs(m, &local, &lng);
    int64_t half = m->rot / 2;
    m->inv_freq = carve_take(&ld->cv, half * 4);
    m->inv_freq_local = local ? carve_take(&ld->cv, half * 4) : m->inv_freq;
    m->inv_freq_long = lng ? carve_take(&ld->cv, half * 4) : m->inv_freq;
    if (ld->cv.base && (rc = llama_rope_upload(m))) return rc;
    if ((rc = load_dense(ld, "model.embed_tokens.weight", (int64_t)m->V * m->C, &m->embed))) return rc;
    if ((rc = load_dense(ld, "model.norm.weight", m->C, &m->final_norm))) return rc;
    if (m->cfg.tie_word_embeddings) m->lm_head = m->embed;
    else if ((rc = load_dense(ld, "lm_head.weight", (int64_t)m->V * m->C, &m->lm_head))) return rc;
    int64_t qd = (int64_t)m->nh * m->hd, kvd = (int64_t)m->nkv * m->hd;
    int64_t outs[LLAMA_NTARGETS] = {qd, kvd, kvd, m->C, m->I, m->I, m->C};
    int64_t ins[LLAMA_NTARGETS] = {m->C, m->C, m->C, qd, m->C, m->C, m->I};
    for (int l = 0; l < m->L; l++) {
        llama_layer *ly = &m->layers[l];
        char name[256];
        snprintf(name, sizeof name, "model.layers.%d.input_layernorm.weight", l);
        if ((rc = load_dense(ld, name, m->C, &ly->attn_norm))) return rc;
        /* gemma3's post_attention_layernorm follows o; its pre_feedforward_layernorm is the MLP's */
        snprintf(name, sizeof name, "model.layers.%d.%s.weight", l, gemma ? "pre_feedforward_layernorm" : "post_attention_layernorm");
        if ((rc = load_dense(ld, name, m->C, &ly->mlp_norm))) return rc;
        if (gemma) {
            snprintf(name, sizeof name, "model.layers.%d.post_attention_layernorm.weight", l);
            if ((rc = load_dense(ld, name, m->C, &ly->post_attn_norm))) return rc;
            snprintf(name, sizeof name, "model.layers.%d.post_feedforward_layernorm.weight", l);
            if ((rc = load_dense(ld, name, m->C, &ly->post_mlp_norm))) return rc;
        }
        if (m->cfg.qk_norm) {
            snprintf(name, sizeof name, "model.layers.%d.self_attn.q_norm.weight", l);
            if ((rc = load_dense(ld, name, m->hd, &ly->q_norm))) return rc;
            snprintf(name, sizeof name, "model.layers.%d.self_attn.k_norm.weight", l);
            if ((rc = load_dense(ld, name, m->hd, &ly->k_norm))) return rc;
        }
        for (int t = 0; t < LLAMA_NTARGETS; t++) {
            /* phi3: q, k, v are row blocks of qkv_proj, gate and up of gate_up_proj */
            int g = (int)llama_target_group(&m->cfg, (llama_target)t);
            int64_t row0 = 0, total = outs[t];
            for (int u = g; u < LLAMA_NTARGETS && (int)llama_target_group(&m->cfg, (llama_target)u) == g; u++) {
                if (u < t) row0 += outs[u];
                if (u != t) total += outs[u];
            }
            char prefix[200];
            snprintf(prefix, sizeof prefix, "model.layers.%d.%s", l, llama_target_module(&m->cfg, (llama_target)g));
            if ((rc = load_linear(ld, prefix, row0, total, outs[t], ins[t], has_bias(&m->cfg, (llama_target)t),
                                  &ly->lin[t])))
                return rc;
        }
    }
    return 0;
}

void llama_rope_needs(const llama_model *m, bool *local, bool *lng) {
    *local = m->cfg.arch == ARCH_GEMMA3;
    *lng = m->cfg.rope_type == ROPE_LONGROPE;
}

int llama_rope_upload(llama_model *m) {
    int half = m->rot / 2;
    float *inv = malloc(sizeof(float) * (size_t)(half > 0 ? half : 1));
    if (!inv) return err_set(ERR_STAGE, "out of memory");
    rope_inv_freq(&m->cfg, m->rot, inv, false, false);
    m->ops->upload(m->inv_freq, inv, sizeof(float) * (size_t)half);
    if (m->inv_freq_local != m->inv_freq) {
        rope_inv_freq(&m->cfg, m->rot, inv, true, false);
        m->ops->upload(m->inv_freq_local, inv, sizeof(float) * (size_t)half);
    }
    if (m->inv_freq_long != m->inv_freq) {
        rope_inv_freq(&m->cfg, m->rot, inv, false, true);
        m->ops->upload(m->inv_freq_long, inv, sizeof(float) * (size_t)half);
    }
    free(inv);
    return 0;
}

int llama_shape_init(llama_model *m, const model_config *cfg, const ops_table *ops, const char *path) {
    if (cfg->num_heads <= 0 || cfg->num_kv_heads <= 0 || cfg->num_heads % cfg->num_kv_heads)
        return err_set(ERR_DATA, "%s: num_attention_heads (%d) must be a multiple of num_key_value_heads (%d)", path,
                       cfg->num_heads, cfg->num_kv_heads);
    m->cfg = *cfg;
    m->cfg.skip_modules = NULL;
    m->ops = ops;
    m->C = (int)cfg->hidden_size;
    m->I = (int)cfg->intermediate_size;
    m->V = (int)cfg->vocab_size;
    m->L = cfg->num_layers;
    m->nh = cfg->num_heads;
    m->nkv = cfg->num_kv_heads;
    m->hd = cfg->head_dim > 0 ? cfg->head_dim : m->C / m->nh;
    m->eps = (float)cfg->rms_norm_eps;
    m->norm_add = config_gemma(cfg) ? 1.0f : 0.0f;
    if (m->hd % 2) return err_set(ERR_DATA, "%s: head_dim %d must be even for rotary embeddings", path, m->hd);
    m->rot = config_rope_dim(cfg) > 0 && config_rope_dim(cfg) <= m->hd ? config_rope_dim(cfg) : m->hd;
    if (cfg->arch == ARCH_PHI3 && m->hd != cfg->head_dim) m->rot = m->hd; /* an unset head_dim: full rotary */
    m->rope_mscale = cfg->rope_type == ROPE_LONGROPE && cfg->rope_attn_factor > 0 ? (float)cfg->rope_attn_factor : 1.0f;
    if (m->rot % 2) return err_set(ERR_DATA, "%s: %d rotated dims of a head must be even", path, m->rot);
    if (config_gemma(cfg)) {
        if (!ops->geglu_fwd || !ops->act_scale || !ops->attention_ex_fwd)
            return err_set(ERR_DATA, "%s: %s needs ops the %s backend does not have yet (GeGLU, the embedding "
                                     "scale, scaled and windowed attention); use device: cpu", path,
                           config_arch_name(cfg->arch), ops->name);
        /* transformers multiplies in the weights' dtype: sqrt(hidden) rounded to it */
        float sc = sqrtf((float)m->C);
        m->embed_scale = !strcmp(cfg->dtype, "bfloat16") ? bf16_to_f32(f32_to_bf16(sc))
                       : !strcmp(cfg->dtype, "float16") ? f16_to_f32(f32_to_f16(sc)) : sc;
    }
    return 0;
}

int llama_init(llama_model **out, const model_config *cfg, const char *path, const llama_load_opts *opts,
               const ops_table *ops) {
    *out = NULL;
    llama_model *m = calloc(1, sizeof *m);
    if (!m) return err_set(ERR_STAGE, "out of memory");
    int rc = llama_shape_init(m, cfg, ops, path);
    if (rc) {
        free(m);
        return rc;
    }
    m->layers = calloc((size_t)m->L, sizeof(llama_layer));
    loader ld = {.m = m, .path = path, .opts = opts ? *opts : LLAMA_LOAD_OPTS_DEFAULT};
    if (!nf4_blocksize_valid(ld.opts.blocksize)) {
        llama_free(&m);
        return err_set(ERR_USAGE, "invalid NF4 blocksize %d", ld.opts.blocksize);
    }
    rc = st_open(&ld.st, path);
    if (rc) {
        llama_free(&m);
        return rc;
    }
    rc = load_all(&ld); /* counting pass */
    if (!rc) {
        m->weight_bytes = ld.cv.off;
        m->weights = ops->alloc((size_t)ld.cv.off);
        if (!m->weights)
            rc = err_set(ERR_STAGE, "out of memory: the frozen weights need %.1f MiB", ld.cv.off / 1048576.0);
    }
    if (!rc) {
        ld.cv = (carve){.base = m->weights};
        rc = load_all(&ld);
    }
    st_close(&ld.st);
    free(ld.fused_a);
    if (rc) {
        llama_free(&m);
        return rc;
    }
    *out = m;
    return 0;
}

int llama_load(llama_model **out, const char *dir, const llama_load_opts *opts, const ops_table *ops) {
    model_config cfg;
    int rc = config_load(&cfg, dir);
    if (rc) return rc;
    rc = llama_init(out, &cfg, dir, opts, ops);
    config_free(&cfg);
    return rc;
}

static void free_acts(llama_model *m) {
    if (m->acts) {
        free(m->acts->layer);
        free(m->acts->res);
        free(m->acts->h_seq_start);
        free(m->acts->h_pos);
        free(m->acts->h_target);
        free(m->acts->h_losses);
        free(m->acts);
        m->acts = NULL;
    }
    if (m->act_mem) m->ops->free(m->act_mem);
    m->act_mem = NULL;
    if (m->acts_host) m->ops->free_host(m->acts_host);
    m->acts_host = NULL;
    m->host_act_bytes = 0;
    m->plan_T = 0;
}

void llama_free(llama_model **pm) {
    llama_model *m = *pm;
    if (!m) return;
    free_acts(m);
    if (m->kv_mem) m->ops->free(m->kv_mem);
    if (m->dense_mem) m->ops->free(m->dense_mem);
    if (m->weights) m->ops->free(m->weights);
    float *bufs[4] = {m->lora_params, m->lora_grads, m->lora_m, m->lora_v};
    for (int i = 0; i < 4; i++)
        if (bufs[i]) (i >= 2 && m->adam_host ? m->ops->free_host : m->ops->free)(bufs[i]);
    free(m->lora_tensors);
    free(m->lora_layer_off);
    free(m->layers);
    free(m);
    *pm = NULL;
}

/* ---- the linears kept dequantized (inference) ---- */

static bool dense_is_ours(const llama_model *m, const void *p) {
    const char *a = m->dense_mem, *q = p;
    return a && q >= a && q < a + m->dense_bytes;
}

/* one linear's share of dense_mem: each starts 256-byte aligned, as the ops' scratch does (the
 * GEMMs that read it may pick their kernel by alignment) */
static int64_t dense_slot(const llama_model *m, const ops_nf4 *w) {
    return (w->rows * w->cols * (int64_t)ops_act_size(m->ops) + 255) / 256 * 256;
}

/* frees the copy dense_mem holds (linears loaded dense stay as they are) */
static void dense_drop(llama_model *m) {
    if (!m->dense_mem) return;
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < LLAMA_NTARGETS; t++)
            if (dense_is_ours(m, m->layers[l].lin[t].w.dense)) m->layers[l].lin[t].w.dense = NULL;
    m->ops->sync(); /* no pass in flight reads it */
    m->ops->free(m->dense_mem);
    m->dense_mem = NULL;
    m->dense_bytes = 0;
}

/* The quantized linears, layer by layer, while their slots fit max_bytes: the bytes they take
 * (*n_out: how many). */
static int64_t dense_prefix(const llama_model *m, int64_t max_bytes, int *n_out) {
    int64_t bytes = 0;
    int n = 0;
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < LLAMA_NTARGETS; t++) {
            const ops_nf4 *w = &m->layers[l].lin[t].w;
            if (w->dense && !dense_is_ours(m, w->dense)) continue; /* loaded as it is */
            if (bytes + dense_slot(m, w) > max_bytes) goto done;
            bytes += dense_slot(m, w);
            n++;
        }
done:
    *n_out = n;
    return bytes;
}

int64_t llama_dense_bytes(const llama_model *m) {
    int n;
    return dense_prefix(m, INT64_MAX, &n);
}

int llama_dense_weights_within(llama_model *m, int64_t max_bytes) {
    dense_drop(m); /* a copy kept by an earlier call goes first: the new one may be larger */
    if (max_bytes <= 0) return 0;
    if (!m->ops->nf4_dequant)
        return err_set(ERR_STAGE, "the %s backend cannot keep the weights dequantized (no nf4_dequant op)", m->ops->name);
    int n;
    int64_t bytes = dense_prefix(m, max_bytes, &n);
    if (bytes == 0) return 0;
    char *mem = m->ops->alloc((size_t)bytes);
    if (!mem)
        return err_set(ERR_STAGE, "out of memory: %.2f GiB for the dequantized base weights on %s", (double)bytes / 1073741824.0,
                       m->ops->name);
    m->dense_mem = mem;
    m->dense_bytes = bytes;
    size_t off = 0;
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < LLAMA_NTARGETS && n > 0; t++) {
            ops_nf4 *w = &m->layers[l].lin[t].w;
            if (w->dense) continue; /* loaded as it is */
            m->ops->nf4_dequant(mem + off, w);
            w->dense = mem + off;
            off += (size_t)dense_slot(m, w);
            n--;
        }
    return 0;
}

int llama_dense_weights(llama_model *m, bool on) {
    if (on && m->dense_mem && m->dense_bytes == llama_dense_bytes(m)) return 0; /* kept whole already */
    return llama_dense_weights_within(m, on ? INT64_MAX : 0);
}

/* ---- LoRA ---- */

int llama_lora_attach(llama_model *m, const llama_lora_config *cfg) {
    if (m->lora_params) return err_set(ERR_STAGE, "the model already has LoRA tensors");
    if (cfg->r <= 0) return err_set(ERR_USAGE, "LoRA rank r must be positive (got %d)", cfg->r);
    if (cfg->dropout < 0 || cfg->dropout >= 1)
        return err_set(ERR_USAGE, "lora_dropout must be in [0, 1) (got %g)", cfg->dropout);
    if (!(cfg->targets & LLAMA_TARGETS_ALL)) return err_set(ERR_USAGE, "no LoRA target modules");
    m->lora = *cfg;
    /* phi3: a fused module is targeted whole (one A, one B over its blocks) */
    for (int t = 0; t < LLAMA_NTARGETS; t++) {
        int g = (int)llama_target_group(&m->cfg, (llama_target)t);
        if (g != t && !(cfg->targets & (1u << t)) != !(cfg->targets & (1u << g)))
            return err_set(ERR_USAGE, "%s has no separate %s: target %s as a whole", config_arch_name(m->cfg.arch),
                           target_names[t], strrchr(llama_target_module(&m->cfg, (llama_target)g), '.') + 1);
    }
    int n = 0;
    for (int t = 0; t < LLAMA_NTARGETS; t++)
        if ((cfg->targets & (1u << t)) && (int)llama_target_group(&m->cfg, (llama_target)t) == t) n += 2 * m->L;
    m->lora_tensors = calloc((size_t)n, sizeof(llama_lora_tensor));
    if (!m->lora_tensors) return err_set(ERR_STAGE, "out of memory");
    int64_t off = 0;
    int k = 0;
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < LLAMA_NTARGETS; t++) {
            if (!(cfg->targets & (1u << t)) || (int)llama_target_group(&m->cfg, (llama_target)t) != t) continue;
            llama_linear *lin = &m->layers[l].lin[t];
            int64_t out = lin->out; /* a fused module's B covers all its blocks */
            for (int u = t + 1; u < LLAMA_NTARGETS && (int)llama_target_group(&m->cfg, (llama_target)u) == t; u++)
                out += m->layers[l].lin[u].out;
            for (int b = 0; b < 2; b++) {
                llama_lora_tensor *lt = &m->lora_tensors[k++];
                snprintf(lt->name, sizeof lt->name, "base_model.model.model.layers.%d.%s.lora_%c.weight", l,
                         llama_target_module(&m->cfg, (llama_target)t), b ? 'B' : 'A');
                lt->layer = l;
                lt->target = (llama_target)t;
                lt->is_B = b;
                lt->rows = b ? out : cfg->r;
                lt->cols = b ? cfg->r : lin->in;
                lt->offset = off;
                off += lt->rows * lt->cols;
            }
        }
    m->n_lora_tensors = n;
    m->n_lora_params = off;
    m->lora_layer_off = calloc((size_t)m->L + 1, sizeof *m->lora_layer_off);
    if (!m->lora_layer_off) return err_set(ERR_STAGE, "out of memory");
    for (int l = 0, t = 0; l <= m->L; l++) {
        while (t < n && m->lora_tensors[t].layer < l) t++;
        m->lora_layer_off[l] = t < n ? m->lora_tensors[t].offset : off;
    }
    size_t bytes = sizeof(float) * (size_t)off;
    m->lora_params = m->ops->alloc(bytes);
    m->lora_grads = m->ops->alloc(bytes);
    void *(*adam_alloc)(size_t) = m->adam_host ? m->ops->alloc_host : m->ops->alloc;
    size_t adam_bytes = bytes;
    if (m->adam_shard_world > 1) {
        int64_t lo, hi;
        coll_shard(off, m->adam_shard_world, m->adam_shard_rank, &lo, &hi);
        adam_bytes = sizeof(float) * (size_t)(hi > lo ? hi - lo : 1);
    }
    m->lora_m = adam_alloc(adam_bytes);
    m->lora_v = adam_alloc(adam_bytes);
    if (m->adam_host && (!m->lora_m || !m->lora_v))
        return err_set(ERR_STAGE, "cannot allocate %.1f MiB of pinned host memory for the AdamW state: turn "
                                  "optimizer_offload off", 2.0 * (double)adam_bytes / 1048576.0);
    if (!m->lora_params || !m->lora_grads || !m->lora_m || !m->lora_v)
        return err_set(ERR_STAGE, "out of memory: LoRA state needs %.1f MiB", 4.0 * (double)bytes / 1048576.0);
    float scale = cfg->rslora ? cfg->alpha / sqrtf((float)cfg->r) : cfg->alpha / (float)cfg->r;
    for (k = 0; k < n; k += 2) {
        const llama_lora_tensor *a = &m->lora_tensors[k], *b = &m->lora_tensors[k + 1];
        /* each block of a fused module: the shared A (its gradient accumulates over the blocks, as
         * qlinear_bwd adds into dA) and its rows of B */
        int64_t row = 0;
        for (int u = a->target; u < LLAMA_NTARGETS && (int)llama_target_group(&m->cfg, (llama_target)u) == (int)a->target; u++) {
            llama_linear *lin = &m->layers[a->layer].lin[u];
            lin->lora = (ops_lora){.A = m->lora_params + a->offset, .B = m->lora_params + b->offset + row * cfg->r,
                                   .dA = m->lora_grads + a->offset, .dB = m->lora_grads + b->offset + row * cfg->r,
                                   .r = cfg->r, .scale = scale, .dropout = cfg->dropout};
            row += lin->out;
        }
    }
    if (m->plan_T) return llama_plan(m, m->plan_T, m->ckpt); /* xa buffers for the new branches */
    return 0;
}

void llama_lora_init_peft(llama_model *m, uint64_t seed) {
    float *h = calloc((size_t)m->n_lora_params, sizeof(float));
    if (!h) return;
    for (int k = 0; k < m->n_lora_tensors; k++) {
        const llama_lora_tensor *t = &m->lora_tensors[k];
        if (t->is_B) continue;
        float bound = 1.0f / sqrtf((float)t->cols);
        uint64_t stream = rng_stream_of(t->name);
        for (int64_t i = 0; i < t->rows * t->cols; i++)
            h[t->offset + i] = (2.0f * rng_uniform(seed, stream, (uint64_t)i) - 1.0f) * bound;
    }
    m->ops->upload(m->lora_params, h, sizeof(float) * (size_t)m->n_lora_params);
    free(h);
}

void llama_lora_zero_grads(llama_model *m) {
    if (m->lora_grads) m->ops->zero(m->lora_grads, sizeof(float) * (size_t)m->n_lora_params);
}

const llama_lora_tensor *llama_lora_find(const llama_model *m, const char *name) {
    for (int k = 0; k < m->n_lora_tensors; k++)
        if (!strcmp(m->lora_tensors[k].name, name)) return &m->lora_tensors[k];
    return NULL;
}

/* ---- activation plan ---- */

/* tokens per MLP chunk under checkpointing: the [T, I] intermediates are the largest buffers of a
 * layer, so the MLP runs over row chunks of the micro-batch. A LoRA branch on an MLP linear with
 * dropout draws its mask from the flat index t*in + i of the whole micro-batch, which a chunk
 * cannot see, so such a model keeps one chunk. */
static int plan_mlp_rows(const llama_model *m, int T) {
    const llama_layer *ly = &m->layers[0];
    bool drop = m->lora.dropout > 0 && (ly->lin[LLAMA_GATE].lora.A || ly->lin[LLAMA_UP].lora.A ||
                                        ly->lin[LLAMA_DOWN].lora.A);
    int rows = m->mlp_chunk_rows > 0 ? m->mlp_chunk_rows : LLAMA_MLP_CHUNK_ROWS;
    return drop || rows >= T ? T : rows;
}

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* the layer inputs go to host memory (see offload_input_out) */
static bool offloaded(const llama_model *m) {
    return m->offload_inputs && m->ckpt == LLAMA_CKPT_EVERY && m->L > 3 && m->ops->side_copy;
}

/* Without checkpointing every layer keeps its own activations. With it (the lean plan), one set
 * of buffers serves every layer and most of them hold two things in turn (see layer_backward):
 *   X0: n1, then n2, then dq       att: att, then n1 again       res_mid: res_mid, then datt
 *   q: also res[L] (between the last layer's forward and the final norm's backward)
 *   MLP region: gate, up, act, dact of one chunk of rows (dgate, dup in place over gate, up;
 *               dact over act when down_proj has no LoRA); dk, dv during attention's backward
 *   gemma: o_raw of its own (o's output until its norm's backward); d_raw, down's output of a
 *               chunk, in dact's slot (never over act) until down's backward writes dact; dn's
 *               rows take d(d_raw), then d(n2); dn takes d(o_raw) until q's backward
 * so a layer's working set is 8 [T, C] buffers (gemma 9) plus the region, beside the L layer
 * inputs. */
/* qwen3's q/k before their norm, the norms' rstd, and (once) their gradients: own buffers in both
 * plans, a small cost ((nh + nkv) * hd values a token) beside the rest of a layer */
static void plan_qk_norm(const llama_model *m, llama_acts *A, layer_acts *a, carve *cv, int64_t T, bool scratch) {
    if (!m->cfg.qk_norm) return;
    int64_t qd = (int64_t)m->nh * m->hd, kvd = (int64_t)m->nkv * m->hd, es = (int64_t)ops_act_size(m->ops);
    a->qr = carve_take(cv, T * qd * es);
    a->kr = carve_take(cv, T * kvd * es);
    a->rstdq = carve_take(cv, T * m->nh * 4);
    a->rstdk = carve_take(cv, T * m->nkv * 4);
    if (!scratch) return;
    A->dqr = carve_take(cv, T * qd * es);
    A->dkr = carve_take(cv, T * kvd * es);
}

static void plan_layout(const llama_model *m, llama_acts *A, carve *cv, int T, llama_checkpointing ckpt) {
    int64_t C = m->C, I = m->I, qd = (int64_t)m->nh * m->hd, kvd = (int64_t)m->nkv * m->hd;
    int64_t es = (int64_t)ops_act_size(m->ops);
    if (ckpt == LLAMA_CKPT_EVERY) {
        int64_t W = max64(C, qd), rows = plan_mlp_rows(m, T);
        layer_acts *a = &A->layer[0];
        a->n1 = a->n2 = A->dq = A->nf = carve_take(cv, T * W * es);
        a->q = A->res[m->L] = carve_take(cv, T * W * es);
        a->k = carve_take(cv, T * kvd * es);
        a->v = carve_take(cv, T * kvd * es);
        a->att = carve_take(cv, T * W * es);
        a->res_mid = A->datt = carve_take(cv, T * W * es);
        /* without a LoRA branch on down_proj, its backward never reads act: dact takes act's slot
         * (gemma's down output, normed before its residual add, lives in dact's own slot) */
        bool gemma = config_gemma(&m->cfg);
        int64_t slots = m->layers[0].lin[LLAMA_DOWN].lora.A || gemma ? 4 : 3;
        char *region = carve_take(cv, max64(slots * rows * I, 2 * T * kvd) * es);
        a->gate = A->dgate = region;
        a->up = A->dup = region + rows * I * es;
        a->act = region + 2 * rows * I * es;
        A->dact = region + (slots - 1) * rows * I * es;
        A->dk = region;
        A->dv = region + T * kvd * es;
        a->rstd1 = carve_take(cv, T * 4);
        a->rstd2 = carve_take(cv, T * 4);
        a->lse = carve_take(cv, (int64_t)m->nh * T * 4);
        plan_qk_norm(m, A, a, cv, T, true);
        if (gemma) { /* o's output until its norm's backward; down's, a chunk at a time */
            a->o_raw = carve_take(cv, T * C * es);
            a->d_raw = A->dact;
            a->rstd_po = carve_take(cv, T * 4);
            a->rstd_pd = carve_take(cv, T * 4);
        }
        for (int t = 0; t < LLAMA_NTARGETS; t++)
            a->xa[t] = m->layers[0].lin[t].lora.A ? carve_take(cv, (int64_t)T * m->lora.r * 4) : NULL;
        if (m->offload_inputs && m->L > 3 && m->ops->side_copy) { /* three on the device in turn (see offload_after_forward) */
            void *ring[3];
            for (int i = 0; i < 3; i++) ring[i] = carve_take(cv, T * C * es);
            for (int l = 0; l < m->L; l++) A->res[l] = ring[l % 3];
        } else {
            for (int l = 0; l < m->L; l++) A->res[l] = carve_take(cv, T * C * es);
        }
        A->mlp_rows = (int)rows;
        A->rstdf = carve_take(cv, T * 4);
        A->dres = carve_take(cv, T * C * es);
        A->dn = A->tmp = carve_take(cv, T * W * es);
    } else {
        for (int l = 0; l < m->L; l++) {
            layer_acts *a = &A->layer[l];
            a->n1 = carve_take(cv, T * C * es);
            a->q = carve_take(cv, T * qd * es);
            a->k = carve_take(cv, T * kvd * es);
            a->v = carve_take(cv, T * kvd * es);
            a->att = carve_take(cv, T * qd * es);
            a->res_mid = carve_take(cv, T * C * es);
            a->n2 = carve_take(cv, T * C * es);
            a->gate = carve_take(cv, T * I * es);
            a->up = carve_take(cv, T * I * es);
            a->act = carve_take(cv, T * I * es);
            a->rstd1 = carve_take(cv, T * 4);
            a->rstd2 = carve_take(cv, T * 4);
            a->lse = carve_take(cv, (int64_t)m->nh * T * 4);
            plan_qk_norm(m, A, a, cv, T, l == 0);
            if (config_gemma(&m->cfg)) {
                a->o_raw = carve_take(cv, T * C * es);
                a->d_raw = carve_take(cv, T * C * es);
                a->rstd_po = carve_take(cv, T * 4);
                a->rstd_pd = carve_take(cv, T * 4);
            }
            for (int t = 0; t < LLAMA_NTARGETS; t++)
                a->xa[t] = m->layers[0].lin[t].lora.A ? carve_take(cv, (int64_t)T * m->lora.r * 4) : NULL;
        }
        for (int l = 0; l <= m->L; l++) A->res[l] = carve_take(cv, T * C * es);
        A->mlp_rows = T;
        A->nf = carve_take(cv, T * C * es);
        A->rstdf = carve_take(cv, T * 4);
        A->dres = carve_take(cv, T * C * es);
        A->dn = A->tmp = carve_take(cv, T * max64(C, qd) * es); /* tmp: forward only, dn: backward only */
        A->datt = carve_take(cv, T * qd * es);
        A->dq = carve_take(cv, T * qd * es);
        A->dk = carve_take(cv, T * kvd * es);
        A->dv = carve_take(cv, T * kvd * es);
        A->dgate = carve_take(cv, T * I * es);
        A->dup = carve_take(cv, T * I * es);
        A->dact = carve_take(cv, T * I * es);
    }
    A->losses = carve_take(cv, T * 4);
    A->logits = carve_take(cv, (int64_t)m->V * 4);
    A->ids = carve_take(cv, T * 4);
    A->seq_start = carve_take(cv, T * 4);
    A->pos = carve_take(cv, T * 4);
    A->target = carve_take(cv, T * 4);
}

int llama_plan(llama_model *m, int max_T, llama_checkpointing ckpt) {
    free_acts(m);
    if (max_T <= 0) return err_set(ERR_USAGE, "micro-batch of %d tokens", max_T);
    m->ckpt = ckpt;
    llama_acts *A = calloc(1, sizeof *A);
    if (!A) return err_set(ERR_STAGE, "out of memory");
    m->acts = A;
    A->layer = calloc((size_t)m->L, sizeof(layer_acts));
    A->res = calloc((size_t)m->L + 1, sizeof(void *));
    A->h_seq_start = malloc(sizeof(int32_t) * (size_t)max_T);
    A->h_pos = malloc(sizeof(int32_t) * (size_t)max_T);
    A->h_target = malloc(sizeof(int32_t) * (size_t)max_T);
    A->h_losses = malloc(sizeof(float) * (size_t)max_T);
    if (!A->layer || !A->res || !A->h_seq_start || !A->h_pos || !A->h_target || !A->h_losses) {
        free_acts(m);
        return err_set(ERR_STAGE, "out of memory");
    }
    carve cv = {0};
    plan_layout(m, A, &cv, max_T, ckpt);
    m->act_bytes = cv.off;
    m->act_mem = m->ops->alloc((size_t)cv.off);
    if (!m->act_mem) {
        free_acts(m);
        return err_set(ERR_STAGE, "out of memory: activations for %d tokens need %.1f MiB%s", max_T,
                       (double)cv.off / 1048576.0,
                       ckpt == LLAMA_CKPT_NONE ? " (activation checkpointing would need less)" : "");
    }
    cv = (carve){.base = m->act_mem};
    plan_layout(m, A, &cv, max_T, ckpt);
    if (offloaded(m)) {
        A->in_bytes = (size_t)max_T * (size_t)m->C * ops_act_size(m->ops);
        m->host_act_bytes = llama_offload_host_bytes(m, max_T);
        m->acts_host = m->ops->alloc_host((size_t)m->host_act_bytes);
        if (!m->acts_host) {
            double mib = (double)m->host_act_bytes / 1048576.0;
            free_acts(m);
            return err_set(ERR_STAGE, "out of pinned host memory: offloading the layer inputs of %d tokens needs "
                                      "%.1f MiB of host RAM; use a shorter sequence_len or activation_offload: off",
                           max_T, mib);
        }
        A->host_in = m->acts_host;
    }
    m->plan_T = max_T;
    return 0;
}

int64_t llama_offload_host_bytes(const llama_model *m, int max_T) {
    return m->L > 3 ? (int64_t)max_T * m->C * (int64_t)ops_act_size(m->ops) * (m->L - 3) : 0;
}

int64_t llama_plan_bytes(const llama_model *m, int max_T, llama_checkpointing ckpt) {
    llama_acts A;
    memset(&A, 0, sizeof A);
    A.layer = calloc((size_t)m->L, sizeof(layer_acts));
    A.res = calloc((size_t)m->L + 1, sizeof(void *));
    carve cv = {0};
    if (A.layer && A.res) plan_layout(m, &A, &cv, max_T, ckpt);
    free(A.layer);
    free(A.res);
    return cv.off;
}

/* ---- forward and backward ---- */

static uint64_t linear_seed(uint64_t seed, int l, int t) {
    return ops_hash_u64(seed, (uint64_t)l * LLAMA_NTARGETS + (uint64_t)t);
}

/* the LoRA branch of one linear for this pass (NULL: frozen-only) */
static const ops_lora *pass_lora(const llama_model *m, int l, int t, bool train, uint64_t seed, ops_lora *buf) {
    const ops_lora *L = &m->layers[l].lin[t].lora;
    if (!L->A) return NULL;
    *buf = *L;
    buf->dropout = train ? m->lora.dropout : 0.0f;
    buf->dropout_seed = linear_seed(seed, l, (int)llama_target_group(&m->cfg, (llama_target)t)); /* one mask a fused module */
    return buf;
}

static void linear_fwd(llama_model *m, int l, int t, void *y, const void *x, float *xa, int T, bool train,
                       uint64_t seed) {
    ops_lora buf;
    const llama_linear *lin = &m->layers[l].lin[t];
    m->ops->qlinear_fwd(y, x, &lin->w, lin->bias, pass_lora(m, l, t, train, seed, &buf), train ? xa : NULL, T);
}

static void linear_bwd(llama_model *m, int l, int t, void *dx, const void *dy, const void *x, const float *xa, int T,
                       int accumulate, uint64_t seed) {
    ops_lora buf;
    const llama_linear *lin = &m->layers[l].lin[t];
    m->ops->qlinear_bwd(dx, dy, x, &lin->w, pass_lora(m, l, t, true, seed, &buf), xa, T, accumulate);
}

static void *rows_at(const llama_model *m, void *p, int64_t t0, int64_t width) { return act_at(m, p, t0 * width); }

static float *xa_at(const llama_model *m, float *xa, int64_t t0) { return xa ? xa + t0 * m->lora.r : NULL; }

/* the attention options of layer l: its sliding window, if any; Gemma's score scale and
 * soft-capping */
static ops_attn layer_attn(const llama_model *m, int l) {
    ops_attn a = {0};
    a.window = (int)config_layer_window(&m->cfg, l);
    if (config_gemma(&m->cfg)) a.scale = (float)(1.0 / sqrt(m->cfg.query_pre_attn_scalar));
    a.softcap = (float)m->cfg.attn_softcap;
    return a;
}

/* the ex attention ops are needed: a window this batch reaches, another scale or a soft-cap */
static bool attn_ex(const llama_model *m, const ops_attn *opt) {
    return (m->acts->windowed && opt->window > 0) || opt->scale > 0 || opt->softcap > 0;
}

/* the rotary frequencies of layer l (gemma3's sliding layers have their own) */
static const float *layer_inv_freq(const llama_model *m, int l) {
    if (m->rope_long) return m->inv_freq_long;
    return config_layer_window(&m->cfg, l) > 0 ? m->inv_freq_local : m->inv_freq;
}

/* rotary on rows of x [T, nh*hd]: the plain op, or rope_ex for phi3's partial rotary and scale */
static void rope_apply(const llama_model *m, void *x, const float *inv, int T, int nh, int inverse) {
    if (m->rot == m->hd && m->rope_mscale == 1.0f) m->ops->rope(x, m->acts->pos, inv, T, nh, m->hd, inverse);
    else m->ops->rope_ex(x, m->acts->pos, inv, T, nh, m->hd, m->rot, m->rope_mscale, inverse);
}

static void glu_fwd(const llama_model *m, void *out, const void *gate, const void *up, int64_t n) {
    (config_gemma(&m->cfg) ? m->ops->geglu_fwd : m->ops->swiglu_fwd)(out, gate, up, n);
}

/* the MLP forward of rows [t0, t0+n) into out rows (down's output, before the residual add) */
static void mlp_forward_rows(llama_model *m, int l, layer_acts *a, void *out, int t0, int n, bool train,
                             uint64_t seed) {
    void *n2 = rows_at(m, a->n2, t0, m->C);
    linear_fwd(m, l, LLAMA_GATE, a->gate, n2, xa_at(m, a->xa[LLAMA_GATE], t0), n, train, seed);
    linear_fwd(m, l, LLAMA_UP, a->up, n2, xa_at(m, a->xa[LLAMA_UP], t0), n, train, seed);
    glu_fwd(m, a->act, a->gate, a->up, (int64_t)n * m->I);
    if (out) linear_fwd(m, l, LLAMA_DOWN, out, a->act, xa_at(m, a->xa[LLAMA_DOWN], t0), n, train, seed);
}

/* o's output of T rows into dst, as the residual adds it: gemma's normed (o_raw and its rstd kept
 * for the backward) */
static void attn_out_fwd(llama_model *m, int l, layer_acts *a, void *dst, int T, bool train, uint64_t seed) {
    if (!config_gemma(&m->cfg)) {
        linear_fwd(m, l, LLAMA_O, dst, a->att, a->xa[LLAMA_O], T, train, seed);
        return;
    }
    linear_fwd(m, l, LLAMA_O, a->o_raw, a->att, a->xa[LLAMA_O], T, train, seed);
    m->ops->rmsnorm_fwd(dst, a->rstd_po, a->o_raw, m->layers[l].post_attn_norm, m->norm_add, T, m->C, m->eps);
}

/* gemma's down output of rows [t0, ..): its rows of the layer's d_raw, or with checkpointing
 * d_raw itself (dact's slot: one chunk) */
static void *d_raw_rows(const llama_model *m, const layer_acts *a, int t0) {
    return m->ckpt == LLAMA_CKPT_EVERY ? a->d_raw : rows_at(m, a->d_raw, t0, m->C);
}

/* the MLP of rows [t0, t0+n) into dst (those rows), as the residual adds it: gemma's down output
 * normed */
static void mlp_out_fwd(llama_model *m, int l, layer_acts *a, void *dst, int t0, int n, bool train, uint64_t seed) {
    if (!config_gemma(&m->cfg)) {
        mlp_forward_rows(m, l, a, dst, t0, n, train, seed);
        return;
    }
    void *raw = d_raw_rows(m, a, t0);
    mlp_forward_rows(m, l, a, raw, t0, n, train, seed);
    m->ops->rmsnorm_fwd(dst, a->rstd_pd + t0, raw, m->layers[l].post_mlp_norm, m->norm_add, n, m->C, m->eps);
}

/* offload_inputs with checkpointing: layer l's input is ring buffer l % 3 (A->res[l]); the inputs
 * of layers 0..L-4 go to host memory during the forward and come back during the backward, each
 * copy on the side stream, slot = ring buffer. The last three inputs stay in their buffers. */

/* forward: before anything writes ring buffer (l+1) % 3 (layer l's output), the copy of its
 * earlier content (input l-2) must have ended */
static void offload_before_layer(llama_model *m, int l) {
    if (offloaded(m) && l >= 2 && l + 1 < m->L) m->ops->side_wait((l + 1) % 3);
}

/* forward: input l is complete (embedding or layer l-1 queued): send it to host memory */
static void offload_input_out(llama_model *m, int l) {
    if (!offloaded(m) || l >= m->L - 3) return;
    llama_acts *A = m->acts;
    m->ops->side_copy(l % 3, A->host_in + (size_t)l * A->in_bytes, A->res[l], A->in_bytes);
}

/* backward, before layer l: its input must be back in its buffer */
static void offload_input_ready(llama_model *m, int l) {
    if (offloaded(m) && l < m->L - 3) m->ops->side_wait(l % 3);
}

/* backward, layer l queued: its buffer is free once that work has run; fetch input l-3 into it */
static void offload_fetch_next(llama_model *m, int l) {
    if (!offloaded(m) || l < 3) return;
    llama_acts *A = m->acts;
    m->ops->side_copy(l % 3, A->res[l - 3], A->host_in + (size_t)(l - 3) * A->in_bytes, A->in_bytes);
}

/* layer l from res_in; writes res_out when not NULL (a recompute only refills the saved acts).
 * Checkpointed, the recompute stops at n2: the backward runs the MLP forward chunk by chunk. */
static void layer_forward(llama_model *m, int l, layer_acts *a, const void *res_in, void *res_out, int T, bool train,
                          uint64_t seed) {
    const ops_table *o = m->ops;
    const llama_acts *A = m->acts;
    const llama_layer *ly = &m->layers[l];
    int64_t C = m->C;
    bool lean = m->ckpt == LLAMA_CKPT_EVERY;
    o->rmsnorm_fwd(a->n1, a->rstd1, res_in, ly->attn_norm, m->norm_add, T, m->C, m->eps);
    bool qkn = m->cfg.qk_norm;
    linear_fwd(m, l, LLAMA_Q, qkn ? a->qr : a->q, a->n1, a->xa[LLAMA_Q], T, train, seed);
    linear_fwd(m, l, LLAMA_K, qkn ? a->kr : a->k, a->n1, a->xa[LLAMA_K], T, train, seed);
    linear_fwd(m, l, LLAMA_V, a->v, a->n1, a->xa[LLAMA_V], T, train, seed);
    if (qkn) { /* each head's hd values are one row of the norm */
        o->rmsnorm_fwd(a->q, a->rstdq, a->qr, ly->q_norm, m->norm_add, T * m->nh, m->hd, m->eps);
        o->rmsnorm_fwd(a->k, a->rstdk, a->kr, ly->k_norm, m->norm_add, T * m->nkv, m->hd, m->eps);
    }
    const float *inv = layer_inv_freq(m, l);
    rope_apply(m, a->q, inv, T, m->nh, 0);
    rope_apply(m, a->k, inv, T, m->nkv, 0);
    ops_attn opt = layer_attn(m, l);
    if (attn_ex(m, &opt))
        o->attention_ex_fwd(a->att, a->lse, a->q, a->k, a->v, A->seq_start, T, m->nh, m->nkv, m->hd, &opt);
    else
        o->attention_fwd(a->att, a->lse, a->q, a->k, a->v, A->seq_start, T, m->nh, m->nkv, m->hd);
    /* o's output straight into res_mid, then x added: x + o(a) == o(a) + x, bit for bit, with no
     * copy of x first (and the same for the MLP's output below) */
    attn_out_fwd(m, l, a, a->res_mid, T, train, seed);
    o->add_inplace(a->res_mid, res_in, T * C);
    o->rmsnorm_fwd(a->n2, a->rstd2, a->res_mid, ly->mlp_norm, m->norm_add, T, m->C, m->eps);
    if (lean) {
        if (!res_out) return;
        for (int t0 = 0; t0 < T; t0 += A->mlp_rows) {
            int n = T - t0 < A->mlp_rows ? T - t0 : A->mlp_rows;
            mlp_out_fwd(m, l, a, rows_at(m, res_out, t0, C), t0, n, train, seed);
        }
        o->add_inplace(res_out, a->res_mid, T * C);
        return;
    }
    mlp_out_fwd(m, l, a, res_out ? res_out : A->tmp, 0, T, train, seed);
    if (res_out) o->add_inplace(res_out, a->res_mid, T * C);
}

/* the MLP backward of rows [t0, t0+n): dn rows = d(n2 rows); the lean plan first recomputes the
 * chunk's forward (and down's LoRA input product xa, into dact's buffer, which is free then).
 * dout: d(the layer's output); gemma's goes through down's norm here first (d_raw: the layer's
 * rows, or recomputed into dact's slot with its rstd), d(d_raw) in dn's rows until gate's backward
 * writes them. */
static void mlp_backward_rows(llama_model *m, int l, layer_acts *a, const void *dout, int t0, int n, uint64_t seed) {
    const ops_table *o = m->ops;
    llama_acts *A = m->acts;
    bool lean = m->ckpt == LLAMA_CKPT_EVERY, gemma = config_gemma(&m->cfg);
    void *n2 = rows_at(m, a->n2, t0, m->C), *dn = rows_at(m, A->dn, t0, m->C);
    if (lean && (gemma || m->layers[l].lin[LLAMA_DOWN].lora.A)) {
        mlp_forward_rows(m, l, a, A->dact, t0, n, true, seed);
    } else if (lean) { /* gate and up only: act (dact's slot) is not read without down's LoRA */
        linear_fwd(m, l, LLAMA_GATE, a->gate, n2, xa_at(m, a->xa[LLAMA_GATE], t0), n, true, seed);
        linear_fwd(m, l, LLAMA_UP, a->up, n2, xa_at(m, a->xa[LLAMA_UP], t0), n, true, seed);
    }
    void *dres = rows_at(m, (void *)dout, t0, m->C);
    if (gemma) { /* rmsnorm_bwd accumulates: from zero */
        const llama_layer *ly = &m->layers[l];
        void *raw = d_raw_rows(m, a, t0);
        if (lean) /* the norm's rstd again (its output is not kept) */
            o->rmsnorm_fwd(dn, a->rstd_pd + t0, raw, ly->post_mlp_norm, m->norm_add, n, m->C, m->eps);
        o->zero(dn, (size_t)n * (size_t)m->C * ops_act_size(o));
        o->rmsnorm_bwd(dn, dres, raw, ly->post_mlp_norm, m->norm_add, a->rstd_pd + t0, n, m->C);
        dres = dn;
    }
    linear_bwd(m, l, LLAMA_DOWN, A->dact, dres, a->act, xa_at(m, a->xa[LLAMA_DOWN], t0), n, 0, seed);
    (gemma ? o->geglu_bwd : o->swiglu_bwd)(A->dgate, A->dup, A->dact, a->gate, a->up, (int64_t)n * m->I);
    linear_bwd(m, l, LLAMA_GATE, dn, A->dgate, n2, xa_at(m, a->xa[LLAMA_GATE], t0), n, 0, seed);
    linear_bwd(m, l, LLAMA_UP, dn, A->dup, n2, xa_at(m, a->xa[LLAMA_UP], t0), n, 1, seed);
}

/* A->dres holds d(layer output) on entry and d(layer input) on return */
static void layer_backward(llama_model *m, int l, layer_acts *a, const void *res_in, int T, uint64_t seed) {
    const ops_table *o = m->ops;
    llama_acts *A = m->acts;
    const llama_layer *ly = &m->layers[l];
    bool lean = m->ckpt == LLAMA_CKPT_EVERY, gemma = config_gemma(&m->cfg);
    size_t es = ops_act_size(o);
    for (int t0 = 0; t0 < T; t0 += A->mlp_rows)
        mlp_backward_rows(m, l, a, A->dres, t0, T - t0 < A->mlp_rows ? T - t0 : A->mlp_rows, seed);
    o->rmsnorm_bwd(A->dres, A->dn, a->res_mid, ly->mlp_norm, m->norm_add, a->rstd2, T, m->C);
    const void *dO = A->dres;
    if (gemma) { /* into dn, free until q's backward writes it */
        o->zero(A->dn, (size_t)T * (size_t)m->C * es);
        o->rmsnorm_bwd(A->dn, A->dres, a->o_raw, ly->post_attn_norm, m->norm_add, a->rstd_po, T, m->C);
        dO = A->dn;
    }
    linear_bwd(m, l, LLAMA_O, A->datt, dO, a->att, a->xa[LLAMA_O], T, 0, seed);
    ops_attn opt = layer_attn(m, l);
    if (attn_ex(m, &opt))
        o->attention_ex_bwd(A->dq, A->dk, A->dv, A->datt, a->att, a->lse, a->q, a->k, a->v, A->seq_start, T, m->nh,
                            m->nkv, m->hd, &opt);
    else
        o->attention_bwd(A->dq, A->dk, A->dv, A->datt, a->att, a->lse, a->q, a->k, a->v, A->seq_start, T, m->nh,
                         m->nkv, m->hd);
    const float *inv = layer_inv_freq(m, l);
    rope_apply(m, A->dq, inv, T, m->nh, 1);
    rope_apply(m, A->dk, inv, T, m->nkv, 1);
    void *dq = A->dq, *dk = A->dk;
    if (m->cfg.qk_norm) { /* through the per-head norms (rmsnorm_bwd accumulates: start from zero) */
        o->zero(A->dqr, (size_t)T * (size_t)m->nh * (size_t)m->hd * es);
        o->zero(A->dkr, (size_t)T * (size_t)m->nkv * (size_t)m->hd * es);
        o->rmsnorm_bwd(A->dqr, A->dq, a->qr, ly->q_norm, m->norm_add, a->rstdq, T * m->nh, m->hd);
        o->rmsnorm_bwd(A->dkr, A->dk, a->kr, ly->k_norm, m->norm_add, a->rstdk, T * m->nkv, m->hd);
        dq = A->dqr;
        dk = A->dkr;
    }
    /* lean: n1's buffer now holds dq; n1 comes back into att's (attention's backward is done) */
    void *n1 = a->n1;
    if (lean) {
        n1 = a->att;
        o->rmsnorm_fwd(n1, a->rstd1, res_in, ly->attn_norm, m->norm_add, T, m->C, m->eps);
    }
    linear_bwd(m, l, LLAMA_Q, A->dn, dq, n1, a->xa[LLAMA_Q], T, 0, seed);
    linear_bwd(m, l, LLAMA_K, A->dn, dk, n1, a->xa[LLAMA_K], T, 1, seed);
    linear_bwd(m, l, LLAMA_V, A->dn, A->dv, n1, a->xa[LLAMA_V], T, 1, seed);
    o->rmsnorm_bwd(A->dres, A->dn, res_in, ly->attn_norm, m->norm_add, a->rstd1, T, m->C);
}

int64_t llama_count_targets(const llama_batch *b) {
    int64_t n = 0;
    for (int t = 0; t + 1 < b->T; t++) {
        bool same = !b->seq_start || b->seq_start[t + 1] == b->seq_start[t];
        if (same && b->labels[t + 1] >= 0) n++;
    }
    return n;
}

/* validate b, derive positions and shifted targets, upload; runs the forward up to res[L] */
static int batch_forward(llama_model *m, const llama_batch *b, bool train, uint64_t seed) {
    if (!m->acts) return err_set(ERR_STAGE, "llama_plan was not called before the first batch");
    if (b->T <= 0 || b->T > m->plan_T)
        return err_set(ERR_STAGE, "micro-batch of %d tokens outside the plan (1..%d)", b->T, m->plan_T);
    llama_acts *A = m->acts;
    int T = b->T;
    bool windowed = false;
    for (int t = 0; t < T; t++) {
        if (b->ids[t] < 0 || b->ids[t] >= m->V)
            return err_set(ERR_DATA, "token id %d at position %d is outside the vocabulary (0..%d)", b->ids[t], t,
                           m->V - 1);
        int s = b->seq_start ? b->seq_start[t] : 0;
        if (s < 0 || s > t || (t > 0 && s != t && s != A->h_seq_start[t - 1]))
            return err_set(ERR_DATA, "bad sequence start %d at position %d", s, t);
        A->h_seq_start[t] = s;
        A->h_pos[t] = t - s;
        A->h_target[t] = -100;
        if (m->cfg.sliding_window > 0 && t - s >= m->cfg.sliding_window) windowed = true;
        if (m->cfg.rope_type == ROPE_DYNAMIC && t - s >= m->cfg.max_position_embeddings)
            return err_set(ERR_DATA, "position %d is beyond max_position_embeddings (%lld), where rope_scaling "
                                     "'dynamic' changes the frequencies, which this engine does not implement; "
                                     "use a shorter sequence_len", t - s, (long long)m->cfg.max_position_embeddings);
    }
    if (windowed && !m->ops->attention_ex_fwd)
        return err_set(ERR_DATA, "a sequence longer than the model's sliding window (%lld tokens): sliding-window "
                                 "attention is not implemented on the %s backend; use a shorter sequence_len or "
                                 "device: cpu", (long long)m->cfg.sliding_window, m->ops->name);
    A->windowed = windowed;
    /* longrope: the long factors when the longest sequence is beyond the original context
     * (transformers: max(position_ids) + 1 > original_max_position_embeddings) */
    m->rope_long = false;
    for (int t = 0; m->cfg.rope_type == ROPE_LONGROPE && t < T; t++)
        if (A->h_pos[t] + 1 > m->cfg.rope_original_max_position) m->rope_long = true;
    if (b->labels)
        for (int t = 0; t + 1 < T; t++) {
            int lab = b->labels[t + 1];
            if (A->h_seq_start[t + 1] != A->h_seq_start[t] || lab < 0) continue;
            if (lab >= m->V)
                return err_set(ERR_DATA, "label %d at position %d is outside the vocabulary (0..%d)", lab, t + 1,
                               m->V - 1);
            A->h_target[t] = lab;
        }
    const ops_table *o = m->ops;
    o->upload(A->ids, b->ids, sizeof(int32_t) * (size_t)T);
    o->upload(A->seq_start, A->h_seq_start, sizeof(int32_t) * (size_t)T);
    if (o->attention_layout) o->attention_layout(A->seq_start, A->h_seq_start, T);
    o->upload(A->pos, A->h_pos, sizeof(int32_t) * (size_t)T);
    o->upload(A->target, A->h_target, sizeof(int32_t) * (size_t)T);
    o->embedding_fwd(A->res[0], A->ids, m->embed, T, m->C);
    if (m->embed_scale > 0) o->act_scale(A->res[0], (int64_t)T * m->C, m->embed_scale);
    if (train) offload_input_out(m, 0);
    for (int l = 0; l < m->L; l++) {
        layer_acts *a = &A->layer[m->ckpt == LLAMA_CKPT_EVERY ? 0 : l];
        if (train) offload_before_layer(m, l);
        layer_forward(m, l, a, A->res[l], A->res[l + 1], T, train, seed);
        if (train && l + 1 < m->L) offload_input_out(m, l + 1);
    }
    o->rmsnorm_fwd(A->nf, A->rstdf, A->res[m->L], m->final_norm, m->norm_add, T, m->C, m->eps);
    return 0;
}

static void sum_losses(llama_model *m, int T, double *loss_sum, int64_t *n_targets, float *token_losses) {
    llama_acts *A = m->acts;
    m->ops->download(A->h_losses, A->losses, sizeof(float) * (size_t)T);
    double s = 0;
    int64_t n = 0;
    for (int t = 0; t < T; t++)
        if (A->h_target[t] >= 0) {
            s += A->h_losses[t];
            n++;
        }
    if (token_losses) memcpy(token_losses, A->h_losses, sizeof(float) * (size_t)T);
    *loss_sum = s;
    *n_targets = n;
}

int llama_forward_backward(llama_model *m, const llama_batch *b, float grad_scale, uint64_t dropout_seed,
                           double *loss_sum, int64_t *n_targets) {
    if (!m->lora_params) return err_set(ERR_STAGE, "no LoRA tensors to train (llama_lora_attach)");
    int rc = batch_forward(m, b, true, dropout_seed);
    if (rc) return rc;
    const ops_table *o = m->ops;
    llama_acts *A = m->acts;
    int T = b->T;
    o->xent_fwd_bwd(A->losses, A->dn, A->nf, m->lm_head, A->target, T, m->C, m->V, grad_scale,
                    (float)m->cfg.final_softcap);
    o->zero(A->dres, (size_t)T * (size_t)m->C * ops_act_size(o));
    o->rmsnorm_bwd(A->dres, A->dn, A->res[m->L], m->final_norm, m->norm_add, A->rstdf, T, m->C);
    for (int l = m->L - 1; l >= 0; l--) {
        layer_acts *a = &A->layer[m->ckpt == LLAMA_CKPT_EVERY ? 0 : l];
        offload_input_ready(m, l);
        if (m->ckpt == LLAMA_CKPT_EVERY) layer_forward(m, l, a, A->res[l], NULL, T, true, dropout_seed);
        layer_backward(m, l, a, A->res[l], T, dropout_seed);
        offload_fetch_next(m, l);
        if (m->layer_done) m->layer_done(m->layer_done_ud, l);
    }
    sum_losses(m, T, loss_sum, n_targets, NULL);
    return 0;
}

int llama_forward_loss(llama_model *m, const llama_batch *b, double *loss_sum, int64_t *n_targets,
                       float *token_losses) {
    int rc = batch_forward(m, b, false, 0);
    if (rc) return rc;
    llama_acts *A = m->acts;
    m->ops->xent_fwd_bwd(A->losses, NULL, A->nf, m->lm_head, A->target, b->T, m->C, m->V, 1.0f,
                         (float)m->cfg.final_softcap);
    sum_losses(m, b->T, loss_sum, n_targets, token_losses);
    return 0;
}

int llama_forward_logits(llama_model *m, const llama_batch *b, float *logits) {
    llama_batch nb = *b;
    nb.labels = NULL;
    int rc = batch_forward(m, &nb, false, 0);
    if (rc) return rc;
    size_t bytes = sizeof(float) * (size_t)b->T * (size_t)m->V;
    float *d = m->ops->alloc(bytes);
    if (!d) return err_set(ERR_STAGE, "out of memory for [%d, %d] logits", b->T, m->V);
    m->ops->logits(d, m->acts->nf, m->lm_head, b->T, m->C, m->V, (float)m->cfg.final_softcap);
    m->ops->download(logits, d, bytes);
    m->ops->free(d);
    return 0;
}

/* ---- generation ---- */

int llama_generate_begin(llama_model *m, int max_len) {
    if (max_len <= 0) return err_set(ERR_USAGE, "generation length %d", max_len);
    if (!m->acts) {
        int rc = llama_plan(m, max_len < 512 ? max_len : 512, LLAMA_CKPT_EVERY);
        if (rc) return rc;
    }
    if (max_len > m->kv_max) {
        if (m->kv_mem) m->ops->free(m->kv_mem);
        size_t bytes = (size_t)m->L * 2 * (size_t)max_len * (size_t)(m->nkv * m->hd) * ops_act_size(m->ops);
        m->kv_mem = m->ops->alloc(bytes);
        m->kv_max = m->kv_mem ? max_len : 0;
        if (!m->kv_mem) return err_set(ERR_STAGE, "out of memory: a KV cache of %d positions", max_len);
    }
    m->kv_len = 0;
    /* longrope in generation: chosen once for the whole cache (its keys are rotated once), by the
     * length asked for, as llama.cpp chooses by its context size */
    m->rope_long = m->cfg.rope_type == ROPE_LONGROPE && max_len > m->cfg.rope_original_max_position;
    return 0;
}

/* n <= plan_T tokens at positions kv_len.. . seg (n_seg > 1): the rows are n_seg sequences of
 * seg[j] tokens, each continuing the cached kv_len positions on its own (positions kv_len.., keys:
 * the cache and its own rows before it); the cache keeps its kv_len positions afterwards. */
static void decode_chunk(llama_model *m, const int32_t *ids, int n, const int *seg, int n_seg) {
    const ops_table *o = m->ops;
    llama_acts *A = m->acts;
    layer_acts *a = &A->layer[0];
    int64_t C = m->C, kvd = (int64_t)m->nkv * m->hd, qd = (int64_t)m->nh * m->hd, P = m->kv_len;
    bool multi = n_seg > 1;
    if (multi)
        for (int j = 0, t = 0; j < n_seg; j++)
            for (int i = 0; i < seg[j]; i++) A->h_pos[t++] = (int32_t)(P + i);
    else
        for (int t = 0; t < n; t++) A->h_pos[t] = (int32_t)(P + t);
    o->upload(A->ids, ids, sizeof(int32_t) * (size_t)n);
    o->upload(A->pos, A->h_pos, sizeof(int32_t) * (size_t)n);
    void *x = A->res[0];
    o->embedding_fwd(x, A->ids, m->embed, n, m->C);
    if (m->embed_scale > 0) o->act_scale(x, (int64_t)n * m->C, m->embed_scale);
    size_t es = ops_act_size(o);
    for (int l = 0; l < m->L; l++) {
        const llama_layer *ly = &m->layers[l];
        void *kc = act_at(m, m->kv_mem, (int64_t)(2 * l) * m->kv_max * kvd);
        void *vc = act_at(m, m->kv_mem, (int64_t)(2 * l + 1) * m->kv_max * kvd);
        void *k_new = act_at(m, kc, P * kvd), *v_new = act_at(m, vc, P * kvd);
        /* several sequences: their keys and values go to the cache one sequence at a time */
        void *k_out = multi ? a->k : k_new, *v_out = multi ? a->v : v_new;
        o->rmsnorm_fwd(a->n1, a->rstd1, x, ly->attn_norm, m->norm_add, n, m->C, m->eps);
        bool qkn = m->cfg.qk_norm;
        linear_fwd(m, l, LLAMA_Q, qkn ? a->qr : a->q, a->n1, NULL, n, false, 0);
        linear_fwd(m, l, LLAMA_K, qkn ? a->kr : k_out, a->n1, NULL, n, false, 0);
        linear_fwd(m, l, LLAMA_V, v_out, a->n1, NULL, n, false, 0);
        if (qkn) {
            o->rmsnorm_fwd(a->q, a->rstdq, a->qr, ly->q_norm, m->norm_add, n * m->nh, m->hd, m->eps);
            o->rmsnorm_fwd(k_out, a->rstdk, a->kr, ly->k_norm, m->norm_add, n * m->nkv, m->hd, m->eps);
        }
        const float *inv = layer_inv_freq(m, l);
        rope_apply(m, a->q, inv, n, m->nh, 0);
        rope_apply(m, k_out, inv, n, m->nkv, 0);
        ops_attn opt = layer_attn(m, l);
        for (int j = 0, t0 = 0; j < (multi ? n_seg : 1); j++) {
            int nj = multi ? seg[j] : n;
            if (multi) {
                o->copy(k_new, rows_at(m, k_out, t0, kvd), (size_t)nj * (size_t)kvd * es);
                o->copy(v_new, rows_at(m, v_out, t0, kvd), (size_t)nj * (size_t)kvd * es);
            }
            void *att = rows_at(m, a->att, t0, qd), *q = rows_at(m, a->q, t0, qd);
            if ((opt.window > 0 && P + nj > opt.window) || opt.scale > 0 || opt.softcap > 0)
                o->attention_ex_cached(att, q, kc, vc, nj, (int)(P + nj), m->nh, m->nkv, m->hd, &opt);
            else
                o->attention_cached(att, q, kc, vc, nj, (int)(P + nj), m->nh, m->nkv, m->hd);
            t0 += nj;
        }
        attn_out_fwd(m, l, a, A->tmp, n, false, 0);
        o->add_inplace(x, A->tmp, n * C);
        o->rmsnorm_fwd(a->n2, a->rstd2, x, ly->mlp_norm, m->norm_add, n, m->C, m->eps);
        mlp_out_fwd(m, l, a, A->tmp, 0, n, false, 0);
        o->add_inplace(x, A->tmp, n * C);
    }
    if (!multi) m->kv_len += n;
}

/* the checks llama_decode and llama_decode_losses share */
static int decode_check(llama_model *m, const int32_t *ids, int n) {
    if (!m->kv_mem) return err_set(ERR_STAGE, "llama_generate_begin was not called");
    if (n <= 0 || m->kv_len + n > m->kv_max)
        return err_set(ERR_USAGE, "generation reached the KV cache length (%d positions)", m->kv_max);
    if (m->cfg.sliding_window > 0 && m->kv_len + n > m->cfg.sliding_window && !m->ops->attention_ex_cached)
        return err_set(ERR_USAGE, "generation reached the model's sliding window (%lld positions), which the %s "
                                  "backend does not implement", (long long)m->cfg.sliding_window, m->ops->name);
    if (m->cfg.rope_type == ROPE_DYNAMIC && m->kv_len + n > m->cfg.max_position_embeddings)
        return err_set(ERR_USAGE, "generation reached max_position_embeddings (%lld), beyond which rope_scaling "
                                  "'dynamic' changes the frequencies (not implemented)",
                       (long long)m->cfg.max_position_embeddings);
    for (int t = 0; t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->V)
            return err_set(ERR_DATA, "token id %d is outside the vocabulary (0..%d)", ids[t], m->V - 1);
    return 0;
}

int llama_decode_losses(llama_model *m, const int32_t *ids, int n, const int32_t *targets, float *losses,
                        float *logits) {
    int rc = decode_check(m, ids, n);
    if (rc) return rc;
    for (int t = 0; t < n; t++)
        if (targets[t] >= m->V) return err_set(ERR_DATA, "target id %d is outside the vocabulary (0..%d)", targets[t], m->V - 1);
    llama_acts *A = m->acts;
    int most = m->plan_T < A->mlp_rows ? m->plan_T : A->mlp_rows;
    for (int done = 0, k; done < n; done += k) {
        k = n - done < most ? n - done : most;
        decode_chunk(m, ids + done, k, NULL, 1);
        int f = 0; /* the rows from the first with a target (a context's rows before it need none) */
        while (f < k && targets[done + f] < 0) f++;
        memset(losses + done, 0, sizeof(float) * (size_t)f);
        if (f == k) continue;
        int r = k - f;
        for (int t = 0; t < r; t++) A->h_target[t] = targets[done + f + t] >= 0 ? targets[done + f + t] : -100;
        m->ops->upload(A->target, A->h_target, sizeof(int32_t) * (size_t)r);
        m->ops->rmsnorm_fwd(A->nf, A->rstdf, act_at(m, A->res[0], (int64_t)f * m->C), m->final_norm, m->norm_add, r,
                            m->C, m->eps);
        m->ops->xent_fwd_bwd(A->losses, NULL, A->nf, m->lm_head, A->target, r, m->C, m->V, 1.0f,
                             (float)m->cfg.final_softcap);
        m->ops->download(losses + done + f, A->losses, sizeof(float) * (size_t)r);
        if (logits && done + k == n) { /* the rows are normed already: the last one's logits */
            m->ops->logits(A->logits, act_at(m, A->nf, (int64_t)(r - 1) * m->C), m->lm_head, 1, m->C, m->V,
                           (float)m->cfg.final_softcap);
            m->ops->download(logits, A->logits, sizeof(float) * (size_t)m->V);
            return 0;
        }
    }
    if (logits) {
        void *xl = act_at(m, A->res[0], (int64_t)((n - 1) % most) * m->C);
        m->ops->rmsnorm_fwd(A->nf, A->rstdf, xl, m->final_norm, m->norm_add, 1, m->C, m->eps);
        m->ops->logits(A->logits, A->nf, m->lm_head, 1, m->C, m->V, (float)m->cfg.final_softcap);
        m->ops->download(logits, A->logits, sizeof(float) * (size_t)m->V);
    }
    return 0;
}

int llama_decode_segments(llama_model *m, const int32_t *ids, const int *seg, int n_seg, const int32_t *targets,
                          float *losses, float *logits) {
    if (n_seg < 1) return err_set(ERR_USAGE, "no sequence to decode");
    int n = 0, longest = 0;
    for (int j = 0; j < n_seg; j++) {
        if (seg[j] < 1) return err_set(ERR_USAGE, "sequence %d of the batch is empty", j);
        n += seg[j];
        longest = seg[j] > longest ? seg[j] : longest;
    }
    int rc = decode_check(m, ids, longest); /* each sequence continues the cache on its own */
    for (int t = longest; !rc && t < n; t++)
        if (ids[t] < 0 || ids[t] >= m->V) rc = err_set(ERR_DATA, "token id %d is outside the vocabulary (0..%d)", ids[t], m->V - 1);
    for (int t = 0; !rc && t < n; t++)
        if (targets[t] >= m->V) rc = err_set(ERR_DATA, "target id %d is outside the vocabulary (0..%d)", targets[t], m->V - 1);
    if (rc) return rc;
    llama_acts *A = m->acts;
    int most = m->plan_T < A->mlp_rows ? m->plan_T : A->mlp_rows;
    if (n > most) return err_set(ERR_USAGE, "a batch of %d tokens is more than the plan's %d", n, most);
    decode_chunk(m, ids, n, seg, n_seg);
    /* each sequence: its rows from the first with a target through its last (whose logits are
     * asked for), normed, the cross-entropy on them, the last row's logits */
    for (int j = 0, t0 = 0; j < n_seg; t0 += seg[j], j++) {
        int e = t0 + seg[j] - 1, f = t0;
        while (f < e && targets[f] < 0) f++;
        memset(losses + t0, 0, sizeof(float) * (size_t)(f - t0));
        int r = e - f + 1;
        for (int t = 0; t < r; t++) A->h_target[t] = targets[f + t] >= 0 ? targets[f + t] : -100;
        m->ops->upload(A->target, A->h_target, sizeof(int32_t) * (size_t)r);
        m->ops->rmsnorm_fwd(A->nf, A->rstdf, act_at(m, A->res[0], (int64_t)f * m->C), m->final_norm, m->norm_add, r,
                            m->C, m->eps);
        m->ops->xent_fwd_bwd(A->losses, NULL, A->nf, m->lm_head, A->target, r, m->C, m->V, 1.0f,
                             (float)m->cfg.final_softcap);
        m->ops->download(losses + f, A->losses, sizeof(float) * (size_t)r);
        m->ops->logits(A->logits, act_at(m, A->nf, (int64_t)(r - 1) * m->C), m->lm_head, 1, m->C, m->V,
                       (float)m->cfg.final_softcap);
        m->ops->download(logits + (size_t)j * (size_t)m->V, A->logits, sizeof(float) * (size_t)m->V);
    }
    return 0;
}

int llama_kv_truncate(llama_model *m, int len) {
    if (len < 0 || len > m->kv_len) return err_set(ERR_USAGE, "cannot cut the KV cache of %d positions to %d", m->kv_len, len);
    m->kv_len = len;
    return 0;
}

int llama_decode(llama_model *m, const int32_t *ids, int n, float *logits) {
    int rc = decode_check(m, ids, n);
    if (rc) return rc;
    int last = 0, most = m->plan_T < m->acts->mlp_rows ? m->plan_T : m->acts->mlp_rows; /* MLP buffer rows */
    for (int done = 0; done < n; done += last) {
        last = n - done < most ? n - done : most;
        decode_chunk(m, ids + done, last, NULL, 1);
    }
    llama_acts *A = m->acts;
    void *xl = act_at(m, A->res[0], (int64_t)(last - 1) * m->C);
    m->ops->rmsnorm_fwd(A->nf, A->rstdf, xl, m->final_norm, m->norm_add, 1, m->C, m->eps);
    m->ops->logits(A->logits, A->nf, m->lm_head, 1, m->C, m->V, (float)m->cfg.final_softcap);
    m->ops->download(logits, A->logits, sizeof(float) * (size_t)m->V);
    return 0;
}
