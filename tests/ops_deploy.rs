//! Deployment artefacts and the drop-in as a service: the systemd units pass
//! `systemd-analyze verify` without a warning, the generated man pages render with `man -l`
//! and name every subcommand, the completions know the subcommands, `--log-level` is checked
//! and the journal format carries priorities, and the compare drop-in runs on the CPU and in
//! the idle mode its config names, waking up rarely when idle.

use std::io::Read;
use std::net::TcpListener;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SUBCOMMANDS: &[&str] = &["run", "demo", "check-config", "selfcheck", "ctl"];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_colo-proxy")
}

fn repo(p: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(p)
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("colo-ops-deploy-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

#[test]
fn systemd_units_verify_without_warnings() {
    let dir = tmp("units");
    std::fs::create_dir_all(&dir).unwrap();
    // As installed, with the paths pointing at this build and checkout.
    let fix = |name: &str| {
        std::fs::read_to_string(repo(&format!("deploy/systemd/{name}")))
            .unwrap()
            .replace("/usr/bin/colo-proxy", bin())
            .replace(
                "/usr/lib/colo-proxy/setup-hugepages.sh",
                repo("dpdk-config/setup-hugepages.sh").to_str().unwrap(),
            )
    };
    let template = fix("colo-proxy@.service");
    assert!(template.contains("Type=notify"));
    assert!(template.contains("ProtectSystem=strict"));
    assert!(template.contains("CapabilityBoundingSet="));
    assert!(template.contains("After=colo-proxy-hugepages.service"));
    std::fs::write(dir.join("colo-proxy@.service"), &template).unwrap();
    std::fs::write(dir.join("colo-proxy@primary.service"), &template).unwrap();
    std::fs::write(
        dir.join("colo-proxy-hugepages.service"),
        fix("colo-proxy-hugepages.service"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.join("colo-proxy@primary.service"))
        .arg(dir.join("colo-proxy-hugepages.service"))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.display()))
        .output()
        .expect("systemd-analyze (package systemd, installed by .ci/setup)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "verify failed: {err}");
    let ours: Vec<&str> = err.lines().filter(|l| l.contains("colo-proxy")).collect();
    assert!(ours.is_empty(), "warnings for our units: {ours:?}");
}

#[test]
fn man_pages_render_and_name_every_subcommand_and_completions_know_them() {
    let man = tmp("man");
    let comp = tmp("completions");
    for (cmd, dir) in [("gen-man", &man), ("gen-completions", &comp)] {
        let out = Command::new(bin()).arg(cmd).arg(dir).output().unwrap();
        assert!(out.status.success(), "{cmd}: {out:?}");
    }
    let main = std::fs::read_to_string(man.join("colo-proxy.1")).unwrap();
    assert!(
        main.starts_with(".ie") || main.contains(".TH colo-proxy 1"),
        "roff: {main:.200}"
    );
    for s in SUBCOMMANDS {
        assert!(
            main.contains(&format!("colo\\-proxy\\-{}", s.replace('-', "\\-"))),
            "{s} not in colo-proxy.1"
        );
        let page = man.join(format!("colo-proxy-{s}.1"));
        let out = Command::new("man")
            .arg("-l")
            .arg(&page)
            .env("MANPAGER", "cat")
            .env("MANWIDTH", "100")
            .output()
            .expect("man (man-db)");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains("NAME"),
            "man -l {}: {text}",
            page.display()
        );
    }
    let out = Command::new("man")
        .arg("-l")
        .arg(man.join("colo-proxy.1"))
        .env("MANPAGER", "cat")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("--log-level"), "{text}");
    assert!(
        !text.contains("gen-man"),
        "hidden subcommands are not documented: {text}"
    );
    for f in ["colo-proxy.bash", "_colo-proxy", "colo-proxy.fish"] {
        let c = std::fs::read_to_string(comp.join(f)).unwrap();
        for s in SUBCOMMANDS {
            assert!(c.contains(s), "{f} lacks {s}");
        }
    }
}

#[test]
fn log_level_is_validated() {
    let out = Command::new(bin())
        .args(["--log-level", "loud", "check-config", "x.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a log level"));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A role-compare config on free loopback ports, every endpoint a server (no reconnects).
fn dropin_config(extra: &str) -> PathBuf {
    let p = |_: u8| free_port();
    let text = format!(
        r#"role = "compare"
[compare_sockets]
primary_in = {{ addr = "tcp:127.0.0.1:{}", mode = "server" }}
secondary_in = {{ addr = "tcp:127.0.0.1:{}", mode = "server" }}
outdev = {{ addr = "tcp:127.0.0.1:{}", mode = "server" }}
[lcores]
compare = 0
{extra}
"#,
        p(0),
        p(1),
        p(2)
    );
    let path = tmp(&format!("dropin-{}.toml", free_port()));
    std::fs::write(&path, text).unwrap();
    path
}

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn proc_field(pid: u32, file: &str, key: &str) -> String {
    let s = std::fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .unwrap_or_else(|| panic!("{key} not in /proc/{pid}/{file}"))
        .trim()
        .to_string()
}

/// utime + stime of the process, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let after = &s[s.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// Start the drop-in, wait for READY=1; returns the process and its notify socket.
fn start_dropin(cfg: &Path) -> (Proc, UnixDatagram, PathBuf) {
    let npath = tmp(&format!("notify-{}.sock", free_port()));
    let _ = std::fs::remove_file(&npath);
    let notify = UnixDatagram::bind(&npath).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let child = Command::new(bin())
        .args(["--log-level", "info", "run", "--config"])
        .arg(cfg)
        .env("NOTIFY_SOCKET", &npath)
        .env("JOURNAL_STREAM", "8:12345")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut p = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut buf = [0u8; 512];
        if let Ok(n) = notify.recv(&mut buf) {
            if String::from_utf8_lossy(&buf[..n]).contains("READY=1") {
                break;
            }
        }
        assert!(
            p.0.try_wait().unwrap().is_none(),
            "drop-in exited before READY=1"
        );
        assert!(Instant::now() < deadline, "no READY=1 from the drop-in");
    }
    (p, notify, npath)
}

