//! The inter-host link as the stages see it: a transmit side (the mirror stream on the primary,
//! the SVM's output on the secondary) and a receive side (the other stream).
//!
//! Transports:
//! - a DPDK port with the encapsulation of [`crate::link::encap`] (stream id + sequence number,
//!   so loss and reordering are counted), or raw frames;
//! - a QEMU-framed TCP/UNIX socket ([`crate::link::socket::FramedSocket`]), so either end can be
//!   QEMU's own filter-mirror / filter-redirector / colo-compare.
//!
//! Loss, reordering, duplication and resyncs on an encapsulated link are counted per frame
//! ([`Counter::LinkLost`], [`Counter::LinkReordered`]) and reported to management as
//! [`Event::LinkSequence`] by a [`SeqReporter`] at housekeeping time (nothing per packet).
//!
//! The mirror hands the link zero-copy clones; a shared mbuf cannot take a header in place, so
//! the encapsulating transmitter copies those (and only those) into a fresh mbuf.

use std::collections::VecDeque;
use std::time::Instant;

use crate::control::event::LINK_SEQUENCE_PERIOD_NS;
use crate::control::Event;
use crate::dpdk::{Mbuf, MbufBurst, Mempool, RxQueue};
use crate::link::encap::{
    EncapRx, EncapTx, SeqEvent, SeqStats, DEFAULT_STREAMS, FLAG_HEARTBEAT, OVERHEAD,
};
use crate::link::socket::FramedSocket;
use crate::mgmt::EventSender;

use std::os::fd::AsRawFd;

use super::counters::{Counter, LcoreCounters};
use super::idle::{Cause, WaitSet};
use super::io::{unshare, whole_frames, TxBuf, BURST};
use super::lcore::LoopCtx;

/// Frames a socket receiver keeps decoded but not yet taken by its stage (mbufs: the
/// mempool sizing counts them, `config::sizing::SOCKET_RX_BACKLOG`).
pub const SOCKET_RX_BACKLOG: usize = 4096;
/// Output-buffer bytes a socket transmitter must have free to take a whole burst of
/// full-sized frames (with framing and vnet headers).
const SOCKET_BURST_ROOM: usize = BURST * 1600;
/// Read from the socket only while the backlog is below this.
const SOCKET_RX_REFILL: usize = 1024;

/// Transmit side of the link.
pub enum LinkTx {
    /// A DPDK port queue carrying frames as they are.
    RawPort(TxBuf),
    /// A DPDK port queue carrying encapsulated frames.
    EncapPort {
        /// The queue.
        tx: TxBuf,
        /// Sequence stamping for this stream.
        encap: EncapTx,
        /// Pool for copies of shared frames.
        pool: Mempool,
        /// When to send a heartbeat.
        hb: Heartbeat,
    },
    /// A QEMU-framed socket, and when to send a heartbeat on it.
    Socket(Box<FramedSocket>, Heartbeat),
    /// No link: frames are dropped and counted.
    Down,
}

impl LinkTx {
    /// Hand a frame to the link (ownership ends here: it is counted as sent or dropped).
    #[inline]
    pub fn push(&mut self, m: Mbuf, c: &LcoreCounters) {
        if let Err(reason) = self.try_push(m, c) {
            c.inc(reason);
        }
    }

