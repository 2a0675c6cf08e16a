//! Who may talk to the proxy: the policy every listening socket applies (link sockets in server
//! mode, the Xen notify channel, the control socket).
//!
//! - [`Allowlist`]: IP addresses and prefixes a TCP peer must come from (IPv4-mapped IPv6
//!   peers, as a dual-stack listener reports them, are matched as IPv4).
//! - [`PeerPolicy::decide`]: one peer at a time. The current peer is kept while it is alive; a
//!   second connection is refused (or replaces it with `replace_peer`); a connection that comes
//!   while the current peer is closing waits for it.
//! - [`Keepalive`]: TCP keepalive and `TCP_USER_TIMEOUT` derived from one bound, so a peer whose
//!   host died (no FIN ever comes) is dropped within it and a restarted peer gets in.
//! - [`bind_unix`]: a UNIX listener created with its final mode and group (bound in a private
//!   0700 directory, then renamed into place: no window in which another user can connect).
//! - [`UidPolicy`]: which local users (`SO_PEERCRED`) a UNIX socket serves.
//! - [`RefusalLog`]: refusals are logged, at most once per [`RefusalLog::PERIOD`] per socket
//!   with the count of the ones not logged, so a flood cannot fill the log.
//!
//! The decisions are pure functions on plain values; the socket calls are thin wrappers
//! (rustix) around them.

use std::collections::BTreeSet;
use std::fmt;
use std::io;
use std::net::IpAddr;
use std::os::fd::AsFd;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::{Duration, Instant};

use ipnet::IpNet;
use rustix::event::{PollFd, PollFlags, Timespec};

/// IP addresses and prefixes a TCP peer must come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Allowlist(Vec<IpNet>);

/// Why an allowlist entry was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?}: expected an IP address or prefix (192.0.2.7, 10.0.0.0/8, fd00::/8){1}")]
pub struct AllowError(pub String, pub &'static str);

/// An IPv4-mapped IPv6 network (`::ffff:a.b.c.d/96+n`) as the IPv4 network it stands for.
fn unmap_net(n: IpNet) -> IpNet {
    match n {
        IpNet::V6(v6) if v6.prefix_len() >= 96 => match v6.addr().to_ipv4_mapped() {
            Some(v4) => ipnet::Ipv4Net::new(v4, v6.prefix_len() - 96)
                .map(IpNet::V4)
                .unwrap_or(n),
            None => n,
        },
        _ => n,
    }
}

/// A peer address as the allowlist sees it: IPv4-mapped IPv6 becomes IPv4.
pub fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl Allowlist {
    /// Loopback only (127.0.0.0/8 and ::1): the default where none is given for a channel
    /// that can release held packets (Xen notify).
    pub fn loopback() -> Self {
        Allowlist(vec![
            IpNet::from_str("127.0.0.0/8").unwrap_or_default(),
            IpNet::from_str("::1/128").unwrap_or_default(),
        ])
    }

    /// Parse entries: an address (a host) or a prefix with no host bits set.
    pub fn parse<S: AsRef<str>>(entries: &[S]) -> Result<Self, AllowError> {
        let mut nets = Vec::with_capacity(entries.len());
        for e in entries {
            let s = e.as_ref().trim();
            let net = match IpNet::from_str(s) {
                Ok(n) => {
                    if n.trunc() != n {
                        return Err(AllowError(
                            s.to_string(),
                            "; host bits set after the prefix length",
                        ));
                    }
                    n
                }
                Err(_) => match IpAddr::from_str(s) {
                    Ok(ip) => IpNet::from(ip),
                    Err(_) => return Err(AllowError(s.to_string(), "")),
                },
            };
            nets.push(unmap_net(net));
        }
        Ok(Allowlist(nets))
    }

    /// Whether `ip` is in one of the prefixes.
    pub fn allows(&self, ip: IpAddr) -> bool {
        let ip = unmap(ip);
        self.0.iter().any(|n| n.contains(&ip))
    }

    /// True when every entry is a loopback network (nothing off the host can match).
    pub fn loopback_only(&self) -> bool {
        self.0.iter().all(|n| n.network().is_loopback())
    }

    /// The entries.
    pub fn nets(&self) -> &[IpNet] {
        &self.0
    }
}

impl fmt::Display for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v: Vec<String> = self.0.iter().map(|n| n.to_string()).collect();
        write!(f, "[{}]", v.join(", "))
    }
}

