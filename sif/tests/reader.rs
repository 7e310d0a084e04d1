//! Reading the corpus, the canonical integrity bytes, and refusing corrupt files.

use std::fs::{self, File};
use std::path::PathBuf;

use sha2::{Digest, Sha256};
use sif::header::parse_uuid;
use sif::{DataType, Error, Header, Image, Link, PartType, integrity};

fn corpus(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus/sylabs-sif")
        .join(rel)
}

fn open(name: &str) -> Image<File> {
    Image::open(File::open(corpus(&format!("test/images/{name}"))).unwrap()).unwrap()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[test]
fn integrity_bytes_match_sylabs_digests() {
    // golden/pkg/integrity/testdata/TestGetImageMetadata/SHA256.golden is the
    // metadata of one-group.sif: recompute every digest in it.
    let golden = fs::read_to_string(corpus(
        "golden/pkg/integrity/testdata/TestGetImageMetadata/SHA256.golden",
    ))
    .unwrap();
    let meta: serde_json::Value = serde_json::from_str(&golden).unwrap();
    let img = open("one-group.sif");
    let header_digest = hex(&Sha256::digest(integrity::header_bytes(img.header())));
    assert_eq!(meta["header"]["digest"], format!("sha256:{header_digest}"));
    let objects = meta["objects"].as_array().unwrap();
    assert_eq!(objects.len(), img.descriptors().len());
    for (o, d) in objects.iter().zip(img.descriptors()) {
        assert_eq!(o["relativeId"], d.relative_id());
        let dd = hex(&Sha256::digest(integrity::descriptor_bytes(d)));
        assert_eq!(o["descriptorDigest"], format!("sha256:{dd}"));
        let od = hex(
            &integrity::digest_object(&img, d, integrity::metadata::DigestAlg::Sha256)
                .unwrap()
                .value,
        );
        assert_eq!(o["objectDigest"], format!("sha256:{od}"));
    }
}

#[test]
fn header_view_matches_sylabs_source() {
    let want = fs::read(corpus("pkg/integrity/testdata/sources/header.bin")).unwrap();
    let mut raw = [0u8; 128];
    raw[..31].copy_from_slice(b"#!/usr/bin/env run-singularity\n");
    raw[32..42].copy_from_slice(b"SIF_MAGIC\0");
    raw[42..45].copy_from_slice(b"01\0");
    raw[48..64].copy_from_slice(&parse_uuid("b2659d4e-bd50-4ea5-bd17-eec5e54f918e").unwrap());
    raw[64..72].copy_from_slice(&1234i64.to_le_bytes());
    assert_eq!(
        Header::decode(&raw).integrity_bytes().as_slice(),
        want.as_slice()
    );
    let golden = fs::read_to_string(corpus(
        "golden/pkg/integrity/testdata/TestGetHeaderMetadata/SHA256.golden",
    ))
    .unwrap();
    assert!(golden.contains(&hex(&Sha256::digest(&want))));
}

#[test]
fn signed_metadata_in_the_pgp_image_matches_recomputed_digests() {
    // The clear-signed JSON in one-group-signed-pgp.sif covers objects 1 and 2.
    let img = open("one-group-signed-pgp.sif");
    let sig = img.descriptor(3).unwrap();
    assert_eq!(sig.link(), Link::Group(1));
    let info = sig.signature().unwrap();
    assert_eq!(
        hex(&info.fingerprint.unwrap()),
        "12045c8c0b1004d058de4beda20c27ee7ff7ba84"
    );
    let text = String::from_utf8(img.read_object(sig).unwrap()).unwrap();
    let json = text
        .lines()
        .find(|l| l.starts_with("{\"version\""))
        .expect("signed JSON");
    let meta: serde_json::Value = serde_json::from_str(json).unwrap();
    for o in meta["objects"].as_array().unwrap() {
        let rid = o["relativeId"].as_u64().unwrap() as u32;
        let d = img
            .descriptors()
            .iter()
            .find(|d| d.group_id() == 1 && d.relative_id() == rid)
            .unwrap();
        let dd = hex(&Sha256::digest(d.integrity_bytes()));
        assert_eq!(o["descriptorDigest"], format!("sha256:{dd}"));
    }
}

#[test]
fn corpus_semantics() {
    let img = open("two-groups.sif");
    assert_eq!(img.group_ids(), vec![1, 2]);
    assert_eq!(img.primary_partition().unwrap().id(), 2);
    let ext3 = img.descriptor(3).unwrap();
    assert_eq!(ext3.relative_id(), 0, "first object of group 2");
    assert_eq!(img.descriptor(2).unwrap().relative_id(), 1);

    let legacy = open("one-group-signed-legacy.sif");
    assert_eq!(legacy.header().data_offset, 32768);
    assert_eq!(legacy.descriptor(3).unwrap().link(), Link::Object(2));

    let empty = open("empty.sif");
    assert!(empty.descriptors().is_empty());
    assert!(matches!(
        empty.primary_partition(),
        Err(Error::NoPrimaryPartition)
    ));
    assert!(matches!(
        empty.descriptor(1),
        Err(Error::ObjectNotFound { id: 1 })
    ));

    let sbom = open("one-object-sbom.sif");
    assert_eq!(sbom.descriptors()[0].data_type(), DataType::SBOM);
    assert!(sbom.descriptors()[0].partition().is_err());
    assert!(!sbom.descriptors()[0].is_partition_of_type(PartType::PRIMARY_SYSTEM));
}

/// Corrupts a copy of `name` with `f` and returns the error opening it.
fn corrupt(name: &str, f: impl FnOnce(&mut Vec<u8>)) -> Error {
    let mut bytes = fs::read(corpus(&format!("test/images/{name}"))).unwrap();
    f(&mut bytes);
    Image::open(bytes).expect_err("corrupt image must not open")
}

fn put_i64(b: &mut [u8], at: usize, v: i64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn corrupt_headers_name_the_field_and_offset() {
    let e = corrupt("one-group.sif", |b| b.truncate(100));
    assert!(matches!(e, Error::TooShort { len: 100 }), "{e}");
    let e = corrupt("one-group.sif", |b| b[32] = b'X');
    assert!(matches!(e, Error::BadMagic));
    let e = corrupt("one-group.sif", |b| b[43] = b'2');
    assert!(e.to_string().contains("\"02\""), "{e}");
    let cases: &[(usize, i64, &str, u64)] = &[
        (88, -1, "DescriptorsTotal", 88),
        (88, 1 << 40, "DescriptorsTotal", 88),
        (80, 49, "DescriptorsFree", 80),
        (104, 585, "DescriptorsSize", 104),
        (96, 4, "DescriptorsOffset", 96),
        (96, i64::MAX - 10, "DescriptorsOffset", 96),
        (96, 40960, "DescriptorsOffset", 96),
        (112, 1 << 50, "DataOffset", 112),
        (120, -5, "DataSize", 120),
    ];
    for &(at, v, field, offset) in cases {
        let e = corrupt("one-group.sif", |b| put_i64(b, at, v));
        match &e {
            Error::Header {
                field: f,
                offset: o,
                ..
            } => {
                assert_eq!((*f, *o), (field, offset), "{e}");
            }
            other => panic!("{field}: unexpected {other}"),
        }
        assert!(e.to_string().contains(field) && e.to_string().contains(&offset.to_string()));
    }
}

#[test]
fn corrupt_descriptors_name_the_descriptor_field_and_offset() {
    // Descriptor 1 (object 2) starts at 4096 + 585.
    let d1 = 4096 + 585;
    let cases: &[(usize, i64, &str)] = &[
        (d1 + 25, 1 << 40, "Size"),
        (d1 + 25, -1, "Size"),
        (d1 + 17, 100, "Offset"),
        (d1 + 17, i64::MAX, "Size"),
        (d1 + 33, 0, "SizeWithPadding"),
    ];
    for &(at, v, field) in cases {
        let e = corrupt("one-group.sif", |b| put_i64(b, at, v));
        match &e {
            Error::Descriptor {
                index: 1,
                field: f,
                offset,
                ..
            } => {
                assert_eq!(*f, field, "{e}");
                assert!(*offset >= d1 as u64 && *offset < (d1 + 585) as u64, "{e}");
            }
            other => panic!("{field}: unexpected {other}"),
        }
    }
    let e = corrupt("one-group.sif", |b| {
        b[d1 + 5..d1 + 9].copy_from_slice(&1u32.to_le_bytes())
    });
    assert!(e.to_string().contains("also used by descriptor 0"), "{e}");
    let e = corrupt("one-group.sif", |b| {
        b[d1 + 5..d1 + 9].copy_from_slice(&0u32.to_le_bytes())
    });
    assert!(e.to_string().contains("object ID 0"), "{e}");
}

#[test]
fn every_truncation_of_an_image_is_an_error_or_consistent() {
    let bytes = fs::read(corpus("test/images/one-group-signed-pgp.sif")).unwrap();
    for len in (0..bytes.len()).step_by(97) {
        if let Ok(img) = Image::open(bytes[..len].to_vec()) {
            for d in img.descriptors() {
                assert!(d.offset() + d.size() <= len as u64);
                img.read_object(d).unwrap();
            }
        }
    }
}

#[test]
fn multiple_primary_partitions_are_reported() {
    let mut bytes = fs::read(corpus("test/images/one-group.sif")).unwrap();
    // Make object 1 (Raw/System) primary too: partition type at extra+4.
    let at = 4096 + 201 + 4;
    bytes[at..at + 4].copy_from_slice(&2i32.to_le_bytes());
    let img = Image::open(bytes).unwrap();
    assert!(matches!(
        img.primary_partition(),
        Err(Error::MultiplePrimaryPartitions {
            first: 1,
            second: 2
        })
    ));
}

#[test]
fn reads_past_an_object_are_refused() {
    let img = open("one-group.sif");
    let d = img.descriptor(1).unwrap();
    let mut buf = [0u8; 8];
    assert!(img.read_object_at(d, &mut buf, 0).is_err());
    assert!(img.read_object_at(d, &mut buf[..2], u64::MAX - 1).is_err());
    img.read_object_at(d, &mut buf[..4], 0).unwrap();
    assert_eq!(&buf[..4], &[0xfa, 0xce, 0xfe, 0xed]);
}

/// `empty.sif` as a pre-v2 writer leaves it after adding one empty object:
/// data section at 32768, past the end of the 32176-byte file.
fn legacy_with_one_empty_object() -> Vec<u8> {
    let mut b = fs::read(corpus("test/images/empty.sif")).unwrap();
    assert_eq!(b.len(), 32176);
    put_i64(&mut b, 80, 47); // DescriptorsFree
    put_i64(&mut b, 112, 32768); // DataOffset
    put_i64(&mut b, 120, 0); // DataSize
    let d = 4096;
    b[d..d + 4].copy_from_slice(&DataType::GENERIC.0.to_le_bytes());
    b[d + 4] = 1;
    b[d + 5..d + 9].copy_from_slice(&1u32.to_le_bytes());
    b[d + 9..d + 13].copy_from_slice(&0xF000_0001u32.to_le_bytes());
    put_i64(&mut b, d + 17, 32768);
    b
}

#[test]
fn an_image_whose_only_object_is_empty_opens() {
    // Pre-v2 layout: the header's data offset is past the end of the file.
    let img = Image::open(legacy_with_one_empty_object()).unwrap();
    let d = &img.descriptors()[0];
    assert_eq!((d.id(), d.offset(), d.size()), (1, 32768, 0));
    assert!(img.read_object(d).unwrap().is_empty());
    let mut out = Vec::new();
    assert_eq!(img.copy_object(d, &mut out).unwrap(), 0);
    assert!(sif::siftool::list(&img).contains("32768-32768"));

    // v2 layout: an empty partition aligned to 4096, past the end of the
    // file nothing was written to (what `siftool add` of an empty file does).
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("empty-partition.sif");
    let mut nothing: &[u8] = &[];
    let part = sif::ObjectInput::new(DataType::PARTITION, &mut nothing).with_metadata(
        sif::Metadata::Partition {
            fs_type: sif::FsType::SQUASHFS,
            part_type: PartType::PRIMARY_SYSTEM,
            arch: sif::Arch::host(),
        },
    );
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&p)
        .unwrap();
    sif::write::create(file, &sif::CreateOptions::default(), vec![part]).unwrap();
    assert_eq!(fs::metadata(&p).unwrap().len(), 32176);
    let img = Image::open(File::open(&p).unwrap()).unwrap();
    let d = img.primary_partition().unwrap();
    assert_eq!((d.offset(), d.size()), (32768, 0));
    assert!(img.read_object(d).unwrap().is_empty());

    // Still refused: a data section that claims bytes the file lacks, and
    // an empty object outside the data section.
    let mut b = legacy_with_one_empty_object();
    put_i64(&mut b, 120, 10);
    let e = Image::open(b).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Header {
                field: "DataOffset",
                ..
            }
        ),
        "{e}"
    );
    let mut b = legacy_with_one_empty_object();
    put_i64(&mut b, 4096 + 17, 40000);
    let e = Image::open(b).unwrap_err();
    assert!(matches!(e, Error::Descriptor { field: "Size", .. }), "{e}");
}