    /// Hand a frame to the link, or free it and say why the link refused it (not counted:
    /// the mirror then drops the PVM's copy too and counts the client frame once). Frames
    /// queued on a port are counted when sent (or dropped by a later flush).
    #[inline]
    pub fn try_push(&mut self, m: Mbuf, c: &LcoreCounters) -> Result<(), Counter> {
        if crate::wire::is_runt(m.data()) {
            return Err(Counter::DropRunt);
        }
        match self {
            LinkTx::RawPort(tx) => {
                tx.push(m, c);
                Ok(())
            }
            LinkTx::EncapPort {
                tx, encap, pool, ..
            } => {
                // The mirror's clone is shared: the header needs a private copy.
                let mut m = if m.is_shared() {
                    match unshare(m, pool).filter(|m| m.headroom() as usize >= OVERHEAD) {
                        Some(copy) => copy,
                        None => return Err(Counter::DropNoMbuf),
                    }
                } else {
                    m
                };
                match encap.encap(&mut m, 0) {
                    Ok(_) => {
                        tx.push(m, c);
                        Ok(())
                    }
                    Err(_) => Err(Counter::DropUnsupported),
                }
            }
            LinkTx::Socket(s, _) => {
                // The socket copies the bytes into its output buffer; the mbuf is done.
                match s.send(0, m.data()) {
                    Ok(()) => {
                        c.inc(Counter::Tx);
                        Ok(())
                    }
                    Err(_) => Err(Counter::DropLinkDown),
                }
            }
            LinkTx::Down => Err(Counter::DropLinkDown),
        }
    }

    /// True when a whole burst can be pushed without anything dropped for lack of room
    /// (a port queue with nothing pending, a socket with room in its output buffer).
    #[inline]
    pub fn has_room_for_burst(&self) -> bool {
        match self {
            LinkTx::RawPort(tx) | LinkTx::EncapPort { tx, .. } => tx.has_room_for_burst(),
            LinkTx::Socket(s, _) => {
                s.config().out_buf.saturating_sub(s.pending_out()) >= SOCKET_BURST_ROOM
            }
            LinkTx::Down => true,
        }
    }

    /// Send what is queued, keeping what the device does not take (see
    /// [`TxBuf::try_flush`]); a socket writes what the kernel takes.
    #[inline]
    pub fn try_flush(&mut self, c: &LcoreCounters) {
        match self {
            LinkTx::RawPort(tx) | LinkTx::EncapPort { tx, .. } => {
                tx.try_flush(c);
            }
            LinkTx::Socket(s, _) => {
                s.flush();
            }
            LinkTx::Down => {}
        }
    }

    /// Send what is queued.
    #[inline]
    pub fn flush(&mut self, c: &LcoreCounters) {
        match self {
            LinkTx::RawPort(tx) | LinkTx::EncapPort { tx, .. } => tx.flush(c),
            LinkTx::Socket(s, _) => {
                s.flush();
            }
            LinkTx::Down => {}
        }
    }

    /// Periodic work: socket (re)connection.
    pub fn housekeeping(&mut self, cx: &LoopCtx) {
        let c = cx.counters;
        match self {
            LinkTx::Socket(s, hb) => {
                s.maintain(Instant::now());
                if hb.due(cx.now_ns) && s.send_heartbeat().is_ok() {
                    c.inc(Counter::HeartbeatsOut);
                }
                s.flush();
            }
            LinkTx::EncapPort {
                tx,
                encap,
                pool,
                hb,
            } => {
                if !hb.due(cx.now_ns) {
                    return;
                }
                // An empty inner frame with the heartbeat flag; a packet for accounting.
                let Some(mut m) = pool.alloc() else { return };
                c.inc(Counter::Generated);
                match encap.encap(&mut m, FLAG_HEARTBEAT) {
                    Ok(_) => {
                        c.inc(Counter::HeartbeatsOut);
                        tx.push(m, c);
                        tx.flush(c);
                    }
                    Err(_) => c.inc(Counter::DropUnsupported),
                }
            }
            _ => {}
        }
    }

    /// True when frames wait for a port queue to take them (its lcore must retry, not
    /// block); a socket's unwritten bytes instead wake the lcore through [`LinkTx::wait_fds`].
    pub fn port_pending(&self) -> bool {
        match self {
            LinkTx::RawPort(tx) | LinkTx::EncapPort { tx, .. } => tx.pending() > 0,
            _ => false,
        }
    }

    /// Interrupt mode: a socket with unwritten bytes wakes its lcore when it can write.
    pub fn wait_fds(&self, ws: &mut WaitSet) {
        if let LinkTx::Socket(s, _) = self {
            if s.pending_out() > 0 {
                if let Some(fd) = s.wait_fd() {
                    ws.writable(fd.as_raw_fd(), Cause::Socket);
                }
            }
        }
    }

