//! Ethernet ports: [`Port`] (control: configure, start/stop, stats, link, MAC) and per-queue
//! data-path handles [`RxQueue`]/[`TxQueue`].
//!
//! Each queue handle can be taken once, so one queue is polled by one lcore (DPDK's rule). The
//! device is stopped and closed when the port and all its queue handles are gone. The port keeps
//! its mempool alive (its rx rings hold mbufs from it).

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use super::eal;
use super::error::{DpdkError, Result};
use super::ffi;
use super::mbuf::MbufBurst;
use super::mempool::Mempool;

/// Frames each direction of a [`Port::ring_pair`] holds before tx returns unsent mbufs.
pub const RING_PAIR_DEPTH: u32 = 1024;

/// Most frames [`Port::drain_rx`] reads from one queue.
pub const DRAIN_LIMIT: usize = 65536;

/// Queue and descriptor counts for [`Port::open`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortConfig {
    /// Number of rx queues.
    pub rx_queues: u16,
    /// Number of tx queues.
    pub tx_queues: u16,
    /// Descriptors per rx queue.
    pub rx_desc: u16,
    /// Descriptors per tx queue.
    pub tx_desc: u16,
    /// Enable promiscuous mode at open.
    pub promiscuous: bool,
}

impl Default for PortConfig {
    fn default() -> Self {
        PortConfig {
            rx_queues: 1,
            tx_queues: 1,
            rx_desc: 1024,
            tx_desc: 1024,
            promiscuous: true,
        }
    }
}

/// Basic port counters (`rte_eth_stats`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PortStats {
    /// Packets received.
    pub ipackets: u64,
    /// Packets sent.
    pub opackets: u64,
    /// Bytes received.
    pub ibytes: u64,
    /// Bytes sent.
    pub obytes: u64,
    /// Rx packets dropped by the device (no descriptor).
    pub imissed: u64,
    /// Rx errors.
    pub ierrors: u64,
    /// Tx errors.
    pub oerrors: u64,
    /// Rx mbuf allocation failures.
    pub rx_nombuf: u64,
}

/// Link state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkStatus {
    /// Link up.
    pub up: bool,
    /// Speed in Mb/s (0 if unknown).
    pub speed_mbps: u32,
    /// Full duplex.
    pub full_duplex: bool,
}

struct Inner {
    id: u16,
    started: AtomicBool,
    _pool: Mempool,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: no queue handle is left (they hold this Arc), so nothing polls the port.
        unsafe {
            if self.started.load(Ordering::Acquire) {
                ffi::rte_eth_dev_stop(self.id);
            }
            ffi::rte_eth_dev_close(self.id);
        }
        eal::live_dec();
    }
}

/// A configured ethdev port.
pub struct Port {
    inner: Arc<Inner>,
    cfg: PortConfig,
    rx_held: Vec<Arc<AtomicBool>>,
    tx_taken: Vec<bool>,
    started: bool,
}

fn check(ret: i32, what: impl FnOnce() -> String) -> Result<()> {
    if ret < 0 {
        Err(DpdkError::from_ret(ret, what()))
    } else {
        Ok(())
    }
}

impl Port {
    /// Port id of the device called `name` (e.g. `net_ring0`).
    pub fn id_by_name(name: &str) -> Result<u16> {
        let what = || format!("looking up port {name:?}");
        eal::ensure_up(&what())?;
        let c = CString::new(name).map_err(|_| DpdkError::new(libc::EINVAL, what()))?;
        let mut id = 0u16;
        // SAFETY: EAL is up; valid C string and out pointer.
        let r = unsafe { ffi::rte_eth_dev_get_port_by_name(c.as_ptr(), &mut id) };
        check(r, what)?;
        Ok(id)
    }

    /// Create two ethdevs `a` and `b` wired back to back over two new rings (what `a` sends,
    /// `b` receives and vice versa; [`RING_PAIR_DEPTH`] frames in flight each way) and return
    /// their port ids (device names get DPDK's `net_ring_` prefix). The rings live for the
    /// process.
    pub fn ring_pair(a: &str, b: &str) -> Result<(u16, u16)> {
        Self::ring_pair_with(a, b, 1)
    }

