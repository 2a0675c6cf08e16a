//! Our socket output → QEMU `colo-compare` secondary_in (issue 6 test c), the Xen notify
//! protocol against QEMU's own implementation, and our client reconnecting to a restarted
//! QEMU (test d).

mod qemu_support;

use std::time::Duration;

use colo_proxy::control::xen::{XenIn, XenOut};
use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, Role, SocketConfig};
use qemu_support::*;

/// Frames released on outdev: (vnet_hdr_len, bytes).
pub type Released = Vec<(u32, Vec<u8>)>;

pub struct Compare {
    pub d: TempDir,
    pub q: Option<Qemu>,
    pub pri: FramedSocket,
    pub sec: FramedSocket,
    pub out: FramedSocket,
    pub notify: Option<FramedSocket>,
    pub vnet: bool,
    args: Vec<String>,
}

fn compare_args(d: &TempDir, vnet: bool, notify: bool) -> Vec<String> {
    let mut args = Vec::new();
    for id in ["primary_in", "secondary_in", "outdev"] {
        args.extend(chardev_args(d, id));
    }
    if notify {
        args.extend(chardev_args(d, "notify"));
    }
    args.extend(["-object".into(), "iothread,id=io0".into(), "-object".into()]);
    let mut obj = format!(
        "colo-compare,id=comp0,primary_in=primary_in,secondary_in=secondary_in,outdev=outdev,\
         iothread=io0,compare_timeout=60000,expired_scan_cycle=60000,vnet_hdr_support={}",
        if vnet { "on" } else { "off" }
    );
    if notify {
        obj.push_str(",notify_dev=notify");
    }
    args.push(obj);
    args
}

/// Xen side of the notify channel: we receive QEMU's frames without the vnet field and send
/// ours with it when vnet_hdr_support is on (reference §3.6).
fn xen_socket(d: &TempDir, vnet: bool) -> FramedSocket {
    let mut c = SocketConfig::parse(
        &d.addr("notify.sock"),
        Role::Client,
        FrameConfig::with_vnet(false),
    )
    .unwrap();
    c.out_framing = FrameConfig::with_vnet(vnet);
    c.backoff_initial = Duration::from_millis(10);
    FramedSocket::new(c).unwrap()
}

impl Compare {
    pub fn start(test: &str, vnet: bool, notify: bool) -> Option<Compare> {
        if !qemu_available(test) {
            return None;
        }
        let d = TempDir::new(test);
        let args = compare_args(&d, vnet, notify);
        let q = Self::spawn(&d, &args, notify);
        let mut c = Compare {
            pri: client(&d, "primary_in", vnet),
            sec: client(&d, "secondary_in", vnet),
            out: client(&d, "outdev", vnet),
            notify: notify.then(|| xen_socket(&d, vnet)),
            q: Some(q),
            d,
            vnet,
            args,
        };
        c.sync();
        Some(c)
    }

    fn spawn(d: &TempDir, args: &[String], notify: bool) -> Qemu {
        let mut wait = vec![
            d.path("primary_in.sock"),
            d.path("secondary_in.sock"),
            d.path("outdev.sock"),
        ];
        if notify {
            wait.push(d.path("notify.sock"));
        }
        Qemu::spawn(d, "cmp", args, &wait)
    }

    /// Restart QEMU with the same sockets (a peer restart).
    pub fn restart(&mut self) {
        if let Some(q) = self.q.take() {
            q.kill();
        }
        self.q = Some(Self::spawn(&self.d, &self.args, self.notify.is_some()));
    }

    pub fn log(&self) -> String {
        self.q.as_ref().map(Qemu::log_text).unwrap_or_default()
    }

    /// Wrap a frame as this link carries it (12-byte zero vnet header when on).
    pub fn wrap(&self, f: &[u8]) -> (u32, Vec<u8>) {
        if self.vnet {
            let mut v = vec![0u8; 12];
            v.extend_from_slice(f);
            (12, v)
        } else {
            (0, f.to_vec())
        }
    }

    pub fn send_pri(&mut self, f: &[u8]) {
        let (v, b) = self.wrap(f);
        self.pri.send(v, &b).unwrap();
    }

    pub fn send_sec(&mut self, f: &[u8]) {
        let (v, b) = self.wrap(f);
        self.sec.send(v, &b).unwrap();
    }

    /// Poll all sockets; collect released frames and notify messages.
    pub fn pump(&mut self, out: &mut Vec<(u32, Vec<u8>)>, notes: &mut Vec<Vec<u8>>) {
        self.pri.flush();
        self.sec.flush();
        self.pri.poll_recv(|_, _| {});
        self.sec.poll_recv(|_, _| {});
        self.out.flush();
        let probe = arp_frame(0xEE);
        self.out.poll_recv(|v, f| {
            if !f.ends_with(&probe) {
                out.push((v, f.to_vec()))
            }
        });
        if let Some(n) = self.notify.as_mut() {
            n.flush();
            n.poll_recv(|_, f| notes.push(f.to_vec()));
        }
    }

    /// Send ARP probes on primary_in until one is passed through to outdev: QEMU has then
    /// accepted all our connections. Drains stray probes afterwards.
    pub fn sync(&mut self) {
        let mut seen = false;
        let mut tick = 0u32;
        let probe = arp_frame(0xEE);
        until(10, "an ARP probe through colo-compare", || {
            if tick.is_multiple_of(25) {
                let (v, b) = self.wrap(&probe);
                self.pri.send(v, &b).unwrap();
            }
            tick += 1;
            self.pri.flush();
            self.sec.flush();
            self.pri.poll_recv(|_, _| {});
            self.sec.poll_recv(|_, _| {});
            if let Some(n) = self.notify.as_mut() {
                n.flush();
                n.poll_recv(|_, _| {});
            }
            self.out.poll_recv(|_, f| seen |= f.ends_with(&probe));
            seen
        });
        for_ms(100, || {
            self.out.poll_recv(|_, _| {});
        });
    }

    /// Collect for `ms`, returning released frames and notify messages.
    pub fn collect(&mut self, ms: u64) -> (Released, Vec<Vec<u8>>) {
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        for_ms(ms, || self.pump(&mut out, &mut notes));
        (out, notes)
    }

    /// Collect until `n` frames were released (10 s bound).
    pub fn collect_n(&mut self, n: usize) -> Vec<(u32, Vec<u8>)> {
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        until(10, "released frames", || {
            self.pump(&mut out, &mut notes);
            out.len() >= n
        });
        out
    }
}

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
        c.notify.as_mut().unwrap().send(0, &buf[hl..n]).unwrap();
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
        c.notify.as_mut().unwrap().send(0, &buf[hl..n]).unwrap();
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
