//! Output commit under overload: backlog gauges, and (below) no primary leaving uncompared on
//! any overflow path.

mod compare_support;

use colo_proxy::compare::{Backlog, CompareConfig};
use compare_support::*;

#[test]
fn backlog_counts_queued_packets_and_bytes_per_side_and_the_oldest_primary() {
    let mut h = H::new();
    assert_eq!(h.c.backlog(), Backlog::default(), "empty shard");
    let t0 = h.now;
    let a = tcp(1000, 1, ACK, b"aaaa");
    let b = tcp(1004, 1, ACK, b"bbbbbbbb");
    h.p(&a);
    h.now += MS;
    h.p(&b);
    let want = Backlog {
        primary_packets: 2,
        primary_bytes: (a.len() + b.len()) as u64,
        secondary_packets: 0,
        secondary_bytes: 0,
        oldest_primary_ns: Some(t0),
    };
    assert_eq!(h.c.backlog(), want);
    // A secondary segment ahead of the primaries' bytes waits in the secondary queue.
    let s = as_secondary(tcp(2000, 1, ACK, b"zz"));
    h.s(&s);
    let k = h.c.backlog();
    assert_eq!(
        (k.secondary_packets, k.secondary_bytes),
        (1, s.len() as u64)
    );
    // The secondary's copy of `a` releases `a`; `b` is now the oldest, exact after a scan.
    h.s(&as_secondary(a.clone()));
    assert_eq!(h.r.frames(), vec![a.clone()]);
    let k = h.c.backlog();
    assert_eq!((k.primary_packets, k.primary_bytes), (1, b.len() as u64));
    assert!(
        k.oldest_primary_ns.unwrap() <= t0 + MS,
        "a lower bound between scans"
    );
    h.advance(1000 * MS);
    assert_eq!(
        h.c.backlog().oldest_primary_ns,
        Some(t0 + MS),
        "exact after a scan"
    );
    h.s(&as_secondary(b.clone()));
    let k = h.c.backlog();
    assert_eq!(
        (k.primary_packets, k.primary_bytes, k.oldest_primary_ns),
        (0, 0, None)
    );
    h.checkpoint();
    assert_eq!(
        h.c.backlog(),
        Backlog::default(),
        "checkpoint empties every queue"
    );
    // A fresh backlog after an empty one starts at its first arrival.
    h.now += 5 * MS;
    h.p(&tcp(5000, 1, ACK, b"c"));
    assert_eq!(h.c.backlog().oldest_primary_ns, Some(h.now));
}

#[test]
fn backlog_is_zero_after_flush_all() {
    let mut h = H::with(CompareConfig::default());
    h.p(&tcp(1, 1, ACK, b"x"));
    h.s(&as_secondary(tcp(100, 1, ACK, b"y")));
    h.c.flush_all(&mut h.r);
    assert_eq!(h.c.backlog(), Backlog::default());
}
