/* train_gpu.c: GPU benchmarks of the training engine (CUDA builds only).
 *
 *   train_gpu train [--model 7b|1b|13b|70b|tiny|NAMED] [--targets q,v|all-linear] [--seq 2048] [--batch 1]
 *                   [--steps 10] [--warmup 2] [--ckpt auto|none|every] [--budget-gib G] [--r 16]
 *                   [--attention cudnn|mma|tiled] [--optimizer-offload off|on] [--nccl off|on]
 *                   [--act-offload auto|on|off] [--deterministic off|on] [--dense off|on] [--profile off|on]
 *                   [--weights DIR]
 *   train_gpu nf4   [--reps 50]     NF4 dequantize GB/s against a device-to-device copy
 *   train_gpu ops   [--seq 2048]    per-op times at the Llama-2-7B layer shape
 *
 * `train` runs the engine's own model code (model/llama.c on ops_cuda()) on a model of the
 * preset's shape whose weights are made directly on the GPU (random NF4 codes and absmax, random
 * bf16 embeddings; no disk), with QLoRA's standard recipe (r 16, alpha 32, dropout 0.05, AdamW,
 * grad-norm clip 1.0), random token ids, one sequence per micro-batch row. NAMED is a named preset of
 * init-model (llama3-8b, qwen3-8b, gemma3-12b, mistral-7b, ...: model/config.c) with its family's
 * layer (qwen3's and gemma3's q/k norms, gemma3's four norms, GeGLU, embedding scale, score scale
 * and interleaved sliding-window layers; Llama-3's rope scaling is left out: it changes no cost).
 * Before the first
 * step it plans device memory: activation checkpointing `auto` keeps every activation when the
 * plan fits the budget (the device's free memory unless --budget-gib) and recomputes each layer
 * otherwise; a plan that fits neither way stops with what it needs, what there is and what would
 * fit. --optimizer-offload on keeps AdamW's m and v in pinned host memory (ops->alloc_host), out
 * of the device plan, as the train stage's optimizer_offload does. --nccl on takes the data-parallel
 * path on one rank (docs/multi-gpu.md): a NCCL communicator of one, and each layer's LoRA
 * gradients all-reduced on the comm stream as soon as the backward has queued them. --dense on
 * keeps every linear dequantized in bf16 for the run (the train stage's dense_weights), out of the
 * memory there is before the activations are planned. It prints the
 * median step, tokens/s, MFU with the baseline's FLOP count (4 N_lin + 6 N_lora + 6 L s h per
 * token against 790 TFLOP/s), the share of the baseline's floor and peak memory (bench/RESULTS.md).
 * --profile on then runs one more step with every op timed by CUDA events: the step's device time
 * op by op and the device's idle time between ops (train_profile). --weights DIR loads a model
 * folder instead (its config.json and safetensors, bf16 or NF4 as the quantize_nf4 stage writes
 * them: a recipe's artifact), as the train stage loads it, so the harness and a recipe can be
 * timed on the same weights; --model then only names the row (and its floor). */
#include <cuda_profiler_api.h>
#include <cuda_runtime.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "core/clock.h"
#include "core/collective.h"
#include "core/err.h"
#include "core/half.h"
#include "kernels/cpu/nf4.h"
#include "kernels/cuda/device.h"
#include "kernels/cuda/cuda_ext.h"
#include "kernels/cuda/nf4_cuda.h"
#include "kernels/ops.h"
#include "kernels/ops_prof.h"
#include "model/config.h"
#include "model/llama.h"

#define PEAK_TFLOPS 790.0 /* bf16 matmul measured on the H200 (the baseline, bench/RESULTS.md) */
#define GIB (1024.0 * 1024.0 * 1024.0)

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static void cuda_or_die(cudaError_t e, const char *what) {
    if (e != cudaSuccess) {
        fprintf(stderr, "train_gpu: %s: %s\n", what, cudaGetErrorString(e));
        exit(1);
    }
}

/* ---- a model of a preset's shape with weights made on the device ---- */

static int64_t align256(int64_t b) { return (b + 255) & ~(int64_t)255; }

static const int64_t SYNTH_CHUNK = 1 << 24; /* elements of a random bf16 tensor made at once */

/* dst (bf16, n) = random values in about [-amp, amp]: random NF4 codes dequantized in chunks */
static void synth_bf16(const ops_table *ops, uint16_t *dst, int64_t n, float amp, uint64_t seed, uint8_t *tmp_codes,
                       float *tmp_absmax, const float *qm) {
    for (int64_t i = 0; i < n; i += SYNTH_CHUNK) {
        int64_t k = n - i < SYNTH_CHUNK ? n - i : SYNTH_CHUNK;
        nf4_cuda_fill_random(tmp_codes, tmp_absmax, k, 64, seed + (uint64_t)i, 0.5f * amp, amp);
        nf4_cuda_dequant_bf16(dst + i, tmp_codes, tmp_absmax, qm, k, 64);
    }
    (void)ops;
}

/* the next sz bytes (256-aligned) of a carved allocation */
static void *take(char **p, int64_t sz) {
    void *r = *p;
    *p += align256(sz);
    return r;
}

/* the linears' shapes of m's layer: [out] and [in] by target */
static void synth_shapes(const llama_model *m, int64_t outs[LLAMA_NTARGETS], int64_t ins[LLAMA_NTARGETS]) {
    int64_t C = m->C, qd = (int64_t)m->nh * m->hd, kvd = (int64_t)m->nkv * m->hd;
    const int64_t o[LLAMA_NTARGETS] = {qd, kvd, kvd, C, m->I, m->I, C}, i[LLAMA_NTARGETS] = {C, C, C, qd, C, C, m->I};
    memcpy(outs, o, sizeof o);
    memcpy(ins, i, sizeof i);
}

/* the bytes of the one allocation synth_model carves as llama_init does (so llama_free releases it) */
static int64_t synth_weight_bytes(const llama_model *m, const model_config *cfg, bool local, bool lng) {
    int64_t C = m->C, outs[LLAMA_NTARGETS], ins[LLAMA_NTARGETS];
    synth_shapes(m, outs, ins);
    int64_t bytes = align256(64) + align256(256 * 4) + (1 + local + lng) * align256(m->rot / 2 * 4) +
                    align256((int64_t)m->V * C * 2) + align256(C * 2);
    if (!cfg->tie_word_embeddings) bytes += align256((int64_t)m->V * C * 2);
    for (int l = 0; l < m->L; l++) {
        bytes += (config_gemma(cfg) ? 4 : 2) * align256(C * 2) + (cfg->qk_norm ? 2 * align256(m->hd * 2) : 0);
        for (int t = 0; t < LLAMA_NTARGETS; t++) {
            int64_t n = outs[t] * ins[t], nb = nf4_nblocks(n, 64);
            /* double quant kept as bitsandbytes stores it: 1 byte a block + a scale per 256 */
            bytes += align256(nf4_packed_bytes(n)) + align256(nb) + align256(nf4_nblocks(nb, 256) * 4);
        }
    }
    return bytes;
}

/* what synth_layer shares between layers: the maps, a row of ones and scratch for absmax */
typedef struct synth_ctx {
    const ops_table *ops;
    const model_config *cfg;
    float *quant_map, *nested_map, *tmp_f32, *hnest;
    const uint16_t *ones; /* bf16 1.0, max(C, hd) of them, on the host */
    uint64_t seed;
} synth_ctx;

/* a norm weight of n ones carved from *p */
static void *synth_norm(const synth_ctx *sc, char **p, int64_t n) {
    void *w = take(p, n * 2);
    sc->ops->upload(w, sc->ones, 2 * (size_t)n);
    return w;
}

/* layer l carved from *p (its linears sized by shaped_model): norms of ones (qwen3's and gemma3's
 * q/k norms, gemma3's four norms) and random NF4 linears with double-quantized absmax */
static void synth_layer(llama_model *m, const synth_ctx *sc, int l, char **p) {
    const ops_table *ops = sc->ops;
    int64_t C = m->C, outs[LLAMA_NTARGETS], ins[LLAMA_NTARGETS];
    synth_shapes(m, outs, ins);
    llama_layer *ly = &m->layers[l];
    ly->attn_norm = synth_norm(sc, p, C);
    ly->mlp_norm = synth_norm(sc, p, C);
    if (sc->cfg->qk_norm) { /* qwen3, gemma3: per-head norms of q and k */
        ly->q_norm = synth_norm(sc, p, m->hd);
        ly->k_norm = synth_norm(sc, p, m->hd);
    }
    if (config_gemma(sc->cfg)) { /* gemma3's norms of o's and down's outputs */
        ly->post_attn_norm = synth_norm(sc, p, C);
        ly->post_mlp_norm = synth_norm(sc, p, C);
    }
    for (int t = 0; t < LLAMA_NTARGETS; t++) {
        llama_linear *lin = &ly->lin[t];
        int64_t n = outs[t] * ins[t];
        int64_t nb = nf4_nblocks(n, 64), nn = nf4_nblocks(nb, 256);
        uint8_t *codes = take(p, nf4_packed_bytes(n));
        uint8_t *absmax_q = take(p, nb);
        float *nested = take(p, nn * 4);
        /* absmax of 64 normal draws is about 2.4 sigma: weights of std ~ 1/sqrt(in); as double
         * quant: offset 2.4 sigma plus map[code] (in [-1, 1]) * 0.4 sigma, codes random bytes */
        float sigma = 1.0f / sqrtf((float)ins[t]);
        nf4_cuda_fill_random(codes, sc->tmp_f32, n, 64, sc->seed + 1000003u * (uint64_t)(l * LLAMA_NTARGETS + t),
                             2.0f * sigma, 2.8f * sigma);
        ops->copy(absmax_q, codes + (nf4_packed_bytes(n) - nb), (size_t)nb);
        for (int64_t i = 0; i < nn; i++) sc->hnest[i] = 0.4f * sigma;
        ops->upload(nested, sc->hnest, sizeof(float) * (size_t)nn);
        lin->w = (ops_nf4){.codes = codes, .quant_map = sc->quant_map, .rows = outs[t], .cols = ins[t],
                           .blocksize = 64, .absmax_q = absmax_q, .nested_absmax = nested,
                           .nested_map = sc->nested_map, .nested_offset = 2.4f * sigma};
    }
}

/* the model of cfg's shape, its layers' linears sized (llama_shape_init; preset names the model
 * in messages), no weight made: what synth_model fills and fit --paper plans */
