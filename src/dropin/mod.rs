//! colo-compare drop-in mode (config role `compare`): a non-DPDK runtime that takes the place
//! of QEMU's `colo-compare` object on its four chardevs.
//!
//! - Reads QEMU-framed packets from `primary_in` and `secondary_in`, runs [`crate::compare`]
//!   on them, and writes every released primary to `outdev` with the vnet header and
//!   vnet_hdr_len it arrived with (as QEMU does, §3.1).
//! - Speaks the Xen notify protocol on `notify_dev` (§3.6): `COLO_USERSPACE_PROXY_INIT` →
//!   `COLO_COMPARE_GET_XEN_INIT`; a divergence → one `DO_CHECKPOINT`, coalesced while a request
//!   is outstanding (re-sent if unanswered for `timeout_ns`); `COLO_CHECKPOINT` → checkpoint
//!   done: queued primaries are released, secondaries dropped. Without `notify_dev` (KVM COLO
//!   has no out-of-process checkpoint API) requests are counted only.
//! - `outdev` backpressure never drops a packet: released packets wait in order in a hold
//!   queue and input reading pauses until it drains (the sources are then throttled by TCP).
//! - Unlike QEMU: FIFO output under backpressure, FIFO datagram compare, queue-full drops
//!   counted by reason (never silent, never a release of uncompared data), and non-IPv4
//!   primaries (ARP, IPv6) are compared rather than passed through (see docs/QEMU-INTEROP.md
//!   for the full list).
//! - [`run`] stops on SIGINT/SIGTERM: inputs are no longer read, every queued primary is
//!   dropped (output commit: it was never verified; TCP retransmits it to whoever serves the
//!   client next), primaries already released are written to outdev within
//!   [`SHUTDOWN_GRACE`], the final report is printed and the exit status is 0.
//!
//! One packet copy per frame (socket buffer → a reused [`DropBuf`]; no allocation per packet
//! once warm); no syscall per packet (batched reads and writes; an idle loop blocks in one
//! `poll(2)` on its sockets instead of spinning); `now` is passed in once per poll.

use std::collections::VecDeque;
use std::io;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use signal_hook::consts::{SIGINT, SIGTERM};

use crate::buf::{BufError, PacketBuf, VecBuf};
use crate::compare::{
    self, Comparator, CompareConfig, DivergenceEvent, Output, PrimaryDrop, Release, SecondaryFree,
    Side,
};
use crate::config::{Config, Endpoint, SockAddr, SocketMode};
use crate::control::xen::{XenIn, XenOut};

use crate::link::framing::{FrameConfig, MAX_VNET_HDR_LEN};
use crate::link::socket::{FramedSocket, LinkAddr, Role, SendError, SocketConfig, SocketStats};

/// Longest block when idle: bounds how late a timer (compare timeout scan, checkpoint resend)
/// or a client reconnect is handled. 100 ms: at most ~10 wake-ups a second when nothing
/// happens (a socket that becomes readable wakes it at once).
pub const IDLE_WAIT: Duration = Duration::from_millis(100);

/// How the drop-in's one thread runs (`[lcores] compare` and `[idle]` of a role-compare
/// config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropInThread {
    /// CPU the thread is pinned to (`lcores.compare`; QEMU's `iothread=`).
    pub cpu: Option<usize>,
    /// `idle.backoff`: block in `poll(2)` when idle; `false` busy-polls.
    pub backoff: bool,
    /// `idle.spin_loops`: empty polls before blocking, at most.
    pub spin_loops: u32,
    /// `idle.spin_us`: longest spin after the last work (ns).
    pub spin_ns: u64,
}

impl DropInThread {
    /// From a validated config of role `compare`: `lcores.compare` and `[idle]`.
    pub fn from_config(cfg: &Config) -> DropInThread {
        DropInThread {
            cpu: cfg.lcores.compare.first().map(|&c| c as usize),
            backoff: cfg.idle.mode != Some(crate::config::IdleMode::Poll),
            spin_loops: cfg.idle.spin_loops,
            spin_ns: u64::from(cfg.idle.spin_us) * 1000,
        }
    }
}

impl Default for DropInThread {
    fn default() -> Self {
        DropInThread {
            cpu: None,
            backoff: true,
            spin_loops: 4,
            spin_ns: 20_000,
        }
    }
}

/// Busy poll rounds between reads of outdev (which only detect its peer closing).
const OUTDEV_READ_EVERY: u64 = 64;

