//! Each filter-rewriter defect in reference/qemu-colo.md §5.1–5.6 and §8.2 item 7, shown fixed.
//! Every test asserts the correct behaviour where QEMU's code (as the reference describes it)
//! produces something else; the comment says what QEMU would do.

mod rewrite_util;

use colo_proxy::buf::VecBuf;
use colo_proxy::rewrite::{
    CloseKind, ConnState, Direction, Outcome, RewriterConfig, DEFAULT_CLOSED_LINGER_NS,
};
use rewrite_util::*;

const C: u32 = 7_000;
const P: u32 = 1_000;
const S: u32 = 5_000;

fn offset(h: &H) -> Option<u32> {
    let mut v = None;
    h.rw.flows(|_, s| v = s.seq_offset);
    v
}

/// §5.1: only IPv4 TCP is processed; IPv6 TCP passes untouched, so the SVM sees P+1.
#[test]
fn defect_5_1_ipv6_tcp_is_never_rewritten() {
    let mut h = H::new();
    h.send(&Seg::client(C, 0, SYN).v6());
    h.send(&Seg::vm(S, C + 1, SYN | ACK).v6());
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK).v6());
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S + 1);
}

/// §5.1 / §8.2 item 4: above 16384 entries QEMU resets the whole table and every offset is lost.
#[test]
fn defect_5_1_table_reset_at_16384_loses_every_offset() {
    let mut h = H::new(); // default capacity 65536
    let n: u32 = 16_500;
    let frames: Vec<[Vec<u8>; 3]> = (0..n)
        .map(|i| {
            let port = (i % 60_000) as u16 + 1024;
            let vm_port = 80 + (i / 60_000) as u16;
            let mk = |mut s: Seg| {
                s.client_port = port;
                s.vm_port = vm_port;
                s.build()
            };
            [
                mk(Seg::client(C, 0, SYN)),
                mk(Seg::vm(S + i, C + 1, SYN | ACK)),
                mk(Seg::client(C + 1, P + 1, ACK)),
            ]
        })
        .collect();
    for (i, fs) in frames.iter().enumerate() {
        for (j, f) in fs.iter().enumerate() {
            let dir = if j == 1 {
                Direction::FromSecondary
            } else {
                Direction::ToSecondary
            };
            let mut b = VecBuf::from_slice(f);
            let _ = h.rw.process(dir, &mut b, i as u64);
        }
    }
    assert_eq!(h.rw.len(), n as usize);
    assert_eq!(h.rw.counters().evicted, 0);
    // The very first connection still has its offset.
    let mut b = VecBuf::from_slice(&frames[0][2]);
    assert_eq!(
        h.rw.process(Direction::ToSecondary, &mut b, 1 << 40),
        Outcome::Rewritten
    );
    assert_eq!(decode(&b.to_vec()).ack, S + 1);
}

/// §5.2: guest-opened connections learn no offset; the server's SYN-ACK reaches the SVM with
/// ack = P+1 and the SVM's handshake fails until a checkpoint.
#[test]
fn defect_5_2_guest_opened_connections_learn_no_offset() {
    let mut h = H::new();
    let synack = vm_handshake(&mut h, P, S, 90_000);
    assert_eq!(synack.ack, S + 1);
    assert_eq!(offset(&h), Some(S - P));
}

/// §5.2 step 1: a client SYN sets SYN_RECEIVED unconditionally, so a late duplicate SYN on an
/// established connection makes the next ACK subtract again: a bogus offset.
#[test]
fn defect_5_2_duplicate_syn_reopens_learning() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    h.send(&Seg::client(C, 0, SYN));
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK).data(10));
    assert_eq!(t.ack, S + 1);
    assert_eq!(offset(&h), Some(S - P));
    assert_eq!(h.rw.counters().learned_client_opened, 1);
}

/// §5.2 [inf]: without colo-compare's SYN-ACK hold, the client's ACK can pass first; QEMU then
/// computes `0 − P` and ignores the later SYN-ACK (state already ESTABLISHED).
#[test]
fn defect_5_2_ack_before_synack_race_gives_bogus_offset() {
    let mut h = H::new();
    h.send(&Seg::client(C, 0, SYN));
    h.send(&Seg::client(C + 1, P + 1, ACK));
    h.send(&Seg::vm(S, C + 1, SYN | ACK));
    assert_eq!(offset(&h), Some(S - P));
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK).data(1));
    assert_eq!(t.ack, S + 1);
}

