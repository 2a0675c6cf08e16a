//! Xen `notify_dev` checkpoint sink (QEMU colo-compare's remote notify protocol, reference §3.6):
//! frames are a u32 big-endian length and ASCII text without NUL. Xen sends
//! `COLO_USERSPACE_PROXY_INIT` (we answer `COLO_COMPARE_GET_XEN_INIT`) and `COLO_CHECKPOINT`
//! (checkpoint done); we send `DO_CHECKPOINT` for each checkpoint request. Incoming frames carry
//! an extra 4-byte vnet_hdr_len field when `vnet_hdr_support` is on; outgoing ones never do.
//!
//! The message codec is `control::xen` (shared with the link layer); deframing goes through
//! [`NotifyCodec`] so another framing could be plugged in for tests or other frames.
//!
//! Whoever talks on this channel can release every held primary (`COLO_CHECKPOINT`), so in
//! listen mode ([`crate::link::access`]): TCP peers must be in the allowlist (loopback only by
//! default), a UNIX socket is created 0600 from its first moment, the current peer is kept
//! while it is alive (a second connection is refused, logged and counted; `replace_peer`
//! restores newest-wins), and TCP keepalive drops a peer whose host died within its bound so
//! the restarted peer gets in. A `COLO_CHECKPOINT` that answers no request is counted and
//! ignored by management unless `accept_unsolicited` is set.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::link::access::{self, Allowlist, Current, Keepalive, PeerPolicy, RefusalLog, Verdict};

use serde::Serialize;

use super::coordinator::CheckpointRequest;
use super::sink::{Backoff, CheckpointSink, SinkEvent};
use crate::net::{Listener, ReadOutcome, Stream};

pub use crate::control::xen::{XenIn, XenOut};

/// Longest notify frame accepted; the protocol's messages are a few dozen bytes.
pub const MAX_NOTIFY_FRAME: usize = 4096;

/// A decoded incoming notify message: a known one, or `Err(len)` for anything else (counted and
/// ignored, as QEMU does).
pub type NotifyMsg = Result<XenIn, usize>;

/// The notify framing.
pub trait NotifyCodec: Send {
    /// Append one outgoing frame (no vnet field).
    fn encode(&self, msg: XenOut, out: &mut Vec<u8>);
    /// Decode one incoming frame from the front of `buf`: `Ok(None)` = need more bytes,
    /// `Ok(Some((msg, used)))`, or `Err` = the stream is unusable.
    fn decode(&self, buf: &[u8], vnet_hdr: bool) -> Result<Option<(NotifyMsg, usize)>, String>;
}

/// QEMU chardev framing (u32 BE length, optional vnet field on input) around `control::xen`.
#[derive(Debug, Default, Clone, Copy)]
pub struct QemuCodec;

impl NotifyCodec for QemuCodec {
    fn encode(&self, msg: XenOut, out: &mut Vec<u8>) {
        let mut b = [0u8; crate::control::xen::MAX_OUT_LEN];
        if let Some(n) = msg.encode(&mut b) {
            out.extend_from_slice(&b[..n]);
        }
    }

    fn decode(&self, buf: &[u8], vnet_hdr: bool) -> Result<Option<(NotifyMsg, usize)>, String> {
        let hdr = if vnet_hdr { 8 } else { 4 };
        let Some(len) = buf.get(..4) else {
            return Ok(None);
        };
        let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
        if len > MAX_NOTIFY_FRAME {
            return Err(format!(
                "notify frame of {len} bytes exceeds {MAX_NOTIFY_FRAME}"
            ));
        }
        let Some(body) = buf.get(hdr..hdr + len) else {
            return Ok(None);
        };
        Ok(Some((XenIn::parse(body).map_err(|u| u.len), hdr + len)))
    }
}