    /// [`Port::ring_pair`] with `queues` rx and tx queues on each end (queue k of one end is
    /// queue k of the other).
    pub fn ring_pair_with(a: &str, b: &str, queues: u16) -> Result<(u16, u16)> {
        Self::ring_pair_sized(a, b, queues, RING_PAIR_DEPTH)
    }

    /// [`Port::ring_pair_with`] holding `depth` frames each way (a bench's generator port that
    /// must ride out its consumer's stalls; the `net_ring` vdev's own rings are fixed at 1024).
    pub fn ring_pair_sized(a: &str, b: &str, queues: u16, depth: u32) -> Result<(u16, u16)> {
        let what = |s: &str| format!("creating ring port pair {a:?}/{b:?}: {s}");
        eal::ensure_up(&what("start"))?;
        if queues == 0 {
            return Err(DpdkError::new(libc::EINVAL, what("no queues")));
        }
        let mk = |n: &str| -> Result<*mut ffi::rte_ring> {
            let c = CString::new(Self::ring_pair_ring(n))
                .map_err(|_| DpdkError::new(libc::EINVAL, what("NUL in name")))?;
            // SAFETY: EAL is up; DPDK copies the name. MP/MC (the PMD may use either end from
            // any lcore); exactly `depth` slots.
            let r = unsafe {
                ffi::rte_ring_create(c.as_ptr(), depth, ffi::SOCKET_ID_ANY, ffi::RING_F_EXACT_SZ)
            };
            if r.is_null() {
                Err(DpdkError::last(what(&format!("ring for {n}"))))
            } else {
                Ok(r)
            }
        };
        // Queue 0 keeps the one-queue names (`rp_<end>`).
        let ring_name = |n: &str, k: u16| {
            if k == 0 {
                n.to_string()
            } else {
                format!("{n}_{k}")
            }
        };
        let a_to_b = (0..queues)
            .map(|k| mk(&ring_name(a, k)))
            .collect::<Result<Vec<_>>>()?;
        let b_to_a = (0..queues)
            .map(|k| mk(&ring_name(b, k)))
            .collect::<Result<Vec<_>>>()?;
        let mk_port =
            |n: &str, rxs: &[*mut ffi::rte_ring], txs: &[*mut ffi::rte_ring]| -> Result<u16> {
                let c = CString::new(n)
                    .map_err(|_| DpdkError::new(libc::EINVAL, what("NUL in name")))?;
                let nq = u32::from(queues);
                // SAFETY: EAL is up; the ring arrays (`queues` entries each) live across the call;
                // the rings are never freed, so the ports never see dangling rings.
                let r = unsafe {
                    ffi::rte_eth_from_rings(c.as_ptr(), rxs.as_ptr(), nq, txs.as_ptr(), nq, 0)
                };
                if r < 0 {
                    Err(DpdkError::last(what(&format!("ethdev {n}"))))
                } else {
                    Ok(r as u16)
                }
            };
        Ok((mk_port(a, &b_to_a, &a_to_b)?, mk_port(b, &a_to_b, &b_to_a)?))
    }

    /// Name of the ring a [`Port::ring_pair`] end `end` transmits into (queue 0), which its
    /// peer receives from: what a generator attaches to ([`super::attach_producer`]) to feed
    /// the peer without opening `end`.
    pub fn ring_pair_ring(end: &str) -> String {
        format!("rp_{end}")
    }

    /// Configure port `id` with `cfg`, its rx queues drawing mbufs from `pool`. Not started.
    pub fn open(id: u16, cfg: &PortConfig, pool: &Mempool) -> Result<Port> {
        Self::open_with(id, cfg, pool, false)
    }

