/* train.c: the train stage. Loads the base model (NF4) and the adapter from attach_lora,
 * trains the adapter on a dataset artifact with model/trainer.c, and writes:
 *   <out>/adapter/        the trained adapter (PEFT format)
 *   <out>/train_log.jsonl one JSON object per step and evaluation (the whole run, across resumes)
 *   <out>/metrics.json    final metrics (also in the manifest)
 * Checkpoints live in ctx->work_dir, which survives a killed run: running the recipe again
 * resumes from the newest one and ends with the same adapter bytes.
 * Data parallel (the kind's data_parallel flag): every rank runs this stage; rank 0 keeps the
 * train log and writes the checkpoints, the runner commits rank 0's artifact.
 *
 * Lua hooks: lr(step, total_steps, base_lr) -> learning rate (lr_hook or hooks.lr),
 * on_step(metrics) and on_eval(results) (hooks.on_step / hooks.on_eval). */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "core/collective.h"
#include "core/fsutil.h"
#include "core/hooks.h"
#include "formats/peft.h"
#include "model/adapter.h"
#include "model/config.h"
#include "model/llama.h"
#include "model/device.h"
#include "model/llama_peft.h"
#include "train/llama_trainer.h"
#include "train/trainer.h"
#include "stages/stage.h"

static const param_spec train_params[] = {
    {"model", PARAM_REF, NULL, 0, -1, "quantize_nf4|init_model|fetch_model", "the base model", PARAM_REQUIRED},
    {"adapter", PARAM_REF, NULL, 0, -1, "attach_lora", "the adapter to train", PARAM_REQUIRED},
    {"data", PARAM_REF, NULL, 0, -1, "dataset", "the dataset (train split; val for evaluation)", PARAM_REQUIRED},
    {"learning_rate", PARAM_FLOAT, "2e-4", 0, 1e6, NULL, "peak learning rate", 0},
    {"micro_batch_size", PARAM_INT, "1", 1, 65536, NULL, "rows per micro-step", 0},
    {"gradient_accumulation_steps", PARAM_INT, "1", 1, 65536, NULL, "micro-steps per optimizer step", 0},
    {"num_epochs", PARAM_FLOAT, "1", 0.001, 1e6, NULL, "passes over the train split (when max_steps is 0)", 0},
    {"max_steps", PARAM_INT, "0", 0, 1e12, NULL, "optimizer steps; 0: from num_epochs", 0},
    {"warmup_steps", PARAM_INT, "0", 0, 1e12, NULL, "linear warmup from 0 over this many steps", 0},
    {"lr_scheduler", PARAM_ENUM, "cosine", 0, -1, "constant|linear|cosine", "decay after warmup", 0},
    {"lr_hook", PARAM_FILE, NULL, 0, -1, "lr", "Lua file with lr(step, total_steps, base_lr); overrides lr_scheduler", PARAM_HOOK},
    {"weight_decay", PARAM_FLOAT, "0", 0, 10, NULL, "AdamW decoupled weight decay", 0},
    {"adam_beta1", PARAM_FLOAT, "0.9", 0, 0.999999, NULL, "AdamW beta1", 0},
    {"adam_beta2", PARAM_FLOAT, "0.999", 0, 0.999999999, NULL, "AdamW beta2", 0},
    {"adam_epsilon", PARAM_FLOAT, "1e-8", 0, 1, NULL, "AdamW epsilon", 0},
    {"max_grad_norm", PARAM_FLOAT, "1.0", 0, 1e9, NULL, "clip the global gradient norm to this (0: off)", 0},
    {"activation_checkpointing", PARAM_ENUM, "auto", 0, -1, "none|every_layer|auto",
     "recompute each layer in backward (auto: only when memory_budget needs it)", 0},
    {"activation_offload", PARAM_ENUM, "auto", 0, -1, "auto|on|off",
     "with checkpointing, keep the layer inputs in pinned host memory, copied out and back beside the "
     "compute (auto: when the checkpointed plan does not fit memory_budget or the device, and 90% of the host's "
     "available RAM holds them; the same bits)",
     PARAM_NOKEY},
    {"memory_budget", PARAM_STRING, NULL, 0, -1, NULL,
     "memory the run may use, e.g. 24GB: on a GPU all of the process's device memory (CUDA context, weights, LoRA "
     "state, activations, scratch), which decides checkpointing and offload, and a budget even the leanest "
     "plan misses is refused before training; on the CPU the activations' (default: what the device has free; "
     "half of RAM on the CPU)", PARAM_NOKEY},
    {"dense_weights", PARAM_ENUM, "auto", 0, -1, "auto|on|off",
     "keep the base's linear weights dequantized (bf16 on a GPU) for the whole run instead of dequantizing them "
     "in every forward and backward: the same numbers, bit for bit, in less time (auto: on a GPU, as many "
     "layers' as fit memory_budget, or the device's free memory, beside the weights, LoRA state and the "
     "activations' plan, which comes first)", PARAM_NOKEY},
    {"optimizer_offload", PARAM_BOOL, "false", 0, -1, NULL,
     "AdamW's m and v in pinned host memory; the device reads them over PCIe in the optimizer step "
     "(no effect on cpu)", PARAM_NOKEY},
    {"grad_bucket_mb", PARAM_FLOAT, "25", 0, 1e6, NULL,
     "data parallel: LoRA gradients all-reduced in buckets of whole layers, each at least this many MiB, started "
     "as the backward finishes them (0: one bucket a layer)", PARAM_NOKEY},
    {"shard_optimizer", PARAM_BOOL, "false", 0, -1, NULL,
     "data parallel: each rank keeps the AdamW state of its piece of the LoRA parameters only and the updated "
     "pieces are gathered (ZeRO-1); the same adapter as without", PARAM_NOKEY},
    {"eval_steps", PARAM_INT, "0", 0, 1e12, NULL, "evaluate on the val split every N steps (0: start and end only)", 0},
    {"save_steps", PARAM_INT, "50", 0, 1e12, NULL, "checkpoint every N steps (0: only at the end and on interrupt)",
     PARAM_NOKEY},
    {"logging_steps", PARAM_INT, "1", 1, 1e12, NULL, "print a step line every N steps", PARAM_NOKEY},
    {"seed", PARAM_INT, NULL, 0, 9.2e18, NULL, "data order and dropout seed (default: the recipe's seed)", 0},
    {"deterministic", PARAM_BOOL, NULL, 0, -1, NULL,
     "fixed-order GPU reductions: bit-identical losses, checkpoints and adapter run after run (default: the "
     "recipe's deterministic; docs/determinism.md)", 0},
    {0}};

