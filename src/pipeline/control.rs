//! The pipeline's answer to management ([`DataPlane`]): every call becomes a [`Command`] that
//! each lcore applies at its next loop boundary, and returns once all of them acknowledged (or
//! with an error after a bounded wait). Nothing here runs on a data-path lcore.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::config::bypass::MAX_RULES;
use crate::config::BypassRule;
use crate::control::plane::{BypassOp, BypassSpec};
use crate::control::DataPlane;

use super::backpressure::{BacklogBoard, ShardLag};
use super::counters::Counter;
use super::lcore::{Command, ControlPlane, FlowsRequest};
use super::runtime;

/// How long management waits for every lcore to apply a command.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(2);

/// The pipeline as management sees it.
pub struct PipelineControl {
    ctl: OnceLock<Arc<ControlPlane>>,
    bypass: Mutex<Vec<BypassRule>>,
    shutdown: Arc<AtomicBool>,
    backlog: OnceLock<Arc<BacklogBoard>>,
    ports: OnceLock<Vec<(String, u16, bool)>>,
    link_sockets: OnceLock<Vec<crate::link::socket::NamedPeerCounters>>,
}

/// One port's drop counters as reports show them (drops in the device or kernel that the
/// stages never see: back-pressure and a full side make the NIC drop).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PortDrops {
    /// Port name from the config.
    pub name: String,
    /// Frames received.
    pub rx: u64,
    /// Frames sent.
    pub tx: u64,
    /// Rx frames the device dropped for want of a descriptor (`imissed`).
    pub rx_missed: u64,
    /// Rx errors (`ierrors`).
    pub rx_errors: u64,
    /// Rx mbuf allocation failures.
    pub rx_nombuf: u64,
    /// Tx errors (`oerrors`; af_packet counts its failed sends here).
    pub tx_errors: u64,
    /// An af_packet port: DPDK 22.11's PMD reports no rx drops; the kernel counts its ring
    /// overflows per socket (`tp_drops`), which the PMD does not expose.
    pub kernel_drops_hidden: bool,
}

impl PortDrops {
    /// Every drop the port counted.
    pub fn dropped(&self) -> u64 {
        self.rx_missed + self.rx_errors + self.rx_nombuf + self.tx_errors
    }

    /// `port nic rx .. tx .. missed .. rx-errors .. rx-nombuf .. tx-errors ..`.
    pub fn line(&self) -> String {
        format!(
            "port {:<8} rx {} tx {} missed {} rx-errors {} rx-nombuf {} tx-errors {}{}",
            self.name,
            self.rx,
            self.tx,
            self.rx_missed,
            self.rx_errors,
            self.rx_nombuf,
            self.tx_errors,
            if self.kernel_drops_hidden {
                " (af_packet: kernel ring drops not reported)"
            } else {
                ""
            }
        )
    }
}

impl PipelineControl {
    /// Control over a pipeline that is about to start, beginning with the configured bypass
    /// rules; `shutdown` is raised by the `shutdown` command. Calls fail until [`Self::attach`].
    pub fn new(bypass: Vec<BypassRule>, shutdown: Arc<AtomicBool>) -> Self {
        PipelineControl {
            ctl: OnceLock::new(),
            bypass: Mutex::new(bypass),
            shutdown,
            backlog: OnceLock::new(),
            ports: OnceLock::new(),
            link_sockets: OnceLock::new(),
        }
    }

    /// The socket link's streams (their connection counters in stats and the report).
    pub fn set_link_sockets(&self, s: Vec<crate::link::socket::NamedPeerCounters>) {
        let _ = self.link_sockets.set(s);
    }

    /// The socket link's streams (empty for a port link).
    pub fn link_sockets(&self) -> &[crate::link::socket::NamedPeerCounters] {
        self.link_sockets.get().map_or(&[], Vec::as_slice)
    }

    /// The compare shards publish their backlogs on `board` (lag in stats and status).
    pub fn set_backlog(&self, board: Arc<BacklogBoard>) {
        let _ = self.backlog.set(board);
    }

