//! Output commit under overload: backlog gauges, and (below) no primary leaving uncompared on
//! any overflow path.

mod compare_support;

use colo_proxy::compare::{Backlog, CompareConfig, PrimaryDrop, Reason, Release, SecondaryFree};
use compare_support::*;

#[test]
fn backlog_counts_queued_packets_and_bytes_per_side_and_the_oldest_primary() {
    let mut h = H::new();
    assert_eq!(h.c.backlog(), Backlog::default(), "empty shard");
    let t0 = h.now;
    let a = tcp(1000, 1, ACK, b"aaaa");
    let b = tcp(1004, 1, ACK, b"bbbbbbbb");
    h.p(&a);
    h.now += MS;
    h.p(&b);
    let want = Backlog {
        primary_packets: 2,
        primary_bytes: (a.len() + b.len()) as u64,
        secondary_packets: 0,
        secondary_bytes: 0,
        oldest_primary_ns: Some(t0),
    };
    assert_eq!(h.c.backlog(), want);
    // A secondary segment ahead of the primaries' bytes waits in the secondary queue.
    let s = as_secondary(tcp(2000, 1, ACK, b"zz"));
    h.s(&s);
    let k = h.c.backlog();
    assert_eq!(
        (k.secondary_packets, k.secondary_bytes),
        (1, s.len() as u64)
    );
    // The secondary's copy of `a` releases `a`; `b` is now the oldest, exact after a scan.
    h.s(&as_secondary(a.clone()));
    assert_eq!(h.r.frames(), vec![a.clone()]);
    let k = h.c.backlog();
    assert_eq!((k.primary_packets, k.primary_bytes), (1, b.len() as u64));
    assert!(
        k.oldest_primary_ns.unwrap() <= t0 + MS,
        "a lower bound between scans"
    );
    h.advance(1000 * MS);
    assert_eq!(
        h.c.backlog().oldest_primary_ns,
        Some(t0 + MS),
        "exact after a scan"
    );
    h.s(&as_secondary(b.clone()));
    let k = h.c.backlog();
    assert_eq!(
        (k.primary_packets, k.primary_bytes, k.oldest_primary_ns),
        (0, 0, None)
    );
    h.checkpoint();
    assert_eq!(
        h.c.backlog(),
        Backlog::default(),
        "checkpoint empties every queue"
    );
    // A fresh backlog after an empty one starts at its first arrival.
    h.now += 5 * MS;
    h.p(&tcp(5000, 1, ACK, b"c"));
    assert_eq!(h.c.backlog().oldest_primary_ns, Some(h.now));
}

#[test]
fn backlog_is_zero_after_flush_all() {
    let mut h = H::with(CompareConfig::default());
    h.p(&tcp(1, 1, ACK, b"x"));
    h.s(&as_secondary(tcp(100, 1, ACK, b"y")));
    h.c.flush_all(&mut h.r);
    assert_eq!(h.c.backlog(), Backlog::default());
}

// ------------------------------------------------------------ output commit on overflow

const ISN: u32 = 7_000_000;
const CACK: u32 = 99;

fn seg(i: u32) -> Vec<u8> {
    tcp(
        ISN + 10 * i,
        CACK,
        ACK | PSH,
        format!("segment{i:03}").as_bytes(),
    )
}

/// The same flow shape on another connection (client port + `n`).
fn on_conn(mut f: Vec<u8>, n: u8) -> Vec<u8> {
    f[37] = f[37].wrapping_add(n); // TCP destination port low byte
    f
}

fn assert_committed(h: &H) {
    assert!(
        h.r.unverified().is_empty(),
        "released unverified: {:?}",
        h.r.unverified()
    );
    let k = h.c.counters();
    assert!(k.balanced(), "{k:?}");
    assert_eq!(k.released_uncompared(), k.rel_uncomparable + k.rel_flush);
}

