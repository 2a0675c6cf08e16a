//! colo-proxy: a DPDK poll-mode COLO proxy.
//!
//! Layers (see ARCHITECTURE.md in the docs):
//! - pure, never touch DPDK, tested on [`buf::VecBuf`]: [`wire`], [`flow`], [`compare`],
//!   [`rewrite`], [`control`], [`config`];
//! - [`dpdk`]: the only module with FFI and `unsafe`;
//! - runtime: [`pipeline`] (lcore loops), [`link`] (inter-host transports), [`mgmt`]
//!   (management services).
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
pub mod link;
pub mod mgmt;
pub mod net;
pub mod pipeline;
pub mod rewrite;
pub mod wire;
