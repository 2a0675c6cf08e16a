//! DPDK-port link encapsulation (pure: works on any [`PacketBuf`]).
//!
//! Layout of an encapsulated frame (24 bytes before the inner frame):
//!
//! ```text
//! dst MAC (6) | src MAC (6) | EtherType (2, default 0x88B5)
//! version u8 (=1) | stream id u8 | flags u8 | reserved u8 (0) | seq u32 BE | inner len u16 BE
//! inner frame (inner len bytes) | [padding added by the port to reach 60 bytes]
//! ```
//!
//! Guarantees: encode writes the header into the buffer's headroom (the inner frame is never
//! copied); decode validates and strips header and padding in place; malformed frames are an
//! [`EncapError`], never a panic. [`SeqTracker`] turns per-stream sequence numbers into loss,
//! reorder, duplicate and wraparound events with counters.

use crate::buf::{BufError, PacketBuf};

/// Default outer EtherType (IEEE 802 local experimental 1).
pub const ETHERTYPE_EXPERIMENTAL: u16 = 0x88B5;
/// Encapsulation header version.
pub const VERSION: u8 = 1;
/// Outer Ethernet header length.
pub const ETH_LEN: usize = 14;
/// Encapsulation header length after the outer Ethernet header.
pub const HDR_LEN: usize = 10;
/// Total bytes added in front of the inner frame.
pub const OVERHEAD: usize = ETH_LEN + HDR_LEN;
/// Stream id of the mirror stream (primary → secondary).
pub const STREAM_MIRROR: u8 = 0;
/// Stream id of the secondary-output stream (secondary → primary).
pub const STREAM_SECONDARY: u8 = 1;
/// Number of stream ids a receiver tracks by default.
pub const DEFAULT_STREAMS: usize = 2;
/// Header flag: a heartbeat (no inner frame), sent on a stream between colo-proxies so the
/// peer can tell an idle link from a dead one. It takes a sequence number like any frame, so
/// a lost heartbeat counts as a loss.
pub const FLAG_HEARTBEAT: u8 = 0x01;

/// Why a frame could not be encapsulated or decapsulated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncapError {
    /// Frame shorter than the encapsulation headers.
    #[error("frame of {0} bytes shorter than the {OVERHEAD}-byte encapsulation")]
    Short(usize),
    /// Outer EtherType is not ours.
    #[error("outer EtherType {0:#06x} is not the link's")]
    EtherType(u16),
    /// Unknown header version.
    #[error("encapsulation version {0} unsupported")]
    Version(u8),
    /// Inner length exceeds what the frame holds.
    #[error("inner length {inner} exceeds the {avail} bytes present")]
    InnerLen {
        /// Announced inner length.
        inner: usize,
        /// Bytes present after the header.
        avail: usize,
    },
    /// Stream id beyond the receiver's table.
    #[error("unknown stream id {0}")]
    Stream(u8),
    /// Inner frame too long for the u16 length field.
    #[error("inner frame of {0} bytes too long")]
    TooLong(usize),
    /// Not enough headroom to prepend the header.
    #[error("buffer: {0}")]
    Buf(BufError),
}

/// Outer addressing of the link port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapConfig {
    /// Destination MAC (the peer's link port).
    pub dst: [u8; 6],
    /// Source MAC (our link port).
    pub src: [u8; 6],
    /// Outer EtherType.
    pub ethertype: u16,
}

impl Default for EncapConfig {
    fn default() -> Self {
        EncapConfig {
            dst: [0xff; 6],
            src: [0x02, 0, 0, 0, 0, 1],
            ethertype: ETHERTYPE_EXPERIMENTAL,
        }
    }
}

/// The decoded encapsulation header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EncapHeader {
    /// Stream id.
    pub stream: u8,
    /// Flags (opaque to the link; carried end to end).
    pub flags: u8,
    /// Sequence number.
    pub seq: u32,
    /// Inner frame length.
    pub inner_len: u16,
}

/// Prepend the outer Ethernet and encapsulation headers to `buf` (no copy of the inner frame).
pub fn encap<B: PacketBuf + ?Sized>(
    buf: &mut B,
    cfg: &EncapConfig,
    stream: u8,
    flags: u8,
    seq: u32,
) -> Result<(), EncapError> {
    let inner = buf.len();
    let inner_len = u16::try_from(inner).map_err(|_| EncapError::TooLong(inner))?;
    let h = buf.prepend(OVERHEAD).map_err(EncapError::Buf)?;
    h[0..6].copy_from_slice(&cfg.dst);
    h[6..12].copy_from_slice(&cfg.src);
    h[12..14].copy_from_slice(&cfg.ethertype.to_be_bytes());
    h[14] = VERSION;
    h[15] = stream;
    h[16] = flags;
    h[17] = 0;
    h[18..22].copy_from_slice(&seq.to_be_bytes());
    h[22..24].copy_from_slice(&inner_len.to_be_bytes());
    Ok(())
}

