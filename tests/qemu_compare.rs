//! Our socket output → QEMU `colo-compare` secondary_in (issue 6 test c), the Xen notify
//! protocol against QEMU's own implementation, and our client reconnecting to a restarted
//! QEMU (test d).

mod qemu_support;

use colo_proxy::control::xen::{XenIn, XenOut};
use qemu_support::compare::Compare;
use qemu_support::*;

fn held_until_secondary_then_released(vnet: bool) {
    let test = if vnet {
        "qemu_compare_vnet"
    } else {
        "qemu_compare_plain"
    };
    let Some(mut c) = Compare::start(test, vnet, false) else {
        return;
    };
    let p1 = tcp_frame(40000, 80, 1000, 5000, b"hello colo");
    let p2 = tcp_frame(40000, 80, 1010, 5000, &[0x5a; 1400]);
    let u1 = udp_frame(5000, 53, b"query-1");
    c.send_pri(&p1);
    c.send_pri(&p2);
    c.send_pri(&u1);
    let (early, _) = c.collect(300);
    assert!(
        early.is_empty(),
        "released before the secondary spoke: {early:?}"
    );
    // The secondary's output comes from our socket: p1+p2 resegmented as one segment, and
    // the same UDP datagram with a different IP id (ignored by the compare).
    let mut joined = b"hello colo".to_vec();
    joined.extend_from_slice(&[0x5a; 1400]);
    c.send_sec(&tcp_frame(40000, 80, 1000, 5000, &joined));
    let mut u1s = udp_frame(5000, 53, b"query-1");
    u1s[18] = 0x77; // IP id
    c.send_sec(&u1s);
    let mut out = c.collect_n(3);
    let (more, _) = c.collect(200);
    out.extend(more);
    let log = c.log();
    assert_eq!(out.len(), 3, "{log}");
    let expect: Vec<(u32, Vec<u8>)> = [&p1, &p2, &u1].iter().map(|f| c.wrap(f)).collect();
    // TCP released in sequence order; the UDP datagram is on its own connection.
    let tcp: Vec<_> = out
        .iter()
        .filter(|(_, f)| f.len() > 60 && f[f.len() - 7..] != *b"query-1")
        .cloned()
        .collect();
    assert_eq!(tcp, expect[..2].to_vec(), "{log}");
    assert!(out.contains(&expect[2]), "{log}");
    assert_eq!(c.sec.stats().frames_out, 2);
}

#[test]
fn qemu_colo_compare_accepts_and_compares_our_secondary_output() {
    held_until_secondary_then_released(false);
}

#[test]
fn qemu_colo_compare_with_vnet_hdr_keeps_per_packet_vnet_len() {
    held_until_secondary_then_released(true);
}

/// Xen notify against QEMU: INIT → GET_XEN_INIT; a mismatch → DO_CHECKPOINT (never with the
/// vnet field); COLO_CHECKPOINT (with the vnet field when on) → primary flushed.
#[test]
fn qemu_colo_compare_xen_notify_protocol() {
    for vnet in [false, true] {
        let Some(mut c) = Compare::start("qemu_compare_xen", vnet, true) else {
            return;
        };
        let mut buf = [0u8; 64];
        let n = XenIn::ProxyInit.encode(vnet, &mut buf).unwrap();
        // Our socket frames with its out_framing; hand it the payload only.
        let hl = if vnet { 8 } else { 4 };
        c.send_xen(&buf[hl..n]);
        let mut notes = Vec::new();
        let mut out = Vec::new();
        until(10, "GET_XEN_INIT", || {
            c.pump(&mut out, &mut notes);
            !notes.is_empty()
        });
        assert_eq!(
            XenOut::parse(&notes[0]),
            Some(XenOut::GetXenInit),
            "{}",
            c.log()
        );
        // Mismatch.
        let p = tcp_frame(40001, 80, 1, 1, b"AAAA");
        c.send_pri(&p);
        c.send_sec(&tcp_frame(40001, 80, 1, 1, b"BBBB"));
        notes.clear();
        until(10, "DO_CHECKPOINT", || {
            c.pump(&mut out, &mut notes);
            !notes.is_empty()
        });
        assert_eq!(
            XenOut::parse(&notes[0]),
            Some(XenOut::DoCheckpoint),
            "{}",
            c.log()
        );
        assert!(out.is_empty(), "mismatched primary released: {out:?}");
        let n = XenIn::CheckpointDone.encode(vnet, &mut buf).unwrap();
        c.send_xen(&buf[hl..n]);
        until(10, "flush after COLO_CHECKPOINT", || {
            c.pump(&mut out, &mut notes);
            !out.is_empty()
        });
        assert_eq!(out, vec![c.wrap(&p)]);
        assert_eq!(c.notify.as_ref().unwrap().stats().decode_resets, 0);
    }
}

/// Test d: QEMU (the server) restarts; our clients reconnect with back-off and frames flow.
#[test]
fn qemu_restart_our_clients_reconnect() {
    let Some(mut c) = Compare::start("qemu_compare_restart", false, false) else {
        return;
    };
    for round in 0..2u16 {
        let p = tcp_frame(41000 + round, 80, 7, 7, b"payload");
        c.send_pri(&p);
        c.send_sec(&p);
        let out = c.collect_n(1);
        assert_eq!(out, vec![c.wrap(&p)], "round {round}: {}", c.log());
        if round == 0 {
            c.restart();
            c.sync();
        }
    }
    for s in [&c.pri, &c.sec, &c.out] {
        assert_eq!(s.stats().connects, 2);
        assert!(s.stats().disconnects >= 1);
    }
}
