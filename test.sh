#!/usr/bin/env bash
# The test command (README command 2; CI runs it too): all tests, then every benchmark in its
# short --smoke mode. DPDK tests pick --in-memory or --no-huge by themselves.
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo test --release
for b in $(sed -n 's/^name = "\(.*\)"$/\1/p' <(awk '/^\[\[bench\]\]/{f=1;next} /^\[/{f=0} f' Cargo.toml)); do
    echo "== bench $b (smoke)"
    cargo bench --bench "$b" -- --smoke
done