/// How long shutdown waits for outdev to take the last released primaries.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Sockets and compare settings of the drop-in.
#[derive(Debug, Clone)]
pub struct DropInConfig {
    /// PVM output (QEMU filter-redirector `outdev` → here).
    pub primary_in: SocketConfig,
    /// SVM output (from the secondary).
    pub secondary_in: SocketConfig,
    /// Released primaries (→ QEMU filter-redirector `indev`).
    pub outdev: SocketConfig,
    /// Xen notify channel (incoming parsed with vnet_hdr_support, outgoing never with it).
    pub notify_dev: Option<SocketConfig>,
    /// Compare engine settings.
    pub compare: CompareConfig,
    /// Apply a `COLO_CHECKPOINT` that answers no `DO_CHECKPOINT` (it releases every queued
    /// primary); otherwise it is counted and ignored.
    pub accept_unsolicited: bool,
}

fn socket_config(ep: &Endpoint, framing: FrameConfig, reconnect_ms: u64) -> SocketConfig {
    let addr = match &ep.addr {
        SockAddr::Tcp(a) => LinkAddr::Tcp(*a),
        SockAddr::Unix(p) => LinkAddr::Unix(p.clone()),
    };
    let role = match ep.mode {
        SocketMode::Server => Role::Server,
        SocketMode::Client => Role::Client,
    };
    let mut c = SocketConfig::new(addr, role, framing);
    let max = Duration::from_millis(reconnect_ms.max(1));
    c.backoff_max = max;
    c.backoff_initial = max.min(Duration::from_millis(100));
    c.policy = ep.peer_policy(false);
    c.keepalive = ep.keepalive();
    c
}

impl DropInConfig {
    /// From a validated config of role `compare`.
    pub fn from_config(cfg: &Config) -> Result<DropInConfig, String> {
        let cs = cfg
            .compare_sockets
            .as_ref()
            .ok_or_else(|| "role compare needs [compare_sockets]".to_string())?;
        let data = FrameConfig::with_vnet(cs.vnet_hdr_support);
        let c = &cfg.compare;
        let ms = 1_000_000u64;
        Ok(DropInConfig {
            primary_in: socket_config(&cs.primary_in, data, cs.reconnect_ms),
            secondary_in: socket_config(&cs.secondary_in, data, cs.reconnect_ms),
            outdev: socket_config(&cs.outdev, data, cs.reconnect_ms),
            notify_dev: cs.notify_dev.as_ref().map(|ep| {
                let mut s = socket_config(ep, data, cs.reconnect_ms);
                s.out_framing = FrameConfig::with_vnet(false);
                // It can release every queued primary: loopback only unless allowed.
                s.policy = ep.peer_policy(true);
                s
            }),
            accept_unsolicited: cs.accept_unsolicited,
            compare: CompareConfig {
                timeout_ns: c.timeout_ms.saturating_mul(ms),
                scan_period_ns: c.scan_period_ms.saturating_mul(ms),
                queue_size: c.queue_size as usize,
                table_capacity: c.table_capacity as usize,
                idle_timeout_ns: c.idle_timeout_ms.saturating_mul(ms),
                bypass: c.bypass.clone(),
                pass_ipv6: c.ipv6 == crate::config::PassMode::Pass,
                pass_vlan: c.vlan == crate::config::PassMode::Pass,
                ..CompareConfig::default()
            },
        })
    }
}

