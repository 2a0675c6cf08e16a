//! Config keys for who may talk to the proxy: `allow`, `replace_peer`, `keepalive_ms` on
//! socket endpoints, the Xen notify channel's defaults and `accept_unsolicited`, the control
//! socket's group, and the start-up / check-config warnings.

use std::path::PathBuf;

use colo_proxy::config::{Config, LinkSpec, SocketLink};
use colo_proxy::link::access::Allowlist;
use colo_proxy::mgmt::MgmtConfig;

fn primary(link: &str, extra: &str) -> String {
    format!(
        r#"
role = "primary"
[eal]
args = ["-l", "0-3", "--no-pci"]
[ports.nic]
vdev = "net_ring0"
[ports.pvm]
vdev = "net_ring1"
[link]
kind = "socket"
{link}
[lcores]
mirror = 1
redirector = 2
compare = 3
{extra}
"#
    )
}

fn compare(notify: &str, extra: &str) -> String {
    format!(
        r#"
role = "compare"
[eal]
args = ["-l", "0-1"]
[compare_sockets]
primary_in = {{ addr = "tcp:127.0.0.1:9001" }}
secondary_in = {{ addr = "tcp:127.0.0.1:9004" }}
outdev = {{ addr = "tcp:127.0.0.1:9005" }}
{notify}
[lcores]
compare = 1
{extra}
"#
    )
}

