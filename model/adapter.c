/* adapter.c: check a PEFT adapter against a model config (see adapter.h). */
#include "adapter.h"

#include <stdlib.h>
#include <string.h>

#include "core/err.h"

int adapter_validate(const peft_adapter *a, const model_config *c, const char *where) {
    for (size_t i = 0; i < a->n_lora; i++) {
        const peft_lora *l = &a->lora[i];
        int64_t out, in;
        if (config_linear_shape(c, l->module, &out, &in)) return err_wrap("adapter '%s'", where);
        if (l->in != in || l->out != out)
            return err_set(ERR_DATA, "adapter '%s': '%s' has lora_A [%d, %lld] and lora_B [%lld, %d], but the base model's layer is %lld -> %lld "
                                     "(was the adapter trained on another base model?)",
                           where, l->module, l->r, (long long)l->in, (long long)l->out, l->r, (long long)in, (long long)out);
        if (!a->target_regex && a->n_targets) {
            bool hit = false;
            for (size_t t = 0; t < a->n_targets && !hit; t++) hit = peft_target_matches(a->targets[t], l->module);
            if (!hit) return err_set(ERR_DATA, "adapter '%s': module '%s' is not selected by target_modules", where, l->module);
        }
    }
    if (a->target_regex) return 0;
    config_tensor *ts = NULL;
    size_t n = 0;
    int rc = config_tensors(c, &ts, &n);
    if (rc) return rc;
    for (size_t t = 0; t < a->n_targets && !rc; t++) {
        bool hit = false;
        for (size_t k = 0; k < n && !hit; k++) {
            if (ts[k].role != TROLE_LINEAR && ts[k].role != TROLE_LM_HEAD) continue;
            char mod[96];
            snprintf(mod, sizeof mod, "%.*s", (int)(strlen(ts[k].name) - strlen(".weight")), ts[k].name);
            hit = peft_target_matches(a->targets[t], mod);
        }
        if (!hit)
            rc = err_set(ERR_DATA, "adapter '%s': target module '%s' matches no linear layer of this %s model "
                                   "(q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, lm_head)",
                         where, a->targets[t], config_arch_name(c->arch));
    }
    free(ts);
    return rc;
}
