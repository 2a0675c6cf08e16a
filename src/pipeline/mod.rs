//! The runtime: lcore poll loops running stages, rings between them, counters, topology.
pub mod backpressure;
pub mod control;
pub mod counters;
pub mod idle;
pub mod io;
pub mod latency;
pub mod lcore;
pub mod linkio;
pub mod manage;
pub mod run;
pub mod runtime;
pub mod stages;
pub mod topology;
