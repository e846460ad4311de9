/* llama_plan.c: the activation plan a run asks for by mode and memory budget (see llama.h; what
 * is counted and chosen, for users: docs/memory.md).
 * The model's own knobs (mlp_chunk_rows) and the backend's scratch cap are set here, so the
 * training stage only says what it wants and reports what was chosen. */
#include <math.h>
#include <unistd.h>

#include "core/err.h"
#include "model/device.h"
#include "model/llama.h"

/* the ops' scratch beside the plan on a GPU (dequantized weight or its cap, LoRA copies and the
 * fused LoRA kernels' partial sums, or the dropout input on the GEMM path of ranks over 64,
 * attention's and the cross-entropy's buffers, cuBLAS's workspace): a margin the auto choice keeps
 * free */
#define GPU_SCRATCH_MARGIN (1024.0 * 1048576.0)

static double device_free_bytes(const ops_table *ops) {
    device_info di;
    device_info_get(ops, &di);
    return di.free_bytes;
}

/* deterministic mode on a backend whose attention backward keeps a workspace of 2 h s^2 bytes a
 * sequence (up to its cap; at most 2 h T^2 for T tokens in all): that workspace */
static double det_attn_workspace(const llama_model *m, int max_T) {
    device_info di;
    device_info_get(m->ops, &di);
    if (!di.deterministic || di.det_attn_workspace_cap <= 0) return 0;
    return fmin(di.det_attn_workspace_cap, 2.0 * m->nh * (double)max_T * (double)max_T);
}

/* attention's own workspace on a device, outside deterministic mode: cuDNN's plans, asked of the
 * backend (with grouped-query heads its backward keeps dK and dV for every q head, 4 h d bytes a
 * token; the H100 sitting of 2026-12-05 found 8,192 bytes a token more than planned on Llama-3-8B
 * and 24,576 on the 70B shape, where the plan had counted only the mma kernels' fp32 dk, dv) */
static const double *g_aws_line; /* set during llama_plan_longest's search (see there) */

static double attn_workspace(const llama_model *m, int T) {
    if (!m->ops->own_memory || !m->ops->attn_workspace || T <= 0) return 0;
    if (g_aws_line) return fmax(0, g_aws_line[0] + (g_aws_line[1] - g_aws_line[0]) * (T - 4096) / 4096.0);
    int windowed = 0;
    for (int l = 0; l < m->L && !windowed; l++) windowed = config_layer_window(&m->cfg, l) > 0;
    return m->ops->attn_workspace(T, m->nh, m->nkv, m->hd, windowed);
}

double llama_attn_slot_bytes(const llama_model *m, int T) {
    double dkv = m->nkv < m->nh ? 8.0 * m->nkv * m->hd * (double)T : 0;
    return fmax(dkv, attn_workspace(m, T));
}

/* the ops' scratch on a GPU that grows with the tokens of a pass (kernels/cuda/common.cuh's slots,
 * summed though some share one; llama.h): attention's fp32 dq, its row sums and its slot,
 * with lora_dropout the LoRA branch's dropout input at the widest input a LoRA targets (bf16; in
 * the backward the same buffer then takes (dy B) A: one [T, in] buffer, not two, as the H100 of
 * 2026-12-05 measured it; without dropout (dy B) A goes straight into dx), and xa, bf16 twice;
 * the fixed-size rest is in GPU_SCRATCH_MARGIN. The ops allocate it in the first pass, after the
 * choices made here. */
double llama_token_scratch_bytes(const llama_model *m, int T) {
    double in_max = 0;
    for (int t = 0; t < LLAMA_NTARGETS; t++)
        if (m->layers[0].lin[t].lora.A) in_max = fmax(in_max, (double)m->layers[0].lin[t].in);
    double drop_x = m->lora.dropout > 0 ? 2.0 * in_max : 0;
    double per = 4.0 * m->nh * m->hd + 4.0 * m->nh + drop_x + 4.0 * m->lora.r;
    return per * T + llama_attn_slot_bytes(m, T);
}

