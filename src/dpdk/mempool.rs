//! [`Mempool`]: a shared handle to an mbuf pool.
//!
//! The pool is freed when the last handle drops, and only if no mbuf is out; otherwise it is
//! leaked (with a warning) so an outstanding [`Mbuf`] never points into freed memory.

use std::ffi::CString;
use std::ptr::NonNull;
use std::sync::Arc;

use super::burst::Burst;
use super::eal;
use super::error::{DpdkError, Result};
use super::ffi;
use super::mbuf::Mbuf;

/// Private area per mbuf, in bytes: holds the rx timestamp ([`Mbuf::timestamp`]).
pub const MBUF_PRIV_SIZE: u16 = 8;
/// Default data room: 2048 bytes of frame plus headroom (`RTE_MBUF_DEFAULT_BUF_SIZE`).
pub const DEFAULT_DATA_ROOM: u16 = ffi::RTE_MBUF_DEFAULT_BUF_SIZE as u16;

struct Inner {
    raw: NonNull<ffi::rte_mempool>,
    name: String,
}

// SAFETY: rte_mempool get/put are thread-safe (default ring ops are MP/MC); the pointer is
// only read after creation.
unsafe impl Send for Inner {}
// SAFETY: as above; no &self method mutates Rust-side state.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: raw is a live pool created by rte_pktmbuf_pool_create.
        let in_use = unsafe { ffi::shim_rte_mempool_in_use_count(self.raw.as_ptr()) };
        if in_use != 0 {
            log::warn!(
                "mempool {} dropped with {in_use} mbufs out; leaking it",
                self.name
            );
            return;
        }
        // SAFETY: no mbuf of this pool is referenced any more; no handle remains.
        unsafe { ffi::rte_mempool_free(self.raw.as_ptr()) };
        eal::live_dec();
    }
}

/// An mbuf pool (cheap to clone; all clones are the same pool).
#[derive(Clone)]
pub struct Mempool {
    inner: Arc<Inner>,
}

impl Mempool {
    /// A pool of `n` mbufs with [`DEFAULT_DATA_ROOM`] and a per-lcore cache.
    pub fn new(name: &str, n: u32) -> Result<Mempool> {
        let cache = (n / 4).clamp(0, 256);
        Self::with_params(name, n, cache, DEFAULT_DATA_ROOM, None)
    }

    /// A pool with explicit cache size, data room and NUMA socket (`None` = caller's socket).
    pub fn with_params(
        name: &str,
        n: u32,
        cache: u32,
        data_room: u16,
        socket: Option<i32>,
    ) -> Result<Mempool> {
        let what = format!("creating mempool {name:?} ({n} mbufs, data room {data_room})");
        eal::ensure_up(&what)?;
        let cname = CString::new(name)
            .map_err(|_| DpdkError::new(libc::EINVAL, format!("{what}: NUL in name")))?;
        // SAFETY: EAL is up; the name is a valid C string copied by DPDK.
        let socket = socket.unwrap_or_else(|| unsafe { ffi::rte_socket_id() } as i32);
        // SAFETY: EAL is up; arguments are plain values; MBUF_PRIV_SIZE is a multiple of 8.
        let raw = unsafe {
            ffi::rte_pktmbuf_pool_create(
                cname.as_ptr(),
                n,
                cache,
                MBUF_PRIV_SIZE,
                data_room,
                socket,
            )
        };
        let raw = NonNull::new(raw).ok_or_else(|| DpdkError::last(what))?;
        eal::live_inc();
        Ok(Mempool {
            inner: Arc::new(Inner {
                raw,
                name: name.to_owned(),
            }),
        })
    }

    /// The pool's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Number of mbufs in the pool.
    pub fn capacity(&self) -> u32 {
        // SAFETY: raw is a live pool; `size` is set at creation and never changes.
        unsafe { (*self.inner.raw.as_ptr()).size }
    }

    /// Mbufs currently allocated (including those held by ports' rx rings).
    pub fn in_use(&self) -> u32 {
        // SAFETY: raw is a live pool.
        unsafe { ffi::shim_rte_mempool_in_use_count(self.inner.raw.as_ptr()) }
    }

    /// Mbufs currently free (in the pool or in lcore caches).
    pub fn available(&self) -> u32 {
        // SAFETY: raw is a live pool.
        unsafe { ffi::shim_rte_mempool_avail_count(self.inner.raw.as_ptr()) }
    }

    /// Allocate one mbuf (empty, default headroom). `None` when the pool is exhausted.
    #[inline]
    pub fn alloc(&self) -> Option<Mbuf> {
        // SAFETY: raw is a live pktmbuf pool.
        let m = unsafe { ffi::shim_rte_pktmbuf_alloc(self.inner.raw.as_ptr()) };
        // SAFETY: a fresh mbuf from the pool is exclusively ours.
        NonNull::new(m).map(|m| unsafe { Mbuf::from_raw(m.as_ptr()) })
    }

    /// Fill `burst`'s free space with `n` fresh mbufs, all or nothing.
    #[inline]
    pub fn alloc_bulk<const N: usize>(&self, burst: &mut Burst<Mbuf, N>, n: usize) -> Result<()> {
        if n > burst.free_space() {
            return Err(DpdkError::new(
                libc::ENOSPC,
                "alloc_bulk: burst has no room",
            ));
        }
        let dst = burst.spare_ptr() as *mut *mut ffi::rte_mbuf;
        // SAFETY: dst points at `n` free slots of the burst; on success every slot holds a
        // fresh mbuf that we now own.
        let ret =
            unsafe { ffi::shim_rte_pktmbuf_alloc_bulk(self.inner.raw.as_ptr(), dst, n as u32) };
        if ret != 0 {
            return Err(DpdkError::from_ret(
                ret,
                format!("allocating {n} mbufs from {}", self.name()),
            ));
        }
        // SAFETY: the n slots after len were just initialised with owned mbufs.
        unsafe { burst.set_len(burst.len() + n) };
        Ok(())
    }

    pub(crate) fn as_ptr(&self) -> *mut ffi::rte_mempool {
        self.inner.raw.as_ptr()
    }
}

impl std::fmt::Debug for Mempool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mempool({}, in use {}/{})",
            self.name(),
            self.in_use(),
            self.capacity()
        )
    }
}
