//! `colo-proxy ctl`: the control-socket client. Prints the reply as pretty JSON (exit 1 on an
//! error reply, 2 when the proxy cannot be reached) or, for `events`, streams one event per line.
//!
//! The TCP token comes from `--token-file` or the `COLO_PROXY_TOKEN` environment variable,
//! never from the command line (every user can read `/proc/*/cmdline`). Options may stand
//! anywhere, before or after the command words (`ctl events --raw`).

use std::io::{self, BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use crate::control::proto::{Command, Reply, Request, USAGE};

/// Where the default control sockets live.
pub const DEFAULT_SOCKET_DIR: &str = "/run/colo-proxy";

/// Environment variable with the TCP token (when `--token-file` is not given).
pub const TOKEN_ENV: &str = "COLO_PROXY_TOKEN";

/// Options of `colo-proxy ctl`.
#[derive(clap::Args, Debug)]
#[command(after_help = USAGE)]
pub struct CtlArgs {
    /// Control UNIX socket (default: the only `*.sock` in /run/colo-proxy).
    #[arg(long, conflicts_with = "tcp")]
    pub socket: Option<PathBuf>,
    /// Loopback TCP control endpoint (token from --token-file or $COLO_PROXY_TOKEN).
    #[arg(long)]
    pub tcp: Option<SocketAddr>,
    /// File holding the TCP endpoint's token (one line; keep it mode 0600).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Removed: a token on the command line is visible to every user (/proc/*/cmdline).
    #[arg(long, hide = true)]
    pub token: Option<String>,
    /// Seconds to wait for a reply (not used while streaming events).
    #[arg(long, default_value_t = 10)]
    pub timeout: u64,
    /// Print compact JSON.
    #[arg(long)]
    pub raw: bool,
    /// Command and arguments (options may come before or after them).
    #[arg(required = true)]
    pub words: Vec<String>,
}

/// The TCP token: `--token-file` (first line, trailing whitespace cut), else `$COLO_PROXY_TOKEN`
/// (`env` is the variable's value, passed in so this stays testable). `--token` is refused.
pub fn resolve_token(args: &CtlArgs, env: Option<String>) -> Result<Option<String>, String> {
    use std::os::unix::fs::PermissionsExt;
    if args.token.is_some() {
        return Err(format!(
            "--token was removed: a token on the command line is visible to every user in /proc/*/cmdline; use --token-file FILE or {TOKEN_ENV}"
        ));
    }
    let token = match &args.token_file {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .map_err(|e| format!("--token-file {}: {e}", p.display()))?;
            if let Ok(md) = std::fs::metadata(p) {
                if md.permissions().mode() & 0o077 != 0 {
                    eprintln!(
                        "colo-proxy ctl: warning: {} is readable by others (mode {:o}); chmod 600 it",
                        p.display(),
                        md.permissions().mode() & 0o777
                    );
                }
            }
            let t = text.lines().next().unwrap_or("").trim_end().to_string();
            if t.is_empty() {
                return Err(format!("--token-file {}: empty", p.display()));
            }
            Some(t)
        }
        None => env.filter(|t| !t.is_empty()),
    };
    if args.tcp.is_some() && token.is_none() {
        return Err(format!(
            "--tcp needs the token: --token-file FILE or {TOKEN_ENV}"
        ));
    }
    Ok(token)
}

/// A control endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// UNIX socket path.
    Unix(PathBuf),
    /// Loopback TCP address.
    Tcp(SocketAddr),
}

fn connect(
    t: &Target,
    timeout: Option<Duration>,
) -> io::Result<(Box<dyn BufRead>, Box<dyn Write>)> {
    Ok(match t {
        Target::Unix(p) => {
            let s = UnixStream::connect(p)?;
            s.set_read_timeout(timeout)?;
            (Box::new(BufReader::new(s.try_clone()?)), Box::new(s))
        }
        Target::Tcp(a) => {
            let s = TcpStream::connect_timeout(a, Duration::from_secs(5))?;
            s.set_read_timeout(timeout)?;
            (Box::new(BufReader::new(s.try_clone()?)), Box::new(s))
        }
    })
}

