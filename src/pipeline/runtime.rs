//! Launching stages on lcores, driving phases from management, and the orderly stop.
//!
//! The main lcore's thread runs management (and, if the plan puts stages on it, a poll loop
//! while management runs on a helper thread). Stop sequence: quiesce traffic sources →
//! [`Phase::StopRx`] → wait until counters stop moving (rings drained) → [`Phase::Flush`]
//! (compare shards release everything they hold) → [`Phase::Exit`].
//!
//! Liveness: every poll loop runs under `catch_unwind` ([`run_guarded`]). A loop that panics
//! records why in its [`LcoreShared::failure`], drops its stages (what they held is freed,
//! never transmitted) and raises [`LcoreShared::exited`]; management reads those words
//! ([`failed_lcore`], a few atomic loads per management poll, nothing on the data path) and
//! stops the rest in order. A panicking management thread stops the pipeline too.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dpdk::{self, DpdkError};

use super::counters::{Counter, Snapshot};
use super::idle::{WaitSet, Wake};
use super::lcore::{run_loop, ControlPlane, IdlePolicy, LcoreShared, LoopCtx, Phase, Stage};

/// The stages one lcore runs.
pub struct LcorePlan {
    /// EAL lcore id.
    pub lcore: u32,
    /// Stages, polled in this order.
    pub stages: Vec<Box<dyn Stage>>,
    /// How it idles (`None`: the policy given to [`launch`]).
    pub idle: Option<IdlePolicy>,
    /// Its doorbell (ring producers on other lcores hold it too).
    pub wake: Arc<Wake>,
}

impl LcorePlan {
    /// `stages` on `lcore`, idling by the launch's policy, with a fresh doorbell.
    pub fn new(lcore: u32, stages: Vec<Box<dyn Stage>>) -> Self {
        LcorePlan {
            lcore,
            stages,
            idle: None,
            wake: Arc::new(Wake::new()),
        }
    }
}

/// The stages the main lcore polls itself, with its shared block.
type MainPlan = (Arc<LcoreShared>, Vec<Box<dyn Stage>>, IdlePolicy);

/// A running pipeline.
pub struct Running {
    /// Phases and commands.
    pub control: Arc<ControlPlane>,
    jobs: Vec<dpdk::LcoreJob<()>>,
    main_plan: Option<MainPlan>,
}

/// Start every worker lcore's loop; a plan without its own idle policy gets `idle`. Stages
/// planned on the main lcore run when [`Running::run_main_and_wait`] is called.
pub fn launch(mut plans: Vec<LcorePlan>, idle: IdlePolicy) -> Result<Running, DpdkError> {
    inject_stage_fault(&mut plans);
    let main = dpdk::main_lcore();
    let shared: Vec<Arc<LcoreShared>> = plans
        .iter()
        .map(|p| {
            let sh = LcoreShared::new(
                p.lcore,
                p.stages.iter().map(|s| s.name().to_string()).collect(),
            )
            .with_wake(p.wake.clone());
            let _ = sh.idle.set(p.idle.clone().unwrap_or_else(|| idle.clone()));
            Arc::new(sh)
        })
        .collect();
    let control = Arc::new(ControlPlane::new(shared.clone()));
    let mut jobs = Vec::new();
    let mut main_plan = None;
    for (plan, sh) in plans.into_iter().zip(shared) {
        let policy = sh.idle.get().cloned().unwrap_or_default();
        if plan.lcore == main {
            main_plan = Some((sh, plan.stages, policy));
            continue;
        }
        let ctl = control.clone();
        let stages = plan.stages;
        let job = dpdk::launch_on(plan.lcore, move || run_guarded(stages, &sh, &ctl, &policy));
        match job {
            Ok(j) => jobs.push(j),
            Err(e) => {
                // Stop what already runs before reporting.
                control.set_phase(Phase::Exit, Duration::from_secs(2));
                for j in jobs {
                    let _ = j.join();
                }
                return Err(e);
            }
        }
    }
    Ok(Running {
        control,
        jobs,
        main_plan,
    })
}

