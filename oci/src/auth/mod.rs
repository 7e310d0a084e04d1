//! Registry authentication, the pure parts: the `WWW-Authenticate`
//! challenge parser, the credential lookup and the token endpoint's URL
//! and answer.

pub mod challenge;
pub mod creds;
pub mod endpoint;
