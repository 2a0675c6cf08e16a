//! Teardown (passive, active, simultaneous close, RST), linger, idle ageing and eviction.

mod rewrite_util;

use colo_proxy::rewrite::{
    CloseKind, ConnState, Outcome, Rewriter, RewriterConfig, AGE_PER_TICK, AGE_SCAN_SPACING,
    DEFAULT_CLOSED_LINGER_NS,
};
use rewrite_util::*;

const C: u32 = 7_000;
const P: u32 = 1_000;
const S: u32 = 5_000;

fn state(h: &H) -> Option<ConnState> {
    let mut v = None;
    h.rw.flows(|_, s| v = Some(s.state));
    v
}

fn established(h: &mut H) {
    client_handshake(h, C, P, S);
    h.send(&Seg::client(C + 1, P + 1, ACK | PSH).data(10));
    h.send(&Seg::vm(S + 1, C + 11, ACK | PSH).data(20));
}

#[test]
fn passive_close_completes_with_nonzero_offset() {
    let mut h = H::new();
    established(&mut h);
    // Client closes first; its FIN|ACK is translated like any ACK.
    let (_, t) = h.send(&Seg::client(C + 11, P + 21, FIN | ACK));
    assert_eq!(t.ack, S + 21);
    assert_eq!(state(&h), Some(ConnState::CloseWait));
    let (_, t) = h.send(&Seg::vm(S + 21, C + 12, FIN | ACK));
    assert_eq!(t.seq, P + 21);
    assert_eq!(state(&h), Some(ConnState::Closing));
    let (o, t) = h.send(&Seg::client(C + 12, P + 22, ACK));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S + 22);
    assert_eq!(state(&h), Some(ConnState::Closed(CloseKind::Passive)));
    assert_eq!(h.rw.counters().closed_passive, 1);
}

#[test]
fn active_close_with_fin_ack_is_tracked() {
    let mut h = H::new();
    established(&mut h);
    h.send(&Seg::vm(S + 21, C + 11, FIN | ACK));
    assert_eq!(state(&h), Some(ConnState::FinWait));
    let (_, t) = h.send(&Seg::client(C + 11, P + 22, FIN | ACK));
    assert_eq!(t.ack, S + 22);
    assert_eq!(state(&h), Some(ConnState::Closing));
    h.send(&Seg::vm(S + 22, C + 12, ACK));
    assert_eq!(state(&h), Some(ConnState::Closed(CloseKind::Active)));
    assert_eq!(h.rw.counters().closed_active, 1);
}

#[test]
fn active_close_with_separate_ack_and_fin() {
    let mut h = H::new();
    established(&mut h);
    h.send(&Seg::vm(S + 21, C + 11, FIN | ACK));
    h.send(&Seg::client(C + 11, P + 22, ACK)); // ACK of the VM's FIN
    assert_eq!(state(&h), Some(ConnState::FinWait));
    h.send(&Seg::client(C + 11, P + 22, FIN | ACK).data(5)); // last data + FIN
    h.send(&Seg::vm(S + 22, C + 17, ACK));
    assert_eq!(state(&h), Some(ConnState::Closed(CloseKind::Active)));
}

#[test]
fn simultaneous_close() {
    let mut h = H::new();
    established(&mut h);
    // Both FINs cross: neither acknowledges the other's FIN.
    h.send(&Seg::vm(S + 21, C + 11, FIN | ACK));
    h.send(&Seg::client(C + 11, P + 21, FIN | ACK));
    assert_eq!(state(&h), Some(ConnState::Closing));
    h.send(&Seg::vm(S + 22, C + 12, ACK));
    h.send(&Seg::client(C + 12, P + 22, ACK));
    assert_eq!(state(&h), Some(ConnState::Closed(CloseKind::Simultaneous)));
    assert_eq!(h.rw.counters().closed_simultaneous, 1);
}

