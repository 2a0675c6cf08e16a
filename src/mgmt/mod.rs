//! Management services: the control socket, checkpoint coordination and its sinks (Xen notify,
//! QMP, control-socket events), divergence capture to pcapng, and live-status formatting.
//!
//! Guarantees: nothing here runs on a data-path lcore or blocks one. The data plane reports
//! through [`EventSender`] (bounded, non-blocking; overflow is counted) and is commanded through
//! the [`DataPlane`] trait, which the pipeline answers at loop boundaries. All sockets are
//! non-blocking and [`Management::poll`] does bounded work per call, so a slow or vanished client
//! or peer only ever costs bounded memory.

pub mod capture;
pub mod coordinator;
pub mod metrics;
pub mod qmp;
pub mod server;
pub mod service;
pub mod sink;
pub mod status;
pub mod telemetry;
pub mod xen;

use std::collections::BTreeMap;
use std::os::fd::BorrowedFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crossbeam::channel::{self, Receiver, Sender, TrySendError};
use rustix::event::{PollFd, PollFlags, Timespec};
use serde::Serialize;

use crate::control::proto::{CaptureOp, Command, Reply};
pub use crate::control::{DataPlane, Event};
use crate::wake::Wake;

use capture::{CaptureConfig, CaptureStats, CaptureWriter, DivergenceCapture};
use coordinator::{CheckpointCoordinator, CoordinatorStats};
use server::{ControlServer, Handler, ServerConfig, ServerError, ServerStats};
use sink::{CheckpointSink, SinkEvent};

/// Management settings (the pipeline fills these from the validated config).
#[derive(Debug, Clone, Default)]
pub struct MgmtConfig {
    /// Control socket(s).
    pub server: ServerConfig,
    /// Xen notify sink.
    pub xen: Option<xen::XenConfig>,
    /// QMP sink.
    pub qmp: Option<qmp::QmpConfig>,
    /// Divergence capture directory and bounds.
    pub capture: Option<CaptureConfig>,
    /// Capture from start-up (otherwise `ctl capture start`).
    pub capture_on_start: bool,
    /// Re-send an outstanding checkpoint request after this long (`None`: never).
    pub checkpoint_resend_ns: Option<u64>,
    /// Capacity of the data plane → management event queue (0: 4096).
    pub event_queue: usize,
    /// `failover.on_link_loss = "auto"`: a `link-silent` event fails over at once (once).
    pub failover_on_link_loss: bool,
    /// `failover.on_colo_exit`: QEMU's `COLO_EXIT` (QMP sink) fails this proxy over too.
    pub failover_on_colo_exit: bool,
    /// Prometheus endpoint (`[mgmt.metrics] listen`).
    pub metrics: Option<std::net::SocketAddr>,
    /// Role label of `colo_proxy_build_info`.
    pub role: String,
}

