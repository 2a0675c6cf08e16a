//! `colo-proxy check-config` as a process: exit codes and messages.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn run(file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .arg("check-config")
        .arg(file)
        .output()
        .expect("spawn colo-proxy")
}

fn temp_file(name: &str, text: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("colo-config-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn valid_example_prints_summary_and_exits_0() {
    let f = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dpdk-config/vdev.toml");
    let out = run(&f);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "role: primary",
        "nic    vdev net_pcap0",
        "link: port link, ether_type 0x88b5",
        "1: mirror redirector compare0",
        "compare: 1 shard(s), timeout 3000 ms",
        "bypass[0]: udp, ports 5000-5100, 10.0.0.0/8",
        "bypass[1]: icmpv6, any port, fd00::/8",
        "rings: 512 slots",
        "eal args: colo-proxy -l 0-1 --no-pci --no-huge -m 1024 --no-shconf --vdev ",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
}

#[test]
fn invalid_config_lists_every_error_and_exits_2() {
    let f = temp_file(
        "bad.toml",
        "role = \"primary\"\n[eal]\nargs = [\"-l\", \"0-1\"]\n[ports.nic]\nvdev = \"net_null0\"\n\
         [link]\nkind = \"socket\"\nmirror = { addr = \"tcp:127.0.0.1:1\" }\n\
         secondary_out = { addr = \"tcp:127.0.0.1:2\" }\n[lcores]\nmirror = 1\nredirector = 1\ncompare = 5\n\
         [compare]\nshards = 0\n",
    );
    let out = run(&f);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let prefix = format!("error: {}: ", f.display());
    for want in [
        "ports.pvm: missing (role \"primary\" needs it)",
        "compare.shards: must be at least 1",
    ] {
        assert!(
            stderr.contains(&format!("{prefix}{want}")),
            "missing {want:?} in:\n{stderr}"
        );
    }
    assert!(stderr.lines().all(|l| l.starts_with(&prefix)), "{stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn unknown_field_shows_line_and_exits_2() {
    let f = temp_file(
        "unknown.toml",
        "role = \"secondary\"\n\n[idle]\nbackof = true\n",
    );
    let out = run(&f);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(&format!("error: {}: ", f.display())),
        "{stderr}"
    );
    assert!(stderr.contains("line 4"), "{stderr}");
    assert!(stderr.contains("unknown field `backof`"), "{stderr}");
}

#[test]
fn missing_file_exits_2() {
    let f = Path::new("/nonexistent/dir/colo.toml");
    let out = run(f);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("error: /nonexistent/dir/colo.toml: cannot read"),
        "{stderr}"
    );
}

#[test]
fn memory_estimate_scales_with_the_tables() {
    let base = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dpdk-config/veth-primary.toml"),
    )
    .unwrap();
    let compare_mib = |table: Option<u32>| -> f64 {
        let text = match table {
            None => base.clone(),
            Some(n) if base.contains("\n[compare]\n") => base.replacen(
                "\n[compare]\n",
                &format!("\n[compare]\ntable_capacity = {n}\n"),
                1,
            ),
            Some(n) => format!("{base}\n[compare]\ntable_capacity = {n}\n"),
        };
        let out = run(&temp_file(&format!("mem-{table:?}.toml"), &text));
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        assert_eq!(
            out.status.code(),
            Some(0),
            "{stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for want in [
            "memory (estimate):",
            "mempool",
            "ports.nic",
            "af_packet",
            "total",
        ] {
            assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
        }
        let line = stdout
            .lines()
            .find(|l| l.trim_start().starts_with("compare ") && l.contains("MiB"))
            .unwrap_or_else(|| panic!("no compare memory line:\n{stdout}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let small = compare_mib(None);
    let million = compare_mib(Some(1 << 20));
    // 16x the connections: the table dominates, so nearly 16x the memory.
    assert!(million > 12.0 * small, "{small} MiB -> {million} MiB");
}

#[test]
fn run_refuses_wire_ports_before_eal_and_check_config_shows_them() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("dpdk-config/vdev.toml"),
    )
    .unwrap()
    .replace(
        "vdev = \"net_pcap0,rx_pcap=/tmp/colo-client.pcap,tx_pcap=/tmp/colo-released.pcap\"",
        "wire = \"client\"",
    );
    assert!(
        text.contains("wire = \"client\""),
        "vdev.toml changed: {text}"
    );
    let f = temp_file("wire.toml", &text);
    let out = run(&f);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("wire client (in-process)"), "{stdout}");
    let out = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args(["run", "--config"])
        .arg(&f)
        .output()
        .expect("spawn colo-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("ports.nic: a wire port connects pipelines inside one process"),
        "{stderr}"
    );
    assert!(!stderr.contains("EAL"), "refused before EAL: {stderr}");
}
