//! Latency added by idle lcores, per idle mode, against the io-forwarder on the same ports and
//! lcores in the same invocation.
//!
//! 1. One forwarding lcore between two kernel-backed ports (`af_packet` on veth pairs, and
//!    `tap`): the bench sends timestamped frames into one port's kernel end and receives them
//!    at the other's, in the same process (one clock). Forwarders: `iofwd` (a bare busy loop
//!    of the io-forward step, the baseline) and the proxy's own lcore loop (`run_loop` with the
//!    io-forward stage, `ForwardStage`) in `poll`, `backoff` and `interrupt` mode, at a low
//!    rate (1 k frames/s) and a medium one (20 k frames/s). One-way latency p50/p99/p99.9 and
//!    the process's CPU use while idle (1 s with no traffic; the forwarder's lcore is the only
//!    thing running).
//! 2. Dedicated cores: in-process `net_ring` ports, a generator on the main lcore stamping each
//!    mbuf with the TSC, the forwarder on the worker lcore, 1 M frames/s: added latency in
//!    `poll` mode against `iofwd` (the ring has no wake-up, so no `interrupt` row).
//! 3. The veth lab through both proxies (tests/pipeline_support::Lab: client, PVM and SVM
//!    namespaces, af_packet ports, socket link), per idle mode, against a Linux bridge: ping
//!    RTT and request/response latency on new connections (the targets: ping ≤ 0.3 ms,
//!    rr p50 ≤ 0.6 ms; QEMU's chain on this machine: 0.37 / 0.67 ms), twice: with `svc.py`'s
//!    Python endpoints and with native ones (`native_rr`, this binary with `--rr-serve` /
//!    `--rr-client`), whose server does not take 90–170 µs of the shared CPUs per answer.
//!
//! Children: each forwarder runs in its own process (EAL once per process): this binary
//! re-executed with `COLO_LAT_CHILD`. `cargo bench --bench latency` (full) or `-- --smoke`
//! (seconds: af_packet at 1 k/s, tap interrupt, ring poll, the lab in interrupt mode only);
//! `LAT_LAB=interrupt[,backoff,poll]` runs only section 3 (300 pings, 300 rr) in those modes;
//! `LAT_IDLE=TOML` is added to the lab's `[idle]` table (e.g. `spin_us = 100`).
//! Needs root (veths, taps, namespaces).

#[path = "../tests/netns_support/mod.rs"]
mod netns_support;
#[path = "../tests/pipeline_support/mod.rs"]
mod pipeline_support;

#[path = "common.rs"]
mod common;
use common::cpu_model;

use std::collections::HashMap;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colo_proxy::config::IdleMode;
use colo_proxy::dpdk::{self, Eal, Mempool, Port, PortConfig};
use colo_proxy::pipeline::counters::{Counter, LcoreCounters};
use colo_proxy::pipeline::idle::{IdleInputs, PortWake};
use colo_proxy::pipeline::io::{RxSet, TxBuf, BURST};
use colo_proxy::pipeline::lcore::IdlePolicy;
use colo_proxy::pipeline::runtime::{self, LcorePlan};
use colo_proxy::pipeline::stages::ForwardStage;
use hdrhistogram::Histogram;

const CHILD: &str = "COLO_LAT_CHILD";
/// Frames each direction of the dedicated-core case's ring pair holds (32 ms at 1 Mpps).
const RING_DEPTH: u32 = 32768;
/// EtherType of the bench's frames (IEEE local experimental 2).
const ETHER: u16 = 0x88b6;

/// One forwarder run, as the parent asks the child for it.
#[derive(Clone, Debug)]
struct Case {
    ports: &'static str,
    fwd: &'static str,
    rate: u64,
    frames: u64,
    idle_ms: u64,
}

impl Case {
    fn encode(&self) -> String {
        format!(
            "{},{},{},{},{}",
            self.ports, self.fwd, self.rate, self.frames, self.idle_ms
        )
    }

    fn decode(s: &str) -> Case {
        let f: Vec<&str> = s.split(',').collect();
        let leak = |s: &str| -> &'static str { Box::leak(s.to_string().into_boxed_str()) };
        Case {
            ports: leak(f[0]),
            fwd: leak(f[1]),
            rate: f[2].parse().unwrap(),
            frames: f[3].parse().unwrap(),
            idle_ms: f[4].parse().unwrap(),
        }
    }
}