impl MgmtConfig {
    /// Management settings from a validated config: `[mgmt]`, plus `[compare_sockets]
    /// notify_dev` as the Xen sink when `[mgmt.xen_notify]` is not given.
    pub fn from_config(cfg: &crate::config::Config) -> MgmtConfig {
        use crate::config::{SockAddr, SocketMode};
        let m = &cfg.mgmt;
        let ms = |v: u64| v.saturating_mul(1_000_000);
        let endpoint = |e: &crate::config::Endpoint| match (&e.addr, e.mode) {
            (SockAddr::Unix(p), SocketMode::Server) => xen::NotifyEndpoint::ListenUnix(p.clone()),
            (SockAddr::Tcp(a), SocketMode::Server) => xen::NotifyEndpoint::ListenTcp(*a),
            (SockAddr::Unix(p), SocketMode::Client) => xen::NotifyEndpoint::ConnectUnix(p.clone()),
            (SockAddr::Tcp(a), SocketMode::Client) => xen::NotifyEndpoint::ConnectTcp(*a),
        };
        let xen_cfg = |e: &crate::config::Endpoint, vnet, reconnect_ms, accept_unsolicited| {
            xen::XenConfig {
                vnet_hdr_support: vnet,
                reconnect_ns: ms(reconnect_ms),
                // A channel that can release held packets: loopback only unless allowed.
                policy: e.peer_policy(true),
                keepalive: e.keepalive(),
                accept_unsolicited,
                ..xen::XenConfig::new(endpoint(e))
            }
        };
        let xen = match (&m.xen_notify, &cfg.compare_sockets) {
            (Some(x), _) => Some(xen_cfg(
                &x.endpoint,
                x.vnet_hdr_support,
                1000,
                x.accept_unsolicited,
            )),
            (None, Some(cs)) => cs.notify_dev.as_ref().map(|e| {
                xen_cfg(
                    e,
                    cs.vnet_hdr_support,
                    cs.reconnect_ms,
                    cs.accept_unsolicited,
                )
            }),
            (None, None) => None,
        };
        MgmtConfig {
            server: ServerConfig {
                unix_path: Some(m.control_socket.clone()),
                unix_mode: m.control_socket_mode,
                unix_group: m.control_socket_group,
                tcp: m.control_tcp.clone(),
                ..ServerConfig::default()
            },
            xen,
            qmp: m.qmp.as_ref().map(|q| qmp::QmpConfig {
                socket: q.socket.clone(),
                checkpoint_delay_ms: q.checkpoint_delay_ms,
                reconnect_ns: ms(q.reconnect_ms),
            }),
            capture: m.capture.as_ref().map(|c| CaptureConfig {
                dir: c.dir.clone(),
                max_file_bytes: c.max_file_bytes,
                max_files: c.max_files,
                context_packets: c.context_packets,
            }),
            capture_on_start: m.capture.as_ref().is_some_and(|c| c.enabled),
            // QEMU re-sends DO_CHECKPOINT every scan while a packet is stuck; once a second is
            // enough to recover a lost request without flooding.
            checkpoint_resend_ns: Some(ms(1000)),
            event_queue: 0,
            failover_on_link_loss: cfg.failover.on_link_loss == crate::config::LinkLossAction::Auto,
            failover_on_colo_exit: cfg.failover.on_colo_exit,
            metrics: m.metrics,
            role: cfg.role.to_string(),
        }
    }
}

/// Why management could not start.
#[derive(Debug, thiserror::Error)]
pub enum MgmtError {
    /// Control socket.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// Xen notify socket.
    #[error("xen notify socket: {0}")]
    Xen(std::io::Error),
    /// Capture directory.
    #[error("capture directory: {0}")]
    Capture(std::io::Error),
    /// Metrics endpoint.
    #[error("metrics endpoint (mgmt.metrics.listen): {0}")]
    Metrics(std::io::Error),
}

/// What the data plane sends to management.
#[derive(Debug)]
pub enum Input {
    /// An event. `Divergence` and `CheckpointRequested` also request a checkpoint.
    Event(Event),
    /// A divergence with its packets for capture (the event must be `Event::Divergence`).
    Divergence(Event, Box<DivergenceCapture>),
    /// A compare engine divergence as is: `Copy`, so a data lcore can queue it without
    /// allocating; management turns it into an [`Event`].
    Compare(crate::compare::DivergenceEvent),
}

/// Non-blocking, clonable handle for other threads to report to management.
#[derive(Clone)]
pub struct EventSender {
    tx: Sender<Input>,
    dropped: Arc<AtomicU64>,
    /// Management's doorbell (rung only while it announced a sleep).
    bell: Option<Arc<Wake>>,
}

impl EventSender {
    /// A sender and the receiving end of a queue of `cap` inputs (management makes its own;
    /// other drivers and tests use this).
    pub fn channel(cap: usize) -> (EventSender, Receiver<Input>) {
        let (tx, rx) = channel::bounded(cap);
        let dropped = Arc::new(AtomicU64::new(0));
        (
            EventSender {
                tx,
                dropped,
                bell: None,
            },
            rx,
        )
    }

