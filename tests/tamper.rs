//! Tamper suite: a runnable image signed by `sifrun sign`, and a tampered
//! variant for every verification check, judged by `sifrun verify` and by
//! `sifrun ecl check` under every ECL mode (the code the Slurm holder and
//! `sifrun exec` gate with). The untampered image is the positive control:
//! it must verify and be allowed by every configuration, so a denial means
//! the tampering was seen. Goal: 0 false accepts.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, PermissionsExt, symlink};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sif::{DataType, Image, Link};
use sifrun_tests::*;

const TEST_FP: &str = "12045C8C0B1004D058DE4BEDA20C27EE7FF7BA84";

fn gpg(home: &Path, args: &[&str], stdin: Option<&[u8]>) -> Output {
    use std::io::Write;
    let mut child = Command::new("gpg")
        .args([
            "--homedir",
            s(home),
            "--batch",
            "--yes",
            "--pinentry-mode",
            "loopback",
        ])
        .args(["--passphrase", ""])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.unwrap_or(b""))
        .unwrap();
    child.wait_with_output().unwrap()
}

fn patch(p: &Path, at: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(p)
        .unwrap()
        .write_all_at(bytes, at)
        .unwrap();
}

fn open_rw(p: &Path) -> Image<File> {
    Image::open(OpenOptions::new().read(true).write(true).open(p).unwrap()).unwrap()
}

fn signature(img: &Image<File>) -> sif::Descriptor {
    img.descriptors_of_type(DataType::SIGNATURE)
        .next()
        .expect("a signature")
        .clone()
}

/// Replaces the image's signature with `data` (same metadata), linked to
/// `group`.
fn replace_signature(p: &Path, data: &[u8], group: u32) {
    let mut img = open_rw(p);
    let old = signature(&img);
    img.delete_object(old.id(), sif::DeleteOptions::default())
        .unwrap();
    let mut d: &[u8] = data;
    let mut input = sif::ObjectInput::new(DataType::SIGNATURE, &mut d).with_metadata(
        sif::Metadata::Signature {
            hash_type: sif::HashType::SHA256,
            fingerprint: (0..20)
                .map(|i| u8::from_str_radix(&TEST_FP[2 * i..2 * i + 2], 16).unwrap())
                .collect(),
        },
    );
    input.group = None;
    input.link = Link::Group(group);
    img.add_object(input, None).unwrap();
}

fn add_object(p: &Path, group: Option<u32>) {
    let mut img = open_rw(p);
    let mut data: &[u8] = b"added after signing";
    let mut input = sif::ObjectInput::new(DataType::GENERIC, &mut data);
    input.group = group;
    img.add_object(input, None).unwrap();
}

