//! control (work in progress).
pub mod xen;
