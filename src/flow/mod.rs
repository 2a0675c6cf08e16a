//! Flows: the direction-independent key, the one shard hash, and the per-shard table.
//!
//! Pure: no DPDK, no locks, no allocation after construction.

pub mod hashed;
pub mod key;
pub mod table;

pub use hashed::HashedTable;
pub use key::{Family, FlowKey};
pub use table::{EntryId, FlowTable};
