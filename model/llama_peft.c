/* llama_peft.c: PEFT adapters <-> the engine's flat LoRA buffer (see llama_peft.h). */
#include "llama_peft.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/err.h"

static int module_target(const model_config *c, const char *module) {
    for (int t = 0; t < LLAMA_NTARGETS; t++) {
        const char *p = llama_target_module(c, (llama_target)t); /* phi3: qkv_proj, gate_up_proj */
        if (!p) continue;
        size_t lm = strlen(module), lp = strlen(p);
        if (lm > lp && module[lm - lp - 1] == '.' && !strcmp(module + lm - lp, p)) return t;
    }
    return -1;
}

int llama_peft_attach(llama_model *m, const peft_adapter *a, const char *where) {
    llama_lora_config lc = {.r = a->r, .alpha = (float)a->alpha, .dropout = (float)a->dropout,
                            .rslora = a->use_rslora, .targets = 0};
    for (size_t i = 0; i < a->n_lora; i++) {
        int t = module_target(&m->cfg, a->lora[i].module);
        if (t < 0) return err_set(ERR_DATA, "'%s': module '%s' is not a linear of a %s model", where, a->lora[i].module,
                                  config_arch_name(m->cfg.arch));
        if (a->lora[i].r != a->r)
            return err_set(ERR_DATA, "'%s': module '%s' has rank %d but the adapter's r is %d (rank_pattern is not supported)",
                           where, a->lora[i].module, a->lora[i].r, a->r);
        for (int u = 0; u < LLAMA_NTARGETS; u++) /* a fused module: all its blocks */
            if ((int)llama_target_group(&m->cfg, (llama_target)u) == t) lc.targets |= 1u << u;
    }
    int rc = llama_lora_attach(m, &lc);
    if (rc) return err_wrap("'%s'", where);
    /* every tensor of the engine must come from the adapter, and no adapter tensor may be left over */
    if ((size_t)m->n_lora_tensors != 2 * a->n_lora) {
        /* most often an adapter made for another model: say which layers it covers */
        int top = -1, n_in = 0;
        for (size_t i = 0; i < a->n_lora; i++) {
            const char *l = strstr(a->lora[i].module, "layers.");
            int k = l ? atoi(l + 7) : -1;
            if (k > top) top = k;
        }
        for (int k = 0; k <= top; k++) {
            char pat[32];
            snprintf(pat, sizeof pat, "layers.%d.", k);
            for (size_t i = 0; i < a->n_lora; i++)
                if (strstr(a->lora[i].module, pat)) { n_in++; break; }
        }
        if (top + 1 != m->cfg.num_layers || n_in != m->cfg.num_layers)
            return err_set(ERR_DATA, "'%s': the adapter has LoRA weights for %d layer%s (highest layers.%d) but the model "
                                     "has %d layers: it was made for another model (use the base it was trained on)",
                           where, n_in, n_in == 1 ? "" : "s", top, m->cfg.num_layers);
        return err_set(ERR_DATA, "'%s': %zu LoRA modules, but its targets select %d linears of the model "
                                 "(an adapter for some layers only is not supported)",
                       where, a->n_lora, m->n_lora_tensors / 2);
    }
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
