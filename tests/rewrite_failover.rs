//! After failover the SVM talks to the client directly: every connection the rewriter knew
//! keeps being translated in both directions (seq/ack, SACK edges, TSval out and TSecr in),
//! client- and VM-opened, also when half-closed, with every checksum exact; new connections
//! pass untouched.

mod rewrite_util;

use colo_proxy::rewrite::{ConnState, Outcome, RewriterConfig};
use rewrite_util::*;

/// Client ISN, primary ISN, secondary ISN.
const C: u32 = 7_000;
const P: u32 = 1_000;
const S: u32 = 0xffff_ff00; // the SVM's sequence space wraps during the test
/// PVM and SVM timestamp clocks at the handshake.
const PTS: u32 = 2_000;
const STS: u32 = 900_000;

/// Client-opened handshake with timestamps: the offset and the timestamp offset are learned.
fn client_opened(h: &mut H) {
    h.send(&Seg::client(C, 0, SYN).ts(100, 0));
    h.send(&Seg::vm(S, C + 1, SYN | ACK).ts(STS, 100));
    // The client echoes the PVM's TSval (it saw the PVM's SYN-ACK).
    h.send(&Seg::client(C + 1, P + 1, ACK).ts(101, PTS));
}

#[test]
fn client_opened_keeps_translating_both_ways_with_sack_and_timestamps() {
    let mut h = H::new();
    client_opened(&mut h);
    h.rw.failover();
    // The SVM sends: seq −= offset, TSval −= ts offset, its TSecr (client clock) untouched.
    let (o, t) = h.send(
        &Seg::vm(S.wrapping_add(1), C + 1, ACK)
            .data(100)
            .ts(STS + 40, 101),
    );
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!((t.seq, t.ack), (P + 1, C + 1));
    assert_eq!(t.ts, Some((PTS + 40, 101)));
    // The client acks with a SACK block for data beyond a hole: ack, both SACK edges and TSecr
    // go into the SVM's spaces (across its sequence wrap).
    let (o, t) = h.send(
        &Seg::client(C + 1, P + 101, ACK)
            .ts(102, PTS + 40)
            .sack(&[(P + 201, P + 301)]),
    );
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S.wrapping_add(101));
    assert_eq!(t.sack, vec![(S.wrapping_add(201), S.wrapping_add(301))]);
    assert_eq!(t.ts, Some((102, STS + 40)));
    // The client's own data: only the ack side changes.
    let (_, t) = h.send(&Seg::client(C + 1, P + 301, ACK).data(50).ts(103, PTS + 41));
    assert_eq!((t.seq, t.ack), (C + 1, S.wrapping_add(301)));
    // Long idle after failover: still translated (no checkpoint will ever zero it).
    h.now += 10 * RewriterConfig::default().idle_timeout_ns;
    h.rw.tick(h.now);
    let (o, t) = h.send(
        &Seg::vm(S.wrapping_add(301), C + 51, ACK)
            .data(10)
            .ts(STS + 90, 103),
    );
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.seq, P + 301);
    assert_eq!(t.ts, Some((PTS + 90, 103)));
}

#[test]
fn vm_opened_keeps_translating_both_ways() {
    let mut h = H::new();
    let r = 30_000; // the client's (server's) ISN
    h.send(&Seg::vm(S, 0, SYN).ts(STS, 0));
    // The server echoes the PVM's SYN TSval.
    h.send(&Seg::client(r, P + 1, SYN | ACK).ts(500, PTS));
    h.send(&Seg::vm(S.wrapping_add(1), r + 1, ACK).ts(STS + 1, 500));
    h.rw.failover();
    let (o, t) = h.send(
        &Seg::vm(S.wrapping_add(1), r + 1, ACK)
            .data(200)
            .ts(STS + 5, 500),
    );
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.seq, P + 1);
    assert_eq!(t.ts, Some((PTS + 5, 500)));
    let (o, t) = h.send(
        &Seg::client(r + 1, P + 201, ACK)
            .data(30)
            .ts(501, PTS + 5)
            .sack(&[(P + 401, P + 601), (P + 801, P + 901)]),
    );
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S.wrapping_add(201));
    assert_eq!(
        t.sack,
        vec![
            (S.wrapping_add(401), S.wrapping_add(601)),
            (S.wrapping_add(801), S.wrapping_add(901))
        ]
    );
    assert_eq!(t.ts, Some((501, STS + 5)));
}

#[test]
fn half_closed_connection_goes_on_and_closes_after_failover() {
    let mut h = H::new();
    client_opened(&mut h);
    // The client half-closes before the failure (its FIN at C + 1).
    h.send(&Seg::client(C + 1, P + 1, ACK | FIN).ts(102, PTS));
    h.send(&Seg::vm(S.wrapping_add(1), C + 2, ACK).ts(STS + 1, 102));
    h.rw.failover();
    // The VM streams into the half-closed connection, then closes its side.
    let mut seq = 1u32;
    for _ in 0..3 {
        let (o, t) = h.send(
            &Seg::vm(S.wrapping_add(seq), C + 2, ACK)
                .data(500)
                .ts(STS + 2, 102),
        );
        assert_eq!(o, Outcome::Rewritten);
        assert_eq!(t.seq, P + seq);
        let (_, t) = h.send(&Seg::client(C + 2, P + seq + 500, ACK).ts(103, PTS + 2));
        assert_eq!(t.ack, S.wrapping_add(seq + 500));
        seq += 500;
    }
    let (o, t) = h.send(&Seg::vm(S.wrapping_add(seq), C + 2, ACK | FIN).ts(STS + 3, 103));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.seq, P + seq);
    let (_, t) = h.send(&Seg::client(C + 2, P + seq + 1, ACK).ts(104, PTS + 3));
    assert_eq!(t.ack, S.wrapping_add(seq + 1));
    let mut states: Vec<ConnState> = Vec::new();
    h.rw.flows(|_, c| states.push(c.state));
    assert!(
        states.iter().any(|s| matches!(s, ConnState::Closed(_))),
        "{states:?}"
    );
}
