//! Runt frames: shorter than an Ethernet header, or than the fixed header their EtherType
//! announces. Such a frame is never transmitted (the pipeline counts it as `drop_runt`).
//!
//! Pure, allocation-free; frames of [`RUNT_CHECK_BELOW`] bytes or more are decided from the
//! length alone, without reading the frame.

use super::packet::{
    ETHERTYPE_ARP, ETHERTYPE_IPV4, ETHERTYPE_IPV6, ETHERTYPE_QINQ, ETHERTYPE_VLAN, ETH_HLEN,
    MAX_VLAN_TAGS,
};

/// Frames at least this long are never runts (two VLAN tags + an IPv6 header).
pub const RUNT_CHECK_BELOW: usize = ETH_HLEN + 4 * MAX_VLAN_TAGS as usize + 40;

/// True when `frame` must not be transmitted: under 14 bytes, or under the minimum for its
/// type after up to two VLAN tags (IPv4: its IHL header, at least 20 bytes; IPv6: 40; ARP: 28;
/// a VLAN tag: 4). Other EtherTypes (e.g. the link's encapsulation) need only the Ethernet
/// header.
#[inline]
pub fn is_runt(frame: &[u8]) -> bool {
    if frame.len() < ETH_HLEN {
        return true;
    }
    if frame.len() >= RUNT_CHECK_BELOW {
        return false;
    }
    short_is_runt(frame)
}

fn short_is_runt(frame: &[u8]) -> bool {
    let mut off = ETH_HLEN;
    let mut tags = 0;
    loop {
        let ty = u16::from_be_bytes([frame[off - 2], frame[off - 1]]);
        let rest = frame.len() - off;
        match ty {
            ETHERTYPE_VLAN | ETHERTYPE_QINQ if tags < MAX_VLAN_TAGS => {
                if rest < 4 {
                    return true;
                }
                off += 4;
                tags += 1;
            }
            ETHERTYPE_IPV4 => {
                let ihl = frame.get(off).map_or(0, |b| usize::from(b & 0x0f) * 4);
                return rest < ihl.max(20);
            }
            ETHERTYPE_IPV6 => return rest < 40,
            ETHERTYPE_ARP => return rest < 28,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eth(ty: u16, rest: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        f.extend_from_slice(&ty.to_be_bytes());
        f.resize(14 + rest, 0x45);
        f
    }

    #[test]
    fn under_an_ethernet_header_is_a_runt_at_every_length() {
        for n in 0..ETH_HLEN {
            assert!(is_runt(&vec![0u8; n]), "{n}");
        }
        assert!(
            !is_runt(&eth(0x88b5, 0)),
            "an unknown type needs only the header"
        );
    }

    #[test]
    fn each_type_needs_its_fixed_header() {
        for (ty, min) in [
            (ETHERTYPE_IPV4, 20),
            (ETHERTYPE_IPV6, 40),
            (ETHERTYPE_ARP, 28),
        ] {
            assert!(is_runt(&eth(ty, min - 1)), "{ty:#x}");
            assert!(!is_runt(&eth(ty, min)), "{ty:#x}");
        }
        // An IPv4 header with options: IHL 6 needs 24 bytes.
        let mut f = eth(ETHERTYPE_IPV4, 23);
        f[14] = 0x46;
        assert!(is_runt(&f));
        f.push(0);
        assert!(!is_runt(&f));
    }

    #[test]
    fn vlan_tags_count_before_the_inner_type() {
        // 8100 tag + IPv6 inner: 14 + 4 + 40.
        let mut f = eth(ETHERTYPE_VLAN, 4 + 39);
        f[16..18].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert!(is_runt(&f));
        f.push(0);
        assert!(!is_runt(&f));
        assert!(is_runt(&eth(ETHERTYPE_VLAN, 3)), "a truncated tag");
        // Q-in-Q + IPv6: the longest minimum, exactly the fast-path bound.
        let mut f = eth(ETHERTYPE_QINQ, 8 + 40);
        f[16..18].copy_from_slice(&ETHERTYPE_VLAN.to_be_bytes());
        f[20..22].copy_from_slice(&ETHERTYPE_IPV6.to_be_bytes());
        assert_eq!(f.len(), RUNT_CHECK_BELOW);
        assert!(!is_runt(&f));
        f.pop();
        assert!(is_runt(&f));
    }

    #[test]
    fn long_frames_are_never_runts_whatever_their_bytes() {
        assert!(!is_runt(&[0xff; RUNT_CHECK_BELOW]));
        assert!(!is_runt(&[0x00; 1514]));
    }
}
