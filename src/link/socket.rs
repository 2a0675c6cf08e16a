//! Non-blocking QEMU-framed stream sockets (TCP or UNIX), client or server.
//!
//! Guarantees:
//! - Never blocks the caller's poll loop: sockets are non-blocking; a TCP connect runs on a
//!   short-lived helper thread (std has no non-blocking connect and `unsafe` is kept out of
//!   this layer); UNIX connects complete or fail at once.
//! - Batched I/O: one `read` of up to `read_buf` bytes (≥ 64 KiB) decodes every frame it
//!   holds; `send` only appends to a bounded output buffer and `flush` writes the whole batch
//!   with one `write` (partial writes are kept and continued).
//! - A full output buffer is reported to the caller ([`SendError::Backpressure`]) and counted;
//!   nothing is dropped silently. The only frame ever discarded is one that was partially
//!   written when its connection died (counted in `dropped_on_disconnect`); whole unsent
//!   frames are kept and go out on the next connection.
//! - Every new connection starts with a fresh decoder (QEMU's redirector stops reading after
//!   one disconnect; we keep serving). Bad input (oversize, vnet_hdr_len > 20) is counted and
//!   the connection is dropped; a client reconnects with exponential back-off, a server waits
//!   for the next peer.
//! - Who may connect ([`super::access`]): a server admits TCP peers from its allowlist only,
//!   keeps its current peer while that one is alive (a second connection is refused and
//!   counted, or replaces it with `replace_peer`), and lets a peer that arrives while the
//!   current one is closing wait until that one has been read to its end. TCP connections get
//!   keepalive and `TCP_USER_TIMEOUT` ([`super::access::Keepalive`]), so a peer whose host died
//!   is dropped within the bound and its restart gets in. The wire format is QEMU's, unchanged.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::access::{self, Current, Keepalive, PeerPolicy, RefusalLog, Verdict};
use super::framing::{Decoded, Decoder, DecoderStats, FrameConfig, FrameError};
use crate::net::{Listener, Stream};

/// How often a connected server checks for a replacing peer.
pub const ACCEPT_PERIOD: Duration = Duration::from_millis(5);

/// Smallest read buffer accepted: one `read` must be able to carry many frames.
pub const MIN_READ_BUF: usize = 64 * 1024;

/// A link address: `tcp:HOST:PORT` or `unix:/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A UNIX stream socket path.
    Unix(PathBuf),
}

/// Why an address string was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    /// Neither `tcp:` nor `unix:`.
    #[error("link address {0:?}: expected tcp:HOST:PORT or unix:/path")]
    Scheme(String),
    /// The TCP part did not resolve.
    #[error("link address {0:?}: cannot resolve host:port")]
    Resolve(String),
    /// Empty UNIX path.
    #[error("link address {0:?}: empty unix path")]
    EmptyPath(String),
}

impl FromStr for LinkAddr {
    type Err = AddrError;
    fn from_str(s: &str) -> Result<Self, AddrError> {
        if let Some(rest) = s.strip_prefix("tcp:") {
            let addr = rest
                .to_socket_addrs()
                .ok()
                .and_then(|mut it| it.next())
                .ok_or_else(|| AddrError::Resolve(s.to_string()))?;
            Ok(LinkAddr::Tcp(addr))
        } else if let Some(rest) = s.strip_prefix("unix:") {
            if rest.is_empty() {
                return Err(AddrError::EmptyPath(s.to_string()));
            }
            Ok(LinkAddr::Unix(PathBuf::from(rest)))
        } else {
            Err(AddrError::Scheme(s.to_string()))
        }
    }
}

impl fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkAddr::Tcp(a) => write!(f, "tcp:{a}"),
            LinkAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Which end opens the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Connect to the address, reconnecting with back-off.
    Client,
    /// Listen on the address; one peer at a time (see [`PeerPolicy`]).
    Server,
}

