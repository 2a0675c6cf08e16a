//! colo-compare drop-in (`dropin`) against QEMU 7.2's colo-compare, same generator,
//! same run: 16 TCP flows, identical primary and secondary streams (every packet matches),
//! 64/512/1500-byte frames. Both compares run as a separate process pinned to CPU 1 (`taskset`);
//! the generator runs on CPU 0. Reports released packets/s, compare-process CPU per packet
//! (utime+stime from /proc), and latency p50/p99 (primary+secondary sent → primary released),
//! with ratios ours/QEMU. Both processes stay up per size and are driven in alternating rounds
//! (each keeps its own connections and window), so a shared machine's load changes hit both
//! alike; the table gives per-metric medians over the rounds and the range of the per-round
//! ratios.
//!
//! `cargo bench --bench link_dropin -- --smoke` (1 round of 1.5 s each, ~15 s) or without
//! `--smoke` (7 rounds of 2 s each, ~1.5 min).
//! Skips with a message when qemu-system-x86_64 cannot run.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use colo_proxy::compare::CompareConfig;
use colo_proxy::dropin::{DropIn, DropInConfig};
use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, Role, SendError, SocketConfig};
use hdrhistogram::Histogram;

const FLOWS: usize = 16;
const WINDOW: usize = 128;

fn sock(dir: &Path, id: &str) -> String {
    format!("unix:{}", dir.join(format!("{id}.sock")).display())
}

/// Child mode: run our drop-in with server sockets in `dir`.
fn child(dir: &Path) {
    let fc = FrameConfig::with_vnet(false);
    let server = |id: &str| SocketConfig::parse(&sock(dir, id), Role::Server, fc).unwrap();
    let cfg = DropInConfig {
        primary_in: server("primary_in"),
        secondary_in: server("secondary_in"),
        outdev: server("outdev"),
        notify_dev: None,
        compare: CompareConfig::default(),
        accept_unsolicited: false,
    };
    let mut d = DropIn::new(cfg).unwrap();
    let quit = AtomicBool::new(false);
    d.run_until(&quit, colo_proxy::dropin::DropInThread::default());
}

struct Proc {
    child: Child,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the ")" of the command name: state is field 3; utime 14, stime 15.
    let rest = s.rsplit_once(')').map(|x| x.1).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ut: u64 = f.get(11).and_then(|x| x.parse().ok()).unwrap_or(0);
    let st: u64 = f.get(12).and_then(|x| x.parse().ok()).unwrap_or(0);
    ut + st
}

