/* trainer.h: the training loop of the train stage, written once for every backend.
 *
 * The loop owns what is not the model: the data order (a seeded permutation per epoch),
 * micro-batches and gradient accumulation, the loss normalisation, AdamW over the one
 * contiguous LoRA buffer (ops->adamw), global-norm clipping, the learning-rate schedule,
 * periodic evaluation, crash-safe checkpoints and resume, the divergence guard, and the
 * per-step log line. The model is reached only through trainer_model (forward + backward
 * of one micro-batch), so the loop is tested on a toy model and drives the Llama engine
 * unchanged.
 *
 * Loss normalisation: the loss of one optimizer step is the sum of the token losses of ALL
 * its micro-batches divided by the number of target tokens in all of them (counted before
 * the first micro-batch runs), so accumulating 2 x 1 rows gives the same gradient as 1 x 2.
 *
 * Data parallel (docs/multi-gpu.md): with world > 1 every rank runs this loop on the same model
 * and data. A step takes micro_batch_size x gradient_accumulation_steps x world rows of the one
 * seeded stream; rank r takes the r-th run of micro_batch_size x accum of them, and the r-th
 * run of dropout seeds, so the ranks together take exactly the rows and seeds one process with
 * accum x world takes. The normaliser is the target tokens of the whole global batch (every
 * rank knows every row's count, so it is summed before the step, as one process sums it); the
 * gradients are all-reduced (core/collective.h: MPI on the CPU, NCCL on CUDA) in buckets of whole
 * layers (bucket_bytes) started as the final micro-batch's backward finishes them, before the
 * norm, the clipping and AdamW, which every rank then applies to identical bytes. Only rank 0
 * writes checkpoints and calls the on_step / on_eval hooks; evaluation splits the val
 * micro-batches over the ranks. A failure or an interrupt on any rank stops every rank at the next
 * step boundary (coll_agree), the last checkpoint intact.
 *
 * Equal to one process, bit for bit, on the CPU backend (gradients in host memory): each
 * micro-batch's gradient (fp32, as the backward makes it) is added into an fp64 sum, the ranks'
 * fp64 sums are all-reduced, and the total is rounded to fp32 once. An fp64 sum of a few fp32
 * values is exact unless they span more than ~2^29 in magnitude, so its value does not depend on
 * how the micro-batches are grouped into ranks or on MPI's reduction order; where it is not exact
 * the two groupings differ by at most 2^-52 relative before the one rounding. Each micro-batch's
 * loss travels in its own slot and is added in the global order, as one process adds them. On a
 * GPU the micro-batches accumulate in fp32 in place and NCCL sums in fp32 (equal to rounding).
 * With shard_optimizer (ZeRO-1) rank r keeps AdamW's m and v for its piece of the buffer only
 * (coll_shard), updates that piece after the global norm and clipping on the whole gradient, and
 * every rank gathers the updated pieces: AdamW is elementwise, so the bytes equal the unsharded
 * update's; checkpoints gather the pieces to rank 0 and hold the whole state (resumable on any
 * number of ranks, sharded or not).
 *
 * Determinism: the data order, the dropout seeds (an rng_state saved in checkpoints) and
 * the op order depend only on the seed and the step, so a run killed at any moment and
 * resumed from its newest checkpoint ends with the same parameter bytes as one that never
 * stopped.
 *
 * Checkpoint file (habit 7), <work_dir>/checkpoint-<step>.bin, written atomically:
 *   "QLRACKPT" | u32 version (1) | u32 header bytes | header (trainer_ckpt_header) |
 *   params f32[n] | adam m f32[n] | adam v f32[n] | 32 hex digits: XXH3-128 of all before.
 * The newest two are kept; a corrupt or foreign one is skipped with a log line.
 * Ownership: the caller owns the model, data and hooks; trainer_run allocates and frees
 * its own optimizer state. */
#ifndef MODEL_TRAINER_H
#define MODEL_TRAINER_H

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "kernels/ops.h"
#include "train/train_data.h"

#define TRAINER_CKPT_MAGIC "QLRACKPT"
#define TRAINER_CKPT_VERSION 1

typedef struct trainer_model {
    void *self;
    int64_t n_params;
    float *params; /* backend memory: every trainable value, one buffer */
    float *grads;  /* backend memory, same layout; train_step accumulates (+=) into it */
    /* optional backend buffers for AdamW state (NULL: the trainer allocates); with shard_optimizer
     * over several ranks they hold this rank's piece only (coll_shard of n_params) */
    float *adam_m, *adam_v;
    /* Forward and backward of one micro-batch: grads += grad_scale * d(sum of target-token
     * losses)/d(params); *loss_sum = that (unscaled) sum. dropout_seed varies per micro-step. */
    int (*train_step)(void *self, const train_batch *b, float grad_scale, uint64_t dropout_seed, double *loss_sum);
    /* forward only, no dropout: *loss_sum = summed target-token loss */
    int (*eval_loss)(void *self, const train_batch *b, double *loss_sum);
    /* Optional, for data parallel: the gradients in buckets, one a layer. layer_off[0..n_layers]
     * ascending: bucket l is grads[layer_off[l] .. layer_off[l+1]); the backward finishes layer
     * n_layers-1 first. set_layer_done(self, cb, ud) makes train_step call cb(ud, l) once layer l's
     * gradients are final (cb NULL: off). Without them the gradients go in one all-reduce after
     * the backward. */
    int n_layers;
    const int64_t *layer_off;
    void (*set_layer_done)(void *self, void (*cb)(void *ud, int layer), void *ud);
} trainer_model;

