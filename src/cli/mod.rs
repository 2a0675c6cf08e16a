//! The `colo-proxy` subcommands: argument parsing and the hand-over to the layer that owns
//! each (no protocol logic here). `run` loads the config once and picks the runtime by role:
//! the DPDK pipeline (primary, secondary) or the colo-compare drop-in (compare).

pub mod check_config;
pub mod ctl;
pub mod demo;
pub mod run;
pub mod selfcheck;

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "colo-proxy",
    version,
    about = "DPDK poll-mode COLO proxy",
    long_about = "DPDK poll-mode COLO proxy: mirrors client traffic to the secondary VM, compares \
the primary's and the secondary's output per connection, releases matching packets and asks for \
a checkpoint when they diverge. Configuration: /etc/colo-proxy/*.toml (colo-proxy-config(5) is \
docs/CONFIG.md); operation: docs/OPERATIONS.md."
)]
struct Cli {
    /// Log level: off, error, warn, info, debug, trace (default: $COLO_PROXY_LOG, else info).
    #[arg(long, global = true, value_name = "LEVEL")]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy from a TOML config; EAL options after `--` override the file's.
    Run {
        /// Configuration file (see dpdk-config/).
        #[arg(long, short)]
        config: PathBuf,
        /// EAL arguments (after `--`).
        #[arg(last = true)]
        eal: Vec<String>,
    },
    /// Run a complete primary + secondary on virtual devices with built-in traffic.
    Demo(demo::DemoArgs),
    /// Validate a configuration file and print what it describes.
    CheckConfig {
        /// Configuration file.
        file: PathBuf,
    },
    /// Bring up EAL on virtual devices and forward a burst (DPDK self-check).
    Selfcheck {
        /// EAL arguments (after `--`); defaults work without hugepages.
        #[arg(last = true)]
        eal: Vec<String>,
    },
    /// Talk to a running proxy's control socket.
    Ctl(ctl::CtlArgs),
    /// Write the man pages (colo-proxy.1, colo-proxy-<subcommand>.1) into DIR.
    #[command(hide = true)]
    GenMan {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
    /// Write bash, zsh and fish completions into DIR.
    #[command(hide = true)]
    GenCompletions {
        /// Output directory (created if missing).
        dir: PathBuf,
    },
}

/// The man pages: the command and each visible subcommand (`colo-proxy-run.1`, ...).
fn gen_man(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let cmd = Cli::command();
    let mut buf = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut buf)?;
    std::fs::write(dir.join("colo-proxy.1"), buf)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        let name = format!("colo-proxy-{}", sub.get_name());
        // clap names are 'static; a few short strings leaked once per gen-man run.
        let leaked: &'static str = Box::leak(name.clone().into_boxed_str());
        let sub = sub.clone().name(leaked).version(env!("CARGO_PKG_VERSION"));
        let mut buf = Vec::new();
        clap_mangen::Man::new(sub).render(&mut buf)?;
        std::fs::write(dir.join(format!("{name}.1")), buf)?;
    }
    Ok(())
}

/// Shell completions for bash, zsh and fish.
fn gen_completions(dir: &Path) -> std::io::Result<()> {
    use clap_complete::Shell;
    std::fs::create_dir_all(dir)?;
    let mut cmd = Cli::command();
    for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
        clap_complete::generate_to(shell, &mut cmd, "colo-proxy", dir)?;
    }
    Ok(())
}

fn written(what: &str, dir: &Path, r: std::io::Result<()>) -> ExitCode {
    match r {
        Ok(()) => {
            println!("{what} written to {}", dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}: {e}", dir.display());
            ExitCode::FAILURE
        }
    }
}

/// The `colo-proxy` command: parse the command line, set up logging, run the subcommand.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = crate::mgmt::service::init_logging(cli.log_level.as_deref()) {
        eprintln!("error: --log-level: {e}");
        return ExitCode::from(2);
    }
    match cli.command {
        Command::Run { config, eal } => run::run(&config, &eal),
        Command::Demo(args) => demo::demo(&args),
        Command::CheckConfig { file } => check_config::check_config(&file),
        Command::Selfcheck { eal } => selfcheck::cli(&eal),
        Command::Ctl(args) => ctl::cli(&args),
        Command::GenMan { dir } => written("man pages", &dir, gen_man(&dir)),
        Command::GenCompletions { dir } => written("completions", &dir, gen_completions(&dir)),
    }
}
