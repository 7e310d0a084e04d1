//! Field decoding of 512-byte tar headers and PAX extended records.

use super::TarError;

pub(super) const BLOCK: usize = 512;

/// The byte range of a header field.
pub(super) struct Field(pub usize, pub usize, pub &'static str);

pub(super) const NAME: Field = Field(0, 100, "name");
pub(super) const MODE: Field = Field(100, 108, "mode");
pub(super) const UID: Field = Field(108, 116, "uid");
pub(super) const GID: Field = Field(116, 124, "gid");
pub(super) const SIZE: Field = Field(124, 136, "size");
pub(super) const MTIME: Field = Field(136, 148, "mtime");
pub(super) const CHKSUM: Field = Field(148, 156, "checksum");
pub(super) const LINKNAME: Field = Field(157, 257, "linkname");
pub(super) const DEVMAJOR: Field = Field(329, 337, "devmajor");
pub(super) const DEVMINOR: Field = Field(337, 345, "devminor");
pub(super) const PREFIX: Field = Field(345, 500, "prefix");

/// The header format, from its magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    /// POSIX ustar (`ustar\0` `00`): has a name prefix.
    Ustar,
    /// GNU (`ustar  \0`): the prefix area holds other fields.
    Gnu,
    /// Unix V7: no magic.
    V7,
}

pub(super) fn format(h: &[u8; BLOCK]) -> Format {
    match &h[257..265] {
        b"ustar\x0000" => Format::Ustar,
        b"ustar  \x00" => Format::Gnu,
        m if m.starts_with(b"ustar\0") => Format::Ustar,
        _ => Format::V7,
    }
}

/// A NUL-terminated string field.
pub(super) fn bytes<'a>(h: &'a [u8; BLOCK], f: &Field) -> &'a [u8] {
    let raw = &h[f.0..f.1];
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    &raw[..end]
}

/// A numeric field: octal padded with NULs/spaces, or GNU base-256.
pub(super) fn number(h: &[u8; BLOCK], f: &Field, offset: u64) -> Result<u64, TarError> {
    let raw = &h[f.0..f.1];
    let bad = || TarError::BadNumber { offset, field: f.2 };
    if raw[0] & 0x80 != 0 {
        if raw[0] == 0xff {
            return Err(TarError::BadNumber { offset, field: f.2 });
        }
        let mut v: u64 = u64::from(raw[0] & 0x7f);
        for &b in &raw[1..] {
            v = v
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(bad)?;
        }
        return Ok(v);
    }
    let text = raw.iter().copied().skip_while(|&b| b == b' ' || b == 0);
    let mut v: u64 = 0;
    let mut seen_end = false;
    for b in text {
        match b {
            b'0'..=b'7' if !seen_end => {
                v = v
                    .checked_mul(8)
                    .and_then(|v| v.checked_add(u64::from(b - b'0')))
                    .ok_or_else(bad)?;
            }
            b' ' | 0 => seen_end = true,
            _ => return Err(bad()),
        }
    }
    Ok(v)
}

/// Whether the stored checksum matches (unsigned or, for old tars, signed
/// byte sum with the checksum field counted as spaces).
pub(super) fn checksum_ok(h: &[u8; BLOCK], offset: u64) -> Result<bool, TarError> {
    let stored = number(h, &CHKSUM, offset).map_err(|_| TarError::Checksum { offset })?;
    let (mut unsigned, mut signed) = (0u64, 0i64);
    for (i, &b) in h.iter().enumerate() {
        let b = if (CHKSUM.0..CHKSUM.1).contains(&i) {
            b' '
        } else {
            b
        };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    Ok(stored == unsigned || i64::try_from(stored).is_ok_and(|s| s == signed))
}

/// One PAX record's effect on the next entry.
#[derive(Debug, Default, Clone)]
pub(super) struct Pax {
    pub path: Option<Vec<u8>>,
    pub linkpath: Option<Vec<u8>>,
    pub size: Option<u64>,
    pub uid: Option<u64>,
    pub gid: Option<u64>,
    pub mtime: Option<i64>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub sparse: bool,
}

fn decimal(v: &[u8], key: &str, offset: u64) -> Result<u64, TarError> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| TarError::Pax {
            offset,
            why: format!("bad {key} value"),
        })
}

/// `[-]SECONDS[.FRACTION]`, floored to whole seconds.
fn seconds(v: &[u8], offset: u64) -> Result<i64, TarError> {
    let bad = || TarError::Pax {
        offset,
        why: "bad mtime value".into(),
    };
    let s = std::str::from_utf8(v).map_err(|_| bad())?;
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    if !frac.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let whole: i64 = int.parse().map_err(|_| bad())?;
    let has_fraction = frac.bytes().any(|b| b != b'0');
    Ok(if int.starts_with('-') && has_fraction {
        whole.saturating_sub(1)
    } else {
        whole
    })
}

