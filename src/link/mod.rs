//! Inter-host link transports.
//!
//! - [`access`]: who may connect: allowlists, keep-the-live-peer policy, TCP keepalive, UNIX
//!   socket creation with its final mode and peer-uid policy.
//! - [`framing`]: QEMU chardev framing (pure codec, zero-copy streaming decoder).
//! - [`socket`]: non-blocking QEMU-framed TCP/UNIX sockets with batched I/O and reconnect.
//! - [`endpoint`]: the two COLO streams (mirror, secondary output) paired as one endpoint.
//! - [`encap`]: pure DPDK-port encapsulation (outer Ethernet + sequence numbers) with loss
//!   and reorder detection.
//!
//! The wire contract with QEMU is in docs/QEMU-INTEROP.md.

pub mod access;
pub mod encap;
pub mod endpoint;
pub mod framing;
pub mod socket;

pub use endpoint::{LinkConfig, LinkEndpoint, Side};
pub use framing::{Decoded, Decoder, FrameConfig, FrameError, NET_BUFSIZE};
pub use socket::{FramedSocket, LinkAddr, Role, SendError, SocketConfig, SocketStats};
