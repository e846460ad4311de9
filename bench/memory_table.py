"""memory_table.py DIR [DIR...]: README's memory table from `bench/gpu-next.sh M`'s output folder DIR
(and L's: the longer cells, one step each, in other sittings).

DIR holds fit.md (`train_gpu fit`, one table per model: the longest single sequence the train
stage's plan takes within each memory_budget) and cell-MODEL-BUDGET.log (one `train_gpu train
--memory-budget` step at that length, planned by the train stage's plan within that budget). Each cell of the table printed here is the length with what the step
used (nvidia-smi's used GiB: all of the process's device memory) when the step ran, marked
"(plan)" when it did not run (too long for the sitting), "(failed: ...)" when it ran and failed,
and "over" when it used more than the budget: those say the plan is short, not that the length
fits. Rows: budgets; columns: models, in fit.md's order. With no fit.md in the first DIR, the
lengths and the cells no folder logged are README.md's (the table in the working tree), so a later
sitting's steps (part L) fill in the cells README still marks "(plan)"; a step logged in several
folders counts as its last, and a step at another length than the table's (the plan changed since)
does not count.
"""
import os, re, sys

NAMES = {"llama3-8b": "8B (Llama-3)", "phi4": "14B (Phi-4)", "qwen3-32b": "32B (Qwen3)", "llama3-70b": "70B (Llama-3)"}


def cells_of_readme(path):
    """README's table: its lengths ((model, budget) -> length or "does not fit"), models, budgets
    and its cells as written"""
    names = {v: k for k, v in NAMES.items()}
    fit, written, models, budgets = {}, {}, [], []
    for line in open(path):
        f = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(f) == 5 and f[0] == "budget" and f[1] in names:
            models = [names[x] for x in f[1:]]
            continue
        if models and len(f) == 5 and f[0].endswith(" GiB"):
            b = f[0][:-4]
            budgets.append(b)
            for m, cell in zip(models, f[1:]):
                fit[m, b] = "does not fit" if cell == "does not fit" else cell.split(" ")[0].replace(",", "")
                written[m, b] = cell
        elif models and budgets:
            break
    if not fit:
        sys.exit("memory_table.py: %s has no table headed '| budget | %s |' to take the lengths from: "
                 "restore that header, or give part M's folder (its fit.md) first" % (path, " | ".join(NAMES.values())))
    return fit, models, budgets, written


def cells_of(folder):
    """the lengths (fit.md of part M, else README's), models, budgets, and the cells kept as written
    where no folder logged a step (README's; none with fit.md)"""
    if not os.path.exists(os.path.join(folder, "fit.md")):
        return cells_of_readme(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "README.md"))
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
    return fit, models, sorted(budgets, key=float), {}


def measured(folders, model, budget, length):
    """(used GiB, None) of the last step logged at that cell and the table's length, (None, why)
    when the last log of the cell failed, None when not run (a step at another length, of a plan
    since changed, is left out)"""
    paths = [os.path.join(d, "cell-%s-%s.log" % (model, budget)) for d in folders]
    for path in reversed([p for p in paths if os.path.exists(p)]):
        rows = [l for l in open(path) if l.startswith("|")]
        if not rows:
            last = [l.strip() for l in open(path) if l.strip()]
            return None, (last[-1] if last else "no output")[:60]
        f = [x.strip() for x in rows[-1].strip().strip("|").split("|")]
        tokens = int(f[2].split(" x ")[0])
        if tokens == int(length):
            return float(f[9]), None
        sys.stderr.write("%s: a step at %d tokens, not the table's %s: left out\n" % (path, tokens, length))
    return None


def table(folders):
    fit, models, budgets, written = cells_of(folders[0])
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
            got = measured(folders, m, b, length)
            if got is None:
                row.append(written.get((m, b), cell + " (plan)"))
            elif got[0] is None:
                row.append(cell + " (failed: %s)" % got[1].replace("|", "/"))
            else:
                row.append(cell + (" (%.2f GiB used%s)" % (got[0], ", over" if got[0] > float(b) else "")))
        out.append("| %s GiB | " % b + " | ".join(row) + " |")
    return "\n".join(out)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: memory_table.py DIR [DIR...] (the M and L folders of bench/gpu-next.sh)")
    for d in sys.argv[1:]:
        if not os.path.isdir(d):
            sys.exit("memory_table.py: %s is not a folder (give gpu-next.sh's M or L output folders)" % d)
    print(table(sys.argv[1:]))