/* the cap on cuDNN's workspace: the slot the plan counted for T tokens and what the plan leaves
 * free beside it, so a batch whose layout would take more runs within the plan
 * (attn_workspace_cap_set) */
static void attn_workspace_cap(const llama_model *m, int T, double slack) {
    if (m->ops->attn_workspace_cap_set) m->ops->attn_workspace_cap_set(fmax(1, llama_attn_slot_bytes(m, T) + fmax(0, slack)));
}

/* a checkpointed plan on a device with the model's current knobs (mlp_chunk_rows,
 * offload_inputs, and with lean the scratch cap): its activations, the largest dequantized weight
 * (or the cap), the ops' scratch that grows with the tokens, deterministic attention's workspace
 * and half the ops' margin */
static double checkpointed_need(const llama_model *m, int max_T, bool lean) {
    double wmax = 0;
    for (int t = 0; t < LLAMA_NTARGETS; t++)
        wmax = fmax(wmax, 2.0 * (double)m->layers[0].lin[t].in * (double)m->layers[0].lin[t].out);
    if (lean) wmax = fmin(wmax, (double)DEVICE_LEAN_SCRATCH);
    return (double)llama_plan_bytes(m, max_T, LLAMA_CKPT_EVERY) + wmax + llama_token_scratch_bytes(m, max_T) +
           det_attn_workspace(m, max_T) + 0.5 * GPU_SCRATCH_MARGIN;
}

/* the plan without checkpointing: its activations, deterministic attention's workspace and, on a
 * device, the ops' scratch that grows with the tokens */
static double plain_need(const llama_model *m, int max_T) {
    return (double)llama_plan_bytes(m, max_T, LLAMA_CKPT_NONE) + det_attn_workspace(m, max_T) +
           (m->ops->own_memory ? llama_token_scratch_bytes(m, max_T) : 0);
}

double llama_budget_gib(double bytes) { return ceil(bytes / 1073741824.0 * 100.0) / 100.0; }

/* what LLAMA_HOST_PIN_SHARE (llama.h) lets the offloaded inputs take, INFINITY when the host's
 * RAM is not known. Read once a plan: MemAvailable moves, and a search that read it at every
 * length it asks would see another host each time. */
static double host_pin_room(const llama_model *m) {
    double avail = device_host_free_bytes(m->ops);
    return avail > 0 ? LLAMA_HOST_PIN_SHARE * (avail + (double)m->host_act_bytes) : INFINITY;
}

/* the checkpointed plan of max_T tokens in room bytes on a device: the layer inputs go to host
 * memory (offload auto; when the host holds them) when the plain checkpointed plan does not fit,
 * then the lean knobs, then deterministic attention's workspace gives way (its backward in more,
 * smaller calls; none left: the fixed-order mma kernels, which take none). Sets m->offload_inputs and m->mlp_chunk_rows,
 * *lean and *det_keep (> 0: that workspace lowered to it), *unlean (may be NULL; with *lean what the
 * plan without the lean knobs needs, else 0), and *host_short (may be NULL) when the offload was
 * wanted but the inputs are over host_room (host_pin_room); returns what the plan needs. */
static double checkpointed_choose(llama_model *m, int max_T, llama_offload_mode offload, double room,
                                  double host_room, bool *lean, double *unlean, double *det_keep, bool *host_short) {
    m->offload_inputs = offload == LLAMA_OFFLOAD_ON && m->ops->side_copy;
    m->mlp_chunk_rows = max_T;
    bool want = checkpointed_need(m, max_T, false) > room && offload == LLAMA_OFFLOAD_AUTO && m->ops->side_copy;
    bool holds = want && (double)llama_offload_host_bytes(m, max_T) <= host_room;
    if (host_short) *host_short = want && !holds;
    if (holds) m->offload_inputs = true;
    double whole = checkpointed_need(m, max_T, false); /* the plan without the lean knobs */
    *lean = whole > room;
    if (unlean) *unlean = *lean ? whole : 0;
    if (*lean) m->mlp_chunk_rows = LLAMA_MLP_CHUNK_ROWS;
    double need = checkpointed_need(m, max_T, *lean), ws = det_attn_workspace(m, max_T);
    *det_keep = 0;
    if (need > room && ws > 0 && m->ops->det_workspace_cap_set) {
        double keep = ws - (need - room); /* what is left of it (1 byte: none) */
        *det_keep = keep > 1 ? keep : 1;
        need -= ws - (keep > 1 ? keep : 0);
    }
    return need;
}

