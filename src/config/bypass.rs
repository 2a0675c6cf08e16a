//! Bypass rules: traffic released without comparison. Parsed from `[[compare.bypass]]`;
//! matching is pure and allocation-free so the data path may call it.

use std::net::IpAddr;
use std::ops::RangeInclusive;

/// IP protocol numbers the rules name.
pub mod proto {
    /// ICMP (IPv4).
    pub const ICMP: u8 = 1;
    /// TCP.
    pub const TCP: u8 = 6;
    /// UDP.
    pub const UDP: u8 = 17;
    /// ICMPv6.
    pub const ICMPV6: u8 = 58;
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
    pub fn matches(
        &self,
        proto: u8,
        src_ip: IpAddr,
        dst_ip: IpAddr,
        src_port: u16,
        dst_port: u16,
    ) -> bool {
        if self.proto.is_some_and(|p| p != proto) {
            return false;
        }
        if !(self.ports.contains(&src_port) || self.ports.contains(&dst_port)) {
            return false;
        }
        match self.prefix {
            None => true,
            Some((net, len)) => in_prefix(src_ip, net, len) || in_prefix(dst_ip, net, len),
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

fn in_prefix(ip: IpAddr, net: IpAddr, len: u8) -> bool {
    ip.is_ipv4() == net.is_ipv4() && masked(ip, len) == net
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
