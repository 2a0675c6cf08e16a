//! The lcore poll loop around one or more stages, and the lock-free control plane that
//! reaches it at loop boundaries.
//!
//! Loop: read the clock once → poll every stage (rx burst → process → tx/enqueue) →
//! housekeeping every [`HOUSEKEEPING_EVERY`] loops → apply control commands → follow the
//! run phase → when idle, wait as the lcore's [`IdlePolicy`] says. Nothing here allocates or
//! locks per packet; commands travel through a bounded lock-free queue per lcore and are
//! acknowledged with an atomic sequence; management rings the lcore's [`Wake`] after each.
//!
//! Idle (see [`super::idle`]): `poll` spins; `backoff` spins `spin_loops` empty loops, then
//! sleeps 1 µs, 2 µs, ... up to `max_sleep`; `interrupt` spins, then arms every stage's
//! wake-up sources (rx interrupts), announces the sleep, polls everything once more (inputs
//! that arrived before arming) and only then blocks in `poll(2)` on the stages' descriptors
//! and its doorbell, at most [`super::idle::MAX_WAIT`]. A stage that cannot sleep right now
//! (output waiting for room, input without a wake-up path) makes that round a timed sleep.
//! Every stage flushes its partial bursts at the end of each poll and in housekeeping, which
//! runs before any sleep: nothing waits in a buffer while its lcore sleeps.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam::queue::ArrayQueue;

use super::counters::{Counter, LcoreCounters};
use super::idle::{self, Cause, IdleMode, WaitSet, Wake};

/// Loops between two housekeeping calls.
pub const HOUSEKEEPING_EVERY: u32 = 256;

/// What a stage sees of the current loop.
pub struct LoopCtx<'a> {
    /// Clock value for this loop (nanoseconds since start; read once per loop).
    pub now_ns: u64,
    /// This lcore's counters (the stage is their only writer).
    pub counters: &'a LcoreCounters,
    /// Current run phase.
    pub phase: Phase,
}

/// Commands from management, applied by every stage at a loop boundary.
#[derive(Debug, Clone)]
pub enum Command {
    /// The COLO frame finished a checkpoint: release/flush compare queues, reset rewriter
    /// offsets, restore simulated VMs.
    CheckpointDone,
    /// Take over: on the primary stop comparing, on the secondary serve the client.
    Failover,
    /// Turn divergence capture on or off.
    Capture(bool),
    /// Replace the compare shards' bypass rules.
    Bypass(Arc<Vec<crate::config::BypassRule>>),
    /// Compare shards append their busiest flows to the request (for `ctl flows`).
    Flows(Arc<FlowsRequest>),
}

/// A `flows` query travelling to every compare shard.
#[derive(Debug, Default)]
pub struct FlowsRequest {
    /// How many flows each shard reports at most.
    pub top: usize,
    /// Each shard's answer (JSON objects).
    pub out: std::sync::Mutex<Vec<serde_json::Value>>,
}

/// Run phases, moved forward only by management.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Phase {
    /// Normal operation.
    Run = 0,
    /// Stop receiving from ports and generating; keep moving what is in flight.
    StopRx = 1,
    /// Release everything still held (compare queues, partial bursts), then idle.
    Flush = 2,
    /// Leave the loop.
    Exit = 3,
}

impl Phase {
    fn from_u8(v: u8) -> Phase {
        match v {
            0 => Phase::Run,
            1 => Phase::StopRx,
            2 => Phase::Flush,
            _ => Phase::Exit,
        }
    }
}

/// A pipeline stage: a state machine driven by its lcore's loop.
pub trait Stage: Send {
    /// Short name for reports.
    fn name(&self) -> &str;
    /// One step: take a burst from its inputs (ports only in [`Phase::Run`]), process it,
    /// hand the results on. Returns how many packets it handled (0 = idle).
    fn poll(&mut self, cx: &LoopCtx) -> usize;
    /// Periodic work: timeouts, ageing, flushing partial bursts.
    fn housekeeping(&mut self, _cx: &LoopCtx) {}
    /// Apply a management command.
    fn command(&mut self, _cmd: &Command, _cx: &LoopCtx) {}
    /// Release everything held (shutdown). Called once when the phase becomes [`Phase::Flush`].
    fn flush(&mut self, _cx: &LoopCtx) {}
    /// Interrupt mode, before the lcore sleeps (`on`): arm the inputs' wake-ups (rx
    /// interrupts) and say whether the stage can sleep now; false when an input has no
    /// wake-up path or output waits for room (the loop then takes a timed sleep). After the
    /// sleep, or when work came first, it is called with `on = false` to disarm.
    fn idle_arm(&mut self, _on: bool) -> bool {
        true
    }
    /// Interrupt mode, right before blocking: add the descriptors that signal new input
    /// (port sockets, link sockets) to `ws`. Called after [`Stage::idle_arm`] and the last
    /// poll, so descriptors of reconnected sockets are current.
    fn wait_fds(&self, _ws: &mut WaitSet) {}
    /// True while the stage holds output that waits for input expected soon (a compare
    /// shard's primaries waiting for the secondary's copy): the loop then spins up to
    /// [`IdlePolicy::await_spin`] after the last work instead of sleeping, so the copy does not
    /// find it asleep (a wake-up costs tens of µs on a VM).
    fn awaiting(&self) -> bool {
        false
    }
}

