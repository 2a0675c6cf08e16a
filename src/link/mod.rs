//! link (work in progress).
