//! `[idle]`: `mode` parsing and validation, the old `backoff` switch, the per-lcore plan
//! (which lcores sleep until woken, and why not), and `check-config`'s report of it.

use std::path::PathBuf;
use std::process::Command;

use colo_proxy::config::idle::{plan, LcoreIdle};
use colo_proxy::config::{Config, ConfigError, IdleMode};

/// A primary on lcore 1 (all stages) with the given ports and `[idle]` body.
fn primary(nic: &str, pvm: &str, idle: &str) -> String {
    format!(
        r#"role = "primary"
[eal]
args = ["-l", "0-2", "--no-pci"]
[ports.nic]
vdev = "{nic}"
[ports.pvm]
vdev = "{pvm}"
[link]
kind = "socket"
mirror = {{ addr = "tcp:127.0.0.1:9101" }}
secondary_out = {{ addr = "tcp:127.0.0.1:9102" }}
[lcores]
mirror = 1
redirector = 1
compare = 1
[idle]
{idle}
"#
    )
}

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml_str(text)
}

fn errors(text: &str) -> Vec<String> {
    match load(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => e.messages(),
    }
}

fn lcore(p: &[LcoreIdle], l: u32) -> &LcoreIdle {
    p.iter()
        .find(|x| x.lcore == l)
        .unwrap_or_else(|| panic!("no lcore {l} in {p:?}"))
}

const AFP: (&str, &str) = ("net_af_packet0,iface=a", "net_af_packet1,iface=b");

#[test]
fn modes_parse_and_default_is_per_lcore() {
    for (text, want) in [
        ("mode = \"poll\"", Some(IdleMode::Poll)),
        ("mode = \"backoff\"", Some(IdleMode::Backoff)),
        ("mode = \"interrupt\"", Some(IdleMode::Interrupt)),
        ("", None),
    ] {
        let c = load(&primary(AFP.0, AFP.1, text)).unwrap();
        assert_eq!(c.idle.mode, want, "{text}");
        assert_eq!(
            (
                c.idle.spin_loops,
                c.idle.spin_us,
                c.idle.await_spin_us,
                c.idle.max_sleep_us
            ),
            (1000, 20, 200, 100)
        );
    }
    let e = errors(&primary(AFP.0, AFP.1, "mode = \"sleepy\""));
    assert!(
        e.iter().any(|m| m.contains("unknown variant `sleepy`")),
        "{e:?}"
    );
}

#[test]
fn old_backoff_switch_still_loads_and_conflicts_are_named() {
    let c = load(&primary(AFP.0, AFP.1, "backoff = false")).unwrap();
    assert_eq!(c.idle.mode, Some(IdleMode::Poll));
    let c = load(&primary(AFP.0, AFP.1, "backoff = true")).unwrap();
    assert_eq!(c.idle.mode, None);
    let e = errors(&primary(AFP.0, AFP.1, "backoff = true\nmode = \"poll\""));
    assert!(
        e.iter()
            .any(|m| m.contains("idle.backoff") && m.contains("idle.mode")),
        "{e:?}"
    );
    let e = errors(&primary(AFP.0, AFP.1, "max_sleep_us = 100001"));
    assert!(e.iter().any(|m| m.contains("idle.max_sleep_us")), "{e:?}");
    let e = errors(&primary(AFP.0, AFP.1, "spin_us = 100001"));
    assert!(e.iter().any(|m| m.contains("idle.spin_us")), "{e:?}");
    let c = load(&primary(
        AFP.0,
        AFP.1,
        "spin_us = 0
spin_loops = 7",
    ))
    .unwrap();
    assert_eq!((c.idle.spin_loops, c.idle.spin_us), (7, 0));
    let e = errors(&primary(AFP.0, AFP.1, "await_spin_us = 100001"));
    assert!(e.iter().any(|m| m.contains("idle.await_spin_us")), "{e:?}");
    let c = load(&primary(AFP.0, AFP.1, "await_spin_us = 0")).unwrap();
    assert_eq!(c.idle.await_spin_us, 0);
}

