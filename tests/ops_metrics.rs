//! Running colo-proxy like a service, end to end on `colo-proxy demo` (a child process):
//! systemd readiness (`READY=1` on `$NOTIFY_SOCKET`, only once start-up is done), the
//! Prometheus endpoint parsed by a real parser (Python's `prometheus_client` OpenMetrics
//! parser; Debian's python3-prometheus-client, installed by .ci/setup) whose values match
//! `ctl stats`, and HTTP clients that are slow, idle or hostile never blocking management.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_colo-proxy")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("colo-ops-test-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Kills the demo if the test fails half-way.
struct Demo(Option<Child>);

impl Drop for Demo {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn ctl(sock: &Path, words: &[&str]) -> serde_json::Value {
    let out = Command::new(bin())
        .args(["ctl", "--raw", "--timeout", "5", "--socket"])
        .arg(sock)
        .args(words)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "ctl {words:?}: {text}");
    serde_json::from_str(text.trim()).unwrap()
}

/// One HTTP request on a fresh connection; the whole response.
fn http(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

fn scrape(addr: SocketAddr) -> String {
    let r = http(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
    assert!(
        r.contains("Content-Type: application/openmetrics-text"),
        "{r}"
    );
    r.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// `(sample name, sorted labels) → value`, parsed by prometheus_client's OpenMetrics parser.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn parse_with_python(text: &str) -> Samples {
    let script = r#"
import json, sys
from prometheus_client.openmetrics.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    for s in fam.samples:
        out.append([s.name, sorted(s.labels.items()), s.value])
print(json.dumps(out))
"#;
    // Debian's interpreter, where .ci/setup installs python3-prometheus-client (a pyenv or
    // venv python3 earlier in PATH would not have it).
    let py = if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    };
    let mut child = Command::new(py)
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    type Parsed = Vec<(String, Vec<(String, String)>, f64)>;
    let v: Parsed = serde_json::from_slice(&out.stdout).unwrap();
    v.into_iter().map(|(n, l, x)| ((n, l), x)).collect()
}

fn get(s: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut l: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    l.sort();
    *s.get(&(name.to_string(), l.clone()))
        .unwrap_or_else(|| panic!("no sample {name}{l:?}"))
}

#[test]
fn demo_is_ready_after_startup_serves_metrics_matching_ctl_stats_and_slow_clients_never_block() {
    let dir = tmp("notify");
    let notify_path = dir.with_file_name("notify.sock");
    let _ = std::fs::remove_file(&notify_path);
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let sock = tmp("ctl.sock");
    let _ = std::fs::remove_file(&sock);
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(bin())
        .args([
            "demo",
            "--quiet",
            "--seconds",
            "60",
            "--divergence-rate",
            "0.01",
        ])
        .arg("--control-socket")
        .arg(&sock)
        .arg("--metrics-listen")
        .arg(addr.to_string())
        .env("NOTIFY_SOCKET", &notify_path)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut demo = Demo(Some(child));

    // 1. READY=1 arrives, and only once management answers (ports up, sockets bound).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut msg = String::new();
    while !msg.contains("READY=1") {
        assert!(Instant::now() < deadline, "no READY=1 (got {msg:?})");
        let mut buf = [0u8; 4096];
        if let Ok(n) = notify.recv(&mut buf) {
            msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        }
        if let Some(c) = demo.0.as_mut() {
            assert!(
                c.try_wait().unwrap().is_none(),
                "demo exited before READY=1"
            );
        }
    }
    assert!(msg.contains("STATUS=running"), "{msg}");
    // Right at READY the control socket and the metrics endpoint already answer.
    let first = ctl(&sock, &["stats"]);
    assert_eq!(first["ok"], true, "{first}");
    assert!(
        TcpStream::connect(addr).is_ok(),
        "metrics endpoint not listening at READY"
    );

    // 2. Let traffic and a few divergences happen, then bracket a scrape between two ctl
    //    stats: every counter must lie between the two (one source of truth).
    let wait = Instant::now() + Duration::from_secs(20);
    loop {
        let s = ctl(&sock, &["stats"]);
        if s["result"]["mgmt"]["checkpoint"]["completed"]
            .as_u64()
            .unwrap_or(0)
            >= 2
        {
            break;
        }
        assert!(Instant::now() < wait, "no checkpoints: {s}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let before = ctl(&sock, &["stats"])["result"].clone();
    let text = scrape(addr);
    let after = ctl(&sock, &["stats"])["result"].clone();
    let samples = parse_with_python(&text);

    let lcores = before["dataplane"]["lcores"].as_array().unwrap();
    assert!(!lcores.is_empty());
    let mut checked = 0;
    for (i, l) in lcores.iter().enumerate() {
        let id = l["lcore"].to_string();
        for (name, v0) in l["counters"].as_object().unwrap() {
            let v1 = after["dataplane"]["lcores"][i]["counters"][name]
                .as_u64()
                .unwrap();
            let v0 = v0.as_u64().unwrap() as f64;
            let (metric, labels): (String, Vec<(&str, &str)>) =
                if let Some(r) = name.strip_prefix("drop_") {
                    (
                        "colo_proxy_dropped_packets_total".into(),
                        vec![("lcore", &id), ("reason", r)],
                    )
                } else if let Some(b) = name.strip_suffix("_ns") {
                    (
                        format!("colo_proxy_{b}_seconds_total"),
                        vec![("lcore", &id)],
                    )
                } else if let Some(b) = name.strip_suffix("_cycles") {
                    (
                        format!("colo_proxy_lcore_{b}_cycles_total"),
                        vec![("lcore", &id)],
                    )
                } else {
                    (format!("colo_proxy_{name}_total"), vec![("lcore", &id)])
                };
            let scale = if name.ends_with("_ns") { 1e9 } else { 1.0 };
            let m = get(&samples, &metric, &labels) * scale;
            assert!(
                v0 <= m + 1.0 && m <= v1 as f64 + 1.0,
                "{metric}{labels:?}: ctl {v0} ≤ metric {m} ≤ ctl {v1} violated"
            );
            checked += 1;
        }
    }
    assert!(checked > 40, "only {checked} lcore counters compared");
    let rx: f64 = lcores
        .iter()
        .map(|l| {
            get(
                &samples,
                "colo_proxy_rx_total",
                &[("lcore", &l["lcore"].to_string())],
            )
        })
        .sum();
    assert!(rx > 0.0, "traffic flowed");
    for (metric, path) in [
        ("colo_proxy_checkpoint_requests_total", "requested"),
        ("colo_proxy_checkpoints_completed_total", "completed"),
        (
            "colo_proxy_checkpoint_requests_coalesced_total",
            "coalesced",
        ),
    ] {
        let v0 = before["mgmt"]["checkpoint"][path].as_f64().unwrap();
        let v1 = after["mgmt"]["checkpoint"][path].as_f64().unwrap();
        let m = get(&samples, metric, &[]);
        assert!(v0 <= m && m <= v1, "{metric}: {v0} ≤ {m} ≤ {v1}");
    }
    let div_total: f64 = samples
        .iter()
        .filter(|((n, _), _)| n == "colo_proxy_mgmt_divergences_total")
        .map(|(_, v)| *v)
        .sum();
    let (d0, d1) = (
        before["mgmt"]["divergences"].as_f64().unwrap(),
        after["mgmt"]["divergences"].as_f64().unwrap(),
    );
    assert!(
        d0 <= div_total && div_total <= d1,
        "divergences {d0} ≤ {div_total} ≤ {d1}"
    );
    assert!(d0 > 0.0, "divergences were injected");
    // Histograms: buckets, count and the +Inf bucket agree.
    for h in [
        "colo_proxy_compare_hold_seconds",
        "colo_proxy_checkpoint_latency_seconds",
    ] {
        let count = get(&samples, &format!("{h}_count"), &[]);
        let inf = get(&samples, &format!("{h}_bucket"), &[("le", "+Inf")]);
        assert_eq!(count, inf, "{h}");
        assert!(count > 0.0, "{h} recorded something");
    }
    let completed = get(&samples, "colo_proxy_checkpoints_completed_total", &[]);
    let lat_count = get(&samples, "colo_proxy_checkpoint_latency_seconds_count", &[]);
    assert!(
        lat_count <= completed,
        "{lat_count} latencies for {completed} checkpoints"
    );

    // The Grafana dashboard only uses metrics this exposition has.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/deploy/grafana/colo-proxy.json"
        ))
        .unwrap(),
    )
    .expect("the dashboard is valid JSON");
    let mut exprs = Vec::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            exprs.push(t["expr"].as_str().unwrap().to_string());
        }
    }
    for q in dash["templating"]["list"].as_array().unwrap() {
        if let Some(d) = q["definition"].as_str() {
            exprs.push(d.to_string());
        }
    }
    let mut referenced = std::collections::BTreeSet::new();
    for e in &exprs {
        let mut rest = e.as_str();
        while let Some(i) = rest.find("colo_proxy_") {
            let tail = &rest[i..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            referenced.insert(tail[..end].to_string());
            rest = &tail[end..];
        }
    }
    assert!(referenced.len() >= 20, "{referenced:?}");
    for m in &referenced {
        assert!(
            samples.keys().any(|(n, _)| n == m),
            "the dashboard uses {m}, which the exposition does not have"
        );
    }

    // 3. Hostile and slow clients: an idle connection, a half-sent request and a flood of
    //    connections over the limit; management (ctl stats) keeps answering at once and a
    //    well-behaved scrape still works.
    let idle = TcpStream::connect(addr).unwrap();
    let mut half = TcpStream::connect(addr).unwrap();
    half.write_all(b"GET /metr").unwrap();
    let flood: Vec<TcpStream> = (0..20)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    let t = Instant::now();
    let s = ctl(&sock, &["stats"]);
    assert_eq!(s["ok"], true);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ctl stats took {:?} with slow HTTP clients",
        t.elapsed()
    );
    drop(flood);
    // Slots free up once the flood is gone (closed or refused): a scrape answers again.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "no scrape after the flood");
        std::thread::sleep(Duration::from_millis(100));
    }
    // The idle and half-sent connections are closed by the server at its deadline (5 s).
    for (name, mut c) in [("idle", idle), ("half", half)] {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut b = [0u8; 64];
        let t = Instant::now();
        let n = c.read(&mut b).unwrap_or(0);
        assert_eq!(n, 0, "{name}: the server closed it without a reply");
        assert!(
            t.elapsed() < Duration::from_secs(9),
            "{name} held for {:?}",
            t.elapsed()
        );
    }
    // Errors are answered, never a crash.
    assert!(http(addr, "POST /metrics HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 405"));
    assert!(http(addr, "GET /other HTTP/1.1\r\n\r\n").starts_with("HTTP/1.1 404"));
    assert!(http(addr, "\u{1}\u{2} nonsense\r\n\r\n").starts_with("HTTP/1.1 400"));
    let big = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert!(http(addr, &big).starts_with("HTTP/1.1 431"));
    let text = scrape(addr);
    let s = parse_with_python(&text);
    assert!(get(&s, "colo_proxy_metrics_timeouts_total", &[]) >= 2.0);
    assert!(get(&s, "colo_proxy_metrics_errors_total", &[]) >= 4.0);

    // 4. Orderly stop.
    assert_eq!(ctl(&sock, &["shutdown"])["ok"], true);
    let mut c = demo.0.take().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while c.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "demo did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = c.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut buf = [0u8; 4096];
    let mut stopping = false;
    while let Ok(n) = notify.recv(&mut buf) {
        stopping |= String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1");
    }
    assert!(stopping, "STOPPING=1 sent at the stop");
    let _ = std::fs::remove_file(&notify_path);
}

#[test]
fn metrics_listen_is_validated_by_check_config() {
    let base = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/dpdk-config/vdev.toml"
    ))
    .unwrap();
    let write = |extra: &str| {
        let p = tmp(&format!("m{}.toml", extra.len()));
        std::fs::write(&p, format!("{base}\n{extra}\n")).unwrap();
        Command::new(bin())
            .arg("check-config")
            .arg(&p)
            .output()
            .unwrap()
    };
    let ok = write("[mgmt.metrics]\nlisten = \"127.0.0.1:9464\"");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let ok = write("[mgmt.metrics]");
    assert!(
        ok.status.success(),
        "default listen: {}",
        String::from_utf8_lossy(&ok.stdout)
    );
    for bad in [
        "listen = \"localhost\"",
        "listen = \"127.0.0.1:0\"",
        "port = 1",
    ] {
        let out = write(&format!("[mgmt.metrics]\n{bad}"));
        assert_eq!(out.status.code(), Some(2), "{bad}");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(
            text.contains("mgmt.metrics") || text.contains("port"),
            "{bad}: {text}"
        );
    }
}
