//! The pure parts of importing Docker and OCI images (issue 14): image
//! references and source forms, digests, manifests and image configs,
//! platform choice, a tar header reader, the merge of layers into one tree
//! (whiteouts, hard links, symlinked parents, path safety) and Apptainer's
//! `/.singularity.d` layout generated from an image config.
//!
//! Nothing here touches the network or the filesystem; the launcher
//! orchestrates the conversion (see `docs/architecture.md`).

#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![warn(clippy::too_many_lines)]

pub mod apptainer;
pub mod digest;
pub mod layout;
pub mod manifest;
pub mod media;
pub mod platform;
pub mod reference;
pub mod tar;
pub mod tree;
