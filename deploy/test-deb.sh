#!/usr/bin/env bash
# Build the Debian package from the existing release build (no second LTO build), install it
# with dpkg -i, and check the installed result: --version, check-config on every installed
# example, man pages, completions, systemd units (systemd-analyze verify, then started and
# stopped under a real systemd in a container: deploy/test-systemd.sh). Purges it after.
# Run as root (CI); test.sh runs it when cargo-deb is installed (.ci/setup installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }

[ -x target/release/colo-proxy ] || cargo build --release
bash deploy/package-assets.sh
cargo deb --no-build --fast --output target/debian/ >/dev/null
deb=$(ls -t target/debian/colo-proxy_*.deb | head -n1)
echo "test-deb: built $deb ($(du -h "$deb" | cut -f1))"
info=$(dpkg-deb --info "$deb")
grep -q "Depends:.*librte-eal" <<<"$info" || fail "no DPDK library dependency in $deb"

dpkg -i "$deb" >/dev/null
trap 'dpkg --purge colo-proxy >/dev/null 2>&1 || true' EXIT

want="colo-proxy $(sed -n 's/^version = "\(.*\)"$/\1/p' Cargo.toml | head -n1)"
got=$(/usr/bin/colo-proxy --version)
[ "$got" = "$want" ] || fail "--version: '$got', want '$want'"

n=0
for f in /etc/colo-proxy/*.toml /usr/share/doc/colo-proxy/examples/*.toml; do
    /usr/bin/colo-proxy check-config "$f" >/dev/null || fail "check-config $f"
    n=$((n + 1))
done
[ "$n" -ge 8 ] || fail "only $n example configs installed"
conffiles=$(dpkg-query -W -f='${Conffiles}\n' colo-proxy)
grep -q /etc/colo-proxy/primary.toml <<<"$conffiles" || fail "/etc/colo-proxy/primary.toml is not a conffile"

page=$(MANPAGER=cat MANWIDTH=100 man colo-proxy 2>/dev/null) || fail "man colo-proxy"
for s in run demo check-config ctl selfcheck; do
    grep -q "colo-proxy-$s(1)" <<<"$page" || fail "man colo-proxy does not list $s"
    man -w "colo-proxy-$s" >/dev/null || fail "no man page colo-proxy-$s"
done
test -s /usr/share/bash-completion/completions/colo-proxy || fail "bash completion"
test -s /usr/share/zsh/vendor-completions/_colo-proxy || fail "zsh completion"
test -s /usr/share/fish/vendor_completions.d/colo-proxy.fish || fail "fish completion"
test -s /usr/share/colo-proxy/grafana/colo-proxy.json || fail "grafana dashboard"

# The installed units, as the system would load them (instance = an installed config).
systemd-analyze verify --man=no colo-proxy-hugepages.service 'colo-proxy@primary.service' \
    || fail "systemd-analyze verify"
# ... and as a real systemd runs them: colo-proxy@ started (READY=1), queried, stopped.
bash deploy/test-systemd.sh || fail "deploy/test-systemd.sh"

dpkg --purge colo-proxy >/dev/null
trap - EXIT
[ ! -e /usr/bin/colo-proxy ] || fail "purge left /usr/bin/colo-proxy"
echo "test-deb: 1 passed, 0 failed ($(( $(date +%s) - start )) s)"
