//! Building a primary or secondary pipeline from a validated [`Config`]: ports and their
//! queues, one ring per producer→consumer pair, stages placed on the configured lcores.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::compare::{self, Comparator};
use crate::config::{Config, Endpoint, LinkSpec, PortDevice, PortSpec, Role, SockAddr, SocketMode};
use crate::dpdk::{self, Mbuf, Mempool, Port, PortConfig, RingFlags};
use crate::link::encap::{EncapConfig, EncapTx, OVERHEAD};
use crate::link::framing::FrameConfig;
use crate::link::socket::{
    FramedSocket, LinkAddr, NamedPeerCounters, Role as SockRole, SocketConfig,
};
use crate::rewrite::{self, Rewriter};

use super::backpressure::{BacklogBoard, PvmGate, Watermarks};
use super::idle::{IdleInputs, IdleMode, PortWake, Wake};
use super::io::{RingIn, RingOut, RxSet, TxBuf};
use super::latency::{LatencyRecorder, SharedHistogram};
use super::lcore::{IdlePolicy, Stage};
use super::linkio::{LinkRx, LinkTx, SeqReporter};
use super::runtime::LcorePlan;
use super::stages::{CompareStage, FailoverOpts, MirrorStage, RedirectorStage, RewriterStage};
use crate::mgmt::EventSender;

/// Mirror-stream id in the link encapsulation.
pub const STREAM_MIRROR: u8 = 0;
/// Secondary-output stream id in the link encapsulation.
pub const STREAM_SECONDARY: u8 = 1;

/// A built pipeline, ready to launch.
pub struct Topology {
    /// Stages per lcore.
    pub plans: Vec<LcorePlan>,
    /// Open, started ports (kept alive for the run; stats).
    pub ports: Vec<(String, Port)>,
    /// Compare hold time of released primaries.
    pub hold: SharedHistogram,
    /// The config's idle settings (each plan carries its own lcore's policy).
    pub idle: IdlePolicy,
    /// The compare shards' published backlogs (primary; lag reports).
    pub backlog: Option<Arc<BacklogBoard>>,
    /// Socket link: each stream's connection counters (refused peers, ...).
    pub link_sockets: Vec<NamedPeerCounters>,
}

/// What the pipelines built in one process share: the wires whose other end nobody has
/// claimed yet, and one doorbell per lcore (so the plans of two pipelines on one lcore can
/// be merged: a producer of either rings the lcore's one doorbell).
#[derive(Default)]
pub struct InProcess {
    far_ends: BTreeMap<String, u16>,
    doorbells: BTreeMap<u32, Arc<Wake>>,
}

impl InProcess {
    /// The port id of wire `name`'s end for a port with `queues` queues: the waiting far
    /// end when another pipeline created the wire, else a new wire (its far end then waits
    /// here for [`InProcess::take_far_end`] or the next pipeline).
    pub fn wire(&mut self, name: &str, queues: u16) -> Result<u16, String> {
        if let Some(id) = self.far_ends.remove(name) {
            return Ok(id);
        }
        let (near, far) = Port::ring_pair_with(&format!("{name}_a"), &format!("{name}_b"), queues)
            .map_err(|e| format!("wire {name}: {e}"))?;
        self.far_ends.insert(name.to_string(), far);
        Ok(near)
    }

    /// The unclaimed far end of wire `name` (a built-in endpoint takes it).
    pub fn take_far_end(&mut self, name: &str) -> Option<u16> {
        self.far_ends.remove(name)
    }

    /// Wires whose far end nobody took.
    pub fn unclaimed(&self) -> Vec<&str> {
        self.far_ends.keys().map(String::as_str).collect()
    }

    fn doorbell(&mut self, lcore: u32) -> Arc<Wake> {
        self.doorbells.entry(lcore).or_default().clone()
    }
}