/// Configuration of one framed socket.
#[derive(Debug, Clone)]
pub struct SocketConfig {
    /// Where to connect or listen.
    pub addr: LinkAddr,
    /// Client or server.
    pub role: Role,
    /// Framing of received frames (vnet_hdr_support, cap).
    pub framing: FrameConfig,
    /// Framing of sent frames; equal to `framing` except for asymmetric links (the Xen
    /// notify channel: incoming with the vnet field, outgoing never).
    pub out_framing: FrameConfig,
    /// Read buffer size (raised to [`MIN_READ_BUF`]).
    pub read_buf: usize,
    /// Output buffer bound in bytes (raised to hold at least one maximal frame).
    pub out_buf: usize,
    /// First reconnect delay after a failed attempt.
    pub backoff_initial: Duration,
    /// Largest reconnect delay (the delay doubles up to this).
    pub backoff_max: Duration,
    /// TCP connect timeout (on the helper thread).
    pub connect_timeout: Duration,
    /// Most `read` calls per [`FramedSocket::poll_recv`] (bounds one poll's work).
    pub max_reads_per_poll: usize,
    /// Server: which peers are admitted (default: any address, the live peer is kept).
    pub policy: PeerPolicy,
    /// TCP keepalive bound for connections (server and client); `None`: off.
    pub keepalive: Option<Keepalive>,
}

impl SocketConfig {
    /// Defaults: 256 KiB reads, 1 MiB output buffer, back-off 100 ms doubling to 1 s.
    pub fn new(addr: LinkAddr, role: Role, framing: FrameConfig) -> Self {
        SocketConfig {
            addr,
            role,
            framing,
            out_framing: framing,
            read_buf: 256 * 1024,
            out_buf: 1024 * 1024,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            connect_timeout: Duration::from_secs(1),
            max_reads_per_poll: 16,
            policy: PeerPolicy::default(),
            keepalive: Some(Keepalive {
                timeout: Duration::from_millis(access::DEFAULT_KEEPALIVE_MS),
            }),
        }
    }

    /// Parse `addr` (`tcp:...` / `unix:...`) and use the defaults.
    pub fn parse(addr: &str, role: Role, framing: FrameConfig) -> Result<Self, AddrError> {
        Ok(Self::new(addr.parse()?, role, framing))
    }
}

/// Why [`FramedSocket::send`] did not take a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The output buffer is full even after a flush: retry later (counted).
    #[error("output buffer full")]
    Backpressure,
    /// The frame itself cannot be encoded (empty, oversize, bad vnet_hdr_len).
    #[error("bad frame: {0}")]
    Frame(FrameError),
}

/// Socket counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SocketStats {
    /// Frames received and delivered.
    pub frames_in: u64,
    /// Packet bytes received and delivered.
    pub bytes_in: u64,
    /// Frames fully handed to the kernel.
    pub frames_out: u64,
    /// Packet bytes fully handed to the kernel.
    pub bytes_out: u64,
    /// Zero-length frames received (ignored; a colo-proxy peer's heartbeats).
    pub empty_in: u64,
    /// Heartbeats (zero-length frames) queued.
    pub heartbeats_out: u64,
    /// Oversize frames received (connection reset).
    pub oversize: u64,
    /// vnet_hdr_len > 20 received (connection reset).
    pub bad_vnet: u64,
    /// Connections that ended inside a frame.
    pub truncated: u64,
    /// Connections dropped because of bad input.
    pub decode_resets: u64,
    /// Connections established (connected or accepted).
    pub connects: u64,
    /// Connect attempts that failed.
    pub connect_failures: u64,
    /// Connections lost (peer close, error, bad input, replaced).
    pub disconnects: u64,
    /// Server: connections replaced by a newer peer (`replace_peer = true`).
    pub replaced: u64,
    /// Server: connections refused because the peer's address is not in the allowlist.
    pub refused_not_allowed: u64,
    /// Server: connections refused because the current peer is alive.
    pub refused_busy: u64,
    /// Server: connections that waited for a closing peer to be read to its end.
    pub waited: u64,
    /// Connections ended by a socket error (reset, keepalive or user timeout expired)
    /// rather than an orderly close.
    pub dead_peers: u64,
    /// `send` calls refused because the output buffer was full.
    pub backpressure: u64,
    /// `send` calls refused because the frame was invalid.
    pub send_errors: u64,
    /// Frames lost because their connection died mid-write.
    pub dropped_on_disconnect: u64,
    /// `read` system calls that returned data.
    pub read_calls: u64,
    /// `write` system calls that wrote data.
    pub write_calls: u64,
}

