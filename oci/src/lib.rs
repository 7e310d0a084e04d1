//! The pure parts of importing Docker and OCI images (issue 14): image
//! references and source forms, digests, manifests and image configs,
//! platform choice, a tar header reader, the merge of layers into one tree
//! (whiteouts, hard links, symlinked parents, path safety) and Apptainer's
//! `/.singularity.d` layout generated from an image config.
//!
//! Nothing here touches the network or the filesystem, except the
//! registry client behind the feature `net` ([`registry`]); the launcher
//! orchestrates the conversion (see `docs/architecture.md`). How the
//! pieces fit (`notes-coord/oci-design.md` §3.4):
//!
//! 1. [`reference::Source::parse`] the user's source; for a layout or an
//!    archive, [`layout`] finds `index.json`/`manifest.json` and the blobs
//!    ([`layout::index_archive`] gives members' offsets for in-place reads).
//! 2. [`manifest::parse_manifest`] the bytes (read with
//!    [`digest::read_capped`]); an index goes through
//!    [`platform::select`]; [`manifest::parse_config`] the config.
//! 3. Pass 1, per layer: blob → [`digest::Verifier`] (compressed digest and
//!    size) → decompressor ([`media::layer_compression`] or
//!    [`media::sniff`]) → `Verifier` again (the `diff_id`) →
//!    [`tar::Reader`], keeping only the [`tar::Entry`] headers in a
//!    [`tree::Layer`].
//! 4. [`tree::merge`] the layers, then [`tree::Tree::apply`] the
//!    [`apptainer::layout`] as a last layer ([`apptainer::as_layer`]), and
//!    take the [`tree::Tree::plan`].
//! 5. Pass 2: every [`tree::Emission::Dir`] header first; then re-read the
//!    layers in order and copy each [`tree::Emission::Node`]'s header (under
//!    its final path, xattrs filtered by [`tar::keep_xattr`]) and data at
//!    its source position, each [`tree::Emission::HardLink`] right after its
//!    target; the layout's entries come last, with their data from
//!    `as_layer` — one tar stream into `mksquashfs - OUT -tar`.

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod apptainer;
pub mod auth;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod media;
pub mod platform;
pub mod reference;
#[cfg(feature = "net")]
pub mod registry;
pub mod tar;
pub mod tree;
