//! Registry credentials (oci-design.md §2.3), first match wins:
//! `SIFRUN_DOCKER_USERNAME` + `SIFRUN_DOCKER_PASSWORD`, then
//! `$REGISTRY_AUTH_FILE`, then `$DOCKER_CONFIG/config.json` or
//! `~/.docker/config.json`. Pure over the files' text: the caller reads
//! them. Secrets are never part of an error or a `Debug` line.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

/// The largest credentials file read.
pub const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Credentials for one registry.
#[derive(Clone, PartialEq, Eq)]
pub enum Credential {
    /// User name and password (HTTP Basic, or the token endpoint's Basic).
    Basic {
        /// The user.
        username: String,
        /// The password.
        password: String,
    },
    /// An OAuth2 refresh token (`identitytoken`).
    IdentityToken(String),
    /// A ready bearer token (`registrytoken`).
    RegistryToken(String),
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credential::Basic { username, .. } => write!(f, "Basic({username}, ***)"),
            Credential::IdentityToken(_) => f.write_str("IdentityToken(***)"),
            Credential::RegistryToken(_) => f.write_str("RegistryToken(***)"),
        }
    }
}

/// Where a credential came from (for messages).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// `SIFRUN_DOCKER_USERNAME`/`SIFRUN_DOCKER_PASSWORD`.
    Environment,
    /// A file.
    File(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Environment => f.write_str("SIFRUN_DOCKER_USERNAME/SIFRUN_DOCKER_PASSWORD"),
            Origin::File(p) => write!(f, "{}", p.display()),
        }
    }
}

/// Why the credentials could not be found.
#[derive(Debug, thiserror::Error)]
pub enum CredsError {
    /// Only one of the two variables is set.
    #[error("set both SIFRUN_DOCKER_USERNAME and SIFRUN_DOCKER_PASSWORD, or neither")]
    HalfEnvironment,
    /// The file is not a credentials file.
    #[error("{}: not a Docker credentials file: {why}", file.display())]
    BadFile {
        /// The file.
        file: PathBuf,
        /// The parser's complaint (never the file's content).
        why: String,
    },
    /// The `auth` field does not decode to `user:password`.
    #[error("{}: the entry for {key} has an `auth` that is not base64 of user:password", file.display())]
    BadAuth {
        /// The file.
        file: PathBuf,
        /// The entry's key.
        key: String,
    },
    /// The credentials are kept by a helper program sifrun does not run.
    #[error(
        "credentials for {host} are kept by docker-credential-{helper} ({}), which sifrun does not run; set SIFRUN_DOCKER_USERNAME/SIFRUN_DOCKER_PASSWORD or REGISTRY_AUTH_FILE",
        file.display()
    )]
    Helper {
        /// The registry.
        host: String,
        /// The helper's name.
        helper: String,
        /// The file naming it.
        file: PathBuf,
    },
}

#[derive(Deserialize, Default)]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
    #[serde(default)]
    identitytoken: Option<String>,
    #[serde(default)]
    registrytoken: Option<String>,
}

/// docker/cli's key normalisation: scheme and path dropped
/// (`https://index.docker.io/v1/` → `index.docker.io`).
pub fn normalise_key(key: &str) -> &str {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    k.split('/').next().unwrap_or(k)
}

/// The keys that stand for `domain` (Docker Hub has three names).
fn same_registry(key: &str, domain: &str) -> bool {
    const HUB: [&str; 3] = ["docker.io", "index.docker.io", "registry-1.docker.io"];
    let k = normalise_key(key);
    k == domain || (HUB.contains(&k) && HUB.contains(&domain))
}

fn entry_credential(
    e: &AuthEntry,
    file: &Path,
    key: &str,
) -> Result<Option<Credential>, CredsError> {
    if let Some(t) = e.registrytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::RegistryToken(t.to_owned())));
    }
    if let Some(t) = e.identitytoken.as_deref().filter(|t| !t.is_empty()) {
        return Ok(Some(Credential::IdentityToken(t.to_owned())));
    }
    if let Some(a) = e.auth.as_deref().filter(|a| !a.is_empty()) {
        let bad = || CredsError::BadAuth {
            file: file.to_owned(),
            key: key.to_owned(),
        };
        let a = a.trim().trim_end_matches('=');
        let raw = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(a)
            .map_err(|_| bad())?;
        let text = String::from_utf8(raw).map_err(|_| bad())?;
        let (u, p) = text.split_once(':').ok_or_else(bad)?;
        return Ok(Some(Credential::Basic {
            username: u.to_owned(),
            password: p.to_owned(),
        }));
    }
    match (&e.username, &e.password) {
        (Some(u), Some(p)) if !u.is_empty() => Ok(Some(Credential::Basic {
            username: u.clone(),
            password: p.clone(),
        })),
        _ => Ok(None),
    }
}

