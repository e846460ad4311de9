/* llama.h: the llama, mistral, qwen2, qwen3, gemma3 (text) and phi3 decoder families with frozen NF4 base weights and
 * trainable LoRA adapters, written once against the op table (kernels/ops.h), so the same code
 * runs on ops_cpu() and ops_cuda().
 *
 * What lives where: every tensor the ops touch is in the backend's memory (ops->alloc/upload);
 * the model struct itself, the configuration and the LoRA tensor directory are host memory.
 *  - frozen: embedding, norms, lm_head (tied: the embedding), q/k/v biases (qwen2): bf16;
 *    the seven linears of each layer: 4-bit codes + a scale per block (+ their 16-entry code
 *    table), dequantized tile by tile inside the ops. The scales stay double-quantized as
 *    bitsandbytes stores them (1 byte a block + an fp32 scale per 256 blocks; ops_nf4.absmax_q)
 *    unless the checkpoint or the options say otherwise. A float checkpoint is quantized to NF4 at
 *    load (blocksize 64, double quant on by default); a bitsandbytes 4-bit checkpoint (NF4 or FP4,
 *    any blocksize) is read as stored (model/bnb.h).
 *  - trainable: LoRA A [r, in] and B [out, r] of the targeted linears, fp32, all carved from ONE
 *    contiguous buffer (lora_params), with matching contiguous grads / adam m / adam v, so the
 *    fused AdamW and a data-parallel all-reduce see a single flat vector.
 *
 * The sequence of calls:
 *   llama_load (or llama_init) -> llama_lora_attach -> llama_plan -> { llama_lora_zero_grads;
 *   llama_forward_backward ...; optimizer over lora_params } ; llama_forward_loss for
 *   evaluation; llama_generate_begin + llama_decode for generation; llama_free.
 *
 * Batches: a micro-batch is T tokens (rows concatenated) with labels in the dataset convention
 * (NOT shifted, -100 masked: logits at t predict labels[t+1]) and seq_start[t] = index of the first
 * token of t's packed sequence. Attention never crosses a sequence start, positions restart at
 * each one, and the last token of a sequence predicts nothing (as if sequences ran separately).
 * Sliding-window attention (mistral v0.1, qwen2/3 with use_sliding_window): a key more than
 * sliding_window - 1 positions back is masked, through the ops' attention_ex_* (a backend without
 * them refuses a sequence longer than the window). Qwen3 normalises each head of q and k with its
 * own RMSNorm (q_norm, k_norm: [head_dim]) before RoPE.
 * Gemma-3 (text): norms scale by (1 + w), the 1 added in fp32 by the norm op (norm_add), as
 * transformers computes it, the weights kept as the checkpoint has them; embeddings times sqrt(hidden);
 * o's and down's outputs normed before their residual add; GeGLU; its local layers slide with
 * their own rope base. Checkpointed, o's output is kept beside the layer's working set and down's
 * is made again a chunk at a time in the backward. It runs on a backend with the optional ops it
 * needs (geglu, act_scale, attention_ex: the CPU and CUDA ones).
 *
 * Ownership: llama_init/llama_free pair up; llama_free releases every backend buffer. */
#ifndef MODEL_LLAMA_H
#define MODEL_LLAMA_H

#include <stdbool.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "model/config.h"

/* the seven linears of a layer, in the order LoRA tensors are laid out */
typedef enum llama_target {
    LLAMA_Q, LLAMA_K, LLAMA_V, LLAMA_O, LLAMA_GATE, LLAMA_UP, LLAMA_DOWN, LLAMA_NTARGETS
} llama_target;

#define LLAMA_TARGETS_ALL 0x7fu /* all-linear */

/* "q_proj" ...; and the HF module path inside a layer: "self_attn.q_proj", "mlp.down_proj" */
const char *llama_target_name(llama_target t);
const char *llama_target_path(llama_target t);
/* phi3's fused projections (config_fused): q, k, v are the row blocks of one qkv_proj and gate, up
 * of one gate_up_proj. The engine keeps seven linears (each block its own NF4 tensor, split at
 * load), and one LoRA pair per fused module: A [r, C] shared by the blocks, B [block rows summed, r]
 * whose row slices are the blocks' B. llama_target_group: the target whose slot holds the pair
 * (q for k and v, gate for up; t itself elsewhere); llama_target_module: the HF module path inside
 * a layer ("self_attn.qkv_proj"), NULL for a block that is not a module of its own. */
