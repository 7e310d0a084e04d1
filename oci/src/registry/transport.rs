//! One GET as the registry protocol needs it: redirects (≤ 5, only
//! http(s), never https → http, credentials only to the registry's own
//! origin), a 401 answered once with Basic or a bearer token, retries
//! with back-off and `Retry-After` for 408/429/5xx and connection
//! failures.

use std::io;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use ureq::http::Response;
use ureq::tls::{RootCerts, TlsConfig, TlsProvider};
use ureq::{Agent, Body};

use super::{Client, Options, RegistryError, header};
use crate::auth::challenge::{self, Challenge};
use crate::auth::creds::Credential;
use crate::auth::endpoint::{self, MAX_ERROR_BYTES, MAX_TOKEN_BYTES};
use crate::digest::read_capped;

/// Redirects followed per request.
const MAX_REDIRECTS: usize = 5;
/// The longest `Retry-After` honoured.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(120);

/// The `Authorization` value in use, never shown.
#[derive(Clone)]
pub struct Auth(String);

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Auth(***)")
    }
}

/// The agent: OpenSSL with the system's trust store, no redirects of its
/// own, statuses as answers, the timeouts of `opts`, proxies from the
/// environment.
pub(super) fn agent(opts: &Options) -> Agent {
    let tls = TlsConfig::builder()
        .provider(TlsProvider::NativeTls)
        .root_certs(RootCerts::PlatformVerifier)
        .build();
    Agent::config_builder()
        .tls_config(tls)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .http_status_as_error(false)
        .timeout_connect(Some(opts.connect_timeout))
        .timeout_recv_response(Some(opts.read_timeout))
        .timeout_per_read(Some(opts.read_timeout))
        .user_agent(concat!("sifrun/", env!("CARGO_PKG_VERSION")))
        .build()
        .into()
}

/// Whether an I/O error from a body read is ureq's timeout.
pub(super) fn is_timeout(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|x| x.downcast_ref::<ureq::Error>())
            .is_some_and(|u| matches!(u, ureq::Error::Timeout(_)))
}

/// An error's text on one line, at most 300 characters.
pub(super) fn short(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect()
}

/// Sleeps before retry `attempt` (0-based): `retry_after`, else the
/// back-off doubled per attempt times a 0.5–1.5 jitter.
pub(super) fn sleep_backoff(opts: &Options, attempt: u32, retry_after: Option<Duration>) {
    let d = retry_after.unwrap_or_else(|| {
        let base = opts.backoff.saturating_mul(1 << attempt.min(6));
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        base.mul_f64(0.5 + f64::from(nanos % 1000) / 1000.0)
    });
    std::thread::sleep(d);
}

fn retryable_status(s: u16) -> bool {
    matches!(s, 408 | 429 | 500 | 502 | 503 | 504)
}

impl Client {
    fn transport(&self, what: &str, e: &ureq::Error) -> RegistryError {
        if let ureq::Error::Timeout(t) = e
            && !matches!(t, ureq::Timeout::Connect | ureq::Timeout::Resolve)
        {
            return RegistryError::Timeout {
                registry: self.registry().to_owned(),
                what: format!("waiting for {what}"),
                secs: self.opts.read_timeout,
            };
        }
        let registry = self.registry().to_owned();
        // ureq's BadUri quotes the URL, query (signature) included.
        let detail = match e {
            ureq::Error::BadUri(_) => "bad URI".to_owned(),
            _ => short(&e.to_string()),
        };
        let what = what.to_owned();
        match e {
            ureq::Error::Tls(_) | ureq::Error::NativeTls(_) | ureq::Error::Der(_) => {
                RegistryError::Tls {
                    registry,
                    what,
                    detail,
                }
            }
            // A name that does not resolve is not retried.
            ureq::Error::HostNotFound => RegistryError::Refused {
                registry,
                detail: format!("{what}: host not found"),
            },
            ureq::Error::Io(io) if io.to_string().contains("failed to lookup address") => {
                RegistryError::Refused {
                    registry,
                    detail: format!("{what}: host not found ({detail})"),
                }
            }
            ureq::Error::Io(_)
            | ureq::Error::ConnectionFailed
            | ureq::Error::Timeout(_)
            | ureq::Error::Protocol(_)
            | ureq::Error::BodyStalled => RegistryError::Transport {
                registry,
                what,
                detail,
            },
            _ => RegistryError::Refused {
                registry,
                detail: format!("{what}: {detail}"),
            },
        }
    }

