//! Rewriter behaviour on whole connections: handshakes both ways, data both ways, options,
//! retransmissions, races, checkpoint and failover, IPv6 and VLAN.

mod rewrite_util;

use colo_proxy::buf::VecBuf;
use colo_proxy::rewrite::{ConnState, Direction, Opener, Outcome, Rewriter, RewriterConfig};
use rewrite_util::*;

const C: u32 = 7_000;
const P: u32 = 1_000;
const S: u32 = 5_000;

fn only_flow(h: &H) -> colo_proxy::rewrite::ConnSummary {
    let mut v = Vec::new();
    h.rw.flows(|_, s| v.push(s));
    assert_eq!(v.len(), 1, "exactly one tracked connection");
    v[0]
}

#[test]
fn client_opened_handshake_and_data_both_ways() {
    let mut h = H::new();
    let ack = client_handshake(&mut h, C, P, S);
    assert_eq!(
        ack.ack,
        S + 1,
        "client ACK moved into the secondary's space"
    );
    let f = only_flow(&h);
    assert_eq!(f.opener, Opener::Client);
    assert_eq!(f.state, ConnState::Established);
    assert_eq!(f.seq_offset, Some(S.wrapping_sub(P)));
    assert_eq!(h.rw.counters().learned_client_opened, 1);
    assert_eq!(f.last_used_ns, h.now, "age is the time of the last packet");

    // Client data: seq untouched, ack translated.
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK | PSH).data(100));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!((t.seq, t.ack), (C + 1, S + 1));
    // SVM data: seq translated back to the primary's, ack untouched.
    let (o, t) = h.send(&Seg::vm(S + 1, C + 101, ACK | PSH).data(1460));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!((t.seq, t.ack), (P + 1, C + 101));
    let (_, t) = h.send(&Seg::client(C + 101, P + 1461, ACK));
    assert_eq!(t.ack, S + 1461);
}

#[test]
fn vm_opened_handshake_and_data_both_ways() {
    let mut h = H::new();
    let r = 90_000;
    let synack = vm_handshake(&mut h, P, S, r);
    assert_eq!(
        synack.ack,
        S + 1,
        "server SYN-ACK acknowledges the SVM's ISN"
    );
    assert_eq!(synack.seq, r);
    assert!(synack.flags & SYN != 0);
    let f = only_flow(&h);
    assert_eq!(f.opener, Opener::Vm);
    assert_eq!(f.seq_offset, Some(S.wrapping_sub(P)));
    assert_eq!(h.rw.counters().learned_vm_opened, 1);
    let (_, t) = h.send(&Seg::vm(S + 1, r + 1, ACK | PSH).data(64));
    assert_eq!((t.seq, t.ack), (P + 1, r + 1));
    let (_, t) = h.send(&Seg::client(r + 1, P + 65, ACK).data(64));
    assert_eq!((t.seq, t.ack), (r + 1, S + 65));
}

#[test]
fn retransmitted_svm_syn_after_learning_is_translated_to_primary_isn() {
    let mut h = H::new();
    vm_handshake(&mut h, P, S, 90_000);
    let (_, t) = h.send(&Seg::vm(S, 0, SYN));
    assert_eq!(t.seq, P);
    assert_eq!(only_flow(&h).seq_offset, Some(S.wrapping_sub(P)));
}

#[test]
fn retransmitted_syn_and_synack_keep_learned_state() {
    let mut h = H::new();
    h.send(&Seg::client(C, 0, SYN));
    h.send(&Seg::client(C, 0, SYN)); // client retransmits before the SVM answers
    h.send(&Seg::vm(S, C + 1, SYN | ACK));
    h.send(&Seg::client(C, 0, SYN)); // and again
    h.send(&Seg::vm(S, C + 1, SYN | ACK)); // SVM retransmits its SYN-ACK
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK));
    assert_eq!(t.ack, S + 1);
    // Late duplicates after the handshake change nothing.
    h.send(&Seg::client(C, 0, SYN));
    let (_, t) = h.send(&Seg::vm(S, C + 1, SYN | ACK));
    assert_eq!(
        t.seq, P,
        "a retransmitted SVM SYN-ACK leaves in the primary's space"
    );
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK).data(10));
    assert_eq!(t.ack, S + 1);
    assert_eq!(only_flow(&h).seq_offset, Some(S.wrapping_sub(P)));
    assert!(h.rw.counters().handshake_retransmits >= 3);
    assert_eq!(h.rw.counters().learned_client_opened, 1);
}

