//! `colo-proxy demo` end to end, as a child process: a primary and a secondary proxy with the
//! built-in client and simulated PVM/SVM on ring-pair virtual devices. Each run checks the
//! report's invariants (accounting balanced, no mbuf leak, clean stop) and what the run was for.
//! Demo runs are serialised: each one busy-polls three lcores on this 2-core machine.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

static ONE_DEMO_AT_A_TIME: Mutex<()> = Mutex::new(());

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_colo-proxy")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("colo-demo-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Wait for `child` at most `limit`, killing it after that (the test then fails).
fn wait_bounded(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "demo did not finish within {limit:?}\nstdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn demo(args: &[&str], report: &Path) -> (Output, serde_json::Value) {
    let _ = std::fs::remove_file(report);
    let child = Command::new(bin())
        .arg("demo")
        .args(["--quiet", "--report-json"])
        .arg(report)
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let out = wait_bounded(child, Duration::from_secs(60));
    let text = std::fs::read_to_string(report).unwrap_or_else(|e| {
        panic!(
            "no JSON report ({e}); exit {:?}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, serde_json::from_str(&text).unwrap())
}

fn n(v: &serde_json::Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64()
        .unwrap_or_else(|| panic!("{path:?} is not a number in {v}"))
}

/// What every run must show: everything accounted for, nothing leaked, a clean stop.
fn assert_invariants(out: &Output, r: &serde_json::Value) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "exit {:?}\n{stdout}", out.status);
    assert_eq!(r["accounting"]["balanced"], true, "{}", r["accounting"]);
    assert!(
        n(r, &["accounting", "entered"]) > 10_000,
        "{}",
        r["accounting"]
    );
    assert_eq!(n(r, &["mempool_in_use"]), 0, "mbuf leak");
    assert_eq!(r["stopped_cleanly"], true);
    assert_eq!(r["failures"], serde_json::json!([]));
    assert_eq!(n(r, &["client", "responses_wrong"]), 0, "{}", r["client"]);
    assert!(
        stdout.contains("accounting") && stdout.contains("balanced"),
        "{stdout}"
    );
}

#[test]
fn identical_guests_with_different_isns_are_released_without_divergence() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (out, r) = demo(
        &["--seconds", "3", "--divergence-rate", "0"],
        &tmp("identical.json"),
    );
    assert_invariants(&out, &r);
    let c = &r["counters"];
    assert_eq!(n(c, &["divergences"]), 0, "{c}");
    assert_eq!(n(&r, &["mgmt", "checkpoint", "requested"]), 0);
    // The PVM and SVM pick different ISNs: only the rewriter makes their output compare equal.
    // (Relations between counts, not throughput thresholds: a loaded CI machine completes
    // fewer transactions in 3 s, never different ones.) Every completed connection had SVM
    // segments rewritten and primaries released as matched.
    let completed = n(&r["client"], &["tcp_completed"]);
    assert!(completed > 0, "{}", r["client"]);
    assert!(n(c, &["rewritten"]) >= completed, "{c}");
    assert!(n(c, &["released_matched"]) >= completed, "{c}");
    assert_eq!(n(c, &["released_uncompared"]), 0, "{c}");
    assert_eq!(n(c, &["released_checkpoint"]), 0, "{c}");
    // Every primary that entered a shard left it matched.
    assert_eq!(
        n(c, &["compared_primary"]),
        n(c, &["released_matched"]),
        "{c}"
    );
    let cl = &r["client"];
    assert_eq!(n(cl, &["tcp_failed"]), 0, "{cl}");
    assert!(
        n(cl, &["udp_answered"]) > 0 && n(cl, &["icmp_answered"]) > 0,
        "{cl}"
    );
}

