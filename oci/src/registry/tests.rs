//! The client against a fake registry on 127.0.0.1 (std `TcpListener`):
//! bearer tokens, Basic, 429 with `Retry-After`, 5xx retries, a stalled answer,
//! digest checks.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;
use crate::auth::creds::{Credential, Origin};
use crate::manifest::Descriptor;

mod origins;

/// One request as the fake saw it.
#[derive(Debug, Clone)]
struct Seen {
    path: String,
    headers: BTreeMap<String, String>,
}

enum Reply {
    /// Status, headers, body.
    Http(u16, Vec<(String, String)>, Vec<u8>),
    /// Headers never come.
    Stall,
    /// Headers announcing the whole body, half of it, then nothing.
    Half(Vec<u8>),
    /// Like `Half`, with `Accept-Ranges: bytes`, then the connection closes.
    HalfThenClose(Vec<u8>),
}

fn ok(body: &[u8], headers: &[(&str, &str)]) -> Reply {
    let h = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Reply::Http(200, h, body.to_vec())
}

fn status(code: u16, headers: &[(&str, &str)]) -> Reply {
    let h = headers
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    Reply::Http(
        code,
        h,
        b"{\"errors\":[{\"code\":\"X\",\"message\":\"m\"}]}".to_vec(),
    )
}

type Handler = dyn Fn(&Seen, usize) -> Reply + Send + Sync;

/// A fake server: `handler(request, n)` (n counts requests from 0).
struct Fake {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Fake {
    fn start(handler: impl Fn(&Seen, usize) -> Reply + Send + Sync + 'static) -> Fake {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s2 = seen.clone();
        let handler: Arc<Handler> = Arc::new(handler);
        std::thread::spawn(move || {
            for c in l.incoming() {
                let Ok(c) = c else { return };
                let (s3, h) = (s2.clone(), handler.clone());
                std::thread::spawn(move || serve(c, &s3, &*h));
            }
        });
        Fake { port, seen }
    }