    /// [`Port::open`], with rx-queue interrupts configured when `rx_interrupts` (so an idle
    /// lcore can sleep until a frame arrives: [`RxQueue::intr_register`]). A driver without
    /// them may fail here or at start: open it again without.
    pub fn open_with(
        id: u16,
        cfg: &PortConfig,
        pool: &Mempool,
        rx_interrupts: bool,
    ) -> Result<Port> {
        let what = |step: &str| format!("port {id}: {step}");
        eal::ensure_up(&what("open"))?;
        // SAFETY: EAL is up; any u16 may be tested.
        if unsafe { ffi::rte_eth_dev_is_valid_port(id) } == 0 {
            return Err(DpdkError::new(libc::ENODEV, what("no such port")));
        }
        // SAFETY: zeroed rte_eth_conf is DPDK's "all defaults".
        let mut conf: ffi::rte_eth_conf = unsafe { std::mem::zeroed() };
        if rx_interrupts {
            conf.intr_conf.set_rxq(1);
        }
        // SAFETY: valid port; conf lives across the call.
        let r = unsafe { ffi::rte_eth_dev_configure(id, cfg.rx_queues, cfg.tx_queues, &conf) };
        check(r, || {
            what(&format!(
                "configure {} rx / {} tx queues",
                cfg.rx_queues, cfg.tx_queues
            ))
        })?;
        // From here on the Drop of Inner closes the device on error.
        eal::live_inc();
        let inner = Arc::new(Inner {
            id,
            started: AtomicBool::new(false),
            _pool: pool.clone(),
        });
        // SAFETY: valid port.
        let socket = unsafe { ffi::rte_eth_dev_socket_id(id) };
        let socket = if socket < 0 { 0 } else { socket as u32 };
        for q in 0..cfg.rx_queues {
            // SAFETY: valid configured port; NULL rxconf = defaults; pool outlives the port.
            let r = unsafe {
                ffi::rte_eth_rx_queue_setup(
                    id,
                    q,
                    cfg.rx_desc,
                    socket,
                    std::ptr::null(),
                    pool.as_ptr(),
                )
            };
            check(r, || {
                what(&format!("rx queue {q} setup ({} descriptors)", cfg.rx_desc))
            })?;
        }
        for q in 0..cfg.tx_queues {
            // SAFETY: valid configured port; NULL txconf = defaults.
            let r = unsafe {
                ffi::rte_eth_tx_queue_setup(id, q, cfg.tx_desc, socket, std::ptr::null())
            };
            check(r, || {
                what(&format!("tx queue {q} setup ({} descriptors)", cfg.tx_desc))
            })?;
        }
        let mut port = Port {
            inner,
            cfg: *cfg,
            rx_held: (0..cfg.rx_queues)
                .map(|_| Arc::new(AtomicBool::new(false)))
                .collect(),
            tx_taken: vec![false; cfg.tx_queues as usize],
            started: false,
        };
        if cfg.promiscuous {
            port.set_promiscuous(true)?;
        }
        Ok(port)
    }

    /// Port id.
    pub fn id(&self) -> u16 {
        self.inner.id
    }

    /// The rx-interrupt handle of rx queue `q` (for the lcore that polls it).
    pub fn queue_intr(&self, q: u16) -> QueueIntr {
        QueueIntr {
            port: self.inner.id,
            queue: q,
        }
    }

    /// The configuration it was opened with.
    pub fn config(&self) -> &PortConfig {
        &self.cfg
    }

