//! io-forwarding benchmark: the pipeline's io-forward step (`TxBuf::forward_from`, also the
//! `demo --baseline-forward` stage) between two `net_null` ports on one worker lcore, against `dpdk-testpmd --forward-mode=io` on the same
//! vdevs, lcores, memory mode and mbuf pool size, in the same invocation.
//!
//! Both sides are scored the same way: packets transmitted (both ports) over a steady window
//! after warm-up, divided by the window's wall time. Full mode: 3 alternating runs of 10 s per
//! side, median of the runs. `--smoke`: one run of 3 s per side (CI).
//!
//! usage: cargo bench --bench iofwd [-- --smoke]

#[path = "common.rs"]
mod common;
use common::cpu_model;

use std::io::{BufRead, BufReader};
use std::process::{Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use colo_proxy::dpdk::{
    default_mem_args, launch_on, worker_lcores, Eal, Mempool, Port, PortConfig, RxQueue,
};
use colo_proxy::pipeline::counters::{Counter, LcoreCounters};
use colo_proxy::pipeline::io::{TxBuf, BURST};

const POOL_MBUFS: u32 = 8191;
const POOL_CACHE: u32 = 256;

struct Mode {
    secs: u64,
    runs: usize,
}

fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// (rx of one port, tx of the other) for both directions.
type Queues = [(RxQueue, TxBuf); 2];

/// The forwarding loop: port 0 → port 1 and port 1 → port 0, one burst each per iteration,
/// counted in `counters` (`Tx` forwarded, `DropTxFull` unsent). Returns the queue handles so
/// the next run can reuse them.
fn forward(mut q: Queues, stop: Arc<AtomicBool>, counters: Arc<LcoreCounters>) -> Queues {
    while !stop.load(Ordering::Relaxed) {
        for (rx, tx) in q.iter_mut() {
            tx.forward_from(rx, &counters);
        }
    }
    q
}

/// One Rust run: Mpps forwarded (both directions) over `secs` after a 1 s warm-up.
fn rust_run(
    ports: &mut [Port; 2],
    q: Queues,
    lcore: u32,
    secs: u64,
) -> Result<(f64, Queues), String> {
    for p in ports.iter_mut() {
        p.start().map_err(|e| e.to_string())?;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let counters = Arc::new(LcoreCounters::default());
    let job = {
        let (s, c) = (stop.clone(), counters.clone());
        launch_on(lcore, move || forward(q, s, c)).map_err(|e| e.to_string())?
    };
    // Warm up 1 s, then the rate over the measured window.
    std::thread::sleep(Duration::from_secs(1));
    let (c0, t0) = (counters.get(Counter::Tx), Instant::now());
    std::thread::sleep(Duration::from_secs(secs));
    let (c1, t1) = (counters.get(Counter::Tx), Instant::now());
    let mpps = (c1 - c0) as f64 / t1.duration_since(t0).as_secs_f64() / 1e6;
    stop.store(true, Ordering::Relaxed);
    let q = job.join().map_err(|e| e.to_string())?;
    let dropped = counters.get(Counter::DropTxFull);
    if dropped != 0 {
        eprintln!("iofwd: rust side dropped {dropped} unsent mbufs");
    }
    for p in ports.iter_mut() {
        p.stop().map_err(|e| e.to_string())?;
    }
    Ok((mpps, q))
}

/// One testpmd run with the same vdevs/lcores/memory: Mpps transmitted (both ports) between
/// its first and last periodic statistics print after warm-up, timed by our clock (testpmd's
/// stdout is made line-buffered with stdbuf so each print arrives when it is written).
fn testpmd_run(mem: &[String], secs: u64) -> Result<f64, String> {
    let mut args: Vec<String> = ["-l", "0-1", "--no-pci"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(mem.iter().cloned());
    args.extend(
        [
            "--vdev",
            "net_null0",
            "--vdev",
            "net_null1",
            "--",
            "--forward-mode=io",
            "--nb-cores=1",
            "--stats-period=1",
            "--no-mlockall",
            "--burst=32",
        ]
        .iter()
        .map(|s| s.to_string()),
    );
    args.push(format!("--total-num-mbufs={POOL_MBUFS}"));
    args.push(format!("--mbcache={POOL_CACHE}"));
    let mut child = Command::new("stdbuf")
        .arg("-oL")
        .arg("dpdk-testpmd")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run dpdk-testpmd (apt-get install dpdk-dev): {e}"))?;
    let out = child.stdout.take().ok_or("no stdout")?;
    let reader = std::thread::spawn(move || {
        // (time read, TX-packets of port 0 + port 1) per statistics print.
        let mut samples: Vec<(Instant, u64)> = Vec::new();
        let mut port = None;
        let mut p0 = 0u64;
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            let l = line.trim();
            if l.contains("NIC statistics for port 0") {
                port = Some(0);
            } else if l.contains("NIC statistics for port 1") {
                port = Some(1);
            } else if let Some(rest) = l.strip_prefix("TX-packets:") {
                let v = rest
                    .split_whitespace()
                    .next()
                    .and_then(|v| v.parse::<u64>().ok());
                match (port.take(), v) {
                    (Some(0), Some(v)) => p0 = v,
                    (Some(1), Some(v)) => samples.push((Instant::now(), p0 + v)),
                    _ => {}
                }
            }
        }
        samples
    });
    // Startup (EAL init, port start) takes well under a second; the first print is skipped.
    std::thread::sleep(Duration::from_secs(secs + 2));
    let pid = child.id().to_string();
    let _ = Command::new("kill").args(["-INT", &pid]).status();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().map_err(|e| e.to_string())?.is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.wait();
    let samples = reader.join().map_err(|_| "reader thread panicked")?;
    // Skip prints from before forwarding ran at full speed (zero or the first non-zero one).
    let live: Vec<(Instant, u64)> = samples.into_iter().filter(|s| s.1 > 0).skip(1).collect();
    if live.len() < 2 {
        let mut err = String::new();
        if let Some(mut e) = child.stderr.take() {
            use std::io::Read;
            let _ = e.read_to_string(&mut err);
        }
        return Err(format!(
            "too few statistics prints from dpdk-testpmd; stderr:\n{err}"
        ));
    }
    let (t0, c0) = live[0];
    let (t1, c1) = live[live.len() - 1];
    Ok((c1 - c0) as f64 / t1.duration_since(t0).as_secs_f64() / 1e6)
}

fn main() -> ExitCode {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let mode = if smoke {
        Mode { secs: 3, runs: 1 }
    } else {
        Mode { secs: 10, runs: 3 }
    };
    let mem = default_mem_args();
    let huge = mem.iter().any(|a| a == "--in-memory");
    let mut eal_args: Vec<String> = ["-l", "0-1", "--no-pci"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    eal_args.extend(mem.iter().cloned());
    eal_args.extend(
        ["--vdev", "net_null0", "--vdev", "net_null1"]
            .iter()
            .map(|s| s.to_string()),
    );

    let eal = match Eal::init(&eal_args) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("iofwd: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = (|| -> Result<(Vec<f64>, Vec<f64>), String> {
        let lcore = worker_lcores()
            .next()
            .ok_or("need a worker lcore (-l 0-1)")?;
        let pool = Mempool::with_params(
            "iofwd",
            POOL_MBUFS,
            POOL_CACHE,
            colo_proxy::dpdk::DEFAULT_DATA_ROOM,
            None,
        )
        .map_err(|e| e.to_string())?;
        let cfg = PortConfig {
            promiscuous: false,
            ..PortConfig::default()
        };
        let id0 = Port::id_by_name("net_null0").map_err(|e| e.to_string())?;
        let id1 = Port::id_by_name("net_null1").map_err(|e| e.to_string())?;
        let mut rust = Vec::new();
        let mut tpmd = Vec::new();
        // Ports stay open (closing a vdev port releases it); started only during Rust runs.
        let mut ports = [
            Port::open(id0, &cfg, &pool).map_err(|e| e.to_string())?,
            Port::open(id1, &cfg, &pool).map_err(|e| e.to_string())?,
        ];
        let e = |e: colo_proxy::dpdk::DpdkError| e.to_string();
        let (rx0, tx0) = (
            ports[0].rx_queue(0).map_err(e)?,
            TxBuf::new(ports[0].tx_queue(0).map_err(e)?),
        );
        let (rx1, tx1) = (
            ports[1].rx_queue(0).map_err(e)?,
            TxBuf::new(ports[1].tx_queue(0).map_err(e)?),
        );
        let mut q: Option<Queues> = Some([(rx0, tx1), (rx1, tx0)]);
        for run in 0..mode.runs {
            let (r, back) = rust_run(&mut ports, q.take().ok_or("queues lost")?, lcore, mode.secs)?;
            q = Some(back);
            let t = testpmd_run(&mem, mode.secs)?;
            println!("run {}: rust {r:.1} Mpps, testpmd {t:.1} Mpps", run + 1);
            rust.push(r);
            tpmd.push(t);
        }
        Ok((rust, tpmd))
    })();
    drop(eal);
    let (mut rust, mut tpmd) = match result {
        Ok(v) => v,
        Err(e) => {
            eprintln!("iofwd FAILED: {e}");
            return ExitCode::FAILURE;
        }
    };
    let fmt = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:8.1}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let (rs, ts) = (fmt(&rust), fmt(&tpmd));
    let (rm, tm) = (median(&mut rust), median(&mut tpmd));
    let ratio = if tm > 0.0 { rm / tm } else { 0.0 };
    println!();
    println!(
        "iofwd: net_null0 <-> net_null1, 1 forwarding lcore, burst {BURST}, {} mode ({} x {} s per side)",
        if smoke { "smoke" } else { "full" },
        mode.runs,
        mode.secs
    );
    println!(
        "{:<22} {:>8}   runs (Mpps, both directions)",
        "forwarder", "median"
    );
    println!("{:<22} {:>8.1}   {}", "colo-proxy (Rust)", rm, rs);
    println!("{:<22} {:>8.1}   {}", "dpdk-testpmd io", tm, ts);
    println!("ratio rust/testpmd: {ratio:.3} (expected >= 0.95)");
    println!("cpu: {}", cpu_model());
    println!(
        "hugepages: {}",
        if huge {
            "used (--in-memory)"
        } else {
            "not used (--no-huge -m 1024 --no-shconf)"
        }
    );
    if rm <= 0.0 || tm <= 0.0 {
        eprintln!("iofwd FAILED: a side forwarded nothing");
        return ExitCode::FAILURE;
    }
    if ratio < 0.95 {
        println!(
            "note: ratio below 0.95; the machine is shared, rerun the full mode before concluding"
        );
    }
    ExitCode::SUCCESS
}
