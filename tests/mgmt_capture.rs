//! Divergence capture: pcapng files read back with pcap-file's reader and with tshark (skipped
//! with a message when tshark is absent), comments present, rotation bounded; and capture driven
//! through management (`capture start` + divergences with packets).

mod mgmt_common;

use std::fs::File;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use colo_proxy::control::{Event, EventSide as Side};
use colo_proxy::mgmt::capture::{CaptureConfig, CaptureWriter, CapturedPacket, DivergenceCapture};
use colo_proxy::mgmt::Input;
use mgmt_common::*;
use pcap_file::pcapng::{Block, PcapNgReader};

/// A valid Ethernet/IPv4/UDP frame with `payload` (checksums zero: fine for dissection).
fn udp_frame(payload: &[u8], sport: u16) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&[2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00]);
    let total = 20 + 8 + payload.len();
    f.extend_from_slice(&[
        0x45,
        0,
        (total >> 8) as u8,
        total as u8,
        0,
        1,
        0x40,
        0,
        64,
        17,
        0,
        0,
    ]);
    f.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&5000u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

fn pkt(side: Side, t: u64, payload: &[u8]) -> CapturedPacket {
    let data = udp_frame(payload, 4000);
    CapturedPacket {
        side,
        time_ns: t,
        orig_len: data.len() as u32,
        data,
    }
}

fn divergence(n: u64) -> DivergenceCapture {
    DivergenceCapture {
        flow: "udp 10.0.0.1:4000 <-> 10.0.0.2:5000".into(),
        reason: "udp-payload".into(),
        seq_range: None,
        primary: Some(pkt(Side::Primary, 1_000 + n, b"primary says hello")),
        secondary: Some(pkt(Side::Secondary, 2_000 + n, b"secondary says bye!")),
        context: vec![
            pkt(Side::Primary, 10, b"ctx 1"),
            pkt(Side::Secondary, 20, b"ctx 2"),
            pkt(Side::Primary, 30, b"ctx 3"),
        ],
    }
}

/// (interface id, comment, data) of every packet in a file.
fn read_back(path: &Path) -> Vec<(u32, String, Vec<u8>)> {
    let mut r = PcapNgReader::new(File::open(path).unwrap()).unwrap();
    let mut out = Vec::new();
    while let Some(b) = r.next_block() {
        if let Block::EnhancedPacket(p) = b.unwrap() {
            let comment = p
                .options
                .iter()
                .find_map(|o| match o {
                    pcap_file::pcapng::blocks::enhanced_packet::EnhancedPacketOption::Comment(
                        c,
                    ) => Some(c.to_string()),
                    _ => None,
                })
                .unwrap_or_default();
            out.push((p.interface_id, comment, p.data.to_vec()));
        }
    }
    assert_eq!(r.interfaces().len(), 2);
    out
}