#[test]
fn tcp_queue_full_drops_the_new_segment_and_its_retransmission_is_matched_later() {
    let mut h = H::with(CompareConfig {
        queue_size: 4,
        ..CompareConfig::default()
    });
    // The PVM runs 8 segments ahead of the SVM: 4 queue, 4 are dropped.
    for i in 0..8 {
        h.p(&seg(i));
    }
    assert!(h.r.released.is_empty());
    assert_eq!(h.r.drops(), vec![PrimaryDrop::QueueFull; 4]);
    assert_eq!(
        h.r.dropped.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        (4..8).map(seg).collect::<Vec<_>>()
    );
    assert!(h.r.events.is_empty(), "a TCP drop is no divergence");
    let k = h.c.counters();
    assert_eq!(
        (k.drop_queue_full, k.events_total(), k.queued_primary),
        (4, 0, 4)
    );
    // The SVM produces all 8; the first 4 release the queued primaries in order, the other
    // 4 wait for the PVM's retransmissions.
    for i in 0..8 {
        h.s(&as_secondary(seg(i)));
    }
    assert_eq!(h.r.frames(), (0..4).map(seg).collect::<Vec<_>>());
    assert_eq!(h.queued(), (0, 4));
    // TCP recovery: the PVM retransmits what the client never acknowledged.
    for i in 4..8 {
        h.p(&seg(i));
    }
    assert_eq!(h.r.frames(), (0..8).map(seg).collect::<Vec<_>>());
    assert_eq!(h.r.hows(), vec![Release::Matched; 8]);
    assert_eq!(h.queued(), (0, 0));
    assert!(h.r.events.is_empty());
    // Nothing was diverged: a scan long after raises nothing.
    h.advance(10_000 * MS);
    assert!(h.r.events.is_empty());
    assert_committed(&h);
}

#[test]
fn tcp_pool_empty_drops_the_new_segment_without_event_and_recovers() {
    let mut h = H::with(CompareConfig {
        pool_size: 3,
        ..CompareConfig::default()
    });
    for i in 0..3 {
        h.p(&seg(i));
    }
    // Both another connection and this one find the pool empty.
    h.p(&on_conn(seg(0), 1));
    h.p(&seg(3));
    assert_eq!(h.r.drops(), vec![PrimaryDrop::PoolEmpty; 2]);
    assert_eq!(h.c.counters().drop_pool_empty, 2);
    assert!(h.r.events.is_empty() && h.r.released.is_empty());
    for i in 0..4 {
        h.s(&as_secondary(seg(i)));
    }
    h.p(&seg(3)); // retransmission
    h.s(&as_secondary(on_conn(seg(0), 1)));
    h.p(&on_conn(seg(0), 1)); // retransmission on the other connection
    assert_eq!(h.r.hows(), vec![Release::Matched; 5]);
    assert_eq!(&h.r.frames()[..4], &(0..4).map(seg).collect::<Vec<_>>()[..]);
    assert!(h.r.events.is_empty());
    assert_committed(&h);
}

#[test]
fn tcp_drop_on_a_diverged_connection_keeps_order_and_the_checkpoint_releases_the_rest() {
    let mut h = H::with(CompareConfig {
        queue_size: 3,
        ..CompareConfig::default()
    });
    h.p(&seg(0));
    h.s(&as_secondary(tcp(ISN, CACK, ACK | PSH, b"segmentXXX"))); // mismatch
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
    for i in 1..5 {
        h.p(&seg(i));
    }
    assert_eq!(h.r.drops(), vec![PrimaryDrop::QueueFull; 2]);
    assert_eq!(
        h.r.reasons(),
        vec![Reason::PayloadMismatch],
        "no second event"
    );
    h.checkpoint();
    assert_eq!(h.r.frames(), (0..3).map(seg).collect::<Vec<_>>());
    assert_eq!(h.r.hows(), vec![Release::Checkpoint; 3]);
    // After the checkpoint every primary byte counts as compared: the retransmissions go.
    h.p(&seg(3));
    h.p(&seg(4));
    assert_eq!(h.r.frames(), (0..5).map(seg).collect::<Vec<_>>());
    assert_committed(&h);
}

