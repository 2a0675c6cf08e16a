//! Divergence capture context: the last frames a shard saw, kept only while capture is on.

use crate::compare::Side;
use crate::flow::FlowKey;
use crate::mgmt::capture::CapturedPacket;

/// Bytes of each diverging frame kept for capture.
pub(super) const CAPTURE_SNAPLEN: usize = 2048;
/// Recent frames a shard remembers while capture is on (context for a divergence).
const CONTEXT_FRAMES: usize = 64;
/// Bytes of each context frame kept (headers and the start of the payload).
const CONTEXT_SNAPLEN: usize = 256;
/// Context frames attached to one divergence at most.
const CONTEXT_PER_DIVERGENCE: usize = 8;

/// One remembered frame.
#[derive(Clone, Copy)]
pub(super) struct ContextFrame {
    flow_hash: u64,
    side: Side,
    time_ns: u64,
    orig_len: u32,
    len: u16,
    data: [u8; CONTEXT_SNAPLEN],
}

/// The last [`CONTEXT_FRAMES`] frames of a shard, kept only while capture is on: preallocated,
/// one bounded copy per frame, so a divergence's capture can show what led to it.
pub(super) struct ContextRing {
    frames: Box<[ContextFrame]>,
    next: usize,
    filled: usize,
}

impl ContextRing {
    pub(super) fn new() -> Self {
        let empty = ContextFrame {
            flow_hash: 0,
            side: Side::Primary,
            time_ns: 0,
            orig_len: 0,
            len: 0,
            data: [0; CONTEXT_SNAPLEN],
        };
        ContextRing {
            frames: vec![empty; CONTEXT_FRAMES].into_boxed_slice(),
            next: 0,
            filled: 0,
        }
    }

    pub(super) fn remember(&mut self, side: Side, frame: &[u8], now_ns: u64) {
        let Ok(info) = crate::wire::parse(frame) else {
            return;
        };
        let f = &mut self.frames[self.next];
        f.flow_hash = FlowKey::of(&info, frame).hash64();
        f.side = side;
        f.time_ns = now_ns;
        f.orig_len = frame.len() as u32;
        let n = frame.len().min(CONTEXT_SNAPLEN);
        f.len = n as u16;
        f.data[..n].copy_from_slice(&frame[..n]);
        self.next = (self.next + 1) % CONTEXT_FRAMES;
        self.filled = (self.filled + 1).min(CONTEXT_FRAMES);
    }

    /// Remembered frames of the flow with `flow_hash`, oldest first, excluding the newest one
    /// (the packet that diverged is captured in full separately).
    pub(super) fn of_flow(&self, flow_hash: u64) -> Vec<CapturedPacket> {
        let start = (self.next + CONTEXT_FRAMES - self.filled) % CONTEXT_FRAMES;
        let mut out: Vec<CapturedPacket> = (0..self.filled)
            .map(|i| &self.frames[(start + i) % CONTEXT_FRAMES])
            .filter(|f| f.flow_hash == flow_hash)
            .map(|f| CapturedPacket {
                side: f.side.into(),
                time_ns: f.time_ns,
                data: f.data[..f.len as usize].to_vec(),
                orig_len: f.orig_len,
            })
            .collect();
        out.pop();
        let skip = out.len().saturating_sub(CONTEXT_PER_DIVERGENCE);
        out.drain(..skip);
        out
    }

    pub(super) fn clear(&mut self) {
        self.filled = 0;
    }
}
