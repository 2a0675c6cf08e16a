//! Checkpoint-done while packets are in flight, end to end through management: a compare shard
//! (the real engine) behind a `DataPlane`, divergences reported through the event queue, a
//! scripted Xen peer answering every DO_CHECKPOINT with COLO_CHECKPOINT, divergence capture on.
//! Every primary packet must leave exactly once, the engine's accounting must balance, and every
//! divergence must reach management and the capture file.

mod mgmt_common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::compare::{
    Comparator, CompareConfig, DivergenceEvent, Output, Release, SecondaryFree, Side,
};
use colo_proxy::control::{BypassOp, DataPlane, Event};
use colo_proxy::mgmt::capture::{CaptureConfig, CapturedPacket, DivergenceCapture};
use colo_proxy::mgmt::xen::{NotifyEndpoint, XenConfig};
use colo_proxy::mgmt::{EventSender, Input};
use etherparse::PacketBuilder;
use mgmt_common::*;

/// UDP frame of flow `flow` whose payload ends with the packet id.
fn frame(flow: u16, id: u32, poison: bool) -> Vec<u8> {
    let mut payload = vec![0xab; 16];
    if poison {
        payload[0] = 0xcd;
    }
    payload.extend_from_slice(&id.to_be_bytes());
    let mut f = Vec::new();
    PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .udp(6000 + flow, 53)
        .write(&mut f, &payload)
        .unwrap();
    f
}

fn id_of(f: &[u8]) -> u32 {
    let n = f.len();
    u32::from_be_bytes([f[n - 4], f[n - 3], f[n - 2], f[n - 1]])
}

struct Out {
    released: Vec<(u32, Release)>,
    freed: u64,
    events: u64,
    captured_events: u64,
    capture_on: bool,
    pending: Option<DivergenceCapture>,
    tx: Option<EventSender>,
}

impl Output<VecBuf> for Out {
    fn release(&mut self, pkt: VecBuf, how: Release) {
        self.released.push((id_of(pkt.data()), how));
    }
    fn drop_primary(&mut self, pkt: VecBuf, why: colo_proxy::compare::PrimaryDrop) {
        panic!("unexpected drop of {} ({why:?})", id_of(pkt.data()));
    }
    fn free_secondary(&mut self, _pkt: VecBuf, _how: SecondaryFree) {
        self.freed += 1;
    }
    fn capture(&mut self, ev: &DivergenceEvent, p: Option<&VecBuf>, s: Option<&VecBuf>) {
        if !self.capture_on {
            return;
        }
        let pk = |side, b: &VecBuf| CapturedPacket {
            side,
            time_ns: ev.time_ns,
            data: b.data().to_vec(),
            orig_len: b.data().len() as u32,
        };
        self.pending = Some(DivergenceCapture {
            flow: ev.flow.to_string(),
            reason: ev.reason.as_str().into(),
            seq_range: ev.seq_range,
            primary: p.map(|b| pk(colo_proxy::control::EventSide::Primary, b)),
            secondary: s.map(|b| pk(colo_proxy::control::EventSide::Secondary, b)),
            context: Vec::new(),
        });
    }
    fn event(&mut self, ev: DivergenceEvent) {
        self.events += 1;
        let e = Event::from(&ev);
        let Some(tx) = &self.tx else {
            panic!("no management attached")
        };
        let sent = match self.pending.take() {
            Some(c) => {
                self.captured_events += 1;
                tx.send(Input::Divergence(e, Box::new(c)))
            }
            None => tx.send(Input::Event(e)),
        };
        assert!(sent, "event queue sized for the test");
    }
}

struct Shard {
    cmp: Comparator<VecBuf>,
    out: Out,
}

/// The data plane: one compare shard; the mutex stands in for the control ring answered at a
/// loop boundary (the data thread holds it only for one packet pair).
struct ShardPlane {
    shard: Mutex<Shard>,
    checkpoints: AtomicU64,
}