#[test]
fn dropin_is_pinned_blocks_when_idle_serves_metrics_and_logs_with_journal_priorities() {
    let mport = free_port();
    let cfg = dropin_config(&format!("[mgmt.metrics]\nlisten = \"127.0.0.1:{mport}\""));
    let (mut p, _notify, npath) = start_dropin(&cfg);
    let pid = p.0.id();
    // Its metrics endpoint answers from the drop-in's loop.
    let scrape = || {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    };
    let m = scrape();
    for want in [
        "HTTP/1.1 200 OK",
        "colo_proxy_build_info{version=",
        "role=\"compare\"",
        "colo_proxy_dropin_socket_connected{socket=\"primary_in\"} 0",
        "colo_proxy_dropin_socket_frames_in_total{socket=\"outdev\"} 0",
        "colo_proxy_compare_primary_in_total 0",
        "colo_proxy_compare_rel_pass_ipv6_total 0",
        "colo_proxy_metrics_scrapes_total 1",
        "# EOF",
    ] {
        assert!(m.contains(want), "{want} not in\n{m}");
    }
    assert_eq!(
        proc_field(pid, "status", "Cpus_allowed_list:"),
        "0",
        "pinned to lcores.compare"
    );
    // Idle: count the process's wake-ups (voluntary context switches) and CPU over ~1 s.
    let sw = || {
        proc_field(pid, "status", "voluntary_ctxt_switches:")
            .parse::<u64>()
            .unwrap()
    };
    let (s0, c0, t0) = (sw(), cpu_ticks(pid), Instant::now());
    std::thread::sleep(Duration::from_millis(1000));
    let (s1, c1, dt) = (sw(), cpu_ticks(pid), t0.elapsed());
    let per_s = (s1 - s0) as f64 / dt.as_secs_f64();
    assert!(
        per_s < 30.0,
        "{per_s:.0} wake-ups/s while idle (was ~900 with a 1 ms poll)"
    );
    assert!(c1 - c0 <= 5, "{} ticks of CPU while idle", c1 - c0);
    let waits = |m: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix("colo_proxy_dropin_idle_waits_total "))
            .unwrap()
            .parse()
            .unwrap()
    };
    let w = waits(&scrape());
    assert!(w > 0 && w < 200, "{w} idle waits");
    // SIGTERM: orderly stop, exit 0, the log carries sd-daemon priorities.
    // SAFETY: kill(2) on our own child's pid; no memory is involved.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "no stop after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success());
    let mut err = String::new();
    p.0.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(
        err.lines().any(
            |l| l.starts_with("<6>colo_proxy::dropin: compare drop-in:") && l.contains("cpu 0")
        ),
        "{err}"
    );
    let _ = std::fs::remove_file(npath);
}

#[test]
fn dropin_without_backoff_busy_polls_as_configured() {
    let mport = free_port();
    let cfg = dropin_config(&format!(
        "[idle]\nbackoff = false\n[mgmt.metrics]\nlisten = \"127.0.0.1:{mport}\""
    ));
    let (p, _notify, npath) = start_dropin(&cfg);
    let pid = p.0.id();
    // Busy polling never blocks: no voluntary context switch, no idle wait (CPU share is not
    // asserted: on a loaded 2-core machine the scheduler decides it).
    let sw = || {
        proc_field(pid, "status", "voluntary_ctxt_switches:")
            .parse::<u64>()
            .unwrap()
    };
    let s0 = sw();
    std::thread::sleep(Duration::from_millis(1000));
    let blocked = sw() - s0;
    assert!(
        blocked < 3,
        "{blocked} voluntary switches/s while busy polling"
    );
    let mut s = std::net::TcpStream::connect(("127.0.0.1", mport)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    std::io::Write::write_all(&mut s, b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
    let mut m = String::new();
    s.read_to_string(&mut m).unwrap();
    assert!(m.contains("colo_proxy_dropin_idle_waits_total 0\n"), "{m}");
    drop(p);
    let _ = std::fs::remove_file(npath);
}

#[test]
fn dropin_config_rules_say_what_is_honoured() {
    let check = |extra: &str| {
        let out = Command::new(bin())
            .arg("check-config")
            .arg(dropin_config(extra))
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (code, text) = check("");
    assert_eq!(code, Some(0), "no [eal] needed in role compare: {text}");
    assert!(
        text.contains("drop-in: one thread (socket reader + compare engine) pinned to CPU 0"),
        "{text}"
    );
    assert!(
        text.contains("drop-in: not used in this role: eal"),
        "{text}"
    );
    let (_, text) = check("[idle]\nbackoff = false");
    assert!(text.contains("idle: busy polling"), "{text}");
    let (code, text) = check("[compare]\nshards = 2");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("compare.shards") && text.contains("one compare engine"),
        "{text}"
    );
    let (code, text) = check("redirector = 1");
    assert_eq!(code, Some(2), "{text}");
    assert!(
        text.contains("lcores.redirector") && text.contains("pinned to lcores.compare (0)"),
        "{text}"
    );
    let (code, _) = check("redirector = 0\nmain = 0");
    assert_eq!(code, Some(0), "the same CPU is fine");
}
