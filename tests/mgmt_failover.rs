//! Failover triggers and reports in management: `link-silent` with `on_link_loss = auto`
//! fails over once, with `wait` only reports; stage `failover-report` events are summed.

mod mgmt_common;

use std::sync::Arc;

use colo_proxy::control::Event;
use mgmt_common::*;

fn silent(t: u64) -> Event {
    Event::LinkSilent {
        link: "mirror".into(),
        last_heard_ns: t - 500_000_000,
        timeout_ms: 500,
        time_ns: t,
    }
}

#[test]
fn link_silence_with_auto_fails_over_once() {
    let dir = TempDir::new("fo-auto");
    let plane = Arc::new(FakePlane::default());
    let mut m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.failover_on_link_loss = true
    });
    assert!(m.sender().event(silent(1_000_000_000)));
    m.poll(now_ns());
    assert!(m.sender().event(silent(2_000_000_000)));
    m.poll(now_ns());
    let failovers = plane.calls().iter().filter(|c| *c == "failover").count();
    assert_eq!(failovers, 1, "{:?}", plane.calls());
    let st = m.stats();
    assert_eq!(st.failovers, 1);
    assert_eq!(st.link_silent, 2);
}

#[test]
fn link_silence_with_wait_only_reports() {
    let dir = TempDir::new("fo-wait");
    let plane = Arc::new(FakePlane::default());
    let mut m = mgmt_with(dir.path(), plane.clone(), |_| {});
    assert!(m.sender().event(silent(1_000_000_000)));
    m.poll(now_ns());
    assert!(!plane.calls().iter().any(|c| c == "failover"));
    let st = m.stats();
    assert_eq!(st.failovers, 0);
    assert_eq!(st.link_silent, 1);
}

#[test]
fn failover_reports_are_summed_and_the_gap_is_the_longest() {
    let dir = TempDir::new("fo-rep");
    let mut m = mgmt_with(dir.path(), Arc::new(FakePlane::default()), |_| {});
    let report = |stage: &str, gap: Option<u64>, rel: u64, drop: u64| Event::FailoverReport {
        stage: stage.into(),
        gap_ns: gap,
        held_released: rel,
        held_released_bytes: rel * 100,
        held_dropped: drop,
        held_dropped_bytes: drop * 10,
        announced: 0,
        time_ns: 5,
    };
    assert!(m.sender().event(report("compare0", Some(3_000), 4, 1)));
    assert!(m.sender().event(report("compare1", Some(7_000), 2, 0)));
    assert!(m.sender().event(report("compare2", None, 0, 3)));
    m.poll(now_ns());
    let f = m.stats().failover;
    assert_eq!(f.reports, 3);
    assert_eq!(f.gap_ns, Some(7_000));
    assert_eq!((f.held_released, f.held_released_bytes), (6, 600));
    assert_eq!((f.held_dropped, f.held_dropped_bytes), (4, 40));
    let rep = colo_proxy::mgmt::status::final_report(&m.stats());
    assert!(rep.contains("gap ms"), "{rep}");
}

/// A fake QEMU QMP monitor: greets, accepts `qmp_capabilities`, then sends `COLO_EXIT` (what
/// QEMU emits once `x-colo-lost-heartbeat` made it leave COLO).
fn fake_qemu_colo_exit(listener: std::os::unix::net::UnixListener) -> std::thread::JoinHandle<()> {
    use std::io::{BufRead, BufReader, Write};
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        writeln!(w, r#"{{"QMP": {{"version": {{}}, "capabilities": []}}}}"#).unwrap();
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        assert!(line.contains("qmp_capabilities"), "{line}");
        writeln!(w, r#"{{"return": {{}}}}"#).unwrap();
        writeln!(
            w,
            r#"{{"timestamp": {{"seconds": 1, "microseconds": 2}}, "event": "COLO_EXIT", "data": {{"mode": "secondary", "reason": "request"}}}}"#
        )
        .unwrap();
        // Stay connected until the proxy side is done.
        let _ = r.read_line(&mut line);
    })
}

fn colo_exit_case(follow: bool) -> (Vec<String>, u64) {
    let dir = TempDir::new(if follow { "fo-qmp" } else { "fo-qmp-off" });
    let sock = dir.path().join("qmp.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let qemu = fake_qemu_colo_exit(listener);
    let plane = Arc::new(FakePlane::default());
    let mut m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.qmp = Some(colo_proxy::mgmt::qmp::QmpConfig {
            socket: sock.clone(),
            checkpoint_delay_ms: 1,
            reconnect_ns: 10_000_000,
        });
        c.failover_on_colo_exit = follow;
    });
    let seen = wait_for(5, || {
        m.poll(now_ns());
        m.stats().sinks["qmp"]["colo_exits"].as_u64() == Some(1)
    });
    assert!(seen, "{:?}", m.stats().sinks);
    let failovers = m.stats().failovers;
    drop(m);
    qemu.join().unwrap();
    (plane.calls(), failovers)
}

#[test]
fn qemu_colo_exit_fails_the_proxy_over() {
    let (calls, failovers) = colo_exit_case(true);
    assert_eq!(calls.iter().filter(|c| *c == "failover").count(), 1);
    assert_eq!(failovers, 1);
}

#[test]
fn qemu_colo_exit_is_only_counted_when_not_followed() {
    let (calls, failovers) = colo_exit_case(false);
    assert!(!calls.iter().any(|c| c == "failover"), "{calls:?}");
    assert_eq!(failovers, 0);
}

fn link_sequence(lost: u64, t: u64) -> Event {
    Event::LinkSequence {
        link: "secondary-out".into(),
        stream: 1,
        received: 1000,
        lost,
        gaps: lost,
        reordered: 0,
        duplicates: 0,
        resyncs: 0,
        new_gaps: 1,
        new_reordered: 0,
        new_duplicates: 0,
        new_resyncs: 0,
        time_ns: t,
    }
}

/// A frame lost on the encapsulated link only ends with a checkpoint (its connection's compare
/// would wait for the timeout): management asks at once, once per new loss.
#[test]
fn frames_lost_on_the_link_request_a_checkpoint_at_once() {
    let dir = TempDir::new("link-loss");
    let mut m = mgmt_with(dir.path(), Arc::new(FakePlane::default()), |_| {});
    assert!(m.sender().event(link_sequence(2, 1_000)));
    m.poll(now_ns());
    assert_eq!(
        m.stats().checkpoint.requested,
        1,
        "{:?}",
        m.stats().checkpoint
    );
    // The same total again (a reordering report): nothing new was lost.
    assert!(m.sender().event(link_sequence(2, 2_000)));
    m.poll(now_ns());
    assert_eq!(m.stats().checkpoint.requested, 1);
    assert!(m.sender().event(link_sequence(5, 3_000)));
    m.poll(now_ns());
    assert_eq!(m.stats().checkpoint.requested, 2);
}