#[test]
fn synack_after_client_ack_still_learns() {
    // The client's ACK overtakes the SVM's SYN-ACK at the rewriter.
    let mut h = H::new();
    h.send(&Seg::client(C, 0, SYN));
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK));
    assert_eq!(
        o,
        Outcome::Unchanged,
        "offset unknown yet: passes unchanged"
    );
    assert_eq!(t.ack, P + 1);
    assert_eq!(h.rw.counters().ack_before_synack, 1);
    let (o, t) = h.send(&Seg::vm(S, C + 1, SYN | ACK));
    assert_eq!(
        o,
        Outcome::Rewritten,
        "learned at the SYN-ACK, which is translated at once"
    );
    assert_eq!(t.seq, P);
    assert_eq!(only_flow(&h).seq_offset, Some(S.wrapping_sub(P)));
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK).data(5));
    assert_eq!(t.ack, S + 1);
}

#[test]
fn synack_before_client_ack_learns() {
    let mut h = H::new();
    h.send(&Seg::client(C, 0, SYN));
    let (o, t) = h.send(&Seg::vm(S, C + 1, SYN | ACK));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(t.seq, S);
    assert_eq!(only_flow(&h).state, ConnState::SynReceived);
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S + 1);
    assert_eq!(h.rw.counters().ack_before_synack, 0);
}

#[test]
fn server_synack_before_svm_syn_still_learns() {
    let mut h = H::new();
    let r = 4_000_000_000;
    let (o, t) = h.send(&Seg::client(r, P + 1, SYN | ACK));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(t.ack, P + 1);
    assert_eq!(h.rw.counters().synack_before_syn, 1);
    h.send(&Seg::vm(S, 0, SYN));
    let (_, t) = h.send(&Seg::client(r, P + 1, SYN | ACK));
    assert_eq!(t.ack, S + 1);
    assert_eq!(only_flow(&h).opener, Opener::Vm);
}

#[test]
fn vm_opened_retransmissions_keep_learned_state_and_pair_newest_timestamps() {
    let mut h = H::new();
    let r = 90_000;
    // SVM SYN retransmitted (same ISN, 1000 ticks later) before the server answers; the server
    // echoes the PVM's retransmitted SYN's TSval.
    h.send(&Seg::vm(S, 0, SYN).ts(10, 0));
    h.send(&Seg::vm(S, 0, SYN).ts(1010, 0));
    let (_, t) = h.send(&Seg::client(r, P + 1, SYN | ACK).ts(5, 2003));
    assert_eq!(t.ack, S + 1);
    assert_eq!(t.ts, Some((5, 1010)), "TSecr is the SVM's newest TSval");
    let mut v = None;
    h.rw.flows(|_, s| v = Some((s.seq_offset, s.ts_offset)));
    assert_eq!(v, Some((Some(S - P), Some(1010u32.wrapping_sub(2003)))));
    // Server SYN-ACK retransmitted after learning: translated the same way, nothing relearned.
    let (_, t) = h.send(&Seg::client(r, P + 1, SYN | ACK).ts(6, 2003));
    assert_eq!((t.ack, t.ts), (S + 1, Some((6, 1010))));
    // A late SVM SYN with another ISN does not disturb the established connection.
    h.send(&Seg::vm(S + 77, 0, SYN));
    let (_, t) = h.send(&Seg::vm(S + 1, r + 1, ACK).ts(1020, 6));
    assert_eq!((t.seq, t.ts), (P + 1, Some((2013, 6))));
    assert_eq!(h.rw.counters().learned_vm_opened, 1);
    assert!(h.rw.counters().handshake_retransmits >= 2);
}