/// The socket counters the metrics endpoint exports, by name.
type SocketField = (&'static str, fn(&SocketStats) -> u64);
const SOCKET_FIELDS: &[SocketField] = &[
    ("frames_in", |s| s.frames_in),
    ("frames_out", |s| s.frames_out),
    ("bytes_in", |s| s.bytes_in),
    ("bytes_out", |s| s.bytes_out),
    ("connects", |s| s.connects),
    ("disconnects", |s| s.disconnects),
    ("decode_resets", |s| s.decode_resets),
    ("oversize", |s| s.oversize),
    ("bad_vnet", |s| s.bad_vnet),
    ("truncated", |s| s.truncated),
];

/// Most packet buffers kept for reuse (bounds the memory a burst leaves behind).
pub const SPARE_MAX: usize = 4096;

/// Storage of freed packets, reused for the next ones: no allocation per packet once warm.
#[derive(Default)]
struct Spare(Vec<Vec<u8>>);

impl Spare {
    fn take(&mut self) -> Vec<u8> {
        self.0.pop().unwrap_or_default()
    }
    fn put(&mut self, v: Vec<u8>) {
        if self.0.len() < SPARE_MAX {
            self.0.push(v);
        }
    }
}

/// A packet as the drop-in holds it: the vnet header it arrived with (restored on output)
/// in the headroom of a [`VecBuf`] whose data is the Ethernet frame the engine sees, one
/// reusable buffer. The vnet header is not headroom the engine may prepend into.
pub struct DropBuf {
    buf: VecBuf,
    vnet_len: usize,
    /// The vnet_hdr_len field as received (written back on output).
    field: u32,
}

impl DropBuf {
    /// Split a received frame; `None` when the vnet header is longer than the frame.
    pub fn new(vnet_hdr_len: u32, frame: &[u8]) -> Option<DropBuf> {
        Self::split_in(vnet_hdr_len, frame, Vec::new())
    }

    fn split_in(vnet_hdr_len: u32, frame: &[u8], storage: Vec<u8>) -> Option<DropBuf> {
        let v = vnet_hdr_len as usize;
        if v > frame.len() || vnet_hdr_len > MAX_VNET_HDR_LEN {
            return None;
        }
        Some(Self::filled(v, vnet_hdr_len, frame, storage))
    }

    /// A frame kept whole and uncompared (its vnet field is nonsense), forwarded as received.
    fn raw(vnet_hdr_len: u32, frame: &[u8], storage: Vec<u8>) -> DropBuf {
        Self::filled(0, vnet_hdr_len, frame, storage)
    }

    fn filled(vnet_len: usize, field: u32, frame: &[u8], storage: Vec<u8>) -> DropBuf {
        // No zeroing and, with reused storage, no allocation: one copy of the frame.
        DropBuf {
            buf: VecBuf::reusing(storage, frame, vnet_len),
            vnet_len,
            field,
        }
    }

    /// The vnet header bytes.
    pub fn vnet(&self) -> &[u8] {
        &self.buf.with_headroom()[..self.vnet_len]
    }

    fn into_storage(self) -> Vec<u8> {
        self.buf.into_storage()
    }
}

impl PacketBuf for DropBuf {
    fn data(&self) -> &[u8] {
        self.buf.data()
    }
    fn data_mut(&mut self) -> &mut [u8] {
        self.buf.data_mut()
    }
    fn trim(&mut self, n: usize) -> Result<(), BufError> {
        self.buf.trim(n)
    }
    fn adj(&mut self, n: usize) -> Result<(), BufError> {
        self.buf.adj(n)
    }
    fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        // Only bytes previously removed with `adj`: the vnet header is not headroom.
        if n > self.buf.headroom() - self.vnet_len {
            return Err(BufError::NoHeadroom);
        }
        self.buf.prepend(n)
    }
    fn append(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        self.buf.append(n)
    }
}

/// Drop-in counters (the engine's own are in [`DropIn::compare_counters`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DropInStats {
    /// primary_in socket.
    pub primary: SocketStats,
    /// secondary_in socket.
    pub secondary: SocketStats,
    /// outdev socket.
    pub outdev: SocketStats,
    /// notify_dev socket.
    pub notify: SocketStats,
    /// Primaries released by the engine (written or held).
    pub released: u64,
    /// Primaries with a vnet_hdr_len longer than the frame, forwarded uncompared.
    pub primary_bad_vnet: u64,
    /// Secondaries with a vnet_hdr_len longer than the frame, dropped.
    pub secondary_bad_vnet: u64,
    /// Released primaries that had to wait for outdev (backpressure).
    pub held: u64,
    /// Largest hold queue seen.
    pub held_max: u64,
    /// Divergence events from the engine.
    pub divergences: u64,
    /// `DO_CHECKPOINT` messages sent.
    pub do_checkpoint_sent: u64,
    /// Requests merged into an outstanding one.
    pub requests_coalesced: u64,
    /// Requests with no notify channel to go to (KVM).
    pub requests_unsent: u64,
    /// `COLO_CHECKPOINT` received and applied (checkpoints done).
    pub checkpoints_done: u64,
    /// `COLO_CHECKPOINT` that answered no `DO_CHECKPOINT`: counted and ignored (unless
    /// `accept_unsolicited`).
    pub unsolicited_ignored: u64,
    /// `COLO_USERSPACE_PROXY_INIT` received (and answered).
    pub proxy_inits: u64,
    /// Notify messages not understood (QEMU: "unsupported instruction").
    pub notify_unsupported: u64,
    /// Idle blocks in `poll(2)` (each is one wake-up of an idle drop-in).
    pub idle_waits: u64,
}

/// The engine's verdict sink: released primaries go to outdev (or the hold queue).
struct Sink {
    outdev: FramedSocket,
    held: VecDeque<DropBuf>,
    spare: Spare,
    stats: DropInStats,
    /// Divergence events in this poll round.
    want_checkpoint: u64,
}

