//! EAL argument building: file args + memory mode + port devices + command-line overrides,
//! and parsing of the lcore set (`-l`, `--lcores`, `-c`) for validation.
//!
//! How overrides combine ([`merge`]): the arguments are read as options (an option and its
//! value, `-l 0-1`, `-l0-1` and `--lcores=0-1` alike). An override of a single-valued option
//! removes every occurrence of that option from the file's list (aliases count as the same
//! option: `-l`/`-c`/`--lcores`; `-m`/`--socket-mem`; `--main-lcore`/`--master-lcore`) and
//! is appended. Repeatable options (`--vdev`, `-a`/`--allow`, `-b`/`--block`, `-d`,
//! `--log-level`, `--trace`) are appended, except that a `--vdev` whose device name (before
//! the first comma) equals an earlier one replaces it.

use std::collections::BTreeSet;

use super::{Config, Memory, PortDevice};

/// Program name put first in the EAL argument list.
pub const PROGRAM: &str = "colo-proxy";

/// Largest lcore id we accept (DPDK's default RTE_MAX_LCORE is 128; some builds use more).
pub const MAX_LCORE_ID: u32 = 1023;

const SHORT_WITH_VALUE: &[&str] = &["-c", "-l", "-n", "-m", "-r", "-a", "-b", "-d", "-s", "-w"];
const LONG_WITH_VALUE: &[&str] = &[
    "--lcores",
    "--main-lcore",
    "--master-lcore",
    "--service-coremask",
    "--service-corelist",
    "--vdev",
    "--allow",
    "--block",
    "--pci-whitelist",
    "--pci-blacklist",
    "--socket-mem",
    "--socket-limit",
    "--file-prefix",
    "--huge-dir",
    "--proc-type",
    "--log-level",
    "--iova-mode",
    "--base-virtaddr",
    "--vfio-intr",
    "--vfio-vf-token",
    "--mbuf-pool-ops-name",
    "--trace",
    "--trace-dir",
    "--trace-bufsz",
    "--trace-mode",
    "--force-max-simd-bitwidth",
];
const REPEATABLE: &[&str] = &["--vdev", "-a", "-b", "-d", "--log-level", "--trace"];

/// One EAL option with its value, as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EalOpt {
    /// Canonical option name (aliases folded, e.g. `-c`/`--lcores` → `-l`).
    pub key: String,
    /// The value, if the option takes one.
    pub value: Option<String>,
    /// The original tokens (one or two).
    pub tokens: Vec<String>,
}

fn canonical(name: &str) -> &str {
    match name {
        "-c" | "--lcores" => "-l",
        "--socket-mem" => "-m",
        "--master-lcore" => "--main-lcore",
        "--allow" | "--pci-whitelist" | "-w" => "-a",
        "--block" | "--pci-blacklist" => "-b",
        other => other,
    }
}

/// Split an argument list into options.
pub fn parse_opts(args: &[String]) -> Vec<EalOpt> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let tok = &args[i];
        i += 1;
        let (name, inline) = if let Some(rest) = tok.strip_prefix("--") {
            match rest.split_once('=') {
                Some((n, v)) => (format!("--{n}"), Some(v.to_string())),
                None => (tok.clone(), None),
            }
        } else if tok.starts_with('-') && tok.len() > 2 && tok.is_char_boundary(2) {
            (tok[..2].to_string(), Some(tok[2..].to_string()))
        } else {
            (tok.clone(), None)
        };
        let takes_value =
            SHORT_WITH_VALUE.contains(&name.as_str()) || LONG_WITH_VALUE.contains(&name.as_str());
        let mut tokens = vec![tok.clone()];
        let value = if inline.is_some() {
            inline
        } else if takes_value && i < args.len() {
            tokens.push(args[i].clone());
            i += 1;
            Some(args[i - 1].clone())
        } else {
            None
        };
        out.push(EalOpt {
            key: canonical(&name).to_string(),
            value,
            tokens,
        });
    }
    out
}

