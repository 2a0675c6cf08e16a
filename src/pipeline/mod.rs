//! pipeline (work in progress).
pub mod cli;
