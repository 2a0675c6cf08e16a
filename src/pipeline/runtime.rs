//! Launching stages on lcores, driving phases from management, and the orderly stop.
//!
//! The main lcore's thread runs management (and, if the plan puts stages on it, a poll loop
//! while management runs on a helper thread). Stop sequence: quiesce traffic sources →
//! [`Phase::StopRx`] → wait until counters stop moving (rings drained) → [`Phase::Flush`]
//! (compare shards release everything they hold) → [`Phase::Exit`].

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::dpdk::{self, DpdkError};

use super::counters::{Counter, Snapshot};
use super::idle::Wake;
use super::lcore::{run_loop, ControlPlane, IdlePolicy, LcoreShared, Phase, Stage};

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
pub fn launch(plans: Vec<LcorePlan>, idle: IdlePolicy) -> Result<Running, DpdkError> {
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
        let mut stages = plan.stages;
        let job = dpdk::launch_on(plan.lcore, move || {
            let guard = ExitGuard(sh.clone());
            run_loop(&mut stages, &sh, &ctl, &policy);
            drop(guard);
        });
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

/// Marks an lcore as exited even when its loop unwinds from a panic.
struct ExitGuard(Arc<LcoreShared>);

impl Drop for ExitGuard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Ok(mut f) = self.0.failure.lock() {
                *f = Some("stage panicked".to_string());
            }
        }
        self.0.exited.store(true, Ordering::Release);
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
        if let Some((sh, mut stages, policy)) = self.main_plan.take() {
            let mgmt = std::thread::spawn(move || management(ctl));
            let guard = ExitGuard(sh.clone());
            run_loop(&mut stages, &sh, &self.control, &policy);
            drop(guard);
            if mgmt.join().is_err() {
                failures.push("management thread panicked".to_string());
            }
        } else {
            management(ctl);
        }
        for j in self.jobs {
            let lcore = j.lcore();
            if let Err(e) = j.join() {
                failures.push(format!("lcore {lcore}: {e}"));
            }
        }
        for l in &self.control.lcores {
            if let Ok(f) = l.failure.lock() {
                if let Some(f) = f.as_ref() {
                    failures.push(format!("lcore {}: {f}", l.lcore));
                }
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
    let moving = |s: &Snapshot| {
        s.get(Counter::Rx)
            + s.get(Counter::Tx)
            + s.get(Counter::Consumed)
            + s.get(Counter::Generated)
    };
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
