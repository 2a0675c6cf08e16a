//! The seam between management and the data plane. The pipeline implements [`DataPlane`]; each
//! call is answered by the stages at a loop boundary through their control rings, so management
//! never touches stage state directly and a call never runs on a data-path lcore.

use serde::{Deserialize, Serialize};

/// A bypass rule as the operator writes it; the pipeline validates it with the config's rule
/// parser (same syntax as `[[compare.bypass]]`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct BypassSpec {
    /// IP protocol: `tcp`, `udp`, `icmp`, `icmpv6`, `any` or a number.
    pub proto: String,
    /// Port or port range (`22`, `5000-5100`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<String>,
    /// Network prefix (`10.0.0.0/8`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A bypass-table operation.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case")]
pub enum BypassOp {
    /// Add a rule (result: the new rule list or its index, as the pipeline chooses).
    Add(BypassSpec),
    /// Delete the rule at this index of `list`.
    Del {
        /// Index in the list.
        index: usize,
    },
    /// List the rules.
    List,
}

/// What management asks of the data plane. Implementations must be bounded in time: a call
/// returns once every stage has answered at its next loop boundary (or with an error when a stage
/// does not answer in time), and never blocks a data-path lcore.
pub trait DataPlane: Send + Sync {
    /// Counters snapshot: per lcore and totals.
    fn stats(&self) -> serde_json::Value;
    /// The `top_n` flows by traffic, with their compare state.
    fn flows(&self, top_n: usize) -> serde_json::Value;
    /// A checkpoint finished: compare shards release queued primaries and free secondaries, the
    /// rewriter resets offsets. Returns after every stage acknowledged.
    fn checkpoint_done(&self) -> Result<(), String>;
    /// Fail over (role-dependent: the primary stops comparing, the secondary serves clients).
    fn failover(&self) -> Result<(), String>;
    /// Change or list the bypass rules.
    fn bypass(&self, op: BypassOp) -> Result<serde_json::Value, String>;
    /// Start or stop sending diverging packets to management for capture.
    fn capture(&self, on: bool) -> Result<(), String>;
    /// Ask every lcore to stop.
    fn shutdown(&self);
}
