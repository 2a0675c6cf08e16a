//! Flows: the direction-independent key, the one shard hash, and the per-shard tables:
//! [`HashedTable`] (indexed by the caller's [`FlowKey::hash64`]; the compare shards) and
//! [`FlowTable`] (exact LRU list, keyed by the key itself; the rewriter).
//!
//! Pure: no DPDK, no locks, no allocation after construction.

pub mod hashed;
pub mod key;
pub mod table;

pub use hashed::HashedTable;
pub use key::{Family, FlowKey};
pub use table::{EntryId, FlowTable};
