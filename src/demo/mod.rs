//! `colo-proxy demo`: a complete primary and secondary COLO proxy in one process on virtual
//! devices, with a built-in client and simulated PVM/SVM guests, and a simulated COLO frame
//! that checkpoints (copies the PVM's state into the SVM) whenever the proxy asks for it.
//!
//! Wiring (each `⇄` is a pair of in-memory ring ports, a virtual cable):
//!
//! ```text
//! client-sim ⇄ [nic] mirror ──► [pvm] ⇄ PVM-sim ──► [pvm] redirector ─► compare ─► [nic] ⇄ client-sim
//!                      └─► [link-p] ⇄ [link-s] rewriter ─► [svm] ⇄ SVM-sim ─► [svm] rewriter ─► [link-s] ⇄ [link-p] redirector
//! ```
//!
//! Lcores (2 cores): lcore 1 runs every proxy stage, lcore 2 (sharing core 0 with the main
//! lcore) runs the simulators, and the main lcore runs management.

pub mod frame;
pub mod sim;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::compare::{Comparator, CompareConfig};
use crate::dpdk::{self, Eal, Mbuf, MbufBurst, Mempool, Port, PortConfig, RxQueue};
use crate::link::encap::{EncapConfig, EncapTx};
use crate::mgmt::capture::CaptureConfig;
use crate::mgmt::{Management, MgmtConfig, MgmtStats};
use crate::rewrite::{Rewriter, RewriterConfig};

use self::frame::SimulatedFrame;
use self::sim::{Addresses, ClientConfig, ClientSim, ClientStats, FrameAlloc, VmConfig, VmSim};
use crate::cli::demo::DemoArgs;
use crate::pipeline::backpressure::BacklogBoard;
use crate::pipeline::control::PipelineControl;
use crate::pipeline::counters::{Counter, Snapshot};
use crate::pipeline::idle::IdleInputs;
use crate::pipeline::io::{RingIn, RingOut, TxBuf, BURST};
use crate::pipeline::latency::{percentiles_us, LatencyRecorder, SharedHistogram};
use crate::pipeline::lcore::{Command, IdlePolicy, LoopCtx, Phase, Stage};
use crate::pipeline::linkio::{LinkRx, LinkTx, SeqReporter};
use crate::pipeline::manage::{self, LoopOptions};
use crate::pipeline::runtime::LcorePlan;
use crate::pipeline::stages::{
    CompareStage, ForwardStage, MirrorStage, RedirectorStage, RewriterStage,
};
use crate::pipeline::topology::{STREAM_MIRROR, STREAM_SECONDARY};

/// The link's outer EtherType in the demo (the config's default).
const LINK_ETHERTYPE: u16 = crate::config::DEFAULT_ETHER_TYPE;

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
    rx: RxQueue,
    tx: TxBuf,
    sim: ClientSim,
    pool: Mempool,
    burst: MbufBurst<BURST>,
    generating: bool,
    report: Arc<Mutex<SimReport>>,
    last_publish: u64,
}

