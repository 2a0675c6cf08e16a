//! Who may connect to a server-mode link socket, over real loopback sockets: the live peer is
//! kept and a stranger refused and counted; the allowlist (IPv4, IPv6, v4-mapped); a closing
//! peer is read to its end before the next one takes over; a peer whose host vanished (no FIN)
//! is found dead by TCP keepalive within the bound and its restart admitted.

mod peer_support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use peer_support::{connect_from, vanish};

use colo_proxy::link::access::{Allowlist, Keepalive, PeerPolicy};
use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, LinkAddr, NamedPeerCounters, Role, SocketConfig};

fn server(addr: &str, policy: PeerPolicy, keepalive_ms: Option<u64>) -> FramedSocket {
    let mut c = SocketConfig::new(
        LinkAddr::Tcp(addr.parse().unwrap()),
        Role::Server,
        FrameConfig::with_vnet(false),
    );
    c.policy = policy;
    c.keepalive = keepalive_ms.map(|ms| Keepalive {
        timeout: Duration::from_millis(ms),
    });
    FramedSocket::new(c).unwrap()
}

fn framed(payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(payload);
    v
}

/// Poll `s` until `done` holds or `limit` passes; returns how long it took.
fn poll_until(
    s: &mut FramedSocket,
    got: &mut Vec<Vec<u8>>,
    limit: Duration,
    mut done: impl FnMut(&FramedSocket, &[Vec<u8>]) -> bool,
) -> Duration {
    let t0 = Instant::now();
    loop {
        s.poll_recv(|_, f| got.push(f.to_vec()));
        if done(s, got) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < limit,
            "timed out after {limit:?}: {:?}",
            s.stats()
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// True once the peer's side sees the connection closed (EOF or reset).
fn closed_by_server(c: &mut TcpStream) -> bool {
    c.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut b = [0u8; 16];
    match c.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

fn tcp_addr(s: &FramedSocket) -> SocketAddr {
    s.local_tcp_addr().unwrap()
}

#[test]
fn stranger_is_refused_and_counted_while_the_live_peer_keeps_working() {
    let mut s = server("127.0.0.1:0", PeerPolicy::default(), Some(5000));
    let a = tcp_addr(&s);
    let mut got = Vec::new();
    let mut peer = TcpStream::connect(a).unwrap();
    peer.write_all(&framed(b"from the live peer 1")).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 1
    });

    let mut stranger = TcpStream::connect(a).unwrap();
    let _ = stranger.write_all(&framed(b"injected by a stranger"));
    poll_until(&mut s, &mut got, Duration::from_secs(5), |s, _| {
        s.stats().refused_busy == 1
    });
    let t0 = Instant::now();
    while !closed_by_server(&mut stranger) {
        assert!(t0.elapsed() < Duration::from_secs(5), "stranger not closed");
    }
    // The live peer is still the one being read.
    peer.write_all(&framed(b"from the live peer 2")).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 2
    });
    assert_eq!(got[1], b"from the live peer 2");
    assert!(got.iter().all(|f| !f.starts_with(b"injected")), "{got:?}");
    let st = s.stats();
    assert_eq!((st.connects, st.disconnects, st.replaced), (1, 0, 0));
    let shared = s.peer_counters().snapshot();
    assert_eq!(shared.refused_busy, 1);
    assert!(shared.connected);
    // What `ctl stats` (`dataplane.link_sockets`) and the final report show.
    let named = NamedPeerCounters {
        name: "secondary-out",
        addr: format!("tcp:{a}"),
        counters: s.peer_counters(),
    };
    let j = named.to_json();
    assert_eq!(j["link"], "secondary-out");
    assert_eq!(j["peers"]["refused_busy"], 1);
    assert_eq!(j["peers"]["connects"], 1);
    let line = named.line();
    assert!(
        line.contains("refused (not allowed 0 busy 1)") && line.ends_with("connected"),
        "{line}"
    );
}

#[test]
fn replace_peer_true_restores_newest_wins() {
    let policy = PeerPolicy {
        allow: None,
        replace_peer: true,
    };
    let mut s = server("127.0.0.1:0", policy, None);
    let a = tcp_addr(&s);
    let mut got = Vec::new();
    let mut first = TcpStream::connect(a).unwrap();
    first.write_all(&framed(b"one")).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 1
    });
    let mut second = TcpStream::connect(a).unwrap();
    second.write_all(&framed(b"two")).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 2
    });
    assert_eq!(got[1], b"two");
    assert_eq!((s.stats().replaced, s.stats().refused_busy), (1, 0));
}

#[test]
fn allowlist_refuses_other_addresses_and_admits_listed_ones() {
    let policy = PeerPolicy {
        allow: Some(Allowlist::parse(&["127.0.0.2"]).unwrap()),
        replace_peer: false,
    };
    let mut s = server("127.0.0.1:0", policy, None);
    let a = tcp_addr(&s);
    let mut got = Vec::new();
    let mut wrong = connect_from("127.0.0.1", a);
    let _ = wrong.write_all(&framed(b"not allowed"));
    poll_until(&mut s, &mut got, Duration::from_secs(5), |s, _| {
        s.stats().refused_not_allowed == 1
    });
    assert!(!s.is_connected());
    let mut right = connect_from("127.0.0.2", a);
    right.write_all(&framed(b"allowed")).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 1
    });
    assert_eq!(got, vec![b"allowed".to_vec()]);
}

