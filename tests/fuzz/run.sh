#!/bin/sh
# Builds the fuzz targets of fuzz/ with libFuzzer's coverage instrumentation
# and runs each for FUZZ_SECONDS (default 600), one after the other.
#
#   tests/fuzz/run.sh                 # every target
#   tests/fuzz/run.sh jws csr         # some targets
#   FUZZ_SECONDS=60 tests/fuzz/run.sh
#
# Stable toolchain only: libfuzzer-sys builds libFuzzer from its C++ source
# (needs g++, see tests/fuzz/install.sh), and rustc's sancov pass, enabled
# with -C passes / -C llvm-args (stable flags), instruments the code. No
# sanitizer (those need nightly): the targets are safe Rust
# (unsafe_code = "forbid"), so what the fuzzer looks for is panics, aborts,
# timeouts and memory blow-ups, with debug assertions and overflow checks on.
#
# New inputs that reach new coverage go to fuzz/target/corpus/<target>/
# (not committed); crashes to fuzz/artifacts/<target>/. Logs and a summary
# line per target (executions, time, crashes) go to fuzz/target/logs/.
set -eu
cd "$(dirname "$0")/../.."
ROOT=$(pwd)
SECONDS_PER_TARGET=${FUZZ_SECONDS:-600}
TARGETS=${*:-"jws csr acme_payload config http01_response tls_alpn01_cert dns_answer"}
HOST=$(rustc -vV | sed -n 's/^host: //p')

sh tests/fuzz/install.sh

export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps RUSTFLAGS off build scripts and proc macros.
(cd fuzz && cargo build --release --target "$HOST" --bins)

mkdir -p fuzz/target/logs
for t in $TARGETS; do
    bin="$ROOT/fuzz/target/$HOST/release/$t"
    work="$ROOT/fuzz/target/corpus/$t"
    artifacts="$ROOT/fuzz/artifacts/$t"
    mkdir -p "$work" "$artifacts"
    log="$ROOT/fuzz/target/logs/$t.log"
    echo "fuzzing $t for ${SECONDS_PER_TARGET}s (log: $log)"
    status=0
    # The committed seeds are read, new inputs written to $work only.
    "$bin" "$work" "$ROOT/fuzz/corpus/$t" \
        -max_total_time="$SECONDS_PER_TARGET" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 \
        -artifact_prefix="$artifacts/" >"$log" 2>&1 || status=$?
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    took=$(sed -n 's/^Done \([0-9]*\) runs in \([0-9]*\) second.*/\2/p' "$log" | tail -n 1)
    crashes=$(find "$artifacts" -type f | wc -l)
    echo "$t: status $status, ${execs:-?} executions in ${took:-?} s, $crashes crash/timeout/oom files" \
        | tee -a "$ROOT/fuzz/target/logs/summary.txt"
    if [ "$status" -ne 0 ]; then
        tail -n 40 "$log"
        exit "$status"
    fi
done
