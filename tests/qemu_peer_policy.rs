//! The server-side peer policy against QEMU 7.2's own reconnecting chardev (filter-mirror's
//! `outdev`, `reconnect=1`), over loopback TCP: while another peer holds the socket QEMU is
//! refused and keeps retrying; once keepalive finds that peer dead, QEMU gets in and its
//! mirrored frames flow; a stranger knocking later does not displace QEMU. The wire format is
//! QEMU's own, unchanged.

mod peer_support;
mod qemu_support;

use std::net::TcpStream;
use std::time::{Duration, Instant};

use colo_proxy::link::access::{Allowlist, Keepalive, PeerPolicy};
use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, LinkAddr, Role, SocketConfig};
use qemu_support::*;

#[test]
fn qemu_reconnecting_chardev_gets_in_once_the_old_peer_is_found_dead() {
    if !qemu_available("qemu_reconnecting_chardev_gets_in_once_the_old_peer_is_found_dead") {
        return;
    }
    let mut c = SocketConfig::new(
        LinkAddr::Tcp("127.0.0.1:0".parse().unwrap()),
        Role::Server,
        FrameConfig::with_vnet(false),
    );
    c.policy = PeerPolicy {
        allow: Some(Allowlist::loopback()),
        replace_peer: false,
    };
    c.keepalive = Some(Keepalive {
        timeout: Duration::from_secs(2),
    });
    let mut ours = FramedSocket::new(c).unwrap();
    let port = ours.local_tcp_addr().unwrap().port();
    // Someone holds the socket first (a previous peer whose host is about to die).
    let old = TcpStream::connect(("127.0.0.1", port)).unwrap();
    until(5, "the first peer admitted", || {
        ours.poll_recv(|_, _| {});
        ours.is_connected()
    });

    let d = TempDir::new("qpp");
    let mut args = netdev_args(&d, "n0", "hp0");
    args.extend(netdev_args(&d, "n1", "hp1"));
    args.extend([
        "-chardev".into(),
        format!("socket,id=mirror0,host=127.0.0.1,port={port},reconnect=1"),
        "-object".into(),
        "filter-mirror,id=f0,netdev=n0,queue=tx,outdev=mirror0".into(),
    ]);
    let q = Qemu::spawn(&d, "qpp", &args, &[d.path("n0.sock"), d.path("n1.sock")]);
    let mut guest = client(&d, "n1", false);
    let mut tap = client(&d, "n0", false);
    connect_netdevs(&mut [&mut tap, &mut guest]);

    // QEMU knocks and is refused: the first peer looks alive. Its retries keep coming.
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut tick = 0u32;
    let mut step = |ours: &mut FramedSocket, got: &mut Vec<Vec<u8>>, tag: u8| {
        if tick.is_multiple_of(25) {
            tap.send(0, &pattern_frame(100, tag)).unwrap();
        }
        tick += 1;
        tap.flush();
        guest.poll_recv(|_, _| {});
        ours.poll_recv(|_, f| got.push(f.to_vec()));
    };
    until(10, "QEMU refused while the first peer lives", || {
        step(&mut ours, &mut got, 1);
        ours.stats().refused_busy >= 2
    });
    assert!(got.is_empty(), "nothing from QEMU while refused");

    // The first peer's host dies without a FIN: keepalive (2 s) finds it, QEMU's next retry
    // (every 1 s) gets in, and its mirrored frames arrive.
    let died = Instant::now();
    peer_support::vanish(old);
    until(10, "QEMU's mirrored frames after the old peer died", || {
        step(&mut ours, &mut got, 2);
        !got.is_empty()
    });
    let took = died.elapsed();
    assert!(
        took <= Duration::from_millis(4500),
        "QEMU admitted after {took:?} (keepalive 2 s + retry 1 s)\n{}",
        q.log_text()
    );
    assert!(got.iter().all(|f| f == &pattern_frame(100, 2)), "{got:?}");
    let st = ours.stats();
    assert_eq!(st.connects, 2, "{st:?}");
    assert_eq!(st.dead_peers, 1, "{st:?}");

    // A stranger now is refused and QEMU keeps its place.
    let refused = st.refused_busy;
    let stranger = TcpStream::connect(("127.0.0.1", port)).unwrap();
    until(5, "stranger refused", || {
        step(&mut ours, &mut got, 3);
        ours.stats().refused_busy > refused
    });
    got.clear();
    until(5, "QEMU still mirrored", || {
        step(&mut ours, &mut got, 4);
        got.iter().any(|f| f == &pattern_frame(100, 4))
    });
    assert_eq!(ours.stats().connects, 2, "QEMU was not displaced");
    drop(stranger);
    drop(q);
}
