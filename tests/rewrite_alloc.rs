//! No heap allocation per packet: handshakes, data, closes, evictions and ageing in steady state
//! run without a single allocation once the rewriter is built.

use colo_proxy::buf::VecBuf;
use colo_proxy::rewrite::{Direction, Outcome, Rewriter, RewriterConfig};

mod rewrite_util;
use rewrite_util::*;

mod alloc_count;

#[global_allocator]
static A: alloc_count::Counting = alloc_count::Counting;

#[test]
fn steady_state_processing_does_not_allocate() {
    let cfg = RewriterConfig {
        table_capacity: 64,
        idle_timeout_ns: 50_000,
    };
    let mut rw = Rewriter::new(cfg).with_closed_linger(10_000);
    // 200 connections through a 64-entry table: creations, evictions, closes, reclaims, expiry.
    let mut bufs: Vec<(Direction, VecBuf)> = Vec::new();
    for i in 0..200u16 {
        let mk = |s: Seg| s.port(3000 + i).ts(5, 6).sack(&[(1, 2)]);
        let (c, p, s) = (100u32, 2_000u32, 9_000u32 + u32::from(i));
        for seg in [
            mk(Seg::client(c, 0, SYN)),
            mk(Seg::vm(s, c + 1, SYN | ACK)),
            mk(Seg::client(c + 1, p + 1, ACK).data(100)),
            mk(Seg::vm(s + 1, c + 101, ACK | PSH).data(1000)),
            mk(Seg::client(c + 101, p + 1001, FIN | ACK)),
            mk(Seg::vm(s + 1001, c + 102, FIN | ACK)),
            mk(Seg::client(c + 102, p + 1002, ACK)),
        ] {
            let dir = if seg.from_vm {
                Direction::FromSecondary
            } else {
                Direction::ToSecondary
            };
            bufs.push((dir, VecBuf::from_slice(&seg.build())));
        }
    }
    let mut rewritten = 0u64;
    alloc_count::assert_installed();
    let before = alloc_count::allocations();
    let mut now = 0u64;
    for (dir, b) in bufs.iter_mut() {
        now += 100;
        if rw.process(*dir, b, now) == Outcome::Rewritten {
            rewritten += 1;
        }
        if now.is_multiple_of(1_000) {
            rw.tick(now);
        }
    }
    rw.checkpoint();
    rw.tick(now + 1_000_000);
    let after = alloc_count::allocations();
    assert_eq!(after - before, 0, "allocations on the data path");
    assert!(
        rewritten >= 200 * 4,
        "the traffic was really translated ({rewritten})"
    );
    assert!(rw.counters().evicted + rw.counters().reclaimed_closed + rw.counters().expired > 0);
}
