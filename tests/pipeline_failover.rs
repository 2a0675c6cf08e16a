//! Failover continuity with real stacks: a client's connections opened before a host dies
//! finish, byte-exact, on the same TCP connections.
//!
//! The switch topology of a real deployment (see `SwitchNet`): the client and both hosts'
//! client-facing nics on one Linux bridge; PVM and SVM with the same IP and MAC, default
//! sysctls. Both proxies are `colo-proxy run` processes linked by QEMU-framed sockets (one case
//! by the encapsulated port link). While a paced download, a paced upload, a download into a
//! connection the client half-closed, a persistent request/response session and a connection
//! the VM opened (both directions at once) are in flight (and a new connection is opened after
//! them), with `tcp_timestamps` on and off:
//! - primary host loss: the primary proxy gets SIGKILL and the PVM loses its link; `ctl
//!   failover` on the secondary; everything completes through the SVM, the SVM's gratuitous
//!   ARP reaches the client and moves the switch's MAC entry to the secondary's port;
//! - secondary host loss: the secondary proxy gets SIGKILL and the SVM loses its link; `ctl
//!   failover` on the primary; everything completes through the PVM alone.
//!
//! The failover gap and the held bytes are printed from the `failover-report` event and
//! bounded (generously). A frozen primary (SIGSTOP) must raise `link-silent` on the secondary
//! within the heartbeat timeout, on both link kinds; with `on_link_loss = "auto"` it fails
//! over.
//!
//! Needs root and `ip netns`; otherwise it prints why and passes without running.

mod netns_support;
mod pipeline_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use netns_support::*;
use pipeline_support::*;

/// Bytes of each client transfer (each direction).
const BULK: usize = 4_000_000;
/// Bytes of each direction of the VM-opened connection.
const VM_BULK: usize = 2_000_000;
/// Pace of every transfer (bytes/s): long enough to be cut in the middle.
const RATE: usize = 1_000_000;
/// The client's listening port for the VM-opened connection, and the VMs' source port.
const VM_PEER_PORT: u16 = 7200;
const VM_SRC_PORT: u16 = 7300;

/// Between the host's death and the failover command.
const DETECTION: Duration = Duration::from_millis(500);

/// Which host dies.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Dies {
    Primary,
    Secondary,
}

/// The scenarios share the 2 cores: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How the two proxies are linked.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Link {
    /// QEMU-framed TCP sockets over the host link.
    Socket(u16, u16),
    /// An encapsulated DPDK port link on a veth pair (primary's end, secondary's end).
    Port,
}

fn link_toml(link: Link, net: &SwitchNet, veth: (&str, &str), primary: bool) -> String {
    match link {
        Link::Socket(m, s) => {
            let ip = &net.sec.primary_ip;
            let mode = if primary { "server" } else { "client" };
            format!(
                r#"[link]
kind = "socket"
mirror = {{ addr = "tcp:{ip}:{m}", mode = "{mode}" }}
secondary_out = {{ addr = "tcp:{ip}:{s}", mode = "{mode}" }}
reconnect_ms = 100
"#
            )
        }
        Link::Port => {
            let (iface, dev) = if primary {
                (veth.0, "net_af_packet2")
            } else {
                (veth.1, "net_af_packet1")
            };
            format!(
                r#"[link]
kind = "port"
[ports.link]
vdev = "{dev},iface={iface}"
"#
            )
        }
    }
}

fn primary_toml(tag: &str, dir: &Path, net: &SwitchNet, link: &str, failover: &str) -> String {
    format!(
        r#"role = "primary"
{common}[ports.nic]
vdev = "net_af_packet0,iface={nic}"
[ports.pvm]
vdev = "net_af_packet1,iface={pvm}"
[lcores]
main = 0
mirror = 1
redirector = 1
compare = 1
{link}{failover}"#,
        common = common_toml(&format!("colo-fop-{tag}"), dir, "primary"),
        nic = net.nic,
        pvm = net.pvm.root_if,
    )
}

