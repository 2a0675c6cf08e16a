//! [`Mbuf`]: an owned DPDK packet buffer.
//!
//! Move-only; dropping it frees it (`rte_pktmbuf_free`). [`Mbuf::try_clone`] adds a second owner
//! of the same mbuf by incrementing its refcount (zero-copy, for the mirror). While an mbuf has
//! more than one owner it is read-only: the mutating methods panic (a programming error, like a
//! `RefCell` double borrow) because the other owner may be reading it on another lcore. Check
//! [`Mbuf::is_shared`] or use [`Mbuf::try_data_mut`] where that is not known statically.

use std::os::raw::c_void;
use std::ptr::NonNull;

use super::burst::{Burst, RawItem};
use super::ffi;
use crate::buf::{BufError, PacketBuf};
use crate::hint::prefetch_addr;

/// An owned `rte_mbuf` pointer (never null; same layout as `struct rte_mbuf *`).
#[repr(transparent)]
pub struct Mbuf(NonNull<ffi::rte_mbuf>);

// SAFETY: an Mbuf is an owned handle; the mbuf may be freed and used from any lcore, and shared
// owners (refcount > 1) only read it.
unsafe impl Send for Mbuf {}

/// TX L4 checksum request bits (`RTE_MBUF_F_TX_L4_MASK`).
pub const OL_TX_L4_MASK: u64 = ffi::RTE_MBUF_F_TX_L4_MASK;

impl Mbuf {
    /// Take ownership of a raw mbuf.
    ///
    /// # Safety
    /// `raw` must be a valid mbuf that the caller owns (one refcount) and gives up.
    #[inline]
    pub unsafe fn from_raw(raw: *mut ffi::rte_mbuf) -> Mbuf {
        debug_assert!(!raw.is_null());
        // SAFETY: caller guarantees non-null.
        Mbuf(unsafe { NonNull::new_unchecked(raw) })
    }

    /// Give up ownership; the caller must eventually free or `from_raw` it.
    #[inline]
    pub fn into_raw(self) -> *mut ffi::rte_mbuf {
        let p = self.0.as_ptr();
        std::mem::forget(self);
        p
    }

    #[inline]
    fn raw(&self) -> &ffi::rte_mbuf {
        // SAFETY: we hold a reference count, so the mbuf is valid; shared readers only read.
        unsafe { self.0.as_ref() }
    }

    #[inline]
    fn raw_mut(&mut self) -> &mut ffi::rte_mbuf {
        self.assert_unique();
        // SAFETY: we are the only owner (checked above), so no one else accesses it.
        unsafe { self.0.as_mut() }
    }

    #[inline]
    #[track_caller]
    fn assert_unique(&self) {
        let r = self.refcnt();
        if r != 1 {
            panic!("Mbuf is shared (refcnt {r}): mutate before try_clone");
        }
    }

