#!/usr/bin/env bash
# The test command (README command 2; CI runs it too): all tests, then every benchmark in its
# short --smoke mode. DPDK tests pick --in-memory or --no-huge by themselves.
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo test --release
# The Debian package: built from the release build, installed, checked, purged (needs root
# and cargo-deb; CI has both, so there it never skips).
if [ "$(id -u)" = 0 ] && cargo deb --version >/dev/null 2>&1; then
    bash deploy/test-deb.sh
elif [ -n "${CI:-}" ]; then
    echo "test.sh: deploy/test-deb.sh needs root and cargo-deb (.ci/setup)" >&2
    exit 1
else
    echo "test.sh: skipping deploy/test-deb.sh (needs root and cargo-deb)"
fi
for b in $(sed -n 's/^name = "\(.*\)"$/\1/p' <(awk '/^\[\[bench\]\]/{f=1;next} /^\[/{f=0} f' Cargo.toml)); do
    echo "== bench $b (smoke)"
    cargo bench --bench "$b" -- --smoke
done
