#!/usr/bin/env python3
"""check_merged_families.py: our exports of the newer families as transformers and peft load them.

For each FAMILY given (phi3, qwen3, gemma3, gemma2), with the committed tiny checkpoint
tests/golden/<FAMILY>-tiny (bf16), the adapter tests/golden/<FAMILY>_adapter (written by
test_golden --make-inputs) and EXPORTS/<FAMILY>/{model,adapter} (what
`qlora-run export --base golden/<FAMILY>-tiny --adapter golden/<FAMILY>_adapter --format merged,peft`
wrote: tests/golden/export_families.sh), on the CPU in fp32:
  - the base loads with AutoModelForCausalLM with no missing or unexpected keys;
  - the exported adapter loads with PeftModel.from_pretrained, and set_peft_model_state_dict of its
    tensors reports no missing LoRA key and no unexpected key; every LoRA tensor equals the file's;
  - the merged model loads with AutoModelForCausalLM.from_pretrained with no missing or unexpected
    keys; each of its tensors is within one bf16 step of peft's merge_and_unload() of base + adapter
    (ours merges in fp32 and rounds to bf16 once); its logits on a 24-token row match base + adapter
    through peft within 2e-2 of the largest logit (the bf16 rounding of the merged weights).
Prints one line per check; exits 1 when one fails.

Usage (where torch, transformers and peft are):
  python3 check_merged_families.py GOLDEN_DIR EXPORTS_DIR FAMILY...
"""
import sys

import torch
import peft
import transformers
from safetensors.torch import load_file


def load(path):
    model, info = transformers.AutoModelForCausalLM.from_pretrained(
        path, dtype=torch.float32, attn_implementation="eager", output_loading_info=True)
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    return model.eval(), bad


def check(golden, exports, fam):
    ok = True
    base_dir, ours = f"{golden}/{fam}-tiny", f"{exports}/{fam}"
    ids = torch.arange(24).remainder(150)[None] + 3
    base, bad = load(base_dir)
    print(f"{fam}: base loads: {'ok' if not bad else bad}", flush=True)
    ok &= not bad
    model = peft.PeftModel.from_pretrained(base, f"{ours}/adapter").eval()
    sd = load_file(f"{ours}/adapter/adapter_model.safetensors")
    res = peft.set_peft_model_state_dict(model, sd)
    missing = [k for k in res.missing_keys if "lora_" in k]
    n, differ = 0, []
    params = dict(model.named_parameters())
    for k, v in sd.items():
        name = k.replace(".weight", ".default.weight")
        n += 1
        if name not in params or not torch.equal(params[name].detach(), v.float()):
            differ.append(k)
    good = not missing and not res.unexpected_keys and not differ and n > 0
    print(f"{fam}: adapter: {n} LoRA tensors, missing {missing}, unexpected {res.unexpected_keys}, differ {differ}: "
          f"{'ok' if good else 'FAILED'}", flush=True)
    ok &= good
    with torch.no_grad():
        want = model(input_ids=ids, use_cache=False).logits[0]
        reference = model.merge_and_unload().state_dict()
    merged, bad = load(f"{ours}/model")
    print(f"{fam}: merged loads: {'ok' if not bad else bad}", flush=True)
    ok &= not bad
    worst, worst_name = 0.0, ""
    for k, v in merged.state_dict().items():
        r = reference[k].float()
        step = r.abs().clamp_min(1e-30).log2().floor().exp2() / 128  # one bf16 step at r
        e = float(((v.float() - r).abs() / step).max())
        if e > worst:
            worst, worst_name = e, k
    good = worst <= 1.0
    print(f"{fam}: merged weights vs peft merge_and_unload: worst {worst:.2f} bf16 steps ({worst_name}): "
          f"{'ok' if good else 'FAILED'}", flush=True)
    ok &= good
    with torch.no_grad():
        got = merged(input_ids=ids, use_cache=False).logits[0]
    rel = float((got - want).abs().max() / want.abs().max())
    good = rel < 2e-2
    print(f"{fam}: merged logits vs base + adapter: rel err {rel:.2e}: {'ok' if good else 'FAILED'}", flush=True)
    return ok & good


def main():
    golden, exports = sys.argv[1], sys.argv[2]
    print(f"torch {torch.__version__} transformers {transformers.__version__} peft {peft.__version__}", flush=True)
    ok = True
    for fam in sys.argv[3:]:
        ok &= check(golden, exports, fam)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
