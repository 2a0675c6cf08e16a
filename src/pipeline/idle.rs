//! How an idle lcore waits: the wake-up handle other threads use ([`Wake`]), the set of
//! descriptors a sleeping lcore waits on ([`WaitSet`]), and the timed back-off ([`Backoff`]).
//!
//! Guarantees:
//! - No syscall on the data path: a producer (ring, management) pays one fence and one load
//!   per flush; it writes the consumer's eventfd only when the consumer announced it sleeps.
//! - No lost wake-up: the consumer announces (`sleeping = true`, SeqCst) and then polls every
//!   input once more before it blocks; the producer publishes its input, fences (SeqCst) and
//!   then reads the flag. Either the consumer's last poll sees the input or the producer sees
//!   the flag and writes the eventfd, which ends the consumer's `poll(2)` at once.
//! - Sleeps are bounded ([`MAX_WAIT`]), so housekeeping (timeouts, reconnects, heartbeats)
//!   still runs on an lcore nothing wakes.

use std::os::fd::RawFd;
use std::time::Duration;

pub use crate::wake::Wake;

pub use crate::config::IdleMode;

/// Longest an interrupt-mode lcore sleeps without a wake-up (bounds its housekeeping delay).
pub const MAX_WAIT: Duration = Duration::from_millis(10);
/// Timer slack of lcore threads that sleep: a 1 µs timed sleep then ends within microseconds
/// of its deadline instead of the kernel's default 50 µs later.
pub const TIMER_SLACK_NS: u64 = 1_000;

/// What woke a sleeping lcore (counted per cause).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cause {
    /// A port's rx interrupt or its kernel socket.
    Rx,
    /// A link socket (data, or room to write).
    Socket,
    /// The lcore's own eventfd (ring producers, management).
    Doorbell,
    /// DPDK's per-thread epoll fd (rx interrupts).
    DpdkIntr,
}

/// The descriptors an lcore sleeps on, rebuilt right before each sleep (descriptors of
/// reconnecting sockets change). Allocated once; `clear` keeps the capacity.
#[derive(Default)]
pub struct WaitSet {
    fds: Vec<libc::pollfd>,
    causes: Vec<Cause>,
    dpdk_intr: bool,
}

/// What one wait found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Woken {
    /// A port (interrupt or socket readiness).
    pub rx: bool,
    /// A link socket.
    pub socket: bool,
    /// The doorbell rang (ring producer or management).
    pub doorbell: bool,
    /// DPDK rx interrupts are pending (drain them).
    pub dpdk_intr: bool,
    /// Nothing: the timeout ended it.
    pub timeout: bool,
}

impl WaitSet {
    /// An empty set with room for `n` descriptors before it grows.
    pub fn with_capacity(n: usize) -> Self {
        WaitSet {
            fds: Vec::with_capacity(n),
            causes: Vec::with_capacity(n),
            dpdk_intr: false,
        }
    }

    /// Forget every descriptor (keeps the capacity).
    pub fn clear(&mut self) {
        self.fds.clear();
        self.causes.clear();
        self.dpdk_intr = false;
    }

    /// Wake when `fd` is readable.
    pub fn readable(&mut self, fd: RawFd, cause: Cause) {
        self.add(fd, libc::POLLIN, cause);
    }

    /// Wake when `fd` is writable (an output that is waiting for room).
    pub fn writable(&mut self, fd: RawFd, cause: Cause) {
        self.add(fd, libc::POLLOUT, cause);
    }

    /// Some queue of this lcore has DPDK rx interrupts registered: wait on the thread's
    /// DPDK epoll fd too (added once by the loop).
    pub fn dpdk_interrupts(&mut self) {
        self.dpdk_intr = true;
    }

    /// True when [`WaitSet::dpdk_interrupts`] was called since the last clear.
    pub fn wants_dpdk_interrupts(&self) -> bool {
        self.dpdk_intr
    }

    fn add(&mut self, fd: RawFd, events: i16, cause: Cause) {
        if fd < 0 {
            return;
        }
        self.fds.push(libc::pollfd {
            fd,
            events,
            revents: 0,
        });
        self.causes.push(cause);
    }

