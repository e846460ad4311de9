#!/usr/bin/env bash
# check_memory_table.sh (ctest: test_memory_table, in builds with CUDA, where bench/train_gpu is):
# README's table of the longest sequence each memory_budget trains against the memory plan's
# arithmetic today (model/llama_plan.c). The table was measured on an H100 (bench/RESULTS.md,
# 2026-12-05: `train_gpu fit` on the device, then a step at each length); `train_gpu fit --paper
# 0.63` works the same plan with no GPU (the context as that sitting measured it) and gave every
# length within 256 tokens of the device's. The host's RAM is README's: 120 GiB available (the lent
# machines have 128 GiB, 124 available), which holds the 80 GiB row's offloaded inputs to 90% of it. A change to the plan that moves a length further, or
# a cell whose measured use is over its budget, fails here: measure the table again
# (bench/gpu-next.sh M, bench/memory_table.py). Last, bench/memory_table.py on made-up step logs:
# which steps fill a cell.
set -u
TG=${TRAIN_GPU:?set TRAIN_GPU to the built bench/train_gpu}
SRC=${QLORA_SRC:-$(pwd)}
pass=0 fail=0
ok() { pass=$((pass + 1)); echo "ok   $1"; }
bad() { fail=$((fail + 1)); echo "FAIL $1"; }

table=$(awk '/^\| budget \| 8B \(Llama-3\) \| 14B \(Phi-4\) \| 32B \(Qwen3\) \| 70B \(Llama-3\) \|$/ {on = 1} on && /^$/ {exit} on' "$SRC/README.md")
[ "$(printf '%s\n' "$table" | grep -c '^| [0-9]* GiB |')" -eq 6 ] && ok "README's table has the six budgets" \
    || bad "README's memory table not found, or not six budget rows: $table"
col=2
for m in llama3-8b phi4 qwen3-32b llama3-70b; do
    t=q,v
    [ $m = phi4 ] && t=qkv_proj
    out=$("$TG" fit --model $m --targets $t --paper 0.63 --host-gib 120 2>&1) || { bad "train_gpu fit --paper for $m failed: $out"; col=$((col + 1)); continue; }
    for b in 8 12 16 24 48 80; do
        want=$(printf '%s\n' "$out" | awk -F'|' -v b=$b '$4 + 0 == b && $4 ~ /[0-9]/ { gsub(/ /, "", $5); print $5 }')
        got=$(printf '%s\n' "$table" | awk -F'|' -v b="$b GiB" -v c=$((col + 1)) '{ r = $2; gsub(/^ +| +$/, "", r) } r == b { v = $c; gsub(/^ +| +$/, "", v); print v }')
        n=$(printf '%s' "$got" | sed -n 's/^\([0-9,]*\) (.*/\1/p' | tr -d ,)
        if [ "$got" = "does not fit" ] || [ "${want#doesnotfit}" != "$want" ]; then
            [ "$got" = "does not fit" ] && [ "${want#doesnotfit}" != "$want" ] && ok "$m in $b GiB: does not fit" \
                || bad "$m in $b GiB: README says '$got', the plan on paper '$want'"
        elif [ -n "$n" ] && [ "$want" -ge 0 ] 2>/dev/null && [ $((n > want ? n - want : want - n)) -le 256 ]; then
            ok "$m in $b GiB: $got (on paper $want)"
        else
            bad "$m in $b GiB: README says '$got', the plan on paper '$want' (more than 256 tokens apart)"
        fi
        # "(X GiB used)", or "(X GiB used, over)" as memory_table.py marks a step over its budget
        used=$(printf '%s' "$got" | sed -n 's/.*(\([0-9.]*\) GiB used[^)]*)$/\1/p')
        if [ -n "$used" ]; then
            awk -v u="$used" -v b="$b" 'BEGIN { exit !(u <= b) }' && ok "$m in $b GiB: the step used $used GiB" \
                || bad "$m in $b GiB: the step used $used GiB, over the budget"
        fi
    done
    col=$((col + 1))
done
# fit's --host-gib: above 0, and only on paper (a GPU run plans with the host's own RAM)
out=$("$TG" fit --model llama3-8b --paper 0.63 --host-gib 0 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "host-gib wants GiB of host RAM above 0" <<<"$out" && ok "fit refuses --host-gib 0" || bad "--host-gib 0: rc $rc $out"
out=$("$TG" fit --model llama3-8b --host-gib 64 2>&1); rc=$?
[ $rc -eq 2 ] && grep -q "host-gib is for --paper" <<<"$out" && ok "fit refuses --host-gib without --paper" || bad "--host-gib alone: rc $rc $out"

# bench/memory_table.py, which fills README's table from a sitting's step logs: a step at the
# table's length fills its cell; one at another length (a plan since changed) is left out, the
# cell kept as README writes it; a folder that is not there is refused
L=$(mktemp -d); trap 'rm -rf "$L"' EXIT
step() { echo "| llama3-8b | q,v | $1 x 1 | every layer, inputs on host | 1 | 1 | 1% | - | $2 | $3 | 1 -> 1 |"; }
step 11264 6.78 7.38 > "$L/cell-llama3-8b-8.log"
step 47104 10.40 11.02 > "$L/cell-llama3-8b-12.log"
mt=$(cd "$SRC" && python3 bench/memory_table.py "$L" 2>"$L/err")
row() { printf '%s\n' "$mt" | awk -F'|' -v b="$1 GiB" '{ r = $2; gsub(/^ +| +$/, "", r) } r == b { v = $3; gsub(/^ +| +$/, "", v); print v }'; }
readme8=$(printf '%s\n' "$table" | awk -F'|' '{ r = $2; gsub(/^ +| +$/, "", r) } r == "8 GiB" { v = $3; gsub(/^ +| +$/, "", v); print v }')
[ "$(row 12)" = "47,104 (11.02 GiB used)" ] && ok "memory_table.py fills a cell from a step at the table's length" \
    || bad "memory_table.py, 12 GiB: '$(row 12)'"
[ "$(row 8)" = "$readme8" ] && grep -q "a step at 11264 tokens, not the table's" "$L/err" \
    && ok "memory_table.py leaves out a step at another length, and says so" || bad "memory_table.py, 8 GiB: '$(row 8)' $(cat "$L/err")"
(cd "$SRC" && python3 bench/memory_table.py "$L/none" >/dev/null 2>"$L/err2"); rc=$?
[ $rc -ne 0 ] && grep -q "is not a folder" "$L/err2" && ok "memory_table.py refuses a folder that is not there" \
    || bad "memory_table.py on a missing folder: rc $rc $(cat "$L/err2")"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
