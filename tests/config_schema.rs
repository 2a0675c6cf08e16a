//! Config loading: defaults, the shipped examples, and every validation error.

use std::path::PathBuf;

use colo_proxy::config::{
    Config, ConfigError, LinkSpec, Memory, PortDevice, Role, SockAddr, SocketLink, SocketMode,
};

const PRIMARY: &str = r#"
role = "primary"

[eal]
args = ["-l", "0-3", "--no-pci"]

[ports.nic]
vdev = "net_ring0"

[ports.pvm]
vdev = "net_ring1"

[link]
kind = "socket"
mirror = { addr = "tcp:127.0.0.1:9003" }
secondary_out = { addr = "tcp:127.0.0.1:9004" }

[lcores]
mirror = 1
redirector = 2
compare = 3
"#;

const SECONDARY: &str = r#"
role = "secondary"

[eal]
args = ["-l", "0-1"]

[ports.svm]
vdev = "net_ring0"

[link]
kind = "socket"
mirror = { addr = "unix:/tmp/m.sock" }
secondary_out = { addr = "unix:/tmp/s.sock" }

[lcores]
rewriter = 1
"#;

const COMPARE: &str = r#"
role = "compare"

[eal]
args = ["-l", "0-1"]

[compare_sockets]
primary_in = { addr = "tcp:127.0.0.1:9001" }
secondary_in = { addr = "tcp:127.0.0.1:9004" }
outdev = { addr = "tcp:127.0.0.1:9005" }

[lcores]
compare = 1
"#;

