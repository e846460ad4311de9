#!/usr/bin/env python3
"""make_golden.py: PyTorch + transformers + peft reference dumps for tests/unit/test_golden.c.

Reads <in>/<model>_inputs.safetensors (written by `test_golden --make-inputs`: the NF4-dequantized
weights under their HF names, LoRA A and B, the batch, and the config / LoRA settings as JSON
metadata), builds the same model in fp32 on the CPU with eager attention, attaches LoRA through
peft with those A and B, and writes <out>/<case>_golden.safetensors for the cases <model> (one
24-token sequence) and <model>_packed (the same row as two sequences, [0, 13) and [13, 24), run
separately here, as the C engine must reproduce with packing):
  inv_freq       the rotary frequencies transformers uses (rope scaling applied)
  logits [T, V]  per position (packed: the two runs concatenated)
  loss [1]       mean cross-entropy over the shifted, non-ignored labels of all sequences
  grad.<name>    d loss / d every LoRA tensor (PEFT names without the adapter name)
  adam_losses    the loss before each of 10 torch.optim.AdamW steps on this batch

Models: llama (llama3 rope scaling), qwen2 (biases, tied), qwen3 (q/k per-head norms, head_dim
independent of hidden/heads), mistral (sliding window 6, linear rope scaling), gemma3 (gemma3_text:
(1 + w) norms, GeGLU, local and global layers), phi3 (fused qkv_proj and gate_up_proj, rotary on half
of each head, longrope with an original context of 16: the 24-token row takes the long factors, the
packed sequences the short ones; a window of 10), gemma2 (Gemma2ForCausalLM: gemma3's layer without q/k
norms, one rope base, layer 0 sliding, attention scores soft-capped at 1 and final logits at 3).

Usage (where torch, transformers and peft are installed; no GPU needed):
  python3 make_golden.py IN_DIR OUT_DIR [MODEL...]     (default: all of them)
"""
import json
import os
import sys

import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

import transformers

try:
    import peft
except ImportError:  # the same LoRA by hand (y = base(x) + scale * B(A(x))), named as peft names it
    peft = None

SPLIT = 13


def load_inputs(path):
    with safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    return json.loads(meta["config"]), json.loads(meta["lora"]), tensors


def build_base(config, tensors):
    config = dict(config)
    for k in ("architectures", "torch_dtype", "transformers_version"):
        config.pop(k, None)
    cfg = transformers.AutoConfig.for_model(config.pop("model_type"), **config)
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg, attn_implementation="eager").float()
    weights = {k: v for k, v in tensors.items() if k.startswith(("model.", "lm_head."))}
    missing, unexpected = model.load_state_dict(weights, strict=False)
    missing = [k for k in missing if not k.endswith("inv_freq") and not (k == "lm_head.weight" and cfg.tie_word_embeddings)]
    assert not missing and not unexpected, (missing, unexpected)
    if cfg.tie_word_embeddings:
        model.tie_weights()
        assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    rot = model.model.rotary_emb  # gemma3 in 5.x: one inv_freq per layer type; the global one here
    inv_freq = getattr(rot, "inv_freq", None)
    if inv_freq is None:
        inv_freq = getattr(rot, "full_attention_inv_freq", None)
        local = getattr(rot, "sliding_attention_inv_freq", None)
        if local is not None:
            print(f"  sliding layers' inv_freq[:4] {local[:4].tolist()}, layer_types {cfg.layer_types}", flush=True)
    if inv_freq is None:
        print("warning: no rotary_emb.inv_freq", flush=True)
        inv_freq = torch.zeros(cfg.head_dim // 2)
    inv_freq = inv_freq.detach().clone().float()
    return model, inv_freq


def build(config, lora, tensors):
    model, inv_freq = build_base(config, tensors)
    params = {}
    if peft is not None:
        lcfg = peft.LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], target_modules=lora["targets"],
                               lora_dropout=0.0, use_rslora=lora["rslora"], bias="none", task_type="CAUSAL_LM")
        model = peft.get_peft_model(model, lcfg)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    key = name.replace(".default", "")
                    p.copy_(tensors[key])
                    params[key] = p
    else:
        for p in model.parameters():
            p.requires_grad_(False)
        scale = lora["alpha"] / (lora["r"] ** 0.5 if lora["rslora"] else lora["r"])
        for mname, mod in list(model.named_modules()):
            if mname.split(".")[-1] in lora["targets"]:
                prefix = "base_model.model." + mname
                A = torch.nn.Parameter(tensors[prefix + ".lora_A.weight"].clone())
                B = torch.nn.Parameter(tensors[prefix + ".lora_B.weight"].clone())
                mod.register_parameter("lora_A_weight", A)
                mod.register_parameter("lora_B_weight", B)
                mod.forward = (lambda m, a, b: lambda x: F.linear(x, m.weight, m.bias) + scale * F.linear(
                    F.linear(x, a), b))(mod, A, B)
                params[prefix + ".lora_A.weight"] = A
                params[prefix + ".lora_B.weight"] = B
    assert len(params) == sum(1 for k in tensors if ".lora_" in k), "LoRA tensors differ"
    model.eval()  # no dropout anywhere (lora_dropout is 0 too)
    return model, params, inv_freq


