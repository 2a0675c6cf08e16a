//! Frame to compare metadata ([`Meta`]): the general path (`wire::parse` + [`FlowKey::of`] +
//! [`meta_of`]) and the fast path for the common shapes ([`fast_tcp4`] / [`fast_udp4`] on
//! `wire::fast`), which gives exactly the general path's key, hash and metadata whenever it
//! takes a frame (property-tested below).

use crate::flow::FlowKey;
use crate::wire::fast;
use crate::wire::packet::{
    tcp_flags, L3Kind, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};
use crate::wire::PacketInfo;

use super::pool::Meta;
use super::FlowKind;

/// [`Meta::kind`] codes.
pub(super) const K_TCP: u8 = 0;
pub(super) const K_DGRAM: u8 = 1;
pub(super) const K_L3: u8 = 2;

/// The common frame shape (untagged IPv4 without options, not a fragment, TCP) parsed
/// straight into its flow key, [`FlowKey::hash64`] and compare metadata. Gives exactly what
/// `parse` + `FlowKey::of` + `meta_of` give for such a frame (property-tested against them)
/// without building a [`PacketInfo`]; `None` sends the frame down the general path.
#[inline(always)]
pub(super) fn fast_tcp4(d: &[u8], now: u64, key: &mut FlowKey, m: &mut Meta) -> Option<u64> {
    let t = fast::tcp4(d)?;
    let hash = key.set_v4_ports(IPPROTO_TCP, &t.ports);
    let seq = t.seq.wrapping_add(u32::from(t.flags & tcp_flags::SYN != 0));
    let len = if t.flags & tcp_flags::RST != 0 {
        0
    } else {
        (t.l3_end - t.payload_off) as u32
    };
    *m = Meta {
        arrival: now,
        seq,
        end: seq.wrapping_add(len),
        ack: t.ack,
        cmp_off: t.payload_off as u32,
        cmp_end: t.l3_end as u32,
        flags: t.flags,
        kind: K_TCP,
        ipver: 0,
        state: 0,
    };
    Some(hash)
}

/// Untagged option-less IPv4 UDP, not a fragment: like [`fast_tcp4`] (same guarantee).
#[inline(always)]
pub(super) fn fast_udp4(d: &[u8], now: u64, key: &mut FlowKey, m: &mut Meta) -> Option<u64> {
    let u = fast::udp4(d)?;
    let hash = key.set_v4_ports(IPPROTO_UDP, &u.ports);
    *m = Meta {
        arrival: now,
        cmp_off: fast::L4 as u32,
        cmp_end: u.l3_end as u32,
        kind: K_DGRAM,
        ..Meta::default()
    };
    Some(hash)
}

#[inline]
pub(super) fn kind_code(k: FlowKind) -> u8 {
    match k {
        FlowKind::Tcp => K_TCP,
        FlowKind::Datagram => K_DGRAM,
        FlowKind::L3 => K_L3,
    }
}

#[inline]
pub(super) fn flow_kind(info: &PacketInfo) -> FlowKind {
    if info.tcp.is_some() {
        FlowKind::Tcp
    } else if info.is_ip()
        && !info.fragment
        && matches!(info.ip_proto, IPPROTO_UDP | IPPROTO_ICMP | IPPROTO_ICMPV6)
    {
        FlowKind::Datagram
    } else {
        FlowKind::L3
    }
}

