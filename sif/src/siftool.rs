//! Renders images exactly as `siftool list|header|info` prints them.
//!
//! Column widths come from a small re-implementation of the elastic tab
//! stops siftool uses, so that output is byte-identical with its goldens.

use std::fmt::Write as _;

use crate::descriptor::{Descriptor, Link};
use crate::header::{Header, ZERO_TIME};
use crate::image::Image;
use crate::types::DataType;

const RULE: &str = "------------------------------------------------------------------------------";

/// `siftool list`: one line per object.
pub fn list<R>(image: &Image<R>) -> String {
    let mut out = String::new();
    out.push_str(RULE);
    out.push('\n');
    out.push_str("ID   |GROUP   |LINK    |SIF POSITION (start-end)  |TYPE\n");
    out.push_str(RULE);
    out.push('\n');
    for d in image.descriptors() {
        let _ = write!(out, "{:<4} ", d.id());
        match d.group_id() {
            0 => {
                let _ = write!(out, "|{:<7} ", "NONE");
            }
            g => {
                let _ = write!(out, "|{g:<7} ");
            }
        }
        match d.link() {
            Link::None => {
                let _ = write!(out, "|{:<7} ", "NONE");
            }
            Link::Group(g) => {
                let _ = write!(out, "|{g:<3} (G) ");
            }
            Link::Object(id) => {
                let _ = write!(out, "|{id:<7} ");
            }
        }
        let position = format!("|{}-{} ", d.offset(), d.offset() + d.size());
        let _ = write!(out, "{position:<26} ");
        let _ = writeln!(out, "|{}", type_summary(d));
    }
    out
}

/// The TYPE column: the data type and, for typed objects, their metadata.
pub fn type_summary(d: &Descriptor) -> String {
    let dt = d.data_type();
    match dt {
        DataType::PARTITION => match d.partition() {
            Ok(p) => format!("{dt} ({}/{}/{})", p.fs_type, p.part_type, p.arch),
            Err(_) => dt.to_string(),
        },
        DataType::SIGNATURE => match d.signature() {
            Ok(s) => format!("{dt} ({})", s.hash_type),
            Err(_) => format!("{dt} (unknown hash)"),
        },
        DataType::CRYPTO_MESSAGE => match d.crypto_message() {
            Ok((f, m)) => format!("{dt} ({f}/{m})"),
            Err(_) => dt.to_string(),
        },
        DataType::SBOM => match d.sbom_format() {
            Ok(f) => format!("{dt} ({f})"),
            Err(_) => dt.to_string(),
        },
        _ => dt.to_string(),
    }
}

/// `siftool header`: the global header, fields that are unset left out.
pub fn header(h: &Header) -> String {
    let mut rows: Vec<(String, String)> = Vec::new();
    let launch = h.launch_script();
    if !launch.is_empty() {
        rows.push((
            "Launch Script:".into(),
            launch.strip_suffix('\n').unwrap_or(&launch).to_owned(),
        ));
    }
    rows.push(("Version:".into(), h.version_string()));
    if !h.arch.is_unknown() {
        rows.push(("Primary Architecture:".into(), h.arch.to_string()));
    }
    if h.id != [0; 16] {
        rows.push(("ID:".into(), h.id_string()));
    }
    if h.created_at != ZERO_TIME {
        rows.push(("Created At:".into(), go_time(h.created_at)));
    }
    if h.modified_at != ZERO_TIME {
        rows.push(("Modified At:".into(), go_time(h.modified_at)));
    }
    rows.push(("Descriptors Free:".into(), h.descriptors_free.to_string()));
    rows.push(("Descriptors Total:".into(), h.descriptors_total.to_string()));
    rows.push((
        "Descriptors Offset:".into(),
        h.descriptors_offset.to_string(),
    ));
    rows.push((
        "Descriptors Size:".into(),
        readable_size(h.descriptors_size),
    ));
    rows.push(("Data Offset:".into(), h.data_offset.to_string()));
    rows.push(("Data Size:".into(), readable_size(h.data_size)));
    align(&rows, "", 1)
}

