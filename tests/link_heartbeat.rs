//! Link heartbeats are never data: on the QEMU-framed socket a heartbeat is a zero-length frame
//! that the receiver counts and does not deliver (with and without the vnet_hdr_len field); on
//! the encapsulated link it is a flagged frame that takes a sequence number like any other.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::link::encap::{EncapConfig, EncapRx, EncapTx, SeqEvent, FLAG_HEARTBEAT};
use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, Role, SendError, SocketConfig};

fn until(mut step: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !step() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn pair(tag: &str, vnet: bool) -> (FramedSocket, FramedSocket, PathBuf) {
    let dir = std::env::temp_dir().join(format!("colo-hb-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("unix:{}", dir.join("s.sock").display());
    let cfg = |role| {
        let mut c = SocketConfig::parse(&addr, role, FrameConfig::with_vnet(vnet)).unwrap();
        c.backoff_initial = Duration::from_millis(10);
        c.backoff_max = Duration::from_millis(80);
        c
    };
    let mut server = FramedSocket::new(cfg(Role::Server)).unwrap();
    let mut client = FramedSocket::new(cfg(Role::Client)).unwrap();
    until(|| {
        server.poll_recv(|_, _| {});
        client.flush();
        client.is_connected() && server.is_connected()
    });
    (server, client, dir)
}

fn socket_heartbeats_are_counted_not_delivered(vnet: bool) {
    let (mut server, mut client, dir) = pair(if vnet { "v" } else { "p" }, vnet);
    let data: Vec<u8> = (0..100u8).collect();
    client.send(0, &data).unwrap();
    client.send_heartbeat().unwrap();
    client.send_heartbeat().unwrap();
    client.send(0, &data[..60]).unwrap();
    client.send_heartbeat().unwrap();
    let mut got = Vec::new();
    until(|| {
        client.flush();
        server.poll_recv(|_, f| got.push(f.to_vec()));
        got.len() == 2 && server.stats().empty_in == 3
    });
    assert_eq!(got, vec![data.clone(), data[..60].to_vec()]);
    assert_eq!(server.stats().frames_in, 2);
    assert_eq!(client.stats().heartbeats_out, 3);
    // The stream stays in sync after heartbeats: more data arrives intact.
    client.send(0, &data[..10]).unwrap();
    until(|| {
        client.flush();
        server.poll_recv(|_, f| got.push(f.to_vec()));
        got.len() == 3
    });
    assert_eq!(got[2], data[..10].to_vec());
    assert_eq!(server.stats().decode_resets, 0);
    drop((server, client));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn socket_heartbeat_plain_framing() {
    socket_heartbeats_are_counted_not_delivered(false);
}

#[test]
fn socket_heartbeat_vnet_framing() {
    socket_heartbeats_are_counted_not_delivered(true);
}

#[test]
fn socket_heartbeat_needs_a_peer() {
    let dir = std::env::temp_dir().join(format!("colo-hb-none-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let addr = format!("unix:{}", dir.join("s.sock").display());
    let cfg = SocketConfig::parse(&addr, Role::Server, FrameConfig::with_vnet(false)).unwrap();
    let mut server = FramedSocket::new(cfg).unwrap();
    assert!(matches!(
        server.send_heartbeat(),
        Err(SendError::Backpressure)
    ));
    assert_eq!(server.stats().heartbeats_out, 0);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn encapsulated_heartbeat_is_flagged_empty_and_sequenced() {
    let cfg = EncapConfig {
        dst: [2, 0, 0, 0, 0, 9],
        src: [2, 0, 0, 0, 0, 8],
        ethertype: 0x88b5,
    };
    let mut tx = EncapTx::new(cfg, 0);
    let mut rx: EncapRx = EncapRx::new(0x88b5);
    let mut data = VecBuf::from_slice(&[0xab; 60]);
    tx.encap(&mut data, 0).unwrap();
    let mut hb = VecBuf::from_slice(&[]);
    tx.encap(&mut hb, FLAG_HEARTBEAT).unwrap();
    let mut data2 = VecBuf::from_slice(&[0xcd; 60]);
    tx.encap(&mut data2, 0).unwrap();
    let (h, ev) = rx.decap(&mut data).unwrap();
    assert_eq!((h.flags, h.seq, ev), (0, 0, SeqEvent::First));
    let (h, ev) = rx.decap(&mut hb).unwrap();
    assert_eq!((h.flags, h.seq, h.inner_len), (FLAG_HEARTBEAT, 1, 0));
    assert_eq!(ev, SeqEvent::InOrder);
    assert_eq!(hb.len(), 0);
    let (h, ev) = rx.decap(&mut data2).unwrap();
    assert_eq!((h.flags, h.seq, ev), (0, 2, SeqEvent::InOrder));
    assert_eq!(data2.data(), &[0xcd; 60][..]);
}
