//! The `[failover]` section: defaults, values, and every validation error.

use colo_proxy::config::{Config, ConfigError, FailoverConfig, LinkLossAction};

const SECONDARY: &str = r#"
role = "secondary"

[eal]
args = ["-l", "0-1"]

[ports.svm]
vdev = "net_ring0"

[ports.nic]
vdev = "net_ring1"

[link]
kind = "socket"
mirror = { addr = "unix:/tmp/m.sock" }
secondary_out = { addr = "unix:/tmp/s.sock" }

[lcores]
rewriter = 1
"#;

fn with(section: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(&format!("{SECONDARY}\n[failover]\n{section}\n"))
}

fn errors(section: &str) -> Vec<String> {
    match with(section) {
        Ok(_) => panic!("accepted: {section}"),
        Err(e) => e.messages(),
    }
}

#[test]
fn defaults_announce_and_wait_without_heartbeats() {
    let c = Config::from_toml_str(SECONDARY).unwrap();
    assert_eq!(c.failover, FailoverConfig::default());
    assert!(c.failover.announce);
    assert_eq!(c.failover.on_link_loss, LinkLossAction::Wait);
    // Heartbeats are off unless asked: a QEMU peer does not understand them.
    assert_eq!(c.failover.heartbeat_ms, 0);
    assert!(c.failover.on_colo_exit);
}

#[test]
fn values_are_taken() {
    let c = with(
        "announce = false\nannounce_count = 5\nannounce_interval_ms = 20\non_link_loss = \"auto\"\non_colo_exit = false\nheartbeat_ms = 100\nheartbeat_timeout_ms = 300",
    )
    .unwrap();
    let f = &c.failover;
    assert!(!f.announce);
    assert_eq!(f.announce_count, 5);
    assert_eq!(f.announce_interval_ms, 20);
    assert_eq!(f.on_link_loss, LinkLossAction::Auto);
    assert!(!f.on_colo_exit);
    assert_eq!(f.heartbeat_ms, 100);
    assert_eq!(f.heartbeat_timeout_ms, 300);
}

#[test]
fn bad_values_are_rejected_by_field() {
    let e = errors("on_link_loss = \"sometimes\"");
    assert!(e.iter().any(|m| m.contains("sometimes")), "{e:?}");
    let e = errors("surprise = 1");
    assert!(e.iter().any(|m| m.contains("surprise")), "{e:?}");
    let e = errors("announce_count = 0");
    assert!(
        e.iter().any(|m| m.contains("failover.announce_count")),
        "{e:?}"
    );
    let e = errors("announce_interval_ms = 0");
    assert!(
        e.iter()
            .any(|m| m.contains("failover.announce_interval_ms")),
        "{e:?}"
    );
    // A timeout shorter than two heartbeats would report one late heartbeat as a loss.
    let e = errors("heartbeat_ms = 100\nheartbeat_timeout_ms = 150");
    assert!(
        e.iter()
            .any(|m| m.contains("failover.heartbeat_timeout_ms")),
        "{e:?}"
    );
    // Detection off with heartbeats on is allowed (the peer may want them).
    assert!(with("heartbeat_ms = 100\nheartbeat_timeout_ms = 0").is_ok());
}
