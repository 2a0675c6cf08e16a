//! dpdk (work in progress).
pub mod selfcheck;
