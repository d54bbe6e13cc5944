#!/usr/bin/env bash
# Bounded fuzz smoke run for CI: every target for FUZZ_SECONDS (default 15) from the committed
# seed corpus, new inputs kept in a throw-away directory. Fails on the first crash, printing
# the crashing input's path under fuzz/artifacts/<target>/ and how to reproduce it.
#
#   fuzz/smoke.sh                     # all targets, 15 s each
#   FUZZ_SECONDS=300 fuzz/smoke.sh plan   # one target, longer
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
set -euo pipefail

cd "$(dirname "$0")/.."
root="$(pwd)"
seconds="${FUZZ_SECONDS:-15}"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(annotation image policy plan review)
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

cargo +nightly fuzz build -O
for t in "${targets[@]}"; do
    mkdir -p "$work/$t"
    echo "fuzz $t for ${seconds}s"
    if ! cargo +nightly fuzz run -O "$t" "$work/$t" "$root/fuzz/corpus/$t" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 \
        >"$work/$t.log" 2>&1; then
        tail -40 "$work/$t.log"
        echo "fuzz target $t crashed; reproduce with: cargo +nightly fuzz run -O $t fuzz/artifacts/$t/<crash-file>" >&2
        exit 1
    fi
    grep -E '^stat::number_of_executed_units|^stat::average_exec_per_sec|^#[0-9]+.*DONE' "$work/$t.log" | tr '\n' ' '
    echo
done
