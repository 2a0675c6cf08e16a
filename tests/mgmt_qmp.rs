//! QMP checkpoint sink against a real QEMU (7.2, `-M none`): the forced-checkpoint command is
//! sent and accepted (read back with `query-migrate-parameters` on a second QMP monitor), and
//! the sink reconnects after QEMU restarts. Skipped with a message when QEMU is not installed
//! (a failure under CI, tests/prereq).

mod mgmt_common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use colo_proxy::control::{Event, EventSide as Side};
use colo_proxy::mgmt::coordinator::CheckpointRequest;
use colo_proxy::mgmt::qmp::{QmpConfig, QmpSink};
use colo_proxy::mgmt::sink::{CheckpointSink, SinkEvent};
use mgmt_common::*;
use serde_json::{json, Value};

const QEMU: &str = "qemu-system-x86_64";

/// A QEMU with two QMP monitors, killed on drop.
struct Qemu {
    child: Child,
}

impl Qemu {
    fn start(main: &Path, check: &Path) -> Qemu {
        let arg = |p: &Path| format!("unix:{},server=on,wait=off", p.display());
        let child = Command::new(QEMU)
            .args(["-M", "none", "-nodefaults", "-display", "none", "-qmp"])
            .arg(arg(main))
            .arg("-qmp")
            .arg(arg(check))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn qemu");
        let q = Qemu { child };
        assert!(
            wait_for(20, || UnixStream::connect(check).is_ok()),
            "QEMU QMP socket did not appear"
        );
        q
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have_qemu() -> bool {
    let ok = Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let missing = (!ok).then(|| format!("{QEMU} not installed (apt install qemu-system-x86)"));
    prereq::require("mgmt_qmp (real QEMU)", missing)
}

/// A minimal blocking QMP client for checking what QEMU holds.
fn checkpoint_delay(sock: &Path) -> u64 {
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    let mut next = |r: &mut BufReader<UnixStream>| -> Value {
        loop {
            line.clear();
            r.read_line(&mut line).unwrap();
            let v: Value = serde_json::from_str(&line).unwrap();
            if v.get("event").is_none() {
                return v;
            }
        }
    };
    assert!(next(&mut r).get("QMP").is_some());
    writeln!(w, "{}", json!({"execute": "qmp_capabilities"})).unwrap();
    assert!(next(&mut r).get("return").is_some());
    writeln!(w, "{}", json!({"execute": "query-migrate-parameters"})).unwrap();
    let v = next(&mut r);
    v["return"]["x-checkpoint-delay"]
        .as_u64()
        .unwrap_or_else(|| panic!("{v}"))
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("qmp.sock"), dir.join("check.sock"))
}

#[test]
fn forced_checkpoint_is_accepted_by_qemu() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("qmp");
    let (main, check) = paths(dir.path());
    let _qemu = Qemu::start(&main, &check);
    assert_eq!(checkpoint_delay(&check), 20000, "QEMU's default");

    let plane = Arc::new(FakePlane::default());
    let m = mgmt_with(dir.path(), plane, |c| {
        c.qmp = Some(QmpConfig {
            socket: main.clone(),
            checkpoint_delay_ms: 12345,
            reconnect_ns: 20_000_000,
        })
    });
    let tx = m.sender();
    let run = Running::start(m);
    tx.event(Event::Divergence {
        flow: "tcp a <-> b".into(),
        reason: "payload".into(),
        side: Side::Both,
        seq_range: None,
        time_ns: 1,
    });
    // QEMU answered our command with `return` ...
    let sock = dir.path().join("run/ctl.sock");
    let ctl = colo_proxy::cli::ctl::Target::Unix(sock);
    let req = colo_proxy::control::Request::from_words(&["stats".into()], None).unwrap();
    assert!(
        wait_for(20, || {
            let r = colo_proxy::cli::ctl::request(&ctl, &req, Duration::from_secs(5)).unwrap();
            r.result.unwrap()["mgmt"]["sinks"]["qmp"]["accepted"] == 1
        }),
        "QEMU did not accept migrate-set-parameters"
    );
    // ... and holds the value.
    assert_eq!(checkpoint_delay(&check), 12345);
    let m = run.join();
    let q = &m.stats().sinks["qmp"];
    assert_eq!(
        (
            q["sent"].as_u64(),
            q["rejected"].as_u64(),
            q["sessions"].as_u64()
        ),
        (Some(1), Some(0), Some(1))
    );
    assert_eq!(q["ready"], true);
}

