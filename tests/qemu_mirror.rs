//! QEMU `filter-mirror` → our decoder (issue 6 test a), and reconnect with QEMU as the client
//! (test d). QEMU 7.2 without a guest: two stream netdevs joined by a hub (reference §7).

mod qemu_support;

use std::time::Duration;

use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, Role, SocketConfig};
use qemu_support::*;

const PROBE: u8 = 0xEE;

fn is_probe(f: &[u8]) -> bool {
    f.len() == 60 && f == pattern_frame(60, PROBE).as_slice()
}

/// Send probes through the tap side until one is mirrored: QEMU has then accepted every
/// socket (a mirror send to a not-yet-accepted chardev is lost by QEMU, by design).
fn sync(tap: &mut FramedSocket, mirror: &mut FramedSocket, guest: &mut FramedSocket) {
    connect_netdevs(&mut [tap, guest]);
    let mut seen = false;
    let mut tick = 0u32;
    until(10, "a mirrored probe", || {
        if tick.is_multiple_of(25) {
            tap.send(0, &pattern_frame(60, PROBE)).unwrap();
        }
        tick += 1;
        tap.flush();
        tap.poll_recv(|_, _| {});
        guest.poll_recv(|_, _| {});
        mirror.poll_recv(|_, f| seen |= is_probe(f));
        seen
    });
}

fn mirror_exact_frames(vnet: bool) {
    let test = if vnet {
        "qemu_mirror_vnet"
    } else {
        "qemu_mirror_plain"
    };
    if !qemu_available(test) {
        return;
    }
    let d = TempDir::new(test);
    let mut args = netdev_args(&d, "n0", "hp0");
    args.extend(netdev_args(&d, "n1", "hp1"));
    args.extend(chardev_args(&d, "mirror0"));
    args.extend([
        "-object".into(),
        format!(
            "filter-mirror,id=f0,netdev=n0,queue=tx,outdev=mirror0,vnet_hdr_support={}",
            if vnet { "on" } else { "off" }
        ),
    ]);
    let q = Qemu::spawn(
        &d,
        "m",
        &args,
        &[d.path("n0.sock"), d.path("n1.sock"), d.path("mirror0.sock")],
    );
    let mut mirror = client(&d, "mirror0", vnet);
    let mut guest = client(&d, "n1", false);
    let mut tap = client(&d, "n0", false);
    sync(&mut tap, &mut mirror, &mut guest);

    let frames: Vec<Vec<u8>> = vec![
        pattern_frame(60, 1),
        pattern_frame(1514, 2),
        tcp_frame(1000, 80, 1, 1, b"GET / HTTP/1.0\r\n\r\n"),
        pattern_frame(342, 3),
        pattern_frame(9014, 4),
        udp_frame(53, 5353, &[0x42; 100]),
    ];
    for f in &frames {
        tap.send(0, f).unwrap();
    }
    let (mut at_mirror, mut at_guest) = (Vec::new(), Vec::new());
    until(10, "mirrored frames", || {
        tap.flush();
        mirror.poll_recv(|v, f| {
            if !is_probe(f) {
                at_mirror.push((v, f.to_vec()))
            }
        });
        guest.poll_recv(|_, f| {
            if !is_probe(f) {
                at_guest.push(f.to_vec())
            }
        });
        at_mirror.len() >= frames.len() && at_guest.len() >= frames.len()
    });
    // The stream netdev has no vnet header: QEMU writes its netdev's length, 0.
    let expect: Vec<(u32, Vec<u8>)> = frames.iter().map(|f| (0, f.clone())).collect();
    assert_eq!(at_mirror, expect, "{}", q.log_text());
    assert_eq!(at_guest, frames, "mirror must not consume the packet");
    let s = mirror.stats();
    assert_eq!((s.oversize, s.bad_vnet, s.decode_resets), (0, 0, 0));
}

#[test]
fn qemu_filter_mirror_delivers_exact_frames() {
    mirror_exact_frames(false);
}

#[test]
fn qemu_filter_mirror_delivers_exact_frames_with_vnet_hdr() {
    mirror_exact_frames(true);
}

/// QEMU's mirror chardev is a reconnecting client; our server restarts; frames flow again.
#[test]
fn qemu_mirror_client_reconnects_to_restarted_server() {
    if !qemu_available("qemu_mirror_client_reconnects_to_restarted_server") {
        return;
    }
    let d = TempDir::new("mrc");
    let addr = d.addr("ours.sock");
    let server_cfg =
        || SocketConfig::parse(&addr, Role::Server, FrameConfig::with_vnet(true)).unwrap();
    let mut ours = FramedSocket::new(server_cfg()).unwrap();
    let mut args = netdev_args(&d, "n0", "hp0");
    args.extend(netdev_args(&d, "n1", "hp1"));
    args.extend([
        "-chardev".into(),
        format!(
            "socket,id=mirror0,path={},reconnect=1",
            path_of(&d.path("ours.sock"))
        ),
        "-object".into(),
        "filter-mirror,id=f0,netdev=n0,queue=tx,outdev=mirror0,vnet_hdr_support=on".into(),
    ]);
    let q = Qemu::spawn(&d, "mrc", &args, &[d.path("n0.sock"), d.path("n1.sock")]);
    let mut guest = client(&d, "n1", false);
    let mut tap = client(&d, "n0", false);
    connect_netdevs(&mut [&mut tap, &mut guest]);
    for round in 0..2u8 {
        let mut got = Vec::new();
        let mut tick = 0u32;
        until(15, "mirrored frame after (re)connect", || {
            if tick.is_multiple_of(25) {
                tap.send(0, &pattern_frame(100, round)).unwrap();
            }
            tick += 1;
            tap.flush();
            guest.poll_recv(|_, _| {});
            ours.poll_recv(|v, f| got.push((v, f.to_vec())));
            !got.is_empty()
        });
        assert!(
            got.iter()
                .all(|(v, f)| *v == 0 && f == &pattern_frame(100, round)),
            "{}",
            q.log_text()
        );
        assert_eq!(ours.stats().connects, 1);
        if round == 0 {
            // Restart our side: QEMU must reconnect (reconnect=1 s) and mirror again.
            drop(ours);
            std::thread::sleep(Duration::from_millis(50));
            ours = FramedSocket::new(server_cfg()).unwrap();
        }
    }
}