llama_target llama_target_group(const model_config *c, llama_target t);
const char *llama_target_module(const model_config *c, llama_target t);
/* bit mask from names ("q_proj", "q", "all-linear"; "qkv_proj" sets q, k and v, "gate_up_proj" gate
 * and up); ERR_USAGE naming the unknown one */
int llama_targets_parse(uint32_t *mask, const char *const *names, int n);

typedef struct llama_lora_config {
    int r;
    float alpha;
    float dropout;    /* lora_dropout */
    bool rslora;      /* scale alpha/sqrt(r) instead of alpha/r */
    uint32_t targets; /* bit (1 << llama_target) per targeted linear */
} llama_lora_config;

/* one LoRA tensor inside the flat buffers */
typedef struct llama_lora_tensor {
    char name[160];    /* PEFT name: base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight */
    int layer;
    llama_target target;
    bool is_B;         /* false: A [r, in]; true: B [out, r] */
    int64_t rows, cols;
    int64_t offset;    /* in floats, into lora_params (and grads, m, v) */
} llama_lora_tensor;

typedef struct llama_linear {
    ops_nf4 w;          /* backend pointers */
    uint16_t *bias;     /* bf16 [out] or NULL */
    ops_lora lora;      /* A == NULL when not targeted */
    int64_t in, out;
} llama_linear;

typedef struct llama_layer {
    uint16_t *attn_norm, *mlp_norm; /* bf16 [C] */
    uint16_t *q_norm, *k_norm;      /* bf16 [hd] (qwen3, gemma3), else NULL */
    uint16_t *post_attn_norm, *post_mlp_norm; /* bf16 [C] (gemma3: applied to o's and down's output) */
    llama_linear lin[LLAMA_NTARGETS];
} llama_layer;

typedef struct llama_acts llama_acts; /* per-layer saved activations (llama.c) */

#define LLAMA_MLP_CHUNK_ROWS 1024

typedef enum llama_checkpointing {
    LLAMA_CKPT_NONE = 0,  /* keep every layer's activations */
    LLAMA_CKPT_EVERY = 1  /* keep each layer's input only; recompute the layer in backward, with one
                           * layer's buffers reused in turn and the MLP in chunks of rows (llama.c) */
} llama_checkpointing;

