//! Management's idle wait (`Management::wait`): it sleeps until an input, a descriptor or its
//! bound, instead of polling every millisecond (an idle proxy's CPU), and every wake-up path
//! ends the sleep at once.

mod mgmt_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use colo_proxy::control::Event;
use colo_proxy::mgmt::xen::{NotifyEndpoint, XenConfig};
use colo_proxy::mgmt::Management;
use mgmt_common::*;

/// Poll until a poll finds nothing to do (start-up work done).
fn settle(m: &mut Management) {
    for _ in 0..100 {
        if m.poll(now_ns()).work == 0 {
            return;
        }
    }
    panic!("management kept finding work");
}

/// How long one `wait` with bound `max` took.
fn timed_wait(m: &Management, max: Duration) -> Duration {
    let t = Instant::now();
    m.wait(now_ns(), max);
    t.elapsed()
}

#[test]
fn an_idle_management_sleeps_for_its_bound() {
    let dir = TempDir::new("mgmt-idle-sleep");
    let mut m = mgmt_with(dir.path(), Arc::new(FakePlane::default()), |_| {});
    settle(&mut m);
    for _ in 0..3 {
        let took = timed_wait(&m, Duration::from_millis(200));
        assert!(
            took >= Duration::from_millis(150),
            "nothing to do, yet the wait ended after {took:?}"
        );
        assert_eq!(m.poll(now_ns()).work, 0);
    }
}

#[test]
fn an_event_from_another_thread_ends_the_wait() {
    let dir = TempDir::new("mgmt-idle-event");
    let mut m = mgmt_with(dir.path(), Arc::new(FakePlane::default()), |_| {});
    settle(&mut m);
    let before = m.stats().inputs;
    let sender = m.sender();
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        assert!(sender.event(Event::LinkUp {
            link: "mirror".into(),
            time_ns: now_ns(),
        }));
    });
    let took = timed_wait(&m, Duration::from_secs(20));
    t.join().unwrap();
    assert!(
        took < Duration::from_secs(10),
        "the event did not end the wait ({took:?})"
    );
    m.poll(now_ns());
    assert_eq!(m.stats().inputs, before + 1, "the event was handled");
    // The doorbell was reset: the next wait sleeps again.
    let took = timed_wait(&m, Duration::from_millis(200));
    assert!(
        took >= Duration::from_millis(150),
        "doorbell left ringing: {took:?}"
    );
}

#[test]
fn a_control_client_ends_the_wait_and_is_answered() {
    let dir = TempDir::new("mgmt-idle-ctl");
    let mut m = mgmt_with(dir.path(), Arc::new(FakePlane::default()), |_| {});
    settle(&mut m);
    let sock = dir.path().join("run/ctl.sock");
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        UnixStream::connect(sock).unwrap()
    });
    let took = timed_wait(&m, Duration::from_secs(20));
    let mut client = t.join().unwrap();
    assert!(
        took < Duration::from_secs(10),
        "a connecting client did not end the wait ({took:?})"
    );
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    client.write_all(b"{\"cmd\":\"stats\"}\n").unwrap();
    // Management sleeping between polls: the request's bytes wake it.
    let reader = std::thread::spawn(move || {
        let mut line = String::new();
        BufReader::new(client).read_line(&mut line).unwrap();
        line
    });
    let end = Instant::now() + Duration::from_secs(10);
    while !reader.is_finished() && Instant::now() < end {
        if m.poll(now_ns()).work == 0 {
            m.wait(now_ns(), Duration::from_secs(1));
        }
    }
    let line = reader.join().unwrap();
    assert!(line.contains("\"ok\":true"), "answer: {line}");
}

#[test]
fn a_xen_peer_connecting_ends_the_wait() {
    let dir = TempDir::new("mgmt-idle-xen");
    let notify = dir.path().join("notify.sock");
    let mut m = mgmt_with(dir.path(), Arc::new(FakePlane::default()), |c| {
        c.xen = Some(XenConfig::new(NotifyEndpoint::ListenUnix(notify.clone())));
    });
    settle(&mut m);
    let t = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(100));
        UnixStream::connect(notify).unwrap()
    });
    let took = timed_wait(&m, Duration::from_secs(20));
    let _peer = t.join().unwrap();
    assert!(
        took < Duration::from_secs(10),
        "a connecting notify peer did not end the wait ({took:?})"
    );
}
