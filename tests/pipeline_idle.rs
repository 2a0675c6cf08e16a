//! Idle lcores wake up for work: each test runs one forwarding lcore (the pipeline's own
//! `run_loop`, launched as `run` launches stages) in a DPDK child process, waits until that
//! lcore is asleep, then hands it a frame and checks the frame is forwarded and what woke the
//! lcore:
//! - interrupt mode on net_tap (DPDK rx interrupts: the tap fd in the lcore's DPDK epoll);
//! - interrupt mode on net_af_packet (the kernel socket found through /proc/net/packet);
//! - a ring from another lcore (the producer rings the consumer's doorbell);
//! - back-off mode, and interrupt mode on an input with no wake-up path (net_ring), which
//!   must fall back to timed sleeps and still forward.
//!
//! No test measures time: each waits for a counter, with a generous deadline.

mod dpdk_common;

use dpdk_common::{in_child, spawn};

#[cfg(test)]
mod child {
    pub use super::dpdk_common::result;
    pub use colo_proxy::config::IdleMode;
    pub use colo_proxy::dpdk::{self, Eal, MbufBurst, Mempool, Port, PortConfig};
    pub use colo_proxy::pipeline::counters::{Counter, LcoreCounters};
    pub use colo_proxy::pipeline::idle::{IdleInputs, PortWake, Wake};
    pub use colo_proxy::pipeline::io::{RingIn, RingOut, RxSet, TxBuf, BURST};
    pub use colo_proxy::pipeline::lcore::{IdlePolicy, LcoreShared, LoopCtx, Stage};
    pub use colo_proxy::pipeline::runtime::{self, LcorePlan};
    pub use colo_proxy::pipeline::stages::ForwardStage;
    pub use std::process::Command;
    pub use std::sync::Arc;
    pub use std::time::{Duration, Instant};

    /// A ring consumer that forwards to a port (a compare shard's input shape); its only
    /// input is the ring, so only the producer's doorbell can wake it.
    pub struct FromRing {
        pub rx: RingIn,
        pub tx: TxBuf,
    }

    impl Stage for FromRing {
        fn name(&self) -> &str {
            "from-ring"
        }
        fn poll(&mut self, cx: &LoopCtx) -> usize {
            let mut b: MbufBurst<BURST> = MbufBurst::new();
            let n = self.rx.dequeue(&mut b);
            cx.counters.add(Counter::Rx, n as u64);
            for m in b.drain() {
                self.tx.push(m, cx.counters);
            }
            self.tx.flush(cx.counters);
            n
        }
    }

    pub fn sh(args: &[&str]) {
        let st = Command::new(args[0])
            .args(&args[1..])
            .status()
            .expect(args[0]);
        assert!(st.success(), "{args:?} failed");
    }

    /// Send one broadcast test frame out of kernel interface `iface` (AF_PACKET).
    pub fn kernel_send(iface: &str) {
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: plain socket calls on a socket this function owns; the address struct and
        // the frame live across the calls.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex > 0, "no interface {iface}");
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_ifindex = ifindex as i32;
            sa.sll_halen = 6;
            sa.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let mut f = [0u8; 60];
            f[..6].copy_from_slice(&[0xff; 6]);
            f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x77, 0x01]);
            f[12..14].copy_from_slice(&[0x88, 0xb5]);
            let n = libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            libc::close(fd);
            assert_eq!(n, 60, "sendto {iface}");
        }
    }

    /// Wait (at most 10 s) until `f` holds.
    pub fn until(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for: {what}");
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn policy(mode: IdleMode) -> IdlePolicy {
        IdlePolicy {
            spin_loops: 50,
            ..IdlePolicy::mode(mode)
        }
    }

    /// Launch `stage` on the worker lcore; `poke` delivers the frame once the lcore sleeps.
    /// Prints the lcore's counters as RESULT lines.
    /// `blocks`: the lcore can block (it then announces its sleep; a back-off one only
    /// sleeps).
    pub fn run_one(
        stage: Box<dyn Stage>,
        idle: IdlePolicy,
        blocks: bool,
        wake: Arc<Wake>,
        poke: impl FnOnce(),
    ) {
        let lcore = dpdk::worker_lcores().next().expect("a worker lcore");
        let plan = LcorePlan {
            idle: Some(idle),
            wake,
            ..LcorePlan::new(lcore, vec![stage])
        };
        let running = runtime::launch(vec![plan], IdlePolicy::default()).expect("launch");
        let sh: Arc<LcoreShared> = running.control.lcores[0].clone();
        let c = &sh.counters;
        // Stray frames (the kernel's own) are forwarded too: start from a quiet lcore.
        until("the lcore sleeps", || {
            c.get(Counter::Sleeps) >= 3 && (!blocks || sh.wake.is_sleeping())
        });
        let rx0 = c.get(Counter::Rx);
        let sleeps0 = c.get(Counter::Sleeps);
        poke();
        until("the frame is forwarded", || c.get(Counter::Tx) > rx0);
        result("forwarded", c.get(Counter::Tx) - rx0);
        result("slept_before", u64::from(sleeps0 > 0));
        for k in [
            Counter::WakeRx,
            Counter::WakeRing,
            Counter::WakeTimeout,
            Counter::Sleeps,
        ] {
            result(k.name(), c.get(k));
        }
        result("sleep_ns", c.get(Counter::SleepNs));
        let failures = running.run_main_and_wait(|ctl| {
            runtime::stop(&ctl, Duration::from_millis(20));
        });
        assert!(failures.is_empty(), "{failures:?}");
    }

    pub fn eal(vdevs: &[&str]) -> (Eal, Mempool) {
        let mut extra = Vec::new();
        for v in vdevs {
            extra.extend(["--vdev", v]);
        }
        let eal = Eal::init(&super::dpdk_common::eal_args(&extra)).expect("EAL");
        let pool = Mempool::new("idle", 4095).expect("pool");
        (eal, pool)
    }

    pub fn open(name: &str, pool: &Mempool, intr: bool) -> Port {
        let id = Port::id_by_name(name).expect(name);
        let mut p = Port::open_with(id, &PortConfig::default(), pool, intr).expect("open");
        p.start().expect("start");
        p
    }

    /// A sink port: net_null discards what it is sent.
    pub fn sink(pool: &Mempool) -> (Port, TxBuf) {
        let mut p = open("net_null0", pool, false);
        let tx = TxBuf::new(p.tx_queue(0).expect("txq"));
        (p, tx)
    }
}