    /// Send a heartbeat every `period_ns` (0: never; the default).
    pub fn with_heartbeat(mut self, period_ns: u64) -> Self {
        match &mut self {
            LinkTx::Socket(_, hb) | LinkTx::EncapPort { hb, .. } => {
                *hb = Heartbeat::every(period_ns)
            }
            _ => {}
        }
        self
    }
}

/// Receive side of the link.
pub enum LinkRx {
    /// A DPDK port queue carrying frames as they are.
    RawPort(RxQueue),
    /// A DPDK port queue carrying encapsulated frames.
    EncapPort {
        /// The queue.
        rx: RxQueue,
        /// Header check and per-stream sequence tracking.
        decap: Box<EncapRx>,
        /// Sequence anomalies → management events (`None`: counters only).
        report: Option<Box<SeqReporter>>,
        /// Peer liveness.
        live: Box<Liveness>,
    },
    /// A QEMU-framed socket; frames are copied into mbufs from `pool`.
    Socket {
        /// The socket.
        sock: Box<FramedSocket>,
        /// Pool for received frames.
        pool: Mempool,
        /// Decoded frames not yet taken (bounded).
        backlog: VecDeque<Mbuf>,
        /// Peer liveness.
        live: Box<Liveness>,
    },
    /// No link.
    Down,
}

/// When a heartbeat is due on a transmit side.
#[derive(Clone, Copy, Debug, Default)]
pub struct Heartbeat {
    period_ns: u64,
    next_ns: u64,
}

impl Heartbeat {
    /// Every `period_ns` (0: never).
    pub fn every(period_ns: u64) -> Self {
        Heartbeat {
            period_ns,
            next_ns: 0,
        }
    }

    /// True when one is due now (and schedules the next).
    #[inline]
    pub fn due(&mut self, now_ns: u64) -> bool {
        if self.period_ns == 0 || now_ns < self.next_ns {
            return false;
        }
        self.next_ns = now_ns.saturating_add(self.period_ns);
        true
    }
}

/// Whether the peer on a receive side is still talking: the time of its last frame, and a
/// `link-silent` event once it has been quiet for the timeout (after a heartbeat armed it).
#[derive(Default)]
pub struct Liveness {
    /// Report after this long without a frame (0: never).
    pub timeout_ns: u64,
    /// The peer sent at least one heartbeat (so it is a colo-proxy that sends them).
    pub armed: bool,
    /// Data-plane time of the last frame (data or heartbeat).
    pub last_heard_ns: u64,
    /// Silence already reported (until the peer is heard again).
    pub silent: bool,
    /// Socket links: frames + heartbeats counted at the last look.
    seen: u64,
    events: Option<EventSender>,
    link: &'static str,
}

impl Liveness {
    #[inline]
    fn heard(&mut self, now_ns: u64) {
        self.last_heard_ns = now_ns;
        if self.silent {
            self.silent = false;
            if let Some(ev) = &self.events {
                // Back from silence: after a failover this is split-brain (see OPERATIONS.md).
                ev.event(Event::LinkUp {
                    link: self.link.to_string(),
                    time_ns: now_ns,
                });
            }
        }
    }

    fn check(&mut self, now_ns: u64) {
        if self.timeout_ns == 0 || !self.armed || self.silent {
            return;
        }
        if now_ns.saturating_sub(self.last_heard_ns) < self.timeout_ns {
            return;
        }
        self.silent = true;
        if let Some(ev) = &self.events {
            ev.event(Event::LinkSilent {
                link: self.link.to_string(),
                last_heard_ns: self.last_heard_ns,
                timeout_ms: self.timeout_ns / 1_000_000,
                time_ns: now_ns,
            });
        }
    }
}

