//! dpdk (work in progress).
