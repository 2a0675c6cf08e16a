//! `colo-proxy` command line. No protocol logic lives here: each subcommand hands over to the
//! library module that owns it.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "colo-proxy", version, about = "DPDK poll-mode COLO proxy")]
struct Cli {
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
    Demo(colo_proxy::pipeline::cli::DemoArgs),
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
    Ctl(colo_proxy::mgmt::ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run { config, eal } => match colo_proxy::config::Config::load(&config) {
            // The colo-compare drop-in needs no EAL; the pipeline reports config errors itself.
            Ok(cfg) if cfg.role == colo_proxy::config::Role::Compare => {
                colo_proxy::link::dropin::run(&cfg)
            }
            _ => colo_proxy::pipeline::cli::run(&config, &eal),
        },
        Command::Demo(args) => colo_proxy::pipeline::cli::demo(&args),
        Command::CheckConfig { file } => colo_proxy::config::cli::check_config(
            &file,
            &colo_proxy::pipeline::topology::memory_summary,
        ),
        Command::Selfcheck { eal } => colo_proxy::dpdk::selfcheck::cli(&eal),
        Command::Ctl(args) => colo_proxy::mgmt::ctl::cli(&args),
    }
}
