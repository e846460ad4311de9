#!/usr/bin/env python3
"""check_export.py: our exports, loaded as they are by transformers and peft (issue 8's proofs).

Reads the committed exports in DIR (written by make_export.sh from make_export.yaml):
  base/          the NF4 base dequantized to bf16 (export with no adapter, formats [merged])
  merged/        that base merged with adapter_list (W + scale * B @ A in fp32, saved bf16)
  adapter_list/  PEFT adapter, r 8 on q, k, v, o, down (k/v [32, 64]: GQA)
  adapter_all/   PEFT adapter, r 4, rslora, all seven linears
and, in float32 and in bfloat16 on the CPU with eager attention, computes the logits of IDS for
  base    AutoModelForCausalLM.from_pretrained(base/)
  list    PeftModel.from_pretrained(that base, adapter_list/)
  all     PeftModel.from_pretrained(that base, adapter_all/)
  merged  AutoModelForCausalLM.from_pretrained(merged/)
It fails (exit 1) unless everything loads with no missing, unexpected or mismatched key, every
adapter tensor lands in its module unchanged (peft only warns about missing adapter keys, and a
missing B would silently leave the zero init), the adapters change the logits, and merged/ gives
the adapter path's logits. It also compares merged/ with peft's own merge_and_unload (fp32).

Writes OUT/export_golden.safetensors (compared with our engine by tests/unit/test_export_golden.c):
  ids [T] I32, logits.<case>.f32 [T, V] F32, logits.<case>.bf16 [T, V] BF16 (a bf16 model's
  logits are bf16, so nothing is lost), tok_ids [n] I32 (AutoTokenizer on merged/ encoding TEXT),
  and metadata: versions, TEXT, and the measured differences as JSON.

Usage (where torch, transformers and peft are installed; no GPU needed):
  python3 check_export.py DIR OUT_DIR
"""
import json
import os
import sys
import traceback

import torch
import transformers
from safetensors.torch import load_file, save_file

import peft

T = 16
IDS = [256] + [(97 * t + 13) % 256 for t in range(1, T)]  # BOS, then fixed bytes
TEXT = "Sort the letters.\nhgfe\n="
CASES = ("base", "list", "all", "merged")

problems = []
report = {}


def problem(msg):
    problems.append(msg)
    print("PROBLEM:", msg, flush=True)


def rel(a, b):
    """max |a - b| / max |b|"""
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def load_model(path, dtype):
    kw = dict(attn_implementation="eager", output_loading_info=True)
    try:
        model, info = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    except TypeError:  # transformers before 4.56 names it torch_dtype
        model, info = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, **kw)
    for k, v in (info or {}).items():
        if v:
            problem(f"{path}: loading info {k}: {v}")
    model.eval()
    bad = {p.dtype for p in model.parameters()} - {dtype}
    if bad:
        problem(f"{path}: parameters in {bad}, asked for {dtype}")
    # every tensor of the file is in the model exactly (bf16 -> fp32 is exact)
    sd = model.state_dict()
    for name, t in load_file(os.path.join(path, "model.safetensors")).items():
        if name not in sd:
            problem(f"{path}: {name} not in the model")
        elif sd[name].shape != t.shape or not torch.equal(sd[name].float(), t.to(dtype).float()):
            problem(f"{path}: {name} differs from the file")
    return model


def load_peft(base_dir, adapter_dir, dtype):
    base = load_model(base_dir, dtype)
    pm = peft.PeftModel.from_pretrained(base, adapter_dir)
    pm.eval()
    cfg = pm.peft_config["default"]
    params = {n: p for n, p in pm.named_parameters() if ".lora_" in n}
    file = load_file(os.path.join(adapter_dir, "adapter_model.safetensors"))
    want = {k.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight"): k
            for k in file}
    if set(params) != set(want):
        problem(f"{adapter_dir}: model LoRA params {sorted(set(params) - set(want))[:4]} not in the file, "
                f"file tensors {sorted(set(want) - set(params))[:4]} not in the model")
    for n, k in want.items():
        p = params.get(n)
        if p is not None and (p.shape != file[k].shape or not torch.equal(p.float(), file[k].to(p.dtype).float())):
            problem(f"{adapter_dir}: {k} not loaded unchanged")
    nB = sum(1 for k in file if k.endswith("lora_B.weight") and file[k].abs().max() > 0)
    lin = pm.base_model.model.model.layers[0].self_attn.q_proj
    report[f"{os.path.basename(adapter_dir)}"] = {
        "r": cfg.r, "lora_alpha": cfg.lora_alpha, "use_rslora": cfg.use_rslora,
        "target_modules": sorted(cfg.target_modules) if not isinstance(cfg.target_modules, str) else cfg.target_modules,
        "lora_modules": sum(1 for k in file if k.endswith("lora_A.weight")), "nonzero_B": nB,
        "q_proj_scaling": float(lin.scaling["default"]), "adapter_dtype": str(next(iter(params.values())).dtype)}
    return pm


