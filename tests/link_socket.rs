//! Framed sockets over loopback: batching, backpressure, reconnect, bad input.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, LinkAddr, Role, SendError, SocketConfig};
use colo_proxy::link::{LinkConfig, LinkEndpoint, Side};

struct TempDir(PathBuf);
impl TempDir {
    fn new(tag: &str) -> Self {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .subsec_nanos();
        let p =
            std::env::temp_dir().join(format!("colo-link-{tag}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    fn sock(&self, name: &str) -> String {
        format!("unix:{}", self.0.join(name).display())
    }
}
impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cfg(addr: &str, role: Role, vnet: bool) -> SocketConfig {
    let mut c = SocketConfig::parse(addr, role, FrameConfig::with_vnet(vnet)).unwrap();
    c.backoff_initial = Duration::from_millis(10);
    c.backoff_max = Duration::from_millis(80);
    c
}

/// Poll until `done` or 5 s pass.
fn until(mut step: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !step() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_millis(1));
    }
}

fn frame(i: usize) -> Vec<u8> {
    let len = [60, 1514, 64, 9000, 200][i % 5];
    (0..len).map(|j| (i * 7 + j) as u8).collect()
}

fn transfer(server: &mut FramedSocket, client: &mut FramedSocket, n: usize, vnet: bool) {
    until(|| {
        server.poll_recv(|_, _| {});
        client.flush();
        client.is_connected() && server.is_connected()
    });
    let mut got: Vec<(u32, Vec<u8>)> = Vec::new();
    let mut sent = 0;
    until(|| {
        while sent < n {
            match client.send(if vnet { (sent % 21) as u32 } else { 0 }, &frame(sent)) {
                Ok(()) => sent += 1,
                Err(SendError::Backpressure) => break,
                Err(e) => panic!("{e}"),
            }
        }
        client.flush();
        server.poll_recv(|v, f| got.push((v, f.to_vec())));
        got.len() == n
    });
    for (i, (v, f)) in got.iter().enumerate() {
        assert_eq!(*v, if vnet { (i % 21) as u32 } else { 0 });
        assert_eq!(f, &frame(i), "frame {i}");
    }
    assert_eq!(client.stats().frames_out, n as u64);
    assert_eq!(server.stats().frames_in, n as u64);
}

#[test]
fn unix_many_frames_few_syscalls() {
    let d = TempDir::new("unix");
    let a = d.sock("s");
    let mut server = FramedSocket::new(cfg(&a, Role::Server, true)).unwrap();
    let mut client = FramedSocket::new(cfg(&a, Role::Client, true)).unwrap();
    transfer(&mut server, &mut client, 2000, true);
    let (s, c) = (server.stats(), client.stats());
    assert!(
        s.read_calls * 4 < s.frames_in,
        "reads {} for {} frames",
        s.read_calls,
        s.frames_in
    );
    assert!(
        c.write_calls * 4 < c.frames_out,
        "writes {} for {} frames",
        c.write_calls,
        c.frames_out
    );
}

#[test]
fn tcp_transfer() {
    let mut server = FramedSocket::new(cfg("tcp:127.0.0.1:0", Role::Server, false)).unwrap();
    let port = server.local_tcp_addr().unwrap().port();
    let mut client =
        FramedSocket::new(cfg(&format!("tcp:127.0.0.1:{port}"), Role::Client, false)).unwrap();
    transfer(&mut server, &mut client, 500, false);
}

#[test]
fn backpressure_is_reported_and_nothing_is_lost() {
    let d = TempDir::new("bp");
    let a = d.sock("s");
    let mut server = FramedSocket::new(cfg(&a, Role::Server, false)).unwrap();
    let mut c = cfg(&a, Role::Client, false);
    c.out_buf = 0; // raised to one maximal frame
    let mut client = FramedSocket::new(c).unwrap();
    until(|| {
        server.poll_recv(|_, _| {});
        client.flush();
        client.is_connected() && server.is_connected()
    });
    // Server does not read: the kernel buffers fill, then ours.
    let mut accepted = 0usize;
    let mut refused = 0;
    while refused < 3 && accepted < 1_000_000 {
        match client.send(0, &frame(accepted)) {
            Ok(()) => accepted += 1,
            Err(SendError::Backpressure) => refused += 1,
            Err(e) => panic!("{e}"),
        }
    }
    assert_eq!(refused, 3);
    assert_eq!(client.stats().backpressure, 3);
    let mut got = 0usize;
    until(|| {
        client.flush();
        server.poll_recv(|_, f| {
            assert_eq!(f, &frame(got)[..]);
            got += 1;
        });
        got == accepted
    });
    assert_eq!(client.pending_out(), 0);
}

