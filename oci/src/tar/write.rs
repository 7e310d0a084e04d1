//! Encoding of tar headers for the merged stream the converter writes
//! (design §3.4): ustar when everything fits, a PAX header before it for
//! long names and link targets, large ids, sizes or times, and xattrs.

use super::Kind;
use super::header::BLOCK;

/// What to write for one entry.
#[derive(Debug, Clone, Copy)]
pub struct Header<'a> {
    /// Path inside the image, relative, without a trailing `/`.
    pub path: &'a [u8],
    /// The type.
    pub kind: Kind,
    /// Permission bits (12).
    pub mode: u32,
    /// Owner.
    pub uid: u64,
    /// Group.
    pub gid: u64,
    /// Modification time in seconds.
    pub mtime: i64,
    /// Data size (files only).
    pub size: u64,
    /// Link target (hard and symbolic links).
    pub link: &'a [u8],
    /// Device numbers.
    pub device: (u32, u32),
    /// Extended attributes.
    pub xattrs: &'a [(String, Vec<u8>)],
}

/// The end of an archive: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// Zero bytes to write after `size` bytes of data.
pub fn padding(size: u64) -> usize {
    // The remainder of a division by 512 fits any usize.
    usize::try_from((BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64).unwrap_or(0)
}

const MAX_ID: u64 = 0o7_777_777;
const MAX_SIZE: u64 = 0o77_777_777_777;

fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let text = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&text.as_bytes()[text.len() - digits..]);
    field[digits] = 0;
}

fn record(out: &mut Vec<u8>, key: &str, value: &[u8]) {
    let body_len = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body_len + 1;
    while len.to_string().len() + body_len != len {
        len += 1;
    }
    out.extend_from_slice(format!("{len} {key}=").as_bytes());
    out.extend_from_slice(value);
    out.push(b'\n');
}

fn typeflag(kind: Kind) -> u8 {
    match kind {
        Kind::File => b'0',
        Kind::HardLink => b'1',
        Kind::Symlink => b'2',
        Kind::Char => b'3',
        Kind::Block => b'4',
        Kind::Dir => b'5',
        Kind::Fifo => b'6',
    }
}

fn block(name: &[u8], typeflag: u8, h: &Header<'_>, size: u64) -> [u8; BLOCK] {
    let mut b = [0u8; BLOCK];
    let n = name.len().min(100);
    b[..n].copy_from_slice(&name[..n]);
    octal(&mut b[100..108], u64::from(h.mode & 0o7777));
    octal(&mut b[108..116], h.uid.min(MAX_ID));
    octal(&mut b[116..124], h.gid.min(MAX_ID));
    octal(&mut b[124..136], size.min(MAX_SIZE));
    octal(
        &mut b[136..148],
        u64::try_from(h.mtime).unwrap_or(0).min(MAX_SIZE),
    );
    b[156] = typeflag;
    let l = h.link.len().min(100);
    b[157..157 + l].copy_from_slice(&h.link[..l]);
    b[257..265].copy_from_slice(b"ustar\x0000");
    octal(&mut b[329..337], u64::from(h.device.0).min(MAX_ID));
    octal(&mut b[337..345], u64::from(h.device.1).min(MAX_ID));
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    octal(&mut b[148..155], sum);
    b
}

/// The header blocks for one entry (a PAX header first when needed); the
/// caller writes the data and [`padding`] after them.
pub fn encode(h: &Header<'_>) -> Vec<u8> {
    let mut name = h.path.to_vec();
    if h.kind == Kind::Dir && !name.is_empty() {
        name.push(b'/');
    }
    let size = if h.kind == Kind::File { h.size } else { 0 };
    let mut pax = Vec::new();
    if name.len() > 100 {
        record(&mut pax, "path", &name);
    }
    if h.link.len() > 100 {
        record(&mut pax, "linkpath", h.link);
    }
    for (key, v) in [("uid", h.uid), ("gid", h.gid)] {
        if v > MAX_ID {
            record(&mut pax, key, v.to_string().as_bytes());
        }
    }
    if size > MAX_SIZE {
        record(&mut pax, "size", size.to_string().as_bytes());
    }
    if h.mtime < 0 || h.mtime.unsigned_abs() > MAX_SIZE {
        record(&mut pax, "mtime", h.mtime.to_string().as_bytes());
    }
    for (k, v) in h.xattrs {
        record(&mut pax, &format!("SCHILY.xattr.{k}"), v);
    }
    let mut out = Vec::with_capacity(3 * BLOCK);
    if !pax.is_empty() {
        let pax_name: Vec<u8> = [b"PaxHeaders/", &name[..name.len().min(89)]].concat();
        out.extend_from_slice(&block(&pax_name, b'x', h, pax.len() as u64));
        let padded = pax.len() + padding(pax.len() as u64);
        pax.resize(padded, 0);
        out.extend_from_slice(&pax);
    }
    out.extend_from_slice(&block(&name, typeflag(h.kind), h, size));
    out
}

