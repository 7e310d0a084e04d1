use super::*;

/// A ustar header block for tests: name, typeflag, size; checksum set.
pub(crate) fn ustar(name: &str, typeflag: u8, size: u64, link: &str) -> Vec<u8> {
    let mut h = vec![0u8; BLOCK];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0001750");
    h[116..123].copy_from_slice(b"0001750");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"14524770400");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..265].copy_from_slice(b"ustar\x0000");
    seal(&mut h);
    h
}

pub(crate) fn seal(h: &mut [u8]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    h[148..155].copy_from_slice(format!("{sum:06o}\0").as_bytes());
}

/// Header + data padded to the block size.
pub(crate) fn member(name: &str, typeflag: u8, data: &[u8], link: &str) -> Vec<u8> {
    let mut v = ustar(name, typeflag, data.len() as u64, link);
    v.extend_from_slice(data);
    v.resize(v.len().div_ceil(BLOCK) * BLOCK, 0);
    v
}

fn entries(bytes: &[u8]) -> Result<Vec<Entry>, TarError> {
    let mut r = Reader::new(bytes);
    let mut out = Vec::new();
    while let Some(e) = r.next_entry()? {
        out.push(e);
    }
    Ok(out)
}

/// One line per entry: kind path mode uid:gid mtime size -> link.
fn listing(bytes: &[u8]) -> String {
    entries(bytes)
        .unwrap()
        .iter()
        .map(|e| {
            let mut l = format!(
                "{:?} {} {:o} {}:{} {} {}",
                e.kind,
                String::from_utf8_lossy(&e.path),
                e.mode,
                e.uid,
                e.gid,
                e.mtime,
                e.size
            );
            if let Some(t) = &e.link {
                l += &format!(" -> {}", String::from_utf8_lossy(t));
            }
            l + "\n"
        })
        .collect()
}

#[test]
fn gnu_and_pax_fixtures_read_the_same() {
    let long = format!("d/{}/{}", "n".repeat(150), "f".repeat(120));
    let want = format!(
        "Dir d/ 755 0:0 1700000000 0\n\
         File d/file 4755 1234:1234 1700000000 6\n\
         File {long} 644 0:0 1700000000 700\n\
         HardLink d/hl 644 0:0 1700000000 0 -> d/file\n\
         Symlink d/sl 644 0:0 1700000000 0 -> ../{}\n\
         Fifo d/fifo 644 0:0 1700000000 0\n\
         File d/big-uid 644 3000000:3000001 1700000000 0\n",
        "t".repeat(120)
    );
    assert_eq!(listing(include_bytes!("../../testdata/gnu.tar")), want);
    assert_eq!(listing(include_bytes!("../../testdata/pax.tar")), want);
}

#[test]
fn data_is_readable_and_offsets_are_right() {
    let bytes = include_bytes!("../../testdata/pax.tar");
    let mut r = Reader::new(&bytes[..]);
    r.next_entry().unwrap().unwrap();
    let file = r.next_entry().unwrap().unwrap();
    let mut data = String::new();
    r.read_to_string(&mut data).unwrap();
    assert_eq!(data, "hello\n");
    assert_eq!(
        &bytes[file.data_offset as usize..file.data_offset as usize + 6],
        b"hello\n"
    );
    // The long name's entry starts at its PAX header.
    let long = r.next_entry().unwrap().unwrap();
    assert!(long.header_offset < long.data_offset - 512);
    assert_eq!(&bytes[long.header_offset as usize + 156], &b'x');
}

#[test]
fn pax_xattrs_and_fractional_mtime() {
    let e = entries(include_bytes!("../../testdata/xattr.tar")).unwrap();
    assert_eq!(e[0].mtime, 1_700_000_000);
    let names: Vec<&str> = e[0].xattrs.iter().map(|(k, _)| k.as_str()).collect();
    assert!(
        names.contains(&"user.t") && names.contains(&"security.selinux"),
        "{names:?}"
    );
    assert!(keep_xattr("user.t") && keep_xattr("security.capability"));
    assert!(!keep_xattr("security.selinux") && !keep_xattr("trusted.overlay.opaque"));
}