fn mode_of(fwd: &str) -> Option<IdleMode> {
    match fwd {
        "poll" => Some(IdleMode::Poll),
        "backoff" => Some(IdleMode::Backoff),
        "interrupt" => Some(IdleMode::Interrupt),
        _ => None,
    }
}

fn sh(args: &[&str]) {
    let st = Command::new(args[0])
        .args(&args[1..])
        .stderr(Stdio::null())
        .status()
        .expect(args[0]);
    assert!(st.success(), "{args:?}");
}

/// Process CPU time (user + system) so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// A raw AF_PACKET socket on `iface` for the bench's EtherType.
struct RawSock(i32);

impl RawSock {
    fn new(iface: &str) -> RawSock {
        let name = std::ffi::CString::new(iface).unwrap();
        // SAFETY: plain socket calls on a socket this value owns; the address lives across
        // the call.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex > 0, "no interface {iface}");
            let proto = ETHER.to_be() as i32;
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto);
            assert!(fd >= 0, "AF_PACKET socket");
            let mut sa: libc::sockaddr_ll = std::mem::zeroed();
            sa.sll_family = libc::AF_PACKET as u16;
            sa.sll_protocol = ETHER.to_be();
            sa.sll_ifindex = ifindex as i32;
            let r = libc::bind(
                fd,
                (&sa as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(r, 0, "bind {iface}");
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 200_000,
            };
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&tv as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as u32,
            );
            RawSock(fd)
        }
    }

    fn send(&self, frame: &[u8]) {
        // SAFETY: a bound socket and a live buffer.
        unsafe { libc::send(self.0, frame.as_ptr().cast(), frame.len(), 0) };
    }

    /// One frame, or None after the receive timeout.
    fn recv(&self, buf: &mut [u8]) -> Option<usize> {
        // SAFETY: a live buffer of buf.len() bytes.
        let n = unsafe { libc::recv(self.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then_some(n as usize)
    }
}

impl Drop for RawSock {
    fn drop(&mut self) {
        // SAFETY: our own fd.
        unsafe { libc::close(self.0) };
    }
}

/// Send `frames` timestamped frames on `tx` at `rate`/s, receive them on `rx`; one-way
/// latency histogram (ns) and frames lost.
fn kernel_traffic(tx: &str, rx: &str, rate: u64, frames: u64) -> (Histogram<u64>, u64) {
    let origin = Instant::now();
    let rxs = RawSock::new(rx);
    let txs = RawSock::new(tx);
    let done = Arc::new(AtomicBool::new(false));
    let d2 = done.clone();
    let receiver = std::thread::spawn(move || {
        let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
        let mut buf = [0u8; 2048];
        let mut got = 0u64;
        loop {
            match rxs.recv(&mut buf) {
                Some(n) if n >= 30 && buf[12..14] == ETHER.to_be_bytes() => {
                    let now = origin.elapsed().as_nanos() as u64;
                    let sent = u64::from_ne_bytes(buf[14..22].try_into().unwrap());
                    let _ = h.record(now.saturating_sub(sent).max(1));
                    got += 1;
                    if got == frames {
                        break;
                    }
                }
                Some(_) => {}
                None if d2.load(Ordering::Acquire) => break,
                None => {}
            }
        }
        (h, got)
    });
    colo_proxy::pipeline::idle::set_timer_slack(1_000);
    let gap = Duration::from_nanos(1_000_000_000 / rate.max(1));
    let start = Instant::now();
    let mut f = [0u8; 64];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0x77, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0x77, 0x01]);
    f[12..14].copy_from_slice(&ETHER.to_be_bytes());
    for i in 0..frames {
        let due = start + gap * i as u32;
        let now = Instant::now();
        if due > now {
            std::thread::sleep(due - now);
        }
        let ts = origin.elapsed().as_nanos() as u64;
        f[14..22].copy_from_slice(&ts.to_ne_bytes());
        f[22..30].copy_from_slice(&i.to_ne_bytes());
        txs.send(&f);
    }
    std::thread::sleep(Duration::from_millis(300));
    done.store(true, Ordering::Release);
    let (h, got) = receiver.join().unwrap();
    (h, frames - got.min(frames))
}