fn secondary_toml(tag: &str, dir: &Path, net: &SwitchNet, link: &str, failover: &str) -> String {
    format!(
        r#"role = "secondary"
{common}[ports.svm]
vdev = "net_af_packet0,iface={svm}"
[ports.nic]
vdev = "net_af_packet3,iface={nic2}"
[lcores]
main = 0
rewriter = 1
{link}{failover}"#,
        common = common_toml_on(
            &format!("colo-fos-{tag}"),
            dir,
            "secondary",
            SECONDARY_LCORES
        ),
        svm = net.svm.root_if,
        nic2 = net.nic2,
    )
}

/// Start the primary, then the secondary on its host; wait until both run and (socket link)
/// both streams are connected.
fn start_pair(net: &SwitchNet, dir: &Path, pcfg: &Path, scfg: &Path, link: Link) -> (Proc, Proc) {
    let primary = proxy("primary", pcfg, dir, None);
    assert!(
        wait_until(Duration::from_secs(20), || primary
            .output()
            .contains("running as primary")),
        "primary did not come up\n{}",
        primary.output()
    );
    let secondary = proxy("secondary", scfg, dir, Some(&net.sec));
    let linked = wait_until(Duration::from_secs(20), || {
        secondary.output().contains("running as secondary")
            && match link {
                Link::Socket(m, s) => {
                    established_at(&net.sec.primary_ip, m) >= 1
                        && established_at(&net.sec.primary_ip, s) >= 1
                }
                Link::Port => true,
            }
    });
    assert!(
        linked,
        "link did not come up\n{}",
        logs(&primary, &secondary)
    );
    (primary, secondary)
}

