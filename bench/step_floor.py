"""(Copied from the project's shared bench folder; shapes and SHAPE:SEQxBATCH arguments added.)
The floor of one QLoRA training step on this GPU: time only the unavoidable matrix work.

For a Llama shape and a token count, time with CUDA events (median of 20 after warm-up):
- every GEMM of forward (x @ W^T for q,k,v,o,gate,up,down per layer + lm_head) in bf16 via torch.matmul (cuBLAS);
- every activation-gradient GEMM of backward (dY @ W), no weight-gradient GEMMs (frozen base);
- causal attention forward + backward through SDPA (cuDNN flash attention).
LoRA GEMMs (rank 16) are small and left out. The sum is what a perfect implementation with cuBLAS-class
GEMMs and flash attention must spend, without recompute; add the forward again for full recompute.
"""
import sys, json, torch
import torch.nn.functional as F

def bench(fn, reps=20, warm=5):
    for _ in range(warm): fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record(); fn(); b.record(); torch.cuda.synchronize(); ts.append(a.elapsed_time(b))
    ts.sort(); return ts[len(ts) // 2]

def floor(h, inter, L, heads, kv, vocab, seq, batch, hd=None):
    dev, dt = "cuda", torch.bfloat16
    T = seq * batch; hd = hd or h // heads
    shapes = [(heads * hd, h), (kv * hd, h), (kv * hd, h), (h, heads * hd), (inter, h), (inter, h), (h, inter)]
    fwd = bwd = 0.0
    for (o, i) in shapes:
        x = torch.randn(T, i, device=dev, dtype=dt); W = torch.randn(o, i, device=dev, dtype=dt); dy = torch.randn(T, o, device=dev, dtype=dt)
        fwd += bench(lambda: x @ W.t()); bwd += bench(lambda: dy @ W)
    fwd *= L; bwd *= L
    x = torch.randn(T, h, device=dev, dtype=dt); W = torch.randn(vocab, h, device=dev, dtype=dt); dy = torch.randn(T, vocab, device=dev, dtype=dt)
    head_f = bench(lambda: x @ W.t()); head_b = bench(lambda: dy @ W)
    q = torch.randn(batch, heads, seq, hd, device=dev, dtype=dt, requires_grad=True)
    k = torch.randn(batch, kv, seq, hd, device=dev, dtype=dt, requires_grad=True)
    v = torch.randn(batch, kv, seq, hd, device=dev, dtype=dt, requires_grad=True)
    gqa = kv != heads
    def att_f(): return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
    o = att_f(); go = torch.randn_like(o)
    af = bench(att_f)
    def att_fb():
        out = att_f(); out.backward(go)
    afb = bench(att_fb)
    att_f_ms, att_b_ms = af * L, (afb - af) * L
    total = fwd + bwd + head_f + head_b + att_f_ms + att_b_ms
    recompute = fwd + att_f_ms
    return dict(tokens=T, gemm_fwd_ms=round(fwd, 2), gemm_bwd_ms=round(bwd, 2), lm_head_ms=round(head_f + head_b, 2),
                attn_fwd_ms=round(att_f_ms, 2), attn_bwd_ms=round(att_b_ms, 2), floor_ms=round(total, 1),
                floor_tok_s=round(T / total * 1000), floor_with_recompute_ms=round(total + recompute, 1),
                floor_with_recompute_tok_s=round(T / (total + recompute) * 1000))

# (hidden, intermediate, layers, heads, kv heads, vocab[, head_dim])
shapes = {"7b": (4096, 11008, 32, 32, 32, 32000), "1b": (2048, 5632, 22, 32, 4, 32000), "70b": (8192, 28672, 80, 64, 8, 32000),
          "llama3-8b": (4096, 14336, 32, 32, 8, 128256), "llama3-70b": (8192, 28672, 80, 64, 8, 128256),
          "qwen3-8b": (4096, 12288, 36, 32, 8, 151936, 128), "gemma3-12b": (3840, 15360, 48, 16, 8, 262208, 256)}
# arguments: SHAPE:SEQxBATCH ... (e.g. llama3-8b:32768x1); none: the five rows first measured (7b, 1b, 70b)
runs = [(a.split(":")[0], *map(int, a.split(":")[1].split("x"))) for a in sys.argv[1:]] or \
    [("7b", 2048, 1), ("7b", 2048, 4), ("7b", 512, 8), ("1b", 2048, 4), ("70b", 2048, 1)]
for name, seq, batch in runs:
    r = floor(*shapes[name], seq, batch); r.update(shape=name, seq=seq, batch=batch)
    print(json.dumps(r), flush=True)
