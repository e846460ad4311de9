#!/usr/bin/env bash
# docs/recipes.md is generated from the param tables: fail when they disagree, so the
# reference cannot drift from the code. Also: README shows the two setup commands.
set -u
BIN=${QLORA_BIN:?}
SRC=${QLORA_SRC:-$(pwd)}
pass=0 fail=0
if diff -u "$SRC/docs/recipes.md" <("$BIN" schema) >/tmp/qlora-docs-diff.$$; then
  pass=$((pass+1)); echo "ok   docs/recipes.md matches the param tables"
else
  fail=$((fail+1)); echo "FAIL docs/recipes.md is stale: regenerate with 'build/qlora-run schema > docs/recipes.md'"; head -40 /tmp/qlora-docs-diff.$$
fi
rm -f /tmp/qlora-docs-diff.$$
for c in "make demo" "make test"; do
  if grep -q "$c" "$SRC/README.md"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL README lacks '$c'"; fi
done
# every kind's parameters have a doc line
if "$BIN" schema | grep -E '^\| `[a-z_0-9]+` \|' | awk -F'|' '$6 ~ /^ *$/' | grep -q .; then
  fail=$((fail+1)); echo "FAIL some parameter has no description"
else
  pass=$((pass+1))
fi
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