#[test]
fn seq_wraparound_both_directions() {
    let mut h = H::new();
    let (c, p, s) = (0xffff_fff0, 0xffff_ff00, 0x0000_0100);
    let t = client_handshake(&mut h, c, p, s);
    assert_eq!(t.ack, s.wrapping_add(1));
    // SVM data crossing 2^32 in its own space.
    let (_, t) = h.send(
        &Seg::vm(
            0xffff_ffff_u32.wrapping_add(s).wrapping_sub(0x100),
            c.wrapping_add(1),
            ACK,
        )
        .data(600),
    );
    assert_eq!(t.seq, 0xffff_ffff_u32.wrapping_add(p).wrapping_sub(0x100));
    // Client ack crossing 2^32 in the primary's space.
    let (_, t) = h.send(&Seg::client(c.wrapping_add(1), 0x10, ACK));
    assert_eq!(t.ack, 0x10u32.wrapping_add(s.wrapping_sub(p)));
}

#[test]
fn sack_blocks_are_moved_into_the_secondary_space() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    let blocks = [
        (P + 1001, P + 2461),
        (P + 3921, P + 5381),
        (0xffff_fff0, 0x10),
    ];
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK).sack(&blocks));
    assert_eq!(o, Outcome::Rewritten);
    let d = S.wrapping_sub(P);
    let want: Vec<_> = blocks
        .iter()
        .map(|&(l, r)| (l.wrapping_add(d), r.wrapping_add(d)))
        .collect();
    assert_eq!(t.sack, want);
    // SVM SACKs are about the client's data: untouched; only seq moves.
    let vm_blocks = [(C + 100, C + 200)];
    let (_, t) = h.send(&Seg::vm(S + 1, C + 1, ACK).sack(&vm_blocks));
    assert_eq!(t.sack, vm_blocks.to_vec());
    assert_eq!(t.seq, P + 1);
}

#[test]
fn timestamps_translated_both_ways_client_opened() {
    let mut h = H::new();
    let (ts_c, ts_p, ts_s) = (111_111, 500_000, 500_001); // the SVM's clock ticked once more
    h.send(&Seg::client(C, 0, SYN).ts(ts_c, 0));
    h.send(&Seg::vm(S, C + 1, SYN | ACK).ts(ts_s, ts_c));
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK).ts(ts_c + 1, ts_p));
    assert_eq!(
        t.ts,
        Some((ts_c + 1, ts_s)),
        "TSecr echoes a TSval the SVM really sent"
    );
    assert_eq!(only_flow(&h).ts_offset, Some(1));
    assert_eq!(h.rw.counters().learned_ts, 1);
    let (_, t) = h.send(&Seg::vm(S + 1, C + 1, ACK).data(10).ts(ts_s + 40, ts_c + 1));
    assert_eq!(
        t.ts,
        Some((ts_p + 40, ts_c + 1)),
        "TSval leaves on the primary's clock"
    );
    assert_eq!(t.seq, P + 1);
}

#[test]
fn timestamps_translated_vm_opened_and_at_odd_offsets() {
    let mut h = H::new();
    let r = 333;
    let (ts_p, ts_s, ts_r) = (0xffff_fffe, 3, 77); // the clock offset wraps too
    h.send(&Seg::vm(S, 0, SYN).ts(ts_s, 0));
    let mut synack = Seg::client(r, P + 1, SYN | ACK).ts(ts_r, ts_p);
    synack.ts_odd = true;
    let (_, t) = h.send(&synack);
    assert_eq!(t.ack, S + 1);
    assert_eq!(t.ts, Some((ts_r, ts_s)));
    let mut d = Seg::vm(S + 1, r + 1, ACK).ts(ts_s + 5, ts_r);
    d.ts_odd = true;
    let (_, t) = h.send(&d);
    assert_eq!(t.ts, Some((ts_p.wrapping_add(5), ts_r)));
}

#[test]
fn no_timestamps_when_not_negotiated() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    assert_eq!(only_flow(&h).ts_offset, None);
    // A stray timestamps option later is left alone.
    let (_, t) = h.send(&Seg::client(C + 1, P + 1, ACK).ts(5, 6));
    assert_eq!(t.ts, Some((5, 6)));
}

