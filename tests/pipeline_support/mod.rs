//! What the `colo-proxy run` tests share on top of `netns_support` (declare
//! `mod netns_support;` next to `mod pipeline_support;`): the config tables every test proxy
//! uses, starting a proxy, the logs of a primary/secondary pair, and the graceful stop.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::netns_support::{Proc, SecHost};

/// The `[eal]`, `[mempool]`, `[idle]` and `[mgmt]` tables of a test proxy: lcores 0 and 1
/// without hugepages under its own `file_prefix`, control socket `dir/SOCK.sock`.
pub fn common_toml(file_prefix: &str, dir: &Path, sock: &str) -> String {
    format!(
        r#"[eal]
args = ["--lcores", "0@0,1@1", "--no-pci", "--no-huge", "-m", "512", "--no-shconf",
        "--file-prefix", "{file_prefix}", "--log-level", "lib.eal:warning"]
[mempool]
mbufs = 8191
[idle]
backoff = true
[mgmt]
control_socket = "{dir}/{sock}.sock"
"#,
        dir = dir.display()
    )
}

/// `colo-proxy run --config CFG` on the primary host (the root namespace) or in `host`, its
/// output in `dir/NAME.log`.
pub fn proxy(name: &str, cfg: &Path, dir: &Path, host: Option<&SecHost>) -> Proc {
    let bin = env!("CARGO_BIN_EXE_colo-proxy");
    let mut c = match host {
        Some(h) => h.cmd(bin),
        None => Command::new(bin),
    };
    c.args(["run", "--config", cfg.to_str().unwrap()]);
    Proc::spawn(name, c, &dir.join(format!("{name}.log")))
}

/// Both proxies' output so far, for assertion messages.
pub fn logs(primary: &Proc, secondary: &Proc) -> String {
    both(&primary.output(), &secondary.output())
}

fn both(primary: &str, secondary: &str) -> String {
    format!("--- primary\n{primary}\n--- secondary\n{secondary}")
}

/// Graceful stop: SIGTERM to both; each must exit 0 and report balanced accounting. Returns
/// their whole output (primary, secondary).
pub fn stop_both(primary: &mut Proc, secondary: &mut Proc) -> (String, String) {
    primary.signal(libc::SIGTERM);
    secondary.signal(libc::SIGTERM);
    let pst = primary.wait(Duration::from_secs(20));
    let sst = secondary.wait(Duration::from_secs(20));
    let (po, so) = (primary.output(), secondary.output());
    let all = both(&po, &so);
    assert!(
        pst.is_some_and(|s| s.success()),
        "primary exit {pst:?}\n{all}"
    );
    assert!(
        sst.is_some_and(|s| s.success()),
        "secondary exit {sst:?}\n{all}"
    );
    for o in [&po, &so] {
        assert!(
            o.lines()
                .any(|l| l.starts_with("accounting") && l.ends_with("balanced")),
            "{all}"
        );
    }
    (po, so)
}