    /// Device name (e.g. `net_ring0`).
    pub fn name(&self) -> String {
        let mut buf = [0 as c_char; ffi::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: valid port; buf holds RTE_ETH_NAME_MAX_LEN bytes as DPDK requires.
        let r = unsafe { ffi::rte_eth_dev_get_name_by_port(self.id(), buf.as_mut_ptr()) };
        if r < 0 {
            return format!("port{}", self.id());
        }
        // SAFETY: DPDK wrote a NUL-terminated name.
        unsafe { CStr::from_ptr(buf.as_ptr()).to_string_lossy().into_owned() }
    }

    /// Start the device.
    pub fn start(&mut self) -> Result<()> {
        // SAFETY: configured port.
        let r = unsafe { ffi::rte_eth_dev_start(self.id()) };
        check(r, || format!("port {}: start", self.id()))?;
        self.started = true;
        self.inner.started.store(true, Ordering::Release);
        Ok(())
    }

    /// Stop the device. Stop polling its queues first.
    pub fn stop(&mut self) -> Result<()> {
        // SAFETY: configured port.
        let r = unsafe { ffi::rte_eth_dev_stop(self.id()) };
        check(r, || format!("port {}: stop", self.id()))?;
        self.started = false;
        self.inner.started.store(false, Ordering::Release);
        Ok(())
    }

    /// Enable or disable promiscuous mode.
    pub fn set_promiscuous(&mut self, on: bool) -> Result<()> {
        // SAFETY: configured port.
        let r = unsafe {
            if on {
                ffi::rte_eth_promiscuous_enable(self.id())
            } else {
                ffi::rte_eth_promiscuous_disable(self.id())
            }
        };
        // Some vdevs do not implement it; that is not an error for us.
        if r == -libc::ENOTSUP {
            return Ok(());
        }
        check(r, || format!("port {}: promiscuous {on}", self.id()))
    }

    /// Counters.
    pub fn stats(&self) -> Result<PortStats> {
        Port::stats_of(self.id())
    }

    /// Counters of port `id` (for management threads, which hold no [`Port`]; an unknown or
    /// closed port is an error, never undefined behaviour).
    pub fn stats_of(id: u16) -> Result<PortStats> {
        // SAFETY: zeroed stats is a valid out buffer.
        let mut s: ffi::rte_eth_stats = unsafe { std::mem::zeroed() };
        // SAFETY: rte_eth_stats_get validates the port id; s lives across the call.
        let r = unsafe { ffi::rte_eth_stats_get(id, &mut s) };
        check(r, || format!("port {id}: stats"))?;
        Ok(PortStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }

    /// Link state, without waiting.
    pub fn link(&self) -> Result<LinkStatus> {
        // SAFETY: zeroed link is a valid out buffer.
        let mut l: ffi::rte_eth_link = unsafe { std::mem::zeroed() };
        // SAFETY: valid port; l lives across the call.
        let r = unsafe { ffi::rte_eth_link_get_nowait(self.id(), &mut l) };
        check(r, || format!("port {}: link status", self.id()))?;
        Ok(LinkStatus {
            up: l.link_status() as u32 == ffi::RTE_ETH_LINK_UP,
            speed_mbps: l.link_speed,
            full_duplex: l.link_duplex() as u32 == ffi::RTE_ETH_LINK_FULL_DUPLEX,
        })
    }

    /// MTU (largest L3 payload of a frame).
    pub fn mtu(&self) -> Result<u16> {
        let mut m: u16 = 0;
        // SAFETY: valid port; m lives across the call.
        let r = unsafe { ffi::rte_eth_dev_get_mtu(self.id(), &mut m) };
        check(r, || format!("port {}: get MTU", self.id()))?;
        Ok(m)
    }

    /// Set the MTU (for net_af_packet this sets the kernel interface's MTU).
    pub fn set_mtu(&mut self, mtu: u16) -> Result<()> {
        // SAFETY: valid port.
        let r = unsafe { ffi::rte_eth_dev_set_mtu(self.id(), mtu) };
        check(r, || format!("port {}: set MTU {mtu}", self.id()))
    }

    /// MAC address.
    pub fn mac(&self) -> Result<[u8; 6]> {
        let mut a = ffi::rte_ether_addr::default();
        // SAFETY: valid port; a lives across the call.
        let r = unsafe { ffi::rte_eth_macaddr_get(self.id(), &mut a) };
        check(r, || format!("port {}: MAC address", self.id()))?;
        Ok(a.addr_bytes)
    }

    /// Take the handle of rx queue `q`; a queue has at most one handle at a time.
    pub fn rx_queue(&mut self, q: u16) -> Result<RxQueue> {
        let id = self.id();
        let Some(held) = self.rx_held.get(q as usize) else {
            return Err(DpdkError::new(
                libc::EINVAL,
                format!("port {id}: no rx queue {q}"),
            ));
        };
        if held.swap(true, Ordering::AcqRel) {
            return Err(DpdkError::new(
                libc::EBUSY,
                format!("port {id}: rx queue {q} already taken"),
            ));
        }
        Ok(RxQueue {
            port: id,
            queue: q,
            held: held.clone(),
            _dev: self.inner.clone(),
        })
    }

    /// Receive and free whatever waits in the rx queues that no handle polls (after the
    /// pipeline stopped), so every mbuf returns to its pool. Returns how many were freed.
    /// Bounded: a source that never runs dry (`net_null`, a busy NIC) is read at most
    /// [`DRAIN_LIMIT`] frames per queue.
    pub fn drain_rx(&mut self) -> usize {
        let mut freed = 0;
        for q in 0..self.rx_held.len() as u16 {
            // Taking the handle proves nobody else polls this queue right now.
            let Ok(mut rx) = self.rx_queue(q) else {
                continue;
            };
            let mut burst = MbufBurst::<32>::new();
            let mut from_queue = 0;
            while from_queue < DRAIN_LIMIT {
                let n = rx.rx_burst(&mut burst);
                if n == 0 {
                    break;
                }
                from_queue += n;
                burst.clear();
            }
            freed += from_queue;
        }
        freed
    }

    /// Take the handle of tx queue `q` (once).
    pub fn tx_queue(&mut self, q: u16) -> Result<TxQueue> {
        let id = self.id();
        match self.tx_taken.get_mut(q as usize) {
            None => Err(DpdkError::new(
                libc::EINVAL,
                format!("port {id}: no tx queue {q}"),
            )),
            Some(true) => Err(DpdkError::new(
                libc::EBUSY,
                format!("port {id}: tx queue {q} already taken"),
            )),
            Some(t) => {
                *t = true;
                Ok(TxQueue {
                    port: id,
                    queue: q,
                    _dev: self.inner.clone(),
                })
            }
        }
    }
}

/// The receive side of one queue; poll it from one lcore.
pub struct RxQueue {
    port: u16,
    queue: u16,
    held: Arc<AtomicBool>,
    _dev: Arc<Inner>,
}

impl Drop for RxQueue {
    fn drop(&mut self) {
        self.held.store(false, Ordering::Release);
    }
}

/// The transmit side of one queue; use it from one lcore.
pub struct TxQueue {
    port: u16,
    queue: u16,
    _dev: Arc<Inner>,
}

impl RxQueue {
    /// Port id.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Queue id.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Receive into `burst`'s free space; returns how many mbufs were added.
    #[inline]
    pub fn rx_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> usize {
        let room = burst.free_space().min(u16::MAX as usize) as u16;
        if room == 0 {
            return 0;
        }
        // SAFETY: unique handle for this queue (one poller); writes at most `room` owned
        // mbuf pointers into the burst's free slots.
        let n = unsafe {
            ffi::shim_rte_eth_rx_burst(
                self.port,
                self.queue,
                burst.spare_ptr() as *mut *mut ffi::rte_mbuf,
                room,
            )
        } as usize;
        // SAFETY: the n slots after len now hold owned mbufs.
        unsafe { burst.set_len(burst.len() + n) };
        n
    }
}

/// `RTE_EPOLL_PER_THREAD`: the calling thread's own DPDK epoll instance.
const EPOLL_PER_THREAD: i32 = -1;
/// `RTE_INTR_EVENT_ADD`.
const INTR_EVENT_ADD: i32 = 1;

impl RxQueue {
    /// The rx-interrupt handle of this queue (for the lcore that polls it).
    pub fn intr(&self) -> QueueIntr {
        QueueIntr {
            port: self.port,
            queue: self.queue,
        }
    }
}

/// Rx-interrupt control of one queue: used only by the lcore that polls the queue, next to
/// its [`RxQueue`] (interrupt calls do not touch the rx ring itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueIntr {
    port: u16,
    queue: u16,
}

impl QueueIntr {
    /// Add the queue's rx interrupt to the calling thread's DPDK epoll instance
    /// ([`intr_thread_fd`]); once per queue, on the lcore that polls it. Fails when the port
    /// was opened without rx interrupts or its driver has none.
    pub fn register(&self) -> Result<()> {
        // SAFETY: any port/queue may be asked (DPDK checks both); NULL user data (the loop
        // polls the epoll fd itself and never reads event data).
        let r = unsafe {
            ffi::rte_eth_dev_rx_intr_ctl_q(
                self.port,
                self.queue,
                EPOLL_PER_THREAD,
                INTR_EVENT_ADD,
                std::ptr::null_mut(),
            )
        };
        if r == -libc::EEXIST {
            // Registered by an earlier, partly failed attempt.
            return Ok(());
        }
        check(r, || {
            format!("port {} rx queue {}: rx interrupt", self.port, self.queue)
        })
    }