#[test]
fn ipv6_and_vlan_tagged_connection() {
    for (v6, vlan) in [(true, None), (true, Some(42)), (false, Some(7))] {
        let mut h = H::new();
        let mk = |s: Seg| {
            let s = if v6 { s.v6() } else { s };
            match vlan {
                Some(id) => s.vlan(id),
                None => s,
            }
        };
        h.send(&mk(Seg::client(C, 0, SYN)));
        h.send(&mk(Seg::vm(S, C + 1, SYN | ACK)));
        let (o, t) = h.send(&mk(Seg::client(C + 1, P + 1, ACK)
            .sack(&[(P + 10, P + 20)])
            .ts(1, 2)));
        assert_eq!(o, Outcome::Rewritten, "v6={v6} vlan={vlan:?}");
        assert_eq!(t.ack, S + 1);
        assert_eq!(t.sack, vec![(S + 10, S + 20)]);
        let (_, t) = h.send(&mk(Seg::vm(S + 1, C + 1, ACK).data(1460)));
        assert_eq!(t.seq, P + 1);
    }
}

#[test]
fn ipv6_extension_header_and_ipv4_options() {
    let mut h = H::new();
    let mut syn = Seg::client(C, 0, SYN).v6();
    syn.v6_ext = true;
    h.send(&syn);
    let mut sa = Seg::vm(S, C + 1, SYN | ACK).v6();
    sa.v6_ext = true;
    h.send(&sa);
    let mut a = Seg::client(C + 1, P + 1, ACK).v6().data(33);
    a.v6_ext = true;
    let (o, t) = h.send(&a);
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.ack, S + 1);

    let mut h = H::new();
    for words in [1u8, 3, 10] {
        let mut h2 = H::new();
        let mk = |mut s: Seg| {
            s.ip_opt_words = words;
            s
        };
        h2.send(&mk(Seg::client(C, 0, SYN)));
        h2.send(&mk(Seg::vm(S, C + 1, SYN | ACK)));
        let (_, t) = h2.send(&mk(Seg::client(C + 1, P + 1, ACK).data(7)));
        assert_eq!(t.ack, S + 1);
        let (_, t) = h2.send(&mk(Seg::vm(S + 1, C + 8, ACK).data(9)));
        assert_eq!(t.seq, P + 1);
    }
    // Non-TCP passes untouched.
    let udp = etherparse_udp();
    let mut b = VecBuf::from_slice(&udp);
    assert_eq!(
        h.rw.process(Direction::ToSecondary, &mut b, 1),
        Outcome::PassedNonTcp
    );
    assert_eq!(b.to_vec(), udp);
}

fn etherparse_udp() -> Vec<u8> {
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
        .ipv4(CLIENT_V4, VM_V4, 64)
        .udp(53, 53)
        .write(&mut v, b"dns")
        .unwrap();
    v
}

#[test]
fn csum_partial_field_is_left_alone() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    let frame = Seg::client(C + 1, P + 1, ACK).data(100).build();
    let mut b = VecBuf::from_slice(&frame);
    b.set_l4_csum_partial(true);
    assert_eq!(
        h.rw.process(Direction::ToSecondary, &mut b, 5),
        Outcome::Rewritten
    );
    let out = b.to_vec();
    let (before, after) = (decode(&frame), decode(&out));
    assert_eq!(after.ack, S + 1);
    assert_eq!(
        after.csum, before.csum,
        "a device-completed partial sum does not cover seq/ack"
    );
    assert_eq!(h.rw.counters().csum_partial, 1);
}

#[test]
fn untracked_mid_stream_traffic_passes_unchanged() {
    let mut h = H::new();
    let (o, _) = h.send(&Seg::client(C, P, ACK).data(10));
    assert_eq!(o, Outcome::Unchanged);
    let (o, _) = h.send(&Seg::vm(S, C, ACK).data(10));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(h.rw.counters().untracked, 2);
    assert!(h.rw.is_empty(), "mid-stream packets do not create entries");
}