/// The compare engine's configuration from the file's `[compare]`.
pub fn compare_config(cfg: &Config) -> compare::CompareConfig {
    let c = &cfg.compare;
    compare::CompareConfig {
        timeout_ns: c.timeout_ms * 1_000_000,
        scan_period_ns: c.scan_period_ms * 1_000_000,
        queue_size: c.queue_size as usize,
        pool_size: c.shard_packets as usize,
        table_capacity: c.table_capacity as usize,
        idle_timeout_ns: c.idle_timeout_ms * 1_000_000,
        bypass: c.bypass.clone(),
        pass_ipv6: c.ipv6 == crate::config::PassMode::Pass,
        pass_vlan: c.vlan == crate::config::PassMode::Pass,
        ..compare::CompareConfig::default()
    }
}

/// The rewriter's configuration from the file's `[rewriter]`.
pub fn rewriter_config(cfg: &Config) -> rewrite::RewriterConfig {
    rewrite::RewriterConfig {
        table_capacity: cfg.rewriter.table_capacity as usize,
        idle_timeout_ns: cfg.rewriter.idle_timeout_ms * 1_000_000,
    }
}

/// The stages' failover behaviour from the file's `[failover]`.
pub fn failover_opts(cfg: &Config, events: &EventSender) -> FailoverOpts {
    let f = &cfg.failover;
    FailoverOpts {
        announce: f.announce,
        announce_count: f.announce_count,
        announce_interval_ns: f.announce_interval_ms.saturating_mul(1_000_000),
        events: Some(events.clone()),
    }
}

fn device_name(d: &PortDevice) -> &str {
    match d {
        PortDevice::Pci(addr) => addr,
        PortDevice::Vdev(args) => args.split(',').next().unwrap_or(args),
        PortDevice::Wire(name) => name,
    }
}

/// `struct rte_mbuf` (two cache lines).
const MBUF_HEADER: usize = 128;
/// Per-object mempool header and trailer, rounded to a cache line (estimate).
const MEMPOOL_OBJ_OVERHEAD: usize = 64;
/// af_packet's default frame size (devarg `framesz`).
const AF_PACKET_FRAMESZ: u64 = 2048;

/// What a config reserves in memory, by part, for `check-config`: the mempool (DPDK memory:
/// hugepages or `-m`), the compare or rewriter tables (process heap, all allocated at start,
/// nothing grows later) and af_packet's kernel rings. The DPDK parts are estimates.
pub fn memory_summary(cfg: &Config) -> String {
    let mib = |b: u64| format!("{:.1} MiB", b as f64 / f64::from(1u32 << 20));
    let m = &cfg.mempool;
    let per_mbuf = MBUF_HEADER + dpdk::MBUF_PRIV_SIZE as usize + usize::from(m.data_room);
    let per_mbuf = (per_mbuf + MEMPOOL_OBJ_OVERHEAD) as u64;
    let pool = u64::from(m.mbufs) * per_mbuf;
    let mut total = pool;
    let mut s = format!(
        "memory (estimate):\n  mempool        {} ({} mbufs x {per_mbuf} B)\n",
        mib(pool),
        m.mbufs
    );
    match cfg.role {
        Role::Primary => {
            let cc = compare_config(cfg);
            let shards = u64::from(cfg.compare.shards.max(1));
            let per = Comparator::<Mbuf>::memory_bytes(&cc) as u64;
            total += shards * per;
            s += &format!(
                "  compare        {} ({shards} shard(s) x {}: {} connections x {} B, {} queued \
                 packets)\n",
                mib(shards * per),
                mib(per),
                cc.table_capacity,
                Comparator::<Mbuf>::bytes_per_connection(&cc),
                cc.pool_size
            );
        }
        Role::Secondary => {
            let rc = rewriter_config(cfg);
            let b = Rewriter::memory_bytes(&rc) as u64;
            total += b;
            s += &format!(
                "  rewriter       {} ({} connections x {} B)\n",
                mib(b),
                rc.table_capacity,
                b / rc.table_capacity.max(1) as u64
            );
        }
        Role::Compare => {}
    }
    for p in cfg.ports.values() {
        let PortDevice::Vdev(args) = &p.device else {
            continue;
        };
        if !p.device_name().starts_with("net_af_packet") {
            continue;
        }
        let num = |k: &str, d: u64| devarg(args, k).and_then(|v| v.parse().ok()).unwrap_or(d);
        let frames = num("framecnt", u64::from(crate::config::eal::AF_PACKET_FRAMES));
        let queues = num("qpairs", 1);
        let b = frames * num("framesz", AF_PACKET_FRAMESZ) * 2 * queues;
        total += b;
        s += &format!(
            "  ports.{:<8} {} of kernel memory (af_packet: {queues} queue pair(s) x 2 rings x \
             {frames} frames)\n",
            p.name,
            mib(b)
        );
    }
    s += &format!("  total          {}\n", mib(total));
    s
}

