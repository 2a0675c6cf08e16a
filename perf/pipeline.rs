//! The whole proxy against plain forwarding, end to end: `colo-proxy demo` (client → mirror →
//! PVM + link → rewriter → SVM; both guests' output → redirector → compare → client) against
//! `colo-proxy demo --baseline-forward` (client ⇄ PVM through an io-forwarder on the same
//! virtual wires and lcores). Same client (32 concurrent TCP request/response connections plus
//! UDP/ICMP, no injected divergence), runs alternated so load changes hit both alike.
//!
//! Score: client transactions per second, frames the proxy process moved per second (every
//! port rx), and client TCP latency. The ratio proxy/baseline is what the proxy costs the
//! client; the absolute numbers depend on the machine and its load.
//!
//! `cargo bench --bench pipeline` (full: 3 rounds × 8 s per side) or `-- --smoke` (1 × 2 s).

use std::process::Command;

struct Run {
    txn_per_s: f64,
    frames_per_s: f64,
    p50_us: f64,
    p99_us: f64,
}

fn run(baseline: bool, seconds: f64, round: usize) -> Run {
    let report = std::env::temp_dir().join(format!(
        "colo-bench-pipeline-{}-{round}-{baseline}.json",
        std::process::id()
    ));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_colo-proxy"));
    cmd.args(["demo", "--quiet", "--divergence-rate", "0", "--seconds"])
        .arg(seconds.to_string())
        .arg("--report-json")
        .arg(&report);
    if baseline {
        cmd.arg("--baseline-forward");
    }
    let out = cmd.output().expect("run colo-proxy demo");
    assert!(
        out.status.success(),
        "demo failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("json");
    let _ = std::fs::remove_file(&report);
    assert_eq!(r["accounting"]["balanced"], true, "{}", r["accounting"]);
    assert_eq!(r["client"]["responses_wrong"], 0);
    let secs = r["seconds"].as_f64().unwrap_or(seconds).max(1e-3);
    let num = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    Run {
        txn_per_s: num(&r["client"]["tcp_completed"]) / secs,
        frames_per_s: num(&r["counters"]["rx"]) / secs,
        p50_us: num(&r["client"]["tcp_latency_us"]["p50"]),
        p99_us: num(&r["client"]["tcp_latency_us"]["p99"]),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    let (rounds, seconds) = if smoke { (1, 2.0) } else { (3, 8.0) };
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "pipeline: {rounds} round(s) x {seconds} s per side, load {}",
        load.split_whitespace().next().unwrap_or("?")
    );
    let (mut proxy, mut base) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which side goes first so a load trend does not favour one.
        if i % 2 == 0 {
            proxy.push(run(false, seconds, i));
            base.push(run(true, seconds, i));
        } else {
            base.push(run(true, seconds, i));
            proxy.push(run(false, seconds, i));
        }
    }
    println!(
        "{:<22} {:>12} {:>14} {:>10} {:>10}",
        "side (median)", "txn/s", "frames/s", "p50 us", "p99 us"
    );
    let row = |name: &str, v: &[Run]| {
        let m = |f: fn(&Run) -> f64| median(v.iter().map(f).collect());
        let (t, f, p50, p99) = (
            m(|r| r.txn_per_s),
            m(|r| r.frames_per_s),
            m(|r| r.p50_us),
            m(|r| r.p99_us),
        );
        println!("{name:<22} {t:>12.0} {f:>14.0} {p50:>10.1} {p99:>10.1}");
        (t, p50)
    };
    let (pt, pp50) = row("colo-proxy (both roles)", &proxy);
    let (bt, bp50) = row("io-forward baseline", &base);
    println!(
        "ratio proxy/baseline: transactions {:.3}, p50 latency {:.2}x",
        pt / bt.max(1e-9),
        pp50 / bp50.max(1e-9)
    );
}
