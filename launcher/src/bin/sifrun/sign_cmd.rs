//! `sifrun sign` and `sifrun verify`.

use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use clap::Args;

use sif::Image;
use sif::integrity::clearsign::{Keyring, SigningKey};
use sif::integrity::dsse::{PrivateKey, PublicKey};
use sif::integrity::sign::{SignOptions, sign, sign_dsse};
use sif::integrity::verify::{Verifier, VerifyOptions, fingerprint_hex};

#[derive(Args)]
pub struct SignArgs {
    /// The OpenPGP secret key (armored or binary; a passphrase is asked on
    /// the terminal or read from SIFRUN_KEY_PASSPHRASE), or an unencrypted
    /// PEM private key (ed25519, RSA, ECDSA) for a DSSE signature, as
    /// Apptainer's `sign --key`
    #[arg(long, value_name = "KEY.asc|KEY.pem")]
    key: PathBuf,
    /// Sign only this object group (repeatable)
    #[arg(long = "group-id", short = 'g', value_name = "N")]
    groups: Vec<u32>,
    /// Sign only this object (repeatable); one signature per group touched
    #[arg(long = "sif-id", short = 'i', value_name = "N")]
    objects: Vec<u32>,
    /// The image to sign (changed in place)
    image: PathBuf,
}

#[derive(Args)]
pub struct VerifyArgs {
    /// Public keys to verify against (armored or binary OpenPGP keyring);
    /// default: ~/.config/sifrun/keyring.asc
    #[arg(long, value_name = "FILE")]
    keyring: Option<PathBuf>,
    /// Verify only this object group (repeatable)
    #[arg(long = "group-id", short = 'g', value_name = "N")]
    groups: Vec<u32>,
    /// Verify only this object (repeatable)
    #[arg(long = "sif-id", short = 'i', value_name = "N")]
    objects: Vec<u32>,
    /// Verify legacy (SIFHASH, pre-SIF-v2) signatures; they do not cover the
    /// image header or descriptors
    #[arg(long)]
    legacy_insecure: bool,
    /// With --legacy-insecure: every object, not only the primary partition
    #[arg(long, requires = "legacy_insecure")]
    all: bool,
    /// A PEM public key (ed25519, RSA, ECDSA) for DSSE signatures (repeatable)
    #[arg(long = "key", value_name = "PUB.pem")]
    keys: Vec<PathBuf>,
    /// A PEM X.509 certificate whose key verifies DSSE signatures, once it
    /// is validated for code signing against the roots (its first block is
    /// the leaf)
    #[arg(long, value_name = "LEAF.pem")]
    certificate: Option<PathBuf>,
    /// PEM certificates that may link the leaf to a root
    #[arg(long, value_name = "FILE", requires = "certificate")]
    certificate_intermediates: Option<PathBuf>,
    /// PEM root certificates the leaf must chain to (default: the system's
    /// roots, as Apptainer)
    #[arg(long, value_name = "FILE", requires = "certificate")]
    certificate_roots: Option<PathBuf>,
    /// Online revocation checks (Apptainer's); not supported: refused
    #[arg(long, requires = "certificate")]
    ocsp_verify: bool,
    /// The image to verify
    image: PathBuf,
}

fn passphrase(key: &SigningKey) -> Result<Option<String>> {
    if !key.is_encrypted() {
        return Ok(None);
    }
    if let Ok(p) = std::env::var("SIFRUN_KEY_PASSPHRASE") {
        return Ok(Some(p));
    }
    if !std::io::stdin().is_terminal() {
        bail!(
            "the key is protected by a passphrase: set SIFRUN_KEY_PASSPHRASE or run on a terminal"
        );
    }
    eprint!("Passphrase for the signing key: ");
    std::io::stderr().flush().ok();
    let line = read_hidden_line().context("reading the passphrase")?;
    eprintln!();
    Ok(Some(line))
}