fn vdev_name(opt: &EalOpt) -> Option<&str> {
    if opt.key != "--vdev" {
        return None;
    }
    opt.value
        .as_deref()
        .map(|v| v.split(',').next().unwrap_or(v))
}

/// Merge `overrides` into `base` (rules in the module docs).
pub fn merge(base: &[String], overrides: &[String]) -> Vec<String> {
    let mut opts = parse_opts(base);
    for o in parse_opts(overrides) {
        if let Some(name) = vdev_name(&o) {
            opts.retain(|b| vdev_name(b) != Some(name));
        } else if !REPEATABLE.contains(&o.key.as_str()) {
            opts.retain(|b| b.key != o.key);
        }
        opts.push(o);
    }
    opts.into_iter().flat_map(|o| o.tokens).collect()
}

fn has(opts: &[EalOpt], key: &str) -> bool {
    opts.iter().any(|o| o.key == key)
}

/// Flags the memory mode adds.
fn memory_flags(mode: Memory, free_hugepages: impl FnOnce() -> bool) -> Vec<&'static str> {
    const NO_HUGE: [&str; 4] = ["--no-huge", "-m", "1024", "--no-shconf"];
    match mode {
        Memory::Hugepages => vec![],
        Memory::NoHuge => NO_HUGE.to_vec(),
        Memory::Auto if free_hugepages() => vec!["--in-memory"],
        Memory::Auto => NO_HUGE.to_vec(),
    }
}

/// See [`Config::eal_args`].
pub(super) fn build_args(
    cfg: &Config,
    overrides: &[String],
    free_hugepages: impl FnOnce() -> bool,
) -> Vec<String> {
    let mut base = cfg.eal.args.clone();
    let probe_opts = parse_opts(&[base.as_slice(), overrides].concat());
    // The memory convenience only fills in when nobody chose memory options explicitly.
    let explicit = ["--no-huge", "--in-memory", "-m", "--no-shconf"]
        .iter()
        .any(|k| has(&probe_opts, k));
    if !explicit {
        base.extend(
            memory_flags(cfg.eal.memory, free_hugepages)
                .into_iter()
                .map(String::from),
        );
    }
    let blocklist = has(&probe_opts, "-b");
    let allowed = |pci: &str| {
        probe_opts
            .iter()
            .any(|o| o.key == "-a" && o.value.as_deref().is_some_and(|v| v.starts_with(pci)))
    };
    for port in cfg.ports.values() {
        match &port.device {
            PortDevice::Vdev(d) => base.extend(["--vdev".to_string(), with_driver_defaults(d)]),
            // Allow-list PCI ports so EAL does not take every NIC (not mixable with -b).
            PortDevice::Pci(p) if !blocklist && !allowed(p) => {
                base.extend(["-a".to_string(), p.clone()])
            }
            PortDevice::Pci(_) | PortDevice::Wire(_) => {}
        }
    }
    let mut out = vec![PROGRAM.to_string()];
    out.extend(merge(&base, overrides));
    out
}

/// Frames in each `net_af_packet` ring unless the vdev sets `framecnt`: DPDK's 512 hold
/// about 6 ms of a 1 Gbit/s stream, and an lcore that shares its core (or backs off when idle)
/// is away longer than that; the kernel then drops, and every drop costs the connection a
/// retransmission on one VM only. 4096 frames of 2 KiB are 8 MiB of kernel memory per ring.
pub const AF_PACKET_FRAMES: u32 = 4096;

/// A port's vdev string with the proxy's driver defaults added where the user set none
/// (today: `framecnt` for `net_af_packet`).
pub fn with_driver_defaults(vdev: &str) -> String {
    let mut parts = vdev.split(',');
    let name = parts.next().unwrap_or("");
    let has = |key: &str| {
        vdev.split(',')
            .skip(1)
            .any(|kv| kv.split('=').next().map(str::trim) == Some(key))
    };
    if name.starts_with("net_af_packet") && !has("framecnt") {
        format!("{vdev},framecnt={AF_PACKET_FRAMES}")
    } else {
        vdev.to_string()
    }
}

