//! DPDK telemetry commands and pdump. [`register`] adds a command to DPDK's telemetry socket
//! (`dpdk-telemetry.py`, the telemetry exporter) whose answer is the one-level dictionary DPDK
//! telemetry can carry; [`pdump_init`] lets `dpdk-dumpcap` capture
//! on this process's ports (needs hugepages and a shared EAL config; see docs/OPERATIONS.md).
//! Callbacks run on DPDK's telemetry thread, never on a data lcore.

use std::ffi::{c_char, c_int, CStr, CString};
use std::sync::{Arc, Mutex};

use super::error::{DpdkError, Result};
use super::ffi;

/// A command handler: gets the parameters after the comma (`/colo/flows,10` → `"10"`) and
/// answers with the dictionary's entries (at most [`MAX_ENTRIES`]; see
/// `mgmt::telemetry::flatten` for JSON).
pub type Handler = Arc<dyn Fn(&str) -> Vec<(String, TelValue)> + Send + Sync>;

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
/// Longest name or string value DPDK telemetry carries.
pub const MAX_STR: usize = 127;

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
    let Ok(entries) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| h(&params))) else {
        return -libc::EIO;
    };
    // SAFETY: `d` is the telemetry data DPDK handed to this callback.
    if unsafe { ffi::rte_tel_data_start_dict(d) } != 0 {
        return -libc::EINVAL;
    }
    for (name, val) in entries.into_iter().take(MAX_ENTRIES) {
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