#[test]
fn injected_divergence_requests_checkpoints_and_traffic_keeps_flowing() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (out, r) = demo(
        &["--seconds", "3", "--divergence-rate", "0.01", "--seed", "7"],
        &tmp("diverge.json"),
    );
    assert_invariants(&out, &r);
    let c = &r["counters"];
    let m = &r["mgmt"];
    assert!(n(c, &["divergences"]) > 0, "{c}");
    assert_eq!(
        n(m, &["divergences"]),
        n(c, &["divergences"]),
        "every event reached management"
    );
    assert!(
        n(m, &["divergences_by_reason", "payload_mismatch"]) > 0,
        "{m}"
    );
    let ck = &m["checkpoint"];
    assert!(n(ck, &["issued"]) > 0 && n(ck, &["completed"]) > 0, "{ck}");
    assert_eq!(
        n(ck, &["requested"]),
        n(ck, &["issued"]) + n(ck, &["coalesced"]),
        "{ck}"
    );
    assert!(
        n(c, &["checkpoints_applied"]) >= n(ck, &["completed"]),
        "{c}"
    );
    // Checkpoints unblock the diverged connections: held answers are released by them, the
    // client keeps completing transactions (more than the 32 it runs at once, so connections
    // went on after divergences) and never sees a wrong answer (the SVM's differing replies are
    // never released). Counts, not a throughput threshold.
    assert!(n(&r, &["client", "tcp_completed"]) > 32, "{}", r["client"]);
    assert!(n(c, &["released_checkpoint"]) > 0, "{c}");
}

fn ctl(sock: &Path, words: &[&str]) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["ctl", "--raw", "--timeout", "10", "--socket"])
        .arg(sock)
        .args(words)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "ctl {words:?}: {:?}\n{text}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("ctl {words:?}: {e}: {text}"))
}

/// `ctl words` until `ok` accepts the reply (every 50 ms, at most 20 s); the last reply.
fn poll_ctl(
    sock: &Path,
    words: &[&str],
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = ctl(sock, words);
        if ok(&v) || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_control_socket_drives_a_running_demo_and_shutdown_stops_it() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let sock = tmp("ctl.sock");
    let report = tmp("ctl.json");
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&report);
    let child = Command::new(bin())
        .args([
            "demo",
            "--quiet",
            "--seconds",
            "50",
            "--divergence-rate",
            "0",
        ])
        .arg("--control-socket")
        .arg(&sock)
        .arg("--report-json")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !sock.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "no control socket"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // The socket is there; wait (bounded) for the server to answer and traffic to flow.
    let stats = poll_ctl(&sock, &["stats"], |s| {
        n(&s["result"]["dataplane"]["totals"], &["mirrored"]) > 0
    });
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let totals = &stats["result"]["dataplane"]["totals"];
    assert!(n(totals, &["mirrored"]) > 0, "{stats}");
    assert!(
        stats["result"]["dataplane"]["lcores"]
            .as_array()
            .unwrap()
            .len()
            >= 2
    );

    let flows = ctl(&sock, &["flows", "5"]);
    let list = flows["result"]
        .as_array()
        .unwrap_or_else(|| panic!("{flows}"));
    assert!(!list.is_empty() && list.len() <= 5, "{flows}");
    assert!(
        list[0]["flow"].as_str().unwrap().contains("10.0.0.")
            || list[0]["flow"].as_str().unwrap().contains("fd00"),
        "{flows}"
    );

    // Bypass UDP port 7000 (the demo's UDP service): its primaries are released uncompared.
    let added = ctl(&sock, &["bypass", "add", "udp", "7000"]);
    assert_eq!(added["result"].as_array().map(Vec::len), Some(1), "{added}");
    let listed = ctl(&sock, &["bypass", "list"]);
    assert_eq!(listed["result"][0]["proto"], "udp", "{listed}");
    let stats = poll_ctl(&sock, &["stats"], |s| {
        n(&s["result"]["dataplane"]["totals"], &["released_bypass"]) > 0
    });
    assert!(
        n(
            &stats["result"]["dataplane"]["totals"],
            &["released_bypass"]
        ) > 0,
        "{stats}"
    );
    let deleted = ctl(&sock, &["bypass", "del", "0"]);
    assert_eq!(deleted["result"], serde_json::json!([]), "{deleted}");

    // An operator's checkpoint-done reaches every stage.
    let done = ctl(&sock, &["checkpoint-done"]);
    assert_eq!(done["ok"], true, "{done}");
    let stats = poll_ctl(&sock, &["stats"], |s| {
        n(
            &s["result"]["dataplane"]["totals"],
            &["checkpoints_applied"],
        ) >= 1
    });
    assert!(
        n(
            &stats["result"]["dataplane"]["totals"],
            &["checkpoints_applied"]
        ) >= 1,
        "{stats}"
    );

    // Failover (the secondary is gone): shards release everything they hold, then pass the
    // PVM's output straight to the client; the mirror stops feeding the link.
    let before = ctl(&sock, &["stats"])["result"]["dataplane"]["totals"].clone();
    let fo = ctl(&sock, &["failover"]);
    assert_eq!(fo["ok"], true, "{fo}");
    // `ctl failover` returns once every lcore applied it (counters are live): from here on
    // nothing is mirrored, and the PVM's traffic keeps flowing uncompared.
    let mid = ctl(&sock, &["stats"])["result"]["dataplane"]["totals"].clone();
    let after = poll_ctl(&sock, &["stats"], |s| {
        let t = &s["result"]["dataplane"]["totals"];
        n(t, &["tx"]) > n(&mid, &["tx"])
            && n(t, &["released_uncompared"]) > n(&before, &["released_uncompared"])
    });
    let t = &after["result"]["dataplane"]["totals"];
    assert_eq!(n(&after["result"]["mgmt"], &["failovers"]), 1, "{after}");
    assert!(
        n(t, &["released_uncompared"]) > n(&before, &["released_uncompared"]),
        "nothing passed uncompared after failover: {t}"
    );
    assert_eq!(
        n(t, &["mirrored"]),
        n(&mid, &["mirrored"]),
        "the mirror still feeds the link: {t}"
    );
    assert!(
        n(t, &["tx"]) > n(&mid, &["tx"]),
        "traffic stopped after failover: {t}"
    );

    let bye = ctl(&sock, &["shutdown"]);
    assert_eq!(bye["ok"], true, "{bye}");
    let out = wait_bounded(child, Duration::from_secs(20));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    // The demo's own clock (not this test's, which includes start-up on a loaded machine):
    // it ran far less than its 50 s.
    let ran = r["seconds"].as_f64().unwrap_or(f64::MAX);
    assert!(
        ran < 45.0,
        "shutdown did not stop the demo early: ran {ran} s"
    );
    assert_invariants(&out, &r);
}

