//! Binds the system DPDK (>= 22.11, found with pkg-config): compiles the C shim that wraps
//! DPDK's static inline functions and generates Rust bindings for `csrc/wrapper.h`.
//! Linking is shared, so EAL autoloads the PMDs from Debian's plugin directory.

use std::env;
use std::path::PathBuf;
use std::process::Command;

const APT_HINT: &str = "install DPDK 22.11 development files: \
     `apt-get install libdpdk-dev libclang-dev pkg-config` (Debian 12)";

fn main() {
    for f in ["csrc/wrapper.h", "csrc/shim.h", "csrc/shim.c"] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    // Link flags (-lrte_* for the shared libs) come from the pkg-config crate.
    let lib = match pkg_config::Config::new()
        .atleast_version("22.11")
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => panic!("colo-proxy needs libdpdk >= 22.11 via pkg-config: {e}\nFix: {APT_HINT}"),
    };
    if !lib.version.starts_with("22.11") {
        println!(
            "cargo:warning=libdpdk {} found; colo-proxy is built and tested against 22.11",
            lib.version
        );
    }

    // The crate drops `-include rte_config.h` and `-march=...`; both must reach cc and bindgen
    // or the RTE_* config macros are missing and the inline SIMD paths differ.
    let out = Command::new("pkg-config")
        .args(["--cflags", "libdpdk"])
        .output()
        .unwrap_or_else(|e| panic!("cannot run pkg-config: {e}\nFix: {APT_HINT}"));
    if !out.status.success() {
        panic!(
            "pkg-config --cflags libdpdk failed: {}\nFix: {APT_HINT}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cflags: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    let mut cc = cc::Build::new();
    cc.file("csrc/shim.c")
        .include("csrc")
        .opt_level(3)
        .warnings(false);
    for f in &cflags {
        cc.flag(f);
    }
    cc.compile("colo_dpdk_shim");

    let bindings = bindgen::Builder::default()
        .header("csrc/wrapper.h")
        .clang_arg("-Icsrc")
        .clang_args(&cflags)
        .allowlist_function("shim_.*")
        // Rx interrupts: the lcore's DPDK epoll instance (idle lcores sleep on it).
        .allowlist_function("rte_intr_tls_epfd|rte_epoll_wait")
        .allowlist_function(
            "rte_(eal|lcore|eth|pktmbuf|mempool|ring|socket|get_|strerror|exit|version|zmalloc|\
             malloc|free|delay_us|mbuf|dev_|vdev_|thread_|telemetry_|tel_data_|pdump_).*",
        )
        .allowlist_type(
            "rte_mbuf|rte_mempool|rte_ring|rte_eth_.*|rte_ether_.*|rte_lcore_state_t|\
             rte_tel_data|rte_tel_.*|telemetry_cb|rte_epoll_event",
        )
        .allowlist_var(
            "RTE_(MAX_LCORE|MAX_ETHPORTS|MBUF_.*|PKTMBUF_HEADROOM|ETH_.*|ETHER_.*|RING_.*|\
             MEMPOOL_.*|LCORE_.*|VER_.*|TEL_.*|PDUMP_.*)",
        )
        .allowlist_var("SOCKET_ID_ANY|LCORE_ID_ANY|RING_F_.*|MEMPOOL_F_.*|rte_eth_fp_ops")
        // Packed ARP headers hold an aligned ether address (E0588); nothing here needs them.
        .opaque_type("rte_arp_ipv4|rte_arp_hdr")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(true)
        .generate_comments(false)
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| panic!("bindgen on csrc/wrapper.h failed: {e}\nFix: {APT_HINT}"));

    // rte_eth_from_rings (cross-connected ring ports) lives in the net_ring PMD, which is not in
    // libdpdk.pc's Libs; it is the same file EAL autoloads, so the library is loaded once.
    println!("cargo:rustc-link-lib=dylib=rte_net_ring");

    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    bindings
        .write_to_file(out_dir.join("dpdk_bindings.rs"))
        .expect("write bindings to OUT_DIR");
}