typedef struct llama_model {
    model_config cfg;
    const ops_table *ops;
    int C, I, V, L, nh, nkv, hd; /* hidden, intermediate, vocab, layers, heads, kv heads, head dim */
    float eps;
    float norm_add; /* added to every norm's weight in fp32 (gemma2/3: 1, their (1 + w)); else 0 */

    /* frozen weights (backend memory) */
    uint16_t *embed;      /* [V, C] */
    uint16_t *final_norm; /* [C] */
    uint16_t *lm_head;    /* [V, C]; == embed when tied */
    llama_layer *layers;  /* host array [L] */
    float *inv_freq;      /* [hd/2], rope scaling applied */
    float *inv_freq_local; /* gemma3's sliding layers: [hd/2] from rope_local_base_freq, no scaling */
    /* phi3: rotary over the first rot dims of each head (inv_freq has rot/2 entries), the rotated
     * values times rope_mscale (longrope's attention factor); inv_freq_long: longrope's long
     * factors, used for a batch whose longest sequence exceeds original_max_position_embeddings (as
     * transformers switches per forward), and in generation when the cache asked for is longer (as
     * llama.cpp decides by its context size); rope_long: what the current pass uses */
    int rot;
    float rope_mscale;
    float *inv_freq_long;
    bool rope_long;
    float embed_scale;    /* gemma3: sqrt(hidden) rounded to the checkpoint's dtype; 0: none */
    void *weights;        /* the single allocation carved into the frozen tensors */
    int64_t weight_bytes;
    void *dense_mem;      /* llama_dense_weights: the linears dequantized (one allocation, dense_bytes) */
    int64_t dense_bytes;

    /* LoRA (after llama_lora_attach) */
    llama_lora_config lora;
    int n_lora_tensors;
    llama_lora_tensor *lora_tensors; /* host [n_lora_tensors] */
    int64_t n_lora_params;
    float *lora_params, *lora_grads, *lora_m, *lora_v; /* backend [n_lora_params] each */
    /* host [L+1]: layer l's LoRA values are [lora_layer_off[l], lora_layer_off[l+1]) of the buffers
     * (tensors are laid out layer by layer) */
    int64_t *lora_layer_off;
    /* optional: called by llama_forward_backward as soon as layer l's gradients are final for this
     * micro-batch (its backward is queued), layer L-1 first: data parallel starts the all-reduce of
     * that layer's bucket while the backward goes on (train/trainer.c) */
    void (*layer_done)(void *ud, int layer);
    void *layer_done_ud;
    bool adam_host; /* set before llama_lora_attach: lora_m, lora_v in ops->alloc_host memory (pinned,
                     * device-mapped host RAM on cuda: the fused AdamW reads them over PCIe, the
                     * device keeps 8 bytes a LoRA parameter fewer; the same kernel, the same bits) */
    int adam_shard_world, adam_shard_rank; /* set before llama_lora_attach: world > 1 makes lora_m and
                     * lora_v hold this rank's piece of the LoRA buffer only, coll_shard(n_lora_params,
                     * world, rank): the sharded optimizer (ZeRO-1, train/trainer.h) */

    /* activation plan (after llama_plan) */
    int mlp_chunk_rows;   /* tokens per MLP chunk with checkpointing; 0: LLAMA_MLP_CHUNK_ROWS (set before llama_plan) */
    bool offload_inputs;  /* set before llama_plan; with checkpointing: the layer inputs live in pinned host
                           * memory (ops->alloc_host), the device holds three of them in turn, copied out
                           * during the forward and back during the backward beside the compute
                           * (ops->side_copy); the same arithmetic, the same bits */
    int64_t host_act_bytes; /* host memory of the plan (the offloaded layer inputs) */
    int plan_T;
    llama_checkpointing ckpt;
    llama_acts *acts;
    void *act_mem;        /* the single allocation carved into activation buffers */
    void *acts_host;      /* offload_inputs: the host allocation of the layer inputs (host_act_bytes) */
    int64_t act_bytes;

    /* generation */
    int kv_max, kv_len;
    void *kv_mem;         /* [L][2][kv_max, nkv*hd] acts */
} llama_model;

typedef struct llama_load_opts {
    int blocksize;      /* NF4 blocksize when quantizing at load (default 64) */
    bool double_quant;  /* keep absmax double-quantized as bitsandbytes does (default true) */
    bool dense;         /* keep float linears as they are (ops_nf4.dense, in the backend's activation
                         * dtype) instead of quantizing them: generation of a model as it is. A
                         * bitsandbytes 4-bit checkpoint stays 4-bit. */
} llama_load_opts;
#define LLAMA_LOAD_OPTS_DEFAULT ((llama_load_opts){.blocksize = 64, .double_quant = true})

/* Build the model of cfg from the safetensors checkpoint at path (file, dir, or sharded dir):
 * bf16/f16/f32 weights are quantized to NF4 at load; a bitsandbytes 4-bit checkpoint is read
 * as stored. cfg is copied (skip_modules is not kept). */
int llama_init(llama_model **out, const model_config *cfg, const char *path, const llama_load_opts *opts,
               const ops_table *ops);
/* The shape llama_init derives from cfg before it reads a weight (sizes, head dim, phi3's rotated
 * dims and longrope scale, gemma3's embedding scale, m->cfg as a copy of cfg without skip_modules),
 * into m (zeroed by the caller; nothing allocated): also what a caller that makes its weights
 * itself (bench/train_gpu) starts from. An error for a shape the model refuses; path names the
 * config in messages. */