static int train_check(const json_t *p) {
    if (json_integer_value(json_object_get(p, "max_steps")) > 0 &&
        json_integer_value(json_object_get(p, "warmup_steps")) > json_integer_value(json_object_get(p, "max_steps")))
        return err_set(ERR_RECIPE, "warmup_steps (%lld) is larger than max_steps (%lld)",
                       (long long)json_integer_value(json_object_get(p, "warmup_steps")),
                       (long long)json_integer_value(json_object_get(p, "max_steps")));
    double budget;
    return stage_parse_budget(json_string_value(json_object_get(p, "memory_budget")), &budget);
}

/* ---- hooks, events and the persistent train log ---- */

typedef struct train_run {
    stage_ctx *ctx;
    hooks *hooks;
    FILE *log; /* work_dir/train_log.jsonl, appended */
    int notify_failures; /* on_step / on_eval calls that failed: warned about, never fatal */
} train_run;

/* A logging hook that fails must not end a long run: warn, and after a few failures stop
 * calling it (a broken logger would fail the same way every step). */
#define NOTIFY_MAX_FAILURES 3
static int notify_failed(train_run *r, const char *point) {
    r->notify_failures++;
    stage_warnf(r->ctx, "%s hook failed (%d of %d failures allowed, training goes on): %s", point, r->notify_failures,
                NOTIFY_MAX_FAILURES, err_msg());
    if (r->notify_failures == NOTIFY_MAX_FAILURES)
        stage_warnf(r->ctx, "the on_step and on_eval hooks are not called again in this run");
    err_clear();
    return 0;
}

