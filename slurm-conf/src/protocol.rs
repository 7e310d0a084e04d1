//! The protocol between the SPANK plugin (in slurmstepd) and the step's
//! container holder (`sifrun slurm-hold`), defined once for both sides.
//!
//! * The plugin writes one [`Request`] on the holder's standard input, as
//!   JSON, and closes it: everything the holder needs, the job's
//!   environment included. Nothing else steers the holder (its own
//!   environment is cleared; its command line only names the step, for
//!   the job epilog's sweep).
//! * The holder answers with one [`Report`] line on its standard output:
//!   ready, with the changes to make to every task's environment, or what
//!   failed and why. Before it, a holder busy with a long task (converting
//!   a `docker://` image into the cache) writes [`Progress`] lines, at
//!   most one every [`PROGRESS_EVERY_MS`] ms while it moves; the plugin's
//!   set-up timeout counts from the last line (version 2). Its standard
//!   error carries diagnostics only (the set-up phases with
//!   `--sif-verbose`).
//!
//! Every message carries [`VERSION`]; a peer refuses another version with
//! a message naming both, so a plugin and a launcher from different
//! releases fail the step clearly instead of misreading each other.
//!
//! ```text
//! → {"version":2,"step":"42.0","image":"/i.sif",…,"job_env":[["PATH","/usr/bin"]]}
//! ← {"version":2,"progress":{"phase":"download","done":1048576,"total":8388608,"message":"layers 0/2, 1.0/8.0 MiB, 2.0 MiB/s"}}
//! ← {"version":2,"outcome":{"ready":{"env":[{"set":["PATH","/opt/bin"]},{"unset":"LD_PRELOAD"}]}}}
//! ← {"version":2,"outcome":{"failed":{"stage":"ecl","message":"/i.sif: denied"}}}
//! ```

use std::io::{Read, Write};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// The protocol version every message carries. 2: [`Progress`] lines
/// before the report.
pub const VERSION: u32 = 2;

/// The shortest interval between two [`Progress`] lines of a holder.
pub const PROGRESS_EVERY_MS: u64 = 2000;

/// The most bytes a request may have (the job's environment dominates).
pub const MAX_REQUEST: u64 = 64 << 20;

/// The environment variable naming the job user (`UID:GID:G1,G2,…`) to a
/// holder of an ECL step. Such a holder is started with root's real,
/// effective and saved uid (so that no process of the user's may signal it
/// from its first instruction, issue 12 item 4); it acts as the user only
/// in the children it drops to that identity. Only root can start a
/// process with euid 0, so the variable is the plugin's.
pub const HOLD_USER_ENV: &str = "SIFRUN_HOLD_USER";

/// The value of [`HOLD_USER_ENV`] for `uid`, `gid` and `groups`.
pub fn encode_hold_user(uid: u32, gid: u32, groups: &[u32]) -> String {
    let groups: Vec<String> = groups.iter().map(u32::to_string).collect();
    format!("{uid}:{gid}:{}", groups.join(","))
}

/// Reads a [`HOLD_USER_ENV`] value: `(uid, gid, groups)`.
pub fn decode_hold_user(value: &str) -> Option<(u32, u32, Vec<u32>)> {
    let mut parts = value.splitn(3, ':');
    let uid = parts.next()?.parse().ok()?;
    let gid = parts.next()?.parse().ok()?;
    let groups = match parts.next()? {
        "" => Vec::new(),
        list => list
            .split(',')
            .map(|g| g.parse().ok())
            .collect::<Option<Vec<u32>>>()?,
    };
    Some((uid, gid, groups))
}

/// A message that could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer speaks another version of the protocol.
    #[error(
        "the plugin and the launcher speak different protocol versions ({found} and {expected}): install matching releases"
    )]
    Version {
        /// The version the message carries.
        found: u32,
        /// [`VERSION`].
        expected: u32,
    },
    /// Not a well-formed message.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// `request` or `report`.
        what: &'static str,
        /// serde's explanation.
        reason: String,
    },
    /// The holder and the plugin are different releases (a partial
    /// upgrade).
    #[error("the holder {holder} {found} does not match the plugin {plugin}: reinstall sifrun")]
    Release {
        /// The holder's program name (`sifrun` or `sifrun-hold`).
        holder: &'static str,
        /// The holder's release.
        found: &'static str,
        /// The plugin's release (`unknown` for one that sends none).
        plugin: String,
    },
    /// Reading or writing the message failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read or written.
        what: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// Which GPUs the container gets (the plugin's `--sif-gpu`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GpuMode {
    /// Whatever the host has and the job was allocated.
    #[default]
    Auto,
    /// NVIDIA only.
    Nvidia,
    /// AMD ROCm only.
    Rocm,
    /// No GPU integration.
    None,
}