/// The child: EAL, two ports, one forwarder, traffic, RESULT lines.
fn child(case: Case) {
    let pid = std::process::id() % 100_000;
    let (da, ka, db, kb) = (
        format!("lda{pid}"),
        format!("lka{pid}"),
        format!("ldb{pid}"),
        format!("lkb{pid}"),
    );
    let mut vdevs = Vec::new();
    match case.ports {
        "af_packet" => {
            for (d, k) in [(&da, &ka), (&db, &kb)] {
                let _ = Command::new("ip")
                    .args(["link", "del", d])
                    .stderr(Stdio::null())
                    .status();
                sh(&["ip", "link", "add", d, "type", "veth", "peer", "name", k]);
                for i in [d, k] {
                    sh(&[
                        "sysctl",
                        "-qw",
                        &format!("net.ipv6.conf.{i}.disable_ipv6=1"),
                    ]);
                    sh(&["ip", "link", "set", i, "up"]);
                }
            }
            vdevs.push(format!("net_af_packet0,iface={da}"));
            vdevs.push(format!("net_af_packet1,iface={db}"));
        }
        "tap" => {
            vdevs.push(format!("net_tap0,iface={ka}"));
            vdevs.push(format!("net_tap1,iface={kb}"));
        }
        _ => {}
    }
    let mut args: Vec<String> = ["-l", "0-1", "--no-pci", "--log-level", "lib.eal:error"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(dpdk::default_mem_args());
    for v in &vdevs {
        args.extend(["--vdev".to_string(), v.clone()]);
    }
    let eal = Eal::init(&args).expect("EAL");
    // The ring case: both directions full, and the bursts in flight.
    let mbufs = if case.ports == "ring" {
        2 * RING_DEPTH + 1023
    } else {
        8191
    };
    let pool = Mempool::new("lat", mbufs).expect("pool");
    let mode = mode_of(case.fwd);
    let (a, b) = match case.ports {
        // Deep rings: a frame that waits out a vCPU stall is counted late, where a 1024-frame
        // ring would lose it and leave it out of the histogram (p99 too low).
        "ring" => Port::ring_pair_sized("la", "lb", 1, RING_DEPTH).expect("ring pair"),
        "af_packet" => (
            Port::id_by_name("net_af_packet0").unwrap(),
            Port::id_by_name("net_af_packet1").unwrap(),
        ),
        _ => (
            Port::id_by_name("net_tap0").unwrap(),
            Port::id_by_name("net_tap1").unwrap(),
        ),
    };
    let intr = case.ports == "tap" && mode == Some(IdleMode::Interrupt);
    let open = |id| {
        let mut p = Port::open_with(id, &PortConfig::default(), &pool, intr).expect("open");
        p.start().expect("start");
        p
    };
    let (mut pa, mut pb) = (open(a), open(b));
    if case.ports == "tap" {
        for k in [&ka, &kb] {
            sh(&[
                "sysctl",
                "-qw",
                &format!("net.ipv6.conf.{k}.disable_ipv6=1"),
            ]);
            sh(&["ip", "link", "set", k, "up"]);
        }
    }
    let wake = |p: &Port, iface: &str| match case.ports {
        "af_packet" => PortWake::Fds(dpdk::af_packet_fds(iface)),
        "tap" if intr => PortWake::Interrupt {
            queues: vec![p.queue_intr(0)],
            registered: false,
        },
        _ => PortWake::None("no wake-up".into()),
    };
    let idle = IdleInputs::none()
        .with("a", wake(&pa, &da))
        .with("b", wake(&pb, &db));
    let legs = if case.ports == "ring" {
        // la ⇄ lb are wired back to back: the generator sends on la, the forwarder reads lb
        // and sends back on lb, the generator reads la. One leg.
        vec![(
            RxSet::from(pb.rx_queue(0).unwrap()),
            TxBuf::new(pb.tx_queue(0).unwrap()),
        )]
    } else {
        vec![
            (
                RxSet::from(pa.rx_queue(0).unwrap()),
                TxBuf::new(pb.tx_queue(0).unwrap()),
            ),
            (
                RxSet::from(pb.rx_queue(0).unwrap()),
                TxBuf::new(pa.tx_queue(0).unwrap()),
            ),
        ]
    };
    let lcore = dpdk::worker_lcores().next().expect("a worker lcore");
    let stop = Arc::new(AtomicBool::new(false));
    let mut base_job = None;
    let mut running = None;
    match mode {
        None => {
            // The baseline: the io-forward step in a bare busy loop.
            let s2 = stop.clone();
            let mut legs = legs;
            base_job = Some(
                dpdk::launch_on(lcore, move || {
                    let c = LcoreCounters::default();
                    while !s2.load(Ordering::Relaxed) {
                        for (rx, tx) in legs.iter_mut() {
                            tx.forward_from_set(rx, &c);
                        }
                    }
                })
                .expect("launch"),
            );
        }
        Some(m) => {
            let policy = IdlePolicy::mode(m);
            let plan = LcorePlan {
                idle: Some(policy),
                ..LcorePlan::new(lcore, vec![Box::new(ForwardStage::new(legs, idle))])
            };
            running = Some(runtime::launch(vec![plan], IdlePolicy::default()).expect("launch"));
        }
    }
    // Idle CPU: nothing but the forwarder runs (this thread sleeps).
    std::thread::sleep(Duration::from_millis(200));
    let c0 = cpu_time();
    let t0 = Instant::now();
    std::thread::sleep(Duration::from_millis(case.idle_ms));
    let idle_pct = 100.0 * (cpu_time() - c0).as_secs_f64() / t0.elapsed().as_secs_f64();
    println!("RESULT idle_cpu_pct={idle_pct:.2}");
    let (h, lost) = if case.ports == "ring" {
        ring_traffic(&mut pa, &pool, case.rate, case.frames)
    } else {
        kernel_traffic(&ka, &kb, case.rate, case.frames)
    };
    let us = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "RESULT p50_us={:.1}\nRESULT p99_us={:.1}\nRESULT p999_us={:.1}\nRESULT n={}\nRESULT lost={lost}",
        us(0.5),
        us(0.99),
        us(0.999),
        h.len()
    );
    stop.store(true, Ordering::Release);
    if let Some(j) = base_job {
        let _ = j.join();
    }
    if let Some(r) = running {
        let wakes = r.control.lcores[0].counters.snapshot();
        println!(
            "RESULT wake_rx={}\nRESULT sleeps={}",
            wakes.get(Counter::WakeRx),
            wakes.get(Counter::Sleeps)
        );
        let _ = r.run_main_and_wait(|ctl| {
            runtime::stop(&ctl, Duration::from_millis(20));
        });
    }
    drop((pa, pb, pool, eal));
    if case.ports == "af_packet" {
        for d in [&da, &db] {
            let _ = Command::new("ip").args(["link", "del", d]).status();
        }
    }
}

