#!/bin/sh
# Runs the libFuzzer targets built by fuzz/build.sh.
#   fuzz/run.sh [TARGET...]          fuzz each for FUZZ_TIME seconds (default 60)
#                                    or FUZZ_RUNS executions, whichever ends first
#   fuzz/run.sh --replay [TARGET...] run every committed corpus file once, no fuzzing
# New inputs the fuzzer finds go to $FUZZ_BUILD/corpus/TARGET (not committed:
# copy an interesting one into fuzz/corpus/TARGET by hand); a crash, leak or
# timeout leaves $FUZZ_BUILD/artifacts/TARGET-* and fails the run.
set -u
cd "$(dirname "$0")/.."
OUT=${FUZZ_BUILD:-.build-fuzz}
replay=no
[ "${1:-}" = --replay ] && { replay=yes; shift; }
targets=${*:-$(cd fuzz/targets && ls *.swift | sed 's/\.swift$//')}
export SWIFT_BACKTRACE=enable=no
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
status=0
for t in $targets; do
    bin="$OUT/bin/fuzz-$t"
    [ -x "$bin" ] || { echo "fuzz/run.sh: $bin is missing; run fuzz/build.sh first" >&2; exit 2; }
    mkdir -p "$OUT/corpus/$t" "$OUT/artifacts" "$OUT/logs"
    if [ $replay = yes ]; then
        # One execution per committed file (a directory argument with -runs=0).
        if "$bin" -runs=0 -timeout=10 "fuzz/corpus/$t" > "$OUT/logs/$t.replay.log" 2>&1; then
            echo "fuzz-replay $t: $(ls fuzz/corpus/$t | wc -l) inputs ok"
        else
            echo "fuzz-replay $t: FAILED (see $OUT/logs/$t.replay.log)"; tail -20 "$OUT/logs/$t.replay.log"; status=1
        fi
        continue
    fi
    echo "fuzz $t: ${FUZZ_TIME:-60}s, at most ${FUZZ_RUNS:--1} runs; log $OUT/logs/$t.log"
    if nice -n "${FUZZ_NICE:-10}" "$bin" -max_total_time="${FUZZ_TIME:-60}" -runs="${FUZZ_RUNS:--1}" \
        -timeout=10 -rss_limit_mb=2048 -max_len="${FUZZ_MAX_LEN:-8192}" -print_final_stats=1 \
        -artifact_prefix="$OUT/artifacts/$t-" "$OUT/corpus/$t" "fuzz/corpus/$t" > "$OUT/logs/$t.log" 2>&1; then
        echo "fuzz $t: $(grep -E 'stat::number_of_executed_units' "$OUT/logs/$t.log" | awk '{print $2}') executions, no crash"
    else
        echo "fuzz $t: FAILED (see $OUT/logs/$t.log and $OUT/artifacts/$t-*)"; grep -E 'ERROR|Fatal|crash|leak' "$OUT/logs/$t.log" | head -5; status=1
    fi
done
exit $status
