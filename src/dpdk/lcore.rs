//! Running Rust closures on EAL worker lcores.
//!
//! [`launch_on`] boxes the closure and runs it through an `extern "C"` trampoline that catches
//! panics, so a panicking worker becomes an `Err` from [`LcoreJob::join`] instead of aborting
//! the process. Launch and join from the main lcore only (DPDK's rule).

use std::any::Any;
use std::os::raw::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex};

use super::eal;
use super::error::{DpdkError, Result};
use super::ffi;

type Slot<R> = Arc<Mutex<Option<std::thread::Result<R>>>>;

struct Job<F, R> {
    f: F,
    slot: Slot<R>,
}

unsafe extern "C" fn trampoline<F, R>(arg: *mut c_void) -> c_int
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    // Nothing may unwind out of an extern "C" fn: the whole body is guarded.
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: arg is the Box<Job<F, R>> leaked by launch_on for exactly this call.
        let job = unsafe { Box::from_raw(arg as *mut Job<F, R>) };
        let Job { f, slot } = *job;
        let res = catch_unwind(AssertUnwindSafe(f));
        let failed = res.is_err();
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(res);
        failed
    }));
    match outcome {
        Ok(false) => 0,
        _ => -1,
    }
}

/// A closure running on a worker lcore; [`join`](Self::join) waits for its result.
#[must_use = "join the job to learn whether it panicked"]
pub struct LcoreJob<R> {
    lcore: u32,
    slot: Slot<R>,
}

impl<R> LcoreJob<R> {
    /// The lcore it runs on.
    pub fn lcore(&self) -> u32 {
        self.lcore
    }

    /// Wait for the closure to return; a panic becomes an error carrying its message.
    pub fn join(self) -> Result<R> {
        // SAFETY: waits for our lcore; called from the main lcore (checked at launch).
        unsafe { ffi::rte_eal_wait_lcore(self.lcore) };
        let res = self.slot.lock().unwrap_or_else(|e| e.into_inner()).take();
        match res {
            Some(Ok(r)) => Ok(r),
            Some(Err(p)) => Err(DpdkError::other(
                format!("closure on lcore {}", self.lcore),
                format!("panicked: {}", panic_message(&*p)),
            )),
            None => Err(DpdkError::other(
                format!("closure on lcore {}", self.lcore),
                "produced no result",
            )),
        }
    }
}

/// The text of a panic payload (`&str` or `String`; anything else is named as such).
pub fn panic_message(p: &(dyn Any + Send)) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

/// Run `f` on worker lcore `lcore` (must be idle). Call from the main lcore.
pub fn launch_on<F, R>(lcore: u32, f: F) -> Result<LcoreJob<R>>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    let what = || format!("launching a closure on lcore {lcore}");
    eal::ensure_up(&what())?;
    if current_lcore() != Some(main_lcore()) {
        return Err(DpdkError::new(
            libc::EPERM,
            format!("{}: not on the main lcore", what()),
        ));
    }
    if lcore == main_lcore() || !worker_lcores().any(|l| l == lcore) {
        return Err(DpdkError::new(
            libc::EINVAL,
            format!("{}: not a worker lcore", what()),
        ));
    }
    let slot: Slot<R> = Arc::new(Mutex::new(None));
    let job = Box::into_raw(Box::new(Job {
        f,
        slot: slot.clone(),
    }));
    // SAFETY: trampoline::<F, R> matches the job type; on success the worker takes the box.
    let r =
        unsafe { ffi::rte_eal_remote_launch(Some(trampoline::<F, R>), job as *mut c_void, lcore) };
    if r != 0 {
        // SAFETY: launch failed, so the worker never saw the box; reclaim it.
        drop(unsafe { Box::from_raw(job) });
        return Err(DpdkError::from_ret(r, what()));
    }
    Ok(LcoreJob { lcore, slot })
}

/// Wait for every worker lcore to finish its current job (results stay in their [`LcoreJob`]s).
pub fn wait_all() {
    if eal::is_up() {
        // SAFETY: EAL is up; DPDK requires the main lcore, where this is meant to be called.
        unsafe { ffi::rte_eal_mp_wait_lcore() };
    }
}

/// The main lcore id.
pub fn main_lcore() -> u32 {
    // SAFETY: plain getter (valid after EAL init; 0 before).
    unsafe { ffi::rte_get_main_lcore() }
}

/// The calling thread's lcore id, `None` on a non-EAL thread.
#[inline]
pub fn current_lcore() -> Option<u32> {
    // SAFETY: reads a thread-local.
    let id = unsafe { ffi::shim_rte_lcore_id() };
    (id != ffi::LCORE_ID_ANY).then_some(id)
}

/// Enabled worker lcore ids (main excluded), ascending.
pub fn worker_lcores() -> impl Iterator<Item = u32> {
    let mut cur = u32::MAX;
    let up = eal::is_up();
    std::iter::from_fn(move || {
        if !up {
            return None;
        }
        // SAFETY: EAL is up; iterates DPDK's lcore table (skip main, no wrap).
        let next = unsafe { ffi::rte_get_next_lcore(cur, 1, 0) };
        if next >= ffi::RTE_MAX_LCORE {
            return None;
        }
        cur = next;
        Some(next)
    })
}

/// Spin-wait hint (`rte_pause`).
#[inline]
pub fn pause() {
    // SAFETY: a CPU pause instruction.
    unsafe { ffi::shim_rte_pause() }
}
