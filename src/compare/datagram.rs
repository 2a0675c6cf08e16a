//! Datagram (UDP, ICMP, ICMPv6) and other-L3 compare: strict FIFO per flow.
//! See the module docs of [`crate::compare`] for what is compared and ignored.

use crate::buf::PacketBuf;
use crate::wire::field::{ipv4, ipv6};

use super::engine::{Conn, Ctx};
use super::meta::K_L3;
use super::pool::{Meta, NIL};
use super::{DropReason, Output, Reason, Release, SecondaryFree, Side};

impl<B: PacketBuf, O: Output<B>> Ctx<'_, '_, B, O> {
    #[inline]
    pub(super) fn dgram_primary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        if self.enqueue_primary(conn, pkt, m) {
            self.pump_dgram(conn);
        }
    }

    #[inline]
    pub(super) fn dgram_secondary(&mut self, conn: &mut Conn, pkt: B, m: Meta) {
        if conn.diverged {
            self.free(pkt, SecondaryFree::Dropped(DropReason::Diverged));
            return;
        }
        if conn.sq.head == NIL && conn.pq.head != NIL {
            // Fast path: nothing queued before it, so it pairs with the oldest primary.
            let p = conn.pq.head;
            if dgram_equal(self.pool.meta(p), self.pool.data(p), &m, pkt.data()).is_none() {
                self.release_node(conn, p, Release::Matched);
                self.free(pkt, SecondaryFree::Matched);
                return;
            }
            // A mismatch goes through the queue so the event can show both packets.
        }
        let Some(pkt) = self.secondary_room(conn, pkt) else {
            return;
        };
        let len = pkt.len();
        match self.pool.alloc(pkt, m) {
            Ok(id) => {
                self.pool.push_back(&mut conn.sq, id);
                self.count_queued(Side::Secondary, len);
            }
            Err(pkt) => {
                self.free(pkt, SecondaryFree::Dropped(DropReason::Overflow));
                return;
            }
        }
        self.pump_dgram(conn);
    }

    /// Strict FIFO: the oldest primary against the oldest secondary.
    fn pump_dgram(&mut self, conn: &mut Conn) {
        while !conn.diverged && conn.pq.head != NIL && conn.sq.head != NIL {
            let (p, s) = (conn.pq.head, conn.sq.head);
            match dgram_equal(
                self.pool.meta(p),
                self.pool.data(p),
                self.pool.meta(s),
                self.pool.data(s),
            ) {
                None => {
                    self.release_node(conn, p, Release::Matched);
                    self.free_node(conn, s, SecondaryFree::Matched);
                }
                Some(reason) => {
                    self.diverge(conn, self.event(Side::Primary, reason, None), p, s);
                }
            }
        }
    }
}

/// `None` when equal, else why not.
#[inline]
fn dgram_equal(pm: &Meta, pd: &[u8], sm: &Meta, sd: &[u8]) -> Option<Reason> {
    let a = pd
        .get(pm.cmp_off as usize..pm.cmp_end as usize)
        .unwrap_or(&[]);
    let b = sd
        .get(sm.cmp_off as usize..sm.cmp_end as usize)
        .unwrap_or(&[]);
    if pm.kind != sm.kind || a.len() != b.len() {
        return Some(Reason::LengthMismatch);
    }
    let eq = if pm.kind == K_L3 && pm.ipver == sm.ipver {
        l3_equal(a, b, pm.ipver)
    } else {
        a == b
    };
    if eq {
        None
    } else {
        Some(Reason::PayloadMismatch)
    }
}

/// Compare two L3 packets of equal length, ignoring the IP fields that legitimately differ
/// between two VMs: IPv4 ID, TTL and header checksum; IPv6 traffic class, flow label and hop
/// limit.
fn l3_equal(a: &[u8], b: &[u8], ipver: u8) -> bool {
    match ipver {
        // Skipped: IDENT, TTL, CHECKSUM.
        4 if a.len() >= ipv4::MIN_HLEN => {
            a[..ipv4::IDENT.start] == b[..ipv4::IDENT.start]
                && a[ipv4::FLG_OFF] == b[ipv4::FLG_OFF]
                && a[ipv4::PROTOCOL] == b[ipv4::PROTOCOL]
                && a[ipv4::SRC_ADDR.start..] == b[ipv4::SRC_ADDR.start..]
        }
        // Skipped: traffic class and flow label (after the version nibble), HOP_LIMIT.
        6 if a.len() >= ipv6::HLEN => {
            let v = ipv6::VER_TC_FLOW.start;
            a[v] >> 4 == b[v] >> 4
                && a[ipv6::PAYLOAD_LEN.start..ipv6::HOP_LIMIT]
                    == b[ipv6::PAYLOAD_LEN.start..ipv6::HOP_LIMIT]
                && a[ipv6::SRC_ADDR.start..] == b[ipv6::SRC_ADDR.start..]
        }
        _ => a == b,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn l3_equal_ignores_only_volatile_ip_fields() {
        let mut a = vec![0x45, 0, 0, 24, 0, 1, 0x40, 0, 64, 47, 0x11, 0x22];
        a.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 9, 9, 9]);
        let mut b = a.clone();
        b[4] = 0xff; // ID
        b[8] = 1; // TTL
        b[10] = 0; // checksum
        assert!(l3_equal(&a, &b, 4));
        b[9] = 6; // protocol is not volatile
        assert!(!l3_equal(&a, &b, 4));
        let mut c = a.clone();
        c[20] = 0;
        assert!(!l3_equal(&a, &c, 4));
        assert!(!l3_equal(&a, &b, 0), "non-IP compares every byte");
    }
}