/* the checkpointed plan of T tokens fits room, and host_room its offloaded inputs (llama_plan_longest) */
static bool fits_in(llama_model *m, int T, llama_offload_mode offload, double room, double host_room) {
    bool lean;
    double keep;
    return checkpointed_choose(m, T, offload, room, host_room, &lean, NULL, &keep, NULL) <= room &&
           (!m->offload_inputs || (double)llama_offload_host_bytes(m, T) <= host_room);
}

int llama_plan_longest(llama_model *m, double budget, llama_offload_mode offload, int step, int max_T,
                       llama_plan_choice *out) {
    llama_plan_choice ch = {0};
    if (out) *out = ch;
    if (!m->ops->own_memory || budget <= 0 || step <= 0) return 0;
    int rows = m->mlp_chunk_rows;
    bool offl = m->offload_inputs;
    if (m->ops->det_workspace_cap_set) m->ops->det_workspace_cap_set(0); /* as a new plan starts */
    /* the search asks at lengths no run plans (a cuDNN plan takes 0.1-1 s to build): attention's
     * workspace on the line through the backend's answers at 4,096 and 8,192 tokens, which also
     * loads its library before what is in use is read. The length found is then asked for: where
     * it does not fit, the line is moved by what it missed there and the search runs again below
     * it (three times at most); then lengths are asked for one by one: up from the one found in
     * doubling steps until one does not fit, and the gap between halved. */
    double line[2] = {attn_workspace(m, 4096), attn_workspace(m, 8192)};
    ch.in_use_bytes = device_used_bytes(m->ops);
    double room = budget - ch.in_use_bytes, host_room = host_pin_room(m);
    int top = max_T / step, lo = 0, hi = top, bad = top + 1; /* bad: steps known not to fit (top + 1: none) */
    for (int round = 0; round < 3; round++) {
        g_aws_line = line;
        while (lo < hi) { /* the need grows with the tokens at every knob */
            int mid = lo + (hi - lo + 1) / 2;
            if (fits_in(m, mid * step, offload, room, host_room)) lo = mid;
            else hi = mid - 1;
        }
        double on_line = attn_workspace(m, lo * step);
        g_aws_line = NULL;
        if (lo == 0 || fits_in(m, lo * step, offload, room, host_room)) break;
        bad = lo;
        double miss = attn_workspace(m, lo * step) - on_line;
        line[0] += miss, line[1] += miss;
        hi = lo - 1, lo = 0;
    }
    if (bad > top) { /* no length is known not to fit: from the one found, up in doubling steps */
        int d = 1;
        while (lo + d <= top && fits_in(m, (lo + d) * step, offload, room, host_room)) lo += d, d *= 2;
        bad = lo + d <= top ? lo + d : top + 1;
    }
    while (bad - lo > 1) {
        int mid = lo + (bad - lo) / 2;
        if (fits_in(m, mid * step, offload, room, host_room)) lo = mid;
        else bad = mid;
    }
    if (lo > 0) {
        int T = lo * step;
        ch.need_bytes = checkpointed_choose(m, T, offload, room, host_room, &ch.lean, &ch.unlean_bytes,
                                            &ch.det_ws_bytes, &ch.host_short);
        ch.offload = m->offload_inputs;
        ch.attn_ws_bytes = attn_workspace(m, T);
    }
    ch.budget_bytes = room;
    m->mlp_chunk_rows = rows, m->offload_inputs = offl;
    if (out) *out = ch;
    return lo * step;
}