/// How an lcore waits when it finds no work.
#[derive(Clone, Debug)]
pub struct IdlePolicy {
    /// Poll, timed back-off, or sleep until woken.
    pub mode: IdleMode,
    /// Empty loops before sleeping, at most.
    pub spin_loops: u32,
    /// Longest spin after the last work: a loop's cost varies (a link socket's `read` is a
    /// syscall), and on a shared core every µs spun is taken from the VMs.
    pub spin: Duration,
    /// Longest spin after the last work while a stage is [`Stage::awaiting`] (0: never longer
    /// than [`Self::spin`]).
    pub await_spin: Duration,
    /// Longest timed sleep (back-off, and interrupt-mode rounds that cannot block).
    pub max_sleep: Duration,
    /// Why this mode (shown by `ctl stats`).
    pub reason: String,
}

impl Default for IdlePolicy {
    fn default() -> Self {
        IdlePolicy {
            mode: IdleMode::Backoff,
            spin_loops: 1000,
            spin: Duration::from_micros(20),
            await_spin: Duration::from_micros(200),
            max_sleep: Duration::from_micros(100),
            reason: "default".into(),
        }
    }
}

impl IdlePolicy {
    /// `mode` with the default spin and sleep lengths.
    pub fn mode(mode: IdleMode) -> Self {
        IdlePolicy {
            mode,
            reason: format!("{mode}"),
            ..IdlePolicy::default()
        }
    }
}

/// State an lcore shares with management.
pub struct LcoreShared {
    /// The lcore id (for reports).
    pub lcore: u32,
    /// Names of the stages it runs.
    pub stages: Vec<String>,
    /// Its counters.
    pub counters: LcoreCounters,
    mailbox: ArrayQueue<(u64, Command)>,
    acked: AtomicU64,
    phase_seen: AtomicU8,
    /// Set when the loop has returned.
    pub exited: AtomicBool,
    /// Panic or error text if the loop failed.
    pub failure: std::sync::Mutex<Option<String>>,
    /// Its doorbell: ring producers on other lcores and management wake it with this.
    pub wake: Arc<Wake>,
    /// Its idle policy (set at launch; `ctl stats` shows mode and reason).
    pub idle: std::sync::OnceLock<IdlePolicy>,
}

impl LcoreShared {
    /// Shared block for lcore `lcore` running `stages`.
    pub fn new(lcore: u32, stages: Vec<String>) -> Self {
        LcoreShared {
            lcore,
            stages,
            counters: LcoreCounters::default(),
            mailbox: ArrayQueue::new(16),
            acked: AtomicU64::new(0),
            phase_seen: AtomicU8::new(Phase::Run as u8),
            exited: AtomicBool::new(false),
            failure: std::sync::Mutex::new(None),
            wake: Arc::new(Wake::new()),
            idle: std::sync::OnceLock::new(),
        }
    }

    /// The same, woken through `wake` (the doorbell its ring producers were given).
    pub fn with_wake(mut self, wake: Arc<Wake>) -> Self {
        self.wake = wake;
        self
    }

    /// The last phase this lcore has acted on.
    pub fn phase_seen(&self) -> Phase {
        Phase::from_u8(self.phase_seen.load(Ordering::Acquire))
    }
}

/// Management's handle on every lcore: phase and commands.
pub struct ControlPlane {
    phase: AtomicU8,
    next_seq: AtomicU64,
    // One command in flight at a time (management and the telemetry thread both send), so
    // acknowledgements arrive in sequence order.
    broadcast_lock: std::sync::Mutex<()>,
    /// Every lcore's shared block.
    pub lcores: Vec<Arc<LcoreShared>>,
    clock_origin: Instant,
}

