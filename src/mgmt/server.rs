//! Control socket server: a UNIX stream socket (mode 0600 by default) and optionally a TCP
//! endpoint bound only to loopback and only with a token. Everything is non-blocking and driven
//! by [`ControlServer::poll`] with bounded work per call, so a slow, stuck or vanished client can
//! cost at most a bounded buffer and never stalls the caller. Event subscribers that fall behind
//! lose events (counted), never memory.
//!
//! Who may talk: the UNIX socket exists only with its final mode and group from its first
//! moment ([`crate::link::access::bind_unix`]), and each UNIX peer's uid (`SO_PEERCRED`) must be
//! root, the socket's owner, or in the configured group. A TCP client must present the token;
//! one that has not within [`ServerConfig::auth_timeout_ns`] is closed, and TCP clients never
//! take the last [`ServerConfig::unix_reserved`] slots, so idle TCP connections cannot lock out
//! the local operator.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crate::link::access::{self, UidPolicy};
use crate::net::Stream;

use serde::Serialize;

use crate::control::proto::{Command, Reply, Request, MAX_LINE};
use crate::control::Event;

/// Control server settings.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// UNIX socket path (`None`: no UNIX endpoint).
    pub unix_path: Option<PathBuf>,
    /// Its permission bits (0o600 by default).
    pub unix_mode: u32,
    /// Group (gid) of the socket: its members may connect (with a mode that lets them).
    pub unix_group: Option<u32>,
    /// Loopback TCP endpoint and the token every request on it must carry.
    pub tcp: Option<(SocketAddr, String)>,
    /// Most connected clients; more are refused with an error line.
    pub max_clients: usize,
    /// Bytes of unsent events a subscriber may have queued before new events are dropped.
    pub event_backlog: usize,
    /// Bytes of unsent replies a client may have queued before it is disconnected.
    pub reply_backlog: usize,
    /// A TCP client that has not sent a request with the right token by then is closed.
    pub auth_timeout_ns: u64,
    /// Client slots only UNIX clients may take.
    pub unix_reserved: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            unix_path: None,
            unix_mode: 0o600,
            unix_group: None,
            tcp: None,
            max_clients: 32,
            event_backlog: 256 * 1024,
            reply_backlog: 4 * 1024 * 1024,
            auth_timeout_ns: 5_000_000_000,
            unix_reserved: 1,
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A TCP endpoint must be loopback-only.
    #[error("control TCP address {0} is not loopback; refusing to bind")]
    NotLoopback(SocketAddr),
    /// A TCP endpoint needs a token.
    #[error("control TCP endpoint needs a non-empty token")]
    NoToken,
    /// Another process is serving this UNIX socket.
    #[error("control socket {0} is in use by another process")]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("control socket path {0} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Socket call failed.
    #[error("control socket {what}: {err}")]
    Io {
        /// What we were doing.
        what: String,
        /// The error.
        err: io::Error,
    },
}

fn io_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServerError {
    let what = what.into();
    move |err| ServerError::Io { what, err }
}

/// Answers commands; implemented by [`super::Management`] (and by fakes in tests).
pub trait Handler {
    /// Execute one command (never `events`, which the server handles itself).
    fn handle(&mut self, cmd: Command, now_ns: u64) -> Reply;
}

/// Server counters.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Connections accepted.
    pub accepted: u64,
    /// Connections refused (too many clients; TCP: only the UNIX-reserved slots left).
    pub refused: u64,
    /// UNIX peers refused: their uid is not root, the owner, or in the socket's group.
    pub peer_refused: u64,
    /// TCP clients closed for not authenticating within the timeout.
    pub auth_timeouts: u64,
    /// Connections closed (any reason).
    pub closed: u64,
    /// Requests answered (ok or error).
    pub requests: u64,
    /// Error replies.
    pub errors: u64,
    /// Requests with a wrong or missing token (connection closed).
    pub auth_failures: u64,
    /// Lines over the size cap (connection closed).
    pub oversized: u64,
    /// Clients disconnected because they did not read their replies.
    pub slow_closed: u64,
    /// Events queued to subscribers.
    pub events_sent: u64,
    /// Events dropped because a subscriber's backlog was full.
    pub events_dropped: u64,
    /// Currently connected clients.
    pub clients: u64,
    /// Currently subscribed clients.
    pub subscribers: u64,
}

struct Client {
    stream: Stream,
    /// TCP clients must present the token on every request.
    needs_token: bool,
    /// UNIX peers (uid checked) and TCP clients that presented the token.
    authed: bool,
    /// Accepted at (the auth timeout runs from here).
    since_ns: u64,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    subscribed: bool,
    /// The peer closed its sending side: answer what it sent, then close.
    eof: bool,
    /// Stop reading; flush what is queued (for at most [`CLOSE_GRACE_NS`]), then close.
    closing: Option<u64>,
    dead: bool,
}