/// Parses PAX records `LEN key=value\n` into `pax`.
pub(super) fn parse_pax(mut data: &[u8], pax: &mut Pax, offset: u64) -> Result<(), TarError> {
    let bad = |why: &str| TarError::Pax {
        offset,
        why: why.to_owned(),
    };
    while !data.is_empty() {
        let sp = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| bad("record without length"))?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|&l| l > sp + 1 && l <= data.len())
            .ok_or_else(|| bad("bad record length"))?;
        let record = &data[sp + 1..len];
        data = &data[len..];
        let record = record
            .strip_suffix(b"\n")
            .ok_or_else(|| bad("record not ended by newline"))?;
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| bad("record without '='"))?;
        let key = std::str::from_utf8(&record[..eq]).map_err(|_| bad("key is not UTF-8"))?;
        let value = &record[eq + 1..];
        match key {
            "path" => pax.path = Some(value.to_vec()),
            "linkpath" => pax.linkpath = Some(value.to_vec()),
            "size" => pax.size = Some(decimal(value, key, offset)?),
            "uid" => pax.uid = Some(decimal(value, key, offset)?),
            "gid" => pax.gid = Some(decimal(value, key, offset)?),
            "mtime" => pax.mtime = Some(seconds(value, offset)?),
            k if k.starts_with("GNU.sparse.") => pax.sparse = true,
            k => {
                if let Some(name) = k.strip_prefix("SCHILY.xattr.") {
                    pax.xattrs.push((name.to_owned(), value.to_vec()));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn block_with(f: &Field, v: &[u8]) -> [u8; BLOCK] {
        let mut h = [0u8; BLOCK];
        h[f.0..f.0 + v.len()].copy_from_slice(v);
        h
    }

    #[test]
    fn numbers() {
        assert_eq!(
            number(&block_with(&SIZE, b"00000000012\0"), &SIZE, 0).unwrap(),
            10
        );
        assert_eq!(
            number(&block_with(&SIZE, b"  12 \0"), &SIZE, 0).unwrap(),
            10
        );
        assert_eq!(number(&block_with(&SIZE, b""), &SIZE, 0).unwrap(), 0);
        let mut b256 = [0u8; 12];
        b256[0] = 0x80;
        b256[11] = 1;
        b256[10] = 2;
        assert_eq!(number(&block_with(&UID, &b256[..8]), &UID, 0).unwrap(), 0);
        assert_eq!(number(&block_with(&SIZE, &b256), &SIZE, 0).unwrap(), 0x201);
        let e = number(&block_with(&SIZE, &[0xff; 12]), &SIZE, 7).unwrap_err();
        assert_eq!(e.to_string(), "tar header at offset 7: bad size field");
        assert!(number(&block_with(&SIZE, b"12x"), &SIZE, 0).is_err());
        assert!(number(&block_with(&SIZE, b"1 2"), &SIZE, 0).is_err());
        let mut huge = [0x80u8; 12];
        huge[1] = 0xff;
        assert!(
            number(&block_with(&SIZE, &huge), &SIZE, 0).is_err(),
            "overflow is an error"
        );
    }

    /// A PAX record with its length prefix.
    pub(crate) fn rec(key: &str, value: &str) -> String {
        let body = format!(" {key}={value}\n");
        let mut len = body.len() + 1;
        while (len.to_string() + &body).len() != len {
            len += 1;
        }
        format!("{len}{body}")
    }

    #[test]
    fn pax_records() {
        let mut p = Pax::default();
        let recs = [
            rec("mtime", "1700000000.987654321"),
            rec("path", "a/b/c/d/eeee"),
            rec("SCHILY.xattr.a", "b"),
        ]
        .concat()
            + &rec("size", "100");
        parse_pax(recs.as_bytes(), &mut p, 0).unwrap();
        assert_eq!(p.mtime, Some(1_700_000_000));
        assert_eq!(p.path.as_deref(), Some(&b"a/b/c/d/eeee"[..]));
        assert_eq!(p.size, Some(100));
        assert_eq!(p.xattrs, vec![("a".to_owned(), b"b".to_vec())]);
        let mut p = Pax::default();
        parse_pax(rec("mtime", "-1.5").as_bytes(), &mut p, 0).unwrap();
        assert_eq!(p.mtime, Some(-2));
        for bad in [
            &b"5 a=b\n"[..],
            b"99 a=b\n",
            b"x a=b\n",
            b"7 ab\nc\n",
            b"8 size=x\n",
            b"6 a=bc",
        ] {
            assert!(
                parse_pax(bad, &mut Pax::default(), 3).is_err(),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
