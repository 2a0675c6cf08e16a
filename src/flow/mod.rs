//! Flows: the direction-independent key, the one shard hash, and the per-stage table
//! [`HashedTable`] (indexed by the caller's [`FlowKey::hash64`]; the compare shards and the
//! rewriter).
//!
//! Pure: no DPDK, no locks, no allocation after construction. Depends only on `wire`.

pub mod hashed;
pub mod key;

pub use hashed::HashedTable;
pub use key::{Family, FlowKey};
