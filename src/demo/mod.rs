//! `colo-proxy demo`: a complete primary and secondary COLO proxy in one process on virtual
//! devices, with a built-in client and simulated PVM/SVM guests, and a simulated COLO frame
//! that checkpoints (copies the PVM's state into the SVM) whenever the proxy asks for it.
//!
//! The proxies are the production ones: the demo writes a primary and a secondary config
//! whose ports are in-process wires (`[ports.X] wire = "..."`, pairs of in-memory rings) and
//! builds both with [`topology::build_in`], as `colo-proxy run` builds one. The simulators
//! hold the wires' other ends:
//!
//! ```text
//! client-sim ⇄ wire client ⇄ [nic] mirror ──► [pvm] ⇄ wire pvm ⇄ PVM-sim ──► [pvm] redirector ─► compare ─► [nic]
//!                                   └─► [link] ⇄ wire link ⇄ [link] rewriter ⇄ [svm] ⇄ wire svm ⇄ SVM-sim
//! ```
//!
//! Lcores (2 cores): the first worker runs every proxy stage of both pipelines, the second
//! (sharing core 0 with the main lcore) runs the simulators, and the main lcore runs
//! management. The simulators stand outside the proxies, like real guests and clients: they
//! count in their own statistics, not in the pipeline's accounting.

pub mod frame;
pub mod sim;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::cli::demo::DemoArgs;
use crate::config::Config;
use crate::dpdk::{self, Eal, Mbuf, MbufBurst, Mempool, Port, PortConfig};
use crate::mgmt::capture::CaptureConfig;
use crate::mgmt::{Management, MgmtConfig, MgmtStats};
use crate::pipeline::control::PipelineControl;
use crate::pipeline::counters::{Counter, LcoreCounters, Snapshot};
use crate::pipeline::idle::IdleInputs;
use crate::pipeline::io::{RxSet, TxBuf, BURST};
use crate::pipeline::latency::percentiles_us;
use crate::pipeline::lcore::{Command, LoopCtx, Phase, Stage};
use crate::pipeline::manage::{self, LoopOptions};
use crate::pipeline::runtime::LcorePlan;
use crate::pipeline::stages::ForwardStage;
use crate::pipeline::topology::{self, InProcess, Topology};

use self::frame::SimulatedFrame;
use self::sim::{Addresses, ClientConfig, ClientSim, ClientStats, FrameAlloc, VmConfig, VmSim};

/// Allocates demo frames from the mempool.
struct PoolAlloc<'a>(&'a Mempool);

impl FrameAlloc<Mbuf> for PoolAlloc<'_> {
    fn alloc(&mut self) -> Option<Mbuf> {
        self.0.alloc()
    }
}

/// What the simulators publish for status lines and the final report.
#[derive(Default, Clone)]
pub struct SimReport {
    /// The client's counters.
    pub client: Option<ClientStats>,
}

/// The client on the outside network.
struct ClientStage {
    rx: RxSet,
    tx: TxBuf,
    sim: ClientSim,
    pool: Mempool,
    burst: MbufBurst<BURST>,
    /// Cleared when the run ends (the traffic stops before the pipeline does).
    generating: Arc<AtomicBool>,
    report: Arc<Mutex<SimReport>>,
    last_publish: u64,
    /// Outside the proxy: its sends and drops are not the pipeline's.
    counters: LcoreCounters,
}

impl Stage for ClientStage {
    fn name(&self) -> &str {
        "client-sim"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let c = &self.counters;
        let n = self.rx.rx_burst(&mut self.burst);
        let mut alloc = PoolAlloc(&self.pool);
        let tx = &mut self.tx;
        let mut out = |f: Mbuf| tx.push(f, c);
        for m in self.burst.drain() {
            self.sim.on_rx(&m, cx.now_ns, &mut alloc, &mut out);
        }
        let mut work = n;
        if self.generating.load(Ordering::Relaxed) && cx.phase == Phase::Run {
            work += self.sim.generate(cx.now_ns, &mut alloc, BURST, &mut out);
        }
        self.tx.flush(c);
        work
    }

