//! A colo-compare test rig: QEMU's `colo-compare` or our drop-in (`dropin`) behind the
//! same four UNIX sockets, driven by the same client sockets.

use std::time::{Duration, Instant};

use colo_proxy::compare::CompareConfig;
use colo_proxy::dropin::{DropIn, DropInConfig};
use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, Role, SocketConfig};

use super::*;

/// Frames released on outdev: (vnet_hdr_len, bytes).
pub type Released = Vec<(u32, Vec<u8>)>;

/// Which colo-compare is under test.
pub enum Backend {
    /// QEMU's object (restartable).
    Qemu(Option<Qemu>, Vec<String>),
    /// Our drop-in, polled from the test thread.
    Ours(Box<DropIn>, Instant),
}

pub struct Compare {
    pub d: TempDir,
    pub backend: Backend,
    pub pri: FramedSocket,
    pub sec: FramedSocket,
    pub out: FramedSocket,
    pub notify: Option<FramedSocket>,
    pub vnet: bool,
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

/// Our drop-in with QEMU-equivalent settings, all four sockets servers in `d` (like the QEMU
/// rig), compare timeouts as in `compare_args`.
fn ours(d: &TempDir, vnet: bool, notify: bool) -> DropIn {
    let fc = FrameConfig::with_vnet(vnet);
    let server =
        |id: &str| SocketConfig::parse(&d.addr(&format!("{id}.sock")), Role::Server, fc).unwrap();
    let cfg = DropInConfig {
        primary_in: server("primary_in"),
        secondary_in: server("secondary_in"),
        outdev: server("outdev"),
        notify_dev: notify.then(|| {
            let mut n = server("notify");
            n.out_framing = FrameConfig::with_vnet(false);
            n
        }),
        compare: CompareConfig {
            timeout_ns: 60_000_000_000,
            scan_period_ns: 60_000_000_000,
            ..CompareConfig::default()
        },
        // QEMU applies every COLO_CHECKPOINT; the diff compares like with like.
        accept_unsolicited: true,
    };
    DropIn::new(cfg).unwrap()
}

impl Compare {
    /// QEMU's colo-compare (None, with a printed reason, when QEMU cannot run).
    pub fn start(test: &str, vnet: bool, notify: bool) -> Option<Compare> {
        if !qemu_available(test) {
            return None;
        }
        let d = TempDir::new(test);
        let args = compare_args(&d, vnet, notify);
        let q = Self::spawn(&d, &args, notify);
        Some(Self::with_backend(
            d,
            Backend::Qemu(Some(q), args),
            vnet,
            notify,
        ))
    }

    /// Our drop-in.
    pub fn start_ours(test: &str, vnet: bool, notify: bool) -> Compare {
        let d = TempDir::new(test);
        let b = Backend::Ours(Box::new(ours(&d, vnet, notify)), Instant::now());
        Self::with_backend(d, b, vnet, notify)
    }

    fn with_backend(d: TempDir, backend: Backend, vnet: bool, notify: bool) -> Compare {
        let mut c = Compare {
            pri: client(&d, "primary_in", vnet),
            sec: client(&d, "secondary_in", vnet),
            out: client(&d, "outdev", vnet),
            notify: notify.then(|| xen_socket(&d, vnet)),
            backend,
            d,
            vnet,
        };
        c.sync();
        c
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

    pub fn is_qemu(&self) -> bool {
        matches!(self.backend, Backend::Qemu(..))
    }

    pub fn dropin(&self) -> Option<&DropIn> {
        match &self.backend {
            Backend::Ours(d, _) => Some(d),
            Backend::Qemu(..) => None,
        }
    }

    /// Restart QEMU with the same sockets (a peer restart).
    pub fn restart(&mut self) {
        let notify = self.notify.is_some();
        if let Backend::Qemu(q, args) = &mut self.backend {
            if let Some(old) = q.take() {
                old.kill();
            }
            *q = Some(Self::spawn(&self.d, args, notify));
        }
    }

    pub fn log(&self) -> String {
        match &self.backend {
            Backend::Qemu(q, _) => q.as_ref().map(Qemu::log_text).unwrap_or_default(),
            Backend::Ours(d, _) => format!("{:?}\n{:?}", d.stats(), d.compare_counters()),
        }
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

    /// Send a Xen message to the compare (framed by the socket's out_framing).
    pub fn send_xen(&mut self, text: &[u8]) {
        self.notify
            .as_mut()
            .expect("notify channel")
            .send(0, text)
            .unwrap();
    }

    fn poll_backend(&mut self) {
        if let Backend::Ours(d, t0) = &mut self.backend {
            d.poll(t0.elapsed().as_nanos() as u64);
        }
    }

    /// Poll all sockets; collect released frames and notify messages.
    pub fn pump(&mut self, out: &mut Released, notes: &mut Vec<Vec<u8>>) {
        self.pri.flush();
        self.sec.flush();
        if let Some(n) = self.notify.as_mut() {
            n.flush();
        }
        self.poll_backend();
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
            n.poll_recv(|_, f| notes.push(f.to_vec()));
        }
    }

    /// Make sure the compare has accepted all our connections. QEMU: send ARP probes on
    /// primary_in until one is passed through to outdev. Ours: poll until it reports every
    /// socket connected.
    pub fn sync(&mut self) {
        if !self.is_qemu() {
            until(10, "drop-in connections", || {
                let (mut o, mut n) = (Vec::new(), Vec::new());
                self.pump(&mut o, &mut n);
                self.dropin().is_some_and(DropIn::connected)
                    && self.pri.is_connected()
                    && self.sec.is_connected()
                    && self.out.is_connected()
            });
            return;
        }
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
    pub fn collect_n(&mut self, n: usize) -> Released {
        let (mut out, mut notes) = (Vec::new(), Vec::new());
        until(10, "released frames", || {
            self.pump(&mut out, &mut notes);
            out.len() >= n
        });
        out
    }
}