impl ControlPlane {
    /// A control plane over `lcores`.
    pub fn new(lcores: Vec<Arc<LcoreShared>>) -> Self {
        ControlPlane {
            phase: AtomicU8::new(Phase::Run as u8),
            next_seq: AtomicU64::new(1),
            broadcast_lock: std::sync::Mutex::new(()),
            lcores,
            clock_origin: Instant::now(),
        }
    }

    /// Nanoseconds since the control plane was created: the pipeline's clock.
    pub fn now_ns(&self) -> u64 {
        self.clock_origin.elapsed().as_nanos() as u64
    }

    /// Current phase.
    pub fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::Acquire))
    }

    /// Move every lcore to `phase` and wait until all have acted on it (or `timeout`).
    pub fn set_phase(&self, phase: Phase, timeout: Duration) -> bool {
        self.phase.store(phase as u8, Ordering::Release);
        for l in &self.lcores {
            l.wake.notify_control();
        }
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .lcores
                .iter()
                .all(|l| l.phase_seen() >= phase || l.exited.load(Ordering::Acquire))
            {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }

    /// Send `cmd` to every lcore and wait until each has applied it (or `timeout`).
    pub fn broadcast(&self, cmd: Command, timeout: Duration) -> Result<(), String> {
        let _one_at_a_time = self
            .broadcast_lock
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let seq = self.next_seq.fetch_add(1, Ordering::AcqRel);
        for l in &self.lcores {
            let mut item = (seq, cmd.clone());
            let deadline = Instant::now() + timeout;
            while let Err(back) = l.mailbox.push(item) {
                if Instant::now() > deadline {
                    return Err(format!("lcore {}: command queue full", l.lcore));
                }
                item = back;
                std::thread::sleep(Duration::from_micros(100));
            }
            l.wake.notify_control();
        }
        let deadline = Instant::now() + timeout;
        loop {
            let pending: Vec<u32> = self
                .lcores
                .iter()
                .filter(|l| {
                    l.acked.load(Ordering::Acquire) < seq && !l.exited.load(Ordering::Acquire)
                })
                .map(|l| l.lcore)
                .collect();
            if pending.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("lcores {pending:?} did not acknowledge {cmd:?}"));
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }
}