/// The state of the current connection when another peer knocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Current {
    /// No connection.
    None,
    /// Connected and not known to be closing.
    Alive,
    /// The peer closed its side but sent data that is still to be read.
    Draining,
    /// Closed or failed (reset, keepalive or user timeout expired).
    Gone,
}

/// What to do with a new connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Take it (no current peer, or the current one is gone).
    Admit,
    /// Take it and drop the live current peer (`replace_peer = true`).
    Replace,
    /// Keep it until the closing current peer has been read to its end.
    Wait,
    /// Its address is not in the allowlist.
    RefuseNotAllowed,
    /// The current peer is alive.
    RefuseBusy,
}

/// One listening socket's peer policy.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerPolicy {
    /// TCP peers must come from here (`None`: any address).
    pub allow: Option<Allowlist>,
    /// A new peer replaces a live one (the behaviour before this policy).
    pub replace_peer: bool,
}

impl PeerPolicy {
    /// Decide about a peer at `ip` (`None` for a UNIX peer, which the allowlist does not
    /// apply to) given the current connection; `wait_free` says whether the one waiting
    /// slot is free.
    pub fn decide(&self, ip: Option<IpAddr>, current: Current, wait_free: bool) -> Verdict {
        if let (Some(a), Some(ip)) = (&self.allow, ip) {
            if !a.allows(ip) {
                return Verdict::RefuseNotAllowed;
            }
        }
        match current {
            Current::None | Current::Gone => Verdict::Admit,
            _ if self.replace_peer => Verdict::Replace,
            Current::Draining if wait_free => Verdict::Wait,
            Current::Draining | Current::Alive => Verdict::RefuseBusy,
        }
    }
}

/// How fast a silent TCP peer is declared dead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Upper bound: a peer that answers nothing is dropped within this time.
    pub timeout: Duration,
}

/// Smallest accepted [`Keepalive::timeout`] (the kernel's keepalive timers count seconds).
pub const MIN_KEEPALIVE: Duration = Duration::from_secs(2);
/// Default dead-peer bound.
pub const DEFAULT_KEEPALIVE_MS: u64 = 5000;

/// The socket options [`Keepalive`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepaliveParams {
    /// `TCP_KEEPIDLE`: quiet time before the first probe (whole seconds).
    pub idle: Duration,
    /// `TCP_KEEPINTVL`: between probes (whole seconds).
    pub interval: Duration,
    /// `TCP_KEEPCNT`: unanswered probes before the connection is dropped.
    pub count: u32,
    /// `TCP_USER_TIMEOUT` (ms): sent data unacknowledged this long drops the connection
    /// (keepalive does not probe while data is in flight).
    pub user_timeout_ms: u32,
}

impl Keepalive {
    /// The options: idle = interval = a quarter of the bound (at least 1 s), as many probes as
    /// fit in the rest, user timeout = the bound. idle + interval × count ≤ timeout.
    pub fn params(&self) -> KeepaliveParams {
        let t = self.timeout.max(MIN_KEEPALIVE).as_secs();
        let step = (t / 4).max(1);
        let count = ((t - step) / step).clamp(1, 255) as u32;
        KeepaliveParams {
            idle: Duration::from_secs(step),
            interval: Duration::from_secs(step),
            count,
            user_timeout_ms: u32::try_from(self.timeout.max(MIN_KEEPALIVE).as_millis())
                .unwrap_or(u32::MAX),
        }
    }

    /// Set the options on a connected TCP socket.
    pub fn apply<Fd: AsFd>(&self, fd: Fd) -> io::Result<()> {
        use rustix::net::sockopt;
        let p = self.params();
        let fd = fd.as_fd();
        sockopt::set_socket_keepalive(fd, true)?;
        sockopt::set_tcp_keepidle(fd, p.idle)?;
        sockopt::set_tcp_keepintvl(fd, p.interval)?;
        sockopt::set_tcp_keepcnt(fd, p.count)?;
        sockopt::set_tcp_user_timeout(fd, p.user_timeout_ms)?;
        Ok(())
    }
}

