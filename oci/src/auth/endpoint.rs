//! URLs of the distribution API (`/v2/NAME/manifests/REF`,
//! `/v2/NAME/blobs/DIGEST`), the token endpoint's request and answer,
//! `Location` resolution for redirects, `Retry-After`, and the registry's
//! error JSON.

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;

use crate::digest::Digest;
use crate::reference::Reference;

/// The largest token answer read (containers/image `iolimits`).
pub const MAX_TOKEN_BYTES: u64 = 1 << 20;
/// The most of an error body read for its message.
pub const MAX_ERROR_BYTES: u64 = 64 << 10;
/// A token without `expires_in` lives this long (token spec).
pub const DEFAULT_TOKEN_SECONDS: u64 = 60;

/// Why an answer or a URL is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EndpointError {
    /// Not `http://` or `https://` with a host.
    #[error("{:?}: not an http(s) URL", without_query(.url))]
    NotHttp {
        /// The URL (never with credentials: registries do not put any there).
        url: String,
    },
    /// The token endpoint's answer has no token.
    #[error("token endpoint {}: answer without a token ({why})", without_query(.realm))]
    NoToken {
        /// The endpoint.
        realm: String,
        /// What was wrong.
        why: String,
    },
}

/// `url` without its query and fragment, for messages: presigned URLs
/// carry their signature there.
pub fn without_query(url: &str) -> &str {
    url.split(['?', '#']).next().unwrap_or(url)
}

/// The registry's base URL: `https://HOST` (`http://` with `plain_http`),
/// Docker Hub's wire host for `docker.io`.
pub fn base_url(reference: &Reference, plain_http: bool) -> String {
    let scheme = if plain_http { "http" } else { "https" };
    format!("{scheme}://{}", reference.wire_host())
}

/// `BASE/v2/NAME/manifests/REF` (tag or digest).
pub fn manifest_url(reference: &Reference, plain_http: bool, target: &str) -> String {
    format!(
        "{}/v2/{}/manifests/{target}",
        base_url(reference, plain_http),
        reference.path()
    )
}

/// `BASE/v2/NAME/blobs/DIGEST`.
pub fn blob_url(reference: &Reference, plain_http: bool, digest: &Digest) -> String {
    format!(
        "{}/v2/{}/blobs/{digest}",
        base_url(reference, plain_http),
        reference.path()
    )
}

/// The pull scope of a repository: `repository:NAME:pull`.
pub fn pull_scope(reference: &Reference) -> String {
    format!("repository:{}:pull", reference.path())
}

/// RFC 3986 percent-encoding of a query value (unreserved kept).
pub fn query_escape(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for b in v.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The token request: `REALM?service=S&scope=SCOPE` (appended with `&`
/// when the realm already has a query).
pub fn token_url(realm: &str, service: Option<&str>, scope: &str) -> String {
    let mut url = realm.to_owned();
    let mut sep = if realm.contains('?') { '&' } else { '?' };
    if let Some(s) = service {
        let _ = write!(url, "{sep}service={}", query_escape(s));
        sep = '&';
    }
    let _ = write!(url, "{sep}scope={}", query_escape(scope));
    url
}

/// A bearer token and how long to keep it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    /// The token.
    pub token: String,
    /// Its lifetime.
    pub expires_in: Duration,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Token(***, {:?})", self.expires_in)
    }
}

#[derive(Deserialize)]
struct TokenAnswer {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// The token endpoint's JSON: `token` or `access_token`, `expires_in`.
pub fn parse_token(body: &[u8], realm: &str) -> Result<Token, EndpointError> {
    let no = |why: &str| EndpointError::NoToken {
        realm: realm.to_owned(),
        why: why.to_owned(),
    };
    let a: TokenAnswer = serde_json::from_slice(body).map_err(|_| no("not JSON"))?;
    let token = a
        .token
        .filter(|t| !t.is_empty())
        .or(a.access_token.filter(|t| !t.is_empty()))
        .ok_or_else(|| no("no `token` or `access_token`"))?;
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(no("the token is not printable ASCII"));
    }
    Ok(Token {
        token,
        expires_in: Duration::from_secs(a.expires_in.unwrap_or(DEFAULT_TOKEN_SECONDS).max(1)),
    })
}

