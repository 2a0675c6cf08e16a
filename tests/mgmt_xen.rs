//! Xen notify sink against a scripted peer: handshake bytes, coalesced DO_CHECKPOINT, checkpoint
//! done reaching the data plane, vnet_hdr frames, reconnect, protocol errors; who may talk on
//! it: an unsolicited completion ignored, a stranger refused while the live peer works, the
//! allowlist, a vanished peer found dead by keepalive and its restart admitted.

mod mgmt_common;
mod peer_support;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use colo_proxy::link::access::{Allowlist, Keepalive, PeerPolicy};

use colo_proxy::control::{Event, EventSide as Side};
use colo_proxy::mgmt::xen::{NotifyEndpoint, XenConfig};
use mgmt_common::*;

fn frame(text: &[u8], vnet: bool) -> Vec<u8> {
    let mut v = (text.len() as u32).to_be_bytes().to_vec();
    if vnet {
        v.extend_from_slice(&12u32.to_be_bytes());
    }
    v.extend_from_slice(text);
    v
}

fn read_exact_timeout(s: &mut UnixStream, n: usize) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = vec![0; n];
    s.read_exact(&mut b).unwrap();
    b
}

fn assert_silent(s: &mut UnixStream, ms: u64) {
    s.set_read_timeout(Some(Duration::from_millis(ms))).unwrap();
    let mut b = [0u8; 64];
    match s.read(&mut b) {
        Ok(n) => panic!(
            "unexpected {n} bytes: {:?}",
            String::from_utf8_lossy(&b[..n])
        ),
        Err(e) => assert!(matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )),
    }
}

fn div(i: u64) -> Event {
    Event::Divergence {
        flow: format!("tcp 10.0.0.1:80 <-> 10.0.0.2:{i}"),
        reason: "payload".into(),
        side: Side::Both,
        seq_range: None,
        time_ns: i,
    }
}

#[test]
fn handshake_coalescing_and_checkpoint_done() {
    let dir = TempDir::new("xen");
    let plane = Arc::new(FakePlane::default());
    let notify = dir.path().join("notify.sock");
    let m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.xen = Some(XenConfig {
            vnet_hdr_support: false,
            reconnect_ns: 20_000_000,
            ..XenConfig::new(NotifyEndpoint::ListenUnix(notify.clone()))
        })
    });
    let tx = m.sender();
    let run = Running::start(m);

    let mut xen = UnixStream::connect(&notify).unwrap();
    xen.write_all(&frame(b"COLO_USERSPACE_PROXY_INIT", false))
        .unwrap();
    let reply = read_exact_timeout(&mut xen, 29);
    assert_eq!(&reply[..4], &[0, 0, 0, 0x19]);
    assert_eq!(&reply[4..], b"COLO_COMPARE_GET_XEN_INIT");

    for i in 0..3 {
        tx.event(div(i));
    }
    let got = read_exact_timeout(&mut xen, 17);
    assert_eq!(got, b"\x00\x00\x00\x0dDO_CHECKPOINT");
    assert_silent(&mut xen, 200);

    // An unknown message is ignored; then the checkpoint completes.
    xen.write_all(&frame(b"HELLO", false)).unwrap();
    xen.write_all(&frame(b"COLO_CHECKPOINT", false)).unwrap();
    assert!(wait_for(5, || plane.checkpoint_done.load(Ordering::SeqCst) == 1));

    tx.event(div(9));
    assert_eq!(
        read_exact_timeout(&mut xen, 17),
        b"\x00\x00\x00\x0dDO_CHECKPOINT"
    );

    let m = run.join();
    let st = m.stats();
    assert_eq!(
        (
            st.checkpoint.requested,
            st.checkpoint.coalesced,
            st.checkpoint.issued,
            st.checkpoint.completed
        ),
        (4, 2, 2, 1)
    );
    let x = &st.sinks["xen"];
    assert_eq!(
        (
            x["sent"].as_u64(),
            x["handshakes"].as_u64(),
            x["checkpoint_done"].as_u64(),
            x["unknown"].as_u64()
        ),
        (Some(2), Some(1), Some(1), Some(1))
    );
    assert!(x["connected"].as_bool().unwrap());
}

