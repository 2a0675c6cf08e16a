//! The management lcore's loop, shared by `run` and `demo`: drive [`Management`] (control
//! socket, checkpoint coordination and sinks, capture), print a live status line, and perform
//! the orderly stop when asked (signal, `shutdown` command, or the end of a timed run).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::control::Event;
use crate::mgmt::{status, Management, MgmtStats};

use super::backpressure::{lag_summary, ShardLag};
use super::control::PipelineControl;
use super::counters::{Counter, Snapshot};
use super::lcore::{Command, ControlPlane, IdlePolicy};
use super::runtime::{self, LcorePlan};

/// How the loop runs and ends.
pub struct LoopOptions {
    /// Stop when this is raised (signal handler, `shutdown` command).
    pub stop: Arc<AtomicBool>,
    /// Stop after this long (`None`: run until stopped).
    pub run_for: Option<Duration>,
    /// Print a status line this often (`None`: quiet).
    pub status_every: Option<Duration>,
    /// Called when the run ends, before the stop phases, by an embedding that feeds the
    /// pipeline itself (the demo's simulated client): it stops its sources, then the loop lets
    /// in-flight traffic settle and an outstanding checkpoint finish, so the report shows a
    /// quiet system. Not called after an lcore failure.
    pub before_stop: Option<Box<dyn Fn() + Send>>,
}

/// What the run ended with.
pub struct LoopOutcome {
    /// Counter totals after the stop.
    pub totals: Snapshot,
    /// Management's counters after the stop.
    pub mgmt: MgmtStats,
    /// Every phase of the stop was acknowledged by every lcore.
    pub stopped_cleanly: bool,
    /// The largest SVM lag seen per shard (bytes and oldest-packet age, each its own peak).
    pub peak_lag: Vec<ShardLag>,
    /// The lcore failure that stopped the run (`lcore 2 (compare0): panicked: ...`), if any.
    pub fault: Option<String>,
}

/// Launch `plans`, attach `control` to the running lcores, register the telemetry commands and
/// run management on the main lcore ([`run`]) until the pipeline has stopped. Returns the
/// loop's outcome and the lcore failures.
pub fn serve(
    plans: Vec<LcorePlan>,
    idle: IdlePolicy,
    control: &Arc<PipelineControl>,
    mut mgmt: Management,
    o: LoopOptions,
) -> Result<(LoopOutcome, Vec<String>), String> {
    let running = runtime::launch(plans, idle).map_err(|e| e.to_string())?;
    control.attach(running.control.clone());
    if let Err(e) = crate::mgmt::telemetry::register(control.clone(), Some(mgmt.stats_handle())) {
        log::warn!("telemetry commands not registered: {e}");
    }
    // Ports are started, sockets bound (servers listening, clients connecting) and the lcores
    // launched: ready for systemd (Type=notify).
    let mut status = format!("running: {} lcores", running.control.lcores.len());
    if let Some(a) = mgmt.metrics_addr() {
        status.push_str(&format!(", metrics on {a}"));
    }
    crate::mgmt::service::ready(&status);
    let result = Arc::new(Mutex::new(None));
    let r2 = result.clone();
    let dp = control.clone();
    let ctl = running.control.clone();
    let failures = running.run_main_and_wait(move |ctl| {
        let out = run(&ctl, &mut mgmt, &o, Some(&dp));
        if let Ok(mut g) = r2.lock() {
            *g = Some(out);
        }
    });
    let out = result.lock().unwrap_or_else(|p| p.into_inner()).take();
    let out = match out {
        Some(out) => out,
        // Management panicked (in `failures`); the pipeline was stopped without it.
        None => LoopOutcome {
            totals: runtime::totals(&ctl),
            mgmt: MgmtStats::default(),
            stopped_cleanly: false,
            peak_lag: Vec::new(),
            fault: failures.first().cloned(),
        },
    };
    Ok((out, failures))
}