    /// Inputs dropped because the queue was full.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Queue an input; if management is behind, it is dropped and counted. Returns whether it was
    /// queued.
    pub fn send(&self, input: Input) -> bool {
        match self.tx.try_send(input) {
            Ok(()) => {
                if let Some(b) = &self.bell {
                    b.notify();
                }
                true
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.dropped.fetch_add(1, Ordering::Relaxed);
                false
            }
        }
    }

    /// Queue an event.
    pub fn event(&self, ev: Event) -> bool {
        self.send(Input::Event(ev))
    }
}

/// Management counters, also the input of the status formatting in [`status`].
#[derive(Debug, Clone, Default, Serialize)]
pub struct MgmtStats {
    /// Divergences reported, by reason.
    pub divergences_by_reason: BTreeMap<String, u64>,
    /// Divergences reported in total.
    pub divergences: u64,
    /// Checkpoint coordination.
    pub checkpoint: CoordinatorStats,
    /// Per sink counters, by sink name.
    pub sinks: BTreeMap<String, serde_json::Value>,
    /// Control server.
    pub control: ServerStats,
    /// Divergence capture (when configured).
    pub capture: Option<CaptureStats>,
    /// Capture currently on.
    pub capture_on: bool,
    /// Failovers performed.
    pub failovers: u64,
    /// What the stages reported about the failover (gap, held frames).
    pub failover: FailoverStats,
    /// Times the link peer went silent (heartbeat timeout).
    pub link_silent: u64,
    /// Lcores that failed (left their loop without a stop; the pipeline then stops).
    pub lcore_failures: u64,
    /// Inputs from the data plane processed.
    pub inputs: u64,
    /// Inputs dropped because the queue was full.
    pub inputs_dropped: u64,
}

/// The stages' `failover-report` events, summed: the gap is the longest stage's.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct FailoverStats {
    /// Stage reports received.
    pub reports: u64,
    /// Trigger → first frame forwarded on the new path, the longest over the stages that
    /// forwarded anything.
    pub gap_ns: Option<u64>,
    /// Frames held at the trigger and released.
    pub held_released: u64,
    /// Their bytes.
    pub held_released_bytes: u64,
    /// Frames held at the trigger and dropped.
    pub held_dropped: u64,
    /// Their bytes.
    pub held_dropped_bytes: u64,
}

/// What one [`Management::poll`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PollOutcome {
    /// Units of work done (inputs, sink events, requests); 0 = idle.
    pub work: usize,
    /// A `shutdown` command was received.
    pub shutdown: bool,
}

/// How often [`Management::poll`] refreshes the shared stats snapshot.
const SNAPSHOT_PERIOD_NS: u64 = 100_000_000;

/// Inputs handled per poll, so one poll stays short.
const INPUTS_PER_POLL: usize = 256;

struct Core {
    dp: Arc<dyn DataPlane>,
    coord: CheckpointCoordinator,
    sinks: Vec<Box<dyn CheckpointSink>>,
    capture: Option<CaptureWriter>,
    capture_on: bool,
    divergences: BTreeMap<String, u64>,
    divergences_total: u64,
    failovers: u64,
    failover: FailoverStats,
    link_silent: u64,
    /// Frames lost so far per encapsulated link stream, as last reported.
    link_lost: BTreeMap<(String, u8), u64>,
    lcore_failures: u64,
    auto_failover: bool,
    follow_colo_exit: bool,
    inputs: u64,
    dropped: Arc<AtomicU64>,
    server_stats: ServerStats,
    /// Events to broadcast after the current step.
    outbox: Vec<Event>,
    shutdown: bool,
    unsolicited_log: crate::link::access::RefusalLog,
}

