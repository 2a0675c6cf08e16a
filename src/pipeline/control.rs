//! The pipeline's answer to management ([`DataPlane`]): every call becomes a [`Command`] that
//! each lcore applies at its next loop boundary, and returns once all of them acknowledged (or
//! with an error after a bounded wait). Nothing here runs on a data-path lcore.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::BypassRule;
use crate::control::plane::{BypassOp, BypassSpec};
use crate::control::DataPlane;

use super::lcore::{Command, ControlPlane, FlowsRequest};
use super::runtime;

/// How long management waits for every lcore to apply a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The pipeline as management sees it.
pub struct PipelineControl {
    ctl: OnceLock<Arc<ControlPlane>>,
    bypass: Mutex<Vec<BypassRule>>,
    shutdown: Arc<AtomicBool>,
}

impl PipelineControl {
    /// Control over a pipeline that is about to start, beginning with the configured bypass
    /// rules; `shutdown` is raised by the `shutdown` command. Calls fail until [`Self::attach`].
    pub fn new(bypass: Vec<BypassRule>, shutdown: Arc<AtomicBool>) -> Self {
        PipelineControl {
            ctl: OnceLock::new(),
            bypass: Mutex::new(bypass),
            shutdown,
        }
    }

    /// The pipeline is running: commands go to `ctl` from now on.
    pub fn attach(&self, ctl: Arc<ControlPlane>) {
        let _ = self.ctl.set(ctl);
    }

    fn ctl(&self) -> Result<&Arc<ControlPlane>, String> {
        self.ctl
            .get()
            .ok_or_else(|| "the pipeline is not running yet".to_string())
    }

    fn rules(&self) -> std::sync::MutexGuard<'_, Vec<BypassRule>> {
        self.bypass.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn listed(rules: &[BypassRule]) -> serde_json::Value {
        serde_json::json!(rules.iter().map(BypassSpec::from_rule).collect::<Vec<_>>())
    }
}

impl DataPlane for PipelineControl {
    fn stats(&self) -> serde_json::Value {
        let ctl = match self.ctl() {
            Ok(c) => c,
            Err(e) => return serde_json::json!({ "error": e }),
        };
        let lcores: Vec<serde_json::Value> = ctl
            .lcores
            .iter()
            .map(|l| {
                serde_json::json!({
                    "lcore": l.lcore,
                    "stages": l.stages,
                    "counters": l.counters.snapshot().to_json(),
                })
            })
            .collect();
        let totals = runtime::totals(ctl);
        let acc = totals.accounting();
        serde_json::json!({
            "totals": totals.to_json(),
            "lcores": lcores,
            "in_flight": acc.entered.saturating_sub(acc.terminal),
        })
    }

    fn flows(&self, top_n: usize) -> serde_json::Value {
        let req = Arc::new(FlowsRequest {
            top: top_n,
            ..FlowsRequest::default()
        });
        let sent = self
            .ctl()
            .and_then(|c| c.broadcast(Command::Flows(req.clone()), COMMAND_TIMEOUT));
        if let Err(e) = sent {
            return serde_json::json!({ "error": e });
        }
        let mut flows = std::mem::take(&mut *req.out.lock().unwrap_or_else(|p| p.into_inner()));
        let traffic = |v: &serde_json::Value| {
            v["primary_bytes"].as_u64().unwrap_or(0) + v["secondary_bytes"].as_u64().unwrap_or(0)
        };
        flows.sort_by_key(|v| std::cmp::Reverse(traffic(v)));
        flows.truncate(top_n);
        serde_json::json!(flows)
    }

    fn checkpoint_done(&self) -> Result<(), String> {
        self.ctl()?
            .broadcast(Command::CheckpointDone, COMMAND_TIMEOUT)
    }

    fn failover(&self) -> Result<(), String> {
        self.ctl()?.broadcast(Command::Failover, COMMAND_TIMEOUT)
    }

    fn bypass(&self, op: BypassOp) -> Result<serde_json::Value, String> {
        let mut rules = self.rules();
        let mut next = rules.clone();
        match op {
            BypassOp::List => return Ok(Self::listed(&rules)),
            BypassOp::Add(spec) => next.push(spec.to_rule()?),
            BypassOp::Del { index } => {
                if index >= next.len() {
                    return Err(format!("no rule {index} (there are {})", next.len()));
                }
                next.remove(index);
            }
        }
        self.ctl()?
            .broadcast(Command::Bypass(Arc::new(next.clone())), COMMAND_TIMEOUT)?;
        *rules = next;
        Ok(Self::listed(&rules))
    }

    fn capture(&self, on: bool) -> Result<(), String> {
        self.ctl()?.broadcast(Command::Capture(on), COMMAND_TIMEOUT)
    }

    fn shutdown(&self) {
        self.shutdown.store(true, Ordering::Release);
    }
}