static int shaped_model(llama_model **out, const model_config *cfg, const char *preset, const ops_table *ops) {
    llama_model *m = calloc(1, sizeof *m);
    int rc = m ? llama_shape_init(m, cfg, ops, preset) : err_set(ERR_STAGE, "out of memory");
    if (!rc && !(m->layers = calloc((size_t)m->L, sizeof(llama_layer)))) rc = err_set(ERR_STAGE, "out of memory");
    if (rc) {
        free(m);
        return rc;
    }
    int64_t outs[LLAMA_NTARGETS], ins[LLAMA_NTARGETS];
    synth_shapes(m, outs, ins);
    for (int l = 0; l < m->L; l++)
        for (int t = 0; t < LLAMA_NTARGETS; t++) {
            llama_linear *lin = &m->layers[l].lin[t];
            lin->w = (ops_nf4){.rows = outs[t], .cols = ins[t], .blocksize = 64};
            lin->in = ins[t], lin->out = outs[t];
        }
    *out = m;
    return 0;
}

static int synth_model(llama_model **out, const model_config *cfg, const char *preset, const ops_table *ops,
                       uint64_t seed) {
    llama_model *m;
    int rc = shaped_model(&m, cfg, preset, ops);
    if (rc) return rc;
    int64_t C = m->C;
    bool local, lng; /* gemma2 too: its soft-caps come with cfg */
    llama_rope_needs(m, &local, &lng);
    int64_t bytes = synth_weight_bytes(m, cfg, local, lng);
    m->weights = ops->alloc((size_t)bytes);
    if (!m->weights) {
        free(m->layers);
        free(m);
        return err_set(ERR_STAGE, "out of memory: the frozen weights need %.2f GiB", (double)bytes / GIB);
    }
    m->weight_bytes = bytes;
    char *p = m->weights;
    synth_ctx sc = {.ops = ops, .cfg = cfg, .seed = seed};
    sc.quant_map = take(&p, 64);             /* [16], shared by every linear */
    sc.nested_map = take(&p, 256 * 4);       /* bitsandbytes' dynamic map, shared too */
    float hmap[256];
    nf4_dynamic_map(hmap);
    ops->upload(sc.nested_map, hmap, sizeof hmap);
    /* the rotary tables as llama_init lays them out (gemma3's sliding layers', longrope's long ones) */
    m->inv_freq = take(&p, m->rot / 2 * 4);
    m->inv_freq_local = local ? take(&p, m->rot / 2 * 4) : m->inv_freq;
    m->inv_freq_long = lng ? take(&p, m->rot / 2 * 4) : m->inv_freq;
    m->embed = take(&p, (int64_t)m->V * C * 2);
    m->final_norm = take(&p, C * 2);
    m->lm_head = cfg->tie_word_embeddings ? m->embed : take(&p, (int64_t)m->V * C * 2);
    ops->upload(sc.quant_map, nf4_quant_map(OPS_NF4), 64);
    if ((rc = llama_rope_upload(m))) return rc;
    int64_t n_ones = C > m->hd ? C : m->hd;
    uint16_t *ones = malloc(2 * (size_t)n_ones);
    for (int64_t i = 0; i < n_ones; i++) ones[i] = f32_to_bf16(1.0f);
    sc.ones = ones;
    ops->upload(m->final_norm, ones, 2 * (size_t)C);
    uint8_t *tmp_codes = ops->alloc((size_t)SYNTH_CHUNK / 2);
    float *tmp_absmax = ops->alloc((size_t)SYNTH_CHUNK / 64 * 4);
    synth_bf16(ops, m->embed, (int64_t)m->V * C, 0.05f, seed, tmp_codes, tmp_absmax, sc.quant_map);
    if (!cfg->tie_word_embeddings)
        synth_bf16(ops, m->lm_head, (int64_t)m->V * C, 0.05f, seed ^ 0x5bd1e995u, tmp_codes, tmp_absmax, sc.quant_map);
    ops->free(tmp_codes);
    ops->free(tmp_absmax);
    int64_t max_nb = 0, outs[LLAMA_NTARGETS], ins[LLAMA_NTARGETS];
    synth_shapes(m, outs, ins);
    for (int t = 0; t < LLAMA_NTARGETS; t++)
        if (nf4_nblocks(outs[t] * ins[t], 64) > max_nb) max_nb = nf4_nblocks(outs[t] * ins[t], 64);
    sc.tmp_f32 = ops->alloc((size_t)max_nb * 4);
    sc.hnest = malloc(sizeof(float) * (size_t)(max_nb / 256 + 1));
    for (int l = 0; l < m->L; l++) synth_layer(m, &sc, l, &p);
    free(ones);
    free(sc.hnest);
    ops->free(sc.tmp_f32);
    ops->sync();
    *out = m;
    return 0;
}

/* --targets "q,v" / "all-linear" as a LoRA target mask */
static int parse_targets(const char *targets, uint32_t *mask) {
    char tbuf[128];
    snprintf(tbuf, sizeof tbuf, "%s", targets);
    const char *names[LLAMA_NTARGETS];
    int nn = 0;
    for (char *t = strtok(tbuf, ","); t && nn < LLAMA_NTARGETS; t = strtok(NULL, ",")) names[nn++] = t;
    return llama_targets_parse(mask, names, nn);
}

/* ---- the memory plan ---- */

/* the scratch cap of a checkpointed run (cuda_scratch_cap_set): the lean plan */
#define LEAN_SCRATCH_CAP ((size_t)32 << 20)

static int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

/* the CUDA ops' own scratch at T tokens (kernels/cuda): one slot shared by the dequantized weight
 * (or a cap-sized row range of it), the cross-entropy's logits chunk and attention's fp32 dq; the
 * LoRA scratch (B's bf16 copy, xa and dy B, and the fused kernels' partial sums or, on the GEMM
 * path, A's copy and the dropout input), attention's D and its slot (llama_attn_slot_bytes), and
 * the cuBLAS workspace */
static int64_t plan_scratch_bytes(const llama_model *m, int64_t T, int64_t cap) {
    int64_t max_w = 0, max_in = 0, max_out = 0;
    for (int t = 0; t < LLAMA_NTARGETS; t++) {
        const llama_linear *lin = &m->layers[0].lin[t];
        int64_t wb = lin->in * lin->out * 2;
        if (cap && wb > cap) wb = cap; /* a row or column range of it (at most the cap) */
        max_w = max64(max_w, wb);
        if (!lin->lora.A) continue; /* the LoRA scratch: targeted linears only */
        max_in = max64(max_in, lin->in);
        max_out = max64(max_out, lin->out);
    }
    int64_t r = m->lora.r, xent_rows = (cap ? cap : (64 << 20)) / ((int64_t)m->V * 4);
    if (xent_rows > T) xent_rows = T;
    int64_t shared = max64(max_w, max64(xent_rows * m->V * 4, T * m->nh * m->hd * 4));
    int64_t b = shared + r * max_out * 2 + 2 * T * r * 2 + T * m->nh * 4 + (32 << 20);
    /* the fused LoRA kernels' partial sums (kernels/cuda/lora.cu; 0 for a rank they do not take);
     * the GEMM path's bf16 copy of A and dropout input instead */
    int64_t fused = 0;
    for (int t = 0; t < LLAMA_NTARGETS && cuda_lora_fused(); t++)
        if (m->layers[0].lin[t].lora.A)
            fused = max64(fused, (int64_t)cuda_lora_scratch_bytes(T, m->layers[0].lin[t].in, (int)r));
    if (fused) b += fused;
    else b += r * max_in * 2 + (m->lora.dropout > 0 ? T * max_in * 2 : 0);
    return b + (int64_t)llama_attn_slot_bytes(m, (int)T); /* cuDNN's workspace or the mma kernels' dk, dv */
}

/* With checkpointing, the plan's knobs from the fastest to the leanest: the ops' scratch cap
 * (0: a whole dequantized weight) and the MLP's rows a chunk (0: the whole micro-batch). The
 * benchmark takes the first that fits the memory it has (--budget-gib). */
typedef struct lean_opt {
    int64_t cap;
    int mlp_rows;
    bool offload; /* the layer inputs in pinned host memory (llama.h offload_inputs) */
} lean_opt;
static const lean_opt lean_opts[] = {{0, 0, false},
                                     {0, 0, true},
                                     {0, 1024, false},
                                     {0, 1024, true},
                                     {LEAN_SCRATCH_CAP, 1024, false},
                                     {LEAN_SCRATCH_CAP, 1024, true},
                                     {LEAN_SCRATCH_CAP, 512, true},
                                     {LEAN_SCRATCH_CAP, 256, true}};
#define N_LEAN_OPTS ((int)(sizeof lean_opts / sizeof *lean_opts))
static int act_offload = 2; /* --act-offload: 0 off, 1 on, 2 auto (when nothing else fits) */

static int64_t plan_total_opt(llama_model *m, int64_t T, llama_checkpointing ckpt, lean_opt o) {
    m->mlp_chunk_rows = o.mlp_rows > 0 ? o.mlp_rows : (int)T;
    m->offload_inputs = o.offload;
    int64_t lora_bufs = m->adam_host ? 2 : 4; /* params, grads (+ AdamW m, v unless on the host) */
    return m->weight_bytes + lora_bufs * m->n_lora_params * 4 + llama_plan_bytes(m, (int)T, ckpt) +
           plan_scratch_bytes(m, T, o.cap);
}

/* the fastest plan of ckpt that fits has (the leanest when none does); its total in *need */
static lean_opt plan_pick(llama_model *m, int64_t T, llama_checkpointing ckpt, int64_t has, int64_t *need) {
    int n = ckpt == LLAMA_CKPT_EVERY ? N_LEAN_OPTS : 1, last = -1;
    for (int i = 0; i < n; i++) {
        if (ckpt == LLAMA_CKPT_EVERY && ((act_offload == 0 && lean_opts[i].offload) ||
                                         (act_offload == 1 && !lean_opts[i].offload)))
            continue;
        last = i;
        *need = plan_total_opt(m, T, ckpt, lean_opts[i]);
        if (*need <= has) return lean_opts[i];
    }
    if (last >= 0) *need = plan_total_opt(m, T, ckpt, lean_opts[last]);
    return lean_opts[last >= 0 ? last : 0];
}


/* ---- train ---- */

typedef struct floor_row {
    const char *model;
    int seq, batch;
    double tok_s, tok_s_recompute;
} floor_row;

/* the baseline's floors (bench/RESULTS.md): every unavoidable GEMM plus flash attention on the H200 */
static const floor_row floors[] = {{"7b", 2048, 1, 21557, 14806}, {"7b", 2048, 4, 23131, 15821},
                                   {"7b", 512, 8, 22599, 15518},  {"1b", 2048, 4, 105284, 74296},
                                   {"70b", 2048, 1, 2391, 1615},  {NULL, 0, 0, 0, 0}};

