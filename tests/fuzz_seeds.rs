//! The fuzz targets' seed corpora (fuzz/seeds/<target>/), built from the frames, streams and
//! messages the other tests use. This test fails when the committed seeds are missing or
//! stale; `COLO_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds` rewrites them. Each target's
//! input format is described at the top of its file in fuzz/fuzz_targets/.

mod compare_support;
mod rewrite_util;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use colo_proxy::buf::{PacketBuf, VecBuf};
use colo_proxy::control::xen::XenIn;
use colo_proxy::link::encap::{self, EncapConfig};
use colo_proxy::link::framing::FrameConfig;
use compare_support::{tcp, tcp_opts, udp, ACK, FIN, PSH, SYN};
use rewrite_util::Seg;

type Seeds = BTreeMap<&'static str, Vec<(String, Vec<u8>)>>;

/// Frames from the compare and rewriter test builders.
fn frames() -> Vec<(String, Vec<u8>)> {
    let ts = [etherparse::TcpOptionElement::Timestamp(7, 9)];
    let mut v = vec![
        ("tcp_syn".to_string(), tcp(1000, 0, SYN, b"")),
        (
            "tcp_data".into(),
            tcp(1001, 4242, ACK | PSH, b"hello world"),
        ),
        ("tcp_fin".into(), tcp(1012, 4242, ACK | FIN, b"")),
        ("tcp_ts".into(), tcp_opts(1001, 4242, ACK, b"abc", &ts)),
        ("udp".into(), udp(b"query")),
    ];
    let segs = [
        (
            "seg_sack",
            Seg::client(5, 6, ACK).ts(1, 2).sack(&[(3, 4), (9, 12)]),
        ),
        (
            "seg_v6_vlan",
            Seg::vm(7, 8, ACK | PSH).v6().vlan(5).data(20),
        ),
        (
            "seg_v6_ext",
            Seg {
                v6_ext: true,
                ..Seg::vm(1, 2, ACK).v6().data(3)
            },
        ),
        (
            "seg_ipopt",
            Seg {
                ip_opt_words: 2,
                ..Seg::client(1, 2, ACK).data(4)
            },
        ),
    ];
    v.extend(segs.into_iter().map(|(n, s)| (n.to_string(), s.build())));
    v
}

fn seeds() -> Seeds {
    let mut s = Seeds::new();
    let fr = frames();
    s.insert("wire_parse", fr.clone());
    // link_framing: [flags, cut] + a QEMU-framed stream of the frames.
    let mut framing = Vec::new();
    for vnet in [false, true] {
        let cfg = FrameConfig::with_vnet(vnet);
        let mut stream = vec![u8::from(vnet), 7];
        for (_, f) in &fr {
            let mut b = vec![0u8; cfg.encoded_len(f.len())];
            let n = cfg.encode(&mut b, if vnet { 10 } else { 0 }, f).unwrap();
            stream.extend_from_slice(&b[..n]);
        }
        framing.push((format!("stream_vnet{}", u8::from(vnet)), stream));
    }
    s.insert("link_framing", framing);
    // link_encap: [selector] + an encapsulated frame.
    let encaps = fr
        .iter()
        .map(|(n, f)| {
            let mut b = VecBuf::from_slice(f);
            encap::encap(&mut b, &EncapConfig::default(), 1, 0, 77).unwrap();
            (n.clone(), [&[1u8][..], b.data()].concat())
        })
        .collect();
    s.insert("link_encap", encaps);
    // xen_notify: [flags] + framed messages.
    let mut xen = Vec::new();
    for vnet in [false, true] {
        let mut stream = vec![u8::from(vnet)];
        for m in [XenIn::ProxyInit, XenIn::CheckpointDone] {
            let mut b = [0u8; 64];
            let n = m.encode(vnet, &mut b).unwrap();
            stream.extend_from_slice(&b[..n]);
        }
        xen.push((format!("init_done_vnet{}", u8::from(vnet)), stream));
    }
    s.insert("xen_notify", xen);
    // control_proto: request lines and ctl word forms (tests/mgmt_control.rs).
    let lines = [
        r#"{"cmd":"stats"}"#,
        r#"{"cmd":"flows","top":5,"token":"secret"}"#,
        r#"{"cmd":"checkpoint","reason":"manual"}"#,
        r#"{"cmd":"bypass","op":"add","proto":"tcp","ports":"22","prefix":"10.0.0.0/8"}"#,
        r#"{"cmd":"bypass","op":"del","index":0}"#,
        r#"{"cmd":"capture","op":"start"}"#,
        "bypass add udp 7000",
        "flows 10",
        "checkpoint-done",
    ];
    s.insert(
        "control_proto",
        lines
            .iter()
            .enumerate()
            .map(|(i, l)| (format!("line{i}"), l.as_bytes().to_vec()))
            .collect(),
    );
    // qmp: a session as QEMU speaks it (tests/mgmt_qmp.rs); 0 = checkpoint request, 1 = cut.
    let session = [
        &br#"{"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}}, "capabilities": ["oob"]}}"#[..],
        b"\r\n\x01",
        br#"{"return": {}}"#,
        b"\r\n\x00",
        br#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "RESUME"}"#,
        b"\r\n",
        br#"{"return": {}, "id": 1}"#,
        b"\r\n\x00",
        br#"{"error": {"class": "GenericError", "desc": "no"}, "id": 2}"#,
        b"\r\n",
        br#"{"event": "COLO_EXIT", "data": {"mode": "primary", "reason": "request"}}"#,
        b"\r\n",
    ]
    .concat();
    s.insert("qmp", vec![("session".into(), session)]);
    // config_load: the example configurations.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dpdk-config");
    let mut configs: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .map(|p| {
            let name = p.file_stem().unwrap().to_string_lossy().into_owned();
            (name, std::fs::read(&p).unwrap())
        })
        .collect();
    configs.sort();
    s.insert("config_load", configs);
    s
}

fn seed_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/seeds")
}

#[test]
fn committed_fuzz_seeds_match_the_test_builders() {
    let write = std::env::var("COLO_WRITE_FUZZ_SEEDS").is_ok_and(|v| v == "1");
    let mut stale = Vec::new();
    for (target, files) in seeds() {
        let dir = seed_dir().join(target);
        if write {
            std::fs::create_dir_all(&dir).unwrap();
        }
        for (name, bytes) in files {
            let p = dir.join(&name);
            if write {
                std::fs::write(&p, &bytes).unwrap();
            } else if std::fs::read(&p).ok().as_deref() != Some(&bytes[..]) {
                stale.push(p.display().to_string());
            }
        }
    }
    assert!(
        stale.is_empty(),
        "fuzz seeds missing or stale (COLO_WRITE_FUZZ_SEEDS=1 cargo test --test fuzz_seeds): {stale:?}"
    );
}