/// Nonblocking, no Nagle: the link's stream setup.
fn prepare(s: &Stream) -> io::Result<()> {
    s.set_nonblocking(true)?;
    s.set_nodelay()
}

/// An error that means the peer is gone without an orderly close.
fn peer_died(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable
    )
}

/// Connection counters shared with management (updated on connection events only, never per
/// frame): refused peers and the like, for `ctl stats` and the final report.
#[derive(Debug, Default)]
pub struct PeerCounters {
    connects: AtomicU64,
    disconnects: AtomicU64,
    replaced: AtomicU64,
    refused_not_allowed: AtomicU64,
    refused_busy: AtomicU64,
    waited: AtomicU64,
    dead_peers: AtomicU64,
    connect_failures: AtomicU64,
    connected: AtomicBool,
}

/// A [`PeerCounters`] reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct PeerSnapshot {
    /// Connections established.
    pub connects: u64,
    /// Connections lost.
    pub disconnects: u64,
    /// Live peers replaced by a newer one (`replace_peer = true`).
    pub replaced: u64,
    /// Peers refused: address not in the allowlist.
    pub refused_not_allowed: u64,
    /// Peers refused: the current peer is alive.
    pub refused_busy: u64,
    /// Peers that waited for a closing peer.
    pub waited: u64,
    /// Connections ended by reset or keepalive/user timeout.
    pub dead_peers: u64,
    /// Failed connect attempts (client) or accepts (server).
    pub connect_failures: u64,
    /// A peer is connected now.
    pub connected: bool,
}

impl PeerCounters {
    /// Read the counters.
    pub fn snapshot(&self) -> PeerSnapshot {
        let r = |a: &AtomicU64| a.load(Ordering::Relaxed);
        PeerSnapshot {
            connects: r(&self.connects),
            disconnects: r(&self.disconnects),
            replaced: r(&self.replaced),
            refused_not_allowed: r(&self.refused_not_allowed),
            refused_busy: r(&self.refused_busy),
            waited: r(&self.waited),
            dead_peers: r(&self.dead_peers),
            connect_failures: r(&self.connect_failures),
            connected: self.connected.load(Ordering::Relaxed),
        }
    }

    fn publish(&self, s: &SocketStats, connected: bool) {
        let w = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        w(&self.connects, s.connects);
        w(&self.disconnects, s.disconnects);
        w(&self.replaced, s.replaced);
        w(&self.refused_not_allowed, s.refused_not_allowed);
        w(&self.refused_busy, s.refused_busy);
        w(&self.waited, s.waited);
        w(&self.dead_peers, s.dead_peers);
        w(&self.connect_failures, s.connect_failures);
        self.connected.store(connected, Ordering::Relaxed);
    }
}

/// A link socket's counters under its stream name, for reports.
#[derive(Debug, Clone)]
pub struct NamedPeerCounters {
    /// `mirror` or `secondary-out`.
    pub name: &'static str,
    /// The configured address (`tcp:...`, `unix:...`).
    pub addr: String,
    /// The counters.
    pub counters: Arc<PeerCounters>,
}

