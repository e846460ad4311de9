#!/usr/bin/env python3
"""Peer baseline (copied from the project's shared bench folder; issue 15 added the family shapes): QLoRA fine-tuning throughput with Hugging Face transformers + peft + bitsandbytes.

The stack is the standard QLoRA recipe, unchanged:
  BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type='nf4',
                     bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_use_double_quant=True)
  AutoModelForCausalLM.from_pretrained(path, quantization_config=..., device_map='auto', dtype=torch.bfloat16)
  LoraConfig(r=16, lora_alpha=32, target_modules=['q_proj','v_proj'], lora_dropout=0.05,
             bias='none', task_type='CAUSAL_LM'); get_peft_model
  gradient checkpointing on (non-reentrant), bf16 autocast (what Trainer(bf16=True) does).

No hub: a randomly initialised Llama of the requested shape is built on the GPU in bf16, saved
with save_pretrained (safetensors) and loaded back with from_pretrained, as a user would load
a checkpoint. Data are uniform random token ids (throughput only).

Loop per config: plain PyTorch (forward with labels=input_ids, backward, AdamW step on the
trainable params, zero_grad); warm-up steps, then timed steps with torch.cuda.synchronize()
around each step; the median step time is reported.

FLOP accounting (per token; s = sequence length, h = hidden size, L = layers):
  N_lin  = weights of every nn.Linear in the model (q,k,v,o,gate,up,down of each layer + lm_head)
  N_lora = trainable LoRA parameters
  A_f    = attention forward = 4*L*s*h (QK^T and PV, 2 FLOP per MAC) halved for the causal mask
           = 2*L*s*h
  forward        = 2*N_lin + 2*N_lora + A_f
  backward       = 2*N_lin (activation grads only: frozen base weights get no weight grad)
                   + 4*N_lora (activation + weight grads) + 2*A_f
  recompute      = 2*(N_lin - N_lm_head) + 2*N_lora + A_f   (gradient checkpointing re-runs each
                   decoder layer's forward; lm_head is not re-run)
  MFU  = (forward + backward) * tokens/s / peak          ("4N" model FLOPs)
  HFU  = (forward + backward + recompute) * tokens/s / peak   ("6N" variant, counts recompute)
  peak = 790e12 (bf16 dense matmul measured on this H200).

Usage: see --help. Results go to stdout, to --log and (one JSON object per line) to --jsonl.
"""
import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

import torch

PEAK_FLOPS = 790e12
GRAD_CKPT = True  # --no-grad-ckpt turns gradient checkpointing off (speed on a GPU with memory to spare)
T0 = time.time()

SHAPES = {
    # Llama-2-7B
    "7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
               num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
               max_position_embeddings=4096, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=False),
    # TinyLlama-1.1B
    "1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22,
               num_attention_heads=32, num_key_value_heads=4, vocab_size=32000,
               max_position_embeddings=2048, rms_norm_eps=1e-5, rope_theta=10000.0,
               tie_word_embeddings=False),
}

# The families of issue 15, at their published shapes (config.json of each model):
# Llama-3-8B (128k vocabulary, GQA 8), Qwen3-8B (q/k norm, head_dim 128), Gemma-3-12B text
# (head_dim 256, GeGLU, 262k vocabulary, interleaved sliding-window layers).
SHAPES.update({
    "llama3-8b": dict(hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rms_norm_eps=1e-5, rope_theta=500000.0,
                      tie_word_embeddings=False),
    "qwen3-8b": dict(model_type="qwen3", hidden_size=4096, intermediate_size=12288, num_hidden_layers=36,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
                     max_position_embeddings=40960, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     tie_word_embeddings=False),
    "gemma3-12b": dict(model_type="gemma3_text", hidden_size=3840, intermediate_size=15360, num_hidden_layers=48,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=256, vocab_size=262208,
                       max_position_embeddings=131072, rms_norm_eps=1e-6, rope_theta=1000000.0,
                       rope_local_base_freq=10000.0, query_pre_attn_scalar=256, sliding_window=1024,
                       tie_word_embeddings=True),
})

TARGETS = {
    "qv": ["q_proj", "v_proj"],
    "all": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
}

_log_fh = None
_jsonl_fh = None


def log(*a):
    msg = " ".join(str(x) for x in a)
    line = f"[{time.time() - T0:7.1f}s] {msg}"
    print(line, flush=True)
    if _log_fh:
        _log_fh.write(line + "\n")
        _log_fh.flush()


