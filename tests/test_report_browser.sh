#!/usr/bin/env bash
# The demo's report.html in a real browser: headless Chromium (Debian's `chromium`, installed by
# .ci/run) renders it at a phone's width; the screenshot must not be blank and the DOM Chromium
# built must hold the plots (loss, lr, grad norm, tokens/s, timeline, trends) as drawn SVG. Also:
# `qlora-run report` rebuilds the page, the page needs nothing from the network, and a report
# that cannot be written warns without failing the run.
set -u
BIN=${QLORA_BIN:?}
. "${QLORA_SRC:=$(pwd)}/tests/lib.sh"
SRC=${QLORA_SRC:-$(pwd)}
test_init # W, QLORA_CACHE, QLORA_RUNS
# a report that cannot be written (report.html made a directory while the run works) warns, and
# the run still succeeds
cp "$SRC/tests/recipes/runner/chain.yaml" "$W/"
echo one > "$W/input.txt"
SLEEP_MS=1500 QLORA_TEST_KINDS=1 "$BIN" "$W/chain.yaml" > "$W/chain.out" 2>&1 & pid=$!
for _ in $(seq 100); do ls -d "$W"/runs/chain/* >/dev/null 2>&1 && break; sleep 0.05; done
mkdir -p "$(ls -d "$W"/runs/chain/* | head -n1)/report.html/blocked"
wait $pid; rc=$?
[ $rc -eq 0 ] && grep -q "warning: report.html not written" "$W/chain.out" && ok "an unwritable report warns; the run succeeds" \
  || bad "unwritable report: rc $rc $(cat "$W/chain.out")"

CHROME=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$CHROME" ]; then
  if [ -n "${CI:-}" ]; then echo "FAIL chromium is not installed (.ci/run installs it)"; exit 1; fi
  echo "skip: chromium is not installed (apt-get install chromium)"; exit 0
fi
chrome() { # a fresh profile each time, nothing that phones home
  local prof; prof=$(mktemp -d -p "$W")
  timeout 120 "$CHROME" --headless --no-sandbox --disable-gpu --disable-quic --no-first-run \
    --disable-background-networking --disable-component-update --disable-sync --hide-scrollbars \
    --user-data-dir="$prof" "$@" 2>>"$W/chrome.log"
}

"$BIN" "$SRC/recipes/demo.yaml" -q || { echo "FAIL the demo failed"; exit 1; }
"$BIN" "$SRC/recipes/demo.yaml" -q --set stages.eval.max_new_tokens=6 || { echo "FAIL second demo run failed"; exit 1; }
run=$(ls -d "$W"/runs/demo/* | sort | tail -n1)
page=$run/report.html
[ -s "$page" ] && ok "every run writes report.html" || bad "no report.html in $run"
grep -qiE '<script|<link|@import|url\(|https?://[^"]*\.(css|js|woff)' "$page" && bad "the page loads something" \
  || ok "self-contained: no script, stylesheet link or remote font"
grep -q 'name="viewport"' "$page" && ok "has a viewport for phones" || bad "no viewport meta"

chrome --window-size=412,3000 --screenshot="$W/shot.png" "file://$page" >/dev/null
[ -s "$W/shot.png" ] && python3 "$SRC/tests/report_check.py" png "$W/shot.png" && ok "the screenshot is not blank" \
  || { bad "screenshot"; tail -5 "$W/chrome.log"; }
chrome --dump-dom "file://$page" > "$W/dom.html"
python3 "$SRC/tests/report_check.py" dom "$W/dom.html" plot-train-loss plot-train-lr plot-train-grad-norm \
  plot-train-tokens-per-s plot-timeline trend-eval-val_loss trend-eval-score \
  && ok "Chromium's DOM holds every plot with drawn lines" || bad "plots missing from the rendered DOM"
grep -q "Cached in this run: the curves are those of run" "$W/dom.html" && ok "a cached train stage shows the run that trained it" \
  || bad "no note on cached training curves"
grep -q '<h2 id="eval">' "$W/dom.html" && grep -q '>abcd' "$W/dom.html" && ok "evaluate table and sample generations" \
  || bad "no evaluation section"
grep -q 'id="history"' "$W/dom.html" && [ "$(grep -o '<td class="n">[12]</td><td class="mono">2026\|<td class="n">[12]</td><td class="mono">[0-9]\{8\}T' "$W/dom.html" | wc -l)" -eq 2 ] \
  && ok "the history lists both runs" || bad "history"

# report rebuilds; runs diff prints the changed parameter
rm -f "$page"
out=$("$BIN" report demo) && [ "$out" = "$page" ] && [ -s "$page" ] && ok "qlora-run report demo rebuilds the newest run's page" \
  || bad "report rebuild: $out"
out=$("$BIN" runs diff "$(ls -d "$W"/runs/demo/* | sort | head -n1)" demo)
grep -q "stages.eval.max_new_tokens: 8 -> 6" <<<"$out" && grep -q "eval: different artifact" <<<"$out" \
  && ok "runs diff shows the parameter and the artifact that changed" || bad "runs diff: $out"
"$BIN" report "$W/nope" >/dev/null 2>&1; [ $? -eq 2 ] && ok "report of a missing run: usage error" || bad "report missing"

checks_done