/// Parse a corelist such as `0-3,5`.
pub fn parse_corelist(s: &str) -> Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    for part in s.split(',') {
        let part = part.trim();
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let num = |x: &str| -> Result<u32, String> {
            x.parse::<u32>()
                .ok()
                .filter(|&n| n <= MAX_LCORE_ID)
                .ok_or_else(|| format!("bad lcore id {x:?} in {s:?}"))
        };
        let (a, b) = (num(a)?, num(b)?);
        if a > b {
            return Err(format!("range {part:?} is reversed in {s:?}"));
        }
        set.extend(a..=b);
    }
    Ok(set)
}

/// Parse a hex coremask such as `0xf`.
pub fn parse_coremask(s: &str) -> Result<BTreeSet<u32>, String> {
    let hex = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    if hex.is_empty() || hex.len() > (MAX_LCORE_ID as usize + 1) / 4 {
        return Err(format!("bad coremask {s:?}"));
    }
    let mut set = BTreeSet::new();
    for (pos, c) in hex.chars().rev().enumerate() {
        let d = c
            .to_digit(16)
            .ok_or_else(|| format!("bad coremask {s:?}"))?;
        for bit in 0..4 {
            if d & (1 << bit) != 0 {
                set.insert(pos as u32 * 4 + bit);
            }
        }
    }
    Ok(set)
}

/// Parse the lcore ids of `--lcores`, e.g. `0-3`, `(0,1)@2,4@5`: the part before each `@`.
pub fn parse_lcores_opt(s: &str) -> Result<BTreeSet<u32>, String> {
    let mut set = BTreeSet::new();
    let mut depth = 0i32;
    let mut start = 0;
    let mut elems = Vec::new();
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                elems.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    elems.push(&s[start..]);
    for e in elems {
        let lcores = e.split('@').next().unwrap_or(e);
        let inner = lcores.trim_start_matches('(').trim_end_matches(')');
        set.extend(parse_corelist(inner)?);
    }
    Ok(set)
}

/// The lcore set given by the arguments (`None` when no `-l`/`--lcores`/`-c`).
pub fn lcore_set(args: &[String]) -> Result<Option<BTreeSet<u32>>, String> {
    let mut result = None;
    for o in parse_opts(args) {
        if o.key != "-l" {
            continue;
        }
        let v = o
            .value
            .as_deref()
            .ok_or_else(|| format!("{} needs a value", o.tokens[0]))?;
        let flag = o.tokens[0].as_str();
        let set = if flag.starts_with("-c") {
            parse_coremask(v)?
        } else if flag.starts_with("--lcores") {
            parse_lcores_opt(v)?
        } else {
            parse_corelist(v)?
        };
        if set.is_empty() {
            return Err(format!("{flag} selects no lcore"));
        }
        result = Some(set); // the last one wins, as in EAL
    }
    Ok(result)
}

/// The EAL main lcore: `--main-lcore` or the lowest lcore of the set.
pub fn main_lcore(args: &[String], set: &BTreeSet<u32>) -> Result<Option<u32>, String> {
    for o in parse_opts(args).iter().rev() {
        if o.key == "--main-lcore" {
            let v = o.value.as_deref().unwrap_or("");
            return v
                .parse::<u32>()
                .map(Some)
                .map_err(|_| format!("bad --main-lcore value {v:?}"));
        }
    }
    Ok(set.iter().next().copied())
}

/// Whether `/proc/meminfo` text shows free hugepages.
pub fn meminfo_has_free_hugepages(meminfo: &str) -> bool {
    meminfo.lines().any(|l| {
        l.strip_prefix("HugePages_Free:")
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > 0)
    })
}

/// The real probe: free hugepages in `/proc/meminfo`.
pub fn free_hugepages() -> bool {
    std::fs::read_to_string("/proc/meminfo")
        .map(|t| meminfo_has_free_hugepages(&t))
        .unwrap_or(false)
}
