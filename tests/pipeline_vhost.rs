//! vhost-user ports in a real `colo-proxy run` pipeline.
//!
//! The primary's `pvm` port and the secondary's `svm` port are `net_vhost` backends (vhost-user
//! servers on UNIX sockets). The "guests" are one more DPDK process — this test binary
//! re-executed — with two `net_virtio_user` ports connected to those sockets; it echoes every
//! UDP datagram back with MAC, IP and port swapped, as a UDP echo server would. The ports have
//! two queue pairs and the guest answers on the second, so the proxy must poll every queue. A client in a
//! network namespace sends datagrams through the primary's `nic` (`net_af_packet` on a veth);
//! they cross the vhost-user port into the guest, the echoes come back over it, through the
//! redirector and the compare (matched against the secondary's copy that crossed the SVM's
//! vhost-user port the same way) and out of the nic to the client.
//!
//! Needs root and `ip netns` (for the client); otherwise it prints why and passes.

mod netns_support;
mod pipeline_support;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use colo_proxy::dpdk::{Eal, Mbuf, MbufBurst, Mempool, Port, PortConfig};
use netns_support::*;
use pipeline_support::*;

/// Env var that makes this binary the guest: its value is `pvm_sock,svm_sock,stop_file`.
const GUEST_ENV: &str = "COLO_VHOST_GUEST";
/// Datagrams the client sends.
const DGRAMS: usize = 400;
const UDP_PORT: u16 = 7777;
/// Queue pairs of each vhost-user port.
const QUEUES: u16 = 2;