/// Where the notify channel is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotifyEndpoint {
    /// Listen on a UNIX path (mode 0600); one peer at a time.
    ListenUnix(PathBuf),
    /// Listen on TCP.
    ListenTcp(SocketAddr),
    /// Connect to a UNIX path, reconnecting.
    ConnectUnix(PathBuf),
    /// Connect to TCP, reconnecting.
    ConnectTcp(SocketAddr),
}

/// Xen sink settings.
#[derive(Debug, Clone)]
pub struct XenConfig {
    /// Where.
    pub endpoint: NotifyEndpoint,
    /// Incoming frames carry the vnet_hdr_len field.
    pub vnet_hdr_support: bool,
    /// First reconnect delay (client mode); doubles up to 16× on repeated failures.
    pub reconnect_ns: u64,
    /// Listen mode: who is admitted (TCP: loopback only unless an allowlist is given).
    pub policy: PeerPolicy,
    /// TCP keepalive bound (listen and connect mode); `None`: off.
    pub keepalive: Option<Keepalive>,
    /// Apply a `COLO_CHECKPOINT` that answers no request (releases every held primary).
    pub accept_unsolicited: bool,
}

impl XenConfig {
    /// `endpoint` with the defaults: no vnet field, 1 s reconnect, loopback-only TCP peers,
    /// the live peer kept, 5 s keepalive, unsolicited completions ignored.
    pub fn new(endpoint: NotifyEndpoint) -> Self {
        XenConfig {
            endpoint,
            vnet_hdr_support: false,
            reconnect_ns: 1_000_000_000,
            policy: PeerPolicy {
                allow: Some(Allowlist::loopback()),
                replace_peer: false,
            },
            keepalive: Some(Keepalive {
                timeout: Duration::from_millis(access::DEFAULT_KEEPALIVE_MS),
            }),
            accept_unsolicited: false,
        }
    }
}

/// Xen sink counters.
#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct XenStats {
    /// `DO_CHECKPOINT` frames written to the socket.
    pub sent: u64,
    /// Requests queued while no peer was connected (sent on connect).
    pub deferred: u64,
    /// Handshakes answered.
    pub handshakes: u64,
    /// `COLO_CHECKPOINT` received.
    pub checkpoint_done: u64,
    /// Unknown messages.
    pub unknown: u64,
    /// Peers connected.
    pub connects: u64,
    /// Peers lost (closed, error, protocol violation).
    pub disconnects: u64,
    /// Peers refused: address not in the allowlist.
    pub refused_not_allowed: u64,
    /// Peers refused: the current peer is alive.
    pub refused_busy: u64,
    /// Live peers replaced by a newer one (`replace_peer = true`).
    pub replaced: u64,
    /// Peers lost to a socket error (reset, keepalive or user timeout) rather than a close.
    pub dead_peers: u64,
    /// Connected now.
    pub connected: bool,
}

/// The Xen notify sink.
pub struct XenSink {
    cfg: XenConfig,
    codec: Box<dyn NotifyCodec>,
    listener: Option<Listener>,
    conn: Option<Stream>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// A request arrived while disconnected.
    pending: bool,
    backoff: Backoff,
    stats: XenStats,
    refusals: RefusalLog,
}

impl XenSink {
    /// Create the sink (binds now in listen mode; connects lazily in client mode).
    pub fn new(cfg: XenConfig) -> std::io::Result<XenSink> {
        Self::with_codec(cfg, Box::new(QemuCodec))
    }