/// Run `stages` until the control plane says [`Phase::Exit`], idling as `policy` says.
pub fn run_loop(
    stages: &mut [Box<dyn Stage>],
    shared: &LcoreShared,
    control: &ControlPlane,
    policy: &IdlePolicy,
) {
    let counters = &shared.counters;
    let wake = &shared.wake;
    let mut loops: u32 = 0;
    let mut idle_loops: u32 = 0;
    let mut backoff = idle::Backoff::new(policy.max_sleep);
    let interrupt = policy.mode == IdleMode::Interrupt && wake.usable();
    // Interrupt mode: the stages' wake-ups are armed and the sleep announced; the next
    // empty loop blocks.
    let mut armed = false;
    let mut ws = WaitSet::with_capacity(16);
    let mut dpdk_fd = None;
    if policy.mode != IdleMode::Poll {
        idle::set_timer_slack(idle::TIMER_SLACK_NS);
    }
    let mut phase = Phase::Run;
    let mut last_ns = control.now_ns();
    let spin_ns = u64::try_from(policy.spin.as_nanos()).unwrap_or(u64::MAX);
    let await_ns = u64::try_from(policy.await_spin.as_nanos()).unwrap_or(u64::MAX);
    let mut last_work_ns = last_ns;
    loop {
        let now_ns = control.now_ns();
        let cx = LoopCtx {
            now_ns,
            counters,
            phase,
        };
        let mut work = 0;
        for s in stages.iter_mut() {
            work += s.poll(&cx);
        }
        loops = loops.wrapping_add(1);
        if loops.is_multiple_of(HOUSEKEEPING_EVERY) || work == 0 {
            for s in stages.iter_mut() {
                s.housekeeping(&cx);
            }
        }
        let mut commands = false;
        while let Some((seq, cmd)) = shared.mailbox.pop() {
            for s in stages.iter_mut() {
                s.command(&cmd, &cx);
            }
            shared.acked.store(seq, Ordering::Release);
            commands = true;
        }
        let wanted = control.phase();
        if wanted != phase {
            if wanted >= Phase::Flush && phase < Phase::Flush {
                for s in stages.iter_mut() {
                    s.flush(&cx);
                }
            }
            phase = wanted;
            shared.phase_seen.store(phase as u8, Ordering::Release);
            if phase == Phase::Exit {
                break;
            }
            commands = true;
        }
        let elapsed = now_ns.saturating_sub(last_ns);
        last_ns = now_ns;
        if work > 0 || commands {
            counters.add(Counter::BusyNs, elapsed);
            idle_loops = 0;
            last_work_ns = now_ns;
            backoff.reset();
            if armed {
                disarm(stages, wake);
                armed = false;
            }
            continue;
        }
        counters.add(Counter::IdleNs, elapsed);
        idle_loops = idle_loops.saturating_add(1);
        let since_work = now_ns.saturating_sub(last_work_ns);
        let spinning = (idle_loops <= policy.spin_loops && since_work < spin_ns)
            || (since_work < await_ns && stages.iter().any(|s| s.awaiting()));
        if policy.mode == IdleMode::Poll || spinning {
            std::hint::spin_loop();
            continue;
        }
        if interrupt && !armed {
            // Arm, announce, then one more full loop: what arrived before arming is seen
            // there, what arrives after it wakes the sleep.
            let mut can_sleep = true;
            for s in stages.iter_mut() {
                can_sleep &= s.idle_arm(true);
            }
            if can_sleep {
                wake.announce();
                armed = true;
                continue;
            }
            for s in stages.iter_mut() {
                s.idle_arm(false);
            }
        }
        if armed {
            ws.clear();
            ws.readable(wake.fd(), Cause::Doorbell);
            for s in stages.iter() {
                s.wait_fds(&mut ws);
            }
            if ws.wants_dpdk_interrupts() {
                let fd = *dpdk_fd.get_or_insert_with(crate::dpdk::intr_thread_fd);
                ws.readable(fd, Cause::DpdkIntr);
            }
            let t0 = control.now_ns();
            let woken = ws.wait(idle::MAX_WAIT);
            counters.add(Counter::SleepNs, control.now_ns().saturating_sub(t0));
            counters.inc(Counter::Sleeps);
            disarm(stages, wake);
            armed = false;
            let (data, ctl) = wake.drain();
            if woken.dpdk_intr {
                crate::dpdk::intr_drain();
            }
            if woken.rx || woken.dpdk_intr {
                counters.inc(Counter::WakeRx);
            }
            if woken.socket {
                counters.inc(Counter::WakeSocket);
            }
            if data > 0 {
                counters.inc(Counter::WakeRing);
            }
            if ctl > 0 {
                counters.inc(Counter::WakeControl);
            }
            if woken.timeout {
                counters.inc(Counter::WakeTimeout);
            }
            // Poll at once; the next empty loop arms again without spinning first.
            idle_loops = policy.spin_loops;
            continue;
        }
        let d = backoff.step();
        if d.is_zero() {
            std::hint::spin_loop();
        } else {
            let t0 = control.now_ns();
            std::thread::sleep(d);
            counters.add(Counter::SleepNs, control.now_ns().saturating_sub(t0));
            counters.inc(Counter::Sleeps);
        }
    }
    if armed {
        disarm(stages, wake);
    }
    shared.exited.store(true, Ordering::Release);
}