/// The credential for registry `domain` (as normalised: `docker.io`,
/// `host:port`) in one `config.json`/`auth.json` text.
pub fn from_config(
    text: &str,
    file: &Path,
    domain: &str,
) -> Result<Option<Credential>, CredsError> {
    let cfg: ConfigFile = serde_json::from_str(text).map_err(|e| CredsError::BadFile {
        file: file.to_owned(),
        why: format!("line {} column {}: {}", e.line(), e.column(), classify(&e)),
    })?;
    let mut listed = false;
    for (key, e) in cfg.auths.iter().filter(|(k, _)| same_registry(k, domain)) {
        listed = true;
        if let Some(c) = entry_credential(e, file, key)? {
            return Ok(Some(c));
        }
    }
    let helper = cfg
        .cred_helpers
        .iter()
        .find(|(k, _)| same_registry(k, domain))
        .map(|(_, h)| h.clone())
        .or_else(|| cfg.creds_store.clone().filter(|_| listed));
    match helper {
        Some(helper) if !helper.is_empty() => Err(CredsError::Helper {
            host: domain.to_owned(),
            helper,
            file: file.to_owned(),
        }),
        _ => Ok(None),
    }
}

/// serde_json's error kind without the text it quotes.
fn classify(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "unexpected structure",
        serde_json::error::Category::Eof => "truncated",
    }
}

/// What the lookup reads from the environment.
#[derive(Default, Clone)]
pub struct Environment {
    /// `SIFRUN_DOCKER_USERNAME`.
    pub username: Option<String>,
    /// `SIFRUN_DOCKER_PASSWORD`.
    pub password: Option<String>,
    /// `REGISTRY_AUTH_FILE`.
    pub registry_auth_file: Option<PathBuf>,
    /// `DOCKER_CONFIG` (a directory).
    pub docker_config: Option<PathBuf>,
    /// `HOME`.
    pub home: Option<PathBuf>,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Environment")
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("registry_auth_file", &self.registry_auth_file)
            .field("docker_config", &self.docker_config)
            .field("home", &self.home)
            .finish()
    }
}

impl Environment {
    /// The process's environment.
    pub fn from_process() -> Self {
        Self::from_lookup(|k| std::env::var_os(k).map(|v| v.to_string_lossy().into_owned()))
    }

    /// The environment `get` reads (a job's, for the Slurm holder); empty
    /// values count as unset.
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Self {
        let var = |k: &str| get(k).filter(|v| !v.is_empty());
        Environment {
            username: var("SIFRUN_DOCKER_USERNAME"),
            password: var("SIFRUN_DOCKER_PASSWORD"),
            registry_auth_file: var("REGISTRY_AUTH_FILE").map(PathBuf::from),
            docker_config: var("DOCKER_CONFIG").map(PathBuf::from),
            home: var("HOME").map(PathBuf::from),
        }
    }

    /// The files to look in, in order.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut v: Vec<PathBuf> = self.registry_auth_file.iter().cloned().collect();
        match (&self.docker_config, &self.home) {
            (Some(d), _) => v.push(d.join("config.json")),
            (None, Some(h)) => v.push(h.join(".docker/config.json")),
            (None, None) => {}
        }
        v
    }
}

