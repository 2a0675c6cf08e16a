//! [`Burst`]: a fixed-capacity, allocation-free array of owned pointer-sized items
//! ([`Mbuf`](super::Mbuf)s, boxed messages, tokens), laid out as DPDK's `void *[]` so ports and
//! rings read and write it directly.

use std::marker::PhantomData;
use std::os::raw::c_void;

/// An owned item that travels as one `void *` (through rings and bursts).
///
/// # Safety
/// `from_raw(into_raw(x))` must give back `x`, and a raw value must be owned by exactly one
/// place at a time.
pub unsafe trait RawItem: Sized + Send {
    /// Give up ownership as a raw pointer.
    fn into_raw(self) -> *mut c_void;
    /// Take ownership back.
    ///
    /// # Safety
    /// `raw` must come from `into_raw` of the same type and not be owned elsewhere.
    unsafe fn from_raw(raw: *mut c_void) -> Self;
    /// Drop many raw items at once.
    ///
    /// # Safety
    /// Every entry must satisfy `from_raw`'s contract.
    unsafe fn drop_raw(raw: &[*mut c_void]) {
        for &r in raw {
            // SAFETY: by the caller's contract each raw value is owned and of type Self.
            drop(unsafe { Self::from_raw(r) });
        }
    }
}

// SAFETY: Box::into_raw/from_raw round-trip and transfer unique ownership.
unsafe impl<T: Send> RawItem for Box<T> {
    fn into_raw(self) -> *mut c_void {
        Box::into_raw(self) as *mut c_void
    }
    unsafe fn from_raw(raw: *mut c_void) -> Self {
        // SAFETY: by contract raw came from Box::into_raw of a Box<T>.
        unsafe { Box::from_raw(raw as *mut T) }
    }
}

/// A plain 64-bit token (e.g. a control-message code or an index) carried in a ring slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Token(pub u64);

// SAFETY: a token is plain data; the pointer value is just its bits (64-bit targets only).
unsafe impl RawItem for Token {
    fn into_raw(self) -> *mut c_void {
        self.0 as usize as *mut c_void
    }
    unsafe fn from_raw(raw: *mut c_void) -> Self {
        Token(raw as usize as u64)
    }
}

const _: () = assert!(
    std::mem::size_of::<usize>() == 8,
    "Token needs 64-bit pointers"
);

/// Up to `N` owned items in a fixed array; slots `[0, len)` are owned. Dropping the burst drops
/// (frees) the items it still holds.
pub struct Burst<T: RawItem, const N: usize> {
    raw: [*mut c_void; N],
    len: usize,
    _own: PhantomData<T>,
}

// SAFETY: a Burst owns its items like a Vec<T>; T: Send (RawItem bound).
unsafe impl<T: RawItem, const N: usize> Send for Burst<T, N> {}

impl<T: RawItem, const N: usize> Default for Burst<T, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T: RawItem, const N: usize> Burst<T, N> {
    /// An empty burst.
    #[inline]
    pub const fn new() -> Self {
        Burst {
            raw: [std::ptr::null_mut(); N],
            len: 0,
            _own: PhantomData,
        }
    }

    /// Items held.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `N`.
    #[inline]
    pub const fn capacity(&self) -> usize {
        N
    }

    /// Free slots.
    #[inline]
    pub fn free_space(&self) -> usize {
        N - self.len
    }

    /// True when no slot is free.
    #[inline]
    pub fn is_full(&self) -> bool {
        self.len == N
    }

    /// Append an item; gives it back when full.
    #[inline]
    pub fn push(&mut self, item: T) -> Result<(), T> {
        if self.len == N {
            return Err(item);
        }
        self.raw[self.len] = item.into_raw();
        self.len += 1;
        Ok(())
    }

    /// Remove the last item.
    #[inline]
    pub fn pop(&mut self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        self.len -= 1;
        // SAFETY: slot len was owned and is now outside [0, len).
        Some(unsafe { T::from_raw(self.raw[self.len]) })
    }