#[test]
fn datagram_queue_full_drops_the_newest_and_requests_a_checkpoint() {
    let mut h = H::with(CompareConfig {
        queue_size: 2,
        ..CompareConfig::default()
    });
    let d: Vec<Vec<u8>> = (0..4u8).map(|i| udp(&[i; 8])).collect();
    for f in &d {
        h.p(f);
    }
    assert!(h.r.released.is_empty());
    assert_eq!(h.r.drops(), vec![PrimaryDrop::QueueFull; 2]);
    assert_eq!(
        h.r.reasons(),
        vec![Reason::QueueOverflow],
        "one event per episode"
    );
    assert_eq!(h.c.counters().events_suppressed, 1);
    // The secondary's copies are useless now (FIFO pairing lost): dropped as diverged.
    h.s(&d[0]);
    assert_eq!(h.c.counters().sec_drop_diverged, 1);
    assert!(h.r.released.is_empty());
    h.checkpoint();
    assert_eq!(h.r.frames(), d[..2].to_vec());
    assert_eq!(h.r.hows(), vec![Release::Checkpoint; 2]);
    // Pairing restarts after the checkpoint.
    h.p(&d[3]);
    h.s(&d[3]);
    assert_eq!(h.r.hows().last(), Some(&Release::Matched));
    assert_committed(&h);
}

#[test]
fn datagram_pool_empty_drops_the_newest_with_a_pool_event() {
    let mut h = H::with(CompareConfig {
        pool_size: 1,
        ..CompareConfig::default()
    });
    h.p(&udp(b"one"));
    h.p(&udp(b"two"));
    assert_eq!(h.r.drops(), vec![PrimaryDrop::PoolEmpty]);
    assert_eq!(h.r.reasons(), vec![Reason::PoolExhausted]);
    assert!(h.r.released.is_empty());
    assert_committed(&h);
}

fn flow(port: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = tcp(ISN, CACK, ACK, payload);
    f[37] = port;
    f
}

#[test]
fn evicted_connection_data_is_held_and_released_only_by_checkpoint_done() {
    let mut h = H::with(CompareConfig {
        table_capacity: 2,
        ..CompareConfig::default()
    });
    let a0 = flow(1, b"a0");
    let a1 = tcp(ISN + 2, CACK, ACK, b"a1");
    let a1 = on_conn(a1, 1u8.wrapping_sub(CPORT as u8));
    h.p(&a0);
    h.p(&a1);
    h.now += 1;
    h.p(&flow(2, b"b0"));
    h.now += 1;
    h.p(&flow(3, b"c0")); // evicts flow 1 with two queued primaries
    assert!(h.r.released.is_empty(), "evicted data is not released");
    assert_eq!(h.r.reasons(), vec![Reason::TableOverflow]);
    let k = h.c.counters();
    assert_eq!(
        (k.held_primary, k.held_evicted, k.queued_primary),
        (2, 2, 4)
    );
    assert_eq!(h.c.backlog().primary_packets, 4, "held packets are backlog");
    // The secondary's copies cannot release them any more (the connection is gone: its
    // new incarnation waits behind the held packets), nor can time.
    h.s(&as_secondary(a0.clone()));
    h.advance(5_000 * MS);
    assert!(h.r.released.is_empty());
    // The request is repeated while they wait (a lost request cannot hold them for ever).
    assert!(h.r.reasons().len() >= 2, "{:?}", h.r.reasons());
    assert!(h.r.reasons().contains(&Reason::TableOverflow));
    h.checkpoint();
    assert_eq!(
        h.r.frames()[..2],
        [a0, a1],
        "held list first, in arrival order"
    );
    assert!(h.r.hows().iter().all(|x| *x == Release::Checkpoint));
    assert_eq!(h.r.released.len(), 4);
    assert_eq!(h.c.counters().held_primary, 0);
    assert_committed(&h);
}

#[test]
fn a_new_connection_of_a_held_flow_waits_behind_the_held_packets() {
    let mut h = H::with(CompareConfig {
        table_capacity: 1,
        ..CompareConfig::default()
    });
    let a0 = flow(1, b"a0");
    h.p(&a0);
    h.p(&flow(2, b"b0")); // evicts flow 1: a0 held
    assert_eq!(h.c.counters().held_primary, 1);
    // Flow 1 comes back (evicting flow 2 in turn): its new packet must not overtake a0,
    // even though the secondary produced the same bytes.
    let a1 = on_conn(
        tcp(ISN + 2, CACK, ACK, b"a1"),
        1u8.wrapping_sub(CPORT as u8),
    );
    h.p(&a1);
    h.s(&as_secondary(a1.clone()));
    assert!(h.r.released.is_empty(), "{:?}", h.r.hows());
    h.checkpoint();
    let f = h.r.frames();
    let pos = |x: &Vec<u8>| f.iter().position(|g| g == x).unwrap();
    assert!(pos(&a0) < pos(&a1), "order within the flow kept");
    assert_eq!(f.len(), 3);
    assert_committed(&h);
}

