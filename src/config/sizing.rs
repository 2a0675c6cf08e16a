//! Sizing rules: how many mbufs the pipeline can hold at once (the mempool must hold all of
//! them, or an rx queue, the compare engine or a copy runs dry mid-stream), and the default
//! back-pressure watermarks derived from the compare queue limits. Pure arithmetic on the
//! validated config; documented in `docs/CONFIG.md` ("Sizing").

use std::collections::BTreeMap;
use std::fmt;

use super::{PortDevice, PortSpec, Role};

/// Frames per burst on every port and ring (`pipeline::io::BURST`; a test keeps them equal).
pub const BURST: u32 = 32;
/// Decoded frames a socket link receiver keeps (`pipeline::linkio::SOCKET_RX_BACKLOG`).
pub const SOCKET_RX_BACKLOG: u32 = 4096;
/// Largest untagged Ethernet frame the byte watermarks assume for frames in flight.
pub const MAX_FRAME: u64 = 1518;
/// DPDK lets a per-lcore mempool cache grow to 1.5 × its size before flushing.
const CACHE_FLUSH_NUM: u32 = 3;
const CACHE_FLUSH_DEN: u32 = 2;

/// What the pipeline can hold at once, in mbufs, by where they sit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MbufBudget {
    /// RX and TX descriptors of every port queue (a NIC keeps its RX ring full of mbufs;
    /// a TX ring holds sent mbufs until it reclaims them).
    pub ports: u64,
    /// Inter-lcore rings (primary: two per compare shard).
    pub rings: u64,
    /// Compare queues: `compare.shard_packets` × shards (primary).
    pub compare: u64,
    /// Per-lcore mempool caches (1.5 × `mempool.cache` per lcore in use).
    pub caches: u64,
    /// Bursts and pending transmit buffers of the stages.
    pub bursts: u64,
    /// A socket link's receive backlog.
    pub socket: u64,
}

impl MbufBudget {
    /// Sum of every part.
    pub fn total(&self) -> u64 {
        self.ports + self.rings + self.compare + self.caches + self.bursts + self.socket
    }

    /// The pool size derived from the budget: above the total, at the next multiple of 1024
    /// minus one (DPDK's ring-backed pools like 2^n − 1; this keeps the waste small).
    pub fn derived_mbufs(&self) -> u64 {
        (self.total() / 1024 + 1) * 1024 - 1
    }
}

impl fmt::Display for MbufBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} = ports {} + rings {} + compare {} + caches {} + bursts {}",
            self.total(),
            self.ports,
            self.rings,
            self.compare,
            self.caches,
            self.bursts
        )?;
        if self.socket > 0 {
            write!(f, " + socket backlog {}", self.socket)?;
        }
        Ok(())
    }
}

/// The value of `key` in vdev devargs `name,k=v,...`.
pub fn devarg<'a>(args: &'a str, key: &str) -> Option<&'a str> {
    args.split(',')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim())
}

impl PortSpec {
    /// The device name (PCI address or the vdev name before the first comma).
    pub fn device_name(&self) -> &str {
        match &self.device {
            PortDevice::Pci(addr) => addr,
            PortDevice::Vdev(args) => args.split(',').next().unwrap_or(args),
            PortDevice::Wire(name) => name,
        }
    }

    /// Rx queues to configure: the file's, or more when the device spreads frames over more
    /// queues by itself. net_af_packet opens `qpairs` sockets in one fan-out group at probe
    /// whatever is configured, so with fewer rx queues the kernel hands some flows to a socket
    /// that nobody reads; a net_vhost guest with `queues=N` may transmit on any of its N queues.
    pub fn effective_rx_queues(&self) -> u16 {
        let device_queues = match &self.device {
            PortDevice::Vdev(args) => {
                let key = match self.device_name() {
                    n if n.starts_with("net_af_packet") || n.starts_with("eth_af_packet") => {
                        "qpairs"
                    }
                    n if n.starts_with("net_vhost") || n.starts_with("eth_vhost") => "queues",
                    _ => "",
                };
                devarg(args, key)
                    .and_then(|v| v.parse::<u16>().ok())
                    .unwrap_or(1)
            }
            _ => 1,
        };
        self.rx_queues.max(device_queues).max(1)
    }
}