impl Stage for ClientStage {
    fn name(&self) -> &str {
        "client-sim"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        let c = cx.counters;
        let n = self.rx.rx_burst(&mut self.burst);
        c.add(Counter::Rx, n as u64);
        let mut alloc = PoolAlloc(&self.pool);
        let tx = &mut self.tx;
        let mut out = |f: Mbuf| {
            c.inc(Counter::Generated);
            tx.push(f, c);
        };
        for m in self.burst.drain() {
            self.sim.on_rx(&m, cx.now_ns, &mut alloc, &mut out);
            c.inc(Counter::Consumed);
        }
        let mut work = n;
        if self.generating && cx.phase == Phase::Run {
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

    fn command(&mut self, cmd: &Command, _cx: &LoopCtx) {
        if let Command::Quiesce = cmd {
            self.generating = false;
        }
    }

    fn flush(&mut self, cx: &LoopCtx) {
        self.tx.flush(cx.counters);
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
    pvm: (RxQueue, TxBuf),
    svm: (RxQueue, TxBuf),
    pvm_sim: VmSim,
    svm_sim: VmSim,
    pool: Mempool,
    burst: MbufBurst<BURST>,
    active: bool,
}

fn serve(
    sim: &mut VmSim,
    port: &mut (RxQueue, TxBuf),
    burst: &mut MbufBurst<BURST>,
    pool: &Mempool,
    cx: &LoopCtx,
) -> usize {
    let c = cx.counters;
    let n = port.0.rx_burst(burst);
    c.add(Counter::Rx, n as u64);
    let mut alloc = PoolAlloc(pool);
    let tx = &mut port.1;
    let mut out = |f: Mbuf| {
        c.inc(Counter::Generated);
        tx.push(f, c);
    };
    for m in burst.drain() {
        sim.on_rx(&m, cx.now_ns, &mut alloc, &mut out);
        c.inc(Counter::Consumed);
    }
    port.1.flush(c);
    n
}

impl Stage for VmStage {
    fn name(&self) -> &str {
        "vm-sims"
    }

    fn poll(&mut self, cx: &LoopCtx) -> usize {
        serve(
            &mut self.pvm_sim,
            &mut self.pvm,
            &mut self.burst,
            &self.pool,
            cx,
        ) + serve(
            &mut self.svm_sim,
            &mut self.svm,
            &mut self.burst,
            &self.pool,
            cx,
        )
    }

    fn housekeeping(&mut self, cx: &LoopCtx) {
        if !self.active {
            return;
        }
        let c = cx.counters;
        for (sim, port) in [
            (&mut self.pvm_sim, &mut self.pvm),
            (&mut self.svm_sim, &mut self.svm),
        ] {
            let mut alloc = PoolAlloc(&self.pool);
            let tx = &mut port.1;
            let mut out = |f: Mbuf| {
                c.inc(Counter::Generated);
                tx.push(f, c);
            };
            sim.tick(cx.now_ns, &mut alloc, &mut out);
            port.1.flush(c);
        }
    }

    fn command(&mut self, cmd: &Command, _cx: &LoopCtx) {
        match cmd {
            // The COLO checkpoint: the SVM's state becomes a copy of the PVM's.
            Command::CheckpointDone => self.svm_sim.restore_from(&self.pvm_sim),
            Command::Quiesce => self.active = false,
            _ => {}
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

struct DemoPorts {
    ports: Vec<Port>,
}

impl DemoPorts {
    fn wire(
        &mut self,
        a: &str,
        b: &str,
        pool: &Mempool,
    ) -> Result<(usize, usize), dpdk::DpdkError> {
        let (pa, pb) = Port::ring_pair(a, b)?;
        let cfg = PortConfig {
            rx_desc: 1024,
            tx_desc: 1024,
            ..PortConfig::default()
        };
        let mut ia = Port::open(pa, &cfg, pool)?;
        let mut ib = Port::open(pb, &cfg, pool)?;
        ia.start()?;
        ib.start()?;
        self.ports.push(ia);
        self.ports.push(ib);
        Ok((self.ports.len() - 2, self.ports.len() - 1))
    }

    fn queues(&mut self, i: usize) -> Result<(RxQueue, TxBuf), dpdk::DpdkError> {
        let p = &mut self.ports[i];
        Ok((p.rx_queue(0)?, TxBuf::new(p.tx_queue(0)?)))
    }
}

/// `colo-proxy demo`.
pub fn demo(args: &DemoArgs) -> Result<DemoSummary, String> {
    let mut eal_args = default_eal_args();
    eal_args.extend(args.eal.iter().cloned());
    let eal = Eal::init(&eal_args).map_err(|e| format!("EAL: {e}"))?;
    let pool = Mempool::new("demo_pool", 32767).map_err(|e| e.to_string())?;
    let e = |e: dpdk::DpdkError| e.to_string();
    let mut ports = DemoPorts { ports: Vec::new() };
    let (client_p, nic_p) = ports.wire("client", "nic", &pool).map_err(e)?;
    let (pvm_p, pvm_vm_p) = ports.wire("pvm", "pvm_guest", &pool).map_err(e)?;
    let (link_p, link_s) = ports.wire("link_p", "link_s", &pool).map_err(e)?;
    let (svm_p, svm_vm_p) = ports.wire("svm", "svm_guest", &pool).map_err(e)?;

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

    let shards = args.shards.max(1);
    let (nic_rx, nic_tx) = ports.queues(nic_p).map_err(e)?;
    let (pvm_rx, pvm_tx) = ports.queues(pvm_p).map_err(e)?;
    let (linkp_rx, linkp_tx) = ports.queues(link_p).map_err(e)?;
    let (links_rx, links_tx) = ports.queues(link_s).map_err(e)?;
    let (svm_rx, svm_tx) = ports.queues(svm_p).map_err(e)?;

    let hold = SharedHistogram::default();
    mgmt.add_histogram(hold.metrics_source());
    let stages: Vec<Box<dyn Stage>> = if args.baseline_forward {
        // Benchmark baseline: the same wires and lcores, plain forwarding instead of the proxy.
        drop((linkp_rx, linkp_tx, links_rx, links_tx, svm_rx, svm_tx));
        vec![Box::new(ForwardStage::new(
            vec![(nic_rx.into(), pvm_tx), (pvm_rx.into(), nic_tx)],
            IdleInputs::unknown(),
        ))]
    } else {
        // One ring per producer→consumer pair: redirector → shard k, one per side.
        let mut to_p = Vec::new();
        let mut to_s = Vec::new();
        let mut proxy: Vec<Box<dyn Stage>> = Vec::new();
        let mut nic_tx = Some(nic_tx);
        // Lag visibility only: the simulated VMs' ring ports would drop under back-pressure.
        let board = BacklogBoard::new(shards);
        control.set_backlog(board.clone());
        for k in 0..shards {
            let (pp, pc) =
                dpdk::ring::<Mbuf>(&format!("to_cmp_p{k}"), 4096, Default::default()).map_err(e)?;
            let (sp, sc) =
                dpdk::ring::<Mbuf>(&format!("to_cmp_s{k}"), 4096, Default::default()).map_err(e)?;
            to_p.push(RingOut::new(pp));
            to_s.push(RingOut::new(sp));
            // A ring port has one tx queue; more shards need a multi-queue nic (see `run`).
            let Some(tx) = nic_tx.take() else {
                return Err(
                    "demo: more than one shard needs a multi-queue nic port; use `run`".into(),
                );
            };
            proxy.push(Box::new(
                CompareStage::new(
                    k,
                    RingIn::new(pc),
                    RingIn::new(sc),
                    tx,
                    Comparator::new(CompareConfig::default()),
                    mgmt.sender(),
                    LatencyRecorder::new(hold.clone()),
                )
                .with_capture(mgmt.capture_on())
                .with_backlog(board.clone()),
            ));
        }
        // The link carries the encapsulation (stream id + sequence numbers), as on a real NIC.
        let mac = |i: usize| ports.ports[i].mac().unwrap_or([0x02, 0, 0, 0, 0, i as u8]);
        let (mac_p, mac_s) = (mac(link_p), mac(link_s));
        let encap_tx = |tx: TxBuf, src, dst, stream| LinkTx::EncapPort {
            tx,
            encap: EncapTx::new(
                EncapConfig {
                    dst,
                    src,
                    ethertype: LINK_ETHERTYPE,
                },
                stream,
            ),
            pool: pool.clone(),
            hb: Default::default(),
        };
        let encap_rx = |rx: RxQueue, name| {
            LinkRx::encap_port(
                rx,
                LINK_ETHERTYPE,
                Some(SeqReporter::new(mgmt.sender(), name)),
            )
        };
        let mirror = MirrorStage::new(
            nic_rx,
            pvm_tx,
            encap_tx(linkp_tx, mac_p, mac_s, STREAM_MIRROR),
        );
        let redirector =
            RedirectorStage::new(pvm_rx, encap_rx(linkp_rx, "secondary-out"), to_p, to_s);
        let rewriter = RewriterStage::new(
            encap_rx(links_rx, "mirror"),
            svm_tx,
            svm_rx,
            encap_tx(links_tx, mac_s, mac_p, STREAM_SECONDARY),
            None,
            Rewriter::new(RewriterConfig::default()),
            pool.clone(),
        );
        let mut stages: Vec<Box<dyn Stage>> = vec![Box::new(mirror), Box::new(redirector)];
        stages.append(&mut proxy);
        stages.push(Box::new(rewriter));
        stages
    };

    let addrs = Addresses::default();
    let sims = Arc::new(Mutex::new(SimReport::default()));
    let (c_rx, c_tx) = ports.queues(client_p).map_err(e)?;
    let client = ClientStage {
        rx: c_rx,
        tx: c_tx,
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
        generating: true,
        report: sims.clone(),
        last_publish: 0,
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
        pvm: ports.queues(pvm_vm_p).map_err(e)?,
        svm: ports.queues(svm_vm_p).map_err(e)?,
        pvm_sim,
        svm_sim,
        pool: pool.clone(),
        burst: MbufBurst::new(),
        active: true,
    };

    let workers: Vec<u32> = dpdk::worker_lcores().collect();
    let (proxy_lcore, sim_lcore) = match workers.as_slice() {
        [a, b, ..] => (*a, *b),
        [a] => (*a, dpdk::main_lcore()),
        [] => {
            return Err("demo needs at least one worker lcore (e.g. --lcores 0@0,1@1,2@0)".into())
        }
    };
    let plans = vec![
        LcorePlan::new(proxy_lcore, stages),
        LcorePlan::new(sim_lcore, vec![Box::new(client), Box::new(vms)]),
    ];
    let o = LoopOptions {
        stop,
        run_for: crate::cli::demo::run_for(args.seconds)?,
        status_every: (!args.quiet).then_some(Duration::from_secs(1)),
        quiesce_sources: true,
    };
    control.set_ports(
        ports
            .ports
            .iter()
            .map(|p| (p.name(), p.id(), false))
            .collect(),
    );
    let started = Instant::now();
    let (out, failures) = manage::serve(plans, IdlePolicy::default(), &control, mgmt, o)?;
    let seconds = started.elapsed().as_secs_f64();
    let leftover: usize = ports.ports.iter_mut().map(|p| p.drain_rx()).sum();
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
