//! The ECL's decisions and the validation of its table.

use super::*;

const A: [u8; 20] = [0xAA; 20];
const B: [u8; 20] = [0xBB; 20];

fn ecl(mode: Mode, dirpath: Option<&str>, keys: &[[u8; 20]]) -> Ecl {
    Ecl {
        activated: true,
        legacy_insecure: false,
        keyring: Some("/k".into()),
        certificate_roots: None,
        certificate_intermediates: None,
        owners: vec![],
        verdict_cache_entries: 0,
        groups: vec![ExecGroup {
            tagname: "g".into(),
            mode,
            dirpath: dirpath.map(PathBuf::from),
            keyfp: keys.to_vec(),
            certificates: vec![],
        }],
    }
}

fn signed(tasks: &[&[[u8; 20]]]) -> Evidence {
    Evidence {
        tasks: tasks
            .iter()
            .enumerate()
            .map(|(i, f)| {
                (
                    format!("object group {}", i + 1),
                    f.iter().map(|k| Signer::Key(*k)).collect(),
                )
            })
            .collect(),
        ..Evidence::default()
    }
}

#[test]
fn the_three_modes() {
    let dir = Path::new("/images");
    // (mode, listed keys, evidence, allowed)
    let unsigned = Evidence::default();
    let tampered = Evidence {
        failure: Some("object 2 changed".into()),
        ..signed(&[&[A]])
    };
    let unknown_only = Evidence {
        unvalidated: vec![Signer::Key(A)],
        tasks: vec![("object group 1".into(), vec![])],
        ..Evidence::default()
    };
    let cases: Vec<(Mode, Vec<[u8; 20]>, Evidence, bool)> = vec![
        (Mode::Whitelist, vec![A], signed(&[&[A]]), true),
        (Mode::Whitelist, vec![A, B], signed(&[&[B]]), true),
        (Mode::Whitelist, vec![A], signed(&[&[B]]), false),
        (Mode::Whitelist, vec![A], signed(&[&[A], &[B]]), false),
        (Mode::Whitelist, vec![A], unsigned.clone(), false),
        (Mode::Whitelist, vec![A], tampered.clone(), false),
        (
            Mode::Whitelist,
            vec![A],
            Evidence {
                unvalidated: vec![Signer::Key(A)],
                ..signed(&[&[A]])
            },
            false,
        ),
        (Mode::Whitestrict, vec![A, B], signed(&[&[A, B]]), true),
        (Mode::Whitestrict, vec![A, B], signed(&[&[A]]), false),
        (Mode::Whitestrict, vec![], signed(&[&[A]]), false),
        (Mode::Blacklist, vec![B], signed(&[&[A]]), true),
        (Mode::Blacklist, vec![A], signed(&[&[A]]), false),
        (
            Mode::Blacklist,
            vec![B],
            Evidence {
                unvalidated: vec![Signer::Key(B)],
                ..signed(&[&[A]])
            },
            false,
        ),
        // Stricter than Apptainer: no valid signature, no run.
        (Mode::Blacklist, vec![B], unsigned, false),
        (Mode::Blacklist, vec![B], unknown_only, false),
        (Mode::Blacklist, vec![B], tampered, false),
    ];
    for (i, (mode, keys, ev, want)) in cases.into_iter().enumerate() {
        let d = decide(&ecl(mode, None, &keys), dir, &ev);
        assert_eq!(d.allowed, want, "case {i}: {mode} {d:?}");
        assert!(!d.reason.is_empty());
    }
}

#[test]
fn execgroups_by_exact_directory_then_fallback() {
    let mut e = ecl(Mode::Whitelist, Some("/images"), &[A]);
    e.groups.push(ExecGroup {
        tagname: "rest".into(),
        mode: Mode::Blacklist,
        dirpath: None,
        keyfp: vec![A],
        certificates: vec![],
    });
    let ev = signed(&[&[A]]);
    let d = decide(&e, Path::new("/images"), &ev);
    assert_eq!((d.allowed, d.group.as_deref()), (true, Some("g")));
    // A subdirectory is not the directory.
    let d = decide(&e, Path::new("/images/sub"), &ev);
    assert_eq!((d.allowed, d.group.as_deref()), (false, Some("rest")));
    e.groups.pop();
    let d = decide(&e, Path::new("/images-old"), &ev);
    assert!(
        !d.allowed && d.reason.contains("part of no execgroup"),
        "{d:?}"
    );
    e.activated = false;
    assert!(decide(&e, Path::new("/x"), &Evidence::default()).allowed);
}