int llama_plan_auto(llama_model *m, int max_T, llama_plan_mode mode, llama_offload_mode offload, double budget,
                    llama_plan_choice *out) {
    llama_plan_choice ch = {0};
    llama_checkpointing ck = mode == LLAMA_PLAN_EVERY ? LLAMA_CKPT_EVERY : LLAMA_CKPT_NONE;
    bool dev = m->ops->own_memory, given = budget > 0;
    if (m->ops->det_workspace_cap_set) m->ops->det_workspace_cap_set(0); /* the default, unless lowered below */
    if (m->ops->attn_workspace_cap_set) m->ops->attn_workspace_cap_set(0);
    /* asked first: the backend may load its attention library (device memory in use) to answer */
    ch.attn_ws_bytes = attn_workspace(m, max_T);
    if (budget > 0 && dev) {
        /* on a device the budget is the whole process's memory: what is in use already (the CUDA
         * context, the weights, the LoRA state) comes off it before the activations */
        ch.in_use_bytes = device_used_bytes(m->ops);
        budget -= ch.in_use_bytes;
        if (budget <= 0)
            return err_set(ERR_STAGE, "memory_budget %.2f GiB is below what the model already uses on the device "
                                      "(%.2f GiB: CUDA context, frozen weights, LoRA state); raise it",
                           (budget + ch.in_use_bytes) / 1073741824.0, ch.in_use_bytes / 1073741824.0);
    }
    if (mode == LLAMA_PLAN_AUTO) {
        if (budget <= 0 && dev) { /* what the device has left after the weights and LoRA state */
            budget = device_free_bytes(m->ops) - GPU_SCRATCH_MARGIN;
        } else if (budget <= 0) {
            long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
            budget = pages > 0 && psz > 0 ? 0.5 * (double)pages * (double)psz : 4.0 * 1073741824.0;
        }
        ch.plain_bytes = plain_need(m, max_T);
        if (ch.plain_bytes > budget) {
            ch.over_budget = true;
            ck = LLAMA_CKPT_EVERY;
        }
    }
    ch.budget_bytes = budget;
    /* Checkpointing on a device: the lean knobs save a few hundred MB and cost some speed, so
     * they are taken only when the plain checkpointed plan would not fit the budget (or the
     * device's free memory). */
    m->offload_inputs = ck == LLAMA_CKPT_EVERY && offload == LLAMA_OFFLOAD_ON && m->ops->side_copy;
    double room = budget; /* what the plan is counted against (0: nothing to count against) */
    if (ck == LLAMA_CKPT_NONE)
        ch.need_bytes = mode == LLAMA_PLAN_AUTO ? ch.plain_bytes : plain_need(m, max_T);
    if (ck == LLAMA_CKPT_EVERY && dev) {
        room = budget > 0 ? budget : device_free_bytes(m->ops);
        double pin = (double)llama_offload_host_bytes(m, max_T), pin_room = host_pin_room(m);
        double need = checkpointed_choose(m, max_T, offload, room, pin_room, &ch.lean, &ch.unlean_bytes,
                                          &ch.det_ws_bytes, &ch.host_short);
        if (ch.det_ws_bytes > 0) m->ops->det_workspace_cap_set(ch.det_ws_bytes);
        ch.need_bytes = need;
        ch.host_pin_bytes = pin, ch.host_room_bytes = pin_room;
        /* the inputs the plan must keep on the host do not fit there: said now, not found out
         * by a failed pinned allocation (with offload auto they stay on the device, below) */
        if (m->offload_inputs && pin > pin_room)
            return err_set(ERR_STAGE,
                           "activation_offload: on keeps the layer inputs of a %d-token micro-batch in pinned host "
                           "memory, %.2f GiB: over the %.2f GiB the host can give (%.0f%% of its available RAM); "
                           "lower sequence_len or micro_batch_size, or let activation_offload be auto",
                           max_T, pin / 1073741824.0, pin_room / 1073741824.0, 100.0 * LLAMA_HOST_PIN_SHARE);
        /* a memory_budget that even the leanest plan misses: said now, not found out by the
         * device (or not at all, on a device larger than the budget) */
        if (given && need > room) {
            bool offl = m->offload_inputs;
            int fits = llama_plan_longest(m, room + ch.in_use_bytes, offload, 1, max_T, NULL);
            char most[96] = "", host[192] = "";
            if (fits > 0) snprintf(most, sizeof most, " (at most %d tokens a micro-batch fit)", fits);
            if (ch.host_short)
                snprintf(host, sizeof host,
                         " (its layer inputs stay on the device: on the host they would take %.2f GiB of pinned "
                         "memory, over the %.2f GiB the host can give)",
                         pin / 1073741824.0, pin_room / 1073741824.0);
            return err_set(ERR_STAGE,
                           "a micro-batch of %d tokens needs about %.2f GiB of device memory with every layer "
                           "checkpointed%s%s, beside the %.2f GiB in use: over memory_budget %.2f GiB; lower "
                           "sequence_len or micro_batch_size%s%s, or raise memory_budget to %.2fGB",
                           max_T, need / 1073741824.0, offl ? " and its inputs on the host" : "", host,
                           ch.in_use_bytes / 1073741824.0, (room + ch.in_use_bytes) / 1073741824.0, most,
                           offload == LLAMA_OFFLOAD_OFF && m->ops->side_copy ? " (or let activation_offload be auto)"
                                                                              : "",
                           llama_budget_gib(need + ch.in_use_bytes));
        }
    }
    if (dev && room > 0) attn_workspace_cap(m, max_T, room - ch.need_bytes);
    device_lean_scratch(m->ops, ch.lean);
    int rc = llama_plan(m, max_T, ck);
    if (rc && dev && ck == LLAMA_CKPT_NONE && mode == LLAMA_PLAN_AUTO) { /* the device said no: the lean plan */
        err_clear();
        ch.device_refused = true;
        ch.lean = true;
        attn_workspace_cap(m, max_T, 0);
        device_lean_scratch(m->ops, true);
        m->mlp_chunk_rows = LLAMA_MLP_CHUNK_ROWS;
        m->offload_inputs = offload == LLAMA_OFFLOAD_ON && m->ops->side_copy;
        rc = llama_plan(m, max_T, LLAMA_CKPT_EVERY);
    }
    ch.offload = m->offload_inputs && m->ckpt == LLAMA_CKPT_EVERY;
    if (out) *out = ch;
    return rc;
}