#[test]
fn ustar_prefix_v7_dirs_and_ends() {
    let mut h = ustar("name", b'0', 0, "");
    h[345..351].copy_from_slice(b"prefix");
    seal(&mut h);
    let mut v7 = ustar("olddir/", 0, 0, "");
    v7[257..265].fill(0);
    seal(&mut v7);
    let mut t = [h, v7].concat();
    assert_eq!(
        listing(&t),
        "File prefix/name 644 1000:1000 1700000000 0\nDir olddir/ 644 1000:1000 1700000000 0\n"
    );
    // One zero block then EOF, and trailing bytes after the end marker.
    t.extend_from_slice(&[0; 512]);
    assert_eq!(entries(&t).unwrap().len(), 2);
    t.extend_from_slice(b"garbage after the end");
    let mut r = Reader::new(&t[..]);
    while r.next_entry().unwrap().is_some() {}
    assert!(r.next_entry().unwrap().is_none());
    let mut rest = Vec::new();
    r.into_inner().read_to_end(&mut rest).unwrap();
    assert_eq!(rest, b"garbage after the end");
}

#[test]
fn signed_checksum_is_accepted() {
    let mut h = ustar("\u{e9}", b'0', 0, "");
    h[148..156].copy_from_slice(b"        ");
    let signed: i64 = h.iter().map(|&b| i64::from(b as i8)).sum();
    h[148..155].copy_from_slice(format!("{signed:06o}\0").as_bytes());
    assert_eq!(entries(&h).unwrap().len(), 1);
}

#[test]
fn refusals_name_the_offset() {
    let ok = member("a", b'0', b"x", "");
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (
            [ok.clone(), member("s", b'S', b"", "")].concat(),
            "offset 1024: sparse file in layer: not supported",
        ),
        (
            [ok.clone(), member("m", b'M', b"", "")].concat(),
            "offset 1024: unsupported type flag 'M'",
        ),
        (
            [ok.clone(), member("x", b'x', b"12 size=abc\n", "")].concat(),
            "offset 1024: bad size value",
        ),
        (
            [
                ok.clone(),
                member("x", b'x', b"22 GNU.sparse.major=1\n", ""),
                member("f", b'0', b"", ""),
            ]
            .concat(),
            "offset 2048: sparse file",
        ),
        (
            [ok.clone(), ok[..700].to_vec()].concat(),
            "truncated at offset 1724",
        ),
        (
            [ok.clone(), vec![1; 100]].concat(),
            "truncated at offset 1024",
        ),
        (ok[..600].to_vec(), "truncated at offset 600"),
        (
            [ok.clone(), ustar("", b'0', 0, "")].concat(),
            "offset 1024: empty name",
        ),
    ];
    for (bytes, want) in cases {
        let e = entries(&bytes).unwrap_err().to_string();
        assert!(e.contains(want), "want {want:?}, got {e:?}");
    }
    let mut bad = ok.clone();
    bad[0] = b'b';
    assert_eq!(
        entries(&bad).unwrap_err().to_string(),
        "tar header at offset 0: bad checksum (not a tar stream?)"
    );
}

#[test]
fn special_headers_are_capped() {
    let mut h = ustar("././@LongLink", b'L', MAX_SPECIAL + 1, "");
    h.extend_from_slice(&[b'a'; 1024]);
    let e = entries(&h).unwrap_err().to_string();
    assert_eq!(
        e,
        "tar header at offset 0: GNU long name header of 1048577 bytes (limit 1048576)"
    );
    let xattr = format!("SCHILY.xattr.user.big={}", "v".repeat(MAX_XATTRS));
    let rec = header::tests::rec(&xattr[..xattr.find('=').unwrap()], &"v".repeat(MAX_XATTRS));
    let t = [
        member("p", b'x', rec.as_bytes(), ""),
        member("f", b'0', b"", ""),
    ]
    .concat();
    assert!(
        entries(&t)
            .unwrap_err()
            .to_string()
            .contains("xattrs larger than 65536 bytes")
    );
}

/// A small deterministic generator: no dependency needed.
fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

#[test]
fn never_panics_on_mutations_and_truncations() {
    let base = include_bytes!("../../testdata/pax.tar");
    for cut in (0..base.len()).step_by(97) {
        let _ = entries(&base[..cut]);
    }
    let mut seed = 42;
    for _ in 0..3000 {
        let mut b = base.to_vec();
        for _ in 0..1 + lcg(&mut seed) % 8 {
            let i = (lcg(&mut seed) as usize) % b.len();
            b[i] = lcg(&mut seed) as u8;
        }
        // Reseal a random header so mutations get past the checksum.
        let hdr = (lcg(&mut seed) as usize % (b.len() / BLOCK)) * BLOCK;
        seal(&mut b[hdr..hdr + BLOCK]);
        let mut r = Reader::new(&b[..]);
        let mut buf = [0u8; 300];
        while let Ok(Some(_)) = r.next_entry() {
            let _ = r.read_data(&mut buf);
        }
    }
}
