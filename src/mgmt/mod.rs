//! mgmt (work in progress).
