//! A sleeping thread's doorbell ([`Wake`]): an eventfd plus an "I sleep" flag, so that the
//! threads that feed it (ring producers, management's event senders, management's commands)
//! pay one fence and one load while it is awake and write the eventfd only when it announced
//! a sleep. Used by the lcores (`pipeline::idle`) and by management (`pipeline::manage`).
//!
//! No lost wake-up: the sleeper announces (`sleeping = true`, SeqCst) and then checks every
//! input once more before it blocks; a feeder publishes its input, fences (SeqCst) and then
//! reads the flag. Either the sleeper's last check sees the input or the feeder sees the flag
//! and writes the eventfd, which ends the sleeper's `poll(2)` at once.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{fence, AtomicBool, Ordering};

use rustix::event::{eventfd, EventfdFlags};

/// What a ring producer adds to the eventfd (the low half counts data wake-ups).
const DATA: u64 = 1;
/// What management adds (the high half counts control wake-ups).
const CONTROL: u64 = 1 << 32;

/// A sleeping thread's doorbell: an eventfd plus the "I sleep" flag its wakers check first.
pub struct Wake {
    fd: Option<OwnedFd>,
    sleeping: AtomicBool,
}

impl Default for Wake {
    fn default() -> Self {
        Wake::new()
    }
}

impl Wake {
    /// A new doorbell. Without an eventfd (the call failed) nothing can wake its lcore and
    /// interrupt mode falls back to timed sleeps ([`Wake::usable`]).
    pub fn new() -> Self {
        let flags = EventfdFlags::NONBLOCK | EventfdFlags::CLOEXEC;
        Wake {
            fd: eventfd(0, flags).ok(),
            sleeping: AtomicBool::new(false),
        }
    }

    /// True when the eventfd exists.
    pub fn usable(&self) -> bool {
        self.fd.is_some()
    }

    /// The eventfd, borrowed (for a `poll(2)` set); `None` without one.
    pub fn as_fd(&self) -> Option<BorrowedFd<'_>> {
        self.fd.as_ref().map(AsFd::as_fd)
    }

    /// The eventfd (for the owner's wait set).
    pub fn fd(&self) -> RawFd {
        self.fd.as_ref().map_or(-1, AsRawFd::as_raw_fd)
    }

    /// Producer side, after its input is visible (ring enqueued): wake the consumer if it
    /// announced sleep. One fence and one load otherwise; the first waker takes the flag, so
    /// a sleep costs its wakers one write in all.
    #[inline]
    pub fn notify(&self) {
        self.ring(DATA);
    }

    /// Management side, after a command or phase change is published.
    pub fn notify_control(&self) {
        self.ring(CONTROL);
    }

    #[inline]
    fn ring(&self, what: u64) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::Relaxed) && self.sleeping.swap(false, Ordering::SeqCst) {
            self.write(what);
        }
    }

    #[cold]
    fn write(&self, v: u64) {
        // EAGAIN (counter saturated) means the consumer is already due to wake: ignored.
        if let Some(fd) = &self.fd {
            let _ = rustix::io::write(fd, &v.to_ne_bytes());
        }
    }

    /// Consumer side: announce the sleep. Poll every input once more after this and before
    /// blocking (the re-check that makes a concurrent producer's input visible).
    pub fn announce(&self) {
        self.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// Consumer side: awake again (found work, or woke up).
    pub fn retract(&self) {
        self.sleeping.store(false, Ordering::Relaxed);
    }

    /// True while the consumer is announced asleep (tests, stats).
    pub fn is_sleeping(&self) -> bool {
        self.sleeping.load(Ordering::Acquire)
    }

    /// Consumer side: read and reset the eventfd; returns (data, control) wake-ups pending.
    pub fn drain(&self) -> (u64, u64) {
        let mut b = [0u8; 8];
        match &self.fd {
            Some(fd) if rustix::io::read(fd, &mut b).ok() == Some(8) => {}
            _ => return (0, 0),
        }
        let v = u64::from_ne_bytes(b);
        (v & 0xffff_ffff, v >> 32)
    }
}
