//! UNIX sockets that can steer the proxy (control socket, Xen notify) appear at their path
//! already with their final mode: the directory sees the socket moved in (`IN_MOVED_TO`), never
//! created there and then chmod-ed (`IN_CREATE` + `IN_ATTRIB`: the window in which any local user
//! could connect with the umask's mode).

mod mgmt_common;

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use colo_proxy::mgmt::server::{ControlServer, ServerConfig};
use colo_proxy::mgmt::xen::{NotifyEndpoint, XenConfig, XenSink};
use mgmt_common::TempDir;

/// An inotify watch on a directory.
struct Watch(OwnedFd);

impl Watch {
    fn new(dir: &Path) -> Watch {
        // SAFETY: plain syscall; the result is checked before use.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        assert!(
            fd >= 0,
            "inotify_init1: {}",
            std::io::Error::last_os_error()
        );
        // SAFETY: `fd` is a fresh descriptor nobody else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let p = CString::new(dir.as_os_str().as_bytes()).unwrap();
        let mask = libc::IN_CREATE | libc::IN_ATTRIB | libc::IN_MOVED_TO;
        // SAFETY: valid fd and NUL-terminated path for the duration of the call.
        let wd = unsafe {
            libc::inotify_add_watch(std::os::fd::AsRawFd::as_raw_fd(&fd), p.as_ptr(), mask)
        };
        assert!(
            wd >= 0,
            "inotify_add_watch: {}",
            std::io::Error::last_os_error()
        );
        Watch(fd)
    }

    /// (mask, name) of every event queued so far.
    fn events(&self) -> Vec<(u32, String)> {
        let mut buf = vec![0u8; 64 * 1024];
        // SAFETY: the buffer is valid for its length; non-blocking read.
        let n = unsafe {
            libc::read(
                std::os::fd::AsRawFd::as_raw_fd(&self.0),
                buf.as_mut_ptr().cast(),
                buf.len(),
            )
        };
        let n = usize::try_from(n).unwrap_or(0);
        let mut out = Vec::new();
        let mut at = 0;
        // struct inotify_event { int wd; u32 mask; u32 cookie; u32 len; char name[len]; }
        while at + 16 <= n {
            let u = |o: usize| u32::from_ne_bytes(buf[at + o..at + o + 4].try_into().unwrap());
            let (mask, len) = (u(4), u(12) as usize);
            let name = &buf[at + 16..(at + 16 + len).min(n)];
            let name = String::from_utf8_lossy(name)
                .trim_end_matches('\0')
                .to_string();
            out.push((mask, name));
            at += 16 + len;
        }
        out
    }
}

#[track_caller]
fn born_final(w: &Watch, name: &str) {
    let ev: Vec<u32> = w
        .events()
        .into_iter()
        .filter(|(_, n)| n == name)
        .map(|(m, _)| m)
        .collect();
    assert!(
        ev.iter().any(|m| m & libc::IN_MOVED_TO != 0),
        "{name}: not moved into place: {ev:x?}"
    );
    assert!(
        !ev.iter()
            .any(|m| m & (libc::IN_CREATE | libc::IN_ATTRIB) != 0),
        "{name}: created or chmod-ed at its final path: {ev:x?}"
    );
}

#[test]
fn control_socket_is_moved_into_place_with_its_mode() {
    let dir = TempDir::new("birth");
    let w = Watch::new(dir.path());
    let srv = ControlServer::bind(ServerConfig {
        unix_path: Some(dir.path().join("c.sock")),
        unix_mode: 0o600,
        ..Default::default()
    })
    .unwrap();
    born_final(&w, "c.sock");
    let md = std::fs::symlink_metadata(dir.path().join("c.sock")).unwrap();
    assert_eq!(md.permissions().mode() & 0o777, 0o600);
    drop(srv);
}

#[test]
fn xen_notify_socket_is_moved_into_place_0600() {
    let dir = TempDir::new("birthx");
    let w = Watch::new(dir.path());
    let p = dir.path().join("n.sock");
    let sink = XenSink::new(XenConfig::new(NotifyEndpoint::ListenUnix(p.clone()))).unwrap();
    born_final(&w, "n.sock");
    assert_eq!(
        std::fs::symlink_metadata(&p).unwrap().permissions().mode() & 0o777,
        0o600
    );
    drop(sink);
}
