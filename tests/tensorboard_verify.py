"""Read qlora-run's TensorBoard event file with TensorBoard's own readers and compare every
scalar with the run's events.jsonl (where tensorboard is installed: docs/tensorboard.md).
Usage: tensorboard_verify.py DIR (a run record's tensorboard/ files and its events.jsonl)."""
import glob, json, os, shutil, sys, tempfile

d = sys.argv[1]
out = os.environ.get("OUT", "/tmp")
log = open(os.path.join(out, "tb_verify.txt"), "w")
def say(*a):
    print(*a); print(*a, file=log); log.flush()

import tensorboard
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing import event_file_loader
say("tensorboard", tensorboard.__version__)
try:
    import tensorflow  # noqa
    say("tensorflow present: the C++ record reader is used")
except Exception:
    say("no tensorflow: tensorboard's own stub record reader (Python CRC-32C) is used")

path = (glob.glob(os.path.join(d, "events.out.tfevents.*")) + glob.glob(os.path.join(d, "tensorboard", "events.out.tfevents.*")))[0]
ea = EventAccumulator(path, size_guidance={"scalars": 0})
ea.Reload()
tags = sorted(ea.Tags()["scalars"])
say("scalar tags:", tags)
ev = [json.loads(l) for l in open(os.path.join(d, "events.jsonl"))]
fails = 0
def check(cond, what):
    global fails
    if not cond:
        fails += 1
        say("FAIL", what)
def same(series, want, key, tag):
    check(len(series) == len(want), f"{tag}: {len(series)} points, events.jsonl has {len(want)}")
    bad = [(s.step, s.value, w[key]) for s, w in zip(series, want)
           if s.step != w["step"] or abs(s.value - w[key]) > 1e-6 * max(1.0, abs(w[key]))]
    check(not bad, f"{tag}: mismatches {bad[:3]}")
    say(f"{tag}: {len(series)} points match (first {series[0].step}:{series[0].value:.6g}, last {series[-1].step}:{series[-1].value:.6g})")
steps = [e for e in ev if e["type"] == "step" and e["stage"] == "train"]
evals = [e for e in ev if e["type"] == "eval" and e["stage"] == "train"]
same(ea.Scalars("train/loss"), steps, "loss", "train/loss")
same(ea.Scalars("train/learning_rate"), steps, "lr", "train/learning_rate")
same(ea.Scalars("train/grad_norm"), steps, "grad_norm", "train/grad_norm")
same(ea.Scalars("train/tokens_per_s"), steps, "tokens_per_s", "train/tokens_per_s")
same(ea.Scalars("train/val_loss"), evals, "val_loss", "train/val_loss")
ends = {e["stage"]: e.get("metrics", {}) for e in ev if e["type"] == "stage_end"}
for st, m in ends.items():
    for k, v in m.items():
        s = ea.Scalars(f"metrics/{st}.{k}")
        check(len(s) == 1 and abs(s[0].value - v) <= 1e-6 * max(1.0, abs(v)), f"metrics/{st}.{k}")
say("stage metrics checked:", sum(len(m) for m in ends.values()))

# the raw loader: every record's CRCs are checked; a flipped byte must be noticed
n_all = sum(1 for _ in event_file_loader.EventFileLoader(path).Load())
tmp = tempfile.mkdtemp()
bad = os.path.join(tmp, os.path.basename(path))
shutil.copy(path, bad)
data = bytearray(open(bad, "rb").read())
data[len(data) // 2] ^= 0x40
open(bad, "wb").write(bytes(data))
try:
    n_bad = sum(1 for _ in event_file_loader.EventFileLoader(bad).Load())
    say(f"raw records: {n_all}; with a byte flipped mid-file the reader stops after {n_bad}")
    check(n_bad < n_all, "a flipped byte went unnoticed")
except Exception as e:
    say(f"raw records: {n_all}; a flipped byte raised {type(e).__name__}: {e}")
say("RESULT", "ok" if not fails else f"{fails} failures")