fn iface(tag: &str) -> String {
    format!("ci{tag}{}", std::process::id() % 100_000)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

#[test]
fn tap_interrupt_wakes_sleeping_lcore() {
    const T: &str = "tap_interrupt_wakes_sleeping_lcore";
    if in_child(T) {
        use child::*;
        let tap = std::env::var("IDLE_IFACE").unwrap();
        let (_eal, pool) = eal(&[&format!("net_tap0,iface={tap}"), "net_null0"]);
        let mut p = open("net_tap0", &pool, true);
        // No IPv6: the kernel's own solicitations would be frames too.
        sh(&[
            "sysctl",
            "-qw",
            &format!("net.ipv6.conf.{tap}.disable_ipv6=1"),
        ]);
        sh(&["ip", "link", "set", &tap, "up"]);
        let (_null, tx) = sink(&pool);
        let wake = PortWake::Interrupt {
            queues: vec![p.queue_intr(0)],
            registered: false,
        };
        let stage = ForwardStage::new(
            vec![(RxSet::from(p.rx_queue(0).unwrap()), tx)],
            IdleInputs::none().with("tap", wake),
        );
        run_one(
            Box::new(stage),
            policy(IdleMode::Interrupt),
            true,
            Default::default(),
            || kernel_send(&tap),
        );
        return;
    }
    assert!(is_root(), "needs root (a tap interface)");
    let tap = iface("t");
    let c = spawn_with(T, &tap);
    c.assert_ok();
    assert!(c.num("forwarded") >= 1);
    assert_eq!(c.num("slept_before"), 1);
    // The rx interrupt woke it, not the wait's timeout.
    assert!(c.num("wake_rx") >= 1, "{}", c.dump());
    assert!(c.num("sleep_ns") > 0);
}

#[test]
fn af_packet_socket_wakes_sleeping_lcore() {
    const T: &str = "af_packet_socket_wakes_sleeping_lcore";
    if in_child(T) {
        use child::*;
        let a = std::env::var("IDLE_IFACE").unwrap();
        let b = format!("{a}p");
        let (_eal, pool) = eal(&[&format!("net_af_packet0,iface={a}"), "net_null0"]);
        let mut p = open("net_af_packet0", &pool, false);
        let fds = colo_proxy::dpdk::af_packet_fds(&a);
        result("fds", fds.len());
        assert!(!fds.is_empty(), "af_packet sockets of {a} not found");
        let (_null, tx) = sink(&pool);
        let stage = ForwardStage::new(
            vec![(RxSet::from(p.rx_queue(0).unwrap()), tx)],
            IdleInputs::none().with("veth", PortWake::Fds(fds)),
        );
        run_one(
            Box::new(stage),
            policy(IdleMode::Interrupt),
            true,
            Default::default(),
            || kernel_send(&b),
        );
        return;
    }
    assert!(is_root(), "needs root (a veth pair)");
    let a = iface("a");
    let b = format!("{a}p");
    let veth = Veth::new(&a, &b);
    let c = spawn_with(T, &a);
    drop(veth);
    c.assert_ok();
    assert!(c.num("fds") >= 1);
    assert!(c.num("forwarded") >= 1);
    assert_eq!(c.num("slept_before"), 1);
    assert!(c.num("wake_rx") >= 1, "{}", c.dump());
}

#[test]
fn ring_producer_wakes_sleeping_consumer() {
    const T: &str = "ring_producer_wakes_sleeping_consumer";
    if in_child(T) {
        use child::*;
        let (_eal, pool) = eal(&["net_null0"]);
        let (prod, cons) = dpdk::ring::<dpdk::Mbuf>("idle_r", 1024, Default::default()).unwrap();
        let (_null, tx) = sink(&pool);
        let wake: Arc<Wake> = Default::default();
        let mut out = RingOut::new(prod).with_wake(wake.clone());
        let stage = FromRing {
            rx: RingIn::new(cons),
            tx,
        };
        let counters = LcoreCounters::default();
        let p2 = pool.clone();
        run_one(
            Box::new(stage),
            policy(IdleMode::Interrupt),
            true,
            wake,
            move || {
                let mut m = p2.alloc().expect("mbuf");
                m.set_data(&[0u8; 60]).unwrap();
                assert!(out.push(m, &counters).is_ok());
                out.flush(&counters);
                assert_eq!(out.pending(), 0);
            },
        );
        return;
    }
    let c = spawn_with(T, "");
    c.assert_ok();
    assert_eq!(c.num("forwarded"), 1);
    assert_eq!(c.num("slept_before"), 1);
    // The producer's doorbell woke it (once), not the wait's timeout.
    assert!(c.num("wake_ring") >= 1, "{}", c.dump());
}

#[test]
fn backoff_and_wakeless_interrupt_lcores_still_forward() {
    const T: &str = "backoff_and_wakeless_interrupt_lcores_still_forward";
    if in_child(T) {
        use child::*;
        let mode = match std::env::var("IDLE_IFACE").unwrap().as_str() {
            "backoff" => IdleMode::Backoff,
            _ => IdleMode::Interrupt,
        };
        let (_eal, pool) = eal(&["net_null0"]);
        let (a, b) = Port::ring_pair("ia", "ib").unwrap();
        let mut pa = Port::open(a, &PortConfig::default(), &pool).unwrap();
        let mut pb = Port::open(b, &PortConfig::default(), &pool).unwrap();
        pa.start().unwrap();
        pb.start().unwrap();
        let (_null, tx) = sink(&pool);
        let stage = ForwardStage::new(
            vec![(RxSet::from(pb.rx_queue(0).unwrap()), tx)],
            // What the topology gives a net_ring port: no wake-up path.
            IdleInputs::none().with("ring", PortWake::None("net_ring".into())),
        );
        let mut atx = TxBuf::new(pa.tx_queue(0).unwrap());
        let p2 = pool.clone();
        run_one(
            Box::new(stage),
            policy(mode),
            false,
            Default::default(),
            move || {
                let counters = LcoreCounters::default();
                let mut m = p2.alloc().expect("mbuf");
                m.set_data(&[0u8; 60]).unwrap();
                atx.push(m, &counters);
                atx.flush(&counters);
            },
        );
        return;
    }
    for mode in ["backoff", "interrupt"] {
        let c = spawn_with(T, mode);
        c.assert_ok();
        assert_eq!(c.num("forwarded"), 1, "{mode}");
        assert_eq!(c.num("slept_before"), 1, "{mode}");
        // Timed sleeps only: nothing could wake it, so nothing did.
        assert_eq!(
            c.num("wake_rx") + c.num("wake_ring"),
            0,
            "{mode}: {}",
            c.dump()
        );
        assert_eq!(
            c.num("wake_timeout"),
            0,
            "{mode}: never blocked: {}",
            c.dump()
        );
    }
}

/// [`spawn`] with `IDLE_IFACE` set for the child (one child at a time: the variable is
/// process-wide).
fn spawn_with(test: &str, value: &str) -> dpdk_common::Child {
    static ONE: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one = ONE.lock().unwrap_or_else(|p| p.into_inner());
    std::env::set_var("IDLE_IFACE", value);
    spawn(test)
}

/// A veth pair, removed on drop.
struct Veth(String);

impl Veth {
    fn new(a: &str, b: &str) -> Veth {
        let run = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        let _ = std::process::Command::new("ip")
            .args(["link", "del", a])
            .stderr(std::process::Stdio::null())
            .status();
        run(&["link", "add", a, "type", "veth", "peer", "name", b]);
        for i in [a, b] {
            let _ = std::process::Command::new("sysctl")
                .args(["-qw", &format!("net.ipv6.conf.{i}.disable_ipv6=1")])
                .status();
            run(&["link", "set", i, "up"]);
        }
        Veth(a.to_string())
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}
