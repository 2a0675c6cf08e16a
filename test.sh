#!/usr/bin/env bash
# The test command (README command 2; CI runs it too): all tests, then every benchmark in its
# short --smoke mode. DPDK tests pick --in-memory or --no-huge by themselves.
#
# Tests and bench smokes build with the `ci` profile (Cargo.toml: release optimisation without
# LTO, 16 codegen units: the same code, a fraction of the build time); the shipped binary
# (`cargo build --release`, packaged by deploy/test-deb.sh) and `cargo bench` keep the release
# and bench profiles (thin LTO, one codegen unit). COLO_TEST_PROFILE=release tests with the
# release profile instead.
#
# usage: ./test.sh            build and run everything
#        ./test.sh --no-run   only build what the run needs (.ci/run does this first)
set -euo pipefail
cd "$(dirname "$0")"
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"

profile=${COLO_TEST_PROFILE:-ci}
no_run=()
[ "${1:-}" = --no-run ] && no_run=(--no-run)
benches=$(sed -n 's/^name = "\(.*\)"$/\1/p' <(awk '/^\[\[bench\]\]/{f=1;next} /^\[/{f=0} f' Cargo.toml))
# The pure layers again in a debug build (overflow checks and debug assertions on): their unit
# tests and the DPDK-free integration tests. COLO_SKIP_DEBUG_TESTS=1 skips this step.
PURE_TESTS="compare_ack_gate compare_alloc compare_commit compare_datagram compare_loss
compare_props compare_tcp config_bypass config_cli config_eal config_failover config_fuzz
config_schema link_encap link_framing rewrite_alloc rewrite_announce rewrite_close
rewrite_failover rewrite_flows rewrite_prop rewrite_qemu_defects sim_robust sim_wire"
PURE_LIB_FILTER="buf:: wire:: flow:: compare:: rewrite:: control:: config:: link::framing"

if [ ${#no_run[@]} -gt 0 ]; then
    t0=$(date +%s)
    cargo test --profile "$profile" --no-run
    # shellcheck disable=SC2046
    cargo build --profile "$profile" $(printf -- '--bench %s ' $benches)
    echo "== test build ($profile profile) took $(( $(date +%s) - t0 )) s"
    if [ "${COLO_SKIP_DEBUG_TESTS:-0}" != 1 ]; then
        t0=$(date +%s)
        # shellcheck disable=SC2046
        cargo test --no-run --lib $(printf -- '--test %s ' $PURE_TESTS)
        echo "== pure-layer debug test build took $(( $(date +%s) - t0 )) s"
    fi
    exit 0
fi

t0=$(date +%s)
cargo test --profile "$profile"
echo "== tests ($profile profile) took $(( $(date +%s) - t0 )) s"

if [ "${COLO_SKIP_DEBUG_TESTS:-0}" != 1 ]; then
    echo "== pure-layer tests, debug build"
    t0=$(date +%s)
    # shellcheck disable=SC2086
    cargo test --lib -- $PURE_LIB_FILTER
    # shellcheck disable=SC2046
    cargo test $(printf -- '--test %s ' $PURE_TESTS)
    echo "== pure-layer debug tests took $(( $(date +%s) - t0 )) s"
fi

# The Debian package: built from the release build, installed, checked (also started under a
# real systemd: deploy/test-systemd.sh), purged (needs root and cargo-deb; CI has both, so there
# it never skips).
t0=$(date +%s)
if [ "$(id -u)" = 0 ] && cargo deb --version >/dev/null 2>&1; then
    bash deploy/test-deb.sh
elif [ -n "${CI:-}" ]; then
    echo "test.sh: deploy/test-deb.sh needs root and cargo-deb (.ci/setup)" >&2
    exit 1
else
    echo "test.sh: skipping deploy/test-deb.sh (needs root and cargo-deb)"
fi
echo "== package test took $(( $(date +%s) - t0 )) s"

t0=$(date +%s)
for b in $benches; do
    echo "== bench $b (smoke)"
    cargo bench --profile "$profile" --bench "$b" -- --smoke
done
echo "== bench smokes took $(( $(date +%s) - t0 )) s"
