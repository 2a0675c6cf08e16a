//! QEMU chardev framing (reference §3.1/§3.2), pure and allocation-free per frame.
//!
//! A frame on the wire is `u32 BE len` [+ `u32 BE vnet_hdr_len` when `vnet_hdr_support` is on]
//! followed by `len` packet bytes (virtio-net header, if any, plus the Ethernet frame). `len`
//! never counts the optional 4-byte field.
//!
//! Guarantees:
//! - [`Decoder`] accepts any fragmentation and any number of frames per input chunk, hands out
//!   frames that lie wholly inside the chunk without copying, and copies only frames that
//!   straddle chunk boundaries (into one buffer allocated at construction).
//! - Untrusted input never panics: a length above the cap or a vnet_hdr_len above 20 is an
//!   `Err` (counted); the decoder then stays failed until [`Decoder::reset`], because the
//!   byte stream can no longer be trusted to be in sync (the caller drops the connection).
//! - A length of 0 is a valid empty packet for QEMU (§3.2). We do not deliver it: it is
//!   reported as [`Decoded::Empty`], counted, and the stream stays in sync. (QEMU's own
//!   receivers only finalize it once more bytes arrive and then reject it as too short.)

use std::fmt;

/// QEMU's `NET_BUFSIZE` (4096 + 65536): the largest frame a QEMU receiver accepts.
pub const NET_BUFSIZE: usize = 4096 + 65536;
/// Largest vnet_hdr_len QEMU accepts (`sizeof(struct virtio_net_hdr_v1_hash)`).
pub const MAX_VNET_HDR_LEN: u32 = 20;

/// Bytes of framing before the packet data.
pub const fn header_len(vnet_hdr_support: bool) -> usize {
    if vnet_hdr_support {
        8
    } else {
        4
    }
}

/// Why a frame could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameError {
    /// Frame length above the cap (QEMU drops the link for these).
    Oversize {
        /// Length announced or requested.
        len: u32,
        /// The configured cap.
        cap: usize,
    },
    /// vnet_hdr_len above [`MAX_VNET_HDR_LEN`].
    BadVnetHdrLen(u32),
    /// The stream ended inside a frame (from [`Decoder::finish`]).
    Truncated {
        /// Bytes of the current frame (header included) received.
        have: usize,
        /// Bytes the frame needs (header included); header-only when the length is unknown.
        need: usize,
    },
    /// Encoding a zero-length frame (QEMU never sends them).
    Empty,
    /// The caller's output buffer is too small for the encoded frame.
    NoRoom {
        /// Bytes needed.
        need: usize,
    },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Oversize { len, cap } => write!(f, "frame length {len} above cap {cap}"),
            FrameError::BadVnetHdrLen(v) => {
                write!(f, "vnet_hdr_len {v} above {MAX_VNET_HDR_LEN}")
            }
            FrameError::Truncated { have, need } => {
                write!(
                    f,
                    "stream truncated inside a frame ({have} of {need} bytes)"
                )
            }
            FrameError::Empty => f.write_str("zero-length frame"),
            FrameError::NoRoom { need } => write!(f, "output buffer needs {need} bytes"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Framing parameters both ends of a link must agree on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FrameConfig {
    /// QEMU's `vnet_hdr_support`: frames carry the extra u32 vnet_hdr_len field.
    pub vnet_hdr_support: bool,
    /// Largest accepted frame length (default [`NET_BUFSIZE`]).
    pub max_frame: usize,
}

impl Default for FrameConfig {
    fn default() -> Self {
        FrameConfig {
            vnet_hdr_support: false,
            max_frame: NET_BUFSIZE,
        }
    }
}

impl FrameConfig {
    /// Default cap with the given `vnet_hdr_support`.
    pub fn with_vnet(vnet_hdr_support: bool) -> Self {
        FrameConfig {
            vnet_hdr_support,
            ..Self::default()
        }
    }

    /// Bytes of framing before the packet data.
    pub fn header_len(&self) -> usize {
        header_len(self.vnet_hdr_support)
    }

    /// Total encoded size of a frame of `frame_len` bytes.
    pub fn encoded_len(&self, frame_len: usize) -> usize {
        self.header_len() + frame_len
    }

    /// Check a frame before encoding it.
    fn check(&self, frame_len: usize, vnet_hdr_len: u32) -> Result<(), FrameError> {
        if frame_len == 0 {
            return Err(FrameError::Empty);
        }
        if frame_len > self.max_frame {
            return Err(FrameError::Oversize {
                len: u32::try_from(frame_len).unwrap_or(u32::MAX),
                cap: self.max_frame,
            });
        }
        if self.vnet_hdr_support && vnet_hdr_len > MAX_VNET_HDR_LEN {
            return Err(FrameError::BadVnetHdrLen(vnet_hdr_len));
        }
        Ok(())
    }

    /// Write only the framing header for a frame of `frame_len` bytes (for vectored writes);
    /// returns the header length. `vnet_hdr_len` is ignored when vnet support is off.
    pub fn encode_header(
        &self,
        out: &mut [u8],
        frame_len: usize,
        vnet_hdr_len: u32,
    ) -> Result<usize, FrameError> {
        self.check(frame_len, vnet_hdr_len)?;
        let h = self.header_len();
        if out.len() < h {
            return Err(FrameError::NoRoom { need: h });
        }
        // check() bounds frame_len by max_frame, which callers keep far below u32::MAX.
        let len = u32::try_from(frame_len).map_err(|_| FrameError::Oversize {
            len: u32::MAX,
            cap: self.max_frame,
        })?;
        out[..4].copy_from_slice(&len.to_be_bytes());
        if self.vnet_hdr_support {
            out[4..8].copy_from_slice(&vnet_hdr_len.to_be_bytes());
        }
        Ok(h)
    }

    /// Encode header + frame into `out`; returns the bytes written. No allocation.
    pub fn encode(
        &self,
        out: &mut [u8],
        vnet_hdr_len: u32,
        frame: &[u8],
    ) -> Result<usize, FrameError> {
        let total = self.encoded_len(frame.len());
        self.check(frame.len(), vnet_hdr_len)?;
        if out.len() < total {
            return Err(FrameError::NoRoom { need: total });
        }
        let h = self.encode_header(out, frame.len(), vnet_hdr_len)?;
        out[h..total].copy_from_slice(frame);
        Ok(total)
    }

    /// Append header + frame to `out`; never grows `out` beyond its current capacity
    /// (`NoRoom` instead), so a pre-sized output buffer never reallocates.
    pub fn encode_append(
        &self,
        out: &mut Vec<u8>,
        vnet_hdr_len: u32,
        frame: &[u8],
    ) -> Result<usize, FrameError> {
        self.check(frame.len(), vnet_hdr_len)?;
        let total = self.encoded_len(frame.len());
        if out.capacity() - out.len() < total {
            return Err(FrameError::NoRoom { need: total });
        }
        let mut hdr = [0u8; 8];
        let h = self.encode_header(&mut hdr, frame.len(), vnet_hdr_len)?;
        out.extend_from_slice(&hdr[..h]);
        out.extend_from_slice(frame);
        Ok(total)
    }
}

/// One decoded item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A packet: its vnet_hdr_len (0 when vnet support is off) and bytes.
    Frame {
        /// The sender's vnet_hdr_len field (0 when the field is absent).
        vnet_hdr_len: u32,
        /// The packet bytes (virtio-net header, if any, then the Ethernet frame).
        data: &'a [u8],
    },
    /// A frame with length 0 (counted, not a packet).
    Empty {
        /// The sender's vnet_hdr_len field.
        vnet_hdr_len: u32,
    },
}