#[test]
fn plan_sleeps_where_every_input_wakes_and_says_why_not() {
    // af_packet ports and a socket link: every input of lcore 1 can wake it.
    let c = load(&primary(AFP.0, AFP.1, "")).unwrap();
    let p = plan(&c);
    let l = lcore(&p, 1);
    assert_eq!(l.mode, IdleMode::Interrupt, "{l:?}");
    assert!(l.reason.contains("af_packet"), "{}", l.reason);
    assert!(l.stages.contains(&"mirror".to_string()));
    // A net_ring PVM port has no wake-up: that lcore backs off, naming the port.
    let c = load(&primary(AFP.0, "net_ring0", "")).unwrap();
    let l = lcore(&plan(&c), 1).clone();
    assert_eq!(l.mode, IdleMode::Backoff);
    assert!(
        l.reason.contains("pvm (net_ring0)") && l.reason.contains("no rx interrupts"),
        "{}",
        l.reason
    );
    // Asked for explicitly, the fallback is the same (and says it was asked).
    let c = load(&primary(AFP.0, "net_memif0", "mode = \"interrupt\"")).unwrap();
    let l = lcore(&plan(&c), 1).clone();
    assert_eq!(l.mode, IdleMode::Backoff);
    assert!(
        l.reason.contains("idle.mode = \"interrupt\""),
        "{}",
        l.reason
    );
    assert!(l.reason.contains("memif"), "{}", l.reason);
    // poll and backoff are taken as asked.
    let c = load(&primary(AFP.0, AFP.1, "mode = \"poll\"")).unwrap();
    assert_eq!(lcore(&plan(&c), 1).mode, IdleMode::Poll);
    // tap and vhost-user wake by rx interrupts.
    let c = load(&primary(
        "net_tap0,iface=t0",
        "net_vhost0,iface=/tmp/x.sock",
        "",
    ))
    .unwrap();
    let l = lcore(&plan(&c), 1).clone();
    assert_eq!(l.mode, IdleMode::Interrupt, "{l:?}");
    assert!(l.reason.contains("rx interrupts"), "{}", l.reason);
}

#[test]
fn plan_per_lcore_on_split_stages() {
    // Compare shards on their own lcore wake by the redirector's ring doorbell; the mirror's
    // lcore backs off on its net_null nic.
    let text = primary("net_null0", AFP.1, "").replace(
        "mirror = 1\nredirector = 1\ncompare = 1",
        "mirror = 0\nredirector = 1\ncompare = 2",
    );
    let c = load(&text).unwrap();
    let p = plan(&c);
    assert_eq!(lcore(&p, 0).mode, IdleMode::Backoff);
    assert_eq!(lcore(&p, 1).mode, IdleMode::Interrupt);
    let l2 = lcore(&p, 2);
    assert_eq!(l2.mode, IdleMode::Interrupt);
    assert!(l2.reason.contains("eventfd"), "{}", l2.reason);
}

/// `colo-proxy check-config dpdk-config/NAME`: its stdout (it must exit 0).
fn check_config(name: &str) -> String {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("dpdk-config")
        .join(name);
    let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{name}: {stdout}");
    stdout
}

#[test]
fn check_config_shows_each_lcores_mode_and_reason() {
    let stdout = check_config("veth-primary.toml");
    let line = stdout
        .lines()
        .find(|l| l.trim_start().starts_with("lcore 1 ("))
        .unwrap_or_else(|| panic!("no lcore line in:\n{stdout}"));
    assert!(
        line.contains("mirror, redirector, compare0): interrupt (")
            && line.contains("nic (net_af_packet0)")
            && line.contains("link socket"),
        "{line}"
    );
    // The vdev example polls a pcap file: no wake-up, so back-off, with the reason.
    let stdout = check_config("vdev.toml");
    assert!(
        stdout
            .lines()
            .any(|l| l.contains("): backoff (default, but no wake-up from")),
        "{stdout}"
    );
}
