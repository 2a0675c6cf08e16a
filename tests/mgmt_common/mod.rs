//! Shared helpers for the mgmt integration tests: a fake data plane, temp dirs, a management
//! thread with a guard.
#![allow(dead_code)]

#[path = "../prereq/mod.rs"]
pub mod prereq;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use colo_proxy::control::{BypassOp, BypassSpec, DataPlane};
use colo_proxy::mgmt::{Management, MgmtConfig};

/// A data plane that records what it was asked.
#[derive(Default)]
pub struct FakePlane {
    pub calls: Mutex<Vec<String>>,
    pub checkpoint_done: AtomicU64,
    pub fail_checkpoint_done: AtomicBool,
    pub bypass: Mutex<Vec<BypassSpec>>,
    pub capture_on: AtomicBool,
    pub shutdown: AtomicBool,
}

impl FakePlane {
    pub fn calls(&self) -> Vec<String> {
        self.calls.lock().unwrap().clone()
    }
    fn log(&self, s: impl Into<String>) {
        self.calls.lock().unwrap().push(s.into());
    }
}

impl DataPlane for FakePlane {
    fn stats(&self) -> serde_json::Value {
        self.log("stats");
        serde_json::json!({"total": {"rx": 42}, "lcores": [{"lcore": 1, "rx": 42}]})
    }
    fn flows(&self, top_n: usize) -> serde_json::Value {
        self.log(format!("flows {top_n}"));
        let flows: Vec<_> = (0..top_n.min(3))
            .map(|i| serde_json::json!({"flow": format!("tcp 10.0.0.{i}:80"), "bytes": 1000 - i, "state": "established"}))
            .collect();
        serde_json::json!(flows)
    }
    fn checkpoint_done(&self) -> Result<(), String> {
        self.log("checkpoint_done");
        if self.fail_checkpoint_done.load(Ordering::SeqCst) {
            return Err("stage 2 did not acknowledge".into());
        }
        self.checkpoint_done.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn failover(&self) -> Result<(), String> {
        self.log("failover");
        Ok(())
    }
    fn bypass(&self, op: BypassOp) -> Result<serde_json::Value, String> {
        self.log(format!("bypass {op:?}"));
        let mut rules = self.bypass.lock().unwrap();
        match op {
            BypassOp::Add(spec) => {
                if spec.proto == "bogus" {
                    return Err("unknown protocol bogus".into());
                }
                rules.push(spec);
            }
            BypassOp::Del { index } => {
                if index >= rules.len() {
                    return Err(format!("no rule {index}"));
                }
                rules.remove(index);
            }
            BypassOp::List => {}
        }
        Ok(serde_json::to_value(&*rules).unwrap())
    }
    fn capture(&self, on: bool) -> Result<(), String> {
        self.log(format!("capture {on}"));
        self.capture_on.store(on, Ordering::SeqCst);
        Ok(())
    }
    fn shutdown(&self) {
        self.log("shutdown");
        self.shutdown.store(true, Ordering::SeqCst);
    }
}

/// A temporary directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "colo-mgmt-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Monotonic ns since the first call.
pub fn now_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// Poll `f` until it is true or `secs` pass.
pub fn wait_for(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// Management running on its own thread; stopped and joined on drop.
pub struct Running {
    pub stop: Arc<AtomicBool>,
    pub handle: Option<JoinHandle<Management>>,
}

impl Running {
    pub fn start(m: Management) -> Running {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let handle = std::thread::spawn(move || {
            let mut m = m;
            m.run(&s, Duration::from_micros(500), &now_ns);
            m
        });
        Running {
            stop,
            handle: Some(handle),
        }
    }

    /// Stop and get the management back.
    pub fn join(mut self) -> Management {
        self.stop.store(true, Ordering::SeqCst);
        self.handle.take().unwrap().join().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Management with a UNIX control socket in `dir` and the fake plane.
pub fn mgmt_with(
    dir: &Path,
    plane: Arc<dyn DataPlane>,
    f: impl FnOnce(&mut MgmtConfig),
) -> Management {
    let mut cfg = MgmtConfig::default();
    cfg.server.unix_path = Some(dir.join("run/ctl.sock"));
    f(&mut cfg);
    Management::new(cfg, plane).unwrap()
}