impl NamedPeerCounters {
    /// Name, address and a reading, as JSON for `ctl stats`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "link": self.name,
            "addr": self.addr,
            "peers": self.counters.snapshot(),
        })
    }

    /// The report line.
    pub fn line(&self) -> String {
        self.counters.snapshot().line(self.name, &self.addr)
    }
}

impl PeerSnapshot {
    /// One report line: `link mirror tcp:...: connects 1 disconnects 0 refused ...`.
    pub fn line(&self, name: &str, addr: &str) -> String {
        format!(
            "link {name:<13} {addr}: connects {} disconnects {} dead peers {} refused (not allowed {} busy {}) waited {} replaced {}{}",
            self.connects,
            self.disconnects,
            self.dead_peers,
            self.refused_not_allowed,
            self.refused_busy,
            self.waited,
            self.replaced,
            if self.connected { ", connected" } else { "" }
        )
    }
}

/// One framed, non-blocking stream link (see the module docs).
pub struct FramedSocket {
    cfg: SocketConfig,
    listener: Option<Listener>,
    conn: Option<Stream>,
    connecting: Option<mpsc::Receiver<io::Result<TcpStream>>>,
    next_attempt: Option<Instant>,
    backoff: Duration,
    decoder: Decoder,
    rbuf: Box<[u8]>,
    obuf: Vec<u8>,
    /// Bytes of `obuf` written to the kernel.
    wpos: usize,
    /// Start of the first frame in `obuf` not yet fully written.
    fpos: usize,
    stats: SocketStats,
    /// Decoder counters already folded into `stats` (decoders reset per connection).
    dec_seen: DecoderStats,
    /// Server: next time to look for a new peer while connected.
    next_accept: Instant,
    /// Server: a peer admitted while the current one is closing (installed when it ends).
    waiting: Option<Stream>,
    /// The owner reads this socket (`poll_recv` was called): data behind a peer's FIN will
    /// be delivered, so a newcomer waits for it.
    reads: bool,
    refusals: RefusalLog,
    shared: Arc<PeerCounters>,
    keepalive_warned: bool,
}

impl fmt::Debug for FramedSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FramedSocket")
            .field("addr", &self.cfg.addr)
            .field("role", &self.cfg.role)
            .field("connected", &self.conn.is_some())
            .field("stats", &self.stats)
            .finish()
    }
}

impl FramedSocket {
    /// Create the socket; a server binds and listens now (a stale UNIX socket file is
    /// replaced), a client connects on its first poll.
    pub fn new(mut cfg: SocketConfig) -> io::Result<Self> {
        cfg.read_buf = cfg.read_buf.max(MIN_READ_BUF);
        cfg.out_buf = cfg
            .out_buf
            .max(cfg.out_framing.encoded_len(cfg.out_framing.max_frame));
        let listener = match (cfg.role, &cfg.addr) {
            (Role::Client, _) => None,
            (Role::Server, LinkAddr::Tcp(a)) => {
                let l = TcpListener::bind(a)?;
                l.set_nonblocking(true)?;
                Some(Listener::Tcp(l))
            }
            (Role::Server, LinkAddr::Unix(p)) => {
                if let Ok(md) = std::fs::symlink_metadata(p) {
                    if md.file_type().is_socket() {
                        std::fs::remove_file(p)?;
                    }
                }
                let l = UnixListener::bind(p)?;
                l.set_nonblocking(true)?;
                Some(Listener::Unix(l, p.clone()))
            }
        };
        Ok(FramedSocket {
            decoder: Decoder::new(cfg.framing),
            rbuf: vec![0u8; cfg.read_buf].into_boxed_slice(),
            obuf: Vec::with_capacity(cfg.out_buf),
            backoff: cfg.backoff_initial,
            listener,
            conn: None,
            connecting: None,
            next_attempt: None,
            wpos: 0,
            fpos: 0,
            stats: SocketStats::default(),
            dec_seen: DecoderStats::default(),
            next_accept: Instant::now(),
            waiting: None,
            reads: false,
            refusals: RefusalLog::new(format!("link socket {}", cfg.addr)),
            shared: Arc::new(PeerCounters::default()),
            keepalive_warned: false,
            cfg,
        })
    }

