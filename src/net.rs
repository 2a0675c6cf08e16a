//! One non-blocking byte stream and one listener for TCP and UNIX sockets, shared by the
//! link transport, the control server and the checkpoint-notify sinks. A UNIX listener
//! removes its socket file when dropped.

use std::io::{self, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;

/// A connected TCP or UNIX stream socket.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// UNIX (stream).
    Unix(UnixStream),
}

/// What a non-blocking [`Stream::read_into`] produced.
pub enum ReadOutcome {
    /// Bytes appended (maybe zero: nothing available).
    Data,
    /// The peer closed or the socket failed.
    Closed(String),
}

impl Stream {
    /// Switch non-blocking mode.
    pub fn set_nonblocking(&self, on: bool) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nonblocking(on),
            Stream::Unix(s) => s.set_nonblocking(on),
        }
    }

    /// Disable Nagle on TCP (frames go out when written); nothing to do on UNIX.
    pub fn set_nodelay(&self) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_nodelay(true),
            Stream::Unix(_) => Ok(()),
        }
    }

    /// Shut both directions down (errors ignored: the peer may be gone already).
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(std::net::Shutdown::Both),
            Stream::Unix(s) => s.shutdown(std::net::Shutdown::Both),
        };
    }

    /// Read what is available (at most about `budget` bytes) into `buf`.
    pub fn read_into(&mut self, buf: &mut Vec<u8>, budget: usize) -> ReadOutcome {
        let mut tmp = [0u8; 4096];
        let mut total = 0;
        while total < budget {
            match self.read(&mut tmp) {
                Ok(0) => return ReadOutcome::Closed("peer closed".into()),
                Ok(n) => {
                    buf.extend_from_slice(&tmp[..n]);
                    total += n;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => return ReadOutcome::Closed(e.to_string()),
            }
        }
        ReadOutcome::Data
    }

    /// Write as much of `buf` as the socket takes; drains what was written.
    pub fn flush_from(&mut self, buf: &mut Vec<u8>) -> Result<(), String> {
        let mut off = 0;
        while off < buf.len() {
            match self.write(&buf[off..]) {
                Ok(0) => return Err("peer closed".into()),
                Ok(n) => off += n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) => {
                    buf.drain(..off);
                    return Err(e.to_string());
                }
            }
        }
        buf.drain(..off);
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Stream::Tcp(s) => s.as_fd(),
            Stream::Unix(s) => s.as_fd(),
        }
    }
}

/// A listening TCP or UNIX socket.
#[derive(Debug)]
pub enum Listener {
    /// TCP.
    Tcp(TcpListener),
    /// UNIX, with the socket file it removes when dropped.
    Unix(UnixListener, PathBuf),
}

impl Listener {
    /// The stream and, for TCP, the peer's address.
    pub fn accept(&self) -> io::Result<(Stream, Option<SocketAddr>)> {
        match self {
            Listener::Tcp(l) => l.accept().map(|(s, a)| (Stream::Tcp(s), Some(a))),
            Listener::Unix(l, _) => l.accept().map(|(s, _)| (Stream::Unix(s), None)),
        }
    }

    /// The bound address of a TCP listener.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        match self {
            Listener::Tcp(l) => l.local_addr().ok(),
            Listener::Unix(..) => None,
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Listener::Tcp(l) => l.as_fd(),
            Listener::Unix(l, _) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, p) = self {
            let _ = std::fs::remove_file(p);
        }
    }
}