/// Look at a connected socket without reading from it: is the peer still there? `will_read`
/// says whether its owner reads it (then data left behind a FIN is still to be delivered:
/// [`Current::Draining`]); a socket nobody reads is [`Current::Gone`] once the peer closed.
pub fn probe<Fd: AsFd>(fd: Fd, will_read: bool) -> Current {
    let mut fds = [PollFd::new(&fd, PollFlags::IN | PollFlags::RDHUP)];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match rustix::event::poll(&mut fds, Some(&zero)) {
        // Cannot tell (EINTR, ...): assume alive; the next look decides.
        Err(_) | Ok(0) => Current::Alive,
        Ok(_) => {
            let r = fds[0].revents();
            if r.intersects(PollFlags::ERR | PollFlags::NVAL) {
                Current::Gone
            } else if r.intersects(PollFlags::HUP | PollFlags::RDHUP) {
                if will_read && r.contains(PollFlags::IN) {
                    Current::Draining
                } else {
                    Current::Gone
                }
            } else {
                Current::Alive
            }
        }
    }
}

/// Rate-limited refusal log for one socket.
#[derive(Debug)]
pub struct RefusalLog {
    what: String,
    last: Option<Instant>,
    suppressed: u64,
}

impl RefusalLog {
    /// At most one line per period.
    pub const PERIOD: Duration = Duration::from_secs(10);

    /// A log for the socket described by `what` (e.g. `link mirror tcp:0.0.0.0:9003`).
    pub fn new(what: impl Into<String>) -> Self {
        RefusalLog {
            what: what.into(),
            last: None,
            suppressed: 0,
        }
    }

    /// Log `why` for a refused peer now, unless a line was logged within the period.
    pub fn refused(&mut self, peer: &str, why: &str, now: Instant) {
        self.log(&format!("refused peer {peer}: {why}"), now);
    }

    /// Log `msg` now, unless a line was logged within the period (then it is only counted,
    /// and the count is added to the next line).
    pub fn log(&mut self, msg: &str, now: Instant) {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Self::PERIOD)
        {
            self.suppressed += 1;
            return;
        }
        let more = if self.suppressed > 0 {
            format!(" ({} more since the last message)", self.suppressed)
        } else {
            String::new()
        };
        eprintln!("warning: {}: {msg}{more}", self.what);
        self.last = Some(now);
        self.suppressed = 0;
    }
}

/// Which local users a UNIX socket serves (`SO_PEERCRED`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UidPolicy {
    /// Users served (root and the socket's owner always are).
    pub uids: BTreeSet<u32>,
    /// Primary groups served (the configured group).
    pub gids: BTreeSet<u32>,
}

impl UidPolicy {
    /// Root, `owner`, and with `group` its gid and its members (from the group database text
    /// of `/etc/group` and `/etc/passwd`, given as strings so this stays pure).
    pub fn new(owner: u32, group: Option<u32>, etc_group: &str, etc_passwd: &str) -> Self {
        let mut p = UidPolicy::default();
        p.uids.insert(0);
        p.uids.insert(owner);
        if let Some(g) = group {
            p.gids.insert(g);
            let members: BTreeSet<&str> = etc_group
                .lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split(':').collect();
                    (f.len() >= 4 && f[2].parse() == Ok(g)).then_some(f[3])
                })
                .flat_map(|m| m.split(',').map(str::trim).filter(|s| !s.is_empty()))
                .collect();
            for l in etc_passwd.lines() {
                let f: Vec<&str> = l.split(':').collect();
                if f.len() >= 4 {
                    if let Ok(uid) = f[2].parse::<u32>() {
                        // A user whose primary group is `g`, or a listed member.
                        if members.contains(f[0]) || f[3].parse() == Ok(g) {
                            p.uids.insert(uid);
                        }
                    }
                }
            }
        }
        p
    }

    /// Whether a peer with these credentials is served.
    pub fn allows(&self, uid: u32, gid: u32) -> bool {
        self.uids.contains(&uid) || self.gids.contains(&gid)
    }
}

