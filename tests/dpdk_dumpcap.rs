//! `dpdk-dumpcap` captures on colo-proxy's ports: a child process (this test binary re-executed)
//! is the DPDK primary with hugepages and a unique `--file-prefix`, calls
//! `colo_proxy::dpdk::telemetry::pdump_init`, and forwards traffic from `net_null0` to
//! `net_null1`, stamping every frame with a marker and a sequence number. The parent runs
//! `dpdk-dumpcap --file-prefix=<same> -i net_null1 -c N -w <tmp>.pcapng` (a secondary process)
//! and reads the file back: N packets (up to one burst more), all frames the child sent, in
//! order.
//!
//! dumpcap is a secondary process, so it needs shared memory: hugepages, and neither
//! `--in-memory` nor `--no-shconf`. Skipped with a message when `dpdk-dumpcap` is missing or
//! too few hugepages are free, a failure under CI (tests/prereq; CI reserves them with
//! .ci/setup → dpdk-config/setup-hugepages.sh).

mod prereq;

use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use colo_proxy::dpdk::{self, Eal, MbufBurst, Mempool, Port, PortConfig};
use pcap_file::pcap::PcapReader;

const CHILD_ENV: &str = "COLO_DUMPCAP_CHILD";
/// Extra EAL memory arguments for the child.
const MEM_ENV: &str = "COLO_DUMPCAP_MEM";
/// Packets dumpcap is asked for.
const N: usize = 64;
/// 2 MiB pages needed: the primary's pool and dumpcap's capture pool and ring, with margin.
const PAGES_NEEDED: u64 = 128;
/// The stamped frames: Ethernet (locally administered MACs, EtherType 0x88B5), marker, u64 seq.
const MARKER: &[u8; 8] = b"COLOCAP!";
const FRAME_LEN: usize = 64;

fn frame(seq: u64) -> [u8; FRAME_LEN] {
    let mut f = [0u8; FRAME_LEN];
    f[..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    f[12..14].copy_from_slice(&0x88b5u16.to_be_bytes());
    f[14..22].copy_from_slice(MARKER);
    f[22..30].copy_from_slice(&seq.to_be_bytes());
    f
}

/// Child body: DPDK primary forwarding net_null0 → net_null1 until stdin closes (at most 60 s).
#[test]
fn dumpcap_primary_child() {
    let Ok(prefix) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut args = vec![
        "-l",
        "0",
        "--no-pci",
        "--file-prefix",
        &prefix,
        "--vdev",
        "net_null0",
        "--vdev",
        "net_null1",
        "--log-level",
        "*:warning",
    ];
    // The memory mode under test (default: hugepages with shared config).
    let mem = std::env::var(MEM_ENV).unwrap_or_default();
    args.extend(mem.split_whitespace());
    let _eal = Eal::init(&args).expect("EAL init (hugepages, shared config)");
    // Before or after the ports: pdump only registers its multi-process handler here; dumpcap's
    // request later installs rx/tx callbacks on the queues of the (configured) port it names.
    match dpdk::telemetry::pdump_init() {
        Ok(()) => println!("PDUMP ok"),
        Err(e) => println!("PDUMP error {e}"),
    }
    let pool = Mempool::new("dumpcap_pool", 4095).expect("mempool");
    let open = |name: &str| {
        let id = Port::id_by_name(name).expect(name);
        let mut p = Port::open(id, &PortConfig::default(), &pool).expect("open");
        p.start().expect("start");
        p
    };
    let mut null0 = open("net_null0");
    let mut null1 = open("net_null1");
    let mut rx = null0.rx_queue(0).expect("rxq");
    let mut tx = null1.tx_queue(0).expect("txq");
    println!("PORT {}", null1.id());
    println!("READY");

    // Stop when the parent closes stdin.
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        let _ = stop_tx.send(());
    });
    let end = Instant::now() + Duration::from_secs(60);
    let mut burst = MbufBurst::<32>::new();
    let (mut seq, mut sent, mut unsent) = (0u64, 0u64, 0u64);
    while Instant::now() < end && stop_rx.try_recv().is_err() {
        rx.rx_burst(&mut burst);
        for m in burst.as_mut_slice() {
            m.set_data(&frame(seq)).expect("frame fits");
            seq += 1;
        }
        sent += tx.tx_burst(&mut burst) as u64;
        unsent += burst.len() as u64;
        burst.clear();
        // ~32 k packets/s: plenty for the capture, gentle on a shared machine.
        std::thread::sleep(Duration::from_millis(1));
    }
    println!("SENT {sent} UNSENT {unsent}");
}

/// Kills the child and removes its EAL runtime directory and hugepage files on drop.
struct Guard(Child, String);