def emit(rec):
    rec = dict(rec)
    rec["t_s"] = round(time.time() - T0, 1)
    log("RESULT " + json.dumps(rec))
    if _jsonl_fh:
        _jsonl_fh.write(json.dumps(rec) + "\n")
        _jsonl_fh.flush()


def gib(x):
    return x / 2**30


def cleanup():
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.empty_cache()


def linear_counts(shape):
    c = SHAPES[shape]
    h, i, L = c["hidden_size"], c["intermediate_size"], c["num_hidden_layers"]
    nh, nkv, V = c["num_attention_heads"], c["num_key_value_heads"], c["vocab_size"]
    hd = c.get("head_dim", h // nh)
    per_layer = 2 * h * (nh * hd) + 2 * h * (nkv * hd) + 3 * h * i
    n_head = h * V
    return L * per_layer + n_head, n_head


def flops_per_token(shape, seq, n_lora):
    c = SHAPES[shape]
    h, L = c["hidden_size"], c["num_hidden_layers"]
    n_lin, n_head = linear_counts(shape)
    qd = c["num_attention_heads"] * c.get("head_dim", h // c["num_attention_heads"])  # query width
    a_f = 4 * L * seq * qd * 0.5  # causal halving
    fwd = 2 * n_lin + 2 * n_lora + a_f
    bwd = 2 * n_lin + 4 * n_lora + 2 * a_f
    rec = 2 * (n_lin - n_head) + 2 * n_lora + a_f
    return fwd + bwd, fwd + bwd + rec


def versions():
    v = {"python": sys.version.split()[0]}
    import transformers, peft, accelerate, safetensors
    v.update(torch=torch.__version__, torch_cuda=torch.version.cuda,
             cudnn=torch.backends.cudnn.version(), transformers=transformers.__version__,
             peft=peft.__version__, accelerate=accelerate.__version__,
             safetensors=safetensors.__version__)
    try:
        import bitsandbytes as bnb
        v["bitsandbytes"] = bnb.__version__
        v["bitsandbytes_file"] = bnb.__file__
        d = os.path.dirname(bnb.__file__)
        v["bitsandbytes_libs"] = sorted(f for f in os.listdir(d) if f.startswith("libbitsandbytes"))
    except Exception as e:  # noqa: BLE001
        v["bitsandbytes"] = f"NOT AVAILABLE: {e!r}"
    v["bnb_commit"] = os.environ.get("BNB_COMMIT", "?")
    v["gpu"] = torch.cuda.get_device_name(0)
    try:
        v["driver"] = subprocess.run(["nvidia-smi", "--query-gpu=driver_version,clocks.max.sm,power.limit",
                                      "--format=csv,noheader"], capture_output=True, text=True,
                                     timeout=20).stdout.strip()
    except Exception as e:  # noqa: BLE001
        v["driver"] = f"? ({e})"
    return v


def create_model(shape, path):
    from transformers import AutoConfig, AutoModelForCausalLM
    if os.path.exists(os.path.join(path, "config.json")):
        log(f"model dir {path} exists, reusing")
        return
    t = time.time()
    spec = dict(SHAPES[shape])
    cfg = AutoConfig.for_model(spec.pop("model_type", "llama"), **spec)
    try:
        cfg.dtype = torch.bfloat16
    except Exception:  # noqa: BLE001
        pass
    prev = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with torch.device("cuda"):
            model = AutoModelForCausalLM.from_config(cfg)
    finally:
        torch.set_default_dtype(prev)
    model = model.to(torch.bfloat16)
    n = sum(p.numel() for p in model.parameters())
    torch.cuda.synchronize()
    t_init = time.time() - t
    model.save_pretrained(path)
    t_all = time.time() - t
    size = sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path))
    log(f"created {shape}: {n/1e9:.3f}B params, init {t_init:.1f}s, total with save {t_all:.1f}s, "
        f"{size/1e9:.2f} GB on disk: {sorted(os.listdir(path))}")
    emit({"phase": "create", "shape": shape, "params": n, "init_s": round(t_init, 1),
          "create_save_s": round(t_all, 1), "disk_bytes": size})
    del model
    cleanup()


