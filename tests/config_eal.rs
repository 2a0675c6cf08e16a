//! EAL argument building from the config, overrides, memory modes and lcore-set parsing.

use colo_proxy::config::eal::{
    lcore_set, meminfo_has_free_hugepages, merge, parse_corelist, parse_coremask, parse_lcores_opt,
    with_driver_defaults, AF_PACKET_FRAMES,
};
use colo_proxy::config::Config;

fn s(v: &[&str]) -> Vec<String> {
    v.iter().map(|x| x.to_string()).collect()
}

fn cfg(eal: &str, memory: &str, ports: &str) -> Config {
    let text = format!(
        r#"
role = "primary"
[eal]
args = {eal}
memory = "{memory}"
{ports}
[link]
kind = "socket"
mirror = {{ addr = "tcp:127.0.0.1:9003" }}
secondary_out = {{ addr = "tcp:127.0.0.1:9004" }}
[lcores]
mirror = 1
redirector = 1
compare = 1
"#
    );
    Config::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

const VDEV_PORTS: &str =
    "[ports.nic]\nvdev = \"net_ring0\"\n[ports.pvm]\nvdev = \"net_vhost0,iface=/tmp/pvm.sock\"\n";
const PCI_PORTS: &str =
    "[ports.nic]\npci = \"0000:01:00.0\"\n[ports.pvm]\nvdev = \"net_vhost0,iface=/tmp/pvm.sock\"\n";

#[test]
fn program_config_ports_then_overrides() {
    let c = cfg(r#"["-l", "0-1", "--no-pci"]"#, "no-huge", VDEV_PORTS);
    let args = c.eal_args_with_probe(&s(&["--log-level", "8"]), || {
        panic!("no probe in no-huge mode")
    });
    assert_eq!(
        args,
        s(&[
            "colo-proxy",
            "-l",
            "0-1",
            "--no-pci",
            "--no-huge",
            "-m",
            "1024",
            "--no-shconf",
            "--vdev",
            "net_ring0",
            "--vdev",
            "net_vhost0,iface=/tmp/pvm.sock",
            "--log-level",
            "8",
        ])
    );
}

#[test]
fn auto_memory_uses_the_probe() {
    let c = cfg(r#"["-l", "0-1"]"#, "auto", VDEV_PORTS);
    let with = c.eal_args_with_probe(&[], || true);
    assert!(with.contains(&"--in-memory".to_string()), "{with:?}");
    assert!(!with.contains(&"--no-huge".to_string()));
    let without = c.eal_args_with_probe(&[], || false);
    let tail: Vec<_> = without[3..7].to_vec();
    assert_eq!(
        tail,
        s(&["--no-huge", "-m", "1024", "--no-shconf"]),
        "{without:?}"
    );
    assert!(!without.contains(&"--in-memory".to_string()));
}

#[test]
fn hugepages_mode_adds_nothing() {
    let c = cfg(r#"["-l", "0-1"]"#, "hugepages", VDEV_PORTS);
    let args = c.eal_args_with_probe(&[], || false);
    for f in ["--no-huge", "--in-memory", "--no-shconf", "-m"] {
        assert!(!args.contains(&f.to_string()), "{f} in {args:?}");
    }
}

#[test]
fn explicit_memory_options_win_over_the_mode() {
    // In the file.
    let c = cfg(
        r#"["-l", "0-1", "--no-huge", "-m", "512"]"#,
        "auto",
        VDEV_PORTS,
    );
    let args = c.eal_args_with_probe(&[], || true);
    assert_eq!(
        &args[..6],
        &s(&["colo-proxy", "-l", "0-1", "--no-huge", "-m", "512"])[..]
    );
    assert!(!args.contains(&"--in-memory".to_string()));
    // On the command line.
    let c = cfg(r#"["-l", "0-1"]"#, "no-huge", VDEV_PORTS);
    let args = c.eal_args_with_probe(&s(&["--in-memory"]), || false);
    assert!(!args.contains(&"--no-huge".to_string()), "{args:?}");
    assert_eq!(args.last().unwrap(), "--in-memory");
}

#[test]
fn override_replaces_same_option_and_aliases() {
    let c = cfg(
        r#"["-l", "0-1", "-n", "4", "--file-prefix=a"]"#,
        "hugepages",
        VDEV_PORTS,
    );
    let args = c.eal_args_with_probe(&s(&["-l", "0-3", "--file-prefix", "b"]), || false);
    assert_eq!(
        args,
        s(&[
            "colo-proxy",
            "-n",
            "4",
            "--vdev",
            "net_ring0",
            "--vdev",
            "net_vhost0,iface=/tmp/pvm.sock",
            "-l",
            "0-3",
            "--file-prefix",
            "b",
        ])
    );
    // -c and --lcores are the same option as -l.
    let args = c.eal_args_with_probe(&s(&["-c", "0x3"]), || false);
    assert!(!args.contains(&"-l".to_string()), "{args:?}");
    let args = c.eal_args_with_probe(&s(&["--lcores=0@0,1@0"]), || false);
    assert!(!args.contains(&"-l".to_string()), "{args:?}");
    assert_eq!(args.last().unwrap(), "--lcores=0@0,1@0");
    // Attached short form counts too.
    let args = c.eal_args_with_probe(&s(&["-l0-2"]), || false);
    assert_eq!(
        args.iter().filter(|a| a.starts_with("-l")).count(),
        1,
        "{args:?}"
    );
}

#[test]
fn vdev_overrides_append_or_replace_by_name() {
    let c = cfg(r#"["-l", "0-1"]"#, "hugepages", VDEV_PORTS);
    let args = c.eal_args_with_probe(&s(&["--vdev", "net_null0"]), || false);
    assert_eq!(
        args.iter().filter(|a| *a == "--vdev").count(),
        3,
        "{args:?}"
    );
    let args = c.eal_args_with_probe(
        &s(&["--vdev=net_vhost0,iface=/other.sock,client=1"]),
        || false,
    );
    assert!(
        !args.contains(&"net_vhost0,iface=/tmp/pvm.sock".to_string()),
        "{args:?}"
    );
    assert_eq!(
        args.last().unwrap(),
        "--vdev=net_vhost0,iface=/other.sock,client=1"
    );
    assert!(args.contains(&"net_ring0".to_string()));
}

#[test]
fn pci_ports_are_allow_listed_unless_blocklist() {
    let c = cfg(r#"["-l", "0-1"]"#, "hugepages", PCI_PORTS);
    let args = c.eal_args_with_probe(&[], || false);
    let i = args
        .iter()
        .position(|a| a == "-a")
        .expect("-a for the PCI port");
    assert_eq!(args[i + 1], "0000:01:00.0");
    let args = c.eal_args_with_probe(&s(&["-b", "0000:02:00.0"]), || false);
    assert!(!args.contains(&"-a".to_string()), "{args:?}");
    // Already allowed (with devargs) by the user: not repeated.
    let args = c.eal_args_with_probe(&s(&["-a", "0000:01:00.0,rxq_cqe_comp_en=0"]), || false);
    assert_eq!(args.iter().filter(|a| *a == "-a").count(), 1, "{args:?}");
}

#[test]
fn check_lcores_after_overrides() {
    let c = cfg(r#"["-l", "0-1"]"#, "hugepages", VDEV_PORTS);
    assert!(c
        .check_lcores(&c.eal_args_with_probe(&[], || false))
        .is_ok());
    let err = c
        .check_lcores(&c.eal_args_with_probe(&s(&["-l", "2-3"]), || false))
        .unwrap_err();
    let msgs = err.messages();
    assert!(
        msgs.iter()
            .any(|m| m.starts_with("lcores.mirror: lcore 1 is not in the EAL lcore set 2-3")),
        "{msgs:?}"
    );
    assert!(
        msgs.iter().any(|m| m.contains("lcore 0")),
        "main lcore 0 too: {msgs:?}"
    );
}

#[test]
fn lcore_syntaxes() {
    let v = |set: std::collections::BTreeSet<u32>| set.into_iter().collect::<Vec<_>>();
    assert_eq!(v(parse_corelist("0-3,5").unwrap()), vec![0, 1, 2, 3, 5]);
    assert_eq!(v(parse_corelist("7").unwrap()), vec![7]);
    assert!(parse_corelist("3-1").is_err());
    assert!(parse_corelist("a").is_err());
    assert!(parse_corelist("").is_err());
    assert!(parse_corelist("0-99999").is_err());
    assert_eq!(v(parse_coremask("0xf").unwrap()), vec![0, 1, 2, 3]);
    assert_eq!(v(parse_coremask("A0").unwrap()), vec![5, 7]);
    assert_eq!(v(parse_coremask("0x100000000").unwrap()), vec![32]);
    assert!(parse_coremask("0xg").is_err());
    assert!(parse_coremask("").is_err());
    assert_eq!(
        v(parse_lcores_opt("(0-1)@0,2@1,(3,5)@(2-3)").unwrap()),
        vec![0, 1, 2, 3, 5]
    );
    assert_eq!(
        v(lcore_set(&s(&["-c", "0x6"])).unwrap().unwrap()),
        vec![1, 2]
    );
    assert_eq!(v(lcore_set(&s(&["-l1-2"])).unwrap().unwrap()), vec![1, 2]);
    assert_eq!(
        v(lcore_set(&s(&["--lcores", "4,6"])).unwrap().unwrap()),
        vec![4, 6]
    );
    assert_eq!(lcore_set(&s(&["--no-huge"])).unwrap(), None);
    assert!(lcore_set(&s(&["-l"])).is_err(), "-l without value");
    assert!(lcore_set(&s(&["-c", "0x0"])).is_err(), "empty mask");
}

#[test]
fn merge_rules() {
    let base = s(&[
        "-l",
        "0-1",
        "--vdev",
        "net_ring0",
        "-a",
        "0000:01:00.0",
        "--no-pci",
    ]);
    let out = merge(&base, &s(&["-a", "0000:02:00.0", "--lcores", "0-3"]));
    assert_eq!(
        out,
        s(&[
            "--vdev",
            "net_ring0",
            "-a",
            "0000:01:00.0",
            "--no-pci",
            "-a",
            "0000:02:00.0",
            "--lcores",
            "0-3"
        ])
    );
    assert_eq!(merge(&base, &[]), base);
}

#[test]
fn meminfo_probe_parsing() {
    assert!(meminfo_has_free_hugepages(
        "MemTotal: 1 kB\nHugePages_Total:     512\nHugePages_Free:      100\n"
    ));
    assert!(!meminfo_has_free_hugepages(
        "HugePages_Total:       0\nHugePages_Free:        0\n"
    ));
    assert!(!meminfo_has_free_hugepages("MemTotal: 1 kB\n"));
    assert!(!meminfo_has_free_hugepages("HugePages_Free: lots\n"));
}

#[test]
fn af_packet_ports_get_a_deep_ring_unless_the_vdev_sets_one() {
    let deep = format!("net_af_packet0,iface=veth0,framecnt={AF_PACKET_FRAMES}");
    assert_eq!(with_driver_defaults("net_af_packet0,iface=veth0"), deep);
    assert_eq!(
        with_driver_defaults("net_af_packet1,iface=v,framecnt=1024"),
        "net_af_packet1,iface=v,framecnt=1024"
    );
    assert_eq!(
        with_driver_defaults("net_vhost0,iface=/tmp/s"),
        "net_vhost0,iface=/tmp/s"
    );
    let c = cfg(
        r#"["-l", "0-1", "--no-pci"]"#,
        "no-huge",
        "[ports.nic]\nvdev = \"net_af_packet0,iface=veth0\"\n[ports.pvm]\nvdev = \"net_ring0\"\n",
    );
    let args = c.eal_args_with_probe(&[], || false);
    assert!(args.contains(&deep), "{args:?}");
}
