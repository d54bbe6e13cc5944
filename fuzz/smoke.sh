#!/usr/bin/env bash
# Bounded fuzz smoke run for CI: every target for FUZZ_SECONDS (default 15) from the committed
# seed corpus, new inputs kept in a throw-away directory. Fails on the first crash, printing
# the crashing input's path under fuzz/artifacts/<target>/ and how to reproduce it.
#
#   fuzz/smoke.sh                         # all targets, 15 s each
#   FUZZ_SECONDS=300 fuzz/smoke.sh plan   # one target, longer
#
# Build output goes to FUZZ_TARGET_DIR (default fuzz/target); CI points it outside the clone so
# a warm machine rebuilds only our crates. The smoke build has no sanitizer (our code has no
# `unsafe`; AddressSanitizer only slows the build and the runs) but keeps debug assertions, so
# integer overflow panics are found; set FUZZ_SANITIZER=address for long runs.
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

cd "$(dirname "$0")/.."
root="$(pwd)"
seconds="${FUZZ_SECONDS:-15}"
target_dir="${FUZZ_TARGET_DIR:-$root/fuzz/target}"
sanitizer="${FUZZ_SANITIZER:-none}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(annotation image policy plan review)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

flags=(-O --debug-assertions --sanitizer "$sanitizer" --target-dir "$target_dir")
cargo +nightly fuzz build "${flags[@]}"
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    echo "fuzz $t for ${seconds}s"
    if ! cargo +nightly fuzz run "${flags[@]}" "$t" "$work/$t" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        # The panic message first: cargo-fuzz's own backtrace fills the end of the log.
        grep -A4 'panicked at' "$work/$t.log" || true
        grep -B2 -A6 '^Failing input' "$work/$t.log" || tail -40 "$work/$t.log"
        echo "fuzz target $t crashed; reproduce with: cargo +nightly fuzz run ${flags[*]} $t fuzz/artifacts/$t/<crash-file>" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec' "$work/$t.log" | tr '\n' ' '
    echo
done