impl Sink {
    fn emit(&mut self, pkt: DropBuf) {
        if !self.held.is_empty() {
            self.hold(pkt);
            return;
        }
        match self.outdev.send_parts(pkt.field, &[pkt.vnet(), pkt.data()]) {
            Err(SendError::Backpressure) => self.hold(pkt),
            // A frame error cannot happen for frames that came in through the same framing;
            // counted by the socket (`send_errors`).
            Ok(()) | Err(SendError::Frame(_)) => self.spare.put(pkt.into_storage()),
        }
    }

    fn hold(&mut self, pkt: DropBuf) {
        self.held.push_back(pkt);
        self.stats.held += 1;
        self.stats.held_max = self.stats.held_max.max(self.held.len() as u64);
    }

    /// Write held packets to outdev in order until it pushes back; returns how many went.
    fn drain_held(&mut self) -> usize {
        let mut n = 0;
        while let Some(p) = self.held.front() {
            match self.outdev.send_parts(p.field, &[p.vnet(), p.data()]) {
                // A frame the framing refuses is counted by the socket (`send_errors`).
                Ok(()) | Err(SendError::Frame(_)) => {
                    if let Some(p) = self.held.pop_front() {
                        self.spare.put(p.into_storage());
                    }
                    n += 1;
                }
                Err(SendError::Backpressure) => break,
            }
        }
        n
    }
}

impl Output<DropBuf> for Sink {
    fn release(&mut self, pkt: DropBuf, _how: Release) {
        self.stats.released += 1;
        self.emit(pkt);
    }
    fn drop_primary(&mut self, pkt: DropBuf, _why: PrimaryDrop) {
        // Counted by the engine, per reason.
        self.spare.put(pkt.into_storage());
    }
    fn free_secondary(&mut self, pkt: DropBuf, _how: SecondaryFree) {
        self.spare.put(pkt.into_storage());
    }
    fn event(&mut self, _ev: DivergenceEvent) {
        self.stats.divergences += 1;
        self.want_checkpoint += 1;
    }
}

/// The drop-in runtime: sockets + one compare engine, driven by [`DropIn::poll`].
pub struct DropIn {
    primary: FramedSocket,
    secondary: FramedSocket,
    notify: Option<FramedSocket>,
    engine: Comparator<DropBuf>,
    /// outdev, and the hold queue in front of it.
    sink: Sink,
    /// Poll rounds so far.
    polls: u64,
    /// `now` of the outstanding `DO_CHECKPOINT`, if any.
    outstanding: Option<u64>,
    accept_unsolicited: bool,
    /// Prometheus endpoint (`[mgmt.metrics]`), polled by [`DropIn::run_until`].
    metrics: Option<crate::mgmt::metrics::MetricsServer>,
}

impl DropIn {
    /// Open the sockets (servers listen now) and build the engine.
    pub fn new(cfg: DropInConfig) -> io::Result<DropIn> {
        Ok(DropIn {
            primary: FramedSocket::new(cfg.primary_in)?,
            secondary: FramedSocket::new(cfg.secondary_in)?,
            notify: cfg.notify_dev.map(FramedSocket::new).transpose()?,
            sink: Sink {
                outdev: FramedSocket::new(cfg.outdev)?,
                held: VecDeque::with_capacity(cfg.compare.pool_size.min(65_536)),
                spare: Spare::default(),
                stats: DropInStats::default(),
                want_checkpoint: 0,
            },
            engine: Comparator::new(cfg.compare),
            polls: 0,
            outstanding: None,
            accept_unsolicited: cfg.accept_unsolicited,
            metrics: None,
        })
    }

    /// True when primary_in, secondary_in and outdev (and notify_dev if set) are connected.
    pub fn connected(&self) -> bool {
        self.primary.is_connected()
            && self.secondary.is_connected()
            && self.sink.outdev.is_connected()
            && self.notify.as_ref().is_none_or(FramedSocket::is_connected)
    }

    /// Counters, socket counters included.
    pub fn stats(&self) -> DropInStats {
        let mut s = self.sink.stats;
        s.primary = self.primary.stats();
        s.secondary = self.secondary.stats();
        s.outdev = self.sink.outdev.stats();
        s.notify = self
            .notify
            .as_ref()
            .map(FramedSocket::stats)
            .unwrap_or_default();
        s
    }

    /// The compare engine's counters.
    pub fn compare_counters(&self) -> &compare::CompareCounters {
        self.engine.counters()
    }