@torch.no_grad()
def logits_of(model):
    return model(input_ids=torch.tensor([IDS]), use_cache=False).logits[0].detach()


def check_merge(d, dtype_logits):
    """our merged/ against peft's merge_and_unload of base/ + adapter_list/ (fp32)"""
    pm = load_peft(f"{d}/base", f"{d}/adapter_list", torch.float32)
    pmerged = pm.merge_and_unload()
    ours = load_file(f"{d}/merged/model.safetensors")
    base = load_file(f"{d}/base/model.safetensors")
    sd = pmerged.state_dict()
    worst, worst_name, same = 0.0, "", 0
    for name, t in ours.items():
        ref = sd[name].float()
        if name in base and torch.equal(base[name], t):
            same += 1
        diff = float((t.float() - ref).abs().max() / ref.abs().max())
        if diff > worst:
            worst, worst_name = diff, name
    changed = [n for n in ours if not torch.equal(base[n], ours[n])]
    report["merge_vs_peft_merge_and_unload"] = {
        "max_rel_weight_diff": worst, "worst": worst_name, "tensors_changed": len(changed), "tensors": len(ours)}
    if worst > 1e-2:
        problem(f"merged/ differs from peft's merge_and_unload: {worst_name} rel {worst:.3g}")
    lm = logits_of(pmerged)
    report["merge_and_unload_logits_vs_merged_f32"] = rel(lm, dtype_logits)
    print(f"merge_and_unload: weights rel {worst:.3g} ({worst_name}), {len(changed)}/{len(ours)} tensors changed; "
          f"logits vs merged/ rel {report['merge_and_unload_logits_vs_merged_f32']:.3g}", flush=True)


def main():
    d, out = sys.argv[1], sys.argv[2]
    torch.manual_seed(0)
    versions = {"torch": torch.__version__, "transformers": transformers.__version__, "peft": peft.__version__}
    print(versions, flush=True)
    dump = {"ids": torch.tensor(IDS, dtype=torch.int32)}
    for dtype, tag in ((torch.float32, "f32"), (torch.bfloat16, "bf16")):
        lg = {}
        for case in CASES:
            try:
                if case == "base":
                    m = load_model(f"{d}/base", dtype)
                elif case == "merged":
                    m = load_model(f"{d}/merged", dtype)
                else:
                    m = load_peft(f"{d}/base", f"{d}/adapter_{case}", dtype)
                lg[case] = logits_of(m)
                dump[f"logits.{case}.{tag}"] = lg[case].to(torch.float32 if tag == "f32" else torch.bfloat16).contiguous()
            except Exception:
                problem(f"{case} {tag}: {traceback.format_exc()}")
        if len(lg) < len(CASES):
            continue
        scale = float(lg["base"].float().abs().max())
        r = {"logit_scale": scale,
             "list_vs_base": rel(lg["list"], lg["base"]), "all_vs_base": rel(lg["all"], lg["base"]),
             "merged_vs_list": rel(lg["merged"], lg["list"])}
        report[tag] = r
        print(f"{tag}: max|logit| {scale:.3f}; adapter effect rel list {r['list_vs_base']:.3g} all {r['all_vs_base']:.3g}; "
              f"merged vs adapter path rel {r['merged_vs_list']:.3g}", flush=True)
        if min(r["list_vs_base"], r["all_vs_base"]) < 0.05:
            problem(f"{tag}: an adapter barely changes the logits")
        if r["merged_vs_list"] > (2e-2 if tag == "bf16" else 1e-2):
            problem(f"{tag}: merged/ does not give the adapter path's logits (rel {r['merged_vs_list']:.3g})")
        if tag == "f32":
            try:
                check_merge(d, lg["merged"])
            except Exception:
                problem(f"merge check: {traceback.format_exc()}")
    if "logits.base.f32" in dump and "logits.base.bf16" in dump:
        for case in CASES:
            k = f"logits.{case}"
            if f"{k}.bf16" in dump:
                report.setdefault("bf16_vs_f32", {})[case] = rel(dump[f"{k}.bf16"], dump[f"{k}.f32"])
        print("bf16 vs f32 torch:", report.get("bf16_vs_f32"), flush=True)
    try:
        tok = transformers.AutoTokenizer.from_pretrained(f"{d}/merged")
        tids = tok(TEXT)["input_ids"]
        dump["tok_ids"] = torch.tensor(tids, dtype=torch.int32)
        report["tokenizer"] = {"class": type(tok).__name__, "n": len(tids), "decode": tok.decode(tids)}
        print("tokenizer:", report["tokenizer"], tids, flush=True)
    except Exception:
        problem(f"tokenizer: {traceback.format_exc()}")
    report["problems"] = problems
    meta = {"format": "pt", "text": TEXT, "report": json.dumps(report, sort_keys=True), **versions}
    os.makedirs(out, exist_ok=True)
    save_file(dump, f"{out}/export_golden.safetensors", metadata=meta)
    print(json.dumps(report, indent=1, sort_keys=True), flush=True)
    print("OK" if not problems else f"{len(problems)} PROBLEM(S)", flush=True)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
