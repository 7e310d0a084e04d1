//! `sifrun inspect`: a human summary of an image. Signatures are listed with
//! the fingerprint their descriptor claims; nothing here verifies them.

use std::fmt::Write as _;

use sif::siftool::{go_time, hex_upper, readable_size};
use sif::{DataType, Descriptor, Image, Link, ReadAt};

use crate::sanitize::printable;

/// Most bytes of a definition file or label object shown.
const TEXT_LIMIT: u64 = 64 * 1024;

fn group(d: &Descriptor) -> String {
    match d.group_id() {
        0 => "no group".into(),
        g => format!("group {g}"),
    }
}

fn size(d: &Descriptor) -> String {
    let s = d.size() as i64;
    if s < 1024 {
        format!("{s} B")
    } else {
        format!("{} ({s} bytes)", readable_size(s))
    }
}

/// Renders the summary of `image`, opened from `path`.
pub fn summary<R: ReadAt>(path: &str, image: &Image<R>) -> String {
    let mut out = String::new();
    header_section(&mut out, path, image);
    source_line(&mut out, image);
    partitions_section(&mut out, image);
    signatures_section(&mut out, image);
    others_section(&mut out, image);
    texts_section(&mut out, image);
    out
}

/// The header: path, size, ID, creation time, architecture, descriptors.
fn header_section<R: ReadAt>(out: &mut String, path: &str, image: &Image<R>) {
    let h = image.header();
    let _ = writeln!(out, "Image:         {}", printable(path));
    let _ = writeln!(
        out,
        "File size:     {}",
        readable_size(image.file_len() as i64)
    );
    let id = if h.id == [0; 16] {
        "(none)".into()
    } else {
        h.id_string()
    };
    let _ = writeln!(out, "ID:            {id}");
    let created = if h.created_at == sif::header::ZERO_TIME {
        "(unset)".into()
    } else {
        go_time(h.created_at)
    };
    let _ = writeln!(out, "Created:       {created}");
    let arch = if h.arch.is_unknown() {
        "(none)".into()
    } else {
        h.arch.to_string()
    };
    let _ = writeln!(out, "Architecture:  {arch}");
    let _ = writeln!(
        out,
        "Objects:       {} of {} descriptors used",
        image.descriptors().len(),
        h.descriptors_total
    );
}

/// `Source:` for an image converted from an OCI image: the source as given
/// and the manifest digest, from the labels object.
fn source_line<R: ReadAt>(out: &mut String, image: &Image<R>) {
    const FROM: &str = "org.label-schema.usage.singularity.deffile.from";
    const DIGEST: &str = "io.sifrun.source.digest";
    for d in image.descriptors_of_type(DataType::LABELS) {
        let mut buf = vec![0u8; d.size().min(TEXT_LIMIT) as usize];
        if image.read_object_at(d, &mut buf, 0).is_err() {
            continue;
        }
        let Ok(labels) = serde_json::from_slice::<std::collections::BTreeMap<String, String>>(&buf)
        else {
            continue;
        };
        if let Some(from) = labels.get(FROM).filter(|_| labels.contains_key(DIGEST)) {
            let _ = writeln!(
                out,
                "Source:        {} ({})",
                printable(from),
                printable(&labels[DIGEST])
            );
            return;
        }
    }
}

/// A section's title, and "(none)" when it lists nothing.
fn section_title(out: &mut String, title: &str, empty: bool) {
    let _ = writeln!(out, "\n{title}:");
    if empty {
        out.push_str("  (none)\n");
    }
}

/// The partitions, the container's root marked.
fn partitions_section<R: ReadAt>(out: &mut String, image: &Image<R>) {
    let partitions: Vec<&Descriptor> = image.descriptors_of_type(DataType::PARTITION).collect();
    section_title(out, "Partitions", partitions.is_empty());
    for d in &partitions {
        match d.partition() {
            Ok(p) => {
                let role = if p.part_type == sif::PartType::PRIMARY_SYSTEM {
                    "primary system (container root)".to_string()
                } else {
                    p.part_type.to_string()
                };
                let _ = writeln!(
                    out,
                    "  [{}] {} {role}, {}, {}, {}",
                    d.id(),
                    p.fs_type,
                    p.arch,
                    size(d),
                    group(d)
                );
            }
            Err(e) => {
                let _ = writeln!(out, "  [{}] unreadable metadata: {e}", d.id());
            }
        }
    }
}

/// The signatures: what each signs, its hash and signer (not verified).
fn signatures_section<R: ReadAt>(out: &mut String, image: &Image<R>) {
    let signatures: Vec<&Descriptor> = image.descriptors_of_type(DataType::SIGNATURE).collect();
    section_title(
        out,
        "Signatures (listed, not verified)",
        signatures.is_empty(),
    );
    for d in &signatures {
        let target = match d.link() {
            Link::Group(g) => format!("signs group {g}"),
            Link::Object(id) => format!("signs object {id}"),
            Link::None => "signs nothing".into(),
        };
        let (hash, signer) = match d.signature() {
            Ok(s) => (
                s.hash_type.to_string(),
                s.fingerprint.map_or_else(
                    || "no OpenPGP fingerprint (DSSE?)".into(),
                    |fp| hex_upper(&fp),
                ),
            ),
            Err(_) => ("unknown hash".into(), "?".into()),
        };
        let _ = writeln!(out, "  [{}] {target}, {hash}, signer {signer}", d.id());
    }
}

/// Every object that is neither a partition nor a signature.
fn others_section<R: ReadAt>(out: &mut String, image: &Image<R>) {
    let others: Vec<&Descriptor> = image
        .descriptors()
        .iter()
        .filter(|d| d.data_type() != DataType::PARTITION && d.data_type() != DataType::SIGNATURE)
        .collect();
    section_title(out, "Other objects", others.is_empty());
    for d in &others {
        let name = d.name();
        let name = if name.is_empty() {
            String::new()
        } else {
            format!(" {:?}", printable(&name))
        };
        let _ = writeln!(
            out,
            "  [{}] {}{name}, {}, {}",
            d.id(),
            sif::siftool::type_summary(d),
            size(d),
            group(d)
        );
    }
}

/// The definition files and labels, as text (the first `TEXT_LIMIT` bytes).
fn texts_section<R: ReadAt>(out: &mut String, image: &Image<R>) {
    for (title, dt) in [
        ("Definition file", DataType::DEFFILE),
        ("Labels", DataType::LABELS),
    ] {
        for d in image.descriptors_of_type(dt) {
            let _ = writeln!(out, "\n{title} (object {}):", d.id());
            let n = d.size().min(TEXT_LIMIT) as usize;
            let mut buf = vec![0u8; n];
            match image.read_object_at(d, &mut buf, 0) {
                Ok(()) => {
                    let text = printable(&String::from_utf8_lossy(&buf));
                    for line in text.lines() {
                        let _ = writeln!(out, "  {line}");
                    }
                    if d.size() > TEXT_LIMIT {
                        let _ = writeln!(out, "  ... ({} more bytes)", d.size() - TEXT_LIMIT);
                    }
                }
                Err(e) => {
                    let _ = writeln!(out, "  unreadable: {e}");
                }
            }
        }
    }
}
