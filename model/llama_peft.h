/* llama_peft.h: a PEFT adapter in and out of the engine's one contiguous LoRA buffer.
 *
 * llama_peft_attach creates the model's LoRA tensors from the adapter's r, alpha, dropout,
 * rslora and targets and uploads every A and B to its offset in lora_params; llama_peft_read
 * downloads them back into the adapter's A/B (same modules, same shapes), ready for
 * peft_adapter_save. An adapter whose modules do not cover every targeted linear of every
 * layer, or that uses per-module ranks, is an ERR_DATA naming the module. */
#ifndef MODEL_LLAMA_PEFT_H
#define MODEL_LLAMA_PEFT_H

#include <stdbool.h>
#include <stddef.h>

#include "formats/peft.h"
#include "kernels/ops.h"
#include "model/llama.h"

int llama_peft_attach(llama_model *m, const peft_adapter *a, const char *where);
int llama_peft_read(const llama_model *m, peft_adapter *a);
/* after attach: load another adapter of the same shape (ERR_DATA naming a mismatch) */
int llama_peft_upload(llama_model *m, const peft_adapter *a, const char *where);
/* zero every LoRA value: the model then computes the base model exactly (B = 0) */
void llama_peft_zero(llama_model *m);

#endif