/// The ring case: `frames` frames at `rate`/s sent on `port` (wired to the forwarder's
/// port), each stamped with the TSC; received back on `port`.
fn ring_traffic(port: &mut Port, pool: &Mempool, rate: u64, frames: u64) -> (Histogram<u64>, u64) {
    let mut tx = TxBuf::new(port.tx_queue(0).unwrap());
    let mut rx = port.rx_queue(0).unwrap();
    let c = LcoreCounters::default();
    let hz = dpdk::tsc_hz() as f64;
    let mut h = Histogram::<u64>::new_with_bounds(1, 10_000_000_000, 3).unwrap();
    let gap = (hz / rate as f64) as u64;
    let start = dpdk::rdtsc();
    let (mut sent, mut got) = (0u64, 0u64);
    let mut burst: dpdk::MbufBurst<BURST> = dpdk::MbufBurst::new();
    let deadline = start + (hz as u64) * (frames / rate.max(1) + 2);
    while got < frames && dpdk::rdtsc() < deadline {
        let now = dpdk::rdtsc();
        while sent < frames && start + sent * gap <= now {
            if let Some(mut m) = pool.alloc() {
                let _ = m.set_data(&[0u8; 64]);
                m.set_timestamp(dpdk::rdtsc());
                tx.push(m, &c);
            }
            sent += 1;
        }
        tx.flush(&c);
        rx.rx_burst(&mut burst);
        let t = dpdk::rdtsc();
        for m in burst.drain() {
            let ns = (t.saturating_sub(m.timestamp()) as f64 * 1e9 / hz) as u64;
            let _ = h.record(ns.max(1));
            got += 1;
        }
    }
    (h, frames - got.min(frames))
}

