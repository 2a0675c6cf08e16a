//! TCP stream compare: every behaviour of issue 3 with literal frames, the QEMU scenarios of
//! qemu-colo.md §4.5/§4.7 where QEMU is right, and each QEMU defect shown fixed (test names say
//! which defect; each assertion would fail on QEMU's behaviour).

mod compare_support;

use colo_proxy::compare::{CompareConfig, PrimaryDrop, Reason, Release, SecondaryFree, Side};
use compare_support::*;
use etherparse::TcpOptionElement;

const ISN: u32 = 1_000_000;
const CACK: u32 = 555; // client's next seq, acked by the guest

// ---------------------------------------------------------------- data compare

#[test]
fn identical_segments_release_in_arrival_order_and_free_secondaries() {
    let mut h = H::new();
    let a = tcp(ISN, CACK, ACK | PSH, b"hello ");
    let b = tcp(ISN + 6, CACK, ACK | PSH, b"world");
    h.p(&a);
    h.p(&b);
    assert!(
        h.r.released.is_empty(),
        "nothing released before the secondary"
    );
    h.s(&as_secondary(a.clone()));
    h.s(&as_secondary(b.clone()));
    assert_eq!(h.r.frames(), vec![a, b]);
    assert_eq!(h.r.hows(), vec![Release::Matched, Release::Matched]);
    assert_eq!(h.r.freed.len(), 2);
    assert!(h.r.freed.iter().all(|f| f.1 == SecondaryFree::Matched));
    assert!(h.r.events.is_empty());
    assert_eq!(h.queued(), (0, 0));
}

#[test]
fn qemu_4_5_segmentation_3_plus_7_against_10_with_timestamp_option() {
    // Primary 3+7 bytes, secondary 10 bytes with a timestamp option (QEMU releases them).
    let mut h = H::new();
    let p1 = tcp(ISN, CACK, ACK, b"abc");
    let p2 = tcp(ISN + 3, CACK, ACK | PSH, b"defghij");
    let s = tcp_opts(
        ISN,
        CACK,
        ACK | PSH,
        b"abcdefghij",
        &[TcpOptionElement::Timestamp(7, 9)],
    );
    h.p(&p1);
    h.p(&p2);
    h.s(&s);
    assert_eq!(h.r.frames(), vec![p1, p2]);
    assert!(h.r.events.is_empty());
    assert_eq!(h.r.freed.len(), 1);
}

#[test]
fn segmentation_10_against_3_plus_7_the_reverse() {
    let mut h = H::new();
    let p = tcp(ISN, CACK, ACK, b"abcdefghij");
    h.p(&p);
    h.s(&tcp(ISN, CACK, ACK, b"abc"));
    assert!(h.r.released.is_empty(), "7 bytes still uncompared");
    h.s(&tcp(ISN + 3, CACK, ACK, b"defghij"));
    assert_eq!(h.r.frames(), vec![p]);
    assert_eq!(h.r.freed.len(), 2);
    assert!(h.r.events.is_empty());
}

#[test]
fn ip_header_window_checksum_flags_and_options_are_ignored() {
    let mut h = H::new();
    let p = tcp_opts(
        ISN,
        CACK,
        ACK | PSH,
        b"payload",
        &[TcpOptionElement::Timestamp(1, 2)],
    );
    // Secondary: other IP ID/TTL/checksums/window, no PSH, SACK + other timestamps.
    let s = as_secondary(tcp_opts(
        ISN,
        CACK,
        ACK,
        b"payload",
        &[
            TcpOptionElement::Timestamp(99, 98),
            TcpOptionElement::SelectiveAcknowledgement((1, 2), [None, None, None]),
        ],
    ));
    h.p(&p);
    h.s(&s);
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    assert!(h.r.events.is_empty());
}

