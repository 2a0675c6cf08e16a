//! Datagram (UDP/ICMP/ICMPv6) and other-L3 compare, bypass rules, malformed frames.

mod compare_support;

use colo_proxy::compare::{
    Bypass, CompareConfig, DropReason, Reason, Release, SecondaryFree, Side, Uncomparable,
};
use colo_proxy::wire::ParseError;
use compare_support::*;
use etherparse::PacketBuilder;

#[test]
fn qemu_defect_2_udp_is_strictly_fifo_never_newest_first() {
    // QEMU §4.6: p1, p2 then s1 (= p1) → QEMU compares p2 with s1, requests a checkpoint,
    // and later emits p2, p1. We compare oldest with oldest.
    let mut h = H::new();
    let (p1, p2) = (udp(b"one"), udp(b"two"));
    h.p(&p1);
    h.p(&p2);
    h.s(&as_secondary(p1.clone()));
    assert!(h.r.events.is_empty(), "no spurious checkpoint");
    assert_eq!(h.r.frames(), vec![p1.clone()]);
    h.s(&as_secondary(p2.clone()));
    assert_eq!(h.r.frames(), vec![p1, p2], "arrival order, not reversed");
    assert!(h.r.freed.iter().all(|f| f.1 == SecondaryFree::Matched));
}

#[test]
fn qemu_4_6_udp_ignores_ip_header_but_compares_udp_header_and_payload() {
    let mut h = H::new();
    let p = udp(b"dns answer");
    h.p(&p);
    h.s(&as_secondary(p.clone())); // other IP ID, TTL, IP checksum
    assert_eq!(h.r.hows(), vec![Release::Matched]);

    let mut h = H::new();
    h.p(&udp(b"dns answer"));
    let mut s = udp(b"dns answer");
    s[40] ^= 1; // UDP checksum byte: part of the compared transport header
    h.s(&s);
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
    assert!(h.r.released.is_empty());
    assert_eq!(h.r.captures.len(), 1);
    assert!(h.r.captures[0].1.is_some() && h.r.captures[0].2.is_some());
}

#[test]
fn udp_length_mismatch() {
    let mut h = H::new();
    h.p(&udp(b"short"));
    h.s(&udp(b"longer!"));
    assert_eq!(h.r.reasons(), vec![Reason::LengthMismatch]);
    h.checkpoint();
    assert_eq!(h.r.hows(), vec![Release::Checkpoint]);
    h.both(&udp(b"flows again"));
    assert_eq!(h.r.hows().last(), Some(&Release::Matched));
}

#[test]
fn udp_padding_is_ignored() {
    let mut h = H::new();
    let mut p = udp(b"x");
    p.resize(60, 0xee);
    let mut s = udp(b"x");
    s.resize(60, 0x00);
    h.p(&p);
    h.s(&s);
    assert_eq!(h.r.hows(), vec![Release::Matched]);
}

fn ping(id: u16, seq: u16, data: &[u8], ttl: u8) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(SERVER, CLIENT, ttl)
        .icmpv4_echo_reply(id, seq)
        .write(&mut f, data)
        .unwrap();
    f
}

#[test]
fn icmp_echo_replies_compared_fifo() {
    let mut h = H::new();
    let (a, b) = (ping(7, 1, b"abc", 64), ping(7, 2, b"abc", 64));
    h.p(&a);
    h.p(&b);
    h.s(&ping(7, 1, b"abc", 60));
    h.s(&ping(7, 2, b"abc", 60));
    assert_eq!(h.r.frames(), vec![a, b]);
    h.p(&ping(7, 3, b"abc", 64));
    h.s(&ping(7, 4, b"abc", 64)); // sequence differs
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
}

#[test]
fn icmpv6_compared() {
    let mk = |data: &[u8], hop: u8| {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv6([0xfe; 16], [0xfd; 16], hop)
            .icmpv6_echo_reply(1, 1)
            .write(&mut f, data)
            .unwrap();
        f
    };
    let mut h = H::new();
    h.p(&mk(b"v6", 64));
    h.s(&mk(b"v6", 1));
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    h.p(&mk(b"v6", 64));
    h.s(&mk(b"V6", 64));
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
}