/* the trainer's buckets (grad_bucket_mb, 25 MiB): a run of whole layers from the top, sent when
 * the backward has finished its lowest layer */
#define BENCH_BUCKET_BYTES ((int64_t)25 << 20)
static int bench_bucket_top = -1; /* the bucket's first (highest) layer; -1: none open */
static int bench_allreduces;      /* calls made, for the log line */

static void bench_layer_done(void *ud, int l) {
    llama_model *m = ud;
    if (bench_bucket_top < 0) bench_bucket_top = l;
    int64_t off = m->lora_layer_off[l], n = m->lora_layer_off[bench_bucket_top + 1] - off;
    if (l > 0 && n * 4 < BENCH_BUCKET_BYTES) return;
    bench_bucket_top = -1;
    bench_allreduces++;
    if (n > 0 && coll_allreduce_grads(m->lora_grads + off, n)) {
        fprintf(stderr, "train_gpu: %s\n", err_msg());
        exit(1);
    }
}

/* the options of `train_gpu train` */
typedef struct train_opts {
    const char *preset, *targets, *ckpt_s, *weights;
    int seq, batch, steps, warmup, r;
    double budget_gib, memory_budget;
    bool offload, nccl, det, dense, profile;
} train_opts;

static bool on_value(const char *v) { return !strcmp(v, "on") || !strcmp(v, "1"); }

static int train_opts_parse(int argc, char **argv, train_opts *o) {
    *o = (train_opts){.preset = "7b", .targets = "q,v", .ckpt_s = "auto", .seq = 2048, .batch = 1, .steps = 10,
                      .warmup = 2, .r = 16};
    for (int i = 2; i < argc; i++) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return err_set(ERR_USAGE, "'%s' needs a value", a);
        if (!strcmp(a, "--model")) o->preset = v;
        else if (!strcmp(a, "--targets")) o->targets = v;
        else if (!strcmp(a, "--seq")) o->seq = atoi(v);
        else if (!strcmp(a, "--batch")) o->batch = atoi(v);
        else if (!strcmp(a, "--steps")) o->steps = atoi(v);
        else if (!strcmp(a, "--warmup")) o->warmup = atoi(v);
        else if (!strcmp(a, "--ckpt")) o->ckpt_s = v;
        else if (!strcmp(a, "--budget-gib")) o->budget_gib = atof(v);
        else if (!strcmp(a, "--memory-budget")) o->memory_budget = atof(v);
        else if (!strcmp(a, "--r")) o->r = atoi(v);
        else if (!strcmp(a, "--optimizer-offload")) o->offload = on_value(v);
        else if (!strcmp(a, "--nccl")) o->nccl = on_value(v);
        else if (!strcmp(a, "--act-offload")) act_offload = !strcmp(v, "on") ? 1 : !strcmp(v, "off") ? 0 : 2;
        else if (!strcmp(a, "--attention")) {
            if (strcmp(v, "cudnn") && strcmp(v, "mma") && strcmp(v, "tiled"))
                return err_set(ERR_USAGE, "--attention must be cudnn, mma or tiled, not '%s'", v);
            cuda_attention_select(!strcmp(v, "tiled") ? CUDA_ATTN_TILED : !strcmp(v, "mma") ? CUDA_ATTN_MMA : CUDA_ATTN_CUDNN);
        }
        else if (!strcmp(a, "--deterministic")) o->det = on_value(v);
        else if (!strcmp(a, "--dense")) o->dense = on_value(v);
        else if (!strcmp(a, "--profile")) o->profile = on_value(v);
        else if (!strcmp(a, "--weights")) o->weights = v;
        else return err_set(ERR_USAGE, "unknown option '%s'", a);
        i++;
    }
    if (o->seq <= 0 || o->batch <= 0 || o->steps <= 0)
        return err_set(ERR_USAGE, "--seq, --batch and --steps must be positive");
    return 0;
}

/* the model of o's preset (or o's model folder, --weights) with QLoRA's standard adapter attached
 * (the AdamW state where o puts it) */
static int train_model(const train_opts *o, const ops_table *ops, llama_model **out) {
    model_config cfg;
    int rc = o->weights ? config_load(&cfg, o->weights) : config_preset(&cfg, ARCH_LLAMA, o->preset);
    if (rc) return rc;
    uint32_t mask = 0;
    if ((rc = parse_targets(o->targets, &mask))) return rc;
    if (o->weights) {
        if ((rc = llama_init(out, &cfg, o->weights, &LLAMA_LOAD_OPTS_DEFAULT, ops))) return rc;
        fprintf(stderr, "weights: %s (%d layers, hidden %lld)\n", o->weights, cfg.num_layers,
                (long long)cfg.hidden_size);
    } else if ((rc = synth_model(out, &cfg, o->preset, ops, 1234)))
        return rc;
    llama_model *m = *out;
    llama_lora_config lc = {.r = o->r, .alpha = 2.0f * (float)o->r, .dropout = 0.05f, .rslora = false, .targets = mask};
    m->adam_host = o->offload;
    if ((rc = llama_lora_attach(m, &lc))) return rc;
    llama_lora_init_peft(m, 42);
    return 0;
}

/* a plan that needs more than has: what would fit, as an error */
static int plan_refused(llama_model *m, int64_t T, llama_checkpointing ckpt, int64_t need, int64_t need_every,
                        int64_t has) {
    int64_t lo = 0, hi = T; /* the longest micro-batch with checkpointing on every layer */
    while (lo < hi) {
        int64_t mid = (lo + hi + 1) / 2, nm;
        plan_pick(m, mid, LLAMA_CKPT_EVERY, has, &nm);
        if (nm <= has) lo = mid;
        else hi = mid - 1;
    }
    char fit[160];
    if (ckpt == LLAMA_CKPT_NONE && need_every <= has)
        snprintf(fit, sizeof fit, "activation checkpointing on every layer (%.2f GiB)", need_every / GIB);
    else if (lo > 0)
        snprintf(fit, sizeof fit, "checkpointing every layer with micro-batches of at most %lld tokens", (long long)lo);
    else snprintf(fit, sizeof fit, "nothing: the frozen weights alone take %.2f GiB", m->weight_bytes / GIB);
    return err_set(ERR_STAGE, "the plan needs %.2f GiB (checkpointing %s, %lld tokens) but %.2f GiB is available; "
                              "would fit: %s", need / GIB, ckpt == LLAMA_CKPT_NONE ? "none" : "every layer",
                   (long long)T, has / GIB, fit);
}

/* The plan for T tokens: checkpointing as o asks (auto: none when it fits), a checkpointed run
 * with the fastest knobs that fit (plan_pick), and with --dense on the linears kept dequantized
 * (llama_dense_weights) out of what the device has first. What it needs in all in *need. */
typedef struct train_plan {
    llama_checkpointing ckpt;
    lean_opt use;
    int64_t need, dense;
    bool stage; /* --memory-budget: the train stage's plan; need is then the whole process's */
} train_plan;

/* --memory-budget G: the train stage's own plan (llama_plan_auto, llama_dense_auto) within G GiB
 * of device memory in all, as `memory_budget: G` plans it (where --budget-gib is this benchmark's
 * own plan of the weights, LoRA state, activations and scratch, without the CUDA context) */
static int train_plan_stage(llama_model *m, const train_opts *o, int64_t T, train_plan *p) {
    llama_plan_choice ch;
    llama_plan_mode mode = !strcmp(o->ckpt_s, "none")    ? LLAMA_PLAN_NONE
                           : !strcmp(o->ckpt_s, "every") ? LLAMA_PLAN_EVERY
                                                          : LLAMA_PLAN_AUTO;
    int rc = llama_plan_auto(m, (int)T, mode,
                             act_offload == 1 ? LLAMA_OFFLOAD_ON : act_offload == 0 ? LLAMA_OFFLOAD_OFF : LLAMA_OFFLOAD_AUTO,
                             o->memory_budget * GIB, &ch);
    if (rc) return rc;
    llama_dense_choice dc = {0};
    if (o->dense && (rc = llama_dense_auto(m, LLAMA_DENSE_AUTO, o->memory_budget * GIB, &dc))) return rc;
    p->stage = true;
    p->ckpt = m->ckpt;
    p->use = (lean_opt){(int64_t)cuda_scratch_cap(), m->mlp_chunk_rows < T ? m->mlp_chunk_rows : 0, m->offload_inputs};
    p->dense = m->dense_bytes;
    p->need = (int64_t)(ch.in_use_bytes + ch.need_bytes + dc.kept_bytes);
    fprintf(stderr, "stage plan: %.2f GiB in use before it, %.2f GiB counted for the activations and scratch%s%s, "
                    "%.2f GiB of dense weights; memory_budget %.2f GiB\n", ch.in_use_bytes / GIB, ch.need_bytes / GIB,
            ch.offload ? ", inputs on the host" : "", ch.lean ? ", lean" : "", dc.kept_bytes / GIB, o->memory_budget);
    return 0;
}

static int train_plan_make(llama_model *m, const train_opts *o, int64_t T, train_plan *p) {
    if (o->memory_budget > 0) return train_plan_stage(m, o, T, p);
    cuda_device_info dev;
    cuda_device_query(&dev);
    size_t live, peak;
    cuda_mem_stats(&live, &peak);
    int64_t has = o->budget_gib > 0 ? (int64_t)(o->budget_gib * GIB) : (int64_t)dev.free_bytes + (int64_t)live - (256 << 20);
    p->dense = o->dense ? llama_dense_bytes(m) : 0;
    has -= p->dense;
    int64_t need_none, need_every;
    plan_pick(m, T, LLAMA_CKPT_NONE, has, &need_none);
    lean_opt lean = plan_pick(m, T, LLAMA_CKPT_EVERY, has, &need_every);
    if (!strcmp(o->ckpt_s, "none")) p->ckpt = LLAMA_CKPT_NONE;
    else if (!strcmp(o->ckpt_s, "every")) p->ckpt = LLAMA_CKPT_EVERY;
    else if (!strcmp(o->ckpt_s, "auto")) p->ckpt = need_none <= has ? LLAMA_CKPT_NONE : LLAMA_CKPT_EVERY;
    else return err_set(ERR_USAGE, "--ckpt must be auto, none or every");
    p->need = p->ckpt == LLAMA_CKPT_NONE ? need_none : need_every;
    if (p->need > has) return plan_refused(m, T, p->ckpt, p->need, need_every, has);
    if (o->det) { /* deterministic attention backward's workspace (2 h s T bytes up to its cap), lowered
                   * to the room left, as llama_plan_auto does: more, smaller calls */
        double ws = fmin(cuda_attention_det_workspace_cap(), 2.0 * m->nh * (double)o->seq * (double)T);
        if (ws > 0 && p->need + ws > has) {
            ws = (double)(has - p->need);
            cuda_attention_det_workspace_cap_set(ws > 1 ? ws : 1);
            fprintf(stderr, "deterministic attention backward's workspace lowered to %.1f MiB to fit the budget\n",
                    ws / 1048576.0);
        }
        p->need += (int64_t)ws;
    }
    p->need += p->dense;
    /* cuDNN's workspace: its slot as the plan counted it and the room the plan leaves (a padded
     * layout over that runs on the mma kernels), as the train stage's plan sets it */
    cuda_attention_workspace_cap_set(fmax(1, llama_attn_slot_bytes(m, (int)T) + (double)(has + p->dense - p->need)));
    p->use = p->ckpt == LLAMA_CKPT_EVERY ? lean : lean_opts[0];
    m->mlp_chunk_rows = p->use.mlp_rows > 0 ? p->use.mlp_rows : (int)T;
    m->offload_inputs = p->ckpt == LLAMA_CKPT_EVERY && p->use.offload;
    cuda_scratch_cap_set((size_t)p->use.cap);
    int rc = llama_plan(m, (int)T, p->ckpt);
    if (!rc && o->dense) rc = llama_dense_weights(m, true);
    return rc;
}