/// The management service. Drive it with [`Management::poll`] from the management lcore or a
/// thread of its own (see [`Management::run`]).
pub struct Management {
    server: ControlServer,
    core: Core,
    rx: Receiver<Input>,
    sender: EventSender,
    /// Rung by [`EventSender`]s while [`Management::wait`] sleeps.
    bell: Arc<Wake>,
    scratch: Vec<SinkEvent>,
    shared: Arc<Mutex<MgmtStats>>,
    shared_at: Option<u64>,
    metrics: Option<metrics::MetricsServer>,
    histograms: Vec<metrics::HistogramSource>,
    role: String,
}

impl Management {
    /// Bind sockets, create sinks and the capture directory.
    pub fn new(cfg: MgmtConfig, dp: Arc<dyn DataPlane>) -> Result<Management, MgmtError> {
        let mut sinks: Vec<Box<dyn CheckpointSink>> = Vec::new();
        if let Some(x) = cfg.xen.clone() {
            sinks.push(Box::new(xen::XenSink::new(x).map_err(MgmtError::Xen)?));
        }
        if let Some(q) = cfg.qmp.clone() {
            sinks.push(Box::new(qmp::QmpSink::new(q)));
        }
        Self::with_sinks(cfg, dp, sinks)
    }

    /// Like [`Management::new`] with sinks built by the caller (tests, other frames).
    pub fn with_sinks(
        cfg: MgmtConfig,
        dp: Arc<dyn DataPlane>,
        sinks: Vec<Box<dyn CheckpointSink>>,
    ) -> Result<Management, MgmtError> {
        let capture = match &cfg.capture {
            Some(c) => Some(CaptureWriter::new(c.clone()).map_err(MgmtError::Capture)?),
            None => None,
        };
        let server = ControlServer::bind(cfg.server.clone())?;
        let metrics = match cfg.metrics {
            Some(a) => Some(metrics::MetricsServer::bind(a).map_err(MgmtError::Metrics)?),
            None => None,
        };
        let cap = if cfg.event_queue == 0 {
            4096
        } else {
            cfg.event_queue
        };
        let (mut sender, rx) = EventSender::channel(cap);
        let bell = Arc::new(Wake::new());
        sender.bell = Some(bell.clone());
        let capture_on = cfg.capture_on_start && capture.is_some();
        Ok(Management {
            server,
            core: Core {
                dp,
                coord: CheckpointCoordinator::new(cfg.checkpoint_resend_ns),
                sinks,
                capture,
                capture_on,
                divergences: BTreeMap::new(),
                divergences_total: 0,
                failovers: 0,
                failover: FailoverStats::default(),
                link_silent: 0,
                link_lost: BTreeMap::new(),
                lcore_failures: 0,
                auto_failover: cfg.failover_on_link_loss,
                follow_colo_exit: cfg.failover_on_colo_exit,
                inputs: 0,
                dropped: sender.dropped.clone(),
                server_stats: ServerStats::default(),
                outbox: Vec::new(),
                shutdown: false,
                unsolicited_log: crate::link::access::RefusalLog::new("checkpoint"),
            },
            rx,
            sender,
            bell,
            scratch: Vec::new(),
            shared: Arc::new(Mutex::new(MgmtStats::default())),
            shared_at: None,
            metrics,
            histograms: Vec::new(),
            role: cfg.role.clone(),
        })
    }

    /// Export a latency histogram on the metrics endpoint (read at scrape time).
    pub fn add_histogram(&mut self, h: metrics::HistogramSource) {
        self.histograms.push(h);
    }

