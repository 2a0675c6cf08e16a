//! Faults the pipeline must notice, on a child `colo-proxy run` over virtual devices: a compare
//! shard that panics (fault injected with `COLO_TEST_PANIC`) is reported (log, `lcore-failed`
//! event, report), the rest stops in order and the process exits non-zero; what the shard held
//! is never transmitted. A panicking management thread stops the process too.
//!
//! The primary: nic = net_pcap (empty input, released frames written to `released.pcap`), pvm =
//! net_pcap replaying UDP frames nobody answers (so the shard holds them), link = QEMU-framed
//! TCP sockets the test serves as the secondary.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use pcap_file::pcap::{PcapPacket, PcapReader, PcapWriter};

/// Child proxies busy-poll; one at a time on this small machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Frames the PVM sends (all held: the secondary never sends the same).
const PVM_FRAMES: usize = 100;

struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let d = std::env::temp_dir().join(format!("colo-faults-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        Scratch(d)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        if std::env::var_os("COLO_KEEP").is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Ethernet/IPv4/UDP, `src_port` → 4000, 32 bytes of payload.
fn udp_frame(src: [u8; 4], dst: [u8; 4], src_port: u16, fill: u8) -> Vec<u8> {
    let payload = [fill; 32];
    let mut f = vec![2, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = (20 + 8 + payload.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1, 0x40, 0, 64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&src_port.to_be_bytes());
    f.extend_from_slice(&4000u16.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(&payload);
    f
}

fn write_pcap(path: &Path, frames: &[Vec<u8>]) {
    let mut w = PcapWriter::new(std::fs::File::create(path).unwrap()).unwrap();
    for (i, f) in frames.iter().enumerate() {
        let p = PcapPacket::new(Duration::from_micros(i as u64), f.len() as u32, f);
        w.write_packet(&p).unwrap();
    }
}

fn pcap_count(path: &Path) -> usize {
    let mut r = PcapReader::new(std::fs::File::open(path).unwrap()).unwrap();
    let mut n = 0;
    while let Some(p) = r.next_packet() {
        p.unwrap();
        n += 1;
    }
    n
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

struct Proxy {
    child: Child,
    dir: PathBuf,
    sock: PathBuf,
    secondary_out: u16,
}

impl Proxy {
    /// Start the primary with `stages_lcore` running every stage (0 = the main lcore, so
    /// management runs on a helper thread) or mirror+redirector on 1 and compare on 2.
    fn start(dir: &Path, panic: &str, all_on_main: bool) -> Proxy {
        let pvm: Vec<Vec<u8>> = (0..PVM_FRAMES)
            .map(|i| udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 7000 + i as u16, 0xaa))
            .collect();
        write_pcap(&dir.join("pvm.pcap"), &pvm);
        write_pcap(&dir.join("empty.pcap"), &[]);
        let (mirror, secondary_out) = (free_port(), free_port());
        let lcores = if all_on_main {
            "mirror = 0\nredirector = 0\ncompare = [0]"
        } else {
            "mirror = 1\nredirector = 1\ncompare = [2]"
        };
        let d = dir.display();
        let cfg = format!(
            r#"role = "primary"
[eal]
args = ["--lcores", "0@0,1@1,2@1", "--no-pci", "--file-prefix", "colofault{pid}",
        "--log-level", "lib.eal:warning"]
[ports.nic]
vdev = "net_pcap0,rx_pcap={d}/empty.pcap,tx_pcap={d}/released.pcap"
[ports.pvm]
vdev = "net_pcap1,rx_pcap={d}/pvm.pcap,tx_pcap={d}/to_pvm.pcap"
[link]
kind = "socket"
mirror = {{ addr = "tcp:127.0.0.1:{mirror}", mode = "server" }}
secondary_out = {{ addr = "tcp:127.0.0.1:{secondary_out}", mode = "server" }}
[lcores]
{lcores}
[mgmt]
control_socket = "{d}/p.sock"
stats_interval_ms = 200
"#,
            pid = std::process::id()
        );
        let path = dir.join("primary.toml");
        std::fs::write(&path, cfg).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_colo-proxy"))
            .args(["run", "--config"])
            .arg(&path)
            .env("COLO_TEST_PANIC", panic)
            .stdout(std::fs::File::create(dir.join("out.log")).unwrap())
            .stderr(std::fs::File::create(dir.join("err.log")).unwrap())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        Proxy {
            child,
            dir: dir.to_path_buf(),
            sock: dir.join("p.sock"),
            secondary_out,
        }
    }

    fn logs(&self) -> (String, String) {
        let r = |n: &str| std::fs::read_to_string(self.dir.join(n)).unwrap_or_default();
        (r("out.log"), r("err.log"))
    }

    fn dump(&self) -> String {
        let (o, e) = self.logs();
        format!("--- stdout\n{o}\n--- stderr\n{e}")
    }

    /// Wait for exit at most `limit` (killed and `None` after that).
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().unwrap() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }

    /// Subscribe to events once the control socket answers.
    fn events(&mut self) -> BufReader<UnixStream> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = UnixStream::connect(&self.sock) {
                s.write_all(b"{\"cmd\":\"events\"}\n").unwrap();
                let mut r = BufReader::new(s);
                let mut line = String::new();
                r.read_line(&mut line).unwrap();
                assert!(line.contains("subscribed"), "{line}");
                return r;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "proxy exited early\n{}",
                self.dump()
            );
            assert!(
                Instant::now() < deadline,
                "no control socket\n{}",
                self.dump()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Connect as the secondary's output and send `n` frames of flows the PVM never used.
    fn send_secondary(&self, n: usize) -> TcpStream {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut s = loop {
            match TcpStream::connect(("127.0.0.1", self.secondary_out)) {
                Ok(s) => break s,
                Err(e) => {
                    assert!(Instant::now() < deadline, "secondary_out: {e}");
                    std::thread::sleep(Duration::from_millis(20));
                }
            }
        };
        for i in 0..n {
            let f = udp_frame([10, 0, 0, 2], [10, 0, 0, 1], 9000 + i as u16, 0xbb);
            s.write_all(&(f.len() as u32).to_be_bytes()).unwrap();
            s.write_all(&f).unwrap();
        }
        s
    }
}

/// The report's `accounting` line.
fn accounting_line(stdout: &str) -> &str {
    stdout
        .lines()
        .find(|l| l.starts_with("accounting"))
        .unwrap_or_else(|| panic!("no accounting line\n{stdout}"))
}

#[test]
fn a_panicking_compare_shard_stops_the_proxy_and_releases_nothing() {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new("shard");
    // The shard handles the PVM's frames, then panics at the first housekeeping after the
    // test's secondary frames push it past PVM_FRAMES + 2.
    let mut p = Proxy::start(&s.0, &format!("compare0:{}", PVM_FRAMES + 2), false);
    let mut events = p.events();
    let _secondary = p.send_secondary(4);
    let sent = Instant::now();
    let status = p.wait(Duration::from_secs(20));
    let took = sent.elapsed();
    let (out, err) = p.logs();
    let all = p.dump();
    let status = status.unwrap_or_else(|| panic!("the proxy kept running\n{all}"));
    assert_eq!(status.code(), Some(1), "{all}");
    // Noticed within a status period plus the stop's settling, not at some timeout.
    assert!(took < Duration::from_secs(10), "took {took:?}\n{all}");
    // Log, report and event all name the lcore and its stage.
    assert!(
        err.contains("error: lcore 2 (compare0): panicked: COLO_TEST_PANIC: injected fault"),
        "{all}"
    );
    assert!(
        out.contains("lcore failure: lcore 2 (compare0): panicked: COLO_TEST_PANIC"),
        "{all}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("lcores failed") && l.ends_with(" 1")),
        "{all}"
    );
    let mut failed = None;
    let mut line = String::new();
    while events.read_line(&mut line).unwrap_or(0) > 0 {
        let ev: serde_json::Value = serde_json::from_str(line.trim()).unwrap();
        if ev["event"] == "lcore-failed" {
            failed = Some(ev);
        }
        line.clear();
    }
    let failed = failed.unwrap_or_else(|| panic!("no lcore-failed event\n{all}"));
    assert_eq!(failed["lcore"], 2, "{failed}");
    assert_eq!(
        failed["stages"],
        serde_json::json!(["compare0"]),
        "{failed}"
    );
    assert!(
        failed["reason"]
            .as_str()
            .unwrap()
            .contains("injected fault"),
        "{failed}"
    );
    // Nothing the shard held reached the client: it held every PVM frame unverified.
    assert_eq!(pcap_count(&s.0.join("released.pcap")), 0, "{all}");
    assert!(!out.lines().any(|l| l.starts_with("released_")), "{all}");
    // The held frames were freed with the shard; the report says so instead of balancing.
    let acc = accounting_line(&out);
    assert!(
        acc.contains("freed uncounted with the failed lcore"),
        "{acc}"
    );
    // The other lcore stopped in order (the stop was acknowledged by the survivors).
    assert!(
        out.contains("frames left in rx queues"),
        "no orderly end\n{all}"
    );
}

fn management_panic_stops_everything(all_on_main: bool) {
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let s = Scratch::new(if all_on_main { "mgmt-main" } else { "mgmt" });
    let mut p = Proxy::start(&s.0, "management:300", all_on_main);
    let started = Instant::now();
    let status = p.wait(Duration::from_secs(20));
    let (out, err) = p.logs();
    let all = p.dump();
    let status = status.unwrap_or_else(|| panic!("the proxy kept running\n{all}"));
    assert_eq!(status.code(), Some(1), "{all}");
    assert!(started.elapsed() < Duration::from_secs(15), "{all}");
    assert!(
        err.contains("error: management panicked: COLO_TEST_PANIC: injected fault in management"),
        "{all}"
    );
    assert!(out.contains("lcore failure: management panicked"), "{all}");
    // The lcores were stopped in order: the held primaries were dropped, not released.
    assert_eq!(pcap_count(&s.0.join("released.pcap")), 0, "{all}");
    assert!(!out.lines().any(|l| l.starts_with("released_")), "{all}");
    assert!(
        out.lines().any(|l| l.starts_with("drop_compare_shutdown")),
        "{all}"
    );
    assert!(accounting_line(&out).ends_with("balanced"), "{all}");
}

#[test]
fn a_management_panic_stops_the_lcores_and_exits_non_zero() {
    management_panic_stops_everything(false);
}

#[test]
fn a_management_panic_with_stages_on_the_main_lcore_still_stops() {
    management_panic_stops_everything(true);
}