    /// Reference count (1 = sole owner).
    #[inline]
    pub fn refcnt(&self) -> u16 {
        // Inline, not a C call per packet: rte_mbuf_refcnt_read is a relaxed atomic load of
        // this field.
        // SAFETY: valid mbuf; the u16 field is aligned and lives as long as &self; DPDK only
        // changes it with atomic operations, so an atomic load of it is sound.
        unsafe {
            std::sync::atomic::AtomicU16::from_ptr(std::ptr::addr_of_mut!(
                (*self.0.as_ptr()).refcnt
            ))
            .load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// True when another [`Mbuf`] owns the same buffer (after [`try_clone`](Self::try_clone)).
    #[inline]
    pub fn is_shared(&self) -> bool {
        self.refcnt() != 1
    }

    /// A second owner of the same mbuf (refcount + 1, no copy). `None` at the refcount limit.
    #[inline]
    pub fn try_clone(&self) -> Option<Mbuf> {
        if self.refcnt() == u16::MAX {
            return None;
        }
        // SAFETY: valid mbuf; the increment is atomic and gives the new handle its own count.
        // Indirect/attached segments are covered since we share the whole chain.
        unsafe {
            let mut seg = self.0.as_ptr();
            while !seg.is_null() {
                ffi::shim_rte_mbuf_refcnt_update(seg, 1);
                seg = (*seg).next;
            }
        }
        Some(Mbuf(self.0))
    }

    /// First-segment bytes.
    #[inline]
    pub fn data(&self) -> &[u8] {
        let m = self.raw();
        // SAFETY: buf_addr + data_off .. + data_len lies inside the mbuf's data room.
        unsafe {
            std::slice::from_raw_parts(
                (m.buf_addr as *const u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    /// First-segment bytes, writable; `None` when shared.
    #[inline]
    pub fn try_data_mut(&mut self) -> Option<&mut [u8]> {
        if self.is_shared() {
            return None;
        }
        Some(self.data_mut_unique())
    }

    #[inline]
    fn data_mut_unique(&mut self) -> &mut [u8] {
        let m = self.raw_mut();
        // SAFETY: as in data(); we are the sole owner so the bytes are not aliased.
        unsafe {
            std::slice::from_raw_parts_mut(
                (m.buf_addr as *mut u8).add(m.data_off as usize),
                m.data_len as usize,
            )
        }
    }

    /// Total packet length over all segments.
    #[inline]
    pub fn pkt_len(&self) -> u32 {
        self.raw().pkt_len
    }

    /// Number of segments.
    #[inline]
    pub fn nb_segs(&self) -> u16 {
        self.raw().nb_segs
    }

    /// True when the whole packet is in the first segment ([`data`](Self::data) is all of it).
    #[inline]
    pub fn is_contiguous(&self) -> bool {
        self.raw().nb_segs == 1
    }

    /// Make the packet one segment: the later segments' bytes are copied to the end of the
    /// first (`rte_pktmbuf_linearize`) and freed. False when the first segment lacks the
    /// tailroom or the mbuf is shared; the chain is then unchanged.
    pub fn linearize(&mut self) -> bool {
        if self.is_contiguous() {
            return true;
        }
        if self.is_shared() {
            return false;
        }
        // SAFETY: sole owner of a valid mbuf chain; DPDK copies within it and frees the
        // segments it emptied, or changes nothing and returns -1.
        unsafe { ffi::shim_rte_pktmbuf_linearize(self.0.as_ptr()) == 0 }
    }

    /// Append `tail` (and its segments) to this packet's chain (`rte_pktmbuf_chain`); gives it
    /// back when the chain would exceed DPDK's segment limit.
    pub fn chain(&mut self, tail: Mbuf) -> Result<(), Mbuf> {
        self.assert_unique();
        // SAFETY: both are valid mbufs we own; on success the head owns the tail's segments.
        let r = unsafe { ffi::shim_rte_pktmbuf_chain(self.0.as_ptr(), tail.as_ptr()) };
        if r != 0 {
            return Err(tail);
        }
        std::mem::forget(tail);
        Ok(())
    }

    /// Input port (set by rx).
    #[inline]
    pub fn port(&self) -> u16 {
        self.raw().port
    }

    /// Offload flags (`RTE_MBUF_F_*`).
    #[inline]
    pub fn ol_flags(&self) -> u64 {
        self.raw().ol_flags
    }

    /// Set the offload flags.
    #[inline]
    pub fn set_ol_flags(&mut self, flags: u64) {
        self.raw_mut().ol_flags = flags;
    }

    /// Bytes free before the data.
    #[inline]
    pub fn headroom(&self) -> u16 {
        self.raw().data_off
    }

    /// Bytes free after the data (last segment).
    #[inline]
    pub fn tailroom(&self) -> u16 {
        // SAFETY: valid mbuf; read only.
        unsafe { ffi::shim_rte_pktmbuf_tailroom(self.0.as_ptr()) }
    }

    #[inline]
    fn priv_ts(&self) -> Option<*mut u64> {
        let m = self.raw();
        if (m.priv_size as usize) < std::mem::size_of::<u64>() {
            return None;
        }
        // SAFETY: the private area starts right after struct rte_mbuf and is priv_size >= 8
        // bytes; it is 8-aligned since rte_mbuf is 64-aligned and 128 bytes long.
        Some(unsafe {
            (self.0.as_ptr() as *mut u8).add(std::mem::size_of::<ffi::rte_mbuf>()) as *mut u64
        })
    }

    /// The timestamp stored in the private area (rx TSC by convention); 0 if the pool has none.
    #[inline]
    pub fn timestamp(&self) -> u64 {
        match self.priv_ts() {
            // SAFETY: see priv_ts; read of an initialised-or-zero u64 (set_timestamp or pool init).
            Some(p) => unsafe { p.read() },
            None => 0,
        }
    }

    /// Store a timestamp (e.g. the rx TSC) in the private area; ignored if the pool has none.
    #[inline]
    pub fn set_timestamp(&mut self, ts: u64) {
        self.assert_unique();
        if let Some(p) = self.priv_ts() {
            // SAFETY: see priv_ts; we are the sole owner.
            unsafe { p.write(ts) };
        }
    }

    /// Copy `bytes` in as the whole packet (replacing the contents). Fails if it does not fit.
    pub fn set_data(&mut self, bytes: &[u8]) -> Result<(), BufError> {
        let cur = self.data().len();
        self.trim(cur)?;
        self.append(bytes.len())?.copy_from_slice(bytes);
        Ok(())
    }

    /// The raw pointer, still owned by `self`.
    #[inline]
    pub fn as_ptr(&self) -> *mut ffi::rte_mbuf {
        self.0.as_ptr()
    }
}

impl Drop for Mbuf {
    #[inline]
    fn drop(&mut self) {
        // SAFETY: we own one reference; rte_pktmbuf_free drops it (and frees at zero).
        unsafe { ffi::shim_rte_pktmbuf_free(self.0.as_ptr()) };
    }
}

impl std::fmt::Debug for Mbuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Mbuf({} bytes, port {}, refcnt {})",
            self.pkt_len(),
            self.port(),
            self.refcnt()
        )
    }
}

impl PacketBuf for Mbuf {
    #[inline]
    fn data(&self) -> &[u8] {
        Mbuf::data(self)
    }
    /// Panics if the mbuf is shared (see the module doc).
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        self.data_mut_unique()
    }
    #[inline]
    fn trim(&mut self, n: usize) -> Result<(), BufError> {
        self.assert_unique();
        if n > self.data().len() {
            return Err(BufError::TooShort);
        }
        if self.is_contiguous() {
            // What rte_pktmbuf_trim does to one segment, without a C call per frame.
            let r = self.raw_mut();
            r.data_len -= n as u16;
            r.pkt_len -= n as u32;
            return Ok(());
        }
        // SAFETY: sole owner; n <= data_len of the first segment fits u16.
        let r = unsafe { ffi::shim_rte_pktmbuf_trim(self.0.as_ptr(), n as u16) };
        if r != 0 {
            return Err(BufError::TooShort);
        }
        Ok(())
    }
    #[inline]
    fn adj(&mut self, n: usize) -> Result<(), BufError> {
        self.assert_unique();
        if n > self.data().len() {
            return Err(BufError::TooShort);
        }
        if self.is_contiguous() {
            // What rte_pktmbuf_adj does (n <= data_len, checked above), inline.
            let r = self.raw_mut();
            r.data_off += n as u16;
            r.data_len -= n as u16;
            r.pkt_len -= n as u32;
            return Ok(());
        }
        // SAFETY: sole owner; n <= data_len fits u16.
        let r = unsafe { ffi::shim_rte_pktmbuf_adj(self.0.as_ptr(), n as u16) };
        if r.is_null() {
            return Err(BufError::TooShort);
        }
        Ok(())
    }
    #[inline]
    fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        self.assert_unique();
        if n > self.headroom() as usize {
            return Err(BufError::NoHeadroom);
        }
        // SAFETY: sole owner; n <= headroom fits u16.
        let p = unsafe { ffi::shim_rte_pktmbuf_prepend(self.0.as_ptr(), n as u16) };
        if p.is_null() {
            return Err(BufError::NoHeadroom);
        }
        // SAFETY: DPDK returned n writable bytes at the new data start, owned by us.
        Ok(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) })
    }
    #[inline]
    fn append(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        self.assert_unique();
        if n > self.tailroom() as usize {
            return Err(BufError::NoTailroom);
        }
        // SAFETY: sole owner; n <= tailroom fits u16.
        let p = unsafe { ffi::shim_rte_pktmbuf_append(self.0.as_ptr(), n as u16) };
        if p.is_null() {
            return Err(BufError::NoTailroom);
        }
        // SAFETY: DPDK returned n writable bytes at the old end, owned by us.
        Ok(unsafe { std::slice::from_raw_parts_mut(p as *mut u8, n) })
    }
    #[inline]
    fn l4_csum_partial(&self) -> bool {
        self.ol_flags() & OL_TX_L4_MASK != 0
    }
}