def load_model(path, quant):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig
    cleanup()
    base = torch.cuda.memory_allocated()
    t = time.time()
    kw = dict(device_map="auto", dtype=torch.bfloat16)
    if quant:
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    model = AutoModelForCausalLM.from_pretrained(path, **kw)
    torch.cuda.synchronize()
    dt = time.time() - t
    gc.collect()
    mem = torch.cuda.memory_allocated() - base
    attn = getattr(model.config, "_attn_implementation", None)
    kinds = {}
    for m in model.modules():
        kinds[type(m).__name__] = kinds.get(type(m).__name__, 0) + 1
    lin_kinds = {k: v for k, v in kinds.items() if "Linear" in k}
    log(f"loaded {'4-bit nf4+dq' if quant else 'bf16'} in {dt:.1f}s: memory_allocated {gib(mem):.3f} GiB "
        f"attn_implementation={attn} linear modules={lin_kinds}")
    return model, {"load_s": round(dt, 1), "mem_alloc_bytes": mem, "mem_alloc_gib": round(gib(mem), 3),
                   "attn_implementation": attn, "linear_modules": lin_kinds}


def wrap_lora(model, targets):
    from peft import LoraConfig, get_peft_model
    model.config.use_cache = False
    if GRAD_CKPT:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    try:
        model.enable_input_require_grads()
    except Exception as e:  # noqa: BLE001  (only needed for reentrant checkpointing)
        log(f"enable_input_require_grads failed (harmless with use_reentrant=False): {e!r}")
    lcfg = LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS[targets], lora_dropout=0.05,
                      bias="none", task_type="CAUSAL_LM")
    pm = get_peft_model(model, lcfg)
    pm.train()
    trainable = sum(p.numel() for p in pm.parameters() if p.requires_grad)
    dtypes = sorted({str(p.dtype) for p in pm.parameters() if p.requires_grad})
    log(f"LoRA {targets}: trainable {trainable} params ({dtypes}); "
        f"gradient_checkpointing={getattr(pm.base_model.model, 'is_gradient_checkpointing', '?')}")
    return pm, trainable


def unwrap_lora(pm):
    base = pm.unload()
    left = sum(1 for n, _ in base.named_modules() if "lora_" in n)
    if left:
        raise RuntimeError(f"{left} lora modules left after unload")
    return base


def bench(pm, shape, seq, bs, warm, steps, label, autocast=True, profile_dir=None, n_lora=0):
    cleanup()
    torch.cuda.reset_peak_memory_stats()
    V = SHAPES[shape]["vocab_size"]
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    gen = torch.Generator(device="cuda")
    gen.manual_seed(1234)
    times, losses = [], []
    grad_ok = None
    for it in range(warm + steps):
        ids = torch.randint(0, V, (bs, seq), device="cuda", generator=gen)
        torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
            out = pm(input_ids=ids, labels=ids)
        out.loss.backward()
        if it == 0:
            gsum = sum(float(p.grad.float().abs().sum()) for p in params if p.grad is not None)
            ngrad = sum(1 for p in params if p.grad is not None)
            grad_ok = (ngrad, gsum)
        opt.step()
        opt.zero_grad(set_to_none=True)
        torch.cuda.synchronize()
        dt = time.perf_counter() - t
        losses.append(float(out.loss))
        del out
        if it >= warm:
            times.append(dt)
    peak = torch.cuda.max_memory_allocated()
    peak_res = torch.cuda.max_memory_reserved()
    med = statistics.median(times)
    tok = bs * seq
    tps = tok / med
    f4, f6 = flops_per_token(shape, seq, n_lora)
    rec = {"phase": "bench", "label": label + ("" if GRAD_CKPT else "-nockpt"), "grad_ckpt": GRAD_CKPT, "shape": shape, "seq": seq, "batch": bs,
           "tokens_per_step": tok, "median_step_ms": round(med * 1e3, 2),
           "min_step_ms": round(min(times) * 1e3, 2), "max_step_ms": round(max(times) * 1e3, 2),
           "tokens_per_s": round(tps, 1), "peak_alloc_gib": round(gib(peak), 3),
           "peak_reserved_gib": round(gib(peak_res), 3), "mfu_4N": round(f4 * tps / PEAK_FLOPS, 4),
           "hfu_6N_recompute": round(f6 * tps / PEAK_FLOPS, 4), "flops_per_token_4N": f4,
           "flops_per_token_6N": f6, "n_lora": n_lora, "warmup": warm, "timed_steps": steps,
           "autocast_bf16": autocast, "first_step_grad_tensors_and_abs_sum": grad_ok,
           "loss_first_last": [round(losses[0], 4), round(losses[-1], 4)],
           "step_ms_all": [round(x * 1e3, 1) for x in times]}
    emit(rec)
    if profile_dir is not None:
        try:
            from torch.profiler import profile, ProfilerActivity
            ids = torch.randint(0, V, (bs, seq), device="cuda", generator=gen)
            torch.cuda.synchronize()
            with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
                    out = pm(input_ids=ids, labels=ids)
                out.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
            del out
            tab = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70)
            log(f"PROFILE {label} (one step, sorted by self CUDA time):\n{tab}")
        except Exception as e:  # noqa: BLE001
            log(f"profile failed: {e!r}")
    del opt, params
    cleanup()
    return rec