/* what the steps measured */
typedef struct train_steps_out {
    double *times; /* the measured steps' seconds (after the warm-up), sorted */
    double loss0, loss_last, loss_sum;
} train_steps_out;

/* one optimizer step on b through m->ops: forward and backward, the all-reduce with --nccl, the
 * gradient-norm clip and AdamW (step counts from 1); the loss summed over n targets, and the norm */
static int bench_step(llama_model *m, const train_opts *o, const llama_batch *b, int64_t ntgt, int step, double *loss,
                      int64_t *n, double *norm) {
    const ops_table *ops = m->ops;
    llama_lora_zero_grads(m);
    int rc = llama_forward_backward(m, b, 1.0f / (float)ntgt, 6999 + (uint64_t)step, loss, n); /* 7000 the first */
    if (rc) return rc;
    if (o->nccl) coll_grads_wait();
    *norm = sqrt(ops->sum_squares(m->lora_grads, m->n_lora_params));
    if (*norm > 1.0) ops->scale(m->lora_grads, m->n_lora_params, (float)(1.0 / *norm));
    ops->adamw(m->lora_params, m->lora_grads, m->lora_m, m->lora_v, m->n_lora_params, 2e-4f, 0.9f, 0.999f, 1e-8f, 0.0f,
               step);
    return 0;
}

/* o's warm-up and measured steps on one batch (bench_step), each synced and timed */
static int train_steps(llama_model *m, const ops_table *ops, const train_opts *o, const llama_batch *b,
                       train_steps_out *r) {
    int64_t ntgt = llama_count_targets(b);
    r->times = malloc(sizeof(double) * (size_t)o->steps);
    r->loss0 = r->loss_last = r->loss_sum = 0;
    cuda_mem_reset_peak();
    for (int s = 0; s < o->warmup + o->steps; s++) {
        double t0 = clock_now_s(), loss, norm;
        int64_t n;
        int rc = bench_step(m, o, b, ntgt, s + 1, &loss, &n, &norm);
        if (rc) return rc;
        ops->sync();
        double dt = clock_now_s() - t0;
        if (s == 0) r->loss0 = loss / (double)n;
        r->loss_last = loss / (double)n;
        r->loss_sum += loss;
        if (s >= o->warmup) r->times[s - o->warmup] = dt;
        fprintf(stderr, "step %d/%d | loss %.4f | grad norm %.3f | %.1f ms\n", s + 1, o->warmup + o->steps,
                loss / (double)n, norm, dt * 1e3);
    }
    qsort(r->times, (size_t)o->steps, sizeof(double), cmp_double);
    return 0;
}

/* what two runs compare bit for bit (bench/RESULTS.md, deterministic mode) */
static void train_checksum(const llama_model *m, const ops_table *ops, const train_steps_out *r, bool det) {
    size_t nb = sizeof(float) * (size_t)m->n_lora_params;
    unsigned char *hp = malloc(nb);
    ops->download(hp, m->lora_params, nb);
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < nb; i++) h = (h ^ hp[i]) * 1099511628211ull;
    free(hp);
    fprintf(stderr, "checksum: LoRA params fnv1a64 %016llx, loss sum over the steps %.17g, last loss %.9g "
                    "(deterministic %s)\n", (unsigned long long)h, r->loss_sum, r->loss_last, det ? "on" : "off");
}

/* the row of bench/RESULTS.md's table (stdout) and what the plan and kernels were (stderr) */
static void train_report(const llama_model *m, const train_opts *o, const train_plan *p, const train_steps_out *r) {
    int T = o->seq * o->batch;
    double med = r->times[o->steps / 2];
    size_t live, peak, fr = 0, tot = 0;
    cuda_mem_stats(&live, &peak);
    cuda_or_die(cudaMemGetInfo(&fr, &tot), "cudaMemGetInfo");
    int64_t C = m->C, qd = (int64_t)m->nh * m->hd, kvd = (int64_t)m->nkv * m->hd;
    double n_lin = (double)m->L * (double)(C * qd + 2 * C * kvd + qd * C + 3 * C * m->I) + (double)m->V * C;
    /* the attention term at the attention width (nh * hd: hidden for Llama, not for Qwen3 or Gemma-3) */
    double flops_tok = 4.0 * n_lin + 6.0 * (double)m->n_lora_params + 6.0 * m->L * (double)o->seq * (double)qd;
    double tok_s = (double)T / med, mfu = tok_s * flops_tok / (PEAK_TFLOPS * 1e12);
    double floor_tok = 0;
    for (const floor_row *f = floors; f->model; f++)
        if (!strcmp(f->model, o->preset) && f->seq == o->seq && f->batch == o->batch)
            floor_tok = p->ckpt == LLAMA_CKPT_EVERY ? f->tok_s_recompute : f->tok_s;
    char floor_s[32] = "-";
    if (floor_tok > 0) snprintf(floor_s, sizeof floor_s, "%.1f%%", 100.0 * tok_s / floor_tok);
    char mode_s[128];
    snprintf(mode_s, sizeof mode_s, "%s%s%s%s%s%s", p->ckpt == LLAMA_CKPT_EVERY ? "every layer" : "none",
             p->ckpt == LLAMA_CKPT_EVERY && m->offload_inputs ? ", inputs on host" : "", o->nccl ? ", NCCL" : "",
             o->det ? ", deterministic" : "", m->dense_mem ? ", dense weights" : "",
             o->weights ? ", loaded weights (--weights)" : "");
    printf("| %s | %s | %d x %d | %s | %.0f | %.1f | %.1f%% | %s | %.2f | %.2f | %.3f -> %.3f |\n", o->preset,
           o->targets, o->seq, o->batch, mode_s, tok_s, med * 1e3, 100.0 * mfu, floor_s, peak / GIB,
           (double)(tot - fr) / GIB, r->loss0, r->loss_last);
    if (o->nccl) fprintf(stderr, "nccl: %d all-reduces in %d steps\n", bench_allreduces, o->warmup + o->steps);
    fprintf(stderr, "attention kernels: %s; %ld calls ran on cuDNN\n", cuda_attention_name(cuda_attention_selected()),
            cuda_attention_cudnn_calls());
    fprintf(stderr, "LoRA branches: %s\n",
            cuda_lora_fused() && o->r <= 64 ? "fused kernels (QLORA_CUDA_LORA=fused)" : "cuBLAS GEMMs, dropout input materialized");
    fprintf(stderr, "plan: weights %.2f GiB, LoRA %lld params (%.1f MiB with grads and AdamW state; %.1f MiB of "
                    "it in pinned host memory), activations %.2f GiB (llama_plan_bytes %.2f), GFLOP/token %.2f\n",
            m->weight_bytes / GIB, (long long)m->n_lora_params, 16.0 * m->n_lora_params / 1048576.0,
            (cuda_host_mem_live() - (double)m->host_act_bytes) / 1048576.0, m->act_bytes / GIB,
            llama_plan_bytes(m, T, p->ckpt) / GIB, flops_tok / 1e9);
    if (m->dense_mem) fprintf(stderr, "base weights kept dequantized in bf16: %.2f GiB\n", m->dense_bytes / GIB);
    if (m->host_act_bytes)
        fprintf(stderr, "layer inputs offloaded: %.2f GiB in pinned host memory\n", m->host_act_bytes / GIB);
    if (p->stage) /* the whole process against nvidia-smi's used (the table's column) */
        fprintf(stderr, "stage plan total %.3f GiB (in use before it included); the process uses %.3f GiB\n",
                p->need / GIB, (double)(tot - fr) / GIB);
    else fprintf(stderr, "plan total %.3f GiB (scratch %.3f GiB with attention backward's slot %.1f MiB, cap %zu MiB, "
                    "MLP rows a chunk %d); measured peak %.3f GiB\n", p->need / GIB,
            plan_scratch_bytes(m, T, p->use.cap) / GIB, llama_attn_slot_bytes(m, T) / 1048576.0, cuda_scratch_cap() >> 20,
            m->acts ? m->mlp_chunk_rows : 0, peak / GIB);
    /* the ops' scratch as allocated, slot by slot (kernels/cuda/common.cuh), beside the plan's count */
    static const char *slots[] = {"weight/xent/dq", "lora A", "lora B", "xa", "dropout x", "", "",
                                  "attn D", "", "attn turn", "reduce", "cudnn ws or attn dkv", "lora part", "lora turn"};
    fprintf(stderr, "scratch MiB:");
    for (int s = 0; s < (int)(sizeof slots / sizeof *slots); s++)
        if (*slots[s] && cuda_scratch_slot_bytes(s))
            fprintf(stderr, " %s %.1f", slots[s], cuda_scratch_slot_bytes(s) / 1048576.0);
    fprintf(stderr, "\n");
}

static float time_ms(cudaEvent_t a, cudaEvent_t b) {
    float ms = 0;
    cuda_or_die(cudaEventElapsedTime(&ms, a, b), "cudaEventElapsedTime");
    return ms;
}