/// Bytes read per client per poll.
const READ_BUDGET: usize = 128 * 1024;
/// Requests executed per client per poll.
const LINES_PER_POLL: usize = 16;
/// How long a closing client may take to read its last replies.
const CLOSE_GRACE_NS: u64 = 2_000_000_000;
/// Connections accepted per listener per poll.
const ACCEPTS_PER_POLL: usize = 8;

/// The control server. Call [`ControlServer::poll`] regularly.
pub struct ControlServer {
    cfg: ServerConfig,
    unix: Option<UnixListener>,
    tcp: Option<TcpListener>,
    clients: Vec<Client>,
    stats: ServerStats,
    /// Which local users the UNIX socket serves.
    uids: UidPolicy,
}

fn prepare_unix_path(path: &Path, group: Option<u32>) -> Result<(), ServerError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            // The group's members must be able to reach the socket, nobody else.
            let mode = if group.is_some() { 0o750 } else { 0o700 };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(mode)
                .create(dir)
                .map_err(io_err(format!("create {}", dir.display())))?;
            if let Some(g) = group {
                std::os::unix::fs::chown(dir, None, Some(g))
                    .map_err(io_err(format!("chgrp {}", dir.display())))?;
            }
        }
    }
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err(format!("stat {}", path.display()))(e)),
        Ok(m) if !m.file_type().is_socket() => Err(ServerError::NotASocket(path.to_owned())),
        Ok(_) => match UnixStream::connect(path) {
            Ok(_) => Err(ServerError::InUse(path.to_owned())),
            // Nobody listens: a stale socket from a previous run.
            Err(_) => std::fs::remove_file(path)
                .map_err(io_err(format!("remove stale {}", path.display()))),
        },
    }
}

impl ControlServer {
    /// Bind the configured endpoints.
    pub fn bind(cfg: ServerConfig) -> Result<ControlServer, ServerError> {
        let tcp = match &cfg.tcp {
            None => None,
            Some((addr, token)) => {
                if !addr.ip().is_loopback() {
                    return Err(ServerError::NotLoopback(*addr));
                }
                if token.is_empty() {
                    return Err(ServerError::NoToken);
                }
                let l = TcpListener::bind(addr).map_err(io_err(format!("bind tcp {addr}")))?;
                l.set_nonblocking(true).map_err(io_err("set_nonblocking"))?;
                Some(l)
            }
        };
        let mut uids = UidPolicy::default();
        let unix = match &cfg.unix_path {
            None => None,
            Some(p) => {
                prepare_unix_path(p, cfg.unix_group)?;
                // Final mode and group from the first moment: no chmod window.
                let l = access::bind_unix(p, cfg.unix_mode, cfg.unix_group)
                    .map_err(io_err(format!("bind {}", p.display())))?;
                l.set_nonblocking(true).map_err(io_err("set_nonblocking"))?;
                let owner = std::fs::symlink_metadata(p)
                    .map_err(io_err(format!("stat {}", p.display())))?
                    .uid();
                let read = |f: &str| std::fs::read_to_string(f).unwrap_or_default();
                uids = UidPolicy::new(
                    owner,
                    cfg.unix_group,
                    &read("/etc/group"),
                    &read("/etc/passwd"),
                );
                Some(l)
            }
        };
        Ok(ControlServer {
            cfg,
            unix,
            tcp,
            clients: Vec::new(),
            stats: ServerStats::default(),
            uids,
        })
    }

    /// The bound TCP address (useful with port 0).
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// The UNIX socket path.
    pub fn unix_path(&self) -> Option<&Path> {
        self.cfg.unix_path.as_deref()
    }

    /// Counters.
    pub fn stats(&self) -> ServerStats {
        let mut s = self.stats;
        s.clients = self.clients.len() as u64;
        s.subscribers = self.clients.iter().filter(|c| c.subscribed).count() as u64;
        s
    }

    /// Accept, read, execute, write: bounded work. Returns how many requests were answered.
    pub fn poll(&mut self, now_ns: u64, handler: &mut dyn Handler) -> usize {
        self.accept(now_ns);
        let mut answered = 0;
        for i in 0..self.clients.len() {
            answered += self.service(i, now_ns, handler);
        }
        self.reap();
        answered
    }

