#!/bin/sh
# A COLO lab on one machine with real TCP stacks, no VMs: network namespaces colo-client,
# colo-pvm and colo-svm (PVM and SVM share one IP and MAC), each on a veth pair whose root-side
# end (colo-nic, colo-pvm, colo-svm) the proxies bind with net_af_packet; see
# veth-primary.toml / veth-secondary.toml. tests/pipeline_netns.rs does the same with unique names.
#
#   sudo dpdk-config/veth-lab.sh up      # then start veth-primary.toml, then veth-secondary.toml
#   sudo ip netns exec colo-pvm <server> & sudo ip netns exec colo-svm <same server> &
#   sudo ip netns exec colo-client <client to 10.77.0.2>
#   sudo dpdk-config/veth-lab.sh down
# Both proxies run in the root namespace here: if the second one fails with "could not set
# PACKET_FANOUT", start it again (see docs/CONFIG.md, af_packet notes).
set -eu
CLIENT_IP=10.77.0.1 CLIENT_MAC=02:00:00:00:00:01
VM_IP=10.77.0.2 VM_MAC=02:00:00:00:00:02

if [ "${1:-}" = down ]; then
    for r in client pvm svm; do ip netns del colo-$r 2>/dev/null || true; done
    for i in colo-nic colo-pvm colo-svm; do ip link del $i 2>/dev/null || true; done
    exit 0
fi
[ "${1:-}" = up ] || { echo "usage: $0 up|down" >&2; exit 2; }

for r in client pvm svm; do
    case $r in client) i=colo-nic ;; *) i=colo-$r ;; esac
    ns=colo-$r
    ip netns add $ns
    # No IPv6: DAD nonces and router solicitations would differ between PVM and SVM.
    ip netns exec $ns sysctl -qw net.ipv6.conf.all.disable_ipv6=1 net.ipv6.conf.default.disable_ipv6=1
    ip link add $i type veth peer name eth0 netns $ns
    sysctl -qw net.ipv6.conf.$i.disable_ipv6=1
    # Offloads off on both ends: DPDK must see MTU-sized frames with complete checksums.
    ethtool -K $i tx off tso off gso off gro off >/dev/null
    ip netns exec $ns ethtool -K eth0 tx off rx off tso off gso off gro off >/dev/null
    if [ $r = client ]; then
        ip_=$CLIENT_IP mac=$CLIENT_MAC peer_ip=$VM_IP peer_mac=$VM_MAC
    else
        # TCP sysctls stay the kernel's defaults (buffer autotuning on), as in a real VM: the
        # primary releases the smaller of the two VMs' receive windows to the client.
        ip_=$VM_IP mac=$VM_MAC peer_ip=$CLIENT_IP peer_mac=$CLIENT_MAC
    fi
    ip netns exec $ns ip link set lo up
    ip netns exec $ns ip link set eth0 address $mac
    ip netns exec $ns ip addr add $ip_/24 dev eth0
    ip netns exec $ns ip link set eth0 up
    # Static neighbours: ARP timers are not deterministic across PVM and SVM.
    ip netns exec $ns ip neigh replace $peer_ip lladdr $peer_mac dev eth0 nud permanent
    ip link set $i up
done