/// A group given by name or number, resolved against `/etc/group` text.
pub fn resolve_group(spec: &str, etc_group: &str) -> Option<u32> {
    if let Ok(g) = spec.parse::<u32>() {
        return Some(g);
    }
    etc_group.lines().find_map(|l| {
        let f: Vec<&str> = l.split(':').collect();
        (f.len() >= 3 && f[0] == spec)
            .then(|| f[2].parse().ok())
            .flatten()
    })
}

/// Bind a UNIX stream listener at `path` that exists only with `mode` (and `group`, if
/// given) from its first moment: it is bound in a new 0700 directory next to `path`, given its
/// mode and group there, and renamed into place. `path` must not exist (the caller removes a
/// stale socket first).
pub fn bind_unix(path: &Path, mode: u32, group: Option<u32>) -> io::Result<UnixListener> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
    let dir = dir.unwrap_or(Path::new("."));
    // Short, so the temporary path fits where the final one does.
    let tmp_dir: PathBuf = dir.join(format!(".{:x}", std::process::id() ^ unique()));
    let tmp = tmp_dir.join("s");
    if tmp.as_os_str().len() > 107 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{}: path too long to create the socket safely (its directory plus 11 bytes must fit in 107)",
                path.display()
            ),
        ));
    }
    std::fs::DirBuilder::new().mode(0o700).create(&tmp_dir)?;
    let r = (|| {
        let l = UnixListener::bind(&tmp)?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
        if let Some(g) = group {
            std::os::unix::fs::chown(&tmp, None, Some(g))?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(l)
    })();
    let _ = std::fs::remove_file(&tmp);
    let _ = std::fs::remove_dir(&tmp_dir);
    r
}