#[test]
fn client_mode_defers_reconnects_and_reads_vnet_frames() {
    let dir = TempDir::new("xenc");
    let plane = Arc::new(FakePlane::default());
    let notify = dir.path().join("xen.sock");
    let m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.xen = Some(XenConfig {
            vnet_hdr_support: true,
            reconnect_ns: 10_000_000,
            ..XenConfig::new(NotifyEndpoint::ConnectUnix(notify.clone()))
        })
    });
    let tx = m.sender();
    let run = Running::start(m);

    // Divergence while Xen is not there: remembered.
    tx.event(div(1));
    std::thread::sleep(Duration::from_millis(50));
    let l = UnixListener::bind(&notify).unwrap();
    let (mut xen, _) = l.accept().unwrap();
    assert_eq!(
        read_exact_timeout(&mut xen, 17),
        b"\x00\x00\x00\x0dDO_CHECKPOINT",
        "deferred request sent on connect"
    );

    // Incoming frames carry the vnet field; our replies never do.
    xen.write_all(&frame(b"COLO_USERSPACE_PROXY_INIT", true))
        .unwrap();
    assert_eq!(
        read_exact_timeout(&mut xen, 29),
        b"\x00\x00\x00\x19COLO_COMPARE_GET_XEN_INIT"
    );
    // Split across writes: the reader reassembles.
    let f = frame(b"COLO_CHECKPOINT", true);
    xen.write_all(&f[..5]).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    xen.write_all(&f[5..]).unwrap();
    assert!(wait_for(5, || plane.checkpoint_done.load(Ordering::SeqCst) == 1));

    // Xen goes away; the sink reconnects (the listener's backlog completes the connect) and the
    // next request goes to the new peer.
    drop(xen);
    std::thread::sleep(Duration::from_millis(50));
    tx.event(div(2));
    let (mut xen2, _) = l.accept().unwrap();
    assert_eq!(
        read_exact_timeout(&mut xen2, 17),
        b"\x00\x00\x00\x0dDO_CHECKPOINT"
    );

    let m = run.join();
    let x = &m.stats().sinks["xen"];
    assert_eq!(x["connects"].as_u64(), Some(2));
    assert_eq!(x["disconnects"].as_u64(), Some(1));
    assert_eq!(x["deferred"].as_u64(), Some(1));
    assert_eq!(x["sent"].as_u64(), Some(2));
}

#[test]
fn oversized_frame_drops_the_peer_and_a_new_one_is_accepted() {
    let dir = TempDir::new("xene");
    let plane = Arc::new(FakePlane::default());
    let notify = dir.path().join("n.sock");
    // A regular file in the way is an error, not deleted.
    std::fs::write(&notify, b"keep").unwrap();
    let cfg = XenConfig {
        vnet_hdr_support: false,
        reconnect_ns: 1,
        ..XenConfig::new(NotifyEndpoint::ListenUnix(notify.clone()))
    };
    assert!(colo_proxy::mgmt::xen::XenSink::new(cfg).is_err());
    assert_eq!(std::fs::read(&notify).unwrap(), b"keep");
    std::fs::remove_file(&notify).unwrap();
    let m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.xen = Some(XenConfig {
            vnet_hdr_support: false,
            reconnect_ns: 1_000_000,
            // The completion below answers no request.
            accept_unsolicited: true,
            ..XenConfig::new(NotifyEndpoint::ListenUnix(notify.clone()))
        })
    });
    let run = Running::start(m);
    let mut bad = UnixStream::connect(&notify).unwrap();
    bad.write_all(&0x00ff_ffffu32.to_be_bytes()).unwrap();
    bad.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 8];
    assert_eq!(bad.read(&mut b).unwrap_or(0), 0, "closed by the sink");

    let mut good = UnixStream::connect(&notify).unwrap();
    good.write_all(&frame(b"COLO_CHECKPOINT", false)).unwrap();
    assert!(wait_for(5, || plane.checkpoint_done.load(Ordering::SeqCst) == 1));
    let m = run.join();
    let st = m.stats();
    assert_eq!(st.checkpoint.completed_unrequested, 1);
    assert!(st.sinks["xen"]["disconnects"].as_u64().unwrap() >= 1);
}

#[test]
fn unsolicited_checkpoint_done_is_counted_and_ignored() {
    let dir = TempDir::new("xenu");
    let plane = Arc::new(FakePlane::default());
    let notify = dir.path().join("u.sock");
    let m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.xen = Some(XenConfig {
            reconnect_ns: 1_000_000,
            ..XenConfig::new(NotifyEndpoint::ListenUnix(notify.clone()))
        })
    });
    // Owner only from its first moment.
    let mode = std::fs::symlink_metadata(&notify)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let stats = m.stats_handle();
    let tx = m.sender();
    let run = Running::start(m);
    let mut xen = UnixStream::connect(&notify).unwrap();
    // Nothing was asked for: this would release every held primary.
    xen.write_all(&frame(b"COLO_CHECKPOINT", false)).unwrap();
    assert!(wait_for(5, || {
        stats.lock().unwrap().checkpoint.unsolicited_ignored == 1
    }));
    assert_eq!(plane.checkpoint_done.load(Ordering::SeqCst), 0);
    // A real request and its answer still work.
    tx.event(div(1));
    assert_eq!(
        read_exact_timeout(&mut xen, 17),
        b"\x00\x00\x00\x0dDO_CHECKPOINT"
    );
    xen.write_all(&frame(b"COLO_CHECKPOINT", false)).unwrap();
    assert!(wait_for(5, || plane.checkpoint_done.load(Ordering::SeqCst) == 1));
    let st = run.join().stats();
    assert_eq!(
        (
            st.checkpoint.unsolicited_ignored,
            st.checkpoint.completed,
            st.checkpoint.completed_unrequested
        ),
        (1, 1, 0)
    );
}

