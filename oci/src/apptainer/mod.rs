//! Apptainer's `/.singularity.d` layout generated from an image config
//! (design §5): the runscript (`OCI_ENTRYPOINT`/`OCI_CMD` and the
//! `SINGULARITY_NO_EVAL` branch), `env/10-docker2singularity.sh` with
//! Apptainer's double escaping, `labels.json` as Go's
//! `json.MarshalIndent` writes it, the base files, and provenance labels.
//! Output is a list of synthetic files the converter emits after the
//! layers (paths relative to the image root).

mod files;
mod quote;

use std::collections::BTreeMap;

use crate::digest::Digest;
use crate::manifest::ImageConfig;
use crate::tar::{Entry, Kind};
use crate::tree::{Layer, Tree};
use quote::{escape_single_quotes, go_json_map, go_quote, shell_escape};

/// What a synthetic path is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Content {
    /// A directory (kept when the image has one).
    Dir,
    /// A regular file with these bytes.
    File(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
}

/// One path of the layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synthetic {
    /// Path relative to the root (`.singularity.d/runscript`).
    pub path: String,
    /// Its content.
    pub content: Content,
    /// Permission bits.
    pub mode: u32,
    /// Whether it replaces what the layers put there (files), or is only
    /// added when the path is free (directories, symlinks).
    pub replace: bool,
}

/// Where the image came from, for labels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provenance {
    /// Apptainer's bootstrap name (`docker`, `oci`, `oci-archive`,
    /// `docker-archive`).
    pub bootstrap: String,
    /// The source as the user gave it.
    pub from: String,
    /// The normalised reference (or the archive/layout path).
    pub reference: String,
    /// The platform manifest's digest (`None` for `docker-archive`).
    pub digest: Option<Digest>,
    /// The index digest, when an index was resolved.
    pub index_digest: Option<Digest>,
    /// The config's digest.
    pub config_digest: Digest,
    /// `linux/amd64`, ...
    pub platform: String,
    /// The image architecture (`amd64`).
    pub arch: String,
    /// Build time as the caller formats it (RFC 3339).
    pub build_date: String,
    /// `sifrun VERSION`.
    pub converter: String,
}

/// Format version of the conversion, part of the converter label.
pub const FORMAT: u32 = 1;