/// An http(s) URL split into scheme, authority (`host[:port]`) and the
/// rest (`/path?query`).
pub fn split_url(url: &str) -> Result<(&str, &str, &str), EndpointError> {
    let not = || EndpointError::NotHttp {
        url: url.to_owned(),
    };
    let (scheme, rest) = url.split_once("://").ok_or_else(not)?;
    if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
        return Err(not());
    }
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(end);
    if authority.is_empty() || authority.contains('@') {
        return Err(not());
    }
    Ok((scheme, authority, path))
}

/// Where a redirect's `Location` points, resolved against `current`.
pub fn resolve_location(current: &str, location: &str) -> Result<String, EndpointError> {
    if location.contains("://") {
        split_url(location)?;
        return Ok(location.to_owned());
    }
    let (scheme, authority, path) = split_url(current)?;
    if let Some(rest) = location.strip_prefix("//") {
        let url = format!("{scheme}://{rest}");
        split_url(&url)?;
        return Ok(url);
    }
    if location.starts_with('/') {
        return Ok(format!("{scheme}://{authority}{location}"));
    }
    let path = path.split(['?', '#']).next().unwrap_or("");
    let dir = path.rfind('/').map_or("/", |i| &path[..=i]);
    Ok(format!("{scheme}://{authority}{dir}{location}"))
}

/// Whether a request to `to` may carry the credentials of one to `from`:
/// same scheme, host and port.
pub fn same_origin(from: &str, to: &str) -> bool {
    match (split_url(from), split_url(to)) {
        (Ok((s1, a1, _)), Ok((s2, a2, _))) => {
            s1.eq_ignore_ascii_case(s2) && a1.eq_ignore_ascii_case(a2)
        }
        _ => false,
    }
}

/// `Retry-After`: delay-seconds or an IMF-fixdate
/// (`Sun, 06 Nov 1994 08:49:37 GMT`) relative to `now` (seconds since the
/// epoch); capped at `cap`.
pub fn retry_after(value: &str, now: u64, cap: Duration) -> Option<Duration> {
    let v = value.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s).min(cap));
    }
    let at = imf_fixdate(v)?;
    Some(Duration::from_secs(at.saturating_sub(now)).min(cap))
}

fn imf_fixdate(v: &str) -> Option<u64> {
    let p: Vec<&str> = v.split_whitespace().collect();
    let [_, day, month, year, time, "GMT"] = p.as_slice() else {
        return None;
    };
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MONTHS.iter().position(|x| x == month)? as i64 + 1;
    let d: i64 = day.parse().ok()?;
    let y: i64 = year.parse().ok()?;
    let t: Vec<i64> = time
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    let [hh, mm, ss] = t.as_slice() else {
        return None;
    };
    // Bounded fields keep the arithmetic below far from overflow.
    let in_range = (1..=31).contains(&d)
        && (1900..=9999).contains(&y)
        && (0..24).contains(hh)
        && (0..60).contains(mm)
        && (0..=60).contains(ss);
    if !in_range {
        return None;
    }
    // Days from civil (Howard Hinnant's algorithm).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
}

