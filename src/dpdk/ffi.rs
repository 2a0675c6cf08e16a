//! Raw bindgen output for `csrc/wrapper.h` (DPDK 22.11 + the C shim). Use the safe wrappers in
//! the parent module; nothing outside `crate::dpdk` should name these.
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unused_imports,
    improper_ctypes,
    unsafe_op_in_unsafe_fn,
    unnecessary_transmutes,
    clippy::all,
    // Generated accessors (bitfields): nothing here for a person to justify.
    clippy::undocumented_unsafe_blocks
)]

include!(concat!(env!("OUT_DIR"), "/dpdk_bindings.rs"));
