//! The DPDK layer: the only module with FFI and `unsafe` (with [`poll_fds`], the one raw OS
//! call the lcore loop needs). Every `unsafe` block says why it is sound (`// SAFETY:`, checked
//! by clippy's `undocumented_unsafe_blocks`).
//!
//! Safe types over DPDK 22.11: [`Eal`] (once per process), [`Mempool`], owned [`Mbuf`] and
//! fixed-size [`Burst`]s, [`Port`] with per-queue [`RxQueue`]/[`TxQueue`] handles, typed SP/SC
//! rings ([`ring()`]), lcore launch with panic capture ([`launch_on`]) and the TSC clock.
//! Every fallible call returns [`DpdkError`] (rte_errno + text + what was being done). The
//! per-packet calls (burst rx/tx/enqueue/dequeue, mbuf access) do not allocate.

mod burst;
mod eal;
mod error;
pub mod ffi;
mod lcore;
mod mbuf;
mod mempool;
mod os;
mod port;
mod ring;
pub mod telemetry;
mod tsc;

pub use burst::{Burst, Drain, RawItem, Token};
pub use eal::{is_up, version, version_numbers, Eal};
pub use error::{DpdkError, Result};
pub use lcore::{
    current_lcore, launch_on, main_lcore, panic_message, pause, wait_all, worker_lcores, LcoreJob,
};
pub use mbuf::{Mbuf, MbufBurst, OL_TX_L4_MASK};
pub use mempool::{Mempool, DEFAULT_DATA_ROOM, MBUF_PRIV_SIZE};
pub use os::poll_fds;
pub use port::{
    af_packet_fds, intr_drain, intr_thread_fd, LinkStatus, Port, PortConfig, PortStats, QueueIntr,
    RxQueue, TxQueue, RING_PAIR_DEPTH,
};
pub use ring::{attach_producer, ring, RingConsumer, RingFlags, RingProducer};
pub use tsc::{rdtsc, tsc_hz, TscClock};

/// Default EAL memory arguments for this machine: `--in-memory` when hugepages are free,
/// else `--no-huge -m 1024 --no-shconf` (the two are incompatible).
pub fn default_mem_args() -> Vec<String> {
    if hugepages_free() > 0 {
        vec!["--in-memory".into()]
    } else {
        ["--no-huge", "-m", "1024", "--no-shconf"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }
}

/// `HugePages_Free` from /proc/meminfo (0 if unreadable).
pub fn hugepages_free() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| {
                    l.strip_prefix("HugePages_Free:")
                        .map(|v| v.trim().parse::<u64>().ok())
                })
                .flatten()
        })
        .unwrap_or(0)
}