/// Reports an encapsulated link's sequence anomalies to management: for every stream whose
/// gap, late, duplicate or resync count moved since its last event, one
/// [`Event::LinkSequence`], at most once per [`LINK_SEQUENCE_PERIOD_NS`] per link.
pub struct SeqReporter {
    events: EventSender,
    link: &'static str,
    /// Each stream's counters as last reported.
    reported: [SeqStats; DEFAULT_STREAMS],
    next_ns: u64,
}

impl SeqReporter {
    /// A reporter for the link called `link` (`mirror`, `secondary-out`).
    pub fn new(events: EventSender, link: &'static str) -> Self {
        SeqReporter {
            events,
            link,
            reported: [SeqStats::default(); DEFAULT_STREAMS],
            next_ns: 0,
        }
    }

    /// Send what changed in `decap`'s counters, if the period allows. Returns the events
    /// queued (an event management could not take is retried next period).
    pub fn report(&mut self, decap: &EncapRx, now_ns: u64) -> usize {
        if now_ns < self.next_ns {
            return 0;
        }
        let mut sent = 0;
        for (stream, last) in self.reported.iter_mut().enumerate() {
            let Some(s) = decap.stream_stats(stream as u8) else {
                continue;
            };
            let anomalies = |x: &SeqStats| (x.gaps, x.reordered, x.duplicates, x.resyncs);
            if anomalies(&s) == anomalies(last) {
                continue;
            }
            let ev = Event::LinkSequence {
                link: self.link.to_string(),
                stream: stream as u8,
                received: s.received,
                lost: s.lost,
                gaps: s.gaps,
                reordered: s.reordered,
                duplicates: s.duplicates,
                resyncs: s.resyncs,
                new_gaps: s.gaps - last.gaps,
                new_reordered: s.reordered - last.reordered,
                new_duplicates: s.duplicates - last.duplicates,
                new_resyncs: s.resyncs - last.resyncs,
                time_ns: now_ns,
            };
            if self.events.event(ev) {
                *last = s;
                sent += 1;
            }
        }
        if sent > 0 {
            self.next_ns = now_ns.saturating_add(LINK_SEQUENCE_PERIOD_NS);
        }
        sent
    }
}

impl LinkRx {
    /// An encapsulated port receiver; sequence anomalies go to `report` when given.
    pub fn encap_port(rx: RxQueue, ethertype: u16, report: Option<SeqReporter>) -> Self {
        LinkRx::EncapPort {
            rx,
            decap: Box::new(EncapRx::new(ethertype)),
            report: report.map(Box::new),
            live: Box::default(),
        }
    }

    /// A socket receiver.
    pub fn socket(sock: FramedSocket, pool: Mempool) -> Self {
        LinkRx::Socket {
            sock: Box::new(sock),
            pool,
            backlog: VecDeque::with_capacity(SOCKET_RX_BACKLOG),
            live: Box::default(),
        }
    }

