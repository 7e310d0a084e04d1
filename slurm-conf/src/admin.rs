//! The admin configuration file (`config=` in plugstack.conf), TOML:
//!
//! ```toml
//! [container]
//! binds = ["/scratch", "/apps:/apps:ro"]  # bound into every container, before the user's
//! setup_timeout = 120                      # seconds a node waits for its container
//! network_filesystems = true               # bind Lustre, GPFS, NFS, … at their paths
//! netfs_types = ["wekafs"]                 # and these filesystem types too
//! fabric_libraries = true                  # bind the host's libibverbs, libfabric, …
//! allow_umad = false                       # leave /dev/infiniband/umad*, issm* usable
//!
//! [users]
//! forbid = ["sif-writable-tmpfs"]  # options users may not give
//! image_dirs = ["/shared/images"]  # images must lie below one of these
//! max_binds = 16                   # most --sif-bind specs per step
//!
//! [images]                         # docker:// images (see ImagesSection)
//! cache_dir = "/shared/sifrun-cache"  # the site cache, looked up before the user's
//! cache_user = "sifrun-cache"      # the account that owns and fills it
//! site_registries = ["docker.io/library", "registry.example"]  # what it converts
//! cache_max_image_size = "20G"    # larger images go to the user's cache
//! cache_min_free = "10G"          # nor may a conversion leave less free there
//!
//! [ecl]                            # see crate::ecl
//! activated = true
//! keyring = "/etc/sifrun/ecl-keyring.asc"
//! verdict_cache_entries = 256      # per-node cache of allowed verdicts; 0 = off
//! [[ecl.execgroup]]
//! tagname = "site"
//! mode = "whitelist"
//! keyfp = ["12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84"]
//! ```
//!
//! Unknown keys and bad values are errors naming the key. The file steers
//! code that runs as root, so it must be a regular file owned by root and
//! writable by nobody else; it is opened without following a symlink.

use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

mod images;
use images::check_images;
pub use images::{
    DEFAULT_CACHE_MAX_IMAGE_SIZE, DEFAULT_CACHE_MIN_FREE, ImagesSection, Size,
    site_registry_allowed,
};

/// The parsed file.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `[container]`: what every container gets.
    #[serde(default)]
    pub container: ContainerSection,
    /// `[users]`: limits on what users ask for.
    #[serde(default)]
    pub users: UsersSection,
    /// `[images]`: the site cache of `docker://` images.
    #[serde(default)]
    pub images: ImagesSection,
    /// The execution control list (`[ecl]`, see [`crate::ecl`]).
    #[serde(skip)]
    pub ecl: crate::ecl::Ecl,
    #[serde(default, rename = "ecl")]
    raw_ecl: Option<crate::ecl::RawEcl>,
}

/// `[container]`: what every container gets.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContainerSection {
    /// Bind specs (`SRC[:DST[:ro|rw]]`) added before the user's.
    #[serde(default)]
    pub binds: Vec<String>,
    /// Seconds a node waits for its container to be ready.
    #[serde(default = "default_timeout")]
    pub setup_timeout: u64,
    /// Bind the host's network filesystems at their paths (default yes).
    #[serde(default = "yes")]
    pub network_filesystems: bool,
    /// Filesystem types bound besides Lustre, GPFS, NFS, BeeGFS, CephFS, CIFS.
    #[serde(default)]
    pub netfs_types: Vec<String>,
    /// Bind the host's fabric libraries, provider directories and
    /// configuration (default yes).
    #[serde(default = "yes")]
    pub fabric_libraries: bool,
    /// Leave the InfiniBand management nodes (`umad*`, `issm*`) usable
    /// (default no: they are masked).
    #[serde(default)]
    pub allow_umad: bool,
}

fn yes() -> bool {
    true
}

impl Default for ContainerSection {
    fn default() -> Self {
        ContainerSection {
            binds: Vec::new(),
            setup_timeout: default_timeout(),
            network_filesystems: true,
            netfs_types: Vec::new(),
            fabric_libraries: true,
            allow_umad: false,
        }
    }
}

fn default_timeout() -> u64 {
    120
}

