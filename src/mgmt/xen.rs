//! Xen `notify_dev` checkpoint sink (QEMU colo-compare's remote notify protocol, reference §3.6):
//! frames are a u32 big-endian length and ASCII text without NUL. Xen sends
//! `COLO_USERSPACE_PROXY_INIT` (we answer `COLO_COMPARE_GET_XEN_INIT`) and `COLO_CHECKPOINT`
//! (checkpoint done); we send `DO_CHECKPOINT` for each checkpoint request. Incoming frames carry
//! an extra 4-byte vnet_hdr_len field when `vnet_hdr_support` is on; outgoing ones never do.
//!
//! The message codec is `control::xen` (shared with the link layer); deframing goes through
//! [`NotifyCodec`] so another framing could be plugged in for tests or other frames.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

use super::coordinator::CheckpointRequest;
use super::sink::{Backoff, CheckpointSink, Conn, ReadOutcome, SinkEvent};

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
    /// Listen on a UNIX path; one peer at a time (a new peer replaces the old one).
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
    /// Connected now.
    pub connected: bool,
}

enum Listener {
    Unix(UnixListener),
    Tcp(TcpListener),
}

/// The Xen notify sink.
pub struct XenSink {
    cfg: XenConfig,
    codec: Box<dyn NotifyCodec>,
    listener: Option<Listener>,
    conn: Option<Conn>,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// A request arrived while disconnected.
    pending: bool,
    backoff: Backoff,
    stats: XenStats,
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
                if std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
                    && UnixStream::connect(p).is_err()
                {
                    let _ = std::fs::remove_file(p);
                }
                let l = UnixListener::bind(p)?;
                // Whoever can connect can release held packets: owner only.
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o600))?;
                l.set_nonblocking(true)?;
                Some(Listener::Unix(l))
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
            cfg,
            codec,
            listener,
            conn: None,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            pending: false,
            backoff,
            stats: XenStats::default(),
        })
    }

    /// Bound TCP address in listen mode.
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Some(Listener::Tcp(l)) => l.local_addr().ok(),
            _ => None,
        }
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

    fn adopt(&mut self, conn: Conn, out: &mut Vec<SinkEvent>) {
        if conn.set_nonblocking().is_err() {
            return;
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

    fn connect_or_accept(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>) {
        let fresh = match &self.listener {
            // A new peer replaces the current one: Xen's side restarted.
            Some(Listener::Unix(l)) => l.accept().ok().map(|(s, _)| Conn::Unix(s)),
            Some(Listener::Tcp(l)) => l.accept().ok().map(|(s, _)| Conn::Tcp(s)),
            None if self.conn.is_none() && self.backoff.due(now_ns) => {
                let r = match &self.cfg.endpoint {
                    NotifyEndpoint::ConnectUnix(p) => UnixStream::connect(p).map(Conn::Unix),
                    NotifyEndpoint::ConnectTcp(a) => {
                        TcpStream::connect_timeout(a, Duration::from_millis(100)).map(Conn::Tcp)
                    }
                    _ => return,
                };
                match r {
                    Ok(c) => Some(c),
                    Err(_) => {
                        self.backoff.failed(now_ns);
                        None
                    }
                }
            }
            None => None,
        };
        if let Some(c) = fresh {
            self.adopt(c, out);
        }
    }
}

impl Drop for XenSink {
    fn drop(&mut self) {
        if let (Some(Listener::Unix(_)), NotifyEndpoint::ListenUnix(p)) =
            (&self.listener, &self.cfg.endpoint)
        {
            let _ = std::fs::remove_file(p);
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
        self.connect_or_accept(now_ns, out);
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
            self.drop_conn(why, out, now_ns);
            return;
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        if let Err(e) = conn.flush_from(&mut self.wbuf) {
            self.drop_conn(e, out, now_ns);
        }
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.xen_stats()).unwrap_or_default()
    }
}
