use std::process::Command;

use super::*;
use crate::manifest::ContainerConfig;
use crate::tar::{Entry, Kind};
use crate::tree::Layer;

fn v(a: &[&str]) -> Vec<String> {
    a.iter().map(|s| (*s).to_owned()).collect()
}

#[test]
fn runscript_golden_entrypoint_and_cmd() {
    let got = runscript(&v(&["/bin/echo", "a b"]), &v(&["x$y", "it's"]));
    let want = r#"#!/bin/sh
OCI_ENTRYPOINT='"/bin/echo" "a b"'
OCI_CMD='"x\$y" "it'"'"'s"'
# SINGULARITY_NO_EVAL set: the exact words of ENTRYPOINT, CMD and the arguments, no shell evaluation.
if [ -n "${SINGULARITY_NO_EVAL:-}" ]; then
    # no arguments: ENTRYPOINT + CMD
    if [ $# -eq 0 ]; then
        set -- 'it'"'"'s' "$@"
        set -- 'x$y' "$@"
    fi
    set -- 'a b' "$@"
    set -- '/bin/echo' "$@"
    exec "$@"
fi
# Default: the arguments as double-quoted words, evaluated with ENTRYPOINT/CMD by the shell.
CMDLINE_ARGS=""
for arg in "$@"; do
    CMDLINE_ARGS="${CMDLINE_ARGS} \"${arg}\""
done
if [ $# -gt 0 ]; then
    SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${CMDLINE_ARGS}"
else
    SINGULARITY_OCI_RUN="${OCI_ENTRYPOINT} ${OCI_CMD}"
fi
eval "set ${SINGULARITY_OCI_RUN}"
exec "$@"
"#;
    assert_eq!(got, want);
}

#[test]
fn runscript_golden_neither() {
    let got = runscript(&[], &[]);
    assert!(
        got.starts_with("#!/bin/sh\nOCI_ENTRYPOINT=''\nOCI_CMD=''\n"),
        "{got}"
    );
    assert!(got.contains("then\n    exec \"$@\"\nfi\n"), "{got}");
    assert!(got.contains("SINGULARITY_OCI_RUN=\"${OCI_CMD}\""), "{got}");
}

/// Runs `script` under /bin/sh with `args` and `env`; returns stdout.
fn sh(script: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new("/bin/sh")
        .arg("-c")
        .arg(script)
        .arg("runscript")
        .args(args)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/home/u")
        .envs(env.iter().copied())
        .output()
        .expect("/bin/sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Apptainer's rules for combining ENTRYPOINT, CMD and arguments, in both
/// branches (printf shows the exact words).
#[test]
fn runscript_behaviour() {
    let both = runscript(&v(&["printf", "[%s]"]), &v(&["x$y", "it's"]));
    let no_eval = [("SINGULARITY_NO_EVAL", "1")];
    assert_eq!(sh(&both, &[], &[]), "[x$y][it's]");
    assert_eq!(sh(&both, &[], &no_eval), "[x$y][it's]");
    assert_eq!(
        sh(&both, &["a b", "$HOME"], &[]),
        "[a b][/home/u]",
        "default mode evaluates arguments"
    );
    assert_eq!(sh(&both, &["a b", "$HOME"], &no_eval), "[a b][$HOME]");
    let entry_only = runscript(&v(&["printf", "<%s>"]), &[]);
    assert_eq!(sh(&entry_only, &["1", "2"], &[]), "<1><2>");
    assert_eq!(sh(&entry_only, &["1", "2"], &no_eval), "<1><2>");
    let cmd_only = runscript(&[], &v(&["printf", "(%s)", "c"]));
    assert_eq!(sh(&cmd_only, &[], &[]), "(c)");
    assert_eq!(sh(&cmd_only, &[], &no_eval), "(c)");
    assert_eq!(sh(&cmd_only, &["printf", "%s.", "u"], &[]), "u.");
    assert_eq!(sh(&cmd_only, &["printf", "%s.", "u"], &no_eval), "u.");
}

#[test]
fn env_entries_with_bad_names_are_left_out() {
    let env = v(&["OK_1=a", "A-B=1", "x;rm=2", "=v", "1X=3", "_U"]);
    assert_eq!(
        env_script(&env),
        "#!/bin/sh\nexport OK_1=\"${OK_1:-\"a\"}\"\nexport _U=\"${_U:-}\"\n"
    );
    assert_eq!(skipped_env(&env), ["A-B=1", "x;rm=2", "=v", "1X=3"]);
}

#[test]
fn env_script_golden() {
    let got = env_script(&v(&[
        "PATH=/x$y:/usr/bin",
        "K1=a$b",
        "Q=q\"x",
        "PLAIN=a b/c:d.e-f_g=h,i",
        "BARE",
        "E=",
    ]));
    let want = concat!(
        "#!/bin/sh\n",
        "export PATH=\"/x\\\\$y:/usr/bin\"\n",
        "export K1=\"${K1:-\"a\\\\$b\"}\"\n",
        "export Q=\"${Q:-\"q\\\\\\\"x\"}\"\n",
        "export PLAIN=\"${PLAIN:-\"a b/c:d.e-f_g=h,i\"}\"\n",
        "export BARE=\"${BARE:-}\"\n",
        "export E=\"${E:-\"\"}\"\n",
    );
    assert_eq!(got, want);
}

/// The values a shell gets from the env script (design §5.2, measured with
/// dash and bash on Apptainer's lines): double escaping shows.
#[test]
fn env_script_behaviour() {
    let script = env_script(&v(&[
        "PATH=/x$y:/usr/bin:/bin",
        "K1=a$b",
        "Q=q\"x",
        "PLAIN=a b/c",
        "PRESET=image",
    ]));
    let show = "printf '%s|%s|%s|%s|%s' \"$PATH\" \"$K1\" \"$Q\" \"$PLAIN\" \"$PRESET\"";
    let out = sh(&format!("b=B\n{script}{show}"), &[], &[("PRESET", "host")]);
    assert_eq!(out, r#"/x\:/usr/bin:/bin|a\B|q\"x|a b/c|host"#);
}

fn provenance() -> Provenance {
    Provenance {
        bootstrap: "docker".into(),
        from: "docker://ubuntu:22.04".into(),
        reference: "docker.io/library/ubuntu:22.04".into(),
        digest: Some(Digest::of(b"manifest")),
        index_digest: None,
        config_digest: Digest::of(b"config"),
        platform: "linux/amd64".into(),
        arch: "amd64".into(),
        build_date: "2026-11-29T12:00:00Z".into(),
        converter: "sifrun 0.1.0".into(),
    }
}

fn config(labels: &[(&str, &str)], env: &[&str]) -> ImageConfig {
    ImageConfig {
        architecture: "amd64".into(),
        os: "linux".into(),
        config: Some(ContainerConfig {
            env: Some(v(env)),
            entrypoint: Some(v(&["/bin/echo"])),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
            ),
            ..ContainerConfig::default()
        }),
        ..ImageConfig::default()
    }
}

#[test]
fn labels_json_golden() {
    let c = config(
        &[
            ("maintainer", "<a&b>"),
            ("org.label-schema.schema-version", "2"),
            ("io.sifrun.source.digest", "fake"),
        ],
        &[],
    );
    let got = labels_json(&labels(&c, &provenance()));
    let want = format!(
        "{{\n\
         \t\"io.sifrun.source.config\": \"{}\",\n\
         \t\"io.sifrun.source.converter\": \"sifrun 0.1.0, format 1\",\n\
         \t\"io.sifrun.source.digest\": \"{}\",\n\
         \t\"io.sifrun.source.platform\": \"linux/amd64\",\n\
         \t\"io.sifrun.source.ref\": \"docker.io/library/ubuntu:22.04\",\n\
         \t\"maintainer\": \"\\u003ca\\u0026b\\u003e\",\n\
         \t\"org.label-schema.build-arch\": \"amd64\",\n\
         \t\"org.label-schema.build-date\": \"2026-11-29T12:00:00Z\",\n\
         \t\"org.label-schema.schema-version\": \"2\",\n\
         \t\"org.label-schema.usage.singularity.deffile.bootstrap\": \"docker\",\n\
         \t\"org.label-schema.usage.singularity.deffile.from\": \"docker://ubuntu:22.04\",\n\
         \t\"org.label-schema.usage.singularity.version\": \"sifrun 0.1.0\"\n\
         }}",
        Digest::of(b"config"),
        Digest::of(b"manifest")
    );
    assert_eq!(got, want);
    // It is JSON that parses back to the same map.
    let back: BTreeMap<String, String> = serde_json::from_str(&got).unwrap();
    assert_eq!(back, labels(&c, &provenance()));
}

#[test]
fn archive_provenance_and_index_digest() {
    let mut p = provenance();
    p.digest = None;
    p.index_digest = Some(Digest::of(b"index"));
    let l = labels(&ImageConfig::default(), &p);
    assert_eq!(l["io.sifrun.source.digest"], "none (archive)");
    assert_eq!(
        l["io.sifrun.source.index-digest"],
        Digest::of(b"index").to_string()
    );
}

#[test]
fn layout_lists_every_path_once_with_modes() {
    let c = config(&[], &["A=1"]);
    let l = layout(&c, &provenance());
    let mut paths: Vec<&str> = l.iter().map(|s| s.path.as_str()).collect();
    let n = paths.len();
    paths.sort_unstable();
    paths.dedup();
    assert_eq!(paths.len(), n, "duplicate paths");
    let get = |p: &str| {
        l.iter()
            .find(|s| s.path == p)
            .unwrap_or_else(|| panic!("{p} missing"))
    };
    assert_eq!(get("etc/hosts").content, Content::File(Vec::new()));
    assert!(get("etc/hosts").replace && get("etc/hosts").mode == 0o644);
    assert_eq!(
        get("apptainer").content,
        Content::Symlink(".singularity.d/runscript".into())
    );
    assert!(!get("apptainer").replace);
    assert_eq!(
        get(".singularity.d/env/10-docker2singularity.sh").content,
        Content::File(b"#!/bin/sh\nexport A=\"${A:-\"1\"}\"\n".to_vec())
    );
    let Content::File(rs) = &get(".singularity.d/runscript").content else {
        panic!()
    };
    assert!(rs.starts_with(b"#!/bin/sh\nOCI_ENTRYPOINT='\"/bin/echo\"'\nOCI_CMD=''\n"));
    // Directories come first and parents before children.
    let first_file = l.iter().position(|s| s.content != Content::Dir).unwrap();
    assert!(l[first_file..].iter().all(|s| s.content != Content::Dir));
    for (i, s) in l.iter().enumerate() {
        if let Some((parent, _)) = s.path.rsplit_once('/') {
            assert!(
                l[..i]
                    .iter()
                    .any(|d| d.path == parent && d.content == Content::Dir),
                "{} before its parent",
                s.path
            );
        }
    }
}

#[test]
fn layout_as_last_layer_resolves_through_image_symlinks() {
    use crate::tree::{Emission, merge};
    let img = |path: &str, kind: Kind, link: Option<&str>| Entry {
        path: path.as_bytes().to_vec(),
        kind,
        mode: 0o755,
        uid: 7,
        gid: 7,
        mtime: 1,
        size: 0,
        link: link.map(|l| l.as_bytes().to_vec()),
        device: (0, 0),
        xattrs: Vec::new(),
        header_offset: 0,
        data_offset: 0,
    };
    // etc is a symlink to usr/etc; tmp exists; hosts exists in usr/etc.
    let base = Layer {
        name: "L0".into(),
        entries: vec![
            img("usr", Kind::Dir, None),
            img("usr/etc", Kind::Dir, None),
            img("usr/etc/hosts", Kind::File, None),
            img("etc", Kind::Symlink, Some("usr/etc")),
            img("tmp", Kind::Dir, None),
            img("apptainer", Kind::File, None),
        ],
    };
    let mut tree = merge(std::slice::from_ref(&base)).unwrap();
    let (layer, data) = as_layer(&layout(&config(&[], &[]), &provenance()), &mut tree, 5);
    assert_eq!(layer.entries.len(), data.len());
    let names: Vec<&[u8]> = layer.entries.iter().map(|e| e.path.as_slice()).collect();
    assert!(
        !names.contains(&&b"tmp"[..]) && !names.contains(&&b"etc"[..]),
        "existing dirs and symlinks are kept"
    );
    assert!(
        !names.contains(&&b"apptainer"[..]),
        "existing names are not replaced by symlinks"
    );
    assert!(names.contains(&&b"etc/hosts"[..]) && names.contains(&&b".singularity.d"[..]));
    tree.apply(1, &layer).unwrap();
    let plan = tree.plan();
    let at = |p: &str| {
        plan.iter()
            .find(|e| matches!(e, Emission::Node { path, .. } if path == p.as_bytes()))
    };
    // etc/hosts lands in usr/etc through the image's symlink; etc stays a symlink.
    assert!(
        matches!(at("usr/etc/hosts"), Some(Emission::Node { source, .. }) if source.layer == 1)
    );
    assert!(matches!(at("etc"), Some(Emission::Node { source, .. }) if source.layer == 0));
    assert!(
        matches!(at(".singularity.d/runscript"), Some(Emission::Node { source, .. }) if source.layer == 1)
    );
    // The layout's files come after every image entry.
    let first = plan
        .iter()
        .position(|e| matches!(e, Emission::Node { source, .. } if source.layer == 1))
        .unwrap();
    assert!(
        plan[first..]
            .iter()
            .all(|e| !matches!(e, Emission::Node { source, .. } if source.layer == 0))
    );
}
