//! Shared helpers for the end-to-end tests: where the corpus and the built
//! binaries are, and the map from corpus images to siftool's goldens.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub mod attack;
pub mod craft;

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The sylabs/sif corpus directory (`SIFRUN_CORPUS` overrides it when the
/// tests run as another user from a staged copy).
pub fn corpus() -> PathBuf {
    std::env::var_os("SIFRUN_CORPUS")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("tests/corpus/sylabs-sif"))
}

/// A reference test image by file name.
pub fn image(name: &str) -> PathBuf {
    corpus().join("test/images").join(name)
}

/// A siftool golden, e.g. `golden_app("List", "OneGroup")`.
pub fn golden_app(kind: &str, name: &str) -> PathBuf {
    corpus()
        .join("golden/internal/app/siftool/testdata")
        .join(format!("TestApp_{kind}"))
        .join(format!("{name}.golden"))
}

/// Images with `list` and `header` goldens: (image file, golden name).
pub const LIST_AND_HEADER: &[(&str, &str)] = &[
    ("empty.sif", "Empty"),
    ("empty-id.sif", "EmptyID"),
    ("empty-launch-script.sif", "EmptyLaunchScript"),
    ("one-group.sif", "OneGroup"),
    ("one-group-signed-legacy.sif", "OneGroupSignedLegacy"),
    ("one-group-signed-legacy-all.sif", "OneGroupSignedLegacyAll"),
    (
        "one-group-signed-legacy-group.sif",
        "OneGroupSignedLegacyGroup",
    ),
    ("one-group-signed-pgp.sif", "OneGroupSignedPGP"),
    ("one-object-crypt-message.sif", "OneObjectCryptMessage"),
    ("one-object-generic-json.sif", "OneObjectGenericJSON"),
    ("one-object-oci-blob.sif", "OneObjectOCIBlob"),
    ("one-object-oci-root-index.sif", "OneObjectOCIRootIndex"),
    ("one-object-sbom.sif", "OneObjectSBOM"),
    ("one-object-time.sif", "OneObjectTime"),
    ("two-groups.sif", "TwoGroups"),
    ("two-groups-signed-legacy.sif", "TwoGroupsSignedLegacy"),
    (
        "two-groups-signed-legacy-all.sif",
        "TwoGroupsSignedLegacyAll",
    ),
    (
        "two-groups-signed-legacy-group.sif",
        "TwoGroupsSignedLegacyGroup",
    ),
    ("two-groups-signed-pgp.sif", "TwoGroupsSignedPGP"),
];

/// `info` goldens: (golden name, object ID, image file).
pub const INFO: &[(&str, u32, &str)] = &[
    ("CryptMessage", 1, "one-object-crypt-message.sif"),
    ("DataPartitionEXT3", 3, "two-groups-signed-pgp.sif"),
    ("DataPartitionRaw", 1, "two-groups-signed-pgp.sif"),
    ("DataPartitionSquashFS", 2, "two-groups-signed-pgp.sif"),
    ("DataSignature", 4, "two-groups-signed-pgp.sif"),
    ("GenericJSON", 1, "one-object-generic-json.sif"),
    ("OCIBlob", 1, "one-object-oci-blob.sif"),
    ("OCIRootIndex", 1, "one-object-oci-root-index.sif"),
    ("SBOM", 1, "one-object-sbom.sif"),
    ("Time", 1, "one-object-time.sif"),
];

/// `dump` goldens: (golden name, object ID, image file).
pub const DUMP: &[(&str, u32, &str)] = &[("One", 1, "one-group.sif"), ("Two", 2, "one-group.sif")];

/// Every image in the corpus.
pub fn all_images() -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(corpus().join("test/images"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sif"))
        .collect();
    v.sort();
    v
}

/// The `sifrun` binary built for these tests.
pub fn sifrun_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("SIFRUN_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root().join("target"));
    let profile = if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    };
    let bin = target.join(profile).join("sifrun");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo build -p launcher` first (tests/run-all does)",
        bin.display()
    );
    bin
}

/// Runs `sifrun` with `args`.
pub fn sifrun(args: &[&str]) -> Output {
    Command::new(sifrun_bin()).args(args).output().unwrap()
}

/// Asserts success and returns stdout.
pub fn ok(out: Output) -> Vec<u8> {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// Whether a program is on PATH.
pub fn have(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// Whether `tool` is installed; when the run requires every peer
/// (`SIFRUN_REQUIRE_PEERS`, as CI sets) its absence is a failure.
pub fn require(tool: &str) -> bool {
    if have(tool) {
        return true;
    }
    assert!(
        std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
        "{tool} is required"
    );
    eprintln!("skipping: {tool} not installed");
    false
}

/// A busybox image at `dir/NAME.sif` (built by `sifrun build`) with an
/// 8 MiB `/payload` whose bytes follow from `seed`; returns the image and
/// the payload's md5 as md5sum prints it.
pub fn payload_image(dir: &Path, name: &str, seed: u32) -> (PathBuf, String) {
    use std::fs;
    let root = dir.join(format!("{name}-root"));
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for c in ["sh", "cat", "sleep", "md5sum", "echo", "head"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(c)).unwrap();
    }
    // xorshift: incompressible, different per seed.
    let mut x: u32 = 0x9e37_79b9 ^ seed;
    let payload: Vec<u8> = (0..8 << 20)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect();
    fs::write(root.join("payload"), &payload).unwrap();
    let sum = ok(Command::new("md5sum")
        .arg(root.join("payload"))
        .output()
        .unwrap());
    let img = dir.join(format!("{name}.sif"));
    ok(sifrun(&[
        "build",
        img.to_str().unwrap(),
        root.to_str().unwrap(),
    ]));
    fs::remove_dir_all(&root).unwrap();
    (img, String::from_utf8(sum).unwrap()[..32].to_owned())
}

/// A path as text (test paths are UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Whether containers can run here as this user (mksquashfs, pgrep,
/// busybox-static and a usable /dev/fuse); CI must, so with
/// `SIFRUN_REQUIRE_PEERS` their absence is a failure.
pub fn containers_can_run() -> bool {
    let mut missing: Vec<&str> = ["mksquashfs", "pgrep"]
        .into_iter()
        .filter(|t| !have(t))
        .collect();
    if !Path::new("/bin/busybox").exists() {
        missing.push("busybox-static");
    }
    let fuse_ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .is_ok();
    if missing.is_empty() && fuse_ok {
        return true;
    }
    assert!(
        std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
        "container tests need {missing:?} and a usable /dev/fuse ({fuse_ok})"
    );
    eprintln!("skipping: missing {missing:?} or /dev/fuse");
    false
}

/// A scratch directory others may enter (images and binds below it are
/// used from inside containers and by Slurm's daemons).
pub fn scratch() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
}

/// Polls `done` every 50 ms; fails the test after `limit` (so a hang is a
/// failure, not a stalled CI run).
pub fn poll_until(what: &str, limit: std::time::Duration, mut done: impl FnMut() -> bool) {
    let t = std::time::Instant::now();
    while !done() {
        assert!(
            t.elapsed() < limit,
            "timed out ({limit:?}) waiting for {what}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