/// A per-call number, so two binds in one process never share a directory.
fn unique() -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    N.fetch_add(1, Ordering::Relaxed).wrapping_mul(0x9e37_79b9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn allowlist_matches_prefixes_hosts_ipv6_and_v4_mapped() {
        let a = Allowlist::parse(&[
            "10.1.0.0/16",
            "192.0.2.7",
            "fd00::/8",
            "::ffff:198.51.100.0/120",
        ])
        .unwrap();
        assert!(a.allows(ip("10.1.255.3")));
        assert!(!a.allows(ip("10.2.0.1")));
        assert!(a.allows(ip("192.0.2.7")));
        assert!(!a.allows(ip("192.0.2.8")));
        assert!(a.allows(ip("fd12::1")));
        assert!(!a.allows(ip("fe80::1")));
        // A dual-stack listener reports IPv4 peers as ::ffff:a.b.c.d.
        assert!(a.allows(ip("::ffff:10.1.2.3")));
        assert!(!a.allows(ip("::ffff:10.2.2.3")));
        // A v4-mapped entry stands for the IPv4 network.
        assert!(a.allows(ip("198.51.100.9")));
        assert!(a.allows(ip("::ffff:198.51.100.9")));
        assert!(!a.allows(ip("198.51.101.9")));
        // An IPv4 prefix never matches an IPv6 address that only looks similar.
        assert!(!a.allows(ip("::10.1.2.3")));
    }

    #[test]
    fn allowlist_rejects_bad_entries_and_host_bits() {
        assert!(Allowlist::parse(&["10.0.0.1/8"]).is_err());
        assert!(Allowlist::parse(&["10.0.0.0/33"]).is_err());
        assert!(Allowlist::parse(&["host.example"]).is_err());
        assert!(Allowlist::parse(&["fd00::1/8"]).is_err());
        assert!(Allowlist::parse::<&str>(&[]).unwrap().nets().is_empty());
        let empty = Allowlist::parse::<&str>(&[]).unwrap();
        assert!(
            !empty.allows(ip("127.0.0.1")),
            "an empty list admits nobody"
        );
    }

    #[test]
    fn loopback_default() {
        let l = Allowlist::loopback();
        assert!(l.allows(ip("127.0.0.1")) && l.allows(ip("127.9.9.9")));
        assert!(l.allows(ip("::1")) && l.allows(ip("::ffff:127.0.0.1")));
        assert!(!l.allows(ip("10.0.0.1")) && !l.allows(ip("::2")));
        assert!(l.loopback_only());
        assert!(!Allowlist::parse(&["10.0.0.0/8"]).unwrap().loopback_only());
    }

    #[test]
    fn policy_keeps_the_live_peer() {
        let p = PeerPolicy {
            allow: Some(Allowlist::loopback()),
            replace_peer: false,
        };
        let lo = Some(ip("127.0.0.1"));
        assert_eq!(p.decide(lo, Current::None, true), Verdict::Admit);
        assert_eq!(p.decide(lo, Current::Gone, true), Verdict::Admit);
        assert_eq!(p.decide(lo, Current::Alive, true), Verdict::RefuseBusy);
        assert_eq!(p.decide(lo, Current::Draining, true), Verdict::Wait);
        assert_eq!(p.decide(lo, Current::Draining, false), Verdict::RefuseBusy);
        // The allowlist comes first, whatever the current state.
        let far = Some(ip("192.0.2.1"));
        for c in [Current::None, Current::Alive, Current::Gone] {
            assert_eq!(p.decide(far, c, true), Verdict::RefuseNotAllowed);
        }
        // UNIX peers: the allowlist does not apply.
        assert_eq!(p.decide(None, Current::None, true), Verdict::Admit);
        let r = PeerPolicy {
            replace_peer: true,
            ..p.clone()
        };
        assert_eq!(r.decide(lo, Current::Alive, true), Verdict::Replace);
        assert_eq!(
            r.decide(far, Current::Alive, true),
            Verdict::RefuseNotAllowed
        );
        let open = PeerPolicy::default();
        assert_eq!(open.decide(far, Current::None, true), Verdict::Admit);
    }

    #[test]
    fn keepalive_params_fit_the_bound() {
        for ms in [2000u64, 3000, 5000, 10_000, 60_000, 3_600_000] {
            let k = Keepalive {
                timeout: Duration::from_millis(ms),
            };
            let p = k.params();
            let worst = p.idle + p.interval * p.count;
            assert!(worst <= k.timeout, "{ms}: {p:?}");
            assert!(p.count >= 1 && p.idle >= Duration::from_secs(1));
            assert_eq!(p.user_timeout_ms as u64, ms);
        }
        let p = Keepalive {
            timeout: Duration::from_secs(2),
        }
        .params();
        assert_eq!((p.idle.as_secs(), p.interval.as_secs(), p.count), (1, 1, 1));
    }

    #[test]
    fn uid_policy_from_group_database() {
        let group = "root:x:0:\ncolo:x:990:alice,bob\nother:x:991:carol\n";
        let passwd = "root:x:0:0::/root:/bin/sh\nalice:x:1001:1001::/h:/bin/sh\n\
                      bob:x:1002:1002::/h:/bin/sh\ncarol:x:1003:1003::/h:/bin/sh\n\
                      dave:x:1004:990::/h:/bin/sh\n";
        assert_eq!(resolve_group("colo", group), Some(990));
        assert_eq!(resolve_group("991", group), Some(991));
        assert_eq!(resolve_group("nope", group), None);
        let p = UidPolicy::new(1000, Some(990), group, passwd);
        assert!(p.allows(0, 0) && p.allows(1000, 1000));
        assert!(p.allows(1001, 1001) && p.allows(1002, 5), "members");
        assert!(p.allows(1004, 1004), "primary group in passwd");
        assert!(p.allows(4242, 990), "peer's gid is the group");
        assert!(!p.allows(1003, 1003), "member of another group");
        let owner_only = UidPolicy::new(1000, None, group, passwd);
        assert!(!owner_only.allows(1001, 1001) && owner_only.allows(1000, 1));
    }

    #[test]
    fn bind_unix_has_its_final_mode_from_the_start() {
        let dir = std::env::temp_dir().join(format!("colo-access-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("x.sock");
        let l = bind_unix(&p, 0o640, None).unwrap();
        let md = std::fs::symlink_metadata(&p).unwrap();
        assert_eq!(md.permissions().mode() & 0o777, 0o640);
        assert!(std::os::unix::net::UnixStream::connect(&p).is_ok());
        drop(l);
        // Nothing left behind but the socket itself.
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
