//! Typed single-producer/single-consumer rings ([`ring`] → [`RingProducer`] + [`RingConsumer`]).
//!
//! Each end is a unique, `Send` handle, so SP/SC is enforced by the type system. Items are
//! owned [`RawItem`]s (mbufs, boxed messages, tokens); items still in the ring when both ends
//! are gone are dropped (mbufs freed), never leaked.

use std::ffi::CString;
use std::marker::PhantomData;
use std::os::raw::c_void;
use std::ptr::NonNull;
use std::sync::Arc;

use super::burst::{Burst, RawItem};
use super::eal;
use super::error::{DpdkError, Result};
use super::ffi;

/// Ring creation flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingFlags {
    /// Capacity exactly as requested (`RING_F_EXACT_SZ`); otherwise `size` must be a power of
    /// two and the capacity is `size - 1`.
    pub exact_size: bool,
    /// NUMA socket (`None` = any).
    pub socket: Option<i32>,
}

struct Inner<T: RawItem> {
    raw: NonNull<ffi::rte_ring>,
    /// Ours to drain and free (false: a ring its creator owns, see [`attach_producer`]).
    owned: bool,
    _items: PhantomData<T>,
}

// SAFETY: the two ends are used from at most one thread each (unique handles); the ring
// itself is a lock-free SP/SC structure; T: Send.
unsafe impl<T: RawItem> Send for Inner<T> {}
// SAFETY: as above; shared access through Arc only reads the pointer, and each end's
// operations are serialised by that end's &mut self.
unsafe impl<T: RawItem> Sync for Inner<T> {}

impl<T: RawItem> Drop for Inner<T> {
    fn drop(&mut self) {
        if !self.owned {
            return;
        }
        let mut tmp = [std::ptr::null_mut::<c_void>(); 64];
        loop {
            // SAFETY: both ends are gone, so we are the only user of the ring.
            let n = unsafe {
                ffi::shim_rte_ring_sc_dequeue_burst(
                    self.raw.as_ptr(),
                    tmp.as_mut_ptr(),
                    tmp.len() as u32,
                    std::ptr::null_mut(),
                )
            } as usize;
            if n == 0 {
                break;
            }
            // SAFETY: items in the ring were put there by into_raw and are owned by it.
            unsafe { T::drop_raw(&tmp[..n]) };
        }
        // SAFETY: empty ring, no user left.
        unsafe { ffi::rte_ring_free(self.raw.as_ptr()) };
        eal::live_dec();
    }
}

/// The enqueue end of a ring.
pub struct RingProducer<T: RawItem> {
    inner: Arc<Inner<T>>,
}

/// The dequeue end of a ring.
pub struct RingConsumer<T: RawItem> {
    inner: Arc<Inner<T>>,
}

/// Create an SP/SC ring named `name` (unique per process) holding up to `size` items.
pub fn ring<T: RawItem>(
    name: &str,
    size: u32,
    flags: RingFlags,
) -> Result<(RingProducer<T>, RingConsumer<T>)> {
    let what = format!("creating ring {name:?} (size {size})");
    eal::ensure_up(&what)?;
    let cname = CString::new(name)
        .map_err(|_| DpdkError::new(libc::EINVAL, format!("{what}: NUL in name")))?;
    let mut f = ffi::RING_F_SP_ENQ | ffi::RING_F_SC_DEQ;
    if flags.exact_size {
        f |= ffi::RING_F_EXACT_SZ;
    }
    let socket = flags.socket.unwrap_or(ffi::SOCKET_ID_ANY);
    // SAFETY: EAL is up; DPDK copies the name.
    let raw = unsafe { ffi::rte_ring_create(cname.as_ptr(), size, socket, f) };
    let raw = NonNull::new(raw).ok_or_else(|| DpdkError::last(what))?;
    eal::live_inc();
    let inner = Arc::new(Inner {
        raw,
        owned: true,
        _items: PhantomData,
    });
    Ok((
        RingProducer {
            inner: inner.clone(),
        },
        RingConsumer { inner },
    ))
}