/// An ARP reply: Ethernet II (EtherType 0x0806) / ARP (htype 1, ptype 0x0800, hlen 6, plen 4,
/// op 2, sender MAC+IP, target MAC+IP).
fn arp_reply(sender_ip_last: u8) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[0xff; 6]); // dst MAC
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1]); // src MAC
    f.extend_from_slice(&[0x08, 0x06]); // EtherType ARP
    f.extend_from_slice(&[0, 1, 0x08, 0, 6, 4, 0, 2]); // htype, ptype, hlen, plen, op=reply
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 1, 10, 0, 0, sender_ip_last]); // sender
    f.extend_from_slice(&[0x52, 0x54, 0, 0, 0, 0xfe, 10, 0, 0, 1]); // target
    f.resize(60, 0); // Ethernet minimum
    f
}

#[test]
fn qemu_limit_arp_is_compared_not_released_at_once() {
    let mut h = H::new();
    h.p(&arp_reply(2));
    assert!(h.r.released.is_empty(), "QEMU would release ARP at once");
    h.s(&arp_reply(2));
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    h.p(&arp_reply(2));
    h.s(&arp_reply(3));
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
}

/// IPv4 GRE (protocol 47): Ethernet / IPv4 header with the given ID and TTL / 8 payload bytes.
fn gre(id: u16, ttl: u8, byte: u8) -> Vec<u8> {
    let mut f = vec![
        0x52, 0x54, 0, 0, 0, 0xfe, 0x52, 0x54, 0, 0, 0, 1, 0x08, 0x00,
    ];
    f.extend_from_slice(&[0x45, 0, 0, 28]); // version/IHL, TOS, total length 28
    f.extend_from_slice(&id.to_be_bytes()); // identification
    f.extend_from_slice(&[0x40, 0]); // DF, offset 0
    f.extend_from_slice(&[ttl, 47, 0x12, 0x34]); // TTL, protocol GRE, checksum (not checked)
    f.extend_from_slice(&SERVER); // src
    f.extend_from_slice(&CLIENT); // dst
    f.extend_from_slice(&[0, 0, 0x08, 0, 1, 2, 3, byte]); // GRE header + data
    f
}

#[test]
fn qemu_other_protocol_defect_ip_id_and_ttl_are_ignored_for_other_l3() {
    // QEMU compares the whole frame for other protocols, so differing IP IDs mismatch.
    let mut h = H::new();
    h.p(&gre(100, 64, 9));
    h.s(&gre(7777, 63, 9));
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    h.p(&gre(101, 64, 9));
    h.s(&gre(7778, 63, 8));
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
}

#[test]
fn bypass_rules_release_at_once_and_are_counted() {
    let mut h = H::with(CompareConfig {
        bypass: vec![Bypass {
            proto: Some(17),
            ports: 5353..=5353,
            prefix: None,
        }],
        ..CompareConfig::default()
    });
    let p = udp(b"mdns");
    h.p(&p);
    assert_eq!(h.r.hows(), vec![Release::Bypass]);
    h.s(&p);
    assert_eq!(h.r.freed[0].1, SecondaryFree::Bypass);
    // TCP is not covered by this rule.
    h.p(&tcp(1, 1, ACK, b"x"));
    assert_eq!(h.r.released.len(), 1);
    let k = h.c.counters();
    assert_eq!((k.rel_bypass, k.sec_bypass), (1, 1));
    assert_eq!(
        h.c.connections(),
        1,
        "bypassed traffic creates no connection"
    );
}

#[test]
fn malformed_primary_released_with_event_secondary_dropped() {
    let mut h = H::new();
    let mut bad = tcp(1, 1, ACK, b"data");
    bad[14] = 0x43; // IHL 3 words
    h.p(&bad);
    assert_eq!(
        h.r.hows(),
        vec![Release::Uncomparable(Uncomparable::Malformed(
            ParseError::BadIpHeader(colo_proxy::wire::packet::Layer::Ipv4)
        ))]
    );
    assert_eq!(h.r.reasons(), vec![Reason::Malformed]);
    assert_eq!(h.r.captures[0].1.as_deref(), Some(&bad[..]));
    h.s(&bad);
    assert_eq!(
        h.r.freed[0].1,
        SecondaryFree::Dropped(DropReason::Malformed)
    );
    assert_eq!(h.r.events.len(), 1, "a malformed secondary raises no event");
    // Zero-length and oversize.
    h.p(&[]);
    h.p(&vec![0u8; colo_proxy::compare::MAX_FRAME_LEN + 1]);
    assert_eq!(h.r.hows()[2], Release::Uncomparable(Uncomparable::Oversize));
    assert_eq!(h.c.counters().rel_uncomparable, 3);
    assert_eq!(h.r.events[1].side, Side::Primary);
}