    fn housekeeping(&mut self, cx: &LoopCtx) {
        if cx.now_ns.saturating_sub(self.last_publish) >= 100_000_000 {
            self.publish();
            self.last_publish = cx.now_ns;
        }
    }

    fn flush(&mut self, _cx: &LoopCtx) {
        self.tx.flush(&self.counters);
        self.publish();
    }
}

impl ClientStage {
    fn publish(&self) {
        if let Ok(mut r) = self.report.lock() {
            r.client = Some(self.sim.stats().clone());
        }
    }
}

/// The two guests: the PVM and the SVM, each behind its own port.
struct VmStage {
    pvm: (RxSet, TxBuf),
    svm: (RxSet, TxBuf),
    pvm_sim: VmSim,
    svm_sim: VmSim,
    pool: Mempool,
    burst: MbufBurst<BURST>,
    active: Arc<AtomicBool>,
    counters: LcoreCounters,
}

fn serve(
    sim: &mut VmSim,
    port: &mut (RxSet, TxBuf),
    burst: &mut MbufBurst<BURST>,
    pool: &Mempool,
    c: &LcoreCounters,
    now_ns: u64,
) -> usize {
    let n = port.0.rx_burst(burst);
    let mut alloc = PoolAlloc(pool);
    let tx = &mut port.1;
    let mut out = |f: Mbuf| tx.push(f, c);
    for m in burst.drain() {
        sim.on_rx(&m, now_ns, &mut alloc, &mut out);
    }
    port.1.flush(c);
    n
}

impl Stage for VmStage {
    fn name(&self) -> &str {
        "vm-sims"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let (c, now) = (&self.counters, cx.now_ns);
        serve(
            &mut self.pvm_sim,
            &mut self.pvm,
            &mut self.burst,
            &self.pool,
            c,
            now,
        ) + serve(
            &mut self.svm_sim,
            &mut self.svm,
            &mut self.burst,
            &self.pool,
            c,
            now,
        )
    }

    fn housekeeping(&mut self, cx: &LoopCtx) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let c = &self.counters;
        for (sim, port) in [
            (&mut self.pvm_sim, &mut self.pvm),
            (&mut self.svm_sim, &mut self.svm),
        ] {
            let mut alloc = PoolAlloc(&self.pool);
            let tx = &mut port.1;
            let mut out = |f: Mbuf| tx.push(f, c);
            sim.tick(cx.now_ns, &mut alloc, &mut out);
            port.1.flush(c);
        }
    }

    fn command(&mut self, cmd: &Command, _cx: &LoopCtx) {
        // The COLO checkpoint: the SVM's state becomes a copy of the PVM's.
        if let Command::CheckpointDone = cmd {
            self.svm_sim.restore_from(&self.pvm_sim);
        }
    }
}