#[inline]
pub(super) fn meta_of(info: &PacketInfo, kind: FlowKind, now: u64) -> Meta {
    let mut m = Meta {
        arrival: now,
        kind: kind_code(kind),
        cmp_end: info.l3_end,
        ..Meta::default()
    };
    match kind {
        FlowKind::Tcp => {
            let t = info.tcp.unwrap_or_default();
            let syn = u32::from(t.flags & tcp_flags::SYN != 0);
            m.seq = t.seq.wrapping_add(syn);
            // An RST's payload (diagnostic text) is not part of the stream.
            let len = if t.flags & tcp_flags::RST != 0 {
                0
            } else {
                info.payload_len() as u32
            };
            m.end = m.seq.wrapping_add(len);
            m.ack = t.ack;
            m.flags = t.flags;
            m.cmp_off = info.payload_off() as u32;
        }
        FlowKind::Datagram => m.cmp_off = u32::from(info.l4_off),
        FlowKind::L3 => {
            m.cmp_off = u32::from(info.l3_off);
            m.ipver = match info.l3 {
                L3Kind::Ipv4 => 4,
                L3Kind::Ipv6 => 6,
                _ => 0,
            };
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;

    fn meta_fields(m: &Meta) -> (u64, u32, u32, u32, u32, u32, u8, u8, u8, u8) {
        (
            m.arrival, m.seq, m.end, m.ack, m.cmp_off, m.cmp_end, m.flags, m.kind, m.ipver, m.state,
        )
    }

    type FastPath = fn(&[u8], u64, &mut FlowKey, &mut Meta) -> Option<u64>;

    /// `fast_path` takes the valid frame `clean`, and agrees with parse + FlowKey::of + hash64 +
    /// meta_of (the frame of `kind`) on it and on `clean` with `pokes` applied, whenever it
    /// takes one.
    fn agrees_with_the_general_path(
        fast_path: FastPath,
        kind: FlowKind,
        clean: &[u8],
        pokes: Vec<(usize, u8)>,
    ) -> Result<(), proptest::test_runner::TestCaseError> {
        let general = |f: &[u8]| {
            let info = parse(f).ok()?;
            let key = FlowKey::of(&info, f);
            (flow_kind(&info) == kind).then(|| (key, key.hash64(), meta_of(&info, kind, 7)))
        };
        let fast = |f: &[u8]| {
            let mut k = FlowKey::of(&PacketInfo::default(), &[]);
            let mut m = Meta::default();
            fast_path(f, 7, &mut k, &mut m).map(|h| (k, h, m))
        };
        proptest::prop_assert!(fast(clean).is_some(), "valid frame not taken");
        let mut f = clean.to_vec();
        for (at, v) in pokes {
            if at < f.len() {
                f[at] = v;
            }
        }
        for frame in [clean, &f] {
            if let Some((k, h, m)) = fast(frame) {
                let (gk, gh, gm) =
                    general(frame).expect("fast path took a frame the parser rejects");
                proptest::prop_assert_eq!(k, gk);
                proptest::prop_assert_eq!(h, gh);
                proptest::prop_assert_eq!(meta_fields(&m), meta_fields(&gm));
            }
        }
        Ok(())
    }

    proptest::proptest! {
        /// The fast path agrees with parse + FlowKey::of + hash64 + meta_of whenever it takes a
        /// frame, and takes every valid untagged option-less IPv4 TCP frame.
        #[test]
        fn fast_tcp4_agrees_with_the_general_path(
            src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16, seq: u32, ack: u32, flags: u8,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            opt_words in 0usize..3, pad in 0usize..8,
            pokes in proptest::collection::vec((0usize..80, proptest::prelude::any::<u8>()), 0..3),
        ) {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(src, dst, 64)
                .tcp(sp, dp, seq, 1000)
                .write(&mut f, &payload)
                .unwrap();
            f[42..46].copy_from_slice(&ack.to_be_bytes());
            f[47] = flags;
            // TCP options (NOPs) grow the header: patch data offset and IP length.
            for _ in 0..opt_words * 4 {
                f.insert(54, 1);
            }
            f[46] = ((5 + opt_words as u8) << 4) | (f[46] & 0x0f);
            let total = (f.len() - 14) as u16;
            f[16..18].copy_from_slice(&total.to_be_bytes());
            f.extend(std::iter::repeat_n(0u8, pad)); // Ethernet padding
            agrees_with_the_general_path(fast_tcp4, FlowKind::Tcp, &f, pokes)?;
        }
    }

    proptest::proptest! {
        /// Same for UDP: agrees with the general path whenever it takes a frame, and takes
        /// every valid untagged option-less IPv4 UDP frame.
        #[test]
        fn fast_udp4_agrees_with_the_general_path(
            src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16,
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..40),
            pad in 0usize..8,
            pokes in proptest::collection::vec((0usize..60, proptest::prelude::any::<u8>()), 0..3),
        ) {
            let mut f = Vec::new();
            etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
                .ipv4(src, dst, 64)
                .udp(sp, dp)
                .write(&mut f, &payload)
                .unwrap();
            f.extend(std::iter::repeat_n(0u8, pad)); // Ethernet padding
            agrees_with_the_general_path(fast_udp4, FlowKind::Datagram, &f, pokes)?;
        }
    }
}