/// Reads a line from the terminal with echo off.
fn read_hidden_line() -> std::io::Result<String> {
    use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
    let stdin = std::io::stdin();
    let saved = tcgetattr(&stdin).map_err(std::io::Error::from)?;
    let mut quiet = saved.clone();
    quiet.local_flags.remove(LocalFlags::ECHO);
    tcsetattr(&stdin, SetArg::TCSANOW, &quiet).map_err(std::io::Error::from)?;
    let mut line = String::new();
    let read = stdin.read_line(&mut line);
    let _ = tcsetattr(&stdin, SetArg::TCSANOW, &saved);
    read?;
    Ok(line.trim_end_matches(['\n', '\r']).to_owned())
}

pub fn run_sign(a: &SignArgs) -> Result<()> {
    let key_bytes = std::fs::read(&a.key).with_context(|| format!("--key: {}", a.key.display()))?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&a.image)
        .with_context(|| a.image.display().to_string())?;
    let mut image = Image::open(file).with_context(|| a.image.display().to_string())?;
    let opts = SignOptions {
        groups: a.groups.clone(),
        objects: a.objects.clone(),
        time: None,
    };
    let (ids, fp) = if PrivateKey::is_pem(&key_bytes) {
        let key = PrivateKey::from_pem(&key_bytes)
            .with_context(|| format!("--key: {}", a.key.display()))?;
        let ids = sign_dsse(&mut image, &key, &opts)
            .with_context(|| format!("signing {}", a.image.display()))?;
        (ids, format!("{} (DSSE)", a.key.display()))
    } else {
        let key = SigningKey::from_bytes(&key_bytes)
            .with_context(|| format!("--key: {}", a.key.display()))?;
        let pass = passphrase(&key)?;
        let ids = sign(&mut image, &key, pass.as_deref(), &opts)
            .with_context(|| format!("signing {}", a.image.display()))?;
        let fp = key
            .fingerprint()
            .map(|f| fingerprint_hex(&f))
            .unwrap_or_default();
        (ids, fp)
    };
    for id in ids {
        let d = image.descriptor(id)?;
        println!(
            "sifrun: signed {} with key {fp}: signature object {id} for {}",
            a.image.display(),
            match d.link() {
                sif::Link::Group(g) => format!("object group {g}"),
                other => format!("{other:?}"),
            }
        );
    }
    Ok(())
}

fn default_keyring() -> Option<PathBuf> {
    std::env::var_os("HOME").map(|h| Path::new(&h).join(".config/sifrun/keyring.asc"))
}

pub fn run_verify(a: &VerifyArgs) -> Result<()> {
    let ring_path = a.keyring.clone().or_else(default_keyring);
    let ring = match &ring_path {
        Some(p) if p.exists() || a.keyring.is_some() => {
            let bytes = std::fs::read(p).with_context(|| format!("--keyring: {}", p.display()))?;
            Keyring::from_bytes(&bytes).with_context(|| format!("--keyring: {}", p.display()))?
        }
        _ => Keyring::default(),
    };
    let file = File::open(&a.image).with_context(|| a.image.display().to_string())?;
    let image = Image::open(file).with_context(|| a.image.display().to_string())?;
    let opts = VerifyOptions {
        groups: a.groups.clone(),
        objects: a.objects.clone(),
        legacy: a.legacy_insecure,
        legacy_all: a.all,
    };
    if a.legacy_insecure {
        eprintln!(
            "sifrun: warning: legacy signatures cover object data only, not the image header or descriptors"
        );
    }
    let mut dsse_keys = Vec::new();
    for k in &a.keys {
        let pem = std::fs::read(k).with_context(|| format!("--key: {}", k.display()))?;
        dsse_keys
            .push(PublicKey::from_pem(&pem).with_context(|| format!("--key: {}", k.display()))?);
    }
    if let Some(leaf) = &a.certificate {
        dsse_keys.push(certificate_key(a, leaf)?);
    }
    let checks = Verifier::new(&image, &ring)
        .with_dsse_keys(&dsse_keys)
        .verify(&opts, |_, _| false)
        .map_err(|e| match &a.certificate {
            Some(c) if e.is_not_valid() => anyhow::Error::new(e).context(format!(
                "signature mismatch: not signed by the key of --certificate {}",
                c.display()
            )),
            _ => anyhow::Error::new(e),
        })
        .with_context(|| format!("verifying {}", a.image.display()))?;
    if checks.is_empty() {
        bail!("verifying {}: no signature verified", a.image.display());
    }
    for c in &checks {
        let fp = if c.fingerprint == [0; 20] {
            "no fingerprint".to_owned()
        } else {
            fingerprint_hex(&c.fingerprint)
        };
        println!(
            "signature object {}: signed by {} ({fp}){}; objects {:?} verified",
            c.signature,
            if c.signer.is_empty() {
                "(no user ID)"
            } else {
                &c.signer
            },
            if c.legacy { ", legacy" } else { "" },
            c.objects
        );
    }
    println!("sifrun: {}: verified", a.image.display());
    Ok(())
}

