/* adapter.h: does a PEFT LoRA adapter fit a base model?
 *
 * adapter_validate checks every LoRA module against the model's config: the module exists
 * (a linear layer of that architecture and layer count), A is [r, in_features] and B is
 * [out_features, r] of that linear, each module is selected by target_modules, and each
 * target names at least one linear of the model. A mismatch is an ERR_DATA naming the
 * adapter, the module and both shapes, so "trained on another base model" is obvious. */
#ifndef MODEL_ADAPTER_H
#define MODEL_ADAPTER_H

#include "formats/peft.h"
#include "config.h"

/* where: the adapter's directory, for messages */
int adapter_validate(const peft_adapter *a, const model_config *c, const char *where);

#endif
