//! Raw bindings generated from <slurm/spank.h> (see build.rs).
#![allow(
    non_upper_case_globals,
    non_camel_case_types,
    non_snake_case,
    dead_code,
    unsafe_code
)]
#![allow(clippy::all)]
include!(concat!(env!("OUT_DIR"), "/spank_bindings.rs"));
