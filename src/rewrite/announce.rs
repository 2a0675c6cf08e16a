//! Takeover announcements: the service addresses the SVM uses, and the frames that tell the
//! switch and the clients where they now live (gratuitous ARP for IPv4, unsolicited neighbour
//! advertisement for IPv6), sent from the SVM's MAC when the secondary takes over.
//!
//! Pure: [`ServiceAddrs::observe`] reads a few header bytes of each SVM frame (no parse, no
//! allocation; the set is fixed-size and almost always holds one address, so the lookup is a
//! compare or two); the builders write into a caller's buffer. Untagged frames only: an
//! address seen only inside 802.1Q frames is not announced.

use crate::wire::checksum;

/// Addresses remembered per family; more are counted in [`ServiceAddrs::overflow`].
pub const MAX_ADDRS: usize = 16;

/// Length of a gratuitous ARP frame (padded to the Ethernet minimum without FCS).
pub const GARP_LEN: usize = 60;
/// Length of an unsolicited neighbour advertisement with a target link-layer address option.
pub const NA_LEN: usize = 14 + 40 + 32;

/// One address and the MAC it was seen from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Seen<const N: usize> {
    /// Source MAC of the frame.
    pub mac: [u8; 6],
    /// The address.
    pub ip: [u8; N],
}

/// Service addresses seen in the SVM's output (source addresses of IPv4/IPv6 packets, sender
/// addresses of ARP), each with its source MAC.
#[derive(Clone, Debug)]
pub struct ServiceAddrs {
    v4: [Seen<4>; MAX_ADDRS],
    n4: usize,
    v6: [Seen<16>; MAX_ADDRS],
    n6: usize,
    /// Addresses not remembered because the set was full.
    pub overflow: u64,
}

impl Default for ServiceAddrs {
    fn default() -> Self {
        ServiceAddrs {
            v4: [Seen {
                mac: [0; 6],
                ip: [0; 4],
            }; MAX_ADDRS],
            n4: 0,
            v6: [Seen {
                mac: [0; 6],
                ip: [0; 16],
            }; MAX_ADDRS],
            n6: 0,
            overflow: 0,
        }
    }
}

fn unicast_mac(m: &[u8]) -> bool {
    m[0] & 1 == 0 && m.iter().any(|&b| b != 0)
}

fn remember<const N: usize>(
    set: &mut [Seen<N>; MAX_ADDRS],
    n: &mut usize,
    overflow: &mut u64,
    mac: &[u8],
    ip: &[u8],
) {
    // Newest MAC wins (a VM whose MAC changed announces the new one).
    if let Some(s) = set[..*n].iter_mut().find(|s| s.ip[..] == *ip) {
        if s.mac[..] != *mac {
            s.mac.copy_from_slice(mac);
        }
        return;
    }
    if *n == MAX_ADDRS {
        *overflow += 1;
        return;
    }
    set[*n].mac.copy_from_slice(mac);
    set[*n].ip.copy_from_slice(ip);
    *n += 1;
}

impl ServiceAddrs {
    /// Note the source address of one frame the SVM sent (anything unparsable is ignored).
    #[inline]
    pub fn observe(&mut self, frame: &[u8]) {
        if frame.len() < 14 {
            return;
        }
        let mac = &frame[6..12];
        if !unicast_mac(mac) {
            return;
        }
        match (frame[12], frame[13]) {
            (0x08, 0x00) if frame.len() >= 34 && frame[14] >> 4 == 4 => {
                let ip = &frame[26..30];
                // Unspecified, multicast/broadcast and loopback sources are no service address.
                if ip == [0; 4] || ip[0] >= 224 || ip[0] == 127 {
                    return;
                }
                remember(&mut self.v4, &mut self.n4, &mut self.overflow, mac, ip);
            }
            (0x08, 0x06) if frame.len() >= 42 => {
                // Ethernet/IPv4 ARP: sender protocol address (a probe's 0.0.0.0 is ignored).
                if frame[14..22] != [0, 1, 8, 0, 6, 4, 0, frame[21]] {
                    return;
                }
                let ip = &frame[28..32];
                if ip == [0; 4] || ip[0] >= 224 {
                    return;
                }
                remember(&mut self.v4, &mut self.n4, &mut self.overflow, mac, ip);
            }
            (0x86, 0xdd) if frame.len() >= 54 && frame[14] >> 4 == 6 => {
                let ip = &frame[22..38];
                if ip == [0; 16] || ip[0] == 0xff {
                    return;
                }
                remember(&mut self.v6, &mut self.n6, &mut self.overflow, mac, ip);
            }
            _ => {}
        }
    }

    /// IPv4 addresses seen, in first-seen order.
    pub fn v4(&self) -> &[Seen<4>] {
        &self.v4[..self.n4]
    }

    /// IPv6 addresses seen, in first-seen order.
    pub fn v6(&self) -> &[Seen<16>] {
        &self.v6[..self.n6]
    }
}

/// Write a gratuitous ARP (an ARP request for `ip` from `ip`, RFC 5227 announcement shape,
/// broadcast) from `mac` into `out`; returns its length ([`GARP_LEN`]).
pub fn garp(mac: [u8; 6], ip: [u8; 4], out: &mut [u8; GARP_LEN]) -> usize {
    out.fill(0);
    out[0..6].copy_from_slice(&[0xff; 6]);
    out[6..12].copy_from_slice(&mac);
    out[12..14].copy_from_slice(&[0x08, 0x06]);
    // htype 1, ptype IPv4, hlen 6, plen 4, op 1 (request).
    out[14..22].copy_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
    out[22..28].copy_from_slice(&mac);
    out[28..32].copy_from_slice(&ip);
    // Target hardware address zero, target protocol address = sender's.
    out[38..42].copy_from_slice(&ip);
    GARP_LEN
}

/// Write an unsolicited neighbour advertisement (RFC 4861 §7.2.6: to all-nodes, Override set,
/// Solicited clear, with the target link-layer address) for `ip` from `mac` into `out`;
/// returns its length ([`NA_LEN`]).
pub fn unsolicited_na(mac: [u8; 6], ip: [u8; 16], out: &mut [u8; NA_LEN]) -> usize {
    const ALL_NODES: [u8; 16] = [0xff, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    out.fill(0);
    out[0..6].copy_from_slice(&[0x33, 0x33, 0, 0, 0, 1]);
    out[6..12].copy_from_slice(&mac);
    out[12..14].copy_from_slice(&[0x86, 0xdd]);
    let ip6 = &mut out[14..54];
    ip6[0] = 0x60;
    ip6[4..6].copy_from_slice(&32u16.to_be_bytes());
    ip6[6] = 58; // ICMPv6
    ip6[7] = 255; // hop limit, as neighbour discovery requires
    ip6[8..24].copy_from_slice(&ip);
    ip6[24..40].copy_from_slice(&ALL_NODES);
    let icmp = &mut out[54..86];
    icmp[0] = 136; // neighbour advertisement
    icmp[4] = 0x20; // Override
    icmp[8..24].copy_from_slice(&ip);
    icmp[24] = 2; // target link-layer address option
    icmp[25] = 1; // length in units of 8 bytes
    icmp[26..32].copy_from_slice(&mac);
    let acc = checksum::pseudo_v6(&ip, &ALL_NODES, 58, 32);
    let c = checksum::finish(checksum::sum(&out[54..86], acc));
    out[56..58].copy_from_slice(&c.to_be_bytes());
    NA_LEN
}
