#!/usr/bin/env bash
# Build the fuzz targets and run each for a bounded time (CI: `fuzz/run.sh 15`).
#
# usage: fuzz/run.sh [SECONDS] [TARGET...]     (default 15 s each, every target)
#
# Targets run two at a time (JOBS, default: the number of CPUs, at most 2). Each starts from
# its committed seeds (fuzz/seeds/<target>, written by `tests/fuzz_seeds.rs`) plus whatever a
# previous run left in fuzz/corpus/<target> (not committed). A crash, leak, timeout or OOM
# fails the script; libFuzzer's artifact (fuzz/artifacts/<target>/) reproduces it:
# `cargo +nightly fuzz run <target> <artifact>`. Built with debug assertions and overflow
# checks on (cargo-fuzz's default) and AddressSanitizer. Long runs: see docs/FUZZING.md.
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

secs=${1:-15}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    mapfile -t targets < <(cargo +nightly fuzz list)
fi
jobs=${JOBS:-$(nproc)}
[ "$jobs" -gt 2 ] && jobs=2

start=$(date +%s)
cargo +nightly fuzz build
echo "fuzz: built in $(( $(date +%s) - start )) s"

bin=target/x86_64-unknown-linux-gnu/release
run_one() {
    local t=$1
    mkdir -p "corpus/$t" "artifacts/$t"
    local seeds=()
    [ -d "seeds/$t" ] && seeds=("seeds/$t")
    if "$bin/$t" -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -artifact_prefix="artifacts/$t/" -print_final_stats=1 \
        "corpus/$t" "${seeds[@]}" >"artifacts/$t/log" 2>&1; then
        echo "fuzz: $t ok: $(grep -m1 '^stat::number_of_executed_units' "artifacts/$t/log" | awk '{print $2}') executions"
    else
        echo "fuzz: $t FAILED"; tail -40 "artifacts/$t/log"
        return 1
    fi
}
export -f run_one
export secs bin
printf '%s\n' "${targets[@]}" | xargs -P "$jobs" -I{} bash -c 'run_one {}'
echo "fuzz: ${#targets[@]} targets, ${secs} s each, done in $(( $(date +%s) - start )) s"
