//! The QMP client's message handling on arbitrary bytes from "QEMU" (greeting, replies,
//! events, junk), cut at arbitrary points, interleaved with checkpoint requests: never panics;
//! a session ends only with a reason; every command it queues is one well-formed JSON line;
//! replies are matched by id (never more answered than sent).
#![no_main]

use arbitrary::Arbitrary;
use colo_proxy::mgmt::coordinator::CheckpointRequest;
use colo_proxy::mgmt::qmp::{QmpConfig, QmpSink};
use colo_proxy::mgmt::sink::CheckpointSink;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Op {
    Bytes(Vec<u8>),
    /// A line from a small vocabulary of QMP messages, so sessions get far.
    Line(u8, u8),
    Request,
}

const LINES: &[&str] = &[
    r#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#,
    r#"{"return": {}}"#,
    r#"{"return": {}, "id": 1}"#,
    r#"{"error": {"class": "GenericError", "desc": "no"}, "id": 2}"#,
    r#"{"event": "COLO_EXIT", "data": {"mode": "primary", "reason": "request"}, "timestamp": {"seconds": 1, "microseconds": 2}}"#,
    r#"{"event": "STOP"}"#,
    r#"{"error": {"class": "CommandNotFound", "desc": "x"}}"#,
    r#"[1, 2]"#,
    r#"{"id": "1", "return": 5}"#,
];

fuzz_target!(|ops: Vec<Op>| {
    let mut sink = QmpSink::new(QmpConfig {
        socket: "/nonexistent/qmp.sock".into(),
        checkpoint_delay_ms: 0,
        reconnect_ns: 1_000_000,
    });
    let mut out = Vec::new();
    let mut now = 0u64;
    for op in ops.into_iter().take(64) {
        now += 1_000;
        match op {
            Op::Bytes(b) => {
                sink.receive(&b, now, &mut out);
            }
            Op::Line(i, id) => {
                let mut l = LINES[usize::from(i) % LINES.len()].to_string();
                l = l.replace("\"id\": 1", &format!("\"id\": {}", id % 4));
                l.push_str("\r\n");
                sink.receive(l.as_bytes(), now, &mut out);
            }
            Op::Request => {
                let req = CheckpointRequest {
                    id: 1,
                    reason: "fuzz".into(),
                    flow: None,
                    since_ns: now,
                };
                sink.request(&req, now)
            }
        }
        let st = sink.qmp_stats();
        assert!(st.accepted + st.rejected <= st.sent, "{st:?}");
        let pending = sink.pending_output();
        assert!(pending.is_empty() || pending.ends_with(b"\r\n"));
        for line in pending
            .split(|&b| b == b'\n')
            .filter(|l| !l.trim_ascii().is_empty())
        {
            let v: serde_json::Value = serde_json::from_slice(line).expect("queued line is JSON");
            assert!(v.get("execute").is_some(), "queued line is a command");
        }
    }
    let _ = sink.stats();
});