#[test]
fn expired_connection_data_is_held_for_the_checkpoint_with_an_event() {
    let mut h = H::with(CompareConfig {
        idle_timeout_ns: 2_000 * MS,
        timeout_ns: 60_000 * MS,
        ..CompareConfig::default()
    });
    let w = tcp(ISN, CACK, ACK, b"never matched");
    h.p(&w);
    h.advance(2_500 * MS);
    assert_eq!(h.c.connections(), 0);
    assert!(h.r.released.is_empty());
    assert_eq!(h.r.reasons(), vec![Reason::Expired]);
    assert_eq!(h.c.counters().held_expired, 1);
    assert_eq!(h.c.backlog().oldest_primary_ns, Some(1_000 * MS));
    h.advance(30_000 * MS);
    assert!(h.r.released.is_empty(), "time alone never releases it");
    h.checkpoint();
    assert_eq!(h.r.frames(), vec![w]);
    assert_eq!(h.r.hows(), vec![Release::Checkpoint]);
    assert_committed(&h);
}

#[test]
fn held_packets_follow_the_opt_in_release_after_rule() {
    let mut h = H::with(CompareConfig {
        table_capacity: 1,
        release_after_ns: 4_000 * MS,
        ..CompareConfig::default()
    });
    h.p(&flow(1, b"a0"));
    h.p(&flow(2, b"b0")); // a0 held
    h.advance(3_000 * MS);
    assert!(h.r.released.is_empty());
    h.advance(1_000 * MS);
    assert_eq!(h.r.hows()[0], Release::Timeout);
    assert_eq!(h.r.frames()[0], flow(1, b"a0"));
    assert_eq!(h.c.counters().held_primary, 0);
}

#[test]
fn shutdown_drops_every_unverified_primary_and_releases_nothing() {
    let mut h = H::with(CompareConfig {
        table_capacity: 2,
        ..CompareConfig::default()
    });
    h.both(&flow(1, b"ok"));
    h.p(&on_conn(
        tcp(ISN + 2, CACK, ACK, b"q1"),
        1u8.wrapping_sub(CPORT as u8),
    ));
    h.now += 1;
    h.p(&flow(2, b"q2"));
    h.now += 1;
    h.p(&flow(3, b"q3")); // evicts flow 1: q1 held
    let mut z = tcp(ISN + 100, CACK, ACK, b"zz");
    z[37] = 3; // flow 3
    h.s(&as_secondary(z));
    assert_eq!(h.c.counters().held_primary, 1);
    let released = h.r.released.len();
    h.c.drop_all(&mut h.r);
    assert_eq!(h.r.released.len(), released, "shutdown releases nothing");
    assert_eq!(h.r.drops(), vec![PrimaryDrop::Shutdown; 3]);
    let k = h.c.counters();
    assert_eq!(
        (
            k.drop_shutdown,
            k.queued_primary,
            k.queued_secondary,
            k.held_primary
        ),
        (3, 0, 0, 0)
    );
    assert_eq!(h.c.connections(), 0);
    assert_eq!(h.c.backlog(), Backlog::default());
    assert_committed(&h);
}

#[test]
fn failover_flush_releases_the_held_list_first_then_the_table() {
    let mut h = H::with(CompareConfig {
        table_capacity: 1,
        ..CompareConfig::default()
    });
    let a = flow(1, b"a");
    let b = flow(2, b"b");
    h.p(&a);
    h.p(&b); // a held
    h.c.flush_all(&mut h.r);
    assert_eq!(h.r.frames(), vec![a, b]);
    assert_eq!(h.r.hows(), vec![Release::Flush; 2]);
    assert_eq!(h.c.backlog(), Backlog::default());
    assert_committed(&h);
}

#[test]
fn backlog_oldest_includes_held_packets_after_a_scan() {
    let mut h = H::with(CompareConfig {
        table_capacity: 1,
        ..CompareConfig::default()
    });
    let t0 = h.now;
    h.p(&flow(1, b"a"));
    h.now += 10 * MS;
    h.p(&flow(2, b"b")); // a held
    h.advance(1_000 * MS);
    assert_eq!(h.c.backlog().oldest_primary_ns, Some(t0));
    assert_eq!(h.c.backlog().primary_packets, 2);
}

