//! Drop-in runtime without QEMU: outdev backpressure keeps every packet in order; Xen
//! `DO_CHECKPOINT` coalescing; KVM mode counts unsent requests; bad vnet lengths.

use std::time::{Duration, Instant};

use colo_proxy::compare::CompareConfig;
use colo_proxy::control::xen::{CHECKPOINT_DONE, DO_CHECKPOINT};
use colo_proxy::dropin::{DropIn, DropInConfig};
use colo_proxy::link::framing::FrameConfig;
use colo_proxy::link::socket::{FramedSocket, Role, SocketConfig};

struct Rig {
    dir: std::path::PathBuf,
    d: DropIn,
    t0: Instant,
    pri: FramedSocket,
    sec: FramedSocket,
    out: FramedSocket,
    notify: Option<FramedSocket>,
}

impl Drop for Rig {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rig(tag: &str, vnet: bool, notify: bool, out_buf: usize) -> Rig {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir =
        std::env::temp_dir().join(format!("colo-dropin-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let fc = FrameConfig::with_vnet(vnet);
    let addr = |id: &str| format!("unix:{}", dir.join(id).display());
    let server = |id: &str| SocketConfig::parse(&addr(id), Role::Server, fc).unwrap();
    let mut outdev = server("out");
    outdev.out_buf = out_buf;
    let cfg = DropInConfig {
        primary_in: server("pri"),
        secondary_in: server("sec"),
        outdev,
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
        accept_unsolicited: false,
    };
    let d = DropIn::new(cfg).unwrap();
    let client = |id: &str, f: FrameConfig| {
        let mut c = SocketConfig::parse(&addr(id), Role::Client, f).unwrap();
        c.backoff_initial = Duration::from_millis(5);
        FramedSocket::new(c).unwrap()
    };
    let mut r = Rig {
        pri: client("pri", fc),
        sec: client("sec", fc),
        out: client("out", fc),
        notify: notify.then(|| {
            let mut c =
                SocketConfig::parse(&addr("notify"), Role::Client, FrameConfig::with_vnet(false))
                    .unwrap();
            c.out_framing = fc;
            FramedSocket::new(c).unwrap()
        }),
        d,
        t0: Instant::now(),
        dir,
    };
    until(|| {
        r.step(false, &mut Vec::new(), &mut Vec::new());
        r.d.connected()
    });
    r
}

#[track_caller]
fn until(mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out");
        std::thread::sleep(Duration::from_micros(200));
    }
}

impl Rig {
    fn step(&mut self, read_out: bool, out: &mut Vec<(u32, Vec<u8>)>, notes: &mut Vec<Vec<u8>>) {
        self.pri.flush();
        self.sec.flush();
        self.out.flush();
        if let Some(n) = self.notify.as_mut() {
            n.flush();
            n.poll_recv(|_, f| notes.push(f.to_vec()));
        }
        self.d.poll(self.t0.elapsed().as_nanos() as u64);
        if read_out {
            self.out.poll_recv(|v, f| out.push((v, f.to_vec())));
        }
    }
}

fn tcp(port: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let b = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        .tcp(port, 80, seq, 65535)
        .ack(1);
    let mut v = Vec::new();
    b.write(&mut v, payload).unwrap();
    v
}

#[test]
fn outdev_backpressure_holds_in_order_and_loses_nothing() {
    let mut r = rig("bp", true, false, 0);
    let n = 3000u32;
    let mut frames = Vec::new();
    for i in 0..n {
        let mut f = vec![0u8; 12]; // vnet header, 12 bytes
        f[0] = i as u8;
        f.extend(tcp(
            1000 + (i % 4) as u16,
            1 + (i / 4) * 1400,
            &[(i % 251) as u8; 1400],
        ));
        frames.push(f);
    }
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    let mut sent = 0usize;
    let mut iter = 0u32;
    let mut held_seen = 0u64;
    // outdev is not read for the first 300 rounds: the kernel buffer and ours fill up, the
    // drop-in holds released packets and stops reading its inputs.
    until(|| {
        while sent < frames.len() && r.pri.send(12, &frames[sent]).is_ok() {
            r.sec.send(12, &frames[sent]).unwrap();
            sent += 1;
        }
        iter += 1;
        if iter == 300 {
            held_seen = r.d.stats().held;
        }
        r.step(iter > 300, &mut out, &mut notes);
        out.len() == frames.len()
    });
    assert!(
        held_seen > 0,
        "test did not create backpressure: {:?}",
        r.d.stats()
    );
    // Per flow in order, every frame intact with its vnet header and field.
    for flow in 0..4u16 {
        let got: Vec<&(u32, Vec<u8>)> = out
            .iter()
            .filter(|(_, f)| f[12 + 34..12 + 36] == (1000 + flow).to_be_bytes())
            .collect();
        let want: Vec<(u32, Vec<u8>)> = frames
            .iter()
            .skip(flow as usize)
            .step_by(4)
            .map(|f| (12, f.clone()))
            .collect();
        assert_eq!(got.len(), want.len());
        assert!(
            got.iter().zip(&want).all(|(a, b)| *a == b),
            "flow {flow} out of order or corrupted"
        );
    }
    let c = r.d.compare_counters();
    assert_eq!(c.primary_in, n as u64);
    assert_eq!(c.rel_matched, n as u64);
    assert_eq!(c.primary_in, c.primary_out() + c.queued_primary);
    assert!(r.d.stats().held_max > 0);
}

#[test]
fn do_checkpoint_is_coalesced_until_checkpoint_done() {
    let mut r = rig("xen", true, true, 1 << 20);
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    // Two diverging connections before Xen answers: one request.
    for port in [1u16, 2] {
        r.pri.send(0, &tcp(port, 1, b"primary!")).unwrap();
        r.sec.send(0, &tcp(port, 1, b"second!!")).unwrap();
    }
    until(|| {
        r.step(true, &mut out, &mut notes);
        r.d.stats().divergences >= 2
    });
    for _ in 0..50 {
        r.step(true, &mut out, &mut notes);
    }
    assert_eq!(notes, vec![DO_CHECKPOINT.to_vec()]);
    assert!(r.d.stats().requests_coalesced >= 1);
    assert!(out.is_empty());
    // Checkpoint done (with the vnet field, as Xen must send it): both primaries flushed.
    r.notify.as_mut().unwrap().send(0, CHECKPOINT_DONE).unwrap();
    until(|| {
        r.step(true, &mut out, &mut notes);
        out.len() == 2
    });
    assert_eq!(r.d.stats().checkpoints_done, 1);
    // A new divergence after the checkpoint asks again.
    r.pri.send(0, &tcp(3, 1, b"primary!")).unwrap();
    r.sec.send(0, &tcp(3, 1, b"second!!")).unwrap();
    until(|| {
        r.step(true, &mut out, &mut notes);
        notes.len() == 2
    });
    assert_eq!(r.d.stats().do_checkpoint_sent, 2);
}

#[test]
fn kvm_mode_counts_unsent_requests_and_bad_vnet_is_handled() {
    let mut r = rig("kvm", true, false, 1 << 20);
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    r.pri.send(0, &tcp(1, 1, b"primary!")).unwrap();
    r.sec.send(0, &tcp(1, 1, b"second!!")).unwrap();
    // vnet_hdr_len 20 on a 10-byte frame: not comparable.
    r.pri.send(20, &[7u8; 10]).unwrap();
    r.sec.send(20, &[7u8; 10]).unwrap();
    until(|| {
        r.step(true, &mut out, &mut notes);
        r.d.stats().requests_unsent >= 1 && r.d.stats().secondary_bad_vnet == 1 && !out.is_empty()
    });
    // The bad primary is forwarded as received; the diverged one is held.
    assert_eq!(out, vec![(20, vec![7u8; 10])]);
    assert_eq!(r.d.stats().primary_bad_vnet, 1);
    assert_eq!(r.d.stats().do_checkpoint_sent, 0);
}

/// The real binary in drop-in mode (`run --config` with role `compare`): SIGTERM/SIGINT stop it
/// gracefully — every queued (unverified) primary is dropped, the final report is printed, exit 0.
mod signals {
    use super::*;
    use std::process::{Child, Command, Stdio};