/// Default EAL arguments for the demo: three lcores on two cores, no PCI, and hugepages only
/// when some are free.
pub fn default_eal_args() -> Vec<String> {
    let mut a: Vec<String> = [
        "--lcores",
        "0@0,1@1,2@0",
        "--no-pci",
        "--log-level",
        "lib.eal:error",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.extend(dpdk::default_mem_args());
    a
}

/// The two configs the demo runs: every port an in-process wire, every proxy stage on
/// `lcore`, `shards` compare shards; the rest is the production defaults, except that the
/// PVM port is not paused under back-pressure (the simulated guest does not retransmit what
/// its wire refuses; the lag is still measured and shown).
pub fn configs(lcore: u32, shards: usize) -> Result<(Config, Config), String> {
    // Both: EAL as the demo started it, the link a wire between the two, lcore 0 main.
    let config = |role: &str, ports: &str, rest: &str| {
        format!(
            "role = \"{role}\"\n[eal]\nargs = [\"--lcores\", \"0@0,{lcore}@1\"]\n{ports}\
             [ports.link]\nwire = \"link\"\n[link]\nkind = \"port\"\n[lcores]\nmain = 0\n{rest}"
        )
    };
    let compare = vec![lcore.to_string(); shards].join(", ");
    let primary = config(
        "primary",
        &format!(
            "[ports.nic]\nwire = \"client\"\ntx_queues = {shards}\n[ports.pvm]\nwire = \"pvm\"\n"
        ),
        &format!(
            "mirror = {lcore}\nredirector = {lcore}\ncompare = [{compare}]\n\
             [compare]\nshards = {shards}\n[backpressure]\nenabled = false\n"
        ),
    );
    let secondary = config(
        "secondary",
        "[ports.svm]\nwire = \"svm\"\n",
        &format!("rewriter = {lcore}\n"),
    );
    let load = |what: &str, text: &str| {
        Config::from_toml_str(text)
            .map_err(|e| format!("demo {what} config: {}", e.messages().join("; ")))
    };
    Ok((load("primary", &primary)?, load("secondary", &secondary)?))
}

/// Open a wire's far end (a simulator's side) with `queues` rx queues.
fn far_end(
    shared: &mut InProcess,
    wire: &str,
    queues: u16,
    pool: &Mempool,
) -> Result<(Port, RxSet, TxBuf), String> {
    let id = shared
        .take_far_end(wire)
        .ok_or_else(|| format!("demo: wire {wire} has no free end"))?;
    open_end(id, queues, pool).map_err(|e| format!("demo: wire {wire}: {e}"))
}

fn open_end(id: u16, queues: u16, pool: &Mempool) -> Result<(Port, RxSet, TxBuf), dpdk::DpdkError> {
    let cfg = PortConfig {
        rx_queues: queues,
        rx_desc: 1024,
        tx_desc: 1024,
        ..PortConfig::default()
    };
    let mut p = Port::open(id, &cfg, pool)?;
    p.start()?;
    let rx = (0..queues)
        .map(|q| p.rx_queue(q))
        .collect::<Result<Vec<_>, _>>()?;
    let tx = TxBuf::new(p.tx_queue(0)?);
    Ok((p, RxSet::new(rx), tx))
}

/// Merge plans that name the same lcore (the two pipelines share it).
fn merge_plans(plans: impl IntoIterator<Item = LcorePlan>) -> Vec<LcorePlan> {
    let mut out: Vec<LcorePlan> = Vec::new();
    for p in plans {
        match out.iter_mut().find(|o| o.lcore == p.lcore) {
            Some(o) => o.stages.extend(p.stages),
            None => out.push(p),
        }
    }
    out
}

/// `colo-proxy demo`.
pub fn demo(args: &DemoArgs) -> Result<DemoSummary, String> {
    let mut eal_args = default_eal_args();
    eal_args.extend(args.eal.iter().cloned());
    let eal = Eal::init(&eal_args).map_err(|e| format!("EAL: {e}"))?;
    let pool = Mempool::new("demo_pool", 32767).map_err(|e| e.to_string())?;

    let workers: Vec<u32> = dpdk::worker_lcores().collect();
    let (proxy_lcore, sim_lcore) = match workers.as_slice() {
        [a, b, ..] => (*a, *b),
        [a] => (*a, dpdk::main_lcore()),
        [] => {
            return Err("demo needs at least one worker lcore (e.g. --lcores 0@0,1@1,2@0)".into())
        }
    };
    let shards = args.shards.max(1);

    // Management first: the compare shards report to it.
    let stop = Arc::new(AtomicBool::new(false));
    // SIGINT/SIGTERM end the run in order, with the report (the only way out of `--seconds inf`
    // besides `ctl shutdown`).
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, stop.clone())
            .map_err(|e| format!("signal handler: {e}"))?;
    }
    let control = Arc::new(PipelineControl::new(Vec::new(), stop.clone()));
    let mut mcfg = MgmtConfig::default();
    mcfg.server.unix_path = args.control_socket.clone();
    mcfg.metrics = args.metrics_listen;
    mcfg.role = "demo".into();
    if let Some(dir) = &args.capture_dir {
        mcfg.capture = Some(CaptureConfig {
            dir: dir.clone(),
            max_file_bytes: 16 << 20,
            max_files: 4,
            context_packets: 8,
        });
        mcfg.capture_on_start = true;
    }
    let frame = SimulatedFrame::new(Duration::from_millis(args.checkpoint_ms));
    let mut mgmt = Management::with_sinks(mcfg, control.clone(), vec![Box::new(frame)])
        .map_err(|e| format!("management: {e}"))?;

    let mut shared = InProcess::default();
    let mut ports: Vec<(String, Port)> = Vec::new();
    let (proxy_plans, hold, idle) = if args.baseline_forward {
        // Benchmark baseline: the same wires and lcores, plain forwarding instead of the proxy.
        let e = |e: dpdk::DpdkError| e.to_string();
        let (nic, pvm) = (shared.wire("client", 1)?, shared.wire("pvm", 1)?);
        let (nic_near, nic_rx, nic_tx) = open_end(nic, 1, &pool).map_err(e)?;
        let (pvm_near, pvm_rx, pvm_tx) = open_end(pvm, 1, &pool).map_err(e)?;
        // No secondary: the SVM simulator's wire ends in a port nobody polls.
        shared.wire("svm", 1)?;
        ports.push(("nic".into(), nic_near));
        ports.push(("pvm".into(), pvm_near));
        let fwd = ForwardStage::new(
            vec![(nic_rx, pvm_tx), (pvm_rx, nic_tx)],
            IdleInputs::unknown(),
        );
        let hold = crate::pipeline::latency::SharedHistogram::default();
        (
            vec![LcorePlan::new(proxy_lcore, vec![Box::new(fwd)])],
            hold,
            Default::default(),
        )
    } else {
        let (pcfg, scfg) = configs(proxy_lcore, shards)?;
        let capture = mgmt.capture_on();
        let build = |cfg: &Config, shared: &mut InProcess| {
            topology::build_in(cfg, &pool, &mgmt.sender(), capture, shared)
        };
        let p: Topology = build(&pcfg, &mut shared)?;
        let s: Topology = build(&scfg, &mut shared)?;
        mgmt.add_histogram(p.hold.metrics_source());
        if let Some(b) = p.backlog {
            control.set_backlog(b);
        }
        ports.extend(
            p.ports
                .into_iter()
                .map(|(n, port)| (format!("primary.{n}"), port)),
        );
        ports.extend(
            s.ports
                .into_iter()
                .map(|(n, port)| (format!("secondary.{n}"), port)),
        );
        (
            merge_plans(p.plans.into_iter().chain(s.plans)),
            p.hold,
            p.idle,
        )
    };

    let (client_end, client_rx, client_tx) = far_end(&mut shared, "client", shards as u16, &pool)?;
    let (pvm_end, pvm_rx, pvm_tx) = far_end(&mut shared, "pvm", 1, &pool)?;
    let svm = far_end(&mut shared, "svm", 1, &pool)?;
    if let Some(w) = shared.unclaimed().first() {
        return Err(format!("demo: wire {w} has an end nobody uses"));
    }
    let (svm_end, svm_rx, svm_tx) = svm;
    let mut sim_ports = vec![client_end, pvm_end, svm_end];

    let addrs = Addresses::default();
    let sims = Arc::new(Mutex::new(SimReport::default()));
    let generating = Arc::new(AtomicBool::new(true));
    let client = ClientStage {
        rx: client_rx,
        tx: client_tx,
        sim: ClientSim::new(
            addrs,
            // A mix: mostly TCP transactions, some UDP and ICMP, a quarter over IPv6.
            ClientConfig {
                concurrency: args.concurrency,
                seed: args.seed,
                udp_every: 5,
                icmp_every: 11,
                ipv6_every: 4,
                ..ClientConfig::default()
            },
        ),
        pool: pool.clone(),
        burst: MbufBurst::new(),
        generating: generating.clone(),
        report: sims.clone(),
        last_publish: 0,
        counters: LcoreCounters::default(),
    };
    // Same service on both guests, different TCP ISNs (like two real kernels).
    let pvm_sim = VmSim::new(
        addrs,
        VmConfig {
            isn_seed: 0x5eed_0001,
            seed: args.seed,
            divergence_rate: 0.0,
            ..VmConfig::default()
        },
    );
    let svm_sim = VmSim::new(
        addrs,
        VmConfig {
            isn_seed: 0x5eed_0002,
            seed: args.seed ^ 1,
            divergence_rate: args.divergence_rate,
            ..VmConfig::default()
        },
    );
    let vms = VmStage {
        pvm: (pvm_rx, pvm_tx),
        svm: (svm_rx, svm_tx),
        pvm_sim,
        svm_sim,
        pool: pool.clone(),
        burst: MbufBurst::new(),
        active: generating.clone(),
        counters: LcoreCounters::default(),
    };

    let mut plans = proxy_plans;
    plans.push(LcorePlan::new(
        sim_lcore,
        vec![Box::new(client), Box::new(vms)],
    ));
    let plans = merge_plans(plans);
    let o = LoopOptions {
        stop,
        run_for: crate::cli::demo::run_for(args.seconds)?,
        status_every: (!args.quiet).then_some(Duration::from_secs(1)),
        before_stop: Some(Box::new(move || generating.store(false, Ordering::Relaxed))),
    };
    control.set_ports(
        ports
            .iter()
            .map(|(n, p)| (n.clone(), p.id(), false))
            .collect(),
    );
    let started = Instant::now();
    let (out, failures) = manage::serve(plans, idle, &control, mgmt, o)?;
    let seconds = started.elapsed().as_secs_f64();
    let leftover: usize = ports.iter_mut().map(|(_, p)| p.drain_rx()).sum::<usize>()
        + sim_ports.iter_mut().map(|p| p.drain_rx()).sum::<usize>();
    let client = sims.lock().ok().and_then(|r| r.client.clone());
    let summary = DemoSummary {
        totals: out.totals,
        mgmt: out.mgmt,
        stopped_cleanly: out.stopped_cleanly,
        hold: percentiles_us(&hold.snapshot()),
        client_latency: client
            .as_ref()
            .map(|c| percentiles_us(&c.lat_tcp))
            .unwrap_or_else(|| "n/a".into()),
        client,
        failures,
        leftover_in_wires: leftover,
        mempool_in_use: pool.in_use(),
        seconds,
    };
    drop(sim_ports);
    drop(ports);
    drop(pool);
    drop(eal);
    Ok(summary)
}

