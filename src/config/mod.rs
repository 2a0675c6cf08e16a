//! config (work in progress).
pub mod cli;
