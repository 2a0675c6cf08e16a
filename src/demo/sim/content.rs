//! Deterministic content: hashes, a small PRNG, and the request/response functions the client
//! and the VM agree on. Everything here is a pure function of its arguments.

use std::ops::RangeInclusive;

/// SplitMix64 finaliser: a good 64-bit mixer.
#[inline]
pub fn mix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A tiny deterministic PRNG (SplitMix64); `Clone` so a VM copy continues the same stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// The next 64 random bits.
    #[inline]
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }
    /// A float in [0, 1).
    #[inline]
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
    /// True with probability `p` (0 → never, 1 → always).
    #[inline]
    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && (p >= 1.0 || self.next_f64() < p)
    }
}

/// A value in `range` chosen by `h` (the range's start when empty or reversed).
#[inline]
pub fn pick(range: &RangeInclusive<usize>, h: u64) -> usize {
    let (lo, hi) = (*range.start(), *range.end());
    if hi <= lo {
        return lo;
    }
    let span = (hi - lo) as u64 + 1;
    lo + (h % span) as usize
}

/// Hash of a connection 4-tuple (addresses as 16 bytes, IPv4 in the first 4).
pub fn tuple_hash(client_ip: &[u8; 16], client_port: u16, vm_ip: &[u8; 16], vm_port: u16) -> u64 {
    let mut h = 0x243f_6a88_85a3_08d3u64;
    for chunk in client_ip.chunks_exact(8).chain(vm_ip.chunks_exact(8)) {
        let mut w = [0u8; 8];
        w.copy_from_slice(chunk);
        h = mix64(h ^ u64::from_le_bytes(w));
    }
    mix64(h ^ (u64::from(client_port) << 16) ^ u64::from(vm_port))
}

/// Pseudo-random byte `i` of the stream keyed by `key`.
#[inline]
fn prf_word(key: u64, word: u64) -> [u8; 8] {
    mix64(key ^ word.wrapping_mul(0x2545_f491_4f6c_dd1d)).to_le_bytes()
}

/// Fill `dst` with bytes `off..off + dst.len()` of the keyed stream.
fn fill_prf(key: u64, off: usize, dst: &mut [u8]) {
    let mut i = 0;
    while i < dst.len() {
        let pos = off + i;
        let w = prf_word(key, (pos / 8) as u64);
        let from = pos % 8;
        let n = (8 - from).min(dst.len() - i);
        dst[i..i + n].copy_from_slice(&w[from..from + n]);
        i += n;
    }
}

/// Fill `dst` with bytes `off..` of a framed message: 4-byte big-endian total length, then the
/// keyed body stream.
fn fill_framed(key: u64, len: usize, off: usize, dst: &mut [u8]) {
    let hdr = (len as u32).to_be_bytes();
    let mut i = 0;
    while i < dst.len() && off + i < 4 {
        dst[i] = hdr[off + i];
        i += 1;
    }
    if i < dst.len() {
        fill_prf(key, off + i, &mut dst[i..]);
    }
}

/// Length of the framed header of requests and responses.
pub const FRAME_HDR: usize = 4;

/// The key of client transaction `txn`'s request body.
#[inline]
pub fn request_key(seed: u64, txn: u64) -> u64 {
    mix64(seed ^ mix64(txn ^ 0x5151_5151))
}

/// Request length (at least the 4-byte header) for transaction key `key`.
#[inline]
pub fn request_len(range: &RangeInclusive<usize>, key: u64) -> usize {
    pick(range, mix64(key ^ 0x1e4)).max(FRAME_HDR)
}

/// Fill `dst` with request bytes `off..` (request of `len` bytes with body key `key`).
pub fn fill_request(key: u64, len: usize, off: usize, dst: &mut [u8]) {
    fill_framed(key, len, off, dst);
}

/// Incremental hash of the request bytes, seeded with the connection's tuple hash; the
/// response is a function of its final value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestHash(u64);

