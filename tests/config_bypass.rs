//! Bypass rule parsing and matching (IPv4 and IPv6, either endpoint).

use std::net::IpAddr;

use colo_proxy::config::bypass::proto::{ICMP, ICMPV6, TCP, UDP};
use colo_proxy::config::BypassRule;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn rule(proto: &str, ports: Option<&str>, prefix: Option<&str>) -> BypassRule {
    BypassRule::parse(proto, ports, prefix).unwrap_or_else(|e| panic!("{e:?}"))
}

#[test]
fn parses_into_typed_rule() {
    let r = rule("udp", Some("5000-5100"), Some("10.0.0.0/8"));
    assert_eq!(r.proto, Some(UDP));
    assert_eq!(r.ports, 5000..=5100);
    assert_eq!(r.prefix, Some((ip("10.0.0.0"), 8)));
    let any = rule("any", None, None);
    assert_eq!(
        any,
        BypassRule {
            proto: None,
            ports: 0..=65535,
            prefix: None
        }
    );
    assert_eq!(rule("tcp", Some("22"), None).ports, 22..=22);
    assert_eq!(
        rule("any", None, Some("192.168.1.7")).prefix,
        Some((ip("192.168.1.7"), 32))
    );
    assert_eq!(
        rule("icmpv6", None, Some("fd00::/8")).prefix,
        Some((ip("fd00::"), 8))
    );
}

#[test]
fn v4_prefix_and_ports_match_either_endpoint() {
    let r = rule("udp", Some("5000-5100"), Some("10.0.0.0/8"));
    let (inside, outside) = (ip("10.1.2.3"), ip("192.168.0.1"));
    assert!(r.matches(UDP, inside, outside, 40000, 5000));
    assert!(
        r.matches(UDP, outside, inside, 5100, 40000),
        "reverse direction"
    );
    assert!(
        !r.matches(UDP, outside, inside, 4999, 5101),
        "ports just outside the range"
    );
    assert!(
        !r.matches(UDP, outside, ip("11.0.0.1"), 5000, 5000),
        "neither address in prefix"
    );
    assert!(
        !r.matches(TCP, inside, outside, 5000, 5000),
        "wrong protocol"
    );
    assert!(
        !r.matches(UDP, ip("fd00::1"), ip("fd00::2"), 5000, 5000),
        "family mismatch"
    );
}

#[test]
fn v6_prefix_matches() {
    let r = rule("tcp", None, Some("fd00::/8"));
    assert!(r.matches(TCP, ip("fd12:3456::1"), ip("2001:db8::1"), 1, 2));
    assert!(r.matches(TCP, ip("2001:db8::1"), ip("fdff::1"), 1, 2));
    assert!(!r.matches(TCP, ip("fe80::1"), ip("2001:db8::1"), 1, 2));
    assert!(!r.matches(TCP, ip("10.0.0.1"), ip("10.0.0.2"), 1, 2));
    let host = rule("any", None, Some("2001:db8::5/128"));
    assert!(host.matches(UDP, ip("2001:db8::5"), ip("::1"), 0, 0));
    assert!(!host.matches(UDP, ip("2001:db8::6"), ip("::1"), 0, 0));
    let icmp6 = rule("icmpv6", None, Some("fd00::/8"));
    assert!(icmp6.matches(ICMPV6, ip("fd00::1"), ip("fd00::2"), 0, 0));
    assert!(!icmp6.matches(ICMP, ip("fd00::1"), ip("fd00::2"), 0, 0));
}

#[test]
fn zero_length_prefix_and_any() {
    let all4 = rule("any", None, Some("0.0.0.0/0"));
    assert!(all4.matches(ICMP, ip("1.2.3.4"), ip("5.6.7.8"), 0, 0));
    assert!(!all4.matches(ICMP, ip("::1"), ip("::2"), 0, 0));
    let all6 = rule("any", None, Some("::/0"));
    assert!(all6.matches(TCP, ip("::1"), ip("2001:db8::1"), 1, 1));
    let any = rule("any", None, None);
    assert!(any.matches(99, ip("1.1.1.1"), ip("::1"), 0, 0));
    // A port rule without protocol still needs the port (portless packets pass 0).
    let p = rule("any", Some("53"), None);
    assert!(p.matches(UDP, ip("1.1.1.1"), ip("8.8.8.8"), 1234, 53));
    assert!(!p.matches(ICMP, ip("1.1.1.1"), ip("8.8.8.8"), 0, 0));
}

#[test]
fn parse_errors_name_the_field() {
    let err = |p, ports, prefix| BypassRule::parse(p, ports, prefix).unwrap_err();
    assert_eq!(err("tcp", Some("9-1"), None).0, "ports");
    assert_eq!(err("tcp", Some("65536"), None).0, "ports");
    assert_eq!(err("tcp", None, Some("10.0.0.0/40")).0, "prefix");
    assert_eq!(err("tcp", None, Some("10.0.0.0/x")).0, "prefix");
    assert_eq!(err("tcp", None, Some("fd00::1/8")).0, "prefix");
    assert_eq!(err("gre", None, None).0, "proto");
    assert_eq!(err("icmpv6", None, Some("10.0.0.0/8")).0, "proto");
}
