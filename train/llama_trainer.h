/* llama_trainer.h: the engine's model (model/llama.h) as a trainer_model (model/trainer.h):
 * train_step = llama_forward_backward, eval_loss = llama_forward_loss, params/grads/AdamW
 * state = the model's flat LoRA buffers. The binding borrows m (no ownership). */
#ifndef MODEL_LLAMA_TRAINER_H
#define MODEL_LLAMA_TRAINER_H

#include "model/llama.h"
#include "train/trainer.h"

void llama_trainer_bind(llama_model *m, trainer_model *tm);

#endif