    /// The metrics endpoint's address, when configured.
    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.metrics.as_ref().and_then(|m| m.local_addr().ok())
    }

    /// The metrics text a scrape gets now: `ctl stats` as families, plus the histograms.
    pub fn metrics_text(&self, endpoint: metrics::MetricsStats) -> String {
        let stats = serde_json::json!({
            "dataplane": self.core.dp.stats(),
            "mgmt": self.stats(),
        });
        let mut hs: Vec<(&str, &str, metrics::Buckets)> = vec![(
            "colo_proxy_checkpoint_latency_seconds",
            "Checkpoint request to completion (every stage applied it).",
            self.core.coord.latency().clone(),
        )];
        for h in &self.histograms {
            hs.push((h.name, h.help, (h.read)()));
        }
        metrics::families(&stats, &hs, &endpoint, &self.role).encode()
    }

    /// A handle for the data plane (or any thread) to report events.
    pub fn sender(&self) -> EventSender {
        self.sender.clone()
    }

    /// The control server (addresses, counters).
    pub fn server(&self) -> &ControlServer {
        &self.server
    }

    /// Whether capture is on (the pipeline sends packets with divergences only then).
    pub fn capture_on(&self) -> bool {
        self.core.capture_on
    }

    /// Handle one input now (same thread as `poll`).
    pub fn handle(&mut self, input: Input, now_ns: u64) {
        self.core.input(input, now_ns);
        self.flush_outbox();
    }

    /// Request a checkpoint (as a divergence would).
    pub fn request_checkpoint(&mut self, reason: &str, flow: Option<&str>, now_ns: u64) {
        self.core.request_checkpoint(reason, flow, now_ns);
        self.flush_outbox();
    }

    /// One bounded step: queued inputs, checkpoint resends, sinks, control clients.
    pub fn poll(&mut self, now_ns: u64) -> PollOutcome {
        let mut work = 0;
        while work < INPUTS_PER_POLL {
            let Ok(input) = self.rx.try_recv() else { break };
            self.core.input(input, now_ns);
            work += 1;
        }
        if let Some(req) = self.core.coord.resend_due(now_ns) {
            for s in &mut self.core.sinks {
                s.request(&req, now_ns);
            }
        }
        for i in 0..self.core.sinks.len() {
            self.scratch.clear();
            self.core.sinks[i].poll(now_ns, &mut self.scratch);
            let name = self.core.sinks[i].name().to_string();
            for ev in std::mem::take(&mut self.scratch) {
                work += 1;
                match ev {
                    SinkEvent::CheckpointDone => {
                        if self.core.coord.outstanding().is_none()
                            && !self.core.sinks[i].accepts_unsolicited()
                        {
                            // Answers nothing we asked for: applying it would release every
                            // held primary on the peer's word alone.
                            self.core.coord.unsolicited_ignored();
                            self.core.unsolicited_log.log(
                                &format!("{name}: checkpoint done that answers no request ignored (accept_unsolicited = false)"),
                                std::time::Instant::now(),
                            );
                            continue;
                        }
                        // The error is counted and the request stays outstanding.
                        let _ = self.core.complete(&name, now_ns);
                    }
                    SinkEvent::Up => self.core.outbox.push(Event::LinkUp {
                        link: name.clone(),
                        time_ns: now_ns,
                    }),
                    SinkEvent::Down(reason) => self.core.outbox.push(Event::LinkDown {
                        link: name.clone(),
                        reason,
                        time_ns: now_ns,
                    }),
                    SinkEvent::ColoExit(_) => {
                        if self.core.follow_colo_exit && self.core.failovers == 0 {
                            // The error is in the stages' log; the event says what happened.
                            let _ = self.core.failover(&format!("{name}-colo-exit"), now_ns);
                        }
                    }
                }
            }
        }
        self.flush_outbox();
        self.core.server_stats = self.server.stats();
        work += self.server.poll(now_ns, &mut self.core);
        self.flush_outbox();
        if let Some(mut m) = self.metrics.take() {
            // Taken out for the call so that rendering can read the rest of `self`.
            work += m.poll(&mut |st| self.metrics_text(st));
            self.metrics = Some(m);
        }
        if self
            .shared_at
            .is_none_or(|t| now_ns.saturating_sub(t) >= SNAPSHOT_PERIOD_NS)
        {
            let s = self.stats();
            *self.shared.lock().unwrap_or_else(|p| p.into_inner()) = s;
            self.shared_at = Some(now_ns);
        }
        PollOutcome {
            work,
            shutdown: self.core.shutdown,
        }
    }

    /// Block until there is something to poll: an input queued by an [`EventSender`], a
    /// sink's, control client's or metrics client's descriptor ready, a sink's or client's
    /// deadline (see [`CheckpointSink::wait_fds`]), or `max` passed. Call it after a
    /// [`Management::poll`] that found no work; an idle proxy then wakes `1 / max` times a
    /// second instead of polling every millisecond.
    pub fn wait(&self, now_ns: u64, max: Duration) {
        let mut fds: Vec<(BorrowedFd<'_>, bool)> = Vec::with_capacity(8);
        let mut limit = max.as_nanos().min(u128::from(u64::MAX)) as u64;
        for s in &self.core.sinks {
            if let Some(ns) = s.wait_fds(now_ns, &mut fds) {
                limit = limit.min(ns);
            }
        }
        if let Some(ns) = self.server.wait_fds(&mut fds) {
            limit = limit.min(ns);
        }
        let mut pfds: Vec<PollFd<'_>> =
            Vec::with_capacity(fds.len() + 2 + metrics::MAX_CONNECTIONS);
        if let Some(m) = &self.metrics {
            for (fd, flags) in m.fds() {
                pfds.push(PollFd::from_borrowed_fd(fd, flags));
            }
            if m.stats().clients > 0 {
                limit = limit.min(sink::TICK_NS);
            }
        }
        match self.bell.as_fd() {
            Some(fd) => pfds.push(PollFd::from_borrowed_fd(fd, PollFlags::IN)),
            // No eventfd: nothing could wake us for an input, so poll as often as before.
            None => limit = limit.min(sink::TICK_NS),
        }
        for (fd, out) in fds {
            let flags = if out {
                PollFlags::IN | PollFlags::OUT
            } else {
                PollFlags::IN
            };
            pfds.push(PollFd::from_borrowed_fd(fd, flags));
        }
        self.bell.announce();
        // The re-check after announcing: an input queued before it never rang the bell.
        if self.rx.is_empty() && limit > 0 {
            let ts = Timespec {
                tv_sec: (limit / 1_000_000_000) as _,
                tv_nsec: (limit % 1_000_000_000) as _,
            };
            // EINTR (a signal) or any error: the caller polls again, which is always safe.
            let _ = rustix::event::poll(&mut pfds, Some(&ts));
        }
        self.bell.retract();
        self.bell.drain();
    }

    /// A snapshot of [`Management::stats`] refreshed by `poll` at most every 100 ms, for other
    /// threads (live status line, telemetry `/colo/mgmt`).
    pub fn stats_handle(&self) -> Arc<Mutex<MgmtStats>> {
        self.shared.clone()
    }

    /// Counters.
    pub fn stats(&self) -> MgmtStats {
        let mut s = self.core.stats();
        s.control = self.server.stats();
        s
    }

    /// Poll until `stop` is set or a `shutdown` command arrives, waiting (at most `idle`, see
    /// [`Management::wait`]) when a poll did nothing. `clock` gives the data-plane clock in ns.
    pub fn run(&mut self, stop: &AtomicBool, idle: Duration, clock: &dyn Fn() -> u64) {
        while !stop.load(Ordering::Relaxed) {
            let out = self.poll(clock());
            if out.shutdown {
                break;
            }
            if out.work == 0 {
                self.wait(clock(), idle);
            }
        }
    }

    fn flush_outbox(&mut self) {
        for ev in self.core.outbox.drain(..) {
            self.server.broadcast(&ev);
        }
    }
}