fn args_quoted(args: &[String]) -> String {
    args.iter()
        .map(|a| format!("\"{}\"", shell_escape(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `set -- 'ARG' "$@"` lines, last argument first, so the arguments end
/// up in front of `"$@"` in order.
fn prepend(args: &[String], indent: &str) -> String {
    args.iter()
        .rev()
        .map(|a| format!("{indent}set -- '{}' \"$@\"\n", escape_single_quotes(a)))
        .collect()
}

/// `/.singularity.d/runscript` for an ENTRYPOINT and a CMD (empty = unset).
pub fn runscript(entrypoint: &[String], cmd: &[String]) -> String {
    let mut s = format!(
        "#!/bin/sh\nOCI_ENTRYPOINT='{}'\nOCI_CMD='{}'\n",
        escape_single_quotes(&args_quoted(entrypoint)),
        escape_single_quotes(&args_quoted(cmd))
    );
    s += "# SINGULARITY_NO_EVAL set: the exact words of ENTRYPOINT, CMD and the arguments, no shell evaluation.\n";
    s += "if [ -n \"${SINGULARITY_NO_EVAL:-}\" ]; then\n";
    if !cmd.is_empty() {
        let when = if entrypoint.is_empty() {
            "no arguments"
        } else {
            "no arguments: ENTRYPOINT + CMD"
        };
        s += &format!(
            "    # {when}\n    if [ $# -eq 0 ]; then\n{}    fi\n",
            prepend(cmd, "        ")
        );
    }
    s += &prepend(entrypoint, "    ");
    s += "    exec \"$@\"\nfi\n";
    s += "# Default: the arguments as double-quoted words, evaluated with ENTRYPOINT/CMD by the shell.\n";
    s += "CMDLINE_ARGS=\"\"\nfor arg in \"$@\"; do\n    CMDLINE_ARGS=\"${CMDLINE_ARGS} \\\"${arg}\\\"\"\ndone\n";
    s += match (entrypoint.is_empty(), cmd.is_empty()) {
        (false, true) => "SINGULARITY_OCI_RUN=\"${OCI_ENTRYPOINT} ${CMDLINE_ARGS}\"\n",
        (true, _) => {
            "if [ $# -gt 0 ]; then\n    SINGULARITY_OCI_RUN=\"${CMDLINE_ARGS}\"\nelse\n    \
             SINGULARITY_OCI_RUN=\"${OCI_CMD}\"\nfi\n"
        }
        (false, false) => {
            "if [ $# -gt 0 ]; then\n    SINGULARITY_OCI_RUN=\"${OCI_ENTRYPOINT} ${CMDLINE_ARGS}\"\nelse\n    \
             SINGULARITY_OCI_RUN=\"${OCI_ENTRYPOINT} ${OCI_CMD}\"\nfi\n"
        }
    };
    s += "eval \"set ${SINGULARITY_OCI_RUN}\"\nexec \"$@\"\n";
    s
}

/// Whether `name` is a shell variable name (`[A-Za-z_][A-Za-z0-9_]*`).
fn is_shell_name(name: &str) -> bool {
    let mut b = name.bytes();
    b.next()
        .is_some_and(|f| f.is_ascii_alphabetic() || f == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

/// The `Env` entries [`env_script`] leaves out: their names are not shell
/// variable names (an `export` of them would stop every shell that sources
/// the script). The caller warns about them.
pub fn skipped_env(env: &[String]) -> Vec<&str> {
    env.iter()
        .map(String::as_str)
        .filter(|e| !is_shell_name(e.split('=').next().unwrap_or(e)))
        .collect()
}

/// `/.singularity.d/env/10-docker2singularity.sh` for the config's `Env`:
/// `PATH` is overwritten, every other variable is only a default (host
/// and user values win), a bare `NAME` exports the current value; entries
/// whose name is no shell name are left out ([`skipped_env`]).
pub fn env_script(env: &[String]) -> String {
    let mut s = String::from("#!/bin/sh\n");
    for e in env
        .iter()
        .filter(|e| is_shell_name(e.split('=').next().unwrap_or(e)))
    {
        match e.split_once('=') {
            None => s += &format!("export {e}=\"${{{e}:-}}\"\n"),
            Some(("PATH", v)) => s += &format!("export PATH={}\n", go_quote(&shell_escape(v))),
            Some((k, v)) => {
                s += &format!("export {k}=\"${{{k}:-{}}}\"\n", go_quote(&shell_escape(v)))
            }
        }
    }
    s
}

/// The labels: the build and provenance labels, then the image's
/// `LABEL`s over the Apptainer ones; the `io.sifrun.source.*` labels are
/// always ours (an image cannot fake where it came from).
pub fn labels(config: &ImageConfig, p: &Provenance) -> BTreeMap<String, String> {
    let mut m: BTreeMap<String, String> = [
        ("org.label-schema.schema-version", "1.0".to_owned()),
        ("org.label-schema.build-arch", p.arch.clone()),
        ("org.label-schema.build-date", p.build_date.clone()),
        (
            "org.label-schema.usage.singularity.deffile.bootstrap",
            p.bootstrap.clone(),
        ),
        (
            "org.label-schema.usage.singularity.deffile.from",
            p.from.clone(),
        ),
        (
            "org.label-schema.usage.singularity.version",
            p.converter.clone(),
        ),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    if let Some(image) = config.config.as_ref().and_then(|c| c.labels.as_ref()) {
        m.extend(
            image
                .iter()
                .filter(|(k, _)| !k.starts_with("io.sifrun."))
                .map(|(k, v)| (k.clone(), v.clone())),
        );
    }
    let ours = [
        ("io.sifrun.source.ref", Some(p.reference.clone())),
        (
            "io.sifrun.source.digest",
            Some(
                p.digest
                    .as_ref()
                    .map_or("none (archive)".to_owned(), Digest::to_string),
            ),
        ),
        (
            "io.sifrun.source.index-digest",
            p.index_digest.as_ref().map(Digest::to_string),
        ),
        ("io.sifrun.source.config", Some(p.config_digest.to_string())),
        ("io.sifrun.source.platform", Some(p.platform.clone())),
        (
            "io.sifrun.source.converter",
            Some(format!("{}, format {FORMAT}", p.converter)),
        ),
    ];
    m.extend(
        ours.into_iter()
            .filter_map(|(k, v)| Some((k.to_owned(), v?))),
    );
    m
}

/// `labels.json`'s bytes.
pub fn labels_json(labels: &BTreeMap<String, String>) -> String {
    go_json_map(labels)
}

fn file(path: &str, text: impl Into<Vec<u8>>, mode: u32) -> Synthetic {
    Synthetic {
        path: path.to_owned(),
        content: Content::File(text.into()),
        mode,
        replace: true,
    }
}

fn no_replace(path: &str, content: Content) -> Synthetic {
    Synthetic {
        path: path.to_owned(),
        content,
        mode: 0o755,
        replace: false,
    }
}

/// The whole layout for `config`, in emission order (directories first).
pub fn layout(config: &ImageConfig, p: &Provenance) -> Vec<Synthetic> {
    let empty = Vec::new();
    let cc = config.config.as_ref();
    let list = |f: fn(&crate::manifest::ContainerConfig) -> &Option<Vec<String>>| {
        cc.and_then(|c| f(c).as_ref()).unwrap_or(&empty)
    };
    let dirs = [
        ".singularity.d",
        ".singularity.d/libs",
        ".singularity.d/actions",
        ".singularity.d/env",
        "dev",
        "proc",
        "root",
        "var",
        "var/tmp",
        "tmp",
        "etc",
        "sys",
        "home",
    ];
    let mut out: Vec<Synthetic> = dirs.iter().map(|d| no_replace(d, Content::Dir)).collect();
    let links = [
        ("apptainer", ".singularity.d/runscript"),
        (".run", ".singularity.d/actions/run"),
        (".exec", ".singularity.d/actions/exec"),
        (".test", ".singularity.d/actions/test"),
        (".shell", ".singularity.d/actions/shell"),
        ("environment", ".singularity.d/env/90-environment.sh"),
    ];
    out.extend(
        links
            .iter()
            .map(|(l, t)| no_replace(l, Content::Symlink((*t).to_owned()))),
    );
    out.extend([
        file("etc/hosts", "", 0o644),
        file("etc/resolv.conf", "", 0o644),
        file(".singularity.d/actions/exec", files::ACTION_EXEC, 0o755),
        file(".singularity.d/actions/run", files::ACTION_RUN, 0o755),
        file(".singularity.d/actions/shell", files::ACTION_SHELL, 0o755),
        file(".singularity.d/actions/start", files::ACTION_START, 0o755),
        file(".singularity.d/actions/test", files::ACTION_TEST, 0o755),
        file(".singularity.d/env/01-base.sh", files::ENV_01_BASE, 0o755),
        file(
            ".singularity.d/env/10-docker2singularity.sh",
            env_script(list(|c| &c.env)),
            0o755,
        ),
        file(
            ".singularity.d/env/90-environment.sh",
            files::ENV_90_ENVIRONMENT,
            0o755,
        ),
        file(".singularity.d/env/95-apps.sh", files::ENV_95_APPS, 0o755),
        file(".singularity.d/env/99-base.sh", files::ENV_99_BASE, 0o755),
        file(
            ".singularity.d/env/99-runtimevars.sh",
            files::ENV_99_RUNTIMEVARS,
            0o755,
        ),
        file(
            ".singularity.d/runscript",
            runscript(list(|c| &c.entrypoint), list(|c| &c.cmd)),
            0o755,
        ),
        file(".singularity.d/startscript", files::STARTSCRIPT, 0o755),
        file(
            ".singularity.d/labels.json",
            labels_json(&labels(config, p)),
            0o644,
        ),
    ]);
    out
}

/// The layout as a last layer for [`Tree::apply`] (owned by root, times
/// `mtime`): directories and symlinks only where `tree` has nothing yet,
/// files replacing what is there; paths resolve through the image's
/// symlinks like any layer entry's. Returns the layer and each entry's
/// data, by entry index.
pub fn as_layer(items: &[Synthetic], tree: &mut Tree, mtime: i64) -> (Layer, Vec<Vec<u8>>) {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for s in items {
        if !s.replace && tree.exists(s.path.as_bytes()) {
            continue;
        }
        let (kind, body, link) = match &s.content {
            Content::Dir => (Kind::Dir, Vec::new(), None),
            Content::File(b) => (Kind::File, b.clone(), None),
            Content::Symlink(t) => (Kind::Symlink, Vec::new(), Some(t.as_bytes().to_vec())),
        };
        entries.push(Entry {
            path: s.path.as_bytes().to_vec(),
            kind,
            mode: s.mode,
            uid: 0,
            gid: 0,
            mtime,
            size: body.len() as u64,
            link,
            device: (0, 0),
            xattrs: Vec::new(),
            header_offset: 0,
            data_offset: 0,
        });
        data.push(body);
    }
    (
        Layer {
            name: "the Apptainer layout".to_owned(),
            entries,
        },
        data,
    )
}

#[cfg(test)]
mod tests;