    fn base(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

fn serve(c: TcpStream, seen: &Mutex<Vec<Seen>>, handler: &Handler) {
    let mut r = BufReader::new(c.try_clone().unwrap());
    let mut w = c;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
        let mut headers = BTreeMap::new();
        loop {
            let mut h = String::new();
            r.read_line(&mut h).unwrap();
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let (k, v) = h.split_once(':').unwrap();
            headers.insert(k.to_ascii_lowercase(), v.trim().to_owned());
        }
        if let Some(n) = headers.get("content-length") {
            let mut body = vec![0; n.parse().unwrap()];
            std::io::Read::read_exact(&mut r, &mut body).unwrap();
        }
        let req = Seen { path, headers };
        let n = {
            let mut s = seen.lock().unwrap();
            s.push(req.clone());
            s.len() - 1
        };
        match handler(&req, n) {
            Reply::Stall => {
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Reply::HalfThenClose(body) => {
                let head = format!(
                    "HTTP/1.1 200 OK\r\nAccept-Ranges: bytes\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                );
                let _ = w.write_all(head.as_bytes());
                let _ = w.write_all(&body[..body.len() / 2]);
                let _ = w.shutdown(std::net::Shutdown::Both);
                return;
            }
            Reply::Half(body) => {
                let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len());
                let _ = w.write_all(head.as_bytes());
                let _ = w.write_all(&body[..body.len() / 2]);
                std::thread::sleep(Duration::from_secs(30));
                return;
            }
            Reply::Http(code, hs, body) => {
                let mut out = format!("HTTP/1.1 {code} X\r\nContent-Length: {}\r\n", body.len());
                for (k, v) in hs {
                    out.push_str(&format!("{k}: {v}\r\n"));
                }
                out.push_str("\r\n");
                let mut bytes = out.into_bytes();
                bytes.extend_from_slice(&body);
                if w.write_all(&bytes).is_err() {
                    return;
                }
            }
        }
    }
}

fn opts() -> Options {
    Options {
        plain_http: true,
        read_timeout: Duration::from_secs(2),
        connect_timeout: Duration::from_secs(2),
        backoff: Duration::from_millis(10),
        ..Options::default()
    }
}

fn client(fake: &Fake, o: Options) -> Client {
    let r = Reference::parse(&format!("{}/test/img:t", fake.base())).unwrap();
    Client::new(&r, o)
}

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a","size":2},"layers":[]}"#;

fn creds(u: &str, p: &str) -> Option<(Credential, Origin)> {
    let c = Credential::Basic {
        username: u.into(),
        password: p.into(),
    };
    Some((c, Origin::Environment))
}

#[test]
fn bearer_token_flow() {
    let fake = Fake::start(|req, _| {
        let auth = req.headers.get("authorization").map(String::as_str);
        if req.path.starts_with("/token") {
            // user:pass
            if auth != Some("Basic dXNlcjpwYXNz") {
                return status(401, &[]);
            }
            assert!(
                req.path.contains("scope=repository%3Atest%2Fimg%3Apull"),
                "{}",
                req.path
            );
            assert!(req.path.contains("service=fake"), "{}", req.path);
            return ok(br#"{"token":"tok123","expires_in":300}"#, &[]);
        }
        if auth == Some("Bearer tok123") {
            return ok(MANIFEST, &[("Content-Type", media::OCI_MANIFEST)]);
        }
        let realm = format!(
            "Bearer realm=\"http://{}/token\",service=\"fake\"",
            req.headers["host"]
        );
        Reply::Http(401, vec![("WWW-Authenticate".into(), realm)], Vec::new())
    });
    let c = client(
        &fake,
        Options {
            credential: creds("user", "pass"),
            ..opts()
        },
    );
    let m = c.manifest("t").unwrap();
    assert_eq!(m.bytes, MANIFEST);
    assert_eq!(m.content_type.as_deref(), Some(media::OCI_MANIFEST));
    let seen = fake.seen();
    assert!(
        seen[0]
            .headers
            .get("accept")
            .unwrap()
            .contains(media::DOCKER_MANIFEST)
    );
    // The token is kept: a second fetch asks no new one.
    c.manifest("t").unwrap();
    assert_eq!(
        fake.seen()
            .iter()
            .filter(|s| s.path.starts_with("/token"))
            .count(),
        1
    );
    // Wrong password: one line naming the origin of the credentials.
    let bad = client(
        &fake,
        Options {
            credential: creds("user", "nope"),
            ..opts()
        },
    );
    let e = bad.manifest("t").unwrap_err().to_string();
    assert!(
        e.contains("unauthorized") && e.contains("SIFRUN_DOCKER_USERNAME"),
        "{e}"
    );
    assert!(!e.contains("nope"), "{e}");
    // Anonymous: the token endpoint refuses, the message says what to set.
    let anon = client(&fake, opts());
    let e = anon.manifest("t").unwrap_err().to_string();
    assert!(e.contains("authentication required"), "{e}");
}

#[test]
fn basic_auth_and_unsupported_scheme() {
    let fake = Fake::start(|req, _| match req.headers.get("authorization") {
        Some(a) if a == "Basic dXNlcjpwYXNz" => ok(MANIFEST, &[]),
        _ if req.path.contains("/other/") => status(401, &[("WWW-Authenticate", "Negotiate")]),
        _ => status(401, &[("WWW-Authenticate", "Basic realm=\"r\"")]),
    });
    let c = client(
        &fake,
        Options {
            credential: creds("user", "pass"),
            ..opts()
        },
    );
    assert_eq!(c.manifest("t").unwrap().bytes, MANIFEST);
    let e = client(&fake, opts()).manifest("t").unwrap_err();
    assert!(matches!(e, RegistryError::AuthRequired { .. }), "{e}");
    let r = Reference::parse(&format!("{}/other/img", fake.base())).unwrap();
    let e = Client::new(&r, opts())
        .manifest("t")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("\"negotiate\", which sifrun does not support"),
        "{e}"
    );
}

#[test]
fn retries_429_and_5xx_then_gives_up() {
    let fake = Fake::start(|_, n| match n {
        0 => status(429, &[("Retry-After", "0")]),
        1 => status(503, &[]),
        _ => ok(MANIFEST, &[]),
    });
    let c = client(&fake, opts());
    c.manifest("t").unwrap();
    assert_eq!(fake.seen().len(), 3);
    let down = Fake::start(|_, _| status(502, &[]));
    let c = client(
        &down,
        Options {
            attempts: 3,
            ..opts()
        },
    );
    let e = c.manifest("t").unwrap_err().to_string();
    assert!(e.contains("HTTP 502"), "{e}");
    assert_eq!(down.seen().len(), 3);
    // 404 is not retried, and names what is missing.
    let gone = Fake::start(|_, _| {
        Reply::Http(
            404,
            vec![],
            br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#.to_vec(),
        )
    });
    let e = client(&gone, opts()).manifest("t").unwrap_err().to_string();
    assert!(e.contains("no such tag or digest"), "{e}");
    assert_eq!(gone.seen().len(), 1);
}

#[test]
fn a_registry_that_stops_answering_times_out() {
    let fake = Fake::start(|_, _| Reply::Stall);
    let c = client(
        &fake,
        Options {
            attempts: 1,
            ..opts()
        },
    );
    let start = Instant::now();
    let e = c.manifest("t").unwrap_err();
    assert!(matches!(e, RegistryError::Timeout { .. }), "{e}");
    assert!(e.to_string().contains("no data for 2 s"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(10));
}

#[test]
fn digests_are_checked() {
    let fake = Fake::start(|req, _| {
        if req.path.contains("/blobs/") {
            return ok(b"not what was announced", &[]);
        }
        ok(
            MANIFEST,
            &[(
                "Docker-Content-Digest",
                "sha256:0000000000000000000000000000000000000000000000000000000000000000",
            )],
        )
    });
    let c = client(&fake, opts());
    let e = c.manifest("t").unwrap_err().to_string();
    assert!(e.contains("content has digest"), "{e}");
    let want = Digest::of(MANIFEST);
    let e = c
        .manifest(&Digest::of(b"x").to_string())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("content has digest") && e.contains(&want.to_string()),
        "{e}"
    );
    let desc = Descriptor {
        media_type: media::OCI_CONFIG.into(),
        digest: Digest::of(b"not what was announced!"),
        size: 22,
        platform: None,
        annotations: BTreeMap::new(),
    };
    let dir = std::env::temp_dir().join(format!("oci-reg-test-{}", std::process::id()));
    let mut f = std::fs::File::create(&dir).unwrap();
    let e = c.blob_to(&desc, &mut f, &|_| {}).unwrap_err();
    let _ = std::fs::remove_file(&dir);
    assert!(matches!(e, RegistryError::Verify(_)), "{e}");
    assert!(e.to_string().contains("content has digest"), "{e}");
}

#[test]
fn identity_token_is_an_oauth2_refresh_grant() {
    let fake = Fake::start(|req, _| {
        let auth = req.headers.get("authorization").map(String::as_str);
        if req.path.starts_with("/token") {
            assert_eq!(
                req.headers.get("content-type").map(String::as_str),
                Some("application/x-www-form-urlencoded")
            );
            return ok(br#"{"access_token":"fresh","expires_in":60}"#, &[]);
        }
        if auth == Some("Bearer fresh") {
            return ok(MANIFEST, &[]);
        }
        let realm = format!(
            "Bearer realm=\"http://{}/token\",service=\"fake\"",
            req.headers["host"]
        );
        Reply::Http(401, vec![("WWW-Authenticate".into(), realm)], Vec::new())
    });
    let cred = Some((
        Credential::IdentityToken("refresh-me".into()),
        Origin::Environment,
    ));
    let c = client(
        &fake,
        Options {
            credential: cred,
            ..opts()
        },
    );
    assert_eq!(c.manifest("t").unwrap().bytes, MANIFEST);
    assert!(fake.seen().iter().any(|s| s.path == "/token"));
}

#[test]
fn a_blob_that_stops_midway_times_out_naming_the_progress() {
    let blob = vec![7u8; 4096];
    let d = Digest::of(&blob);
    let b2 = blob.clone();
    let fake = Fake::start(move |_, _| Reply::Half(b2.clone()));
    let c = client(
        &fake,
        Options {
            attempts: 1,
            ..opts()
        },
    );
    let desc = Descriptor {
        media_type: media::OCI_CONFIG.into(),
        digest: d.clone(),
        size: blob.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    };
    let path = std::env::temp_dir().join(format!("oci-reg-stall-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    let start = Instant::now();
    let e = c.blob_to(&desc, &mut f, &|_| {}).unwrap_err();
    let _ = std::fs::remove_file(&path);
    assert!(start.elapsed() < Duration::from_secs(10));
    let text = e.to_string();
    assert!(matches!(e, RegistryError::Timeout { .. }), "{text}");
    assert!(
        text.contains(&format!("reading blob {d} (after 2048 bytes)")),
        "{text}"
    );
}

#[test]
fn oversized_manifests_and_tokens_are_refused() {
    let fake = Fake::start(|req, _| {
        if req.path.starts_with("/token") {
            return ok(&vec![b' '; (2 << 20) as usize], &[]);
        }
        if req.path.contains("/auth/") {
            let realm = format!("Bearer realm=\"http://{}/token\"", req.headers["host"]);
            return Reply::Http(401, vec![("WWW-Authenticate".into(), realm)], Vec::new());
        }
        ok(&vec![b' '; (5 << 20) as usize], &[])
    });
    let e = client(&fake, opts()).manifest("t").unwrap_err().to_string();
    assert!(e.contains("more than 4194304 bytes"), "{e}");
    let r = Reference::parse(&format!("{}/auth/img", fake.base())).unwrap();
    let e = Client::new(&r, opts())
        .manifest("t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("more than 1048576 bytes"), "{e}");
}

#[test]
fn unknown_hosts_fail_at_once() {
    let r = Reference::parse("no-such-host.invalid/test/img:t").unwrap();
    let start = Instant::now();
    let e = Client::new(&r, opts())
        .manifest("t")
        .unwrap_err()
        .to_string();
    assert!(e.contains("host not found"), "{e}");
    assert!(start.elapsed() < Duration::from_secs(5), "retried: {e}");
}

#[test]
fn a_broken_download_resumes_with_a_range() {
    let blob: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let d = Digest::of(&blob);
    let b2 = blob.clone();
    let fake = Fake::start(move |req, _| match req.headers.get("range") {
        None => Reply::HalfThenClose(b2.clone()),
        Some(r) => {
            let from: usize = r
                .strip_prefix("bytes=")
                .unwrap()
                .trim_end_matches('-')
                .parse()
                .unwrap();
            let range = format!("bytes {from}-{}/{}", b2.len() - 1, b2.len());
            Reply::Http(
                206,
                vec![("Content-Range".into(), range)],
                b2[from..].to_vec(),
            )
        }
    });
    let c = client(&fake, opts());
    let desc = Descriptor {
        media_type: media::OCI_CONFIG.into(),
        digest: d,
        size: blob.len() as u64,
        platform: None,
        annotations: BTreeMap::new(),
    };
    let path = std::env::temp_dir().join(format!("oci-reg-resume-{}", std::process::id()));
    let mut f = std::fs::File::create(&path).unwrap();
    c.blob_to(&desc, &mut f, &|_| {}).unwrap();
    let got = std::fs::read(&path).unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(got, blob);
    let seen = fake.seen();
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_eq!(
        seen[1].headers.get("range").map(String::as_str),
        Some("bytes=50000-")
    );
}