    /// Drop (free) all items.
    #[inline]
    pub fn clear(&mut self) {
        let n = self.len;
        self.len = 0;
        // SAFETY: slots [0, n) were owned; len is already 0 so they are not dropped twice.
        unsafe { T::drop_raw(&self.raw[..n]) };
    }

    /// Look at each item, front first, without taking it out.
    #[inline]
    pub fn for_each_ref(&self, mut f: impl FnMut(&T)) {
        for &r in &self.raw[..self.len] {
            // SAFETY: slots [0, len) are owned by the burst; ManuallyDrop leaves that ownership
            // in place (the value is never dropped here), so this is a borrow.
            let item = std::mem::ManuallyDrop::new(unsafe { T::from_raw(r) });
            f(&item);
        }
    }

    /// Take all items out, front first. Items not consumed are dropped with the iterator.
    #[inline]
    pub fn drain(&mut self) -> Drain<'_, T, N> {
        let end = self.len;
        self.len = 0;
        Drain {
            burst: self,
            pos: 0,
            end,
        }
    }

    /// Remove the first `n` slots from ownership (they were handed to DPDK) and move the rest
    /// to the front.
    #[inline]
    pub(crate) fn consume_front(&mut self, n: usize) {
        debug_assert!(n <= self.len);
        if n == 0 {
            return;
        }
        self.raw.copy_within(n..self.len, 0);
        self.len -= n;
    }

    /// Read-only pointer to slot 0.
    #[inline]
    pub(crate) fn raw_ptr(&self) -> *const *mut c_void {
        self.raw.as_ptr()
    }

    /// Pointer to slot 0 (for DPDK to read the owned items).
    #[inline]
    pub(crate) fn as_raw_ptr(&mut self) -> *mut *mut c_void {
        self.raw.as_mut_ptr()
    }

    /// Pointer to the first free slot (for DPDK to write new items).
    #[inline]
    pub(crate) fn spare_ptr(&mut self) -> *mut *mut c_void {
        // SAFETY: len <= N, so the offset is within or one past the array.
        unsafe { self.raw.as_mut_ptr().add(self.len) }
    }

    /// Set the number of owned slots.
    ///
    /// # Safety
    /// Slots `[0, len)` must all hold owned items of type `T`.
    #[inline]
    pub(crate) unsafe fn set_len(&mut self, len: usize) {
        debug_assert!(len <= N);
        self.len = len;
    }
}

impl<T: RawItem, const N: usize> Drop for Burst<T, N> {
    fn drop(&mut self) {
        self.clear();
    }
}

/// Iterator returned by [`Burst::drain`].
pub struct Drain<'a, T: RawItem, const N: usize> {
    burst: &'a mut Burst<T, N>,
    pos: usize,
    end: usize,
}

impl<T: RawItem, const N: usize> Iterator for Drain<'_, T, N> {
    type Item = T;
    #[inline]
    fn next(&mut self) -> Option<T> {
        if self.pos == self.end {
            return None;
        }
        let r = self.burst.raw[self.pos];
        self.pos += 1;
        // SAFETY: slot pos was owned by the burst and ownership moved to the drain.
        Some(unsafe { T::from_raw(r) })
    }
    fn size_hint(&self) -> (usize, Option<usize>) {
        (self.end - self.pos, Some(self.end - self.pos))
    }
}

impl<T: RawItem, const N: usize> ExactSizeIterator for Drain<'_, T, N> {}

impl<T: RawItem, const N: usize> Drop for Drain<'_, T, N> {
    fn drop(&mut self) {
        let (pos, end) = (self.pos, self.end);
        self.pos = end;
        // SAFETY: slots [pos, end) are still owned by the drain.
        unsafe { T::drop_raw(&self.burst.raw[pos..end]) };
    }
}
