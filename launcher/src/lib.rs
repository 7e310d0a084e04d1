//! The sifrun launcher library, shared by the `sifrun` binary and the SPANK
//! plugin.
//!
//! Today it builds SIF images from a directory or a squashfs ([`build`]) and
//! summarises them ([`inspect`]). The unprivileged runtime (user and mount
//! namespaces, the in-process squashfs FUSE server, the container root plan
//! and its apply loop over a syscall seam) lands here next; the only module
//! allowed `unsafe` will be its syscall module.

pub mod apply;
pub mod bind;
pub mod build;
pub mod container;
pub mod ecl_check;
pub mod env;
pub mod fuse;
pub mod inspect;
pub mod plan;
pub mod privilege;
pub mod sanitize;
pub mod serve;
pub mod slurm_client;
pub mod squash;
pub mod syscall;