/// Read and validate the headers without changing the buffer.
pub fn peek(frame: &[u8], ethertype: u16) -> Result<EncapHeader, EncapError> {
    if frame.len() < OVERHEAD {
        return Err(EncapError::Short(frame.len()));
    }
    let et = u16::from_be_bytes([frame[12], frame[13]]);
    if et != ethertype {
        return Err(EncapError::EtherType(et));
    }
    if frame[14] != VERSION {
        return Err(EncapError::Version(frame[14]));
    }
    let inner_len = u16::from_be_bytes([frame[22], frame[23]]);
    let avail = frame.len() - OVERHEAD;
    if inner_len as usize > avail {
        return Err(EncapError::InnerLen {
            inner: inner_len as usize,
            avail,
        });
    }
    Ok(EncapHeader {
        stream: frame[15],
        flags: frame[16],
        seq: u32::from_be_bytes([frame[18], frame[19], frame[20], frame[21]]),
        inner_len,
    })
}

/// Validate and strip the headers and any trailing padding in place.
pub fn decap<B: PacketBuf + ?Sized>(
    buf: &mut B,
    ethertype: u16,
) -> Result<EncapHeader, EncapError> {
    let h = peek(buf.data(), ethertype)?;
    let pad = buf.len() - OVERHEAD - h.inner_len as usize;
    buf.trim(pad).map_err(EncapError::Buf)?;
    buf.adj(OVERHEAD).map_err(EncapError::Buf)?;
    Ok(h)
}

/// Sender side of one stream: stamps consecutive sequence numbers.
#[derive(Debug, Clone)]
pub struct EncapTx {
    cfg: EncapConfig,
    stream: u8,
    next_seq: u32,
}

impl EncapTx {
    /// A sender for `stream` starting at sequence 0.
    pub fn new(cfg: EncapConfig, stream: u8) -> Self {
        EncapTx {
            cfg,
            stream,
            next_seq: 0,
        }
    }

    /// Start at `seq` (tests; a restarted sender).
    pub fn with_seq(mut self, seq: u32) -> Self {
        self.next_seq = seq;
        self
    }

    /// Encapsulate `buf`; returns the sequence number used. The number is consumed only on
    /// success.
    pub fn encap<B: PacketBuf + ?Sized>(
        &mut self,
        buf: &mut B,
        flags: u8,
    ) -> Result<u32, EncapError> {
        let seq = self.next_seq;
        encap(buf, &self.cfg, self.stream, flags, seq)?;
        self.next_seq = seq.wrapping_add(1);
        Ok(seq)
    }
}

/// What one sequence number told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqEvent {
    /// First frame seen on the stream (baseline).
    First,
    /// The expected number.
    InOrder,
    /// Ahead of the expected number: `lost` frames missing (may still arrive late).
    Gap {
        /// Number expected.
        expected: u32,
        /// Number received.
        got: u32,
        /// Frames skipped.
        lost: u32,
    },
    /// Behind the expected number and not seen before: a reordered frame (was counted lost).
    Reordered {
        /// Number received.
        seq: u32,
    },
    /// Behind the expected number and already seen.
    Duplicate {
        /// Number received.
        seq: u32,
    },
    /// Too far behind to judge (sender restart?): taken as the new baseline.
    Resync {
        /// Number expected.
        expected: u32,
        /// Number received.
        got: u32,
    },
}

/// Per-stream sequence counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// Frames tracked.
    pub received: u64,
    /// Frames with the expected number.
    pub in_order: u64,
    /// Frames missing (net of late arrivals).
    pub lost: u64,
    /// Gap events.
    pub gaps: u64,
    /// Late (reordered) frames.
    pub reordered: u64,
    /// Duplicate frames.
    pub duplicates: u64,
    /// Times the sequence number wrapped past 2^32.
    pub wraps: u64,
    /// Baseline resets.
    pub resyncs: u64,
}

/// Width of the recent-sequence window used to tell reordering from duplication.
pub const SEQ_WINDOW: u32 = 64;

