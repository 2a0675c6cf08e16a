//! Property tests: random segmentation and interleaving, single-byte changes, the accounting
//! invariant under arbitrary operations, and arbitrary bytes never panicking.

mod compare_support;

use colo_proxy::buf::VecBuf;
use colo_proxy::compare::{
    Comparator, CompareConfig, DivergenceEvent, Output, PrimaryDrop, Reason, Release,
    SecondaryFree, Side,
};
use compare_support::*;
use proptest::prelude::*;

const CACK: u32 = 4242;

/// Cut `len` bytes into segments at the given relative cut points (sizes 1..=max).
fn segments(len: usize, sizes: &[usize]) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < len {
        let n = sizes[i % sizes.len()].clamp(1, len - at);
        out.push((at, at + n));
        at += n;
        i += 1;
    }
    out
}

fn seg_frames(base: u32, data: &[u8], sizes: &[usize]) -> Vec<Vec<u8>> {
    segments(data.len(), sizes)
        .into_iter()
        .map(|(a, b)| tcp(base.wrapping_add(a as u32), CACK, ACK | PSH, &data[a..b]))
        .collect()
}

/// Swap neighbours where `swaps` says so (local reordering, as multi-queue paths do).
fn reorder(v: &mut [Vec<u8>], swaps: &[bool]) {
    let mut i = 0;
    while i + 1 < v.len() {
        if swaps[i % swaps.len()] {
            v.swap(i, i + 1);
            i += 2;
        } else {
            i += 1;
        }
    }
}

