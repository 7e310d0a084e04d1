//! The writer must produce the same bytes as sylabs/sif v2 for every writer
//! golden in the corpus (golden/pkg/sif/testdata).

// Case tables are tuples of (golden name, image, inputs, operation arguments).
#![allow(clippy::type_complexity)]

use std::fs::{self, File};
use std::io::Read;
use std::path::PathBuf;

use sif::header::{ZERO_TIME, parse_uuid};
use sif::write::{self, CreateOptions, DeleteOptions, Metadata, ObjectInput};
use sif::{Arch, DataType, Error, FsType, Image, PartType};

const T2000: i64 = 946_702_800;
const ID: &str = "de170c43-36ab-44a8-bca9-1ea1a070a274";

fn golden(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/corpus/sylabs-sif/golden/pkg/sif/testdata")
        .join(format!("{name}.golden"));
    fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// An object to put into a test image.
#[derive(Clone)]
struct Obj {
    dt: DataType,
    data: Vec<u8>,
    metadata: Metadata,
    alignment: Option<u64>,
}

fn generic(data: &[u8]) -> Obj {
    Obj {
        dt: DataType::GENERIC,
        data: data.to_vec(),
        metadata: Metadata::None,
        alignment: None,
    }
}

fn oci_blob(data: &[u8]) -> Obj {
    Obj {
        dt: DataType::OCI_BLOB,
        ..generic(data)
    }
}

fn partition(data: &[u8], fs: FsType, pt: PartType, arch: &str) -> Obj {
    Obj {
        dt: DataType::PARTITION,
        data: data.to_vec(),
        metadata: Metadata::Partition {
            fs_type: fs,
            part_type: pt,
            arch: Arch::from_go_name(arch).unwrap(),
        },
        alignment: None,
    }
}

fn aligned(mut o: Obj, a: u64) -> Obj {
    o.alignment = Some(a);
    o
}

fn squash_prim(data: &[u8]) -> Obj {
    partition(data, FsType::SQUASHFS, PartType::PRIMARY_SYSTEM, "386")
}

struct Case {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Case {
    fn bytes(&self) -> Vec<u8> {
        fs::read(&self.path).unwrap()
    }

    fn image(&self) -> Image<File> {
        let f = File::options()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        Image::open(f).unwrap()
    }
}

fn with_input<T>(o: &Obj, f: impl FnOnce(ObjectInput<'_>) -> T) -> T {
    let mut r: &[u8] = &o.data;
    let mut input =
        ObjectInput::new(o.dt, &mut r as &mut dyn Read).with_metadata(o.metadata.clone());
    input.alignment = o.alignment;
    f(input)
}

fn create(opts: CreateOptions, objs: &[Obj]) -> Result<Case, Error> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("image.sif");
    let file = File::options()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let mut readers: Vec<&[u8]> = objs.iter().map(|o| o.data.as_slice()).collect();
    let inputs = objs
        .iter()
        .zip(readers.iter_mut())
        .map(|(o, r)| {
            let mut input =
                ObjectInput::new(o.dt, r as &mut dyn Read).with_metadata(o.metadata.clone());
            input.alignment = o.alignment;
            input
        })
        .collect();
    write::create(file, &opts, inputs)?;
    Ok(Case { _dir: dir, path })
}

fn det() -> CreateOptions {
    CreateOptions::deterministic()
}

fn with_id_and_time() -> CreateOptions {
    CreateOptions {
        id: parse_uuid(ID),
        time: Some(T2000),
        ..CreateOptions::default()
    }
}

fn assert_golden(case: &Case, name: &str) {
    let want = golden(name);
    let got = case.bytes();
    assert_eq!(got.len(), want.len(), "{name}: length");
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!(
            "{name}: first difference at byte {i}: got {:#04x}, want {:#04x}",
            got[i], want[i]
        );
    }
    // Every golden must also read back.
    case.image();
}

#[test]
fn create_container() {
    let two = [generic(&[0xfa, 0xce]), squash_prim(&[0xfe, 0xed])];
    let cases: Vec<(&str, CreateOptions, Vec<Obj>)> = vec![
        ("Empty", det(), vec![]),
        ("EmptyCloseOnUnload", det(), vec![]),
        (
            "EmptyDescriptorLimitedCapacity",
            CreateOptions {
                descriptor_capacity: 1,
                ..det()
            },
            vec![],
        ),
        (
            "EmptyLaunchScript",
            CreateOptions {
                launch_script: "#!/usr/bin/env launch-script\n".into(),
                ..det()
            },
            vec![],
        ),
        (
            "EmptyWithID",
            CreateOptions {
                id: parse_uuid(ID),
                ..det()
            },
            vec![],
        ),
        (
            "EmptyWithTime",
            CreateOptions {
                time: Some(T2000),
                ..det()
            },
            vec![],
        ),
        ("OneDescriptor", det(), vec![generic(&[0xfa, 0xce])]),
        ("TwoDescriptors", det(), two.to_vec()),
        (
            "TwoDescriptorsNotAligned",
            det(),
            two.iter().cloned().map(|o| aligned(o, 0)).collect(),
        ),
        (
            "TwoDescriptorsAligned",
            det(),
            two.iter().cloned().map(|o| aligned(o, 4)).collect(),
        ),
    ];
    for (name, opts, objs) in cases {
        let case = create(opts, &objs).unwrap();
        assert_golden(&case, &format!("TestCreateContainer/{name}"));
        if !name.starts_with("EmptyW")
            && !name.starts_with("EmptyL")
            && name != "EmptyCloseOnUnload"
        {
            assert_golden(&case, &format!("TestCreateContainerAtPath/{name}"));
        }
    }
}

#[test]
fn create_rejects_bad_options() {
    let too_long = CreateOptions {
        launch_script: "#!/usr/bin/env this-is-thirty-two".into(),
        ..det()
    };
    assert!(matches!(create(too_long, &[]), Err(Error::TooLarge { .. })));
    let no_room = CreateOptions {
        descriptor_capacity: 0,
        ..det()
    };
    assert!(matches!(
        create(no_room, &[generic(b"x")]),
        Err(Error::InsufficientCapacity { .. })
    ));
    let huge = CreateOptions {
        descriptor_capacity: u32::MAX as i64,
        ..det()
    };
    assert!(matches!(create(huge, &[]), Err(Error::Invalid { .. })));
}

#[test]
fn add_object() {
    let cases: Vec<(&str, CreateOptions, Vec<Obj>, Obj, Option<i64>)> = vec![
        (
            "Deterministic",
            with_id_and_time(),
            vec![],
            generic(&[0xfa, 0xce]),
            Some(ZERO_TIME),
        ),
        (
            "WithTime",
            det(),
            vec![],
            generic(&[0xfa, 0xce]),
            Some(T2000),
        ),
        ("Empty", det(), vec![], generic(&[0xfa, 0xce]), None),
        (
            "EmptyNotAligned",
            det(),
            vec![],
            aligned(generic(&[0xfa, 0xce]), 0),
            None,
        ),
        (
            "EmptyAligned",
            det(),
            vec![],
            aligned(generic(&[0xfa, 0xce]), 128),
            None,
        ),
        (
            "NotEmpty",
            det(),
            vec![generic(&[0xfa, 0xce])],
            squash_prim(&[0xfe, 0xed]),
            None,
        ),
        (
            "NotEmptyNotAligned",
            det(),
            vec![generic(&[0xfa, 0xce])],
            aligned(squash_prim(&[0xfe, 0xed]), 0),
            None,
        ),
        (
            "NotEmptyAligned",
            det(),
            vec![generic(&[0xfa, 0xce])],
            aligned(squash_prim(&[0xfe, 0xed]), 128),
            None,
        ),
    ];
    for (name, opts, initial, obj, time) in cases {
        let case = create(opts, &initial).unwrap();
        let mut image = case.image();
        let id = with_input(&obj, |input| image.add_object(input, time)).unwrap();
        assert_eq!(id, initial.len() as u32 + 1);
        assert_golden(&case, &format!("TestAddObject/{name}"));
    }
}

#[test]
fn add_object_errors_change_nothing() {
    let case = create(
        CreateOptions {
            descriptor_capacity: 0,
            ..det()
        },
        &[],
    )
    .unwrap();
    let err = with_input(&generic(&[0xfe, 0xed]), |i| {
        case.image().add_object(i, None)
    });
    assert!(matches!(
        err,
        Err(Error::InsufficientCapacity { capacity: 0 })
    ));
    assert_golden(&case, "TestAddObject/ErrInsufficientCapacity");

    let case = create(det(), &[squash_prim(&[0xfa, 0xce])]).unwrap();
    let second = partition(
        &[0xfe, 0xed],
        FsType::SQUASHFS,
        PartType::PRIMARY_SYSTEM,
        "amd64",
    );
    let err = with_input(&second, |i| case.image().add_object(i, None));
    assert!(matches!(err, Err(Error::PrimaryPartitionExists { id: 1 })));
    assert_golden(&case, "TestAddObject/ErrPrimaryPartition");
}

#[test]
fn delete_object() {
    let two = vec![generic(&[0xfa, 0xce]), generic(&[0xfe, 0xed])];
    let del = |zero, compact| DeleteOptions {
        zero,
        compact,
        time: None,
    };
    let cases: Vec<(&str, CreateOptions, Vec<Obj>, Vec<u32>, DeleteOptions)> = vec![
        ("Compact", det(), two.clone(), vec![1, 2], del(false, true)),
        ("OneZero", det(), two.clone(), vec![1], del(true, false)),
        ("OneCompact", det(), two.clone(), vec![1], del(false, true)),
        (
            "OneZeroCompact",
            det(),
            two.clone(),
            vec![1],
            del(true, true),
        ),
        ("TwoZero", det(), two.clone(), vec![2], del(true, false)),
        ("TwoCompact", det(), two.clone(), vec![2], del(false, true)),
        (
            "TwoZeroCompact",
            det(),
            two.clone(),
            vec![2],
            del(true, true),
        ),
        (
            "Deterministic",
            with_id_and_time(),
            vec![generic(&[0xfa, 0xce])],
            vec![1],
            DeleteOptions {
                time: Some(ZERO_TIME),
                ..del(false, false)
            },
        ),
        (
            "WithTime",
            det(),
            vec![generic(&[0xfa, 0xce])],
            vec![1],
            DeleteOptions {
                time: Some(T2000),
                ..del(false, false)
            },
        ),
        (
            "PrimaryPartition",
            det(),
            vec![squash_prim(&[0xfa, 0xce])],
            vec![1],
            del(false, false),
        ),
    ];
    for (name, opts, objs, ids, dopts) in cases {
        let case = create(opts, &objs).unwrap();
        let mut image = case.image();
        for id in ids {
            image.delete_object(id, dopts).unwrap();
        }
        assert_golden(&case, &format!("TestDeleteObject/{name}"));
    }

    let case = create(det(), &[]).unwrap();
    assert!(matches!(
        case.image().delete_object(1, del(false, false)),
        Err(Error::ObjectNotFound { id: 1 })
    ));
    assert_golden(&case, "TestDeleteObject/ErrObjectNotFound");
}

#[test]
fn delete_objects_by_type() {
    let two = vec![generic(&[0xfa, 0xce]), generic(&[0xfe, 0xed])];
    for (name, objs, compact) in [
        ("DataType", two.clone(), false),
        ("DataTypeCompact", two.clone(), true),
        (
            "PrimaryPartitionCompact",
            vec![squash_prim(&[0xfa, 0xce])],
            true,
        ),
    ] {
        let case = create(det(), &objs).unwrap();
        let mut image = case.image();
        let ids: Vec<u32> = image.descriptors().iter().map(|d| d.id()).collect();
        for id in ids {
            let opts = DeleteOptions {
                compact,
                ..DeleteOptions::default()
            };
            image.delete_object(id, opts).unwrap();
        }
        assert_golden(&case, &format!("TestDeleteObjects/{name}"));
    }
    let case = create(det(), &two).unwrap();
    assert_golden(&case, "TestDeleteObjects/NilSelectFunc");
}

#[test]
fn delete_then_add_reuses_the_id_and_the_space() {
    for (name, zero, compact) in [
        ("Compact", false, true),
        ("NoCompact", false, false),
        ("Zero", true, false),
        ("ZeroCompact", true, true),
    ] {
        let case = create(det(), &[generic(b"abc"), generic(b"def")]).unwrap();
        let mut image = case.image();
        image
            .delete_object(
                2,
                DeleteOptions {
                    zero,
                    compact,
                    time: None,
                },
            )
            .unwrap();
        let id = with_input(&generic(b"ghi"), |i| image.add_object(i, None)).unwrap();
        assert_eq!(id, 2);
        assert_golden(&case, &format!("TestDeleteObjectAndAddObject/{name}"));
    }
}

#[test]
fn set_primary_partition() {
    let raw = |data: &[u8], pt, arch| partition(data, FsType::RAW, pt, arch);
    let cases: Vec<(&str, CreateOptions, Vec<Obj>, u32, Option<i64>)> = vec![
        (
            "Deterministic",
            with_id_and_time(),
            vec![raw(&[0xfa, 0xce], PartType::SYSTEM, "386")],
            1,
            Some(ZERO_TIME),
        ),
        (
            "WithTime",
            det(),
            vec![
                raw(&[0xfa, 0xce], PartType::PRIMARY_SYSTEM, "386"),
                raw(&[0xfe, 0xed], PartType::SYSTEM, "amd64"),
            ],
            2,
            Some(T2000),
        ),
        (
            "One",
            det(),
            vec![raw(&[0xfa, 0xce], PartType::SYSTEM, "386")],
            1,
            None,
        ),
        (
            "Two",
            det(),
            vec![
                raw(&[0xfa, 0xce], PartType::PRIMARY_SYSTEM, "386"),
                raw(&[0xfe, 0xed], PartType::SYSTEM, "amd64"),
            ],
            2,
            None,
        ),
    ];
    for (name, opts, objs, id, time) in cases {
        let case = create(opts, &objs).unwrap();
        case.image().set_primary_partition(id, time).unwrap();
        assert_golden(&case, &format!("TestSetPrimPart/{name}"));
        assert_eq!(case.image().primary_partition().unwrap().id(), id);
    }
    let case = create(det(), &[]).unwrap();
    assert!(matches!(
        case.image().set_primary_partition(1, None),
        Err(Error::ObjectNotFound { id: 1 })
    ));
    assert_golden(&case, "TestSetPrimPart/ErrObjectNotFound");

    let case = create(det(), &[generic(b"x"), raw(b"y", PartType::DATA, "386")]).unwrap();
    assert!(matches!(
        case.image().set_primary_partition(1, None),
        Err(Error::NotAPartition { id: 1 })
    ));
    assert!(matches!(
        case.image().set_primary_partition(2, None),
        Err(Error::NotASystemPartition { id: 2, .. })
    ));
}

#[test]
fn set_metadata() {
    let empty_digest = Metadata::Raw(
        b"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855".to_vec(),
    );
    let cases: Vec<(&str, CreateOptions, Vec<Obj>, u32, Option<i64>)> = vec![
        (
            "Deterministic",
            with_id_and_time(),
            vec![oci_blob(&[0xfa, 0xce])],
            1,
            Some(ZERO_TIME),
        ),
        (
            "WithTime",
            det(),
            vec![oci_blob(&[0xfa, 0xce])],
            1,
            Some(T2000),
        ),
        ("One", det(), vec![oci_blob(&[0xfa, 0xce])], 1, None),
        (
            "Two",
            det(),
            vec![oci_blob(&[0xfa, 0xce]), oci_blob(&[0xfe, 0xed])],
            2,
            None,
        ),
    ];
    for (name, opts, objs, id, time) in cases {
        let case = create(opts, &objs).unwrap();
        case.image().set_metadata(id, &empty_digest, time).unwrap();
        assert_golden(&case, &format!("TestSetMetadata/{name}"));
    }
    let case = create(det(), &[]).unwrap();
    assert!(matches!(
        case.image().set_metadata(1, &empty_digest, None),
        Err(Error::ObjectNotFound { id: 1 })
    ));
    assert_golden(&case, "TestSetMetadata/ErrObjectNotFound");
}

#[test]
fn oci_digests_are_computed_while_writing() {
    let case = create(det(), &[oci_blob(&[0xfa, 0xce])]).unwrap();
    let image = case.image();
    assert_eq!(
        image.descriptor(1).unwrap().oci_digest().unwrap(),
        "sha256:44d2a93d04cbb1acf5406dcc6a81a439d2cf17a79f22a19d094dcb78dc852f80"
    );
}
