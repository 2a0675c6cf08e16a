//! Traffic simulators for `colo-proxy demo`: a client on the outside network and the guest's
//! network stack (run twice, as PVM and SVM).
//!
//! Guarantees:
//! - pure and generic over [`PacketBuf`]: the same code runs on `VecBuf` in tests and on mbufs
//!   in the demo; no DPDK, no `unsafe`, no clock reads (`now_ns` is passed in);
//! - deterministic: the VM's output is a function of its input frames, `now_ns`, and its
//!   config. Two [`VmSim`]s that differ only in `isn_seed` emit byte-identical TCP payloads and
//!   identical UDP/ICMP replies for the same input (only their TCP sequence spaces differ),
//!   unless divergence is injected on purpose;
//! - every emitted frame is a valid Ethernet/IPv4 or IPv6 frame with correct checksums; received
//!   frames are parsed and checksum-verified, and anything malformed or unexpected is counted and
//!   dropped, never a panic;
//! - no heap allocation per packet after construction (tables are sized up front); an
//!   allocator that runs dry is counted and the work is retried later.
//!
//! The application protocol over TCP is one request per connection:
//! request = `len:u32be` (whole request length) + body; response = `len:u32be` (whole response
//! length) + body, where the response body is a function of the request bytes and the
//! connection 4-tuple only ([`content`]). The client knows that function and verifies every
//! response byte.

pub mod client;
pub mod content;
pub mod frame;
pub mod vm;

use std::net::{Ipv4Addr, Ipv6Addr};

use crate::buf::PacketBuf;

pub use client::{ClientConfig, ClientSim, ClientStats};
pub use vm::{VmConfig, VmSim, VmStats};

/// What a simulator counts of the frames it sends.
pub(crate) trait SendCounts {
    /// A frame went out.
    fn sent(&mut self);
    /// A frame could not be built (no buffer).
    fn alloc_failed(&mut self);
}

/// Hand a built frame to `out`, counted as sent, or count the failure; true when sent.
pub(crate) fn emit<B: PacketBuf>(
    r: Result<B, frame::BuildError>,
    counts: &mut impl SendCounts,
    out: &mut impl FnMut(B),
) -> bool {
    match r {
        Ok(b) => {
            counts.sent();
            out(b);
            true
        }
        Err(_) => {
            counts.alloc_failed();
            false
        }
    }
}

/// A source of empty packet buffers.
pub trait FrameAlloc<B: PacketBuf> {
    /// An empty buffer (len 0) with room to `append` a full frame, or `None` when exhausted.
    fn alloc(&mut self) -> Option<B>;
}

/// Closures work as allocators.
impl<B: PacketBuf, F: FnMut() -> Option<B>> FrameAlloc<B> for F {
    fn alloc(&mut self) -> Option<B> {
        self()
    }
}

/// A [`FrameAlloc`] of `VecBuf`s for tests and socket transports.
#[derive(Debug, Default, Clone)]
pub struct VecAlloc;

impl FrameAlloc<crate::buf::VecBuf> for VecAlloc {
    fn alloc(&mut self) -> Option<crate::buf::VecBuf> {
        Some(crate::buf::VecBuf::with_room(
            &[],
            crate::buf::VEC_BUF_HEADROOM,
            1600,
        ))
    }
}

/// IPv6 addresses of the client and the VM, for the share of flows that use IPv6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct V6Pair {
    /// The client's address.
    pub client: Ipv6Addr,
    /// The VM's address (PVM and SVM share it).
    pub vm: Ipv6Addr,
}

/// The addresses of the simulated hosts. PVM and SVM share the VM's MAC and IPs, like real COLO.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addresses {
    /// The client's MAC.
    pub client_mac: [u8; 6],
    /// The VM's MAC.
    pub vm_mac: [u8; 6],
    /// The client's IPv4 address.
    pub client_ip: Ipv4Addr,
    /// The VM's IPv4 address.
    pub vm_ip: Ipv4Addr,
    /// Optional IPv6 pair; used for every `ipv6_every`-th client transaction.
    pub v6: Option<V6Pair>,
}

impl Default for Addresses {
    fn default() -> Self {
        Addresses {
            client_mac: [0x02, 0, 0, 0, 0, 0x01],
            vm_mac: [0x52, 0x54, 0, 0x12, 0x34, 0x56],
            client_ip: Ipv4Addr::new(10, 0, 0, 1),
            vm_ip: Ipv4Addr::new(10, 0, 0, 2),
            v6: Some(V6Pair {
                client: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1),
                vm: Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2),
            }),
        }
    }
}

/// Largest TCP payload per segment (fits a 1514-byte Ethernet frame over IPv4).
pub const MAX_SEGMENT: usize = 1460;
/// Largest TCP payload per segment over IPv6.
pub const MAX_SEGMENT_V6: usize = 1440;
/// Largest UDP/ICMP payload the simulators send.
pub const MAX_DATAGRAM: usize = 1400;
/// Receive window both simulators advertise (no window scaling).
pub const WINDOW: u16 = 65535;