/// `siftool info`: every field of one descriptor.
pub fn info(d: &Descriptor) -> String {
    let mut rows: Vec<(String, String)> = vec![
        ("Data Type:".into(), d.data_type().to_string()),
        ("ID:".into(), d.id().to_string()),
        (
            "Group ID:".into(),
            match d.group_id() {
                0 => "NONE".into(),
                g => g.to_string(),
            },
        ),
        (
            "Linked ID:".into(),
            match d.link() {
                Link::None => "NONE".into(),
                Link::Group(g) => format!("{g} (G)"),
                Link::Object(id) => id.to_string(),
            },
        ),
        ("Offset:".into(), d.offset().to_string()),
        ("Size:".into(), d.size().to_string()),
    ];
    if d.created_at() != ZERO_TIME {
        rows.push(("Created At:".into(), go_time(d.created_at())));
    }
    if d.modified_at() != ZERO_TIME {
        rows.push(("Modified At:".into(), go_time(d.modified_at())));
    }
    let name = d.name();
    if !name.is_empty() {
        rows.push(("Name:".into(), name));
    }
    match d.data_type() {
        DataType::PARTITION => {
            if let Ok(p) = d.partition() {
                rows.push(("Filesystem Type:".into(), p.fs_type.to_string()));
                rows.push(("Partition Type:".into(), p.part_type.to_string()));
                rows.push(("Architecture:".into(), p.arch.to_string()));
            }
        }
        DataType::SIGNATURE => match d.signature() {
            Ok(s) => {
                rows.push(("Hash Type:".into(), s.hash_type.to_string()));
                if let Some(fp) = s.fingerprint {
                    rows.push(("Entity:".into(), hex_upper(&fp)));
                }
            }
            Err(_) => rows.push(("Hash Type:".into(), "unknown".into())),
        },
        DataType::CRYPTO_MESSAGE => {
            if let Ok((f, m)) = d.crypto_message() {
                rows.push(("Format Type:".into(), f.to_string()));
                rows.push(("Message Type:".into(), m.to_string()));
            }
        }
        DataType::SBOM => {
            if let Ok(f) = d.sbom_format() {
                rows.push(("Format:".into(), f.to_string()));
            }
        }
        DataType::OCI_BLOB | DataType::OCI_ROOT_INDEX => {
            let digest = d.oci_digest().unwrap_or_else(|_| "invalid".into());
            rows.push(("Digest:".into(), digest));
        }
        _ => {}
    }
    align(&rows, "", 2)
        .lines()
        .map(|l| format!("{}{l}\n", " ".repeat(2)))
        .collect()
}

/// Uppercase hex, as Go's `%X` prints byte slices.
pub fn hex_upper(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

/// Two elastic columns: the label column is as wide as its widest cell plus `padding`.
fn align(rows: &[(String, String)], indent: &str, padding: usize) -> String {
    let width = rows
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0)
        + padding;
    let mut out = String::new();
    for (label, value) in rows {
        let pad = width - label.chars().count();
        let _ = writeln!(out, "{indent}{label}{}{value}", " ".repeat(pad));
    }
    out
}

/// A size the way siftool prints it: bytes below 1 KiB, else rounded binary units.
pub fn readable_size(size: i64) -> String {
    if -1024 < size && size < 1024 {
        return format!("{size} B");
    }
    const UNITS: &[u8] = b"KMGTPE";
    let mut div: u64 = 1024;
    let mut exp = 0;
    let mut n = size / 1024;
    while n <= -1024 || n >= 1024 {
        div *= 1024;
        exp += 1;
        n /= 1024;
    }
    // Go rounds half away from zero, as f64::round does.
    let value = (size as f64 / div as f64).round();
    format!("{value:.0} {}iB", UNITS[exp] as char)
}

/// A Unix time the way Go prints `time.Time.UTC()`: `2006-01-02 15:04:05 +0000 UTC`.
pub fn go_time(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let year = if y < 0 {
        format!("-{:04}", -y)
    } else {
        format!("{y:04}")
    };
    format!(
        "{year}-{m:02}-{d:02} {:02}:{:02}:{:02} +0000 UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Proleptic Gregorian date of a day count since 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_match_siftool() {
        assert_eq!(readable_size(0), "0 B");
        assert_eq!(readable_size(1023), "1023 B");
        assert_eq!(readable_size(28080), "27 KiB");
        assert_eq!(readable_size(9 * 1024 + 100), "9 KiB");
        assert_eq!(readable_size(271_000), "265 KiB");
        assert_eq!(readable_size(1536), "2 KiB");
        assert_eq!(readable_size(4 << 30), "4 GiB");
        assert_eq!(readable_size(i64::MAX), "8 EiB");
        assert_eq!(readable_size(i64::MIN), "-8 EiB");
        assert_eq!(readable_size(-2048), "-2 KiB");
    }

    #[test]
    fn times_match_go() {
        assert_eq!(go_time(0), "1970-01-01 00:00:00 +0000 UTC");
        assert_eq!(go_time(1_593_475_316), "2020-06-30 00:01:56 +0000 UTC");
        assert_eq!(go_time(1_590_175_859), "2020-05-22 19:30:59 +0000 UTC");
        assert_eq!(go_time(951_782_400), "2000-02-29 00:00:00 +0000 UTC");
        assert_eq!(go_time(-1), "1969-12-31 23:59:59 +0000 UTC");
        assert_eq!(go_time(ZERO_TIME), "0001-01-01 00:00:00 +0000 UTC");
        // Extremes must not panic.
        let _ = go_time(i64::MIN);
        let _ = go_time(i64::MAX);
    }
}