// SAFETY: into_raw/from_raw round-trip one owned reference.
unsafe impl RawItem for Mbuf {
    #[inline]
    fn into_raw(self) -> *mut c_void {
        Mbuf::into_raw(self) as *mut c_void
    }
    #[inline]
    unsafe fn from_raw(raw: *mut c_void) -> Self {
        // SAFETY: by contract raw is an owned mbuf.
        unsafe { Mbuf::from_raw(raw as *mut ffi::rte_mbuf) }
    }
    #[inline]
    unsafe fn drop_raw(raw: &[*mut c_void]) {
        if raw.is_empty() {
            return;
        }
        // SAFETY: every entry is an owned mbuf (caller contract); free_bulk drops one ref each.
        unsafe {
            ffi::rte_pktmbuf_free_bulk(raw.as_ptr() as *mut *mut ffi::rte_mbuf, raw.len() as u32)
        };
    }
}

/// A burst of mbufs: what ports receive into and transmit from.
pub type MbufBurst<const N: usize> = Burst<Mbuf, N>;

impl<const N: usize> Burst<Mbuf, N> {
    /// Start loading, for every mbuf from slot `from` on, its three header lines (fields,
    /// `priv_size`, the private timestamp) and then its frame's first data line, so the misses
    /// of a whole burst overlap instead of stalling one packet at a time (a burst received
    /// from another core's writes costs four misses per mbuf otherwise). Hints only: nothing
    /// is read but `buf_addr`/`data_off`, which the second pass waits for.
    #[inline]
    pub fn prefetch_from(&self, from: usize) {
        let slots = &self.as_slice()[from.min(self.len())..];
        for m in slots {
            let base = m.0.as_ptr() as *const u8;
            for line in [0, 64, 128] {
                prefetch_addr(base.wrapping_add(line));
            }
        }
        for m in slots {
            let r = m.raw();
            prefetch_addr((r.buf_addr as *const u8).wrapping_add(usize::from(r.data_off)));
        }
    }