impl Core {
    fn stats(&self) -> MgmtStats {
        MgmtStats {
            divergences_by_reason: self.divergences.clone(),
            divergences: self.divergences_total,
            checkpoint: self.coord.stats(),
            sinks: self
                .sinks
                .iter()
                .map(|s| (s.name().to_string(), s.stats()))
                .collect(),
            control: self.server_stats,
            capture: self.capture.as_ref().map(CaptureWriter::stats),
            capture_on: self.capture_on,
            failovers: self.failovers,
            failover: self.failover,
            link_silent: self.link_silent,
            lcore_failures: self.lcore_failures,
            inputs: self.inputs,
            inputs_dropped: self.dropped.load(Ordering::Relaxed),
        }
    }

    fn input(&mut self, input: Input, now_ns: u64) {
        self.inputs += 1;
        let (ev, packets) = match input {
            Input::Event(ev) => (ev, None),
            Input::Divergence(ev, p) => (ev, Some(p)),
            Input::Compare(d) => (Event::from(&d), None),
        };
        match &ev {
            Event::Divergence { flow, reason, .. } => {
                self.divergences_total += 1;
                *self.divergences.entry(reason.clone()).or_default() += 1;
                let (flow, reason) = (flow.clone(), reason.clone());
                self.outbox.push(ev);
                if let (true, Some(w), Some(p)) = (self.capture_on, self.capture.as_mut(), packets)
                {
                    // Errors are counted in the capture stats; a new kind of error is logged.
                    let before = w.stats().last_error;
                    if let Err(e) = w.write(&p, now_ns) {
                        let e = e.to_string();
                        if before.as_deref() != Some(e.as_str()) {
                            eprintln!("warning: divergence capture: {e}");
                        }
                    }
                }
                self.request_checkpoint(&reason, Some(&flow), now_ns);
            }
            Event::CheckpointRequested { reason, flow, .. } => {
                let (reason, flow) = (reason.clone(), flow.clone());
                self.request_checkpoint(&reason, flow.as_deref(), now_ns);
            }
            Event::FailoverReport {
                gap_ns,
                held_released,
                held_released_bytes,
                held_dropped,
                held_dropped_bytes,
                ..
            } => {
                let f = &mut self.failover;
                f.reports += 1;
                if let Some(g) = gap_ns {
                    f.gap_ns = Some(f.gap_ns.map_or(*g, |x| x.max(*g)));
                }
                f.held_released += held_released;
                f.held_released_bytes += held_released_bytes;
                f.held_dropped += held_dropped;
                f.held_dropped_bytes += held_dropped_bytes;
                self.outbox.push(ev);
            }
            Event::LcoreFailed { .. } => {
                self.lcore_failures += 1;
                self.outbox.push(ev);
            }
            Event::LinkSequence {
                link, stream, lost, ..
            } => {
                // A frame lost on the link is a secondary segment that will never be compared
                // (its connection waits for the compare timeout, seconds) or a client frame the
                // SVM never got (a divergence to come): either way only a checkpoint ends it, so
                // ask now instead of when the timeout fires.
                let seen = self.link_lost.entry((link.clone(), *stream)).or_default();
                let grew = *lost > *seen;
                *seen = (*seen).max(*lost);
                self.outbox.push(ev);
                if grew {
                    self.request_checkpoint("link_loss", None, now_ns);
                }
            }
            Event::LinkSilent { .. } => {
                self.link_silent += 1;
                self.outbox.push(ev);
                if self.auto_failover && self.failovers == 0 {
                    // The error is in the reply of a command; here the event says it.
                    let _ = self.failover("link-loss", now_ns);
                }
            }
            _ => self.outbox.push(ev),
        }
    }