#[test]
fn bad_demo_arguments_are_refused_with_a_message() {
    let out = Command::new(bin())
        .args(["demo", "--divergence-rate", "2"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("divergence-rate"));
    for bad in ["-1", "nan", "1e300"] {
        let out = Command::new(bin())
            .args(["demo", &format!("--seconds={bad}")])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--seconds {bad}: {err}");
        assert!(err.contains("--seconds") && err.contains("or inf"), "{err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn seconds_inf_runs_until_sigterm_then_reports() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let sock = tmp("inf.sock");
    let report = tmp("inf.json");
    let _ = std::fs::remove_file(&sock);
    let _ = std::fs::remove_file(&report);
    let child = Command::new(bin())
        .args(["demo", "--quiet", "--seconds", "inf"])
        .arg("--control-socket")
        .arg(&sock)
        .arg("--report-json")
        .arg(&report)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    // Running with traffic: the control socket answers and the pipeline has moved more frames
    // than the invariants ask of a run.
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "demo --seconds inf never ran"
        );
        if sock.exists() {
            let s = ctl(&sock, &["stats"]);
            if n(&s["result"]["dataplane"]["totals"], &["rx"]) > 20_000 {
                break;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: signals our own child, which is still running (not yet waited for).
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let out = wait_bounded(child, Duration::from_secs(20));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_invariants(&out, &r);
}

/// (frame, comment) of every packet in the pcapng files of `dir`.
fn captured_packets(dir: &Path) -> Vec<(Vec<u8>, String)> {
    use pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption;
    use pcap_file::pcapng::{Block, PcapNgReader};
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("pcapng") {
            continue;
        }
        let mut r = PcapNgReader::new(std::fs::File::open(&path).unwrap()).unwrap();
        while let Some(b) = r.next_block() {
            if let Block::EnhancedPacket(p) = b.unwrap() {
                let comment = p
                    .options
                    .iter()
                    .find_map(|o| match o {
                        EnhancedPacketOption::Comment(c) => Some(c.to_string()),
                        _ => None,
                    })
                    .unwrap_or_default();
                out.push((p.data.to_vec(), comment));
            }
        }
    }
    out
}

#[test]
fn divergences_are_captured_to_pcapng_with_their_packets_and_context() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let dir = tmp("capture");
    let _ = std::fs::remove_dir_all(&dir);
    let dir_s = dir.to_str().unwrap();
    let (out, r) = demo(
        &[
            "--seconds",
            "2",
            "--divergence-rate",
            "0.02",
            "--capture-dir",
            dir_s,
        ],
        &tmp("capture.json"),
    );
    assert_invariants(&out, &r);
    let divergences = n(&r, &["mgmt", "divergences"]);
    assert!(divergences > 0, "{}", r["mgmt"]);
    let pkts = captured_packets(&dir);
    let primaries: Vec<_> = pkts
        .iter()
        .filter(|p| p.1.ends_with("[primary packet]"))
        .collect();
    let secondaries: Vec<_> = pkts
        .iter()
        .filter(|p| p.1.ends_with("[secondary packet]"))
        .collect();
    let context = pkts.iter().filter(|p| p.1.starts_with("context")).count();
    // Every divergence was written, with both packets of a payload mismatch.
    assert_eq!(
        n(&r, &["mgmt", "capture", "divergences"]),
        divergences,
        "{}",
        r["mgmt"]
    );
    assert_eq!(primaries.len() as u64, divergences, "{pkts:?}");
    // A payload mismatch carries both packets; other reasons (a FIN at a different place:
    // length_mismatch) may have no single secondary packet to show.
    let mismatches = r["mgmt"]["divergences_by_reason"]["payload_mismatch"]
        .as_u64()
        .unwrap_or(0);
    assert!(mismatches > 0, "{}", r["mgmt"]);
    let with = |v: &Vec<&(Vec<u8>, String)>| {
        v.iter()
            .filter(|p| p.1.contains("reason=payload_mismatch"))
            .count() as u64
    };
    assert_eq!(with(&primaries), mismatches);
    assert_eq!(with(&secondaries), mismatches);
    assert!(secondaries.len() as u64 <= divergences);
    assert!(context > 0, "no context packets");
    for (frame, comment) in &primaries {
        assert!(
            comment.contains("reason=") && comment.contains("flow="),
            "{comment}"
        );
        // A whole, parsable Ethernet frame from the PVM (10.0.0.2 or fd00::2).
        assert!(colo_proxy::wire::parse(frame).is_ok(), "{comment}");
    }
    // The two packets of one divergence differ (the SVM answered differently).
    let p = primaries
        .iter()
        .find(|p| p.1.contains("reason=payload_mismatch"))
        .unwrap();
    let head = p.1.trim_end_matches(" [primary packet]");
    let s = secondaries
        .iter()
        .find(|s| s.1.trim_end_matches(" [secondary packet]") == head)
        .unwrap_or_else(|| panic!("no secondary packet for {head}"));
    assert_ne!(p.0, s.0);
}

/// The demo runs the production wiring (`topology::build_in` on wire ports), so more than one
/// compare shard works as in `run`: the nic wire gets one queue per shard.
#[test]
fn two_compare_shards_share_the_traffic_without_divergence() {
    let _one = ONE_DEMO_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let (out, r) = demo(
        &["--seconds", "2", "--divergence-rate", "0", "--shards", "2"],
        &tmp("shards.json"),
    );
    assert_invariants(&out, &r);
    let c = &r["counters"];
    assert_eq!(n(c, &["divergences"]), 0, "{c}");
    assert!(n(c, &["released_matched"]) > 0, "{c}");
    assert_eq!(
        n(c, &["compared_primary"]),
        n(c, &["released_matched"]),
        "{c}"
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("accounting"), "{stdout}");
}