#[test]
fn qemu_defect_6_ethernet_padding_is_not_payload() {
    // A 1-byte segment is a 55-byte frame; the guest NIC pads it to 60 with junk. QEMU counts
    // the 5 pad bytes as payload; we use the IP length.
    let mut h = H::new();
    let mut p = tcp(ISN, CACK, ACK, b"x");
    let mut s = as_secondary(p.clone());
    p.extend_from_slice(&[0xde, 0xad, 0xbe, 0xef, 0x01]);
    s.extend_from_slice(&[0, 0, 0, 0, 0]);
    h.p(&p);
    h.s(&s);
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    // The next byte must align at ISN+1, not ISN+6.
    let p2 = tcp(ISN + 1, CACK, ACK, b"y");
    h.both(&p2);
    assert_eq!(h.r.hows(), vec![Release::Matched, Release::Matched]);
    assert!(h.r.events.is_empty());
}

#[test]
fn single_changed_byte_raises_payload_mismatch_with_seq_range_and_capture() {
    let mut h = H::new();
    let p = tcp(ISN, CACK, ACK, b"0123456789");
    h.p(&p);
    h.s(&tcp(ISN, CACK, ACK, b"01234X6789"));
    assert!(
        h.r.released.is_empty(),
        "a diverged segment is held for the checkpoint"
    );
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
    let ev = h.r.events[0];
    assert_eq!(ev.side, Side::Primary);
    assert_eq!(ev.seq_range, Some((ISN, ISN + 10)));
    assert_eq!(ev.time_ns, h.now);
    let (cev, cp, cs) = &h.r.captures[0];
    assert_eq!(*cev, ev);
    assert_eq!(cp.as_deref(), Some(&p[..]));
    assert!(cs.as_ref().unwrap().ends_with(b"01234X6789"));
}

#[test]
fn mismatch_is_found_in_the_middle_of_a_differently_segmented_stream() {
    let mut h = H::new();
    h.p(&tcp(ISN, CACK, ACK, b"aaaabbbbcccc"));
    h.s(&tcp(ISN, CACK, ACK, b"aaaab"));
    assert!(h.r.events.is_empty(), "prefix equal so far");
    h.s(&tcp(ISN + 5, CACK, ACK, b"bbZcccc"));
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
}

#[test]
fn divergence_then_checkpoint_done_releases_in_order_and_traffic_flows_again() {
    let mut h = H::new();
    let p1 = tcp(ISN, CACK, ACK, b"good");
    let p2 = tcp(ISN + 4, CACK, ACK, b"BAD!");
    let p3 = tcp(ISN + 8, CACK, ACK, b"more");
    h.both(&p1);
    h.p(&p2);
    h.s(&tcp(ISN + 4, CACK, ACK, b"bad?"));
    h.p(&p3);
    h.s(&tcp(ISN + 8, CACK, ACK, b"more"));
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
    assert_eq!(h.queued().0, 2, "p2 and p3 held");
    h.checkpoint();
    assert_eq!(h.r.frames(), vec![p1, p2, p3]);
    assert_eq!(h.queued(), (0, 0));
    // After the checkpoint the secondary is a copy: new data compares normally, no event.
    let p4 = tcp(ISN + 12, CACK, ACK, b"after");
    h.both(&p4);
    assert_eq!(h.r.hows().last(), Some(&Release::Matched));
    assert_eq!(h.r.events.len(), 1);
    // And a stale secondary copy of pre-checkpoint data is just a duplicate.
    h.s(&tcp(ISN + 8, CACK, ACK, b"more"));
    assert_eq!(h.r.freed.last().unwrap().1, SecondaryFree::Duplicate);
}

#[test]
fn qemu_defect_10_checkpoint_resets_compare_state() {
    // QEMU keeps compare_seq/pack/sack across a checkpoint. After our checkpoint, a primary
    // pure ACK as far as the primary had acked before is released without a secondary ack.
    let mut h = H::new();
    h.p(&tcp(ISN, 900, ACK, b"x"));
    h.s(&tcp(ISN, 800, ACK, b"y")); // diverges
    h.checkpoint();
    let pure = tcp(ISN + 1, 900, ACK, b"");
    h.p(&pure);
    assert_eq!(h.r.frames().last().unwrap(), &pure);
}

// ---------------------------------------------------------------- out of order, wraparound