    /// Descriptors in the set.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// True when the set is empty.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    /// Block until a descriptor is ready or `timeout` passes.
    pub fn wait(&mut self, timeout: Duration) -> Woken {
        let ms = timeout.as_millis().clamp(0, i32::MAX as u128) as i32;
        let n = crate::dpdk::poll_fds(&mut self.fds, ms);
        let mut w = Woken::default();
        if n <= 0 {
            w.timeout = true;
            return w;
        }
        for (p, c) in self.fds.iter().zip(&self.causes) {
            if p.revents == 0 {
                continue;
            }
            match c {
                Cause::Rx => w.rx = true,
                Cause::Socket => w.socket = true,
                Cause::Doorbell => w.doorbell = true,
                Cause::DpdkIntr => w.dpdk_intr = true,
            }
        }
        w
    }
}

/// How one port input of a stage wakes its sleeping lcore.
#[derive(Debug, Clone)]
pub enum PortWake {
    /// DPDK rx interrupts of these queues (registered on the polling lcore at first use).
    Interrupt {
        /// The queues.
        queues: Vec<crate::dpdk::QueueIntr>,
        /// Registered with this thread's DPDK epoll instance.
        registered: bool,
    },
    /// These kernel sockets are readable while frames wait (af_packet).
    Fds(Vec<RawFd>),
    /// No wake-up path (why): the lcore cannot sleep on it.
    None(String),
}

/// The wake-up sources of a stage's port inputs, as the topology found them.
/// [`IdleInputs::unknown`] (what a stage gets unless told) never lets its lcore block.
#[derive(Debug, Clone)]
pub struct IdleInputs {
    ports: Vec<(String, PortWake)>,
    known: bool,
    warned: bool,
    /// After a failed registration, the next attempt is not before this (DPDK logs each
    /// failure).
    retry_at: Option<std::time::Instant>,
}

/// Between two attempts to register rx interrupts that failed.
const REGISTER_RETRY: Duration = Duration::from_secs(1);

impl Default for IdleInputs {
    fn default() -> Self {
        IdleInputs::unknown()
    }
}

impl IdleInputs {
    /// Nothing is known about the inputs: the lcore never blocks (timed sleeps only).
    pub fn unknown() -> Self {
        IdleInputs {
            ports: Vec::new(),
            known: false,
            warned: false,
            retry_at: None,
        }
    }

    /// The stage has no port inputs (rings and management wake it through its doorbell).
    pub fn none() -> Self {
        IdleInputs {
            ports: Vec::new(),
            known: true,
            warned: false,
            retry_at: None,
        }
    }

    /// Add input `name` waking by `wake`.
    pub fn with(mut self, name: &str, wake: PortWake) -> Self {
        self.known = true;
        self.ports.push((name.to_string(), wake));
        self
    }

    /// Arm (`on`) or disarm the inputs; true when every input can wake the lcore. While an
    /// input's interrupts fail to register (a vhost-user port before its guest connects, a
    /// driver without them) its lcore takes timed sleeps instead, and registration is tried
    /// again at the next arm (one warning).
    pub fn arm(&mut self, on: bool) -> bool {
        let mut ok = self.known;
        for (name, w) in &mut self.ports {
            match w {
                PortWake::Interrupt { queues, registered } => {
                    if on && !*registered {
                        let now = std::time::Instant::now();
                        if self.retry_at.is_some_and(|t| now < t) {
                            ok = false;
                            continue;
                        }
                        if let Err(e) = queues.iter().try_for_each(|q| q.register()) {
                            self.retry_at = Some(now + REGISTER_RETRY);
                            if !self.warned {
                                self.warned = true;
                                eprintln!(
                                    "warning: {name}: no rx interrupts yet ({e}); its lcore \
                                     takes timed sleeps until they can be registered"
                                );
                            }
                            ok = false;
                            continue;
                        }
                        *registered = true;
                    }
                    for q in queues.iter() {
                        if on {
                            if q.enable().is_err() {
                                ok = false;
                            }
                        } else {
                            q.disable();
                        }
                    }
                }
                PortWake::Fds(fds) => ok &= !fds.is_empty(),
                PortWake::None(_) => ok = false,
            }
        }
        ok
    }

    /// Add the inputs' descriptors to `ws`.
    pub fn wait_fds(&self, ws: &mut WaitSet) {
        for (_, w) in &self.ports {
            match w {
                PortWake::Interrupt { .. } => ws.dpdk_interrupts(),
                PortWake::Fds(fds) => {
                    for &fd in fds {
                        ws.readable(fd, Cause::Rx);
                    }
                }
                PortWake::None(_) => {}
            }
        }
    }
}

