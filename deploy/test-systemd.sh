#!/usr/bin/env bash
# Start the installed colo-proxy@.service under a real systemd and check it end to end:
# `systemctl start colo-proxy@ci` returns once the proxy sent READY=1 (Type=notify), the unit is
# active (running) with every hardening directive of the shipped unit in force, `colo-proxy ctl
# stats` and the Prometheus endpoint answer, and `systemctl stop` (SIGTERM, the orderly stop)
# ends it with status 0 and Result=success.
#
# PID 1 of a build machine or a container is usually not systemd, so the test boots one:
# systemd-nspawn (package systemd-container) runs /lib/systemd/systemd as PID 1 of a container
# whose root is an overlay of the host's / with a tmpfs on top (nothing it writes reaches the
# host: the instance config, the check unit, /run, the journal). It boots only colo-ci.target
# (sysinit + the check service). The check service's exit status becomes the container's, and
# so this script's. The host's network namespace is shared (with --private-network nspawn's
# fresh sysfs has no /sys/module, and EAL's VFIO probe fails without it), so the instances'
# TCP ports are moved to 19003/19004 and 19103/19104, metrics to 19064 and 19164, away from
# the examples' defaults.
#
# The instance is the shipped dpdk-config/demo-primary.toml (virtual devices: memif servers, a
# TCP link listening on loopback, --no-huge) with its sockets moved from /tmp/colo-demo to
# /run/colo-proxy (the unit's RuntimeDirectory, so `ctl` reaches it from outside PrivateTmp),
# other ports (below) and a metrics endpoint added.
#
# usage: deploy/test-systemd.sh        (root, the package installed: deploy/test-deb.sh runs it
#                                       between dpkg -i and the purge)
set -euo pipefail
fail() { echo "test-systemd: FAIL: $*" >&2; exit 1; }

if [ "${1:-}" != --inner ]; then
    start=$(date +%s)
    [ "$(id -u)" = 0 ] || fail "needs root"
    [ -x /usr/bin/colo-proxy ] && [ -f /lib/systemd/system/colo-proxy@.service ] ||
        fail "the colo-proxy package is not installed"
    if ! command -v systemd-nspawn >/dev/null 2>&1; then
        if [ -n "${CI:-}" ] || [ "${COLO_REQUIRE_ALL:-0}" = 1 ]; then
            fail "systemd-nspawn missing (package systemd-container, .ci/setup installs it)"
        fi
        echo "test-systemd: SKIPPED: systemd-nspawn missing (apt-get install systemd-container)"
        exit 0
    fi
    work=$(mktemp -d /tmp/colo-systemd.XXXXXX)
    log=$(mktemp /tmp/colo-systemd-log.XXXXXX)
    trap 'rmdir "$work" 2>/dev/null || true; rm -f "$log"' EXIT
    # A private mount namespace: the overlay and its tmpfs go away with it, whatever happens.
    # The container's console (boot messages, the check's lines) goes to $log: all of it on a
    # failure, the check's lines otherwise.
    rc=0
    unshare --mount --propagation private bash "$0" --inner "$work" >"$log" 2>&1 || rc=$?
    if [ "$rc" != 0 ]; then
        cat "$log"
        fail "the check inside the container failed (exit status $rc; the container's console above)"
    fi
    grep -a -o 'test-systemd: .*' "$log"
    echo "test-systemd: 1 passed, 0 failed ($(( $(date +%s) - start )) s)"
    exit 0
fi

# --- inside the private mount namespace ----------------------------------------------------
work=$2
mount -t tmpfs -o mode=0755 colo-systemd "$work"
mkdir "$work/upper" "$work/work" "$work/root"
mount -t overlay overlay -o "lowerdir=/,upperdir=$work/upper,workdir=$work/work" "$work/root"
root=$work/root

# The instances: the demo primary with its sockets in /run/colo-proxy and its own ports, once on
# --no-huge memory (ci) and once on hugepages with a shared runtime dir in /run/dpdk (ci-huge:
# the unit's hugepage paths, LimitMEMLOCK, ReadWritePaths), when hugepages are free.
mkdir -p "$root/etc/colo-proxy"
instances="ci:0"
free_huge=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
if [ "${free_huge:-0}" -ge 256 ]; then
    instances="$instances ci-huge:1"
elif [ -n "${CI:-}" ] || [ "${COLO_REQUIRE_ALL:-0}" = 1 ]; then
    echo "test-systemd: FAIL: ${free_huge:-0} free hugepages, the ci-huge instance needs 256 (.ci/setup)" >&2
    exit 1
else
    echo "test-systemd: SKIPPED instance ci-huge: ${free_huge:-0} free hugepages (needs 256)"
