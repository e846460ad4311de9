#!/usr/bin/env python3
"""merged_check.py: the values of a merged model, against the base and adapter it came from and
against a merged model proven elsewhere. Used by tests/test_export_proven.sh.

  python3 merged_check.py BASE_DIR ADAPTER_DIR MERGED_DIR PROVEN_DIR

BASE_DIR/model.safetensors (bf16), ADAPTER_DIR (PEFT: adapter_config.json, adapter_model.safetensors,
F32), MERGED_DIR/model.safetensors (ours, bf16), PROVEN_DIR/model.safetensors (the merge that
transformers and peft were shown to load and agree with: tests/golden/export/check_export.py).
Checks, reading the files by hand (standard library only):
  - the same tensors (names, dtypes, shapes) in all three models;
  - a tensor no LoRA targets: the base's bytes;
  - a targeted one: every value is base + (alpha / r) * B @ A (alpha / sqrt(r) with rslora), summed
    in double, rounded to f32 and then to bf16 (round to nearest even), as merging in f32 and saving
    bf16 gives. A value may differ only where the exact sum lies within 1e-6 of a rounding
    boundary (relative to the sum's operands: f32 sums may round the other way there);
  - against the proven merge: every value within 1.5 bf16 steps (of the largest of the base value
    and the two results): the proven one was merged from the NF4 checkpoint's dequantized fp32
    weights, these from their bf16 copy (half a step), and each result was rounded (half a step).
Exits 1 with the tensor and index of the first differences.
"""
import json
import math
import struct
import sys


def read_st(path):
    with open(path, "rb") as f:
        b = f.read()
    n = struct.unpack_from("<Q", b, 0)[0]
    h = json.loads(b[8:8 + n])
    h.pop("__metadata__", None)
    out = {}
    for name, t in h.items():
        s, e = t["data_offsets"]
        out[name] = (t["dtype"], t["shape"], b[8 + n + s:8 + n + e])
    return out


def values(t):
    dtype, _, raw = t
    if dtype == "F32":
        return list(struct.unpack("<%df" % (len(raw) // 4), raw))
    if dtype == "BF16":
        u = struct.unpack("<%dH" % (len(raw) // 2), raw)
        return list(struct.unpack("<%df" % len(u), struct.pack("<%dI" % len(u), *[x << 16 for x in u])))
    raise SystemExit("unexpected dtype " + dtype)


def f32_bits(x):
    return struct.unpack("<I", struct.pack("<f", x))[0]


def bf16_of(x):  # double -> f32 -> bf16, round to nearest even; returns the 16 bits
    u = f32_bits(x)
    return (u + 0x7FFF + ((u >> 16) & 1)) >> 16


def bf16_value(h):
    return struct.unpack("<f", struct.pack("<I", h << 16))[0]


def near_boundary(x, h, mag):  # x within 1e-6 * mag of the midpoint between h and a neighbour
    v = bf16_value(h)
    for nb in (h - 1, h + 1):
        mid = (v + bf16_value(nb & 0xFFFF)) / 2
        if abs(x - mid) <= 1e-6 * mag + 1e-30:
            return True
    return False


def ulp(x):  # the bf16 step at |x| (8 significant bits)
    return 2.0 ** (math.frexp(abs(x))[1] - 8) if x else 2.0 ** -133


def main():
    base_dir, ad_dir, merged_dir, proven_dir = sys.argv[1:5]
    base = read_st(base_dir + "/model.safetensors")
    ours = read_st(merged_dir + "/model.safetensors")
    proven = read_st(proven_dir + "/model.safetensors")
    ad = read_st(ad_dir + "/adapter_model.safetensors")
    with open(ad_dir + "/adapter_config.json") as f:
        cfg = json.load(f)
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise SystemExit("FAIL: rank_pattern/alpha_pattern are not handled by this check")
    r, alpha = cfg["r"], cfg["lora_alpha"]
    scale = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    fails = []
    if sorted((k, v[0], v[1]) for k, v in ours.items()) != sorted((k, v[0], v[1]) for k, v in base.items()) or \
            sorted((k, v[0], v[1]) for k, v in ours.items()) != sorted((k, v[0], v[1]) for k, v in proven.items()):
        raise SystemExit("FAIL: the merged model's tensors (names, dtypes, shapes) differ from the base's or the proven one's")
    merged_n = ties = 0
    worst_steps = 0.0
    for name in sorted(ours):
        dtype, shape, raw = ours[name]
        if dtype != "BF16":
            fails.append(f"{name}: dtype {dtype}, expected BF16")
            continue
        mod = "base_model.model." + name[:-len(".weight")] if name.endswith(".weight") else None
        A, B = ad.get(f"{mod}.lora_A.weight"), ad.get(f"{mod}.lora_B.weight")
        got = struct.unpack("<%dH" % (len(raw) // 2), raw)
        if A is None:
            if raw != base[name][2]:
                fails.append(f"{name}: no LoRA targets it, but its bytes differ from the base's")
        else:
            merged_n += 1
            out_f, in_f = shape
            a, b, w = values(A), values(B), values(base[name])
            rk = A[1][0]
            for o in range(out_f):
                brow = b[o * rk:(o + 1) * rk]
                for i in range(in_f):
                    terms = [brow[k] * a[k * in_f + i] for k in range(rk)]
                    x = w[o * in_f + i] + scale * sum(terms)
                    h = bf16_of(x)
                    if got[o * in_f + i] != h:
                        # the f32 sum's own rounding is relative to its operands, not to x
                        if near_boundary(x, h, abs(w[o * in_f + i]) + scale * sum(map(abs, terms))):
                            ties += 1
                        else:
                            fails.append(f"{name}[{o},{i}] = {bf16_value(got[o * in_f + i])}, base + scale * B @ A = {x} (bf16 {bf16_value(h)})")
                            if len(fails) > 10:
                                break
        # against the proven merge: its base was fp32 (ours is that rounded to bf16, half a step of
        # the base value), then each result was rounded (half a step of the result): 1.5 steps
        pv = struct.unpack("<%dH" % (len(raw) // 2), proven[name][2])
        bv = struct.unpack("<%dH" % (len(raw) // 2), base[name][2])
        for j, (g, p, q) in enumerate(zip(got, pv, bv)):
            gv, pvv = bf16_value(g), bf16_value(p)
            d = abs(gv - pvv) / ulp(max(abs(gv), abs(pvv), abs(bf16_value(q))))
            worst_steps = max(worst_steps, d)
            if d > 1.5:
                fails.append(f"{name}[{j}] = {gv}, the proven merge has {pvv} ({d:.1f} bf16 steps apart)")
                break
        if len(fails) > 10:
            break
    for f in fails[:10]:
        print("FAIL:", f)
    if fails:
        return 1
    print(f"merged values: {merged_n} LoRA-targeted tensors equal base + {scale:g} * B @ A rounded to bf16 "
          f"({ties} values at a rounding tie), the rest the base's bytes; all within {worst_steps:.2f} bf16 steps of the proven merge")
    return 0


sys.exit(main())