#[test]
fn every_truncation_of_every_fixture_never_panics_and_balances() {
    let fixtures = vec![
        tcp(5, 6, ACK | PSH, b"payload"),
        udp(b"datagram"),
        ping(1, 2, b"ping", 64),
        arp_reply(4),
        gre(1, 2, 3),
    ];
    let mut h = H::new();
    for f in &fixtures {
        for cut in 0..=f.len() {
            h.p(&f[..cut]);
            h.s(&f[..cut]);
        }
    }
    h.c.flush_all(&mut h.r);
    let k = h.c.counters();
    assert!(k.balanced());
    assert_eq!(k.queued_primary + k.queued_secondary, 0);
}

/// UDP guest → client from source port `port` (one flow per port).
fn udp_from(port: u16) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 0xfe])
        .ipv4(SERVER, CLIENT, 64)
        .udp(port, 53000)
        .write(&mut f, b"ping")
        .unwrap();
    f
}

#[test]
fn a_timeout_scan_is_spread_over_bounded_ticks_and_still_expires_every_connection() {
    use colo_proxy::compare::SCAN_PER_TICK;
    let n = 3 * SCAN_PER_TICK + 17;
    let mut h = H::with(CompareConfig {
        table_capacity: n + 100,
        idle_timeout_ns: 10 * MS,
        scan_period_ns: 5 * MS,
        ..CompareConfig::default()
    });
    for i in 0..n {
        h.both(&udp_from(1000 + i as u16));
    }
    assert_eq!(h.c.connections(), n);
    assert_eq!(h.r.unverified(), vec![]);
    // Due: each call expires at most SCAN_PER_TICK connections, until all are gone.
    h.now += 20 * MS;
    let mut calls = 0;
    let mut before = 0;
    while h.c.connections() > 0 {
        h.c.tick(h.now, &mut h.r);
        calls += 1;
        let expired = h.c.counters().conns_expired;
        assert!(
            expired - before <= SCAN_PER_TICK as u64,
            "one tick expired {}",
            expired - before
        );
        before = expired;
        assert!(calls <= n.div_ceil(SCAN_PER_TICK), "{calls} calls");
    }
    assert_eq!(calls, n.div_ceil(SCAN_PER_TICK));
    assert_eq!(h.c.counters().conns_expired, n as u64);
    assert!(h.c.counters().balanced(), "{:?}", h.c.counters());
    // The scan is over: the next is due a scan period after it began, not at once.
    h.both(&udp_from(7));
    h.c.tick(h.now + MS, &mut h.r);
    assert_eq!(h.c.connections(), 1, "no scan before the period is over");
    // The next scan walks the slab again (its slots stay allocated), bounded per call.
    let mut calls = 0;
    while h.c.connections() > 0 {
        h.c.tick(h.now + 40 * MS, &mut h.r);
        calls += 1;
        assert!(calls <= n.div_ceil(SCAN_PER_TICK), "{calls} calls");
    }
}

#[test]
fn top_flows_are_the_busiest_first_and_at_most_n() {
    let mut h = H::new();
    // Flow i carries i + 1 datagrams: the busiest are the last ones.
    for i in 0..50u16 {
        for _ in 0..=i {
            h.both(&udp_from(2000 + i));
        }
    }
    let top = h.c.top_flows(5);
    let ports: Vec<u16> = top.iter().map(|(k, _)| k.port_lo.min(k.port_hi)).collect();
    assert_eq!(ports, vec![2049, 2048, 2047, 2046, 2045], "{top:?}");
    assert!(top.windows(2).all(|w| w[0].1.traffic() > w[1].1.traffic()));
    assert_eq!(h.c.top_flows(0).len(), 0);
    assert_eq!(h.c.top_flows(1000).len(), 50);
}