def run(model, ids, labels, segments):
    """logits of every position and the loss sum / count over the segments, each run alone"""
    logits, loss_sum, count = [], 0.0, 0
    for a, b in segments:
        out = model(input_ids=ids[None, a:b], use_cache=False).logits[0].float()
        logits.append(out)
        tgt = labels[a + 1:b]
        loss_sum = loss_sum + F.cross_entropy(out[:-1], tgt, ignore_index=-100, reduction="sum")
        count += int((tgt != -100).sum())
    return torch.cat(logits), loss_sum, count


def golden_case(model, params, inv_freq, lora, tensors, packed):
    ids = tensors["batch.ids"].long()
    labels = tensors["batch.labels"].long()
    T = ids.shape[0]
    segments = [(0, SPLIT), (SPLIT, T)] if packed else [(0, T)]
    init = {k: p.detach().clone() for k, p in params.items()}
    model.zero_grad()
    logits, loss_sum, count = run(model, ids, labels, segments)
    loss = loss_sum / count
    loss.backward()
    out = {"inv_freq": inv_freq, "logits": logits.detach().contiguous(), "loss": loss.detach().reshape(1).float()}
    for k, p in params.items():
        out["grad." + k] = p.grad.detach().clone().contiguous()
    opt = torch.optim.AdamW(list(params.values()), lr=lora["lr"], betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=lora["weight_decay"], foreach=False)
    curve = []
    for _ in range(lora["steps"]):
        opt.zero_grad()
        _, s, n = run(model, ids, labels, segments)
        step_loss = s / n
        curve.append(float(step_loss))
        step_loss.backward()
        opt.step()
    out["adam_losses"] = torch.tensor(curve, dtype=torch.float32)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(init[k])
    print(f"  loss {float(loss):.6f}  targets {count}  adam {curve[0]:.5f} -> {curve[-1]:.5f}", flush=True)
    return out


def peft_load_check(config, tensors, adapter_dir, want_logits):
    """our PEFT adapter (written by test_golden --make-inputs with the inputs' A and B) loaded by
    PeftModel.from_pretrained: every LoRA tensor arrives unchanged and the logits are the golden's"""
    base, _ = build_base(config, tensors)
    model = peft.PeftModel.from_pretrained(base, adapter_dir)
    model.eval()
    n, bad = 0, []
    for name, p in model.named_parameters():
        if "lora_" not in name:
            continue
        key = name.replace(".default", "")
        n += 1
        if key not in tensors or not torch.equal(p.detach(), tensors[key]):
            bad.append(key)
    expected = sum(1 for k in tensors if ".lora_" in k)
    ids = tensors["batch.ids"].long()
    with torch.no_grad():
        logits = model(input_ids=ids[None], use_cache=False).logits[0].float()
    rel = float((logits - want_logits).abs().max() / want_logits.abs().max())
    ok = not bad and n == expected and rel < 1e-5
    print(f"  peft load {adapter_dir}: {n}/{expected} LoRA tensors, {len(bad)} differ, logits rel err {rel:.2e}: "
          f"{'ok' if ok else 'FAILED'}", flush=True)
    return ok


def main():
    src, dst = sys.argv[1], sys.argv[2]
    torch.set_grad_enabled(True)
    peft_version = peft.__version__ if peft is not None else "none (LoRA by hand)"
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft_version}", flush=True)
    failed = 0
    for name in sys.argv[3:] or ("llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3", "gemma2"):
        config, lora, tensors = load_inputs(f"{src}/{name}_inputs.safetensors")
        model, params, inv_freq = build(config, lora, tensors)
        for packed in (False, True):
            case = name + ("_packed" if packed else "")
            print(case, flush=True)
            out = golden_case(model, params, inv_freq, lora, tensors, packed)
            save_file(out, f"{dst}/{case}_golden.safetensors", metadata={
                "format": "pt", "torch": torch.__version__, "transformers": transformers.__version__,
                "peft": peft_version})
            adapter = f"{src}/{name}_adapter"
            if not packed and peft is not None and os.path.isdir(adapter):
                failed += not peft_load_check(config, tensors, adapter, out["logits"])
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