/// Run `stages` on this lcore until [`Phase::Exit`], surviving a panic: the panic's text goes
/// to `sh.failure`, the stages are dropped here (frames they hold are freed, never
/// transmitted; they are missing from the accounting, which the report says), and only then
/// is `sh.exited` raised, so management sees the reason with the flag.
pub fn run_guarded(
    mut stages: Vec<Box<dyn Stage>>,
    sh: &LcoreShared,
    ctl: &ControlPlane,
    policy: &IdlePolicy,
) {
    let r = catch_unwind(AssertUnwindSafe(|| run_loop(&mut stages, sh, ctl, policy)));
    if let Err(p) = r {
        set_failure(sh, format!("panicked: {}", dpdk::panic_message(&*p)));
    } else if ctl.phase() < Phase::Exit {
        set_failure(sh, "loop returned before the stop".to_string());
    }
    // A stage's Drop may be what panics (state left half-updated by the first panic).
    if let Err(p) = catch_unwind(AssertUnwindSafe(move || drop(stages))) {
        set_failure(
            sh,
            format!("panicked while freeing: {}", dpdk::panic_message(&*p)),
        );
    }
    sh.exited.store(true, Ordering::Release);
}

/// Record the first failure of an lcore (later ones are consequences).
fn set_failure(sh: &LcoreShared, what: String) {
    let mut f = sh.failure.lock().unwrap_or_else(|p| p.into_inner());
    if f.is_none() {
        *f = Some(what);
    }
}

/// `lcore 2 (compare0, compare1)`.
fn describe(l: &LcoreShared) -> String {
    format!("lcore {} ({})", l.lcore, l.stages.join(", "))
}

/// An lcore that has left its loop although no stop asked for it: `(lcore, stages, reason)`.
/// Management calls this every poll: a few atomic loads, no lock unless one has exited.
pub fn failed_lcore(control: &ControlPlane) -> Option<(u32, Vec<String>, String)> {
    if control.phase() == Phase::Exit {
        return None;
    }
    let l = control
        .lcores
        .iter()
        .find(|l| l.exited.load(Ordering::Acquire))?;
    let why = l
        .failure
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone()
        .unwrap_or_else(|| "exited before the stop".to_string());
    Some((l.lcore, l.stages.clone(), why))
}

/// True when every lcore has announced an interrupt-mode sleep (the data plane is idle).
/// Lcores that poll or back off never announce one.
pub fn all_lcores_asleep(control: &ControlPlane) -> bool {
    control.lcores.iter().all(|l| l.wake.is_sleeping())
}

/// Test-only fault injection, compiled in and inert unless `COLO_TEST_PANIC` names a stage:
/// `COLO_TEST_PANIC=compare0` (or `compare0:N`) makes that stage panic at its first
/// housekeeping after it has handled N packets (default 0). Read once at launch; without the
/// variable no stage is wrapped, so it costs nothing.
pub const TEST_PANIC_ENV: &str = "COLO_TEST_PANIC";

/// The stage name and count of [`TEST_PANIC_ENV`], when set.
pub fn test_panic_target() -> Option<(String, u64)> {
    let v = std::env::var(TEST_PANIC_ENV).ok()?;
    let (name, n) = match v.split_once(':') {
        Some((name, n)) => (name, n.parse().unwrap_or(0)),
        None => (v.as_str(), 0),
    };
    Some((name.to_string(), n))
}

fn inject_stage_fault(plans: &mut [LcorePlan]) {
    let Some((target, after)) = test_panic_target() else {
        return;
    };
    for p in plans.iter_mut() {
        for s in p.stages.iter_mut() {
            if s.name() == target {
                let inner = std::mem::replace(s, Box::new(Inert));
                *s = Box::new(PanicAfter {
                    inner,
                    after,
                    handled: 0,
                });
            }
        }
    }
}

/// Placeholder while a stage is being wrapped.
struct Inert;

impl Stage for Inert {
    fn name(&self) -> &str {
        "inert"
    }
    fn poll(&mut self, _cx: &LoopCtx) -> usize {
        0
    }
}