fn disarm(stages: &mut [Box<dyn Stage>], wake: &Wake) {
    wake.retract();
    for s in stages.iter_mut() {
        s.idle_arm(false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        polls: u64,
        commands: Arc<AtomicU64>,
        flushed: Arc<AtomicBool>,
    }

    impl Stage for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn poll(&mut self, cx: &LoopCtx) -> usize {
            self.polls += 1;
            if cx.phase == Phase::Run && self.polls.is_multiple_of(3) {
                cx.counters.inc(Counter::Rx);
                cx.counters.inc(Counter::Tx);
                1
            } else {
                0
            }
        }
        fn command(&mut self, _cmd: &Command, _cx: &LoopCtx) {
            self.commands.fetch_add(1, Ordering::Relaxed);
        }
        fn flush(&mut self, _cx: &LoopCtx) {
            self.flushed.store(true, Ordering::Relaxed);
        }
    }

    #[test]
    fn commands_are_acknowledged_and_phases_reach_exit() {
        let shared = Arc::new(LcoreShared::new(1, vec!["fake".into()]));
        let control = Arc::new(ControlPlane::new(vec![shared.clone()]));
        let commands = Arc::new(AtomicU64::new(0));
        let flushed = Arc::new(AtomicBool::new(false));
        let (s2, c2, cm, fl) = (
            shared.clone(),
            control.clone(),
            commands.clone(),
            flushed.clone(),
        );
        let t = std::thread::spawn(move || {
            let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(Fake {
                polls: 0,
                commands: cm,
                flushed: fl,
            })];
            run_loop(&mut stages, &s2, &c2, &IdlePolicy::default());
        });
        control
            .broadcast(Command::CheckpointDone, Duration::from_secs(5))
            .unwrap();
        control
            .broadcast(Command::Failover, Duration::from_secs(5))
            .unwrap();
        assert_eq!(commands.load(Ordering::Relaxed), 2);
        assert!(control.set_phase(Phase::StopRx, Duration::from_secs(5)));
        assert!(!flushed.load(Ordering::Relaxed));
        assert!(control.set_phase(Phase::Flush, Duration::from_secs(5)));
        assert!(flushed.load(Ordering::Relaxed));
        assert!(control.set_phase(Phase::Exit, Duration::from_secs(5)));
        t.join().unwrap();
        assert!(shared.exited.load(Ordering::Relaxed));
        assert!(shared.counters.snapshot().accounting().balanced());
        assert!(shared.counters.get(Counter::IdleNs) > 0);
    }

    /// Work once, then nothing: the spin before the first sleep ends after `spin`, however
    /// many empty loops `spin_loops` would still allow.
    struct OnceThenIdle {
        polls: u64,
    }

    impl Stage for OnceThenIdle {
        fn name(&self) -> &str {
            "once"
        }
        fn poll(&mut self, _cx: &LoopCtx) -> usize {
            self.polls += 1;
            usize::from(self.polls == 1)
        }
    }

    /// Run `stage` alone under `policy` until its lcore first sleeps (at most 5 s), then stop
    /// it: (sleeps, idle ns) as read when the first sleep was seen.
    fn until_first_sleep(stage: Box<dyn Stage>, policy: IdlePolicy) -> (u64, u64) {
        let shared = Arc::new(LcoreShared::new(1, vec![stage.name().to_string()]));
        let control = Arc::new(ControlPlane::new(vec![shared.clone()]));
        let (s2, c2) = (shared.clone(), control.clone());
        let t = std::thread::spawn(move || {
            let mut stages: Vec<Box<dyn Stage>> = vec![stage];
            run_loop(&mut stages, &s2, &c2, &policy);
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while shared.counters.get(Counter::Sleeps) == 0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        let seen = (
            shared.counters.get(Counter::Sleeps),
            shared.counters.get(Counter::IdleNs),
        );
        assert!(control.set_phase(Phase::Exit, Duration::from_secs(5)));
        t.join().unwrap();
        seen
    }

    #[test]
    fn the_spin_ends_after_its_time_bound_not_only_after_its_loop_count() {
        let policy = IdlePolicy {
            // Billions of empty loops: seconds to minutes of spinning without the time bound.
            spin_loops: u32::MAX,
            spin: Duration::from_micros(200),
            ..IdlePolicy::mode(IdleMode::Backoff)
        };
        let (sleeps, idle_ns) = until_first_sleep(Box::new(OnceThenIdle { polls: 0 }), policy);
        assert!(
            sleeps > 0,
            "the lcore never slept: the spin has no time bound"
        );
        // It spun for the bound first (idle time before sleeping is counted as IdleNs).
        assert!(idle_ns >= 200_000);
    }

    /// Work once, then nothing, while saying it awaits input (a compare shard holding
    /// primaries for their secondaries).
    struct OnceThenAwaiting {
        polls: u64,
    }

    impl Stage for OnceThenAwaiting {
        fn name(&self) -> &str {
            "awaiting"
        }
        fn poll(&mut self, _cx: &LoopCtx) -> usize {
            self.polls += 1;
            usize::from(self.polls == 1)
        }
        fn awaiting(&self) -> bool {
            true
        }
    }

    #[test]
    fn an_awaiting_stage_keeps_the_loop_spinning_for_await_spin_then_it_sleeps() {
        let policy = IdlePolicy {
            // Without the await spin the first empty loop would sleep.
            spin_loops: 0,
            spin: Duration::ZERO,
            await_spin: Duration::from_millis(30),
            ..IdlePolicy::mode(IdleMode::Backoff)
        };
        let (sleeps, idle_before_sleep) =
            until_first_sleep(Box::new(OnceThenAwaiting { polls: 0 }), policy);
        assert!(sleeps > 0, "the await spin has no end");
        assert!(
            idle_before_sleep >= 30_000_000,
            "slept after {idle_before_sleep} ns of spinning, before await_spin ran out"
        );
    }
}
