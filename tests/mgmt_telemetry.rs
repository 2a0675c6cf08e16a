//! DPDK telemetry: colo-proxy's `/colo/*` commands read with `dpdk-telemetry.py` from a child
//! process running EAL (EAL initialises once per process), plus `pdump_init`'s refusal without
//! hugepages. Skipped with a message when `dpdk-telemetry.py` is absent.

mod mgmt_common;

use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use mgmt_common::*;
use serde_json::Value;

const CHILD_ENV: &str = "COLO_MGMT_TELEMETRY_CHILD";

/// Kills the child and removes its EAL runtime directory on drop.
struct Guard(Child, String);

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let end = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < end && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        // Same rule as EAL and dpdk-telemetry.py for where the runtime directory is.
        let base = std::env::var("RUNTIME_DIRECTORY").unwrap_or_else(|_| {
            if is_root() {
                "/var/run".into()
            } else {
                std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into())
            }
        });
        let _ = std::fs::remove_dir_all(std::path::Path::new(&base).join("dpdk").join(&self.1));
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Runs only inside the child process the parent test starts.
#[test]
fn telemetry_child() {
    let Ok(prefix) = std::env::var(CHILD_ENV) else {
        return;
    };
    let args = [
        "--no-huge",
        "-m",
        "256",
        "--no-pci",
        "-l",
        "0",
        "--log-level",
        "*:error",
        "--file-prefix",
        &prefix,
    ];
    let eal = colo_proxy::dpdk::Eal::init(&args).expect("EAL");
    let plane = Arc::new(FakePlane::default());
    let dir = TempDir::new("tel");
    let mut m = mgmt_with(dir.path(), plane.clone(), |_| {});
    colo_proxy::mgmt::telemetry::register(plane, Some(m.stats_handle())).expect("register");
    let ev = |reason: &str| colo_proxy::control::Event::Divergence {
        flow: "f".into(),
        reason: reason.into(),
        side: colo_proxy::control::EventSide::Primary,
        seq_range: None,
        time_ns: 1,
    };
    m.handle(colo_proxy::mgmt::Input::Event(ev("payload_mismatch")), 1);
    m.handle(colo_proxy::mgmt::Input::Event(ev("primary_timeout")), 2);
    m.poll(3);
    match colo_proxy::dpdk::telemetry::pdump_init() {
        Ok(()) => println!("PDUMP ok"),
        Err(e) => println!("PDUMP error {e}"),
    }
    println!("READY");
    std::io::stdout().flush().unwrap();
    // Serve until the parent closes our stdin (bounded by the parent's guard).
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
    drop(eal);
}

#[test]
fn colo_commands_answer_dpdk_telemetry_py() {
    let missing = prereq::missing_program("dpdk-telemetry.py", "apt install dpdk-dev");
    if !prereq::require("colo_commands_answer_dpdk_telemetry_py", missing) {
        return;
    }
    let prefix = format!("colo-tel-{}", std::process::id());
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "telemetry_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, &prefix)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = Guard(child, prefix.clone());
    let out = guard.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut pdump = String::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child did not get ready");
        // libtest's "test telemetry_child ... " may prefix our first line.
        if let Some(i) = line.find("PDUMP") {
            pdump = line[i..].to_string();
        }
        if line.ends_with("READY") {
            break;
        }
    }
    // This child runs --no-huge, which a dumpcap secondary cannot attach to: pdump_init says
    // so (a real capture is tests/dpdk_dumpcap.rs).
    assert!(
        pdump.starts_with("PDUMP error") && pdump.contains("--no-huge"),
        "pdump_init under --no-huge: {pdump}"
    );

    let mut py = Command::new("dpdk-telemetry.py")
        .args(["-f", &prefix])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    py.stdin
        .take()
        .unwrap()
        .write_all(b"/colo/stats\n/colo/flows,2\n/colo/lcores\n/colo/mgmt\n/\n")
        .unwrap();
    let mut text = String::new();
    py.stdout.take().unwrap().read_to_string(&mut text).unwrap();
    let _ = py.wait();
    let replies: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let find = |k: &str| {
        replies
            .iter()
            .find_map(|v| v.get(k).cloned())
            .unwrap_or_else(|| panic!("no {k} in {text}"))
    };
    let stats = find("/colo/stats");
    assert_eq!(stats["total/rx"], 42, "{stats}");
    assert_eq!(stats["lcores/0/lcore"], 1, "{stats}");
    let flows = find("/colo/flows");
    assert_eq!(flows["1/flow"], "tcp 10.0.0.1:80", "{flows}");
    assert!(
        flows.get("2/flow").is_none(),
        "parameter 2 honoured: {flows}"
    );
    let lcores = find("/colo/lcores");
    assert_eq!(lcores["0/rx"], 42, "{lcores}");
    let mgmt = find("/colo/mgmt");
    assert_eq!(mgmt["divergences"], 2, "{mgmt}");
    assert_eq!(mgmt["divergences_by_reason/primary_timeout"], 1, "{mgmt}");
    assert_eq!(
        (
            mgmt["checkpoint/requested"].as_u64(),
            mgmt["checkpoint/coalesced"].as_u64()
        ),
        (Some(2), Some(1)),
        "{mgmt}"
    );
    let list = find("/");
    assert!(list.to_string().contains("/colo/flows"), "{list}");
    drop(guard);
}