impl DataPlane for ShardPlane {
    fn stats(&self) -> serde_json::Value {
        let s = self.shard.lock().unwrap();
        serde_json::json!({"primary_in": s.cmp.counters().primary_in, "queued_primary": s.cmp.counters().queued_primary})
    }
    fn flows(&self, _n: usize) -> serde_json::Value {
        serde_json::json!([])
    }
    fn checkpoint_done(&self) -> Result<(), String> {
        let mut s = self.shard.lock().unwrap();
        let Shard { cmp, out } = &mut *s;
        cmp.checkpoint_done(now_ns(), out);
        self.checkpoints.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    fn failover(&self) -> Result<(), String> {
        Err("not in this test".into())
    }
    fn bypass(&self, _op: BypassOp) -> Result<serde_json::Value, String> {
        Err("not in this test".into())
    }
    fn capture(&self, on: bool) -> Result<(), String> {
        self.shard.lock().unwrap().out.capture_on = on;
        Ok(())
    }
    fn shutdown(&self) {}
}

#[test]
fn no_packet_lost_or_duplicated_across_checkpoints_in_flight() {
    let dir = TempDir::new("ckflow");
    let notify = dir.path().join("xen.sock");
    let capdir = dir.path().join("pcap");

    // The plane needs management's sender and management needs the plane: attach it after.
    let plane = Arc::new(ShardPlane {
        shard: Mutex::new(Shard {
            cmp: Comparator::new(CompareConfig::default()),
            out: Out {
                released: Vec::new(),
                freed: 0,
                events: 0,
                captured_events: 0,
                capture_on: true,
                pending: None,
                tx: None,
            },
        }),
        checkpoints: AtomicU64::new(0),
    });
    let m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.xen = Some(XenConfig {
            vnet_hdr_support: false,
            reconnect_ns: 1_000_000,
            ..XenConfig::new(NotifyEndpoint::ListenUnix(notify.clone()))
        });
        c.capture = Some(CaptureConfig {
            dir: capdir.clone(),
            max_file_bytes: 1 << 24,
            max_files: 4,
            context_packets: 0,
        });
        c.capture_on_start = true;
        c.event_queue = 1 << 16;
    });
    plane.shard.lock().unwrap().out.tx = Some(m.sender());
    let run = Running::start(m);

    // Xen: answer every DO_CHECKPOINT with COLO_CHECKPOINT after a short pause.
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    let mut xen = UnixStream::connect(&notify).unwrap();
    let xen_thread = std::thread::spawn(move || {
        xen.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let mut answered = 0u64;
        let mut buf = Vec::new();
        let mut tmp = [0u8; 256];
        while !st.load(Ordering::SeqCst) {
            match xen.read(&mut tmp) {
                Ok(0) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
                Err(_) => continue,
            }
            while buf.len() >= 17 {
                assert_eq!(&buf[..17], b"\x00\x00\x00\x0dDO_CHECKPOINT");
                buf.drain(..17);
                std::thread::sleep(Duration::from_millis(1));
                xen.write_all(b"\x00\x00\x00\x0fCOLO_CHECKPOINT").unwrap();
                answered += 1;
            }
        }
        answered
    });

    // The data lcore: 4 flows, every 97th secondary differs. Before the next poisoned
    // secondary the previous divergence's checkpoint must have been applied (packets keep
    // flowing while it is in flight), so each injected difference raises exactly one event
    // however slow the machine is; otherwise a slow checkpoint would fold later differences of
    // a still-diverged flow into the outstanding request.
    let n: u32 = 4000;
    let poisoned = |id: u32| id % 97 == 5;
    let injected = (0..n).filter(|&id| poisoned(id)).count() as u64;
    let mut poisons_sent = 0u64;
    for id in 0..n {
        let flow = (id % 4) as u16;
        let p = frame(flow, id, false);
        let s = frame(flow, id, poisoned(id));
        if poisoned(id) {
            assert!(
                wait_for(20, || plane.checkpoints.load(Ordering::SeqCst)
                    >= poisons_sent),
                "checkpoint {poisons_sent} not applied"
            );
            poisons_sent += 1;
        }
        {
            let mut g = plane.shard.lock().unwrap();
            let Shard { cmp, out } = &mut *g;
            let now = now_ns();
            cmp.process(Side::Primary, VecBuf::from_slice(&p), now, out);
            cmp.process(Side::Secondary, VecBuf::from_slice(&s), now, out);
            assert!(cmp.counters().balanced(), "{:?}", cmp.counters());
        }
        if id % 64 == 0 {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    // Everything held for a checkpoint is released once Xen's answers are applied.
    assert!(
        wait_for(20, || plane
            .shard
            .lock()
            .unwrap()
            .cmp
            .counters()
            .queued_primary
            == 0),
        "{:?}",
        plane.shard.lock().unwrap().cmp.counters()
    );
    stop.store(true, Ordering::SeqCst);
    let answered = xen_thread.join().unwrap();
    let m = run.join();

    let g = plane.shard.lock().unwrap();
    let k = g.cmp.counters().clone();
    assert!(k.balanced(), "{k:?}");
    assert_eq!(
        (k.primary_in, k.queued_primary, k.queued_secondary),
        (n as u64, 0, 0)
    );
    let mut ids: Vec<u32> = g.out.released.iter().map(|r| r.0).collect();
    ids.sort_unstable();
    assert_eq!(
        ids,
        (0..n).collect::<Vec<_>>(),
        "every primary released exactly once"
    );
    assert!(k.rel_checkpoint > 0 && k.rel_matched > 0, "{k:?}");
    assert_eq!(g.out.freed, n as u64);

    let st = m.stats();
    assert_eq!(st.inputs_dropped, 0);
    assert_eq!(
        st.divergences, g.out.events,
        "every divergence reached management"
    );
    assert_eq!(
        st.divergences, injected,
        "one divergence per injected difference"
    );
    assert_eq!(k.events_total(), injected, "{k:?}");
    let ck = st.checkpoint;
    assert_eq!(ck.requested, st.divergences);
    assert_eq!(ck.issued + ck.coalesced, ck.requested);
    assert_eq!(
        st.sinks["xen"]["sent"].as_u64().unwrap(),
        ck.issued + ck.resent
    );
    assert_eq!(ck.completed, answered, "each COLO_CHECKPOINT applied once");
    assert_eq!(plane.checkpoints.load(Ordering::SeqCst), answered);
    assert!(!ck.outstanding);
    let cap = st.capture.unwrap();
    assert_eq!(cap.divergences, g.out.captured_events);
    assert!(cap.divergences > 0);
}