/// Read the handshake reply on `s` (true) or see it closed (false).
fn handshake(s: &mut TcpStream) -> bool {
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    if s.write_all(&frame(b"COLO_USERSPACE_PROXY_INIT", false))
        .is_err()
    {
        return false;
    }
    let mut b = [0u8; 29];
    match s.read_exact(&mut b) {
        Ok(()) => {
            assert_eq!(&b, b"\x00\x00\x00\x19COLO_COMPARE_GET_XEN_INIT");
            true
        }
        Err(_) => false,
    }
}

fn xen_tcp(port: u16, policy: PeerPolicy, keepalive_ms: u64) -> XenConfig {
    let a: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    XenConfig {
        reconnect_ns: 1_000_000,
        policy,
        keepalive: Some(Keepalive {
            timeout: Duration::from_millis(keepalive_ms),
        }),
        ..XenConfig::new(NotifyEndpoint::ListenTcp(a))
    }
}

#[test]
fn tcp_stranger_refused_while_the_live_peer_works_and_a_vanished_peer_is_replaced() {
    let dir = TempDir::new("xent");
    let plane = Arc::new(FakePlane::default());
    let port = peer_support::free_port();
    let default = XenConfig::new(NotifyEndpoint::ListenTcp(([127, 0, 0, 1], port).into()));
    assert_eq!(default.policy.allow, Some(Allowlist::loopback()));
    assert!(!default.policy.replace_peer && !default.accept_unsolicited);
    let m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.xen = Some(xen_tcp(port, default.policy.clone(), 2000))
    });
    let stats = m.stats_handle();
    let tx = m.sender();
    let run = Running::start(m);
    let mut live = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(handshake(&mut live));

    // A second connection is refused; the live peer still gets the request.
    let mut stranger = TcpStream::connect(("127.0.0.1", port)).unwrap();
    assert!(!handshake(&mut stranger), "stranger was answered");
    tx.event(div(1));
    live.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut b = [0u8; 17];
    live.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"\x00\x00\x00\x0dDO_CHECKPOINT");
    live.write_all(&frame(b"COLO_CHECKPOINT", false)).unwrap();
    assert!(wait_for(5, || plane.checkpoint_done.load(Ordering::SeqCst) == 1));

    // libxl's host dies (no FIN): keepalive finds it within 2 s, and the restart gets in.
    // (Timed from its last word: keepalive counts from there.)
    let died = Instant::now();
    peer_support::vanish(live);
    let mut back = peer_support::within(Duration::from_secs(6), "restart admitted", || {
        let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
        handshake(&mut s).then_some(s)
    });
    let took = died.elapsed();
    // Keepalive (idle 1 s) found it, not something faster, and within the bound.
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_millis(4500),
        "admitted after {took:?}"
    );
    tx.event(div(2));
    back.read_exact(&mut b).unwrap();
    assert_eq!(&b, b"\x00\x00\x00\x0dDO_CHECKPOINT");
    assert!(wait_for(5, || {
        let s = stats.lock().unwrap();
        s.sinks["xen"]["refused_busy"].as_u64() >= Some(1)
    }));
    let st = run.join().stats();
    let x = &st.sinks["xen"];
    assert!(x["refused_busy"].as_u64().unwrap() >= 1, "{x}");
    assert_eq!(x["dead_peers"].as_u64(), Some(1), "{x}");
    assert_eq!(x["connects"].as_u64(), Some(2), "{x}");
}

#[test]
fn tcp_allowlist_refuses_other_addresses() {
    let dir = TempDir::new("xena");
    let plane = Arc::new(FakePlane::default());
    let port = peer_support::free_port();
    let policy = PeerPolicy {
        allow: Some(Allowlist::parse(&["127.0.0.2"]).unwrap()),
        replace_peer: false,
    };
    let m = mgmt_with(dir.path(), plane.clone(), |c| {
        c.xen = Some(xen_tcp(port, policy, 5000))
    });
    let run = Running::start(m);
    let to: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut wrong = peer_support::connect_from("127.0.0.1", to);
    assert!(!handshake(&mut wrong));
    let mut right = peer_support::connect_from("127.0.0.2", to);
    assert!(handshake(&mut right));
    let st = run.join().stats();
    assert_eq!(st.sinks["xen"]["refused_not_allowed"].as_u64(), Some(1));
}