#[test]
fn divergence_packets_and_comments_read_back() {
    let dir = TempDir::new("cap");
    let mut w = CaptureWriter::new(CaptureConfig {
        dir: dir.path().join("pcap"),
        max_file_bytes: 1 << 20,
        max_files: 3,
        context_packets: 2,
    })
    .unwrap();
    w.write(&divergence(0), 5_000).unwrap();
    let mut d = divergence(1);
    d.reason = "payload".into();
    d.flow = "tcp 10.0.0.1:80 <-> 10.0.0.2:40000".into();
    d.seq_range = Some((1000, 1460));
    d.secondary = None;
    w.write(&d, 6_000).unwrap();
    let files = w.files().to_vec();
    assert_eq!(files.len(), 1);
    let pkts = read_back(&files[0]);
    // 2 context (capped) + primary + secondary, then 2 context + primary.
    assert_eq!(pkts.len(), 7);
    assert_eq!(pkts[0].0, 0);
    assert_eq!(pkts[1].0, 1, "secondary context on interface 1");
    assert!(
        pkts[0]
            .1
            .starts_with("context (primary) for colo divergence #1"),
        "{}",
        pkts[0].1
    );
    assert!(
        pkts[2].1.contains(
            "reason=udp-payload flow=udp 10.0.0.1:4000 <-> 10.0.0.2:5000 [primary packet]"
        ),
        "{}",
        pkts[2].1
    );
    assert_eq!(pkts[2].2, divergence(0).primary.unwrap().data);
    assert_eq!(
        (pkts[3].0, pkts[3].1.ends_with("[secondary packet]")),
        (1, true)
    );
    assert!(pkts[6].1.contains("#2: reason=payload flow=tcp 10.0.0.1:80 <-> 10.0.0.2:40000 seq=[1000,1460) [primary packet]"), "{}", pkts[6].1);
    let st = w.stats();
    assert_eq!((st.divergences, st.packets, st.files), (2, 7, 1));

    if !prereq::require(
        "capture tshark part",
        prereq::missing_program("tshark", "apt install tshark"),
    ) {
        return;
    }
    let out = Command::new("tshark")
        .arg("-r")
        .arg(&files[0])
        .args([
            "-T",
            "fields",
            "-E",
            "separator=|",
            "-e",
            "frame.interface_id",
            "-e",
            "frame.comment",
            "-e",
            "udp.srcport",
            "-e",
            "data.data",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 7, "{text}");
    assert!(
        lines[2].starts_with("0|colo divergence #1: reason=udp-payload"),
        "{}",
        lines[2]
    );
    assert!(
        lines[2].contains("|4000|"),
        "dissected as UDP: {}",
        lines[2]
    );
    assert!(
        lines[2].ends_with(&hex(b"primary says hello")),
        "{}",
        lines[2]
    );
    assert!(lines[3].starts_with("1|"), "{}", lines[3]);
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn rotation_keeps_at_most_n_files_under_the_size_bound() {
    let dir = TempDir::new("rot");
    let capdir = dir.path().join("pcap");
    let mut w = CaptureWriter::new(CaptureConfig {
        dir: capdir.clone(),
        max_file_bytes: 2000,
        max_files: 3,
        context_packets: 0,
    })
    .unwrap();
    for i in 0..40 {
        w.write(&divergence(i), 10_000).unwrap();
    }
    let st = w.stats();
    let on_disk: Vec<_> = std::fs::read_dir(&capdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(on_disk.len(), 3, "{on_disk:?}");
    assert_eq!(st.files_deleted, st.files - 3);
    let mut total = 0;
    for f in &on_disk {
        let len = std::fs::metadata(f).unwrap().len();
        // A file is closed at the first divergence that takes it past the bound.
        assert!(len < 2000 + 400, "{f:?} is {len} bytes");
        total += read_back(f).len();
    }
    assert!(total >= 2 && total % 2 == 0);
    // A new writer on the same directory counts the existing files against the bound.
    let mut w2 = CaptureWriter::new(CaptureConfig {
        dir: capdir.clone(),
        max_file_bytes: 2000,
        max_files: 3,
        context_packets: 0,
    })
    .unwrap();
    assert_eq!(w2.files().len(), 3);
    w2.write(&divergence(99), 1).unwrap();
    assert_eq!(std::fs::read_dir(&capdir).unwrap().count(), 3);
}

#[test]
fn management_captures_only_while_on() {
    let dir = TempDir::new("mcap");
    let plane = Arc::new(FakePlane::default());
    let capdir = dir.path().join("pcap");
    let m = mgmt_with(dir.path(), plane, |c| {
        c.capture = Some(CaptureConfig {
            dir: capdir.clone(),
            max_file_bytes: 1 << 20,
            max_files: 2,
            context_packets: 1,
        })
    });
    let tx = m.sender();
    let run = Running::start(m);
    let sock = dir.path().join("run/ctl.sock");
    let ask = |w: &str| {
        let words: Vec<String> = w.split_whitespace().map(String::from).collect();
        let req = colo_proxy::control::Request::from_words(&words, None).unwrap();
        colo_proxy::cli::ctl::request(
            &colo_proxy::cli::ctl::Target::Unix(sock.clone()),
            &req,
            Duration::from_secs(5),
        )
        .unwrap()
    };
    let ev = |i| Event::Divergence {
        flow: "udp 10.0.0.1:4000 <-> 10.0.0.2:5000".into(),
        reason: "udp-payload".into(),
        side: Side::Both,
        seq_range: None,
        time_ns: i,
    };
    tx.send(Input::Divergence(ev(1), Box::new(divergence(1))));
    assert!(wait_for(5, || ask("stats").result.unwrap()["mgmt"]
        ["divergences"]
        == 1));
    assert!(ask("capture start").ok);
    tx.send(Input::Divergence(ev(2), Box::new(divergence(2))));
    assert!(wait_for(5, || ask("stats").result.unwrap()["mgmt"]
        ["capture"]["divergences"]
        == 1));
    assert!(ask("capture stop").ok);
    tx.send(Input::Divergence(ev(3), Box::new(divergence(3))));
    assert!(wait_for(5, || ask("stats").result.unwrap()["mgmt"]
        ["divergences"]
        == 3));
    let m = run.join();
    let cap = m.stats().capture.unwrap();
    assert_eq!((cap.divergences, cap.packets), (1, 3));
    let files: Vec<_> = std::fs::read_dir(&capdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    assert_eq!(files.len(), 1);
    let pkts = read_back(&files[0]);
    assert_eq!(pkts.len(), 3);
    assert!(pkts[1].1.contains("colo divergence #1: reason=udp-payload"));
}

/// Symlinks planted at the names the writer is about to use (any of the next few seconds).
fn plant(capdir: &Path, target: &Path, seqs: std::ops::RangeInclusive<u64>) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for secs in now..now + 3 {
        for seq in seqs.clone() {
            let name = format!("colo-divergence-{secs:010}-{seq:06}.pcapng");
            std::os::unix::fs::symlink(target, capdir.join(name)).unwrap();
        }
    }
}

#[test]
fn a_symlink_at_the_file_name_is_never_followed() {
    let dir = TempDir::new("symlink");
    let capdir = dir.path().join("pcap");
    std::fs::create_dir_all(&capdir).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    plant(&capdir, &victim, 1..=2);
    let mut w = CaptureWriter::new(CaptureConfig {
        dir: capdir.clone(),
        max_file_bytes: 1 << 20,
        max_files: 100,
        context_packets: 0,
    })
    .unwrap();
    w.write(&divergence(0), 1).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    let st = w.stats();
    assert_eq!(st.names_taken, 2, "{st:?}");
    let cur = st.current.expect("a file is open");
    assert!(cur.to_string_lossy().ends_with("-000003.pcapng"), "{cur:?}");
    let meta = std::fs::symlink_metadata(&cur).unwrap();
    assert!(meta.file_type().is_file());
    assert_eq!(read_back(&cur).len(), 2);
}

#[test]
fn every_name_taken_is_a_clear_error_and_nothing_is_overwritten() {
    let dir = TempDir::new("taken");
    let capdir = dir.path().join("pcap");
    std::fs::create_dir_all(&capdir).unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    plant(&capdir, &victim, 1..=16);
    let mut w = CaptureWriter::new(CaptureConfig {
        dir: capdir.clone(),
        max_file_bytes: 1 << 20,
        max_files: 1000,
        context_packets: 0,
    })
    .unwrap();
    let e = w.write(&divergence(0), 1).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(e.to_string().contains("already exists"), "{e}");
    assert!(e.to_string().contains("-000016.pcapng"), "{e}");
    let st = w.stats();
    assert_eq!((st.errors, st.names_taken), (1, 16));
    assert!(st.last_error.unwrap().contains("refusing to overwrite"));
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    // The next attempt moves on to names nobody planted.
    w.write(&divergence(1), 2).unwrap();
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
}