/// Everything the holder of one step needs.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    /// [`VERSION`].
    pub version: u32,
    /// The plugin's release ([`RELEASE`]); the holder refuses another
    /// (empty: a plugin from before this field, refused too).
    #[serde(default)]
    pub release: String,
    /// The step served, `JOB.STEP` (`JOB.batch` for a batch script).
    pub step: String,
    /// The image, an absolute path.
    pub image: PathBuf,
    /// The admin file whose activated `[ecl]` the image must pass. With it
    /// the holder takes the privileged path: it keeps root (real, effective
    /// and saved uid 0), opens the image as the user, pins and verifies it
    /// in an unprivileged child, serves the verified partition with the
    /// kernel's squashfs and pins a root-owned mount namespace at
    /// [`Request::ns_dir`] for the tasks to enter.
    pub ecl_config: Option<PathBuf>,
    /// Where the privileged path pins the step's mount namespace (a
    /// directory in the trusted runtime directory; `mnt` in it is the
    /// namespace). Set with [`Request::ecl_config`].
    #[serde(default)]
    pub ns_dir: Option<PathBuf>,
    /// `users.image_dirs`: the image the holder opens must lie below one
    /// of them, judged on the file it opened.
    #[serde(default)]
    pub image_dirs: Vec<PathBuf>,
    /// Bind specs (`SRC[:DST[:ro|rw]]`), the admin's first.
    pub binds: Vec<String>,
    /// `NAME=VALUE` settings for the container (`--sif-env`).
    pub env: Vec<String>,
    /// The working directory inside (`--sif-workdir`).
    pub pwd: Option<PathBuf>,
    /// An in-memory writable overlay on the image root.
    pub writable_tmpfs: bool,
    /// Do not bind the home directory.
    pub no_home: bool,
    /// Which GPUs to integrate.
    pub gpu: GpuMode,
    /// Bind the host's network filesystems at their paths.
    pub netfs: bool,
    /// Filesystem types bound besides the default network ones.
    pub netfs_types: Vec<String>,
    /// Bind the host's fabric libraries.
    pub fabric_libraries: bool,
    /// Leave InfiniBand umad/issm device nodes usable.
    pub allow_umad: bool,
    /// Make the host's Slurm client usable inside (a batch script).
    pub slurm_client: bool,
    /// slurm.conf as slurmstepd sees it (its `SLURM_CONF`, or the default).
    pub slurm_conf: PathBuf,
    /// 0: errors only; 1: each set-up phase with its duration on standard
    /// error (`--sif-verbose`); 2 and more: debugging detail.
    pub verbosity: u8,
    /// The job's environment, which the tasks' is computed from.
    pub job_env: Vec<(String, String)>,
    /// The step's command (its argv[0]) when it is not a batch script: the
    /// holder's image server decompresses its blocks ahead while the
    /// container is set up and slurmstepd starts the tasks, so that their
    /// first exec finds them in the server's cache. A hint only.
    #[serde(default)]
    pub command: Option<String>,
    /// This node's name as slurmstepd has it (its own `SLURMD_NODENAME`,
    /// never the job's variable, which the user sets): expands `%n` in a
    /// per-node `SlurmdSpoolDir`. `None`: the host name stands in.
    #[serde(default)]
    pub node_name: Option<String>,
    /// `images.cache_dir`: the site cache a `docker://` image is looked up
    /// in first.
    #[serde(default)]
    pub site_cache: Option<PathBuf>,
    /// `images.cache_user`: the account that owns the site cache and
    /// converts into it.
    #[serde(default)]
    pub site_cache_user: Option<String>,
    /// `images.site_registries`: what `cache_user` converts (`None`: any).
    #[serde(default)]
    pub site_registries: Option<Vec<String>>,
    /// `images.cache_max_image_size` in bytes (`None`: no limit).
    #[serde(default)]
    pub site_max_image_size: Option<u64>,
    /// `images.cache_min_free` in bytes (`None`: no reserve).
    #[serde(default)]
    pub site_min_free: Option<u64>,
}

#[derive(Deserialize)]
struct Versioned {
    version: u32,
}

fn check_version(bytes: &[u8], what: &'static str) -> Result<(), ProtocolError> {
    let v: Versioned = serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed {
        what,
        reason: e.to_string(),
    })?;
    if v.version != VERSION {
        return Err(ProtocolError::Version {
            found: v.version,
            expected: VERSION,
        });
    }
    Ok(())
}

/// This release of sifrun (the plugin and both holders are built from one
/// workspace and must match).
pub const RELEASE: &str = env!("CARGO_PKG_VERSION");

impl Request {
    /// Refuses a request from a plugin of another release than the holder
    /// `holder` (its program name), whose release is [`RELEASE`].
    pub fn check_release(&self, holder: &'static str) -> Result<(), ProtocolError> {
        if self.release == RELEASE {
            return Ok(());
        }
        Err(ProtocolError::Release {
            holder,
            found: RELEASE,
            plugin: if self.release.is_empty() {
                "unknown".into()
            } else {
                self.release.clone()
            },
        })
    }

    /// The request as sent (JSON, one line).
    pub fn encode(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec(self).expect("a request always serialises");
        v.push(b'\n');
        v
    }

