//! The wire parser on arbitrary bytes: never panics; on `Ok` every offset lies inside the
//! frame (the contract accessors rely on); the flow key is direction-independent; where
//! etherparse (an independent parser) also reads TCP/UDP, the fields agree.
#![no_main]

use colo_proxy::flow::FlowKey;
use colo_proxy::wire::{self, L3Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|frame: &[u8]| {
    let Ok(info) = wire::parse(frame) else {
        return;
    };
    let (l3, l4, pay, end) = (
        info.l3_off as usize,
        info.l4_off as usize,
        info.payload_off(),
        info.l3_end as usize,
    );
    assert!(end <= frame.len(), "l3_end beyond the frame: {info:?}");
    if info.is_ip() {
        assert!(l3 + info.l3_hdr_len as usize <= end, "{info:?}");
        if !info.fragment && info.l4_hdr_len > 0 {
            assert!(l3 <= l4 && l4 <= pay && pay <= end, "{info:?}");
        }
    }
    let _ = (
        info.payload(frame),
        info.l4_segment(frame),
        info.l3_packet(frame),
    );
    // The payload accessor returns exactly the IP-length payload (no silent truncation).
    assert_eq!(info.payload(frame).len(), info.payload_len(), "{info:?}");
    if let Some(t) = info.tcp {
        let hdr = &frame[l4..pay];
        for (_kind, at, len) in wire::packet::tcp_options(hdr) {
            assert!(at + len <= hdr.len());
        }
        // etherparse as an oracle: where it reads the same TCP header, fields agree.
        if let Ok(p) = etherparse::SlicedPacket::from_ethernet(frame) {
            if let Some(etherparse::TransportSlice::Tcp(tcp)) = p.transport {
                assert_eq!(
                    (tcp.source_port(), tcp.destination_port()),
                    (info.src_port, info.dst_port)
                );
                assert_eq!(
                    (tcp.sequence_number(), tcp.acknowledgment_number()),
                    (t.seq, t.ack)
                );
            }
        }
    }
    let key = FlowKey::of(&info, frame);
    let _ = key.shard(7);
    // Swap addresses and ports: the key must not change (both directions meet on one shard).
    let ports = info.tcp.is_some() || info.ip_proto == wire::packet::IPPROTO_UDP;
    if info.is_ip() && !info.fragment && ports && info.l4_hdr_len > 0 {
        let mut m = frame.to_vec();
        let (a, n) = match info.l3 {
            L3Kind::Ipv4 => (l3 + 12, 4),
            _ => (l3 + 8, 16),
        };
        for i in 0..n {
            m.swap(a + i, a + n + i);
        }
        m.swap(l4, l4 + 2);
        m.swap(l4 + 1, l4 + 3);
        if let Ok(mi) = wire::parse(&m) {
            assert_eq!(FlowKey::of(&mi, &m), key, "key depends on direction");
            assert_eq!(FlowKey::of(&mi, &m).hash64(), key.hash64());
        }
    }
});
