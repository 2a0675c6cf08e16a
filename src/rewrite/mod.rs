//! rewrite (work in progress).
