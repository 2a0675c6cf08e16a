//! Loss before compare: a segment of a bulk stream that one VM's or both VMs' copy never
//! reached the engine (dropped in the kernel's or the NIC's receive ring), then retransmitted.
//! Once the holes are filled the connection must be back in step: everything released in
//! order, every secondary segment freed, and the stream that follows compared and freed as
//! it comes (a stuck frontier would keep every later secondary segment queued until the
//! queue overflows).

mod compare_support;

use colo_proxy::compare::Release;
use compare_support::*;

const ISN: u32 = 1_000_000;
const CACK: u32 = 555;
const MSS: u32 = 1460;

fn seg(i: u32) -> Vec<u8> {
    let data: Vec<u8> = (0..MSS).map(|k| ((i * MSS + k) % 251) as u8).collect();
    tcp(ISN + 1 + i * MSS, CACK, ACK, &data)
}

/// Segments `0..n` from both VMs except the `holes` (index, lost on primary, lost on
/// secondary), then the holes retransmitted by both, then `n..2n` from both.
fn stream_with_holes(holes: &[(u32, bool, bool)], n: u32) -> H {
    let mut h = H::new();
    let synack = tcp(ISN, CACK, SYN | ACK, b"");
    h.p(&synack);
    h.s(&as_secondary(synack));
    for i in 0..n {
        let hole = holes.iter().find(|x| x.0 == i);
        if !hole.is_some_and(|x| x.1) {
            h.p(&seg(i));
        }
        if !hole.is_some_and(|x| x.2) {
            h.s(&as_secondary(seg(i)));
        }
    }
    for x in holes {
        h.p(&seg(x.0));
        h.s(&as_secondary(seg(x.0)));
    }
    assert_eq!(h.queued(), (0, 0), "holes filled: nothing may stay queued");
    for i in n..2 * n {
        h.p(&seg(i));
        h.s(&as_secondary(seg(i)));
    }
    assert_eq!(
        h.queued(),
        (0, 0),
        "the stream after the holes is compared and freed"
    );
    assert!(h.r.events.is_empty(), "{:?}", h.r.reasons());
    assert!(
        h.r.hows()
            .iter()
            .all(|r| matches!(r, Release::Matched | Release::Retransmit)),
        "{:?}",
        h.r.hows()
    );
    assert_eq!(
        h.r.released.len() as u32,
        1 + 2 * n + holes.iter().filter(|x| !x.1).count() as u32
    );
    h
}

#[test]
fn one_primary_loss_in_a_long_stream() {
    stream_with_holes(&[(100, true, false)], 400);
}

#[test]
fn one_loss_on_both_sides() {
    stream_with_holes(&[(100, true, true)], 400);
}

#[test]
fn one_secondary_loss() {
    stream_with_holes(&[(100, false, true)], 400);
}

#[test]
fn eight_primary_losses_at_once() {
    let holes: Vec<_> = (0..8).map(|k| (20 + k * 20, true, k % 3 == 0)).collect();
    stream_with_holes(&holes, 400);
}

#[test]
fn mixed_losses() {
    let holes: Vec<_> = (0..8)
        .map(|k| (10 + k * 30, k % 2 == 0, k % 2 == 1))
        .collect();
    stream_with_holes(&holes, 400);
}

/// The primary runs ahead of the secondary (its window is larger at that moment) and one of
/// its segments is lost before compare; the secondary's copy of the hole is queued but the
/// secondary sends nothing more until the client acknowledges the hole. The primary's
/// retransmission of the hole arrives behind segments still waiting for the secondary: it
/// must be compared and released at once (the client's TCP reorders by sequence number),
/// or neither VM ever gets the acknowledgement that would let the stream go on.
#[test]
fn primary_retransmission_of_a_hole_overtakes_segments_waiting_for_the_secondary() {
    let mut h = H::new();
    let synack = tcp(ISN, CACK, SYN | ACK, b"");
    h.p(&synack);
    h.s(&as_secondary(synack));
    let (hole, svm_sent, pvm_sent) = (50, 120, 200);
    for i in 0..pvm_sent {
        if i != hole {
            h.p(&seg(i));
        }
        if i < svm_sent {
            h.s(&as_secondary(seg(i)));
        }
    }
    // Released: the SYN-ACK and everything the secondary matched except the hole.
    assert_eq!(h.r.released.len() as u32, 1 + svm_sent - 1);
    h.p(&seg(hole));
    assert_eq!(
        h.r.released.len() as u32,
        1 + svm_sent,
        "the hole's retransmission must be released"
    );
    assert_eq!(*h.r.frames().last().unwrap(), seg(hole));
    assert_eq!(h.queued(), (u64::from(pvm_sent - svm_sent), 0));
    // The secondary then catches up: the rest is compared and released in stream order.
    for i in svm_sent..pvm_sent {
        h.s(&as_secondary(seg(i)));
    }
    assert_eq!(h.queued(), (0, 0));
    assert_eq!(h.r.released.len() as u32, 1 + pvm_sent);
    assert!(h.r.events.is_empty(), "{:?}", h.r.reasons());
    assert!(h
        .r
        .hows()
        .iter()
        .all(|r| matches!(r, Release::Matched | Release::Retransmit)));
}
