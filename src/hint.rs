//! Cache hints for the data path, behind a safe API. The one place outside [`crate::dpdk`]
//! allowed `unsafe`: the prefetch intrinsic takes a raw pointer, though it never faults and
//! never changes a result, so wrapping it safely is sound for any address.

/// Start loading the cache line holding `*r` into every cache level, without waiting for it.
#[inline(always)]
pub fn prefetch<T>(r: &T) {
    prefetch_addr((r as *const T).cast::<u8>());
}

/// [`prefetch`] of the line holding address `p`, which need not be valid (nothing is read).
#[inline(always)]
pub fn prefetch_addr(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is only a hint: it never faults (whatever the address), never reads
    // architecturally and never writes.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}
