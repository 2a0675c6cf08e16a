//! The two COLO link streams as one endpoint.
//!
//! Like QEMU: the mirror stream carries client traffic primary → secondary; the
//! secondary-output stream carries the SVM's output secondary → primary. Each stream is its own
//! [`FramedSocket`] (own connection, framing and counters), so a stall on one never blocks the
//! other. The primary sends on `mirror` and receives on `secondary`; the secondary the reverse.

use std::io;

use super::socket::{FramedSocket, SendError, SocketConfig, SocketStats};

/// Which host this endpoint runs on: the primary's (sends the mirror stream, receives the
/// secondary output) or the secondary's (the reverse). The COLO pair's one `Side`.
pub use crate::compare::Side;

/// Configuration of both streams.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// This host's side.
    pub side: Side,
    /// The mirror stream socket (primary → secondary).
    pub mirror: SocketConfig,
    /// The secondary-output stream socket (secondary → primary).
    pub secondary: SocketConfig,
}

/// Counters of both streams.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStats {
    /// Mirror stream.
    pub mirror: SocketStats,
    /// Secondary-output stream.
    pub secondary: SocketStats,
}

/// The mirror and secondary-output streams of one host.
#[derive(Debug)]
pub struct LinkEndpoint {
    side: Side,
    /// Mirror stream (primary → secondary).
    pub mirror: FramedSocket,
    /// Secondary-output stream (secondary → primary).
    pub secondary: FramedSocket,
}

impl LinkEndpoint {
    /// Open both sockets (servers bind now, clients connect on first poll).
    pub fn new(cfg: LinkConfig) -> io::Result<Self> {
        Ok(LinkEndpoint {
            side: cfg.side,
            mirror: FramedSocket::new(cfg.mirror)?,
            secondary: FramedSocket::new(cfg.secondary)?,
        })
    }

    /// This host's side.
    pub fn side(&self) -> Side {
        self.side
    }

    fn outgoing(&mut self) -> &mut FramedSocket {
        match self.side {
            Side::Primary => &mut self.mirror,
            Side::Secondary => &mut self.secondary,
        }
    }

    fn incoming(&mut self) -> &mut FramedSocket {
        match self.side {
            Side::Primary => &mut self.secondary,
            Side::Secondary => &mut self.mirror,
        }
    }

    /// Queue a frame on this side's outgoing stream (mirror on the primary, secondary output
    /// on the secondary).
    pub fn send(&mut self, vnet_hdr_len: u32, frame: &[u8]) -> Result<(), SendError> {
        self.outgoing().send(vnet_hdr_len, frame)
    }

    /// Receive from this side's incoming stream; returns frames delivered.
    pub fn poll_recv(&mut self, f: impl FnMut(u32, &[u8])) -> usize {
        self.incoming().poll_recv(f)
    }

    /// Flush the outgoing stream and keep the incoming one's connection alive (a stream is
    /// used in one direction only, but both must be connected and drained of close events).
    pub fn flush(&mut self) -> usize {
        // The outgoing stream's peer never sends; reading it detects close and discards junk.
        self.outgoing().poll_recv(|_, _| {});
        self.outgoing().flush()
    }

    /// Counters of both streams.
    pub fn stats(&self) -> LinkStats {
        LinkStats {
            mirror: self.mirror.stats(),
            secondary: self.secondary.stats(),
        }
    }
}
