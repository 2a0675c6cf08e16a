#!/usr/bin/env bash
# The test command (README command 2; CI runs it too): all tests, then every benchmark in its
# short --smoke mode. DPDK tests pick --in-memory or --no-huge by themselves.
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

cargo test --release

# The pure layers again in a debug build (overflow checks and debug assertions on): their unit
# tests and the DPDK-free integration tests. COLO_SKIP_DEBUG_TESTS=1 skips this step.
PURE_TESTS="compare_ack_gate compare_alloc compare_commit compare_datagram compare_loss
compare_props compare_tcp config_bypass config_cli config_eal config_failover config_fuzz
config_schema link_encap link_framing rewrite_alloc rewrite_announce rewrite_close
rewrite_failover rewrite_flows rewrite_prop rewrite_qemu_defects sim_robust sim_wire"
if [ "${COLO_SKIP_DEBUG_TESTS:-0}" != 1 ]; then
    echo "== pure-layer tests, debug build"
    t0=$(date +%s)
    cargo test --lib -- buf:: wire:: flow:: compare:: rewrite:: control:: config:: link::framing
    # shellcheck disable=SC2046
    cargo test $(printf -- '--test %s ' $PURE_TESTS)
    echo "== pure-layer debug tests took $(( $(date +%s) - t0 )) s"
fi

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