static int hook_lr(void *ud, int64_t step, int64_t total, double base_lr, double *lr) {
    return hooks_lr(((train_run *)ud)->hooks, step, total, base_lr, lr);
}

static int hook_on_step(void *ud, const trainer_step_info *in) {
    train_run *r = ud;
    if (!hooks_has(r->hooks, "on_step") || r->notify_failures >= NOTIFY_MAX_FAILURES) return 0;
    json_t *m = json_pack("{s:I, s:I, s:f, s:f, s:f, s:f, s:f, s:I, s:f}", "step", (json_int_t)in->step, "total_steps",
                          (json_int_t)in->total_steps, "loss", in->loss, "grad_norm", in->grad_norm, "lr", in->lr, "ms",
                          in->ms, "tokens_per_s", in->tokens_per_s, "tokens", (json_int_t)in->tokens, "epoch",
                          in->epoch);
    int rc = hooks_on_step(r->hooks, m);
    json_decref(m);
    if (rc == ERR_INTERRUPTED) return rc;
    return rc ? notify_failed(r, "on_step") : 0;
}

static int hook_on_eval(void *ud, int64_t step, double loss, double ppl) {
    train_run *r = ud;
    if (!hooks_has(r->hooks, "on_eval") || r->notify_failures >= NOTIFY_MAX_FAILURES) return 0;
    json_t *m = json_pack("{s:s, s:I, s:f, s:f}", "stage", r->ctx->name, "step", (json_int_t)step, "val_loss", loss,
                          "perplexity", ppl);
    int rc = hooks_on_eval(r->hooks, m);
    json_decref(m);
    if (rc == ERR_INTERRUPTED) return rc;
    return rc ? notify_failed(r, "on_eval") : 0;
}

static void cb_metric(void *ud, const char *name, double value) { stage_metric(ud, name, value); }

static void cb_log(void *ud, const char *level, const char *msg) {
    if (!strcmp(level, "info")) stage_logf(ud, "%s", msg);
    else stage_logf(ud, "%s: %s", level, msg);
}

static void hook_log(void *ud, const char *line) { stage_logf(((train_run *)ud)->ctx, "%s", line); }

static void hook_event(void *ud, const char *type, json_t *ev) {
    train_run *r = ud;
    if (r->log) {
        json_t *line = json_deep_copy(ev);
        json_object_set_new(line, "type", json_string(type));
        char *s = json_dumps(line, JSON_COMPACT | JSON_SORT_KEYS);
        if (s) fprintf(r->log, "%s\n", s), fflush(r->log);
        free(s);
        json_decref(line);
    }
    stage_event(r->ctx, type, ev);
}

static void hook_progress(void *ud, double done, double total) {
    train_run *r = ud;
    if (done < 0) stage_progress_done(r->ctx);
    else stage_progress(r->ctx, "steps", done, total, "steps");
}

/* Keep the lines of the persistent log up to the checkpoint we resume from (the steps after
 * it run again), then open it for appending. */
static int train_log_open(train_run *r, const char *path, int64_t resume_step) {
    char *old = NULL;
    size_t len = 0;
    char *kept = NULL;
    size_t kn = 0;
    if (resume_step > 0 && fs_exists(path) && !fs_read_all(path, &old, &len)) {
        kept = malloc(len + 1);
        for (char *line = old, *nl; kept && line < old + len; line = nl + 1) {
            nl = strchr(line, '\n');
            if (!nl) break;
            *nl = 0;
            json_t *j = json_loads(line, 0, NULL);
            json_int_t st = json_integer_value(json_object_get(j, "step"));
            if (j && st <= resume_step && strcmp(json_string_value(json_object_get(j, "type")) ?: "", "interrupted")) {
                size_t l = strlen(line);
                memcpy(kept + kn, line, l);
                kept[kn + l] = '\n';
                kn += l + 1;
            }
            json_decref(j);
        }
    }
    err_clear();
    int rc = fs_write_atomic(path, kept ? kept : "", kn);
    free(old);
    free(kept);
    if (rc) return rc;
    r->log = fopen(path, "a");
    return r->log ? 0 : err_errno(ERR_STAGE, "cannot open '%s'", path);
}

