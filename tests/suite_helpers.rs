//! The test suite's own helpers: the prerequisite policy (a missing prerequisite skips on a
//! developer machine and fails in CI) and the QMP reply reader QEMU tests wait with.

mod qemu_support;

// The one copy of tests/prereq in this crate is qemu_support's.
use qemu_support::prereq;

use std::io::Cursor;

#[test]
fn strict_mode_comes_from_ci_or_colo_require_all() {
    use prereq::strict_from;
    assert!(!strict_from(None, None));
    assert!(strict_from(Some("true"), None));
    assert!(strict_from(Some("1"), None));
    assert!(!strict_from(Some("false"), None));
    assert!(!strict_from(Some(""), None));
    assert!(strict_from(None, Some("1")));
    assert!(strict_from(None, Some("yes")));
    // COLO_REQUIRE_ALL decides when set, also against CI.
    assert!(!strict_from(Some("true"), Some("0")));
    assert!(strict_from(Some("false"), Some("1")));
    // Set but empty: CI decides.
    assert!(strict_from(Some("true"), Some("")));
}

#[test]
fn present_prerequisite_runs_the_test_in_both_modes() {
    assert!(prereq::require_with(false, "t", None));
    assert!(prereq::require_with(true, "t", None));
}

#[test]
fn missing_prerequisite_skips_outside_ci() {
    assert!(!prereq::require_with(false, "t", Some("no qemu".into())));
}

#[test]
fn missing_prerequisite_fails_the_test_in_ci() {
    let r = std::panic::catch_unwind(|| prereq::require_with(true, "t", Some("no qemu".into())));
    let msg = r.expect_err("strict mode must panic");
    let msg = msg.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(msg.contains("t: missing prerequisite: no qemu"), "{msg}");
}

#[test]
fn this_run_follows_the_environment() {
    // Under CI=true / COLO_REQUIRE_ALL=1 (what .ci/run sets), `require` must fail on a
    // missing prerequisite; otherwise it skips.
    let strict = prereq::strict();
    let r = std::panic::catch_unwind(|| prereq::require("t", Some("x".into())));
    assert_eq!(r.is_err(), strict);
}

#[test]
fn prerequisite_probes_report_what_is_missing() {
    assert_eq!(prereq::missing_program("sh", "base system"), None);
    let m = prereq::missing_program("colo-no-such-program-xyz", "apt install nothing");
    assert!(m.is_some_and(|m| m.contains("colo-no-such-program-xyz")));
    assert_eq!(prereq::missing_hugepages(0), None);
    assert!(prereq::missing_hugepages(u64::MAX).is_some());
}

#[test]
fn qmp_reply_is_found_by_id_past_events_and_other_replies() {
    // An event first (what shifted the old positional reader), then a reply to another id.
    let stream = concat!(
        "{\"timestamp\": {\"seconds\": 1, \"microseconds\": 2}, \"event\": \"RESUME\"}\r\n",
        "{\"return\": {}, \"id\": 1}\r\n",
        "{\"return\": {\"running\": true, \"status\": \"running\"}, \"id\": 2}\r\n",
    );
    let mut r = Cursor::new(stream.as_bytes());
    let v = qemu_support::qmp_reply(&mut r, 2).unwrap();
    assert_eq!(v["return"]["running"], serde_json::Value::Bool(true));
    // An event that carries no id is never a reply, even when asked for the id QEMU
    // would give it none of.
    let mut r =
        Cursor::new(&b"{\"event\": \"STOP\", \"id\": 3}\n{\"return\": {}, \"id\": 3}\n"[..]);
    assert_eq!(
        qemu_support::qmp_reply(&mut r, 3).unwrap()["return"],
        serde_json::json!({})
    );
}

#[test]
fn qmp_reply_reports_closed_streams_and_junk() {
    let mut r = Cursor::new(&b"{\"event\": \"STOP\"}\n"[..]);
    assert!(qemu_support::qmp_reply(&mut r, 1)
        .unwrap_err()
        .contains("closed"));
    let mut r = Cursor::new(&b"not json\n"[..]);
    assert!(qemu_support::qmp_reply(&mut r, 1)
        .unwrap_err()
        .contains("not QMP JSON"));
}
