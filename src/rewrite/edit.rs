//! In-place TCP field edits with RFC 1624 incremental checksum updates.
//!
//! Every function takes a frame and the offset of a TCP header that [`crate::wire::parse`]
//! validated, so the fixed fields and the options it reports lie inside the frame. The checksum
//! is only touched when it is a complete checksum (not a device-completed partial sum), and an
//! incorrect incoming checksum stays exactly as incorrect (a full recomputation would hide
//! corruption).

use crate::wire::checksum::{fold, sum, update_u32};
use crate::wire::packet::{tcp_opt, tcp_options};

/// Offset of the seq field in the TCP header.
pub const SEQ: usize = 4;
/// Offset of the ack field.
pub const ACK: usize = 8;
/// Offset of the checksum field.
const CSUM: usize = 16;

/// Most SACK options looked at in one header (a 60-byte header holds at most one in practice).
const MAX_SACK_OPTS: usize = 2;

/// Where the options the rewriter cares about sit, as offsets from the TCP header start.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opts {
    /// Offset of a well-formed timestamps option (kind 8, length 10).
    pub ts: Option<usize>,
    /// Offsets and lengths of well-formed SACK options (length 2 + 8n, n ≥ 1).
    pub sack: [(usize, usize); MAX_SACK_OPTS],
    /// Number of valid entries in `sack`.
    pub n_sack: usize,
    /// A timestamps or SACK option had an impossible length (left alone).
    pub bad: bool,
}

impl Opts {
    /// Scan the options of `hdr` (the whole TCP header).
    #[inline]
    pub fn scan(hdr: &[u8]) -> Opts {
        let mut o = Opts::default();
        if hdr.len() <= 20 {
            return o;
        }
        for (kind, at, len) in tcp_options(hdr) {
            match kind {
                tcp_opt::TIMESTAMP => {
                    if len == 10 && o.ts.is_none() {
                        o.ts = Some(at);
                    } else {
                        o.bad = true;
                    }
                }
                tcp_opt::SACK => {
                    if len >= 10 && (len - 2).is_multiple_of(8) && o.n_sack < MAX_SACK_OPTS {
                        o.sack[o.n_sack] = (at, len);
                        o.n_sack += 1;
                    } else {
                        o.bad = true;
                    }
                }
                _ => {}
            }
        }
        o
    }

    /// (TSval, TSecr) when a timestamps option is present.
    #[inline]
    pub fn timestamps(&self, hdr: &[u8]) -> Option<(u32, u32)> {
        let at = self.ts?;
        Some((rd32(hdr, at + 2), rd32(hdr, at + 6)))
    }
}

/// Big-endian u32 at `at`. Callers only pass offsets validated by the parser or [`Opts::scan`].
#[inline]
pub fn rd32(d: &[u8], at: usize) -> u32 {
    match d.get(at..at + 4) {
        Some(b) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        None => 0,
    }
}

/// Add `delta` (mod 2^32) to the 32-bit field at `at` of the TCP header `hdr`, updating the
/// checksum unless `partial`. Returns false (and changes nothing) when the field is out of range.
#[inline]
pub fn add32(hdr: &mut [u8], at: usize, delta: u32, partial: bool) -> bool {
    if at + 4 > hdr.len() || hdr.len() < 20 {
        return false;
    }
    let old = rd32(hdr, at);
    let new = old.wrapping_add(delta);
    if at.is_multiple_of(2) {
        hdr[at..at + 4].copy_from_slice(&new.to_be_bytes());
        if !partial {
            let hc = u16::from_be_bytes([hdr[CSUM], hdr[CSUM + 1]]);
            let hc = update_u32(hc, old, new);
            hdr[CSUM..CSUM + 2].copy_from_slice(&hc.to_be_bytes());
        }
    } else {
        // An option at an odd offset straddles three 16-bit words: update over the aligned
        // window around it. `hdr.len()` is a multiple of 4, so `at + 5` is inside the header.
        let (start, end) = (at - 1, at + 5);
        if end > hdr.len() {
            return false;
        }
        let before = fold(sum(&hdr[start..end], 0));
        hdr[at..at + 4].copy_from_slice(&new.to_be_bytes());
        if !partial {
            let after = fold(sum(&hdr[start..end], 0));
            let hc = u16::from_be_bytes([hdr[CSUM], hdr[CSUM + 1]]);
            let acc = u64::from(!hc) + u64::from(!before) + u64::from(after);
            hdr[CSUM..CSUM + 2].copy_from_slice(&(!fold(acc)).to_be_bytes());
        }
    }
    true
}

/// Shift every SACK block edge by `delta`.
#[inline]
pub fn shift_sack(hdr: &mut [u8], opts: &Opts, delta: u32, partial: bool) -> bool {
    let mut changed = false;
    for &(at, len) in &opts.sack[..opts.n_sack] {
        let mut e = at + 2;
        while e + 4 <= at + len {
            changed |= add32(hdr, e, delta, partial);
            e += 4;
        }
    }
    changed
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::checksum::finish;

    fn tcp_csum_ok(hdr: &[u8]) -> bool {
        // No pseudo-header: a consistent sum over the segment alone is enough for this test.
        fold(sum(hdr, 0)) == 0xffff
    }

    fn with_csum(mut hdr: Vec<u8>) -> Vec<u8> {
        hdr[16] = 0;
        hdr[17] = 0;
        let c = finish(sum(&hdr, 0));
        hdr[16..18].copy_from_slice(&c.to_be_bytes());
        hdr
    }

    #[test]
    fn odd_offset_field_update_matches_full_sum() {
        // 20-byte header + NOP + timestamps(10) + NOP pad: TS starts at offset 21 (odd).
        let mut h = vec![0u8; 32];
        h[12] = 8 << 4;
        h[20] = 1;
        h[21] = 8;
        h[22] = 10;
        h[23..27].copy_from_slice(&0x1234_5678u32.to_be_bytes());
        h[27..31].copy_from_slice(&0x9abc_def0u32.to_be_bytes());
        h[31] = 0;
        let mut h = with_csum(h);
        let o = Opts::scan(&h);
        assert_eq!(o.ts, Some(21));
        assert_eq!(o.timestamps(&h), Some((0x1234_5678, 0x9abc_def0)));
        assert!(add32(&mut h, 23, 0x8000_0001, false));
        assert!(add32(&mut h, 27, 0xffff_ffff, false));
        assert_eq!(rd32(&h, 23), 0x9234_5679);
        assert_eq!(rd32(&h, 27), 0x9abc_deef);
        assert!(tcp_csum_ok(&h));
    }

    #[test]
    fn bad_option_lengths_are_flagged_and_skipped() {
        let mut h = vec![0u8; 32];
        h[12] = 8 << 4;
        h[20] = 5; // SACK with length 6: not 2 + 8n
        h[21] = 6;
        h[26] = 8; // timestamps with length 6
        h[27] = 6;
        let o = Opts::scan(&h);
        assert!(o.bad);
        assert_eq!(o.n_sack, 0);
        assert_eq!(o.ts, None);
    }
}