static int plan_memory(stage_ctx *ctx, llama_model *m, int max_T) {
    const char *mode = stage_str(ctx, "activation_checkpointing");
    double budget;
    int rc = stage_parse_budget(stage_str(ctx, "memory_budget"), &budget);
    if (rc) return rc;
    llama_plan_choice ch;
    const char *off = stage_str(ctx, "activation_offload");
    llama_offload_mode offload =
        !strcmp(off, "on") ? LLAMA_OFFLOAD_ON : !strcmp(off, "off") ? LLAMA_OFFLOAD_OFF : LLAMA_OFFLOAD_AUTO;
    /* with a budget on a device: how long a micro-batch it could take (before the plan allocates,
     * as llama_plan_longest reads what is in use), to size sequence_len by */
    int longest = budget > 0 ? llama_plan_longest(m, budget, offload, 64, 1 << 28, NULL) : 0;
    if (longest > 0)
        stage_logf(ctx, "memory_budget %s takes micro-batches of up to %d tokens with every layer checkpointed%s",
                   stage_str(ctx, "memory_budget"), longest,
                   offload == LLAMA_OFFLOAD_OFF ? " (activation_offload: off)" : "");
    rc = llama_plan_auto(m, max_T,
                         !strcmp(mode, "auto")          ? LLAMA_PLAN_AUTO
                         : !strcmp(mode, "every_layer") ? LLAMA_PLAN_EVERY
                                                        : LLAMA_PLAN_NONE,
                         offload, budget, &ch);
    if (!rc && ch.offload)
        stage_logf(ctx, "layer inputs offloaded to pinned host memory: %.1f MiB on the host", (double)m->host_act_bytes / 1048576.0);
    if (!rc && ch.host_short)
        stage_logf(ctx, "layer inputs kept on the device: offloaded they would take %.1f MiB of pinned host memory, over "
                        "the %.1f MiB the host can give (%.0f%% of its available RAM)",
                   ch.host_pin_bytes / 1048576.0, ch.host_room_bytes / 1048576.0, 100.0 * LLAMA_HOST_PIN_SHARE);
    if (ch.over_budget)
        stage_logf(ctx, "activations (and on a GPU the ops' scratch) need %.1f MB without checkpointing, over the "
                        "%.1f MB the budget leaves them%s: checkpointing every layer",
                   ch.plain_bytes / 1048576.0, ch.budget_bytes / 1048576.0,
                   ch.in_use_bytes > 0 ? " beside what the device holds already" : "");
    if (ch.device_refused)
        stage_logf(ctx, "activations without checkpointing do not fit the device: checkpointing every layer");
    if (!rc && ch.lean && ch.in_use_bytes > 0) /* in use is counted only against a memory_budget */
        stage_logf(ctx, "the lean knobs were taken to fit memory_budget %s (the ops' scratch capped, each weight "
                        "dequantized in row ranges; the MLP in row chunks): slower; memory_budget %.2fGB takes the "
                        "plan without them",
                   stage_str(ctx, "memory_budget"), llama_budget_gib(ch.unlean_bytes + ch.in_use_bytes));
    if (ch.det_ws_bytes > 0)
        stage_logf(ctx, "deterministic attention backward's workspace lowered to %.1f MiB to fit: smaller calls%s",
                   ch.det_ws_bytes / 1048576.0, ch.det_ws_bytes <= 1 ? " (none: the fixed-order mma kernels)" : "");
    if (ch.attn_ws_bytes > 0)
        stage_logf(ctx, "attention's workspace (cuDNN) for %d tokens: %.1f MiB, counted in the plan", max_T,
                   ch.attn_ws_bytes / 1048576.0);
    if (rc) return rc;
    stage_metric(ctx, "activation_mb", (double)m->act_bytes / 1048576.0);
    /* the activations were planned first; the base weights kept dequantized take what is left */
    bool kept;
    if ((rc = stage_dense_weights(ctx, m, &kept))) return rc;
    stage_metric(ctx, "dense_weights_mb", kept ? (double)m->dense_bytes / 1048576.0 : 0);
    return 0;
}

