//! The runtime: lcore poll loops running stages, rings between them, counters, topology.
pub mod cli;
pub mod counters;
pub mod io;
pub mod latency;
pub mod lcore;
pub mod link;
pub mod runtime;
pub mod sim;