/// Timed back-off for inputs that cannot wake an lcore: sleeps that start at 1 µs and double
/// up to a cap while nothing arrives (OVS's `pmd-sleep-max` idea), back to the shortest as
/// soon as there is work.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    /// Sleeps growing up to `max` (zero: `pause` only).
    pub fn new(max: Duration) -> Self {
        Backoff {
            next: Duration::from_micros(1).min(max),
            max,
        }
    }

    /// Work was found: the next idle sleep is the shortest again.
    pub fn reset(&mut self) {
        self.next = Duration::from_micros(1).min(self.max);
    }

    /// The sleep to take now (zero: only pause), and grow the next one.
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
}

/// Set the calling thread's timer slack (lcore threads that sleep).
pub fn set_timer_slack(ns: u64) {
    // Zero would mean "the process default" to the kernel: 1 ns is the least slack there is.
    let _ = rustix::thread::set_current_timer_slack(std::num::NonZeroU64::new(ns.max(1)));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    #[test]
    fn notify_writes_only_when_the_consumer_sleeps() {
        let w = Wake::new();
        assert!(w.usable());
        w.notify();
        w.notify_control();
        assert_eq!(w.drain(), (0, 0), "awake consumer: no write");
        w.announce();
        w.notify();
        w.notify();
        assert!(!w.is_sleeping());
        assert_eq!(w.drain(), (1, 0), "the first waker writes once");
        w.announce();
        w.notify_control();
        assert_eq!(w.drain(), (0, 1));
    }

    #[test]
    fn a_waker_ends_the_wait() {
        let w = Arc::new(Wake::new());
        w.announce();
        let w2 = w.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            w2.notify();
        });
        let mut ws = WaitSet::with_capacity(2);
        ws.readable(w.fd(), Cause::Doorbell);
        // Far longer than the waker's delay: only the doorbell ends it early.
        let got = ws.wait(Duration::from_secs(20));
        t.join().unwrap();
        assert!(got.doorbell && !got.timeout, "{got:?}");
        assert_eq!(w.drain(), (1, 0));
    }

    #[test]
    fn an_idle_wait_times_out() {
        let w = Wake::new();
        let mut ws = WaitSet::with_capacity(1);
        ws.readable(w.fd(), Cause::Doorbell);
        let got = ws.wait(Duration::from_millis(1));
        assert!(got.timeout && !got.doorbell);
    }

    /// The announce / re-check / notify protocol under a race: a producer publishes an item
    /// and notifies while the consumer announces, re-checks and sleeps. A lost wake-up shows
    /// as a consumer that sleeps into its (long) timeout with an item published.
    #[test]
    fn no_lost_wakeup_under_a_race() {
        const ROUNDS: u64 = 2000;
        let w = Arc::new(Wake::new());
        let item = Arc::new(AtomicU64::new(0));
        let taken = Arc::new(AtomicU64::new(0));
        let (w2, i2, t2) = (w.clone(), item.clone(), taken.clone());
        let producer = std::thread::spawn(move || {
            for k in 1..=ROUNDS {
                // Wait until the consumer took the previous item, then publish the next.
                loop {
                    match t2.load(Ordering::Acquire) {
                        u64::MAX => return,
                        t if t == k - 1 => break,
                        _ => std::hint::spin_loop(),
                    }
                }
                i2.store(k, Ordering::Release);
                w2.notify();
            }
        });
        let mut ws = WaitSet::with_capacity(1);
        let mut timeouts = 0;
        for k in 1..=ROUNDS {
            loop {
                if item.load(Ordering::Acquire) == k {
                    break;
                }
                w.announce();
                if item.load(Ordering::Acquire) == k {
                    w.retract();
                    break;
                }
                ws.clear();
                ws.readable(w.fd(), Cause::Doorbell);
                if ws.wait(Duration::from_secs(2)).timeout {
                    timeouts += 1;
                    break;
                }
                w.retract();
                w.drain();
            }
            if timeouts > 0 {
                break;
            }
            taken.store(k, Ordering::Release);
        }
        // A stopped consumer leaves the producer waiting: release it.
        taken.store(u64::MAX, Ordering::Release);
        producer.join().unwrap();
        assert_eq!(
            timeouts, 0,
            "a published item was left waiting for the timeout"
        );
    }

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut b = Backoff::new(Duration::from_micros(10));
        let steps: Vec<u128> = (0..6).map(|_| b.step().as_micros()).collect();
        assert_eq!(steps, vec![1, 2, 4, 8, 10, 10]);
        b.reset();
        assert_eq!(b.step(), Duration::from_micros(1));
        let mut z = Backoff::new(Duration::ZERO);
        assert_eq!(z.step(), Duration::ZERO);
    }
}