/// MTU the encapsulating link needs so a VM's full 1500-byte frames still fit.
pub const LINK_MTU: u16 = 1500 + OVERHEAD as u16;

use crate::config::sizing::devarg;

/// The link port carries every VM frame plus the encapsulation: make sure its MTU allows
/// that, or say loudly that it does not. Without it a full-sized frame is dropped by the link
/// (a kernel veth drops it without a counter the proxy can see) and the compare later times
/// out on it.
fn check_link_mtu(name: &str, spec: &PortSpec, p: &mut Port) {
    let fix = |iface: &str, mtu: u32| {
        log::warn!(
            "ports.{name}: link MTU {mtu} < {LINK_MTU}: VM frames over {} bytes cannot \
             cross the encapsulated link; raise it on both link ends ({iface})",
            mtu.saturating_sub(OVERHEAD as u32) + 14
        );
    };
    // net_af_packet (DPDK 22.11) refuses MTUs over 1500 although its frames hold more: the
    // kernel interface's MTU is what counts, and only its owner can raise it.
    if let PortDevice::Vdev(args) = &spec.device {
        if device_name(&spec.device).starts_with("net_af_packet") {
            if let Some(iface) = devarg(args, "iface") {
                let path = format!("/sys/class/net/{iface}/mtu");
                if let Some(mtu) = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                {
                    if mtu < u32::from(LINK_MTU) {
                        fix(&format!("ip link set {iface} mtu {LINK_MTU}"), mtu);
                    }
                }
            }
            return;
        }
    }
    let current = p.mtu().unwrap_or(0);
    if current >= LINK_MTU {
        return;
    }
    if let Err(e) = p.set_mtu(LINK_MTU) {
        log::warn!("ports.{name}: {e}");
        fix("the NIC and the switch in between", u32::from(current));
    }
}

fn socket(ep: &Endpoint, vnet: bool, reconnect_ms: u64) -> Result<FramedSocket, String> {
    let (addr, mode) = (&ep.addr, ep.mode);
    let shown = addr.to_string();
    let addr = match addr {
        SockAddr::Tcp(a) => LinkAddr::Tcp(*a),
        SockAddr::Unix(p) => LinkAddr::Unix(p.clone()),
    };
    let role = match mode {
        SocketMode::Server => SockRole::Server,
        SocketMode::Client => SockRole::Client,
    };
    let mut sc = SocketConfig::new(addr, role, FrameConfig::with_vnet(vnet));
    sc.backoff_max = Duration::from_millis(reconnect_ms.max(1));
    // One read per poll bounds the frames a stage takes in one loop.
    sc.max_reads_per_poll = 1;
    sc.read_buf = 64 * 1024;
    // Who may connect (allow, replace_peer) and how fast a dead peer is noticed.
    sc.policy = ep.peer_policy(false);
    sc.keepalive = ep.keepalive();
    FramedSocket::new(sc).map_err(|e| format!("link socket {shown}: {e}"))
}

