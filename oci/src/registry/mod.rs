//! The registry client (feature `net`; oci-design.md §2): manifests with
//! the OCI and Docker v2 `Accept` types, blobs streamed through a digest
//! [`Verifier`], size caps for manifests, configs and tokens; anonymous,
//! Basic and bearer-token authentication; redirects followed by us with
//! the credentials dropped when the origin changes; retries with back-off
//! for 408/429/5xx and connection failures; a connect timeout and a
//! "no data for N seconds" timeout on every read.

mod resume;
mod transport;

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::sync::Mutex;
use std::time::Duration;

use crate::auth::creds::{Credential, Origin};
use crate::auth::endpoint;
use crate::digest::{Digest, Verifier, VerifyError, read_capped};
use crate::manifest::{Descriptor, MAX_MANIFEST_BYTES};
use crate::media;
use crate::reference::Reference;

pub use transport::Auth;

/// How to talk to a registry.
#[derive(Debug, Clone)]
pub struct Options {
    /// `http://` instead of `https://` (`--nohttps`).
    pub plain_http: bool,
    /// The user's credential for this registry, and where it came from.
    pub credential: Option<(Credential, Origin)>,
    /// Connection set-up (TCP and TLS).
    pub connect_timeout: Duration,
    /// The longest wait for a response's headers or for any byte of a body.
    pub read_timeout: Duration,
    /// Tries per request (1 = no retry).
    pub attempts: u32,
    /// The first back-off; doubled on each retry, times a 0.5–1.5 jitter.
    pub backoff: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            plain_http: false,
            credential: None,
            connect_timeout: Duration::from_secs(15),
            read_timeout: Duration::from_secs(60),
            attempts: 5,
            backoff: Duration::from_secs(1),
        }
    }
}

/// What to do about a failed TLS handshake: a certificate the system does
/// not trust wants its CA installed; anything else is most often a
/// registry that speaks plain HTTP.
fn tls_hint(detail: &str) -> &'static str {
    if detail.contains("certificate") {
        "the registry's certificate is not trusted here: add its CA to the system's trust store"
    } else {
        "a plain-HTTP registry needs --nohttps"
    }
}

/// Why a registry request failed; every variant names the registry.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    /// The connection failed or broke (after the retries).
    #[error("registry {registry}: {what}: {detail}")]
    Transport {
        /// `host[:port]`.
        registry: String,
        /// What was being fetched.
        what: String,
        /// The transport's complaint.
        detail: String,
    },
    /// The TLS handshake failed (not retried).
    #[error(
        "registry {registry}: {what}: TLS failed: {detail} ({})",
        tls_hint(detail)
    )]
    Tls {
        /// `host[:port]`.
        registry: String,
        /// What was being fetched.
        what: String,
        /// The TLS library's complaint.
        detail: String,
    },
    /// The registry stopped answering.
    #[error("registry {registry}: no data for {} s while {what}", secs.as_secs())]
    Timeout {
        /// `host[:port]`.
        registry: String,
        /// What was being fetched (and how far it got).
        what: String,
        /// The timeout.
        secs: Duration,
    },
    /// A 401 and no credentials to answer it with.
    #[error(
        "registry {registry}: authentication required for {name} (set SIFRUN_DOCKER_USERNAME and SIFRUN_DOCKER_PASSWORD, REGISTRY_AUTH_FILE, or log in with docker login)"
    )]
    AuthRequired {
        /// `host[:port]`.
        registry: String,
        /// The repository.
        name: String,
    },
    /// The registry refused the credentials.
    #[error(
        "registry {registry}: unauthorized: the credentials from {origin} were refused{detail}"
    )]
    Unauthorized {
        /// `host[:port]`.
        registry: String,
        /// Where they came from.
        origin: String,
        /// The registry's message, `: …`, or nothing.
        detail: String,
    },
    /// An answer other than success.
    #[error("registry {registry}: {what}: {detail}")]
    Status {
        /// `host[:port]`.
        registry: String,
        /// What was being fetched.
        what: String,
        /// The status and the registry's message.
        detail: String,
        /// The HTTP status.
        status: u16,
    },
    /// Something sifrun will not do (a scheme, an insecure realm, …).
    #[error("registry {registry}: {detail}")]
    Refused {
        /// `host[:port]`.
        registry: String,
        /// Why.
        detail: String,
    },
    /// A digest or size check failed, or a body was over its cap.
    #[error("{}", io_line(.0))]
    Verify(io::Error),
    /// A local write failed.
    #[error("{what}: {error}")]
    Local {
        /// The file.
        what: String,
        /// The error.
        error: io::Error,
    },
}

fn io_line(e: &io::Error) -> String {
    match VerifyError::from_io(e) {
        Some(v) => v.to_string(),
        None => e.to_string(),
    }
}

/// A manifest or index as received.
#[derive(Debug, Clone)]
pub struct Fetched {
    /// The exact bytes (their sha256 is the manifest's digest).
    pub bytes: Vec<u8>,
    /// The `Content-Type`, parameters stripped.
    pub content_type: Option<String>,
    /// `sha256(bytes)`, checked against the requested digest or the
    /// `Docker-Content-Digest` header.
    pub digest: Digest,
}

/// A client for one repository of one registry.
pub struct Client {
    agent: ureq::Agent,
    reference: Reference,
    opts: Options,
    auth: Mutex<Option<Auth>>,
}

