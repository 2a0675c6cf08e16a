//! The compare engine fed arbitrary primary/secondary frame sequences with arbitrary tick,
//! checkpoint, failover-flush and shutdown calls, on a tiny table, queue and pool so every
//! overflow rule runs. Invariants:
//! - no panic;
//! - accounting: after every call the counters balance, and every packet that entered has
//!   left at most once — at the end (flush or shutdown) exactly once — primaries only through
//!   release/drop, secondaries only through free;
//! - output commit: without `release_after_ns` nothing is released unverified, and shutdown
//!   releases nothing;
//! - order: per datagram flow, primaries are released in arrival order; per TCP connection
//!   whose primary segments arrive in stream order (none starts before an earlier one ends:
//!   no retransmission, nothing queued below the tail), too.
#![no_main]

use std::collections::HashMap;

use arbitrary::Arbitrary;
use colo_proxy::buf::VecBuf;
use colo_proxy::compare::{Backlog, Comparator, CompareConfig, Release, Side};
use colo_proxy::flow::FlowKey;
use colo_proxy_fuzz::{as_secondary, CompareOp as Op, Left, Rec, Tagged, MS};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    queue_size: u8,
    table_capacity: u8,
    pool_size: u8,
    release_after: bool,
    shutdown: bool,
    ops: Vec<Op>,
}

/// What the target remembers about a packet it fed in.
struct Sent {
    side: Side,
    /// Ordering class: `Some((flow, ordered))` for TCP/UDP frames the parser accepts.
    flow: Option<FlowKey>,
    /// TCP sequence range `[seq, seq + payload)`, for the overlap check.
    range: Option<(u32, u32)>,
}

fuzz_target!(|inp: Input| {
    let release_after_ns = if inp.release_after { 2_000 * MS } else { 0 };
    let mut c: Comparator<Tagged> = Comparator::new(CompareConfig {
        queue_size: 1 + usize::from(inp.queue_size % 6),
        table_capacity: 1 + usize::from(inp.table_capacity % 4),
        pool_size: 1 + usize::from(inp.pool_size % 12),
        timeout_ns: 300 * MS,
        scan_period_ns: 100 * MS,
        idle_timeout_ns: 1_500 * MS,
        release_after_ns,
        ..CompareConfig::default()
    });
    let mut out = Rec::default();
    let mut now = 1_000 * MS;
    let mut sent: Vec<Sent> = Vec::new();
    // Per TCP flow, the primary segments' ranges; flows with a segment out of stream order.
    let mut overlapping: HashMap<FlowKey, Vec<(u32, u32)>> = HashMap::new();
    let mut tainted: std::collections::HashSet<FlowKey> = Default::default();

    let mut feed = |side: Side, f: Vec<u8>, now: u64, c: &mut Comparator<Tagged>, out: &mut Rec| {
        let (mut flow, mut range) = (None, None);
        if let Ok(info) = colo_proxy::wire::parse(&f) {
            let udp = info.ip_proto == colo_proxy::wire::packet::IPPROTO_UDP && !info.fragment;
            if (info.tcp.is_some() || udp) && info.l4_hdr_len > 0 {
                let key = FlowKey::of(&info, &f);
                flow = Some(key);
                if let (Some(t), Side::Primary) = (info.tcp, side) {
                    let len = info.payload_len() as u32 + u32::from(t.flags & 0x03 != 0);
                    let r = (t.seq, t.seq.wrapping_add(len));
                    let seen = overlapping.entry(key).or_default();
                    // Starting before an earlier segment's end (a retransmission, or a
                    // segment below the queue's tail, queued at its stream position by
                    // design) exempts the connection from the order check.
                    if seen
                        .iter()
                        .any(|&(_, end)| (r.0.wrapping_sub(end) as i32) < 0)
                    {
                        tainted.insert(key);
                    }
                    seen.push(r);
                    range = Some(r);
                }
            }
        }
        let id = sent.len() as u32;
        sent.push(Sent { side, flow, range });
        c.process(
            side,
            Tagged {
                buf: VecBuf::from_slice(&f),
                id,
            },
            now,
            out,
        );
    };

    for op in inp.ops.into_iter().take(96) {
        match op {
            Op::P(s) => feed(Side::Primary, s.build(), now, &mut c, &mut out),
            Op::S(s) => feed(
                Side::Secondary,
                as_secondary(s.build()),
                now,
                &mut c,
                &mut out,
            ),
            Op::Both(s) => {
                let f = s.build();
                feed(Side::Primary, f.clone(), now, &mut c, &mut out);
                feed(Side::Secondary, as_secondary(f), now, &mut c, &mut out);
            }
            Op::Tick(ms) => {
                now += u64::from(ms % 4096) * MS;
                c.tick(now, &mut out);
            }
            Op::Checkpoint => c.checkpoint_done(now, &mut out),
            Op::Flush => c.flush_all(&mut out),
        }
        let k = c.counters();
        assert!(k.balanced(), "{k:?}");
        let b = c.backlog();
        assert_eq!(
            (b.primary_packets, b.secondary_packets),
            (k.queued_primary, k.queued_secondary)
        );
        assert!(k.held_primary <= k.queued_primary);
        assert_eq!(out.events.len() as u64, k.events_total());
    }
    let before = out
        .left
        .iter()
        .filter(|l| matches!(l, Left::Released(..)))
        .count();
    if inp.shutdown {
        c.drop_all(&mut out);
        let after = out
            .left
            .iter()
            .filter(|l| matches!(l, Left::Released(..)))
            .count();
        assert_eq!(before, after, "shutdown released something");
    } else {
        c.flush_all(&mut out);
    }
    assert_eq!(c.backlog(), Backlog::default());
    let k = c.counters();
    assert_eq!(
        (k.queued_primary, k.queued_secondary, k.held_primary),
        (0, 0, 0)
    );
    assert!(k.balanced(), "{k:?}");

    // Every packet left exactly once, through an exit of its side.
    let mut seen = vec![false; sent.len()];
    let mut released_order: HashMap<FlowKey, Vec<u32>> = HashMap::new();
    for l in &out.left {
        let (id, primary_exit) = match *l {
            Left::Released(id, how) => {
                if release_after_ns == 0 {
                    assert!(
                        !matches!(how, Release::Timeout),
                        "released unverified without release_after_ns"
                    );
                }
                if let Some(key) = sent[id as usize].flow {
                    released_order.entry(key).or_default().push(id);
                }
                (id, true)
            }
            Left::Dropped(id, _) => (id, true),
            Left::Freed(id, _) => (id, false),
        };
        let s = &sent[id as usize];
        assert!(!seen[id as usize], "packet {id} left twice");
        seen[id as usize] = true;
        assert_eq!(
            primary_exit,
            s.side == Side::Primary,
            "packet {id} left by the wrong exit"
        );
    }
    assert!(seen.iter().all(|&s| s), "a packet never left");

    // Order: per flow, released primaries in arrival order (ids grow with arrival), except
    // TCP connections with segments out of stream order.
    for (key, ids) in released_order {
        if tainted.contains(&key) {
            continue;
        }
        let tcp = sent[ids[0] as usize].range.is_some();
        if tcp && ids.iter().any(|&i| sent[i as usize].range.is_none()) {
            continue;
        }
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "flow {key:?}: released out of order: {ids:?}"
        );
    }
});