#[test]
fn qemu_defect_storm_segments_from_different_stream_positions_are_never_paired() {
    // QEMU pairs queue heads; the secondary's segments arrive in another order and size.
    let mut h = H::new();
    let data: Vec<u8> = (0..3000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut prim = Vec::new();
    for (i, c) in data.chunks(1448).enumerate() {
        prim.push(tcp(ISN + (i * 1448) as u32, CACK, ACK, c));
    }
    let mut sec = Vec::new();
    for (i, c) in data.chunks(1000).enumerate() {
        sec.push(tcp(ISN + (i * 1000) as u32, CACK, ACK, c));
    }
    sec.reverse(); // worst case: last segment first
    for f in &prim {
        h.p(f);
    }
    for f in &sec {
        h.s(f);
    }
    assert!(h.r.events.is_empty(), "{:?}", h.r.events);
    assert_eq!(h.r.frames(), prim);
    assert_eq!(h.r.released_stream(), data);
    assert_eq!(h.queued(), (0, 0));
}

#[test]
fn primary_out_of_order_arrival_is_released_in_stream_order() {
    // A segment arriving below the queue's tail is queued at its stream position (it may be a
    // retransmission filling a hole that later segments wait behind).
    let mut h = H::new();
    let a = tcp(ISN, CACK, ACK, b"AAAA");
    let b = tcp(ISN + 4, CACK, ACK, b"BBBB");
    h.p(&tcp(ISN - 1, CACK, SYN | ACK, b"")); // SYN-ACK anchors the stream at ISN
    h.s(&tcp(ISN - 1, CACK, SYN | ACK, b""));
    h.p(&b);
    h.p(&a);
    h.s(&tcp(ISN, CACK, ACK, b"AAAABBBB"));
    assert_eq!(h.r.frames()[1..], [a, b]);
    assert!(h.r.events.is_empty());
    assert_eq!(
        h.queued(),
        (0, 0),
        "frontier passed both, the secondary is freed"
    );
}

#[test]
fn sequence_wraparound() {
    let mut h = H::new();
    let base = u32::MAX - 5;
    let p1 = tcp(base, CACK, ACK, b"0123456789"); // crosses 2^32
    let p2 = tcp(base.wrapping_add(10), CACK, ACK, b"abc");
    h.p(&p1);
    h.p(&p2);
    h.s(&tcp(base, CACK, ACK, b"0123"));
    h.s(&tcp(base.wrapping_add(4), CACK, ACK, b"456789abc"));
    assert_eq!(h.r.frames(), vec![p1, p2]);
    assert!(h.r.events.is_empty());
}

#[test]
fn retransmission_of_compared_data_is_released_at_once() {
    let mut h = H::new();
    let p = tcp(ISN, CACK, ACK, b"0123456789");
    h.both(&p);
    let rtx = tcp(ISN + 2, CACK, ACK, b"2345");
    h.p(&rtx);
    assert_eq!(h.r.hows(), vec![Release::Matched, Release::Retransmit]);
    // A partly new retransmission compares only its new bytes.
    h.p(&tcp(ISN + 8, CACK, ACK, b"89AB"));
    assert_eq!(h.r.released.len(), 2);
    h.s(&tcp(ISN + 10, CACK, ACK, b"AB"));
    assert_eq!(h.r.hows().last(), Some(&Release::Matched));
    // A secondary retransmission of compared data is a duplicate.
    h.s(&tcp(ISN, CACK, ACK, b"0123"));
    assert_eq!(h.r.freed.last().unwrap().1, SecondaryFree::Duplicate);
    assert!(h.r.events.is_empty());
}

#[test]
fn secondary_overlapping_retransmissions_are_deduplicated() {
    let mut h = H::new();
    h.s(&tcp(ISN, CACK, ACK, b"0123"));
    h.s(&tcp(ISN + 1, CACK, ACK, b"12")); // inside the first
    h.s(&tcp(ISN, CACK, ACK, b"012345")); // covers the first
    assert_eq!(h.queued().1, 1);
    h.p(&tcp(ISN, CACK, ACK, b"012345"));
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    assert_eq!(h.queued(), (0, 0));
}

// ---------------------------------------------------------------- zero-payload segments

#[test]
fn qemu_defect_one_for_one_pure_acks_are_cumulative() {
    // Client→server bulk: the PVM acks every segment, the SVM (delayed ACK) every fourth.
    // QEMU releases one primary ACK per secondary packet and the backlog waits for the 3 s
    // timeout; cumulative semantics release all acks covered by the secondary's ack at once.
    let mut h = H::new();
    let acks: Vec<Vec<u8>> = (1..=8)
        .map(|i| tcp(ISN, CACK + 1000 * i, ACK, b""))
        .collect();
    for a in &acks[..4] {
        h.p(a);
    }
    assert!(
        h.r.released.is_empty(),
        "held until the secondary acks that far"
    );
    h.s(&tcp(ISN, CACK + 4000, ACK, b""));
    assert_eq!(
        h.r.frames(),
        acks[..4].to_vec(),
        "one secondary ACK releases four"
    );
    for a in &acks[4..] {
        h.p(a);
    }
    h.s(&tcp(ISN, CACK + 7000, ACK, b""));
    assert_eq!(h.r.released.len(), 7);
    h.s(&tcp(ISN, CACK + 8000, ACK, b""));
    assert_eq!(h.r.frames(), acks);
    assert!(h.r.events.is_empty());
    assert!(h.r.freed.iter().all(|f| f.1 == SecondaryFree::Control));
}

#[test]
fn pure_ack_waits_until_the_secondary_acknowledged_as_far_by_any_segment() {
    let mut h = H::new();
    let pa = tcp(ISN, CACK + 100, ACK, b"");
    h.p(&pa);
    h.s(&tcp(ISN, CACK + 50, ACK, b"")); // not far enough
    assert!(h.r.released.is_empty());
    // A secondary *data* segment carrying ack ≥ releases it too.
    h.s(&tcp(ISN, CACK + 100, ACK, b"data"));
    assert_eq!(h.r.frames(), vec![pa]);
    // Duplicate ACKs / window updates at an already-acked point go at once.
    let dup = tcp(ISN, CACK + 100, ACK, b"");
    h.p(&dup);
    assert_eq!(h.r.released.len(), 2);
}

#[test]
fn qemu_4_5_zero_payload_held_until_secondary_produced_something() {
    // QEMU: even pure ACKs wait until *some* secondary packet exists on the connection.
    let mut h = H::new();
    h.p(&tcp(ISN, CACK, ACK, b""));
    h.advance(2000 * MS);
    assert!(h.r.released.is_empty());
    h.s(&tcp(ISN, CACK, ACK, b""));
    assert_eq!(h.r.released.len(), 1);
}

#[test]
fn handshake_syn_ack_needs_the_secondary_syn_ack_even_with_another_isn() {
    let mut h = H::new();
    let client_isn = 7000;
    let synack = tcp(ISN - 1, client_isn + 1, SYN | ACK, b"");
    h.p(&synack);
    // The secondary's pure ACK is not a SYN-ACK.
    h.s(&tcp(ISN - 1, client_isn + 1, ACK, b""));
    assert!(h.r.released.is_empty());
    // Its SYN-ACK leaves the rewriter before the offset is known: different ISN, still a match.
    h.s(&tcp(42, client_isn + 1, SYN | ACK, b""));
    assert_eq!(h.r.frames(), vec![synack]);
    // Data right after the handshake aligns at ISN.
    h.both(&tcp(ISN, client_isn + 1, ACK | PSH, b"HTTP/1.1 200 OK"));
    assert_eq!(h.r.released.len(), 2);
    assert!(h.r.events.is_empty());
}

#[test]
fn guest_opened_syn_needs_a_secondary_syn() {
    let mut h = H::new();
    let syn = tcp(ISN - 1, 0, SYN, b"");
    h.p(&syn);
    h.s(&tcp(ISN - 1, 0, SYN | ACK, b"")); // not a plain SYN
    assert!(h.r.released.is_empty());
    h.s(&tcp(31337, 0, SYN, b""));
    assert_eq!(h.r.frames(), vec![syn.clone()]);
    // A SYN retransmission is released at once (cumulative, not one-for-one).
    h.p(&syn);
    assert_eq!(h.r.released.len(), 2);
}

#[test]
fn fin_released_when_secondary_fin_at_the_same_position() {
    let mut h = H::new();
    let d = tcp(ISN, CACK, ACK, b"bye");
    let fin = tcp(ISN + 3, CACK, ACK | FIN, b"");
    h.p(&d);
    h.p(&fin);
    h.s(&tcp(ISN, CACK, ACK, b"bye"));
    assert_eq!(h.r.frames(), vec![d], "FIN waits for the secondary's FIN");
    h.s(&tcp(ISN + 3, CACK, ACK | FIN, b""));
    assert_eq!(h.r.released.len(), 2);
    assert!(h.r.events.is_empty());
}

#[test]
fn fin_with_data_against_separate_data_and_fin() {
    let mut h = H::new();
    let p = tcp(ISN, CACK, ACK | FIN | PSH, b"last");
    h.p(&p);
    h.s(&tcp(ISN, CACK, ACK, b"last"));
    assert!(h.r.released.is_empty());
    h.s(&tcp(ISN + 4, CACK, ACK | FIN, b""));
    assert_eq!(h.r.frames(), vec![p]);
}

#[test]
fn fin_at_a_different_position_is_a_length_mismatch() {
    let mut h = H::new();
    h.p(&tcp(ISN, CACK, ACK, b"abcdef"));
    h.s(&tcp(ISN, CACK, ACK | FIN, b"abc")); // secondary closes after 3 bytes
    assert_eq!(h.r.reasons(), vec![Reason::LengthMismatch]);
}

#[test]
fn rst_released_when_the_secondary_reset_too() {
    let mut h = H::new();
    let rst = tcp(ISN, CACK, RST | ACK, b"");
    h.p(&rst);
    h.s(&tcp(ISN, CACK, ACK, b""));
    assert!(h.r.released.is_empty());
    h.s(&tcp(ISN + 9, 0, RST, b""));
    assert_eq!(h.r.frames(), vec![rst]);
}

// ---------------------------------------------------------------- ack gate

#[test]
fn ack_gate_holds_matched_data_until_the_secondary_acked_as_far() {
    let mut h = H::new();
    let p = tcp(ISN, CACK + 500, ACK, b"resp");
    h.p(&p);
    h.s(&tcp(ISN, CACK + 200, ACK, b"resp")); // same bytes, secondary acked less
    assert!(h.r.released.is_empty(), "ack ahead of the secondary's");
    assert!(h.r.events.is_empty(), "held, not a divergence yet");
    assert_eq!(h.queued(), (1, 0), "the secondary bytes are consumed");
    h.s(&tcp(ISN + 4, CACK + 500, ACK, b""));
    assert_eq!(h.r.frames(), vec![p]);
}

#[test]
fn ack_gate_timeout_is_reported_as_ack_ahead() {
    let mut h = H::new();
    h.p(&tcp(ISN, CACK + 500, ACK, b"resp"));
    h.s(&tcp(ISN, CACK + 200, ACK, b"resp"));
    h.advance(3001 * MS);
    assert_eq!(h.r.reasons(), vec![Reason::AckAhead]);
}

// ---------------------------------------------------------------- timeouts

#[test]
fn qemu_4_7_primary_timeout_requests_checkpoint_once_then_repeats_per_timeout() {
    let mut h = H::new();
    let p = tcp(ISN, CACK, ACK, b"lonely");
    h.p(&p);
    h.advance(1000 * MS);
    h.advance(1000 * MS);
    assert!(h.r.events.is_empty(), "2 s < 3 s");
    h.advance(1000 * MS);
    assert_eq!(h.r.reasons(), vec![Reason::PrimaryTimeout]);
    assert_eq!(h.r.events[0].seq_range, Some((ISN, ISN + 6)));
    assert_eq!(h.r.captures[0].1.as_deref(), Some(&p[..]));
    h.advance(1000 * MS);
    h.advance(1000 * MS);
    assert_eq!(h.r.events.len(), 1, "not repeated within the timeout");
    h.advance(1000 * MS);
    assert_eq!(
        h.r.events.len(),
        2,
        "repeated: a lost request cannot stall for ever"
    );
    assert!(h.r.released.is_empty(), "held until the checkpoint");
    h.checkpoint();
    assert_eq!(h.r.frames(), vec![p]);
    assert_eq!(h.r.hows(), vec![Release::Checkpoint]);
}

#[test]
fn secondary_timeout() {
    let mut h = H::new();
    h.s(&tcp(ISN, CACK, ACK, b"extra"));
    h.advance(3000 * MS);
    assert_eq!(h.r.reasons(), vec![Reason::SecondaryTimeout]);
    assert_eq!(h.r.events[0].side, Side::Secondary);
    h.checkpoint();
    assert_eq!(h.r.freed.last().unwrap().1, SecondaryFree::Checkpoint);
}

#[test]
fn tick_is_a_no_op_between_scans() {
    let mut h = H::new();
    h.p(&tcp(ISN, CACK, ACK, b"x"));
    h.c.tick(h.now, &mut h.r); // first scan
    h.now += 5000 * MS;
    let next = h.now;
    h.c.tick(next, &mut h.r);
    assert_eq!(h.r.events.len(), 1);
    h.c.tick(next + 10, &mut h.r);
    assert_eq!(
        h.r.events.len(),
        1,
        "within the scan period nothing is scanned"
    );
}

#[test]
fn release_after_rule_frees_a_diverged_connection_without_checkpoint() {
    let mut h = H::with(CompareConfig {
        release_after_ns: 10_000 * MS,
        ..CompareConfig::default()
    });
    let p = tcp(ISN, CACK, ACK, b"x");
    h.p(&p);
    h.s(&tcp(ISN, CACK, ACK, b"y"));
    for _ in 0..9 {
        h.advance(1000 * MS);
    }
    assert!(h.r.released.is_empty());
    h.advance(1000 * MS);
    assert_eq!(h.r.hows(), vec![Release::Timeout]);
    // And comparison resumed.
    h.both(&tcp(ISN + 1, CACK, ACK, b"z"));
    assert_eq!(h.r.hows().last(), Some(&Release::Matched));
}

// ---------------------------------------------------------------- overflow, table

#[test]
fn qemu_defect_3_queue_full_drops_the_new_segment_counted_never_releases_uncompared() {
    // QEMU: max_queue_size=4 lets 5 in, then drops silently. Here: exactly 4, then the new
    // segment is dropped (the PVM retransmits it), counted, no checkpoint.
    let mut h = H::with(CompareConfig {
        queue_size: 4,
        ..CompareConfig::default()
    });
    let frames: Vec<Vec<u8>> = (0..10u32)
        .map(|i| tcp(ISN + i, CACK, ACK, &[b'0' + i as u8]))
        .collect();
    for f in &frames {
        h.p(f);
    }
    assert_eq!(h.queued().0, 4, "exactly queue_size, not max+1");
    assert!(h.r.released.is_empty(), "nothing released uncompared");
    assert_eq!(
        h.r.dropped.iter().map(|d| d.0.clone()).collect::<Vec<_>>(),
        frames[4..].to_vec()
    );
    assert_eq!(h.r.drops(), vec![PrimaryDrop::QueueFull; 6]);
    assert_eq!(h.c.counters().drop_queue_full, 6);
    assert!(h.r.events.is_empty(), "a TCP drop asks for no checkpoint");
    // The secondary catches up: the queued four match, in order.
    for f in &frames[..4] {
        h.s(&as_secondary(f.clone()));
    }
    assert_eq!(h.r.frames(), frames[..4].to_vec());
    assert_eq!(h.r.hows(), vec![Release::Matched; 4]);
}

#[test]
fn secondary_queue_full_drops_counted_without_event_and_its_retransmission_matches() {
    let mut h = H::with(CompareConfig {
        queue_size: 2,
        ..CompareConfig::default()
    });
    let segs: Vec<Vec<u8>> = (0..3u32)
        .map(|i| tcp(ISN + 10 * i, CACK, ACK, b"0123456789"))
        .collect();
    for f in &segs {
        h.s(&as_secondary(f.clone()));
    }
    assert_eq!(h.c.counters().sec_drop_overflow, 1);
    assert!(
        h.r.events.is_empty(),
        "the primary copy waits; both VMs retransmit"
    );
    for f in &segs {
        h.p(f);
    }
    assert_eq!(
        h.r.released.len(),
        2,
        "the third waits for the SVM's retransmission"
    );
    h.s(&as_secondary(segs[2].clone()));
    assert_eq!(h.r.frames(), segs);
    assert_eq!(h.r.hows(), vec![Release::Matched; 3]);
}

#[test]
fn datagram_secondary_queue_full_drops_counted_with_event() {
    let mut h = H::with(CompareConfig {
        queue_size: 2,
        ..CompareConfig::default()
    });
    for i in 0..3u8 {
        h.s(&udp(&[i; 4]));
    }
    assert_eq!(h.c.counters().sec_drop_overflow, 1);
    assert_eq!(h.r.reasons(), vec![Reason::QueueOverflow]);
    assert_eq!(h.r.events[0].side, Side::Secondary);
}

#[test]
fn pool_exhaustion_drops_the_new_segment_counted() {
    let mut h = H::with(CompareConfig {
        pool_size: 3,
        ..CompareConfig::default()
    });
    for i in 0..3u32 {
        h.p(&tcp(ISN + i, CACK, ACK, b"a"));
    }
    // Another connection finds the pool empty and nothing of its own queued.
    let mut other = tcp(ISN, CACK, ACK, b"b");
    other[36] = 0x50; // TCP destination port high byte: another connection
    h.p(&other);
    assert!(h.r.released.is_empty());
    assert_eq!(h.r.drops(), vec![PrimaryDrop::PoolEmpty]);
    assert_eq!(h.c.counters().drop_pool_empty, 1);
    assert!(h.r.events.is_empty());
}

#[test]
fn qemu_defect_4_full_table_evicts_lru_and_holds_its_queue_for_the_checkpoint() {
    // QEMU wipes the whole table at 16384 and frees queued primaries unsent.
    let mut h = H::with(CompareConfig {
        table_capacity: 2,
        ..CompareConfig::default()
    });
    let flow = |port: u8| {
        let mut f = tcp(ISN, CACK, ACK, b"q");
        f[37] = port; // TCP destination port low byte
        f
    };
    h.p(&flow(1));
    h.now += 1;
    h.p(&flow(2));
    h.now += 1;
    h.p(&flow(3)); // evicts flow 1 (least recently used)
    assert!(h.r.released.is_empty(), "held, not released");
    assert_eq!(h.r.reasons(), vec![Reason::TableOverflow]);
    assert_eq!(h.c.connections(), 2);
    assert_eq!(h.queued().0, 3, "held packets stay queued");
    let k = h.c.counters();
    assert_eq!((k.conns_evicted, k.held_primary, k.held_evicted), (1, 1, 1));
    h.checkpoint();
    assert_eq!(h.r.frames()[0], flow(1), "held list first");
    assert_eq!(h.r.hows(), vec![Release::Checkpoint; 3]);
    assert_eq!(h.c.counters().held_primary, 0);
}

#[test]
fn idle_connections_age_out_and_hold_their_queue_for_the_checkpoint() {
    let mut h = H::with(CompareConfig {
        idle_timeout_ns: 2000 * MS,
        timeout_ns: 60_000 * MS,
        ..CompareConfig::default()
    });
    h.both(&tcp(ISN, CACK, ACK, b"done"));
    let wait = tcp(ISN + 4, CACK, ACK, b"wait");
    h.p(&wait);
    h.advance(2500 * MS);
    assert_eq!(h.c.connections(), 0);
    assert_eq!(h.r.hows(), vec![Release::Matched]);
    assert_eq!(h.r.reasons(), vec![Reason::Expired]);
    assert_eq!(h.c.counters().held_expired, 1);
    h.checkpoint();
    assert_eq!(h.r.frames().last(), Some(&wait));
    assert_eq!(h.r.hows(), vec![Release::Matched, Release::Checkpoint]);
}

#[test]
fn flush_all_releases_everything_in_order() {
    let mut h = H::new();
    let a = tcp(ISN, CACK, ACK, b"a");
    let b = tcp(ISN + 1, CACK, ACK, b"b");
    h.p(&a);
    h.p(&b);
    h.s(&tcp(ISN + 5, CACK, ACK, b"zz"));
    h.c.flush_all(&mut h.r);
    assert_eq!(h.r.frames(), vec![a, b]);
    assert_eq!(h.r.hows(), vec![Release::Flush, Release::Flush]);
    assert_eq!(h.c.connections(), 0);
    assert!(h.c.counters().balanced());
    assert_eq!(h.queued(), (0, 0));
}

// ---------------------------------------------------------------- IPv6, VLAN

fn tcp_v6_vlan(vlan: Option<u16>, payload: &[u8], hop: u8) -> Vec<u8> {
    use etherparse::{PacketBuilder, VlanId};
    let e = PacketBuilder::ethernet2([2; 6], [4; 6]);
    let mut f = Vec::new();
    let src = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2];
    let dst = [0x20, 1, 0xd, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 9];
    match vlan {
        Some(v) => e
            .single_vlan(VlanId::try_new(v).unwrap())
            .ipv6(src, dst, hop)
            .tcp(80, 40000, ISN, 100)
            .ack(CACK)
            .write(&mut f, payload)
            .unwrap(),
        None => e
            .ipv6(src, dst, hop)
            .tcp(80, 40000, ISN, 100)
            .ack(CACK)
            .write(&mut f, payload)
            .unwrap(),
    }
    f
}

