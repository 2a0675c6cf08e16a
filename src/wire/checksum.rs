//! Internet checksums: full (RFC 1071) and incremental (RFC 1624).
//!
//! Sums are accumulated in a `u32`/`u64` of 16-bit big-endian words and folded at the end.
//! The incremental update implements RFC 1624 eqn. 3, `HC' = ~(~HC + ~m + m')`, which never
//! produces the -0 (0x0000) ambiguity of eqn. 2.

/// One's-complement sum of `data` as big-endian 16-bit words (odd tail padded with zero),
/// added to `initial`; not folded.
#[inline]
pub fn sum(data: &[u8], initial: u64) -> u64 {
    let mut acc = initial;
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        // Four words at a time; the u64 accumulator cannot overflow for any frame size.
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]))
            + u64::from(u16::from_be_bytes([c[2], c[3]]))
            + u64::from(u16::from_be_bytes([c[4], c[5]]))
            + u64::from(u16::from_be_bytes([c[6], c[7]]));
    }
    let rest = chunks.remainder();
    let mut words = rest.chunks_exact(2);
    for w in &mut words {
        acc += u64::from(u16::from_be_bytes([w[0], w[1]]));
    }
    if let [last] = words.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Fold a wide sum into 16 bits (not complemented).
#[inline]
pub fn fold(mut acc: u64) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    acc as u16
}

/// The checksum field value for `data` with `initial` (e.g. a pseudo-header sum).
#[inline]
pub fn finish(acc: u64) -> u16 {
    !fold(acc)
}

/// Sum of the IPv4 pseudo-header for an L4 segment of `l4_len` bytes.
#[inline]
pub fn pseudo_v4(src: &[u8; 4], dst: &[u8; 4], proto: u8, l4_len: u32) -> u64 {
    sum(src, 0) + sum(dst, 0) + u64::from(proto) + u64::from(l4_len)
}

/// Sum of the IPv6 pseudo-header for an upper-layer packet of `l4_len` bytes.
#[inline]
pub fn pseudo_v6(src: &[u8; 16], dst: &[u8; 16], next_header: u8, l4_len: u32) -> u64 {
    sum(src, 0) + sum(dst, 0) + u64::from(next_header) + u64::from(l4_len)
}

/// RFC 1624 incremental update of checksum `hc` when a 16-bit word changes from `old` to `new`.
#[inline]
pub fn update_u16(hc: u16, old: u16, new: u16) -> u16 {
    let acc = u64::from(!hc) + u64::from(!old) + u64::from(new);
    !fold(acc)
}

/// RFC 1624 incremental update of checksum `hc` when a 32-bit field changes from `old` to `new`.
#[inline]
pub fn update_u32(hc: u16, old: u32, new: u32) -> u16 {
    let acc = u64::from(!hc)
        + u64::from(!(old >> 16) as u16)
        + u64::from(!(old as u16))
        + u64::from((new >> 16) as u16)
        + u64::from(new as u16);
    !fold(acc)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc1071_example() {
        // RFC 1071 §3 example bytes: 00 01 f2 03 f4 f5 f6 f7 → sum 0xddf2.
        let d = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&d, 0)), 0xddf2);
        assert_eq!(finish(sum(&d, 0)), !0xddf2);
    }

    #[test]
    fn odd_length_pads_with_zero() {
        assert_eq!(fold(sum(&[0x12, 0x34, 0x56], 0)), 0x1234 + 0x5600);
    }

    #[test]
    fn incremental_matches_full_recompute() {
        let mut data: Vec<u8> = (0u8..40).map(|i| i.wrapping_mul(37)).collect();
        let hc = finish(sum(&data, 0));
        let old = u32::from_be_bytes([data[4], data[5], data[6], data[7]]);
        let new = 0xdead_beefu32;
        data[4..8].copy_from_slice(&new.to_be_bytes());
        assert_eq!(update_u32(hc, old, new), finish(sum(&data, 0)));
        let old16 = u16::from_be_bytes([data[10], data[11]]);
        data[10..12].copy_from_slice(&0xffffu16.to_be_bytes());
        let hc2 = finish(sum(&data, 0));
        data[10..12].copy_from_slice(&old16.to_be_bytes());
        assert_eq!(update_u16(hc2, 0xffff, old16), finish(sum(&data, 0)));
    }
}