#[test]
fn validation_names_the_mistake() {
    let canon = |p: &Path| (p == Path::new("/images")).then(|| p.to_path_buf());
    let parse = |t: &str| {
        let raw: RawEcl = toml::from_str(t).map_err(|e| e.message().to_owned())?;
        Ecl::from_raw(raw, &canon)
    };
    let ok = parse(
        "activated = true\nkeyring = \"/k\"\n[[execgroup]]\ntagname = \"a\"\nmode = \"whitelist\"\ndirpath = \"/images\"\nkeyfp = [\"12045c8c0b1004d058de4beda20c27ee7ff7ba84\"]\n",
    )
    .unwrap();
    assert_eq!(ok.groups[0].keyfp[0][0], 0x12);
    for (text, want) in [
        ("[[execgroup]]\nmode = \"greylist\"", "greylist"),
        (
            "[[execgroup]]\nmode = \"whitelist\"\nkeyfp = [\"1234\"]",
            "40-digit",
        ),
        (
            "[[execgroup]]\nmode = \"whitelist\"\ndirpath = \"images\"",
            "absolute",
        ),
        (
            "[[execgroup]]\nmode = \"whitelist\"\ndirpath = \"/link\"",
            "without symlinks",
        ),
        (
            "[[execgroup]]\nmode = \"whitelist\"\n[[execgroup]]\nmode = \"blacklist\"",
            "earlier execgroup",
        ),
        ("activated = true", "keyring"),
        (
            "certificate_roots = \"/r.pem\"\n[[execgroup]]\nmode = \"whitelist\"\ncertificates = [\"c.pem\"]",
            "must be an absolute path",
        ),
        (
            "[[execgroup]]\nmode = \"whitestrict\"\ncertificates = [\"/c.pem\"]",
            "certificate_roots",
        ),
        (
            "certificate_roots = \"roots.pem\"\n[[execgroup]]\nmode = \"whitelist\"",
            "absolute path",
        ),
        ("activated = true\nbogus = 1", "bogus"),
    ] {
        let e = parse(text).unwrap_err();
        assert!(e.contains(want), "{text:?}: {e}");
    }
}