    /// Fail the data plane over (once per process: later calls only repeat the command,
    /// which the stages ignore).
    fn failover(&mut self, source: &str, now_ns: u64) -> Result<u64, String> {
        self.dp.failover()?;
        self.failovers += 1;
        self.outbox.push(Event::Failover {
            source: source.into(),
            time_ns: now_ns,
        });
        Ok(self.failovers)
    }

    fn request_checkpoint(&mut self, reason: &str, flow: Option<&str>, now_ns: u64) -> Option<u64> {
        let req = self.coord.request(reason, flow, now_ns)?;
        for s in &mut self.sinks {
            s.request(&req, now_ns);
        }
        self.outbox.push(Event::CheckpointRequested {
            id: req.id,
            reason: req.reason.clone(),
            flow: req.flow.clone(),
            time_ns: now_ns,
        });
        Some(req.id)
    }

    fn complete(&mut self, source: &str, now_ns: u64) -> Result<Option<u64>, String> {
        match self.dp.checkpoint_done() {
            Ok(()) => {
                let id = self.coord.completed(now_ns);
                self.outbox.push(Event::CheckpointDone {
                    id,
                    source: source.to_string(),
                    time_ns: now_ns,
                });
                Ok(id)
            }
            Err(e) => {
                self.coord.complete_failed();
                Err(e)
            }
        }
    }
}