/// Decoder counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecoderStats {
    /// Frames delivered.
    pub frames: u64,
    /// Packet bytes delivered.
    pub bytes: u64,
    /// Frames delivered straight from the input chunk.
    pub zero_copy: u64,
    /// Zero-length frames seen.
    pub empty: u64,
    /// Lengths above the cap.
    pub oversize: u64,
    /// vnet_hdr_len above 20.
    pub bad_vnet: u64,
    /// Streams that ended inside a frame.
    pub truncated: u64,
    /// Calls to [`Decoder::reset`].
    pub resets: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body { len: usize, vnet: u32 },
    Failed(FrameError),
}

/// Streaming decoder of QEMU-framed packets.
pub struct Decoder {
    cfg: FrameConfig,
    state: State,
    hdr: [u8; 8],
    hdr_have: usize,
    body: Vec<u8>,
    stats: DecoderStats,
}

impl fmt::Debug for Decoder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Decoder")
            .field("cfg", &self.cfg)
            .field("state", &self.state)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Decoder {
    /// A decoder; allocates its reassembly buffer (`max_frame` bytes) once, here.
    pub fn new(cfg: FrameConfig) -> Self {
        Decoder {
            cfg,
            state: State::Header,
            hdr: [0; 8],
            hdr_have: 0,
            body: Vec::with_capacity(cfg.max_frame),
            stats: DecoderStats::default(),
        }
    }

    /// The framing parameters.
    pub fn config(&self) -> FrameConfig {
        self.cfg
    }

    /// Counters so far.
    pub fn stats(&self) -> DecoderStats {
        self.stats
    }

    /// Forget any partial frame and a failure (new connection).
    pub fn reset(&mut self) {
        self.state = State::Header;
        self.hdr_have = 0;
        self.body.clear();
        self.stats.resets += 1;
    }

    /// True when no partial frame is buffered (the stream is at a frame boundary).
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header) && self.hdr_have == 0
    }

    /// End of stream: `Err(Truncated)` (counted) when it ended inside a frame, or the pending
    /// failure. Does not reset.
    pub fn finish(&mut self) -> Result<(), FrameError> {
        match self.state {
            State::Failed(e) => Err(e),
            State::Header if self.hdr_have == 0 => Ok(()),
            State::Header => {
                self.stats.truncated += 1;
                Err(FrameError::Truncated {
                    have: self.hdr_have,
                    need: self.cfg.header_len(),
                })
            }
            State::Body { len, .. } => {
                self.stats.truncated += 1;
                let h = self.cfg.header_len();
                Err(FrameError::Truncated {
                    have: h + self.body.len(),
                    need: h + len,
                })
            }
        }
    }

    /// Parse a complete header; moves to Body, emits Empty, or fails.
    fn on_header(&mut self, hdr: &[u8], f: &mut impl FnMut(Decoded<'_>)) -> Result<(), FrameError> {
        let len = u32::from_be_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let vnet = if self.cfg.vnet_hdr_support {
            u32::from_be_bytes([hdr[4], hdr[5], hdr[6], hdr[7]])
        } else {
            0
        };
        if len as usize > self.cfg.max_frame {
            self.stats.oversize += 1;
            return self.fail(FrameError::Oversize {
                len,
                cap: self.cfg.max_frame,
            });
        }
        if vnet > MAX_VNET_HDR_LEN {
            self.stats.bad_vnet += 1;
            return self.fail(FrameError::BadVnetHdrLen(vnet));
        }
        if len == 0 {
            self.stats.empty += 1;
            f(Decoded::Empty { vnet_hdr_len: vnet });
            self.state = State::Header;
        } else {
            self.state = State::Body {
                len: len as usize,
                vnet,
            };
        }
        Ok(())
    }

    fn fail(&mut self, e: FrameError) -> Result<(), FrameError> {
        self.state = State::Failed(e);
        Err(e)
    }

    /// Decode everything in `input`, calling `f` for every complete frame in order.
    ///
    /// On error the frames before the bad header have been delivered; the decoder stays
    /// failed (every later call returns the same error) until [`Decoder::reset`].
    pub fn feed(&mut self, input: &[u8], mut f: impl FnMut(Decoded<'_>)) -> Result<(), FrameError> {
        let hlen = self.cfg.header_len();
        let mut i = 0;
        loop {
            match self.state {
                State::Failed(e) => return Err(e),
                State::Header => {
                    let rest = &input[i..];
                    if self.hdr_have == 0 && rest.len() >= hlen {
                        // Fast path: whole header inside the chunk.
                        i += hlen;
                        self.on_header(&rest[..hlen], &mut f)?;
                    } else {
                        if rest.is_empty() {
                            return Ok(());
                        }
                        let take = (hlen - self.hdr_have).min(rest.len());
                        self.hdr[self.hdr_have..self.hdr_have + take]
                            .copy_from_slice(&rest[..take]);
                        self.hdr_have += take;
                        i += take;
                        if self.hdr_have < hlen {
                            return Ok(());
                        }
                        self.hdr_have = 0;
                        let hdr = self.hdr;
                        self.on_header(&hdr[..hlen], &mut f)?;
                    }
                }
                State::Body { len, vnet } => {
                    let rest = &input[i..];
                    if rest.is_empty() {
                        return Ok(());
                    }
                    if self.body.is_empty() && rest.len() >= len {
                        i += len;
                        self.stats.frames += 1;
                        self.stats.bytes += len as u64;
                        self.stats.zero_copy += 1;
                        self.state = State::Header;
                        f(Decoded::Frame {
                            vnet_hdr_len: vnet,
                            data: &rest[..len],
                        });
                    } else {
                        let take = (len - self.body.len()).min(rest.len());
                        self.body.extend_from_slice(&rest[..take]);
                        i += take;
                        if self.body.len() < len {
                            return Ok(());
                        }
                        self.stats.frames += 1;
                        self.stats.bytes += len as u64;
                        self.state = State::Header;
                        f(Decoded::Frame {
                            vnet_hdr_len: vnet,
                            data: &self.body[..len],
                        });
                        self.body.clear();
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(
        d: &mut Decoder,
        input: &[u8],
        out: &mut Vec<(u32, Vec<u8>)>,
    ) -> Result<(), FrameError> {
        d.feed(input, |x| match x {
            Decoded::Frame { vnet_hdr_len, data } => out.push((vnet_hdr_len, data.to_vec())),
            Decoded::Empty { vnet_hdr_len } => out.push((vnet_hdr_len, Vec::new())),
        })
    }

    #[test]
    fn encode_matches_reference_bytes() {
        // Reference §3.1: 22-byte payload with and without the vnet field.
        let p = b"Hello! filter-mirror~\0";
        let mut out = [0u8; 64];
        let n = FrameConfig::with_vnet(false)
            .encode(&mut out, 0, p)
            .unwrap();
        assert_eq!(&out[..4], &[0, 0, 0, 0x16]);
        assert_eq!(&out[4..n], p);
        let n = FrameConfig::with_vnet(true)
            .encode(&mut out, 12, p)
            .unwrap();
        assert_eq!(&out[..8], &[0, 0, 0, 0x16, 0, 0, 0, 12]);
        assert_eq!(n, 30);
    }

    #[test]
    fn encode_rejects_bad_input() {
        let c = FrameConfig::with_vnet(true);
        let mut out = [0u8; 16];
        assert_eq!(c.encode(&mut out, 0, &[]), Err(FrameError::Empty));
        assert_eq!(
            c.encode(&mut out, 21, &[1]),
            Err(FrameError::BadVnetHdrLen(21))
        );
        assert_eq!(
            c.encode(&mut out, 0, &[0; 9]),
            Err(FrameError::NoRoom { need: 17 })
        );
        let big = vec![0u8; NET_BUFSIZE + 1];
        assert!(matches!(
            c.encode(&mut out, 0, &big),
            Err(FrameError::Oversize { .. })
        ));
        let mut v = Vec::with_capacity(10);
        assert_eq!(c.encode_append(&mut v, 0, &[1, 2]), Ok(10));
        assert_eq!(
            c.encode_append(&mut v, 0, &[1]),
            Err(FrameError::NoRoom { need: 9 })
        );
        assert_eq!(v.capacity(), 10);
    }

    #[test]
    fn decodes_several_frames_zero_copy() {
        let c = FrameConfig::with_vnet(true);
        let mut s = Vec::with_capacity(100);
        c.encode_append(&mut s, 10, &[1, 2, 3]).unwrap();
        c.encode_append(&mut s, 0, &[4]).unwrap();
        let mut d = Decoder::new(c);
        let mut out = Vec::new();
        collect(&mut d, &s, &mut out).unwrap();
        assert_eq!(out, vec![(10, vec![1, 2, 3]), (0, vec![4])]);
        assert_eq!(d.stats().zero_copy, 2);
        assert!(d.at_boundary());
        assert_eq!(d.finish(), Ok(()));
    }

    #[test]
    fn length_zero_is_distinct_and_keeps_sync() {
        let mut d = Decoder::new(FrameConfig::default());
        let mut out = Vec::new();
        let mut n_empty = 0;
        d.feed(&[0, 0, 0, 0, 0, 0, 0, 1, 9], |x| match x {
            Decoded::Empty { .. } => n_empty += 1,
            Decoded::Frame { data, .. } => out.push(data.to_vec()),
        })
        .unwrap();
        assert_eq!(n_empty, 1);
        assert_eq!(out, vec![vec![9]]);
        assert_eq!(d.stats().empty, 1);
        assert_eq!(d.stats().frames, 1);
    }

    #[test]
    fn oversize_and_bad_vnet_fail_until_reset() {
        let mut d = Decoder::new(FrameConfig::default());
        let cap = (NET_BUFSIZE as u32 + 1).to_be_bytes();
        let mut out = Vec::new();
        assert!(matches!(
            collect(&mut d, &cap, &mut out),
            Err(FrameError::Oversize { .. })
        ));
        assert!(collect(&mut d, &[0, 0, 0, 1, 7], &mut out).is_err());
        assert!(out.is_empty());
        d.reset();
        collect(&mut d, &[0, 0, 0, 1, 7], &mut out).unwrap();
        assert_eq!(out, vec![(0, vec![7])]);
        // Exactly the cap is fine.
        let mut d = Decoder::new(FrameConfig::default());
        let ok = (NET_BUFSIZE as u32).to_be_bytes();
        collect(&mut d, &ok, &mut out).unwrap();

        let mut d = Decoder::new(FrameConfig::with_vnet(true));
        assert_eq!(
            collect(&mut d, &[0, 0, 0, 1, 0, 0, 0, 21, 1], &mut out),
            Err(FrameError::BadVnetHdrLen(21))
        );
        assert_eq!(d.stats().bad_vnet, 1);
    }

    #[test]
    fn truncated_at_close_is_reported() {
        let mut d = Decoder::new(FrameConfig::default());
        let mut out = Vec::new();
        collect(&mut d, &[0, 0], &mut out).unwrap();
        assert_eq!(d.finish(), Err(FrameError::Truncated { have: 2, need: 4 }));
        d.reset();
        collect(&mut d, &[0, 0, 0, 5, 1, 2], &mut out).unwrap();
        assert_eq!(d.finish(), Err(FrameError::Truncated { have: 6, need: 9 }));
        assert_eq!(d.stats().truncated, 2);
        d.reset();
        assert_eq!(d.finish(), Ok(()));
    }
}