int llama_shape_init(llama_model *m, const model_config *cfg, const ops_table *ops, const char *path);
/* The rotary tables (rot/2 floats each) the model needs beside inv_freq: gemma3's sliding layers'
 * (inv_freq_local) and longrope's long factors (inv_freq_long); a table it lacks is inv_freq itself. */
void llama_rope_needs(const llama_model *m, bool *local, bool *lng);
/* computes the frequencies into the tables m->inv_freq, _local and _long point at (backend memory)
 * and uploads each distinct one */
int llama_rope_upload(llama_model *m);
/* config_load(dir) + llama_init(dir): an HF model directory */
int llama_load(llama_model **out, const char *dir, const llama_load_opts *opts, const ops_table *ops);
void llama_free(llama_model **m);

/* Create the LoRA tensors of cfg (all parameters zero: fill them with llama_lora_init_peft or
 * by uploading into lora_params at each tensor's offset). Once per model. */
int llama_lora_attach(llama_model *m, const llama_lora_config *cfg);
/* PEFT's default init from a seed: A ~ U(-1/sqrt(in), 1/sqrt(in)) (kaiming_uniform a=sqrt(5)),
 * drawn by rng_uniform(seed, rng_stream_of(name), i); B = 0. */
void llama_lora_init_peft(llama_model *m, uint64_t seed);
void llama_lora_zero_grads(llama_model *m);
const llama_lora_tensor *llama_lora_find(const llama_model *m, const char *name); /* NULL if absent */

/* Allocate activations for micro-batches of up to max_T tokens (one allocation, act_bytes); again
 * to re-plan. llama_plan_bytes: what such a plan would take, allocating nothing (for an "auto"
 * checkpointing choice or a memory report before the first step). */
int llama_plan(llama_model *m, int max_T, llama_checkpointing ckpt);
int64_t llama_plan_bytes(const llama_model *m, int max_T, llama_checkpointing ckpt);
/* the pinned host memory the layer inputs of max_T tokens take when offloaded (offload_inputs with
 * every layer checkpointed; three stay on the device in turn): host_act_bytes of such a plan */
int64_t llama_offload_host_bytes(const llama_model *m, int max_T);
/* Offloaded layer inputs live in pinned host memory, which the kernel cannot page out: the host
 * must hold them beside the rest of the process (the dataset, AdamW's state with
 * optimizer_offload, the weights' staging) and everything else on the machine. The memory plan
 * lets them take at most this share of the RAM the host has available (model/device.h's
 * device_host_free_bytes, its own offloaded inputs of an earlier plan counted back in). */
#define LLAMA_HOST_PIN_SHARE 0.9
/* the ops' scratch on a GPU that grows with the tokens of a pass (model/llama_plan.c), which the
 * plans of llama_plan_auto and llama_dense_auto count beside the activations */
double llama_token_scratch_bytes(const llama_model *m, int T);
/* the part of it attention's backward keeps beside its dq on a GPU: the backend's own workspace
 * for T tokens (cuDNN's, ops attn_workspace) or the mma kernels' fp32 dk, dv of grouped-query
 * heads, whichever is larger (they share one buffer) */
double llama_attn_slot_bytes(const llama_model *m, int T);

/* The plan a run asks for by mode (llama_plan.c): LLAMA_PLAN_NONE and LLAMA_PLAN_EVERY as told,
 * LLAMA_PLAN_AUTO checkpointing every layer only when the activations without it would not fit
 * budget_bytes (on a device the whole process's memory: what it uses already comes off first;
 * 0: what the device has free after the weights, less a margin for the ops'
 * scratch; on a backend without its own memory, half of RAM), or when the device refuses the
 * plain plan. With checkpointing on a device, the lean knobs (the MLP in row chunks, the ops'
 * scratch capped: slower, a few hundred MB smaller) are taken only when the plain checkpointed
 * plan would not fit. What was decided is in *out (may be NULL) for the caller to report. */