#[test]
fn dual_stack_listener_matches_v4_mapped_peers_as_ipv4() {
    // [::] accepts IPv4 peers as ::ffff:a.b.c.d; the IPv4 entry must match them, and ::1 is
    // not in the list.
    let policy = PeerPolicy {
        allow: Some(Allowlist::parse(&["127.0.0.0/8"]).unwrap()),
        replace_peer: false,
    };
    let mut s = server("[::]:0", policy, None);
    let port = tcp_addr(&s).port();
    let mut got = Vec::new();
    let mut v6 = TcpStream::connect(("::1", port)).unwrap();
    let _ = v6.write_all(&framed(b"v6"));
    poll_until(&mut s, &mut got, Duration::from_secs(5), |s, _| {
        s.stats().refused_not_allowed == 1
    });
    let mut v4 = TcpStream::connect(("127.0.0.1", port)).unwrap();
    v4.write_all(&framed(b"v4")).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 1
    });
    assert_eq!(got, vec![b"v4".to_vec()]);
}

#[test]
fn a_closing_peer_is_read_to_its_end_before_the_next_takes_over() {
    let mut s = server("127.0.0.1:0", PeerPolicy::default(), None);
    let a = tcp_addr(&s);
    let mut got = Vec::new();
    let mut old = TcpStream::connect(a).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |s, _| {
        s.is_connected()
    });
    // The old peer's last frames and its close, then the new peer, all before the next poll.
    // (Small enough for the socket buffer, so the FIN has arrived too: a FIN still queued
    // behind unread data is not visible, and the old peer then still counts as alive.)
    let mut bytes = Vec::new();
    for i in 0..20u32 {
        bytes.extend(framed(&[i as u8; 1000]));
    }
    old.write_all(&bytes).unwrap();
    drop(old);
    let mut new = TcpStream::connect(a).unwrap();
    new.write_all(&framed(b"new peer")).unwrap();
    // A connected server looks for new peers at most every ACCEPT_PERIOD: let one pass, so
    // the next poll sees the new peer while the old one's data is still unread (the wait).
    std::thread::sleep(colo_proxy::link::socket::ACCEPT_PERIOD + Duration::from_millis(2));
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 21
    });
    for (i, f) in got[..20].iter().enumerate() {
        assert_eq!(f, &vec![i as u8; 1000], "frame {i}");
    }
    assert_eq!(got[20], b"new peer");
    assert_eq!(s.stats().waited, 1);
    let st = s.stats();
    assert_eq!((st.refused_busy, st.connects), (0, 2), "{st:?}");
}

/// The peer's host "dies" (no FIN); its restarted process knocks every 100 ms, like a QEMU
/// chardev with `reconnect`. Refused while the dead one looks alive; admitted once keepalive
/// finds it dead, within the 2 s bound (plus scheduling slack). Without keepalive it would be
/// refused for ever.
fn restarted_peer_gets_in(keepalive_ms: Option<u64>, limit: Duration) -> (Duration, u64) {
    let mut s = server("127.0.0.1:0", PeerPolicy::default(), keepalive_ms);
    let a = tcp_addr(&s);
    let mut got = Vec::new();
    let mut old = TcpStream::connect(a).unwrap();
    old.write_all(&framed(b"before the crash")).unwrap();
    poll_until(&mut s, &mut got, Duration::from_secs(5), |_, g| {
        g.len() == 1
    });
    // (Timed from its last word: keepalive counts from there.)
    let died = Instant::now();
    vanish(old);
    let mut next_try = Instant::now();
    let mut tries = 0u64;
    let mut current: Option<TcpStream> = None;
    poll_until(&mut s, &mut got, limit, |s, g| {
        if g.len() == 2 {
            return true;
        }
        if Instant::now() >= next_try {
            next_try = Instant::now() + Duration::from_millis(100);
            // The previous attempt was refused (or is still pending): try again.
            let refused = current.as_mut().is_none_or(closed_by_server);
            if refused {
                tries += 1;
                let mut c = TcpStream::connect(a).unwrap();
                let _ = c.write_all(&framed(b"after the restart"));
                current = Some(c);
            }
        }
        let _ = s;
        false
    });
    assert!(tries >= 1);
    assert_eq!(got[1], b"after the restart");
    (died.elapsed(), s.stats().refused_busy)
}

#[test]
fn a_vanished_peer_is_found_dead_by_keepalive_and_its_restart_admitted() {
    let (took, refused) = restarted_peer_gets_in(Some(2000), Duration::from_secs(6));
    assert!(
        took >= Duration::from_millis(800) && took <= Duration::from_millis(3500),
        "restart admitted after {took:?} (keepalive: first probe after 1 s, bound 2 s)"
    );
    assert!(
        refused >= 1,
        "the restart knocked while the dead peer looked alive"
    );
}

#[test]
fn without_keepalive_a_vanished_peer_blocks_its_restart() {
    // The control experiment: the same crash with keepalive off is never noticed.
    let r = std::panic::catch_unwind(|| restarted_peer_gets_in(None, Duration::from_secs(3)));
    assert!(
        r.is_err(),
        "admitted without keepalive: the test above could not fail"
    );
}
