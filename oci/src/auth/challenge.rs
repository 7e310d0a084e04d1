//! The `WWW-Authenticate` header of a registry's `401` (RFC 7235
//! `challenge = auth-scheme [ 1*SP ( token68 / #auth-param ) ]`, several
//! challenges separated by commas): `Bearer realm="…",service="…",scope="…"`
//! or `Basic realm="…"`.

use std::collections::BTreeMap;

/// The longest header parsed (oci-design.md §2.3).
pub const MAX_HEADER_BYTES: usize = 8 << 10;

/// Why a header could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChallengeError {
    /// Over [`MAX_HEADER_BYTES`].
    #[error("WWW-Authenticate header over {MAX_HEADER_BYTES} bytes")]
    TooLong,
    /// Not a challenge at all.
    #[error("malformed WWW-Authenticate header at byte {at}: {why}")]
    Malformed {
        /// Where the parser stopped.
        at: usize,
        /// What it expected.
        why: &'static str,
    },
}

/// One challenge: the scheme (lower case) and its parameters (names in
/// lower case; a `token68` is kept under the empty name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// `basic`, `bearer`, …
    pub scheme: String,
    /// `realm`, `service`, `scope`, …
    pub params: BTreeMap<String, String>,
}

impl Challenge {
    /// A parameter's value.
    pub fn param(&self, name: &str) -> Option<&str> {
        self.params.get(name).map(String::as_str)
    }
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t')) {
            self.i += 1;
        }
    }
    fn skip_ws_commas(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b',')) {
            self.i += 1;
        }
    }
    fn token(&mut self) -> &str {
        let start = self.i;
        while self.peek().is_some_and(is_tchar) {
            self.i += 1;
        }
        // Only ASCII token characters were taken.
        std::str::from_utf8(&self.s[start..self.i]).unwrap_or_default()
    }
    fn fail(&self, why: &'static str) -> ChallengeError {
        ChallengeError::Malformed { at: self.i, why }
    }
    /// A quoted string (the opening quote is next) with `\` escapes.
    fn quoted(&mut self) -> Result<String, ChallengeError> {
        self.i += 1;
        let mut out = Vec::new();
        loop {
            match self.peek() {
                None => return Err(self.fail("unterminated quoted string")),
                Some(b'"') => {
                    self.i += 1;
                    return Ok(String::from_utf8_lossy(&out).into_owned());
                }
                Some(b'\\') => {
                    self.i += 1;
                    let c = self.peek().ok_or_else(|| self.fail("escape at end"))?;
                    out.push(c);
                    self.i += 1;
                }
                Some(c) => {
                    out.push(c);
                    self.i += 1;
                }
            }
        }
    }
    /// An unquoted value: anything up to a comma or white space.
    fn bare(&mut self) -> String {
        let start = self.i;
        while !matches!(self.peek(), None | Some(b',' | b' ' | b'\t')) {
            self.i += 1;
        }
        String::from_utf8_lossy(&self.s[start..self.i]).into_owned()
    }
    /// Whether `NAME *WS "="` (not `==`, a token68's padding) starts here.
    fn at_param(&self) -> bool {
        let mut j = self.i;
        while self.s.get(j).copied().is_some_and(is_tchar) {
            j += 1;
        }
        if j == self.i {
            return false;
        }
        while matches!(self.s.get(j), Some(b' ' | b'\t')) {
            j += 1;
        }
        self.s.get(j) == Some(&b'=') && self.s.get(j + 1) != Some(&b'=')
    }
}

