//! [`DpdkError`]: what failed, DPDK's errno and its text.

use std::ffi::CStr;
use std::fmt;

use super::ffi;

/// A failed DPDK call: what was being done, the (positive) `rte_errno`/errno value and its text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkError {
    errno: i32,
    strerror: String,
    context: String,
}

/// Result alias for this module.
pub type Result<T> = std::result::Result<T, DpdkError>;

impl DpdkError {
    /// An error for `errno` (sign ignored) while doing `context`.
    pub fn new(errno: i32, context: impl Into<String>) -> Self {
        let errno = errno.abs();
        DpdkError {
            errno,
            strerror: strerror(errno),
            context: context.into(),
        }
    }

    /// An error from the calling thread's current `rte_errno`.
    pub fn last(context: impl Into<String>) -> Self {
        // SAFETY: reads the thread-local rte_errno; no preconditions.
        let errno = unsafe { ffi::shim_rte_errno() };
        Self::new(errno, context)
    }

    /// An error from a DPDK return value: `-errno` style when negative, else `rte_errno`.
    pub fn from_ret(ret: i32, context: impl Into<String>) -> Self {
        if ret < 0 && ret != -1 {
            Self::new(ret, context)
        } else {
            Self::last(context)
        }
    }

    /// An error that is not an errno (e.g. a panic on a worker lcore); `errno` is 0.
    pub fn other(context: impl Into<String>, detail: impl Into<String>) -> Self {
        DpdkError {
            errno: 0,
            strerror: detail.into(),
            context: context.into(),
        }
    }

    /// The positive errno value (0 when not an errno).
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// DPDK's text for [`errno`](Self::errno) (`rte_strerror`).
    pub fn strerror(&self) -> &str {
        &self.strerror
    }

    /// What was being done.
    pub fn context(&self) -> &str {
        &self.context
    }
}

impl fmt::Display for DpdkError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.errno == 0 {
            write!(f, "{}: {}", self.context, self.strerror)
        } else {
            write!(
                f,
                "{}: {} (rte_errno {})",
                self.context, self.strerror, self.errno
            )
        }
    }
}

impl std::error::Error for DpdkError {}

fn strerror(errno: i32) -> String {
    // SAFETY: rte_strerror returns a pointer to a static or thread-local NUL-terminated string
    // valid until the next call on this thread; we copy it at once.
    unsafe {
        let p = ffi::rte_strerror(errno);
        if p.is_null() {
            return format!("errno {errno}");
        }
        CStr::from_ptr(p).to_string_lossy().into_owned()
    }
}
