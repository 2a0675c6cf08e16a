//! Real TCP through both proxies against a Linux bridge, end to end.
//!
//! Proxy side: the veth lab of `tests/pipeline_support` (client, PVM and SVM namespaces; the
//! primary and secondary `colo-proxy run` on af_packet ports, QEMU-framed socket link), default
//! kernel sysctls and default proxy config. The two proxies stand for two hosts: each one's
//! worker lcore has a CPU of its own (`PRIMARY_LCORES`, `SECONDARY_LCORES`). Baseline: the same namespaces and veths with the
//! client's and the PVM's root-side ends on one Linux bridge (what the client would get with no
//! replication). Same deterministic services (`svc.py`) and client on both, sides alternated
//! so load changes hit both alike.
//!
//! Score: Gbit/s server→client ("down") and client→server ("up") over 1 and 8 connections
//! (every byte checked by the receiver), request/response latency on new connections (connect
//! to reply, p50/p99), and the proxy's checkpoint requests and divergences (target: 0). The
//! ratio proxy/bridge is what replication costs the client on the same machine. The CPU both
//! proxy processes used per MiB moved (incl. the kernel work done in their syscalls) is the
//! figure that load on a shared machine disturbs least.
//!
//! `cargo bench --bench e2e` (full: 2 rounds, 512 MiB per transfer, 1000 rr) or `-- --smoke`
//! (1 round, 16 MiB, 50 rr); `E2E_MIB=N` for one round of N MiB per transfer (300 rr), to try a
//! change quickly; `E2E_EXTRA=TOML` is appended to both proxies' configs (e.g.
//! `$'[idle]\nspin_us = 100'`), to A/B a setting with one binary. Needs root and `ip netns`.

#[path = "../tests/netns_support/mod.rs"]
mod netns_support;
#[path = "../tests/pipeline_support/mod.rs"]
mod pipeline_support;

use std::time::{Duration, Instant};

use netns_support::*;
use pipeline_support::*;

/// One side's figures for one round.
#[derive(Default, Clone)]
struct Figures {
    /// (label, Gbit/s, CPU ms per MiB moved or 0 where not ours) per bulk case.
    bulk: Vec<(String, f64, f64)>,
    rr_p50_us: f64,
    rr_p99_us: f64,
    checkpoints: u64,
    divergences: u64,
    /// Bulk cases that did not deliver every byte (with the client's output).
    failures: Vec<String>,
}

/// What the client can do against whichever path is up.
trait Target {
    fn client(&self, args: &[&str], limit: Duration) -> (bool, String);
    /// CPU seconds (user + system) the forwarding path has used so far; `None` where it is
    /// the kernel's own (the bridge), not a process of ours.
    fn cpu_secs(&self) -> Option<f64> {
        None
    }
}

impl Target for Lab {
    fn client(&self, args: &[&str], limit: Duration) -> (bool, String) {
        Lab::client(self, "client", args, limit)
    }
    fn cpu_secs(&self) -> Option<f64> {
        let pids = [&self.primary, &self.secondary].map(|p| p.child.as_ref().map(|c| c.id()));
        pids.iter().map(|p| p.and_then(process_cpu_secs)).sum()
    }
}

/// utime + stime of process `pid` (all its threads, incl. the softirq work done in their
/// syscalls) from /proc/PID/stat.
fn process_cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the ")" that closes the command name: state is the 1st, utime the 12th.
    let mut f = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let ticks: u64 = f.next()?.parse::<u64>().ok()? + f.next()?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1);
    Some(ticks as f64 / hz as f64)
}

/// The baseline: client and PVM namespaces bridged in the root namespace.
struct Bridged {
    net: Net,
    py: std::path::PathBuf,
    bridge: String,
    _services: Service,
    _scratch: TmpDir,
}

impl Bridged {
    fn start(tag: &str) -> Bridged {
        let tag = format!("{tag}{}", std::process::id() % 100_000);
        let scratch = TmpDir::new(&format!("colo-e2e-{tag}"));
        let py = scratch.0.join("svc.py");
        std::fs::write(&py, SVC_PY).unwrap();
        let net = Net::new(&tag, &["client", "pvm"]);
        let bridge = format!("cbr{tag}");
        sh(&["ip", "link", "add", &bridge, "type", "bridge"]);
        for role in ["client", "pvm"] {
            sh(&[
                "ip",
                "link",
                "set",
                &net.host(role).root_if,
                "master",
                &bridge,
            ]);
        }
        sh(&["ip", "link", "set", &bridge, "up"]);
        let svc = Service::start(net.host("pvm"), &py, "pvm");
        Bridged {
            net,
            py,
            bridge,
            _services: svc,
            _scratch: scratch,
        }
    }
}

impl Target for Bridged {
    fn client(&self, args: &[&str], limit: Duration) -> (bool, String) {
        let mut v = vec!["python3", self.py.to_str().unwrap()];
        v.extend_from_slice(args);
        run_limited(self.net.host("client").cmd(&v), limit)
    }
}

impl Drop for Bridged {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.bridge])
            .status();
    }
}