#[test]
fn empty_and_invalid_frames_are_refused_on_send() {
    let d = TempDir::new("inv");
    let mut client = FramedSocket::new(cfg(&d.sock("none"), Role::Client, true)).unwrap();
    assert!(matches!(client.send(0, &[]), Err(SendError::Frame(_))));
    assert!(matches!(client.send(21, &[1]), Err(SendError::Frame(_))));
    assert!(matches!(
        client.send(0, &vec![0; 70000]),
        Err(SendError::Frame(_))
    ));
    assert_eq!(client.stats().send_errors, 3);
    // Queued while disconnected, no error.
    assert!(client.send(0, &[1]).is_ok());
    assert_eq!(client.pending_out(), 9);
}

#[test]
fn client_backs_off_then_reconnects_after_peer_restart() {
    let d = TempDir::new("rc");
    let a = d.sock("s");
    let mut client = FramedSocket::new(cfg(&a, Role::Client, false)).unwrap();
    // No server yet: failed attempts with back-off (10, 20, 40, 80, 80 ms ...). Polled until
    // five attempts failed (bounded), then the back-off is checked from below: five attempts
    // need at least 10 + 20 + 40 + 80 ms. (A fixed 300 ms window with a count range failed
    // on a loaded machine, where the loop itself can be descheduled for that long.)
    let t0 = Instant::now();
    until(|| {
        client.flush();
        client.stats().connect_failures >= 5
    });
    let took = t0.elapsed();
    let fails = client.stats().connect_failures;
    assert_eq!(
        fails, 5,
        "one attempt per flush at most once its back-off expired"
    );
    assert!(
        took >= Duration::from_millis(150),
        "{fails} attempts in {took:?}: back-off not respected"
    );
    for round in 0..3 {
        let mut server = FramedSocket::new(cfg(&a, Role::Server, false)).unwrap();
        let mut got = Vec::new();
        until(|| {
            client.send(0, &[round as u8 + 1; 100]).ok();
            client.flush();
            server.poll_recv(|_, f| got.push(f.to_vec()));
            !got.is_empty()
        });
        assert!(got.iter().all(|f| f == &vec![round as u8 + 1; 100]));
        drop(server); // peer restart
        until(|| {
            client.poll_recv(|_, _| {});
            !client.is_connected()
        });
    }
    assert_eq!(client.stats().connects, 3);
    assert_eq!(client.stats().disconnects, 3);
}

#[test]
fn new_peer_replaces_old_mid_frame_and_decoder_resets() {
    let d = TempDir::new("rep");
    let a = d.sock("s");
    let path = a.strip_prefix("unix:").unwrap().to_string();
    // Newest-wins is opt-in (`replace_peer`); by default the live peer is kept.
    let mut c = cfg(&a, Role::Server, true);
    c.policy.replace_peer = true;
    let mut server = FramedSocket::new(c).unwrap();
    let mut first = UnixStream::connect(&path).unwrap();
    // Half a frame from the first peer.
    first
        .write_all(&[0, 0, 0, 10, 0, 0, 0, 0, 1, 2, 3])
        .unwrap();
    let mut got = Vec::new();
    until(|| {
        server.poll_recv(|_, f| got.push(f.to_vec()));
        server.stats().read_calls == 1
    });
    let mut second = UnixStream::connect(&path).unwrap();
    second.write_all(&[0, 0, 0, 2, 0, 0, 0, 12, 9, 9]).unwrap();
    until(|| {
        server.poll_recv(|v, f| {
            assert_eq!(v, 12);
            got.push(f.to_vec())
        });
        !got.is_empty()
    });
    assert_eq!(got, vec![vec![9, 9]]);
    let s = server.stats();
    assert_eq!((s.replaced, s.truncated, s.connects), (1, 1, 2));
    // The replaced peer sees its connection closed.
    first
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut b = [0u8; 1];
    assert_eq!(first.read(&mut b).unwrap(), 0);
}