fn run_pair(base: u32, prim: &[Vec<u8>], sec: &[Vec<u8>], order: &[bool]) -> H {
    let mut h = H::new();
    // Handshake anchors the stream at `base` on both sides.
    h.p(&tcp(base.wrapping_sub(1), CACK, SYN | ACK, b""));
    h.s(&tcp(base.wrapping_sub(1), CACK, SYN | ACK, b""));
    let (mut i, mut j, mut k) = (0, 0, 0);
    while i < prim.len() || j < sec.len() {
        let take_p = j >= sec.len() || (i < prim.len() && order[k % order.len()]);
        k += 1;
        if take_p {
            h.p(&prim[i]);
            i += 1;
        } else {
            h.s(&as_secondary(sec[j].clone()));
            j += 1;
        }
    }
    h
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    #[test]
    fn identical_streams_any_segmentation_and_interleaving_release_every_byte_once_in_order(
        data in proptest::collection::vec(any::<u8>(), 1..4000),
        psizes in proptest::collection::vec(1usize..1500, 1..8),
        ssizes in proptest::collection::vec(1usize..1500, 1..8),
        pswaps in proptest::collection::vec(any::<bool>(), 1..8),
        sswaps in proptest::collection::vec(any::<bool>(), 1..8),
        sdups in proptest::collection::vec(any::<bool>(), 1..8),
        order in proptest::collection::vec(any::<bool>(), 1..16),
        base in prop_oneof![any::<u32>(), Just(u32::MAX - 100), Just(0u32)],
    ) {
        let mut prim = seg_frames(base, &data, &psizes);
        reorder(&mut prim, &pswaps);
        let mut sec = seg_frames(base, &data, &ssizes);
        reorder(&mut sec, &sswaps);
        // Secondary retransmissions of some segments.
        let mut sec2 = Vec::new();
        for (n, f) in sec.into_iter().enumerate() {
            if sdups[n % sdups.len()] {
                sec2.push(f.clone());
            }
            sec2.push(f);
        }
        let h = run_pair(base, &prim, &sec2, &order);
        prop_assert!(h.r.events.is_empty(), "events: {:?}", h.r.events);
        // SYN-ACK first, then every primary frame once, all compared, in arrival order except
        // that a segment may overtake one that arrived before it only if it is earlier in the
        // stream (queued at its stream position).
        let released = h.r.frames();
        let seq_of = |f: &[u8]| {
            colo_proxy::wire::parse(f).unwrap().tcp.unwrap().seq.wrapping_sub(base)
        };
        let arrival: Vec<usize> = released[1..]
            .iter()
            .map(|f| prim.iter().position(|p| p == f).expect("released frame was sent"))
            .collect();
        let mut sorted = arrival.clone();
        sorted.sort();
        prop_assert_eq!(sorted, (0..prim.len()).collect::<Vec<_>>());
        for (x, &a) in arrival.iter().enumerate() {
            for &b in &arrival[x + 1..] {
                prop_assert!(
                    a < b || seq_of(&prim[a]) < seq_of(&prim[b]),
                    "frame {} overtook frame {} without being earlier in the stream", a, b
                );
            }
        }
        prop_assert!(h.r.hows().iter().all(|r| *r == Release::Matched));
        // Reassembled by sequence number, the released payloads are the data, each byte once.
        let mut segs: Vec<(u32, Vec<u8>)> = released[1..].iter().map(|f| {
            let i = colo_proxy::wire::parse(f).unwrap();
            (i.tcp.unwrap().seq.wrapping_sub(base), i.payload(f).to_vec())
        }).collect();
        segs.sort();
        let stream: Vec<u8> = segs.into_iter().flat_map(|s| s.1).collect();
        prop_assert_eq!(stream, data);
        prop_assert_eq!(h.queued(), (0, 0));
        prop_assert!(h.c.counters().balanced());
    }

    #[test]
    fn in_order_primary_releases_the_exact_stream(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        psizes in proptest::collection::vec(1usize..1500, 1..8),
        ssizes in proptest::collection::vec(1usize..1500, 1..8),
        order in proptest::collection::vec(any::<bool>(), 1..16),
        base in any::<u32>(),
    ) {
        let prim = seg_frames(base, &data, &psizes);
        let sec = seg_frames(base, &data, &ssizes);
        let h = run_pair(base, &prim, &sec, &order);
        prop_assert!(h.r.events.is_empty());
        prop_assert_eq!(h.r.released_stream(), data);
    }

    #[test]
    fn any_single_changed_payload_byte_is_detected(
        data in proptest::collection::vec(any::<u8>(), 1..3000),
        psizes in proptest::collection::vec(1usize..1500, 1..8),
        ssizes in proptest::collection::vec(1usize..1500, 1..8),
        order in proptest::collection::vec(any::<bool>(), 1..16),
        at in any::<proptest::sample::Index>(),
        delta in 1u8..=255,
        base in any::<u32>(),
    ) {
        let prim = seg_frames(base, &data, &psizes);
        let mut changed = data.clone();
        let idx = at.index(data.len());
        changed[idx] = changed[idx].wrapping_add(delta);
        let sec = seg_frames(base, &changed, &ssizes);
        let mut h = run_pair(base, &prim, &sec, &order);
        prop_assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
        let (lo, hi) = h.r.events[0].seq_range.unwrap();
        let pos = base.wrapping_add(idx as u32);
        prop_assert!(colo_proxy::wire::seq::le(lo, pos) && colo_proxy::wire::seq::lt(pos, hi),
            "range {lo}..{hi} must hold the changed byte at {pos}");
        // The segment holding the changed byte was not released as matched.
        let stream_matched: usize = h.r.released.iter()
            .filter(|r| r.1 == Release::Matched)
            .map(|r| colo_proxy::wire::parse(&r.0).unwrap().payload_len()).sum();
        prop_assert!(stream_matched <= idx);
        // The checkpoint releases the rest, in order; nothing lost.
        h.checkpoint();
        prop_assert_eq!(&h.r.frames()[1..], &prim[..]);
        prop_assert_eq!(h.queued(), (0, 0));
    }
}

/// Counts every output call; checks each call hands over a distinct packet.
#[derive(Default)]
struct Count {
    released: u64,
    dropped: u64,
    freed: u64,
    events: u64,
    /// Primaries released neither compared nor committed by a checkpoint.
    unverified: u64,
}

impl Output<VecBuf> for Count {
    fn release(&mut self, _: VecBuf, how: Release) {
        self.released += 1;
        // Flush (failover) and Uncomparable (by rule) are the only other allowed releases;
        // Timeout only with `release_after_ns`.
        if !matches!(
            how,
            Release::Matched
                | Release::Retransmit
                | Release::Checkpoint
                | Release::Bypass
                | Release::Uncomparable(_)
                | Release::Flush
        ) {
            self.unverified += 1;
        }
    }
    fn drop_primary(&mut self, _: VecBuf, _: PrimaryDrop) {
        self.dropped += 1;
    }
    fn free_secondary(&mut self, _: VecBuf, _: SecondaryFree) {
        self.freed += 1;
    }
    fn event(&mut self, _: DivergenceEvent) {
        self.events += 1;
    }
}