#[test]
fn no_tampered_image_is_accepted_by_verify_or_any_ecl_mode() {
    if !require("gpg") || !require("mksquashfs") || !Path::new("/bin/busybox").exists() {
        return;
    }
    // `sifrun ecl check` trusts an ECL file and keyring only below
    // directories no one else may write: not /tmp, sticky as it is.
    let home = std::env::var_os("HOME").expect("HOME");
    let dir = tempfile::tempdir_in(home).unwrap();
    let d = dir.path();
    let key = corpus().join("test/keys/private.asc");

    // The signed, runnable image.
    let root = d.join("rootfs");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    symlink("busybox", root.join("bin/sh")).unwrap();
    let unsigned = d.join("unsigned.sif");
    ok(sifrun(&["build", s(&unsigned), s(&root)]));
    let signed = d.join("signed.sif");
    fs::copy(&unsigned, &signed).unwrap();
    ok(sifrun(&["sign", "--key", s(&key), s(&signed)]));

    // Keys: the test key (the ECL's keyring) and another signer GnuPG makes.
    let home = d.join("gnupg");
    fs::create_dir(&home).unwrap();
    fs::set_permissions(&home, fs::Permissions::from_mode(0o700)).unwrap();
    ok(gpg(&home, &["--import", s(&key)], None));
    ok(gpg(
        &home,
        &[
            "--quick-gen-key",
            "Other <other@example.org>",
            "ed25519",
            "sign",
            "never",
        ],
        None,
    ));
    let other = d.join("other.asc");
    fs::write(
        &other,
        ok(gpg(
            &home,
            &["--armor", "--export-secret-keys", "other@example.org"],
            None,
        )),
    )
    .unwrap();

    let img = Image::open(File::open(&signed).unwrap()).unwrap();
    let part = img.primary_partition().unwrap().clone();
    let sig = signature(&img);
    let sig_bytes = img.read_object(&sig).unwrap();
    let group = part.group_id();
    let desc_off = |slot: usize| img.header().descriptors_offset as u64 + slot as u64 * 585;
    let plaintext = sif::integrity::clearsign::plaintext_unverified(&sig_bytes).unwrap();

    let mut variants: Vec<(&str, PathBuf)> = Vec::new();
    let mut fresh = |tag: &'static str| {
        let p = d.join(format!("{tag}.sif"));
        fs::copy(&signed, &p).unwrap();
        variants.push((tag, p.clone()));
        p
    };
    patch(&fresh("data"), part.offset() + part.size() / 2, b"X");
    patch(&fresh("data-first-byte"), part.offset(), b"\0");
    patch(&fresh("header"), 0, b"#!/bin/evil");
    patch(
        &fresh("descriptor-name"),
        desc_off(part.slot()) + 80,
        b"renamed",
    );
    // Descriptor bytes 25..33 hold the size, 17..25 the offset (the
    // offset is not digested; moving it changes the data read).
    patch(
        &fresh("descriptor-size"),
        desc_off(part.slot()) + 25,
        &[(part.size() as u8) ^ 0x01],
    );
    patch(
        &fresh("descriptor-offset"),
        desc_off(part.slot()) + 17,
        &[(part.offset() as u8).wrapping_add(8)],
    );
    patch(
        &fresh("signature-fingerprint"),
        desc_off(sig.slot()) + 585 - 384 + 4,
        &[0xAA; 20],
    );
    patch(
        &fresh("signature-armor"),
        sig.offset() + sig.size() - 80,
        b"AAAAAAAA",
    );
    add_object(&fresh("object-added-to-group"), Some(group));
    add_object(&fresh("object-outside-groups"), None);
    {
        let p = fresh("signature-deleted");
        let mut img = open_rw(&p);
        img.delete_object(sig.id(), sif::DeleteOptions::default())
            .unwrap();
    }
    replace_signature(
        &fresh("signature-truncated"),
        &sig_bytes[..sig_bytes.len() / 2],
        group,
    );
    replace_signature(&fresh("signature-other-group"), &sig_bytes, group + 1);
    {
        // The same metadata signed again with SHA-1 (CVE-2022-39237).
        let sha1 = ok(gpg(
            &home,
            &["--digest-algo", "SHA1", "--clearsign", "-u", TEST_FP],
            Some(&plaintext),
        ));
        replace_signature(&fresh("signature-sha1"), &sha1, group);
    }
    {
        // Metadata for other data, properly signed by the trusted key.
        let text = String::from_utf8(plaintext.clone()).unwrap();
        let pos = text.find("sha256:").unwrap() + 7;
        let flipped = if &text[pos..pos + 1] == "0" { "1" } else { "0" };
        let forged = format!("{}{flipped}{}", &text[..pos], &text[pos + 1..]);
        let signed_forgery = ok(gpg(
            &home,
            &["--digest-algo", "SHA256", "--clearsign", "-u", TEST_FP],
            Some(forged.as_bytes()),
        ));
        replace_signature(&fresh("metadata-forged"), &signed_forgery, group);
    }
    {
        let p = d.join("other-signer.sif");
        fs::copy(&unsigned, &p).unwrap();
        ok(sifrun(&["sign", "--key", s(&other), s(&p)]));
        variants.push(("other-signer", p));
    }
    {
        let p = d.join("unsigned-copy.sif");
        fs::copy(&unsigned, &p).unwrap();
        variants.push(("unsigned", p));
    }
    {
        // Two signatures, one good: the data changed after both.
        let p = d.join("second-signer-then-data.sif");
        fs::copy(&signed, &p).unwrap();
        ok(sifrun(&["sign", "--key", s(&other), s(&p)]));
        patch(&p, part.offset() + 7, b"Y");
        variants.push(("two-signers-then-data", p));
    }
    drop(img);
    // gpg started an agent for this home; it is not needed any more.
    let _ = Command::new("gpgconf")
        .args(["--homedir", s(&home), "--kill", "all"])
        .output();

    // The ECL configurations, each allowing the untampered image.
    let ring = d.join("keyring.asc");
    fs::copy(&key, &ring).unwrap();
    let mut ecls: Vec<(&str, PathBuf)> = Vec::new();
    for (name, body) in [
        (
            "whitelist",
            format!(
                "[[execgroup]]\ntagname = \"w\"\nmode = \"whitelist\"\nkeyfp = [\"{TEST_FP}\"]\n"
            ),
        ),
        (
            "whitelist-dirpath",
            format!(
                "[[execgroup]]\ntagname = \"wd\"\nmode = \"whitelist\"\ndirpath = \"{}\"\nkeyfp = [\"{TEST_FP}\"]\n",
                d.canonicalize().unwrap().display()
            ),
        ),
        (
            "whitestrict",
            format!(
                "[[execgroup]]\ntagname = \"ws\"\nmode = \"whitestrict\"\nkeyfp = [\"{TEST_FP}\"]\n"
            ),
        ),
        (
            "blacklist",
            format!(
                "[[execgroup]]\ntagname = \"b\"\nmode = \"blacklist\"\nkeyfp = [\"{}\"]\n",
                "0".repeat(40)
            ),
        ),
    ] {
        let p = d.join(format!("ecl-{name}.toml"));
        fs::write(
            &p,
            format!("activated = true\nkeyring = \"{}\"\n{body}", ring.display()),
        )
        .unwrap();
        ecls.push((name, p));
    }
    // Images and configuration the user cannot change (the ECL refuses
    // images their user could write).
    for p in variants
        .iter()
        .map(|(_, p)| p)
        .chain(ecls.iter().map(|(_, p)| p))
        .chain([&signed, &ring])
    {
        fs::set_permissions(p, fs::Permissions::from_mode(0o444)).unwrap();
    }

    let verify = |p: &Path| sifrun(&["verify", "--keyring", s(&ring), s(p)]);
    let ecl_check = |ecl: &Path, p: &Path| sifrun(&["ecl", "check", "--ecl", s(ecl), s(p)]);

    // Positive controls.
    let out = verify(&signed);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The ECL pins an image before it looks at signatures: one the caller
    // owns could change after the check (issue 12 item 1), so even the
    // untampered image is refused here, as "owned by you". (The ECL's
    // verdicts on root-owned signed, unsigned and tampered images are the
    // live tests/slurm/ecl-check's.)
    for (name, ecl) in &ecls {
        let out = ecl_check(ecl, &signed);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            !out.status.success() && text.contains("owned by you"),
            "{name}: an image the caller owns was not refused as such: {text}"
        );
    }

    let mut judged = 0;
    let mut false_accepts = Vec::new();
    for (tag, p) in &variants {
        let out = verify(p);
        judged += 1;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.contains("panicked"), "{tag}: {err}");
        if out.status.success() {
            false_accepts.push(format!("verify accepted {tag}"));
        }
        for (name, ecl) in &ecls {
            let out = ecl_check(ecl, p);
            judged += 1;
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(!text.contains("panicked"), "{tag}/{name}: {text}");
            if out.status.success() || !text.contains("denied") {
                false_accepts.push(format!("{name} allowed {tag}: {text}"));
            }
        }
    }
    eprintln!(
        "tamper suite: {} variants, {judged} verdicts (verify + {} ECL configurations): {} false accepts",
        variants.len(),
        ecls.len(),
        false_accepts.len()
    );
    assert!(false_accepts.is_empty(), "{false_accepts:#?}");
    assert!(variants.len() >= 18);
}
