//! `sifrun pull docker://…` (issue 14, stage 2) against Debian's
//! `docker-registry` (the distribution registry) started on 127.0.0.1 by
//! the test, once anonymous and once with htpasswd Basic auth; images
//! pushed with `skopeo copy` from the tests/oci/make-images fixtures. The
//! pulled SIF must hold the same tree as the `oci-archive:` import of the
//! same image. Failures (wrong credentials, a corrupted blob in the
//! registry's storage, a registry that stops answering) give one line, no
//! output file, no temporary directory. The bearer-token flow, redirects
//! and 429 retries are tested against a fake registry in
//! `oci/src/registry/tests.rs` (the Debian registry needs a token server
//! for bearer tokens).

use std::fs;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sha2::{Digest as _, Sha256};
use sifrun_tests::{containers_can_run, ok, require, s, scratch, sifrun, sifrun_bin};

const MAKE_IMAGES: &str = include_str!("oci/make-images");

/// The fixture images, made once per process.
fn images() -> Option<&'static Path> {
    static DIR: OnceLock<Option<(tempfile::TempDir, PathBuf)>> = OnceLock::new();
    DIR.get_or_init(|| {
        if !(require("umoci")
            && require("skopeo")
            && require("mksquashfs")
            && require("unsquashfs")
            && require("docker-registry")
            && require("htpasswd"))
        {
            return None;
        }
        let tmp = scratch();
        let dir = tmp.path().join("img");
        ok(Command::new("bash")
            .args(["-c", MAKE_IMAGES, "make-images", s(&dir)])
            .output()
            .unwrap());
        multi_arch_layout(&dir);
        Some((tmp, dir))
    })
    .as_ref()
    .map(|(_, d)| d.as_path())
}

fn sha256(data: &[u8]) -> String {
    format!("{:x}", Sha256::digest(data))
}

fn put_blob(layout: &Path, data: &[u8]) -> (String, usize) {
    let hex = sha256(data);
    fs::write(layout.join("blobs/sha256").join(&hex), data).unwrap();
    (format!("sha256:{hex}"), data.len())
}

/// `DIR/multi`: the fixture as a two-platform index (tag `multi`): the
/// image as linux/amd64 and, with its config saying arm64, linux/arm64.
fn multi_arch_layout(dir: &Path) {
    let l = dir.join("multi");
    ok(Command::new("cp")
        .args(["-r", s(&dir.join("layout")), s(&l)])
        .output()
        .unwrap());
    let blob = |d: &str| fs::read(l.join("blobs/sha256").join(&d[7..])).unwrap();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(l.join("index.json")).unwrap()).unwrap();
    let amd = index["manifests"][0].clone();
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&blob(amd["digest"].as_str().unwrap())).unwrap();
    let mut config: serde_json::Value =
        serde_json::from_slice(&blob(manifest["config"]["digest"].as_str().unwrap())).unwrap();
    config["architecture"] = "arm64".into();
    let (cd, cs) = put_blob(&l, &serde_json::to_vec(&config).unwrap());
    manifest["config"]["digest"] = cd.into();
    manifest["config"]["size"] = cs.into();
    let (md, ms) = put_blob(&l, &serde_json::to_vec(&manifest).unwrap());
    let entry = |digest: &serde_json::Value, size: &serde_json::Value, arch: &str| {
        serde_json::json!({"mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": digest, "size": size, "platform": {"architecture": arch, "os": "linux"}})
    };
    let image_index = serde_json::json!({"schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry(&amd["digest"], &amd["size"], "amd64"), entry(&md.into(), &ms.into(), "arm64")]});
    let (id, is) = put_blob(&l, &serde_json::to_vec(&image_index).unwrap());
    let top = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.index.v1+json", "digest": id, "size": is,
        "annotations": {"org.opencontainers.image.ref.name": "multi"}}]});
    fs::write(l.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A `docker-registry` on 127.0.0.1 with its own config and storage,
/// run as the unprivileged test user when the tests run as root.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    fn start(htpasswd: bool) -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let port = free_port();
        let mut cfg = format!(
            "version: 0.1\nlog: {{level: error}}\nstorage: {{filesystem: {{rootdirectory: {}}}}}\n\
             http: {{addr: 127.0.0.1:{port}, secret: test}}\n",
            s(&d.join("storage"))
        );
        if htpasswd {
            let line = ok(Command::new("htpasswd")
                .args(["-Bbn", "user", "pass"])
                .output()
                .unwrap());
            fs::write(d.join("htpasswd"), line).unwrap();
            cfg.push_str(&format!(
                "auth: {{htpasswd: {{realm: sifrun-test, path: {}}}}}\n",
                s(&d.join("htpasswd"))
            ));
        }
        fs::write(d.join("registry.yml"), cfg).unwrap();
        let mut cmd = Command::new("docker-registry");
        let as_user = nix_is_root() && user_exists("sifrun-test");
        if as_user {
            ok(Command::new("chown")
                .args(["-R", "sifrun-test:", s(d)])
                .output()
                .unwrap());
            cmd = Command::new("setpriv");
            cmd.args([
                "--reuid=sifrun-test",
                "--regid=sifrun-test",
                "--clear-groups",
            ])
            .arg("docker-registry");
        }
        let child = cmd
            .args(["serve", s(&d.join("registry.yml"))])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let r = Registry { child, port, dir };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "docker-registry did not start"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        r
    }

    fn name(&self, repo: &str) -> String {
        format!("127.0.0.1:{}/{repo}", self.port)
    }

    /// `skopeo copy` of `source` to `REPO` in this registry.
    fn push(&self, source: &str, repo: &str, creds: bool, extra: &[&str]) {
        let mut c = Command::new("skopeo");
        c.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if creds {
            c.args(["--dest-creds", "user:pass"]);
        }
        c.args(extra)
            .arg(source)
            .arg(format!("docker://{}", self.name(repo)));
        ok(c.output().unwrap());
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nix_is_root() -> bool {
    String::from_utf8(Command::new("id").arg("-u").output().unwrap().stdout)
        .unwrap()
        .trim()
        == "0"
}

fn user_exists(u: &str) -> bool {
    Command::new("id")
        .arg(u)
        .output()
        .is_ok_and(|o| o.status.success())
}

fn fails(out: Output, want: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "succeeded; stderr: {err}");
    assert!(err.contains(want), "stderr {err:?} lacks {want:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "not one line: {err}");
}

/// `unsquashfs -lln` of the SIF's partition (names, modes, owners, sizes,
/// link targets), without Apptainer's labels (which name the source).
fn listing(sif: &Path) -> Vec<String> {
    let f = fs::File::open(sif).unwrap();
    let off = sif::Image::open(&f)
        .unwrap()
        .primary_partition()
        .unwrap()
        .offset();
    let out = ok(Command::new("unsquashfs")
        .args(["-lln", "-o", &off.to_string(), s(sif)])
        .output()
        .unwrap());
    String::from_utf8(out)
        .unwrap()
        .lines()
        .filter(|l| l.contains("squashfs-root") && !l.ends_with("labels.json"))
        .map(str::to_owned)
        .collect()
}

/// Contents: every regular file's bytes, by path.
fn contents(sif: &Path, dest: &Path) -> Vec<(String, String)> {
    let f = fs::File::open(sif).unwrap();
    let off = sif::Image::open(&f)
        .unwrap()
        .primary_partition()
        .unwrap()
        .offset();
    ok(Command::new("unsquashfs")
        .args(["-n", "-o", &off.to_string(), "-d", s(dest), s(sif)])
        .output()
        .unwrap());
    let mut v = Vec::new();
    let mut stack = vec![dest.to_owned()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let m = fs::symlink_metadata(&p).unwrap();
            if m.is_dir() {
                stack.push(p);
            } else if m.is_file() && !p.ends_with("labels.json") {
                let rel = s(p.strip_prefix(dest).unwrap()).to_owned();
                v.push((rel, sha256(&fs::read(&p).unwrap())));
            }
        }
    }
    v.sort();
    v
}