/* ---- --profile on: one more step, op by op ----
 * The step runs once more through kernels/ops_prof's copy of the CUDA op table, its clock marks
 * CUDA events recorded on the ops' stream: each op's device time (end - start: its kernels, and
 * for an op that syncs the host, its wait) by op and shape, and the device's idle time between
 * ops (the host launching the next op late), which bounds what capturing the step in a CUDA graph
 * could take back. The two event records a call add a little host work, so the idle time measured
 * is if anything more than a plain step's. */
static cudaEvent_t *ev;
static int ev_cap;

static int ev_reserve(void *ud, int n) {
    (void)ud;
    cudaEvent_t *e = realloc(ev, sizeof(cudaEvent_t) * (size_t)n);
    if (!e) return -1;
    for (ev = e; ev_cap < n; ev_cap++)
        if (cudaEventCreate(&ev[ev_cap]) != cudaSuccess) return -1;
    return 0;
}

static int ev_mark(void *ud, int i) {
    (void)ud;
    return cudaEventRecord(ev[i], (cudaStream_t)cuda_stream_handle()) == cudaSuccess ? 0 : -1;
}

static double ev_ms(void *ud, int a, int b) {
    (void)ud;
    return time_ms(ev[a], ev[b]);
}

/* one more step (bench_step, as train_steps runs them) through the profiled table, then its table
 * on stdout */
static int train_profile(llama_model *m, const train_opts *o, const llama_batch *b, int step) {
    const ops_table *ops = m->ops;
    ops_table pt;
    ops_prof_clock clock = {.reserve = ev_reserve, .mark = ev_mark, .ms = ev_ms};
    ops->sync();
    ops_prof_wrap(&pt, ops, &clock);
    double t0 = clock_now_s(), loss, norm;
    int64_t n;
    m->ops = &pt;
    int rc = bench_step(m, o, b, llama_count_targets(b), step, &loss, &n, &norm);
    m->ops = ops;
    ops->sync();
    double wall = clock_now_s() - t0;
    ops_prof_report r;
    if (rc || (rc = ops_prof_report_make(&r))) return rc;
    char what[96];
    snprintf(what, sizeof what, "one step, %lld tokens", (long long)b->T);
    ops_prof_print(stdout, &r, what);
    printf("host wall %.3f ms (the first launch and the last sync included)\n", wall * 1e3);
    return 0;
}

static int bench_train(int argc, char **argv) {
    train_opts o;
    int rc = train_opts_parse(argc, argv, &o);
    if (rc) return rc;
    const ops_table *ops = ops_cuda();
    if (!ops) return err_set(ERR_STAGE, "no CUDA device");
    char why[512];
    if (ops->deterministic_set(o.det, why, sizeof why)) return err_set(ERR_USAGE, "--deterministic on: %s", why);
    llama_model *m = NULL;
    int T = o.seq * o.batch;
    train_plan p = {0};
    if ((rc = train_model(&o, ops, &m)) || (rc = train_plan_make(m, &o, T, &p))) {
        llama_free(&m);
        return rc;
    }
    int32_t *ids = malloc(sizeof(int32_t) * (size_t)T), *ss = malloc(sizeof(int32_t) * (size_t)T);
    uint64_t z = 99;
    for (int t = 0; t < T; t++) {
        z = z * 6364136223846793005ull + 1442695040888963407ull;
        ids[t] = (int32_t)((z >> 33) % (uint64_t)m->V);
        ss[t] = t - t % o.seq;
    }
    llama_batch b = {.ids = ids, .labels = ids, .seq_start = ss, .T = T};
    if (o.nccl) { /* the trainer's bucketed all-reduce (train/trainer.c), on a world of one */
        if ((rc = coll_init()) || (rc = coll_nccl_init(cuda_comm_stream(), cuda_comm_after_main, cuda_main_after_comm)))
            return rc;
        m->layer_done = bench_layer_done;
        m->layer_done_ud = m;
        fprintf(stderr, "nccl: a communicator of %d rank(s): the trainer's buckets of 25 MiB all-reduced on the comm "
                        "stream as the backward reaches them\n", coll_world());
    }
    train_steps_out r = {0};
    if (!(rc = train_steps(m, ops, &o, &b, &r))) {
        train_checksum(m, ops, &r, o.det);
        train_report(m, &o, &p, &r);
        if (o.profile) rc = train_profile(m, &o, &b, o.warmup + o.steps + 1);
    }
    free(ids);
    free(ss);
    free(r.times);
    llama_free(&m);
    if (o.nccl) coll_finalize();
    return rc;
}

/* ---- fit: the longest sequence each memory budget trains ---- */

/* fit --paper G: the same arithmetic with no GPU. A CPU table poses as a device (as test_llama's
 * fake device does) holding G GiB beside the allocations (the CUDA context and the libraries'
 * modules: what a run's whole-device use exceeds its allocator's peak by, 0.59-0.60 GiB on the
 * H100 and H200 rows of bench/RESULTS.md), the frozen weights as synth_model lays them out
 * (counted, not made) and the LoRA state llama_lora_attach allocates (made, in host memory). Its
 * activations are bf16 as on CUDA; cuDNN's attention workspace is taken as 4 h d bytes a token
 * for grouped-query heads (its backward's dK and dV for every q head) and none otherwise, which
 * the H100 sitting of 2026-12-05 inferred from the plan's misses and `train_gpu attn-ws` is to
 * measure. The host's RAM for offloaded layer inputs is taken as unlimited, or --host-gib G
 * available. A plan on paper, not a measurement. */
static double g_paper_held; /* bytes the posing device holds: context, weights, allocations */
static double g_paper_host = 1e15; /* the host RAM available to pinned allocations (bytes) */

static void paper_info(ops_backend_info *out) {
    out->total_bytes = 1e15;
    out->free_bytes = out->total_bytes - g_paper_held;
    out->host_free_bytes = g_paper_host;
}

static void *paper_alloc(size_t bytes) {
    g_paper_held += (double)bytes;
    return ops_cpu()->alloc(bytes);
}

static double paper_attn_workspace(int T, int nh, int nkv, int hd, int windowed) {
    (void)windowed;
    return nkv < nh ? 4.0 * nh * hd * (double)T : 0;
}

/* the model of cfg's shape on the posing device: no weight made, their bytes held */
static int paper_model(llama_model **out, const model_config *cfg, const char *preset, const ops_table *ops) {
    int rc = shaped_model(out, cfg, preset, ops);
    if (rc) return rc;
    bool local, lng;
    llama_rope_needs(*out, &local, &lng);
    g_paper_held += (double)synth_weight_bytes(*out, cfg, local, lng);
    return 0;
}

/* train_gpu fit --model M [--targets T] [--budgets 8,12,16,24,48,80] [--paper G [--host-gib H]]: for each
 * budget (the train stage's memory_budget: GiB of device memory in all, the CUDA context, frozen
 * weights and LoRA with AdamW state included), the longest single sequence (a multiple of 256
 * tokens) the train stage's own plan takes with every layer checkpointed (llama_plan_longest: the
 * layer inputs offloaded to host memory, then the lean knobs, as llama_plan_auto chooses them),
 * allocating nothing; `train --memory-budget` at that length measures it. The offloaded inputs
 * must fit the host's available RAM (llama_plan.c's share of it): the knobs column gives their
 * pinned GiB. --paper: on no GPU (above), the host's RAM unlimited unless --host-gib. */
static int bench_fit(int argc, char **argv) {
    const char *preset = "llama3-8b", *targets = "q,v", *budgets = "8,12,16,24,48,80";
    double paper = -1;
    for (int i = 2; i < argc; i += 2) {
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (!v) return err_set(ERR_USAGE, "'%s' needs a value", a);
        if (!strcmp(a, "--model")) preset = v;
        else if (!strcmp(a, "--targets")) targets = v;
        else if (!strcmp(a, "--budgets")) budgets = v;
        else if (!strcmp(a, "--paper")) paper = atof(v);
        else if (!strcmp(a, "--host-gib") && atof(v) > 0) g_paper_host = atof(v) * GIB;
        else if (!strcmp(a, "--host-gib")) return err_set(ERR_USAGE, "--host-gib wants GiB of host RAM above 0, not '%s'", v);
        else return err_set(ERR_USAGE, "unknown option '%s'", a);
    }
    static ops_table paper_ops;
    const ops_table *ops;
    if (paper < 0 && g_paper_host < 1e15)
        return err_set(ERR_USAGE, "--host-gib is for --paper (on a GPU the plan takes the host's own available RAM)");
    if (paper >= 0) {
        paper_ops = *ops_cpu();
        paper_ops.name = "paper";
        paper_ops.own_memory = 1;
        paper_ops.act_dtype = OPS_BF16;
        paper_ops.info = paper_info;
        paper_ops.alloc = paper_alloc;
        paper_ops.attn_workspace = paper_attn_workspace;
        g_paper_held = paper * GIB;
        ops = &paper_ops;
    } else if (!(ops = ops_cuda())) {
        return err_set(ERR_STAGE, "no CUDA device");
    }
    model_config cfg;
    int rc = config_preset(&cfg, ARCH_LLAMA, preset);
    if (rc) return rc;
    uint32_t mask = 0;
    if ((rc = parse_targets(targets, &mask))) return rc;
    llama_model *m;
    if ((rc = paper >= 0 ? paper_model(&m, &cfg, preset, ops) : synth_model(&m, &cfg, preset, ops, 1234))) return rc;
    llama_lora_config lc = {.r = 16, .alpha = 32.0f, .dropout = 0.05f, .rslora = false, .targets = mask};
    if ((rc = llama_lora_attach(m, &lc))) return rc;
    if (paper >= 0)
        printf("On paper: %.2f GiB held beside the allocations; cuDNN's workspace taken as 4 h d bytes a token with "
               "grouped-query heads; %s.\n\n", paper,
               g_paper_host < 1e15 ? "the host's RAM as --host-gib gives it" : "the host's RAM unlimited");
    printf("| model | LoRA | budget GiB | longest sequence | in use + plan GiB | knobs |\n| --- | --- | --- | --- | --- | --- |\n");
    char bbuf[128];
    snprintf(bbuf, sizeof bbuf, "%s", budgets);
    for (char *t = strtok(bbuf, ","); t; t = strtok(NULL, ",")) {
        double b = atof(t);
        llama_plan_choice ch;
        int T = llama_plan_longest(m, b * GIB, LLAMA_OFFLOAD_AUTO, 256, 1 << 30, &ch);
        if (!T) {
            printf("| %s | %s | %g | does not fit (%.2f GiB in use: context, weights, LoRA state) | - | - |\n", preset,
                   targets, b, ch.in_use_bytes / GIB);
            continue;
        }
        char where[64] = "inputs on device";
        if (ch.offload)
            snprintf(where, sizeof where, "inputs on host (%.2f GiB pinned)", llama_offload_host_bytes(m, T) / GIB);
        printf("| %s | %s | %g | %d | %.2f + %.2f | %s%s%s |\n", preset, targets, b, T, ch.in_use_bytes / GIB,
               ch.need_bytes / GIB, where,
               ch.lean ? ", lean (scratch capped, MLP in row chunks)" : "",
               ch.attn_ws_bytes > 0 ? ", cuDNN workspace counted" : "");
        fflush(stdout);
    }
    llama_free(&m);
    return 0;
}

