//! What a test does when something it needs (QEMU, root, hugepages, dpdk-dumpcap, tshark,
//! telemetry) is missing: on a developer machine it is skipped (prints `SKIPPED`, passes); in
//! CI (`CI=true`) or with `COLO_REQUIRE_ALL=1` it fails, so a suite cannot pass by skipping.
//! `.ci/setup` installs every prerequisite. `COLO_REQUIRE_ALL=0` turns strict mode off even
//! in CI (e.g. a CI runner known to lack QEMU); the test output still says what was skipped.
//!
//! Included by the shared support modules and by tests with their own checks:
//! `#[path = "../prereq/mod.rs"] mod prereq;` (or `mod prereq;` at the top level).
#![allow(dead_code)]

/// True when a missing prerequisite must fail the test (from the environment).
pub fn strict() -> bool {
    strict_from(
        std::env::var("CI").ok().as_deref(),
        std::env::var("COLO_REQUIRE_ALL").ok().as_deref(),
    )
}

fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// [`strict`] from the two variables' values: `COLO_REQUIRE_ALL` decides when set, else `CI`.
pub fn strict_from(ci: Option<&str>, require_all: Option<&str>) -> bool {
    match require_all {
        Some(v) if !v.trim().is_empty() => truthy(v),
        _ => ci.is_some_and(truthy),
    }
}

/// Run the test when `missing` is `None`. Otherwise skip it (returns false, prints
/// `SKIPPED <test>: <why>`), or, in strict mode, panic with the reason.
pub fn require(test: &str, missing: Option<String>) -> bool {
    require_with(strict(), test, missing)
}

/// [`require`] with the mode given (for the helper's own tests).
pub fn require_with(strict: bool, test: &str, missing: Option<String>) -> bool {
    match missing {
        None => true,
        Some(why) if strict => panic!(
            "{test}: missing prerequisite: {why} (a skip is a failure with CI=true or \
             COLO_REQUIRE_ALL=1; run .ci/setup)"
        ),
        Some(why) => {
            println!("SKIPPED {test}: {why}");
            eprintln!("SKIPPED {test}: {why}");
            false
        }
    }
}

/// `None` when `prog` is on PATH, else why not.
pub fn missing_program(prog: &str, hint: &str) -> Option<String> {
    let found = std::process::Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    (!found).then(|| format!("`{prog}` not found ({hint})"))
}

/// Free 2 MiB hugepages (`HugePages_Free` in /proc/meminfo), 0 when unknown.
pub fn free_hugepages() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("HugePages_Free:"))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0)
}

/// `None` when at least `pages` hugepages are free, else why not.
pub fn missing_hugepages(pages: u64) -> Option<String> {
    let free = free_hugepages();
    (free < pages).then(|| {
        format!("{free} free hugepages, need {pages} (run dpdk-config/setup-hugepages.sh)")
    })
}
