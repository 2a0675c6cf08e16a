//! The QMP client's message handling on arbitrary bytes from "QEMU" (greeting, replies,
//! events, junk), cut at arbitrary points, interleaved with checkpoint requests: never panics;
//! every command it queues is one well-formed JSON command line; replies are matched by id
//! (never more answered than sent). Input: the byte stream QEMU sends; each NUL byte is a
//! checkpoint request at that point, each 0x01 byte a cut between reads (seeds: the tests'
//! QMP transcripts).
#![no_main]

use colo_proxy::mgmt::coordinator::CheckpointRequest;
use colo_proxy::mgmt::qmp::{QmpConfig, QmpSink};
use colo_proxy::mgmt::sink::CheckpointSink;
use libfuzzer_sys::fuzz_target;

fn check(sink: &QmpSink) {
    let st = sink.qmp_stats();
    assert!(st.accepted + st.rejected <= st.sent, "{st:?}");
    let pending = sink.pending_output();
    assert!(pending.is_empty() || pending.ends_with(b"\r\n"));
    for line in pending
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
    {
        let v: serde_json::Value = serde_json::from_slice(line).expect("queued line is JSON");
        assert!(v.get("execute").is_some(), "queued line is a command: {v}");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut sink = QmpSink::new(QmpConfig {
        socket: "/nonexistent/qmp.sock".into(),
        checkpoint_delay_ms: 0,
        reconnect_ns: 1_000_000,
    });
    let mut out = Vec::new();
    let mut now = 0u64;
    for (i, piece) in data.split(|&b| b == 0).enumerate() {
        now += 1_000;
        if i > 0 {
            let req = CheckpointRequest {
                id: i as u64,
                reason: "fuzz".into(),
                flow: None,
                since_ns: now,
            };
            sink.request(&req, now);
            check(&sink);
        }
        for chunk in piece.split(|&b| b == 1) {
            sink.receive(chunk, now, &mut out);
            check(&sink);
        }
    }
    let _ = sink.stats();
});
