/* llama_trainer.c: the engine behind trainer_model (see llama_trainer.h). */
#include "train/llama_trainer.h"

#include "core/err.h"

static llama_batch to_llama(const train_batch *b) {
    return (llama_batch){.ids = b->ids, .labels = b->labels, .seq_start = b->seq_start, .T = b->T};
}

static int engine_step(void *self, const train_batch *b, float grad_scale, uint64_t dropout_seed, double *loss_sum) {
    llama_batch lb = to_llama(b);
    int64_t nt = 0;
    int rc = llama_forward_backward(self, &lb, grad_scale, dropout_seed, loss_sum, &nt);
    /* the trainer normalised by its own count: the two must agree on which tokens carry a loss */
    if (!rc && nt != b->n_targets)
        return err_set(ERR_STAGE, "internal: the model counted %lld target tokens, the trainer %lld", (long long)nt,
                       (long long)b->n_targets);
    return rc;
}

static int engine_eval(void *self, const train_batch *b, double *loss_sum) {
    llama_batch lb = to_llama(b);
    int64_t nt = 0;
    return llama_forward_loss(self, &lb, loss_sum, &nt, NULL);
}

static void engine_set_layer_done(void *self, void (*cb)(void *ud, int layer), void *ud) {
    llama_model *m = self;
    m->layer_done = cb;
    m->layer_done_ud = ud;
}

void llama_trainer_bind(llama_model *m, trainer_model *tm) {
    *tm = (trainer_model){.self = m, .n_params = m->n_lora_params, .params = m->lora_params, .grads = m->lora_grads,
                          .adam_m = m->lora_m, .adam_v = m->lora_v, .train_step = engine_step,
                          .eval_loss = engine_eval, .n_layers = m->lora_layer_off ? m->L : 0,
                          .layer_off = m->lora_layer_off, .set_layer_done = engine_set_layer_done};
}