impl Drop for Guard {
    fn drop(&mut self) {
        drop(self.0.stdin.take());
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end && matches!(self.0.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
        let runtime = std::env::var("RUNTIME_DIRECTORY").unwrap_or_else(|_| {
            if is_root() {
                "/var/run".into()
            } else {
                std::env::var("XDG_RUNTIME_DIR").unwrap_or_else(|_| "/tmp".into())
            }
        });
        let _ = std::fs::remove_dir_all(Path::new(&runtime).join("dpdk").join(&self.1));
        // Hugepage files outlive the process unless removed (they keep the pages reserved).
        for dir in hugetlbfs_mounts() {
            if let Ok(rd) = std::fs::read_dir(&dir) {
                for e in rd.flatten() {
                    if e.file_name()
                        .to_string_lossy()
                        .starts_with(&format!("{}map_", self.1))
                    {
                        let _ = std::fs::remove_file(e.path());
                    }
                }
            }
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn hugetlbfs_mounts() -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/mounts")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&"hugetlbfs")).then(|| PathBuf::from(f[1]))
        })
        .collect()
}

/// Run `cmd` with a time limit; `None` when it had to be killed.
fn run_bounded(cmd: &mut Command, limit: Duration) -> Option<std::process::Output> {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.ok(),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            None
        }
    }
}

#[test]
fn dumpcap_captures_a_colo_proxy_port() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let test = "dumpcap_captures_a_colo_proxy_port";
    let have_dumpcap = Command::new("dpdk-dumpcap")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    let missing =
        (!have_dumpcap).then(|| "dpdk-dumpcap not installed (apt install dpdk-dev)".into());
    if !prereq::require(test, missing) {
        return;
    }
    // dumpcap is a secondary process and needs shared hugepage memory.
    if !prereq::require(test, prereq::missing_hugepages(PAGES_NEEDED)) {
        return;
    }
    let prefix = format!("colo-dumpcap-{}", std::process::id());
    let (mut guard, rx, pdump, port) = start_child(&prefix, "");
    assert_eq!(pdump, "PDUMP ok");

    // pcapng (dumpcap's default), read with tshark; then classic pcap (`-P`), read with the
    // pcap-file crate (which rejects DPDK 22.11's pcapng: its packet blocks end without
    // opt_endofopt).
    let tmp = std::env::temp_dir();
    let ng = tmp.join(format!("{prefix}.pcapng"));
    let classic = tmp.join(format!("{prefix}.pcap"));
    let (ng_text, ng_dropped) = dumpcap(&prefix, &ng, &[]);
    let (cl_text, cl_dropped) = dumpcap(&prefix, &classic, &["-P"]);

    // Stop the child: it reports what it sent.
    drop(guard.0.stdin.take());
    let mut sent = None;
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => {
                if let Some(i) = l.find("SENT ") {
                    sent = Some(l[i..].to_string());
                    break;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(_) => {}
        }
    }
    let sent = sent.expect("child printed no SENT line");
    let n_sent: u64 = sent
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.parse().ok())
        .unwrap();

    // Classic pcap: whole frames.
    let mut r = PcapReader::new(File::open(&classic).expect("pcap written")).expect("pcap");
    let mut frames = Vec::new();
    while let Some(p) = r.next_packet() {
        frames.push(p.expect("valid pcap packet").data.to_vec());
    }
    let _ = std::fs::remove_file(&classic);
    check_frames(&frames, cl_dropped, n_sent, &cl_text);

    // pcapng through tshark: interface name dpdk:<port id> and the bytes after Ethernet.
    let fields = Command::new("tshark")
        .args([
            "-r",
            ng.to_str().unwrap(),
            "-T",
            "fields",
            "-E",
            "separator=/t",
        ])
        .args([
            "-e",
            "frame.interface_name",
            "-e",
            "frame.len",
            "-e",
            "eth.src",
        ])
        .args(["-e", "eth.dst", "-e", "eth.type", "-e", "data.data"])
        .stderr(Stdio::null())
        .output();
    let _ = std::fs::remove_file(&ng);
    let fields = match fields {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => {
            // The pcap format was checked above; the pcapng read-back needs tshark.
            prereq::require(
                "pcapng read-back",
                Some(format!("tshark: {e} (apt install tshark)")),
            );
            return;
        }
    };
    let mut frames = Vec::new();
    for line in fields.lines() {
        let f: Vec<&str> = line.split('\t').collect();
        assert_eq!(f.len(), 6, "tshark line {line:?}");
        assert_eq!(f[0], format!("dpdk:{port}"), "interface of {line:?}");
        assert_eq!(f[1], FRAME_LEN.to_string());
        assert_eq!(
            (f[2], f[3], f[4]),
            ("02:00:00:00:00:01", "02:00:00:00:00:02", "0x88b5")
        );
        let mut fr = frame(0)[..14].to_vec();
        fr.extend(
            (0..f[5].len() / 2).map(|i| u8::from_str_radix(&f[5][2 * i..2 * i + 2], 16).unwrap()),
        );
        frames.push(fr);
    }
    check_frames(&frames, ng_dropped, n_sent, &ng_text);
    drop(guard);
}