/// `[users]`: limits on what users may ask for.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersSection {
    /// Option names (`sif-bind`) users may not give.
    #[serde(default)]
    pub forbid: Vec<String>,
    /// When not empty, images must lie below one of these directories.
    #[serde(default)]
    pub image_dirs: Vec<PathBuf>,
    /// The most `--sif-bind` specs one step may give.
    #[serde(default)]
    pub max_binds: Option<usize>,
}

/// Why the file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The file cannot be opened or read.
    #[error("{path}: {source}")]
    Open {
        /// The admin file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file could be changed by someone other than its trusted owner.
    #[error("{path}: {reason}")]
    Unsafe {
        /// The admin file.
        path: PathBuf,
        /// What is wrong with its owner, mode or type.
        reason: String,
    },
    /// The file's content is wrong.
    #[error("{path}: {reason}")]
    Invalid {
        /// The admin file.
        path: PathBuf,
        /// The key and what is wrong with it.
        reason: String,
    },
}

impl AdminConfig {
    /// Reads and checks the file; it must belong to `owner` (root, except in
    /// tests) and be writable by nobody else. `None` skips that check: for
    /// the user's own srun, sbatch and salloc, where the file only gives
    /// early errors (inside a container, root's files show as nobody's) and
    /// slurmstepd enforces it again with the check.
    pub fn load(
        path: &Path,
        owner: Option<u32>,
        options: &[&str],
    ) -> Result<AdminConfig, AdminError> {
        let text =
            String::from_utf8(read_trusted(path, owner)?).map_err(|_| AdminError::Invalid {
                path: path.to_owned(),
                reason: "not UTF-8 text".into(),
            })?;
        AdminConfig::parse(&text, options).map_err(|reason| AdminError::Invalid {
            path: path.to_owned(),
            reason,
        })
    }

    /// Parses and checks the text; `options` are the option names users have.
    pub fn parse(text: &str, options: &[&str]) -> Result<AdminConfig, String> {
        let mut c: AdminConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().to_owned();
            match e.span() {
                Some(span) => {
                    let line = text[..span.start.min(text.len())].lines().count().max(1);
                    format!("line {line}: {msg}")
                }
                None => msg,
            }
        })?;
        for b in &c.container.binds {
            let source = b.split(':').next().unwrap_or("");
            if !source.starts_with('/') {
                return Err(format!(
                    "container.binds: {b:?}: the source must be an absolute path"
                ));
            }
        }
        for t in &c.container.netfs_types {
            if t.is_empty()
                || !t
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            {
                return Err(format!(
                    "container.netfs_types: {t:?} is not a filesystem type name"
                ));
            }
        }
        if !(1..=3600).contains(&c.container.setup_timeout) {
            return Err(format!(
                "container.setup_timeout: {} is not between 1 and 3600 seconds",
                c.container.setup_timeout
            ));
        }
        for f in &c.users.forbid {
            let name = f.trim_start_matches("--");
            if !options.contains(&name) {
                return Err(format!(
                    "users.forbid: {f:?} is not an option (options: {})",
                    options.join(", ")
                ));
            }
        }
        for d in &c.users.image_dirs {
            if !d.is_absolute() || d.components().any(|c| c == Component::ParentDir) {
                return Err(format!(
                    "users.image_dirs: {}: must be an absolute path without ..",
                    d.display()
                ));
            }
        }
        check_images(&c.images)?;
        c.ecl = crate::ecl::Ecl::from_raw(c.raw_ecl.take().unwrap_or_default(), &|p| {
            std::fs::canonicalize(p).ok()
        })
        .map_err(|e| format!("ecl: {e}"))?;
        Ok(c)
    }

    /// Whether users may give the option `name` (without `--`).
    pub fn forbids(&self, name: &str) -> bool {
        self.users
            .forbid
            .iter()
            .any(|f| f.trim_start_matches("--") == name)
    }

    /// Whether an image at `path` (canonical) is allowed: whole path
    /// components are compared, never string prefixes.
    pub fn image_allowed(&self, path: &Path) -> bool {
        self.users.image_dirs.is_empty()
            || self.users.image_dirs.iter().any(|d| path.starts_with(d))
    }
}