/// A stage that panics at housekeeping once `after` packets went through it (fault injection).
struct PanicAfter {
    inner: Box<dyn Stage>,
    after: u64,
    handled: u64,
}

impl Stage for PanicAfter {
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let n = self.inner.poll(cx);
        self.handled += n as u64;
        n
    }
    fn housekeeping(&mut self, cx: &LoopCtx) {
        if self.handled >= self.after && cx.phase == Phase::Run {
            panic!(
                "{TEST_PANIC_ENV}: injected fault in {} after {} packets",
                self.inner.name(),
                self.handled
            );
        }
        self.inner.housekeeping(cx);
    }
    fn command(&mut self, cmd: &super::lcore::Command, cx: &LoopCtx) {
        self.inner.command(cmd, cx);
    }
    fn flush(&mut self, cx: &LoopCtx) {
        self.inner.flush(cx);
    }
    fn idle_arm(&mut self, on: bool) -> bool {
        self.inner.idle_arm(on)
    }
    fn wait_fds(&self, ws: &mut WaitSet) {
        self.inner.wait_fds(ws);
    }
}

impl Running {
    /// Run `management` to completion (it must end with [`stop`]) while the main lcore's stages,
    /// if any, poll on this thread; then wait for every lcore. Returns lcore failures.
    pub fn run_main_and_wait<F>(mut self, management: F) -> Vec<String>
    where
        F: FnOnce(Arc<ControlPlane>) + Send + 'static,
    {
        let ctl = self.control.clone();
        let mut failures = Vec::new();
        // A management panic must still stop the lcores (nothing else would: signals and
        // `shutdown` only reach management), in order, so held primaries are dropped.
        let guarded = move || {
            let r = catch_unwind(AssertUnwindSafe(|| management(ctl.clone())));
            r.err().map(|p| {
                let msg = dpdk::panic_message(&*p);
                eprintln!("error: management panicked: {msg}; stopping the pipeline");
                stop(&ctl, Duration::from_millis(100));
                format!("management panicked: {msg}")
            })
        };
        if let Some((sh, stages, policy)) = self.main_plan.take() {
            let mgmt = std::thread::spawn(guarded);
            run_guarded(stages, &sh, &self.control, &policy);
            match mgmt.join() {
                Ok(None) => {}
                Ok(Some(f)) => failures.push(f),
                Err(_) => failures.push("management thread panicked".to_string()),
            }
        } else if let Some(f) = guarded() {
            failures.push(f);
        }
        for j in self.jobs {
            let lcore = j.lcore();
            if let Err(e) = j.join() {
                failures.push(format!("lcore {lcore}: {e}"));
            }
        }
        for l in &self.control.lcores {
            let f = l.failure.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(f) = f.as_ref() {
                failures.push(format!("{}: {f}", describe(l)));
            }
        }
        failures
    }
}

/// Sum of every lcore's counters.
pub fn totals(control: &ControlPlane) -> Snapshot {
    control.lcores.iter().fold(Snapshot::default(), |acc, l| {
        acc.plus(&l.counters.snapshot())
    })
}

/// The orderly stop: StopRx, drain until counters are still, Flush, Exit.
pub fn stop(control: &ControlPlane, settle: Duration) -> bool {
    let mut ok = control.set_phase(Phase::StopRx, Duration::from_secs(5));
    wait_still(control, settle);
    ok &= control.set_phase(Phase::Flush, Duration::from_secs(5));
    wait_still(control, settle);
    ok &= control.set_phase(Phase::Exit, Duration::from_secs(5));
    ok
}

/// Wait until no packet counter moved for `quiet` (at most 5 s).
pub fn wait_still(control: &ControlPlane, quiet: Duration) {
    let moving = |s: &Snapshot| s.get(Counter::Rx) + s.get(Counter::Tx) + s.get(Counter::Generated);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut last = moving(&totals(control));
    let mut since = Instant::now();
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
        let now = moving(&totals(control));
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}
