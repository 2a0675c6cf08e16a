//! Bypass rules: traffic that is released (primary) or freed (secondary) without comparison.
//!
//! Same semantics as the config's `[[compare.bypass]]` rules: every given condition must hold;
//! the port range and the prefix each match when either endpoint matches, so a rule covers both
//! directions. Matching is allocation-free and reads only the parsed header fields.

use std::net::IpAddr;

use crate::wire::{L3Kind, PacketInfo};

/// A bypass rule: the config's validated `[[compare.bypass]]` rule, used as is.
pub use crate::config::BypassRule as Bypass;

/// Whether a parsed frame is covered by `rule`. Non-IP frames match only a rule with no
/// condition at all. Same semantics as [`Bypass::matches`], without building addresses.
#[inline]
pub fn matches(rule: &Bypass, info: &PacketInfo) -> bool {
    let full_ports = rule.ports == (0..=u16::MAX);
    if !info.is_ip() {
        return rule.proto.is_none() && full_ports && rule.prefix.is_none();
    }
    if rule.proto.is_some_and(|p| p != info.ip_proto) {
        return false;
    }
    if !(full_ports || rule.ports.contains(&info.src_port) || rule.ports.contains(&info.dst_port)) {
        return false;
    }
    match rule.prefix {
        None => true,
        Some((net, len)) => {
            let v4 = info.l3 == L3Kind::Ipv4;
            in_prefix(&info.src_ip, v4, net, len) || in_prefix(&info.dst_ip, v4, net, len)
        }
    }
}

/// Same rule as the config's: the address masked to `len` bits equals `net` exactly.
fn in_prefix(addr: &[u8; 16], v4: bool, net: IpAddr, len: u8) -> bool {
    let (net_bytes, n): ([u8; 16], usize) = match (net, v4) {
        (IpAddr::V4(n), true) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&n.octets());
            (b, 4)
        }
        (IpAddr::V6(n), false) => (n.octets(), 16),
        _ => return false,
    };
    let mut bits = usize::from(len).min(n * 8);
    for i in 0..n {
        let take = bits.min(8);
        bits -= take;
        let mask = if take == 0 { 0 } else { 0xffu8 << (8 - take) };
        if addr[i] & mask != net_bytes[i] {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;
    use etherparse::PacketBuilder;

    fn udp(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut f = Vec::new();
        PacketBuilder::ethernet2([1; 6], [2; 6])
            .ipv4(src, dst, 64)
            .udp(sp, dp)
            .write(&mut f, b"x")
            .unwrap();
        f
    }

    fn rule(proto: Option<u8>) -> Bypass {
        Bypass {
            proto,
            ports: 0..=u16::MAX,
            prefix: None,
        }
    }

    #[test]
    fn proto_ports_prefix_each_narrow_the_rule() {
        let f = udp([10, 1, 2, 3], [192, 168, 0, 9], 5000, 53);
        let i = parse(&f).unwrap();
        assert!(matches(&rule(None), &i));
        assert!(matches(&rule(Some(17)), &i));
        assert!(!matches(&rule(Some(6)), &i));
        let mut r = rule(Some(17));
        r.ports = 53..=53;
        assert!(matches(&r, &i));
        r.ports = 54..=60;
        assert!(!matches(&r, &i));
        r.ports = 0..=u16::MAX;
        r.prefix = Some(("10.0.0.0".parse().unwrap(), 8));
        assert!(matches(&r, &i));
        r.prefix = Some(("192.168.0.8".parse().unwrap(), 31));
        assert!(matches(&r, &i));
        r.prefix = Some(("192.168.0.8".parse().unwrap(), 32));
        assert!(!matches(&r, &i));
        r.prefix = Some(("::".parse().unwrap(), 0));
        assert!(!matches(&r, &i), "an IPv6 prefix never matches IPv4");
    }

    #[test]
    fn non_ip_matches_only_catch_all() {
        let mut f = vec![0u8; 60];
        f[12..14].copy_from_slice(&0x88ccu16.to_be_bytes()); // LLDP
        let i = parse(&f).unwrap();
        assert!(matches(&rule(None), &i));
        assert!(!matches(&rule(Some(17)), &i));
    }

    proptest::proptest! {
        #[test]
        fn agrees_with_the_config_rule_matcher(
            tcp: bool, src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16,
            proto in proptest::option::of(proptest::sample::select(vec![6u8, 17, 1])),
            lo: u16, span in 0u16..2000,
            net: [u8; 4], len in 0u8..=32, with_prefix: bool,
        ) {
            let b = PacketBuilder::ethernet2([1; 6], [2; 6]).ipv4(src, dst, 64);
            let mut f = Vec::new();
            if tcp { b.tcp(sp, dp, 1, 1).write(&mut f, b"x").unwrap() } else { b.udp(sp, dp).write(&mut f, b"x").unwrap() }
            let i = parse(&f).unwrap();
            let r = Bypass {
                proto,
                ports: lo..=lo.saturating_add(span),
                prefix: with_prefix.then_some((IpAddr::from(net), len)),
            };
            let oracle = r.matches(if tcp { 6 } else { 17 }, IpAddr::from(src), IpAddr::from(dst), sp, dp);
            proptest::prop_assert_eq!(matches(&r, &i), oracle);
        }
    }
}
