//! Wire formats: frame parsing into header offsets, checksums, sequence arithmetic.
//!
//! Pure and allocation-free. [`packet::parse`] validates all lengths once; on success every
//! offset it reports is inside the frame, so code built on [`packet::PacketInfo`] cannot index
//! out of bounds.

pub mod checksum;
pub mod fast;
pub mod field;
pub mod packet;
pub mod runt;
pub mod seq;

pub use packet::{parse, L3Kind, PacketInfo, ParseError, TcpInfo};
pub use runt::is_runt;
