//! mgmt (work in progress).
pub mod ctl;