impl RequestHash {
    /// Start hashing a request on the connection with tuple hash `tuple`.
    pub fn new(tuple: u64) -> Self {
        RequestHash(0xcbf2_9ce4_8422_2325 ^ tuple)
    }
    /// Add request bytes in order (FNV-1a).
    #[inline]
    pub fn update(&mut self, bytes: &[u8]) {
        let mut h = self.0;
        for &b in bytes {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        self.0 = h;
    }
    /// The final value.
    pub fn value(&self) -> u64 {
        self.0
    }
}

/// The request hash of a whole request, as the VM will compute it.
pub fn request_hash(key: u64, len: usize, tuple: u64) -> u64 {
    let mut h = RequestHash::new(tuple);
    let mut chunk = [0u8; 256];
    let mut off = 0;
    while off < len {
        let n = (len - off).min(chunk.len());
        fill_request(key, len, off, &mut chunk[..n]);
        h.update(&chunk[..n]);
        off += n;
    }
    h.value()
}

/// Response length for request hash `rh` given the VM's response size range.
#[inline]
pub fn response_len(range: &RangeInclusive<usize>, rh: u64) -> usize {
    pick(range, mix64(rh ^ 0x7e5)).max(FRAME_HDR)
}

/// Fill `dst` with response bytes `off..` (response of `len` bytes for request hash `rh`).
pub fn fill_response(rh: u64, len: usize, off: usize, dst: &mut [u8]) {
    fill_framed(mix64(rh ^ 0xa11ce), len, off, dst);
}

/// Bytes at the front of a UDP request/reply or ICMP echo payload holding the transaction id.
pub const DGRAM_ID_LEN: usize = 8;

/// Fill `dst` with a datagram request payload for `txn` (id first, then keyed bytes).
pub fn fill_datagram(seed: u64, txn: u64, dst: &mut [u8]) {
    let id = txn.to_be_bytes();
    let n = dst.len().min(DGRAM_ID_LEN);
    dst[..n].copy_from_slice(&id[..n]);
    if dst.len() > DGRAM_ID_LEN {
        fill_prf(
            request_key(seed, txn),
            DGRAM_ID_LEN,
            &mut dst[DGRAM_ID_LEN..],
        );
    }
}

/// The UDP reply transform, in place: the id stays, every later byte is transformed.
pub fn udp_transform(payload: &mut [u8]) {
    for (i, b) in payload.iter_mut().enumerate().skip(DGRAM_ID_LEN) {
        *b = !(b.rotate_left(3)) ^ (i as u8);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framed_fill_is_offset_consistent() {
        let mut whole = [0u8; 300];
        fill_request(42, 300, 0, &mut whole);
        assert_eq!(&whole[..4], &300u32.to_be_bytes());
        for split in [1, 3, 4, 5, 7, 8, 9, 150, 299] {
            let mut a = [0u8; 300];
            fill_request(42, 300, 0, &mut a[..split]);
            fill_request(42, 300, split, &mut a[split..]);
            assert_eq!(a, whole, "split at {split}");
        }
    }

    #[test]
    fn request_hash_matches_incremental_segments() {
        let key = request_key(7, 3);
        let len = 1000;
        let mut h = RequestHash::new(99);
        let mut buf = [0u8; 1000];
        fill_request(key, len, 0, &mut buf);
        for seg in buf.chunks(333) {
            h.update(seg);
        }
        assert_eq!(h.value(), request_hash(key, len, 99));
        assert_ne!(request_hash(key, len, 98), request_hash(key, len, 99));
    }

    #[test]
    fn pick_and_rng_stay_in_range() {
        let mut r = Rng::new(1);
        for _ in 0..1000 {
            let v = pick(&(10..=20), r.next_u64());
            assert!((10..=20).contains(&v));
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
        }
        assert_eq!(pick(&(5..=5), 123), 5);
        assert!(!r.chance(0.0));
        assert!(r.chance(1.0));
    }

    #[test]
    fn udp_transform_keeps_id_and_changes_body() {
        let mut p = [0u8; 32];
        fill_datagram(1, 77, &mut p);
        let orig = p;
        udp_transform(&mut p);
        assert_eq!(&p[..8], &77u64.to_be_bytes());
        assert_ne!(&p[8..], &orig[8..]);
    }
}
