#!/usr/bin/env bash
# Every recipe under tests/recipes/bad/ must be rejected by `qlora-run validate` with its
# expected message (first line: "# expect: TEXT", or a NAME.expect file), the expected exit
# code ("# code: N", default 3 = invalid recipe), and no crash. Optional "# set: K=V" adds a
# --set override. base-*.yaml files are bases for `extends` cases, not cases themselves.
set -u
BIN=${QLORA_BIN:?set QLORA_BIN to the qlora-run program}
export QLORA_TEST_KINDS=1 QLORA_CACHE=$(mktemp -d) QLORA_RUNS=$(mktemp -d)
trap 'rm -rf "$QLORA_CACHE" "$QLORA_RUNS"' EXIT
cd "$(dirname "$0")/recipes/bad"
pass=0 fail=0
for f in *.yaml; do
  case $f in base-*) continue ;; esac
  name=${f%.yaml}
  if [ -f "$name.expect" ]; then expect=$(head -n1 "$name.expect")
  else expect=$(sed -n 's/^# expect: //p' "$f" | head -n1); fi
  code=$(sed -n 's/^# code: //p' "$f" | head -n1); code=${code:-3}
  set_arg=$(sed -n 's/^# set: //p' "$f" | head -n1)
  if [ -n "$set_arg" ]; then out=$("$BIN" validate "$f" --set "$set_arg" 2>&1); rc=$?
  else out=$("$BIN" validate "$f" 2>&1); rc=$?; fi
  if [ $rc -ne "$code" ] || ! grep -qF -- "$expect" <<<"$out"; then
    echo "FAIL $name: exit $rc (want $code), output:"; echo "$out" | sed 's/^/    /'; echo "  expected: $expect"
    fail=$((fail+1))
  elif [ $rc -ge 128 ]; then
    echo "FAIL $name: crashed ($rc)"; fail=$((fail+1))
  else
    pass=$((pass+1))
  fi
done
# refused when loaded means nothing ran: running (not validating) a recipe whose LoRA targets are
# not its family's writes no artifact, not even the base it would have generated first
out=$("$BIN" lora-target-family-default.yaml 2>&1); rc=$?
if [ $rc -eq 3 ] && [ -z "$(ls -A "$QLORA_CACHE/artifacts" 2>/dev/null)" ]; then pass=$((pass+1))
else echo "FAIL run of lora-target-family-default: exit $rc (want 3) or artifacts written:"; ls -R "$QLORA_CACHE" | head; fail=$((fail+1)); fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ] && [ $pass -ge 40 ]
