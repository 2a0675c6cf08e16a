//! colo-proxy: a DPDK poll-mode COLO proxy.
//!
//! Layers (see ARCHITECTURE.md):
//! - pure, never touch DPDK, tested on [`buf::VecBuf`]: [`wire`], [`flow`], [`compare`],
//!   [`rewrite`], [`control`], [`config`];
//! - [`dpdk`]: the only module with FFI and `unsafe` (`unsafe_code` is denied everywhere else
//!   but in [`hint`], one prefetch intrinsic behind a safe reference API);
//! - runtime: [`pipeline`] (lcore loops and stages), [`link`] (inter-host transports),
//!   [`net`] (TCP/UNIX streams), [`mgmt`] (management services), [`dropin`] (the QEMU
//!   colo-compare drop-in);
//! - [`demo`] (the demo on the production wiring, with simulated guests) and [`cli`] (the
//!   subcommands).
#![deny(unsafe_code)]

pub mod buf;
pub mod cli;
pub mod compare;
pub mod config;
pub mod control;
pub mod demo;
#[allow(unsafe_code)]
pub mod dpdk;
pub mod dropin;
pub mod flow;
#[allow(unsafe_code)]
pub mod hint;
pub mod link;
pub mod mgmt;
pub mod net;
pub mod pipeline;
pub mod rewrite;
pub mod wake;
pub mod wire;
