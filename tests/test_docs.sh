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
# docs/commands.md is generated from the command and option tables (the same --help prints)
if diff -u "$SRC/docs/commands.md" <("$BIN" schema --commands) >/tmp/qlora-docs-diff.$$; then
  pass=$((pass+1)); echo "ok   docs/commands.md matches the command tables"
else
  fail=$((fail+1)); echo "FAIL docs/commands.md is stale: regenerate with 'build/qlora-run schema --commands > docs/commands.md'"; head -40 /tmp/qlora-docs-diff.$$
fi
rm -f /tmp/qlora-docs-diff.$$
# every command of the table is in README's command list, and every command answers --help with exit 0
for c in $("$BIN" --help | awk '/^  [a-z-]+ /{print $1}'); do
  if grep -qE "qlora-run ([a-z-]+\\\\?\|)*$c[ \\\`]" "$SRC/README.md"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL README's command table lacks '$c'"; fi
  if "$BIN" "$c" --help >/dev/null 2>&1; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL qlora-run $c --help does not exit 0"; fi
done
for c in "make demo" "make test"; do
  if grep -q "$c" "$SRC/README.md"; then pass=$((pass+1)); else fail=$((fail+1)); echo "FAIL README lacks '$c'"; fi
done
# every kind's parameters have a doc line
if "$BIN" schema | grep -E '^\| `[a-z_0-9]+` \|' | awk -F'|' 'NF >= 7 && $6 ~ /^ *$/' | grep -q .; then
  fail=$((fail+1)); echo "FAIL some parameter has no description"
else
  pass=$((pass+1))
fi
# every document a comment cites is in the repository: a user who clones it can follow it
# (a citation: docs/NAME.md, an upper-case NAME.md such as README.md, or the old formats.md)
cited=$(cd "$SRC" && grep -rhoE '(^|[^.A-Za-z0-9_/-])(docs/[A-Za-z0-9_-]+|[A-Z][A-Z0-9_-]*|formats)\.md' \
          --include='*.c' --include='*.h' --include='*.cu' --include='*.cuh' --include='*.lua' \
          --include='*.sh' --include='*.mjs' --include='*.py' --include='CMakeLists.txt' --include='Makefile' \
          --exclude-dir='build*' --exclude-dir=.git --exclude-dir=node_modules --exclude=test_docs.sh \
          core formats net hub data kernels model tokenizer train export generate eval stages runner \
          hooks tests bench recipes CMakeLists.txt Makefile 2>/dev/null | sed -E 's|^[^A-Za-z0-9_-]||' | sort -u)
for doc in $cited; do
  case $doc in
    docs/*) [ -f "$SRC/$doc" ] || { fail=$((fail+1)); echo "FAIL the code cites $doc, which is not in the repository"; } ;;
    README.md|RESULTS.md|DESIGN.md|STYLE.md) ;;
    *) [ -f "$SRC/docs/$doc" ] || [ -f "$SRC/$doc" ] || [ -f "$SRC/bench/$doc" ] ||
         { fail=$((fail+1)); echo "FAIL the code cites $doc, which is not in the repository (cite a file under docs/)"; } ;;
  esac
done
[ -n "$cited" ] && pass=$((pass+1))
# docs/nightly.md shows recipes/nightly.yaml as it is, and the recipe is valid
if awk '/^<!-- recipes\/nightly.yaml/{f=1; next} f && /^```yaml/{g=1; next} g && /^```/{exit} g' "$SRC/docs/nightly.md" | diff -q - "$SRC/recipes/nightly.yaml" >/dev/null \
   && "$BIN" validate "$SRC/recipes/nightly.yaml" >/dev/null 2>&1; then
  pass=$((pass+1))
else
  fail=$((fail+1)); echo "FAIL docs/nightly.md's recipe differs from recipes/nightly.yaml, or it does not validate"
fi
# every --set a recipe's comments show is a key of that recipe that validates (bench-7b.yaml's
# comment once named a key the lora stage does not have)
for r in "$SRC"/recipes/*.yaml; do
  while IFS= read -r s; do
    s=${s#--set }; s=${s#[\"\']}; s=${s%[\"\']}
    if "$BIN" validate "$r" --set "$s" >/dev/null 2>/tmp/qlora-docs-set.$$; then pass=$((pass+1))
    else fail=$((fail+1)); echo "FAIL $(basename "$r")'s comment shows --set $s, which does not validate:"; cat /tmp/qlora-docs-set.$$; fi
  done < <(grep -E '^#' "$r" | grep -oE -- "--set (\"[^\"]*\"|'[^']*'|[^ '\"]+)")
done
rm -f /tmp/qlora-docs-set.$$
echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