/// Build the pipeline for `cfg` (role primary or secondary); compare shards report divergences
/// to `events` (with their packets from the start when `capture` is on). EAL must be up.
/// Wire ports ([`PortDevice::Wire`]) are refused: nothing in this process holds their other
/// end (see [`build_in`]).
pub fn build(
    cfg: &Config,
    pool: &Mempool,
    events: &EventSender,
    capture: bool,
) -> Result<Topology, String> {
    if let Some(p) = cfg
        .ports
        .values()
        .find(|p| matches!(p.device, PortDevice::Wire(_)))
    {
        return Err(format!(
            "ports.{}: a wire port connects pipelines inside one process (the demo); \
             use a pci or vdev device",
            p.name
        ));
    }
    build_in(cfg, pool, events, capture, &mut InProcess::default())
}

/// [`build`], sharing wires and lcore doorbells with the other pipelines of this process.
pub fn build_in(
    cfg: &Config,
    pool: &Mempool,
    events: &EventSender,
    capture: bool,
    shared: &mut InProcess,
) -> Result<Topology, String> {
    let shards = cfg.compare.shards.max(1) as usize;
    let ring_size = cfg.rings.size;
    // Queues each port needs: the nic transmits from every compare shard.
    let need_tx = |name: &str| -> u16 {
        if cfg.role == Role::Primary && name == "nic" {
            shards as u16
        } else {
            1
        }
    };
    // Idle plan per lcore (config::idle): which lcores sleep until woken, and so which ports
    // need rx interrupts configured.
    let plan = crate::config::idle::plan(cfg);
    let mode_of = |lcore: Option<u32>| {
        plan.iter()
            .find(|p| Some(p.lcore) == lcore)
            .map_or(IdleMode::Backoff, |p| p.mode)
    };
    let link_port = match &cfg.link {
        Some(LinkSpec::Port { port, .. }) => Some(port.as_str()),
        _ => None,
    };
    // The lcore that polls each port's rx queues.
    let reader = |name: &str| -> Option<u32> {
        let l = &cfg.lcores;
        match (cfg.role, name) {
            (Role::Primary, "nic") => l.mirror,
            (Role::Primary, "pvm") => l.redirector,
            (Role::Primary, n) if Some(n) == link_port => l.redirector,
            (Role::Secondary, _) => l.rewriter,
            _ => None,
        }
    };
    let mut ports: BTreeMap<String, Port> = BTreeMap::new();
    let mut wakes: BTreeMap<String, PortWake> = BTreeMap::new();
    for (name, spec) in &cfg.ports {
        let wire_queues = spec
            .effective_rx_queues()
            .max(spec.tx_queues.max(need_tx(name)));
        let id = match &spec.device {
            PortDevice::Wire(w) => shared.wire(w, wire_queues),
            _ => Port::id_by_name(device_name(&spec.device)).map_err(|e| {
            // The device failed to probe; EAL logged why above. One cause is not obvious.
            let hint = if device_name(&spec.device).starts_with("net_af_packet") {
                " (the driver's message is above; \"could not set PACKET_FANOUT\" means another \
                 DPDK process in this network namespace has af_packet's fan-out group id \
                 (pid ^ ifindex) on another interface: start this process again, or run the \
                 two in separate namespaces)"
            } else {
                " (the driver's message is above)"
            };
            format!("ports.{name}: {e}{hint}")
            }),
        }?;
        let pc = PortConfig {
            rx_queues: spec.effective_rx_queues(),
            tx_queues: spec.tx_queues.max(need_tx(name)),
            rx_desc: spec.rx_desc,
            tx_desc: spec.tx_desc,
            promiscuous: true,
        };
        let rx_intr = mode_of(reader(name)) == IdleMode::Interrupt
            && crate::config::idle::port_wake(spec).0 == crate::config::idle::PortWake::RxInterrupt;
        let mut p = Port::open_with(id, &pc, pool, rx_intr).map_err(|e| {
            let hint = if need_tx(name) > 1 {
                format!(
                    " (compare.shards = {shards}: each shard transmits on its own queue; \
                     for net_af_packet add qpairs={shards} to the devargs)"
                )
            } else {
                String::new()
            };
            format!("ports.{name}: {e}{hint}")
        })?;
        if matches!(&cfg.link, Some(LinkSpec::Port { port, .. }) if port == name) {
            check_link_mtu(name, spec, &mut p);
        }
        p.start().map_err(|e| {
            if rx_intr {
                format!(
                    "ports.{name}: {e} (with rx interrupts for idle.mode \"interrupt\"; \
                     idle.mode = \"backoff\" opens it without)"
                )
            } else {
                format!("ports.{name}: {e}")
            }
        })?;
        wakes.insert(name.clone(), port_wake(name, spec, &p, rx_intr));
        ports.insert(name.clone(), p);
    }
    let inputs = |names: &[&str]| -> IdleInputs {
        names
            .iter()
            .filter_map(|n| wakes.get(*n).map(|w| (*n, w.clone())))
            .fold(IdleInputs::none(), |acc, (n, w)| acc.with(n, w))
    };
    // One doorbell per lcore, shared by the ring producers that feed it.
    let mut doorbell = |lcore: u32| shared.doorbell(lcore);
    fn port<'a>(ports: &'a mut BTreeMap<String, Port>, name: &str) -> Result<&'a mut Port, String> {
        ports
            .get_mut(name)
            .ok_or_else(|| format!("ports.{name}: missing"))
    }
    let q = |p: &mut Port, name: &str, txq: u16| -> Result<(dpdk::RxQueue, TxBuf), String> {
        let rx = p.rx_queue(0).map_err(|e| format!("ports.{name}: {e}"))?;
        let tx = p.tx_queue(txq).map_err(|e| format!("ports.{name}: {e}"))?;
        Ok((rx, TxBuf::new(tx)))
    };
    // Every rx queue of a VM or client port goes to its one stage.
    let all_rx = |p: &mut Port, name: &str| -> Result<RxSet, String> {
        let queues = (0..p.config().rx_queues)
            .map(|k| p.rx_queue(k).map_err(|e| format!("ports.{name}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RxSet::new(queues))
    };
    let q_all = |p: &mut Port, name: &str| -> Result<(RxSet, TxBuf), String> {
        let rx = all_rx(p, name)?;
        let tx = p.tx_queue(0).map_err(|e| format!("ports.{name}: {e}"))?;
        Ok((rx, TxBuf::new(tx)))
    };

    // The link, as (tx side, rx side).
    let mut link_sockets = Vec::new();
    let (link_tx, link_rx) = match &cfg.link {
        Some(LinkSpec::Port {
            port: lp,
            ether_type,
            peer_mac,
        }) => {
            let p = port(&mut ports, lp)?;
            let mac = p.mac().map_err(|e| format!("ports.{lp}: {e}"))?;
            let (rx, tx) = q(p, lp, 0)?;
            let stream = if cfg.role == Role::Primary {
                STREAM_MIRROR
            } else {
                STREAM_SECONDARY
            };
            let ecfg = EncapConfig {
                dst: peer_mac.unwrap_or([0xff; 6]),
                src: mac,
                ethertype: *ether_type,
            };
            (
                LinkTx::EncapPort {
                    tx,
                    encap: EncapTx::new(ecfg, stream),
                    pool: pool.clone(),
                    hb: Default::default(),
                },
                LinkRx::encap_port(
                    rx,
                    *ether_type,
                    Some(SeqReporter::new(
                        events.clone(),
                        if cfg.role == Role::Primary {
                            "secondary-out"
                        } else {
                            "mirror"
                        },
                    )),
                ),
            )
        }
        Some(LinkSpec::Socket(l)) => {
            let (out, inn) = if cfg.role == Role::Primary {
                (&l.mirror, &l.secondary_out)
            } else {
                (&l.secondary_out, &l.mirror)
            };
            let tx = socket(out, l.vnet_hdr_support, l.reconnect_ms)?;
            let rx = socket(inn, l.vnet_hdr_support, l.reconnect_ms)?;
            let (tx_name, rx_name) = if cfg.role == Role::Primary {
                ("mirror", "secondary-out")
            } else {
                ("secondary-out", "mirror")
            };
            for (name, ep, s) in [(tx_name, out, &tx), (rx_name, inn, &rx)] {
                link_sockets.push(NamedPeerCounters {
                    name,
                    addr: ep.addr.to_string(),
                    counters: s.peer_counters(),
                });
            }
            (
                LinkTx::Socket(Box::new(tx), Default::default()),
                LinkRx::socket(rx, pool.clone()),
            )
        }
        None => return Err("link: missing".into()),
    };
    // Heartbeats between two colo-proxies ([failover]); both default off towards QEMU.
    let f = &cfg.failover;
    let link_tx = link_tx.with_heartbeat(f.heartbeat_ms.saturating_mul(1_000_000));
    let rx_name = if cfg.role == Role::Primary {
        "secondary-out"
    } else {
        "mirror"
    };
    let link_rx = link_rx.with_liveness(
        f.heartbeat_timeout_ms.saturating_mul(1_000_000),
        events.clone(),
        rx_name,
    );

    let hold = SharedHistogram::default();
    let mut backlog = None;
    let mut by_lcore: BTreeMap<u32, Vec<Box<dyn Stage>>> = BTreeMap::new();
    let mut place = |lcore: Option<u32>, stage: Box<dyn Stage>| -> Result<(), String> {
        let l = lcore.ok_or_else(|| format!("lcores: no lcore for stage {}", stage.name()))?;
        by_lcore.entry(l).or_default().push(stage);
        Ok(())
    };
    match cfg.role {
        Role::Primary => {
            let nic_rx = all_rx(port(&mut ports, "nic")?, "nic")?;
            let (pvm_rx, pvm_tx) = q_all(port(&mut ports, "pvm")?, "pvm")?;
            place(
                cfg.lcores.mirror,
                Box::new(MirrorStage::new(nic_rx, pvm_tx, link_tx).with_idle(inputs(&["nic"]))),
            )?;
            let (mut to_p, mut to_s) = (Vec::new(), Vec::new());
            let mut shard_stages = Vec::new();
            let board = BacklogBoard::new(shards);
            backlog = Some(board.clone());
            for k in 0..shards {
                let flags = RingFlags::default();
                let (pp, pc) = dpdk::ring::<Mbuf>(&format!("cmp_p{k}"), ring_size, flags)
                    .map_err(|e| e.to_string())?;
                let (sp, sc) = dpdk::ring::<Mbuf>(&format!("cmp_s{k}"), ring_size, flags)
                    .map_err(|e| e.to_string())?;
                // The redirector wakes a shard on another lcore after each enqueue.
                let shard_lcore = cfg.lcores.compare.get(k).or(cfg.lcores.compare.first());
                let (mut pp, mut sp) = (RingOut::new(pp), RingOut::new(sp));
                if let Some(&l) = shard_lcore.filter(|&&l| Some(l) != cfg.lcores.redirector) {
                    pp = pp.with_wake(doorbell(l));
                    sp = sp.with_wake(doorbell(l));
                }
                to_p.push(pp);
                to_s.push(sp);
                let tx = port(&mut ports, "nic")?
                    .tx_queue(k as u16)
                    .map_err(|e| format!("ports.nic: tx queue {k}: {e}"))?;
                let ev = events.clone();
                let engine = Comparator::new(compare_config(cfg));
                let lat = LatencyRecorder::new(hold.clone());
                shard_stages.push((
                    k,
                    CompareStage::new(
                        k,
                        RingIn::new(pc),
                        RingIn::new(sc),
                        TxBuf::new(tx),
                        engine,
                        ev,
                        lat,
                    )
                    .with_capture(capture)
                    .with_backlog(board.clone())
                    .with_idle(IdleInputs::none()),
                ));
            }
            let mut redirector = RedirectorStage::new(pvm_rx, link_rx, to_p, to_s)
                .with_idle(inputs(&["pvm", link_port.unwrap_or("")]));
            let bp = &cfg.backpressure;
            if bp.enabled {
                let gate = PvmGate::new(Watermarks::from(bp), bp.max_pause_ms * 1_000_000, shards);
                redirector = redirector.with_backpressure(board, gate);
            }
            place(cfg.lcores.redirector, Box::new(redirector))?;
            for (k, s) in shard_stages {
                let l = cfg
                    .lcores
                    .compare
                    .get(k)
                    .or(cfg.lcores.compare.first())
                    .copied();
                place(l, Box::new(s))?;
            }
        }
        Role::Secondary => {
            let (svm_rx, svm_tx) = q_all(port(&mut ports, "svm")?, "svm")?;
            let nic = match ports.get_mut("nic") {
                Some(p) => Some(q(p, "nic", 0)?),
                None => None,
            };
            let rw = RewriterStage::new(
                link_rx,
                svm_tx,
                svm_rx,
                link_tx,
                nic,
                Rewriter::new(rewriter_config(cfg)),
                pool.clone(),
            )
            .with_events(events.clone())
            .with_failover(failover_opts(cfg, events))
            .with_idle(inputs(&["svm", "nic", link_port.unwrap_or("")]));
            place(cfg.lcores.rewriter, Box::new(rw))?;
        }
        Role::Compare => return Err("role compare runs without DPDK (see the drop-in mode)".into()),
    }
    // The config's spin and sleep lengths with a mode and why.
    let policy_of = |mode: IdleMode, reason: String| {
        let idle = &cfg.idle;
        IdlePolicy {
            mode,
            spin_loops: idle.spin_loops,
            spin: Duration::from_micros(u64::from(idle.spin_us)),
            await_spin: Duration::from_micros(u64::from(idle.await_spin_us)),
            max_sleep: Duration::from_micros(u64::from(idle.max_sleep_us)),
            reason,
        }
    };
    let policy = |lcore: u32| {
        let p = plan.iter().find(|p| p.lcore == lcore);
        policy_of(
            p.map_or(IdleMode::Backoff, |p| p.mode),
            p.map_or_else(|| "no plan".to_string(), |p| p.reason.clone()),
        )
    };
    let plans = by_lcore
        .into_iter()
        .map(|(lcore, stages)| LcorePlan {
            lcore,
            stages,
            idle: Some(policy(lcore)),
            wake: doorbell(lcore),
        })
        .collect();
    Ok(Topology {
        plans,
        ports: ports.into_iter().collect(),
        hold,
        idle: policy_of(cfg.idle.mode.unwrap_or(IdleMode::Backoff), "config".into()),
        backlog,
        link_sockets,
    })
}

/// How port `name` (started) wakes the lcore that reads it.
fn port_wake(name: &str, spec: &PortSpec, p: &Port, rx_intr: bool) -> PortWake {
    use crate::config::idle::PortWake as Kind;
    let (kind, why) = crate::config::idle::port_wake(spec);
    match kind {
        Kind::RxInterrupt if rx_intr => PortWake::Interrupt {
            queues: (0..p.config().rx_queues).map(|q| p.queue_intr(q)).collect(),
            registered: false,
        },
        Kind::RxInterrupt => PortWake::None("opened without rx interrupts".into()),
        Kind::SocketFd => {
            let fds = match &spec.device {
                PortDevice::Vdev(args) => devarg(args, "iface")
                    .map(crate::dpdk::af_packet_fds)
                    .unwrap_or_default(),
                PortDevice::Pci(_) | PortDevice::Wire(_) => Vec::new(),
            };
            if fds.is_empty() {
                eprintln!(
                    "warning: ports.{name}: its af_packet sockets were not found in \
                     /proc/net/packet; its lcore backs off (timed sleeps) instead"
                );
                PortWake::None("af_packet sockets not found".into())
            } else {
                PortWake::Fds(fds)
            }
        }
        Kind::None => PortWake::None(why.into()),
    }
}
