#!/usr/bin/env bash
# The 16-byte accesses of the elementwise and fused LoRA kernels, in the PTX nvcc makes of them:
# a bf16x8 struct read or written through its own type compiles to four 4-byte accesses
# (ld.global.v2.u16 / st.global.u32 a pair at a time), which is what every map, RMSNorm, RoPE,
# dropout and the fused LoRA kernels did until 2026-12-05. Each kernel with a vector path must read
# 16 bytes at a time (ld.global.v4), and none may read bf16 pairs (ld.global.v2.u16).
# Registered by CMake when the CUDA backend is built (NVCC: its compiler).
set -u
SRC=${QLORA_SRC:-$(pwd)}
NVCC=${NVCC:-nvcc}
W=$(mktemp -d)
trap 'rm -rf "$W"' EXIT
fail=0
for f in elementwise lora; do
    if ! "$NVCC" -arch=sm_90 -O3 -std=c++17 -I"$SRC" -I"$SRC/kernels/cuda" -ptx -o "$W/$f.ptx" "$SRC/kernels/cuda/$f.cu"; then
        echo "FAIL kernels/cuda/$f.cu does not compile to PTX"
        fail=1
    fi
done
[ $fail = 0 ] || exit 1
python3 - "$W/elementwise.ptx" "$W/lora.ptx" <<'PY'
import re, sys
vector = ("map8_kernel", "rmsnorm_fwd_row_kernel", "rmsnorm_bwd_row_kernel", "rmsnorm_fwd_kernel", "rmsnorm_bwd_kernel",
          "rope_row_kernel", "f32_to_bf16_pieces_kernel", "lora_down_kernel", "lora_up_bwd_kernel")
fail, seen = 0, set()
for path in sys.argv[1:]:
    for entry in re.split(r"\n\.visible \.entry |\n\.entry ", open(path).read())[1:]:
        name = entry.split("(", 1)[0]
        pairs = len(re.findall(r"^\s+ld\.global\.v2\.u16", entry, re.M))
        wide = len(re.findall(r"^\s+ld\.global(?:\.nc)?\.v4\.", entry, re.M))
        kernel = next((k for k in vector if k in name), None)
        if pairs:
            print("FAIL %s reads bf16 pairs (%d ld.global.v2.u16)" % (name, pairs))
            fail = 1
        if kernel:
            seen.add(kernel)
            if not wide:
                print("FAIL %s has no 16-byte read (ld.global.v4)" % name)
                fail = 1
missing = set(vector) - seen
if missing:
    print("FAIL kernels not found in the PTX: %s" % ", ".join(sorted(missing)))
    fail = 1
if not fail:
    print("ok: %d kernels with a vector path, every one reading 16 bytes at a time" % len(seen))
sys.exit(fail)
PY