/// Swap Ethernet addresses, IPv4 addresses and UDP ports in place (checksums are sums of the
/// same words, so they stay valid). False for anything but IPv4/UDP.
fn swap_udp(f: &mut [u8]) -> bool {
    if f.len() < 14 + 20 + 8 || f[12..14] != [0x08, 0x00] || f[14 + 9] != 17 {
        return false;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    if ihl < 20 || f.len() < 14 + ihl + 8 {
        return false;
    }
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    for i in 0..4 {
        f.swap(14 + 12 + i, 14 + 16 + i);
    }
    let u = 14 + ihl;
    for i in 0..2 {
        f.swap(u + i, u + 2 + i);
    }
    true
}

/// The guest process: echo UDP on both virtio_user ports until the stop file appears.
fn guest(spec: &str) {
    let parts: Vec<&str> = spec.split(',').collect();
    let (pvm_sock, svm_sock, stop) = (parts[0], parts[1], Path::new(parts[2]));
    let tag = std::process::id();
    let args = vec![
        "--lcores".to_string(),
        "0@1".into(),
        "--no-pci".into(),
        "--no-huge".into(),
        "-m".into(),
        "512".into(),
        "--no-shconf".into(),
        "--file-prefix".into(),
        format!("colo-vguest-{tag}"),
        "--log-level".into(),
        "lib.eal:warning".into(),
        "--vdev".into(),
        format!("net_virtio_user0,path={pvm_sock},queues={QUEUES}"),
        "--vdev".into(),
        format!("net_virtio_user1,path={svm_sock},queues={QUEUES}"),
    ];
    let _eal = Eal::init(&args).expect("guest EAL");
    let pool = Mempool::new("guest_pool", 4095).expect("guest pool");
    let mut ports = Vec::new();
    for name in ["net_virtio_user0", "net_virtio_user1"] {
        let id = Port::id_by_name(name).expect("virtio port");
        let cfg = PortConfig {
            rx_queues: QUEUES,
            tx_queues: QUEUES,
            rx_desc: 256,
            tx_desc: 256,
            promiscuous: false,
        };
        let mut p = Port::open(id, &cfg, &pool).expect("open virtio port");
        p.start().expect("start virtio port");
        let rx: Vec<_> = (0..QUEUES).map(|q| p.rx_queue(q).expect("rxq")).collect();
        // Echoes leave on the last queue only: the proxy must poll every queue of its
        // vhost-user port, not just queue 0.
        let tx = p.tx_queue(QUEUES - 1).expect("txq");
        ports.push((p, rx, tx, 0u64, 0u64, 0u64));
    }
    println!("GUEST READY");
    let mut burst = MbufBurst::<32>::new();
    let mut out = MbufBurst::<32>::new();
    let mut idle = 0u32;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !stop.exists() && Instant::now() < deadline {
        let mut work = 0;
        for (_, rx, tx, nrx, ntx, nother) in ports.iter_mut() {
            let n: usize = rx.iter_mut().map(|q| q.rx_burst(&mut burst)).sum();
            work += n;
            *nrx += n as u64;
            for mut m in burst.drain() {
                let ok = m.try_data_mut().map(swap_udp).unwrap_or(false);
                if ok {
                    let _ = out.push(m);
                } else {
                    *nother += 1;
                    drop::<Mbuf>(m);
                }
            }
            let mut sent = 0;
            for _ in 0..100 {
                sent += tx.tx_burst(&mut out);
                if out.is_empty() {
                    break;
                }
            }
            *ntx += sent as u64;
            out.clear();
        }
        if work == 0 {
            idle += 1;
            if idle > 100 {
                std::thread::sleep(Duration::from_micros(100));
            }
        } else {
            idle = 0;
        }
    }
    for (i, (p, _, _, nrx, ntx, nother)) in ports.iter().enumerate() {
        let name = ["pvm", "svm"][i];
        let st = p.stats().expect("stats");
        println!("RESULT {name}_rx={nrx}");
        println!("RESULT {name}_tx={ntx}");
        println!("RESULT {name}_other={nother}");
        println!("RESULT {name}_port_opackets={}", st.opackets);
    }
}

fn primary_toml(tag: &str, nic: &str, dir: &Path, mirror: u16, sec: u16) -> String {
    format!(
        r#"role = "primary"
{common}[ports.nic]
vdev = "net_af_packet0,iface={nic}"
[ports.pvm]
vdev = "net_vhost0,iface={dir}/pvm.sock,queues=2,client=0"
[link]
kind = "socket"
mirror = {{ addr = "tcp:127.0.0.1:{mirror}", mode = "server" }}
secondary_out = {{ addr = "tcp:127.0.0.1:{sec}", mode = "server" }}
[lcores]
main = 0
mirror = 1
redirector = 1
compare = 1
"#,
        common = common_toml(&format!("colo-vhp-{tag}"), dir, "primary"),
        dir = dir.display()
    )
}

fn secondary_toml(tag: &str, dir: &Path, mirror: u16, sec: u16) -> String {
    format!(
        r#"role = "secondary"
{common}[ports.svm]
vdev = "net_vhost0,iface={dir}/svm.sock,queues=2,client=0"
[link]
kind = "socket"
mirror = {{ addr = "tcp:127.0.0.1:{mirror}", mode = "client" }}
secondary_out = {{ addr = "tcp:127.0.0.1:{sec}", mode = "client" }}
reconnect_ms = 100
[lcores]
main = 0
rewriter = 1
"#,
        common = common_toml(&format!("colo-vhs-{tag}"), dir, "secondary"),
        dir = dir.display()
    )
}

fn port_line<'a>(out: &'a str, port: &str) -> &'a str {
    out.lines()
        .find(|l| l.starts_with(&format!("port {port} ")))
        .unwrap_or("")
}