    /// For a caller that blocks when idle: the listeners and clients (`(fd, wants_write)`),
    /// and how long it may go unpolled (`None`: until a descriptor is ready). With a client
    /// connected it asks for a poll every millisecond (auth and close deadlines, answers that
    /// wait for the data plane).
    pub fn wait_fds<'a>(&'a self, fds: &mut Vec<(BorrowedFd<'a>, bool)>) -> Option<u64> {
        if let Some(l) = &self.unix {
            fds.push((l.as_fd(), false));
        }
        if let Some(l) = &self.tcp {
            fds.push((l.as_fd(), false));
        }
        for c in &self.clients {
            fds.push((c.stream.as_fd(), !c.wbuf.is_empty()));
        }
        (!self.clients.is_empty()).then_some(super::sink::TICK_NS)
    }

    /// Queue an event line to every subscriber; a subscriber whose backlog is full loses it.
    pub fn broadcast(&mut self, ev: &Event) {
        if !self.clients.iter().any(|c| c.subscribed) {
            return;
        }
        let mut line = ev.to_json_line().into_bytes();
        line.push(b'\n');
        for c in self
            .clients
            .iter_mut()
            .filter(|c| c.subscribed && c.closing.is_none())
        {
            if c.wbuf.len() + line.len() > self.cfg.event_backlog {
                self.stats.events_dropped += 1;
            } else {
                c.wbuf.extend_from_slice(&line);
                self.stats.events_sent += 1;
            }
        }
        // Try to push them out now; what does not fit waits for the next poll.
        for c in self.clients.iter_mut().filter(|c| c.subscribed) {
            flush(c);
        }
        self.reap();
    }

    fn accept(&mut self, now_ns: u64) {
        let mut fresh = Vec::new();
        if let Some(l) = &self.unix {
            for _ in 0..ACCEPTS_PER_POLL {
                match l.accept() {
                    Ok((s, _)) => fresh.push((Stream::Unix(s), false)),
                    Err(_) => break,
                }
            }
        }
        if let Some(l) = &self.tcp {
            for _ in 0..ACCEPTS_PER_POLL {
                match l.accept() {
                    Ok((s, _)) => {
                        let _ = s.set_nodelay(true);
                        fresh.push((Stream::Tcp(s), true))
                    }
                    Err(_) => break,
                }
            }
        }
        for (stream, needs_token) in fresh {
            let ok = stream.set_nonblocking(true);
            // A UNIX peer is who the kernel says it is.
            let cred = match &stream {
                Stream::Unix(s) => rustix::net::sockopt::socket_peercred(s)
                    .ok()
                    .map(|c| (c.uid.as_raw(), c.gid.as_raw())),
                Stream::Tcp(_) => None,
            };
            let mut c = Client {
                stream,
                needs_token,
                authed: !needs_token,
                since_ns: now_ns,
                rbuf: Vec::new(),
                wbuf: Vec::new(),
                subscribed: false,
                eof: false,
                closing: None,
                dead: false,
            };
            if ok.is_err() {
                continue;
            }
            if !needs_token {
                let allowed = cred.is_some_and(|(uid, gid)| self.uids.allows(uid, gid));
                if !allowed {
                    self.stats.peer_refused += 1;
                    let who = cred.map_or("unknown".to_string(), |(u, g)| format!("{u} (gid {g})"));
                    refuse(
                        &mut c,
                        &format!("uid {who} may not use this control socket"),
                    );
                    continue;
                }
            }
            let tcp_clients = self.clients.iter().filter(|c| c.needs_token).count();
            // The last slots are kept for the local (UNIX) operator, if there is a UNIX socket.
            let reserved = if self.unix.is_some() {
                self.cfg.unix_reserved
            } else {
                0
            };
            let room = if needs_token {
                tcp_clients < self.cfg.max_clients.saturating_sub(reserved)
                    && self.clients.len() < self.cfg.max_clients
            } else {
                self.clients.len() < self.cfg.max_clients
            };
            if !room {
                self.stats.refused += 1;
                refuse(&mut c, "too many control clients");
                continue;
            }
            self.stats.accepted += 1;
            self.clients.push(c);
        }
    }