def parse_cfgs(s):
    out = []
    for tok in s.split(","):
        tok = tok.strip()
        if not tok:
            continue
        sb, tgt = tok.split(":")
        seq, bs = sb.split("x")
        out.append((int(seq), int(bs), tgt))
    return out


def main():
    global _log_fh, _jsonl_fh
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), required=True)
    ap.add_argument("--model-dir", required=True, help="where the random checkpoint is saved / loaded")
    ap.add_argument("--qlora", default="", help="comma list SEQxBATCH:TARGETS, e.g. 2048x1:qv,2048x1:all")
    ap.add_argument("--bf16-lora", default="", help="same format, bf16 base weights (no quantization)")
    ap.add_argument("--bf16-mem", action="store_true", help="measure memory_allocated of the bf16 load")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--no-autocast", action="store_true")
    ap.add_argument("--no-grad-ckpt", action="store_true", help="train without gradient checkpointing")
    ap.add_argument("--profile-first", action="store_true", help="profile one extra step of the first QLoRA config")
    ap.add_argument("--deadline", type=float, default=1e9, help="skip phases that start after this many seconds")
    ap.add_argument("--log", default=None)
    ap.add_argument("--jsonl", default=None)
    a = ap.parse_args()
    if a.log:
        _log_fh = open(a.log, "a")
    if a.jsonl:
        _jsonl_fh = open(a.jsonl, "a")
    autocast = not a.no_autocast
    global GRAD_CKPT
    GRAD_CKPT = not a.no_grad_ckpt

    log("argv:", " ".join(sys.argv))
    v = versions()
    emit({"phase": "versions", **v})
    n_lin, n_head = linear_counts(a.shape)
    log(f"shape {a.shape}: {SHAPES[a.shape]}; N_linear={n_lin} (lm_head {n_head}); peak {PEAK_FLOPS/1e12:.0f} TFLOP/s")

    create_model(a.shape, a.model_dir)

    q = parse_cfgs(a.qlora)
    if q:
        try:
            run_group(a, q, quant=True, autocast=autocast)
        except Exception as e:  # noqa: BLE001
            import traceback
            log(f"FAILED QLoRA group: {e!r}\n{traceback.format_exc()}")
            cleanup()

    b = parse_cfgs(a.bf16_lora)
    if (a.bf16_mem or b) and time.time() - T0 <= a.deadline:
        try:
            run_group(a, b, quant=False, autocast=autocast)
        except Exception as e:  # noqa: BLE001
            import traceback
            log(f"FAILED bf16 group: {e!r}\n{traceback.format_exc()}")
            cleanup()
    log("done")


def run_group(a, cfgs, quant, autocast):
    model, info = load_model(a.model_dir, quant=quant)
    emit({"phase": "load", "shape": a.shape, "quant": "nf4+double_quant" if quant else "none (bf16)", **info})
    kind = "qlora" if quant else "bf16lora"
    pm, cur, n_lora = None, None, 0
    first = True
    for seq, bs, tgt in cfgs:
        if time.time() - T0 > a.deadline:
            log(f"SKIP {kind} {seq}x{bs}:{tgt} (deadline)")
            continue
        try:
            if cur != tgt:
                if pm is not None:
                    model = unwrap_lora(pm)
                    pm = None
                    cleanup()
                pm, n_lora = wrap_lora(model, tgt)
                cur = tgt
            bench(pm, a.shape, seq, bs, a.warmup, a.steps, f"{kind}-{a.shape}-{seq}x{bs}-{tgt}",
                  autocast=autocast, profile_dir=True if (first and quant and a.profile_first) else None,
                  n_lora=n_lora)
            first = False
        except Exception as e:  # noqa: BLE001
            import traceback
            log(f"FAILED {kind} {seq}x{bs}:{tgt}: {e!r}\n{traceback.format_exc()}")
            cleanup()
    del pm, model
    cleanup()


if __name__ == "__main__":
    main()
