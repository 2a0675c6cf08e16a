//! EAL bring-up in child processes: with and without hugepages, bad arguments, unknown vdev,
//! double init, the linked DPDK version and the `selfcheck` subcommand.

mod dpdk_common;

use colo_proxy::dpdk::{self, Eal};
use dpdk_common::{eal_args, in_child, result, spawn};

const NO_HUGE: [&str; 8] = [
    "-l",
    "0-1",
    "--no-pci",
    "--no-huge",
    "-m",
    "1024",
    "--no-shconf",
    "--vdev=net_null0",
];

#[test]
fn eal_up_without_hugepages() {
    if in_child("eal_up_without_hugepages") {
        let eal = Eal::init(&NO_HUGE).expect("EAL init with --no-huge");
        result("hugepages", eal.hugepages() as u8);
        result("lcores", eal.lcore_count());
        result("ports", eal.port_count());
        result("up", dpdk::is_up() as u8);
        return;
    }
    let c = spawn("eal_up_without_hugepages");
    c.assert_ok();
    assert_eq!(c.get("hugepages"), "0");
    assert_eq!(c.num("lcores"), 2);
    assert_eq!(c.num("ports"), 1);
    assert_eq!(c.get("up"), "1");
}

#[test]
fn eal_up_with_hugepages() {
    if in_child("eal_up_with_hugepages") {
        let eal = Eal::init(&["-l", "0-1", "--no-pci", "--in-memory"])
            .expect("EAL init with --in-memory");
        result("hugepages", eal.hugepages() as u8);
        let pool = dpdk::Mempool::new("hp_pool", 1023).expect("pool on hugepages");
        result("pool_capacity", pool.capacity());
        return;
    }
    if !dpdk_common::prereq::require(
        "eal_up_with_hugepages",
        dpdk_common::prereq::missing_hugepages(1),
    ) {
        return;
    }
    let c = spawn("eal_up_with_hugepages");
    c.assert_ok();
    assert_eq!(c.get("hugepages"), "1");
    assert_eq!(c.num("pool_capacity"), 1023);
}

/// Exit code the error children use, so the parent can tell "clean Err" from panic or abort.
const CLEAN_ERR: i32 = 42;

fn report_init_err(args: &[&str]) -> ! {
    match Eal::init(args) {
        Ok(_) => {
            result("init", "ok");
            std::process::exit(0)
        }
        Err(e) => {
            result("errno", e.errno());
            result("message", &e);
            std::process::exit(CLEAN_ERR)
        }
    }
}

#[test]
fn eal_bad_args_is_clean_error() {
    if in_child("eal_bad_args_is_clean_error") {
        report_init_err(&["--no-pci", "--definitely-not-an-eal-option"]);
    }
    let c = spawn("eal_bad_args_is_clean_error");
    assert_eq!(c.signal, None, "child died by a signal\n{}", c.dump());
    assert_eq!(c.code, Some(CLEAN_ERR), "{}", c.dump());
    assert_eq!(c.num("errno"), libc::EINVAL as u64);
    let msg = c.get("message");
    assert!(
        msg.contains("rte_eal_init") && msg.contains("--definitely-not-an-eal-option"),
        "{msg}"
    );
}

#[test]
fn eal_incompatible_memory_flags_is_clean_error() {
    if in_child("eal_incompatible_memory_flags_is_clean_error") {
        report_init_err(&["-l", "0", "--no-pci", "--no-huge", "--in-memory"]);
    }
    let c = spawn("eal_incompatible_memory_flags_is_clean_error");
    assert_eq!(c.code, Some(CLEAN_ERR), "{}", c.dump());
    assert_eq!(c.num("errno"), libc::EINVAL as u64);
}

#[test]
fn eal_unknown_vdev_is_clean_error() {
    if in_child("eal_unknown_vdev_is_clean_error") {
        let mut a = eal_args(&["--vdev", "net_nosuchdriver0"]);
        a.retain(|s| !s.is_empty());
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        report_init_err(&refs);
    }
    let c = spawn("eal_unknown_vdev_is_clean_error");
    assert_eq!(c.signal, None, "child died by a signal\n{}", c.dump());
    assert_eq!(c.code, Some(CLEAN_ERR), "{}", c.dump());
    assert_eq!(c.num("errno"), libc::ENODEV as u64);
    assert!(c.get("message").contains("net_nosuchdriver0"));
}

#[test]
fn eal_second_init_errors() {
    if in_child("eal_second_init_errors") {
        let a = eal_args(&[]);
        let _eal = Eal::init(&a).expect("first init");
        match Eal::init(&a) {
            Ok(_) => result("second", "ok"),
            Err(e) => {
                result("second", "err");
                result("errno", e.errno());
                result("message", &e);
            }
        }
        // EAL is still usable after the refused second init.
        let pool = dpdk::Mempool::new("after_second", 63).expect("pool after second init");
        result("pool_ok", pool.capacity());
        return;
    }
    let c = spawn("eal_second_init_errors");
    c.assert_ok();
    assert_eq!(c.get("second"), "err");
    assert_eq!(c.num("errno"), libc::EALREADY as u64);
    assert!(c.get("message").contains("once per process"));
    assert_eq!(c.num("pool_ok"), 63);
}

#[test]
fn objects_before_init_are_errors() {
    if in_child("objects_before_init_are_errors") {
        let e = dpdk::Mempool::new("early", 63).expect_err("pool before EAL init");
        result("pool_errno", e.errno());
        let e = dpdk::ring::<dpdk::Token>("early", 64, Default::default())
            .err()
            .expect("ring before init");
        result("ring_errno", e.errno());
        return;
    }
    let c = spawn("objects_before_init_are_errors");
    c.assert_ok();
    assert_eq!(c.num("pool_errno"), libc::ENODEV as u64);
    assert_eq!(c.num("ring_errno"), libc::ENODEV as u64);
}

#[test]
fn linked_dpdk_is_22_11() {
    // rte_version() needs no EAL, so no child.
    let v = dpdk::version();
    assert!(v.starts_with("DPDK 22.11"), "linked {v}, want DPDK 22.11.x");
    let (y, m, _minor) = dpdk::version_numbers();
    assert_eq!((y, m), (22, 11), "{v}");
}

#[test]
fn selfcheck_subcommand_forwards_a_burst() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .arg("selfcheck")
        .output()
        .expect("run colo-proxy selfcheck");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "selfcheck failed\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("forwarded 32/32 frames byte-identical"),
        "{stdout}"
    );
    assert!(stdout.contains("mempool in use 0 (baseline 0)"), "{stdout}");
}

#[test]
fn selfcheck_subcommand_reports_bad_args() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
        .args([
            "selfcheck",
            "--",
            "--no-pci",
            "--no-huge",
            "--no-shconf",
            "--vdev",
            "net_nosuchdriver0",
        ])
        .output()
        .expect("run colo-proxy selfcheck");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("selfcheck FAILED") && stderr.contains("net_nosuchdriver0"),
        "{stderr}"
    );
}