/* train_gpu attn-ws: the workspace cuDNN's attention plans ask for, by heads, tokens and layout
 * (dense: b equal sequences; ragged: b packed sequences padded to s, T tokens in all), outside
 * deterministic mode and, for the dense backward, in it: what the memory plan's count
 * (cuda_attention_workspace, one dense sequence) assumes of the others */
static int bench_attn_ws(void) {
    if (!ops_cuda()) return err_set(ERR_STAGE, "no CUDA device");
    char why[256];
    if (cuda_attention_cudnn_probe(why, sizeof why)) return err_set(ERR_STAGE, "%s", why);
    static const int heads[][2] = {{32, 32}, {32, 8}, {64, 8}, {40, 10}}, lens[] = {2048, 8192, 32768};
    printf("%s\n| heads q/kv | T | layout | fwd MiB | bwd MiB | bwd bytes a token | / (4 h d) |\n"
           "| --- | --- | --- | --- | --- | --- | --- |\n", why);
    for (size_t h = 0; h < sizeof heads / sizeof *heads; h++)
        for (size_t t = 0; t < sizeof lens / sizeof *lens; t++) {
            int nh = heads[h][0], nkv = heads[h][1], T = lens[t];
            struct { const char *name; int b, s, ragged, det; } L[] = {{"dense 1 x T", 1, T, 0, 0},
                                                                      {"dense 4 x T/4", 4, T / 4, 0, 0},
                                                                      {"ragged 4, s = T/2", 4, T / 2, 1, 0},
                                                                      {"ragged 16, s = T", 16, T, 1, 0},
                                                                      {"dense 1 x T, deterministic", 1, T, 0, 1}};
            for (size_t l = 0; l < sizeof L / sizeof *L; l++) {
                if (L[l].det && T > 8192) continue; /* dS alone is 2 h T^2 bytes */
                if (cuda_deterministic_set(L[l].det, why, sizeof why)) return err_set(ERR_STAGE, "%s", why);
                double f = cuda_attention_cudnn_workspace(0, L[l].b, L[l].s, T, L[l].ragged, nh, nkv, 128, 0);
                double b = cuda_attention_cudnn_workspace(1, L[l].b, L[l].s, T, L[l].ragged, nh, nkv, 128, 0);
                printf("| %d/%d | %d | %s | %.1f | %.1f | %.0f | %.3f |\n", nh, nkv, T, L[l].name, f / 1048576.0,
                       b / 1048576.0, b / T, b / (4.0 * nh * 128 * T));
                fflush(stdout);
            }
            cuda_deterministic_set(0, why, sizeof why);
        }
    return 0;
}

/* ---- NF4 dequantize bandwidth ---- */

static int bench_nf4(int argc, char **argv) {
    int reps = 50;
    for (int i = 2; i + 1 < argc; i += 2)
        if (!strcmp(argv[i], "--reps")) reps = atoi(argv[i + 1]);
    const ops_table *ops = ops_cuda();
    if (!ops) return err_set(ERR_STAGE, "no CUDA device");
    cudaStream_t st = (cudaStream_t)cuda_stream_handle();
    cudaEvent_t e0, e1;
    cuda_or_die(cudaEventCreate(&e0), "event");
    cuda_or_die(cudaEventCreate(&e1), "event");
    /* the copy ceiling: 1 GiB device to device, bytes read plus written */
    size_t cb = (size_t)1 << 30;
    void *src = ops->alloc(cb), *dst = ops->alloc(cb);
    for (int i = 0; i < 3; i++) ops->copy(dst, src, cb);
    cuda_or_die(cudaEventRecord(e0, st), "record");
    for (int i = 0; i < reps; i++) ops->copy(dst, src, cb);
    cuda_or_die(cudaEventRecord(e1, st), "record");
    cuda_or_die(cudaEventSynchronize(e1), "sync");
    double copy_gbs = 2.0 * (double)cb * reps / (time_ms(e0, e1) * 1e-3) / 1e9;
    ops->free(src);
    ops->free(dst);
    printf("device copy: %.0f GB/s (read + write)\n", copy_gbs);
    printf("| weight [out, in] | elements | us | GB/s | of copy | of 4.3 TB/s |\n|---|---|---|---|---|---|\n");
    const int64_t shapes[][2] = {{4096, 4096}, {11008, 4096}, {4096, 11008}, {28672, 8192}, {2048, 5632}};
    float *qm = ops->alloc(64);
    ops->upload(qm, nf4_quant_map(OPS_NF4), 64);
    for (size_t s = 0; s < sizeof shapes / sizeof *shapes; s++) {
        int64_t n = shapes[s][0] * shapes[s][1], nb = nf4_nblocks(n, 64);
        /* several weights in rotation so the 60 MB L2 does not serve the reads */
        enum { ROT = 4 };
        uint8_t *codes[ROT];
        float *absmax[ROT];
        for (int k = 0; k < ROT; k++) {
            codes[k] = ops->alloc((size_t)nf4_packed_bytes(n));
            absmax[k] = ops->alloc((size_t)nb * 4);
            nf4_cuda_fill_random(codes[k], absmax[k], n, 64, 17 + (uint64_t)k, 0.01f, 0.05f);
        }
        uint16_t *out = ops->alloc((size_t)n * 2);
        for (int i = 0; i < 3; i++) nf4_cuda_dequant_bf16(out, codes[i % ROT], absmax[i % ROT], qm, n, 64);
        cuda_or_die(cudaEventRecord(e0, st), "record");
        for (int i = 0; i < reps; i++) nf4_cuda_dequant_bf16(out, codes[i % ROT], absmax[i % ROT], qm, n, 64);
        cuda_or_die(cudaEventRecord(e1, st), "record");
        cuda_or_die(cudaEventSynchronize(e1), "sync");
        double us = time_ms(e0, e1) * 1e3 / reps;
        double bytes = (double)nf4_packed_bytes(n) + 4.0 * (double)nb + 2.0 * (double)n;
        double gbs = bytes / (us * 1e-6) / 1e9;
        printf("| %lld x %lld | %lld | %.1f | %.0f | %.0f%% | %.0f%% |\n", (long long)shapes[s][0],
               (long long)shapes[s][1], (long long)n, us, gbs, 100.0 * gbs / copy_gbs, 100.0 * gbs / 4300.0);
        /* double-quantized absmax (1 byte a block, de-nested in the kernel) */
        int64_t nn = nb / 256 + 1;
        uint8_t *aq = ops->alloc((size_t)nb);
        float *nested = ops->alloc((size_t)nn * 4), *nmap = ops->alloc(256 * 4), hmap[256];
        float *hn = malloc(sizeof(float) * (size_t)nn);
        for (int64_t i = 0; i < nn; i++) hn[i] = 0.01f + 0.001f * (float)(i % 7);
        ops->upload(nested, hn, sizeof(float) * (size_t)nn);
        free(hn);
        nf4_dynamic_map(hmap);
        ops->upload(nmap, hmap, sizeof hmap);
        ops->copy(aq, codes[0], (size_t)nb); /* random bytes as absmax codes */
        cuda_or_die(cudaEventRecord(e0, st), "record");
        for (int i = 0; i < reps; i++)
            nf4_cuda_dequant_dq_bf16(out, codes[i % ROT], aq, nested, nmap, 0.03f, qm, n, 64);
        cuda_or_die(cudaEventRecord(e1, st), "record");
        cuda_or_die(cudaEventSynchronize(e1), "sync");
        us = time_ms(e0, e1) * 1e3 / reps;
        bytes = (double)nf4_packed_bytes(n) + (double)nb + 2.0 * (double)n;
        gbs = bytes / (us * 1e-6) / 1e9;
        printf("| %lld x %lld, double-quant absmax | %lld | %.1f | %.0f | %.0f%% | %.0f%% |\n", (long long)shapes[s][0],
               (long long)shapes[s][1], (long long)n, us, gbs, 100.0 * gbs / copy_gbs, 100.0 * gbs / 4300.0);
        ops->free(aq);
        ops->free(nested);
        ops->free(nmap);
        for (int k = 0; k < ROT; k++) {
            ops->free(codes[k]);
            ops->free(absmax[k]);
        }
        ops->free(out);
    }
    ops->free(qm);
    return 0;
}

/* ---- per-op times at the 7B layer shape ---- */

enum { OB_C = 4096, OB_I = 11008, OB_NH = 32, OB_HD = 128, OB_R = 16, OB_V = 32000, OB_REPS = 20 };

/* the buffers of `train_gpu ops`: random activations and weights of the Llama-2-7B layer shape on
 * the device, T tokens, one sequence (ss, ssd) */
typedef struct ops_bench {
    const ops_table *ops;
    cudaStream_t st;
    cudaEvent_t e0, e1;
    int T;
    float *qm, *absmax, *lse, *rstd, *losses, *A, *B, *dA, *dB, *xa;
    uint8_t *codes;
    uint16_t *x, *y, *dx, *q, *k, *v, *o, *dq, *dk, *dv, *E;
    int32_t *ss, *ssd, *tgtd;
    ops_nf4 Wqkv, Wup, Wdown;
    ops_lora L, Ld; /* r 16, alpha 32; Ld with dropout 0.05 */
} ops_bench;

/* times stmt over OB_REPS runs after two warm-ups on ob's stream and prints a table row */
#define TIME_OP(ob, name, flops, stmt)                                                                      \
    do {                                                                                                    \
        for (int i_ = 0; i_ < 2; i_++) { stmt; }                                                           \
        cuda_or_die(cudaEventRecord((ob)->e0, (ob)->st), "record");                                        \
        for (int i_ = 0; i_ < OB_REPS; i_++) { stmt; }                                                    \
        cuda_or_die(cudaEventRecord((ob)->e1, (ob)->st), "record");                                        \
        cuda_or_die(cudaEventSynchronize((ob)->e1), "sync");                                               \
        double us_ = time_ms((ob)->e0, (ob)->e1) * 1e3 / OB_REPS;                                         \
        printf("| %s | %.1f | %.1f |\n", name, us_, (flops) > 0 ? (flops) / (us_ * 1e-6) / 1e12 : 0.0);  \
    } while (0)