    /// Receive into `burst`; counts [`Counter::Rx`] for every frame taken from the link.
    #[inline]
    pub fn recv(&mut self, burst: &mut MbufBurst<BURST>, cx: &LoopCtx) -> usize {
        let c = cx.counters;
        match self {
            LinkRx::RawPort(rx) => {
                let from = burst.len();
                let n = rx.rx_burst(burst);
                c.add(Counter::Rx, n as u64);
                whole_frames(burst, from, c);
                n
            }
            LinkRx::EncapPort {
                rx, decap, live, ..
            } => {
                let mut tmp = MbufBurst::<BURST>::new();
                let n = rx.rx_burst(&mut tmp);
                c.add(Counter::Rx, n as u64);
                whole_frames(&mut tmp, 0, c);
                if n > 0 {
                    live.heard(cx.now_ns);
                }
                for mut m in tmp.drain() {
                    match decap.decap(&mut m) {
                        Ok((h, ev)) => {
                            match ev {
                                SeqEvent::InOrder | SeqEvent::First => {}
                                SeqEvent::Gap { lost, .. } => {
                                    c.add(Counter::LinkLost, u64::from(lost))
                                }
                                _ => c.inc(Counter::LinkReordered),
                            }
                            if h.flags & FLAG_HEARTBEAT != 0 {
                                live.armed = true;
                                drop(m);
                                c.inc(Counter::HeartbeatsIn);
                                continue;
                            }
                            // burst has room: tmp held at most BURST and burst was empty.
                            if let Err(m) = burst.push(m) {
                                drop(m);
                                c.inc(Counter::DropRingFull);
                            }
                        }
                        Err(_) => c.inc(Counter::DropUnsupported),
                    }
                }
                n
            }
            LinkRx::Socket {
                sock,
                pool,
                backlog,
                ..
            } => {
                if backlog.len() < SOCKET_RX_REFILL {
                    sock.poll_recv(|vnet_hdr_len, frame| {
                        c.inc(Counter::Rx);
                        // QEMU puts the virtio-net header in front of the Ethernet frame.
                        let eth = frame.get(vnet_hdr_len as usize..).unwrap_or(&[]);
                        if backlog.len() >= SOCKET_RX_BACKLOG {
                            c.inc(Counter::DropRingFull);
                            return;
                        }
                        match pool.alloc() {
                            Some(mut m) => match m.set_data(eth) {
                                Ok(()) => backlog.push_back(m),
                                Err(_) => c.inc(Counter::DropUnsupported),
                            },
                            None => c.inc(Counter::DropNoMbuf),
                        }
                    });
                }
                let mut n = 0;
                while !burst.is_full() {
                    let Some(m) = backlog.pop_front() else { break };
                    // is_full() was checked, so push cannot fail.
                    if let Err(m) = burst.push(m) {
                        backlog.push_front(m);
                        break;
                    }
                    n += 1;
                }
                n
            }
            LinkRx::Down => 0,
        }
    }

    /// Periodic work: socket (re)connection, sequence anomaly events, peer liveness.
    pub fn housekeeping(&mut self, cx: &LoopCtx) {
        match self {
            LinkRx::Socket { sock, live, .. } => {
                sock.maintain(Instant::now());
                // Frames and heartbeats (zero-length frames) since the last look.
                let st = sock.stats();
                if st.empty_in > 0 {
                    live.armed = true;
                }
                let seen = st.frames_in + st.empty_in;
                if seen != live.seen {
                    live.seen = seen;
                    live.heard(cx.now_ns);
                }
                live.check(cx.now_ns);
            }
            LinkRx::EncapPort {
                decap,
                report,
                live,
                ..
            } => {
                if let Some(r) = report {
                    r.report(decap, cx.now_ns);
                }
                live.check(cx.now_ns);
            }
            _ => {}
        }
    }

    /// Report the peer as silent (a `link-silent` event to `events`) after `timeout_ns`
    /// without a frame, once it has sent a heartbeat (a QEMU peer never does, so the
    /// detector never arms against one). 0: never.
    pub fn with_liveness(
        mut self,
        timeout_ns: u64,
        events: EventSender,
        link: &'static str,
    ) -> Self {
        match &mut self {
            LinkRx::Socket { live, .. } | LinkRx::EncapPort { live, .. } => {
                live.timeout_ns = timeout_ns;
                live.events = Some(events);
                live.link = link;
            }
            _ => {}
        }
        self
    }

    /// Interrupt mode: a socket link wakes its lcore when a frame (or a peer) arrives. Port
    /// links wake through the port's [`super::idle::IdleInputs`].
    pub fn wait_fds(&self, ws: &mut WaitSet) {
        if let LinkRx::Socket { sock, .. } = self {
            if let Some(fd) = sock.wait_fd() {
                ws.readable(fd.as_raw_fd(), Cause::Socket);
            }
        }
    }

    /// The liveness detector (tests, stats).
    pub fn liveness(&self) -> Option<&Liveness> {
        match self {
            LinkRx::Socket { live, .. } | LinkRx::EncapPort { live, .. } => Some(live),
            _ => None,
        }
    }
}