/* the start-up report on a GPU: device, memory, the plan, kernels, checkpointing */
static void log_device(stage_ctx *ctx, const llama_model *m, int max_T) {
    if (!m->ops->own_memory) return;
    device_info di;
    device_info_get(m->ops, &di);
    const double MiB = 1048576.0;
    stage_logf(ctx, "device: %s, %.1f GiB total, %.1f GiB free after the plan", di.name, di.total_bytes / (1024 * MiB),
               di.free_bytes / (1024 * MiB));
    double lora_mib = 8.0 * (double)m->n_lora_params / MiB; /* params + grads; m, v as much again */
    int64_t lo = 0, hi = m->n_lora_params;
    if (m->adam_shard_world > 1) coll_shard(m->n_lora_params, m->adam_shard_world, m->adam_shard_rank, &lo, &hi);
    double adam_mib = 8.0 * (double)(hi - lo) / MiB;
    char adam[128];
    if (m->adam_host)
        snprintf(adam, sizeof adam, "; AdamW state %.1f MiB in pinned host memory%s", adam_mib,
                 m->adam_shard_world > 1 ? " (this rank's piece)" : "");
    else snprintf(adam, sizeof adam, " and AdamW state%s", m->adam_shard_world > 1 ? " of this rank's piece" : "");
    stage_logf(ctx, "plan: frozen weights %.1f MiB (NF4%s), LoRA %lld params (%.1f MiB with grads%s), "
                    "activations %.1f MiB for %d tokens; %.1f MiB allocated so far on the device",
               (double)m->weight_bytes / MiB, m->layers[0].lin[0].w.absmax_q ? " + double-quant absmax" : "",
               (long long)m->n_lora_params, m->adam_host ? lora_mib : lora_mib + adam_mib, adam, (double)m->act_bytes / MiB,
               max_T, di.live_bytes / MiB);
    stage_logf(ctx, "kernels: attention %s; %s%s; checkpointing %s%s", di.attention,
               m->dense_mem ? "NF4 kept dequantized in bf16 (dense_weights)" : "NF4 dequantized into a bf16 scratch per linear",
               di.scratch_cap ? " (capped: row ranges)" : "",
               m->ckpt == LLAMA_CKPT_NONE            ? "none"
               : m->mlp_chunk_rows > 0 && m->mlp_chunk_rows < max_T ? "every layer (lean plan: MLP in chunks of rows)"
                                                                     : "every layer",
               m->ckpt != LLAMA_CKPT_NONE && m->offload_inputs ? "; layer inputs in pinned host memory" : "");
}

/* the end-of-training report on a GPU: the peak of the run's own allocations and what the whole
 * process holds of the device (the CUDA context and libraries' workspaces too), which is what
 * memory_budget bounds */
static void log_device_used(stage_ctx *ctx, const ops_table *ops) {
    if (!ops->own_memory) return;
    device_info di;
    device_info_get(ops, &di);
    const double GiB = 1073741824.0;
    double used = device_used_bytes(ops);
    const char *budget = stage_str(ctx, "memory_budget");
    char within[96] = "";
    if (budget) snprintf(within, sizeof within, " (memory_budget %s)", budget);
    stage_logf(ctx, "device memory: the run's allocations peaked at %.2f GiB; the process holds %.2f GiB of the "
                    "device%s",
               di.peak_bytes / GiB, used / GiB, within);
    stage_metric(ctx, "device_peak_mb", di.peak_bytes / 1048576.0);
    stage_metric(ctx, "device_used_mb", used / 1048576.0);
}

/* The backend, deterministic mode and the gradient all-reduce's communicator, before any weight is
 * loaded (deterministic mode is refused here where it cannot be honoured). */