/// Reads a file that steers root code (the admin file, the ECL keyring):
/// a regular file, opened without following a symlink, owned by `owner`
/// and writable by nobody else (`None`: no ownership check).
pub fn read_trusted(path: &Path, owner: Option<u32>) -> Result<Vec<u8>, AdminError> {
    let open = |source| AdminError::Open {
        path: path.to_owned(),
        source,
    };
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(open)?;
    let meta = file.metadata().map_err(open)?;
    let unsafe_file = |reason: String| AdminError::Unsafe {
        path: path.to_owned(),
        reason,
    };
    if let Some(owner) = owner {
        // Whoever may write a directory above it may replace the file.
        crate::trusted::check_parents(path, owner).map_err(|e| unsafe_file(e.to_string()))?;
    }
    if !meta.is_file() {
        return Err(unsafe_file("not a regular file".into()));
    }
    if let Some(owner) = owner
        && meta.uid() != owner
    {
        return Err(unsafe_file(format!(
            "owned by uid {}, must be owned by uid {owner}",
            meta.uid()
        )));
    }
    if owner.is_some() && meta.mode() & 0o022 != 0 {
        return Err(unsafe_file(format!(
            "mode {:04o} lets others write it; make it 0644",
            meta.mode() & 0o7777
        )));
    }
    let mut bytes = Vec::new();
    file.read_to_end(&mut bytes).map_err(open)?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_file_in_a_directory_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let chmod = |p: &Path, m: u32| {
            std::fs::set_permissions(p, std::fs::Permissions::from_mode(m)).unwrap()
        };
        let me = std::fs::metadata("/proc/self").unwrap().uid();
        let t = crate::scratch();
        let dir = t.path().join("open");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("sifrun.toml");
        std::fs::write(&file, "").unwrap();
        chmod(&file, 0o644);
        chmod(&dir, 0o777);
        let e = read_trusted(&file, Some(me)).unwrap_err().to_string();
        assert!(e.contains("lets others write it"), "{e}");
        read_trusted(&file, None).unwrap();
        chmod(&dir, 0o755);
        read_trusted(&file, Some(me)).unwrap();
    }

    use super::*;

    const OPTS: &[&str] = &["sif-image", "sif-bind", "sif-writable-tmpfs"];

    #[test]
    fn the_admin_file_sets_the_verdict_cache_bound() {
        let ecl = "[ecl]\nactivated = true\nkeyring = \"/k\"\n";
        let c = AdminConfig::parse(ecl, OPTS).unwrap();
        assert_eq!(
            c.ecl.verdict_cache_entries,
            crate::ecl::VERDICT_CACHE_ENTRIES
        );
        let c = AdminConfig::parse(&format!("{ecl}verdict_cache_entries = 0\n"), OPTS).unwrap();
        assert_eq!(c.ecl.verdict_cache_entries, 0);
    }

    #[test]
    fn a_full_file_parses() {
        let c = AdminConfig::parse(
            r#"
[container]
binds = ["/scratch", "/apps:/apps:ro"]
setup_timeout = 30
fabric_libraries = false
allow_umad = true
[users]
forbid = ["sif-writable-tmpfs", "--sif-bind"]
image_dirs = ["/shared/images"]
max_binds = 4
[images]
cache_dir = "/shared/sifrun-cache"
cache_user = "sifrun-cache"
site_registries = ["docker.io/library", "registry.example:5000"]
"#,
            OPTS,
        )
        .unwrap();
        assert_eq!(c.container.binds, ["/scratch", "/apps:/apps:ro"]);
        assert_eq!(c.container.setup_timeout, 30);
        assert!(!c.container.fabric_libraries && c.container.allow_umad);
        let d = AdminConfig::default().container;
        assert!(d.fabric_libraries && !d.allow_umad);
        assert!(c.forbids("sif-bind") && c.forbids("sif-writable-tmpfs"));
        assert!(!c.forbids("sif-image"));
        assert_eq!(c.users.max_binds, Some(4));
        assert_eq!(
            c.images.cache_dir.as_deref(),
            Some(Path::new("/shared/sifrun-cache"))
        );
        assert_eq!(c.images.cache_user.as_deref(), Some("sifrun-cache"));
        let allowed = c.images.site_registries.as_deref();
        assert!(site_registry_allowed(
            allowed,
            "docker.io",
            "library/alpine"
        ));
        assert!(!site_registry_allowed(
            allowed,
            "docker.io",
            "libraryx/alpine"
        ));
        assert!(!site_registry_allowed(allowed, "docker.io", "evil/alpine"));
        assert!(site_registry_allowed(
            allowed,
            "registry.example:5000",
            "a/b"
        ));
        assert!(!site_registry_allowed(allowed, "registry.example", "a/b"));
        assert!(site_registry_allowed(None, "anything", "a/b"));
        assert!(c.image_allowed(Path::new("/shared/images/a.sif")));
        assert!(!c.image_allowed(Path::new("/shared/images-evil/a.sif")));
        assert!(!c.image_allowed(Path::new("/home/u/a.sif")));
        assert_eq!(
            AdminConfig::parse("", OPTS).unwrap(),
            AdminConfig::default()
        );
        assert!(AdminConfig::default().image_allowed(Path::new("/anywhere.sif")));
    }

    #[test]
    fn mistakes_name_the_key() {
        for (text, want) in [
            ("[container]\nbindz = []", "bindz"),
            (
                "[users]\nforbid = [\"sif-nope\"]",
                "users.forbid: \"sif-nope\"",
            ),
            (
                "[users]\nimage_dirs = [\"images\"]",
                "users.image_dirs: images",
            ),
            ("[container]\nsetup_timeout = 0", "container.setup_timeout"),
            ("[container]\nbinds = [\"scratch\"]", "container.binds"),
            ("[users]\nmax_binds = \"x\"", "line 2"),
            ("[images]\ncache_dir = \"rel\"", "images.cache_dir: rel"),
            ("[images]\ncache_user = \"c\"", "needs images.cache_dir"),
            (
                "[images]\ncache_dir = \"/c\"\ncache_user = \"root\"",
                "images.cache_user",
            ),
            (
                "[images]\ncache_dir = \"/c\"\ncache_user = \"a b\"",
                "images.cache_user",
            ),
            ("[images]\ncache_dri = \"/c\"", "cache_dri"),
            (
                "[images]\nsite_registries = [\"https://docker.io\"]",
                "images.site_registries",
            ),
            (
                "[images]\nsite_registries = [\"docker.io/library/\"]",
                "images.site_registries",
            ),
        ] {
            let e = AdminConfig::parse(text, OPTS).unwrap_err();
            assert!(e.contains(want), "{text:?}: {e}");
        }
    }

    #[test]
    fn the_file_must_be_owned_and_not_writable_by_others() {
        use std::os::unix::fs::PermissionsExt;
        let me = my_uid();
        let dir = crate::scratch();
        let p = dir.path().join("sifrun.toml");
        std::fs::write(&p, "[users]\nmax_binds = 2\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(
            AdminConfig::load(&p, Some(me), OPTS)
                .unwrap()
                .users
                .max_binds,
            Some(2)
        );
        let e = AdminConfig::load(&p, Some(me + 1), OPTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("must be owned by uid"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o664)).unwrap();
        let e = AdminConfig::load(&p, Some(me), OPTS)
            .unwrap_err()
            .to_string();
        assert!(e.contains("lets others write it"), "{e}");
        assert!(
            AdminConfig::load(&p, None, OPTS).is_ok(),
            "advisory loads skip it"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let link = dir.path().join("link.toml");
        std::os::unix::fs::symlink(&p, &link).unwrap();
        assert!(
            AdminConfig::load(&link, Some(me), OPTS).is_err(),
            "symlinks are not followed"
        );
        let e = AdminConfig::load(&dir.path().join("none"), Some(me), OPTS).unwrap_err();
        assert!(e.to_string().contains("none: No such file"), "{e}");
    }

    fn my_uid() -> u32 {
        std::fs::metadata("/proc/self").unwrap().uid()
    }
}