fn poll_until(
    sink: &mut QmpSink,
    secs: u64,
    events: &mut Vec<SinkEvent>,
    mut f: impl FnMut(&QmpSink) -> bool,
) -> bool {
    wait_for(secs, || {
        sink.poll(now_ns(), events);
        f(sink)
    })
}

#[test]
fn reconnects_after_qemu_restarts_and_sends_the_pending_request() {
    if !have_qemu() {
        return;
    }
    let dir = TempDir::new("qmpr");
    let (main, check) = paths(dir.path());
    let mut sink = QmpSink::new(QmpConfig {
        socket: main.clone(),
        checkpoint_delay_ms: 4321,
        reconnect_ns: 10_000_000,
    });
    let mut events = Vec::new();
    // No QEMU yet: connection attempts fail and back off.
    assert!(!poll_until(&mut sink, 1, &mut events, |s| s
        .qmp_stats()
        .ready));
    assert!(sink.qmp_stats().connect_failures >= 2);

    let qemu = Qemu::start(&main, &check);
    assert!(poll_until(&mut sink, 15, &mut events, |s| s
        .qmp_stats()
        .ready));
    let req = |id| CheckpointRequest {
        id,
        reason: "payload".into(),
        flow: None,
        since_ns: 0,
    };
    sink.request(&req(1), now_ns());
    assert!(poll_until(&mut sink, 10, &mut events, |s| s
        .qmp_stats()
        .accepted
        == 1));
    assert_eq!(checkpoint_delay(&check), 4321);

    drop(qemu);
    assert!(poll_until(&mut sink, 10, &mut events, |s| !s
        .qmp_stats()
        .ready));
    // Requested while QEMU is down: sent once it is back.
    sink.request(&req(2), now_ns());
    sink.request(&req(3), now_ns());
    let _qemu2 = Qemu::start(&main, &check);
    assert!(poll_until(&mut sink, 20, &mut events, |s| s
        .qmp_stats()
        .accepted
        == 2));
    assert_eq!(
        checkpoint_delay(&check),
        4321,
        "the restarted QEMU got the forced checkpoint"
    );
    let st = sink.qmp_stats();
    assert_eq!(
        (st.sessions, st.disconnects, st.sent, st.deferred),
        (2, 1, 2, 1)
    );
    assert_eq!(events.iter().filter(|e| **e == SinkEvent::Up).count(), 2);
    assert!(events.iter().any(|e| matches!(e, SinkEvent::Down(_))));
}

/// The session logic without a socket (`QmpSink::receive`, what the fuzzer drives): a deferred
/// request goes out once the session is ready, an event before the reply is skipped, and the
/// reply is matched by its id.
#[test]
fn session_from_bytes_matches_the_reply_by_id_past_an_event() {
    let mut sink = QmpSink::new(QmpConfig {
        socket: "/nonexistent/qmp.sock".into(),
        checkpoint_delay_ms: 0,
        reconnect_ns: 1_000_000,
    });
    let req = CheckpointRequest {
        id: 1,
        reason: "test".into(),
        flow: None,
        since_ns: 0,
    };
    sink.request(&req, 0);
    let mut out = Vec::new();
    let greeting = br#"{"QMP": {"version": {}, "capabilities": []}}"#;
    assert!(sink.receive(&[&greeting[..], b"\r\n"].concat(), 1, &mut out));
    assert!(String::from_utf8_lossy(sink.pending_output()).contains("qmp_capabilities"));
    // Split mid-line: nothing happens until the line is complete.
    assert!(sink.receive(b"{\"return\"", 2, &mut out));
    assert!(out.is_empty());
    assert!(sink.receive(b": {}}\r\n", 3, &mut out));
    assert!(matches!(out.as_slice(), [SinkEvent::Up]), "{out:?}");
    let sent = String::from_utf8_lossy(sink.pending_output()).into_owned();
    assert!(
        sent.contains("migrate-set-parameters") && sent.contains("\"id\":1"),
        "{sent}"
    );
    let event = br#"{"event": "RESUME", "timestamp": {"seconds": 1, "microseconds": 0}}"#;
    assert!(sink.receive(&[&event[..], b"\r\n"].concat(), 4, &mut out));
    assert_eq!(sink.qmp_stats().accepted, 0);
    assert!(sink.receive(b"{\"return\": {}, \"id\": 1}\r\n", 5, &mut out));
    let st = sink.qmp_stats();
    assert_eq!((st.sent, st.accepted, st.events), (1, 1, 1), "{st:?}");
    // Junk ends the session with a reason.
    assert!(!sink.receive(b"not json\n", 6, &mut out));
    assert!(sink.qmp_stats().last_error.is_some());
}