/// The enqueue end of an existing ring named `name` that its creator keeps owning (e.g. the
/// queue of a `net_ring` port, `ETH_RXTX0_<device>`: a traffic generator feeding the port's
/// rx). Dropping the handle leaves the ring and what it holds alone.
///
/// # Safety
///
/// The ring must outlive the handle and the handle must be its only producer: the port's own
/// tx path enqueues into the same ring, so nothing may transmit on that port meanwhile.
pub unsafe fn attach_producer<T: RawItem>(name: &str) -> Result<RingProducer<T>> {
    let what = format!("looking up ring {name:?}");
    eal::ensure_up(&what)?;
    let cname = CString::new(name)
        .map_err(|_| DpdkError::new(libc::EINVAL, format!("{what}: NUL in name")))?;
    // SAFETY: EAL is up; the name is a valid C string.
    let raw = unsafe { ffi::rte_ring_lookup(cname.as_ptr()) };
    let raw = NonNull::new(raw).ok_or_else(|| DpdkError::last(what))?;
    Ok(RingProducer {
        inner: Arc::new(Inner {
            raw,
            owned: false,
            _items: PhantomData,
        }),
    })
}

impl<T: RawItem> RingProducer<T> {
    /// Enqueue one item; gives it back when the ring is full.
    #[inline]
    pub fn enqueue(&mut self, item: T) -> std::result::Result<(), T> {
        let raw = [item.into_raw()];
        // SAFETY: single producer (we hold &mut of the unique producer handle).
        let n = unsafe {
            ffi::shim_rte_ring_sp_enqueue_burst(
                self.inner.raw.as_ptr(),
                raw.as_ptr(),
                1,
                std::ptr::null_mut(),
            )
        };
        if n == 1 {
            Ok(())
        } else {
            // SAFETY: not enqueued, so we still own it.
            Err(unsafe { T::from_raw(raw[0]) })
        }
    }

    /// Enqueue as many of `burst`'s items as fit, front first; returns how many. The rest stay
    /// in `burst` (moved to its front) for the caller to retry, count or drop.
    #[inline]
    pub fn enqueue_burst<const N: usize>(&mut self, burst: &mut Burst<T, N>) -> usize {
        let len = burst.len() as u32;
        // SAFETY: single producer; the burst's first len slots are owned items whose
        // ownership passes to the ring for the n that were enqueued.
        let n = unsafe {
            ffi::shim_rte_ring_sp_enqueue_burst(
                self.inner.raw.as_ptr(),
                burst.as_raw_ptr() as *const *mut c_void,
                len,
                std::ptr::null_mut(),
            )
        } as usize;
        burst.consume_front(n);
        n
    }

    /// Items in the ring.
    #[inline]
    pub fn count(&self) -> u32 {
        // SAFETY: read-only index snapshot.
        unsafe { ffi::shim_rte_ring_count(self.inner.raw.as_ptr()) }
    }

    /// Free slots.
    #[inline]
    pub fn free_count(&self) -> u32 {
        // SAFETY: read-only index snapshot.
        unsafe { ffi::shim_rte_ring_free_count(self.inner.raw.as_ptr()) }
    }

    /// Maximum number of items.
    pub fn capacity(&self) -> u32 {
        // SAFETY: read-only.
        unsafe { ffi::shim_rte_ring_get_capacity(self.inner.raw.as_ptr()) }
    }
}

impl<T: RawItem> RingConsumer<T> {
    /// Dequeue one item.
    #[inline]
    pub fn dequeue(&mut self) -> Option<T> {
        let mut raw = [std::ptr::null_mut::<c_void>()];
        // SAFETY: single consumer (unique handle, &mut self).
        let n = unsafe {
            ffi::shim_rte_ring_sc_dequeue_burst(
                self.inner.raw.as_ptr(),
                raw.as_mut_ptr(),
                1,
                std::ptr::null_mut(),
            )
        };
        // SAFETY: a dequeued item's ownership passes to us.
        (n == 1).then(|| unsafe { T::from_raw(raw[0]) })
    }

    /// Dequeue up to `burst`'s free space into it; returns how many were added.
    #[inline]
    pub fn dequeue_burst<const N: usize>(&mut self, burst: &mut Burst<T, N>) -> usize {
        let room = burst.free_space() as u32;
        if room == 0 {
            return 0;
        }
        // SAFETY: single consumer; writes at most `room` pointers into the burst's free slots.
        let n = unsafe {
            ffi::shim_rte_ring_sc_dequeue_burst(
                self.inner.raw.as_ptr(),
                burst.spare_ptr(),
                room,
                std::ptr::null_mut(),
            )
        } as usize;
        // SAFETY: the n slots after len now hold owned items.
        unsafe { burst.set_len(burst.len() + n) };
        n
    }

    /// Items in the ring.
    #[inline]
    pub fn count(&self) -> u32 {
        // SAFETY: read-only index snapshot.
        unsafe { ffi::shim_rte_ring_count(self.inner.raw.as_ptr()) }
    }

    /// True when no item is waiting.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.count() == 0
    }
}