static void ops_bench_setup(ops_bench *ob, const ops_table *ops, int T) {
    const int C = OB_C, I = OB_I, nh = OB_NH, r = OB_R, V = OB_V;
    ob->ops = ops;
    ob->T = T;
    ob->st = (cudaStream_t)cuda_stream_handle();
    cuda_or_die(cudaEventCreate(&ob->e0), "event");
    cuda_or_die(cudaEventCreate(&ob->e1), "event");
    ob->qm = ops->alloc(64);
    ops->upload(ob->qm, nf4_quant_map(OPS_NF4), 64);
    int64_t nw = (int64_t)I * C;
    ob->codes = ops->alloc((size_t)nw / 2);
    ob->absmax = ops->alloc((size_t)nw / 64 * 4);
    nf4_cuda_fill_random(ob->codes, ob->absmax, nw, 64, 3, 0.02f, 0.04f);
    uint8_t *tc = ops->alloc((size_t)SYNTH_CHUNK / 2);
    float *ta = ops->alloc((size_t)SYNTH_CHUNK / 64 * 4);
    uint16_t **big[] = {&ob->x, &ob->y, &ob->dx}, **act[] = {&ob->q, &ob->k, &ob->v, &ob->o, &ob->dq, &ob->dk, &ob->dv};
    for (int i = 0; i < 3; i++) *big[i] = ops->alloc((size_t)T * I * 2);
    for (int i = 0; i < 7; i++) *act[i] = ops->alloc((size_t)T * C * 2);
    ob->E = ops->alloc((size_t)V * C * 2);
    synth_bf16(ops, ob->x, (int64_t)T * I, 1.0f, 1, tc, ta, ob->qm);
    synth_bf16(ops, ob->y, (int64_t)T * I, 1.0f, 2, tc, ta, ob->qm);
    synth_bf16(ops, ob->q, (int64_t)T * C, 1.0f, 3, tc, ta, ob->qm);
    synth_bf16(ops, ob->k, (int64_t)T * C, 1.0f, 4, tc, ta, ob->qm);
    synth_bf16(ops, ob->v, (int64_t)T * C, 1.0f, 5, tc, ta, ob->qm);
    synth_bf16(ops, ob->E, (int64_t)V * C, 0.05f, 6, tc, ta, ob->qm);
    ob->lse = ops->alloc((size_t)nh * T * 4), ob->rstd = ops->alloc((size_t)T * 4), ob->losses = ops->alloc((size_t)T * 4);
    ob->A = ops->alloc((size_t)r * I * 4), ob->B = ops->alloc((size_t)I * r * 4), ob->dA = ops->alloc((size_t)r * I * 4);
    ob->dB = ops->alloc((size_t)I * r * 4), ob->xa = ops->alloc((size_t)T * r * 4);
    ob->ss = calloc((size_t)T, 4);
    int32_t *tgt = malloc((size_t)T * 4);
    for (int t = 0; t < T; t++) tgt[t] = (t * 7919) % V;
    ob->ssd = ops->alloc((size_t)T * 4), ob->tgtd = ops->alloc((size_t)T * 4);
    ops->upload(ob->ssd, ob->ss, (size_t)T * 4);
    cuda_attention_layout(ob->ssd, ob->ss, T);
    ops->upload(ob->tgtd, tgt, (size_t)T * 4);
    free(tgt);
    ob->Wqkv = (ops_nf4){.codes = ob->codes, .absmax = ob->absmax, .quant_map = ob->qm, .rows = C, .cols = C, .blocksize = 64};
    ob->Wup = ob->Wdown = ob->Wqkv;
    ob->Wup.rows = I;
    ob->Wdown.cols = I;
    ob->L = (ops_lora){ob->A, ob->B, ob->dA, ob->dB, r, 2.0f, 0.0f, 0};
    ob->Ld = ob->L;
    ob->Ld.dropout = 0.05f;
}

/* NF4 dequantization and the linears alone */
static void ops_time_linears(ops_bench *ob) {
    const ops_table *ops = ob->ops;
    const int T = ob->T, C = OB_C, I = OB_I;
    int64_t nw = (int64_t)I * C;
    uint16_t *wbuf = ops->alloc((size_t)nw * 2);
    TIME_OP(ob, "nf4 dequant 11008x4096", 0, nf4_cuda_dequant_bf16(wbuf, ob->codes, ob->absmax, ob->qm, nw, 64));
    TIME_OP(ob, "nf4 dequant 4096x4096", 0, nf4_cuda_dequant_bf16(wbuf, ob->codes, ob->absmax, ob->qm, (int64_t)C * C, 64));
    TIME_OP(ob, "qlinear_fwd q (4096x4096, no LoRA)", 2.0 * T * C * (double)C,
            ops->qlinear_fwd(ob->o, ob->q, &ob->Wqkv, NULL, NULL, NULL, T));
    TIME_OP(ob, "qlinear_fwd q + LoRA", 2.0 * T * C * (double)C, ops->qlinear_fwd(ob->o, ob->q, &ob->Wqkv, NULL, &ob->L, ob->xa, T));
    TIME_OP(ob, "qlinear_fwd q + LoRA dropout", 2.0 * T * C * (double)C,
            ops->qlinear_fwd(ob->o, ob->q, &ob->Wqkv, NULL, &ob->Ld, ob->xa, T));
    TIME_OP(ob, "qlinear_bwd q + LoRA", 2.0 * T * C * (double)C,
            ops->qlinear_bwd(ob->dq, ob->o, ob->q, &ob->Wqkv, &ob->L, ob->xa, T, 0));
    TIME_OP(ob, "qlinear_bwd q + LoRA dropout", 2.0 * T * C * (double)C,
            ops->qlinear_bwd(ob->dq, ob->o, ob->q, &ob->Wqkv, &ob->Ld, ob->xa, T, 0));
    TIME_OP(ob, "qlinear_fwd up (11008x4096)", 2.0 * T * C * (double)I,
            ops->qlinear_fwd(ob->y, ob->q, &ob->Wup, NULL, NULL, NULL, T));
    TIME_OP(ob, "qlinear_bwd down (4096x11008)", 2.0 * T * C * (double)I,
            ops->qlinear_bwd(ob->dx, ob->o, ob->x, &ob->Wdown, NULL, NULL, T, 0));
    ops->free(wbuf);
}

/* the seven linears of a 7B layer on ob's buffers, as the model runs them: each one's input, output
 * and input gradient, and whether its backward adds into that gradient (q, k, v into one d(n1);
 * gate, up into one d(n2)) */
typedef struct bench_linear {
    const char *name;
    const ops_nf4 *W;
    void *x, *y, *dx;
    int acc;
} bench_linear;
enum { BENCH_NLINEARS = 7 };

static void bench_linears(ops_bench *ob, bench_linear out[BENCH_NLINEARS]) {
    const bench_linear l[BENCH_NLINEARS] = {
        {"q", &ob->Wqkv, ob->q, ob->o, ob->dq, 0},   {"k", &ob->Wqkv, ob->q, ob->o, ob->dq, 1},
        {"v", &ob->Wqkv, ob->q, ob->o, ob->dq, 1},   {"o", &ob->Wqkv, ob->q, ob->o, ob->dk, 0},
        {"gate", &ob->Wup, ob->q, ob->y, ob->dv, 0}, {"up", &ob->Wup, ob->q, ob->y, ob->dv, 1},
        {"down", &ob->Wdown, ob->x, ob->o, ob->dx, 0}};
    memcpy(out, l, sizeof l);
}

/* us a forward and backward of b (LoRA lp, or frozen when NULL; the backward adding into dx when
 * acc), the mean of OB_REPS after two warm-ups */
static double time_linear(ops_bench *ob, const bench_linear *b, const ops_lora *lp, int acc) {
    const ops_table *ops = ob->ops;
    for (int w = 0; w < 2 + OB_REPS; w++) {
        if (w == 2) cuda_or_die(cudaEventRecord(ob->e0, ob->st), "record");
        ops->qlinear_fwd(b->y, b->x, b->W, NULL, lp, lp ? ob->xa : NULL, ob->T);
        ops->qlinear_bwd(b->dx, b->y, b->x, b->W, lp, lp ? ob->xa : NULL, ob->T, acc);
    }
    cuda_or_die(cudaEventRecord(ob->e1, ob->st), "record");
    cuda_or_die(cudaEventSynchronize(ob->e1), "sync");
    return time_ms(ob->e0, ob->e1) * 1e3 / OB_REPS;
}

/* the all-linear LoRA path of one layer (issue 21): each linear's forward and backward as the
 * model runs them (dx accumulated over q, k, v and over gate, up), frozen only, then with LoRA
 * r 16 + dropout 0.05 through the fused kernels (kernels/cuda/lora.cu) and through the GEMMs
 * (QLORA_CUDA_LORA=gemm); the LoRA columns less the frozen one are the branch's cost */
static void ops_time_lora_layer(ops_bench *ob) {
    bench_linear mods[BENCH_NLINEARS];
    bench_linears(ob, mods);
    double tot[3] = {0, 0, 0};
    int fused0 = cuda_lora_fused();
    printf("\n| linear fwd+bwd (7B layer, T=%d) | frozen us | + LoRA r16 dropout 0.05, fused us | + LoRA, GEMMs us | LoRA cost fused / GEMMs us |\n|---|---|---|---|---|\n", ob->T);
    for (int i = 0; i < BENCH_NLINEARS; i++) {
        double us[3];
        for (int v3 = 0; v3 < 3; v3++) {
            cuda_lora_fused_set(v3 == 1);
            us[v3] = time_linear(ob, &mods[i], v3 ? &ob->Ld : NULL, mods[i].acc);
            tot[v3] += us[v3];
        }
        printf("| %s (%lld x %lld) | %.1f | %.1f | %.1f | %.1f / %.1f |\n", mods[i].name, (long long)mods[i].W->rows,
               (long long)mods[i].W->cols, us[0], us[1], us[2], us[1] - us[0], us[2] - us[0]);
    }
    printf("| layer, all seven | %.1f | %.1f | %.1f | %.1f / %.1f |\n\n", tot[0], tot[1], tot[2], tot[1] - tot[0],
           tot[2] - tot[0]);
    cuda_lora_fused_set(fused0);
}

/* attention forward and backward on every kernel: one sequence, grouped-query 32/8 and a packed
 * row of four sequences of 35, 25, 30 and 10% of T (a ragged batch for cuDNN); then the
 * deterministic mode's backward (ordered dq hand-off; GQA: per-share dK/dV slices) */