/// The user's case: a bulk server→client stream, the SVM's output reaching compare later than
/// the PVM's, the PVM far more than `queue_size` segments ahead. Nothing unverified reaches the
/// client, no checkpoint is asked for, and TCP's retransmissions complete the stream.
fn bulk_stream(n: u32, q: usize, window: u32, pvm_speed: u32, svm_speed: u32) {
    bulk_stream_with(n, q, window, pvm_speed, svm_speed, false);
}

/// `fallback`: let time pass (1 ms a round) and apply the checkpoints asked for.
fn bulk_stream_with(
    n: u32,
    q: usize,
    window: u32,
    pvm_speed: u32,
    svm_speed: u32,
    fallback: bool,
) -> H {
    let mut h = H::with(CompareConfig {
        queue_size: q,
        ..CompareConfig::default()
    });
    let payload = |i: u32| vec![(i % 251) as u8; 100];
    let pseg = |i: u32| tcp(ISN + 100 * i, CACK, ACK | PSH, &payload(i));
    // Both VMs run the same sender: `window` segments past the client's ack, going back to
    // the ack (a retransmission timeout) when the window is used up. The SVM is slower.
    let send = |next: &mut u32, acked: u32, speed: u32, out: &mut Vec<u32>| {
        if *next >= acked + window || *next >= n {
            *next = acked;
        }
        for _ in 0..speed {
            if *next < n && *next < acked + window {
                out.push(*next);
                *next += 1;
            }
        }
    };
    let (mut acked, mut pnext, mut snext) = (0u32, 0u32, 0u32);
    let mut got = std::collections::BTreeSet::new();
    let mut rounds = 0;
    while acked < n {
        rounds += 1;
        assert!(
            rounds < 20_000,
            "no progress: acked {acked} {:?}",
            h.c.counters()
        );
        let (mut ps, mut ss) = (Vec::new(), Vec::new());
        send(&mut pnext, acked, pvm_speed, &mut ps);
        send(&mut snext, acked, svm_speed, &mut ss);
        let r0 = h.r.released.len();
        for i in ps {
            h.p(&pseg(i));
        }
        for i in ss {
            h.s(&as_secondary(pseg(i)));
        }
        // The client acknowledges the in-order prefix it received.
        for (f, _) in &h.r.released[r0..] {
            got.insert((colo_proxy::wire::parse(f).unwrap().tcp.unwrap().seq - ISN) / 100);
        }
        while got.contains(&acked) {
            acked += 1;
        }
        if fallback {
            let e0 = h.r.events.len();
            h.advance(MS);
            if h.r.events.len() > e0 {
                h.checkpoint();
            }
        }
    }
    assert!(
        h.c.counters().drop_queue_full > 0,
        "the test must overflow the queue"
    );
    if fallback {
        assert_committed(&h);
        return h;
    }
    assert!(h.r.events.is_empty(), "{:?}", h.r.reasons());
    assert_committed(&h);
    // Every released segment was matched (or a retransmission of matched data).
    assert!(h
        .r
        .hows()
        .iter()
        .all(|x| matches!(x, Release::Matched | Release::Retransmit)));
    h
}

#[test]
fn bulk_stream_with_a_lagging_svm_completes_by_retransmission_without_checkpoints() {
    bulk_stream(200, 16, 64, 8, 3);
    bulk_stream(300, 8, 64, 16, 2);
    bulk_stream(300, 32, 48, 12, 5);
    bulk_stream(150, 4, 16, 6, 1);
}

/// Far harsher (a window 16 times the queue, no congestion control, the SVM 7 times slower):
/// still no checkpoint, because a retransmission filling a hole takes the place of the queue's
/// last segment. Should more holes open than the compare state remembers, the fallback is a
/// timeout and a checkpoint, never a release: checked with time passing and checkpoints
/// applied.
#[test]
fn a_much_harsher_bulk_stream_completes_too_and_the_fallback_never_releases_unverified() {
    bulk_stream(400, 8, 128, 20, 3);
    bulk_stream(500, 64, 256, 40, 7);
    let h = bulk_stream_with(400, 8, 128, 20, 3, true);
    assert!(
        h.r.reasons()
            .iter()
            .all(|r| matches!(r, Reason::PrimaryTimeout | Reason::SecondaryTimeout)),
        "only timeouts: {:?}",
        h.r.reasons()
    );
}

