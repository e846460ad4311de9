#!/usr/bin/env bash
# report_to: [tensorboard] writes TensorBoard event files into the run record while the run goes:
# read back here with a standard-library reader (TFRecord framing, masked CRC-32C, the Event
# fields), independent of formats/tfevents.c; tests/unit/test_tensorboard.c checks the encoder
# against the CRC test vectors, and tests/tensorboard_verify.py (TensorBoard's own reader, run on
# a machine with tensorboard installed) is in docs/tensorboard.md.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
test_init # W, QLORA_CACHE, QLORA_RUNS
export QLORA_TEST_KINDS=1
cp "$SRC/tests/recipes/runner/chain.yaml" "$W/"
echo one > "$W/input.txt"

"$BIN" "$W/chain.yaml" -q --set 'report_to=[tensorboard]'; rc=$?
f=$(ls "$W"/runs/chain/*/tensorboard/events.out.tfevents.* 2>/dev/null | head -n1)
[ $rc -eq 0 ] && [ -s "$f" ] && ok "report_to: [tensorboard] writes an event file in the run record" || bad "no event file (rc $rc)"
out=$(python3 - "$f" <<'PY'
import struct, sys
def crc32c(b):
    c = 0xffffffff
    for x in b:
        c ^= x
        for _ in range(8):
            c = (c >> 1) ^ (0x82f63b78 if c & 1 else 0)
    return c ^ 0xffffffff
mask = lambda c: (((c >> 15) | (c << 17)) + 0xa282ead8) & 0xffffffff
def varint(b, i):
    v = s = 0
    while True:
        x = b[i]; i += 1; v |= (x & 0x7f) << s; s += 7
        if x < 0x80: return v, i
data = open(sys.argv[1], "rb").read()
i, tags, version = 0, {}, None
while i < len(data):
    n, = struct.unpack_from("<Q", data, i)
    assert struct.unpack_from("<I", data, i + 8)[0] == mask(crc32c(data[i:i + 8])), "length crc"
    rec = data[i + 12:i + 12 + n]
    assert struct.unpack_from("<I", data, i + 12 + n)[0] == mask(crc32c(rec)), "data crc"
    i += 16 + n
    j, step, tag, val = 0, 0, None, None
    while j < len(rec):
        k, j = varint(rec, j)
        if k == 0x09: j += 8
        elif k == 0x10: step, j = varint(rec, j)
        elif k == 0x1a:
            l, j = varint(rec, j); version = rec[j:j + l].decode(); j += l
        elif k == 0x2a:
            l, j = varint(rec, j); summ = rec[j:j + l]; j += l
            _, p = varint(summ, 0); vl, p = varint(summ, p); v = summ[p:p + vl]
            _, q = varint(v, 0); tl, q = varint(v, q); tag = v[q:q + tl].decode(); q += tl
            assert v[q] == 0x15; val = struct.unpack_from("<f", v, q + 1)[0]
        else: raise SystemExit(f"unexpected field key {k}")
    if tag: tags[tag] = (step, val)
print(version, " ".join(f"{t}={s}:{v:g}" for t, v in sorted(tags.items()) for s, v in [v]))
PY
)
echo "$out"
grep -q "^brain.Event:2 " <<<"$out" && ok "framing and CRCs check out; the first record is the file version" || bad "reader: $out"
grep -q "metrics/a.bytes=0:8 " <<<"$out" && grep -q "metrics/c.bytes=0:" <<<"$out" \
  && ok "each stage's metrics are scalars (metrics/STAGE.METRIC)" || bad "tags: $out"
"$BIN" "$W/chain.yaml" -q; last=$(ls -d "$W"/runs/chain/* | sort | tail -n1); [ ! -e "$last/tensorboard" ] \
  && ok "without report_to there are no event files" || bad "event files without report_to"
checks_done