/// The demo's outcome.
#[derive(Clone)]
pub struct DemoSummary {
    /// Counter totals after the stop.
    pub totals: Snapshot,
    /// Management: divergences by reason, checkpoint requests and completions.
    pub mgmt: MgmtStats,
    /// Every stop phase was acknowledged.
    pub stopped_cleanly: bool,
    /// Compare hold time of released primary frames.
    pub hold: String,
    /// Client view.
    pub client: Option<ClientStats>,
    /// Client transaction latency.
    pub client_latency: String,
    /// Lcore failures.
    pub failures: Vec<String>,
    /// Frames found in the virtual cables after the stop (freed).
    pub leftover_in_wires: usize,
    /// Mbufs still in use after everything stopped (must be 0).
    pub mempool_in_use: u32,
    /// Seconds run.
    pub seconds: f64,
}

/// The final report as JSON: every counter, management's statistics, the client's view and the
/// invariants.
pub fn report_json(s: &DemoSummary) -> serde_json::Value {
    let acc = s.totals.accounting();
    let client = s.client.as_ref().map(|c| {
        serde_json::json!({
            "tcp_completed": c.tcp_completed,
            "tcp_failed": c.tcp_failed,
            "responses_verified": c.responses_verified,
            "responses_wrong": c.responses_wrong,
            "udp_sent": c.udp_sent,
            "udp_answered": c.udp_answered,
            "icmp_sent": c.icmp_sent,
            "icmp_answered": c.icmp_answered,
            "tcp_latency_us": {
                "p50": c.lat_tcp.value_at_quantile(0.5) as f64 / 1e3,
                "p99": c.lat_tcp.value_at_quantile(0.99) as f64 / 1e3,
            },
        })
    });
    serde_json::json!({
        "seconds": s.seconds,
        "counters": s.totals.to_json(),
        "mgmt": serde_json::to_value(&s.mgmt).unwrap_or_default(),
        "client": client,
        "accounting": { "entered": acc.entered, "terminal": acc.terminal, "balanced": acc.balanced() },
        "mempool_in_use": s.mempool_in_use,
        "leftover_in_wires": s.leftover_in_wires,
        "stopped_cleanly": s.stopped_cleanly,
        "failures": s.failures,
    })
}