    fn service(&mut self, i: usize, now_ns: u64, handler: &mut dyn Handler) -> usize {
        let token = self.cfg.tcp.as_ref().map(|(_, t)| t.as_str());
        let reply_backlog = self.cfg.reply_backlog;
        let stats = &mut self.stats;
        let auth_timeout = self.cfg.auth_timeout_ns;
        let c = &mut self.clients[i];
        if c.dead {
            return 0;
        }
        if !c.authed && c.closing.is_none() && now_ns.saturating_sub(c.since_ns) > auth_timeout {
            // Holding a slot without the token: one of many ways to lock others out.
            stats.auth_timeouts += 1;
            queue_reply(
                c,
                &Reply::err(format!(
                    "no request with the token within {} ms",
                    auth_timeout / 1_000_000
                )),
            );
            c.closing = Some(now_ns);
        }
        if c.closing.is_none() && !c.eof {
            read_some(c);
        }
        let mut answered = 0;
        while c.closing.is_none() && answered < LINES_PER_POLL {
            let Some(nl) = c.rbuf.iter().position(|&b| b == b'\n') else {
                if c.rbuf.len() > MAX_LINE {
                    stats.oversized += 1;
                    stats.errors += 1;
                    queue_reply(
                        c,
                        &Reply::err(format!("request longer than {MAX_LINE} bytes")),
                    );
                    c.closing = Some(now_ns);
                    c.rbuf = Vec::new();
                } else if c.eof {
                    c.closing = Some(now_ns);
                }
                break;
            };
            let mut line: Vec<u8> = c.rbuf.drain(..=nl).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            answered += 1;
            stats.requests += 1;
            let reply = match Request::parse(&line) {
                Err(e) if line.len() > MAX_LINE => {
                    stats.oversized += 1;
                    c.closing = Some(now_ns);
                    Reply::err(e)
                }
                Err(e) => Reply::err(e),
                Ok(req) if c.needs_token && !token_ok(req.token.as_deref(), token) => {
                    stats.auth_failures += 1;
                    c.closing = Some(now_ns);
                    Reply::err("missing or wrong token")
                }
                Ok(req) => {
                    // A TCP client with the right token is no longer subject to the timeout.
                    c.authed = true;
                    match req.cmd {
                        Command::Events => {
                            c.subscribed = true;
                            Reply::ok(serde_json::json!("subscribed"))
                        }
                        cmd => handler.handle(cmd, now_ns),
                    }
                }
            };
            if !reply.ok {
                stats.errors += 1;
            }
            if c.wbuf.len() > reply_backlog {
                // Not reading its replies: stop serving it rather than buffer without bound.
                stats.slow_closed += 1;
                c.dead = true;
                break;
            }
            queue_reply(c, &reply);
        }
        flush(c);
        if let Some(since) = c.closing {
            if c.wbuf.is_empty() || now_ns.saturating_sub(since) > CLOSE_GRACE_NS {
                c.dead = true;
            }
        }
        answered
    }

    fn reap(&mut self) {
        let before = self.clients.len();
        self.clients.retain(|c| {
            if c.dead {
                c.stream.shutdown();
            }
            !c.dead
        });
        self.stats.closed += (before - self.clients.len()) as u64;
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        if let (Some(_), Some(p)) = (&self.unix, &self.cfg.unix_path) {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Constant-time comparison so the token cannot be guessed byte by byte from timing.
fn token_ok(given: Option<&str>, want: Option<&str>) -> bool {
    let (Some(g), Some(w)) = (given, want) else {
        return false;
    };
    let (g, w) = (g.as_bytes(), w.as_bytes());
    let mut diff = (g.len() != w.len()) as u8;
    for (i, b) in w.iter().enumerate() {
        diff |= b ^ g.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

/// Tell a client why it is not served, then close it.
fn refuse(c: &mut Client, why: &str) {
    queue_reply(c, &Reply::err(why));
    flush(c);
    c.stream.shutdown();
}

fn queue_reply(c: &mut Client, r: &Reply) {
    c.wbuf.extend_from_slice(r.to_json_line().as_bytes());
    c.wbuf.push(b'\n');
}

fn read_some(c: &mut Client) {
    let mut buf = [0u8; 16 * 1024];
    let mut total = 0;
    // Stop reading while a full line's worth is unprocessed: a client that floods requests is
    // held back by its socket buffer, not by our memory.
    while total < READ_BUDGET && c.rbuf.len() <= MAX_LINE {
        match c.stream.read(&mut buf) {
            Ok(0) => {
                // Peer closed its side; the lines it already sent still get answers.
                c.eof = true;
                return;
            }
            Ok(n) => {
                c.rbuf.extend_from_slice(&buf[..n]);
                total += n;
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(_) => {
                c.dead = true;
                return;
            }
        }
    }
}

fn flush(c: &mut Client) {
    let mut off = 0;
    while off < c.wbuf.len() {
        match c.stream.write(&c.wbuf[off..]) {
            Ok(0) => {
                c.dead = true;
                break;
            }
            Ok(n) => off += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == ErrorKind::WouldBlock => break,
            Err(_) => {
                c.dead = true;
                break;
            }
        }
    }
    c.wbuf.drain(..off);
}