fn load(text: &str) -> Config {
    Config::from_toml_str(text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

#[track_caller]
fn has_error(text: &str, want: &str) {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(e) => {
            let m = e.messages();
            assert!(m.iter().any(|l| l.contains(want)), "{want:?} not in {m:#?}");
        }
    }
}

fn link(cfg: &Config) -> (&colo_proxy::config::Endpoint, &colo_proxy::config::Endpoint) {
    match &cfg.link {
        Some(LinkSpec::Socket(SocketLink {
            mirror,
            secondary_out,
            ..
        })) => (mirror, secondary_out),
        other => panic!("{other:?}"),
    }
}

#[test]
fn allow_replace_peer_and_keepalive_on_link_endpoints() {
    let c = load(&primary(
        r#"mirror = { addr = "tcp:0.0.0.0:9003", allow = ["192.168.100.2", "fd00::/8"], replace_peer = true, keepalive_ms = 3000 }
secondary_out = { addr = "tcp:[::]:9004", allow = ["::ffff:192.168.100.0/120"] }"#,
        "",
    ));
    let (m, s) = link(&c);
    assert_eq!(
        m.allow,
        Some(Allowlist::parse(&["192.168.100.2", "fd00::/8"]).unwrap())
    );
    assert!(m.replace_peer);
    assert_eq!(m.keepalive_ms, 3000);
    let p = s.peer_policy(false);
    assert!(p
        .allow
        .as_ref()
        .unwrap()
        .allows("192.168.100.7".parse().unwrap()));
    assert!(!p.replace_peer);
    assert_eq!(s.keepalive_ms, 5000, "default");
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
}

#[test]
fn bad_access_keys_are_errors_with_their_field() {
    has_error(
        &primary(
            r#"mirror = { addr = "tcp:0.0.0.0:9003", allow = ["10.0.0.1/8"] }
secondary_out = { addr = "tcp:127.0.0.1:9004" }"#,
            "",
        ),
        "link.mirror.allow: \"10.0.0.1/8\"",
    );
    has_error(
        &primary(
            r#"mirror = { addr = "unix:/tmp/m.sock", allow = ["127.0.0.1"] }
secondary_out = { addr = "tcp:127.0.0.1:9004", keepalive_ms = 500 }"#,
            "",
        ),
        "link.mirror.allow: only for TCP endpoints",
    );
    has_error(
        &primary(
            r#"mirror = { addr = "unix:/tmp/m.sock" }
secondary_out = { addr = "tcp:127.0.0.1:9004", keepalive_ms = 500 }"#,
            "",
        ),
        "link.secondary_out.keepalive_ms: 500 is not within 2000..=3600000",
    );
    has_error(
        &primary(
            r#"mirror = { addr = "tcp:127.0.0.1:9003", mode = "client", allow = ["127.0.0.1"], replace_peer = false }
secondary_out = { addr = "unix:/tmp/s.sock", keepalive_ms = 3000 }"#,
            "",
        ),
        "link.mirror.replace_peer: only for endpoints in mode \"server\"",
    );
    has_error(
        &primary(
            r#"mirror = { addr = "tcp:127.0.0.1:9003", mode = "client", allow = ["127.0.0.1"] }
secondary_out = { addr = "unix:/tmp/s.sock", keepalive_ms = 3000 }"#,
            "",
        ),
        "link.secondary_out.keepalive_ms: only for TCP endpoints",
    );
    // keepalive_ms = 0 turns it off.
    let c = load(&primary(
        r#"mirror = { addr = "tcp:127.0.0.1:9003", keepalive_ms = 0 }
secondary_out = { addr = "tcp:127.0.0.1:9004" }"#,
        "",
    ));
    assert!(link(&c).0.keepalive().is_none());
}

#[test]
fn a_server_open_to_the_network_without_allow_is_warned_about() {
    let c = load(&primary(
        r#"mirror = { addr = "tcp:0.0.0.0:9003" }
secondary_out = { addr = "tcp:192.168.100.1:9004", allow = ["192.168.100.2"] }"#,
        "",
    ));
    let w = c.warnings();
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(
        w[0].starts_with("link.mirror: server on tcp:0.0.0.0:9003 accepts peers from any address"),
        "{w:?}"
    );
    // Loopback and clients are fine.
    let c = load(&primary(
        r#"mirror = { addr = "tcp:127.0.0.1:9003" }
secondary_out = { addr = "tcp:10.0.0.1:9004", mode = "client" }"#,
        "",
    ));
    assert!(c.warnings().is_empty());
}

#[test]
fn notify_channel_defaults_to_loopback_only_and_ignores_unsolicited() {
    let c = load(&compare(
        r#"notify_dev = { addr = "tcp:0.0.0.0:9009" }"#,
        "",
    ));
    let w = c.warnings();
    assert!(
        w.iter()
            .any(|l| l.starts_with("compare_sockets.notify_dev:")
                && l.contains("loopback peers only")),
        "{w:?}"
    );
    let m = MgmtConfig::from_config(&c);
    let x = m.xen.unwrap();
    assert_eq!(x.policy.allow, Some(Allowlist::loopback()));
    assert!(!x.accept_unsolicited && !x.policy.replace_peer);
    assert!(x.keepalive.is_some());

    let c = load(&compare(
        r#"notify_dev = { addr = "tcp:0.0.0.0:9009", allow = ["10.1.1.1"] }
accept_unsolicited = true"#,
        "",
    ));
    assert!(c.warnings().is_empty(), "{:?}", c.warnings());
    let x = MgmtConfig::from_config(&c).xen.unwrap();
    assert_eq!(
        x.policy.allow,
        Some(Allowlist::parse(&["10.1.1.1"]).unwrap())
    );
    assert!(x.accept_unsolicited);

    // [mgmt.xen_notify] takes the same keys.
    let c = load(&primary(
        r#"mirror = { addr = "tcp:127.0.0.1:9003" }
secondary_out = { addr = "tcp:127.0.0.1:9004" }"#,
        r#"[mgmt.xen_notify]
addr = "tcp:127.0.0.1:9010"
replace_peer = true
keepalive_ms = 2000
accept_unsolicited = true"#,
    ));
    let x = MgmtConfig::from_config(&c).xen.unwrap();
    assert!(x.policy.replace_peer && x.accept_unsolicited);
    assert_eq!(x.policy.allow, Some(Allowlist::loopback()));
    assert_eq!(x.keepalive.unwrap().timeout.as_millis(), 2000);
}

#[test]
fn control_socket_group_needs_a_known_group_and_a_mode_that_lets_it_in() {
    let link = r#"mirror = { addr = "tcp:127.0.0.1:9003" }
secondary_out = { addr = "tcp:127.0.0.1:9004" }"#;
    has_error(
        &primary(link, "[mgmt]\ncontrol_socket_group = \"root\""),
        "mgmt.control_socket_mode: 0o600 gives the group no read/write",
    );
    has_error(
        &primary(
            link,
            "[mgmt]\ncontrol_socket_group = \"no-such-group-here\"\ncontrol_socket_mode = 0o660",
        ),
        "mgmt.control_socket_group: \"no-such-group-here\" is neither a gid nor a group",
    );
    let c = load(&primary(
        link,
        "[mgmt]\ncontrol_socket_group = \"root\"\ncontrol_socket_mode = 0o660",
    ));
    assert_eq!(c.mgmt.control_socket_group, Some(0));
    assert_eq!(MgmtConfig::from_config(&c).server.unix_group, Some(0));
}

#[test]
fn shipped_examples_use_allow_and_give_no_warnings() {
    for name in [
        "compare-dropin.toml",
        "demo-primary.toml",
        "veth-primary.toml",
        "primary.toml",
    ] {
        let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("dpdk-config")
            .join(name);
        let c = Config::load(&p).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(c.warnings().is_empty(), "{name}: {:?}", c.warnings());
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("allow = ["), "{name} shows allow");
    }
}

#[test]
fn check_config_prints_the_warning_and_still_exits_0() {
    let dir = std::env::temp_dir().join(format!("colo-cfg-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("open.toml");
    std::fs::write(
        &f,
        primary(
            r#"mirror = { addr = "tcp:0.0.0.0:9003" }
secondary_out = { addr = "tcp:127.0.0.1:9004" }"#,
            "",
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .arg("check-config")
        .arg(&f)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(out.status.success(), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("warning:") && err.contains("link.mirror") && err.contains("allow"),
        "{err}"
    );
}
