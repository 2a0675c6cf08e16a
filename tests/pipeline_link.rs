//! The encapsulated link's loss/reorder reporting: counters per frame, and
//! `Event::LinkSequence` to management (the reporter alone with plain buffers; then the
//! pipeline's `LinkRx` on a DPDK ring pair in a child process).

mod dpdk_common;

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::control::Event;
use colo_proxy::link::encap::{
    encap, EncapConfig, EncapRx, ETHERTYPE_EXPERIMENTAL, STREAM_MIRROR, STREAM_SECONDARY,
};
use colo_proxy::mgmt::{EventSender, Input};
use colo_proxy::pipeline::linkio::SeqReporter;
use crossbeam::channel::Receiver;
use dpdk_common::{eal_args, in_child, result, spawn};

const MS: u64 = 1_000_000;

/// Feed `seqs` of `stream` through `rx` as encapsulated 60-byte frames.
fn feed(rx: &mut EncapRx, stream: u8, seqs: &[u32]) {
    for &seq in seqs {
        let mut b = VecBuf::from_slice(&[0x5a; 60]);
        encap(&mut b, &EncapConfig::default(), stream, 0, seq).unwrap();
        rx.decap(&mut b).unwrap();
        assert_eq!(b.data(), &[0x5a; 60]);
    }
}

/// The LinkSequence events queued so far, as (stream, totals, news).
fn drain(rx: &Receiver<Input>) -> Vec<Event> {
    let mut v = Vec::new();
    while let Ok(i) = rx.try_recv() {
        match i {
            Input::Event(e @ Event::LinkSequence { .. }) => v.push(e),
            other => panic!("unexpected input {other:?}"),
        }
    }
    v
}