#[test]
#[allow(clippy::too_many_lines, clippy::cloned_ref_to_slice_refs)]
fn certificates_are_signers_beside_keys() {
    let cert = |p: &str| Signer::Certificate(PathBuf::from(p));
    let (c1, c2) = (cert("/etc/sifrun/c1.pem"), cert("/etc/sifrun/c2.pem"));
    let group = |mode: Mode, keys: &[[u8; 20]], certs: &[&Signer]| {
        let mut e = ecl(mode, None, keys);
        e.groups[0].certificates = certs
            .iter()
            .map(|c| match c {
                Signer::Certificate(p) => p.clone(),
                Signer::Key(_) => unreachable!(),
            })
            .collect();
        e
    };
    let by = |tasks: &[&[Signer]], unvalidated: &[Signer]| Evidence {
        tasks: tasks
            .iter()
            .enumerate()
            .map(|(i, s)| (format!("object group {}", i + 1), s.to_vec()))
            .collect(),
        unvalidated: unvalidated.to_vec(),
        failure: None,
    };
    let dir = Path::new("/images");
    // (ecl, evidence, allowed, words in the reason)
    let cases = [
        (
            group(Mode::Whitelist, &[], &[&c1]),
            by(&[&[c1.clone()]], &[]),
            true,
            "signed by the listed certificate /etc/sifrun/c1.pem",
        ),
        // Its certificate is not valid now (expired, untrusted).
        (
            group(Mode::Whitelist, &[], &[&c1]),
            by(&[&[]], &[c1.clone()]),
            false,
            "has no signature that verified",
        ),
        (
            group(Mode::Whitelist, &[], &[&c1]),
            by(&[&[c2.clone()]], &[]),
            false,
            "not signed by any listed key",
        ),
        (
            group(Mode::Whitelist, &[A], &[&c1]),
            by(&[&[Signer::Key(A)], &[Signer::Key(A), c2.clone()]], &[]),
            true,
            "listed key AAAA",
        ),
        // Every group by the one listed certificate.
        (
            group(Mode::Whitelist, &[], &[&c1]),
            by(&[&[c1.clone()], &[c2.clone()]], &[]),
            false,
            "not signed by any listed key",
        ),
        (
            group(Mode::Whitestrict, &[A], &[&c1]),
            by(&[&[Signer::Key(A), c1.clone()]], &[]),
            true,
            "every listed key",
        ),
        (
            group(Mode::Whitestrict, &[A], &[&c1]),
            by(&[&[Signer::Key(A)]], &[]),
            false,
            "not signed by the listed certificate /etc/sifrun/c1.pem",
        ),
        (
            group(Mode::Blacklist, &[], &[&c1]),
            by(&[&[Signer::Key(A)]], &[]),
            true,
            "by no forbidden key",
        ),
        (
            group(Mode::Blacklist, &[], &[&c1]),
            by(&[&[c1.clone()]], &[]),
            false,
            "forbidden certificate /etc/sifrun/c1.pem",
        ),
        // Forbidden even when its certificate is no longer valid.
        (
            group(Mode::Blacklist, &[], &[&c1]),
            by(&[&[Signer::Key(A)]], &[c1.clone()]),
            false,
            "forbidden certificate",
        ),
    ];
    for (i, (e, ev, allowed, why)) in cases.into_iter().enumerate() {
        let d = decide(&e, dir, &ev);
        assert_eq!(d.allowed, allowed, "case {i}: {d:?}");
        assert!(d.reason.contains(why), "case {i}: {d:?}");
    }
}

#[test]
fn an_ecl_of_certificates_needs_no_keyring() {
    let parse = |t: &str| {
        let raw: RawEcl = toml::from_str(t).map_err(|e| e.message().to_owned())?;
        Ecl::from_raw(raw, &|p| Some(p.to_path_buf()))
    };
    let e = parse(
        "activated = true\ncertificate_roots = \"/etc/r.pem\"\ncertificate_intermediates = \"/etc/i.pem\"\n[[execgroup]]\nmode = \"whitelist\"\ncertificates = [\"/etc/c.pem\"]\n",
    )
    .unwrap();
    assert_eq!(e.keyring, None);
    assert_eq!(
        e.certificate_roots.as_deref(),
        Some(Path::new("/etc/r.pem"))
    );
    assert_eq!(
        e.groups[0].signers(),
        [Signer::Certificate("/etc/c.pem".into())]
    );
    // A blacklist of certificates needs no roots: no chain is checked.
    parse("[[execgroup]]\nmode = \"blacklist\"\ncertificates = [\"/etc/c.pem\"]\n").unwrap();
    // The [ecl] table form of the admin file.
    let e = Ecl::parse_file_text(
        "[ecl]\nactivated = true\ncertificate_roots = \"/etc/r.pem\"\n[[ecl.execgroup]]\nmode = \"whitestrict\"\ncertificates = [\"/etc/c.pem\"]\n",
    )
    .unwrap();
    assert!(e.activated && e.groups[0].mode == Mode::Whitestrict);
}

#[test]
fn verdict_cache_entries_defaults_to_256_and_zero_turns_it_off() {
    let base = "[ecl]\nactivated = true\nkeyring = \"/k\"\n";
    let e = Ecl::parse_file_text(base).unwrap();
    assert_eq!(e.verdict_cache_entries, VERDICT_CACHE_ENTRIES);
    assert_eq!(VERDICT_CACHE_ENTRIES, 256);
    let e = Ecl::parse_file_text(&format!("{base}verdict_cache_entries = 0\n")).unwrap();
    assert_eq!(e.verdict_cache_entries, 0);
    let e = Ecl::parse_file_text(&format!("{base}verdict_cache_entries = 8\n")).unwrap();
    assert_eq!(e.verdict_cache_entries, 8);
    assert!(Ecl::parse_file_text(&format!("{base}verdict_cache_entries = -1\n")).is_err());
}