#[test]
fn qemu_limit_ipv6_and_vlan_tcp_are_compared_not_passed() {
    // QEMU releases IPv6 and 802.1Q frames uncompared at once.
    let mut h = H::new();
    let p = tcp_v6_vlan(Some(42), b"v6 data", 64);
    h.p(&p);
    assert!(h.r.released.is_empty(), "held for comparison");
    h.s(&tcp_v6_vlan(Some(42), b"v6 DATA", 63));
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);

    let mut h = H::new();
    let p = tcp_v6_vlan(None, b"same", 64);
    h.p(&p);
    h.s(&tcp_v6_vlan(None, b"same", 60));
    assert_eq!(h.r.hows(), vec![Release::Matched]);
}

#[test]
fn flows_summary_reports_per_side_traffic_and_state() {
    let mut h = H::new();
    h.both(&tcp(ISN, CACK, ACK, b"abc"));
    h.p(&tcp(ISN + 3, CACK, ACK, b"d"));
    let mut seen = Vec::new();
    h.c.flows(|k, s| seen.push((*k, s)));
    assert_eq!(seen.len(), 1);
    let (k, s) = seen[0];
    assert_eq!(k.to_string(), "tcp 10.0.0.2:80 <-> 192.168.1.10:40000");
    assert_eq!((s.primary_packets, s.secondary_packets), (2, 1));
    assert_eq!((s.queued_primary, s.queued_secondary), (1, 0));
    assert_eq!(s.state, colo_proxy::compare::FlowState::Comparing);
}