#[cfg(test)]
mod tests {
    use super::super::{Entry, Reader};
    use super::*;

    fn header<'a>(
        path: &'a [u8],
        kind: Kind,
        link: &'a [u8],
        xattrs: &'a [(String, Vec<u8>)],
    ) -> Header<'a> {
        Header {
            path,
            kind,
            mode: 0o4755,
            uid: 1234,
            gid: 5678,
            mtime: 1_700_000_000,
            size: 0,
            link,
            device: (0, 0),
            xattrs,
        }
    }

    fn round_trip(h: &Header<'_>, data: &[u8]) -> Entry {
        let mut t = encode(h);
        t.extend_from_slice(data);
        t.resize(t.len() + padding(data.len() as u64), 0);
        t.extend_from_slice(&END);
        let mut r = Reader::new(&t[..]);
        let e = r.next_entry().unwrap().unwrap();
        assert!(r.next_entry().unwrap().is_none());
        e
    }

    #[test]
    fn short_headers_are_plain_ustar() {
        let h = Header {
            size: 5,
            ..header(b"etc/hosts", Kind::File, b"", &[])
        };
        assert_eq!(encode(&h).len(), BLOCK);
        let e = round_trip(&h, b"12345");
        assert_eq!(
            (e.path.as_slice(), e.mode, e.uid, e.gid, e.size),
            (&b"etc/hosts"[..], 0o4755, 1234, 5678, 5)
        );
        assert_eq!(e.mtime, 1_700_000_000);
        let d = round_trip(&header(b"usr/lib", Kind::Dir, b"", &[]), b"");
        assert_eq!((d.path.as_slice(), d.kind), (&b"usr/lib/"[..], Kind::Dir));
        let c = round_trip(
            &Header {
                device: (1, 3),
                ..header(b"dev/null", Kind::Char, b"", &[])
            },
            b"",
        );
        assert_eq!(c.device, (1, 3));
    }

    #[test]
    fn long_names_big_ids_times_and_xattrs_use_pax() {
        let long = format!("{}/{}", "a".repeat(150), "b".repeat(200));
        let target = "t".repeat(300);
        let x = [
            ("user.t".to_owned(), b"v\n=".to_vec()),
            ("security.capability".to_owned(), vec![1, 0, 0, 2]),
        ];
        let h = Header {
            uid: 3_000_000,
            gid: 3_000_001,
            mtime: -5,
            ..header(long.as_bytes(), Kind::Symlink, target.as_bytes(), &x)
        };
        let e = round_trip(&h, b"");
        assert_eq!(e.path, long.as_bytes());
        assert_eq!(e.link.as_deref(), Some(target.as_bytes()));
        assert_eq!((e.uid, e.gid, e.mtime), (3_000_000, 3_000_001, -5));
        assert_eq!(e.xattrs, x);
        let big = Header {
            size: MAX_SIZE + 1,
            ..header(b"f", Kind::File, b"", &[])
        };
        let t = [encode(&big), vec![0u8; 0]].concat();
        let e = Reader::new(&t[..]).next_entry().unwrap().unwrap();
        assert_eq!(e.size, MAX_SIZE + 1);
    }

    #[test]
    fn gnu_tar_lists_what_we_write() {
        let long = format!("d/{}", "n".repeat(180));
        let x = [("user.k".to_owned(), b"v".to_vec())];
        let mut t = Vec::new();
        for h in [
            header(b"d", Kind::Dir, b"", &[]),
            Header {
                size: 3,
                ..header(long.as_bytes(), Kind::File, b"", &x)
            },
            header(b"d/h", Kind::HardLink, long.as_bytes(), &[]),
            Header {
                uid: 4_000_000,
                ..header(b"d/s", Kind::Symlink, b"../x", &[])
            },
        ] {
            t.extend_from_slice(&encode(&h));
            if h.size > 0 {
                t.extend_from_slice(b"abc");
                t.resize(t.len() + padding(3), 0);
            }
        }
        t.extend_from_slice(&END);
        let dir = std::env::temp_dir().join(format!("oci-tar-write-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("t.tar");
        std::fs::write(&file, &t).unwrap();
        let out = std::process::Command::new("tar")
            .arg("-tvf")
            .arg(&file)
            .arg("--numeric-owner")
            .output()
            .unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listing = String::from_utf8(out.stdout).unwrap();
        let lines: Vec<&str> = listing.lines().collect();
        assert_eq!(lines.len(), 4, "{listing}");
        assert!(
            lines[0].starts_with("drwsr-xr-x 1234/5678") && lines[0].ends_with(" d/"),
            "{listing}"
        );
        assert!(
            lines[1].ends_with(&format!(" {long}")) && lines[1].contains(" 3 "),
            "{listing}"
        );
        assert!(
            lines[2].ends_with(&format!("d/h link to {long}")),
            "{listing}"
        );
        assert!(
            lines[3].contains("4000000/5678") && lines[3].ends_with("d/s -> ../x"),
            "{listing}"
        );
    }
}