static int train_device_setup(stage_ctx *ctx, const ops_table **ops_out) {
    const ops_table *ops;
    int rc;
    if ((rc = device_ops(ctx->device, &ops))) return rc;
    *ops_out = ops;
    if ((rc = device_deterministic(ops, stage_bool(ctx, "deterministic"), coll_world()))) return rc;
    if (stage_bool(ctx, "deterministic") && ops->deterministic_set)
        stage_logf(ctx, "deterministic: every reduction in a fixed order (bit-identical on the same GPU model, "
                        "driver and build)");
    /* data parallel: the gradient all-reduce's communicator (NCCL on a GPU), before any weight is loaded */
    if ((rc = device_collective(ops, coll_world()))) return rc;
    if (coll_nccl_active())
        stage_logf(ctx, "gradients: NCCL all-reduce over %d rank%s (rank %d, %s), in buckets on a stream of their own%s",
                   coll_world(), coll_world() == 1 ? "" : "s", coll_rank(), coll_launcher(), "");
    else if (coll_world() > 1)
        stage_logf(ctx, "gradients: MPI all-reduce over %d ranks (rank %d, %s), in buckets", coll_world(), coll_rank(),
                   coll_launcher());
    return 0;
}

/* The model on the backend with the adapter attached; the AdamW state's place (host memory, this
 * rank's shard) is set before the plan, so the plan counts it out. */
static int train_model_load(stage_ctx *ctx, const ops_table *ops, const model_config *cfg, const char *mdir,
                            peft_adapter *ad, const char *adir, bool shard, llama_model **out) {
    stage_logf(ctx, "loading %s model (%d layers, hidden %lld) on %s", config_arch_name(cfg->arch), cfg->num_layers,
               (long long)cfg->hidden_size, ops->name);
    int rc = llama_init(out, cfg, mdir, &LLAMA_LOAD_OPTS_DEFAULT, ops);
    if (rc) return rc;
    llama_model *m = *out;
    /* the AdamW state off the device: placed before the plan, so the plan counts it out */
    m->adam_host = stage_bool(ctx, "optimizer_offload");
    if (shard) { /* the AdamW state of this rank's piece only */
        m->adam_shard_world = coll_world();
        m->adam_shard_rank = coll_rank();
    }
    if (m->adam_host && !ops->own_memory) /* alloc_host is its plain allocation there */
        stage_logf(ctx, "optimizer_offload: the %s backend keeps everything in host memory already (no effect)",
                   ops->name);
    return llama_peft_attach(m, ad, adir);
}

/* The trainer's settings from the stage's parameters. */
static trainer_config trainer_config_of(stage_ctx *ctx, bool shard) {
    json_t *seed = stage_json(ctx, "seed");
    trainer_config tc = {
        .learning_rate = stage_float(ctx, "learning_rate"),
        .micro_batch_size = (int)stage_int(ctx, "micro_batch_size"),
        .gradient_accumulation_steps = (int)stage_int(ctx, "gradient_accumulation_steps"),
        .num_epochs = stage_float(ctx, "num_epochs"),
        .max_steps = stage_int(ctx, "max_steps"),
        .warmup_steps = stage_int(ctx, "warmup_steps"),
        .schedule = (trainer_schedule)trainer_schedule_from_name(stage_str(ctx, "lr_scheduler")),
        .weight_decay = stage_float(ctx, "weight_decay"),
        .adam_beta1 = stage_float(ctx, "adam_beta1"),
        .adam_beta2 = stage_float(ctx, "adam_beta2"),
        .adam_epsilon = stage_float(ctx, "adam_epsilon"),
        .max_grad_norm = stage_float(ctx, "max_grad_norm"),
        .eval_steps = stage_int(ctx, "eval_steps"),
        .save_steps = stage_int(ctx, "save_steps"),
        .logging_steps = stage_int(ctx, "logging_steps"),
        .seed = json_is_integer(seed) ? (uint64_t)json_integer_value(seed) : ctx->seed,
        .work_dir = ctx->work_dir,
        .rank = coll_rank(),
        .world = coll_world(),
        .bucket_bytes = (int64_t)(stage_float(ctx, "grad_bucket_mb") * 1048576.0),
        .shard_optimizer = shard,
    };
    return tc;
}

/* the longest row (tokens) of the train split and, when there is one, the validation split */
static int64_t longest_row(const train_data *train, const train_data *val) {
    int64_t max_row = 0;
    for (int64_t r = 0; r < train->n_rows; r++) if (train->rows[r + 1] - train->rows[r] > max_row) max_row = train->rows[r + 1] - train->rows[r];
    for (int64_t r = 0; val && r < val->n_rows; r++) if (val->rows[r + 1] - val->rows[r] > max_row) max_row = val->rows[r + 1] - val->rows[r];
    return max_row;
}