fn arch_of(sif: &Path) -> String {
    let out = String::from_utf8(ok(sifrun(&["inspect", s(sif)]))).unwrap();
    out.lines()
        .find_map(|l| l.strip_prefix("Architecture:"))
        .unwrap()
        .trim()
        .to_owned()
}

/// `sifrun pull [extra] OUT SOURCE` with `env` (credentials cleared first).
fn pull_env(out: &Path, source: &str, extra: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(sifrun_bin());
    c.arg("pull").args(extra).args([s(out), source]);
    c.env("SOURCE_DATE_EPOCH", "1700000000")
        .env_remove("SIFRUN_DOCKER_USERNAME")
        .env_remove("SIFRUN_DOCKER_PASSWORD")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env("HOME", "/nonexistent");
    c.envs(env.iter().copied());
    c.output().unwrap()
}

fn assert_same_image(a: &Path, b: &Path, work: &Path) {
    assert_eq!(
        listing(a),
        listing(b),
        "{} and {} list differently",
        s(a),
        s(b)
    );
    let (da, db) = (work.join("ca"), work.join("cb"));
    let _ = fs::remove_dir_all(&da);
    let _ = fs::remove_dir_all(&db);
    assert_eq!(contents(a, &da), contents(b, &db));
}

/// The manifest digest `pull` printed.
fn printed_digest(out: &[u8]) -> String {
    let text = String::from_utf8_lossy(out);
    let i = text.find("manifest sha256:").expect("a manifest digest") + "manifest ".len();
    text[i..i + 71].to_owned()
}

