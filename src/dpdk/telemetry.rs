//! DPDK telemetry commands and pdump. [`register`] adds a command to DPDK's telemetry socket
//! (`dpdk-telemetry.py`, the telemetry exporter) whose answer is any JSON value, flattened into
//! the one-level dictionary DPDK telemetry can carry; [`pdump_init`] lets `dpdk-dumpcap` capture
//! on this process's ports (needs hugepages and a shared EAL config; see docs/OPERATIONS.md).
//! Callbacks run on DPDK's telemetry thread, never on a data lcore.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Arc, Mutex};

use super::error::{DpdkError, Result};
use super::ffi;

/// A command handler: gets the parameters after the comma (`/colo/flows,10` → `"10"`).
pub type Handler = Arc<dyn Fn(&str) -> serde_json::Value + Send + Sync>;

/// One flattened value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TelValue {
    /// Unsigned number.
    U64(u64),
    /// Signed number that fits a C int.
    Int(i32),
    /// Text (truncated to DPDK's string limit).
    Str(String),
}

/// DPDK's dictionary limits (rte_telemetry.h: RTE_TEL_MAX_DICT_ENTRIES, RTE_TEL_MAX_STRING_LEN).
pub const MAX_ENTRIES: usize = 256;
const MAX_STR: usize = 127;

fn sanitize(name: &str) -> String {
    // Telemetry names may hold only alphanumerics, '_' and '/'.
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '/' {
                c
            } else {
                '_'
            }
        })
        .collect();
    s.truncate(MAX_STR);
    s
}

fn clip(s: &str) -> String {
    let mut end = s.len().min(MAX_STR);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

/// Flatten JSON into `path/to/key → value` entries (arrays use indices), at most
/// `MAX_ENTRIES - 1` of them; when more exist a final `truncated` entry says how many were left
/// out. Pure: no DPDK involved.
pub fn flatten(v: &serde_json::Value) -> Vec<(String, TelValue)> {
    fn walk(
        prefix: &str,
        v: &serde_json::Value,
        out: &mut Vec<(String, TelValue)>,
        skipped: &mut u64,
    ) {
        use serde_json::Value as V;
        let key = |k: &str| {
            if prefix.is_empty() {
                k.to_string()
            } else {
                format!("{prefix}/{k}")
            }
        };
        let leaf = |out: &mut Vec<(String, TelValue)>, skipped: &mut u64, val: TelValue| {
            if out.len() < MAX_ENTRIES - 1 {
                let name = if prefix.is_empty() {
                    "value".to_string()
                } else {
                    sanitize(prefix)
                };
                out.push((name, val));
            } else {
                *skipped += 1;
            }
        };
        match v {
            V::Object(m) => m.iter().for_each(|(k, x)| walk(&key(k), x, out, skipped)),
            V::Array(a) => a
                .iter()
                .enumerate()
                .for_each(|(i, x)| walk(&key(&i.to_string()), x, out, skipped)),
            V::Bool(b) => leaf(out, skipped, TelValue::U64(*b as u64)),
            V::Number(n) => leaf(
                out,
                skipped,
                match (n.as_u64(), n.as_i64().and_then(|i| i32::try_from(i).ok())) {
                    (Some(u), _) => TelValue::U64(u),
                    (None, Some(i)) => TelValue::Int(i),
                    _ => TelValue::Str(clip(&n.to_string())),
                },
            ),
            V::String(s) => leaf(out, skipped, TelValue::Str(clip(s))),
            V::Null => leaf(out, skipped, TelValue::Str("null".into())),
        }
    }
    let mut out = Vec::new();
    let mut skipped = 0;
    walk("", v, &mut out, &mut skipped);
    if skipped > 0 {
        out.push(("truncated".into(), TelValue::U64(skipped)));
    }
    out
}

type Table = Vec<(String, Handler)>;
static HANDLERS: Mutex<Table> = Mutex::new(Vec::new());

fn handler_for(cmd: &str) -> Option<Handler> {
    let t = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
    t.iter().find(|(c, _)| c == cmd).map(|(_, h)| h.clone())
}

unsafe extern "C" fn callback(
    cmd: *const c_char,
    params: *const c_char,
    d: *mut ffi::rte_tel_data,
) -> c_int {
    let text = |p: *const c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: DPDK passes NUL-terminated strings valid for the call.
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    let (cmd, params) = (text(cmd), text(params));
    let Some(h) = handler_for(&cmd) else {
        return -libc::ENOENT;
    };
    // A panicking handler must not unwind into C.
    let Ok(value) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(&params))) else {
        return -libc::EIO;
    };
    // SAFETY: `d` is the telemetry data DPDK handed to this callback.
    if unsafe { ffi::rte_tel_data_start_dict(d) } != 0 {
        return -libc::EINVAL;
    }
    for (name, val) in flatten(&value) {
        let Ok(n) = CString::new(name) else { continue };
        // SAFETY: `d` is a started dict; `n` (and `s`) are NUL-terminated and outlive the call,
        // which copies them.
        unsafe {
            match val {
                TelValue::U64(u) => ffi::rte_tel_data_add_dict_u64(d, n.as_ptr(), u),
                TelValue::Int(i) => ffi::rte_tel_data_add_dict_int(d, n.as_ptr(), i),
                TelValue::Str(s) => match CString::new(s) {
                    Ok(s) => ffi::rte_tel_data_add_dict_string(d, n.as_ptr(), s.as_ptr()),
                    Err(_) => 0,
                },
            };
        }
    }
    0
}