fn run_child(case: &Case) -> HashMap<String, String> {
    let exe = std::env::current_exe().unwrap();
    let out = Command::new(exe)
        .env(CHILD, case.encode())
        .stdin(Stdio::null())
        .output()
        .expect("spawn child");
    let text = String::from_utf8_lossy(&out.stdout);
    let r: HashMap<String, String> = text
        .lines()
        .filter_map(|l| l.strip_prefix("RESULT "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    assert!(
        out.status.success() && r.contains_key("p99_us"),
        "{case:?} failed: {}\n{}",
        text,
        String::from_utf8_lossy(&out.stderr)
    );
    r
}

fn num(r: &HashMap<String, String>, k: &str) -> f64 {
    r.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN)
}

fn forwarder_table(title: &str, cases: &[Case]) {
    println!("\n{title}");
    println!(
        "{:<10} {:<10} {:>8} {:>9} {:>9} {:>9} {:>7} {:>10} {:>9} {:>8}",
        "ports",
        "forwarder",
        "rate/s",
        "p50 us",
        "p99 us",
        "p99.9 us",
        "lost",
        "idle cpu%",
        "p50/base",
        "p99/base"
    );
    let mut base: HashMap<(String, u64), (f64, f64)> = HashMap::new();
    for c in cases {
        let r = run_child(c);
        let (p50, p99) = (num(&r, "p50_us"), num(&r, "p99_us"));
        if c.fwd == "iofwd" {
            base.insert((c.ports.to_string(), c.rate), (p50, p99));
        }
        let (b50, b99) = base
            .get(&(c.ports.to_string(), c.rate))
            .copied()
            .unwrap_or((f64::NAN, f64::NAN));
        println!(
            "{:<10} {:<10} {:>8} {:>9.1} {:>9.1} {:>9.1} {:>7} {:>10.2} {:>9.2} {:>8.2}",
            c.ports,
            c.fwd,
            c.rate,
            p50,
            p99,
            num(&r, "p999_us"),
            r.get("lost").map_or("?", String::as_str),
            num(&r, "idle_cpu_pct"),
            p50 / b50,
            p99 / b99
        );
    }
}

/// Runs `svc.py ARGS` in the client namespace within a time limit.
type LabClient<'a> = &'a dyn Fn(&[&str], Duration) -> (bool, String);

/// Ping, rr (svc.py) and native rr through one path.
struct LabFigures {
    ping_ms: f64,
    /// rr p50 / p99 (µs) with svc.py's endpoints.
    rr: (f64, f64),
    /// rr p50 / p99 (µs) with the native endpoints (`native_rr`).
    native: (f64, f64),
    /// Every rr of both kinds answered, and right.
    clean: bool,
}

/// Ping and both rr's through one path; `native(n)` runs `n` native rr's from the client.
fn lab_figures(
    client: LabClient<'_>,
    ping: &dyn Fn(usize) -> (bool, String),
    native: &dyn Fn(usize) -> (bool, String),
    pings: usize,
    rr_count: usize,
) -> LabFigures {
    let (ok, out) = ping(pings);
    if !ok {
        // A path too slow to finish (busy pollers sharing a core) is a row, not a crash.
        println!(
            "  ping did not finish: {}",
            out.lines().last().unwrap_or("")
        );
    }
    // rtt min/avg/max/mdev = 0.041/0.062/0.103/0.012 ms
    let avg = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let (ok, out) = client(
        &["rr", netns_support::VM_IP, &rr_count.to_string()],
        Duration::from_secs(300),
    );
    let clean = std::cell::Cell::new(true);
    let rr_of = |what: &str, (ok, out): (bool, String)| -> (f64, f64) {
        let r = netns_support::results(&out);
        if !ok || r.get("rr_errors").map(String::as_str) != Some("0") {
            clean.set(false);
            println!(
                "  {what} did not finish cleanly: {}",
                out.lines().last().unwrap_or("")
            );
        }
        let f = |k: &str| r.get(k).and_then(|v| v.parse().ok()).unwrap_or(f64::NAN);
        (f("rr_p50_us"), f("rr_p99_us"))
    };
    let rr = rr_of("rr", (ok, out));
    let native = rr_of("native rr", native(rr_count));
    LabFigures {
        ping_ms: avg,
        rr,
        native,
        clean: clean.get(),
    }
}

/// CPU used by each proxy process (% of one core) over `window` with no traffic.
fn proxies_idle_cpu(lab: &pipeline_support::Lab, window: Duration) -> (f64, f64) {
    let ticks = |pid: Option<u32>| -> f64 {
        let Some(pid) = pid else { return f64::NAN };
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|t| {
                // Fields after the command name (which may hold spaces): utime is the 12th.
                let rest = t.rsplit_once(')')?.1;
                let f: Vec<&str> = rest.split_whitespace().collect();
                Some(f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?)
            })
            .unwrap_or(f64::NAN)
    };
    let pids = (
        lab.primary.child.as_ref().map(|c| c.id()),
        lab.secondary.child.as_ref().map(|c| c.id()),
    );
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    std::thread::sleep(Duration::from_millis(500));
    let (a0, b0) = (ticks(pids.0), ticks(pids.1));
    let t0 = Instant::now();
    std::thread::sleep(window);
    let dt = t0.elapsed().as_secs_f64();
    let (a1, b1) = (ticks(pids.0), ticks(pids.1));
    (100.0 * (a1 - a0) / hz / dt, 100.0 * (b1 - b0) / hz / dt)
}