fn load(text: &str) -> Config {
    match Config::from_toml_str(text) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn errors(text: &str) -> Vec<String> {
    match Config::from_toml_str(text) {
        Ok(_) => panic!("expected errors, config was accepted:\n{text}"),
        Err(e) => e.messages(),
    }
}

/// Assert one of the error messages is exactly `want` (field path and reason).
#[track_caller]
fn has_error(text: &str, want: &str) {
    let errs = errors(text);
    assert!(
        errs.iter().any(|e| e == want),
        "wanted error {want:?}, got {errs:#?}"
    );
}

/// Assert one error message starts with `field: ` and contains `reason_part`.
#[track_caller]
fn has_field_error(text: &str, field: &str, reason_part: &str) {
    let errs = errors(text);
    assert!(
        errs.iter()
            .any(|e| e.starts_with(&format!("{field}: ")) && e.contains(reason_part)),
        "wanted {field}: ...{reason_part}..., got {errs:#?}"
    );
}

#[test]
fn defaults_are_filled_in() {
    let c = load(PRIMARY);
    assert_eq!(c.role, Role::Primary);
    assert_eq!(c.eal.memory, Memory::Auto);
    let nic = &c.ports["nic"];
    assert_eq!(nic.device, PortDevice::Vdev("net_ring0".into()));
    assert_eq!((nic.rx_queues, nic.tx_queues), (1, 1));
    assert_eq!((nic.rx_desc, nic.tx_desc), (1024, 1024));
    match c.link.as_ref().unwrap() {
        LinkSpec::Socket(SocketLink {
            mirror,
            secondary_out,
            vnet_hdr_support,
            reconnect_ms,
        }) => {
            assert_eq!(
                mirror.addr,
                SockAddr::Tcp("127.0.0.1:9003".parse().unwrap())
            );
            // The primary listens by default, as in QEMU's recipe.
            assert_eq!(mirror.mode, SocketMode::Server);
            assert_eq!(secondary_out.mode, SocketMode::Server);
            assert!(!vnet_hdr_support);
            assert_eq!(*reconnect_ms, 1000);
        }
        other => panic!("wrong link {other:?}"),
    }
    // main defaults to the EAL main lcore = lowest of -l.
    assert_eq!(c.lcores.main, 0);
    assert_eq!(c.lcores.mirror, Some(1));
    assert_eq!(c.lcores.redirector, Some(2));
    assert_eq!(c.lcores.compare, vec![3]);
    assert_eq!(c.lcores.rewriter, None);
    let cmp = &c.compare;
    assert_eq!(cmp.shards, 1);
    assert_eq!(cmp.timeout_ms, 3000);
    assert_eq!(cmp.scan_period_ms, 1000);
    assert_eq!(cmp.queue_size, 8192);
    assert_eq!((cmp.shard_packets, cmp.shard_bytes), (8192, 16 << 20));
    assert_eq!(cmp.table_capacity, 65536);
    assert_eq!(cmp.idle_timeout_ms, 120_000);
    assert!(cmp.bypass.is_empty());
    assert_eq!(c.rewriter.table_capacity, 65536);
    assert_eq!(c.rewriter.idle_timeout_ms, 120_000);
    assert_eq!(c.rings.size, 1024);
    // Derived: nic + pvm 2 × (1024 rx + 1024 tx) + 2 rings × 1024 + 8192 compare + 4 lcores ×
    // 384 cache + 8 bursts × 32 + 4096 socket backlog = 20224, rounded to 20479.
    assert_eq!(c.mempool.budget.total(), 20224);
    assert_eq!(
        (
            c.mempool.mbufs,
            c.mempool.derived,
            c.mempool.cache,
            c.mempool.data_room
        ),
        (20479, true, 256, 2176)
    );
    let bp = &c.backpressure;
    assert!(bp.enabled);
    // High leaves room for a full ring and two bursts in flight; low is half of it.
    assert_eq!((bp.high_packets, bp.low_packets), (8192 - 1088, 3552));
    assert_eq!(bp.high_bytes, (16 << 20) - 1088 * 1518);
    assert_eq!(bp.low_bytes, bp.high_bytes / 2);
    assert_eq!(bp.max_pause_ms, 3000);
    assert_eq!(c.idle.mode, None);
    assert_eq!(
        (c.idle.spin_loops, c.idle.spin_us, c.idle.max_sleep_us),
        (1000, 20, 100)
    );
    let m = &c.mgmt;
    assert_eq!(
        m.control_socket,
        PathBuf::from("/run/colo-proxy/primary.sock")
    );
    assert_eq!(m.control_socket_mode, 0o600);
    assert_eq!(m.control_tcp, None);
    assert_eq!(m.stats_interval_ms, 1000);
    assert!(m.xen_notify.is_none() && m.qmp.is_none() && m.capture.is_none());
    assert!(c.compare_sockets.is_none());
}

#[test]
fn secondary_and_compare_roles_defaults() {
    let s = load(SECONDARY);
    assert_eq!(s.role, Role::Secondary);
    assert_eq!(s.lcores.rewriter, Some(1));
    assert!(s.lcores.compare.is_empty());
    assert_eq!(
        s.mgmt.control_socket,
        PathBuf::from("/run/colo-proxy/secondary.sock")
    );
    let LinkSpec::Socket(SocketLink { mirror, .. }) = s.link.unwrap() else {
        panic!("socket link expected")
    };
    assert_eq!(mirror.addr, SockAddr::Unix("/tmp/m.sock".into()));
    assert_eq!(
        mirror.mode,
        SocketMode::Client,
        "the secondary connects by default"
    );

    let c = load(COMPARE);
    assert_eq!(c.role, Role::Compare);
    assert!(c.ports.is_empty() && c.link.is_none());
    let cs = c.compare_sockets.unwrap();
    assert_eq!(cs.primary_in.mode, SocketMode::Client);
    assert_eq!(cs.secondary_in.mode, SocketMode::Server);
    assert_eq!(cs.outdev.mode, SocketMode::Client);
    assert!(cs.notify_dev.is_none());
    assert!(!cs.vnet_hdr_support);
}

#[test]
fn optional_sections_parse() {
    let text = format!(
        "{PRIMARY}\n[mgmt]\ncontrol_socket = \"/tmp/p.sock\"\ncontrol_socket_mode = 0o660\n\
         control_tcp = \"127.0.0.1:9100\"\ncontrol_token = \"0123456789abcdef\"\n\
         [mgmt.xen_notify]\naddr = \"tcp:127.0.0.1:9009\"\n\
         [mgmt.qmp]\nsocket = \"/tmp/qmp.sock\"\n\
         [mgmt.capture]\ndir = \"/tmp/cap\"\nmax_files = 3\n"
    );
    let c = load(&text);
    assert_eq!(c.mgmt.control_socket_mode, 0o660);
    let (addr, token) = c.mgmt.control_tcp.clone().unwrap();
    assert_eq!(addr, "127.0.0.1:9100".parse().unwrap());
    assert_eq!(token, "0123456789abcdef");
    let x = c.mgmt.xen_notify.unwrap();
    assert_eq!(x.endpoint.mode, SocketMode::Server);
    let q = c.mgmt.qmp.unwrap();
    assert_eq!((q.checkpoint_delay_ms, q.reconnect_ms), (20_000, 1000));
    let cap = c.mgmt.capture.unwrap();
    assert_eq!(
        (cap.max_files, cap.max_file_bytes, cap.context_packets),
        (3, 64 << 20, 8)
    );
    assert!(!cap.enabled);
}

#[test]
fn compare_lcores_expand_to_one_per_shard() {
    let shared = PRIMARY.to_string() + "[compare]\nshards = 3\n";
    assert_eq!(load(&shared).lcores.compare, vec![3, 3, 3]);
    let list = shared.replace("compare = 3", "compare = [1, 2, 3]");
    assert_eq!(load(&list).lcores.compare, vec![1, 2, 3]);
    let one = shared.replace("compare = 3", "compare = [2]");
    assert_eq!(load(&one).lcores.compare, vec![2, 2, 2]);
    let c = load(&list);
    assert_eq!(c.lcores.stages_on(1), vec!["mirror", "compare0"]);
    assert_eq!(
        c.lcores.used().into_iter().collect::<Vec<_>>(),
        vec![0, 1, 2, 3]
    );
}

#[test]
fn main_lcore_follows_eal() {
    let t = PRIMARY.replace(
        r#"["-l", "0-3", "--no-pci"]"#,
        r#"["-l", "0-3", "--main-lcore", "2"]"#,
    );
    assert_eq!(load(&t).lcores.main, 2);
    let t = PRIMARY.replace(r#"["-l", "0-3", "--no-pci"]"#, r#"["-c", "0xe"]"#);
    assert_eq!(load(&t).lcores.main, 1);
    let t = PRIMARY.replace(
        r#"["-l", "0-3", "--no-pci"]"#,
        r#"["--lcores=(0-1)@0,2@1,3"]"#,
    );
    assert_eq!(load(&t).lcores.main, 0);
}

fn example(name: &str) -> Config {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("dpdk-config")
        .join(name);
    match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("{}: {e}", path.display()),
    }
}

#[test]
fn every_example_loads() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dpdk-config");
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            n += 1;
        }
    }
    assert!(n >= 6, "expected at least 6 examples, found {n}");
}