/// The last `PROGRESS k=v ...` line of an output, as a map.
fn progress(out: &str) -> std::collections::HashMap<String, usize> {
    out.lines()
        .rev()
        .find_map(|l| l.strip_prefix("PROGRESS "))
        .map(|kv| {
            kv.split_whitespace()
                .filter_map(|p| p.split_once('='))
                .map(|(k, v)| (k.to_string(), v.parse().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// JSON events of a `ctl events` log with `"event": name`.
fn events_named(log: &str, name: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == name)
        .collect()
}

fn ctl_events(socket: &Path, dir: &Path, name: &str) -> Proc {
    let mut c = Command::new(env!("CARGO_BIN_EXE_colo-proxy"));
    c.args(["ctl", "--socket", socket.to_str().unwrap(), "events"]);
    Proc::spawn(name, c, &dir.join(format!("{name}.log")))
}

fn py(host: &Host, py: &Path, args: &[&str]) -> Command {
    let mut v = vec!["python3", py.to_str().unwrap()];
    v.extend_from_slice(args);
    host.cmd(&v)
}

#[test]
fn primary_dies_timestamps_on() {
    scenario("fa", Dies::Primary, true, false);
}

#[test]
fn primary_dies_timestamps_off() {
    scenario("fb", Dies::Primary, false, false);
}

#[test]
fn secondary_dies() {
    scenario("fc", Dies::Secondary, true, false);
}

#[test]
fn primary_dies_port_link() {
    scenario("fd", Dies::Primary, true, true);
}

fn scenario(label: &str, dies: Dies, timestamps: bool, port_link: bool) {
    if !lab_available("pipeline_failover") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let t_start = Instant::now();
    let tag = format!("{label}{}", std::process::id() % 100_000);
    let scratch = TmpDir::new(&format!("colo-failover-{tag}"));
    let dir = scratch.0.clone();
    let svc = dir.join("svc.py");
    std::fs::write(&svc, SVC_PY).unwrap();

    let net = SwitchNet::new(&tag);
    for h in [&net.client, &net.pvm, &net.svm] {
        h.sysctl(&format!("net.ipv4.tcp_timestamps={}", u8::from(timestamps)));
    }
    let veth = port_link.then(|| {
        let v = VethPair::new(
            &format!("la{tag}"),
            &format!("lb{tag}"),
            colo_proxy::pipeline::topology::LINK_MTU,
        );
        net.sec.adopt(&v.b);
        v
    });
    let ends = veth
        .as_ref()
        .map(|v| (v.a.clone(), v.b.clone()))
        .unwrap_or_default();
    let link = if port_link {
        Link::Port
    } else {
        Link::Socket(free_port(), free_port())
    };
    let pcfg = dir.join("primary.toml");
    let scfg = dir.join("secondary.toml");
    let lt = |p| link_toml(link, &net, (&ends.0, &ends.1), p);
    let failover = "[failover]\nannounce = true\n";
    std::fs::write(&pcfg, primary_toml(&tag, &dir, &net, &lt(true), failover)).unwrap();
    std::fs::write(
        &scfg,
        secondary_toml(&tag, &dir, &net, &lt(false), failover),
    )
    .unwrap();
    let _pvm_svc = Service::start(&net.pvm, &svc, "pvm");
    let _svm_svc = Service::start(&net.svm, &svc, "svm");
    let (mut primary, mut secondary) = start_pair(&net, &dir, &pcfg, &scfg, link);
    let psock = dir.join("primary.sock");
    let ssock = dir.join("secondary.sock");
    let (survivor_sock, survivor_name) = match dies {
        Dies::Primary => (&ssock, "secondary"),
        Dies::Secondary => (&psock, "primary"),
    };
    let events = ctl_events(survivor_sock, &dir, "events");
    let arp = Proc::spawn(
        "arpwatch",
        py(&net.client, &svc, &["arpwatch", "eth0", "60"]),
        &dir.join("arpwatch.log"),
    );

    // The VM-opened connection: the client listens, both VMs connect from the same port.
    let vm_bulk = VM_BULK.to_string();
    let rate = RATE.to_string();
    let peer = Proc::spawn(
        "vmpeer",
        py(
            &net.client,
            &svc,
            &["vmpeer", &VM_PEER_PORT.to_string(), &vm_bulk, &rate],
        ),
        &dir.join("vmpeer.log"),
    );
    assert!(
        wait_until(Duration::from_secs(10), || peer.output().contains("READY")),
        "vmpeer: {}",
        peer.output()
    );
    let vmconn = |h: &Host, name: &str| {
        Proc::spawn(
            name,
            py(
                h,
                &svc,
                &[
                    "vmconn",
                    CLIENT_IP,
                    &VM_PEER_PORT.to_string(),
                    &VM_SRC_PORT.to_string(),
                    &vm_bulk,
                    &rate,
                ],
            ),
            &dir.join(format!("{name}.log")),
        )
    };
    let mut pvm_conn = vmconn(&net.pvm, "pvm-conn");
    let mut svm_conn = vmconn(&net.svm, "svm-conn");
    let mut client = Proc::spawn(
        "fclient",
        py(
            &net.client,
            &svc,
            &["fclient", VM_IP, &BULK.to_string(), &rate],
        ),
        &dir.join("fclient.log"),
    );
    let all_logs = |_: &Proc, _: &Proc| dump_logs(&dir);

    // Mid-transfer: a third of every direction through.
    let mid = wait_until(Duration::from_secs(30), || {
        let c = progress(&client.output());
        let p = progress(&peer.output());
        c.get("down").copied().unwrap_or(0) >= BULK / 3
            && c.get("up").copied().unwrap_or(0) >= BULK / 3
            && c.get("hdown").copied().unwrap_or(0) >= BULK / 8
            && p.get("got").copied().unwrap_or(0) >= VM_BULK / 3
            && p.get("sent").copied().unwrap_or(0) >= VM_BULK / 3
    });
    assert!(
        mid,
        "transfers did not get going\n{}",
        all_logs(&primary, &secondary)
    );
    let before = progress(&client.output());
    let rr_before = before.get("rr").copied().unwrap_or(0);
    if dies == Dies::Primary {
        // So far the switch knows the VM's MAC only behind the primary: the standby secondary
        // sent nothing onto it.
        assert_eq!(
            net.fdb_port(VM_MAC).as_deref(),
            Some("pn"),
            "{}",
            all_logs(&primary, &secondary)
        );
    }

    // The host dies: its proxy is killed and its VM loses its link.
    let t_kill = Instant::now();
    let (dead_vm, survivor) = match dies {
        Dies::Primary => {
            primary.signal(libc::SIGKILL);
            (&net.pvm, &mut secondary)
        }
        Dies::Secondary => {
            secondary.signal(libc::SIGKILL);
            (&net.svm, &mut primary)
        }
    };
    dead_vm.sh(&["ip", "link", "set", "eth0", "down"]);
    // Detection takes a while in real life: meanwhile the client's frames go to the dead
    // host's switch port (the switch still has the VM's MAC there) and are lost.
    std::thread::sleep(DETECTION);
    let t_trigger = Instant::now();
    let f = ctl(survivor_sock, &["failover"])
        .unwrap_or_else(|e| panic!("failover: {e}\n{}", survivor.output()));
    assert_eq!(f["failovers"].as_u64(), Some(1), "{f}");
    println!(
        "{label}: {dies:?} died at down={} up={} rr={}; failover {:.0} ms after the kill",
        before.get("down").unwrap_or(&0),
        before.get("up").unwrap_or(&0),
        rr_before,
        t_trigger.duration_since(t_kill).as_secs_f64() * 1e3
    );

    // Everything completes on the same connections.
    let cst = client.wait(Duration::from_secs(60));
    let pst = peer_wait(&peer);
    let live_conn = match dies {
        Dies::Primary => &mut svm_conn,
        Dies::Secondary => &mut pvm_conn,
    };
    let vst = live_conn.wait(Duration::from_secs(30));
    let t_done = t_trigger.elapsed();
    let (primary_ref, secondary_ref) = (&primary, &secondary);
    let ctx = || all_logs(primary_ref, secondary_ref);
    let r = results(&client.output());
    assert!(
        cst.is_some_and(|s| s.success()),
        "client {cst:?}\n{}",
        ctx()
    );
    assert_eq!(r.get("down_ok").map(String::as_str), Some("1"), "{}", ctx());
    assert_eq!(r.get("up_ok").map(String::as_str), Some("1"), "{}", ctx());
    assert_eq!(
        r.get("hdown_ok").map(String::as_str),
        Some("1"),
        "{}",
        ctx()
    );
    assert_eq!(
        r.get("fresh_ok").map(String::as_str),
        Some("1"),
        "{}",
        ctx()
    );
    assert!(!r.contains_key("rr_error"), "{}", ctx());
    let rr: usize = r.get("rr_ok").and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(
        rr > rr_before + 10,
        "rr session did not go on: {rr}\n{}",
        ctx()
    );
    assert!(pst, "vmpeer did not finish\n{}", ctx());
    let rp = results(&peer.output());
    assert_eq!(
        rp.get("peer_ok").map(String::as_str),
        Some("1"),
        "{}",
        ctx()
    );
    assert!(
        vst.is_some_and(|s| s.success()),
        "vm conn {vst:?}\n{}",
        ctx()
    );
    let rv = results(&live_conn.output());
    assert_eq!(rv.get("vm_ok").map(String::as_str), Some("1"), "{}", ctx());

    // The failover report: gap and held bytes, bounded generously.
    let got_report = wait_until(Duration::from_secs(15), || {
        !events_named(&events.output(), "failover-report").is_empty()
    });
    assert!(got_report, "no failover-report event\n{}", ctx());
    let reports = events_named(&events.output(), "failover-report");
    let gap_ns = reports
        .iter()
        .filter_map(|r| r["gap_ns"].as_u64())
        .max()
        .unwrap_or(u64::MAX);
    println!(
        "{label}: failover gap {:.1} ms (trigger → first frame on the new path), reports {}",
        gap_ns as f64 / 1e6,
        serde_json::Value::Array(reports.clone())
    );
    assert!(gap_ns < 5_000_000_000, "gap {gap_ns} ns\n{}", ctx());
    let stats = ctl(survivor_sock, &["stats"]).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    match dies {
        Dies::Primary => {
            // The takeover was announced from the SVM's MAC for the service address, and the
            // switch now sends the VM's MAC to the secondary.
            let garp = format!("ARP op=1 src={VM_MAC} sha={VM_MAC} spa={VM_IP} tpa={VM_IP}");
            assert!(arp.output().contains(&garp), "no gratuitous ARP\n{}", ctx());
            assert!(total(&stats, "announced") >= 1, "{stats}");
            assert_eq!(net.fdb_port(VM_MAC).as_deref(), Some("sn"), "{}", ctx());
            // Frames flooded to the standby's nic before the switch learned were dropped.
            assert!(total(&stats, "drop_standby") >= 1, "{stats}");
            assert!(total(&stats, "rewritten") > 0, "{stats}");
        }
        Dies::Secondary => {
            assert!(total(&stats, "released_uncompared") > 0, "{stats}");
        }
    }
    println!(
        "{label}: all transfers complete {:.1}s after the trigger ({} rr requests); {survivor_name} stats {}",
        t_done.as_secs_f64(),
        rr,
        stats["dataplane"]["totals"]
    );

    // The survivor stops cleanly with balanced accounting.
    let survivor = match dies {
        Dies::Primary => &mut secondary,
        Dies::Secondary => &mut primary,
    };
    survivor.signal(libc::SIGTERM);
    let st = survivor.wait(Duration::from_secs(20));
    let out = survivor.output();
    assert!(
        st.is_some_and(|s| s.success()),
        "{survivor_name} exit {st:?}\n{out}"
    );
    assert!(
        out.lines()
            .any(|l| l.starts_with("accounting") && l.ends_with("balanced")),
        "{out}"
    );
    drop(events);
    drop(arp);
    drop(veth);
    drop(net);
    println!("{label}: total {:.1}s", t_start.elapsed().as_secs_f64());
}

/// Every log of the scenario (proxies, clients, events), for assertion messages.
fn dump_logs(dir: &Path) -> String {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    names.sort();
    names
        .iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .map(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            // The proxies' status lines and PROGRESS lines make logs long: keep the tail.
            let tail: Vec<&str> = text.lines().rev().take(60).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            format!("--- {}\n{}\n", p.display(), tail.join("\n"))
        })
        .collect()
}

/// Wait (bounded) for the vmpeer to print its results.
fn peer_wait(p: &Proc) -> bool {
    wait_until(Duration::from_secs(30), || {
        p.output().contains("RESULT peer_ok")
    })
}

/// Heartbeat period and timeout of the link-loss cases.
const HEARTBEAT_MS: u64 = 100;
const HEARTBEAT_TIMEOUT_MS: u64 = 1000;

#[test]
fn link_silence_socket_link_auto_fails_over() {
    heartbeat("fh", false, true);
}

#[test]
fn link_silence_port_link_waits() {
    heartbeat("fi", true, false);
}

/// The primary proxy freezes (SIGSTOP: its link stays up but says nothing): the secondary
/// must raise `link-silent` within the timeout (never before it) and, with `auto`, fail over;
/// with `wait` it only reports. When the primary comes back the link is heard again
/// (`link-up`): split-brain is reported, not resolved.
fn heartbeat(label: &str, port_link: bool, auto: bool) {
    if !lab_available("pipeline_failover") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let tag = format!("{label}{}", std::process::id() % 100_000);
    let scratch = TmpDir::new(&format!("colo-failover-{tag}"));
    let dir = scratch.0.clone();
    let net = SwitchNet::new(&tag);
    let veth = port_link.then(|| {
        let v = VethPair::new(
            &format!("la{tag}"),
            &format!("lb{tag}"),
            colo_proxy::pipeline::topology::LINK_MTU,
        );
        net.sec.adopt(&v.b);
        v
    });
    let ends = veth
        .as_ref()
        .map(|v| (v.a.clone(), v.b.clone()))
        .unwrap_or_default();
    let link = if port_link {
        Link::Port
    } else {
        Link::Socket(free_port(), free_port())
    };
    let lt = |p| link_toml(link, &net, (&ends.0, &ends.1), p);
    let action = if auto { "auto" } else { "wait" };
    let fo = format!(
        "[failover]\nheartbeat_ms = {HEARTBEAT_MS}\nheartbeat_timeout_ms = {HEARTBEAT_TIMEOUT_MS}\non_link_loss = \"{action}\"\n"
    );
    let pcfg = dir.join("primary.toml");
    let scfg = dir.join("secondary.toml");
    std::fs::write(&pcfg, primary_toml(&tag, &dir, &net, &lt(true), &fo)).unwrap();
    std::fs::write(&scfg, secondary_toml(&tag, &dir, &net, &lt(false), &fo)).unwrap();
    let (mut primary, mut secondary) = start_pair(&net, &dir, &pcfg, &scfg, link);
    let ssock = dir.join("secondary.sock");
    let events = ctl_events(&ssock, &dir, "events");
    let ctx = || dump_logs(&dir);

    // A healthy, idle link: heartbeats flow both ways and nothing is reported silent.
    let heard = wait_until(Duration::from_secs(10), || {
        ctl(&ssock, &["stats"]).is_ok_and(|s| {
            total(&s, "heartbeats_out") >= 5 && (!port_link || total(&s, "heartbeats_in") >= 5)
        })
    });
    assert!(heard, "no heartbeats\n{}", ctx());
    std::thread::sleep(Duration::from_millis(2 * HEARTBEAT_TIMEOUT_MS));
    assert!(
        events_named(&events.output(), "link-silent").is_empty(),
        "silent while healthy\n{}",
        ctx()
    );

    let t_stop = Instant::now();
    primary.signal(libc::SIGSTOP);
    let silent = wait_until(Duration::from_secs(10), || {
        !events_named(&events.output(), "link-silent").is_empty()
    });
    let after = t_stop.elapsed();
    primary.signal(libc::SIGCONT);
    assert!(silent, "no link-silent event\n{}", ctx());
    let ev = events_named(&events.output(), "link-silent")[0].clone();
    println!(
        "{label}: link-silent {:.0} ms after the primary froze (timeout {HEARTBEAT_TIMEOUT_MS} ms): {ev}",
        after.as_secs_f64() * 1e3
    );
    assert_eq!(ev["link"], "mirror", "{ev}");
    // Never before the timeout; within it plus housekeeping and event latency.
    let (fired_ns, last_ns) = (ev["time_ns"].as_u64(), ev["last_heard_ns"].as_u64());
    let (fired_ns, last_ns) = (fired_ns.unwrap_or(0), last_ns.unwrap_or(u64::MAX));
    assert!(
        fired_ns.saturating_sub(last_ns) >= HEARTBEAT_TIMEOUT_MS * 1_000_000,
        "{ev}"
    );
    assert!(
        after < Duration::from_millis(HEARTBEAT_TIMEOUT_MS + 1500),
        "{after:?}\n{}",
        ctx()
    );
    let failed_over = wait_until(Duration::from_secs(5), || {
        events_named(&events.output(), "failover")
            .iter()
            .any(|e| e["source"] == "link-loss")
    });
    let stats = ctl(&ssock, &["stats"]).unwrap_or_else(|e| panic!("{e}\n{}", ctx()));
    if auto {
        assert!(failed_over, "auto did not fail over\n{}", ctx());
        assert_eq!(stats["mgmt"]["failovers"].as_u64(), Some(1), "{stats}");
    } else {
        assert!(!failed_over, "wait failed over\n{}", ctx());
        assert_eq!(stats["mgmt"]["failovers"].as_u64(), Some(0), "{stats}");
    }
    assert_eq!(stats["mgmt"]["link_silent"].as_u64(), Some(1), "{stats}");

    // The primary is back: the secondary hears it again and says so.
    let back = wait_until(Duration::from_secs(10), || {
        events_named(&events.output(), "link-up")
            .iter()
            .any(|e| e["link"] == "mirror")
    });
    assert!(back, "no link-up after the primary came back\n{}", ctx());
    stop_both(&mut primary, &mut secondary);
    drop(events);
    drop(veth);
}