fn measure(path: &dyn Target, bytes: u64, rr: usize, set_ts: &dyn Fn(bool)) -> Figures {
    let mut f = Figures::default();
    for ts in [true, false] {
        set_ts(ts);
        for dir in ["down", "up"] {
            for conns in [1u64, 8] {
                let per = (bytes / conns).to_string();
                let cpu0 = path.cpu_secs();
                let (ok, out) = path.client(
                    &["bulk", VM_IP, dir, &conns.to_string(), &per],
                    Duration::from_secs(600),
                );
                let r = results(&out);
                if !(ok && r.get("bulk_ok").map(String::as_str) == Some(&*conns.to_string())) {
                    // Checked once the round's proxy counters are at hand.
                    f.failures
                        .push(format!("{dir} x{conns} ts={}: {out}", u8::from(ts)));
                }
                let gbps = r["bulk_gbps"].parse().unwrap_or(0.0);
                let mib = (bytes / conns * conns) as f64 / f64::from(1u32 << 20);
                let cpu_ms_per_mib = match (cpu0, path.cpu_secs()) {
                    (Some(a), Some(b)) => (b - a) * 1e3 / mib,
                    _ => 0.0,
                };
                f.bulk.push((
                    format!("{dir} x{conns} ts={}", u8::from(ts)),
                    gbps,
                    cpu_ms_per_mib,
                ));
            }
        }
    }
    set_ts(true);
    let (ok, out) = path.client(&["rr", VM_IP, &rr.to_string()], Duration::from_secs(300));
    let r = results(&out);
    assert!(
        ok && r.get("rr_errors").map(String::as_str) == Some("0"),
        "rr: {out}"
    );
    f.rr_p50_us = r["rr_p50_us"].parse().unwrap_or(0.0);
    f.rr_p99_us = r["rr_p99_us"].parse().unwrap_or(0.0);
    f
}

fn proxy_round(round: usize, bytes: u64, rr: usize) -> Figures {
    let extra = std::env::var("E2E_EXTRA").unwrap_or_default();
    let mut lab = Lab::start_with(
        &format!("x{round}"),
        LabOptions {
            link: Link::Socket,
            shards: 1,
            client2: false,
        },
        &extra,
    );
    let mut f = measure(&lab, bytes, rr, &|ts| lab.timestamps(ts));
    let (p, s) = lab.stats();
    assert!(
        f.failures.is_empty(),
        "{}\n--- primary stats\n{p:#}\n--- secondary stats\n{s:#}\n{}",
        f.failures.join("\n"),
        lab.logs()
    );
    f.checkpoints = p["mgmt"]["checkpoint"]["requested"].as_u64().unwrap_or(0);
    f.divergences = total(&p, "divergences");
    lab.stop();
    f
}

fn bridge_round(round: usize, bytes: u64, rr: usize) -> Figures {
    let b = Bridged::start(&format!("y{round}"));
    let set_ts = |ts: bool| {
        for (_, h) in &b.net.hosts {
            h.sysctl(&format!("net.ipv4.tcp_timestamps={}", u8::from(ts)));
        }
    };
    let f = measure(&b, bytes, rr, &set_ts);
    assert!(f.failures.is_empty(), "{}", f.failures.join("\n"));
    f
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let smoke = std::env::args().any(|a| a == "--smoke");
    if let Some(why) = skip_reason() {
        // CI runs as root with everything installed: a skip there is a failure.
        eprintln!("e2e: cannot run: {why}");
        std::process::exit(1);
    }
    let (rounds, bytes, rr) = if smoke {
        (1, 16u64 << 20, 50)
    } else if let Ok(mib) = std::env::var("E2E_MIB") {
        (1, mib.parse::<u64>().unwrap() << 20, 300)
    } else {
        (2, 512u64 << 20, 1000)
    };
    let t0 = Instant::now();
    println!(
        "e2e: real TCP, default sysctls and config; {rounds} round(s), {} MiB per transfer, {rr} rr connections",
        bytes >> 20
    );
    let mut proxy = Vec::new();
    let mut bridge = Vec::new();
    for round in 0..rounds {
        bridge.push(bridge_round(round, bytes, rr));
        proxy.push(proxy_round(round, bytes, rr));
    }
    println!(
        "{:<16} {:>12} {:>12} {:>8} {:>14}",
        "case (Gbit/s)", "colo-proxy", "bridge", "ratio", "proxy CPU ms/MiB"
    );
    for (i, (label, ..)) in proxy[0].bulk.iter().enumerate() {
        let p = median(proxy.iter().map(|f| f.bulk[i].1).collect());
        let b = median(bridge.iter().map(|f| f.bulk[i].1).collect());
        let cpu = median(proxy.iter().map(|f| f.bulk[i].2).collect());
        println!(
            "{label:<16} {p:>12.3} {b:>12.3} {:>8.3} {cpu:>14.2}",
            p / b.max(1e-9)
        );
    }
    let p50 = |v: &[Figures]| median(v.iter().map(|f| f.rr_p50_us).collect());
    let p99 = |v: &[Figures]| median(v.iter().map(|f| f.rr_p99_us).collect());
    println!(
        "{:<16} {:>12.0} {:>12.0} {:>8.2}",
        "rr p50 (us)",
        p50(&proxy),
        p50(&bridge),
        p50(&proxy) / p50(&bridge).max(1e-9)
    );
    println!(
        "{:<16} {:>12.0} {:>12.0} {:>8.2}",
        "rr p99 (us)",
        p99(&proxy),
        p99(&bridge),
        p99(&proxy) / p99(&bridge).max(1e-9)
    );
    let checkpoints: u64 = proxy.iter().map(|f| f.checkpoints).sum();
    let divergences: u64 = proxy.iter().map(|f| f.divergences).sum();
    println!("checkpoint requests {checkpoints}, divergences {divergences} (target 0 and 0)");
    let min_down_up = proxy
        .iter()
        .flat_map(|f| f.bulk.iter().map(|b| b.1))
        .fold(f64::INFINITY, f64::min);
    println!(
        "slowest proxy case {min_down_up:.3} Gbit/s (target >= 2 on this 2-core machine); {:.0}s",
        t0.elapsed().as_secs_f64()
    );
}
