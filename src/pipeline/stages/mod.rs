//! The proxy's stages as they run on lcores: mirror, redirector, compare shard, rewriter.
//!
//! Each stage owns its queues and rings outright (one poller per queue, one producer and one
//! consumer per ring) and does its work in bursts of [`BURST`]. The COLO logic lives in the
//! pure engines ([`Comparator`], [`Rewriter`]); these files only move mbufs and counts them.

mod capture;
mod compare;
mod failover;
mod forward;
mod mirror;
mod redirector;
mod rewriter;

pub use compare::CompareStage;
pub use failover::FailoverOpts;
pub use forward::ForwardStage;
pub use mirror::MirrorStage;
pub use redirector::{shard_of_frame, RedirectorStage};
pub use rewriter::{RewriterStage, SVM_INPUT_LOST};
