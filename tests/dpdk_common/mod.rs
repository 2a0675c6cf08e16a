//! Child-process harness for DPDK tests: EAL initialises once per process, so each test
//! re-executes its own test binary with `COLO_DPDK_CHILD=<test name>` selecting the child body.
//! The child prints `RESULT key=value` lines; the parent asserts on them and on the exit status.
#![allow(dead_code)]

#[path = "../prereq/mod.rs"]
pub mod prereq;

use std::collections::HashMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Env var that makes a test binary run one test's child body.
pub const CHILD_ENV: &str = "COLO_DPDK_CHILD";
/// A child is killed after this long.
pub const CHILD_TIMEOUT: Duration = Duration::from_secs(30);

/// True when this process is the child for `test`.
pub fn in_child(test: &str) -> bool {
    std::env::var(CHILD_ENV).as_deref() == Ok(test)
}

/// EAL args for tests: 2 lcores, no PCI, memory per the machine, plus `extra`.
pub fn eal_args(extra: &[&str]) -> Vec<String> {
    let mut a: Vec<String> = ["-l", "0-1", "--no-pci", "--log-level", "lib.eal:warning"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(colo_proxy::dpdk::default_mem_args());
    a.extend(extra.iter().map(|s| s.to_string()));
    a
}

/// Print one structured result line for the parent.
pub fn result(key: &str, value: impl std::fmt::Display) {
    println!("RESULT {key}={value}");
}

/// What a child did.
#[derive(Debug)]
pub struct Child {
    /// Exit code (None when killed by a signal).
    pub code: Option<i32>,
    /// Terminating signal, if any.
    pub signal: Option<i32>,
    /// Killed by the timeout.
    pub timed_out: bool,
    pub stdout: String,
    pub stderr: String,
    pub results: HashMap<String, String>,
}

impl Child {
    /// The value of `RESULT key=...`, panicking with the child's output when missing.
    pub fn get(&self, key: &str) -> &str {
        match self.results.get(key) {
            Some(v) => v,
            None => panic!("child printed no RESULT {key}=\n{}", self.dump()),
        }
    }

    /// The value parsed as a number.
    pub fn num(&self, key: &str) -> u64 {
        let v = self.get(key);
        v.parse()
            .unwrap_or_else(|_| panic!("RESULT {key}={v} is not a number\n{}", self.dump()))
    }

    /// Everything the child printed, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "exit code {:?} signal {:?} timed out {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.signal, self.timed_out, self.stdout, self.stderr
        )
    }

    /// Assert the child exited 0 (so all its own assertions passed).
    pub fn assert_ok(&self) {
        assert!(!self.timed_out, "child timed out\n{}", self.dump());
        assert_eq!(self.code, Some(0), "child failed\n{}", self.dump());
    }
}

/// Run the child body of `test` in a fresh process and collect its output.
pub fn spawn(test: &str) -> Child {
    let exe = std::env::current_exe().expect("test binary path");
    let mut child = Command::new(exe)
        .args(["--exact", test, "--nocapture", "--test-threads", "1"])
        .env(CHILD_ENV, test)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn child test process");
    // Drain both pipes on threads so a chatty child cannot block on a full pipe.
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let to = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let te = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut timed_out = false;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait child") {
            break st;
        }
        if Instant::now() > deadline {
            timed_out = true;
            let _ = child.kill();
            break child.wait().expect("wait killed child");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = to.join().unwrap_or_default();
    let stderr = te.join().unwrap_or_default();
    let results = stdout
        .lines()
        // The harness prints "test name ... " without a newline before the body runs.
        .filter_map(|l| l.find("RESULT ").map(|i| &l[i + 7..]))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Child {
        code: status.code(),
        signal: status.signal(),
        timed_out,
        stdout,
        stderr,
        results,
    }
}