#[test]
fn examples_describe_what_they_say() {
    let p = example("primary.toml");
    assert_eq!(p.role, Role::Primary);
    assert!(matches!(p.ports["nic"].device, PortDevice::Pci(_)));
    assert_eq!(
        p.ports["pvm"].device,
        PortDevice::Vdev("net_vhost0,iface=/var/run/colo/pvm.sock".into())
    );
    assert!(matches!(p.link, Some(LinkSpec::Port { .. })));
    assert_eq!(p.compare.shards as usize, p.lcores.compare.len());

    let s = example("secondary.toml");
    assert_eq!(s.role, Role::Secondary);
    assert!(matches!(s.ports["svm"].device, PortDevice::Vdev(ref d) if d.starts_with("net_vhost")));

    for name in ["demo-primary.toml", "demo-secondary.toml", "vdev.toml"] {
        let c = example(name);
        assert!(
            c.ports
                .values()
                .all(|p| matches!(p.device, PortDevice::Vdev(_))),
            "{name} must use only virtual devices"
        );
        let args = c.eal_args_with_probe(&[], || true);
        assert!(args.iter().any(|a| a == "--no-huge"), "{name}: {args:?}");
    }
    let d = example("compare-dropin.toml");
    assert_eq!(d.role, Role::Compare);
    assert!(d.compare_sockets.unwrap().notify_dev.is_some());
}

// ---- errors ----

#[test]
fn unknown_field_top_level_keeps_toml_message() {
    let errs = errors(&format!("{PRIMARY}\n").replacen(
        "role = \"primary\"",
        "role = \"primary\"\nfoo = 1",
        1,
    ));
    assert_eq!(errs.len(), 1);
    assert!(errs[0].contains("unknown field `foo`"), "{errs:?}");
    assert!(errs[0].contains("line 3"), "{errs:?}");
}

#[test]
fn unknown_field_nested() {
    let errs = errors(&format!("{PRIMARY}[compare]\ntimeot_ms = 5\n"));
    assert!(errs[0].contains("unknown field `timeot_ms`"), "{errs:?}");
    assert!(
        errs[0].contains("timeout_ms"),
        "toml lists the expected fields: {errs:?}"
    );
    let errs = errors(&format!(
        "{PRIMARY}[mgmt.qmp]\nsocket = \"/q\"\nsockt = 1\n"
    ));
    assert!(errs[0].contains("unknown field `sockt`"), "{errs:?}");
    let errs =
        errors(&PRIMARY.replace("vdev = \"net_ring0\"", "vdev = \"net_ring0\"\nrx_dsc = 64"));
    assert!(errs[0].contains("unknown field `rx_dsc`"), "{errs:?}");
    let errs = errors(&format!(
        "{PRIMARY}[[compare.bypass]]\nproto = \"tcp\"\nport = \"1\"\n"
    ));
    assert!(errs[0].contains("unknown field `port`"), "{errs:?}");
}

#[test]
fn wrong_types_are_parse_errors() {
    let errs = errors(&PRIMARY.replace("kind = \"socket\"", "kind = \"pigeon\""));
    assert!(errs[0].contains("pigeon"), "{errs:?}");
    let errs = errors(&PRIMARY.replace("compare = 3", "compare = \"x\""));
    assert!(errs[0].contains("lcore id"), "{errs:?}");
    let errs = errors(&PRIMARY.replace("role = \"primary\"", "role = \"tertiary\""));
    assert!(errs[0].contains("tertiary"), "{errs:?}");
}

#[test]
fn port_missing() {
    has_error(
        &PRIMARY.replace("[ports.pvm]\nvdev = \"net_ring1\"", ""),
        "ports.pvm: missing (role \"primary\" needs it)",
    );
    has_error(
        &SECONDARY.replace("[ports.svm]\nvdev = \"net_ring0\"", ""),
        "ports.svm: missing (role \"secondary\" needs it)",
    );
    // link over a port needs that port.
    let t = PRIMARY.replace(
        "kind = \"socket\"\nmirror = { addr = \"tcp:127.0.0.1:9003\" }\nsecondary_out = { addr = \"tcp:127.0.0.1:9004\" }",
        "kind = \"port\"\nport = \"wire\"",
    );
    has_field_error(&t, "ports.wire", "missing");
}