typedef enum llama_plan_mode { LLAMA_PLAN_NONE, LLAMA_PLAN_EVERY, LLAMA_PLAN_AUTO } llama_plan_mode;
typedef struct llama_plan_choice {
    double budget_bytes;     /* what the activations were planned against (after defaults; on a device, the
                              * budget less in_use_bytes) */
    double in_use_bytes;     /* on a device with a budget: its memory in use before the plan */
    double plain_bytes;      /* auto: activations without checkpointing */
    bool over_budget;        /* auto: plain_bytes > budget_bytes, so checkpointing */
    bool device_refused;     /* auto: the plain plan did not fit the device, so checkpointing */
    bool lean;               /* the lean knobs were taken */
    bool offload;            /* the layer inputs went to host memory (offload_inputs) */
    bool host_short;         /* checkpointed, offload auto: the plan did not fit without the offload, but
                              * the host could not hold the inputs (host_pin_bytes over host_room_bytes) */
    double host_pin_bytes;   /* checkpointed on a device: the inputs' pinned bytes, offloaded or not */
    double host_room_bytes;  /* what the plan lets them take: LLAMA_HOST_PIN_SHARE of the host's RAM (INFINITY:
                              * not known) */
    double det_ws_bytes;     /* deterministic mode, checkpointed: > 0 when attention backward's workspace
                              * was lowered to this to fit (ops det_workspace_cap_set) */
    double attn_ws_bytes;    /* on a device: attention's own workspace counted (ops attn_workspace) */
    double need_bytes;       /* what the chosen plan was counted to need beside in_use_bytes: activations,
                              * the ops' scratch and, checkpointed on a device, half their margin */
    double unlean_bytes;     /* with lean: what the plan without the lean knobs would need beside
                              * in_use_bytes (the same inputs' place), the faster plan a larger budget takes;
                              * 0 without lean */
} llama_plan_choice;
/* offload: LLAMA_OFFLOAD_AUTO moves the checkpointed layer inputs to host memory (offload_inputs)
 * when the checkpointed plan does not fit the budget, first without the lean knobs, then with
 * them; ON always does with checkpointing; OFF never does */
typedef enum llama_offload_mode { LLAMA_OFFLOAD_AUTO, LLAMA_OFFLOAD_ON, LLAMA_OFFLOAD_OFF } llama_offload_mode;
int llama_plan_auto(llama_model *m, int max_T, llama_plan_mode mode, llama_offload_mode offload, double budget_bytes,
                    llama_plan_choice *out);
/* The longest micro-batch (a multiple of step tokens, at most max_T) that llama_plan_auto would
 * plan within budget_bytes (memory_budget: the whole process's device memory) with every layer
 * checkpointed, by the same choices and arithmetic, allocating nothing; its choice in *out (may
 * be NULL). 0 when not even step tokens fit, or off a device. Resets deterministic attention's
 * workspace cap to its default, as a new plan does. */
int llama_plan_longest(llama_model *m, double budget_bytes, llama_offload_mode offload, int step, int max_T,
                       llama_plan_choice *out);
/* the memory_budget, in GiB up to the next hundredth, that bytes of the whole process's device
 * memory take: the least budget a plan's refusal and the train stage's log lines name */
double llama_budget_gib(double bytes);

typedef struct llama_batch {
    const int32_t *ids;       /* host [T] */
    const int32_t *labels;    /* host [T], unshifted, -100 masked */
    const int32_t *seq_start; /* host [T], or NULL: one sequence */
    int T;
} llama_batch;

/* Number of tokens that carry a loss in b (the shifted, in-sequence, non-ignored labels). */
int64_t llama_count_targets(const llama_batch *b);

/* Forward + backward of one micro-batch: LoRA gradients ACCUMULATE (+=) into lora_grads, scaled
 * by grad_scale (d loss_sum * grad_scale; e.g. 1 / targets over all accumulated micro-batches).
 * dropout_seed picks the dropout masks (vary it per micro-step; ignored when lora dropout = 0).
 * Returns the loss summed over targets and their count. */
int llama_forward_backward(llama_model *m, const llama_batch *b, float grad_scale, uint64_t dropout_seed,
                           double *loss_sum, int64_t *n_targets);
/* Forward only, no dropout: the loss sum, target count, and optionally each position's loss
 * (host [T], 0 where no target). */