fi
for inst in $instances; do
    name=${inst%:*} n=${inst#*:}
    sed -e "s|/tmp/colo-demo/|/run/colo-proxy/$name-|" \
        -e "s|127\.0\.0\.1:900\([0-9]\)|127.0.0.1:19${n}0\1|" \
        -e "s|\"colo-demo-p\"|\"colo-$name\"|" \
        /usr/share/doc/colo-proxy/examples/demo-primary.toml >"$root/etc/colo-proxy/$name.toml"
    [ "$name" = ci ] || sed -i 's|^memory = "no-huge".*|memory = "hugepages"|' "$root/etc/colo-proxy/$name.toml"
    printf '\n[mgmt.metrics]\nlisten = "127.0.0.1:19%s64"\n' "$n" >>"$root/etc/colo-proxy/$name.toml"
    /usr/bin/colo-proxy check-config "$root/etc/colo-proxy/$name.toml" >/dev/null ||
        { echo "test-systemd: the derived $name.toml does not validate" >&2; exit 1; }
done
echo "$instances" >"$root/etc/colo-ci-instances"

# What the container boots: sysinit.target and the check, nothing else of the host's units.
cat >"$root/etc/systemd/system/colo-ci.target" <<'EOF'
[Unit]
Description=colo-proxy systemd test
Requires=sysinit.target colo-ci-check.service
After=sysinit.target
AllowIsolate=yes
EOF
cat >"$root/etc/systemd/system/colo-ci-check.service" <<'EOF'
[Unit]
Description=colo-proxy systemd test: start, query and stop colo-proxy@ci instances
After=sysinit.target
# The container's systemd exits with this service's exit status (the test result).
SuccessAction=exit
FailureAction=exit

[Service]
Type=oneshot
ExecStart=/bin/bash /etc/colo-ci-check.sh
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=150
EOF
cat >"$root/etc/colo-ci-check.sh" <<'EOF'
set -uo pipefail
bad() {
    echo "test-systemd: FAIL: $unit: $*"
    systemctl status --no-pager --lines=0 "$unit"
    journalctl --no-pager -o cat -u "$unit" | tail -40
    exit 1
}
show() { systemctl show -p "$1" --value "$unit"; }

for inst in $(cat /etc/colo-ci-instances); do
    name=${inst%:*} n=${inst#*:}
    unit=colo-proxy@$name.service
    huge0=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
    echo "test-systemd: systemctl start $unit"
    # Type=notify: returns once READY=1 arrived (or the start failed / timed out).
    timeout 130 systemctl start "$unit" || bad "systemctl start failed"
    state="$(show ActiveState)/$(show SubState)"
    [ "$state" = active/running ] || bad "state $state, want active/running"
    echo "test-systemd: $unit is active (running), main PID $(show MainPID), status: $(show StatusText)"
    if [ "$name" = ci-huge ]; then
        huge1=$(awk '/^HugePages_Free:/ {print $2}' /proc/meminfo)
        [ "$huge1" -lt "$huge0" ] || bad "runs on hugepages, but free hugepages stayed at $huge0"
        echo "test-systemd: $unit holds $((huge0 - huge1)) hugepages"
    fi

    stats=$(/usr/bin/colo-proxy ctl --socket "/run/colo-proxy/$name-primary.sock" stats) ||
        bad "colo-proxy ctl stats failed"
    python3 -c 'import json, sys; d = json.load(sys.stdin); assert isinstance(d, dict) and d' \
        <<<"$stats" || bad "ctl stats is not a JSON object: $stats"
    echo "test-systemd: ctl stats answered ($(wc -c <<<"$stats") bytes)"

    url="http://127.0.0.1:19${n}64/metrics"
    metrics=$(python3 -c 'import sys, urllib.request
print(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$url") ||
        bad "GET $url failed"
    grep -q '^colo_proxy_' <<<"$metrics" || bad "no colo_proxy_ metric in $url"
    grep -q '^# EOF' <<<"$metrics" || bad "$url is not OpenMetrics (no # EOF)"
    echo "test-systemd: $url answered ($(grep -c '^colo_proxy_' <<<"$metrics") samples)"

    echo "test-systemd: systemctl stop $unit"
    timeout 60 systemctl stop "$unit" || bad "systemctl stop failed"
    res="$(show Result) $(show ExecMainStatus)"
    # Killed by the signal would be status 15 (a clean result too, by systemd's default
    # SuccessExitStatus): the orderly stop exits 0 after printing its final report.
    [ "$res" = "success 0" ] || bad "after stop: Result ExecMainStatus = $res, want success 0"
    [ "$(show ActiveState)" = inactive ] || bad "after stop: $(show ActiveState), want inactive"
    journalctl --no-pager -o cat -u "$unit" | grep -q 'colo-proxy final report' ||
        bad "no final report in the journal (not the orderly stop)"
    echo "test-systemd: $unit stopped cleanly (exit status 0)"
done
exit 0
EOF

cd /
# Bounded: the check has its own timeouts; this one is the backstop.
exec timeout --kill-after=10 200 systemd-nspawn --quiet --register=no --keep-unit \
    --machine colo-ci --directory "$root" --boot -- --unit=colo-ci.target \
    </dev/null
