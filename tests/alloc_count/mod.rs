//! A global allocator that counts allocations, shared by the zero-allocation tests and the
//! compare benchmark. Each binary declares it with
//! `#[global_allocator] static A: alloc_count::Counting = alloc_count::Counting;`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCS: AtomicU64 = AtomicU64::new(0);

/// Forwards to the system allocator and counts `alloc`/`realloc` calls.
pub struct Counting;

/// Allocations made so far by this process.
pub fn allocations() -> u64 {
    ALLOCS.load(Ordering::Relaxed)
}

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

/// Panics unless this binary really counts through [`Counting`], so a zero-allocation
/// assertion cannot pass just because the allocator was not installed.
#[allow(dead_code)] // not every binary that includes this module uses it
pub fn assert_installed() {
    let before = allocations();
    std::hint::black_box(Vec::<u8>::with_capacity(64));
    assert!(
        allocations() > before,
        "alloc_count::Counting is not the global allocator"
    );
}
