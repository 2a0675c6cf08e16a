//! QMP checkpoint sink for KVM COLO. KVM COLO has no external checkpoint API; re-setting
//! `x-checkpoint-delay` with `migrate-set-parameters` makes QEMU call `colo_checkpoint_notify`,
//! which forces an immediate checkpoint (reference §2.6, §10). QEMU reports no "checkpoint done"
//! over QMP, so completion must come from elsewhere (e.g. `ctl checkpoint-done`).
//!
//! Non-blocking state machine: connect → greeting → `qmp_capabilities` → ready. Requests made
//! while QEMU is away are remembered (one, coalesced) and sent after reconnecting; reconnects
//! back off exponentially.

use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use serde::Serialize;

use super::coordinator::CheckpointRequest;
use super::sink::{Backoff, CheckpointSink, SinkEvent};
use crate::net::{ReadOutcome, Stream};

/// Longest QMP line accepted (QEMU's replies to our commands are small).
const MAX_QMP_LINE: usize = 1024 * 1024;

/// QMP sink settings.
#[derive(Debug, Clone)]
pub struct QmpConfig {
    /// QEMU's QMP UNIX socket.
    pub socket: PathBuf,
    /// The `x-checkpoint-delay` (ms) to set; setting it (even to its current value) forces a
    /// checkpoint, and it stays the periodic interval afterwards.
    pub checkpoint_delay_ms: u64,
    /// First reconnect delay; doubles up to 16× while QEMU stays away.
    pub reconnect_ns: u64,
}

/// QMP sink counters.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct QmpStats {
    /// `migrate-set-parameters` commands sent.
    pub sent: u64,
    /// ... that QEMU answered with `return`.
    pub accepted: u64,
    /// ... that QEMU answered with `error`.
    pub rejected: u64,
    /// Requests remembered while QEMU was away or a command was in flight.
    pub deferred: u64,
    /// Successful sessions (greeting + capabilities).
    pub sessions: u64,
    /// Failed connection attempts.
    pub connect_failures: u64,
    /// Sessions lost.
    pub disconnects: u64,
    /// Asynchronous QMP events seen (e.g. `COLO_EXIT`).
    pub events: u64,
    /// `COLO_EXIT` events among them.
    pub colo_exits: u64,
    /// Last error QEMU returned, or why the session ended.
    pub last_error: Option<String>,
    /// In a ready session now.
    pub ready: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Capabilities,
    Ready,
}

/// The QMP sink.
pub struct QmpSink {
    cfg: QmpConfig,
    conn: Option<Stream>,
    phase: Phase,
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    /// A forced checkpoint still has to be sent.
    pending: bool,
    /// Id of the command QEMU has not answered yet.
    inflight: Option<u64>,
    next_id: u64,
    backoff: Backoff,
    stats: QmpStats,
}

impl QmpSink {
    /// Create the sink; it connects on the first poll.
    pub fn new(cfg: QmpConfig) -> QmpSink {
        let backoff = Backoff::new(cfg.reconnect_ns, cfg.reconnect_ns.saturating_mul(16));
        QmpSink {
            cfg,
            conn: None,
            phase: Phase::Greeting,
            rbuf: Vec::new(),
            wbuf: Vec::new(),
            pending: false,
            inflight: None,
            next_id: 1,
            backoff,
            stats: QmpStats::default(),
        }
    }

    /// Counters.
    pub fn qmp_stats(&self) -> QmpStats {
        QmpStats {
            ready: self.phase == Phase::Ready && self.conn.is_some(),
            ..self.stats.clone()
        }
    }

    fn send_line(&mut self, v: serde_json::Value) {
        self.wbuf.extend_from_slice(v.to_string().as_bytes());
        self.wbuf.extend_from_slice(b"\r\n");
    }

    fn send_checkpoint(&mut self) {
        let id = self.next_id;
        self.next_id += 1;
        self.send_line(serde_json::json!({
            "execute": "migrate-set-parameters",
            "arguments": { "x-checkpoint-delay": self.cfg.checkpoint_delay_ms },
            "id": id,
        }));
        self.inflight = Some(id);
        self.pending = false;
        self.stats.sent += 1;
    }

    fn lost(&mut self, why: String, now_ns: u64, out: &mut Vec<SinkEvent>) {
        let was_ready = self.phase == Phase::Ready;
        if self.conn.take().is_some() {
            self.stats.disconnects += 1;
            if was_ready {
                out.push(SinkEvent::Down(why.clone()));
            }
        }
        // An unanswered command may not have reached QEMU: send it again next session.
        if self.inflight.take().is_some() {
            self.pending = true;
        }
        self.stats.last_error = Some(why);
        self.phase = Phase::Greeting;
        self.rbuf.clear();
        self.wbuf.clear();
        self.backoff.failed(now_ns);
    }