    /// GET `url` with its redirects; the registry's credentials go only to
    /// the registry's own origin. Returns the answer and the URL that gave it.
    fn send(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
        auth: Option<&Auth>,
        from: Option<u64>,
    ) -> Result<(Response<Body>, String), RegistryError> {
        let origin = url.to_owned();
        let mut url = url.to_owned();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = self.agent.get(&url);
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some(n) = from {
                req = req.header("Range", &format!("bytes={n}-"));
            }
            if let Some(a) = auth.filter(|_| endpoint::same_origin(&origin, &url)) {
                req = req.header("Authorization", &a.0);
            }
            let resp = req.call().map_err(|e| self.transport(what, &e))?;
            let status = resp.status().as_u16();
            let location = header(&resp, "location");
            let (301 | 302 | 303 | 307 | 308, Some(loc)) = (status, location) else {
                return Ok((resp, url));
            };
            let next = endpoint::resolve_location(&url, &loc).map_err(|e| self.refused(&e))?;
            if url.starts_with("https:") && !next.starts_with("https:") {
                return Err(self.refused(&format!(
                    "{what}: redirect from https to {} refused",
                    endpoint::without_query(&next)
                )));
            }
            tracing::debug!(what, "redirected");
            url = next;
        }
        Err(self.refused(&format!("{what}: more than {MAX_REDIRECTS} redirects")))
    }

    fn refused(&self, detail: &dyn std::fmt::Display) -> RegistryError {
        RegistryError::Refused {
            registry: self.registry().to_owned(),
            detail: detail.to_string(),
        }
    }

    /// GET with authentication and retries; returns a 2xx answer.
    pub(super) fn get(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
    ) -> Result<Response<Body>, RegistryError> {
        self.get_from(url, accept, what, None)
    }

    /// [`Client::get`], from byte `from` on (`Range: bytes=FROM-`).
    pub(super) fn get_from(
        &self,
        url: &str,
        accept: Option<&str>,
        what: &str,
        from: Option<u64>,
    ) -> Result<Response<Body>, RegistryError> {
        let mut attempt = 0;
        let mut authenticated = false;
        loop {
            let auth = self.auth.lock().map(|a| a.clone()).unwrap_or(None);
            let result = self.send(url, accept, what, auth.as_ref(), from);
            let retry = match result {
                Ok((resp, _)) if resp.status().is_success() => return Ok(resp),
                // A 401 from a host the registry redirected to is not the
                // registry's challenge: the credentials never go there.
                Ok((resp, at))
                    if resp.status().as_u16() == 401 && !endpoint::same_origin(url, &at) =>
                {
                    return Err(self.foreign_401(&at, what));
                }
                Ok((resp, _)) if resp.status().as_u16() == 401 && !authenticated => {
                    authenticated = true;
                    let a = self.authenticate(&resp)?;
                    *self
                        .auth
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(a);
                    continue;
                }
                Ok((resp, _)) if retryable_status(resp.status().as_u16()) => {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .map_or(0, |d| d.as_secs());
                    let after = header(&resp, "retry-after")
                        .and_then(|v| endpoint::retry_after(&v, now, MAX_RETRY_AFTER));
                    let err = self.status_error(resp, what);
                    (err, after)
                }
                Ok((resp, _)) => return Err(self.status_error(resp, what)),
                Err(e @ RegistryError::Transport { .. }) => (e, None),
                Err(e) => return Err(e),
            };
            if attempt + 1 >= self.opts.attempts {
                return Err(retry.0);
            }
            tracing::warn!("{}; retrying", retry.0);
            sleep_backoff(&self.opts, attempt, retry.1);
            attempt += 1;
        }
    }

    /// A 401 from `at`, a redirect target outside the registry's origin.
    fn foreign_401(&self, at: &str, what: &str) -> RegistryError {
        let host = endpoint::split_url(at).map_or("?", |(_, h, _)| h);
        RegistryError::Status {
            registry: self.registry().to_owned(),
            what: what.to_owned(),
            detail: format!(
                "HTTP 401 from {host}, where the registry redirected; \
                 credentials are sent only to the registry itself"
            ),
            status: 401,
        }
    }

    /// A non-success answer as an error with the registry's message.
    fn status_error(&self, resp: Response<Body>, what: &str) -> RegistryError {
        let status = resp.status().as_u16();
        let body =
            read_capped(resp.into_body().into_reader(), what, MAX_ERROR_BYTES).unwrap_or_default();
        let message = endpoint::error_message(&body);
        if status == 401 {
            return self.unauthorized(message.map(|m| m.1));
        }
        let reason = match (status, message.as_ref().map(|m| m.0.as_str())) {
            (404, Some("MANIFEST_UNKNOWN")) => "not found (no such tag or digest)".to_owned(),
            (404, Some("NAME_UNKNOWN")) => "not found (no such repository)".to_owned(),
            (404, Some("BLOB_UNKNOWN")) => "not found (no such blob)".to_owned(),
            (404, _) => "not found".to_owned(),
            (403, _) => "access denied".to_owned(),
            (429, _) => "too many requests (rate limited)".to_owned(),
            (s, _) => format!("HTTP {s}"),
        };
        let detail = match message {
            Some((_, text)) => format!("{reason} ({text})"),
            None => reason,
        };
        RegistryError::Status {
            registry: self.registry().to_owned(),
            what: what.to_owned(),
            detail,
            status,
        }
    }

    fn unauthorized(&self, message: Option<String>) -> RegistryError {
        match &self.opts.credential {
            None => RegistryError::AuthRequired {
                registry: self.registry().to_owned(),
                name: self.reference.path().to_owned(),
            },
            Some((_, origin)) => RegistryError::Unauthorized {
                registry: self.registry().to_owned(),
                origin: origin.to_string(),
                detail: message.map(|m| format!(" ({m})")).unwrap_or_default(),
            },
        }
    }

    /// The answer to a 401's challenges: Basic, or a bearer token.
    fn authenticate(&self, resp: &Response<Body>) -> Result<Auth, RegistryError> {
        let mut challenges = Vec::new();
        for v in resp.headers().get_all("www-authenticate") {
            let v = v
                .to_str()
                .map_err(|_| self.refused(&"WWW-Authenticate is not ASCII"))?;
            challenges.extend(challenge::parse(v).map_err(|e| self.refused(&e))?);
        }
        let pick = |s: &str| challenges.iter().find(|c| c.scheme == s);
        if let Some(c) = pick("bearer") {
            return self.bearer(c);
        }
        if pick("basic").is_some() {
            return match &self.opts.credential {
                Some((Credential::Basic { username, password }, _)) => {
                    Ok(basic(username, password))
                }
                _ => Err(self.unauthorized(None)),
            };
        }
        let scheme = challenges.first().map_or("none", |c| c.scheme.as_str());
        Err(self.refused(&format!(
            "the registry asks for authentication scheme {scheme:?}, which sifrun does not support"
        )))
    }

    /// A token from the challenge's realm (with the user's credential).
    fn bearer(&self, c: &Challenge) -> Result<Auth, RegistryError> {
        let realm = c
            .param("realm")
            .ok_or_else(|| self.refused(&"bearer challenge without a realm"))?;
        let (scheme, host, _) = endpoint::split_url(realm).map_err(|e| self.refused(&e))?;
        let plain = !scheme.eq_ignore_ascii_case("https");
        if plain && !self.opts.plain_http {
            return Err(self.refused(&format!(
                "token realm {} is not https",
                endpoint::without_query(realm)
            )));
        }
        let scope = c
            .param("scope")
            .map_or_else(|| endpoint::pull_scope(&self.reference), str::to_owned);
        let url = endpoint::token_url(realm, c.param("service"), &scope);
        let what = format!("token from {}", endpoint::without_query(realm));
        let mut req = self.agent.get(&url);
        match &self.opts.credential {
            Some((Credential::RegistryToken(t), _)) => return Ok(Auth(format!("Bearer {t}"))),
            Some((Credential::Basic { username, password }, _)) => {
                if plain && host != self.registry() {
                    return Err(self.refused(&format!(
                        "refusing to send credentials over plain HTTP to {host}"
                    )));
                }
                req = req.header("Authorization", &basic(username, password).0);
            }
            Some((Credential::IdentityToken(refresh), _)) => {
                if plain && host != self.registry() {
                    return Err(self.refused(&format!(
                        "refusing to send credentials over plain HTTP to {host}"
                    )));
                }
                return self.oauth2(realm, c.param("service"), &scope, refresh, &what);
            }
            None => {}
        }
        let resp = req.call().map_err(|e| self.transport(&what, &e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, &what));
        }
        let body = read_capped(resp.into_body().into_reader(), &what, MAX_TOKEN_BYTES)
            .map_err(|e| self.body_error(e, &what))?;
        let token = endpoint::parse_token(&body, realm).map_err(|e| self.refused(&e))?;
        Ok(Auth(format!("Bearer {}", token.token)))
    }
}

impl Client {
    /// An OAuth2 refresh-token grant (`identitytoken` of `docker login`
    /// with a token service): `POST realm` with a form.
    fn oauth2(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
        refresh: &str,
        what: &str,
    ) -> Result<Auth, RegistryError> {
        let q = endpoint::query_escape;
        let form = format!(
            "grant_type=refresh_token&service={}&scope={}&client_id=sifrun&refresh_token={}",
            q(service.unwrap_or_default()),
            q(scope),
            q(refresh)
        );
        let resp = self
            .agent
            .post(realm)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .send(form.as_str())
            .map_err(|e| self.transport(what, &e))?;
        if !resp.status().is_success() {
            return Err(self.status_error(resp, what));
        }
        let body = read_capped(resp.into_body().into_reader(), what, MAX_TOKEN_BYTES)
            .map_err(|e| self.body_error(e, what))?;
        let token = endpoint::parse_token(&body, realm).map_err(|e| self.refused(&e))?;
        Ok(Auth(format!("Bearer {}", token.token)))
    }
}

fn basic(user: &str, password: &str) -> Auth {
    let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    Auth(format!("Basic {b}"))
}
