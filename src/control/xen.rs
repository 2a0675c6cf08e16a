//! Xen COLO `notify_dev` protocol (reference §3.6), pure.
//!
//! Messages are QEMU-framed ASCII strings without NUL. The protocol is asymmetric:
//! - incoming (Xen → compare) frames are parsed with the link's `vnet_hdr_support`, so with the
//!   flag on they carry the extra 4-byte vnet field (its value is ignored);
//! - outgoing (compare → Xen) frames never carry it: always `u32 BE len` + text.
//!
//! Matching is exact on length and bytes, like QEMU's `packet_matches_str`.

/// Xen → compare: the proxy is initialising; reply [`GET_XEN_INIT`].
pub const PROXY_INIT: &[u8] = b"COLO_USERSPACE_PROXY_INIT";
/// Compare → Xen: reply to [`PROXY_INIT`].
pub const GET_XEN_INIT: &[u8] = b"COLO_COMPARE_GET_XEN_INIT";
/// Xen → compare: a checkpoint finished; flush primary queues, drop secondary queues.
pub const CHECKPOINT_DONE: &[u8] = b"COLO_CHECKPOINT";
/// Compare → Xen: outputs diverged; please checkpoint.
pub const DO_CHECKPOINT: &[u8] = b"DO_CHECKPOINT";

/// A message from Xen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenIn {
    /// `COLO_USERSPACE_PROXY_INIT`.
    ProxyInit,
    /// `COLO_CHECKPOINT` (checkpoint done).
    CheckpointDone,
}

/// A message to Xen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XenOut {
    /// `COLO_COMPARE_GET_XEN_INIT`.
    GetXenInit,
    /// `DO_CHECKPOINT`.
    DoCheckpoint,
}

/// An incoming notify message QEMU would also reject ("unsupported instruction").
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("unsupported Xen notify message ({len} bytes)")]
pub struct Unsupported {
    /// Payload length.
    pub len: usize,
}

/// Length of the largest encoded outgoing message.
pub const MAX_OUT_LEN: usize = 4 + 25;

impl XenIn {
    /// Parse one deframed payload (exact match).
    pub fn parse(payload: &[u8]) -> Result<XenIn, Unsupported> {
        match payload {
            p if p == PROXY_INIT => Ok(XenIn::ProxyInit),
            p if p == CHECKPOINT_DONE => Ok(XenIn::CheckpointDone),
            p => Err(Unsupported { len: p.len() }),
        }
    }

    /// The message text.
    pub fn text(self) -> &'static [u8] {
        match self {
            XenIn::ProxyInit => PROXY_INIT,
            XenIn::CheckpointDone => CHECKPOINT_DONE,
        }
    }

    /// Frame it as Xen does (with the vnet field when `vnet_hdr_support`); returns bytes
    /// written, or `None` if `out` is too small. For tests and Xen-side tools.
    pub fn encode(self, vnet_hdr_support: bool, out: &mut [u8]) -> Option<usize> {
        let t = self.text();
        let h = if vnet_hdr_support { 8 } else { 4 };
        let total = h + t.len();
        let out = out.get_mut(..total)?;
        out[..4].copy_from_slice(&(t.len() as u32).to_be_bytes());
        if vnet_hdr_support {
            out[4..8].fill(0);
        }
        out[h..].copy_from_slice(t);
        Some(total)
    }
}

impl XenOut {
    /// The message text.
    pub fn text(self) -> &'static [u8] {
        match self {
            XenOut::GetXenInit => GET_XEN_INIT,
            XenOut::DoCheckpoint => DO_CHECKPOINT,
        }
    }

    /// The reply QEMU's colo-compare sends for an incoming message, if any.
    pub fn reply_to(msg: XenIn) -> Option<XenOut> {
        match msg {
            XenIn::ProxyInit => Some(XenOut::GetXenInit),
            XenIn::CheckpointDone => None,
        }
    }

    /// Frame it: `u32 BE len` + text, never a vnet field. Returns bytes written, or `None`
    /// if `out` is shorter than [`MAX_OUT_LEN`] needs.
    pub fn encode(self, out: &mut [u8]) -> Option<usize> {
        let t = self.text();
        let total = 4 + t.len();
        let out = out.get_mut(..total)?;
        out[..4].copy_from_slice(&(t.len() as u32).to_be_bytes());
        out[4..].copy_from_slice(t);
        Some(total)
    }

    /// Parse a deframed outgoing payload (for Xen-side tools and tests).
    pub fn parse(payload: &[u8]) -> Option<XenOut> {
        match payload {
            p if p == GET_XEN_INIT => Some(XenOut::GetXenInit),
            p if p == DO_CHECKPOINT => Some(XenOut::DoCheckpoint),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_per_reference() {
        let mut b = [0u8; 64];
        let n = XenOut::GetXenInit.encode(&mut b).unwrap();
        assert_eq!(&b[..4], &[0, 0, 0, 0x19]);
        assert_eq!(&b[4..n], b"COLO_COMPARE_GET_XEN_INIT");
        let n = XenOut::DoCheckpoint.encode(&mut b).unwrap();
        assert_eq!(&b[..n], b"\x00\x00\x00\x0dDO_CHECKPOINT");
        assert_eq!(XenOut::DoCheckpoint.encode(&mut b[..16]), None);
        let n = XenIn::CheckpointDone.encode(true, &mut b).unwrap();
        assert_eq!(&b[..n], b"\x00\x00\x00\x0f\x00\x00\x00\x00COLO_CHECKPOINT");
        let n = XenIn::ProxyInit.encode(false, &mut b).unwrap();
        assert_eq!(&b[..4], &[0, 0, 0, 25]);
        assert_eq!(n, 29);
    }

    #[test]
    fn parse_is_exact() {
        assert_eq!(
            XenIn::parse(b"COLO_USERSPACE_PROXY_INIT"),
            Ok(XenIn::ProxyInit)
        );
        assert_eq!(XenIn::parse(b"COLO_CHECKPOINT"), Ok(XenIn::CheckpointDone));
        assert_eq!(
            XenIn::parse(b"COLO_CHECKPOINT\0"),
            Err(Unsupported { len: 16 })
        );
        assert_eq!(
            XenIn::parse(b"COLO_CHECKPOIN"),
            Err(Unsupported { len: 14 })
        );
        assert_eq!(XenIn::parse(b""), Err(Unsupported { len: 0 }));
        assert_eq!(XenOut::reply_to(XenIn::ProxyInit), Some(XenOut::GetXenInit));
        assert_eq!(XenOut::parse(b"DO_CHECKPOINT"), Some(XenOut::DoCheckpoint));
    }
}
