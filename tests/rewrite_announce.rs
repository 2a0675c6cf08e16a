//! Takeover announcements: which SVM addresses are remembered, and the exact bytes of the
//! gratuitous ARP and the unsolicited neighbour advertisement (checksum verified from scratch).

use colo_proxy::rewrite::announce::{
    garp, unsolicited_na, ServiceAddrs, GARP_LEN, MAX_ADDRS, NA_LEN,
};
use colo_proxy::wire::checksum;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const OTHER_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x09];

fn eth(src: [u8; 6], ethertype: [u8; 2], body: &[u8]) -> Vec<u8> {
    let mut f = vec![0xff; 6];
    f.extend_from_slice(&src);
    f.extend_from_slice(&ethertype);
    f.extend_from_slice(body);
    f
}

fn ipv4(src: [u8; 4]) -> Vec<u8> {
    let mut h = vec![0u8; 20];
    h[0] = 0x45;
    h[12..16].copy_from_slice(&src);
    h[16..20].copy_from_slice(&[10, 0, 0, 1]);
    h
}

fn ipv6(src: [u8; 16]) -> Vec<u8> {
    let mut h = vec![0u8; 40];
    h[0] = 0x60;
    h[8..24].copy_from_slice(&src);
    h
}

fn arp(spa: [u8; 4]) -> Vec<u8> {
    let mut a = vec![0, 1, 8, 0, 6, 4, 0, 1];
    a.extend_from_slice(&MAC);
    a.extend_from_slice(&spa);
    a.extend_from_slice(&[0; 6]);
    a.extend_from_slice(&[10, 0, 0, 1]);
    a
}

const V6: [u8; 16] = [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];

#[test]
fn service_addresses_from_ipv4_arp_and_ipv6_sources() {
    let mut s = ServiceAddrs::default();
    s.observe(&eth(MAC, [0x08, 0x00], &ipv4([10, 77, 0, 2])));
    s.observe(&eth(MAC, [0x08, 0x00], &ipv4([10, 77, 0, 2])));
    s.observe(&eth(MAC, [0x08, 0x06], &arp([10, 77, 0, 3])));
    s.observe(&eth(MAC, [0x86, 0xdd], &ipv6(V6)));
    let v4: Vec<_> = s.v4().iter().map(|a| (a.mac, a.ip)).collect();
    assert_eq!(v4, vec![(MAC, [10, 77, 0, 2]), (MAC, [10, 77, 0, 3])]);
    assert_eq!(s.v6().len(), 1);
    assert_eq!((s.v6()[0].mac, s.v6()[0].ip), (MAC, V6));
}

#[test]
fn no_service_address_from_unspecified_multicast_or_short_frames() {
    let mut s = ServiceAddrs::default();
    s.observe(&eth(MAC, [0x08, 0x00], &ipv4([0, 0, 0, 0])));
    s.observe(&eth(MAC, [0x08, 0x00], &ipv4([224, 0, 0, 1])));
    s.observe(&eth(MAC, [0x08, 0x00], &ipv4([127, 0, 0, 1])));
    s.observe(&eth(MAC, [0x08, 0x06], &arp([0, 0, 0, 0])));
    s.observe(&eth(MAC, [0x86, 0xdd], &ipv6([0; 16])));
    // A multicast source MAC, a truncated header, a VLAN tag: ignored.
    s.observe(&eth(
        [0x01, 0, 0x5e, 0, 0, 1],
        [0x08, 0x00],
        &ipv4([10, 1, 1, 1]),
    ));
    s.observe(&eth(MAC, [0x08, 0x00], &ipv4([10, 1, 1, 1])[..10]));
    s.observe(&eth(MAC, [0x81, 0x00], &ipv4([10, 1, 1, 1])));
    s.observe(&[0u8; 5]);
    assert!(s.v4().is_empty(), "{:?}", s.v4());
    assert!(s.v6().is_empty());
}

#[test]
fn newest_mac_wins_and_overflow_is_counted() {
    let mut s = ServiceAddrs::default();
    s.observe(&eth(MAC, [0x08, 0x00], &ipv4([10, 77, 0, 2])));
    s.observe(&eth(OTHER_MAC, [0x08, 0x00], &ipv4([10, 77, 0, 2])));
    assert_eq!(s.v4().len(), 1);
    assert_eq!(s.v4()[0].mac, OTHER_MAC);
    for i in 0..(MAX_ADDRS as u8 + 3) {
        s.observe(&eth(MAC, [0x08, 0x00], &ipv4([10, 50, 0, i + 1])));
    }
    assert_eq!(s.v4().len(), MAX_ADDRS);
    assert_eq!(s.overflow, 4);
}

#[test]
fn gratuitous_arp_bytes() {
    let mut f = [0u8; GARP_LEN];
    assert_eq!(garp(MAC, [10, 77, 0, 2], &mut f), 60);
    let mut want = vec![0xff; 6];
    want.extend_from_slice(&MAC);
    want.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    want.extend_from_slice(&MAC);
    want.extend_from_slice(&[10, 77, 0, 2]);
    want.extend_from_slice(&[0; 6]);
    want.extend_from_slice(&[10, 77, 0, 2]);
    want.resize(60, 0);
    assert_eq!(f.to_vec(), want);
}

#[test]
fn unsolicited_na_bytes_and_checksum() {
    let mut f = [0xaau8; NA_LEN];
    assert_eq!(unsolicited_na(MAC, V6, &mut f), 86);
    assert_eq!(&f[0..6], &[0x33, 0x33, 0, 0, 0, 1]);
    assert_eq!(&f[6..12], &MAC);
    assert_eq!(&f[12..14], &[0x86, 0xdd]);
    let ip = &f[14..54];
    assert_eq!(ip[0] >> 4, 6);
    assert_eq!(u16::from_be_bytes([ip[4], ip[5]]), 32);
    assert_eq!((ip[6], ip[7]), (58, 255));
    assert_eq!(&ip[8..24], &V6);
    let all_nodes = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    assert_eq!(&ip[24..40], &all_nodes);
    let icmp = &f[54..86];
    assert_eq!((icmp[0], icmp[1]), (136, 0));
    // Override set, Solicited and Router clear.
    assert_eq!(&icmp[4..8], &[0x20, 0, 0, 0]);
    assert_eq!(&icmp[8..24], &V6);
    assert_eq!(&icmp[24..26], &[2, 1]);
    assert_eq!(&icmp[26..32], &MAC);
    // The checksum verifies: the sum over pseudo-header and message folds to 0xffff.
    let acc = checksum::pseudo_v6(&V6, &all_nodes, 58, 32);
    assert_eq!(checksum::fold(checksum::sum(icmp, acc)), 0xffff);
}