impl Handler for Core {
    fn handle(&mut self, cmd: Command, now_ns: u64) -> Reply {
        match cmd {
            Command::Stats => Reply::ok(serde_json::json!({
                "dataplane": self.dp.stats(),
                "mgmt": self.stats(),
            })),
            Command::Flows { top } => Reply::ok(self.dp.flows(top)),
            Command::Events => Reply::err("events is handled by the server"),
            Command::Checkpoint { reason } => {
                let issued = self.request_checkpoint(&reason, None, now_ns);
                Reply::ok(serde_json::json!({
                    "issued": issued,
                    "outstanding": self.coord.outstanding().map(|r| r.id),
                }))
            }
            Command::CheckpointDone => match self.complete("control", now_ns) {
                Ok(id) => Reply::ok(serde_json::json!({ "completed": id })),
                Err(e) => Reply::err(format!("checkpoint-done: {e}")),
            },
            Command::Failover => match self.failover("control", now_ns) {
                Ok(n) => Reply::ok(serde_json::json!({ "failovers": n })),
                Err(e) => Reply::err(format!("failover: {e}")),
            },
            Command::Bypass(op) => match self.dp.bypass(op) {
                Ok(v) => Reply::ok(v),
                Err(e) => Reply::err(format!("bypass: {e}")),
            },
            Command::Capture { op } => {
                let on = op == CaptureOp::Start;
                if on && self.capture.is_none() {
                    return Reply::err("capture: no capture directory configured ([mgmt.capture])");
                }
                match self.dp.capture(on) {
                    Ok(()) => {
                        self.capture_on = on;
                        if !on {
                            if let Some(w) = self.capture.as_mut() {
                                let _ = w.close();
                            }
                        }
                        Reply::ok(serde_json::json!({
                            "capture": on,
                            "file": self.capture.as_ref().and_then(|w| w.stats().current),
                        }))
                    }
                    Err(e) => Reply::err(format!("capture: {e}")),
                }
            }
            Command::Shutdown => {
                self.dp.shutdown();
                self.shutdown = true;
                self.outbox.push(Event::Shutdown { time_ns: now_ns });
                Reply::ok(serde_json::json!("shutting down"))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn load(name: &str) -> Config {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("dpdk-config")
            .join(name);
        Config::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"))
    }

    #[test]
    fn from_config_maps_mgmt_and_compare_notify_dev() {
        let m = MgmtConfig::from_config(&load("primary.toml"));
        assert_eq!(
            m.server.unix_path.as_deref(),
            Some(std::path::Path::new("/run/colo-proxy/primary.sock"))
        );
        assert_eq!(m.server.unix_mode, 0o600);
        let q = m.qmp.unwrap();
        assert_eq!(
            (q.socket.to_str(), q.checkpoint_delay_ms),
            (Some("/var/run/colo/pvm-qmp.sock"), 20000)
        );
        assert!(m.capture.is_some());
        assert!(m.xen.is_none());

        let m = MgmtConfig::from_config(&load("compare-dropin.toml"));
        let x = m.xen.unwrap();
        assert_eq!(
            x.endpoint,
            xen::NotifyEndpoint::ListenTcp("127.0.0.1:9009".parse().unwrap())
        );
        assert_eq!(x.reconnect_ns, 1_000_000_000);
    }
}