    /// One round of work at time `now` (ns, monotonic); never blocks. Returns how many frames
    /// and messages were handled (0 = idle).
    pub fn poll(&mut self, now: u64) -> usize {
        let DropIn {
            primary,
            secondary,
            notify,
            engine,
            sink,
            outstanding,
            accept_unsolicited,
            polls,
            ..
        } = self;
        let timeout = engine.config().timeout_ns;
        let mut work = 0usize;

        // Released packets waiting for outdev go first, in order.
        work += sink.drain_held();
        sink.want_checkpoint = 0;

        if let Some(n) = notify.as_mut() {
            let (mut inits, mut dones, mut bad) = (0u64, 0u64, 0u64);
            work += n.poll_recv(|_, f| match XenIn::parse(f) {
                Ok(XenIn::ProxyInit) => inits += 1,
                Ok(XenIn::CheckpointDone) => dones += 1,
                Err(_) => bad += 1,
            });
            sink.stats.notify_unsupported += bad;
            sink.stats.proxy_inits += inits;
            for _ in 0..inits {
                let _ = n.send(0, XenOut::GetXenInit.text());
            }
            for _ in 0..dones {
                if outstanding.is_none() && !*accept_unsolicited {
                    // Answers no DO_CHECKPOINT of ours: it would release every queued
                    // primary on the peer's word alone.
                    sink.stats.unsolicited_ignored += 1;
                    continue;
                }
                sink.stats.checkpoints_done += 1;
                *outstanding = None;
                engine.checkpoint_done(now, sink);
            }
        }

        // Input only while nothing waits for outdev (backpressure towards the sources).
        if sink.held.is_empty() {
            work += primary.poll_recv(|v, f| {
                match DropBuf::split_in(v, f, sink.spare.take()) {
                    Some(b) => engine.process(Side::Primary, b, now, sink),
                    None => {
                        // Not comparable; QEMU forwards unparsable primaries too.
                        sink.stats.primary_bad_vnet += 1;
                        let b = DropBuf::raw(v, f, sink.spare.take());
                        sink.emit(b);
                    }
                }
            });
            work += secondary.poll_recv(|v, f| match DropBuf::split_in(v, f, sink.spare.take()) {
                Some(b) => engine.process(Side::Secondary, b, now, sink),
                None => sink.stats.secondary_bad_vnet += 1,
            });
        }
        engine.tick(now, sink);

        let want = sink.want_checkpoint;
        if want > 0 {
            match notify.as_mut() {
                Some(n) => {
                    let due = outstanding.is_none_or(|t| now.saturating_sub(t) >= timeout);
                    if due && n.send(0, XenOut::DoCheckpoint.text()).is_ok() {
                        *outstanding = Some(now);
                        sink.stats.do_checkpoint_sent += 1;
                        sink.stats.requests_coalesced += want - 1;
                    } else {
                        sink.stats.requests_coalesced += want;
                    }
                }
                None => sink.stats.requests_unsent += want,
            }
        }
        if let Some(n) = notify.as_mut() {
            n.flush();
        }
        sink.outdev.flush();
        // outdev's peer never sends; reading detects its close (and accepts a server's first
        // peer). Not every busy round: that is a syscall for nothing.
        *polls = polls.wrapping_add(1);
        if work == 0 || polls.is_multiple_of(OUTDEV_READ_EVERY) || !sink.outdev.is_connected() {
            sink.outdev.poll_recv(|_, _| {});
        }
        work
    }