#[test]
fn fin_with_wrong_ack_does_not_close() {
    let mut h = H::new();
    established(&mut h);
    h.send(&Seg::client(C + 11, P + 21, FIN | ACK));
    h.send(&Seg::vm(S + 21, C + 12, FIN | ACK));
    // An ACK that does not cover the VM's FIN (in the primary's space) keeps it open.
    h.send(&Seg::client(C + 12, P + 21, ACK));
    assert_eq!(state(&h), Some(ConnState::Closing));
}

#[test]
fn rst_from_either_side_closes() {
    for from_vm in [false, true] {
        let mut h = H::new();
        established(&mut h);
        let (o, t) = if from_vm {
            h.send(&Seg::vm(S + 21, C + 11, RST | ACK))
        } else {
            h.send(&Seg::client(C + 11, P + 21, RST | ACK))
        };
        assert_eq!(o, Outcome::Rewritten);
        if from_vm {
            assert_eq!(t.seq, P + 21, "the SVM's RST leaves in the primary's space");
        } else {
            assert_eq!(t.ack, S + 21);
        }
        assert_eq!(state(&h), Some(ConnState::Closed(CloseKind::Reset)));
        assert_eq!(h.rw.counters().closed_reset, 1);
    }
    // RST without ACK from the client: nothing to translate, still closes.
    let mut h = H::new();
    established(&mut h);
    let (o, _) = h.send(&Seg::client(C + 11, 0, RST));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(state(&h), Some(ConnState::Closed(CloseKind::Reset)));
}

#[test]
fn closed_connection_lingers_then_is_reclaimed() {
    let mut h = H::new();
    let linger = DEFAULT_CLOSED_LINGER_NS;
    established(&mut h);
    h.send(&Seg::client(C + 11, P + 21, FIN | ACK));
    h.send(&Seg::vm(S + 21, C + 12, FIN | ACK));
    h.send(&Seg::client(C + 12, P + 22, ACK));
    // A late duplicate of the last ACK is still translated during the linger.
    h.now += linger / 2;
    h.rw.tick(h.now);
    let (o, t) = h.send(&Seg::client(C + 12, P + 22, ACK));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S + 22);
    h.now += linger;
    h.rw.tick(h.now);
    assert!(h.rw.is_empty());
    assert_eq!(h.rw.counters().reclaimed_closed, 1);
}

#[test]
fn reopened_four_tuple_after_close_learns_fresh() {
    let mut h = H::new();
    established(&mut h);
    h.send(&Seg::client(C + 11, P + 21, RST | ACK));
    let c2 = C + 100_000;
    h.send(&Seg::client(c2, 0, SYN));
    h.send(&Seg::vm(S + 333, c2 + 1, SYN | ACK));
    let (_, t) = h.send(&Seg::client(c2 + 1, P + 55 + 1, ACK));
    assert_eq!(t.ack, S + 334);
    assert_eq!(state(&h), Some(ConnState::Established));
    assert_eq!(h.rw.counters().new_incarnations, 1);
    // The old linger record must not remove the new incarnation.
    h.now += DEFAULT_CLOSED_LINGER_NS * 2;
    h.rw.tick(h.now);
    assert_eq!(h.rw.len(), 1);
}

#[test]
fn idle_connections_expire_and_are_counted() {
    let cfg = RewriterConfig {
        idle_timeout_ns: 1_000_000,
        ..RewriterConfig::default()
    };
    let mut h = H::with(cfg);
    established(&mut h);
    h.now += 500_000;
    h.rw.tick(h.now);
    assert_eq!(h.rw.len(), 1);
    h.now += 2_000_000;
    h.rw.tick(h.now);
    assert!(h.rw.is_empty());
    assert_eq!(h.rw.counters().expired, 1);
}

