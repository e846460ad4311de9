"""make_mc_golden.py: the reference log-likelihoods for evaluate's multiple-choice tasks.

Builds every request of tests/recipes/tasks/tasks.yaml's three tasks the way lm-evaluation-harness
does (its MMLU, ARC and HellaSwag templates and few-shot rules, written out again here in Python,
independently of eval/mc.c), encodes each (context, continuation) pair with the model's tokenizer
as the harness's HF backend does (no special tokens, trailing context spaces moved to the
continuation, the whole encoded and split at the context's length), and scores it with
transformers in fp32 on the CPU. Writes JSON: {task: [[loglik per choice] per question]} and the
accuracies. tests/test_eval_tasks.sh compares qlora-run's results.json with it.

    python3 make_mc_golden.py MODEL_DIR TASK_DIR > golden/mc/golden.json

MODEL_DIR: the weights our engine computes with for tasks.yaml's base: its init_model artifact
quantized to NF4 (the engine loads a bf16 model as NF4) and exported dequantized in f32 (the CPU
path computes with the dequantized weights unrounded; a bf16 export would differ by its rounding):
    qlora-run quantize CACHE/artifacts/init_model/KEY/model nf4
    qlora-run export --base nf4 --format merged --merged-dtype f32 --out deq   # MODEL_DIR = deq/model
The ARC task's `limit: 4` subset is qlora-run's (results.json's "record" fields), given as the
third argument, e.g. '[1,2,3,5]'.
"""
import json, re, sys
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

model_dir, task_dir = sys.argv[1], sys.argv[2]
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()

def jl(name):
    return [json.loads(l) for l in open(f"{task_dir}/{name}") if l.strip()]

def mmlu_text(d):
    c = d["choices"]
    return f"{d['question'].strip()}\nA. {c[0]}\nB. {c[1]}\nC. {c[2]}\nD. {c[3]}\nAnswer:"

def hs_pre(t):
    t = t.strip().replace(" [title]", ". ")
    t = re.sub("\\[.*?\\]", "", t)
    return t.replace("  ", " ")

def enc(s):
    return tok(s, add_special_tokens=False)["input_ids"]

def loglik(context, continuation):
    n = len(context) - len(context.rstrip())
    if n:
        continuation = context[-n:] + continuation
        context = context[:-n]
    whole, ctx = enc(context + continuation), enc(context)
    cont = whole[len(ctx):]
    ids = torch.tensor([whole])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0].float(), -1)
    return sum(logp[len(ctx) - 1 + j, t].item() for j, t in enumerate(cont))

def score(docs):
    out, acc, accn = [], 0, 0
    for ctx, choices, gold in docs:
        lls = [loglik(ctx, " " + c) for c in choices]
        out.append(lls)
        acc += max(range(len(lls)), key=lambda i: lls[i]) == gold
        accn += max(range(len(lls)), key=lambda i: lls[i] / len(choices[i])) == gold
    return out, acc / len(docs), accn / len(docs)

res = {}
dev = jl("mmlu_dev.jsonl")
docs = []
for d in jl("mmlu.jsonl"):
    subj = d["subject"].replace("_", " ")
    shots = [s for s in dev if s["subject"] == d["subject"]][:2]
    prefix = f"The following are multiple choice questions (with answers) about {subj}.\n\n"
    prefix += "".join(mmlu_text(s) + " " + "ABCD"[s["answer"]] + "\n\n" for s in shots)
    docs.append((prefix + mmlu_text(d), ["A", "B", "C", "D"], d["answer"]))
res["mmlu"] = score(docs)
arc = jl("arc.jsonl")
ARC_PICK = json.loads(sys.argv[3]) if len(sys.argv) > 3 else list(range(len(arc)))
docs = [(f"Question: {a['question']}\nAnswer:", a["choices"]["text"], a["choices"]["label"].index(a["answerKey"]))
        for a in (arc[i] for i in ARC_PICK)]
res["arc"] = score(docs)
docs = []
for h in jl("hellaswag.jsonl"):
    ctx = h["ctx_a"] + " " + h["ctx_b"].capitalize()
    docs.append((hs_pre(h["activity_label"] + ": " + ctx), [hs_pre(e) for e in h["endings"]], int(h["label"])))
res["hellaswag"] = score(docs)
json.dump({k: {"loglik": v[0], "acc": v[1], "acc_norm": v[2]} for k, v in res.items()}, sys.stdout, indent=1)
print()