fn read_line(r: &mut dyn BufRead) -> Result<String, String> {
    let mut line = String::new();
    match r.read_line(&mut line) {
        Ok(0) => Err("connection closed without a reply".into()),
        Ok(_) => Ok(line),
        Err(e) => Err(format!("reading reply: {e}")),
    }
}

/// Send one request and wait for its reply.
pub fn request(t: &Target, req: &Request, timeout: Duration) -> Result<Reply, String> {
    let (mut r, mut w) = connect(t, Some(timeout)).map_err(|e| format!("connect {t:?}: {e}"))?;
    let sent = writeln!(w, "{}", req.to_json_line()).and_then(|()| w.flush());
    // A server that refuses a peer (its uid, the pre-auth limit) answers and closes at once,
    // maybe before the request was written: its answer is still there to read.
    let line = match (sent, read_line(&mut *r)) {
        (_, Ok(line)) => line,
        (Err(e), Err(_)) => return Err(format!("send: {e}")),
        (Ok(()), Err(e)) => return Err(e),
    };
    serde_json::from_str(&line).map_err(|e| format!("bad reply {line:?}: {e}"))
}

/// Subscribe and hand each event line to `each` until it returns false or the proxy closes.
pub fn stream_events(
    t: &Target,
    token: Option<String>,
    mut each: impl FnMut(&str) -> bool,
) -> Result<(), String> {
    let (mut r, mut w) =
        connect(t, Some(Duration::from_secs(10))).map_err(|e| format!("connect {t:?}: {e}"))?;
    let req = Request {
        cmd: Command::Events,
        token,
    };
    writeln!(w, "{}", req.to_json_line()).map_err(|e| format!("send: {e}"))?;
    let line = read_line(&mut *r)?;
    let reply: Reply =
        serde_json::from_str(&line).map_err(|e| format!("bad reply {line:?}: {e}"))?;
    if !reply.ok {
        return Err(reply.error.unwrap_or_default());
    }
    loop {
        let mut line = String::new();
        match r.read_line(&mut line) {
            Ok(0) => return Ok(()),
            Ok(_) => {
                if !each(line.trim_end()) {
                    return Ok(());
                }
            }
            // Quiet periods are normal on an event stream.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                continue
            }
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// The only `*.sock` in `dir`, if there is exactly one.
fn default_socket(dir: &Path) -> Result<PathBuf, String> {
    let socks: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("no --socket given and {}: {e}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    match socks.as_slice() {
        [one] => Ok(one.clone()),
        [] => Err(format!(
            "no --socket given and no *.sock in {}",
            dir.display()
        )),
        _ => Err(format!(
            "no --socket given and several sockets in {}; pick one",
            dir.display()
        )),
    }
}

/// `colo-proxy ctl`.
pub fn cli(args: &CtlArgs) -> ExitCode {
    let target = match (&args.tcp, &args.socket) {
        (Some(a), _) => Target::Tcp(*a),
        (None, Some(p)) => Target::Unix(p.clone()),
        (None, None) => match default_socket(Path::new(DEFAULT_SOCKET_DIR)) {
            Ok(p) => Target::Unix(p),
            Err(e) => {
                eprintln!("colo-proxy ctl: {e}");
                return ExitCode::from(2);
            }
        },
    };
    let token = match resolve_token(args, std::env::var(TOKEN_ENV).ok()) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("colo-proxy ctl: {e}");
            return ExitCode::from(2);
        }
    };
    // The token is for the TCP endpoint only; a UNIX peer is known by its uid.
    let token = if args.tcp.is_some() { token } else { None };
    let req = match Request::from_words(&args.words, token) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("colo-proxy ctl: {e}");
            return ExitCode::from(2);
        }
    };
    if req.cmd == Command::Events {
        let stdout = io::stdout();
        let r = stream_events(&target, req.token, |line| {
            let mut o = stdout.lock();
            writeln!(o, "{line}").is_ok() && o.flush().is_ok()
        });
        return match r {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("colo-proxy ctl: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match request(&target, &req, Duration::from_secs(args.timeout.max(1))) {
        Ok(reply) => {
            let v = serde_json::to_value(&reply).unwrap_or_default();
            let text = if args.raw {
                v.to_string()
            } else {
                serde_json::to_string_pretty(&v).unwrap_or_default()
            };
            println!("{text}");
            if reply.ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("colo-proxy ctl: {e}");
            ExitCode::from(2)
        }
    }
}