#[test]
fn a_reused_four_tuple_after_both_sides_closed_is_a_new_connection() {
    // Clients recycle source ports (TIME_WAIT over): the next connection on the same 4-tuple
    // starts at an unrelated ISN and must not be judged against the old one's FIN or frontier.
    let mut h = H::new();
    let isn2 = ISN.wrapping_add(0x4000_0000);
    h.both(&tcp(ISN, CACK, SYN | ACK, b""));
    h.both(&tcp(ISN + 1, CACK, ACK | PSH, b"first reply"));
    h.both(&tcp(ISN + 12, CACK + 1, FIN | ACK, b""));
    h.both(&tcp(isn2, CACK + 7, SYN | ACK, b""));
    h.both(&tcp(isn2 + 1, CACK + 7, ACK | PSH, b"second reply, longer"));
    h.both(&tcp(isn2 + 21, CACK + 8, FIN | ACK, b""));
    assert!(h.r.events.is_empty(), "{:?}", h.r.reasons());
    assert_eq!(h.r.hows(), vec![Release::Matched; 6]);
    assert_eq!(h.queued(), (0, 0));
}

#[test]
fn a_syn_ack_while_the_old_connection_is_open_does_not_reset_it() {
    // Only a finished connection restarts: a retransmitted SYN-ACK mid-stream changes nothing.
    let mut h = H::new();
    h.both(&tcp(ISN, CACK, SYN | ACK, b""));
    h.p(&tcp(ISN + 1, CACK, ACK | PSH, b"data"));
    h.p(&tcp(ISN, CACK, SYN | ACK, b""));
    h.s(&as_secondary(tcp(ISN + 1, CACK, ACK | PSH, b"dat!")));
    assert_eq!(h.r.reasons(), vec![Reason::PayloadMismatch]);
}
