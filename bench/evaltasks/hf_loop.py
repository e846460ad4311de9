"""hf_loop.py: the same MMLU requests as bench/evaltasks/mmlu7b.yaml, scored by a plain transformers
loop (one forward per request, bf16 on the GPU, batch 1), for the tokens/s beside qlora-run's.

Each request is built as lm-evaluation-harness builds it (the MMLU description, the first 5 dev
examples of the subject, "\n\n" between shots; continuation " A".." D"; the pair encoded whole and
split at the context's length, no special tokens) and scored in file order, question by question,
for SECONDS seconds. Tokens counted as qlora-run counts them: each request's length less one.

    python3 hf_loop.py MODEL_DIR TASK_DIR SECONDS [START_FILE]

START_FILE: load the model, then wait until that file exists before the timed loop (run.sh loads
while qlora-run scores, and times this loop after it, on an idle GPU).
"""
import json, os, sys, time
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, task_dir, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
t0 = time.time()
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).to("cuda").eval()
print(f"loaded in {time.time() - t0:.1f} s", flush=True)

def jl(name):
    return [json.loads(l) for l in open(f"{task_dir}/{name}") if l.strip()]

def text(d):
    c = d["choices"]
    return f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"

dev, test = jl("dev.jsonl"), jl("test.jsonl")
if len(sys.argv) > 4:
    while not os.path.exists(sys.argv[4]):
        time.sleep(0.2)

def requests(d):
    shots = [s for s in dev if s["subject"] == d["subject"]][:5]
    ctx = f"The following are multiple choice questions (with answers) about {d['subject'].replace('_', ' ')}.\n\n"
    ctx += "".join(text(s) + " " + "ABCD"[s["answer"]] + "\n\n" for s in shots) + text(d)
    n_ctx = len(tok(ctx, add_special_tokens=False)["input_ids"])
    for c in "ABCD":
        whole = tok(ctx + " " + c, add_special_tokens=False)["input_ids"]
        yield whole, n_ctx

done_req = done_q = tokens = 0
right = 0
torch.cuda.synchronize()
start = time.time()
with torch.no_grad():
    for d in test:
        lls = []
        for whole, n_ctx in requests(d):
            ids = torch.tensor([whole], device="cuda")
            logp = torch.log_softmax(model(ids).logits[0].float(), -1)
            tgt = ids[0, n_ctx:]
            lls.append(logp[n_ctx - 1 : len(whole) - 1].gather(1, tgt[:, None]).sum().item())
            tokens += len(whole) - 1
            done_req += 1
        right += max(range(4), key=lambda i: lls[i]) == d["answer"]
        done_q += 1
        if time.time() - start >= seconds:
            break
wall = time.time() - start
rate = tokens / wall
print(f"transformers loop: {done_q} questions ({done_req} requests, {tokens} tokens) in {wall:.1f} s: "
      f"{rate:.0f} tokens/s, {done_q / wall:.2f} questions/s; all {len(test)} questions would take "
      f"{len(test) / (done_q / wall):.0f} s; acc on those {right / done_q:.4f}", flush=True)