#[test]
fn capacity_bound_evicts_least_recently_used() {
    let cfg = RewriterConfig {
        table_capacity: 4,
        ..RewriterConfig::default()
    };
    let mut h = H::with(cfg);
    for i in 0..6u16 {
        let mk = |s: Seg| s.port(1000 + i);
        h.send(&mk(Seg::client(C, 0, SYN)));
        h.send(&mk(Seg::vm(S + u32::from(i), C + 1, SYN | ACK)));
        h.send(&mk(Seg::client(C + 1, P + 1, ACK)));
    }
    assert_eq!(h.rw.len(), 4);
    assert_eq!(h.rw.counters().evicted, 2);
    assert_eq!(h.rw.counters().evicted_translated, 2);
    // The newest keep their offsets; the evicted oldest pass through.
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK).port(1005));
    assert_eq!(t.ack, S + 5 + 1);
    let (o, _) = h.send(&Seg::client(C + 1, P + 1, ACK).port(1000));
    assert_eq!(o, Outcome::Unchanged);
}

#[test]
fn new_syn_after_close_with_lost_last_ack_starts_fresh() {
    let mut h = H::new();
    established(&mut h);
    h.send(&Seg::client(C + 11, P + 21, FIN | ACK));
    h.send(&Seg::vm(S + 21, C + 12, FIN | ACK));
    // The client's last ACK never reached us; the client reuses the port later.
    let c2 = C + 500_000;
    h.send(&Seg::client(c2, 0, SYN));
    h.send(&Seg::vm(S + 9_000, c2 + 1, SYN | ACK));
    let (_, t) = h.send(&Seg::client(c2 + 1, P + 77, ACK));
    assert_eq!(t.ack, S + 9_000 + 1);
    assert_eq!(h.rw.counters().new_incarnations, 1);
}

#[test]
fn stray_syn_on_established_connection_is_ignored() {
    let mut h = H::new();
    established(&mut h);
    h.send(&Seg::client(C + 999, 0, SYN));
    let (_, t) = h.send(&Seg::client(C + 11, P + 21, ACK));
    assert_eq!(t.ack, S + 21);
    assert_eq!(h.rw.counters().stray_syns, 1);
    assert_eq!(h.rw.counters().new_incarnations, 0);
}

/// A connection whose offset was learned at `port`, last used at `h.now` afterwards.
fn learned_at(h: &mut H, port: u16, s: u32) {
    let mk = |seg: Seg| seg.port(port);
    h.send(&mk(Seg::client(C, 0, SYN)));
    h.send(&mk(Seg::vm(s, C + 1, SYN | ACK)));
    h.send(&mk(Seg::client(C + 1, P + 1, ACK)));
}

fn tracked(h: &mut H, port: u16, s: u32) -> bool {
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK).port(port));
    o == Outcome::Rewritten && t.ack == s + 1
}

/// Idle ageing bounds: never before the timeout, at the latest one scan spacing after it, also
/// when connections fall due one after the other (the scan is skipped while nothing is due).
#[test]
fn idle_ageing_is_never_early_and_at_most_one_spacing_late() {
    let idle = 64_000_000;
    let spacing = idle / AGE_SCAN_SPACING;
    let mut h = H::with(RewriterConfig {
        idle_timeout_ns: idle,
        ..RewriterConfig::default()
    });
    learned_at(&mut h, 1000, S);
    let last_a = h.now;
    h.now += 2 * spacing;
    learned_at(&mut h, 1001, S + 1);
    let last_b = h.now;
    // Ticks all along: nothing goes before its own timeout.
    let mut t = last_a;
    while t < last_a + idle {
        h.rw.tick(t);
        assert_eq!(h.rw.len(), 2, "expired early at {t}");
        t += spacing / 8;
    }
    h.rw.tick(last_a + idle + spacing);
    assert_eq!(h.rw.len(), 1, "a is due");
    assert_eq!(h.rw.counters().expired, 1);
    h.rw.tick(last_b + idle - 1);
    assert_eq!(h.rw.len(), 1, "b is not due yet");
    h.rw.tick(last_b + idle + spacing);
    assert!(h.rw.is_empty(), "b expired at most one spacing late");
    assert_eq!(h.rw.counters().expired, 2);
}