/// Register `cmd` (must start with `/`; alphanumerics, `_` and `/`) with its help text. A second
/// registration of the same command replaces the handler.
pub fn register(cmd: &str, help: &str, h: Handler) -> Result<()> {
    let what = format!("rte_telemetry_register_cmd({cmd})");
    let (Ok(c), Ok(hp)) = (CString::new(cmd), CString::new(help)) else {
        return Err(DpdkError::new(libc::EINVAL, format!("{what}: NUL byte")));
    };
    {
        let mut t = HANDLERS.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = t.iter_mut().find(|(k, _)| k == cmd) {
            slot.1 = h;
            return Ok(());
        }
        t.push((cmd.to_string(), h));
    }
    // DPDK keeps the pointers it is given, so they must live for the process: leak them once.
    let (c, hp) = (c.into_raw(), hp.into_raw());
    // SAFETY: both strings are valid, NUL-terminated and never freed; `callback` has the
    // telemetry_cb signature.
    let r = unsafe { ffi::rte_telemetry_register_cmd(c, Some(callback), hp) };
    if r != 0 {
        return Err(DpdkError::new(-r, what));
    }
    Ok(())
}

/// Initialise pdump so `dpdk-dumpcap` (a DPDK secondary process) can capture on our ports.
///
/// Call once after EAL init, before or after the ports are set up: it only registers pdump's
/// multi-process handler; dumpcap's request later installs rx/tx callbacks on every queue of
/// the port it names, and packets are copied in `rte_eth_rx_burst`/`rte_eth_tx_burst`.
/// dumpcap must attach to our memory, so this refuses (ENOTSUP, with the reason) when EAL runs
/// without hugepages (`--no-huge`) or without a shared config (`--in-memory`, `--no-shconf`),
/// where DPDK's own `rte_pdump_init` would report success and dumpcap would then fail.
pub fn pdump_init() -> Result<()> {
    if !super::is_up() {
        return Err(DpdkError::new(
            libc::EINVAL,
            "rte_pdump_init: EAL is not initialised".to_string(),
        ));
    }
    // SAFETY: EAL is initialised; plain query.
    if unsafe { ffi::rte_eal_has_hugepages() } == 0 {
        return Err(DpdkError::new(
            libc::ENOTSUP,
            "dpdk-dumpcap capture unavailable: EAL runs with --no-huge (a secondary process \
             cannot attach to that memory)"
                .to_string(),
        ));
    }
    // The shared config file exists unless EAL runs --in-memory or --no-shconf.
    // SAFETY: EAL is initialised; the runtime dir is a NUL-terminated string owned by EAL.
    let dir = unsafe { ffi::rte_eal_get_runtime_dir() };
    let shared = !dir.is_null() && {
        // SAFETY: non-null, NUL-terminated, valid while EAL is up.
        let d = unsafe { CStr::from_ptr(dir) }
            .to_string_lossy()
            .into_owned();
        std::path::Path::new(&d).join("config").exists()
    };
    if !shared {
        return Err(DpdkError::new(
            libc::ENOTSUP,
            "dpdk-dumpcap capture unavailable: EAL runs without a shared config (--in-memory \
             or --no-shconf); use --file-prefix NAME instead"
                .to_string(),
        ));
    }
    // SAFETY: EAL is initialised.
    if unsafe { ffi::rte_pdump_init() } != 0 {
        return Err(DpdkError::last("rte_pdump_init".to_string()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flattens_nested_json_into_telemetry_names() {
        let v = json!({"total": {"rx": 5, "drop-reason": {"full q": 2}}, "lcores": [{"id": 1, "busy": 0.5}], "neg": -3, "up": true, "s": "x"});
        let f = flatten(&v);
        let get = |k: &str| f.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("total/rx"), Some(TelValue::U64(5)));
        assert_eq!(get("total/drop_reason/full_q"), Some(TelValue::U64(2)));
        assert_eq!(get("lcores/0/id"), Some(TelValue::U64(1)));
        assert_eq!(get("lcores/0/busy"), Some(TelValue::Str("0.5".into())));
        assert_eq!(get("neg"), Some(TelValue::Int(-3)));
        assert_eq!(get("up"), Some(TelValue::U64(1)));
        assert_eq!(get("s"), Some(TelValue::Str("x".into())));
        assert_eq!(
            flatten(&json!(7)),
            vec![("value".to_string(), TelValue::U64(7))]
        );
    }

    #[test]
    fn caps_entries_and_string_length() {
        let big: Vec<u64> = (0..1000).collect();
        let f = flatten(&json!({"a": big}));
        assert_eq!(f.len(), MAX_ENTRIES);
        assert_eq!(
            f.last().unwrap(),
            &(
                "truncated".to_string(),
                TelValue::U64(1000 - (MAX_ENTRIES as u64 - 1))
            )
        );
        let long = "é".repeat(200);
        match &flatten(&json!({ "k": long }))[0].1 {
            TelValue::Str(s) => assert!(s.len() <= MAX_STR && s.chars().all(|c| c == 'é')),
            other => panic!("{other:?}"),
        }
    }
}