    /// Create the sink with another framing implementation.
    pub fn with_codec(cfg: XenConfig, codec: Box<dyn NotifyCodec>) -> std::io::Result<XenSink> {
        let listener = match &cfg.endpoint {
            NotifyEndpoint::ListenUnix(p) => {
                // Replace only a stale socket; never delete another kind of file.
                match std::fs::symlink_metadata(p) {
                    Ok(m) if m.file_type().is_socket() => {
                        if UnixStream::connect(p).is_ok() {
                            return Err(std::io::Error::new(
                                std::io::ErrorKind::AddrInUse,
                                format!("{} is served by another process", p.display()),
                            ));
                        }
                        let _ = std::fs::remove_file(p);
                    }
                    Ok(_) => {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::AlreadyExists,
                            format!("{} exists and is not a socket", p.display()),
                        ))
                    }
                    Err(_) => {}
                }
                // Whoever can connect can release held packets: owner only, from the start.
                let l = access::bind_unix(p, 0o600, None)?;
                l.set_nonblocking(true)?;
                Some(Listener::Unix(l, p.clone()))
            }
            NotifyEndpoint::ListenTcp(a) => {
                let l = TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Some(Listener::Tcp(l))
            }
            _ => None,
        };
        let backoff = Backoff::new(cfg.reconnect_ns, cfg.reconnect_ns.saturating_mul(16));
        Ok(XenSink {
            codec,
            listener,
            conn: None,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            pending: false,
            backoff,
            stats: XenStats::default(),
            refusals: RefusalLog::new(format!("xen notify {:?}", cfg.endpoint)),
            cfg,
        })
    }

    /// Bound TCP address in listen mode.
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(Listener::tcp_addr)
    }

    /// Counters.
    pub fn xen_stats(&self) -> XenStats {
        XenStats {
            connected: self.conn.is_some(),
            ..self.stats
        }
    }

    fn drop_conn(&mut self, why: String, out: &mut Vec<SinkEvent>, now_ns: u64) {
        if self.conn.take().is_some() {
            self.stats.disconnects += 1;
            out.push(SinkEvent::Down(why));
        }
        self.rbuf.clear();
        self.wbuf.clear();
        self.backoff.failed(now_ns);
    }

    fn adopt(&mut self, conn: Stream, out: &mut Vec<SinkEvent>) {
        if conn.set_nonblocking(true).is_err() {
            return;
        }
        if let (Some(k), Stream::Tcp(s)) = (&self.cfg.keepalive, &conn) {
            if let Err(e) = k.apply(s) {
                eprintln!("warning: xen notify: cannot set TCP keepalive ({e})");
            }
        }
        if self.conn.is_some() {
            self.stats.disconnects += 1;
        }
        self.conn = Some(conn);
        self.rbuf.clear();
        self.wbuf.clear();
        self.stats.connects += 1;
        self.backoff.succeeded();
        out.push(SinkEvent::Up);
        if self.pending {
            self.pending = false;
            self.codec.encode(XenOut::DoCheckpoint, &mut self.wbuf);
            self.stats.sent += 1;
        }
    }

    /// The current connection's state, without reading it.
    fn current(&self) -> Current {
        match &self.conn {
            None => Current::None,
            Some(s) => access::probe(s.as_fd(), true),
        }
    }

    /// Apply the peer policy to an accepted connection.
    fn consider(
        &mut self,
        c: Stream,
        peer: Option<SocketAddr>,
        now_ns: u64,
        out: &mut Vec<SinkEvent>,
    ) {
        let mut current = self.current();
        if current == Current::Gone {
            // Reset or timed out under us (keepalive): the newcomer may have its place.
            self.stats.dead_peers += 1;
            self.drop_conn("peer gone".into(), out, now_ns);
            current = Current::None;
        }
        // The current peer is read every poll before accepting, so a closing one has been
        // read to its end already: no waiting slot here.
        let shown = peer.map_or_else(|| "(unix)".to_string(), |a| a.to_string());
        match self.cfg.policy.decide(peer.map(|a| a.ip()), current, false) {
            Verdict::RefuseNotAllowed => {
                self.stats.refused_not_allowed += 1;
                self.refusals
                    .refused(&shown, "address not in the allow list", Instant::now());
            }
            Verdict::RefuseBusy | Verdict::Wait => {
                self.stats.refused_busy += 1;
                self.refusals.refused(
                    &shown,
                    "the current peer is alive (replace_peer = false)",
                    Instant::now(),
                );
            }
            Verdict::Admit => self.adopt(c, out),
            Verdict::Replace => {
                self.stats.replaced += 1;
                self.adopt(c, out);
            }
        }
    }

    fn connect_or_accept(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>) {
        // A bounded number of knocks per poll, so a flood cannot stall management.
        for _ in 0..8 {
            let Some(l) = &self.listener else { break };
            let fresh = l.accept().ok();
            match fresh {
                Some((c, peer)) => self.consider(c, peer, now_ns, out),
                None => break,
            }
        }
        if self.listener.is_some() || self.conn.is_some() || !self.backoff.due(now_ns) {
            return;
        }
        let r = match &self.cfg.endpoint {
            NotifyEndpoint::ConnectUnix(p) => UnixStream::connect(p).map(Stream::Unix),
            NotifyEndpoint::ConnectTcp(a) => {
                TcpStream::connect_timeout(a, Duration::from_millis(100)).map(Stream::Tcp)
            }
            _ => return,
        };
        match r {
            Ok(c) => self.adopt(c, out),
            Err(_) => self.backoff.failed(now_ns),
        }
    }
}