#[test]
fn vhost_user_ports_carry_traffic_both_ways() {
    if let Ok(spec) = std::env::var(GUEST_ENV) {
        guest(&spec);
        return;
    }
    if !lab_available("pipeline_vhost") {
        return;
    }
    let t_start = Instant::now();
    let tag = format!("{}", std::process::id() % 100_000);
    let scratch = TmpDir::new(&format!("colo-vhost-{tag}"));
    let dir = scratch.0.clone();
    let py = dir.join("svc.py");
    std::fs::write(&py, SVC_PY).unwrap();
    let net = Net::new(&format!("v{tag}"), &["client"]);
    let (mirror, sec) = (free_port(), free_port());
    let pcfg = dir.join("primary.toml");
    let scfg = dir.join("secondary.toml");
    std::fs::write(
        &pcfg,
        primary_toml(&tag, &net.host("client").root_if, &dir, mirror, sec),
    )
    .unwrap();
    std::fs::write(&scfg, secondary_toml(&tag, &dir, mirror, sec)).unwrap();

    let mut primary = proxy("primary", &pcfg, &dir, None);
    let psock = dir.join("primary.sock");
    let ssock = dir.join("secondary.sock");
    assert!(
        wait_until(Duration::from_secs(20), || psock.exists()),
        "primary did not come up\n{}",
        primary.output()
    );
    let mut secondary = proxy("secondary", &scfg, &dir, None);
    assert!(
        wait_until(Duration::from_secs(20), || ssock.exists()
            && established(mirror) >= 2
            && established(sec) >= 2),
        "link did not come up\n{}",
        logs(&primary, &secondary)
    );
    // The vhost-user servers listen once their ports started.
    let (pvm_vs, svm_vs) = (dir.join("pvm.sock"), dir.join("svm.sock"));
    assert!(
        pvm_vs.exists() && svm_vs.exists(),
        "no vhost-user sockets\n{}",
        logs(&primary, &secondary)
    );

    let stop = dir.join("guest.stop");
    let mut gcmd = Command::new(std::env::current_exe().unwrap());
    gcmd.args([
        "--exact",
        "vhost_user_ports_carry_traffic_both_ways",
        "--nocapture",
        "--test-threads",
        "1",
    ])
    .env(
        GUEST_ENV,
        format!(
            "{},{},{}",
            pvm_vs.display(),
            svm_vs.display(),
            stop.display()
        ),
    );
    let mut guest = Proc::spawn("guest", gcmd, &dir.join("guest.log"));
    assert!(
        wait_until(Duration::from_secs(20), || guest
            .output()
            .contains("GUEST READY")),
        "guest did not start\n{}\n{}",
        guest.output(),
        logs(&primary, &secondary)
    );
    // vhost-user negotiation finishes asynchronously after the ports start.
    std::thread::sleep(Duration::from_millis(500));

    let cmd = net.host("client").cmd(&[
        "python3",
        py.to_str().unwrap(),
        "udp",
        VM_IP,
        &UDP_PORT.to_string(),
        &DGRAMS.to_string(),
    ]);
    let (ok, out) = run_limited(cmd, Duration::from_secs(60));
    let r = results(&out);
    let p =
        ctl(&psock, &["stats"]).unwrap_or_else(|e| panic!("{e}\n{}", logs(&primary, &secondary)));
    let ctx = format!(
        "client:\n{out}\nprimary stats {p}\nguest:\n{}\n{}",
        guest.output(),
        logs(&primary, &secondary)
    );
    assert!(ok, "{ctx}");
    assert_eq!(
        r.get("udp_echoed").map(String::as_str),
        Some(&*DGRAMS.to_string()),
        "{ctx}"
    );
    assert_eq!(r.get("udp_bad").map(String::as_str), Some("0"), "{ctx}");
    assert_eq!(total(&p, "divergences"), 0, "{ctx}");
    assert_eq!(total(&p, "released_matched"), DGRAMS as u64, "{ctx}");

    std::fs::write(&stop, b"").unwrap();
    let gst = guest.wait(Duration::from_secs(20));
    let gout = guest.output();
    let g = results(&gout);
    assert!(
        gst.is_some_and(|s| s.success()),
        "guest exit {gst:?}\n{gout}"
    );
    for side in ["pvm", "svm"] {
        for what in ["rx", "tx"] {
            assert_eq!(
                g.get(&format!("{side}_{what}")).map(String::as_str),
                Some(&*DGRAMS.to_string()),
                "guest {side} {what}\n{gout}"
            );
        }
    }

    let (po, so) = stop_both(&mut primary, &mut secondary);
    let all = format!("--- primary\n{po}\n--- secondary\n{so}");
    // The vhost-user ports' own counters: every datagram out to the guest and back.
    let n = DGRAMS;
    assert!(
        port_line(&po, "pvm").starts_with(&format!("port pvm      rx {n} tx {n} ")),
        "{all}"
    );
    assert!(
        port_line(&so, "svm").starts_with(&format!("port svm      rx {n} tx {n} ")),
        "{all}"
    );
    drop(net);
    println!(
        "vhost: {n} datagrams each way in {:.1}s",
        t_start.elapsed().as_secs_f64()
    );
}
