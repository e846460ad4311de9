#!/usr/bin/env bash
# run.sh TARGET SECONDS: run one libFuzzer target from build-fuzz/ on its seed corpus
# (tests/fuzz/corpus/TARGET, plus a scratch copy that grows), print executions, coverage
# and the result. A crash leaves crash-* in build-fuzz/fuzz/artifacts/ and exits non-zero.
set -euo pipefail
t=$1; secs=${2:-15}
root=$(cd "$(dirname "$0")/../.." && pwd)
bin=$root/build-fuzz/fuzz/$t
seeds=$root/tests/fuzz/corpus/$t
work=$root/build-fuzz/fuzz/corpus-$t
art=$root/build-fuzz/fuzz/artifacts/
mkdir -p "$work" "$art" "$seeds"
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
log=$root/build-fuzz/fuzz/$t.log
if "$bin" -max_total_time="$secs" -max_len=65536 -rss_limit_mb=4096 -timeout=20 -artifact_prefix="$art" "$work" "$seeds" >"$log" 2>&1; then
  rc=0
else
  rc=$?
fi
line=$(grep -E '^#[0-9]+.*(DONE|pulse|NEW|REDUCE|INITED)' "$log" | tail -n1)
execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n1)
printf '%-20s %ss  %s\n' "$t" "$secs" "${line:-?}"
if [ $rc -ne 0 ]; then echo "fuzz target $t failed (exit $rc); see $log"; tail -n 40 "$log"; fi
exit $rc
