//! The ack gate when only the secondary lost client segments: the client must see the ack
//! both VMs have reached, or it never retransmits the secondary's second hole.

mod compare_support;

use colo_proxy::compare::Release;
use compare_support::*;

const ISN: u32 = 7_000_000;
const CACK: u32 = 1000;

/// The VMs' pure ACK acknowledging client bytes up to `ack`.
fn ack_frame(ack: u32) -> Vec<u8> {
    tcp(ISN + 1, ack, ACK, b"")
}

#[test]
fn a_gated_ack_is_released_lowered_to_the_secondarys_when_that_is_progress() {
    let mut h = H::new();
    let synack = tcp(ISN, CACK, SYN | ACK, b"");
    h.p(&synack);
    h.s(&as_secondary(synack));
    assert_eq!(h.r.released.len(), 1);
    // The client sent 400 bytes; the PVM got all (one ACK), the SVM lost [0,100) and
    // [200,300) (duplicate ACKs at CACK).
    h.p(&ack_frame(CACK + 400));
    h.s(&as_secondary(ack_frame(CACK)));
    assert_eq!(
        h.r.released.len(),
        1,
        "nothing the SVM has not acknowledged goes out"
    );
    // The client retransmits its first hole: the PVM repeats its ACK, the SVM reaches 200.
    h.p(&ack_frame(CACK + 400));
    h.s(&as_secondary(ack_frame(CACK + 200)));
    assert_eq!(h.r.released.len(), 2, "the joint ack goes to the client");
    // Exactly the frame the PVM would have sent acking 200, checksum included.
    assert_eq!(h.r.frames()[1], ack_frame(CACK + 200));
    assert_eq!(h.c.counters().ack_clamped, 1);
    // The SVM repeats 200: nothing new, so the second PVM ACK stays held (no duplicate ACK).
    h.s(&as_secondary(ack_frame(CACK + 200)));
    assert_eq!(h.r.released.len(), 2);
    // The client retransmits the second hole: the SVM catches up, the rest goes as it is.
    h.p(&ack_frame(CACK + 400));
    h.s(&as_secondary(ack_frame(CACK + 400)));
    assert_eq!(h.r.released.len(), 4);
    assert_eq!(h.r.frames()[2], ack_frame(CACK + 400));
    assert_eq!(h.r.frames()[3], ack_frame(CACK + 400));
    assert!(h.r.hows().iter().all(|r| *r == Release::Matched));
    assert!(h.r.events.is_empty());
    assert_eq!(h.queued(), (0, 0));
    assert!(h.c.counters().balanced());
}

#[test]
fn the_ack_is_not_lowered_below_what_the_client_already_has() {
    let mut h = H::new();
    let synack = tcp(ISN, CACK, SYN | ACK, b"");
    h.p(&synack);
    h.s(&as_secondary(synack));
    h.p(&ack_frame(CACK + 300));
    // The SVM has acknowledged nothing new: the client already has CACK.
    h.s(&as_secondary(ack_frame(CACK)));
    assert_eq!(h.r.released.len(), 1);
    assert_eq!(h.c.counters().ack_clamped, 0);
}

#[test]
fn control_segments_are_never_lowered() {
    let mut h = H::new();
    let synack = tcp(ISN, CACK, SYN | ACK, b"");
    h.p(&synack);
    h.s(&as_secondary(synack));
    let fin = tcp(ISN + 1, CACK + 300, FIN | ACK, b"");
    h.p(&fin);
    h.s(&as_secondary(tcp(ISN + 1, CACK + 100, FIN | ACK, b"")));
    assert_eq!(h.r.released.len(), 1, "a FIN waits for the SVM's ack");
    assert_eq!(h.c.counters().ack_clamped, 0);
    h.s(&as_secondary(ack_frame(CACK + 300)));
    assert_eq!(h.r.frames()[1], fin);
}

/// A frame like [`tcp`] but advertising `window`, built independently by etherparse.
fn with_window(seq: u32, ack: u32, payload: &[u8], window: u16) -> Vec<u8> {
    let mut f = Vec::new();
    etherparse::PacketBuilder::ethernet2([0x52, 0x54, 0, 0, 0, 1], [0x52, 0x54, 0, 0, 0, 0xfe])
        .ipv4(SERVER, CLIENT, 64)
        .tcp(SPORT, CPORT, seq, window)
        .ack(ack)
        .write(&mut f, payload)
        .unwrap();
    f
}

#[test]
fn the_client_is_never_offered_more_window_than_the_secondary_offers() {
    let mut h = H::new();
    let synack = tcp(ISN, CACK, SYN | ACK, b"");
    h.p(&synack);
    h.s(&as_secondary(synack));
    // The SVM's receive buffer grew less than the PVM's: it offers 1000, the PVM 29200.
    h.s(&with_window(ISN + 1, CACK + 100, b"", 1000));
    h.p(&tcp(ISN + 1, CACK + 100, ACK, b""));
    assert_eq!(h.r.released.len(), 2);
    // Released as the PVM's ACK with the SVM's window, checksum valid (byte-exact).
    assert_eq!(h.r.frames()[1], with_window(ISN + 1, CACK + 100, b"", 1000));
    assert_eq!(h.c.counters().window_clamped, 1);
    // Data the same way; a larger SVM window leaves the PVM's alone.
    h.s(&with_window(ISN + 1, CACK + 100, b"resp", 60000));
    h.p(&tcp(ISN + 1, CACK + 100, ACK, b"resp"));
    assert_eq!(h.r.frames()[2], tcp(ISN + 1, CACK + 100, ACK, b"resp"));
    assert_eq!(h.c.counters().window_clamped, 1);
    // After a checkpoint the SVM is a copy of the PVM: no clamp from stale windows.
    h.s(&with_window(ISN + 5, CACK + 100, b"", 10));
    h.checkpoint();
    h.p(&tcp(ISN + 5, CACK + 100, ACK, b""));
    h.s(&tcp(ISN + 5, CACK + 100, ACK, b""));
    assert_eq!(
        *h.r.frames().last().unwrap(),
        tcp(ISN + 5, CACK + 100, ACK, b"")
    );
    assert!(h.r.events.is_empty());
}