/// Start the primary child with extra EAL memory args `mem`; returns it with its stdout lines,
/// its `PDUMP ...` line and the port id of net_null1, once it is forwarding.
fn start_child(
    prefix: &str,
    mem: &str,
) -> (Guard, std::sync::mpsc::Receiver<String>, String, String) {
    let child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "dumpcap_primary_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_ENV, prefix)
        .env(MEM_ENV, mem)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut guard = Guard(child, prefix.to_string());
    let out = guard.0.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let (mut pdump, mut port) = (String::new(), String::new());
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("child did not get ready");
        // libtest's "test dumpcap_primary_child ... " may prefix the first line.
        if let Some(i) = line.find("PDUMP") {
            pdump = line[i..].to_string();
        }
        if let Some(i) = line.find("PORT ") {
            port = line[i + 5..].trim().to_string();
        }
        if line.ends_with("READY") {
            break;
        }
    }
    (guard, rx, pdump, port)
}

/// EAL modes a secondary process cannot attach to: `pdump_init` says so instead of reporting
/// a success that dumpcap would later contradict.
#[test]
fn pdump_init_refuses_eal_without_shared_memory() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    let mut modes = vec![("--no-huge -m 256", "--no-huge")];
    if prereq::require(
        "pdump_init --in-memory case",
        prereq::missing_hugepages(PAGES_NEEDED),
    ) {
        modes.push(("--in-memory", "--in-memory"));
    }
    for (i, (mem, why)) in modes.into_iter().enumerate() {
        let prefix = format!("colo-dumpcap-no{i}-{}", std::process::id());
        let (guard, _rx, pdump, _) = start_child(&prefix, mem);
        assert!(
            pdump.starts_with("PDUMP error") && pdump.contains(why) && pdump.contains("dumpcap"),
            "{mem}: {pdump}"
        );
        drop(guard);
    }
}

/// Run dumpcap for N packets on net_null1 into `out`; returns its output and the drop count
/// it reported.
fn dumpcap(prefix: &str, out: &Path, extra: &[&str]) -> (String, Option<u64>) {
    let _ = std::fs::remove_file(out);
    let o = run_bounded(
        Command::new("dpdk-dumpcap")
            .arg(format!("--file-prefix={prefix}"))
            .args(["-i", "net_null1", "-c", &N.to_string(), "-w"])
            .arg(out)
            .args(extra),
        Duration::from_secs(30),
    )
    .expect("dpdk-dumpcap did not finish within 30 s");
    let text = format!(
        "dumpcap {extra:?} {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{text}");
    // "Packets received/dropped on interface 'x': R/D (..)"
    let dropped = text
        .lines()
        .find(|l| l.contains("received/dropped"))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.split('/').nth(1))
        .and_then(|v| v.parse().ok());
    (text, dropped)
}

/// At least N frames (dumpcap checks `-c` after each dequeued burst of up to 32), each one the
/// child sent, in order; gap-free when dumpcap dropped none.
fn check_frames(frames: &[Vec<u8>], dropped: Option<u64>, n_sent: u64, text: &str) {
    assert!(
        (N..N + 32).contains(&frames.len()),
        "{} frames for -c {N}\n{text}",
        frames.len()
    );
    let seqs: Vec<u64> = frames
        .iter()
        .map(|p| {
            assert_eq!(p.len(), FRAME_LEN, "captured length\n{text}");
            assert_eq!(&p[14..22], MARKER, "not our frame: {p:02x?}");
            let seq = u64::from_be_bytes(p[22..30].try_into().unwrap());
            assert_eq!(p[..], frame(seq)[..]);
            seq
        })
        .collect();
    if dropped == Some(0) {
        assert!(
            seqs.windows(2).all(|w| w[1] == w[0] + 1),
            "not consecutive with no drops: {seqs:?}\n{text}"
        );
    } else {
        assert!(
            seqs.windows(2).all(|w| w[1] > w[0]),
            "out of order: {seqs:?}\n{text}"
        );
    }
    assert!(
        seqs[seqs.len() - 1] < n_sent,
        "captured seq {} beyond {n_sent} sent",
        seqs[seqs.len() - 1]
    );
}