    /// The ports by name, DPDK id and whether they are af_packet ports (their drop counters
    /// in stats and status).
    pub fn set_ports(&self, ports: Vec<(String, u16, bool)>) {
        let _ = self.ports.set(ports);
    }

    /// How far the SVM lags, per shard (empty on the secondary or before start).
    pub fn lag(&self) -> Vec<ShardLag> {
        match (self.backlog.get(), self.ctl.get()) {
            (Some(b), Some(c)) => b.lag(c.now_ns()),
            _ => Vec::new(),
        }
    }

    /// Every port's counters (a port whose stats cannot be read is left out).
    pub fn port_drops(&self) -> Vec<PortDrops> {
        let Some(ports) = self.ports.get() else {
            return Vec::new();
        };
        ports
            .iter()
            .filter_map(|(name, id, af_packet)| {
                let s = crate::dpdk::Port::stats_of(*id).ok()?;
                Some(PortDrops {
                    name: name.clone(),
                    kernel_drops_hidden: *af_packet,
                    rx: s.ipackets,
                    tx: s.opackets,
                    rx_missed: s.imissed,
                    rx_errors: s.ierrors,
                    rx_nombuf: s.rx_nombuf,
                    tx_errors: s.oerrors,
                })
            })
            .collect()
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

impl PipelineControl {
    /// One line per lcore: its idle mode, the share of the run it slept and what woke it
    /// (the final report).
    pub fn idle_report(&self) -> String {
        let Ok(ctl) = self.ctl() else {
            return String::new();
        };
        let run_ns = ctl.now_ns().max(1);
        let mut out = String::new();
        for l in &ctl.lcores {
            let c = l.counters.snapshot();
            let mode = l.idle.get().map_or("?", |i| i.mode.as_str());
            out.push_str(&format!(
                "idle lcore {:<3} {:<9} asleep {:.1}% ({} sleeps); wake-ups: rx {}, socket {}, \
                 ring {}, control {}, timeout {}\n",
                l.lcore,
                mode,
                100.0 * c.get(Counter::SleepNs) as f64 / run_ns as f64,
                c.get(Counter::Sleeps),
                c.get(Counter::WakeRx),
                c.get(Counter::WakeSocket),
                c.get(Counter::WakeRing),
                c.get(Counter::WakeControl),
                c.get(Counter::WakeTimeout),
            ));
        }
        out
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
                let idle = l.idle.get();
                serde_json::json!({
                    "lcore": l.lcore,
                    "stages": l.stages,
                    "idle": {
                        "mode": idle.map(|i| i.mode.as_str()),
                        "reason": idle.map(|i| i.reason.as_str()),
                    },
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
            "lag": self.lag(),
            "ports": self.port_drops(),
            "link_sockets": self
                .link_sockets()
                .iter()
                .map(|s| s.to_json())
                .collect::<Vec<_>>(),
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
            BypassOp::Add(spec) => {
                let rule = spec.to_rule()?;
                if next.len() >= MAX_RULES {
                    return Err(format!(
                        "there are already {} rules, the most a pipeline holds",
                        next.len()
                    ));
                }
                next.push(rule);
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bypass_add_beyond_the_cap_is_refused_before_reaching_the_lcores() {
        let rule = BypassRule::parse("udp", Some("53"), None).unwrap();
        let pc = PipelineControl::new(vec![rule; MAX_RULES], Arc::new(AtomicBool::new(false)));
        let spec = BypassSpec {
            proto: "tcp".into(),
            ports: Some("22".into()),
            prefix: None,
        };
        let e = pc.bypass(BypassOp::Add(spec)).unwrap_err();
        assert!(e.contains("already 64 rules"), "{e}");
        assert_eq!(pc.rules().len(), MAX_RULES);
        // Below the cap the request gets as far as the (here absent) pipeline.
        pc.rules().pop();
        let spec = BypassSpec {
            proto: "tcp".into(),
            ports: Some("22".into()),
            prefix: None,
        };
        let e = pc.bypass(BypassOp::Add(spec)).unwrap_err();
        assert!(!e.contains("already"), "{e}");
    }
}