impl CheckpointSink for XenSink {
    fn name(&self) -> &str {
        "xen"
    }

    fn request(&mut self, _req: &CheckpointRequest, _now_ns: u64) {
        if self.conn.is_some() {
            self.codec.encode(XenOut::DoCheckpoint, &mut self.wbuf);
            self.stats.sent += 1;
        } else if !self.pending {
            self.pending = true;
            self.stats.deferred += 1;
        }
    }

    fn poll(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>) {
        // Read the current peer first: one that closed is then gone before a newcomer is
        // looked at.
        self.read_current(now_ns, out);
        self.connect_or_accept(now_ns, out);
        if let Some(Err(e)) = self.conn.as_mut().map(|c| c.flush_from(&mut self.wbuf)) {
            self.drop_conn(e, out, now_ns);
        }
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.xen_stats()).unwrap_or_default()
    }

    fn accepts_unsolicited(&self) -> bool {
        self.cfg.accept_unsolicited
    }

    fn wait_fds<'a>(&'a self, now_ns: u64, fds: &mut Vec<(BorrowedFd<'a>, bool)>) -> Option<u64> {
        if let Some(l) = &self.listener {
            fds.push((l.as_fd(), false));
        }
        match &self.conn {
            Some(c) => {
                fds.push((c.as_fd(), !self.wbuf.is_empty()));
                None
            }
            // Client mode: the next connect attempt.
            None if self.listener.is_none() => Some(self.backoff.next_ns.saturating_sub(now_ns)),
            None => None,
        }
    }
}

impl XenSink {
    fn read_current(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>) {
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        // What a peer sent before closing is still applied below.
        let closed = match conn.read_into(&mut self.rbuf, 64 * 1024) {
            ReadOutcome::Closed(why) => Some(why),
            ReadOutcome::Data => None,
        };
        let mut used = 0;
        let mut err = None;
        loop {
            match self
                .codec
                .decode(&self.rbuf[used..], self.cfg.vnet_hdr_support)
            {
                Ok(None) => break,
                Ok(Some((msg, n))) => {
                    used += n;
                    match msg {
                        Ok(XenIn::ProxyInit) => {
                            self.stats.handshakes += 1;
                            self.codec.encode(XenOut::GetXenInit, &mut self.wbuf);
                        }
                        Ok(XenIn::CheckpointDone) => {
                            self.stats.checkpoint_done += 1;
                            out.push(SinkEvent::CheckpointDone);
                        }
                        Err(_) => self.stats.unknown += 1,
                    }
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        self.rbuf.drain(..used);
        if let Some(e) = err {
            self.drop_conn(format!("protocol error: {e}"), out, now_ns);
            return;
        }
        if let Some(why) = closed {
            if why != "peer closed" {
                self.stats.dead_peers += 1;
            }
            self.drop_conn(why, out, now_ns);
        }
    }
}