#[test]
fn registry_pulls_match_the_archive_import() {
    let Some(images) = images() else { return };
    let reg = Registry::start(false);
    let layout = format!("oci:{}:t", s(&images.join("layout")));
    reg.push(&layout, "test/img:t", false, &[]);
    reg.push(
        &format!("oci:{}:t", s(&images.join("zstd"))),
        "test/zstd:t",
        false,
        &[],
    );
    reg.push(&layout, "test/v2s2:t", false, &["--format", "v2s2"]);
    let work = scratch();
    let w = work.path();
    let reference = w.join("archive.sif");
    ok(pull_env(
        &reference,
        &format!("oci-archive:{}", s(&images.join("oci.tar"))),
        &[],
        &[],
    ));
    let mut digest = String::new();
    for repo in ["test/img:t", "test/zstd:t", "test/v2s2:t"] {
        let out = w.join("pulled.sif");
        let _ = fs::remove_file(&out);
        let stdout = ok(pull_env(
            &out,
            &format!("docker://{}", reg.name(repo)),
            &["--nohttps"],
            &[],
        ));
        assert_same_image(&reference, &out, w);
        if repo == "test/img:t" {
            digest = printed_digest(&stdout);
            let info = String::from_utf8(ok(sifrun(&["inspect", s(&out)]))).unwrap();
            let want = format!("Source:        docker://{} ({digest})", reg.name(repo));
            assert!(info.contains(&want), "{info} lacks {want}");
        }
    }
    // By digest, and the default name Apptainer gives it.
    let by_digest = format!("docker://{}@{digest}", reg.name("test/img"));
    let out = Command::new(sifrun_bin())
        .args(["pull", "--nohttps", &by_digest])
        .env("SOURCE_DATE_EPOCH", "1700000000")
        .current_dir(w)
        .output()
        .unwrap();
    ok(out);
    let named = w.join(format!("img@{}.sif", digest.replace(':', "_")));
    assert!(named.exists(), "{} missing", s(&named));
    assert_same_image(&reference, &named, w);
    let wrong = format!(
        "docker://{}@sha256:{}",
        reg.name("test/img"),
        "0".repeat(64)
    );
    fails(
        pull_env(&w.join("wrong.sif"), &wrong, &["--nohttps"], &[]),
        "not found (no such tag or digest)",
    );
    // Tag default name.
    let out = Command::new(sifrun_bin())
        .args([
            "pull",
            "--nohttps",
            &format!("docker://{}", reg.name("test/img:t")),
        ])
        .current_dir(w)
        .output()
        .unwrap();
    ok(out);
    assert!(w.join("img_t.sif").exists());
    // The same run output as the archive's image.
    if containers_can_run() {
        let a = ok(sifrun(&["run", s(&reference)]));
        let b = ok(sifrun(&["run", s(&w.join("img_t.sif"))]));
        assert_eq!(a, b);
        assert!(!a.is_empty());
    }
}

#[test]
fn multi_platform_index_picks_the_platform() {
    let Some(images) = images() else { return };
    if std::env::consts::ARCH != "x86_64" {
        eprintln!("skipping: the fixture's default platform is amd64");
        return;
    }
    let reg = Registry::start(false);
    reg.push(
        &format!("oci:{}:multi", s(&images.join("multi"))),
        "test/multi:t",
        false,
        &["--all"],
    );
    let work = scratch();
    let src = format!("docker://{}", reg.name("test/multi:t"));
    let host = work.path().join("host.sif");
    ok(pull_env(&host, &src, &["--nohttps"], &[]));
    assert_eq!(arch_of(&host), "amd64");
    let arm = work.path().join("arm.sif");
    ok(pull_env(&arm, &src, &["--nohttps", "--arch", "arm64"], &[]));
    assert_eq!(arch_of(&arm), "arm64");
    fails(
        pull_env(
            &work.path().join("x.sif"),
            &src,
            &["--nohttps", "--arch", "s390x"],
            &[],
        ),
        "s390x",
    );
}

#[test]
fn htpasswd_registry_credentials() {
    let Some(images) = images() else { return };
    let reg = Registry::start(true);
    reg.push(
        &format!("oci:{}:t", s(&images.join("layout"))),
        "test/img:t",
        true,
        &[],
    );
    let work = scratch();
    let w = work.path();
    let src = format!("docker://{}", reg.name("test/img:t"));
    let out = w.join("out.sif");
    fails(
        pull_env(&out, &src, &["--nohttps"], &[]),
        "authentication required for test/img",
    );
    let e = pull_env(
        &out,
        &src,
        &["--nohttps"],
        &[
            ("SIFRUN_DOCKER_USERNAME", "user"),
            ("SIFRUN_DOCKER_PASSWORD", "wrong"),
        ],
    );
    assert!(!String::from_utf8_lossy(&e.stderr).contains("wrong"));
    fails(
        e,
        "unauthorized: the credentials from SIFRUN_DOCKER_USERNAME/SIFRUN_DOCKER_PASSWORD were refused",
    );
    fails(
        pull_env(
            &out,
            &src,
            &["--nohttps"],
            &[("SIFRUN_DOCKER_USERNAME", "user")],
        ),
        "set both SIFRUN_DOCKER_USERNAME and SIFRUN_DOCKER_PASSWORD",
    );
    ok(pull_env(
        &out,
        &src,
        &["--nohttps"],
        &[
            ("SIFRUN_DOCKER_USERNAME", "user"),
            ("SIFRUN_DOCKER_PASSWORD", "pass"),
        ],
    ));
    fs::remove_file(&out).unwrap();
    // REGISTRY_AUTH_FILE (containers' auth.json), then ~/.docker/config.json.
    let auth = w.join("auth.json");
    fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"dXNlcjpwYXNz"}}}}}}"#,
            reg.port
        ),
    )
    .unwrap();
    ok(pull_env(
        &out,
        &src,
        &["--nohttps"],
        &[("REGISTRY_AUTH_FILE", s(&auth))],
    ));
    fs::remove_file(&out).unwrap();
    fs::create_dir_all(w.join("home/.docker")).unwrap();
    fs::write(
        w.join("home/.docker/config.json"),
        format!(
            r#"{{"auths":{{"http://127.0.0.1:{}":{{"username":"user","password":"pass"}}}}}}"#,
            reg.port
        ),
    )
    .unwrap();
    ok(pull_env(
        &out,
        &src,
        &["--nohttps"],
        &[("HOME", s(&w.join("home")))],
    ));
    fs::write(
        w.join("home/.docker/config.json"),
        r#"{"credHelpers":{"127.0.0.1":"x"},"auths":{}}"#,
    )
    .unwrap();
    fs::write(
        w.join("home/.docker/config.json"),
        format!(r#"{{"credHelpers":{{"127.0.0.1:{}":"pass"}}}}"#, reg.port),
    )
    .unwrap();
    fails(
        pull_env(
            &w.join("h.sif"),
            &src,
            &["--nohttps"],
            &[("HOME", s(&w.join("home")))],
        ),
        "kept by docker-credential-pass",
    );
}

