//! Simulators against hostile or odd input: malformed, truncated, corrupted and misaddressed
//! frames are counted and ignored (never a panic); TCP edge cases answer like a real stack.

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::demo::sim::{Addresses, ClientConfig, ClientSim, VecAlloc, VmConfig, VmSim};
use colo_proxy::wire::{self, packet::tcp_flags};
use etherparse::{PacketBuilder, TcpOptionElement};
use proptest::prelude::*;

fn addrs() -> Addresses {
    Addresses::default()
}

fn vm() -> VmSim {
    VmSim::new(addrs(), VmConfig::default())
}

fn client() -> ClientSim {
    ClientSim::new(
        addrs(),
        ClientConfig {
            udp_every: 3,
            icmp_every: 5,
            ipv6_every: 2,
            max_transactions: Some(40),
            ..ClientConfig::default()
        },
    )
}

fn vm_rx(vm: &mut VmSim, frame: &[u8]) -> Vec<VecBuf> {
    let mut out = Vec::new();
    vm.on_rx(&VecBuf::from_slice(frame), 1_000, &mut VecAlloc, &mut |b| {
        out.push(b)
    });
    out
}

fn assert_accounted(vm: &VmSim) {
    let s = vm.stats();
    assert_eq!(
        s.rx_frames,
        s.rx_malformed + s.rx_bad_checksum + s.rx_ignored + s.rx_tcp + s.rx_udp + s.rx_icmp
    );
}

