/* llama_plan.c: the activation plan a run asks for by mode and memory budget (see llama.h).
 * The model's own knobs (mlp_chunk_rows) and the backend's scratch cap are set here, so the
 * training stage only says what it wants and reports what was chosen. */
#include <math.h>
#include <unistd.h>

#include "core/err.h"
#include "model/device.h"
#include "model/llama.h"

/* the ops' scratch beside the plan on a GPU (dequantized weight or its cap, LoRA copies, the
 * dropout input, attention's and the cross-entropy's buffers, cuBLAS's workspace): a margin the
 * auto choice keeps free */
#define GPU_SCRATCH_MARGIN (1024.0 * 1048576.0)

static double device_free_bytes(const ops_table *ops) {
    device_info di;
    device_info_get(ops, &di);
    return di.free_bytes;
}

int llama_plan_auto(llama_model *m, int max_T, llama_plan_mode mode, double budget, llama_plan_choice *out) {
    llama_plan_choice ch = {0};
    llama_checkpointing ck = mode == LLAMA_PLAN_EVERY ? LLAMA_CKPT_EVERY : LLAMA_CKPT_NONE;
    bool dev = m->ops->own_memory;
    if (mode == LLAMA_PLAN_AUTO) {
        if (budget <= 0 && dev) { /* what the device has left after the weights and LoRA state */
            budget = device_free_bytes(m->ops) - GPU_SCRATCH_MARGIN;
        } else if (budget <= 0) {
            long pages = sysconf(_SC_PHYS_PAGES), psz = sysconf(_SC_PAGESIZE);
            budget = pages > 0 && psz > 0 ? 0.5 * (double)pages * (double)psz : 4.0 * 1073741824.0;
        }
        ch.plain_bytes = (double)llama_plan_bytes(m, max_T, LLAMA_CKPT_NONE);
        if (ch.plain_bytes > budget) {
            ch.over_budget = true;
            ck = LLAMA_CKPT_EVERY;
        }
    }
    ch.budget_bytes = budget;
    /* Checkpointing on a device: the lean knobs save a few hundred MB and cost some speed, so
     * they are taken only when the plain checkpointed plan would not fit the budget (or the
     * device's free memory). */
    if (ck == LLAMA_CKPT_EVERY && dev) {
        m->mlp_chunk_rows = max_T;
        double wmax = 0;
        for (int t = 0; t < LLAMA_NTARGETS; t++)
            wmax = fmax(wmax, 2.0 * (double)m->layers[0].lin[t].in * (double)m->layers[0].lin[t].out);
        double need = (double)llama_plan_bytes(m, max_T, LLAMA_CKPT_EVERY) + wmax + 0.5 * GPU_SCRATCH_MARGIN;
        double room = budget > 0 ? budget : device_free_bytes(m->ops);
        ch.lean = need > room;
        if (ch.lean) m->mlp_chunk_rows = LLAMA_MLP_CHUNK_ROWS;
    }
    device_lean_scratch(m->ops, ch.lean);
    int rc = llama_plan(m, max_T, ck);
    if (rc && dev && ck == LLAMA_CKPT_NONE && mode == LLAMA_PLAN_AUTO) { /* the device said no: the lean plan */
        err_clear();
        ch.device_refused = true;
        ch.lean = true;
        device_lean_scratch(m->ops, true);
        m->mlp_chunk_rows = LLAMA_MLP_CHUNK_ROWS;
        rc = llama_plan(m, max_T, LLAMA_CKPT_EVERY);
    }
    if (out) *out = ch;
    return rc;
}