/// The credential for `domain`: the environment pair, else the first file
/// with an entry. `read` returns a file's text, `None` when it does not
/// exist.
pub fn lookup(
    env: &Environment,
    domain: &str,
    mut read: impl FnMut(&Path) -> Option<String>,
) -> Result<Option<(Credential, Origin)>, CredsError> {
    match (&env.username, &env.password) {
        (Some(u), Some(p)) => {
            let c = Credential::Basic {
                username: u.clone(),
                password: p.clone(),
            };
            return Ok(Some((c, Origin::Environment)));
        }
        (None, None) => {}
        _ => return Err(CredsError::HalfEnvironment),
    }
    for f in env.files() {
        let Some(text) = read(&f) else { continue };
        if let Some(c) = from_config(&text, &f, domain)? {
            return Ok(Some((c, Origin::File(f))));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    /// A job's environment read through a lookup: empty values are unset,
    /// and the files follow from it.
    #[test]
    fn an_environment_from_a_lookup() {
        let job = [
            ("SIFRUN_DOCKER_USERNAME", "u"),
            ("SIFRUN_DOCKER_PASSWORD", "p"),
            ("REGISTRY_AUTH_FILE", "/a/auth.json"),
            ("DOCKER_CONFIG", ""),
            ("HOME", "/home/u"),
        ];
        let e = super::Environment::from_lookup(|k| {
            job.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        });
        assert_eq!(e.username.as_deref(), Some("u"));
        assert_eq!(e.password.as_deref(), Some("p"));
        assert_eq!(e.docker_config, None);
        assert_eq!(
            e.files(),
            ["/a/auth.json", "/home/u/.docker/config.json"].map(std::path::PathBuf::from)
        );
        assert!(!format!("{e:?}").contains("\"p\""), "{e:?}");
    }

    use super::*;

    #[test]
    fn environment_debug_hides_the_password() {
        let env = Environment {
            username: Some("alice".into()),
            password: Some("s3cret-pw".into()),
            ..Environment::default()
        };
        let d = format!("{env:?}");
        assert!(!d.contains("s3cret-pw"), "{d}");
        assert!(d.contains("alice") && d.contains("***"), "{d}");
    }

    fn basic(u: &str, p: &str) -> Credential {
        Credential::Basic {
            username: u.into(),
            password: p.into(),
        }
    }

    fn cfg(text: &str, domain: &str) -> Result<Option<Credential>, CredsError> {
        from_config(text, Path::new("/c.json"), domain)
    }

    #[test]
    fn keys_are_normalised() {
        assert_eq!(
            normalise_key("https://index.docker.io/v1/"),
            "index.docker.io"
        );
        assert_eq!(normalise_key("http://localhost:5000"), "localhost:5000");
        assert_eq!(normalise_key("quay.io"), "quay.io");
        // dXNlcjpwYTpzcw== = user:pa:ss (split at the first colon).
        let t = r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dXNlcjpwYTpzcw=="}}}"#;
        assert_eq!(cfg(t, "docker.io").unwrap(), Some(basic("user", "pa:ss")));
        assert_eq!(cfg(t, "quay.io").unwrap(), None);
        // Unpadded base64 too.
        let t = r#"{"auths":{"127.0.0.1:5000":{"auth":"dXNlcjpwYTpzcw"}}}"#;
        assert_eq!(
            cfg(t, "127.0.0.1:5000").unwrap(),
            Some(basic("user", "pa:ss"))
        );
    }

    #[test]
    fn entry_forms() {
        let t = r#"{"auths":{"r.io":{"username":"u","password":"p"}}}"#;
        assert_eq!(cfg(t, "r.io").unwrap(), Some(basic("u", "p")));
        let t = r#"{"auths":{"r.io":{"identitytoken":"refresh"}}}"#;
        assert_eq!(
            cfg(t, "r.io").unwrap(),
            Some(Credential::IdentityToken("refresh".into()))
        );
        let t = r#"{"auths":{"r.io":{"registrytoken":"tok"}}}"#;
        assert_eq!(
            cfg(t, "r.io").unwrap(),
            Some(Credential::RegistryToken("tok".into()))
        );
        let t = r#"{"auths":{"r.io":{}}}"#;
        assert_eq!(cfg(t, "r.io").unwrap(), None);
        let t = r#"{"auths":{"r.io":{"auth":"%%%"}}}"#;
        assert!(matches!(cfg(t, "r.io"), Err(CredsError::BadAuth { .. })));
        // No colon inside.
        let t = r#"{"auths":{"r.io":{"auth":"dXNlcg=="}}}"#;
        assert!(matches!(cfg(t, "r.io"), Err(CredsError::BadAuth { .. })));
    }

    #[test]
    fn helpers_are_refused_not_skipped() {
        let t = r#"{"auths":{"r.io":{}},"credsStore":"desktop"}"#;
        let e = cfg(t, "r.io").unwrap_err().to_string();
        assert!(e.contains("docker-credential-desktop"), "{e}");
        // A store with no entry for this registry: anonymous.
        assert_eq!(cfg(t, "other.io").unwrap(), None);
        let t = r#"{"credHelpers":{"gcr.io":"gcloud"}}"#;
        assert!(matches!(cfg(t, "gcr.io"), Err(CredsError::Helper { .. })));
        assert_eq!(cfg(t, "r.io").unwrap(), None);
    }

    #[test]
    fn errors_never_quote_the_file() {
        let e = cfg(r#"{"auths":{"r.io":{"auth":"secret"#, "r.io").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        let e = cfg(r#"{"auths":[ "secret" ]}"#, "r.io").unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(!format!("{:?}", basic("u", "secret")).contains("secret"));
    }

    #[test]
    fn lookup_order() {
        let files: BTreeMap<PathBuf, &str> = [
            (PathBuf::from("/auth.json"), r#"{"auths":{"a.io":{"auth":"YTpiCg=="}}}"#),
            (
                PathBuf::from("/home/u/.docker/config.json"),
                r#"{"auths":{"a.io":{"username":"x","password":"y"},"b.io":{"username":"b","password":"c"}}}"#,
            ),
        ]
        .into_iter()
        .collect();
        let read = |p: &Path| files.get(p).map(|s| (*s).to_owned());
        let mut env = Environment {
            registry_auth_file: Some("/auth.json".into()),
            home: Some("/home/u".into()),
            ..Environment::default()
        };
        let (c, o) = lookup(&env, "a.io", read).unwrap().unwrap();
        assert_eq!(c, basic("a", "b\n"));
        assert_eq!(o, Origin::File("/auth.json".into()));
        let (c, _) = lookup(&env, "b.io", read).unwrap().unwrap();
        assert_eq!(c, basic("b", "c"));
        assert!(lookup(&env, "c.io", read).unwrap().is_none());
        env.username = Some("e".into());
        assert!(matches!(
            lookup(&env, "a.io", read),
            Err(CredsError::HalfEnvironment)
        ));
        env.password = Some("f".into());
        let (c, o) = lookup(&env, "a.io", read).unwrap().unwrap();
        assert_eq!((c, o), (basic("e", "f"), Origin::Environment));
        env.docker_config = Some("/dc".into());
        assert_eq!(
            env.files(),
            [
                PathBuf::from("/auth.json"),
                PathBuf::from("/dc/config.json")
            ]
        );
    }
}
