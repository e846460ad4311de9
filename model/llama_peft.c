/* llama_peft.c: PEFT adapters <-> the engine's flat LoRA buffer (see llama_peft.h). */
#include "llama_peft.h"

#include <stdio.h>
#include <string.h>

#include "core/err.h"

#include "kernels/cuda/cuda_ext.h"
#include "kernels/cuda/device.h"

/* The CUDA extras are defined only in builds with the CUDA kernels: without them a weak reference
 * reads NULL. With them the references must be strong: the kernels are a static library, and a
 * weak reference alone does not pull a member out of an archive, so qlora-run would link without
 * its GPU backend (ops_cpu.c defines ops_cuda() returning NULL in builds without CUDA). */
#ifndef QLORA_HAVE_CUDA
#pragma weak cuda_device_query
#pragma weak cuda_mem_stats
#pragma weak cuda_attention_selected
#pragma weak cuda_attention_name
#pragma weak cuda_scratch_cap_set
#pragma weak cuda_scratch_cap
#define HAVE_FN(f) ((f) != NULL)
#else
#define HAVE_FN(f) 1
#endif

static int module_target(const char *module) {
    for (int t = 0; t < LLAMA_NTARGETS; t++) {
        const char *p = llama_target_path((llama_target)t);
        size_t lm = strlen(module), lp = strlen(p);
        if (lm > lp && module[lm - lp - 1] == '.' && !strcmp(module + lm - lp, p)) return t;
    }
    return -1;
}

int llama_peft_attach(llama_model *m, const peft_adapter *a, const char *where) {
    llama_lora_config lc = {.r = a->r, .alpha = (float)a->alpha, .dropout = (float)a->dropout,
                            .rslora = a->use_rslora, .targets = 0};
    for (size_t i = 0; i < a->n_lora; i++) {
        int t = module_target(a->lora[i].module);
        if (t < 0) return err_set(ERR_DATA, "'%s': module '%s' is not a linear of a %s model", where, a->lora[i].module,
                                  config_arch_name(m->cfg.arch));
        if (a->lora[i].r != a->r)
            return err_set(ERR_DATA, "'%s': module '%s' has rank %d but the adapter's r is %d (rank_pattern is not supported)",
                           where, a->lora[i].module, a->lora[i].r, a->r);
        lc.targets |= 1u << t;
    }
    int rc = llama_lora_attach(m, &lc);
    if (rc) return err_wrap("'%s'", where);
    /* every tensor of the engine must come from the adapter, and no adapter tensor may be left over */
    if ((size_t)m->n_lora_tensors != 2 * a->n_lora)
        return err_set(ERR_DATA, "'%s': %zu LoRA modules, but its targets select %d linears of the model "
                                 "(an adapter for some layers only is not supported)",
                       where, a->n_lora, m->n_lora_tensors / 2);
    return llama_peft_upload(m, a, where);
}

int llama_peft_upload(llama_model *m, const peft_adapter *a, const char *where) {
    for (size_t i = 0; i < a->n_lora; i++) {
        const peft_lora *l = &a->lora[i];
        for (int isB = 0; isB < 2; isB++) {
            char name[200];
            snprintf(name, sizeof name, "base_model.model.%s.lora_%c.weight", l->module, isB ? 'B' : 'A');
            const llama_lora_tensor *t = llama_lora_find(m, name);
            int64_t rows = isB ? l->out : l->r, cols = isB ? l->r : l->in;
            if (!t) return err_set(ERR_DATA, "'%s': the model has no LoRA tensor '%s'", where, name);
            if (t->rows != rows || t->cols != cols)
                return err_set(ERR_DATA, "'%s': '%s' is [%lld, %lld] but the model needs [%lld, %lld]", where, name,
                               (long long)rows, (long long)cols, (long long)t->rows, (long long)t->cols);
            m->ops->upload(m->lora_params + t->offset, isB ? l->B : l->A, (size_t)(rows * cols) * sizeof(float));
        }
    }
    m->ops->sync();
    return 0;
}

void llama_peft_zero(llama_model *m) {
    m->ops->zero(m->lora_params, (size_t)m->n_lora_params * sizeof(float));
    m->ops->sync();
}

int llama_peft_read(const llama_model *m, peft_adapter *a) {
    m->ops->sync();
    for (size_t i = 0; i < a->n_lora; i++) {
        peft_lora *l = &a->lora[i];
        for (int isB = 0; isB < 2; isB++) {
            char name[200];
            snprintf(name, sizeof name, "base_model.model.%s.lora_%c.weight", l->module, isB ? 'B' : 'A');
            const llama_lora_tensor *t = llama_lora_find(m, name);
            if (!t || t->rows * t->cols != (isB ? l->out * l->r : l->r * l->in))
                return err_set(ERR_STAGE, "LoRA tensor '%s' is missing from the model", name);
            m->ops->download(isB ? l->B : l->A, m->lora_params + t->offset, (size_t)(t->rows * t->cols) * sizeof(float));
        }
    }
    return 0;
}

int device_ops(const char *device, const ops_table **out) {
    const ops_table *cuda = ops_cuda();
    if (!device || !strcmp(device, "cpu")) {
        *out = ops_cpu();
    } else if (!strcmp(device, "cuda")) {
        if (!cuda) return err_set(ERR_STAGE, "device 'cuda' requested but no CUDA device is usable (built without "
                                             "CUDA, or no GPU): use device: cpu");
        *out = cuda;
    } else if (!strcmp(device, "auto")) {
        *out = cuda ? cuda : ops_cpu();
    } else {
        return err_set(ERR_USAGE, "unknown device '%s' (cpu, cuda or auto)", device);
    }
    return 0;
}

void device_info_get(const ops_table *ops, device_info *out) {
    memset(out, 0, sizeof *out);
    out->attention = "";
    snprintf(out->name, sizeof out->name, "%s", ops->name);
    if (strcmp(ops->name, "cuda") || !HAVE_FN(cuda_device_query)) return;
    cuda_device_info d;
    if (cuda_device_query(&d) == 0 && d.count > 0) {
        snprintf(out->name, sizeof out->name, "%s", d.name);
        out->total_bytes = (double)d.total_bytes;
        out->free_bytes = (double)d.free_bytes;
    }
    if (HAVE_FN(cuda_mem_stats)) {
        size_t live = 0, peak = 0;
        cuda_mem_stats(&live, &peak);
        out->live_bytes = (double)live;
        out->peak_bytes = (double)peak;
    }
    if (HAVE_FN(cuda_attention_selected) && HAVE_FN(cuda_attention_name)) out->attention = cuda_attention_name(cuda_attention_selected());
    if (HAVE_FN(cuda_scratch_cap)) out->scratch_cap = cuda_scratch_cap();
}

void device_lean_scratch(const ops_table *ops, bool lean) {
    if (!strcmp(ops->name, "cuda") && HAVE_FN(cuda_scratch_cap_set)) cuda_scratch_cap_set(lean ? DEVICE_LEAN_SCRATCH : 0);
}