    /// Shutdown: stop reading the inputs, drop every queued primary (never verified; counted
    /// as dropped at exit), and write everything already released to outdev, waiting at most
    /// `grace` for a slow outdev peer. Returns the frames that could not be handed to the kernel in time
    /// (0 normally); they are also in [`DropIn::unsent`].
    pub fn shutdown(&mut self, grace: Duration) -> u64 {
        let DropIn {
            notify,
            engine,
            sink,
            ..
        } = self;
        engine.drop_all(sink);
        let deadline = Instant::now() + grace;
        loop {
            sink.drain_held();
            sink.outdev.flush();
            if let Some(n) = notify.as_mut() {
                n.flush();
            }
            if sink.held.is_empty() && sink.outdev.pending_out() == 0 {
                break;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.unsent()
    }

    /// Released primaries not yet handed to the kernel: held for outdev backpressure plus
    /// whole frames in outdev's output buffer.
    pub fn unsent(&self) -> u64 {
        self.sink.held.len() as u64 + self.sink.outdev.pending_frames()
    }

    /// The final report printed when `run` stops: socket, engine and checkpoint counters.
    pub fn report(&self) -> String {
        let s = self.stats();
        let c = self.compare_counters();
        let mut r = String::new();
        let sock = |name: &str, x: &SocketStats| {
            format!(
                "{name:<13} frames in {} out {}, bytes in {} out {}, connects {} disconnects {}, dead peers {}, refused (not allowed {} busy {}), bad input {} (oversize {} bad vnet {} truncated {})\n",
                x.frames_in,
                x.frames_out,
                x.bytes_in,
                x.bytes_out,
                x.connects,
                x.disconnects,
                x.dead_peers,
                x.refused_not_allowed,
                x.refused_busy,
                x.decode_resets,
                x.oversize,
                x.bad_vnet,
                x.truncated
            )
        };
        r += "colo-proxy compare drop-in final report\n";
        r += &sock("primary_in", &s.primary);
        r += &sock("secondary_in", &s.secondary);
        r += &sock("outdev", &s.outdev);
        if self.notify.is_some() {
            r += &sock("notify_dev", &s.notify);
        }
        r += &format!(
            "primary       in {} released {} (matched {} retransmit {} bypass {} uncomparable {} checkpoint {} timeout {} flushed {}) dropped {} (queue full {} pool empty {} at exit {}), held for checkpoint (evicted {} expired {}), bad vnet {}, queued {}\n",
            c.primary_in,
            c.primary_out() - c.primary_dropped(),
            c.rel_matched,
            c.rel_retransmit,
            c.rel_bypass,
            c.rel_uncomparable,
            c.rel_checkpoint,
            c.rel_timeout,
            c.rel_flush,
            c.primary_dropped(),
            c.drop_queue_full,
            c.drop_pool_empty,
            c.drop_shutdown,
            c.held_evicted,
            c.held_expired,
            s.primary_bad_vnet,
            c.queued_primary
        );
        r += &format!(
            "secondary     in {} freed {} (matched {} dropped at checkpoint {} flushed at exit {}), bad vnet {}, queued {}\n",
            c.secondary_in,
            c.secondary_out(),
            c.sec_matched,
            c.sec_checkpoint,
            c.sec_drop_flush,
            s.secondary_bad_vnet,
            c.queued_secondary
        );
        if c.rel_pass_ipv6 + c.rel_pass_vlan + c.sec_passed > 0 {
            r += &format!(
                "passed        uncompared by compare.ipv6/vlan = \"pass\": primaries ipv6 {} vlan {}, secondaries {} (within the bypass counts)\n",
                c.rel_pass_ipv6, c.rel_pass_vlan, c.sec_passed
            );
        }
        r += &format!(
            "released      {} to outdev, held for backpressure {} (max {}), unsent at exit {}\n",
            s.released,
            s.held,
            s.held_max,
            self.unsent()
        );
        r += &format!(
            "checkpoint    divergences {} DO_CHECKPOINT sent {} coalesced {} unsent (no notify_dev) {} done {} unsolicited ignored {} proxy inits {} notify unsupported {}\n",
            s.divergences,
            s.do_checkpoint_sent,
            s.requests_coalesced,
            s.requests_unsent,
            s.checkpoints_done,
            s.unsolicited_ignored,
            s.proxy_inits,
            s.notify_unsupported
        );
        r
    }

    /// Serve Prometheus metrics from this drop-in's loop (`[mgmt.metrics]`).
    pub fn set_metrics(&mut self, m: crate::mgmt::metrics::MetricsServer) {
        self.metrics = Some(m);
    }

    /// The metrics endpoint's address, when set.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// The exposition: socket counters per socket, drop-in and compare engine counters (the
    /// same numbers as the final report), and the endpoint's own counters.
    pub fn metrics_text(&self, endpoint: crate::mgmt::metrics::MetricsStats) -> String {
        let mut x = crate::mgmt::metrics::Exposition::default();
        x.gauge(
            "colo_proxy_build_info",
            "Version and role of this colo-proxy (always 1).",
            &[("version", env!("CARGO_PKG_VERSION")), ("role", "compare")],
            1.0,
        );
        let s = self.stats();
        let mut socks = vec![
            ("primary_in", s.primary, self.primary.is_connected()),
            ("secondary_in", s.secondary, self.secondary.is_connected()),
            ("outdev", s.outdev, self.sink.outdev.is_connected()),
        ];
        if let Some(n) = &self.notify {
            socks.push(("notify_dev", s.notify, n.is_connected()));
        }
        for (name, _, up) in &socks {
            x.gauge(
                "colo_proxy_dropin_socket_connected",
                "1 while a drop-in socket has its peer.",
                &[("socket", name)],
                f64::from(u8::from(*up)),
            );
        }
        for (field, get) in SOCKET_FIELDS {
            for (name, st, _) in &socks {
                x.counter_int(
                    &format!("colo_proxy_dropin_socket_{field}"),
                    "Drop-in socket counter (final report, per socket).",
                    &[("socket", name)],
                    get(st),
                );
            }
        }
        for (field, v) in [
            ("released", s.released),
            ("primary_bad_vnet", s.primary_bad_vnet),
            ("secondary_bad_vnet", s.secondary_bad_vnet),
            ("held", s.held),
            ("divergences", s.divergences),
            ("do_checkpoint_sent", s.do_checkpoint_sent),
            ("requests_coalesced", s.requests_coalesced),
            ("requests_unsent", s.requests_unsent),
            ("checkpoints_done", s.checkpoints_done),
            ("proxy_inits", s.proxy_inits),
            ("notify_unsupported", s.notify_unsupported),
            ("idle_waits", s.idle_waits),
        ] {
            x.counter_int(
                &format!("colo_proxy_dropin_{field}"),
                "Drop-in counter (final report).",
                &[],
                v,
            );
        }
        x.gauge(
            "colo_proxy_dropin_held_max",
            "Largest hold queue seen (outdev back-pressure).",
            &[],
            s.held_max as f64,
        );
        x.counters_of(
            &serde_json::to_value(self.compare_counters()).unwrap_or_default(),
            "colo_proxy_compare_",
            "Compare engine counter (the drop-in's engine).",
        );
        endpoint.families(&mut x);
        x.encode()
    }

    /// Poll until `quit` is set (then call [`DropIn::shutdown`]). Idle, as `thread` says:
    /// busy polling (`backoff = false`), or after `spin_loops` empty polls (or `spin_ns` of
    /// them) a block in
    /// `poll(2)` until a socket is ready, at most [`IDLE_WAIT`]. Counts its idle waits.
    pub fn run_until(&mut self, quit: &AtomicBool, thread: DropInThread) {
        let t0 = Instant::now();
        let mut idle = 0u32;
        let mut last_work = 0u64;
        while !quit.load(Ordering::Relaxed) {
            let now = t0.elapsed().as_nanos() as u64;
            let mut work = self.poll(now);
            // Not every busy round: an accept(2) per round would be a syscall for nothing.
            if work == 0 || self.polls.is_multiple_of(OUTDEV_READ_EVERY) {
                if let Some(mut m) = self.metrics.take() {
                    work += m.poll(&mut |st| self.metrics_text(st));
                    self.metrics = Some(m);
                }
            }
            if work > 0 {
                idle = 0;
                last_work = now;
            } else {
                idle = idle.saturating_add(1);
                let spun =
                    idle > thread.spin_loops || now.saturating_sub(last_work) >= thread.spin_ns;
                if thread.backoff && spun {
                    self.wait(IDLE_WAIT);
                    self.sink.stats.idle_waits += 1;
                }
            }
        }
    }

    /// Block until a socket is readable (or outdev writable while output waits), or `timeout`
    /// passes (timers, reconnects, a client between attempts). Idle path only.
    pub fn wait(&self, timeout: Duration) {
        let out_waiting = !self.sink.held.is_empty() || self.sink.outdev.pending_out() > 0;
        let mut fds: Vec<PollFd<'_>> = Vec::with_capacity(4);
        for (sock, out) in [
            (Some(&self.primary), false),
            (Some(&self.secondary), false),
            (Some(&self.sink.outdev), out_waiting),
            (self.notify.as_ref(), false),
        ] {
            if let Some(fd) = sock.and_then(FramedSocket::wait_fd) {
                let flags = if out {
                    PollFlags::IN | PollFlags::OUT
                } else {
                    PollFlags::IN
                };
                fds.push(PollFd::from_borrowed_fd(fd, flags));
            }
        }
        // The metrics listener and its clients wake the loop too.
        for (fd, flags) in self.metrics.iter().flat_map(|m| m.fds()) {
            fds.push(PollFd::from_borrowed_fd(fd, flags));
        }
        let ts = Timespec {
            tv_sec: timeout.as_secs() as _,
            tv_nsec: timeout.subsec_nanos() as _,
        };
        // EINTR (a signal) or any error: the caller polls again, which is always safe.
        let _ = rustix::event::poll(&mut fds, Some(&ts));
    }
}

/// `colo-proxy run` for role `compare`.
pub fn run(cfg: &Config) -> ExitCode {
    for w in cfg.warnings() {
        eprintln!("warning: {w}");
    }
    let dc = match DropInConfig::from_config(cfg) {
        Ok(c) => c,
        Err(e) => {
            log::error!("{e}");
            return ExitCode::from(2);
        }
    };
    let thread = DropInThread::from_config(cfg);
    if let Some(cpu) = thread.cpu {
        // QEMU's iothread=: the one thread runs on the CPU lcores.compare names.
        let known =
            core_affinity::get_core_ids().is_some_and(|ids| ids.iter().any(|c| c.id == cpu));
        if !known || !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            log::error!("lcores.compare: cannot pin the drop-in thread to CPU {cpu} (not available to this process)");
            return ExitCode::FAILURE;
        }
    }
    log::info!(
        "compare drop-in: primary_in {} secondary_in {} outdev {}{}, cpu {}, idle {}",
        dc.primary_in.addr,
        dc.secondary_in.addr,
        dc.outdev.addr,
        dc.notify_dev
            .as_ref()
            .map(|n| format!(" notify_dev {}", n.addr))
            .unwrap_or_default(),
        thread.cpu.map_or("any".to_string(), |c| c.to_string()),
        if thread.backoff {
            format!("blocks after {} empty polls", thread.spin_loops)
        } else {
            "busy polling".to_string()
        }
    );
    // SIGINT/SIGTERM stop the loop; a second one while shutting down exits at once (1).
    // Installed before the sockets exist, so a peer that sees them can already stop us.
    let quit = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        let r = signal_hook::flag::register_conditional_shutdown(sig, 1, Arc::clone(&quit))
            .and_then(|_| signal_hook::flag::register(sig, Arc::clone(&quit)));
        if let Err(e) = r {
            log::error!("cannot install the signal handler: {e}");
            return ExitCode::FAILURE;
        }
    }
    let mut d = match DropIn::new(dc) {
        Ok(d) => d,
        Err(e) => {
            log::error!("cannot open drop-in sockets: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(a) = cfg.mgmt.metrics {
        match crate::mgmt::metrics::MetricsServer::bind(a) {
            Ok(m) => {
                log::info!("metrics: http://{a}/metrics");
                d.set_metrics(m);
            }
            Err(e) => {
                log::error!("metrics endpoint (mgmt.metrics.listen) {a}: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    // Servers listen and clients are connecting: ready for systemd (Type=notify).
    crate::mgmt::service::ready("compare drop-in running");
    d.run_until(&quit, thread);
    crate::mgmt::service::stopping();
    log::info!("compare drop-in: stopping (inputs closed, releasing queued primaries)");
    let unsent = d.shutdown(SHUTDOWN_GRACE);
    print!("{}", d.report());
    if unsent > 0 {
        log::warn!(
            "{unsent} released primaries could not be written to outdev within {} ms (peer not reading)",
            SHUTDOWN_GRACE.as_millis()
        );
    }
    ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dropbuf_splits_vnet_and_frame_and_keeps_the_vnet_out_of_headroom() {
        let mut wire = vec![9u8; 12];
        wire.extend_from_slice(&[1, 2, 3, 4, 5]);
        let mut b = DropBuf::new(12, &wire).unwrap();
        assert_eq!(
            (b.vnet(), b.data(), b.field),
            (&[9u8; 12][..], &[1u8, 2, 3, 4, 5][..], 12)
        );
        assert_eq!(b.prepend(1), Err(BufError::NoHeadroom));
        b.adj(2).unwrap();
        b.trim(1).unwrap();
        assert_eq!(b.data(), &[3, 4]);
        b.prepend(2).unwrap().copy_from_slice(&[7, 8]);
        assert_eq!((b.vnet(), b.data()), (&[9u8; 12][..], &[7u8, 8, 3, 4][..]));
        b.append(3).unwrap().copy_from_slice(&[6, 6, 6]);
        assert_eq!(b.data(), &[7, 8, 3, 4, 6, 6, 6]);
        assert_eq!(b.adj(8), Err(BufError::TooShort));
        assert!(DropBuf::new(13, &[0; 12]).is_none());
        assert!(DropBuf::new(21, &[0; 40]).is_none());
    }

    #[test]
    fn spare_storage_is_reused_without_reallocation() {
        let mut spare = Spare::default();
        let b = DropBuf::split_in(0, &[5u8; 1500], spare.take()).unwrap();
        let ptr = b.buf.with_headroom().as_ptr();
        spare.put(b.into_storage());
        let b = DropBuf::split_in(0, &[6u8; 1000], spare.take()).unwrap();
        assert_eq!(
            b.buf.with_headroom().as_ptr(),
            ptr,
            "same allocation reused"
        );
        assert_eq!(b.data(), &[6u8; 1000][..]);
        let raw = DropBuf::raw(40, &[1, 2, 3], spare.take());
        assert_eq!(
            (raw.vnet(), raw.data(), raw.field),
            (&[][..], &[1u8, 2, 3][..], 40)
        );
        for _ in 0..SPARE_MAX + 10 {
            spare.put(Vec::new());
        }
        assert_eq!(spare.0.len(), SPARE_MAX);
    }
}