/// Print the final report; returns false when an invariant failed.
pub fn report(s: &DemoSummary) -> bool {
    let t = &s.totals;
    let acc = t.accounting();
    let n = |c: Counter| t.get(c);
    println!("\n== colo-proxy demo: final report ({:.1} s) ==", s.seconds);
    println!("packets mirrored           {}", n(Counter::Mirrored));
    println!("primary compared           {}", n(Counter::ComparedPrimary));
    println!(
        "secondary compared         {}",
        n(Counter::ComparedSecondary)
    );
    println!("released after match       {}", n(Counter::ReleasedMatched));
    println!(
        "released at checkpoint     {}",
        n(Counter::ReleasedCheckpoint)
    );
    println!(
        "released uncompared        {}",
        n(Counter::ReleasedUncompared)
    );
    println!("released by bypass         {}", n(Counter::ReleasedBypass));
    println!(
        "secondary used + freed     {}",
        n(Counter::SecondaryMatched)
    );
    println!(
        "secondary flushed/dropped  {} / {}",
        n(Counter::SecondaryFlushed),
        n(Counter::SecondaryDropped)
    );
    println!("rewritten (secondary)      {}", n(Counter::Rewritten));
    print!("{}", crate::mgmt::status::final_report(&s.mgmt));
    println!("compare hold (added lat.)  {}", s.hold);
    if let Some(c) = &s.client {
        println!(
            "client tcp transactions    {} completed, {} failed, {} responses verified, {} wrong",
            c.tcp_completed, c.tcp_failed, c.responses_verified, c.responses_wrong
        );
        println!(
            "client udp / icmp          {}/{} answered, {}/{} answered",
            c.udp_answered, c.udp_sent, c.icmp_answered, c.icmp_sent
        );
        println!("client latency (tcp txn)   {}", s.client_latency);
        println!("client latency (udp)       {}", percentiles_us(&c.lat_udp));
        println!("client latency (icmp)      {}", percentiles_us(&c.lat_icmp));
    }
    println!("drops                      {}", t.drops_list());
    println!(
        "accounting                 {acc}{}",
        crate::pipeline::run::lost_note(&acc, &s.failures)
    );
    println!(
        "mbufs in use after stop    {} (frames left in virtual cables: {})",
        s.mempool_in_use, s.leftover_in_wires
    );
    for f in &s.failures {
        println!("lcore failure: {f}");
    }
    let wrong = s.client.as_ref().map(|c| c.responses_wrong).unwrap_or(0);
    acc.balanced()
        && s.mempool_in_use == 0
        && s.failures.is_empty()
        && wrong == 0
        && s.stopped_cleanly
}
