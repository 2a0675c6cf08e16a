//! No heap allocation per packet: a counting global allocator around a steady-state loop of
//! matched TCP pairs, pure ACKs and UDP pairs over many connections (frames built beforehand;
//! connections created during warm-up, as at start-up the table and pool are preallocated).

mod compare_support;

use colo_proxy::buf::VecBuf;
use colo_proxy::compare::{
    Comparator, CompareConfig, DivergenceEvent, Output, PrimaryDrop, Release, SecondaryFree, Side,
};
use compare_support::*;

mod alloc_count;

#[global_allocator]
static A: alloc_count::Counting = alloc_count::Counting;

/// Keeps the released/freed buffers in preallocated storage (no growth).
struct Sink {
    keep: Vec<VecBuf>,
    matched: u64,
}

impl Output<VecBuf> for Sink {
    fn release(&mut self, pkt: VecBuf, how: Release) {
        assert_eq!(how, Release::Matched);
        self.matched += 1;
        self.keep.push(pkt);
    }
    fn drop_primary(&mut self, _: VecBuf, why: PrimaryDrop) {
        panic!("unexpected drop ({why:?})");
    }
    fn free_secondary(&mut self, pkt: VecBuf, _: SecondaryFree) {
        self.keep.push(pkt);
    }
    fn event(&mut self, ev: DivergenceEvent) {
        panic!("unexpected {ev:?}");
    }
}

#[test]
fn steady_state_processing_does_not_allocate() {
    const FLOWS: usize = 512;
    const ROUNDS: usize = 8;
    let mut c: Comparator<VecBuf> = Comparator::new(CompareConfig {
        table_capacity: FLOWS * 2,
        pool_size: 4096,
        ..CompareConfig::default()
    });
    let flow = |f: &mut Vec<u8>, i: usize| {
        f[36..38].copy_from_slice(&(1000 + i as u16).to_be_bytes()); // destination port
    };
    let mut frames: Vec<(Side, VecBuf)> = Vec::new();
    for r in 0..ROUNDS + 1 {
        for i in 0..FLOWS {
            let seq = 1 + (r * 64) as u32;
            let mut d = tcp(seq, 77 + r as u32, ACK | PSH, &[r as u8; 64]);
            flow(&mut d, i);
            let mut a = tcp(seq, 78 + r as u32, ACK, b"");
            flow(&mut a, i);
            let mut u = udp(&[i as u8; 32]);
            u[36..38].copy_from_slice(&(2000 + i as u16).to_be_bytes()); // UDP dst port
            for f in [d, a, u] {
                frames.push((Side::Primary, VecBuf::from_slice(&f)));
                frames.push((Side::Secondary, VecBuf::from_slice(&as_secondary(f))));
            }
        }
    }
    let total = frames.len();
    let mut sink = Sink {
        keep: Vec::with_capacity(total),
        matched: 0,
    };
    let warm = FLOWS * 6; // the first round creates the connections
    let mut it = frames.into_iter();
    for (side, b) in it.by_ref().take(warm) {
        c.process(side, b, 0, &mut sink);
    }
    alloc_count::assert_installed();
    let before = alloc_count::allocations();
    let mut now = 0;
    for (side, b) in it {
        now += 100;
        c.process(side, b, now, &mut sink);
        c.tick(now, &mut sink);
    }
    let after = alloc_count::allocations();
    assert_eq!(sink.matched as usize, total / 2, "every primary matched");
    assert_eq!(after - before, 0, "allocations in steady state");
    assert!(c.counters().balanced());
}
