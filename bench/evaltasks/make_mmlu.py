"""make_mmlu.py: an MMLU-shaped task for the evaluate speed benchmark (bench/evaltasks/run.sh).

Writes OUT/test.jsonl (14,042 questions over MMLU's 57 subjects, each subject with its test split's
number of questions) and OUT/dev.jsonl (5 solved examples a subject), records in the hub's MMLU
schema: question, subject, choices (four), answer (an index). The text is random words; what is
realistic is the length: each subject's questions and choices are drawn around the length MMLU's
have in tokens of a 32,000-token BPE vocabulary (approximate per-subject means, the long reading
passages of the history subjects and the law cases included), written as that many characters, so a
model with the byte-level tokenizer of `qlora-run init-model` sees prompts of MMLU's 5-shot sizes
(about 800 tokens on average, the longest near 2,700). Deterministic (seeded).

    python3 make_mmlu.py OUT
"""
import json, os, random, sys

# subject: (test questions, mean question tokens, mean choice tokens)
SUBJECTS = {
    "abstract_algebra": (100, 45, 6), "anatomy": (135, 30, 6), "astronomy": (152, 40, 10),
    "business_ethics": (100, 60, 15), "clinical_knowledge": (265, 30, 10), "college_biology": (144, 60, 12),
    "college_chemistry": (100, 60, 8), "college_computer_science": (100, 80, 10), "college_mathematics": (100, 70, 8),
    "college_medicine": (173, 110, 10), "college_physics": (102, 70, 8), "computer_security": (100, 40, 10),
    "conceptual_physics": (235, 30, 8), "econometrics": (114, 80, 15), "electrical_engineering": (145, 30, 6),
    "elementary_mathematics": (378, 45, 6), "formal_logic": (126, 70, 18), "global_facts": (100, 40, 5),
    "high_school_biology": (310, 50, 12), "high_school_chemistry": (203, 50, 8),
    "high_school_computer_science": (100, 80, 10), "high_school_european_history": (165, 380, 20),
    "high_school_geography": (198, 30, 8), "high_school_government_and_politics": (193, 40, 12),
    "high_school_macroeconomics": (390, 45, 12), "high_school_mathematics": (270, 55, 6),
    "high_school_microeconomics": (238, 50, 12), "high_school_physics": (151, 70, 10),
    "high_school_psychology": (545, 45, 10), "high_school_statistics": (216, 100, 15),
    "high_school_us_history": (204, 330, 20), "high_school_world_history": (237, 320, 18),
    "human_aging": (223, 30, 8), "human_sexuality": (131, 35, 8), "international_law": (121, 60, 20),
    "jurisprudence": (108, 55, 20), "logical_fallacies": (163, 55, 15), "machine_learning": (112, 55, 12),
    "management": (103, 30, 6), "marketing": (234, 55, 10), "medical_genetics": (100, 30, 6),
    "miscellaneous": (783, 30, 5), "moral_disputes": (346, 50, 15), "moral_scenarios": (895, 75, 5),
    "nutrition": (306, 40, 12), "philosophy": (311, 40, 12), "prehistory": (324, 40, 10),
    "professional_accounting": (282, 120, 8), "professional_law": (1534, 250, 30),
    "professional_medicine": (272, 200, 8), "professional_psychology": (612, 60, 12),
    "public_relations": (110, 40, 10), "security_studies": (245, 45, 40), "sociology": (201, 35, 12),
    "us_foreign_policy": (100, 35, 12), "virology": (166, 30, 8), "world_religions": (171, 25, 5),
}
assert len(SUBJECTS) == 57 and sum(v[0] for v in SUBJECTS.values()) == 14042

rnd = random.Random(22)
WORDS = ("the of and to in is that for it as with was on be by at this which from or are an not have but "
         "what all were when we there can more if will one about so out up into than them its only other "
         "energy market court theory cell reaction function law state policy patient value force system "
         "growth contract price water model group process effect rate evidence society data analysis").split()

SCALE = 0.6  # the table's means times this: a 5-shot prompt of about 800 tokens on average

def text(mean):
    n = max(8, int(rnd.lognormvariate(0, 0.35) * mean * SCALE))  # characters: tokens of the byte tokenizer
    out, size = [], 0
    while size < n:
        w = rnd.choice(WORDS)
        out.append(w)
        size += len(w) + 1
    s = " ".join(out)[:n].strip()
    return s[0].upper() + s[1:] + "?"

def record(subject, q, c):
    return {"question": text(q), "subject": subject, "choices": [text(c).rstrip("?") for _ in range(4)],
            "answer": rnd.randrange(4)}

out = sys.argv[1]
os.makedirs(out, exist_ok=True)
with open(f"{out}/test.jsonl", "w") as t, open(f"{out}/dev.jsonl", "w") as d:
    for subject, (n, q, c) in SUBJECTS.items():
        for _ in range(5):
            d.write(json.dumps(record(subject, q, c)) + "\n")
        for _ in range(n):
            t.write(json.dumps(record(subject, q, c)) + "\n")