/// Bytes beyond a hole (a dropped primary): matched ranges are merged and remembered, so a
/// secondary copy of them is a duplicate, a primary copy a retransmission, a primary spanning
/// the hole and the range needs only the hole's bytes, and secondaries inside are freed.
#[test]
fn matched_ranges_beyond_a_hole_are_remembered() {
    let mut h = H::new();
    let at = |o: u32, n: usize| tcp(ISN + o, CACK, ACK, &vec![b'a' + (o % 26) as u8; n]);
    h.both(&at(0, 10)); // frontier at 10; 10..20 will be the hole
                        // Secondary first, in two pieces, then the primary: matched through the queue.
    h.s(&as_secondary(at(20, 5)));
    h.s(&as_secondary(tcp(ISN + 25, CACK, ACK, &[b'u'; 5])));
    let p20 = tcp(ISN + 20, CACK, ACK, &[[b'u'; 5], [b'u'; 5]].concat());
    h.p(&p20);
    assert_eq!(h.r.hows(), vec![Release::Matched; 2]);
    assert_eq!(
        h.queued(),
        (0, 0),
        "secondaries inside the matched range are freed"
    );
    // 30..40 adjoins: one range 20..40.
    h.both(&at(30, 10));
    // A secondary retransmission inside it is a duplicate (not queued).
    h.s(&as_secondary(at(30, 10)));
    assert_eq!(h.r.freed.last().unwrap().1, SecondaryFree::Duplicate);
    // A primary retransmission inside it goes at once, as compared data.
    h.p(&at(30, 10));
    assert_eq!(h.r.hows().last(), Some(&Release::Retransmit));
    // The PVM retransmits the hole coalesced with compared bytes: only 10..20 is compared.
    let fill = tcp(
        ISN + 10,
        CACK,
        ACK,
        &[&[b'k'; 10][..], &[b'u'; 10][..]].concat(),
    );
    h.p(&fill);
    assert_eq!(h.r.released.len(), 4, "waits for the hole's bytes");
    h.s(&as_secondary(tcp(ISN + 10, CACK, ACK, &[b'k'; 10])));
    assert_eq!(h.r.hows().last(), Some(&Release::Matched));
    assert_eq!(h.r.frames().last(), Some(&fill));
    assert_eq!(h.queued(), (0, 0));
    assert!(h.r.events.is_empty());
    // The frontier joined the range: bytes below 40 are retransmissions now.
    h.p(&at(35, 5));
    assert_eq!(h.r.hows().last(), Some(&Release::Retransmit));
    assert_committed(&h);
}

#[test]
fn a_hole_filler_meeting_a_full_queue_takes_the_last_segments_place() {
    let mut h = H::with(CompareConfig {
        queue_size: 3,
        ..CompareConfig::default()
    });
    // seg 0 was lost before compare: 1..3 fill the queue behind the hole.
    for i in 1..4 {
        h.p(&seg(i));
    }
    h.p(&seg(0)); // the PVM's retransmission of the hole
    assert_eq!(h.r.drops(), vec![PrimaryDrop::QueueFull]);
    assert_eq!(
        h.r.dropped[0].0,
        seg(3),
        "the last segment in the stream made room"
    );
    assert_eq!(h.queued().0, 3);
    assert!(h.r.events.is_empty());
    for i in 0..4 {
        h.s(&as_secondary(seg(i)));
    }
    assert_eq!(h.r.frames(), (0..3).map(seg).collect::<Vec<_>>());
    h.p(&seg(3)); // retransmitted in turn
    assert_eq!(h.r.frames(), (0..4).map(seg).collect::<Vec<_>>());
    assert_eq!(h.r.hows(), vec![Release::Matched; 4]);
    assert_committed(&h);
    // A segment above the tail with the queue full is the one dropped.
    let mut h = H::with(CompareConfig {
        queue_size: 1,
        ..CompareConfig::default()
    });
    h.p(&seg(0));
    h.p(&seg(1));
    assert_eq!(h.r.dropped[0].0, seg(1));
}