/// Above the exact-LRU sample size, eviction is approximate, but a connection in steady use is
/// never the victim, and every eviction is counted.
#[test]
fn large_full_table_never_evicts_a_connection_in_use() {
    let mut h = H::with(RewriterConfig {
        table_capacity: 64,
        ..RewriterConfig::default()
    });
    for i in 0..64u16 {
        learned_at(&mut h, 1000 + i, S + u32::from(i));
    }
    assert_eq!(h.rw.counters().evicted, 0);
    for i in 64..300u16 {
        assert!(
            tracked(&mut h, 1000, S),
            "the busy connection was evicted at {i}"
        );
        learned_at(&mut h, 1000 + i, S + u32::from(i));
    }
    assert_eq!(h.rw.len(), 64);
    assert_eq!(h.rw.counters().evicted, 300 - 64);
    assert_eq!(h.rw.counters().evicted_translated, 300 - 64);
    assert!(
        tracked(&mut h, 1000 + 299, S + 299),
        "the newest is tracked"
    );
}

/// After failover, translating connections are kept through ageing with their real last-use
/// time; a later checkpoint (offsets zeroed) or a close makes them ageable again.
#[test]
fn failover_exemption_from_ageing_ends_with_checkpoint_or_close() {
    let idle = 1_000_000;
    let cfg = RewriterConfig {
        idle_timeout_ns: idle,
        ..RewriterConfig::default()
    };
    let mut h = H::with(cfg);
    // Closed entries stay until ageing (no linger reclaim) so the close path is what is tested.
    h.rw = Rewriter::new(cfg).with_closed_linger(u64::MAX);
    learned_at(&mut h, 1000, S);
    learned_at(&mut h, 1001, S + 1);
    let last = h.now;
    h.rw.failover();
    h.now += 10 * idle;
    h.rw.tick(h.now);
    assert_eq!(h.rw.len(), 2);
    let mut stamps = Vec::new();
    h.rw.flows(|_, f| stamps.push(f.last_used_ns));
    assert!(
        stamps.iter().all(|&t| t <= last),
        "{stamps:?}: not refreshed by ageing"
    );
    // 1001 is reset by the client: no longer exempt, gone once idle.
    h.send(&Seg::client(C + 1, P + 1, RST | ACK).port(1001));
    h.now += 2 * idle;
    h.rw.tick(h.now);
    assert_eq!(h.rw.len(), 1, "the reset connection aged out");
    assert!(tracked(&mut h, 1000, S), "the other is still translated");
    // A checkpoint zeroes the offsets: the survivor ages out at the next due tick.
    h.rw.checkpoint();
    h.now += 2 * idle;
    h.rw.tick(h.now);
    assert!(h.rw.is_empty());
    assert_eq!(h.rw.counters().expired, 2);
}

/// A large table is aged over several ticks, each visiting at most AGE_PER_TICK slots, and
/// every idle connection still goes.
#[test]
fn an_ageing_scan_is_spread_over_bounded_ticks_and_expires_every_connection() {
    let n = 2 * AGE_PER_TICK + 5;
    let idle = 64_000_000;
    let mut h = H::with(RewriterConfig {
        idle_timeout_ns: idle,
        table_capacity: n + 10,
    });
    for i in 0..n {
        learned_at(&mut h, 1000 + i as u16, S);
    }
    assert_eq!(h.rw.len(), n);
    let t = h.now + 2 * idle;
    let mut calls = 0;
    let mut before = 0;
    while !h.rw.is_empty() {
        h.rw.tick(t);
        calls += 1;
        let expired = h.rw.counters().expired;
        assert!(
            expired - before <= AGE_PER_TICK as u64,
            "{}",
            expired - before
        );
        before = expired;
        assert!(calls <= n.div_ceil(AGE_PER_TICK), "{calls} ticks");
    }
    assert_eq!(calls, n.div_ceil(AGE_PER_TICK));
    assert_eq!(h.rw.counters().expired, n as u64);
}
