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

impl BypassSpec {
    /// Validate into the rule the compare engine uses (same parser as the config file).
    pub fn to_rule(&self) -> Result<crate::config::BypassRule, String> {
        crate::config::BypassRule::parse(&self.proto, self.ports.as_deref(), self.prefix.as_deref())
            .map_err(|(field, why)| format!("{field}: {why}"))
    }

    /// How a rule is listed (parses back to the same rule with [`BypassSpec::to_rule`]).
    pub fn from_rule(r: &crate::config::BypassRule) -> BypassSpec {
        let full = *r.ports.start() == 0 && *r.ports.end() == u16::MAX;
        BypassSpec {
            proto: r.proto.map_or_else(
                || "any".to_string(),
                |p| match p {
                    1 => "icmp".to_string(),
                    6 => "tcp".to_string(),
                    17 => "udp".to_string(),
                    58 => "icmpv6".to_string(),
                    n => n.to_string(),
                },
            ),
            ports: (!full).then(|| {
                if r.ports.start() == r.ports.end() {
                    r.ports.start().to_string()
                } else {
                    format!("{}-{}", r.ports.start(), r.ports.end())
                }
            }),
            prefix: r.prefix.map(|(a, l)| format!("{a}/{l}")),
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_round_trip_through_config_rules() {
        for (proto, ports, prefix) in [
            ("tcp", Some("22"), None),
            ("udp", Some("5000-5100"), Some("10.0.0.0/8")),
            ("any", None, Some("fd00::/8")),
            ("icmp", None, None),
        ] {
            let spec = BypassSpec {
                proto: proto.into(),
                ports: ports.map(Into::into),
                prefix: prefix.map(Into::into),
            };
            let rule = spec.to_rule().unwrap_or_else(|e| panic!("{spec:?}: {e}"));
            assert_eq!(
                BypassSpec::from_rule(&rule).to_rule().unwrap(),
                rule,
                "{spec:?}"
            );
        }
        let bad = BypassSpec {
            proto: "bogus".into(),
            ports: None,
            prefix: None,
        };
        assert!(bad.to_rule().unwrap_err().contains("proto"));
        let bad = BypassSpec {
            proto: "tcp".into(),
            ports: Some("99999".into()),
            prefix: None,
        };
        assert!(bad.to_rule().is_err());
    }
}