    /// Connection counters shared with other threads (management reads them while the socket
    /// runs on a data lcore).
    pub fn peer_counters(&self) -> Arc<PeerCounters> {
        self.shared.clone()
    }

    fn publish(&self) {
        self.shared.publish(&self.stats, self.conn.is_some());
    }

    /// The bound address of a TCP server (useful with port 0).
    pub fn local_tcp_addr(&self) -> Option<SocketAddr> {
        match &self.listener {
            Some(l @ Listener::Tcp(_)) => l.tcp_addr(),
            _ => None,
        }
    }

    /// The configuration (after minimums were applied).
    pub fn config(&self) -> &SocketConfig {
        &self.cfg
    }

    /// True while a peer is connected.
    pub fn is_connected(&self) -> bool {
        self.conn.is_some()
    }

    /// Counters so far.
    pub fn stats(&self) -> SocketStats {
        self.stats
    }

    /// The descriptor to wait on for this socket's next event: the connection when connected,
    /// else a server's listener; `None` for a client between connection attempts.
    pub fn wait_fd(&self) -> Option<BorrowedFd<'_>> {
        match (&self.conn, &self.listener) {
            (Some(s), _) => Some(s.as_fd()),
            (None, Some(Listener::Tcp(l))) => Some(l.as_fd()),
            (None, Some(Listener::Unix(l, _))) => Some(l.as_fd()),
            (None, None) => None,
        }
    }

    /// Output bytes not yet handed to the kernel.
    pub fn pending_out(&self) -> usize {
        self.obuf.len() - self.wpos
    }

    /// Frames queued but not yet fully handed to the kernel (walks the output buffer; for
    /// reports, not per packet).
    pub fn pending_frames(&self) -> u64 {
        let hl = self.cfg.out_framing.header_len();
        let (mut pos, mut n) = (self.fpos, 0u64);
        while pos + hl <= self.obuf.len() {
            pos += hl + self.frame_len_at(pos);
            n += 1;
        }
        n
    }

    /// Connection housekeeping: accept (server) or connect with back-off (client). Called by
    /// the poll functions; cheap when nothing is due.
    pub fn maintain(&mut self, now: Instant) {
        match self.cfg.role {
            // While connected, a replacing peer is picked up within ACCEPT_PERIOD: a failed
            // accept() costs the kernel a socket allocation, too dear for every idle loop.
            Role::Server => {
                if self.conn.is_none() || now >= self.next_accept {
                    self.next_accept = now + ACCEPT_PERIOD;
                    self.accept_pending();
                }
            }
            Role::Client => {
                if self.conn.is_none() {
                    self.drive_connect(now);
                }
            }
        }
    }

    fn accept_pending(&mut self) {
        let mut seen = false;
        while let Some(l) = &self.listener {
            match l.accept() {
                Ok((s, peer)) => {
                    seen = true;
                    self.consider(s, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.stats.connect_failures += 1;
                    break;
                }
            }
        }
        if seen {
            self.publish();
        }
    }

    /// Apply the peer policy to a freshly accepted connection.
    fn consider(&mut self, s: Stream, peer: Option<SocketAddr>) {
        let mut current = match &self.conn {
            None => Current::None,
            Some(c) => access::probe(c.as_fd(), self.reads),
        };
        if current == Current::Gone {
            // Ended without us noticing (keepalive, reset, or a closed peer nobody reads):
            // a peer waiting for it goes first.
            self.disconnect();
            current = if self.conn.is_some() {
                Current::Alive
            } else {
                Current::None
            };
        }
        let shown = peer.map_or_else(|| "(unix)".to_string(), |a| a.to_string());
        let now = Instant::now();
        let verdict = self
            .cfg
            .policy
            .decide(peer.map(|a| a.ip()), current, self.waiting.is_none());
        match verdict {
            Verdict::RefuseNotAllowed => {
                self.stats.refused_not_allowed += 1;
                self.refusals
                    .refused(&shown, "address not in the endpoint's allow list", now);
            }
            Verdict::RefuseBusy => {
                self.stats.refused_busy += 1;
                self.refusals.refused(
                    &shown,
                    "the current peer is alive (one peer at a time; replace_peer = false)",
                    now,
                );
            }
            Verdict::Wait => {
                if prepare(&s).is_ok() {
                    self.stats.waited += 1;
                    self.waiting = Some(s);
                } else {
                    self.stats.connect_failures += 1;
                }
            }
            Verdict::Admit | Verdict::Replace => {
                if prepare(&s).is_err() {
                    self.stats.connect_failures += 1;
                    return;
                }
                if self.conn.is_some() {
                    self.stats.replaced += 1;
                    // The replacing peer, not one that waited, takes over.
                    self.waiting = None;
                    self.disconnect();
                }
                self.install(s);
            }
        }
    }

    fn drive_connect(&mut self, now: Instant) {
        if let Some(rx) = &self.connecting {
            match rx.try_recv() {
                Ok(Ok(s)) => {
                    self.connecting = None;
                    let s = Stream::Tcp(s);
                    if prepare(&s).is_ok() {
                        self.install(s);
                    } else {
                        self.connect_failed(now);
                    }
                }
                Ok(Err(_)) | Err(mpsc::TryRecvError::Disconnected) => {
                    self.connecting = None;
                    self.connect_failed(now);
                }
                Err(mpsc::TryRecvError::Empty) => {}
            }
            return;
        }
        if self.next_attempt.is_some_and(|t| now < t) {
            return;
        }
        match &self.cfg.addr {
            LinkAddr::Unix(p) => match UnixStream::connect(p) {
                Ok(s) => {
                    let s = Stream::Unix(s);
                    if prepare(&s).is_ok() {
                        self.install(s);
                    } else {
                        self.connect_failed(now);
                    }
                }
                Err(_) => self.connect_failed(now),
            },
            LinkAddr::Tcp(a) => {
                let (tx, rx) = mpsc::channel();
                let a = *a;
                let timeout = self.cfg.connect_timeout;
                let spawned = std::thread::Builder::new()
                    .name("link-connect".into())
                    .spawn(move || {
                        let _ = tx.send(TcpStream::connect_timeout(&a, timeout));
                    });
                match spawned {
                    Ok(_) => self.connecting = Some(rx),
                    Err(_) => self.connect_failed(now),
                }
            }
        }
    }

    fn connect_failed(&mut self, now: Instant) {
        self.stats.connect_failures += 1;
        self.publish();
        self.next_attempt = Some(now + self.backoff);
        self.backoff = (self.backoff * 2).min(self.cfg.backoff_max);
    }

    fn install(&mut self, s: Stream) {
        if let (Some(k), Stream::Tcp(t)) = (&self.cfg.keepalive, &s) {
            if let Err(e) = k.apply(t) {
                if !self.keepalive_warned {
                    self.keepalive_warned = true;
                    eprintln!(
                        "warning: link socket {}: cannot set TCP keepalive ({e}); a dead peer is noticed only when a write fails",
                        self.cfg.addr
                    );
                }
            }
        }
        self.conn = Some(s);
        self.decoder.reset();
        self.dec_seen = self.decoder.stats();
        self.stats.connects += 1;
        self.backoff = self.cfg.backoff_initial;
        self.next_attempt = None;
        self.publish();
    }

    /// Drop the current connection (peer close, error, bad input or replacement).
    fn disconnect(&mut self) {
        if self.conn.take().is_none() {
            return;
        }
        self.stats.disconnects += 1;
        let _ = self.decoder.finish();
        self.fold_decoder_stats();
        self.decoder.reset();
        self.dec_seen = self.decoder.stats();
        // A partially written frame cannot be continued on another connection.
        let hl = self.cfg.out_framing.header_len();
        let mut cut = self.fpos;
        if self.wpos > self.fpos {
            cut = (self.fpos + hl + self.frame_len_at(self.fpos)).min(self.obuf.len());
            self.stats.dropped_on_disconnect += 1;
        }
        self.obuf.drain(..cut);
        self.wpos = 0;
        self.fpos = 0;
        // Reconnect at once; back-off applies to failed attempts.
        self.next_attempt = None;
        match self.waiting.take() {
            // The peer that waited for this one's end takes over.
            Some(w) => self.install(w),
            None => self.publish(),
        }
    }

    /// Drop the connection after a socket error: a peer that died without closing.
    fn disconnect_err(&mut self, e: &io::Error) {
        if peer_died(e) {
            self.stats.dead_peers += 1;
        }
        self.disconnect();
    }

    fn frame_len_at(&self, pos: usize) -> usize {
        match self.obuf.get(pos..pos + 4) {
            Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize,
            None => 0,
        }
    }

    fn fold_decoder_stats(&mut self) {
        let d = self.decoder.stats();
        let s = &mut self.stats;
        let p = self.dec_seen;
        s.empty_in += d.empty - p.empty;
        s.oversize += d.oversize - p.oversize;
        s.bad_vnet += d.bad_vnet - p.bad_vnet;
        s.truncated += d.truncated - p.truncated;
        self.dec_seen = d;
    }

    /// Read and decode what is available, calling `f(vnet_hdr_len, frame)` for each frame
    /// (zero-length frames are counted, not delivered). Never blocks; returns frames
    /// delivered.
    pub fn poll_recv(&mut self, mut f: impl FnMut(u32, &[u8])) -> usize {
        self.reads = true;
        if self.conn.is_none() || self.cfg.role == Role::Server {
            self.maintain(Instant::now());
        }
        let mut delivered = 0usize;
        for _ in 0..self.cfg.max_reads_per_poll.max(1) {
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            match conn.read(&mut self.rbuf) {
                Ok(0) => {
                    self.disconnect();
                    break;
                }
                Ok(n) => {
                    self.stats.read_calls += 1;
                    let stats = &mut self.stats;
                    let r = self.decoder.feed(&self.rbuf[..n], |d| {
                        if let Decoded::Frame { vnet_hdr_len, data } = d {
                            stats.frames_in += 1;
                            stats.bytes_in += data.len() as u64;
                            delivered += 1;
                            f(vnet_hdr_len, data);
                        }
                    });
                    if r.is_err() {
                        self.stats.decode_resets += 1;
                        self.disconnect();
                        break;
                    }
                    if n < self.rbuf.len() {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.disconnect_err(&e);
                    break;
                }
            }
        }
        self.fold_decoder_stats();
        delivered
    }

    /// Queue one frame for sending (copied into the output buffer; no syscall unless the
    /// buffer is full, then one flush is tried first).
    pub fn send(&mut self, vnet_hdr_len: u32, frame: &[u8]) -> Result<(), SendError> {
        let need = self.cfg.out_framing.encoded_len(frame.len());
        if self.obuf.capacity() - self.obuf.len() < need {
            self.compact();
            if self.obuf.capacity() - self.obuf.len() < need {
                self.flush();
                self.compact();
            }
        }
        match self
            .cfg
            .out_framing
            .encode_append(&mut self.obuf, vnet_hdr_len, frame)
        {
            Ok(_) => Ok(()),
            Err(FrameError::NoRoom { .. }) => {
                self.stats.backpressure += 1;
                Err(SendError::Backpressure)
            }
            Err(e) => {
                self.stats.send_errors += 1;
                Err(SendError::Frame(e))
            }
        }
    }

    /// Queue a heartbeat: a zero-length frame, which a colo-proxy receiver counts
    /// (`empty_in`) and never delivers. Only between two colo-proxies: QEMU's receivers take a
    /// zero-length frame for a packet and reject it. Refused while no peer is connected.
    pub fn send_heartbeat(&mut self) -> Result<(), SendError> {
        if self.conn.is_none() {
            return Err(SendError::Backpressure);
        }
        let hl = self.cfg.out_framing.header_len();
        if self.obuf.capacity() - self.obuf.len() < hl {
            self.compact();
            if self.obuf.capacity() - self.obuf.len() < hl {
                self.stats.backpressure += 1;
                return Err(SendError::Backpressure);
            }
        }
        // len = 0 (and vnet_hdr_len = 0 when the field is on).
        self.obuf.extend_from_slice(&[0u8; 8][..hl]);
        self.stats.heartbeats_out += 1;
        Ok(())
    }

    /// Queue one frame given in pieces (e.g. a vnet header kept apart from the Ethernet
    /// frame); the pieces are concatenated into the output buffer, no allocation.
    pub fn send_parts(&mut self, vnet_hdr_len: u32, parts: &[&[u8]]) -> Result<(), SendError> {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        let fc = self.cfg.out_framing;
        let need = fc.encoded_len(len);
        if self.obuf.capacity() - self.obuf.len() < need {
            self.compact();
            if self.obuf.capacity() - self.obuf.len() < need {
                self.flush();
                self.compact();
            }
        }
        let mut hdr = [0u8; 8];
        let h = match fc.encode_header(&mut hdr, len, vnet_hdr_len) {
            Ok(h) => h,
            Err(e) => {
                self.stats.send_errors += 1;
                return Err(SendError::Frame(e));
            }
        };
        if self.obuf.capacity() - self.obuf.len() < need {
            self.stats.backpressure += 1;
            return Err(SendError::Backpressure);
        }
        self.obuf.extend_from_slice(&hdr[..h]);
        for p in parts {
            self.obuf.extend_from_slice(p);
        }
        Ok(())
    }

    /// Move unwritten bytes to the front of the output buffer (only when it is needed).
    fn compact(&mut self) {
        if self.fpos > 0 {
            self.obuf.drain(..self.fpos);
            self.wpos -= self.fpos;
            self.fpos = 0;
        }
    }

    /// Write queued frames (one `write` per call while the kernel takes them). Never blocks;
    /// returns the bytes still pending.
    pub fn flush(&mut self) -> usize {
        if self.conn.is_none() {
            self.maintain(Instant::now());
        }
        while self.wpos < self.obuf.len() {
            let Some(conn) = self.conn.as_mut() else {
                break;
            };
            match conn.write(&self.obuf[self.wpos..]) {
                Ok(0) => {
                    self.disconnect();
                    break;
                }
                Ok(n) => {
                    self.stats.write_calls += 1;
                    self.wpos += n;
                    self.account_written();
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.disconnect_err(&e);
                    break;
                }
            }
        }
        if self.wpos == self.obuf.len() && self.wpos > 0 {
            self.obuf.clear();
            self.wpos = 0;
            self.fpos = 0;
        }
        self.pending_out()
    }

    /// Count frames whose last byte has been written.
    fn account_written(&mut self) {
        let hl = self.cfg.out_framing.header_len();
        while self.fpos + hl <= self.wpos {
            let len = self.frame_len_at(self.fpos);
            let end = self.fpos + hl + len;
            if end > self.wpos {
                break;
            }
            self.fpos = end;
            self.stats.frames_out += 1;
            self.stats.bytes_out += len as u64;
        }
    }

    /// Receive and flush in one call.
    pub fn poll(&mut self, f: impl FnMut(u32, &[u8])) -> usize {
        let n = self.poll_recv(f);
        self.flush();
        n
    }
}