/// Parses every challenge of one header value; unknown schemes and
/// parameters are kept (the caller picks what it supports).
pub fn parse(header: &str) -> Result<Vec<Challenge>, ChallengeError> {
    if header.len() > MAX_HEADER_BYTES {
        return Err(ChallengeError::TooLong);
    }
    let mut c = Cursor {
        s: header.as_bytes(),
        i: 0,
    };
    let mut out = Vec::new();
    loop {
        c.skip_ws_commas();
        if c.peek().is_none() {
            break;
        }
        let scheme = c.token().to_ascii_lowercase();
        if scheme.is_empty() {
            return Err(c.fail("expected an authentication scheme"));
        }
        let mut params = BTreeMap::new();
        c.skip_ws();
        if c.peek().is_some_and(|b| b != b',') && !c.at_param() {
            // token68: `Basic dXNlcg==`.
            params.insert(String::new(), c.bare());
            c.skip_ws();
        }
        while c.at_param() {
            let name = c.token().to_ascii_lowercase();
            c.skip_ws();
            c.i += 1; // '='
            c.skip_ws();
            let value = if c.peek() == Some(b'"') {
                c.quoted()?
            } else {
                c.bare()
            };
            params.insert(name, value);
            c.skip_ws();
            match c.peek() {
                None => break,
                Some(b',') => c.skip_ws_commas(),
                Some(_) => return Err(c.fail("expected ',' after a parameter")),
            }
        }
        out.push(Challenge { scheme, params });
    }
    if out.is_empty() {
        return Err(c.fail("no challenge"));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(h: &str) -> Challenge {
        let mut v = parse(h).unwrap();
        assert_eq!(v.len(), 1, "{h}");
        v.remove(0)
    }

    #[test]
    fn registries_headers() {
        // Docker Hub.
        let c = one(
            r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/ubuntu:pull""#,
        );
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.docker.io/token"));
        assert_eq!(c.param("service"), Some("registry.docker.io"));
        assert_eq!(c.param("scope"), Some("repository:library/ubuntu:pull"));
        // GHCR, Quay: same shape; ECR: Basic with a realm and service.
        let c = one(
            r#"Basic realm="https://123.dkr.ecr.us-east-1.amazonaws.com/",service="ecr.amazonaws.com""#,
        );
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("service"), Some("ecr.amazonaws.com"));
        // The Debian docker-registry with htpasswd.
        let c = one(r#"Basic realm="sifrun-test""#);
        assert_eq!(c.param("realm"), Some("sifrun-test"));
    }

    #[test]
    fn quoting_case_and_spacing() {
        let c = one(r#"BEARER  Realm = "a \"b\", c" , scope=x:y:pull,error="insufficient_scope""#);
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some(r#"a "b", c"#));
        assert_eq!(c.param("scope"), Some("x:y:pull"));
        assert_eq!(c.param("error"), Some("insufficient_scope"));
        // Scopes with several actions are quoted and contain commas.
        let c = one(r#"Bearer realm="r",scope="repository:a/b:pull,push""#);
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn several_challenges_and_token68() {
        let v =
            parse(r#"Basic realm="x", Bearer realm="https://t/",service=s, Negotiate"#).unwrap();
        let schemes: Vec<_> = v.iter().map(|c| c.scheme.as_str()).collect();
        assert_eq!(schemes, ["basic", "bearer", "negotiate"]);
        assert_eq!(v[1].param("service"), Some("s"));
        let v = parse("Negotiate abc==, Basic realm=r").unwrap();
        assert_eq!(v[0].param(""), Some("abc=="));
        assert_eq!(v[1].param("realm"), Some("r"));
    }

    #[test]
    fn malformed_headers() {
        assert!(matches!(parse(""), Err(ChallengeError::Malformed { .. })));
        assert!(matches!(
            parse("  , "),
            Err(ChallengeError::Malformed { .. })
        ));
        assert!(matches!(
            parse(r#"Bearer realm="open"#),
            Err(ChallengeError::Malformed { .. })
        ));
        assert!(matches!(parse("=x"), Err(ChallengeError::Malformed { .. })));
        assert!(matches!(
            parse(r#"Bearer realm="a" junk"#),
            Err(ChallengeError::Malformed { .. })
        ));
        assert_eq!(
            parse(&"a".repeat(MAX_HEADER_BYTES + 1)),
            Err(ChallengeError::TooLong)
        );
    }
}