#[test]
fn checkpoint_in_the_middle_of_a_transfer() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    h.send(&Seg::vm(S + 1, C + 1, ACK).data(1000));
    h.rw.checkpoint();
    // The SVM is now the PVM's copy: both spaces agree, nothing is translated.
    let (o, t) = h.send(&Seg::vm(P + 1001, C + 1, ACK).data(1000));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(t.seq, P + 1001);
    let (o, t) = h.send(&Seg::client(C + 1, P + 2001, ACK));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(t.ack, P + 2001);
    assert_eq!(only_flow(&h).seq_offset, Some(0));
    assert_eq!(h.rw.counters().checkpoints, 1);
}

#[test]
fn checkpoint_in_the_middle_of_a_handshake() {
    // Client-opened: SVM SYN-ACK seen, client ACK after the checkpoint.
    let mut h = H::new();
    h.send(&Seg::client(C, 0, SYN));
    h.send(&Seg::vm(S, C + 1, SYN | ACK));
    h.rw.checkpoint();
    let (o, t) = h.send(&Seg::client(C + 1, P + 1, ACK));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(t.ack, P + 1, "the SVM now has the primary's ISN");
    assert_eq!(only_flow(&h).seq_offset, Some(0));
    // A retransmitted SYN-ACK from the restored SVM carries P and learns nothing new.
    let (o, _) = h.send(&Seg::vm(P, C + 1, SYN | ACK));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(only_flow(&h).seq_offset, Some(0));

    // VM-opened: SVM SYN seen, server SYN-ACK after the checkpoint.
    let mut h = H::new();
    h.send(&Seg::vm(S, 0, SYN));
    h.rw.checkpoint();
    let (o, t) = h.send(&Seg::client(9, P + 1, SYN | ACK));
    assert_eq!(o, Outcome::Unchanged);
    assert_eq!(t.ack, P + 1);
    assert_eq!(only_flow(&h).seq_offset, Some(0));
    assert_eq!(h.rw.counters().learned_vm_opened, 0);
}

#[test]
fn new_connection_after_checkpoint_learns_its_own_offset() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    h.rw.checkpoint();
    let mk = |s: Seg| s.port(40001);
    h.send(&mk(Seg::client(C, 0, SYN)));
    h.send(&mk(Seg::vm(S + 99, C + 1, SYN | ACK)));
    let (_, t) = h.send(&mk(Seg::client(C + 1, P + 1, ACK)));
    assert_eq!(t.ack, S + 100);
}

#[test]
fn failover_keeps_old_connections_and_passes_new_ones() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    // A handshake still learning at failover finishes learning.
    let half = |s: Seg| s.port(40002);
    h.send(&half(Seg::client(C, 0, SYN)));
    h.send(&half(Seg::vm(S + 7, C + 1, SYN | ACK)));
    h.rw.failover();
    assert!(h.rw.failed_over());
    let (_, t) = h.send(&half(Seg::client(C + 1, P + 1, ACK)));
    assert_eq!(t.ack, S + 8);
    // The old connection keeps being translated.
    let (o, t) = h.send(&Seg::vm(S + 1, C + 1, ACK).data(10));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.seq, P + 1);
    // A new one passes through untouched and is not tracked.
    let new = |s: Seg| s.port(40003);
    let before = h.rw.len();
    for seg in [
        new(Seg::client(C, 0, SYN)),
        new(Seg::vm(S, C + 1, SYN | ACK)),
        new(Seg::client(C + 1, S + 1, ACK)),
        new(Seg::vm(S + 1, C + 1, ACK).data(10)),
    ] {
        let (o, _) = h.send(&seg);
        assert_eq!(o, Outcome::Unchanged);
    }
    assert_eq!(h.rw.len(), before);
    assert!(h.rw.counters().failover_untracked_syns >= 2);
    // Idle translated connections survive ageing after failover.
    h.now += 10 * RewriterConfig::default().idle_timeout_ns;
    h.rw.tick(h.now);
    let (o, t) = h.send(&Seg::vm(S + 11, C + 1, ACK).data(10));
    assert_eq!(o, Outcome::Rewritten);
    assert_eq!(t.seq, P + 11);
}