int llama_dense_auto(llama_model *m, llama_dense_mode mode, double budget, llama_dense_choice *out) {
    llama_dense_choice ch = {.need_bytes = (double)llama_dense_bytes(m)};
    int64_t limit = mode == LLAMA_DENSE_ON ? INT64_MAX : 0;
    if (mode == LLAMA_DENSE_AUTO && m->ops->own_memory && m->ops->nf4_dequant) {
        device_info di;
        device_info_get(m->ops, &di);
        /* the weights, the plan and the KV cache are allocated already: what is in use counts
         * against the budget; the ops' scratch keeps its margin either way */
        double room = di.free_bytes + (double)m->dense_bytes; /* a copy kept before is given back first */
        if (budget > 0) room = fmin(room, budget - device_used_bytes(m->ops) + (double)m->dense_bytes);
        /* the first pass over the plan's tokens allocates the ops' scratch (and, in deterministic
         * mode, attention backward's workspace): kept free */
        if (m->plan_T > 0) room -= llama_token_scratch_bytes(m, m->plan_T) + det_attn_workspace(m, m->plan_T);
        ch.room_bytes = room - GPU_SCRATCH_MARGIN;
        /* what does not fit whole is kept in part: as many linears as fit, layer by layer (each
         * saves its share of the dequantization) */
        limit = (int64_t)fmax(0, fmin(ch.room_bytes, ch.need_bytes));
    }
    int rc = mode == LLAMA_DENSE_ON ? llama_dense_weights(m, true) : llama_dense_weights_within(m, limit);
    ch.kept_bytes = rc ? 0 : (double)m->dense_bytes;
    ch.kept = ch.kept_bytes > 0;
    /* what the copy leaves free is what attention's workspace may take beyond its count */
    if (!rc && mode == LLAMA_DENSE_AUTO && m->ops->own_memory && m->ops->nf4_dequant)
        attn_workspace_cap(m, m->plan_T, ch.room_bytes - ch.kept_bytes);
    if (out) *out = ch;
    return rc;
}