/// The key of `--certificate`, once the certificate is validated against
/// the roots through the intermediates.
fn certificate_key(a: &VerifyArgs, leaf_path: &Path) -> Result<PublicKey> {
    use sif::integrity::certificate::{Roots, leaf_from_pem, pool_from_pem, validate};
    if a.ocsp_verify {
        bail!(
            "--ocsp-verify: online revocation checks are not supported (sifrun does not reach the network); remove revoked certificates from the files instead"
        );
    }
    let read = |flag: &str, p: &Path| {
        std::fs::read(p).with_context(|| format!("--{flag}: {}", p.display()))
    };
    let leaf = leaf_from_pem(&read("certificate", leaf_path)?)
        .with_context(|| format!("--certificate: {}", leaf_path.display()))?;
    let intermediates = match &a.certificate_intermediates {
        Some(p) => pool_from_pem(&read("certificate-intermediates", p)?)
            .with_context(|| format!("--certificate-intermediates: {}", p.display()))?,
        None => Vec::new(),
    };
    let roots = match &a.certificate_roots {
        Some(p) => Some(
            pool_from_pem(&read("certificate-roots", p)?)
                .with_context(|| format!("--certificate-roots: {}", p.display()))?,
        ),
        None => None,
    };
    let trusted = match &roots {
        Some(r) => Roots::Only(r),
        None => Roots::System,
    };
    let against = match &a.certificate_roots {
        Some(p) => format!("the roots of {}", p.display()),
        None => "the system's roots".into(),
    };
    validate(&leaf, &intermediates, trusted, None).with_context(|| {
        format!(
            "--certificate {}: not valid against {against}",
            leaf_path.display()
        )
    })?;
    PublicKey::from_certificate(&leaf)
        .with_context(|| format!("--certificate: {}", leaf_path.display()))
}

#[derive(clap::Subcommand)]
pub enum EclCommand {
    /// Print whether the ECL lets an image run, which execgroup decided, and why
    Check {
        /// The ECL: an admin file with an [ecl] table, or an Apptainer-style
        /// ecl.toml with `keyring` added; it and its keyring must be owned by
        /// root (or, to try out a draft, by you) and writable by nobody else
        #[arg(long, value_name = "FILE", default_value = "/etc/sifrun/sifrun.toml")]
        ecl: PathBuf,
        /// The image
        image: PathBuf,
    },
}

pub fn run_ecl(cmd: &EclCommand) -> Result<std::process::ExitCode> {
    let EclCommand::Check { ecl, image } = cmd;
    // A draft of the caller's own is judged the same way; only root's
    // files ever gate a container (exec and the Slurm holder load those).
    let me = nix::unistd::getuid().as_raw();
    let owner = |p: &std::path::Path| {
        use std::os::unix::fs::MetadataExt;
        match std::fs::symlink_metadata(p) {
            Ok(m) if m.uid() == me => me,
            _ => 0,
        }
    };
    let parsed = slurm_conf::ecl::Ecl::load_owned_by(ecl, owner(ecl))
        .map_err(|e| anyhow::anyhow!("--ecl: {e}"))?;
    let file = File::open(image).with_context(|| image.display().to_string())?;
    let d = launcher::ecl_check::check(&file, image, &parsed, &|p| Some(owner(p)))
        .with_context(|| format!("ecl check {}", image.display()))?;
    println!(
        "sifrun: ecl: {}: {}{}: {}",
        image.display(),
        if d.allowed { "allowed" } else { "denied" },
        d.group
            .map(|g| format!(" by execgroup {g:?}"))
            .unwrap_or_default(),
        d.reason
    );
    Ok(if d.allowed {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