    /// Ask the driver to signal the next frame (before the lcore sleeps). Drivers whose
    /// event fd is always live (tap) have no switch: that is not an error.
    pub fn enable(&self) -> Result<()> {
        // SAFETY: any port/queue may be asked (DPDK checks both).
        let r = unsafe { ffi::rte_eth_dev_rx_intr_enable(self.port, self.queue) };
        if r == -libc::ENOTSUP || r == -libc::ENOSYS {
            return Ok(());
        }
        check(r, || {
            format!(
                "port {} rx queue {}: rx interrupt enable",
                self.port, self.queue
            )
        })
    }

    /// Stop signalling (the lcore polls again).
    pub fn disable(&self) {
        // SAFETY: any port/queue may be asked; an error only means there is no switch.
        unsafe { ffi::rte_eth_dev_rx_intr_disable(self.port, self.queue) };
    }
}

/// The calling thread's DPDK epoll fd, readable while a registered rx interrupt is pending
/// (an lcore puts it in its own wait set next to its other descriptors).
pub fn intr_thread_fd() -> i32 {
    // SAFETY: no arguments; creates the thread's epoll instance on first use.
    unsafe { ffi::rte_intr_tls_epfd() }
}

/// Consume the calling thread's pending rx interrupts without waiting (DPDK reads each
/// event fd as its driver requires); returns how many there were.
pub fn intr_drain() -> usize {
    // SAFETY: rte_epoll_event is plain data; DPDK writes at most `evs.len()` entries.
    let mut evs: [ffi::rte_epoll_event; 8] = unsafe { std::mem::zeroed() };
    // SAFETY: per-thread epoll instance; timeout 0 never blocks.
    let n = unsafe { ffi::rte_epoll_wait(EPOLL_PER_THREAD, evs.as_mut_ptr(), evs.len() as i32, 0) };
    n.max(0) as usize
}

/// The kernel packet sockets this process holds on interface `iface` (what net_af_packet
/// opened for it: one per queue pair). Their readability says frames wait in the rx ring, so
/// an idle lcore can poll(2) them instead of sleeping blind. Found through
/// `/proc/net/packet` (socket inode per interface index) and `/proc/self/fd`; empty when
/// either is unreadable.
pub fn af_packet_fds(iface: &str) -> Vec<i32> {
    let Ok(name) = CString::new(iface) else {
        return Vec::new();
    };
    // SAFETY: valid C string.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Vec::new();
    }
    let inodes = std::fs::read_to_string("/proc/net/packet")
        .map(|t| packet_inodes(&t, ifindex))
        .unwrap_or_default();
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    let mut fds: Vec<i32> = dir
        .flatten()
        .filter_map(|e| {
            let fd: i32 = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let inode: u64 = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            inodes.contains(&inode).then_some(fd)
        })
        .collect();
    fds.sort_unstable();
    fds
}

