//! Wire formats: frame parsing into header offsets, checksums, sequence arithmetic.
//!
//! Pure and allocation-free; the bottom layer (depends on no other module of the crate).
//! [`packet::parse`] validates all lengths once; on success every offset it reports is inside
//! the frame, so code built on [`packet::PacketInfo`] cannot index out of bounds.
//!
//! - [`field`]: header field offsets, written once, used by both parsers (and by the
//!   compare engine's in-place window/ack edits).
//! - [`packet`]: the general parser (VLAN tags, IPv4 options, IPv6 extension headers, ARP).
//! - [`fast`]: the fixed-shape parser of the common frame (untagged option-less IPv4 TCP/UDP);
//!   where it takes a frame it gives exactly what [`packet::parse`] gives, else `None`.
//! - [`checksum`], [`seq`], [`runt`].

pub mod checksum;
pub mod fast;
pub mod field;
pub mod packet;
pub mod runt;
pub mod seq;

pub use packet::{parse, L3Kind, PacketInfo, ParseError, TcpInfo};
pub use runt::is_runt;