/// The lab's table; `false` if an rr through some path did not finish cleanly.
fn lab_section(modes: &[&str], pings: usize, rr: usize, idle_window: Duration) -> bool {
    use netns_support::*;
    use pipeline_support::*;
    println!(
        "\nveth lab through both proxies (ping RTT avg; rr new connection), vs a Linux bridge"
    );
    println!(
        "{:<16} {:>12} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "path",
        "ping avg ms",
        "rr p50 us",
        "rr p99 us",
        "p50/bridge",
        "native p50",
        "native p99",
        "p50/bridge"
    );
    // The native rr endpoint (`native_rr`): this binary, run in the namespaces.
    let exe = std::env::current_exe().unwrap();
    let exe = exe.to_str().unwrap();
    let native_in = |host: &Host, n: usize| {
        run_limited(
            host.cmd(&[exe, "--rr-client", netns_support::VM_IP, &n.to_string()]),
            Duration::from_secs(300),
        )
    };
    let ping_args = |n: usize| -> Vec<String> {
        ["ping", "-q", "-c", &n.to_string(), "-i", "0.01", VM_IP]
            .iter()
            .map(|s| s.to_string())
            .collect()
    };
    // Baseline first: client and PVM bridged.
    let tag = format!("lb{}", std::process::id() % 100_000);
    let scratch = TmpDir::new(&format!("colo-lat-{tag}"));
    let py = scratch.0.join("svc.py");
    std::fs::write(&py, SVC_PY).unwrap();
    let bridge_fig = {
        let net = Net::new(&tag, &["client", "pvm"]);
        let br = format!("lbr{tag}");
        sh(&["ip", "link", "add", &br, "type", "bridge"]);
        for role in ["client", "pvm"] {
            sh(&["ip", "link", "set", &net.host(role).root_if, "master", &br]);
        }
        sh(&["ip", "link", "set", &br, "up"]);
        let svc = Service::start(net.host("pvm"), &py, "pvm");
        let native_svc = Service::spawn(net.host("pvm"), &[exe, "--rr-serve"]);
        let client = |a: &[&str], limit: Duration| {
            let mut v = vec!["python3", py.to_str().unwrap()];
            v.extend_from_slice(a);
            run_limited(net.host("client").cmd(&v), limit)
        };
        let ping = |n: usize| {
            let a = ping_args(n);
            let v: Vec<&str> = a.iter().map(String::as_str).collect();
            run_limited(net.host("client").cmd(&v), Duration::from_secs(60))
        };
        let native = |n: usize| native_in(net.host("client"), n);
        let f = lab_figures(&client, &ping, &native, pings, rr);
        drop((svc, native_svc));
        let _ = Command::new("ip").args(["link", "del", &br]).status();
        f
    };
    let mut clean = bridge_fig.clean;
    println!(
        "{:<16} {:>12.3} {:>10.0} {:>10.0} {:>10.2} {:>10.0} {:>10.0} {:>10.2}",
        "bridge",
        bridge_fig.ping_ms,
        bridge_fig.rr.0,
        bridge_fig.rr.1,
        1.0,
        bridge_fig.native.0,
        bridge_fig.native.1,
        1.0
    );
    for (i, mode) in modes.iter().enumerate() {
        let mut lab = Lab::start_with(
            &format!("l{i}"),
            LabOptions {
                link: Link::Socket,
                shards: 1,
                client2: false,
            },
            &format!(
                "[idle]\nmode = \"{mode}\"\n{}\n",
                std::env::var("LAT_IDLE").unwrap_or_default()
            ),
        );
        let client = |a: &[&str], limit: Duration| lab.client("client", a, limit);
        let ping = |n: usize| {
            let a = ping_args(n);
            let v: Vec<&str> = a.iter().map(String::as_str).collect();
            run_limited(lab.net.host("client").cmd(&v), Duration::from_secs(60))
        };
        let native_svcs = (
            Service::spawn(lab.net.host("pvm"), &[exe, "--rr-serve"]),
            Service::spawn(lab.net.host("svm"), &[exe, "--rr-serve"]),
        );
        let native = |n: usize| native_in(lab.net.host("client"), n);
        let idle_pct = proxies_idle_cpu(&lab, idle_window);
        let f = lab_figures(&client, &ping, &native, pings, rr);
        drop(native_svcs);
        let (p, s) = lab.stats();
        let cpu = |v: &serde_json::Value| {
            v["dataplane"]["lcores"]
                .as_array()
                .map(|ls| {
                    ls.iter()
                        .map(|l| {
                            format!(
                                "{} {}",
                                l["idle"]["mode"].as_str().unwrap_or("?"),
                                l["counters"]["wake_rx"].as_u64().unwrap_or(0)
                                    + l["counters"]["wake_socket"].as_u64().unwrap_or(0)
                            )
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default()
        };
        println!(
            "{:<16} {:>12.3} {:>10.0} {:>10.0} {:>10.2} {:>10.0} {:>10.0} {:>10.2}   idle cpu% \
             primary {:.1} secondary {:.1} (lcore mode + wake-ups: {} / {})",
            format!("proxy {mode}"),
            f.ping_ms,
            f.rr.0,
            f.rr.1,
            f.rr.0 / bridge_fig.rr.0,
            f.native.0,
            f.native.1,
            f.native.0 / bridge_fig.native.0,
            idle_pct.0,
            idle_pct.1,
            cpu(&p),
            cpu(&s)
        );
        clean &= f.clean;
        lab.stop();
    }
    println!(
        "rr = svc.py's Python endpoints; native = this binary's (`native_rr`), whose server \
         answers in µs; targets: ping <= 0.3 ms, rr p50 <= 0.6 ms (QEMU's COLO chain as the \
         issue measured it: 0.37 / 0.67 ms)"
    );
    clean
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("--rr-serve") => return native_rr::serve(),
        Some("--rr-client") => {
            let n = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(0);
            return native_rr::client(args.get(2).map_or("", String::as_str), n);
        }
        _ => {}
    }
    if let Ok(spec) = std::env::var(CHILD) {
        child(Case::decode(&spec));
        return;
    }
    let smoke = std::env::args().any(|a| a == "--smoke");
    if let Some(why) = netns_support::skip_reason() {
        eprintln!("latency: cannot run: {why}");
        std::process::exit(1);
    }
    let date = Command::new("date")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "latency: {date}; {}; {} cpus; {}",
        cpu_model(),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        if smoke { "smoke" } else { "full" }
    );
    let t0 = Instant::now();
    if let Ok(modes) = std::env::var("LAT_LAB") {
        let modes: Vec<&str> = modes.split(',').collect();
        exit_if_unclean(lab_section(&modes, 300, 300, Duration::from_secs(1)));
        return;
    }
    let case = |ports, fwd, rate: u64, secs: f64, idle_ms| Case {
        ports,
        fwd,
        rate,
        frames: ((rate as f64 * secs) as u64).max(50),
        idle_ms,
    };
    let mut kernel = Vec::new();
    if smoke {
        for fwd in ["iofwd", "backoff", "interrupt"] {
            kernel.push(case("af_packet", fwd, 1000, 0.2, 300));
        }
        kernel.push(case("tap", "iofwd", 1000, 0.2, 300));
        kernel.push(case("tap", "interrupt", 1000, 0.2, 300));
    } else {
        for ports in ["af_packet", "tap"] {
            for rate in [1000, 20_000] {
                for fwd in ["iofwd", "poll", "backoff", "interrupt"] {
                    kernel.push(case(ports, fwd, rate, 10.0, 1000));
                }
            }
        }
    }
    forwarder_table(
        "one forwarding lcore between two kernel-backed ports: one-way latency (kernel → DPDK → kernel)",
        &kernel,
    );
    let ring: Vec<Case> = ["iofwd", "poll", "backoff"]
        .iter()
        .map(|fwd| case("ring", fwd, 1_000_000, if smoke { 0.2 } else { 3.0 }, 300))
        .collect();
    forwarder_table(
        "dedicated cores: net_ring ports, generator on lcore 0, forwarder on lcore 1 (round trip through the forwarder)",
        if smoke { &ring[..2] } else { &ring },
    );
    let clean = if smoke {
        lab_section(&["interrupt"], 20, 20, Duration::from_secs(1))
    } else {
        lab_section(
            &["interrupt", "backoff", "poll"],
            500,
            1000,
            Duration::from_secs(5),
        )
    };
    println!(
        "\n(shared 2-core machine: other jobs run alongside; {:.0}s)",
        t0.elapsed().as_secs_f64()
    );
    exit_if_unclean(clean);
}

/// Exit non-zero when the lab's rr through some path failed: a broken path is not a figure.
fn exit_if_unclean(clean: bool) {
    if !clean {
        eprintln!("latency: an rr through the lab did not finish cleanly (see above)");
        std::process::exit(1);
    }
}

/// The lab's native request/response endpoint: what `svc.py`'s port 7000 does (one line in, one
/// line out, the server closes after the client), without Python's thread per connection and
/// interpreter in every rr. The Python server takes 90–170 µs to answer on these vCPUs, on the
/// same CPUs as the proxies; this one a few µs, so the rr shows what the path adds.
mod native_rr {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{TcpListener, TcpStream, ToSocketAddrs};
    use std::time::{Duration, Instant};

    pub const PORT: u16 = 7010;

    /// The reply to `line`: depends only on it, so the PVM and the SVM answer alike.
    fn reply(line: &[u8]) -> String {
        // FNV-1a: deterministic across processes (std's hasher is not promised to be).
        let h = line.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("ok {h:016x}\n")
    }

    /// Serve connections one at a time (the rr client opens one at a time) until killed.
    pub fn serve() {
        let l = TcpListener::bind(("0.0.0.0", PORT)).expect("bind rr port");
        println!("READY");
        let _ = std::io::stdout().flush();
        for c in l.incoming() {
            let Ok(c) = c else { continue };
            // A client that stalls must not hold the server for long.
            let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
            let mut r = BufReader::new(&c);
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line).is_err() || !line.ends_with(b"\n") {
                continue;
            }
            if (&c).write_all(reply(&line).as_bytes()).is_err() {
                continue;
            }
            // Close after the client, as svc.py does.
            let mut sink = [0u8; 256];
            while matches!(r.read(&mut sink), Ok(n) if n > 0) {}
        }
    }

    /// `n` new connections to `host`, one request each: connect-to-reply latency; prints the
    /// RESULT lines of `svc.py rr`.
    pub fn client(host: &str, n: usize) {
        let addr = (host, PORT)
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .expect("rr address");
        let mut lat = Vec::with_capacity(n);
        let mut errors = 0;
        for i in 0..n {
            let line = format!("req {i}\n");
            let t0 = Instant::now();
            let got = (|| -> std::io::Result<String> {
                let c = TcpStream::connect_timeout(&addr, Duration::from_secs(20))?;
                c.set_read_timeout(Some(Duration::from_secs(20)))?;
                (&c).write_all(line.as_bytes())?;
                let mut got = String::new();
                BufReader::new(&c).read_line(&mut got)?;
                Ok(got)
            })()
            .unwrap_or_default();
            lat.push(t0.elapsed().as_secs_f64() * 1e6);
            errors += usize::from(got != reply(line.as_bytes()));
        }
        lat.sort_by(f64::total_cmp);
        let at = |q: usize| lat.get((lat.len() * q / 100).min(lat.len().saturating_sub(1)));
        println!("RESULT rr_count={n}");
        println!("RESULT rr_errors={errors}");
        println!(
            "RESULT rr_p50_us={:.0}",
            at(50).copied().unwrap_or(f64::NAN)
        );
        println!(
            "RESULT rr_p99_us={:.0}",
            at(99).copied().unwrap_or(f64::NAN)
        );
    }
}