#[test]
fn counters_account_for_every_packet() {
    let mut rw = Rewriter::new(RewriterConfig::default());
    let frames = [
        Seg::client(C, 0, SYN).build(),
        Seg::vm(S, C + 1, SYN | ACK).build(),
        Seg::client(C + 1, P + 1, ACK).build(),
        vec![0u8; 10],
        etherparse_udp(),
    ];
    for (i, f) in frames.iter().enumerate() {
        let mut b = VecBuf::from_slice(f);
        let dir = if i == 1 {
            Direction::FromSecondary
        } else {
            Direction::ToSecondary
        };
        let _ = rw.process(dir, &mut b, i as u64);
    }
    let c = rw.counters();
    assert_eq!(c.to_secondary + c.from_secondary, 5);
    let malformed = c.malformed();
    assert_eq!(c.rewritten + c.passed(), 5);
    assert_eq!(c.rewritten + c.unchanged + c.passed_non_tcp + malformed, 5);
    assert_eq!((c.rewritten, malformed, c.passed_non_tcp), (1, 1, 1));
}

#[test]
fn ethernet_padding_and_double_tags_are_handled() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    // A minimum-size frame with Ethernet padding after the IP packet.
    let mut f = Seg::client(C + 1, P + 1, ACK).build();
    f.resize(60.max(f.len() + 6), 0xee);
    let mut b = VecBuf::from_slice(&f);
    assert_eq!(
        h.rw.process(Direction::ToSecondary, &mut b, h.now + 1),
        Outcome::Rewritten
    );
    let out = b.to_vec();
    assert_eq!(decode(&out).ack, S + 1);
    assert!(decode(&out).csum_ok);
    assert!(
        out[f.len() - 6..].iter().all(|&x| x == 0xee),
        "padding untouched"
    );
    // 802.1ad outer tag + 802.1Q inner tag.
    let inner = Seg::vm(S + 1, C + 1, ACK).vlan(10).data(20).build();
    let mut qinq = inner[..12].to_vec();
    qinq.extend_from_slice(&[0x88, 0xa8, 0x00, 0x64]);
    qinq.extend_from_slice(&inner[12..]);
    let mut b = VecBuf::from_slice(&qinq);
    assert_eq!(
        h.rw.process(Direction::FromSecondary, &mut b, h.now + 2),
        Outcome::Rewritten
    );
    let out = b.to_vec();
    // etherparse reads both tags; the checksum is still right and seq is translated.
    let t = decode(&out);
    assert_eq!(t.seq, P + 1);
    assert!(t.csum_ok);
}

#[test]
fn fragments_and_bad_options_pass_and_are_counted() {
    let mut h = H::new();
    client_handshake(&mut h, C, P, S);
    // First fragment of a TCP segment (MF set): not reassembled, passed untouched.
    let mut frag = Seg::client(C + 1, P + 1, ACK).data(100).build();
    frag[14 + 6] = 0x20; // flags: MF, offset 0
    let mut b = VecBuf::from_slice(&frag);
    assert_eq!(
        h.rw.process(Direction::ToSecondary, &mut b, h.now + 1),
        Outcome::PassedNonTcp
    );
    assert_eq!(b.to_vec(), frag);
    assert_eq!(h.rw.counters().tcp_fragments, 1);
    // A SACK option with an impossible length is left alone; ack is still translated.
    let mut f = Seg::client(C + 1, P + 1, ACK)
        .sack(&[(P + 5, P + 9)])
        .build();
    let l4 = 14 + 20;
    let sack_at = (20..f.len() - l4)
        .find(|&i| f[l4 + i] == 5)
        .expect("SACK option");
    f[l4 + sack_at + 1] = 7; // 2 + 8n is required
    let c = oracle_tcp_csum(&f).expect("tcp");
    f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
    let mut b = VecBuf::from_slice(&f);
    assert_eq!(
        h.rw.process(Direction::ToSecondary, &mut b, h.now + 2),
        Outcome::Rewritten
    );
    let out = b.to_vec();
    assert_eq!(
        &out[l4 + sack_at..l4 + sack_at + 7],
        &f[l4 + sack_at..l4 + sack_at + 7]
    );
    assert_eq!(
        oracle_tcp_csum(&out),
        Some(u16::from_be_bytes([out[l4 + 16], out[l4 + 17]]))
    );
    assert_eq!(h.rw.counters().bad_tcp_options, 1);
}