#[test]
fn oversize_input_resets_connection_and_process_goes_on() {
    let d = TempDir::new("ovs");
    let a = d.sock("s");
    let path = a.strip_prefix("unix:").unwrap().to_string();
    let mut server = FramedSocket::new(cfg(&a, Role::Server, false)).unwrap();
    let mut bad = UnixStream::connect(&path).unwrap();
    bad.write_all(&[0, 0, 0, 1, 42]).unwrap();
    bad.write_all(&0x0001_1001u32.to_be_bytes()).unwrap();
    let mut got = Vec::new();
    until(|| {
        server.poll_recv(|_, f| got.push(f.to_vec()));
        server.stats().decode_resets == 1
    });
    assert_eq!(got, vec![vec![42]]);
    assert_eq!(server.stats().oversize, 1);
    assert!(!server.is_connected());
    bad.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut b = [0u8; 1];
    assert_eq!(bad.read(&mut b).unwrap(), 0);
    let mut good = UnixStream::connect(&path).unwrap();
    good.write_all(&[0, 0, 0, 1, 43]).unwrap();
    until(|| {
        server.poll_recv(|_, f| got.push(f.to_vec()));
        got.len() == 2
    });
    assert_eq!(got[1], vec![43]);
}

#[test]
fn addresses_parse() {
    assert_eq!(
        "tcp:127.0.0.1:9003".parse::<LinkAddr>().unwrap(),
        LinkAddr::Tcp("127.0.0.1:9003".parse().unwrap())
    );
    assert_eq!(
        "unix:/tmp/x".parse::<LinkAddr>().unwrap(),
        LinkAddr::Unix("/tmp/x".into())
    );
    assert!("udp:1.2.3.4:5".parse::<LinkAddr>().is_err());
    assert!("unix:".parse::<LinkAddr>().is_err());
    assert!("tcp:nonsense".parse::<LinkAddr>().is_err());
    assert_eq!(
        "unix:/tmp/x".parse::<LinkAddr>().unwrap().to_string(),
        "unix:/tmp/x"
    );
}

#[test]
fn endpoint_pairs_two_streams() {
    let d = TempDir::new("ep");
    let (m, s) = (d.sock("mirror"), d.sock("sec"));
    let mut primary = LinkEndpoint::new(LinkConfig {
        side: Side::Primary,
        mirror: cfg(&m, Role::Server, true),
        secondary: cfg(&s, Role::Server, true),
    })
    .unwrap();
    let mut secondary = LinkEndpoint::new(LinkConfig {
        side: Side::Secondary,
        mirror: cfg(&m, Role::Client, true),
        secondary: cfg(&s, Role::Client, true),
    })
    .unwrap();
    primary.send(12, b"client->pvm").unwrap();
    secondary.send(0, b"svm->client").unwrap();
    let (mut at_sec, mut at_pri) = (Vec::new(), Vec::new());
    until(|| {
        primary.flush();
        secondary.flush();
        secondary.poll_recv(|v, f| at_sec.push((v, f.to_vec())));
        primary.poll_recv(|v, f| at_pri.push((v, f.to_vec())));
        !at_sec.is_empty() && !at_pri.is_empty()
    });
    assert_eq!(at_sec, vec![(12, b"client->pvm".to_vec())]);
    assert_eq!(at_pri, vec![(0, b"svm->client".to_vec())]);
    let st = primary.stats();
    assert_eq!((st.mirror.frames_out, st.secondary.frames_in), (1, 1));
}

#[test]
fn asymmetric_framing_like_xen_notify() {
    let d = TempDir::new("asym");
    let a = d.sock("s");
    // Server parses with the vnet field, sends without; the client the reverse.
    let mut sc = cfg(&a, Role::Server, true);
    sc.out_framing = FrameConfig::with_vnet(false);
    let mut cc = cfg(&a, Role::Client, false);
    cc.out_framing = FrameConfig::with_vnet(true);
    let mut server = FramedSocket::new(sc).unwrap();
    let mut client = FramedSocket::new(cc).unwrap();
    client.send(0, b"COLO_USERSPACE_PROXY_INIT").unwrap();
    let (mut at_s, mut at_c) = (Vec::new(), Vec::new());
    until(|| {
        client.flush();
        server.poll_recv(|v, f| at_s.push((v, f.to_vec())));
        if !at_s.is_empty()
            && at_c.is_empty()
            && server.pending_out() == 0
            && server.stats().frames_out == 0
        {
            server.send(0, b"COLO_COMPARE_GET_XEN_INIT").unwrap();
        }
        server.flush();
        client.poll_recv(|v, f| at_c.push((v, f.to_vec())));
        !at_c.is_empty()
    });
    assert_eq!(at_s, vec![(0, b"COLO_USERSPACE_PROXY_INIT".to_vec())]);
    assert_eq!(at_c, vec![(0, b"COLO_COMPARE_GET_XEN_INIT".to_vec())]);
    assert_eq!(
        (client.stats().frames_out, server.stats().frames_out),
        (1, 1)
    );
}