    fn handle_line(&mut self, line: &[u8], out: &mut Vec<SinkEvent>) -> Result<(), String> {
        let v: serde_json::Value =
            serde_json::from_slice(line).map_err(|e| format!("malformed QMP line: {e}"))?;
        if let Some(ev) = v.get("event") {
            self.stats.events += 1;
            if ev == "COLO_EXIT" {
                // QEMU ended COLO (x-colo-lost-heartbeat, or an error): it runs its VM alone now.
                self.stats.colo_exits += 1;
                let data = v.get("data").map(|d| d.to_string()).unwrap_or_default();
                out.push(SinkEvent::ColoExit(data));
            }
            return Ok(());
        }
        match self.phase {
            Phase::Greeting => {
                if v.get("QMP").is_none() {
                    return Err("expected the QMP greeting".into());
                }
                self.send_line(serde_json::json!({ "execute": "qmp_capabilities" }));
                self.phase = Phase::Capabilities;
            }
            Phase::Capabilities => {
                if let Some(e) = v.get("error") {
                    return Err(format!("qmp_capabilities refused: {e}"));
                }
                self.phase = Phase::Ready;
                self.stats.sessions += 1;
                self.backoff.succeeded();
                out.push(SinkEvent::Up);
                if self.pending {
                    self.send_checkpoint();
                }
            }
            Phase::Ready => {
                let id = v.get("id").and_then(serde_json::Value::as_u64);
                if id.is_none() || id != self.inflight {
                    return Ok(()); // not ours
                }
                self.inflight = None;
                if v.get("return").is_some() {
                    self.stats.accepted += 1;
                } else {
                    self.stats.rejected += 1;
                    self.stats.last_error =
                        Some(v.get("error").map(|e| e.to_string()).unwrap_or_default());
                }
                if self.pending {
                    self.send_checkpoint();
                }
            }
        }
        Ok(())
    }
}

impl QmpSink {
    /// Handle every complete line in the read buffer. False when the session was dropped (a
    /// malformed or unexpected line, or a line longer than [`MAX_QMP_LINE`]).
    fn take_lines(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>) -> bool {
        while let Some(nl) = self.rbuf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = self.rbuf.drain(..=nl).collect();
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            if let Err(e) = self.handle_line(line, out) {
                self.lost(e, now_ns, out);
                return false;
            }
        }
        if self.rbuf.len() > MAX_QMP_LINE {
            self.lost("QMP line too long".into(), now_ns, out);
            return false;
        }
        true
    }

    /// Take bytes as if QEMU had sent them on the current session: exactly what
    /// [`CheckpointSink::poll`] does with what it reads, without a socket (for tests and the
    /// fuzzer). Returns false when the bytes ended the session. Lines the sink would send are
    /// dropped with the session, as on a real disconnect.
    pub fn receive(&mut self, bytes: &[u8], now_ns: u64, out: &mut Vec<SinkEvent>) -> bool {
        self.rbuf.extend_from_slice(bytes);
        self.take_lines(now_ns, out)
    }

    /// Bytes queued for QEMU and not yet written (for tests and the fuzzer).
    pub fn pending_output(&self) -> &[u8] {
        &self.wbuf
    }
}

impl CheckpointSink for QmpSink {
    fn name(&self) -> &str {
        "qmp"
    }

    fn request(&mut self, _req: &CheckpointRequest, _now_ns: u64) {
        if self.conn.is_some() && self.phase == Phase::Ready && self.inflight.is_none() {
            self.send_checkpoint();
        } else if !self.pending {
            // One forced checkpoint covers every request made before it is sent.
            self.pending = true;
            self.stats.deferred += 1;
        }
    }

    fn poll(&mut self, now_ns: u64, out: &mut Vec<SinkEvent>) {
        if self.conn.is_none() {
            if !self.backoff.due(now_ns) {
                return;
            }
            // A UNIX connect completes or fails at once; it does not wait on the peer.
            match UnixStream::connect(&self.cfg.socket).map(Stream::Unix) {
                Ok(c) if c.set_nonblocking(true).is_ok() => {
                    self.conn = Some(c);
                    self.phase = Phase::Greeting;
                }
                Ok(_) | Err(_) => {
                    self.stats.connect_failures += 1;
                    self.backoff.failed(now_ns);
                    return;
                }
            }
        }
        let Some(conn) = self.conn.as_mut() else {
            return;
        };
        let closed = match conn.read_into(&mut self.rbuf, 256 * 1024) {
            ReadOutcome::Closed(why) => Some(why),
            ReadOutcome::Data => None,
        };
        if !self.take_lines(now_ns, out) {
            return;
        }
        if let Some(why) = closed {
            self.lost(why, now_ns, out);
            return;
        }
        if let Some(Err(e)) = self.conn.as_mut().map(|c| c.flush_from(&mut self.wbuf)) {
            self.lost(e, now_ns, out);
        }
    }

    fn stats(&self) -> serde_json::Value {
        serde_json::to_value(self.qmp_stats()).unwrap_or_default()
    }

    fn wait_fds<'a>(&'a self, now_ns: u64, fds: &mut Vec<(BorrowedFd<'a>, bool)>) -> Option<u64> {
        match &self.conn {
            Some(c) => {
                fds.push((c.as_fd(), !self.wbuf.is_empty()));
                None
            }
            None => Some(self.backoff.next_ns.saturating_sub(now_ns)),
        }
    }
}