typedef enum trainer_schedule { TRAINER_SCHEDULE_CONSTANT, TRAINER_SCHEDULE_LINEAR, TRAINER_SCHEDULE_COSINE } trainer_schedule;

typedef struct trainer_config {
    double learning_rate;
    int micro_batch_size;            /* rows per micro-step */
    int gradient_accumulation_steps; /* micro-steps per optimizer step */
    double num_epochs;               /* used when max_steps <= 0 */
    int64_t max_steps;               /* > 0: exactly this many optimizer steps */
    int64_t warmup_steps;
    trainer_schedule schedule;
    double weight_decay, adam_beta1, adam_beta2, adam_epsilon;
    double max_grad_norm; /* <= 0: no clipping */
    int64_t eval_steps;   /* <= 0: evaluate only at the start and the end */
    int64_t save_steps;   /* <= 0: checkpoint only at the end (and on interrupt) */
    int64_t logging_steps;/* a step line every N steps (and the first and last) */
    uint64_t seed;
    const char *work_dir; /* checkpoints; NULL: none, no resume */
    int rank, world;      /* data parallel: this process is rank of world (world 0 or 1: alone) */
    int64_t bucket_bytes; /* gradient all-reduce buckets of at least this many bytes (<= 0: one a layer) */
    bool shard_optimizer; /* ZeRO-1: each rank keeps the AdamW state of its piece (coll_shard) only */
} trainer_config;

/* what one optimizer step did (for the log line, events and the on_step hook) */
typedef struct trainer_step_info {
    int64_t step, total_steps; /* step counts from 1 */
    double loss, grad_norm, lr, ms, tokens_per_s;
    int64_t tokens, target_tokens;
    double epoch; /* rows consumed / rows in the split */
} trainer_step_info;

/* Callbacks into the caller (the stage): logging, events, progress, Lua hooks. Any may be NULL. */
typedef struct trainer_hooks {
    void *ud;
    /* overrides the built-in schedule: *lr for 0-based optimizer step `step` of `total` */
    int (*lr)(void *ud, int64_t step, int64_t total, double base_lr, double *lr);
    void (*log)(void *ud, const char *line);
    void (*event)(void *ud, const char *type, json_t *ev); /* steals ev */
    void (*progress)(void *ud, double done, double total); /* (-1, -1): finished */
    /* after each step / each evaluation; a nonzero return stops training with that code */
    int (*on_step)(void *ud, const trainer_step_info *info);
    int (*on_eval)(void *ud, int64_t step, double val_loss, double perplexity);
    volatile int *interrupted; /* polled between micro-steps */
} trainer_hooks;

typedef struct trainer_result {
    int64_t steps;          /* optimizer steps done in total */
    int64_t resumed_from;   /* checkpoint step this run started from (0: fresh) */
    double first_val_loss;  /* before the first step (NAN without a val split) */
    double final_val_loss;  /* after the last step */
    double final_train_loss;/* the last step's loss */
    int64_t tokens;         /* tokens processed by this run */
    double seconds;         /* wall time of this run's steps */
} trainer_result;

/* the learning rate of 0-based optimizer step `step` (transformers' schedules) */
double trainer_schedule_lr(trainer_schedule s, double base_lr, int64_t step, int64_t warmup, int64_t total);
const char *trainer_schedule_name(trainer_schedule s);
int trainer_schedule_from_name(const char *name); /* -1 if unknown */

/* optimizer steps the config gives on a split of n_rows rows (global batch: micro x accum x world) */
int64_t trainer_total_steps(const trainer_config *cfg, int64_t n_rows);

/* mean target-token loss of a whole split (micro_batch_size rows at a time) */
int trainer_evaluate(trainer_model *m, const train_data *d, int micro_batch_size, double *loss, int64_t *n_targets);
/* the same over ranks: rank takes micro-batches rank, rank + world, ...; the sums are all-reduced
 * (a collective: every rank calls it) */
int trainer_evaluate_shared(trainer_model *m, const train_data *d, int micro_batch_size, int rank, int world,
                            double *loss, int64_t *n_targets);

/* Train. val may be NULL. Returns 0, ERR_INTERRUPTED (checkpoint written), ERR_DIVERGED
 * (nothing written; the last good checkpoint kept and named), or another ERR_* code. */
int trainer_run(const trainer_config *cfg, const ops_table *ops, trainer_model *m, const train_data *train,
                const train_data *val, const trainer_hooks *hooks, trainer_result *res);

/* The newest valid checkpoint's step in work_dir (0 if none). */
int64_t trainer_checkpoint_latest(const char *work_dir);

#endif