/// A TCP segment from the client to the VM.
fn tcp_to_vm(sport: u16, dport: u16, seq: u32, flags: u8, ack: u32, payload: &[u8]) -> Vec<u8> {
    let a = addrs();
    let mut b = PacketBuilder::ethernet2(a.client_mac, a.vm_mac)
        .ipv4(a.client_ip.octets(), a.vm_ip.octets(), 64)
        .tcp(sport, dport, seq, 65535);
    if flags & tcp_flags::SYN != 0 {
        b = b.syn();
        b = b
            .options(&[TcpOptionElement::MaximumSegmentSize(1200)])
            .unwrap();
    }
    if flags & tcp_flags::ACK != 0 {
        b = b.ack(ack);
    }
    if flags & tcp_flags::FIN != 0 {
        b = b.fin();
    }
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

/// Frames of a short real exchange, both directions.
fn sample_frames() -> (Vec<Vec<u8>>, Vec<Vec<u8>>) {
    let mut c = client();
    let mut v = vm();
    let (mut to_vm, mut to_client) = (Vec::new(), Vec::new());
    let mut seen_vm = Vec::new();
    let mut seen_client = Vec::new();
    let mut now = 0;
    for _ in 0..200 {
        now += 50_000;
        c.generate(now, &mut VecAlloc, 16, &mut |b: VecBuf| to_vm.push(b));
        v.tick(now, &mut VecAlloc, &mut |b| to_client.push(b));
        for f in std::mem::take(&mut to_vm) {
            seen_vm.push(f.to_vec());
            v.on_rx(&f, now, &mut VecAlloc, &mut |b| to_client.push(b));
        }
        for f in std::mem::take(&mut to_client) {
            seen_client.push(f.to_vec());
            c.on_rx(&f, now, &mut VecAlloc, &mut |b| to_vm.push(b));
        }
    }
    assert!(c.is_done());
    (seen_vm, seen_client)
}

#[test]
fn malformed_and_misaddressed_frames_are_counted() {
    let mut v = vm();
    let syn = tcp_to_vm(1234, 80, 1000, tcp_flags::SYN, 0, b"");
    // Truncated inside the TCP header.
    assert!(vm_rx(&mut v, &syn[..40]).is_empty());
    assert_eq!(v.stats().rx_malformed, 1);
    // Runt.
    assert!(vm_rx(&mut v, &[0u8; 5]).is_empty());
    assert_eq!(v.stats().rx_malformed, 2);
    // Bad TCP checksum.
    let mut bad = syn.clone();
    let n = bad.len();
    bad[n - 1] ^= 0x55;
    assert!(vm_rx(&mut v, &bad).is_empty());
    assert_eq!(v.stats().rx_bad_checksum, 1);
    // Other MAC, other IP.
    let mut other_mac = syn.clone();
    other_mac[0] ^= 1;
    assert!(vm_rx(&mut v, &other_mac).is_empty());
    let a = addrs();
    let mut other_ip = Vec::new();
    PacketBuilder::ethernet2(a.client_mac, a.vm_mac)
        .ipv4(a.client_ip.octets(), [10, 9, 9, 9], 64)
        .udp(1, 7000)
        .write(&mut other_ip, b"12345678abcdefgh")
        .unwrap();
    assert!(vm_rx(&mut v, &other_ip).is_empty());
    // UDP to a port nobody serves.
    let mut udp_other = Vec::new();
    PacketBuilder::ethernet2(a.client_mac, a.vm_mac)
        .ipv4(a.client_ip.octets(), a.vm_ip.octets(), 64)
        .udp(1, 7001)
        .write(&mut udp_other, b"x")
        .unwrap();
    assert!(vm_rx(&mut v, &udp_other).is_empty());
    assert_eq!(v.stats().rx_ignored, 3);
    assert_eq!(v.connections(), 0);
    // The untouched SYN still works.
    assert_eq!(vm_rx(&mut v, &syn).len(), 1);
    assert_eq!(v.connections(), 1);
    assert_accounted(&v);

    let mut c = client();
    for f in [&syn[..], &[0u8; 3][..], &bad[..]] {
        let mut out = Vec::new();
        c.on_rx(
            &VecBuf::from_slice(f),
            1,
            &mut VecAlloc,
            &mut |b: VecBuf| out.push(b),
        );
        assert!(out.is_empty());
    }
    let s = c.stats();
    assert_eq!(s.rx_frames, 3);
    assert_eq!(s.rx_malformed, 1);
    assert_eq!(
        s.rx_ignored + s.rx_bad_checksum,
        2,
        "the SYN is not addressed to the client"
    );
}

#[test]
fn duplicate_syn_gets_the_same_syn_ack_and_strays_get_rst() {
    let mut v = vm();
    let syn = tcp_to_vm(1234, 80, 1000, tcp_flags::SYN, 0, b"");
    let a1 = vm_rx(&mut v, &syn);
    let a2 = vm_rx(&mut v, &syn);
    assert_eq!(a1.len(), 1);
    assert_eq!(a1[0].data(), a2[0].data(), "same SYN-ACK again");
    let info = wire::parse(a1[0].data()).unwrap();
    let t = info.tcp.unwrap();
    assert!(t.has(tcp_flags::SYN | tcp_flags::ACK));
    assert_eq!(t.ack, 1001);
    assert_eq!(v.stats().dup_syns, 1);
    assert_eq!(v.connections(), 1);

    // A different isn_seed gives a different ISN for the same 4-tuple.
    let mut v2 = VmSim::new(
        addrs(),
        VmConfig {
            isn_seed: 2,
            ..VmConfig::default()
        },
    );
    let b1 = vm_rx(&mut v2, &syn);
    let t2 = wire::parse(b1[0].data()).unwrap().tcp.unwrap();
    assert_ne!(t.seq, t2.seq);

    // Non-SYN segment of an unknown connection: RST with seq = its ack.
    let stray = tcp_to_vm(4321, 80, 5, tcp_flags::ACK, 777, b"data");
    let r = vm_rx(&mut v, &stray);
    assert_eq!(r.len(), 1);
    let rt = wire::parse(r[0].data()).unwrap().tcp.unwrap();
    assert!(rt.has(tcp_flags::RST));
    assert_eq!(rt.seq, 777);
    // SYN to a closed port: RST|ACK acking the SYN.
    let closed = tcp_to_vm(4321, 81, 50, tcp_flags::SYN, 0, b"");
    let r = vm_rx(&mut v, &closed);
    let rt = wire::parse(r[0].data()).unwrap().tcp.unwrap();
    assert!(rt.has(tcp_flags::RST | tcp_flags::ACK));
    assert_eq!(rt.ack, 51);
    assert_eq!(v.stats().rst_sent, 2);

    // Handshake, a request in two segments (second one first: dropped and dup-acked).
    let isn = t.seq;
    assert!(vm_rx(
        &mut v,
        &tcp_to_vm(1234, 80, 1001, tcp_flags::ACK, isn + 1, b"")
    )
    .is_empty());
    let mut req = [0u8; 10];
    req[..4].copy_from_slice(&10u32.to_be_bytes());
    let late = tcp_to_vm(1234, 80, 1006, tcp_flags::ACK, isn + 1, &req[5..]);
    let dup = vm_rx(&mut v, &late);
    assert_eq!(dup.len(), 1);
    let dt = wire::parse(dup[0].data()).unwrap().tcp.unwrap();
    assert_eq!(dt.ack, 1001, "out-of-order: duplicate ACK for what we have");
    assert_eq!(v.stats().dup_acks, 1);
    let first = tcp_to_vm(1234, 80, 1001, tcp_flags::ACK, isn + 1, &req[..5]);
    let acked = vm_rx(&mut v, &first);
    let at = wire::parse(acked[0].data()).unwrap().tcp.unwrap();
    assert_eq!(at.ack, 1006);
    assert_eq!(v.stats().requests, 0);
    let resp = vm_rx(&mut v, &late);
    assert_eq!(v.stats().requests, 1);
    assert!(!resp.is_empty());
    let ri = wire::parse(resp[0].data()).unwrap();
    assert_eq!(ri.tcp.unwrap().ack, 1011, "response acks the whole request");
    assert_eq!(ri.tcp.unwrap().seq, isn + 1);
    assert_accounted(&v);
}

#[test]
fn fin_close_sequence() {
    let mut v = vm();
    let syn = tcp_to_vm(2000, 80, 0, tcp_flags::SYN, 0, b"");
    let isn = wire::parse(vm_rx(&mut v, &syn)[0].data())
        .unwrap()
        .tcp
        .unwrap()
        .seq;
    vm_rx(
        &mut v,
        &tcp_to_vm(2000, 80, 1, tcp_flags::ACK, isn + 1, b""),
    );
    // Client closes without a request: VM answers FIN|ACK, and the final ACK closes it.
    let fin = vm_rx(
        &mut v,
        &tcp_to_vm(2000, 80, 1, tcp_flags::FIN | tcp_flags::ACK, isn + 1, b""),
    );
    let ft = wire::parse(fin[0].data()).unwrap().tcp.unwrap();
    assert!(ft.has(tcp_flags::FIN | tcp_flags::ACK));
    assert_eq!((ft.seq, ft.ack), (isn + 1, 2));
    assert_eq!(v.connections(), 1);
    assert!(vm_rx(
        &mut v,
        &tcp_to_vm(2000, 80, 2, tcp_flags::ACK, isn + 2, b"")
    )
    .is_empty());
    assert_eq!(v.connections(), 0);
    assert_eq!(v.stats().conns_closed, 1);
}

fn feed_both(c: &mut ClientSim, v: &mut VmSim, f: &[u8]) {
    let b = VecBuf::from_slice(f);
    v.on_rx(&b, 5, &mut VecAlloc, &mut |_| {});
    c.on_rx(&b, 5, &mut VecAlloc, &mut |_: VecBuf| {});
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
        let mut v = vm();
        let mut c = client();
        let mut out = 0;
        v.on_rx(&VecBuf::from_slice(&bytes), 1, &mut VecAlloc, &mut |_| out += 1);
        c.on_rx(&VecBuf::from_slice(&bytes), 1, &mut VecAlloc, &mut |_: VecBuf| out += 1);
        prop_assert_eq!(out, 0);
        assert_accounted(&v);
    }

    #[test]
    fn corrupted_real_frames_never_panic(
        pick in any::<usize>(),
        pos in any::<usize>(),
        xor in 1u8..,
        cut in any::<usize>(),
    ) {
        thread_local! {
            static FRAMES: (Vec<Vec<u8>>, Vec<Vec<u8>>) = sample_frames();
        }
        FRAMES.with(|(to_vm, to_client)| {
            let mut v = vm();
            let mut c = client();
            for set in [to_vm, to_client] {
                let mut f = set[pick % set.len()].clone();
                let p = pos % f.len();
                f[p] ^= xor;
                feed_both(&mut c, &mut v, &f);
                f.truncate(cut % (f.len() + 1));
                feed_both(&mut c, &mut v, &f);
            }
            assert_accounted(&v);
        });
    }
}
