//! Three real layer tars (PAX, written by Python's `tarfile`: whiteouts,
//! an opaque directory, hard links within and across layers, a link whose
//! target a later layer replaces, a symlinked parent, a directory replaced
//! by a file, a long name with an xattr, a FIFO, an absolute name) read
//! with `oci::tar`, merged with `oci::tree`, and emitted as the converter's
//! pass 2 would: the final listing and contents are the golden.

use std::collections::{BTreeMap, HashMap};
use std::io::Read;

use oci::tar::{Entry, Kind, Reader};
use oci::tree::{Emission, EntryId, Layer, merge};

const LAYERS: [&[u8]; 3] = [
    include_bytes!("../testdata/layers/1.tar"),
    include_bytes!("../testdata/layers/2.tar"),
    include_bytes!("../testdata/layers/3.tar"),
];

/// Pass 1: headers only. Pass 2 data: entry id → content.
fn read_layers() -> (Vec<Layer>, HashMap<EntryId, Vec<u8>>) {
    let mut layers = Vec::new();
    let mut data = HashMap::new();
    for (li, bytes) in LAYERS.iter().enumerate() {
        let mut r = Reader::new(*bytes);
        let mut entries: Vec<Entry> = Vec::new();
        while let Some(e) = r.next_entry().unwrap() {
            let mut body = Vec::new();
            r.read_to_end(&mut body).unwrap();
            assert_eq!(body.len() as u64, e.size);
            data.insert(
                EntryId {
                    layer: li,
                    index: entries.len(),
                },
                body,
            );
            entries.push(e);
        }
        layers.push(Layer {
            name: format!("sha256:layer{}", li + 1),
            entries,
        });
    }
    (layers, data)
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

#[test]
fn three_layers_merge_to_the_expected_image() {
    let (layers, data) = read_layers();
    let tree = merge(&layers).unwrap();
    assert!(tree.warnings().is_empty());
    let get = |id: &EntryId| &layers[id.layer].entries[id.index];
    let mut listing = String::new();
    let mut content: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for e in tree.plan() {
        let line = match &e {
            Emission::Dir {
                path,
                source: Some(s),
                ..
            } => {
                let h = get(s);
                format!("D {} {:o} {}:{}", show(path), h.mode, h.uid, h.gid)
            }
            Emission::Dir {
                path, source: None, ..
            } => format!("D {} implicit", show(path)),
            Emission::Node { path, source } => {
                let h = get(source);
                content.insert(show(path), data[source].clone());
                let extra = match h.kind {
                    Kind::Symlink => format!(
                        " -> {}",
                        String::from_utf8_lossy(h.link.as_deref().unwrap())
                    ),
                    Kind::Fifo => " fifo".into(),
                    _ => format!(" {}B", h.size),
                };
                let xattrs: Vec<&str> = h.xattrs.iter().map(|(k, _)| k.as_str()).collect();
                let xattrs = if xattrs.is_empty() {
                    String::new()
                } else {
                    format!(" xattrs={}", xattrs.join(","))
                };
                format!(
                    "N {} {:o} {}:{}{extra}{xattrs}",
                    show(path),
                    h.mode,
                    h.uid,
                    h.gid
                )
            }
            Emission::HardLink { path, target } => {
                content.insert(show(path), content[&show(target)].clone());
                format!("H {} => {}", show(path), show(target))
            }
        };
        listing += &line;
        listing.push('\n');
    }
    let long = format!("usr/share/{}/{}", "l".repeat(120), "m".repeat(150));
    let want = format!(
        "D / 755 0:0
D abs implicit
D bin 755 0:0
D etc 755 0:0
D home 755 0:0
D home/u 700 1234:1234
D opq 755 0:0
D run 755 0:0
D usr 755 0:0
D usr/lib 755 0:0
D usr/share implicit
D usr/share/{l} implicit
N bin/su 4755 0:0 6B
H bin/su-link => bin/su
N home/u/f 644 1234:1234 5B
S lib 644 0:0 -> usr/lib
N etc/passwd-link 644 0:0 26B
N opq/new 644 0:0 3B
N etc/passwd 644 0:0 28B
N usr/lib/x 644 0:0 13B
N swap 644 0:0 11B
N {long} 644 0:0 5B xattrs=user.t
N run/fifo 600 0:0 fifo
N abs/name 644 0:0 3B
",
        l = "l".repeat(120)
    )
    .replace("\nS lib", "\nN lib");
    assert_eq!(listing, want);
    // The link made in layer 2 keeps the passwd layer 1 had; layer 3's new
    // passwd is a separate file.
    assert_eq!(content["etc/passwd-link"], b"root:x:0:0::/root:/bin/sh\n");
    assert_eq!(content["etc/passwd"], b"root:x:0:0::/root:/bin/bash\n");
    assert_eq!(content["bin/su-link"], b"su v1\n");
    assert_eq!(content["usr/lib/x"], b"x in usr/lib\n");
    for gone in ["gone", "gone/x", "opq/old", "swap/child", "lib/x"] {
        assert!(
            !content.contains_key(gone) && !tree.contains(gone.as_bytes()),
            "{gone} survived"
        );
    }
}