#[derive(Debug, Clone)]
enum Op {
    P(Vec<u8>),
    S(Vec<u8>),
    Tick(u64),
    Checkpoint,
    Flush,
}

fn frame() -> impl Strategy<Value = Vec<u8>> {
    let tcpf = (
        0u32..64,
        0u32..64,
        any::<u8>(),
        proptest::collection::vec(0u8..3, 0..20),
        0u16..4,
    )
        .prop_map(|(seq, ack, flags, payload, port)| {
            let mut f = tcp(1000 + seq, 500 + ack, flags & 0x1f, &payload);
            f[37] = port as u8;
            f
        });
    let udpf = proptest::collection::vec(0u8..2, 0..6).prop_map(|p| udp(&p));
    let junk = (
        proptest::collection::vec(any::<u8>(), 0..80),
        proptest::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x0806, 0x88a8, 0x1234]),
    )
        .prop_map(|(mut d, et)| {
            if d.len() >= 14 {
                d[12..14].copy_from_slice(&et.to_be_bytes());
            }
            d
        });
    let truncated = (
        0u32..64,
        proptest::collection::vec(any::<u8>(), 0..20),
        any::<proptest::sample::Index>(),
    )
        .prop_map(|(seq, p, cut)| {
            let f = tcp(seq, 1, ACK, &p);
            let n = cut.index(f.len() + 1);
            f[..n].to_vec()
        });
    prop_oneof![4 => tcpf, 2 => udpf, 1 => junk, 1 => truncated]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => frame().prop_map(Op::P),
        6 => frame().prop_map(Op::S),
        2 => (0u64..2_000).prop_map(|ms| Op::Tick(ms * MS)),
        1 => Just(Op::Checkpoint),
        1 => Just(Op::Flush),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, .. ProptestConfig::default() })]

    #[test]
    fn accounting_invariant_holds_under_any_operations(
        ops in proptest::collection::vec(op(), 1..120),
        queue_size in 1usize..5,
        table_capacity in 1usize..4,
        pool_size in 1usize..8,
        release_after in prop_oneof![Just(0u64), Just(5_000 * MS)],
        shutdown: bool,
    ) {
        let mut c: Comparator<VecBuf> = Comparator::new(CompareConfig {
            queue_size,
            table_capacity,
            pool_size,
            idle_timeout_ns: 4_000 * MS,
            release_after_ns: release_after,
            ..CompareConfig::default()
        });
        let mut out = Count::default();
        let mut now = 0u64;
        let (mut pin, mut sin) = (0u64, 0u64);
        for op in ops {
            match op {
                Op::P(f) => { pin += 1; c.process(Side::Primary, VecBuf::from_slice(&f), now, &mut out) }
                Op::S(f) => { sin += 1; c.process(Side::Secondary, VecBuf::from_slice(&f), now, &mut out) }
                Op::Tick(d) => { now += d; c.tick(now, &mut out) }
                Op::Checkpoint => c.checkpoint_done(now, &mut out),
                Op::Flush => c.flush_all(&mut out),
            }
            let k = c.counters();
            prop_assert!(k.balanced(), "{:?}", k);
            prop_assert_eq!(out.released + out.dropped + k.queued_primary, pin);
            prop_assert_eq!(out.dropped, k.primary_dropped());
            prop_assert_eq!(out.freed + k.queued_secondary, sin);
            prop_assert_eq!(out.events, k.events_total());
            let b = c.backlog();
            prop_assert_eq!((b.primary_packets, b.secondary_packets), (k.queued_primary, k.queued_secondary));
            prop_assert!(k.held_primary <= k.queued_primary);
            if release_after == 0 {
                prop_assert_eq!(out.unverified, 0, "released unverified: {:?}", k);
            }
        }
        if shutdown {
            let before = out.released;
            c.drop_all(&mut out);
            prop_assert_eq!(out.released, before, "shutdown releases nothing");
        } else {
            c.flush_all(&mut out);
        }
        let k = c.counters();
        prop_assert_eq!(out.released + out.dropped, pin);
        prop_assert_eq!(out.freed, sin);
        prop_assert_eq!(c.backlog(), colo_proxy::compare::Backlog::default());
        prop_assert_eq!((k.queued_primary_bytes, k.queued_secondary_bytes, k.held_primary), (0, 0, 0));
    }

    #[test]
    fn arbitrary_bytes_on_either_side_never_panic(
        frames in proptest::collection::vec((any::<bool>(), proptest::collection::vec(any::<u8>(), 0..200),
            proptest::sample::select(vec![0x0800u16, 0x86dd, 0x8100, 0x0806, 0x88a8])), 1..40),
    ) {
        let mut c: Comparator<VecBuf> = Comparator::new(CompareConfig { table_capacity: 8, pool_size: 16, ..CompareConfig::default() });
        let mut out = Count::default();
        let frames: Vec<(bool, Vec<u8>)> = frames.into_iter().map(|(prim, mut f, et)| {
            if f.len() >= 14 { f[12..14].copy_from_slice(&et.to_be_bytes()); }
            if f.len() >= 24 && et == 0x0800 { f[14] = 0x45; }
            (prim, f)
        }).collect();
        let bufs: Vec<VecBuf> = frames.iter().map(|(_, f)| VecBuf::from_slice(f)).collect();
        for (i, (prim, f)) in frames.into_iter().enumerate() {
            // The burst prefetch is a hint: it must take any bytes, the table in any state.
            c.prefetch_burst(&bufs[i..]);
            let side = if prim { Side::Primary } else { Side::Secondary };
            c.process(side, VecBuf::from_slice(&f), i as u64 * 400 * MS, &mut out);
            c.tick(i as u64 * 400 * MS, &mut out);
        }
        c.flush_all(&mut out);
        prop_assert!(c.counters().balanced());
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// `process_parsed` with the right parse result behaves exactly like `process`; with a
    /// parse result from another frame it may give wrong verdicts but never panics or loses
    /// a packet.
    #[test]
    fn process_parsed_matches_process_and_survives_lying_info(
        ops in proptest::collection::vec((any::<bool>(), frame(), frame()), 1..60),
    ) {
        use colo_proxy::flow::FlowKey;
        use colo_proxy::wire::parse;
        let cfg = CompareConfig { queue_size: 3, table_capacity: 3, pool_size: 6, ..CompareConfig::default() };
        let (mut a, mut b, mut c): (Comparator<VecBuf>, Comparator<VecBuf>, Comparator<VecBuf>) =
            (Comparator::new(cfg.clone()), Comparator::new(cfg.clone()), Comparator::new(cfg));
        let (mut ra, mut rb, mut rc) = (Rec::default(), Rec::default(), Rec::default());
        let mut n = 0u64;
        for (prim, f, other) in ops {
            let side = if prim { Side::Primary } else { Side::Secondary };
            n += 1;
            a.process(side, VecBuf::from_slice(&f), n, &mut ra);
            match parse(&f) {
                Ok(i) => b.process_parsed(side, VecBuf::from_slice(&f), &i, FlowKey::of(&i, &f), n, &mut rb),
                Err(_) => b.process(side, VecBuf::from_slice(&f), n, &mut rb),
            }
            if let Ok(i) = parse(&other) {
                c.process_parsed(side, VecBuf::from_slice(&f), &i, FlowKey::of(&i, &other), n, &mut rc);
            } else {
                c.process(side, VecBuf::from_slice(&f), n, &mut rc);
            }
            prop_assert!(c.counters().balanced());
        }
        prop_assert_eq!(ra.released, rb.released);
        prop_assert_eq!(ra.dropped, rb.dropped);
        prop_assert_eq!(ra.freed, rb.freed);
        prop_assert_eq!(ra.events, rb.events);
        c.flush_all(&mut rc);
        prop_assert_eq!(rc.released.len() as u64 + rc.dropped.len() as u64 + rc.freed.len() as u64, n);
    }
}