/* The artifact: the trained adapter, the step log (rank 0 with a work dir) and metrics.json. */
static int train_write_artifact(stage_ctx *ctx, const ops_table *ops, llama_model *m, peft_adapter *ad,
                                const char *out_adir, train_run *run, const char *log_path, const trainer_result *res,
                                bool have_val) {
    int rc;
    stage_note_environment(ctx, ops);
    if ((rc = llama_peft_read(m, ad)) || (rc = peft_adapter_save(ad, out_adir))) return rc;
    if (run->log) {
        fclose(run->log);
        run->log = NULL;
        char *text = NULL, *dst = fs_join(ctx->out_dir, "train_log.jsonl");
        size_t len = 0;
        if (!(rc = fs_read_all(log_path, &text, &len))) rc = fs_write_atomic(dst, text, len);
        free(text);
        free(dst);
        if (rc) return rc;
    }
    double tps = res->seconds > 0 ? (double)res->tokens / res->seconds : 0;
    stage_metric(ctx, "steps", (double)res->steps);
    stage_metric(ctx, "train_loss", res->final_train_loss);
    if (have_val) {
        stage_metric(ctx, "val_loss_start", res->first_val_loss);
        stage_metric(ctx, "val_loss", res->final_val_loss);
        stage_metric(ctx, "perplexity", exp(res->final_val_loss));
    }
    stage_metric(ctx, "train_seconds", res->seconds);
    stage_metric(ctx, "tokens_per_s", tps);
    if (res->resumed_from) stage_metric(ctx, "resumed_from_step", (double)res->resumed_from);
    char *mp = fs_join(ctx->out_dir, "metrics.json");
    char *mtext = json_dumps(ctx->metrics, JSON_INDENT(2) | JSON_SORT_KEYS);
    rc = mtext ? fs_write_atomic(mp, mtext, strlen(mtext)) : err_set(ERR_STAGE, "cannot encode the metrics");
    free(mtext);
    free(mp);
    if (!rc && have_val)
        stage_logf(ctx, "val loss %.4f -> %.4f (%.1f%% lower), perplexity %.3f", res->first_val_loss,
                   res->final_val_loss, 100.0 * (1.0 - res->final_val_loss / res->first_val_loss),
                   exp(res->final_val_loss));
    return rc;
}

