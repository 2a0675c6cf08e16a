//! `compare.ipv6 = "pass"` / `compare.vlan = "pass"`: the operator opt-in for a QEMU
//! secondary (its filter-rewriter translates IPv4 TCP only), in the engine and the config.

mod compare_support;

use colo_proxy::compare::{CompareConfig, Release, SecondaryFree};
use colo_proxy::config::{Config, PassMode};
use compare_support::*;
use etherparse::PacketBuilder;

const C6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10];
const S6: [u8; 16] = [0xfd, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x02];

/// An IPv6 TCP segment server → client with sequence number `seq`.
fn tcp6(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv6(S6, C6, 64)
        .tcp(SPORT, CPORT, seq, 1000)
        .ack(5000)
        .write(&mut f, payload)
        .unwrap();
    f
}

/// An 802.1Q-tagged IPv4 TCP segment.
fn tcp_vlan(seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    PacketBuilder::ethernet2([1; 6], [2; 6])
        .single_vlan(100.try_into().unwrap())
        .ipv4(SERVER, CLIENT, 64)
        .tcp(SPORT, CPORT, seq, 1000)
        .ack(5000)
        .write(&mut f, payload)
        .unwrap();
    f
}

fn cfg(ipv6: bool, vlan: bool) -> CompareConfig {
    CompareConfig {
        pass_ipv6: ipv6,
        pass_vlan: vlan,
        ..CompareConfig::default()
    }
}

#[test]
fn ipv6_tcp_with_its_own_sequence_numbers_diverges_when_compared() {
    // What a QEMU secondary produces for IPv6: the SVM's ISN, untranslated.
    let mut h = H::with(cfg(false, false));
    h.p(&tcp6(1000, b"hello"));
    h.s(&tcp6(777_000, b"hello"));
    h.advance(4000 * MS);
    assert!(h.r.released.is_empty(), "{:?}", h.r.hows());
    assert!(!h.r.events.is_empty(), "compared: a divergence");
}

#[test]
fn ipv6_pass_releases_primaries_at_once_frees_secondaries_and_counts_them() {
    let mut h = H::with(cfg(true, false));
    h.p(&tcp6(1000, b"hello"));
    h.s(&tcp6(777_000, b"hello"));
    h.p(&tcp6(1005, b"world"));
    assert_eq!(h.r.hows(), vec![Release::Bypass, Release::Bypass]);
    assert_eq!(h.r.freed.len(), 1);
    assert_eq!(h.r.freed[0].1, SecondaryFree::Bypass);
    assert!(h.r.events.is_empty());
    let c = h.c.counters();
    assert_eq!((c.rel_pass_ipv6, c.rel_pass_vlan, c.sec_passed), (2, 0, 1));
    assert_eq!(c.rel_bypass, 2, "passed frames are released as bypassed");
    // IPv4 TCP is still compared.
    h.p(&tcp(1000, 1, ACK | PSH, b"v4"));
    assert_eq!(
        h.r.released.len(),
        2,
        "the IPv4 primary waits for its secondary"
    );
    // A VLAN frame is not passed by the ipv6 switch.
    h.p(&tcp_vlan(1000, b"tagged"));
    assert_eq!(h.r.released.len(), 2);
    assert_eq!(h.c.counters().rel_pass_vlan, 0);
}

#[test]
fn vlan_pass_releases_tagged_frames_and_leaves_untagged_ones_compared() {
    let mut h = H::with(cfg(false, true));
    h.p(&tcp_vlan(1000, b"tagged"));
    h.s(&tcp_vlan(9999, b"other"));
    assert_eq!(h.r.hows(), vec![Release::Bypass]);
    assert_eq!(h.r.freed.len(), 1);
    h.p(&tcp6(1000, b"v6 still compared"));
    assert_eq!(h.r.released.len(), 1);
    let c = h.c.counters();
    assert_eq!((c.rel_pass_ipv6, c.rel_pass_vlan, c.sec_passed), (0, 1, 1));
}

#[test]
fn config_parses_compare_ipv6_and_vlan_and_rejects_other_values() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dpdk-config/compare-dropin.toml"
    ))
    .unwrap();
    let c = Config::from_toml_str(&base).unwrap();
    assert_eq!(
        (c.compare.ipv6, c.compare.vlan),
        (PassMode::Compare, PassMode::Compare)
    );
    let with = |extra: &str| {
        let s = base.replacen(
            "ipv6 = \"compare\"\nvlan = \"compare\"\n",
            &format!("{extra}\n"),
            1,
        );
        assert_ne!(s, base, "the example sets compare.ipv6 and compare.vlan");
        Config::from_toml_str(&s)
    };
    let c = with("ipv6 = \"pass\"\nvlan = \"pass\"").unwrap();
    assert_eq!(
        (c.compare.ipv6, c.compare.vlan),
        (PassMode::Pass, PassMode::Pass)
    );
    let e = with("ipv6 = \"drop\"\nvlan = \"compare\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("compare") || e.contains("ipv6"), "{e}");
    assert!(e.contains("compare") && e.contains("pass"), "{e}");
    // The pipeline maps it into the engine.
    let t = colo_proxy::pipeline::topology::compare_config(&with("ipv6 = \"pass\"").unwrap());
    let d =
        colo_proxy::dropin::DropInConfig::from_config(&with("vlan = \"pass\"").unwrap()).unwrap();
    assert!(d.compare.pass_vlan && !d.compare.pass_ipv6);
    assert!(t.pass_ipv6 && !t.pass_vlan);
}