static void ops_time_attention(ops_bench *ob) {
    const ops_table *ops = ob->ops;
    const int T = ob->T, nh = OB_NH, hd = OB_HD;
    double attn_f = 4.0 * T * (double)T * hd * nh / 2.0; /* causal */
    int32_t *pk = malloc((size_t)T * 4), *pkd = ops->alloc((size_t)T * 4);
    int cut[5] = {0, T * 35 / 100, T * 60 / 100, T * 90 / 100, T};
    double pk_f = 0;
    for (int i = 0; i < 4; i++) {
        for (int t = cut[i]; t < cut[i + 1]; t++) pk[t] = cut[i];
        pk_f += 4.0 * (double)(cut[i + 1] - cut[i]) * (cut[i + 1] - cut[i]) * hd * nh / 2.0;
    }
    ops->upload(pkd, pk, (size_t)T * 4);
    uint16_t *o = ob->o, *q = ob->q, *k = ob->k, *v = ob->v, *dq = ob->dq, *dk = ob->dk, *dv = ob->dv;
    float *lse = ob->lse;
    for (int kern = 2; kern >= 0; kern--) {
        cuda_attention_layout(ob->ssd, ob->ss, T); /* the backend knows the layout of the seq_start told last */
        const char *kn = cuda_attention_name(kern);
        char name[160];
        cuda_attention_select(kern);
        snprintf(name, sizeof name, "attention_fwd %s", kn);
        TIME_OP(ob, name, attn_f, ops->attention_fwd(o, lse, q, k, v, ob->ssd, T, nh, nh, hd));
        snprintf(name, sizeof name, "attention_bwd %s", kn);
        TIME_OP(ob, name, 2.5 * attn_f, ops->attention_bwd(dq, dk, dv, o, o, lse, q, k, v, ob->ssd, T, nh, nh, hd));
        snprintf(name, sizeof name, "attention_fwd %s, GQA 32/8", kn);
        TIME_OP(ob, name, attn_f, ops->attention_fwd(o, lse, q, k, v, ob->ssd, T, nh, 8, hd));
        snprintf(name, sizeof name, "attention_bwd %s, GQA 32/8", kn);
        TIME_OP(ob, name, 2.5 * attn_f, ops->attention_bwd(dq, dk, dv, o, o, lse, q, k, v, ob->ssd, T, nh, 8, hd));
        cuda_attention_layout(pkd, pk, T);
        snprintf(name, sizeof name, "attention_fwd %s, packed 35/25/30/10%%", kn);
        TIME_OP(ob, name, pk_f, ops->attention_fwd(o, lse, q, k, v, pkd, T, nh, nh, hd));
        snprintf(name, sizeof name, "attention_bwd %s, packed 35/25/30/10%%", kn);
        TIME_OP(ob, name, 2.5 * pk_f, ops->attention_bwd(dq, dk, dv, o, o, lse, q, k, v, pkd, T, nh, nh, hd));
    }
    cuda_deterministic_set(1, NULL, 0);
    TIME_OP(ob, "attention_bwd mma, deterministic", 2.5 * attn_f,
            ops->attention_bwd(dq, dk, dv, o, o, lse, q, k, v, ob->ssd, T, nh, nh, hd));
    TIME_OP(ob, "attention_bwd mma, GQA 32/8, deterministic", 2.5 * attn_f,
            ops->attention_bwd(dq, dk, dv, o, o, lse, q, k, v, ob->ssd, T, nh, 8, hd));
    cuda_deterministic_set(0, NULL, 0);
    free(pk);
}

/* the norms, SwiGLU, RoPE and the cross-entropy */
static void ops_time_pointwise(ops_bench *ob) {
    const ops_table *ops = ob->ops;
    const int T = ob->T, C = OB_C, I = OB_I, nh = OB_NH, hd = OB_HD, V = OB_V;
    TIME_OP(ob, "rmsnorm_fwd", 0, ops->rmsnorm_fwd(ob->o, ob->rstd, ob->q, ob->E, 0.0f, T, C, 1e-5f));
    TIME_OP(ob, "rmsnorm_bwd", 0, ops->rmsnorm_bwd(ob->dq, ob->o, ob->q, ob->E, 0.0f, ob->rstd, T, C));
    TIME_OP(ob, "swiglu_fwd", 0, ops->swiglu_fwd(ob->dx, ob->x, ob->y, (int64_t)T * I));
    TIME_OP(ob, "swiglu_bwd", 0, ops->swiglu_bwd(ob->dx, ob->dq, ob->x, ob->y, ob->x, (int64_t)T * C));
    float *inv = ops->alloc((size_t)hd / 2 * 4), invh[OB_HD / 2];
    for (int i = 0; i < hd / 2; i++) invh[i] = (float)(1.0 / pow(10000.0, 2.0 * i / hd));
    ops->upload(inv, invh, sizeof(float) * (size_t)hd / 2);
    TIME_OP(ob, "rope q", 0, ops->rope(ob->q, ob->ssd, inv, T, nh, hd, 0));
    TIME_OP(ob, "xent_fwd_bwd (V=32000)", 6.0 * T * C * (double)V,
            ops->xent_fwd_bwd(ob->losses, ob->dq, ob->o, ob->E, ob->tgtd, T, C, V, 1e-3f, 0.0f));
    ops->free(inv);
}

static int bench_ops(int argc, char **argv) {
    int T = 2048;
    for (int i = 2; i + 1 < argc; i += 2)
        if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
    const ops_table *ops = ops_cuda();
    if (!ops) return err_set(ERR_STAGE, "no CUDA device");
    ops_bench ob;
    ops_bench_setup(&ob, ops, T);
    printf("| op (7B layer shape, T=%d) | us | TFLOP/s |\n|---|---|---|\n", T);
    ops_time_linears(&ob);
    ops_time_lora_layer(&ob);
    ops_time_attention(&ob);
    ops_time_pointwise(&ob);
    return 0;
}
#undef TIME_OP

/* train_gpu lora-kernels: one linear of the 7B layer shape (q 4096x4096, up 11008x4096 or down
 * 4096x11008), forward and backward as the model runs them, frozen or with LoRA r 16 + dropout 0.05
 * on the GEMM path or the fused kernels: the mean of OB_REPS runs after warm-ups, then one more run
 * between cudaProfilerStart and Stop, for `ncu --profile-from-start off` to time each of its
 * kernels (bench/gpu-next.sh U) */
static int bench_lora_kernels(int argc, char **argv) {
    int T = 2048;
    const char *lin = "q", *path = "gemm";
    for (int i = 2; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--seq")) T = atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--linear")) lin = argv[i + 1];
        else if (!strcmp(argv[i], "--path")) path = argv[i + 1];
        else return err_set(ERR_USAGE, "lora-kernels: unknown option '%s' (--seq, --linear, --path)", argv[i]);
    }
    bool frozen = !strcmp(path, "frozen"), fused = !strcmp(path, "fused");
    if (!frozen && !fused && strcmp(path, "gemm"))
        return err_set(ERR_USAGE, "lora-kernels: --path is frozen, gemm or fused, not '%s'", path);
    if (strcmp(lin, "q") && strcmp(lin, "up") && strcmp(lin, "down"))
        return err_set(ERR_USAGE, "lora-kernels: --linear is q, up or down, not '%s'", lin);
    if (T < 1) return err_set(ERR_USAGE, "lora-kernels: --seq must be positive");
    const ops_table *ops = ops_cuda();
    if (!ops) return err_set(ERR_STAGE, "no CUDA device");
    ops_bench ob;
    ops_bench_setup(&ob, ops, T);
    bench_linear mods[BENCH_NLINEARS], *b = mods;
    bench_linears(&ob, mods);
    while (strcmp(b->name, lin)) b++; /* lin is one of them (checked above) */
    const ops_lora *lp = frozen ? NULL : &ob.Ld;
    cuda_lora_fused_set(fused);
    printf("| %s (%lld x %lld), T=%d | %s | %.1f us forward and backward |\n", lin, (long long)b->W->rows,
           (long long)b->W->cols, T, path, time_linear(&ob, b, lp, 0));
    cuda_or_die(cudaProfilerStart(), "profiler start");
    ops->qlinear_fwd(b->y, b->x, b->W, NULL, lp, lp ? ob.xa : NULL, T);
    ops->qlinear_bwd(b->dx, b->y, b->x, b->W, lp, lp ? ob.xa : NULL, T, 0);
    ops->sync();
    cuda_or_die(cudaProfilerStop(), "profiler stop");
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        printf("usage: train_gpu train [--model 7b|1b|13b|70b|tiny|llama3-8b|qwen3-8b|gemma3-12b|...] [--targets q,v|all-linear] [--seq N] [--batch N]\n"
               "                       [--steps N] [--warmup N] [--ckpt auto|none|every] [--budget-gib G] [--r N]\n"
               "                       [--attention cudnn|mma|tiled] [--optimizer-offload off|on] [--nccl off|on] [--deterministic off|on]\n"
               "                       [--act-offload auto|on|off] [--dense off|on] [--memory-budget G (the train stage's plan)] [--profile off|on]\n"
               "                       [--weights DIR (a model folder, e.g. a recipe's quantize_nf4 artifact)]\n"
               "       train_gpu nf4 [--reps N]\n"
               "       train_gpu ops [--seq N]\n"
               "       train_gpu lora-kernels [--linear q|up|down] [--path frozen|gemm|fused] [--seq N]\n"
               "       train_gpu fit [--model M] [--targets T] [--budgets 8,12,16,24,48,80] [--paper CONTEXT_GIB (no GPU)\n"
               "                     [--host-gib G (the host's RAM available; default: unlimited)]]\n"
               "       train_gpu attn-ws\n");
        return argc < 2 ? 2 : 0;
    }
    int rc;
    if (!strcmp(argv[1], "train")) rc = bench_train(argc, argv);
    else if (!strcmp(argv[1], "nf4")) rc = bench_nf4(argc, argv);
    else if (!strcmp(argv[1], "ops")) rc = bench_ops(argc, argv);
    else if (!strcmp(argv[1], "fit")) rc = bench_fit(argc, argv);
    else if (!strcmp(argv[1], "attn-ws")) rc = bench_attn_ws();
    else if (!strcmp(argv[1], "lora-kernels")) rc = bench_lora_kernels(argc, argv);
    else rc = err_set(ERR_USAGE, "unknown benchmark '%s' (train, nf4, ops, fit, attn-ws, lora-kernels)", argv[1]);
    if (rc) fprintf(stderr, "train_gpu: %s\n", err_msg());
    return rc;
}