/// Inodes of the packet sockets bound to `ifindex` in a `/proc/net/packet` text
/// (`sk RefCnt Type Proto Iface R Rmem User Inode`).
fn packet_inodes(text: &str, ifindex: u32) -> Vec<u64> {
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let iface: u32 = f.get(4)?.parse().ok()?;
            let inode: u64 = f.get(8)?.parse().ok()?;
            (iface == ifindex).then_some(inode)
        })
        .collect()
}

impl TxQueue {
    /// Port id.
    pub fn port(&self) -> u16 {
        self.port
    }
    /// Queue id.
    pub fn queue(&self) -> u16 {
        self.queue
    }

    /// Transmit `burst`'s mbufs, front first; returns how many the device took. Unsent mbufs
    /// stay in `burst` (at its front): retry, or count and `clear()` them.
    #[inline]
    pub fn tx_burst<const N: usize>(&mut self, burst: &mut MbufBurst<N>) -> usize {
        let len = burst.len().min(u16::MAX as usize) as u16;
        if len == 0 {
            return 0;
        }
        // SAFETY: unique handle for this queue; the first len slots are owned mbufs; the
        // device takes ownership of the first n.
        let n = unsafe {
            ffi::shim_rte_eth_tx_burst(
                self.port,
                self.queue,
                burst.as_raw_ptr() as *mut *mut ffi::rte_mbuf,
                len,
            )
        } as usize;
        burst.consume_front(n);
        n
    }
}

#[cfg(test)]
mod tests {
    use super::packet_inodes;

    #[test]
    fn packet_inodes_by_interface() {
        let t = "sk               RefCnt Type Proto  Iface R Rmem   User   Inode\n\
                 ffff8f0a1 3      3    0003   7     1 0      0      41001\n\
                 ffff8f0a2 3      3    0003   9     1 0      0      41002\n\
                 ffff8f0a3 3      3    0003   7     1 0      0      41003\n\
                 garbage\n";
        assert_eq!(packet_inodes(t, 7), vec![41001, 41003]);
        assert_eq!(packet_inodes(t, 9), vec![41002]);
        assert!(packet_inodes(t, 8).is_empty());
    }
}