/// Nothing in `dir` (the output's directory or `SIFRUN_TMPDIR`).
fn empty(dir: &Path) {
    let left: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind in {}: {left:?}", s(dir));
}

#[test]
fn failures_give_one_line_and_leave_nothing() {
    let Some(images) = images() else { return };
    let reg = Registry::start(false);
    reg.push(
        &format!("oci:{}:t", s(&images.join("layout"))),
        "test/img:t",
        false,
        &[],
    );
    let work = scratch();
    let (outdir, tmpdir) = (work.path().join("out"), work.path().join("tmp"));
    fs::create_dir(&outdir).unwrap();
    fs::create_dir(&tmpdir).unwrap();
    fs::set_permissions(&tmpdir, fs::Permissions::from_mode(0o755)).unwrap();
    let out = outdir.join("x.sif");
    let src = format!("docker://{}", reg.name("test/img:t"));
    let tmp_env = [("SIFRUN_TMPDIR", s(&tmpdir))];
    // TLS to a plain-HTTP registry: not retried, says what to do.
    fails(
        pull_env(&out, &src, &[], &tmp_env),
        "a plain-HTTP registry needs --nohttps",
    );
    fails(
        pull_env(
            &out,
            &format!("docker://{}", reg.name("test/img:nope")),
            &["--nohttps"],
            &tmp_env,
        ),
        "not found (no such tag or digest)",
    );
    // A corrupted layer in the registry's storage.
    let storage = reg.dir.path().join("storage");
    let find = ok(Command::new("find")
        .args([s(&storage), "-name", "data", "-size", "+100k"])
        .output()
        .unwrap());
    let blob = PathBuf::from(String::from_utf8(find).unwrap().lines().next().unwrap());
    let mut data = fs::read(&blob).unwrap();
    data[100] ^= 0xff;
    fs::write(&blob, data).unwrap();
    fails(
        pull_env(&out, &src, &["--nohttps"], &tmp_env),
        "content has digest",
    );
    empty(&outdir);
    empty(&tmpdir);
    // A registry that accepts connections and never answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let t = Instant::now();
    fails(
        pull_env(
            &out,
            &format!("docker://127.0.0.1:{port}/test/img:t"),
            &["--nohttps"],
            &[("SIFRUN_REGISTRY_TIMEOUT", "2"), tmp_env[0]],
        ),
        "no data for 2 s while waiting for manifest test/img:t",
    );
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "took {:?}",
        t.elapsed()
    );
    drop(silent);
    empty(&outdir);
    empty(&tmpdir);
}

/// A fake registry serving the fixture layout's manifest and config, that
/// sends half of every layer and then stalls (a registry dying
/// mid-download).
fn stalling_registry(layout: &Path) -> u16 {
    use std::io::{BufRead, BufReader, Write};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(layout.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap().to_owned();
    let blobs = layout.join("blobs/sha256");
    let manifest: serde_json::Value =
        serde_json::from_slice(&fs::read(blobs.join(&manifest_digest[7..])).unwrap()).unwrap();
    let config = manifest["config"]["digest"].as_str().unwrap().to_owned();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(mut c) = c else { return };
            let (blobs, manifest_digest, config) =
                (blobs.clone(), manifest_digest.clone(), config.clone());
            std::thread::spawn(move || {
                let mut r = BufReader::new(c.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if r.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let path = line.split_whitespace().nth(1).unwrap_or("").to_owned();
                    loop {
                        let mut h = String::new();
                        if r.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                            break;
                        }
                    }
                    let (digest, kind) = if path.contains("/manifests/") {
                        (
                            manifest_digest.clone(),
                            "application/vnd.oci.image.manifest.v1+json",
                        )
                    } else {
                        (
                            path.rsplit('/').next().unwrap().to_owned(),
                            "application/octet-stream",
                        )
                    };
                    let data = fs::read(blobs.join(&digest[7..])).unwrap_or_default();
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
                        data.len()
                    );
                    let _ = c.write_all(head.as_bytes());
                    if digest == manifest_digest || digest == config {
                        let _ = c.write_all(&data);
                    } else {
                        let _ = c.write_all(&data[..data.len() / 2]);
                        std::thread::sleep(Duration::from_secs(60));
                        return;
                    }
                }
            });
        }
    });
    port
}

