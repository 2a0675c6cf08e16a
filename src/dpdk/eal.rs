//! EAL lifetime: [`Eal::init`] once per process, cleanup on drop, version and lcore queries.
//!
//! DPDK cannot initialise twice in one process (not even after cleanup), so a second
//! [`Eal::init`] returns an error. Every other DPDK object in this module checks [`is_up`]
//! before calling into DPDK, so misuse before init is an error, not a crash.

use std::ffi::{CStr, CString};
use std::os::raw::c_char;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::error::{DpdkError, Result};
use super::ffi;

static INIT_CALLED: AtomicBool = AtomicBool::new(false);
static UP: AtomicBool = AtomicBool::new(false);
/// Live mempools, rings and ports; cleanup is skipped while any exist (their memory would go).
static LIVE: AtomicUsize = AtomicUsize::new(0);

pub(crate) fn live_inc() {
    LIVE.fetch_add(1, Ordering::AcqRel);
}
pub(crate) fn live_dec() {
    LIVE.fetch_sub(1, Ordering::AcqRel);
}

/// True between a successful [`Eal::init`] and the drop of that [`Eal`].
#[inline]
pub fn is_up() -> bool {
    UP.load(Ordering::Acquire)
}

pub(crate) fn ensure_up(what: &str) -> Result<()> {
    if is_up() {
        Ok(())
    } else {
        Err(DpdkError::new(
            libc::ENODEV,
            format!("{what}: EAL is not initialised"),
        ))
    }
}

/// The initialised Environment Abstraction Layer. Not `Send`: create and drop it on the main
/// lcore (the thread that called `init`). Dropping it waits for worker lcores and runs
/// `rte_eal_cleanup` unless DPDK objects are still alive.
pub struct Eal {
    // rte_eal_init may keep pointers into argv; both live as long as EAL.
    _args: Vec<CString>,
    _argv: Vec<*mut c_char>,
    hugepages: bool,
}

impl Eal {
    /// Initialise EAL with `args` (EAL options only, no program name; one is prepended).
    pub fn init<S: AsRef<str>>(args: &[S]) -> Result<Eal> {
        let shown: Vec<&str> = args.iter().map(|a| a.as_ref()).collect();
        let what = format!("rte_eal_init({})", shown.join(" "));
        let mut cargs = Vec::with_capacity(args.len() + 1);
        cargs.push(CString::new("colo-proxy").unwrap_or_default());
        for a in &shown {
            match CString::new(*a) {
                Ok(c) => cargs.push(c),
                Err(_) => {
                    return Err(DpdkError::new(
                        libc::EINVAL,
                        format!("{what}: NUL byte in argument"),
                    ))
                }
            }
        }
        if INIT_CALLED.swap(true, Ordering::AcqRel) {
            return Err(DpdkError::new(
                libc::EALREADY,
                format!("{what}: EAL was already initialised in this process (once per process)"),
            ));
        }
        let mut argv: Vec<*mut c_char> = cargs.iter().map(|c| c.as_ptr() as *mut c_char).collect();
        argv.push(std::ptr::null_mut());
        let argc = (argv.len() - 1) as i32;
        // SAFETY: argv holds argc valid NUL-terminated strings plus a NULL terminator; both
        // vectors are kept alive in the returned Eal for as long as EAL runs.
        let ret = unsafe { ffi::rte_eal_init(argc, argv.as_mut_ptr()) };
        if ret < 0 {
            return Err(DpdkError::last(what));
        }
        UP.store(true, Ordering::Release);
        // SAFETY: EAL is initialised.
        let hugepages = unsafe { ffi::rte_eal_has_hugepages() } != 0;
        Ok(Eal {
            _args: cargs,
            _argv: argv,
            hugepages,
        })
    }

    /// True when EAL runs on hugepages (false with `--no-huge`).
    pub fn hugepages(&self) -> bool {
        self.hugepages
    }

    /// Number of lcores EAL enabled (main included).
    pub fn lcore_count(&self) -> u32 {
        // SAFETY: EAL is initialised.
        unsafe { ffi::rte_lcore_count() }
    }

    /// Number of ethdev ports available.
    pub fn port_count(&self) -> u16 {
        // SAFETY: EAL is initialised.
        unsafe { ffi::rte_eth_dev_count_avail() }
    }
}

impl Drop for Eal {
    fn drop(&mut self) {
        // SAFETY: called on the main lcore (Eal is !Send); waits for all workers.
        unsafe { ffi::rte_eal_mp_wait_lcore() };
        let live = LIVE.load(Ordering::Acquire);
        if live != 0 {
            log::warn!("{live} DPDK objects still alive; skipping rte_eal_cleanup");
            return;
        }
        UP.store(false, Ordering::Release);
        // SAFETY: no worker runs and no DPDK object we created is alive.
        unsafe { ffi::rte_eal_cleanup() };
    }
}

/// The linked DPDK's version string, e.g. `DPDK 22.11.11` (no EAL needed).
pub fn version() -> String {
    // SAFETY: rte_version returns a pointer to a static NUL-terminated string.
    unsafe {
        CStr::from_ptr(ffi::rte_version())
            .to_string_lossy()
            .into_owned()
    }
}

/// The linked DPDK's `(year, month, minor)`, e.g. `(22, 11, 11)`.
pub fn version_numbers() -> (u32, u32, u32) {
    // SAFETY: plain getters of compiled-in constants.
    unsafe {
        (
            ffi::rte_version_year(),
            ffi::rte_version_month(),
            ffi::rte_version_minor(),
        )
    }
}