static int train_run_stage(stage_ctx *ctx) {
    const stage_input *min = stage_input_get(ctx, "model"), *ain = stage_input_get(ctx, "adapter"),
                      *din = stage_input_get(ctx, "data");
    if (!min || !ain || !din) return err_set(ERR_STAGE, "train: missing an input (model, adapter, data)");
    char *mdir = fs_join(min->dir, "model"), *adir = fs_join(ain->dir, "adapter");
    char *out_adir = fs_join(ctx->out_dir, "adapter"), *lr_path = stage_path(ctx, "lr_hook");
    char *log_path = NULL;
    model_config cfg = {0};
    peft_adapter ad = {0}; /* peft_adapter_load fills it; free is safe on a zeroed one */
    train_data train = {0}, val = {0};
    bool have_val = false;
    llama_model *m = NULL;
    train_run run = {.ctx = ctx};
    const ops_table *ops;
    int rc;

    if ((rc = train_device_setup(ctx, &ops))) goto out;
    if ((rc = config_load(&cfg, mdir))) goto out;
    if ((rc = device_deterministic_model(ops, stage_bool(ctx, "deterministic"), (int)cfg.head_dim, mdir))) goto out;
    if ((rc = peft_adapter_load(&ad, adir)) || (rc = adapter_validate(&ad, &cfg, adir))) goto out;
    if ((rc = train_data_open(&train, din->dir, "train"))) goto out;
    if (train_data_open(&val, din->dir, "val") == 0) have_val = val.n_rows > 0;
    else err_clear();

    /* hooks: an explicit lr_hook wins over the recipe's hooks.lr */
    if ((rc = hooks_open(&run.hooks, ctx->hooks))) goto out;
    if (lr_path && (rc = hooks_bind(run.hooks, "lr", lr_path))) goto out;
    hooks_set_callbacks(run.hooks, &(lua_host_callbacks){.ud = ctx, .metric = cb_metric, .log = cb_log});

    const bool shard = stage_bool(ctx, "shard_optimizer") && coll_world() > 1;
    if ((rc = train_model_load(ctx, ops, &cfg, mdir, &ad, adir, shard, &m))) goto out;

    trainer_config tc = trainer_config_of(ctx, shard);
    if (tc.micro_batch_size > train.n_rows)
        stage_warnf(ctx, "micro_batch_size %d is more than the %lld training rows: every micro-batch repeats rows "
                         "(each about %.1f times); set micro_batch_size to at most %lld (gradient_accumulation_steps "
                         "gives larger batches)",
                    tc.micro_batch_size, (long long)train.n_rows, (double)tc.micro_batch_size / (double)train.n_rows,
                    (long long)train.n_rows);
    int64_t max_row = longest_row(&train, have_val ? &val : NULL);
    if ((rc = plan_memory(ctx, m, (int)(max_row * tc.micro_batch_size)))) goto out;
    log_device(ctx, m, (int)(max_row * tc.micro_batch_size));

    if (ctx->work_dir && coll_rank() == 0) { /* the other ranks' step lines are in their own stage logs */
        if ((rc = fs_mkdir_p(ctx->work_dir))) goto out;
        log_path = fs_join(ctx->work_dir, "train_log.jsonl");
        if ((rc = train_log_open(&run, log_path, trainer_checkpoint_latest(ctx->work_dir)))) goto out;
    }

    trainer_model tm;
    llama_trainer_bind(m, &tm);
    trainer_hooks th = {.ud = &run, .lr = hooks_has(run.hooks, "lr") ? hook_lr : NULL, .log = hook_log, .event = hook_event,
                        .progress = hook_progress, .on_step = hook_on_step, .on_eval = hook_on_eval,
                        .interrupted = ctx->interrupted};
    trainer_result res;
    rc = trainer_run(&tc, ops, &tm, &train, have_val ? &val : NULL, &th, &res);
    if (rc) goto out;
    log_device_used(ctx, ops);

    rc = train_write_artifact(ctx, ops, m, &ad, out_adir, &run, log_path, &res, have_val);

out:
    if (run.log) fclose(run.log);
    if (!rc) stage_note_hook_files(ctx, run.hooks, "lr");
    hooks_free(&run.hooks);
    llama_free(&m);
    train_data_free(&train);
    train_data_free(&val);
    peft_adapter_free(&ad);
    config_free(&cfg);
    free(mdir);
    free(adir);
    free(out_adir);
    free(lr_path);
    free(log_path);
    return rc;
}

static const metric_spec train_metrics[] = {
    {"steps", METRIC_NEITHER, "optimizer steps taken"},
    {"train_loss", METRIC_LOWER, "training loss at the last step"},
    {"val_loss_start", METRIC_LOWER, "validation loss before training"},
    {"val_loss", METRIC_LOWER, "validation loss after training"},
    {"perplexity", METRIC_LOWER, "validation perplexity after training"},
    {"train_seconds", METRIC_LOWER, "seconds spent training"},
    {"tokens_per_s", METRIC_HIGHER, "training throughput"},
    {"activation_mb", METRIC_LOWER, "planned activation memory"},
    {"device_peak_mb", METRIC_LOWER, "peak of the run's own device allocations (GPU)"},
    {"device_used_mb", METRIC_LOWER, "device memory the whole process holds after training (GPU)"},
    {"dense_weights_mb", METRIC_NEITHER, "base weights kept dequantized (dense_weights; 0: dequantized in each pass)"},
    {"resumed_from_step", METRIC_NEITHER, "the checkpoint step a resumed run started from"},
    {0}};

const stage_kind stage_kind_train = {
    .name = "train",
    .version = 1,
    .doc = "train a LoRA adapter on a dataset (AdamW, accumulation, schedules, checkpoints and resume)",
    .params = train_params,
    .check = train_check,
    .run = train_run_stage,
    .key_hooks = "lr",
    .device_dependent = true,
    .data_parallel = true,
    .ranks_in_key = true,
    .metrics = train_metrics,
};