int llama_forward_loss(llama_model *m, const llama_batch *b, double *loss_sum, int64_t *n_targets,
                       float *token_losses);
/* Forward only, no dropout: logits (host [T, V]) of every position of b (labels unused). */
int llama_forward_logits(llama_model *m, const llama_batch *b, float *logits);

/* On, every NF4 linear is dequantized once into one backend allocation (llama_dense_bytes:
 * rows*cols values in the activation dtype, bf16 on a GPU) and the forwards and backwards read it
 * there (ops_nf4.dense) instead of dequantizing it in each one (evaluation, generation, and
 * training when the device has room: the base is frozen, so the copy never goes stale); the
 * values are those a pass would dequantize (the backend's nf4_dequant) and the matrix products
 * run over the same row ranges, so every result is the same, bit for bit. Off frees it. Linears
 * loaded dense already are left alone. ERR_STAGE when the backend lacks the op or its memory is
 * short (nothing is kept then). */
int64_t llama_dense_bytes(const llama_model *m);
int llama_dense_weights(llama_model *m, bool on);
/* The same for the linears, layer by layer, that fit max_bytes (0: none; a copy kept before is
 * freed first): each one kept skips its dequantization, the others are dequantized as before. */
int llama_dense_weights_within(llama_model *m, int64_t max_bytes);

/* The choice of llama_dense_auto (llama_plan.c): ON keeps them all (an error when they do not
 * fit), OFF none, AUTO on a device as many as fit, layer by layer (all of them when they all do):
 * within budget_bytes less what the process uses already (budget > 0), else the device's free
 * memory, less the ops' margin and, after a plan, the scratch the first pass over its tokens
 * allocates (with, in deterministic mode, attention backward's workspace); never on a backend
 * without its own memory (a CPU's dequantized tiles cost little beside its multiply-adds, and 8
 * bytes a parameter instead of half of one). Call it after the plan and the KV cache are
 * allocated, so they count; a copy an earlier call kept is given back first. What was decided is
 * in *out (may be NULL). */
typedef enum llama_dense_mode { LLAMA_DENSE_AUTO, LLAMA_DENSE_ON, LLAMA_DENSE_OFF } llama_dense_mode;
typedef struct llama_dense_choice {
    bool kept;                     /* some or all of them */
    double need_bytes, room_bytes; /* room: 0 when not asked (ON, OFF, no device) */
    double kept_bytes;             /* need_bytes when all of them; less when only those that fit */
} llama_dense_choice;
int llama_dense_auto(llama_model *m, llama_dense_mode mode, double budget_bytes, llama_dense_choice *out);

/* Generation with a KV cache of up to max_len positions (one sequence): begin resets the cache;
 * decode appends n tokens at the next positions and writes the last position's logits (host [V]). */
int llama_generate_begin(llama_model *m, int max_len);
int llama_decode(llama_model *m, const int32_t *ids, int n, float *logits);
/* decode, and for each of the n positions losses[t] = -log p(targets[t]) (host [n]; 0 where
 * targets[t] < 0): a continuation scored after a cached context without a [n, V] download;
 * logits (may be NULL): the last position's, as llama_decode writes them */
int llama_decode_losses(llama_model *m, const int32_t *ids, int n, const int32_t *targets, float *losses,
                        float *logits);
/* n_seg sequences side by side (ids: seg[0] tokens, then seg[1], ...), each continuing the cached
 * kv_len positions on its own: its positions start at kv_len and its rows attend to the cache and
 * to its own rows before them, never to another sequence's (the questions of a benchmark after
 * their shared examples: the weights are read once for all). losses as llama_decode_losses, per
 * row of ids; logits (host [n_seg, V]): each sequence's last position's. The cache keeps kv_len
 * positions afterwards. The tokens together at most the plan's rows (ERR_USAGE). */
int llama_decode_segments(llama_model *m, const int32_t *ids, const int *seg, int n_seg, const int32_t *targets,
                          float *losses, float *logits);
/* forget the cached positions from len on (len <= kv_len): the next decode continues at len, so a
 * shared prefix is computed once and each continuation after it in turn */
int llama_kv_truncate(llama_model *m, int len);

#endif
