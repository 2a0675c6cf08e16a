//! No heap allocation per packet: a counting global allocator around a steady-state loop of
//! matched TCP pairs, pure ACKs and UDP pairs over many connections (frames built beforehand;
//! connections created during warm-up, as at start-up the table and pool are preallocated).

mod compare_support;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

use colo_proxy::buf::VecBuf;
use colo_proxy::compare::{
    Comparator, CompareConfig, DivergenceEvent, Output, Release, SecondaryFree, Side,
};
use compare_support::*;

struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts calls.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

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
    let before = ALLOCS.load(Ordering::Relaxed);
    let mut now = 0;
    for (side, b) in it {
        now += 100;
        c.process(side, b, now, &mut sink);
        c.tick(now, &mut sink);
    }
    let after = ALLOCS.load(Ordering::Relaxed);
    assert_eq!(sink.matched as usize, total / 2, "every primary matched");
    assert_eq!(after - before, 0, "allocations in steady state");
    assert!(c.counters().balanced());
}
