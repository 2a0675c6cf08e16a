//! Shared helpers for the peer-policy tests: a connection from a chosen local address, and a
//! connection that vanishes without a FIN (its host "lost power").
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

/// A TCP connection from a chosen local address (127.0.0.2, ...).
pub fn connect_from(local: &str, to: SocketAddr) -> TcpStream {
    use rustix::net::{AddressFamily, SocketType};
    let local: IpAddr = local.parse().unwrap();
    let fam = if local.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket(fam, SocketType::STREAM, None).unwrap();
    rustix::net::bind(&fd, &SocketAddr::new(local, 0)).unwrap();
    rustix::net::connect(&fd, &to).unwrap();
    TcpStream::from(fd)
}

/// Close a connection without a FIN or RST, as if its host lost power: `TCP_REPAIR` makes
/// the kernel drop the socket silently (needs CAP_NET_ADMIN; the tests run as root). The other
/// end learns of it only by sending something: its keepalive probe then gets a reset.
pub fn vanish(s: TcpStream) {
    // A delayed ACK still due from the other end would hit the hole at once and be answered
    // with a reset; let it go out first, so that only a keepalive probe can find the hole.
    std::thread::sleep(Duration::from_millis(300));
    let on: libc::c_int = 1;
    // SAFETY: valid fd owned by `s` for the call; the option value is a c_int that lives
    // across the call, with its size passed.
    let r = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_REPAIR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        r,
        0,
        "TCP_REPAIR (needs root): {}",
        std::io::Error::last_os_error()
    );
    drop(s);
}

/// A free loopback TCP port (bound and released; the caller binds it again at once).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Poll `f` every 2 ms until it returns `Some`, or panic after `limit`.
pub fn within<T>(limit: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let t0 = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(t0.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(2));
    }
}
