"""memory_table.py DIR: README's memory table from `bench/gpu-next.sh M`'s output folder DIR.

DIR holds fit.md (`train_gpu fit`, one table per model: the longest single sequence the train
stage's plan takes within each memory_budget) and cell-MODEL-BUDGET.log (one `train_gpu train
--memory-budget` step at that length, planned by the train stage's plan within that budget). Each cell of the table printed here is the length with what the step
used (nvidia-smi's used GiB: all of the process's device memory) when the step ran, marked
"(plan)" when it did not run (too long for the sitting), "(failed: ...)" when it ran and failed,
and "over" when it used more than the budget: those say the plan is short, not that the length
fits. Rows: budgets; columns: models, in fit.md's order.
"""
import os, re, sys

NAMES = {"llama3-8b": "8B (Llama-3)", "phi4": "14B (Phi-4)", "qwen3-32b": "32B (Qwen3)", "llama3-70b": "70B (Llama-3)"}


def cells_of(folder):
    fit, models, budgets = {}, [], []
    for line in open(os.path.join(folder, "fit.md")):
        f = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(f) != 6 or not re.fullmatch(r"[0-9.]+", f[2]):
            continue
        model, budget, length = f[0], f[2], f[3]
        if model not in models:
            models.append(model)
        if budget not in budgets:
            budgets.append(budget)
        fit[model, budget] = length
    return fit, models, sorted(budgets, key=float)


def measured(folder, model, budget):
    """(used GiB, None) of the step at that cell, (None, why) when it failed, None when not run"""
    path = os.path.join(folder, "cell-%s-%s.log" % (model, budget))
    if not os.path.exists(path):
        return None
    rows = [l for l in open(path) if l.startswith("|")]
    if not rows:
        last = [l.strip() for l in open(path) if l.strip()]
        return None, (last[-1] if last else "no output")[:60]
    f = [x.strip() for x in rows[-1].strip().strip("|").split("|")]
    return float(f[9]), None


def table(folder):
    fit, models, budgets = cells_of(folder)
    out = ["| budget | " + " | ".join(NAMES.get(m, m) for m in models) + " |",
           "| --- |" + " --- |" * len(models)]
    for b in budgets:
        row = []
        for m in models:
            length = fit.get((m, b), "-")
            if not length.isdigit():
                row.append("does not fit" if length.startswith("does not fit") else length)
                continue
            cell = "{:,}".format(int(length))
            got = measured(folder, m, b)
            if got is None:
                row.append(cell + " (plan)")
            elif got[0] is None:
                row.append(cell + " (failed: %s)" % got[1].replace("|", "/"))
            else:
                row.append(cell + (" (%.2f GiB used%s)" % (got[0], ", over" if got[0] > float(b) else "")))
        out.append("| %s GiB | " % b + " | ".join(row) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: memory_table.py DIR (the M folder of bench/gpu-next.sh)")
    print(table(sys.argv[1]))