/// §5.3 / §8.2 item 7: QEMU's checksum code places the TCP header right after a 20-byte IP
/// header, so with IP options it writes a wrong checksum (over the wrong bytes).
#[test]
fn defect_5_3_checksum_assumes_20_byte_ip_header() {
    let mut h = H::new();
    let opt = |mut s: Seg| {
        s.ip_opt_words = 2;
        s
    };
    h.send(&opt(Seg::client(C, 0, SYN)));
    h.send(&opt(Seg::vm(S, C + 1, SYN | ACK)));
    // H::send asserts the TCP checksum against etherparse's full recomputation.
    let (o, t) = h.send(&opt(Seg::client(C + 1, P + 1, ACK).data(100)));
    assert_eq!(o, Outcome::Rewritten);
    assert!(t.csum_ok);
    let (_, t) = h.send(&opt(Seg::vm(S + 1, C + 101, ACK).data(100)));
    assert!(t.csum_ok);
    assert_eq!(t.seq, P + 1);
}

/// §5.3: virtio-net offload metadata is ignored; QEMU overwrites a partial (pseudo-header) sum
/// with a full checksum, which the device then completes into garbage.
#[test]
fn defect_5_3_offload_partial_checksum_overwritten() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    let f = Seg::vm(S + 1, C + 1, ACK).data(64).build();
    let mut partial = f.clone();
    // Put a pseudo-header partial sum in the field, as a guest with TX offload would.
    let l4 = 14 + 20;
    partial[l4 + 16..l4 + 18].copy_from_slice(&0x1c46u16.to_be_bytes());
    let mut b = VecBuf::from_slice(&partial);
    b.set_l4_csum_partial(true);
    assert_eq!(
        h.rw.process(Direction::FromSecondary, &mut b, 9),
        Outcome::Rewritten
    );
    let out = b.to_vec();
    assert_eq!(&out[l4 + 16..l4 + 18], &[0x1c, 0x46]);
    assert_eq!(decode(&out).seq, P + 1);
}

/// §5.3: the checksum is fully recomputed, which turns a corrupted segment into a valid one;
/// the incremental update keeps it exactly as wrong as it arrived.
#[test]
fn defect_5_3_full_recompute_launders_corrupt_checksum() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    let mut f = Seg::client(C + 1, P + 1, ACK).data(64).build();
    let last = f.len() - 1;
    f[last] ^= 0x55; // payload corrupted in flight
    let before = decode(&f);
    assert!(!before.csum_ok);
    let mut b = VecBuf::from_slice(&f);
    assert_eq!(
        h.rw.process(Direction::ToSecondary, &mut b, 9),
        Outcome::Rewritten
    );
    let after = decode(&b.to_vec());
    assert_eq!(after.ack, S + 1);
    assert!(!after.csum_ok, "corruption must stay detectable");
}

/// §5.3: SYN-ACKs and RSTs are never rewritten; after the offset is known, the SVM's
/// retransmitted SYN-ACK and its RST leave in the SVM's own space.
#[test]
fn defect_5_3_syn_ack_and_rst_never_rewritten() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    let (_, t) = h.send(&Seg::vm(S, C + 1, SYN | ACK));
    assert_eq!(t.seq, P);
    let (_, t) = h.send(&Seg::vm(S + 1, 0, RST));
    assert_eq!(t.seq, P + 1);
}

/// §5.4: passive close never completes while offset ≠ 0 (FIN seq stored in the primary's space,
/// compared after the ACK was moved into the secondary's); the entry stays in LAST_ACK forever.
#[test]
fn defect_5_4_passive_close_never_completes_with_offset() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    h.send(&Seg::client(C + 1, P + 1, FIN | ACK));
    h.send(&Seg::vm(S + 1, C + 2, FIN | ACK));
    h.send(&Seg::client(C + 2, P + 2, ACK));
    let mut st = None;
    h.rw.flows(|_, s| st = Some(s.state));
    assert_eq!(st, Some(ConnState::Closed(CloseKind::Passive)));
    assert_eq!(h.rw.counters().closed_passive, 1);
    h.now += DEFAULT_CLOSED_LINGER_NS + 1;
    h.rw.tick(h.now);
    assert!(h.rw.is_empty(), "the closed entry is reclaimed");
}

