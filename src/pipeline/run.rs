//! Running a primary or secondary from its config: EAL up, pipeline built from the config, stages launched,
//! management loop until SIGINT/SIGTERM (or a `shutdown` command), then the orderly stop and
//! the final report.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Role};
use crate::dpdk::{Eal, Mempool};
use crate::mgmt::{Management, MgmtConfig};

use super::control::PipelineControl;
use super::latency::percentiles_us;
use super::manage::{self, LoopOptions};
use super::topology::{self, Topology};

/// Run the pipeline of `cfg` (role primary or secondary) until stopped; prints the final
/// report. `Ok(false)`: it ran, but an lcore failed, the accounting does not balance or the
/// stop was not clean.
pub fn run_pipeline(cfg: &Config, eal_overrides: &[String]) -> Result<bool, String> {
    let args = cfg.eal_args(eal_overrides);
    cfg.check_lcores(&args)
        .map_err(|e| e.messages().join("; "))?;
    // The config's list starts with the program name; Eal::init adds its own.
    let eal = Eal::init(args.get(1..).unwrap_or(&[])).map_err(|e| e.to_string())?;
    let m = &cfg.mempool;
    let pool = Mempool::with_params("colo_pool", m.mbufs, m.cache, m.data_room, None)
        .map_err(|e| format!("mempool of {} mbufs ({}): {e}", m.mbufs, m.budget))?;
    println!(
        "mempool: {} mbufs ({}; the pipeline holds at most {})",
        m.mbufs,
        if m.derived { "derived" } else { "set" },
        m.budget
    );
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let bypass = if cfg.role == Role::Primary {
        cfg.compare.bypass.clone()
    } else {
        Vec::new()
    };
    let control = Arc::new(PipelineControl::new(bypass, stop.clone()));
    let mut mgmt = Management::new(MgmtConfig::from_config(cfg), control.clone())
        .map_err(|e| format!("management: {e}"))?;
    let Topology {
        plans,
        mut ports,
        hold,
        idle,
        backlog,
        link_sockets,
    } = topology::build(cfg, &pool, &mgmt.sender(), mgmt.capture_on())?;
    control.set_link_sockets(link_sockets);
    mgmt.add_histogram(hold.metrics_source());
    if let Some(b) = backlog {
        control.set_backlog(b);
    }
    control.set_ports(
        ports
            .iter()
            .map(|(n, p)| {
                let af_packet = cfg.ports.get(n).is_some_and(|s| {
                    let d = s.device_name();
                    d.starts_with("net_af_packet") || d.starts_with("eth_af_packet")
                });
                (n.clone(), p.id(), af_packet)
            })
            .collect(),
    );
    // After the ports exist, so `dpdk-dumpcap` can capture on them.
    if let Err(e) = crate::dpdk::telemetry::pdump_init() {
        log::warn!("pdump not available (dpdk-dumpcap cannot attach): {e}");
    }
    let stages: Vec<String> = plans
        .iter()
        .map(|p| {
            let names: Vec<&str> = p.stages.iter().map(|s| s.name()).collect();
            format!("lcore {}: {}", p.lcore, names.join(", "))
        })
        .collect();
    println!(
        "colo-proxy {} running as {} ({})",
        env!("CARGO_PKG_VERSION"),
        cfg.role,
        stages.join("; ")
    );
    for p in &plans {
        if let Some(i) = &p.idle {
            println!("idle: lcore {} {} ({})", p.lcore, i.mode, i.reason);
        }
    }
    if let Some(p) = mgmt.server().unix_path() {
        println!("control socket: {}", p.display());
    }
    if let Some(a) = mgmt.metrics_addr() {
        log::info!("metrics: http://{a}/metrics");
    }
    let status_every = Duration::from_millis(cfg.mgmt.stats_interval_ms.max(100));
    let quiet =
        !std::io::IsTerminal::is_terminal(&std::io::stdout()) && cfg.mgmt.stats_interval_ms == 0;
    let o = LoopOptions {
        stop,
        run_for: None,
        status_every: (!quiet).then_some(status_every),
        before_stop: None,
    };
    let (out, failures) = manage::serve(plans, idle, &control, mgmt, o)?;
    let leftover: usize = ports.iter_mut().map(|(_, p)| p.drain_rx()).sum();
    let totals = out.totals;
    println!("\n== colo-proxy final report ==");
    for (name, v) in totals.nonzero() {
        println!("{name:<24} {v}");
    }
    print!("{}", crate::mgmt::status::final_report(&out.mgmt));
    println!(
        "compare hold             {}",
        percentiles_us(&hold.snapshot())
    );
    print!(
        "{}",
        manage::report_lines(&totals, &out.peak_lag, &control.port_drops())
    );
    print!("{}", control.idle_report());
    for s in control.link_sockets() {
        println!("{}", s.line());
    }
    let acc = totals.accounting();
    println!(
        "accounting               {acc}{}",
        lost_note(&acc, &failures)
    );
    println!("frames left in rx queues {leftover} (freed)");
    for f in &failures {
        println!("lcore failure: {f}");
    }
    if !failures.is_empty() {
        eprintln!("error: the pipeline stopped because an lcore failed (see the report)");
    }
    drop(ports);
    drop(pool);
    drop(eal);
    Ok(failures.is_empty() && acc.balanced() && out.stopped_cleanly)
}

/// After an lcore failure the accounting cannot balance: what the failed lcore held, what was
/// in its burst and what was queued to it were freed without a count. Say so on the line.
pub fn lost_note(acc: &super::counters::Accounting, failures: &[String]) -> String {
    if failures.is_empty() || acc.balanced() {
        return String::new();
    }
    format!(
        " ({} frames freed uncounted with the failed lcore: held, in flight or queued to it; \
         none transmitted)",
        acc.entered.saturating_sub(acc.terminal)
    )
}