#[test]
fn sigterm_mid_download_removes_the_temporary_files() {
    let Some(images) = images() else { return };
    let port = stalling_registry(&images.join("layout"));
    let work = scratch();
    let tmpdir = work.path().join("tmp");
    fs::create_dir(&tmpdir).unwrap();
    let out = work.path().join("x.sif");
    let mut child = Command::new(sifrun_bin())
        .args([
            "pull",
            "--nohttps",
            s(&out),
            &format!("docker://127.0.0.1:{port}/test/img:t"),
        ])
        .env("SIFRUN_TMPDIR", s(&tmpdir))
        .env("SIFRUN_REGISTRY_TIMEOUT", "60")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until the partial blob is there, then stop the pull.
    let t = Instant::now();
    let partial = || {
        fs::read_dir(&tmpdir).unwrap().flatten().any(|d| {
            fs::read_dir(d.path().join("blobs/sha256")).is_ok_and(|mut e| {
                e.any(|f| f.is_ok_and(|f| f.path().extension().is_some_and(|x| x == "partial")))
            })
        })
    };
    while !partial() {
        assert!(t.elapsed() < Duration::from_secs(20), "no download started");
        std::thread::sleep(Duration::from_millis(50));
    }
    ok(Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .output()
        .unwrap());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    empty(&tmpdir);
    assert!(!out.exists());
}

/// `sifrun REF_CMD [--nohttps] ...` with the cache at `cache` (credentials
/// cleared).
fn cached(cache: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(sifrun_bin());
    c.args(args)
        .env("SIFRUN_CACHEDIR", cache)
        .env_remove("SIFRUN_DOCKER_USERNAME")
        .env_remove("SIFRUN_DOCKER_PASSWORD")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("DOCKER_CONFIG")
        .env("HOME", "/nonexistent");
    c
}