fn wait_paths(paths: &[PathBuf]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    for p in paths {
        while !p.exists() {
            assert!(Instant::now() < deadline, "{} did not appear", p.display());
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

fn start_qemu(dir: &Path) -> Proc {
    let mut args: Vec<String> = vec![
        "-c".into(),
        "1".into(),
        "qemu-system-x86_64".into(),
        "-M".into(),
        "none".into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-qmp".into(),
        format!("unix:{},server=on,wait=off", dir.join("qmp.sock").display()),
    ];
    for id in ["primary_in", "secondary_in", "outdev"] {
        args.push("-chardev".into());
        args.push(format!(
            "socket,id={id},path={},server=on,wait=off",
            dir.join(format!("{id}.sock")).display()
        ));
    }
    args.extend([
        "-object".into(),
        "iothread,id=io0".into(),
        "-object".into(),
        "colo-compare,id=comp0,primary_in=primary_in,secondary_in=secondary_in,outdev=outdev,iothread=io0".into(),
    ]);
    let child = Command::new("taskset")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc { child };
    wait_paths(&[
        dir.join("primary_in.sock"),
        dir.join("secondary_in.sock"),
        dir.join("outdev.sock"),
        dir.join("qmp.sock"),
    ]);
    // QMP round trip: the main loop runs.
    let s = UnixStream::connect(dir.join("qmp.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    w.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")
        .unwrap();
    r.read_line(&mut line).unwrap();
    w.write_all(b"{\"execute\":\"query-status\"}\n").unwrap();
    r.read_line(&mut line).unwrap();
    p
}

fn start_ours(dir: &Path) -> Proc {
    let exe = std::env::current_exe().unwrap();
    let child = Command::new("taskset")
        .arg("-c")
        .arg("1")
        .arg(exe)
        .arg("--dropin-child")
        .arg(dir)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let p = Proc { child };
    wait_paths(&[
        dir.join("primary_in.sock"),
        dir.join("secondary_in.sock"),
        dir.join("outdev.sock"),
    ]);
    p
}

fn tcp_frame(flow: usize, seq: u32, size: usize, idx: u64) -> Vec<u8> {
    let payload_len = size.saturating_sub(54).max(8);
    let mut payload = vec![0x5au8; payload_len];
    payload[..8].copy_from_slice(&idx.to_be_bytes());
    let b =
        etherparse::PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
            .ipv4([10, 0, 0, 1], [10, 0, 1, 2], 64)
            .tcp(20000 + flow as u16, 80, seq, 65535)
            .ack(1);
    let mut v = Vec::with_capacity(b.size(payload.len()));
    b.write(&mut v, &payload).unwrap();
    v
}

struct Res {
    pps: f64,
    cpu_us_per_pkt: f64,
    p50_us: f64,
    p99_us: f64,
    released: u64,
    /// Share of one CPU the compare process used.
    busy: f64,
    /// Share of one CPU the generator (this process) used.
    gen_busy: f64,
}

fn client(dir: &Path, id: &str) -> FramedSocket {
    let mut c =
        SocketConfig::parse(&sock(dir, id), Role::Client, FrameConfig::with_vnet(false)).unwrap();
    c.backoff_initial = Duration::from_millis(5);
    c.backoff_max = Duration::from_millis(50);
    FramedSocket::new(c).unwrap()
}

/// A connected generator for one compare process; keeps its window across rounds.
struct Driver {
    pid: u32,
    pri: FramedSocket,
    sec: FramedSocket,
    out: FramedSocket,
    seqs: [u32; FLOWS],
    templates: Vec<Vec<u8>>,
    sent_at: Vec<Instant>,
    released: u64,
    next: u64,
}

impl Driver {
    fn connect(dir: &Path, pid: u32, size: usize) -> Driver {
        let mut pri = client(dir, "primary_in");
        let mut sec = client(dir, "secondary_in");
        let mut out = client(dir, "outdev");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !(pri.is_connected() && sec.is_connected() && out.is_connected()) {
            pri.flush();
            sec.flush();
            out.flush();
            assert!(Instant::now() < deadline, "connect");
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(300));
        Driver {
            pid,
            pri,
            sec,
            out,
            seqs: [1000u32; FLOWS],
            // Frames are built once per flow and patched (seq, index): the generator must not
            // be the bottleneck. Checksums go stale; neither compare checks them.
            templates: (0..FLOWS).map(|fl| tcp_frame(fl, 0, size, 0)).collect(),
            sent_at: Vec::with_capacity(1 << 22),
            released: 0,
            next: 0,
        }
    }

    /// Drive the compare for `secs`; the window stays full across rounds.
    fn round(&mut self, secs: f64) -> Res {
        let Driver {
            pid,
            pri,
            sec,
            out,
            seqs,
            templates,
            sent_at,
            released,
            next,
            ..
        } = self;
        let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
        let r0 = *released;
        let t0 = Instant::now();
        let c0 = cpu_ticks(*pid);
        let g0 = cpu_ticks(std::process::id());
        let end = t0 + Duration::from_secs_f64(secs);
        let mut stall = Instant::now();
        while Instant::now() < end {
            let mut progressed = false;
            while (*next - *released) < WINDOW as u64 {
                let flow = (*next as usize) % FLOWS;
                let f = &mut templates[flow];
                f[38..42].copy_from_slice(&seqs[flow].to_be_bytes());
                f[54..62].copy_from_slice(&next.to_be_bytes());
                let f = &f[..];
                let plen = (f.len() - 54) as u32;
                match (pri.send(0, f), sec.send(0, f)) {
                    (Ok(()), Ok(())) => {}
                    (a, b) => {
                        if a == Err(SendError::Backpressure) || b == Err(SendError::Backpressure) {
                            break;
                        }
                        panic!("send: {a:?} {b:?}");
                    }
                }
                seqs[flow] = seqs[flow].wrapping_add(plen);
                sent_at.push(Instant::now());
                *next += 1;
                progressed = true;
            }
            pri.flush();
            sec.flush();
            let now = Instant::now();
            let before = *released;
            out.poll_recv(|_, f| {
                if f.len() >= 62 {
                    let idx = u64::from_be_bytes(f[54..62].try_into().unwrap());
                    if let Some(t) = sent_at.get(idx as usize) {
                        let us = now.saturating_duration_since(*t).as_micros() as u64;
                        let _ = hist.record(us.max(1));
                    }
                }
                *released += 1;
            });
            if progressed || *released != before {
                stall = now;
            }
            assert!(
                now.duration_since(stall) < Duration::from_secs(10),
                "compare stalled at {released}"
            );
        }
        let elapsed = t0.elapsed().as_secs_f64();
        let ticks = cpu_ticks(*pid) - c0;
        let gen_ticks = cpu_ticks(std::process::id()) - g0;
        let hz = 100.0; // USER_HZ on Linux
        let n = *released - r0;
        Res {
            pps: n as f64 / elapsed,
            cpu_us_per_pkt: ticks as f64 / hz * 1e6 / n.max(1) as f64,
            p50_us: hist.value_at_quantile(0.5) as f64,
            p99_us: hist.value_at_quantile(0.99) as f64,
            released: n,
            busy: ticks as f64 / hz / elapsed,
            gen_busy: gen_ticks as f64 / hz / elapsed,
        }
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// Per-metric medians over rounds.
fn med(rs: &[Res]) -> Res {
    Res {
        pps: median(rs.iter().map(|r| r.pps).collect()),
        cpu_us_per_pkt: median(rs.iter().map(|r| r.cpu_us_per_pkt).collect()),
        p50_us: median(rs.iter().map(|r| r.p50_us).collect()),
        p99_us: median(rs.iter().map(|r| r.p99_us).collect()),
        released: rs.iter().map(|r| r.released).sum(),
        busy: median(rs.iter().map(|r| r.busy).collect()),
        gen_busy: median(rs.iter().map(|r| r.gen_busy).collect()),
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--dropin-child") {
        child(Path::new(&args[i + 1]));
        return;
    }
    let smoke = args.iter().any(|a| a == "--smoke");
    let ok = Command::new("qemu-system-x86_64")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        println!("SKIPPED link_dropin: qemu-system-x86_64 cannot run here");
        return;
    }
    let _ = core_affinity::set_for_current(core_affinity::CoreId { id: 0 });
    // Rounds alternate between the two compares, so load changes on a shared machine hit
    // both alike; the table shows per-metric medians over rounds and the range of the
    // per-round ratios.
    let (rounds, secs) = if smoke { (1, 1.5) } else { (7, 2.0) };
    println!(
        "colo-compare drop-in vs QEMU 7.2 colo-compare ({} mode: {rounds} alternating round(s) of {secs} s each, {FLOWS} TCP flows, window {WINDOW}, compare on CPU 1; load {})",
        if smoke { "smoke" } else { "full" },
        loadavg()
    );
    println!(
        "{:>5} | {:>10} {:>8} {:>8} {:>8} | {:>10} {:>8} {:>8} {:>8} | {:>6} {:>6} | {:>11} {:>11}",
        "size",
        "ours pps",
        "cpu us",
        "p50 us",
        "p99 us",
        "qemu pps",
        "cpu us",
        "p50 us",
        "p99 us",
        "pps x",
        "cpu /",
        "pps x range",
        "cpu / range"
    );
    // `--size N` runs one size (profiling).
    let sizes: Vec<usize> = match args.iter().position(|a| a == "--size") {
        Some(i) => vec![args.get(i + 1).and_then(|v| v.parse().ok()).unwrap_or(1500)],
        None => vec![64, 512, 1500],
    };
    for size in sizes {
        let base =
            std::env::temp_dir().join(format!("colo-bench-dropin-{}-{size}", std::process::id()));
        let (dq, do_) = (base.join("q"), base.join("o"));
        std::fs::create_dir_all(&dq).unwrap();
        std::fs::create_dir_all(&do_).unwrap();
        let po = start_ours(&do_);
        let pq = start_qemu(&dq);
        // taskset execs qemu in place: same pid.
        let mut dro = Driver::connect(&do_, po.child.id(), size);
        let mut drq = Driver::connect(&dq, pq.child.id(), size);
        let (mut ro, mut rq) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            ro.push(dro.round(secs));
            rq.push(drq.round(secs));
        }
        drop((dro, drq, po, pq));
        // A round where either side released nothing or used no measurable CPU (the whole VM
        // stalled; seen on the shared machine) has no meaningful ratio: left out of the ranges
        // and counted. The medians keep every round.
        let valid = |o: &Res, q: &Res| {
            o.released > 0 && q.released > 0 && o.cpu_us_per_pkt > 0.0 && q.cpu_us_per_pkt > 0.0
        };
        let stalled = ro.iter().zip(&rq).filter(|(o, q)| !valid(o, q)).count();
        let range = |f: &dyn Fn(&Res, &Res) -> f64| {
            let v: Vec<f64> = ro
                .iter()
                .zip(&rq)
                .filter(|(o, q)| valid(o, q))
                .map(|(o, q)| f(o, q))
                .collect();
            if v.is_empty() {
                return "-".to_string();
            }
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            format!("{lo:.1}-{hi:.1}x")
        };
        let pps_range = range(&|o, q| o.pps / q.pps);
        let cpu_range = range(&|o, q| q.cpu_us_per_pkt / o.cpu_us_per_pkt);
        let (o, q) = (med(&ro), med(&rq));
        println!(
            "{:>5} | {:>10.0} {:>8.2} {:>8.0} {:>8.0} | {:>10.0} {:>8.2} {:>8.0} {:>8.0} | {:>5.1}x {:>5.1}x | {:>11} {:>11}",
            size,
            o.pps,
            o.cpu_us_per_pkt,
            o.p50_us,
            o.p99_us,
            q.pps,
            q.cpu_us_per_pkt,
            q.p50_us,
            q.p99_us,
            o.pps / q.pps,
            q.cpu_us_per_pkt / o.cpu_us_per_pkt.max(1e-9),
            pps_range,
            cpu_range
        );
        println!(
            "{:>5}   busy: ours {:.0} %, QEMU {:.0} % of CPU 1; generator {:.0} % / {:.0} % of CPU 0 (medians){}",
            "",
            o.busy * 100.0,
            q.busy * 100.0,
            o.gen_busy * 100.0,
            q.gen_busy * 100.0,
            if stalled > 0 {
                format!("; {stalled} stalled round(s) left out of the ranges")
            } else {
                String::new()
            }
        );
        let _ = (o.released, q.released);
        let _ = std::fs::remove_dir_all(&base);
    }
    println!("load after: {}", loadavg());
}