    /// Reads a request, refusing another version and unknown fields.
    pub fn decode(bytes: &[u8]) -> Result<Request, ProtocolError> {
        check_version(bytes, "request")?;
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed {
            what: "request",
            reason: e.to_string(),
        })
    }

    /// Reads a request from `input` to its end (at most [`MAX_REQUEST`] bytes).
    pub fn read_from(input: impl Read) -> Result<Request, ProtocolError> {
        let mut raw = Vec::new();
        input
            .take(MAX_REQUEST)
            .read_to_end(&mut raw)
            .map_err(|source| ProtocolError::Io {
                what: "reading the request",
                source,
            })?;
        Request::decode(&raw)
    }
}

/// One change to a task's environment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EnvChange {
    /// Set a variable.
    Set(String, String),
    /// Remove a variable.
    Unset(String),
}

/// The part of the set-up that failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// The request could not be read.
    Request,
    /// The image did not pass the execution control list.
    Ecl,
    /// Dropping root's privileges.
    Privileges,
    /// Opening, checking or serving the image; planning the container.
    Image,
    /// Building the container (namespaces, mounts).
    Setup,
    /// Computing the tasks' environment (the image's scripts).
    Environment,
}

impl std::fmt::Display for Stage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Stage::Request => "reading the request",
            Stage::Ecl => "execution control list",
            Stage::Privileges => "dropping privileges",
            Stage::Image => "opening the image",
            Stage::Setup => "setting up the container",
            Stage::Environment => "computing the tasks' environment",
        })
    }
}

/// How the set-up ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Outcome {
    /// The container is up; tasks may join it.
    Ready {
        /// The changes that turn the job's environment into a task's.
        env: Vec<EnvChange>,
    },
    /// The container could not be made.
    Failed {
        /// What failed.
        stage: Stage,
        /// The user-facing message (one line, starting with `sifrun:`).
        message: String,
    },
}

/// The holder's answer: one line on its standard output.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// [`VERSION`].
    pub version: u32,
    /// How the set-up ended.
    pub outcome: Outcome,
}

impl Report {
    /// A ready report.
    pub fn ready(env: Vec<EnvChange>) -> Report {
        Report {
            version: VERSION,
            outcome: Outcome::Ready { env },
        }
    }

    /// A failure report; the message is kept to one line.
    pub fn failed(stage: Stage, message: impl Into<String>) -> Report {
        let message: String = message.into();
        Report {
            version: VERSION,
            outcome: Outcome::Failed {
                stage,
                message: message.replace(['\n', '\r'], " "),
            },
        }
    }

    /// The report as one line, newline included (JSON escapes any newline
    /// inside a name or value).
    pub fn encode_line(&self) -> String {
        let mut s = serde_json::to_string(self).expect("a report always serialises");
        s.push('\n');
        s
    }

    /// Writes the line and flushes.
    pub fn write_to(&self, out: &mut dyn Write) -> Result<(), ProtocolError> {
        out.write_all(self.encode_line().as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| ProtocolError::Io {
                what: "writing the report",
                source,
            })
    }

    /// Reads one report line.
    pub fn decode_line(line: &str) -> Result<Report, ProtocolError> {
        check_version(line.as_bytes(), "report")?;
        serde_json::from_str(line).map_err(|e| ProtocolError::Malformed {
            what: "report",
            reason: e.to_string(),
        })
    }
}

/// How far a long set-up got (a line before the report).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Progress {
    /// What is being done: `download`, `convert`, `wait` (for another
    /// process converting the same image).
    pub phase: String,
    /// Bytes done in this phase.
    pub done: u64,
    /// The phase's bytes in all (0: unknown).
    pub total: u64,
    /// The same for a person, one line (without `sifrun: `).
    pub message: String,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ProgressLine {
    version: u32,
    progress: Progress,
}

impl Progress {
    /// The line as written, newline included.
    pub fn encode_line(&self) -> String {
        let line = ProgressLine {
            version: VERSION,
            progress: Progress {
                message: self.message.replace(['\n', '\r'], " "),
                ..self.clone()
            },
        };
        let mut s = serde_json::to_string(&line).expect("progress always serialises");
        s.push('\n');
        s
    }

    /// Writes the line and flushes.
    pub fn write_to(&self, out: &mut dyn Write) -> Result<(), ProtocolError> {
        out.write_all(self.encode_line().as_bytes())
            .and_then(|()| out.flush())
            .map_err(|source| ProtocolError::Io {
                what: "writing progress",
                source,
            })
    }
}

/// One line from the holder: progress, or the report that ends the set-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Message {
    /// The holder is still at work.
    Progress(Progress),
    /// The set-up ended.
    Report(Report),
}

impl Message {
    /// Reads one line from the holder.
    pub fn decode_line(line: &str) -> Result<Message, ProtocolError> {
        check_version(line.as_bytes(), "report")?;
        if let Ok(p) = serde_json::from_str::<ProgressLine>(line) {
            return Ok(Message::Progress(p.progress));
        }
        Report::decode_line(line).map(Message::Report)
    }
}

#[cfg(test)]
mod tests;
