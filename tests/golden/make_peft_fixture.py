#!/usr/bin/env python3
"""make_peft_fixture.py: what peft itself writes, for test_peft.c to compare our files with.

Writes OUT_DIR/adapter_config_expected.json and OUT_DIR/adapter_model_expected.safetensors. A
one-layer Llama (hidden 32, 4 heads of 8, 2 KV heads: q_proj is [32, 32], v_proj [16, 32]) is saved
as tiny-llama/ and loaded from that relative path, so base_model_name_or_path is "tiny-llama" as in
test_peft.c's adapter; then LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05,
target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"), get_peft_model, the LoRA weights set
to test_peft.c's make_adapter() values, and PeftModel.save_pretrained, the call users make. Both
files are copied as peft wrote them.

Usage (where torch, transformers 5 and peft are installed; CPU is enough):
  PYTHONHASHSEED=0 python3 tests/golden/make_peft_fixture.py OUT_DIR
then copy OUT_DIR/{adapter_config_expected.json,adapter_model_expected.safetensors} to
tests/fixtures/peft/ and OUT_DIR/make_peft_fixture.log to tests/golden/.

peft writes target_modules from a Python set, so their order in the file follows Python's string
hashing: PYTHONHASHSEED=0 fixes it (["v_proj", "q_proj"] with peft 0.21.0 on CPython 3.12).
"""
import json
import os
import shutil
import sys
import tempfile

import torch
import transformers

import peft

out = os.path.abspath(sys.argv[1])
os.makedirs(out, exist_ok=True)
log_lines = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    log_lines.append(s)


log("versions:", json.dumps({"torch": torch.__version__, "transformers": transformers.__version__,
                             "peft": peft.__version__, "python": sys.version.split()[0]}))

# ---- adapter_config.json and adapter_model.safetensors as peft writes them ----
work = tempfile.mkdtemp()
cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
torch.manual_seed(0)
transformers.LlamaForCausalLM(cfg).save_pretrained(os.path.join(work, "tiny-llama"))
os.chdir(work)
base = transformers.LlamaForCausalLM.from_pretrained("tiny-llama", dtype=torch.float32)
lc = peft.LoraConfig(r=4, lora_alpha=16, lora_dropout=0.05, target_modules=["q_proj", "v_proj"],
                     task_type="CAUSAL_LM")
pm = peft.get_peft_model(base, lc)
attn = pm.base_model.model.model.layers[0].self_attn
i128 = torch.arange(128, dtype=torch.float32)
i64 = torch.arange(64, dtype=torch.float32)
with torch.no_grad():
    # test_peft.c make_adapter(): q A[i] = i * 0.01f, q B[i] = -i * 0.5f, v A[i] = 1 + i, v B[i] = 2 - i
    attn.q_proj.lora_A["default"].weight.copy_((i128 * torch.tensor(0.01, dtype=torch.float32)).reshape(4, 32))
    attn.q_proj.lora_B["default"].weight.copy_((-i128 * 0.5).reshape(32, 4))
    attn.v_proj.lora_A["default"].weight.copy_((1.0 + i128).reshape(4, 32))
    attn.v_proj.lora_B["default"].weight.copy_((2.0 - i64).reshape(16, 4))
pm.save_pretrained(os.path.join(work, "adapter"))
shutil.copyfile(os.path.join(work, "adapter", "adapter_config.json"), os.path.join(out, "adapter_config_expected.json"))
shutil.copyfile(os.path.join(work, "adapter", "adapter_model.safetensors"),
                os.path.join(out, "adapter_model_expected.safetensors"))
log("adapter written by peft:", sorted(os.listdir(os.path.join(work, "adapter"))))
with open(os.path.join(out, "adapter_config_expected.json")) as f:
    log("adapter_config.json keys:", sorted(json.load(f)))
with open(os.path.join(out, "make_peft_fixture.log"), "w") as f:
    f.write("\n".join(log_lines) + "\n")