#[test]
fn port_device_errors() {
    has_field_error(
        &PRIMARY.replace(
            "vdev = \"net_ring0\"",
            "vdev = \"net_ring0\"\npci = \"0000:01:00.0\"",
        ),
        "ports.nic",
        "both pci and vdev given",
    );
    has_field_error(
        &PRIMARY.replace("vdev = \"net_ring0\"", "rx_queues = 2"),
        "ports.nic",
        "neither pci nor vdev",
    );
    has_field_error(
        &PRIMARY.replace("vdev = \"net_ring0\"", "pci = \"01:00\""),
        "ports.nic.pci",
        "not a PCI address",
    );
    // --no-pci in the base config forbids PCI ports.
    has_field_error(
        &PRIMARY.replace("vdev = \"net_ring0\"", "pci = \"0000:01:00.0\""),
        "ports.nic.pci",
        "--no-pci",
    );
    has_field_error(
        &PRIMARY.replace("vdev = \"net_ring1\"", "vdev = \"net_ring0,foo=1\""),
        "ports.pvm",
        "also ports.nic",
    );
    has_field_error(
        &format!("{PRIMARY}[ports.extra]\nvdev = \"net_null0\"\n"),
        "ports.extra",
        "not used by role \"primary\"",
    );
    has_field_error(
        &COMPARE.replace("[lcores]", "[ports.nic]\nvdev = \"net_null0\"\n[lcores]"),
        "ports.nic",
        "uses no DPDK ports",
    );
}

#[test]
fn desc_must_be_power_of_two_in_range() {
    for bad in ["1000", "32", "32768"] {
        has_field_error(
            &PRIMARY.replace(
                "vdev = \"net_ring0\"",
                &format!("vdev = \"net_ring0\"\nrx_desc = {bad}"),
            ),
            "ports.nic.rx_desc",
            "not a power of two within 64..=16384",
        );
    }
    has_field_error(
        &PRIMARY.replace(
            "vdev = \"net_ring0\"",
            "vdev = \"net_ring0\"\ntx_desc = 100",
        ),
        "ports.nic.tx_desc",
        "power of two",
    );
    load(&PRIMARY.replace(
        "vdev = \"net_ring0\"",
        "vdev = \"net_ring0\"\nrx_desc = 64\ntx_desc = 4096",
    ));
    has_field_error(
        &PRIMARY.replace(
            "vdev = \"net_ring0\"",
            "vdev = \"net_ring0\"\nrx_queues = 0",
        ),
        "ports.nic.rx_queues",
        "not within 1..=128",
    );
}

