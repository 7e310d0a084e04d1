//! The sifrun launcher library, shared by the `sifrun` binary and the SPANK
//! plugin: building and inspecting SIF images ([`build`], [`inspect`]),
//! serving their squashfs root with FUSE ([`squash`], [`fuse`], [`serve`])
//! and running them as unprivileged containers ([`launch`]).
//!
//! A launch, one module per step: the ECL gate and the sequence
//! ([`launch`]), the host integration's binds (`host_binds`), the Slurm
//! client of a batch step ([`slurm_client`]), the plan ([`plan`]), the
//! command (`command`), staging (`stage`), the container root (`apply`),
//! the container's processes (`init`, and `hold` for a Slurm step), all
//! namespace and mount operations through one seam (`syscall`, the only
//! module allowed `unsafe`). A Slurm step under an activated ECL takes the
//! privileged path instead ([`privileged`]: root's mount namespace, the
//! image pinned ([`pin`]) and verified by an unprivileged child, served by
//! the kernel's squashfs), reusing the plan, staging and apply.
//!
//! Features (default on): `integrity`, signature verification (the ECL
//! and the privileged path; without it an activated ECL stops every
//! launch), and `registry`, docker:// images. The lean holder
//! `sifrun-hold` is built without both, so it loads neither OpenSSL nor
//! sequoia.
#![warn(missing_docs)]
// Without `integrity` or `registry` (the lean holder's build) the privileged
// path's and the download's helpers are compiled but unused.
#![cfg_attr(
    not(all(feature = "integrity", feature = "registry")),
    allow(dead_code, unused_imports)
)]
#![warn(clippy::too_many_lines)]

pub(crate) mod apply;
pub mod bind;
#[allow(missing_docs)]
pub mod build;
pub(crate) mod command;
#[allow(missing_docs)]
pub mod convert;
#[cfg(feature = "integrity")]
#[allow(missing_docs)]
pub mod ecl_check;
pub mod env;
#[allow(missing_docs)]
pub mod fuse;
pub(crate) mod hold;
pub(crate) mod host_binds;
pub mod imagecache;
pub(crate) mod init;
#[allow(missing_docs)]
pub mod inspect;
pub mod launch;
pub mod pin;
pub mod plan;
pub mod privilege;
pub mod privileged;
pub mod sanitize;
#[allow(missing_docs)]
pub mod serve;
pub mod slurm_client;
#[allow(missing_docs)]
pub mod squash;
pub(crate) mod stage;
pub(crate) mod syscall;

/// The launch under its former name: `launcher::container::{Launch, Hold,
/// Action, launch}` still work; new code uses [`launch`].
pub use launch as container;