impl Client {
    /// A client for `reference`'s repository.
    pub fn new(reference: &Reference, opts: Options) -> Client {
        Client {
            agent: transport::agent(&opts),
            reference: reference.clone(),
            opts,
            auth: Mutex::new(None),
        }
    }

    /// The registry, `host[:port]`, for messages.
    pub fn registry(&self) -> &str {
        self.reference.domain()
    }

    /// The manifest or index `target` (a tag or a digest) names.
    pub fn manifest(&self, target: &str) -> Result<Fetched, RegistryError> {
        let url = endpoint::manifest_url(&self.reference, self.opts.plain_http, target);
        let what = format!("manifest {}:{target}", self.reference.path());
        let accept = media::MANIFEST_ACCEPT.join(", ");
        let resp = self.get(&url, Some(&accept), &what)?;
        let content_type = header(&resp, "content-type").map(|t| media::essence(&t).to_owned());
        let announced = header(&resp, "docker-content-digest");
        let bytes = read_capped(resp.into_body().into_reader(), &what, MAX_MANIFEST_BYTES)
            .map_err(|e| self.body_error(e, &what))?;
        let digest = Digest::of(&bytes);
        let want = match Digest::parse(target) {
            Ok(d) => Some(d),
            Err(_) => announced.and_then(|a| Digest::parse(a.trim()).ok()),
        };
        if let Some(w) = want
            && w != digest
        {
            return Err(RegistryError::Verify(io::Error::other(
                VerifyError::DigestMismatch {
                    what,
                    expected: w,
                    actual: digest,
                },
            )));
        }
        Ok(Fetched {
            bytes,
            content_type,
            digest,
        })
    }

    /// A small blob (a config) of at most `limit` bytes, verified.
    pub fn blob_bytes(&self, desc: &Descriptor, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let what = format!("blob {}", desc.digest);
        let url = endpoint::blob_url(&self.reference, self.opts.plain_http, &desc.digest);
        let resp = self.get(&url, None, &what)?;
        let v = Verifier::new(resp.into_body().into_reader(), what.clone(), limit)
            .expect(Some(desc.size), Some(desc.digest.clone()));
        read_capped(v, &what, limit).map_err(|e| self.body_error(e, &what))
    }

    /// Streams blob `desc` into `out` (truncated first, and again before
    /// each retry), checking its size and digest; `progress` gets the byte
    /// count as it grows. A connection that breaks is resumed where it
    /// stopped when the registry takes ranges (the digest's hash state
    /// carries on), else the blob is fetched again. On error `out` holds no
    /// verified content.
    pub fn blob_to(
        &self,
        desc: &Descriptor,
        out: &mut std::fs::File,
        progress: &dyn Fn(u64),
    ) -> Result<(), RegistryError> {
        let what = format!("blob {}", desc.digest);
        let url = endpoint::blob_url(&self.reference, self.opts.plain_http, &desc.digest);
        let mut attempt = 0;
        loop {
            let local = |error| RegistryError::Local {
                what: what.clone(),
                error,
            };
            out.set_len(0).map_err(local)?;
            out.seek(SeekFrom::Start(0)).map_err(local)?;
            let resp = self.get(&url, None, &what)?;
            let body = resume::Resumable::new(self, &url, &what, resp);
            let mut v = Verifier::new(body, what.clone(), u64::MAX)
                .expect(Some(desc.size), Some(desc.digest.clone()));
            let copied = copy(&mut v, out, progress);
            let count = v.count();
            match copied.and_then(|()| v.finish().map(drop).map_err(Copy::Read)) {
                Ok(()) => return Ok(()),
                Err(Copy::Write(e)) => return Err(local(e)),
                Err(Copy::Read(e)) => {
                    let err = self.body_error(e, &format!("{what} (after {count} bytes)"));
                    if matches!(err, RegistryError::Transport { .. })
                        && attempt + 1 < self.opts.attempts
                    {
                        tracing::warn!("{err}; retrying");
                        transport::sleep_backoff(&self.opts, attempt, None);
                        attempt += 1;
                        continue;
                    }
                    return Err(err);
                }
            }
        }
    }

    /// A read error of a body as the registry error it stands for.
    fn body_error(&self, e: io::Error, what: &str) -> RegistryError {
        if VerifyError::from_io(&e).is_some() {
            return RegistryError::Verify(e);
        }
        if transport::is_timeout(&e) {
            return RegistryError::Timeout {
                registry: self.registry().to_owned(),
                what: format!("reading {what}"),
                secs: self.opts.read_timeout,
            };
        }
        RegistryError::Transport {
            registry: self.registry().to_owned(),
            what: what.to_owned(),
            detail: transport::short(&e.to_string()),
        }
    }
}

enum Copy {
    Read(io::Error),
    Write(io::Error),
}

fn copy(r: &mut impl Read, w: &mut impl Write, progress: &dyn Fn(u64)) -> Result<(), Copy> {
    let mut buf = vec![0u8; 1 << 17];
    let mut total = 0u64;
    loop {
        let n = match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Copy::Read(e)),
        };
        w.write_all(&buf[..n]).map_err(Copy::Write)?;
        total += n as u64;
        progress(total);
    }
}

fn header(resp: &ureq::http::Response<ureq::Body>, name: &str) -> Option<String> {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

#[cfg(test)]
mod tests;