/// The inputs of [`budget`], from the validated config.
pub struct BudgetInputs<'a> {
    /// Role.
    pub role: Role,
    /// Ports.
    pub ports: &'a BTreeMap<String, PortSpec>,
    /// Compare shards (primary).
    pub shards: u32,
    /// `rings.size`.
    pub ring_size: u32,
    /// `compare.shard_packets`.
    pub shard_packets: u32,
    /// Distinct lcores running stages or management.
    pub lcores: u32,
    /// `mempool.cache`.
    pub cache: u32,
    /// The link is a socket (its receiver keeps a backlog of mbufs).
    pub socket_link: bool,
}

/// What the pipeline described by `i` can hold at once.
pub fn budget(i: &BudgetInputs) -> MbufBudget {
    let primary = i.role == Role::Primary;
    let shards = u64::from(i.shards.max(1));
    let ports = i
        .ports
        .values()
        .map(|p| {
            // The primary's nic transmits from every shard on its own queue.
            let txq = if primary && p.name == "nic" {
                u64::from(p.tx_queues).max(shards)
            } else {
                u64::from(p.tx_queues)
            };
            u64::from(p.rx_desc) * u64::from(p.effective_rx_queues()) + u64::from(p.tx_desc) * txq
        })
        .sum();
    let burst = u64::from(BURST);
    let (rings, compare, bursts) = match i.role {
        Role::Primary => (
            2 * shards * u64::from(i.ring_size),
            shards * u64::from(i.shard_packets),
            // mirror: rx burst, pvm and link pending; redirector: rx burst + one pending per
            // ring; each shard: its burst and nic pending.
            burst * (3 + 1 + 2 * shards + 2 * shards),
        ),
        // rewriter: rx burst, svm, link and nic pending.
        _ => (0, 0, burst * 4),
    };
    let caches = u64::from(i.lcores) * u64::from(i.cache) * u64::from(CACHE_FLUSH_NUM)
        / u64::from(CACHE_FLUSH_DEN);
    MbufBudget {
        ports,
        rings,
        compare,
        caches,
        bursts,
        socket: if i.socket_link {
            u64::from(SOCKET_RX_BACKLOG)
        } else {
            0
        },
    }
}

/// Frames that can still reach a shard after the PVM port was paused: a full ring and the
/// redirector's pending burst and the burst it is routing.
pub fn in_flight_packets(ring_size: u32) -> u32 {
    ring_size.saturating_add(2 * BURST)
}

/// Default high/low packet watermarks for a shard limit of `limit` packets (the smaller of
/// `compare.queue_size` and `compare.shard_packets`): high leaves room for what is in flight
/// when the port pauses, low is half of high (hysteresis).
pub fn default_packet_watermarks(limit: u32, ring_size: u32) -> (u32, u32) {
    let flight = in_flight_packets(ring_size);
    let high = if limit > flight.saturating_mul(2) {
        limit - flight
    } else {
        (limit / 2).max(1)
    };
    (high, high / 2)
}

/// Default high/low byte watermarks for a shard byte limit `limit`.
pub fn default_byte_watermarks(limit: u64, ring_size: u32) -> (u64, u64) {
    let flight = u64::from(in_flight_packets(ring_size)) * MAX_FRAME;
    let high = if limit > flight.saturating_mul(2) {
        limit - flight
    } else {
        (limit / 2).max(1)
    };
    (high, high / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watermarks_leave_room_for_frames_in_flight() {
        assert_eq!(default_packet_watermarks(8192, 1024), (8192 - 1088, 3552));
        // Too small to leave room: half the limit.
        assert_eq!(default_packet_watermarks(1024, 1024), (512, 256));
        assert_eq!(default_packet_watermarks(1, 1024), (1, 0));
        let (hb, lb) = default_byte_watermarks(16 << 20, 1024);
        assert_eq!(hb, (16 << 20) - 1088 * 1518);
        assert_eq!(lb, hb / 2);
    }

    #[test]
    fn derived_pool_is_a_multiple_of_1024_minus_one_above_the_total() {
        let b = MbufBudget {
            ports: 6144,
            rings: 2048,
            compare: 8192,
            caches: 1152,
            bursts: 288,
            socket: 0,
        };
        assert_eq!(b.total(), 17824);
        assert_eq!(b.derived_mbufs(), 18431);
        assert!(b.to_string().starts_with("17824 = ports 6144 + rings 2048"));
    }
}