    struct Proc(Option<Child>, std::path::PathBuf);

    impl Drop for Proc {
        fn drop(&mut self) {
            if let Some(c) = self.0.as_mut() {
                let _ = c.kill();
                let _ = c.wait();
            }
            let _ = std::fs::remove_dir_all(&self.1);
        }
    }

    fn start(tag: &str) -> Proc {
        let dir =
            std::env::temp_dir().join(format!("colo-dropin-sig-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let sock = |id: &str| format!("unix:{}", dir.join(id).display());
        let toml = format!(
            r#"role = "compare"
[eal]
args = ["-l", "0"]
[lcores]
main = 0
compare = 0
[compare_sockets]
primary_in = {{ addr = "{}", mode = "server" }}
secondary_in = {{ addr = "{}", mode = "server" }}
outdev = {{ addr = "{}", mode = "server" }}
vnet_hdr_support = false
[compare]
timeout_ms = 600000
scan_period_ms = 600000
[mgmt]
control_socket = "{}"
"#,
            sock("pri"),
            sock("sec"),
            sock("out"),
            dir.join("ctl").display()
        );
        let cfg = dir.join("compare.toml");
        std::fs::write(&cfg, toml).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
            .arg("run")
            .arg("--config")
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let p = Proc(Some(child), dir.clone());
        until(|| ["pri", "sec", "out"].iter().all(|s| dir.join(s).exists()));
        p
    }

    fn client(dir: &std::path::Path, id: &str) -> FramedSocket {
        let mut c = SocketConfig::parse(
            &format!("unix:{}", dir.join(id).display()),
            Role::Client,
            FrameConfig::with_vnet(false),
        )
        .unwrap();
        c.backoff_initial = Duration::from_millis(5);
        FramedSocket::new(c).unwrap()
    }

    fn stop(p: &mut Proc, sig: i32) -> std::process::Output {
        let child = p.0.take().unwrap();
        // SAFETY: kill(2) on our own child's pid; no memory is involved.
        let r = unsafe { libc::kill(child.id() as i32, sig) };
        assert_eq!(r, 0);
        let pid = child.id();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        match rx.recv_timeout(Duration::from_secs(15)) {
            Ok(o) => o.unwrap(),
            Err(_) => {
                // SAFETY: as above.
                unsafe { libc::kill(pid as i32, libc::SIGKILL) };
                panic!("drop-in did not exit within 15 s of signal {sig}");
            }
        }
    }

    #[test]
    fn sigterm_drops_queued_primaries_and_reports() {
        let mut p = start("term");
        let dir = p.1.clone();
        let (mut pri, mut sec, mut out) = (
            client(&dir, "pri"),
            client(&dir, "sec"),
            client(&dir, "out"),
        );
        until(|| {
            pri.flush();
            sec.flush();
            out.flush();
            pri.is_connected() && sec.is_connected() && out.is_connected()
        });
        // Queued at the signal: two primaries with no secondary yet (flow 1) and one that
        // diverged (flow 2; KVM mode, so the request is only counted and the primary waits).
        let queued = [
            tcp(1, 1, b"waiting-1"),
            tcp(1, 10, b"waiting-2"),
            tcp(2, 1, b"primary!"),
        ];
        for f in &queued {
            pri.send(0, f).unwrap();
        }
        sec.send(0, &tcp(2, 1, b"second!!")).unwrap();
        // A matching pair sent after them: once it is released, everything above was read.
        let matched = tcp(3, 1, b"same");
        pri.send(0, &matched).unwrap();
        sec.send(0, &matched).unwrap();
        let mut got: Vec<Vec<u8>> = Vec::new();
        until(|| {
            pri.flush();
            sec.flush();
            out.poll_recv(|_, f| got.push(f.to_vec()));
            !got.is_empty()
        });
        assert_eq!(
            got,
            vec![matched.clone()],
            "only the matched primary is released before the signal"
        );

        let o = stop(&mut p, libc::SIGTERM);
        let stdout = String::from_utf8_lossy(&o.stdout);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(
            o.status.success(),
            "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}",
            o.status
        );
        // Output commit: the queued primaries were never verified, so they are dropped, not
        // written (the PVM's TCP retransmits them). Nothing more arrives on outdev.
        for _ in 0..50 {
            out.poll_recv(|_, f| got.push(f.to_vec()));
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_eq!(
            got,
            vec![matched.clone()],
            "no unverified primary on outdev after SIGTERM"
        );

        assert!(
            stdout.contains("final report"),
            "no final report:\n{stdout}"
        );
        let line = |k: &str| {
            stdout
                .lines()
                .find(|l| l.starts_with(k))
                .unwrap_or_else(|| panic!("no {k} line:\n{stdout}"))
                .to_string()
        };
        let pl = line("primary ");
        assert!(pl.contains("in 4 released 1 (matched 1 "), "{pl}");
        assert!(pl.contains("flushed 0) dropped 3 ("), "{pl}");
        assert!(pl.contains("at exit 3)"), "{pl}");
        assert!(pl.contains("queued 0"), "{pl}");
        assert!(
            line("released ").contains("1 to outdev,")
                && line("released ").contains("unsent at exit 0"),
            "{stdout}"
        );
        assert!(line("checkpoint ").contains("divergences 1 "), "{stdout}");
        assert!(line("outdev ").contains("frames in 0 out 1,"), "{stdout}");
    }

    #[test]
    fn sigint_stops_an_idle_drop_in() {
        let mut p = start("int");
        let o = stop(&mut p, libc::SIGINT);
        let stdout = String::from_utf8_lossy(&o.stdout);
        assert!(
            o.status.success(),
            "exit {:?}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(stdout.contains("final report"), "{stdout}");
        assert!(stdout.contains("primary       in 0 released 0"), "{stdout}");
    }
}

#[test]
fn unsolicited_checkpoint_done_is_ignored_and_counted() {
    let mut r = rig("unsol", true, true, 1 << 20);
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    // A primary waiting for its secondary.
    r.pri.send(0, &tcp(1, 1, b"primary!")).unwrap();
    until(|| {
        r.step(true, &mut out, &mut notes);
        r.d.compare_counters().queued_primary == 1
    });
    // No DO_CHECKPOINT was sent: a COLO_CHECKPOINT now would release it unverified.
    r.notify.as_mut().unwrap().send(0, CHECKPOINT_DONE).unwrap();
    until(|| {
        r.step(true, &mut out, &mut notes);
        r.d.stats().unsolicited_ignored == 1
    });
    for _ in 0..20 {
        r.step(true, &mut out, &mut notes);
    }
    assert!(out.is_empty(), "released on an unsolicited checkpoint");
    assert_eq!(r.d.stats().checkpoints_done, 0);
    // A divergence asks; the answer flushes.
    r.sec.send(0, &tcp(1, 1, b"second!!")).unwrap();
    until(|| {
        r.step(true, &mut out, &mut notes);
        notes.len() == 1
    });
    r.notify.as_mut().unwrap().send(0, CHECKPOINT_DONE).unwrap();
    until(|| {
        r.step(true, &mut out, &mut notes);
        out.len() == 1
    });
    assert_eq!(r.d.stats().checkpoints_done, 1);
}