/// §5.4: active close is only recognised on FIN without ACK; Linux sends FIN|ACK, so the
/// client's FIN|ACK then moves the entry to CLOSE_WAIT and it never closes.
#[test]
fn defect_5_4_active_close_with_fin_ack_is_never_tracked() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    h.send(&Seg::vm(S + 1, C + 1, FIN | ACK));
    h.send(&Seg::client(C + 1, P + 2, FIN | ACK));
    h.send(&Seg::vm(S + 2, C + 2, ACK));
    assert_eq!(h.rw.counters().closed_active, 1);
    assert_eq!(h.rw.counters().closed_passive, 0);
}

/// §5.4 / §8.2 item 4: the only bound is the wipe at 16384 and there is no ageing.
#[test]
fn defect_5_4_no_ageing_only_table_wipe() {
    let cfg = RewriterConfig {
        table_capacity: 3,
        idle_timeout_ns: 1_000_000,
    };
    let mut h = H::with(cfg);
    for i in 0..4u16 {
        let mk = |s: Seg| s.port(2000 + i);
        h.send(&mk(Seg::client(C, 0, SYN)));
        h.send(&mk(Seg::vm(S, C + 1, SYN | ACK)));
        h.send(&mk(Seg::client(C + 1, P + 1, ACK)));
    }
    // One eviction (the oldest), not a wipe: the other three keep their offsets.
    assert_eq!(h.rw.counters().evicted, 1);
    assert_eq!(h.rw.len(), 3);
    let (o, _) = h.send(&Seg::client(C + 1, P + 1, ACK).port(2001));
    assert_eq!(o, Outcome::Rewritten);
    h.now += 2_000_000;
    h.rw.tick(h.now);
    assert!(h.rw.is_empty());
    assert_eq!(h.rw.counters().expired, 3);
}

/// §5.5 [inf]: a checkpoint during a handshake zeroes the offset but keeps SYN_RECEIVED; the
/// client's ACK then computes `0 − P`, a bogus offset until the next checkpoint.
#[test]
fn defect_5_5_handshake_spanning_checkpoint_gets_bogus_offset() {
    let mut h = H::new();
    h.send(&Seg::client(C, 0, SYN));
    h.send(&Seg::vm(S, C + 1, SYN | ACK));
    h.rw.checkpoint();
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(t.ack, P + 1);
    assert_eq!(offset(&h), Some(0));
    let (_, t) = h.send(&Seg::vm(P + 1, C + 1, ACK).data(10));
    assert_eq!(t.seq, P + 1);
}

/// §5.5: failover mode is only entered when no entry has a non-zero offset; otherwise QEMU
/// keeps tracking (and learning for) every new connection after failover.
#[test]
fn defect_5_5_failover_blocked_by_nonzero_offsets() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    h.rw.failover();
    let new = |s: Seg| s.port(50_000);
    h.send(&new(Seg::client(C, 0, SYN)));
    h.send(&new(Seg::vm(S, C + 1, SYN | ACK)));
    let (o, _) = h.send(&new(Seg::client(C + 1, S + 1, ACK)));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(h.rw.len(), 1, "only the old connection is tracked");
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK).data(3));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S + 1);
}

/// §5.6: rewritten packets go through a private queue that appends while the VM is stopped and
/// is never flushed; packets come out late and reordered. Here every packet is handled in place
/// and handed back by the same call, in order, around a checkpoint as at any other time.
#[test]
fn defect_5_6_private_queue_holds_and_reorders_packets() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    let segs: Vec<Seg> = (0..5u32)
        .map(|i| Seg::client(C + 1 + i * 10, P + 1, ACK | PSH).data(10))
        .collect();
    let mut out = Vec::new();
    for (i, s) in segs.iter().enumerate() {
        if i == 2 {
            h.rw.checkpoint(); // the SVM was stopped for this checkpoint
        }
        let (o, t) = h.send(s);
        assert!(matches!(o, Outcome::Rewritten | Outcome::Unchanged));
        out.push(t.seq);
    }
    let want: Vec<u32> = (0..5u32).map(|i| C + 1 + i * 10).collect();
    assert_eq!(out, want, "every packet came back at once and in order");
    // A SYN of a new connection is not held either.
    let (_, t) = h.send(&Seg::client(123, 0, SYN).port(1));
    assert_eq!(t.seq, 123);
}
