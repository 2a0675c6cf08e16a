//! The loader never panics on arbitrary input (invariant 4: untrusted config → clear error).

use colo_proxy::config::Config;
use proptest::prelude::*;

const KEYS: &[&str] = &[
    "role",
    "[eal]",
    "args",
    "memory",
    "[ports.nic]",
    "[ports.pvm]",
    "[ports.svm]",
    "[ports.link]",
    "pci",
    "vdev",
    "rx_desc",
    "tx_queues",
    "[link]",
    "kind",
    "port",
    "ether_type",
    "peer_mac",
    "mirror",
    "secondary_out",
    "[compare_sockets]",
    "primary_in",
    "secondary_in",
    "outdev",
    "notify_dev",
    "[lcores]",
    "main",
    "redirector",
    "compare",
    "rewriter",
    "[compare]",
    "shards",
    "timeout_ms",
    "[[compare.bypass]]",
    "proto",
    "ports",
    "prefix",
    "[mgmt]",
    "control_tcp",
    "control_token",
    "[mgmt.qmp]",
    "socket",
    "[rings]",
    "size",
    "[mempool]",
    "mbufs",
    "cache",
];
const VALUES: &[&str] = &[
    "\"primary\"",
    "\"secondary\"",
    "\"compare\"",
    "0",
    "1",
    "-1",
    "64",
    "4294967295",
    "9223372036854775807",
    "[\"-l\", \"0-3\"]",
    "[\"-c\", \"0xffffffffffffffffffff\"]",
    "[\"--lcores\", \"(0-1)@0,((2\"]",
    "[\"-l\"]",
    "\"0000:01:00.0\"",
    "\"net_ring0\"",
    "\"port\"",
    "\"socket\"",
    "{ addr = \"tcp:127.0.0.1:1\" }",
    "{ addr = \"unix:\" }",
    "[1, 2, 3]",
    "[]",
    "\"tcp\"",
    "\"5-1\"",
    "\"::/0\"",
    "\"10.0.0.0/33\"",
    "\"0.0.0.0:1\"",
    "true",
    "\"\"",
];

fn tomlish() -> impl Strategy<Value = String> {
    prop::collection::vec(
        (prop::sample::select(KEYS), prop::sample::select(VALUES)),
        0..24,
    )
    .prop_map(|lines| {
        lines
            .into_iter()
            .map(|(k, v)| {
                if k.starts_with('[') {
                    format!("{k}\n")
                } else {
                    format!("{k} = {v}\n")
                }
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_strings_never_panic(s in ".*") {
        let _ = Config::from_toml_str(&s);
    }

    #[test]
    fn arbitrary_bytes_as_text_never_panic(b in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Config::from_toml_str(&String::from_utf8_lossy(&b));
    }

    #[test]
    fn schema_shaped_documents_never_panic(s in tomlish()) {
        if let Ok(c) = Config::from_toml_str(&s) {
            // A config that loads must also build EAL args and a summary.
            let args = c.eal_args_with_probe(&[], || false);
            prop_assert_eq!(args[0].as_str(), "colo-proxy");
            let _ = colo_proxy::cli::check_config::summary(&c, &args);
        }
    }
}