    /// The mbufs as a slice.
    #[inline]
    pub fn as_slice(&self) -> &[Mbuf] {
        // SAFETY: Mbuf is repr(transparent) over a non-null pointer and slots [0, len) are
        // owned non-null mbufs, so the prefix is a valid [Mbuf].
        unsafe { std::slice::from_raw_parts(self.raw_ptr() as *const Mbuf, self.len()) }
    }

    /// Make every mbuf from slot `from` on a single segment, so [`Mbuf::data`] is the whole
    /// frame: a chain is linearised in place ([`Mbuf::linearize`]) or, when its first segment
    /// lacks the room, freed. Order is kept. Returns `(linearised, freed)`. The common case
    /// (no chain) only reads each mbuf's segment count.
    #[inline]
    pub fn linearize_from(&mut self, from: usize) -> (usize, usize) {
        let from = from.min(self.len());
        if self.as_slice()[from..].iter().all(Mbuf::is_contiguous) {
            return (0, 0);
        }
        self.linearize_slow(from)
    }

    #[cold]
    fn linearize_slow(&mut self, from: usize) -> (usize, usize) {
        let (mut linearised, mut freed) = (0, 0);
        let len = self.len();
        let slots = self.as_raw_ptr();
        // SAFETY: the burst gives up [from, len) while the loop owns them (nothing is freed
        // twice even if the loop were left early).
        unsafe { self.set_len(from) };
        let mut kept = from;
        for i in from..len {
            // SAFETY: slot i < len holds an owned mbuf; it is taken out here and either put
            // back at `kept` (<= i, already vacated) or freed.
            let mut m = unsafe { Mbuf::from_raw(*slots.add(i) as *mut ffi::rte_mbuf) };
            if !m.is_contiguous() {
                if m.linearize() {
                    linearised += 1;
                } else {
                    drop(m);
                    freed += 1;
                    continue;
                }
            }
            // SAFETY: kept <= i < N: a slot inside the array whose previous item was moved out.
            unsafe { *slots.add(kept) = m.into_raw() as *mut c_void };
            kept += 1;
        }
        // SAFETY: slots [0, kept) hold owned mbufs: [0, from) untouched, the rest written above.
        unsafe { self.set_len(kept) };
        (linearised, freed)
    }

    /// The mbufs as a mutable slice.
    #[inline]
    pub fn as_mut_slice(&mut self) -> &mut [Mbuf] {
        let len = self.len();
        // SAFETY: as in as_slice; &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.as_raw_ptr() as *mut Mbuf, len) }
    }
}
