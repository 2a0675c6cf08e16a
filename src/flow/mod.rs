//! flow (work in progress).