/// The registry's error JSON (`{"errors":[{"code":…,"message":…}]}`) as
/// `CODE: message` lines joined by `; `, printable characters only.
pub fn error_message(body: &[u8]) -> Option<(String, String)> {
    let b: ErrorBody = serde_json::from_slice(body).ok()?;
    let first = b.errors.first()?;
    let clean = |s: &str| -> String { s.chars().filter(|c| !c.is_control()).take(200).collect() };
    let text = b
        .errors
        .iter()
        .take(3)
        .map(|e| format!("{}: {}", clean(&e.code), clean(&e.message)))
        .collect::<Vec<_>>()
        .join("; ");
    Some((clean(&first.code), text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> Reference {
        Reference::parse(s).unwrap()
    }

    #[test]
    fn urls() {
        let hub = r("ubuntu:22.04");
        assert_eq!(
            manifest_url(&hub, false, "22.04"),
            "https://registry-1.docker.io/v2/library/ubuntu/manifests/22.04"
        );
        let d = Digest::of(b"x");
        let local = r("127.0.0.1:5000/test/img:t");
        assert_eq!(
            blob_url(&local, true, &d),
            format!("http://127.0.0.1:5000/v2/test/img/blobs/{d}")
        );
        assert_eq!(pull_scope(&local), "repository:test/img:pull");
        assert_eq!(
            token_url(
                "https://auth.docker.io/token",
                Some("registry.docker.io"),
                "repository:library/ubuntu:pull"
            ),
            "https://auth.docker.io/token?service=registry.docker.io&scope=repository%3Alibrary%2Fubuntu%3Apull"
        );
        assert_eq!(
            token_url("https://t/x?a=b", None, "s c"),
            "https://t/x?a=b&scope=s%20c"
        );
    }

    #[test]
    fn tokens() {
        let t = parse_token(br#"{"token":"abc","expires_in":300}"#, "r").unwrap();
        assert_eq!((t.token.as_str(), t.expires_in.as_secs()), ("abc", 300));
        let t = parse_token(br#"{"access_token":"x"}"#, "r").unwrap();
        assert_eq!((t.token.as_str(), t.expires_in.as_secs()), ("x", 60));
        assert!(parse_token(br#"{"token":""}"#, "r").is_err());
        assert!(parse_token(br#"{"token":"a\nb"}"#, "r").is_err());
        assert!(parse_token(b"<html>", "r").is_err());
        assert!(!format!("{t:?}").contains('x'));
    }

    #[test]
    fn locations() {
        let cur = "https://reg.io:5000/v2/a/blobs/sha256:1?x=y";
        assert_eq!(
            resolve_location(cur, "https://s3.aws/b?sig=1").unwrap(),
            "https://s3.aws/b?sig=1"
        );
        assert_eq!(
            resolve_location(cur, "/other").unwrap(),
            "https://reg.io:5000/other"
        );
        assert_eq!(
            resolve_location(cur, "rel").unwrap(),
            "https://reg.io:5000/v2/a/blobs/rel"
        );
        assert_eq!(
            resolve_location(cur, "//cdn.io/p").unwrap(),
            "https://cdn.io/p"
        );
        assert!(resolve_location(cur, "ftp://x/y").is_err());
        assert!(resolve_location(cur, "https://user@evil/").is_err());
        assert!(same_origin(cur, "https://REG.io:5000/x"));
        assert!(!same_origin(cur, "https://reg.io/x"));
        assert!(!same_origin(cur, "http://reg.io:5000/x"));
        assert!(!same_origin(cur, "https://cdn.io/x"));
    }

    #[test]
    fn messages_show_urls_without_their_query() {
        let e = resolve_location(
            "https://r.io/v2/x",
            "ftp://cdn.io/b?X-Amz-Signature=SECRET#f",
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("ftp://cdn.io/b") && !e.contains("SECRET"), "{e}");
        let e = parse_token(b"{}", "https://auth.io/token?sig=SECRET")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("https://auth.io/token") && !e.contains("SECRET"),
            "{e}"
        );
    }

    #[test]
    fn retry_after_forms() {
        let cap = Duration::from_secs(120);
        assert_eq!(retry_after("7", 0, cap), Some(Duration::from_secs(7)));
        assert_eq!(retry_after("9999", 0, cap), Some(cap));
        // 1994-11-06T08:49:37Z = 784111777.
        let at = 784_111_777;
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at - 5, cap),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            retry_after("Sun, 06 Nov 1994 08:49:37 GMT", at + 5, cap),
            Some(Duration::ZERO)
        );
        assert_eq!(retry_after("soon", 0, cap), None);
    }

    #[test]
    fn retry_after_dates_out_of_range_are_ignored() {
        let cap = Duration::from_secs(120);
        for v in [
            "Sun, 06 Nov 9223372036854775807 08:49:37 GMT",
            "Sun, 9223372036854775807 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 9223372036854775807:49:37 GMT",
            "Sun, 06 Nov 1994 08:9223372036854775807:37 GMT",
            "Sun, 06 Nov 1994 08:49:9223372036854775807 GMT",
            "Sun, 06 Nov -9223372036854775807 08:49:37 GMT",
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:00:00 GMT",
            "Sun, 06 Nov 1994 08:60:00 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov 1899 08:49:37 GMT",
        ] {
            assert_eq!(retry_after(v, 0, cap), None, "{v}");
        }
        assert_eq!(
            retry_after("Fri, 31 Dec 9999 23:59:60 GMT", 0, cap),
            Some(cap)
        );
    }

    #[test]
    fn error_bodies() {
        let b =
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#;
        let (code, text) = error_message(b).unwrap();
        assert_eq!(code, "MANIFEST_UNKNOWN");
        assert_eq!(text, "MANIFEST_UNKNOWN: manifest unknown");
        assert!(error_message(b"not json").is_none());
        assert!(error_message(br#"{"errors":[]}"#).is_none());
        let (_, text) =
            error_message(b"{\"errors\":[{\"code\":\"X\",\"message\":\"a\\u001b[31mb\"}]}")
                .unwrap();
        assert_eq!(text, "X: a[31mb");
    }
}