#[test]
fn reporter_sends_what_changed_at_most_once_per_period() {
    let (tx, events) = EventSender::channel(16);
    let mut r = SeqReporter::new(tx, "mirror");
    let mut rx: EncapRx = EncapRx::new(ETHERTYPE_EXPERIMENTAL);

    // In order on both streams: nothing to report.
    feed(&mut rx, STREAM_MIRROR, &[0, 1, 2]);
    feed(&mut rx, STREAM_SECONDARY, &[0, 1, 2]);
    assert_eq!(r.report(&rx, 10 * MS), 0);

    // Stream 1: 3 and 4 skipped (gap), 3 arrives late, then 3 again (duplicate).
    feed(&mut rx, STREAM_SECONDARY, &[5, 3, 3]);
    assert_eq!(r.report(&rx, 20 * MS), 1);
    let ev = drain(&events);
    assert_eq!(
        ev,
        vec![Event::LinkSequence {
            link: "mirror".into(),
            stream: STREAM_SECONDARY,
            received: 6,
            lost: 1,
            gaps: 1,
            reordered: 1,
            duplicates: 1,
            resyncs: 0,
            new_gaps: 1,
            new_reordered: 1,
            new_duplicates: 1,
            new_resyncs: 0,
            time_ns: 20 * MS,
        }]
    );
    assert!(ev[0].to_json_line().contains(r#""event":"link-sequence""#));

    // Nothing new: nothing sent, even after the period.
    assert_eq!(r.report(&rx, 500 * MS), 0);

    // A new gap on stream 0 inside the period waits for it; totals then, news since the last.
    feed(&mut rx, STREAM_MIRROR, &[9]);
    assert_eq!(
        r.report(&rx, 510 * MS),
        1,
        "first change after a quiet spell goes at once"
    );
    feed(&mut rx, STREAM_MIRROR, &[20]);
    assert_eq!(r.report(&rx, 550 * MS), 0, "inside the period");
    assert_eq!(r.report(&rx, 610 * MS), 1);
    match &drain(&events)[..] {
        [Event::LinkSequence {
            stream: s0,
            new_gaps: 1,
            gaps: 1,
            lost: 6,
            ..
        }, Event::LinkSequence {
            stream: s1,
            new_gaps: 1,
            gaps: 2,
            lost: 16,
            new_reordered: 0,
            ..
        }] => assert_eq!((*s0, *s1), (STREAM_MIRROR, STREAM_MIRROR)),
        other => panic!("unexpected events {other:?}"),
    }
}

#[test]
fn reporter_retries_when_management_is_behind() {
    let (tx, events) = EventSender::channel(1);
    let probe = tx.clone();
    let mut r = SeqReporter::new(tx, "secondary-out");
    let mut rx: EncapRx = EncapRx::new(ETHERTYPE_EXPERIMENTAL);
    feed(&mut rx, STREAM_MIRROR, &[0, 4]);
    feed(&mut rx, STREAM_SECONDARY, &[0, 7]);
    // Room for one event: stream 0 goes, stream 1 is dropped (counted) and kept for later.
    assert_eq!(r.report(&rx, MS), 1);
    assert_eq!(probe.dropped(), 1);
    assert_eq!(drain(&events).len(), 1);
    assert_eq!(r.report(&rx, 200 * MS), 1);
    match &drain(&events)[..] {
        [Event::LinkSequence {
            link,
            stream,
            new_gaps: 1,
            lost: 6,
            ..
        }] => assert_eq!(
            (link.as_str(), *stream),
            ("secondary-out", STREAM_SECONDARY)
        ),
        other => panic!("unexpected events {other:?}"),
    }
}

/// The pipeline's receiver on a DPDK ring pair: frames decapsulated and delivered, loss and
/// reordering counted per frame, one event at housekeeping.
#[test]
fn link_rx_counts_and_reports_loss_and_reordering() {
    const TEST: &str = "link_rx_counts_and_reports_loss_and_reordering";
    if in_child(TEST) {
        use colo_proxy::dpdk::{Eal, MbufBurst, Mempool, Port, PortConfig};
        use colo_proxy::pipeline::counters::{Counter, LcoreCounters};
        use colo_proxy::pipeline::io::BURST;
        use colo_proxy::pipeline::lcore::{LoopCtx, Phase};
        use colo_proxy::pipeline::linkio::LinkRx;

        let _eal = Eal::init(&eal_args(&[])).expect("EAL");
        let pool = Mempool::new("lk", 1023).expect("pool");
        let (a, b) = Port::ring_pair("lk_a", "lk_b").expect("ring pair");
        let mut pa = Port::open(a, &PortConfig::default(), &pool).expect("open a");
        let mut pb = Port::open(b, &PortConfig::default(), &pool).expect("open b");
        pa.start().expect("start a");
        pb.start().expect("start b");
        let mut txq = pa.tx_queue(0).expect("txq");
        let (tx, events) = EventSender::channel(16);
        let mut link = LinkRx::encap_port(
            pb.rx_queue(0).expect("rxq"),
            ETHERTYPE_EXPERIMENTAL,
            Some(SeqReporter::new(tx, "mirror")),
        );
        // 0..=9 without 4 and 5, then 4 late: 2 lost at the gap, 1 of them arrives late.
        let seqs = [0u32, 1, 2, 3, 6, 7, 8, 9, 4];
        let mut out: MbufBurst<BURST> = MbufBurst::new();
        for &seq in &seqs {
            let mut m = pool.alloc().expect("mbuf");
            m.set_data(&[seq as u8; 64]).expect("fits");
            encap(&mut m, &EncapConfig::default(), STREAM_MIRROR, 0, seq).expect("headroom");
            out.push(m).expect("room");
        }
        result("sent", txq.tx_burst(&mut out));
        let counters = LcoreCounters::default();
        let cx = LoopCtx {
            now_ns: 5 * MS,
            counters: &counters,
            phase: Phase::Run,
        };
        let mut got: MbufBurst<BURST> = MbufBurst::new();
        result("received", link.recv(&mut got, &cx));
        let inner_ok = got
            .as_slice()
            .iter()
            .zip(&seqs)
            .all(|(m, &s)| m.data() == [s as u8; 64]);
        result("inner_ok", inner_ok as u8);
        result("counter_lost", counters.get(Counter::LinkLost));
        result("counter_reordered", counters.get(Counter::LinkReordered));
        result("events_before", drain(&events).len());
        link.housekeeping(&cx);
        for e in drain(&events) {
            if let Event::LinkSequence {
                link,
                stream,
                lost,
                gaps,
                reordered,
                ..
            } = e
            {
                result(
                    "event",
                    format!("{link}/{stream} lost={lost} gaps={gaps} reordered={reordered}"),
                );
            }
        }
        drop(got);
        return;
    }
    let c = spawn(TEST);
    c.assert_ok();
    assert_eq!(c.num("sent"), 9);
    assert_eq!(c.num("received"), 9);
    assert_eq!(
        c.num("inner_ok"),
        1,
        "frames decapsulated in order of arrival"
    );
    assert_eq!(
        c.num("counter_lost"),
        2,
        "the gap counts both missing frames"
    );
    assert_eq!(c.num("counter_reordered"), 1);
    assert_eq!(c.num("events_before"), 0, "nothing is sent per packet");
    assert_eq!(c.get("event"), "mirror/0 lost=1 gaps=1 reordered=1");
}
