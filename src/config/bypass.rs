//! Bypass rules: traffic released (primary) or freed (secondary) without comparison. The one
//! rule type ([`BypassRule`], parsed and validated from `[[compare.bypass]]` and `ctl bypass
//! add`) and the one matcher: [`matches()`] on the compare hot path (allocation-free, reads only
//! the parsed header fields) and [`BypassRule::matches`] for callers holding addresses.
//!
//! Every given condition must hold; the port range and the prefix each match when either
//! endpoint matches, so a rule covers both directions. It lives here, not in `compare`, so
//! that the layers point one way: `compare` uses this type (re-exported as `compare::Bypass`),
//! and this module depends only on `wire`.

use std::net::IpAddr;
use std::ops::RangeInclusive;

use crate::wire::{L3Kind, PacketInfo};

/// IP protocol numbers the rules name (the parser's, under the names the rules use).
pub mod proto {
    pub use crate::wire::packet::{
        IPPROTO_ICMP as ICMP, IPPROTO_ICMPV6 as ICMPV6, IPPROTO_TCP as TCP, IPPROTO_UDP as UDP,
    };
}

/// Most bypass rules a pipeline holds (config and `ctl bypass add` alike): every compare
/// shard scans them per packet, so the list stays short.
pub const MAX_RULES: usize = 64;

/// A validated bypass rule. Every given condition must hold; the prefix and the port range
/// each match when either endpoint (source or destination) matches, so a rule covers both
/// directions of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BypassRule {
    /// IP protocol number; `None` = any.
    pub proto: Option<u8>,
    /// Port range (full range when not given).
    pub ports: RangeInclusive<u16>,
    /// Network prefix and length; `None` = any address.
    pub prefix: Option<(IpAddr, u8)>,
}

impl BypassRule {
    /// Whether a packet with these header fields is bypassed (ports 0 for portless protocols).
    /// The same matcher as [`matches()`], for a caller holding addresses, not a parsed frame.
    pub fn matches(
        &self,
        proto: u8,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        src_port: u16,
        dst_port: u16,
    ) -> bool {
        let (src, src_v4) = octets(src_ip);
        let (dst, dst_v4) = octets(dst_ip);
        self.matches_fields(proto, (&src, src_v4), (&dst, dst_v4), src_port, dst_port)
    }

    /// The matcher, on IP header fields as the parser leaves them: each address with IPv4 in
    /// its first 4 bytes and whether it is IPv4.
    #[inline]
    fn matches_fields(
        &self,
        proto: u8,
        src: (&[u8; 16], bool),
        dst: (&[u8; 16], bool),
        src_port: u16,
        dst_port: u16,
    ) -> bool {
        let full_ports = self.ports == (0..=u16::MAX);
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        if !(full_ports || self.ports.contains(&src_port) || self.ports.contains(&dst_port)) {
            return false;
        }
        match self.prefix {
            None => true,
            Some((net, len)) => {
                in_prefix(src.0, src.1, net, len) || in_prefix(dst.0, dst.1, net, len)
            }
        }
    }

    /// Parse the three TOML strings; `Err` holds `(field, reason)`.
    pub fn parse(
        proto: &str,
        ports: Option<&str>,
        prefix: Option<&str>,
    ) -> Result<BypassRule, (&'static str, String)> {
        let proto = match proto {
            "any" => None,
            "tcp" => Some(proto::TCP),
            "udp" => Some(proto::UDP),
            "icmp" => Some(proto::ICMP),
            "icmpv6" => Some(proto::ICMPV6),
            other => {
                return Err((
                    "proto",
                    format!(
                        "{other:?} is not one of \"tcp\", \"udp\", \"icmp\", \"icmpv6\", \"any\""
                    ),
                ))
            }
        };
        let ports = match ports {
            None => 0..=u16::MAX,
            Some(s) => parse_ports(s).map_err(|r| ("ports", r))?,
        };
        if ports != (0..=u16::MAX) && matches!(proto, Some(proto::ICMP) | Some(proto::ICMPV6)) {
            return Err(("ports", "ICMP has no ports".to_string()));
        }
        let prefix = match prefix {
            None => None,
            Some(s) => Some(parse_prefix(s).map_err(|r| ("prefix", r))?),
        };
        match (proto, prefix) {
            (Some(proto::ICMP), Some((IpAddr::V6(_), _))) => Err((
                "proto",
                "\"icmp\" never matches an IPv6 prefix; use \"icmpv6\"".to_string(),
            )),
            (Some(proto::ICMPV6), Some((IpAddr::V4(_), _))) => Err((
                "proto",
                "\"icmpv6\" never matches an IPv4 prefix; use \"icmp\"".to_string(),
            )),
            _ => Ok(BypassRule {
                proto,
                ports,
                prefix,
            }),
        }
    }
}

fn parse_ports(s: &str) -> Result<RangeInclusive<u16>, String> {
    let num = |x: &str| {
        x.trim()
            .parse::<u16>()
            .map_err(|_| format!("{x:?} is not a port number (0..=65535)"))
    };
    let (a, b) = match s.split_once('-') {
        Some((a, b)) => (num(a)?, num(b)?),
        None => {
            let p = num(s)?;
            (p, p)
        }
    };
    if a > b {
        return Err(format!("range {s:?} is reversed (first port above last)"));
    }
    Ok(a..=b)
}

fn parse_prefix(s: &str) -> Result<(IpAddr, u8), String> {
    let (addr, len) = match s.split_once('/') {
        Some((a, l)) => (a, Some(l)),
        None => (s, None),
    };
    let ip: IpAddr = addr
        .trim()
        .parse()
        .map_err(|_| format!("{addr:?} is not an IPv4 or IPv6 address"))?;
    let max = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(l) => l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|&n| n <= max)
            .ok_or_else(|| format!("prefix length {l:?} is not within 0..={max}"))?,
    };
    if masked(ip, len) != ip {
        return Err(format!(
            "{s:?} has host bits set (network is {}/{len})",
            masked(ip, len)
        ));
    }
    Ok((ip, len))
}

fn masked(ip: IpAddr, len: u8) -> IpAddr {
    match ip {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::V4((u32::from(a) & m).into())
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::V6((u128::from(a) & m).into())
        }
    }
}

/// Whether a parsed frame is covered by `rule`: the data path's matcher (no address is
/// built). Non-IP frames match only a rule with no condition at all.
#[inline]
pub fn matches(rule: &BypassRule, info: &PacketInfo) -> bool {
    if !info.is_ip() {
        return rule.proto.is_none() && rule.ports == (0..=u16::MAX) && rule.prefix.is_none();
    }
    let v4 = info.l3 == L3Kind::Ipv4;
    rule.matches_fields(
        info.ip_proto,
        (&info.src_ip, v4),
        (&info.dst_ip, v4),
        info.src_port,
        info.dst_port,
    )
}

/// An address as the parser stores it, and whether it is IPv4.
fn octets(ip: IpAddr) -> ([u8; 16], bool) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (b, true)
        }
        IpAddr::V6(a) => (a.octets(), false),
    }
}

/// The address (`v4`: IPv4 in its first 4 bytes) masked to `len` bits equals `net` exactly;
/// never across families.
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

/// Name of a protocol number as the rules write it.
pub fn proto_name(p: u8) -> String {
    match p {
        proto::TCP => "tcp".into(),
        proto::UDP => "udp".into(),
        proto::ICMP => "icmp".into(),
        proto::ICMPV6 => "icmpv6".into(),
        other => format!("proto {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::parse;
    use etherparse::PacketBuilder;

    /// The name the compare engine uses for the rule type.
    type Bypass = BypassRule;

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