#[test]
fn lcore_outside_eal_set() {
    has_error(
        &PRIMARY.replace("mirror = 1", "mirror = 7"),
        "lcores.mirror: lcore 7 is not in the EAL lcore set 0-3 (eal.args)",
    );
    has_field_error(
        &PRIMARY.replace("compare = 3", "compare = [4]"),
        "lcores.compare",
        "lcore 4",
    );
    has_field_error(
        &PRIMARY.replace("[lcores]", "[lcores]\nmain = 9"),
        "lcores.main",
        "lcore 9",
    );
    let t = PRIMARY.replace(r#"["-l", "0-3", "--no-pci"]"#, r#"["-c", "0x5"]"#);
    has_field_error(&t, "lcores.mirror", "not in the EAL lcore set 0,2");
    has_field_error(
        &PRIMARY.replace(r#"["-l", "0-3", "--no-pci"]"#, r#"["--no-pci"]"#),
        "eal.args",
        "no -l, --lcores or -c",
    );
    has_field_error(
        &PRIMARY.replace(r#"["-l", "0-3", "--no-pci"]"#, r#"["-l", "3-1"]"#),
        "eal.args",
        "reversed",
    );
}

#[test]
fn stages_required_and_forbidden_by_role() {
    has_error(
        &PRIMARY.replace("redirector = 2\n", ""),
        "lcores.redirector: missing (role \"primary\" needs it)",
    );
    has_error(
        &PRIMARY.replace("mirror = 1", "mirror = 1\nrewriter = 1"),
        "lcores.rewriter: stage not used by role \"primary\"",
    );
    has_error(
        &SECONDARY.replace("rewriter = 1", ""),
        "lcores.rewriter: missing (role \"secondary\" needs it)",
    );
    has_error(
        &SECONDARY.replace("rewriter = 1", "rewriter = 1\ncompare = 1"),
        "lcores.compare: stage not used by role \"secondary\"",
    );
    has_error(
        &COMPARE.replace("compare = 1", ""),
        "lcores.compare: missing (role \"compare\" needs it)",
    );
}

#[test]
fn shard_count_checks() {
    has_error(
        &format!("{PRIMARY}[compare]\nshards = 0\n"),
        "compare.shards: must be at least 1",
    );
    has_field_error(
        &format!("{PRIMARY}[compare]\nshards = 65\n"),
        "compare.shards",
        "maximum 64",
    );
    load(&format!("{PRIMARY}[compare]\nshards = 64\n"));
    has_error(
        &format!("{PRIMARY}[compare]\nshards = 3\n").replace("compare = 3", "compare = [1, 2]"),
        "lcores.compare: 2 entries but compare.shards = 3 (give one lcore per shard, or one shared by all)",
    );
    has_field_error(
        &PRIMARY.replace("compare = 3", "compare = []"),
        "lcores.compare",
        "0 entries",
    );
}

#[test]
fn zero_timeouts_rejected() {
    for (table, field) in [
        ("compare", "timeout_ms"),
        ("compare", "scan_period_ms"),
        ("compare", "idle_timeout_ms"),
        ("rewriter", "idle_timeout_ms"),
        ("mgmt", "stats_interval_ms"),
    ] {
        has_error(
            &format!("{PRIMARY}[{table}]\n{field} = 0\n"),
            &format!("{table}.{field}: must be positive (0 is rejected)"),
        );
    }
    has_error(
        &SECONDARY.replace("kind = \"socket\"", "kind = \"socket\"\nreconnect_ms = 0"),
        "link.reconnect_ms: must be positive (0 is rejected)",
    );
}

#[test]
fn control_tcp_rules() {
    has_error(
        &format!("{PRIMARY}[mgmt]\ncontrol_tcp = \"127.0.0.1:9100\"\n"),
        "mgmt.control_tcp: TCP control needs mgmt.control_token",
    );
    has_field_error(
        &format!("{PRIMARY}[mgmt]\ncontrol_tcp = \"0.0.0.0:9100\"\ncontrol_token = \"0123456789abcdef\"\n"),
        "mgmt.control_tcp",
        "not a loopback address",
    );
    has_field_error(
        &format!("{PRIMARY}[mgmt]\ncontrol_tcp = \"10.1.2.3:9100\"\ncontrol_token = \"0123456789abcdef\"\n"),
        "mgmt.control_tcp",
        "not a loopback address",
    );
    load(&format!(
        "{PRIMARY}[mgmt]\ncontrol_tcp = \"[::1]:9100\"\ncontrol_token = \"0123456789abcdef\"\n"
    ));
    has_field_error(
        &format!("{PRIMARY}[mgmt]\ncontrol_tcp = \"127.0.0.1:9100\"\ncontrol_token = \"short\"\n"),
        "mgmt.control_token",
        "at least 16",
    );
    has_field_error(
        &format!("{PRIMARY}[mgmt]\ncontrol_token = \"0123456789abcdef\"\n"),
        "mgmt.control_token",
        "only used with mgmt.control_tcp",
    );
    has_field_error(
        &format!("{PRIMARY}[mgmt]\ncontrol_socket_mode = 0o1777\n"),
        "mgmt.control_socket_mode",
        "not a permission mode",
    );
}

#[test]
fn bypass_rule_errors() {
    let rule = |body: &str| format!("{PRIMARY}[[compare.bypass]]\n{body}\n");
    has_field_error(
        &rule("prefix = \"10.0.0.0/33\""),
        "compare.bypass[0].prefix",
        "not within 0..=32",
    );
    has_field_error(
        &rule("prefix = \"fd00::/129\""),
        "compare.bypass[0].prefix",
        "not within 0..=128",
    );
    has_field_error(
        &rule("prefix = \"10.0.0.1/8\""),
        "compare.bypass[0].prefix",
        "host bits set",
    );
    has_field_error(
        &rule("prefix = \"10.0.0/8\""),
        "compare.bypass[0].prefix",
        "not an IPv4 or IPv6",
    );
    has_field_error(
        &rule("proto = \"tcp\"\nports = \"5100-5000\""),
        "compare.bypass[0].ports",
        "reversed",
    );
    has_field_error(
        &rule("proto = \"tcp\"\nports = \"70000\""),
        "compare.bypass[0].ports",
        "not a port number",
    );
    has_field_error(
        &rule("proto = \"tcp\"\nports = \"a-b\""),
        "compare.bypass[0].ports",
        "not a port number",
    );
    has_field_error(
        &rule("proto = \"icmp\"\nports = \"1\""),
        "compare.bypass[0].ports",
        "ICMP has no ports",
    );
    has_field_error(
        &rule("proto = \"sctp\""),
        "compare.bypass[0].proto",
        "not one of",
    );
    has_field_error(
        &rule("proto = \"icmp\"\nprefix = \"fd00::/8\""),
        "compare.bypass[0].proto",
        "icmpv6",
    );
    // The index names the offending rule.
    let two = format!(
        "{PRIMARY}[[compare.bypass]]\nproto = \"udp\"\n[[compare.bypass]]\nports = \"9-1\"\n"
    );
    has_field_error(&two, "compare.bypass[1].ports", "reversed");
}

#[test]
fn bypass_rules_are_capped() {
    let rules = |n: usize| {
        let mut s = PRIMARY.to_string();
        for i in 0..n {
            s.push_str(&format!(
                "[[compare.bypass]]\nproto = \"udp\"\nports = \"{}\"\n",
                1000 + i
            ));
        }
        s
    };
    let max = colo_proxy::config::bypass::MAX_RULES;
    let cfg = load(&rules(max));
    assert_eq!(cfg.compare.bypass.len(), max);
    has_field_error(&rules(max + 1), "compare.bypass", "at most 64");
}

#[test]
fn link_errors() {
    has_error(
        &PRIMARY.replace("[link]\nkind = \"socket\"\nmirror = { addr = \"tcp:127.0.0.1:9003\" }\nsecondary_out = { addr = \"tcp:127.0.0.1:9004\" }", ""),
        "link: missing (role \"primary\" needs it)",
    );
    has_field_error(
        &PRIMARY.replace("tcp:127.0.0.1:9003", "udp:1.2.3.4:5"),
        "link.mirror.addr",
        "expected",
    );
    has_field_error(
        &PRIMARY.replace("tcp:127.0.0.1:9003", "tcp:localhost:5"),
        "link.mirror.addr",
        "tcp:IP:PORT",
    );
    has_field_error(
        &PRIMARY.replace("tcp:127.0.0.1:9003", "tcp:127.0.0.1:9004"),
        "link.secondary_out",
        "same address as link.mirror",
    );
    has_error(
        &PRIMARY.replace(
            "kind = \"socket\"",
            "kind = \"socket\"\nether_type = 0x88B5",
        ),
        "link.ether_type: only valid with kind = \"socket\""
            .replace("socket", "port")
            .as_str(),
    );
    let port_link = PRIMARY.replace(
        "kind = \"socket\"\nmirror = { addr = \"tcp:127.0.0.1:9003\" }\nsecondary_out = { addr = \"tcp:127.0.0.1:9004\" }",
        "kind = \"port\"",
    ) + "[ports.link]\nvdev = \"net_ring2\"\n";
    let c = load(&port_link);
    assert_eq!(
        c.link,
        Some(LinkSpec::Port {
            port: "link".into(),
            ether_type: 0x88B5,
            peer_mac: None
        })
    );
    has_field_error(
        &port_link.replace("kind = \"port\"", "kind = \"port\"\nether_type = 0x0100"),
        "link.ether_type",
        "length",
    );
    has_field_error(
        &port_link.replace(
            "kind = \"port\"",
            "kind = \"port\"\npeer_mac = \"02:00:00:00:00\"",
        ),
        "link.peer_mac",
        "not a MAC",
    );
    has_field_error(
        &port_link.replace(
            "kind = \"port\"",
            "kind = \"port\"\nmirror = { addr = \"unix:/x\" }",
        ),
        "link.mirror",
        "only valid with kind = \"socket\"",
    );
    has_field_error(
        &port_link.replace("kind = \"port\"", "kind = \"port\"\nport = \"nic\""),
        "link.port",
        "own port",
    );
    let mac = load(&port_link.replace(
        "kind = \"port\"",
        "kind = \"port\"\npeer_mac = \"02:AA:00:00:00:01\"",
    ));
    assert!(matches!(
        mac.link,
        Some(LinkSpec::Port {
            peer_mac: Some([2, 0xaa, 0, 0, 0, 1]),
            ..
        })
    ));
}

#[test]
fn compare_role_errors() {
    has_error(
        &COMPARE.replace("[compare_sockets]\nprimary_in = { addr = \"tcp:127.0.0.1:9001\" }\nsecondary_in = { addr = \"tcp:127.0.0.1:9004\" }\noutdev = { addr = \"tcp:127.0.0.1:9005\" }", ""),
        "compare_sockets: missing (role \"compare\" needs it)",
    );
    has_error(
        &COMPARE.replace("outdev = { addr = \"tcp:127.0.0.1:9005\" }", ""),
        "compare_sockets.outdev: missing",
    );
    has_field_error(
        &COMPARE.replace("9005", "9001"),
        "compare_sockets.outdev",
        "same address as compare_sockets.primary_in",
    );
    has_field_error(
        &(COMPARE.to_string() + "[link]\nkind = \"socket\"\n"),
        "link",
        "not used by role \"compare\"",
    );
    has_field_error(
        &(PRIMARY.to_string() + "[compare_sockets]\n"),
        "compare_sockets",
        "only used by role \"compare\"",
    );
    let both = COMPARE.replace(
        "outdev = { addr = \"tcp:127.0.0.1:9005\" }",
        "outdev = { addr = \"tcp:127.0.0.1:9005\" }\nnotify_dev = { addr = \"unix:/tmp/n\" }",
    ) + "[mgmt.xen_notify]\naddr = \"unix:/tmp/x\"\n";
    has_field_error(&both, "mgmt.xen_notify", "give only one");
}

#[test]
fn sizes_checked() {
    has_field_error(
        &format!("{PRIMARY}[rings]\nsize = 1000\n"),
        "rings.size",
        "power of two",
    );
    has_field_error(
        &format!("{PRIMARY}[mempool]\ncache = 600\n"),
        "mempool.cache",
        "512",
    );
    has_field_error(
        &format!("{PRIMARY}[mempool]\nmbufs = 100\n"),
        "mempool.mbufs",
        "not within 1023..",
    );
    has_field_error(
        &format!("{PRIMARY}[mempool]\ndata_room = 100\n"),
        "mempool.data_room",
        "below 256",
    );
    // 2 ports x 1024 RX descriptors alone need more than 2000 mbufs.
    has_field_error(
        &format!("{PRIMARY}[mempool]\nmbufs = 2000\ncache = 64\n"),
        "mempool.mbufs",
        "cannot hold",
    );
    has_field_error(
        &format!("{PRIMARY}[compare]\nqueue_size = 0\n"),
        "compare.queue_size",
        "not within",
    );
    has_field_error(
        &format!("{PRIMARY}[rewriter]\ntable_capacity = 0\n"),
        "rewriter.table_capacity",
        "not within",
    );
}

#[test]
fn all_errors_reported_at_once() {
    let t = format!("{PRIMARY}[compare]\nshards = 0\ntimeout_ms = 0\n[rings]\nsize = 3\n")
        .replace("mirror = 1", "mirror = 9")
        .replace(
            "vdev = \"net_ring1\"",
            "vdev = \"net_ring1\"\npci = \"0000:01:00.0\"",
        );
    let errs = errors(&t);
    for field in [
        "compare.shards",
        "compare.timeout_ms",
        "rings.size",
        "lcores.mirror",
        "ports.pvm",
    ] {
        assert!(
            errs.iter().any(|e| e.starts_with(field)),
            "{field} missing from {errs:#?}"
        );
    }
    // Display joins them one per line.
    let err = Config::from_toml_str(&t).unwrap_err();
    assert!(matches!(err, ConfigError::Invalid(ref v) if v.len() == errs.len()));
    assert_eq!(err.to_string().lines().count(), errs.len());
}

#[test]
fn missing_file_is_io_error() {
    let err = Config::load(std::path::Path::new("/nonexistent/colo.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Io { .. }));
    assert!(err.to_string().contains("/nonexistent/colo.toml"));
}

#[test]
fn unknown_field_in_inline_endpoint() {
    let errs = errors(&PRIMARY.replace(
        "{ addr = \"tcp:127.0.0.1:9003\" }",
        "{ addr = \"tcp:127.0.0.1:9003\", mdoe = \"server\" }",
    ));
    assert!(errs[0].contains("unknown field `mdoe`"), "{errs:?}");
    assert!(errs[0].contains("line 15"), "{errs:?}");
}

#[test]
fn eal_args_shape_errors() {
    has_field_error(
        &PRIMARY.replace(
            r#"["-l", "0-3", "--no-pci"]"#,
            r#"["colo-proxy", "-l", "0-3"]"#,
        ),
        "eal.args",
        "program name is added automatically",
    );
    has_field_error(
        &PRIMARY.replace(
            r#"["-l", "0-3", "--no-pci"]"#,
            r#"["-l", "0-3", "--main-lcore", "x"]"#,
        ),
        "eal.args",
        "bad --main-lcore",
    );
    has_field_error(
        &PRIMARY.replace(
            r#"["-l", "0-3", "--no-pci"]"#,
            r#"["-l", "0-3", "--main-lcore", "5"]"#,
        ),
        "eal.args --main-lcore",
        "lcore 5 is not in the EAL lcore set 0-3",
    );
}

#[test]
fn mempool_size_is_derived_from_what_the_pipeline_holds() {
    // More shards: more rings, compare queues and nic tx queues, and the derived pool grows.
    let one = Config::from_toml_str(PRIMARY).unwrap();
    let two = Config::from_toml_str(
        &format!("{PRIMARY}[compare]\nshards = 2\n").replace("compare = 3", "compare = [2, 3]"),
    )
    .unwrap();
    let (b1, b2) = (one.mempool.budget, two.mempool.budget);
    assert_eq!(b2.compare, 2 * b1.compare);
    assert_eq!(b2.rings, 2 * b1.rings);
    assert_eq!(b2.ports, b1.ports + 1024, "one more nic tx queue");
    assert!(two.mempool.mbufs as u64 > b2.total());
    // Smaller queues, smaller pool.
    let small = Config::from_toml_str(&format!(
        "{PRIMARY}[compare]\nqueue_size = 1024\nshard_packets = 1024\n"
    ))
    .unwrap();
    assert_eq!(small.mempool.budget.compare, 1024);
    assert_eq!(small.mempool.mbufs, 20479 - 7168);
    // The secondary holds no compare queues.
    let sec = Config::from_toml_str(SECONDARY).unwrap();
    assert_eq!(
        (sec.mempool.budget.compare, sec.mempool.budget.rings),
        (0, 0)
    );
    assert!(sec.mempool.derived);
    // A set size that holds everything is kept as written.
    let set = Config::from_toml_str(&format!("{PRIMARY}[mempool]\nmbufs = 20224\n")).unwrap();
    assert_eq!((set.mempool.mbufs, set.mempool.derived), (20224, false));
}

#[test]
fn set_mempool_too_small_for_the_compare_queues_names_both_fields() {
    // Holds the ports and rings but not 8192 compare packets.
    let err = Config::from_toml_str(&format!("{PRIMARY}[mempool]\nmbufs = 20223\n")).unwrap_err();
    let msgs = err.messages();
    let m = msgs
        .iter()
        .find(|m| m.starts_with("mempool.mbufs:"))
        .unwrap_or_else(|| panic!("no mempool.mbufs error in {msgs:?}"));
    assert!(m.contains("compare.shard_packets"), "{m}");
    assert!(m.contains("20224"), "{m}");
    assert!(m.contains("compare 8192"), "{m}");
    // Lowering the compare queues makes the same size fit.
    Config::from_toml_str(&format!(
        "{PRIMARY}[mempool]\nmbufs = 20223\n[compare]\nshard_packets = 4096\nqueue_size = 4096\n"
    ))
    .unwrap();
}

#[test]
fn backpressure_and_shard_limits_validated() {
    has_field_error(
        &format!("{PRIMARY}[compare]\nshard_packets = 10\n"),
        "compare.shard_packets",
        "not within 64..",
    );
    has_field_error(
        &format!("{PRIMARY}[compare]\nshard_bytes = 1000\n"),
        "compare.shard_bytes",
        "not within",
    );
    has_field_error(
        &format!("{PRIMARY}[backpressure]\nhigh_packets = 9000\n"),
        "backpressure.high_packets",
        "compare.shard_packets = 8192",
    );
    has_field_error(
        &format!("{PRIMARY}[backpressure]\nhigh_packets = 0\n"),
        "backpressure.high_packets",
        "positive",
    );
    has_field_error(
        &format!("{PRIMARY}[backpressure]\nhigh_packets = 100\nlow_packets = 100\n"),
        "backpressure.low_packets",
        "below backpressure.high_packets = 100",
    );
    has_field_error(
        &format!("{PRIMARY}[backpressure]\nhigh_bytes = 99999999\n"),
        "backpressure.high_bytes",
        "compare.shard_bytes",
    );
    has_field_error(
        &format!("{PRIMARY}[backpressure]\nhigh_bytes = 100000\nlow_bytes = 200000\n"),
        "backpressure.low_bytes",
        "below",
    );
    has_field_error(
        &format!("{PRIMARY}[backpressure]\nmax_pause_ms = 99999999\n"),
        "backpressure.max_pause_ms",
        "not within",
    );
    let unknown = errors(&format!("{PRIMARY}[backpressure]\nhigh = 1\n"));
    assert!(
        unknown.iter().any(|e| e.contains("unknown field `high`")),
        "{unknown:?}"
    );
    // Set values are kept; a set high without low gets half of it.
    let c = Config::from_toml_str(&format!(
        "{PRIMARY}[backpressure]\nenabled = false\nhigh_packets = 4000\nhigh_bytes = 4000000\nmax_pause_ms = 0\n"
    ))
    .unwrap();
    let b = &c.backpressure;
    assert!(!b.enabled);
    assert_eq!((b.high_packets, b.low_packets), (4000, 2000));
    assert_eq!((b.high_bytes, b.low_bytes), (4_000_000, 2_000_000));
    assert_eq!(b.max_pause_ms, 0);
    // The defaults follow the queue limits: the smaller of queue_size and shard_packets.
    let c = Config::from_toml_str(&format!(
        "{PRIMARY}[compare]\nqueue_size = 4096\ntimeout_ms = 500\n[rings]\nsize = 512\n"
    ))
    .unwrap();
    assert_eq!(
        (c.backpressure.high_packets, c.backpressure.low_packets),
        (4096 - 576, 1760)
    );
    assert_eq!(c.backpressure.max_pause_ms, 500);
}

#[test]
fn wire_ports_are_one_device_kind_with_a_checked_name() {
    let c = load(&PRIMARY.replace("vdev = \"net_ring0\"", "wire = \"client\""));
    assert_eq!(
        c.ports["nic"].device,
        colo_proxy::config::PortDevice::Wire("client".into())
    );
    has_field_error(
        &PRIMARY.replace(
            "vdev = \"net_ring0\"",
            "vdev = \"net_ring0\"\nwire = \"client\"",
        ),
        "ports.nic",
        "wire and a device given",
    );
    has_field_error(
        &PRIMARY.replace("vdev = \"net_ring0\"", "wire = \"no spaces\""),
        "ports.nic.wire",
        "not a wire name",
    );
    // Two ports on one wire would be a loop, like one device named twice.
    has_field_error(
        &PRIMARY
            .replace("vdev = \"net_ring0\"", "wire = \"w\"")
            .replace("vdev = \"net_ring1\"", "wire = \"w\""),
        "ports.pvm",
        "also ports.nic",
    );
}