/// Keep each shard's largest lag (bytes and age separately).
fn track_peak(peak: &mut Vec<ShardLag>, now: &[ShardLag]) {
    if peak.len() < now.len() {
        peak.resize(now.len(), ShardLag::default());
    }
    for (p, n) in peak.iter_mut().zip(now) {
        p.shard = n.shard;
        p.primary_packets = p.primary_packets.max(n.primary_packets);
        p.primary_bytes = p.primary_bytes.max(n.primary_bytes);
        p.secondary_packets = p.secondary_packets.max(n.secondary_packets);
        p.secondary_bytes = p.secondary_bytes.max(n.secondary_bytes);
        p.oldest_ns = p.oldest_ns.max(n.oldest_ns);
    }
}

/// Longest management sleeps when nothing wakes it and every lcore sleeps too: bounds how
/// late it sees a stop request or a failed lcore (inputs, sockets and sink deadlines wake it
/// at once).
pub const IDLE_WAIT: Duration = Duration::from_millis(10);
/// The same while some lcore is awake (traffic): management's cadence of old.
pub const BUSY_WAIT: Duration = Duration::from_millis(1);

/// Run management until stopped, then stop the pipeline in order; `dp` (when given) adds the
/// SVM lag and port drops to the status line and the outcome.
pub fn run(
    ctl: &ControlPlane,
    mgmt: &mut Management,
    o: &LoopOptions,
    dp: Option<&PipelineControl>,
) -> LoopOutcome {
    if mgmt.capture_on() {
        // Capture configured on from the start: the shards must know.
        if let Err(e) = ctl.broadcast(Command::Capture(true), Duration::from_secs(2)) {
            log::warn!("capture not started: {e}");
        }
    }
    let start = Instant::now();
    let panic_at = test_management_panic();
    let mut fault = None;
    let mut last_status = Instant::now();
    let mut last_totals = runtime::totals(ctl);
    let mut peak_lag = Vec::new();
    // The status line shows the largest lag since the previous line, not one sample.
    let mut interval_lag = Vec::new();
    loop {
        let out = mgmt.poll(ctl.now_ns());
        let lag = dp.map(PipelineControl::lag).unwrap_or_default();
        track_peak(&mut peak_lag, &lag);
        track_peak(&mut interval_lag, &lag);
        if out.shutdown || o.stop.load(Ordering::Acquire) {
            break;
        }
        if let Some((lcore, stages, reason)) = runtime::failed_lcore(ctl) {
            let what = format!("lcore {lcore} ({}): {reason}", stages.join(", "));
            eprintln!("error: {what}; stopping the pipeline");
            mgmt.sender()
                .send(crate::mgmt::Input::Event(Event::LcoreFailed {
                    lcore,
                    stages,
                    reason,
                    time_ns: ctl.now_ns(),
                }));
            mgmt.poll(ctl.now_ns());
            fault = Some(what);
            break;
        }
        if panic_at.is_some_and(|d| start.elapsed() >= d) {
            panic!("{}: injected fault in management", runtime::TEST_PANIC_ENV);
        }
        if o.run_for.is_some_and(|d| start.elapsed() >= d) {
            break;
        }
        if let Some(every) = o.status_every {
            if last_status.elapsed() >= every {
                let t = runtime::totals(ctl);
                let mut line = status_line(&t.delta(&last_totals), last_status.elapsed());
                if let Some(dp) = dp {
                    line.push_str(&pipeline_status(&t, &interval_lag, dp));
                }
                interval_lag.clear();
                println!(
                    "[{:>6.1}s] {line} | {}",
                    start.elapsed().as_secs_f64(),
                    status::status_line(&mgmt.stats())
                );
                last_totals = t;
                last_status = Instant::now();
            }
        }
        if out.work == 0 {
            // While the data plane runs, keep the millisecond cadence of old (measured: longer
            // sleeps here cost the e2e bench a third of its server-to-client rate on this VM,
            // where a vCPU that goes idle wakes slowly); sleep long only when every lcore does.
            let max = if runtime::all_lcores_asleep(ctl) {
                IDLE_WAIT
            } else {
                BUSY_WAIT
            };
            mgmt.wait(ctl.now_ns(), max);
        }
    }
    crate::mgmt::service::stopping();
    if let (Some(stop_sources), None) = (&o.before_stop, &fault) {
        // Sources first, then let what they sent settle and an outstanding checkpoint finish.
        stop_sources();
        settle(ctl, mgmt, Duration::from_millis(200));
        let deadline = Instant::now() + Duration::from_secs(2);
        while mgmt.stats().checkpoint.outstanding && Instant::now() < deadline {
            mgmt.poll(ctl.now_ns());
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    let stopped_cleanly = runtime::stop(ctl, Duration::from_millis(100));
    // Divergences raised while flushing still reach the report (the checkpoint they request
    // cannot be taken any more: the pipeline has stopped).
    for _ in 0..16 {
        if mgmt.poll(ctl.now_ns()).work == 0 {
            break;
        }
    }
    LoopOutcome {
        totals: runtime::totals(ctl),
        mgmt: mgmt.stats(),
        stopped_cleanly,
        peak_lag,
        fault,
    }
}

/// `COLO_TEST_PANIC=management[:MS]`: management panics MS milliseconds after it started
/// (test-only fault injection, inert unless set; see [`runtime::TEST_PANIC_ENV`]).
fn test_management_panic() -> Option<Duration> {
    runtime::test_panic_target()
        .filter(|(name, _)| name == "management")
        .map(|(_, ms)| Duration::from_millis(ms))
}

/// The lag and pause part of the status line: ` | lag 1.2MB/3.1ms paused 12ms port-drops 5`
/// (lag per shard, the peak of the interval, only on the primary; pause time and port drops
/// since start).
fn pipeline_status(t: &Snapshot, lag: &[ShardLag], dp: &PipelineControl) -> String {
    let mut s = String::new();
    if !lag.is_empty() {
        s.push_str(" | ");
        s.push_str(&lag_summary(lag));
        let paused = t.get(Counter::PvmPausedNs);
        if paused > 0 {
            s.push_str(&format!(" paused {:.0}ms", paused as f64 / 1e6));
        }
    }
    let port_drops: u64 = dp.port_drops().iter().map(|p| p.dropped()).sum();
    if port_drops > 0 {
        s.push_str(&format!(" port-drops {port_drops}"));
    }
    s
}

/// The final report's back-pressure, lag and drop lines.
pub fn report_lines(
    t: &Snapshot,
    peak: &[ShardLag],
    ports: &[super::control::PortDrops],
) -> String {
    use std::fmt::Write;
    let mut r = String::new();
    let _ = writeln!(r, "drops                    {}", t.drops_list());
    if t.get(Counter::PvmPauses) > 0 || !peak.is_empty() {
        let _ = writeln!(
            r,
            "pvm back-pressure        {} pauses, {:.1} ms paused, {} gated polls, {} overrides",
            t.get(Counter::PvmPauses),
            t.get(Counter::PvmPausedNs) as f64 / 1e6,
            t.get(Counter::PvmRxGated),
            t.get(Counter::PvmPauseOverrides)
        );
    }
    for l in peak {
        let _ = writeln!(
            r,
            "svm lag shard {:<10} peak {} packets / {} bytes queued, oldest {:.1} ms",
            l.shard,
            l.primary_packets,
            l.primary_bytes,
            l.oldest_ns as f64 / 1e6
        );
    }
    for p in ports {
        let _ = writeln!(r, "{}", p.line());
    }
    r
}

/// Keep management polling while waiting for the counters to stop moving.
fn settle(ctl: &ControlPlane, mgmt: &mut Management, quiet: Duration) {
    let deadline = Instant::now() + Duration::from_secs(5);
    let moving = |s: &Snapshot| s.get(Counter::Rx) + s.get(Counter::Tx) + s.get(Counter::Generated);
    let mut last = moving(&runtime::totals(ctl));
    let mut since = Instant::now();
    while Instant::now() < deadline {
        mgmt.poll(ctl.now_ns());
        std::thread::sleep(Duration::from_millis(2));
        let now = moving(&runtime::totals(ctl));
        if now != last {
            last = now;
            since = Instant::now();
        } else if since.elapsed() >= quiet {
            return;
        }
    }
}

/// The data-plane half of the live status line (rates over the last interval).
pub fn status_line(d: &Snapshot, dt: Duration) -> String {
    let rate = |v: u64| v as f64 / dt.as_secs_f64().max(1e-9);
    let released = d.get(Counter::ReleasedMatched)
        + d.get(Counter::ReleasedBypass)
        + d.get(Counter::ReleasedCheckpoint)
        + d.get(Counter::ReleasedUncompared);
    let busy = d.get(Counter::BusyNs) as f64;
    let idle = d.get(Counter::IdleNs) as f64;
    format!(
        "rx {} tx {} mirrored {} released {} matched-sec {} rewritten {} drops {} busy {:.0}%",
        si(rate(d.get(Counter::Rx))),
        si(rate(d.get(Counter::Tx))),
        si(rate(d.get(Counter::Mirrored))),
        si(rate(released)),
        si(rate(d.get(Counter::SecondaryMatched))),
        si(rate(d.get(Counter::Rewritten))),
        d.dropped(),
        100.0 * busy / (busy + idle).max(1.0),
    )
}

/// A rate per second, short: `812/s`, `45.3k/s`, `1.21M/s`.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k/s", v / 1e3)
    } else {
        format!("{v:.0}/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_lines_name_every_drop_the_pause_the_lag_and_port_drops() {
        let c = super::super::counters::LcoreCounters::default();
        c.add(Counter::DropInputBoth, 2);
        c.add(Counter::DropSvmInputLost, 3);
        c.inc(Counter::PvmPauses);
        c.add(Counter::PvmPausedNs, 1_500_000);
        c.add(Counter::PvmRxGated, 40);
        let peak = [ShardLag {
            shard: 0,
            primary_packets: 4130,
            primary_bytes: 6_250_000,
            oldest_ns: 5_000_000,
            ..ShardLag::default()
        }];
        let port = super::super::control::PortDrops {
            name: "nic".into(),
            rx: 10,
            tx: 9,
            rx_missed: 4,
            rx_errors: 0,
            rx_nombuf: 0,
            tx_errors: 1,
            kernel_drops_hidden: true,
        };
        assert_eq!(port.dropped(), 5);
        let r = report_lines(&c.snapshot(), &peak, &[port]);
        assert!(
            r.contains("drops                    drop_input_both=2 drop_svm_input_lost=3\n"),
            "{r}"
        );
        assert!(
            r.contains("1 pauses, 1.5 ms paused, 40 gated polls, 0 overrides"),
            "{r}"
        );
        assert!(
            r.contains(
                "svm lag shard 0          peak 4130 packets / 6250000 bytes queued, oldest 5.0 ms"
            ),
            "{r}"
        );
        assert!(
            r.contains(
                "port nic      rx 10 tx 9 missed 4 rx-errors 0 rx-nombuf 0 tx-errors 1 (af_packet"
            ),
            "{r}"
        );
        let mut peak = Vec::new();
        track_peak(
            &mut peak,
            &[ShardLag {
                primary_bytes: 5,
                oldest_ns: 9,
                ..ShardLag::default()
            }],
        );
        track_peak(
            &mut peak,
            &[ShardLag {
                primary_bytes: 7,
                oldest_ns: 1,
                ..ShardLag::default()
            }],
        );
        assert_eq!((peak[0].primary_bytes, peak[0].oldest_ns), (7, 9));
    }

    #[test]
    fn status_line_shows_rates_and_drops() {
        let c = super::super::counters::LcoreCounters::default();
        c.add(Counter::Rx, 2_000_000);
        c.add(Counter::DropTxFull, 3);
        let l = status_line(&c.snapshot(), Duration::from_secs(2));
        assert!(l.contains("rx 1.00M/s"), "{l}");
        assert!(l.contains("drops 3"), "{l}");
    }
}