/// Loss/reorder detector for one stream; O(1) per frame, no allocation.
#[derive(Debug, Clone, Default)]
pub struct SeqTracker {
    started: bool,
    expected: u32,
    /// Bit i set: `expected - 1 - i` was received.
    window: u64,
    stats: SeqStats,
}

impl SeqTracker {
    /// A tracker with no baseline yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Counters so far.
    pub fn stats(&self) -> SeqStats {
        self.stats
    }

    /// The next number expected (meaningless before the first frame).
    pub fn expected(&self) -> u32 {
        self.expected
    }

    /// Forget the baseline (link reset); counters are kept.
    pub fn reset(&mut self) {
        self.started = false;
        self.window = 0;
    }

    fn advance_to(&mut self, seq: u32) {
        let next = seq.wrapping_add(1);
        if next < self.expected {
            self.stats.wraps += 1;
        }
        let shift = next.wrapping_sub(self.expected);
        self.window = if shift >= 64 { 0 } else { self.window << shift };
        // Mark `seq` itself (now expected - 1).
        self.window |= 1;
        self.expected = next;
    }

    /// Account one received sequence number.
    pub fn track(&mut self, seq: u32) -> SeqEvent {
        self.stats.received += 1;
        if !self.started {
            self.started = true;
            self.expected = seq.wrapping_add(1);
            if self.expected == 0 {
                self.stats.wraps += 1;
            }
            self.window = 1;
            return SeqEvent::First;
        }
        let diff = seq.wrapping_sub(self.expected) as i32;
        if diff == 0 {
            self.stats.in_order += 1;
            self.advance_to(seq);
            SeqEvent::InOrder
        } else if diff > 0 {
            let expected = self.expected;
            let lost = diff as u32;
            self.stats.lost += u64::from(lost);
            self.stats.gaps += 1;
            self.advance_to(seq);
            SeqEvent::Gap {
                expected,
                got: seq,
                lost,
            }
        } else {
            let behind = diff.unsigned_abs(); // 1 = the last frame received
            if behind <= SEQ_WINDOW {
                let bit = 1u64 << (behind - 1);
                if self.window & bit != 0 {
                    self.stats.duplicates += 1;
                    SeqEvent::Duplicate { seq }
                } else {
                    self.window |= bit;
                    self.stats.reordered += 1;
                    self.stats.lost = self.stats.lost.saturating_sub(1);
                    SeqEvent::Reordered { seq }
                }
            } else {
                let expected = self.expected;
                self.stats.resyncs += 1;
                self.expected = seq.wrapping_add(1);
                if self.expected == 0 {
                    self.stats.wraps += 1;
                }
                self.window = 1;
                SeqEvent::Resync { expected, got: seq }
            }
        }
    }
}

/// Receiver side: validates, strips and tracks every stream.
#[derive(Debug, Clone)]
pub struct EncapRx<const N: usize = DEFAULT_STREAMS> {
    ethertype: u16,
    trackers: [SeqTracker; N],
    errors: u64,
}

impl<const N: usize> EncapRx<N> {
    /// A receiver for stream ids `0..N` with the given outer EtherType.
    pub fn new(ethertype: u16) -> Self {
        EncapRx {
            ethertype,
            trackers: std::array::from_fn(|_| SeqTracker::new()),
            errors: 0,
        }
    }

    /// Decapsulate `buf` in place and track its sequence number. On error the buffer is
    /// unchanged and the error counted.
    pub fn decap<B: PacketBuf + ?Sized>(
        &mut self,
        buf: &mut B,
    ) -> Result<(EncapHeader, SeqEvent), EncapError> {
        let r = peek(buf.data(), self.ethertype).and_then(|h| {
            if (h.stream as usize) < N {
                Ok(h)
            } else {
                Err(EncapError::Stream(h.stream))
            }
        });
        let h = match r {
            Ok(h) => h,
            Err(e) => {
                self.errors += 1;
                return Err(e);
            }
        };
        decap(buf, self.ethertype)?;
        let ev = self.trackers[h.stream as usize].track(h.seq);
        Ok((h, ev))
    }

    /// Sequence counters of `stream`.
    pub fn stream_stats(&self, stream: u8) -> Option<SeqStats> {
        self.trackers.get(stream as usize).map(SeqTracker::stats)
    }

    /// Malformed or unknown-stream frames rejected.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// Forget every stream's baseline (link reset).
    pub fn reset(&mut self) {
        self.trackers.iter_mut().for_each(SeqTracker::reset);
    }
}
