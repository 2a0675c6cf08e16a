//! The packet-buffer abstraction the pure layers work on.
//!
//! A [`PacketBuf`] is one contiguous frame (Ethernet header first, no FCS) plus the little
//! metadata the COLO logic needs. The DPDK `Mbuf` implements it for the data path; [`VecBuf`]
//! implements it for tests and for socket transports. Nothing here allocates per packet except
//! `VecBuf` construction.

use std::fmt;

/// Why a buffer operation could not be done; the buffer is left unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufError {
    /// Not enough headroom for a prepend.
    NoHeadroom,
    /// Not enough tailroom for an append.
    NoTailroom,
    /// Asked to remove more bytes than the buffer holds.
    TooShort,
}

impl fmt::Display for BufError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BufError::NoHeadroom => "not enough headroom",
            BufError::NoTailroom => "not enough tailroom",
            BufError::TooShort => "buffer shorter than the requested length",
        })
    }
}

impl std::error::Error for BufError {}

/// A contiguous packet buffer.
pub trait PacketBuf {
    /// The frame bytes.
    fn data(&self) -> &[u8];
    /// The frame bytes, writable in place.
    fn data_mut(&mut self) -> &mut [u8];
    /// Frame length in bytes.
    fn len(&self) -> usize {
        self.data().len()
    }
    /// True for a zero-length frame.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Remove `n` bytes from the end.
    fn trim(&mut self, n: usize) -> Result<(), BufError>;
    /// Remove `n` bytes from the front.
    fn adj(&mut self, n: usize) -> Result<(), BufError>;
    /// Grow the front by `n` bytes and return them (contents unspecified).
    fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError>;
    /// Grow the end by `n` bytes and return them (contents unspecified).
    fn append(&mut self, n: usize) -> Result<&mut [u8], BufError>;
    /// True when the L4 checksum field holds only a pseudo-header partial sum that a device
    /// will complete (TX checksum offload, virtio `NEEDS_CSUM`): header rewrites must then not
    /// update that field.
    fn l4_csum_partial(&self) -> bool {
        false
    }
}

/// Headroom a [`VecBuf`] reserves by default, like an mbuf's.
pub const VEC_BUF_HEADROOM: usize = 128;

/// A `Vec<u8>`-backed [`PacketBuf`] with headroom, for tests and socket transports.
#[derive(Clone, PartialEq, Eq)]
pub struct VecBuf {
    storage: Vec<u8>,
    start: usize,
    end: usize,
    csum_partial: bool,
}

impl VecBuf {
    /// A buffer holding a copy of `frame`, with [`VEC_BUF_HEADROOM`] bytes of headroom.
    pub fn from_slice(frame: &[u8]) -> Self {
        Self::with_room(frame, VEC_BUF_HEADROOM, 0)
    }

    /// A buffer holding a copy of `frame` with the given head- and tailroom.
    pub fn with_room(frame: &[u8], headroom: usize, tailroom: usize) -> Self {
        let mut storage = vec![0u8; headroom + frame.len() + tailroom];
        storage[headroom..headroom + frame.len()].copy_from_slice(frame);
        VecBuf {
            storage,
            start: headroom,
            end: headroom + frame.len(),
            csum_partial: false,
        }
    }

    /// A buffer over `storage` (cleared and refilled: no allocation once it is large enough)
    /// holding `bytes`, its data starting at `start`: the bytes before are headroom.
    pub fn reusing(mut storage: Vec<u8>, bytes: &[u8], start: usize) -> Self {
        storage.clear();
        storage.extend_from_slice(bytes);
        VecBuf {
            start: start.min(bytes.len()),
            end: bytes.len(),
            storage,
            csum_partial: false,
        }
    }

    /// Bytes in front of the data.
    pub fn headroom(&self) -> usize {
        self.start
    }

    /// Headroom and data, from the start of the storage.
    pub fn with_headroom(&self) -> &[u8] {
        &self.storage[..self.end]
    }

    /// The storage, for reuse ([`VecBuf::reusing`]).
    pub fn into_storage(self) -> Vec<u8> {
        self.storage
    }

    /// Mark the L4 checksum as a device-completed partial sum (see [`PacketBuf::l4_csum_partial`]).
    pub fn set_l4_csum_partial(&mut self, partial: bool) {
        self.csum_partial = partial;
    }

    /// The frame as an owned vector.
    pub fn to_vec(&self) -> Vec<u8> {
        self.data().to_vec()
    }
}

impl fmt::Debug for VecBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "VecBuf({} bytes)", self.end - self.start)
    }
}

impl From<Vec<u8>> for VecBuf {
    fn from(frame: Vec<u8>) -> Self {
        VecBuf::from_slice(&frame)
    }
}

impl PacketBuf for VecBuf {
    // Inlined: every comparison reads both frames through these (a real call per access
    // otherwise, across the crate boundary of a thin-LTO build).
    #[inline]
    fn data(&self) -> &[u8] {
        &self.storage[self.start..self.end]
    }
    #[inline]
    fn data_mut(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.end]
    }
    fn trim(&mut self, n: usize) -> Result<(), BufError> {
        if n > self.end - self.start {
            return Err(BufError::TooShort);
        }
        self.end -= n;
        Ok(())
    }
    fn adj(&mut self, n: usize) -> Result<(), BufError> {
        if n > self.end - self.start {
            return Err(BufError::TooShort);
        }
        self.start += n;
        Ok(())
    }
    fn prepend(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        if n > self.start {
            return Err(BufError::NoHeadroom);
        }
        self.start -= n;
        Ok(&mut self.storage[self.start..self.start + n])
    }
    fn append(&mut self, n: usize) -> Result<&mut [u8], BufError> {
        // Tests and sockets may grow a VecBuf; a real mbuf's tailroom is fixed.
        let old_end = self.end;
        if self.storage.len() - self.end < n {
            self.storage.resize(self.end + n, 0);
        }
        self.end += n;
        Ok(&mut self.storage[old_end..self.end])
    }
    fn l4_csum_partial(&self) -> bool {
        self.csum_partial
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trim_adj_prepend_append_keep_bytes_consistent() {
        let mut b = VecBuf::with_room(&[1, 2, 3, 4], 2, 0);
        assert_eq!(b.data(), &[1, 2, 3, 4]);
        b.prepend(2).unwrap().copy_from_slice(&[8, 9]);
        assert_eq!(b.data(), &[8, 9, 1, 2, 3, 4]);
        assert_eq!(b.prepend(1), Err(BufError::NoHeadroom));
        b.adj(3).unwrap();
        b.trim(1).unwrap();
        assert_eq!(b.data(), &[2, 3]);
        b.append(2).unwrap().copy_from_slice(&[5, 6]);
        assert_eq!(b.data(), &[2, 3, 5, 6]);
        assert_eq!(b.trim(5), Err(BufError::TooShort));
        assert_eq!(b.adj(5), Err(BufError::TooShort));
        assert_eq!(b.len(), 4);
    }
}