fn cache_entries(cache: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(cache.join("v1/sif/sha256"))
        .map(|r| {
            r.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Issue 14 stage 3: `sifrun resolve` gives the pushed digest; N
/// concurrent `sifrun exec docker://…` of a new image make one conversion
/// into the cache (the others wait for it or find it published) and all
/// run it; a digest-pinned exec of a cached image needs no registry; a
/// moved tag resolves to the new digest and converts once more.
#[test]
fn cached_exec_converts_once() {
    let Some(images) = images() else { return };
    let reg = Registry::start(false);
    reg.push(
        &format!("oci:{}:t", s(&images.join("layout"))),
        "test/img:t",
        false,
        &[],
    );
    let work = scratch();
    let w = work.path();
    let cache = w.join("cache");
    let src = format!("docker://{}", reg.name("test/img:t"));
    // SIFRUN_NOHTTPS=1 does what --nohttps does, for pull as for exec.
    let pulled = ok(pull_env(
        &w.join("p.sif"),
        &src,
        &[],
        &[("SIFRUN_NOHTTPS", "1")],
    ));
    let digest = printed_digest(&pulled);
    // resolve, plain and JSON.
    let pin = ok(cached(&cache, &["resolve", "--nohttps", &src])
        .output()
        .unwrap());
    let want_pin = format!("{}@{digest}", reg.name("test/img:t"));
    assert_eq!(String::from_utf8_lossy(&pin).trim(), want_pin);
    let json = ok(cached(&cache, &["resolve", "--json", "--nohttps", &src])
        .output()
        .unwrap());
    let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
    assert_eq!(v["digest"], digest.as_str());
    assert_eq!(v["manifest"], digest.as_str());
    assert_eq!(v["pin"], want_pin.as_str());
    fails(
        cached(
            &cache,
            &[
                "resolve",
                "--nohttps",
                &format!("docker://{}", reg.name("test/none:t")),
            ],
        )
        .output()
        .unwrap(),
        "test/none",
    );
    assert!(cache_entries(&cache).is_empty(), "resolve converts nothing");
    if !containers_can_run() {
        return;
    }
    let n = 4;
    let children: Vec<Child> = (0..n)
        .map(|_| {
            cached(&cache, &["exec", "--nohttps", &src, "cat", "/etc/passwd"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut converting = 0;
    for c in children {
        let out = c.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("root:x:0:0"));
        converting += err.matches("converting into the cache").count();
    }
    assert_eq!(converting, 1, "exactly one conversion");
    let hex = &digest["sha256:".len()..];
    assert_eq!(cache_entries(&cache), [format!("{hex}.gzip.sif")]);
    assert!(
        fs::read_dir(cache.join("v1/lock"))
            .unwrap()
            .next()
            .is_none()
    );
    // The cached image by digest: no registry needed.
    let port = reg.port;
    drop(reg);
    let by_digest = format!("docker://127.0.0.1:{port}/test/img@{digest}");
    let out = cached(
        &cache,
        &["exec", "--nohttps", &by_digest, "cat", "/etc/passwd"],
    )
    .output()
    .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(!err.contains("converting"), "{err}");
    // So does resolving it (srun does, for every docker:// step); a digest
    // the cache does not hold still needs the registry.
    let pin = ok(cached(&cache, &["resolve", "--nohttps", &by_digest])
        .output()
        .unwrap());
    let pin = String::from_utf8_lossy(&pin);
    assert!(
        pin.trim()
            .starts_with(&format!("127.0.0.1:{port}/test/img"))
            && pin.trim().ends_with(&format!("@{digest}")),
        "{pin}"
    );
    let unknown = format!(
        "docker://127.0.0.1:{port}/test/img@sha256:{}",
        "0".repeat(64)
    );
    let out = cached(&cache, &["resolve", "--nohttps", &unknown])
        .output()
        .unwrap();
    assert!(!out.status.success(), "the registry is gone");
    // Inside a job, resolve gives the job's pin of the same image (no
    // registry needed); a pin of another image is ignored.
    let pinned = ok(cached(&cache, &["resolve", "--nohttps", &src])
        .env("SLURM_SIFRUN_IMAGE_PIN", &want_pin)
        .output()
        .unwrap());
    assert_eq!(String::from_utf8_lossy(&pinned).trim(), want_pin);
    let other = format!("127.0.0.1:{port}/test/other:t@{digest}");
    let out = cached(&cache, &["resolve", "--nohttps", &src])
        .env("SLURM_SIFRUN_IMAGE_PIN", &other)
        .output()
        .unwrap();
    assert!(!out.status.success(), "the registry is gone");
}

/// A tag moved to another image resolves to the new digest, and the next
/// exec converts the new image once more (both entries stay).
#[test]
fn a_moved_tag_is_converted_again() {
    let Some(images) = images() else { return };
    if !containers_can_run() {
        return;
    }
    let reg = Registry::start(false);
    let work = scratch();
    let cache = work.path().join("cache");
    let src = format!("docker://{}", reg.name("test/img:t"));
    let mut digests = Vec::new();
    for fixture in ["layout", "zstd"] {
        reg.push(
            &format!("oci:{}:t", s(&images.join(fixture))),
            "test/img:t",
            false,
            &[],
        );
        let out = cached(&cache, &["exec", "--nohttps", &src, "cat", "/etc/passwd"])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{err}");
        assert_eq!(err.matches("converting into the cache").count(), 1, "{err}");
        let pin = ok(cached(&cache, &["resolve", "--nohttps", &src])
            .output()
            .unwrap());
        digests.push(String::from_utf8_lossy(&pin).trim().to_owned());
    }
    assert_ne!(digests[0], digests[1]);
    assert_eq!(cache_entries(&cache).len(), 2);
}

/// A lock record of this (live) process, as `sifrun` writes them.
fn live_lock_record() -> String {
    let stat = fs::read_to_string("/proc/self/stat").unwrap();
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    let start: u64 = rest.split_whitespace().nth(19).unwrap().parse().unwrap();
    let host = fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap();
    serde_json::json!({
        "version": 1, "host": host.trim(), "boot_id": boot.trim(),
        "pid": std::process::id(), "pid_start": start, "uid": 0,
        "token": "0123abcd", "started": 0,
    })
    .to_string()
}

/// `sifrun cache add|list|clean` over the user's cache, as a user: a
/// pulled SIF goes in under the manifest digest it records; the list shows
/// its reference, digest, size and last use; clean removes the debris of
/// dead conversions (an orphaned work directory, a broken lock's
/// leftover) but keeps images unless asked, never removes an image whose
/// conversion lock is live, and removes it with --all once the lock is
/// gone.
#[test]
fn cache_add_list_and_clean() {
    let Some(images) = images() else { return };
    let reg = Registry::start(false);
    reg.push(
        &format!("oci:{}:t", s(&images.join("layout"))),
        "test/img:t",
        false,
        &[],
    );
    // Under HOME, not /tmp: `cache add` refuses a file below a directory
    // others may write.
    let home = PathBuf::from(std::env::var_os("HOME").expect("HOME"));
    let work = tempfile::tempdir_in(&home).unwrap();
    fs::set_permissions(work.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let w = work.path();
    let cache = w.join("cache");
    let src = format!("docker://{}", reg.name("test/img:t"));
    let pulled = ok(pull_env(&w.join("p.sif"), &src, &["--nohttps"], &[]));
    let digest = printed_digest(&pulled);
    let hex = &digest["sha256:".len()..];
    let entry = cache.join(format!("v1/sif/sha256/{hex}.gzip.sif"));
    let out = ok(cached(&cache, &["cache", "add", s(&w.join("p.sif"))])
        .output()
        .unwrap());
    assert_eq!(String::from_utf8_lossy(&out).trim(), s(&entry));
    let mode = fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
    // A SIF that records no image digest (an empty one), and a missing file.
    let none = w.join("none.sif");
    ok(cached(&cache, &["sif", "new", s(&none)]).output().unwrap());
    fails(
        cached(&cache, &["cache", "add", s(&none)])
            .output()
            .unwrap(),
        "records no manifest digest",
    );
    fails(
        cached(&cache, &["cache", "add", s(&w.join("missing.sif"))])
            .output()
            .unwrap(),
        "missing.sif: No such file or directory",
    );
    let list = |cache: &Path| {
        String::from_utf8(ok(cached(cache, &["cache", "list"]).output().unwrap())).unwrap()
    };
    let text = list(&cache);
    let row = text.lines().nth(1).unwrap_or_default().to_owned();
    assert!(
        row.starts_with(&format!("{}\t{digest}\t", reg.name("test/img:t"))),
        "{text}"
    );
    assert!(row.ends_with("s ago"), "{text}");
    // Debris of a dead conversion; a broken lock's leftover (old).
    let orphan = cache.join(format!("v1/tmp/.{hex}.gzip.elsewhere.1.dead"));
    fs::create_dir_all(orphan.join("x")).unwrap();
    let broken = cache.join(format!("v1/lock/{hex}.gzip.lock.broken.h.1.ab"));
    fs::write(&broken, b"{}").unwrap();
    fs::File::options()
        .write(true)
        .open(&broken)
        .unwrap()
        .set_modified(std::time::SystemTime::now() - Duration::from_secs(600))
        .unwrap();
    let clean = |args: &[&str]| {
        let mut a = vec!["cache", "clean"];
        a.extend_from_slice(args);
        String::from_utf8(ok(cached(&cache, &a).output().unwrap())).unwrap()
    };
    let text = clean(&[]);
    assert!(!orphan.exists() && !broken.exists(), "{text}");
    assert!(entry.exists(), "no --older-than, no --all: {text}");
    clean(&["--older-than", "1d"]);
    assert!(entry.exists(), "used just now");
    // A live conversion of the same entry: never removed.
    let lock = cache.join(format!("v1/lock/{hex}.gzip.lock"));
    fs::write(&lock, live_lock_record()).unwrap();
    let text = clean(&["--all"]);
    assert!(
        entry.exists() && text.contains("kept (being converted)"),
        "{text}"
    );
    fs::remove_file(&lock).unwrap();
    let text = clean(&["--all"]);
    assert!(!entry.exists(), "{text}");
    assert!(
        text.contains(&format!("removed {}", reg.name("test/img:t"))),
        "{text}"
    );
    assert_eq!(list(&cache).lines().count(), 1, "only the header");
    let out = cached(&cache, &["cache", "clean", "--older-than", "3y"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("3y: not a duration"));
}

/// Whether the live cluster with the plugin runs (tests/run-all starts it).
fn cluster_up() -> bool {
    let up = sifrun_tests::have("srun")
        && Command::new("sinfo")
            .arg("-h")
            .output()
            .is_ok_and(|o| o.status.success())
        && Path::new("/etc/slurm/plugstack.conf.d/sifrun.conf").exists();
    if !up {
        assert!(
            std::env::var_os("SIFRUN_REQUIRE_CLUSTER").is_none(),
            "the test cluster with the plugin must be running (tests/run-all starts it)"
        );
        eprintln!("skipping: no test cluster with the plugin");
    }
    up
}

/// Issue 14 stage 3 under Slurm: `srun --sif-image=docker://REF` resolves
/// the tag once on the submitting side (every task sees the pin), the
/// step's holder converts the pinned digest into the user's cache and
/// serves it; concurrent steps share one cache entry; `--container=docker://`
/// works the same; a later step uses the entry as it is.
#[test]
fn slurm_steps_run_registry_images_from_the_cache() {
    let Some(images) = images() else { return };
    if !cluster_up() || !containers_can_run() {
        return;
    }
    let reg = Registry::start(false);
    reg.push(
        &format!("oci:{}:t", s(&images.join("layout"))),
        "test/img:t",
        false,
        &[],
    );
    let work = scratch();
    let cache = work.path().join("cache");
    let src = format!("docker://{}", reg.name("test/img:t"));
    let pin = ok(cached(&cache, &["resolve", "--nohttps", &src])
        .output()
        .unwrap());
    let pin = String::from_utf8_lossy(&pin).trim().to_owned();
    let srun = |option: &str| {
        let mut c = Command::new("srun");
        c.args([
            "-n2",
            option,
            "sh",
            "-c",
            "head -1 /etc/passwd; echo PIN=$SLURM_SIFRUN_IMAGE_PIN",
        ])
        .current_dir(work.path())
        .env("SIFRUN_CACHEDIR", &cache)
        .env("SIFRUN_NOHTTPS", "1")
        .env_remove("SLURM_SIFRUN_IMAGE_PIN")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        c
    };
    let image_opt = format!("--sif-image={src}");
    let steps: Vec<Child> = (0..3).map(|_| srun(&image_opt).spawn().unwrap()).collect();
    for step in steps {
        let out = step.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(text.matches("root:x:0:0").count(), 2, "{text}");
        assert_eq!(text.matches(&format!("PIN={pin}\n")).count(), 2, "{text}");
    }
    let entries = cache_entries(&cache);
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert!(
        fs::read_dir(cache.join("v1/lock"))
            .unwrap()
            .next()
            .is_none()
    );
    let entry = cache.join("v1/sif/sha256").join(&entries[0]);
    let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&fs::metadata(p).unwrap());
    let before = ino(&entry);
    // Slurm's --container (no oci.conf here): the same image, from the cache.
    let out = srun(&format!("--container={src}")).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(text.matches(&format!("PIN={pin}\n")).count(), 2, "{text}");
    assert_eq!(
        ino(&entry),
        before,
        "the cached entry was used, not converted again"
    );
    assert_eq!(cache_entries(&cache).len(), 1);
    // The pinned digest in the user's cache: the lean holder serves it (no
    // registry code to load), as it does a local SIF.
    let out = Command::new("srun")
        .args([
            "-n1",
            "--sif-verbose",
            &image_opt,
            "sh",
            "-c",
            "echo lean-ok",
        ])
        .current_dir(work.path())
        .env("SIFRUN_CACHEDIR", &cache)
        .env("SIFRUN_NOHTTPS", "1")
        .env_remove("SLURM_SIFRUN_IMAGE_PIN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("lean-ok"));
    assert!(err.contains("sifrun: holder sifrun-hold\n"), "{err}");
    assert_eq!(ino(&entry), before);
    // A batch job: the script runs in the image with the pin, and an srun
    // inside it (in the container, no launcher there) reuses the pin.
    fs::write(
        work.path().join("job.sh"),
        "#!/bin/sh\necho BATCH=$SLURM_SIFRUN_IMAGE_PIN\n\
         srun -n1 sh -c 'echo INNER=$SLURM_SIFRUN_IMAGE_PIN; head -1 /etc/passwd'\n",
    )
    .unwrap();
    let out = Command::new("sbatch")
        .args(["--wait", "-o", "batch.out", &image_opt, "job.sh"])
        .current_dir(work.path())
        .env("SIFRUN_CACHEDIR", &cache)
        .env("SIFRUN_NOHTTPS", "1")
        .env_remove("SLURM_SIFRUN_IMAGE_PIN")
        .output()
        .unwrap();
    let text = fs::read_to_string(work.path().join("batch.out")).unwrap_or_default();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains(&format!("BATCH={pin}\n")), "{text}");
    assert!(text.contains(&format!("INNER={pin}\n")), "{text}");
    assert!(text.contains("root:x:0:0"), "{text}");
    assert_eq!(ino(&entry), before);
    // A tag that does not exist fails on the submitting side, in one line.
    let bad = format!("--sif-image=docker://{}", reg.name("test/none:t"));
    let out = srun(&bad).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("cannot resolve"), "{err}");
}

/// Issue 14 under Slurm: a private image (htpasswd registry) pulled by a
/// step's holder with the user's credentials from the job's environment
/// (the SIFRUN_DOCKER_USERNAME/PASSWORD pair, then REGISTRY_AUTH_FILE),
/// and the holder's progress lines relayed by `--sif-verbose`; without
/// credentials the step fails on the submitting side, in one line.
#[test]
fn slurm_steps_pull_private_images_with_the_users_credentials() {
    let Some(images) = images() else { return };
    if !cluster_up() || !containers_can_run() {
        return;
    }
    let reg = Registry::start(true);
    reg.push(
        &format!("oci:{}:t", s(&images.join("layout"))),
        "test/private:t",
        true,
        &[],
    );
    let work = scratch();
    let w = work.path();
    let src = format!("docker://{}", reg.name("test/private:t"));
    let auth = w.join("auth.json");
    fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"127.0.0.1:{}":{{"auth":"dXNlcjpwYXNz"}}}}}}"#,
            reg.port
        ),
    )
    .unwrap();
    let srun = |cache: &str, env: &[(&str, String)]| {
        let mut c = Command::new("srun");
        c.args([
            "-n1",
            "--sif-verbose",
            &format!("--sif-image={src}"),
            "cat",
            "/etc/passwd",
        ])
        .current_dir(w)
        .env("SIFRUN_CACHEDIR", w.join(cache))
        .env("SIFRUN_NOHTTPS", "1")
        .env_remove("SLURM_SIFRUN_IMAGE_PIN")
        .env_remove("SIFRUN_DOCKER_USERNAME")
        .env_remove("SIFRUN_DOCKER_PASSWORD")
        .env_remove("REGISTRY_AUTH_FILE")
        .envs(env.iter().map(|(k, v)| (k, v)));
        c.output().unwrap()
    };
    let out = srun("none", &[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("authentication required"), "{err}");
    for (cache, env) in [
        (
            "pair",
            vec![
                ("SIFRUN_DOCKER_USERNAME", "user".to_owned()),
                ("SIFRUN_DOCKER_PASSWORD", "pass".to_owned()),
            ],
        ),
        ("file", vec![("REGISTRY_AUTH_FILE", s(&auth).to_owned())]),
    ] {
        let out = srun(cache, &env);
        let (text, err) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "{cache}: {text}{err}");
        assert!(text.contains("root:x:0:0"), "{cache}: {text}");
        // The holder converted (the cache was empty) and said how far it got.
        assert!(err.contains("sifrun: download: layers "), "{cache}: {err}");
        assert_eq!(cache_entries(&w.join(cache)).len(), 1, "{cache}");
    }
}
