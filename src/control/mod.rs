//! Control plane messages, pure: no sockets, no DPDK.
//!
//! - [`proto`]: the control-socket protocol, one JSON object per line each way. Parsing never
//!   panics; every malformed, unknown or oversized request becomes an error reply.
//! - [`event`]: what the data plane reports to management (divergences, checkpoints, failover,
//!   link state), serialisable as one JSON object per line for `events` subscribers.
//! - [`plane`]: the [`plane::DataPlane`] trait the pipeline implements so management can query and
//!   command the stages without knowing how they run.
//! - [`xen`]: the Xen `notify_dev` codec.
//!
//! An event names the packets it concerns with [`EventSide`] (primary, secondary or both);
//! the crate's one primary/secondary type is [`crate::compare::Side`].

pub mod event;
pub mod plane;
pub mod proto;
pub mod xen;

pub use event::{Event, EventSide};
pub use plane::{BypassOp, BypassSpec, DataPlane};
pub use proto::{Command, Reply, Request};
