//! Header field offsets, each written once (smoltcp's `mod field` style) and shared by the
//! general parser ([`super::packet`]) and the fixed-shape fast parser ([`super::fast`]), so
//! the two cannot disagree on where a field is.
//!
//! Offsets are from the start of their own header: a `usize` is a one-byte field, a
//! [`Field`] a byte range. They are constants: using them costs nothing at run time.

use core::ops::Range;

/// A multi-byte field: its byte range within its header.
pub type Field = Range<usize>;

/// `f` moved to a header that starts at `at` in the frame.
#[inline(always)]
pub const fn at(at: usize, f: Field) -> Field {
    at + f.start..at + f.end
}

/// Ethernet II.
pub mod eth {
    use super::Field;
    /// Destination MAC.
    pub const DST: Field = 0..6;
    /// Source MAC.
    pub const SRC: Field = 6..12;
    /// EtherType (or a VLAN tag's TPID).
    pub const ETHERTYPE: Field = 12..14;
    /// Header length without tags.
    pub const HLEN: usize = 14;
}

/// An 802.1Q / 802.1ad tag, from its TPID.
pub mod vlan {
    /// Tag length: the next EtherType (or TPID) is this much further on.
    pub const LEN: usize = 4;
}

/// IPv4.
pub mod ipv4 {
    use super::Field;
    /// Version (high nibble) and header length in words (low nibble).
    pub const VER_IHL: usize = 0;
    /// Total length.
    pub const LENGTH: Field = 2..4;
    /// Identification.
    pub const IDENT: Field = 4..6;
    /// Flags and fragment offset.
    pub const FLG_OFF: Field = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Field = 10..12;
    /// Source address.
    pub const SRC_ADDR: Field = 12..16;
    /// Destination address.
    pub const DST_ADDR: Field = 16..20;
    /// Header length without options.
    pub const MIN_HLEN: usize = 20;
    /// `VER_IHL` of a header without options.
    pub const VER_IHL_NO_OPTIONS: u8 = 0x45;
    /// MF flag and fragment offset bits of `FLG_OFF`: non-zero for a fragment.
    pub const FRAGMENT_MASK: u16 = 0x3fff;
}

/// IPv6 fixed header.
pub mod ipv6 {
    use super::Field;
    /// Version (high nibble of the first byte), traffic class, flow label.
    pub const VER_TC_FLOW: Field = 0..4;
    /// Payload length.
    pub const PAYLOAD_LEN: Field = 4..6;
    /// Next header.
    pub const NEXT_HEADER: usize = 6;
    /// Hop limit.
    pub const HOP_LIMIT: usize = 7;
    /// Source address.
    pub const SRC_ADDR: Field = 8..24;
    /// Destination address.
    pub const DST_ADDR: Field = 24..40;
    /// Fixed header length.
    pub const HLEN: usize = 40;
}

/// TCP.
pub mod tcp {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Sequence number.
    pub const SEQ: Field = 4..8;
    /// Acknowledgment number.
    pub const ACK: Field = 8..12;
    /// Data offset in words (high nibble).
    pub const DATA_OFF: usize = 12;
    /// Flags (FIN .. CWR).
    pub const FLAGS: usize = 13;
    /// Window.
    pub const WINDOW: Field = 14..16;
    /// Checksum.
    pub const CHECKSUM: Field = 16..18;
    /// Header length without options.
    pub const MIN_HLEN: usize = 20;
}

/// UDP.
pub mod udp {
    use super::Field;
    /// Source port.
    pub const SRC_PORT: Field = 0..2;
    /// Destination port.
    pub const DST_PORT: Field = 2..4;
    /// Length (header and payload).
    pub const LENGTH: Field = 4..6;
    /// Header length.
    pub const HLEN: usize = 8;
}

/// ICMP and ICMPv6.
pub mod icmp {
    use super::Field;
    /// Type.
    pub const TYPE: usize = 0;
    /// Code.
    pub const CODE: usize = 1;
    /// Echo request/reply identifier.
    pub const ECHO_ID: Field = 4..6;
}

/// ARP.
pub mod arp {
    /// Hardware address length.
    pub const HLEN: usize = 4;
    /// Protocol address length.
    pub const PLEN: usize = 5;
}
