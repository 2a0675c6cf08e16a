//! Time-stamp counter: [`rdtsc`] and [`TscClock`] for cycle → nanosecond conversion.
//!
//! The data path reads the TSC once per burst and passes it down; convert to ns only where a
//! human or a timeout in ns needs it.

use super::ffi;

/// Current TSC value.
#[inline]
pub fn rdtsc() -> u64 {
    // Inline on x86_64 (what rte_rdtsc is there), not a C call: a pacing loop reads it on
    // every turn (the shim call was 9 % of a generator lcore's samples).
    #[cfg(target_arch = "x86_64")]
    // SAFETY: RDTSC has no preconditions; every x86_64 CPU has it.
    unsafe {
        core::arch::x86_64::_rdtsc()
    }
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: reads the CPU's time-stamp counter.
    unsafe {
        ffi::shim_rte_rdtsc()
    }
}

/// TSC frequency in Hz as measured by EAL (0 before EAL init).
pub fn tsc_hz() -> u64 {
    // SAFETY: plain getter.
    unsafe { ffi::shim_rte_get_tsc_hz() }
}

/// Converts TSC cycles to and from nanoseconds at a fixed frequency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TscClock {
    hz: u64,
}

impl TscClock {
    /// A clock at EAL's measured TSC rate; `None` before EAL init.
    pub fn from_eal() -> Option<TscClock> {
        Self::with_hz(tsc_hz())
    }

    /// A clock at `hz` cycles per second (`None` for 0).
    pub fn with_hz(hz: u64) -> Option<TscClock> {
        (hz != 0).then_some(TscClock { hz })
    }

    /// Cycles per second.
    pub fn hz(&self) -> u64 {
        self.hz
    }

    /// Current TSC.
    #[inline]
    pub fn now(&self) -> u64 {
        rdtsc()
    }

    /// Cycles → nanoseconds.
    #[inline]
    pub fn cycles_to_ns(&self, cycles: u64) -> u64 {
        ((cycles as u128 * 1_000_000_000) / self.hz as u128) as u64
    }

    /// Nanoseconds → cycles.
    #[inline]
    pub fn ns_to_cycles(&self, ns: u64) -> u64 {
        ((ns as u128 * self.hz as u128) / 1_000_000_000) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conversions_round_trip() {
        let c = TscClock::with_hz(2_600_000_000).unwrap();
        assert_eq!(c.cycles_to_ns(2_600_000_000), 1_000_000_000);
        assert_eq!(c.ns_to_cycles(1_000), 2_600);
        // Truncation may lose less than one cycle (< 1 ns at 2.6 GHz).
        assert!(123_456_789 - c.cycles_to_ns(c.ns_to_cycles(123_456_789)) <= 1);
        assert!(TscClock::with_hz(0).is_none());
        let a = rdtsc();
        let b = rdtsc();
        assert!(b >= a);
    }
}
