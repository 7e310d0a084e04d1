//! `sifrun sif list|header|info|dump` must print exactly what siftool prints
//! (every golden under golden/internal/app/siftool/testdata), both through
//! the library renderers and through the binary.

use std::fs::{self, File};

use sif::{Image, siftool};
use sifrun_tests::*;

fn open(name: &str) -> Image<File> {
    Image::open(File::open(image(name)).unwrap()).unwrap()
}

fn assert_same(what: &str, got: &[u8], want: &[u8]) {
    assert!(
        got == want,
        "{what} differs\n--- got\n{}\n--- want\n{}",
        String::from_utf8_lossy(got),
        String::from_utf8_lossy(want)
    );
}

#[test]
fn list_and_header_goldens() {
    let mut n = 0;
    for (file, golden) in LIST_AND_HEADER {
        let img = open(file);
        let list = fs::read(golden_app("List", golden)).unwrap();
        let header = fs::read(golden_app("Header", golden)).unwrap();
        assert_same(
            &format!("list {file}"),
            siftool::list(&img).as_bytes(),
            &list,
        );
        assert_same(
            &format!("header {file}"),
            siftool::header(img.header()).as_bytes(),
            &header,
        );
        let path = image(file);
        let path = path.to_str().unwrap();
        assert_same(
            &format!("sifrun sif list {file}"),
            &ok(sifrun(&["sif", "list", path])),
            &list,
        );
        assert_same(
            &format!("sifrun sif header {file}"),
            &ok(sifrun(&["sif", "header", path])),
            &header,
        );
        n += 2;
    }
    assert_eq!(n, 38);
}

#[test]
fn info_goldens() {
    for (golden, id, file) in INFO {
        let img = open(file);
        let want = fs::read(golden_app("Info", golden)).unwrap();
        let d = img.descriptor(*id).unwrap();
        assert_same(
            &format!("info {id} {file}"),
            siftool::info(d).as_bytes(),
            &want,
        );
        let path = image(file);
        let out = ok(sifrun(&[
            "sif",
            "info",
            &id.to_string(),
            path.to_str().unwrap(),
        ]));
        assert_same(&format!("sifrun sif info {id} {file}"), &out, &want);
    }
    assert_eq!(INFO.len(), 10);
}

#[test]
fn dump_goldens() {
    for (golden, id, file) in DUMP {
        let want = fs::read(golden_app("Dump", golden)).unwrap();
        let path = image(file);
        let out = ok(sifrun(&[
            "sif",
            "dump",
            &id.to_string(),
            path.to_str().unwrap(),
        ]));
        assert_same(&format!("sifrun sif dump {id} {file}"), &out, &want);
    }
}

#[test]
fn every_corpus_image_opens_and_walks() {
    let images = all_images();
    assert!(images.len() >= 21, "corpus incomplete: {}", images.len());
    for path in images {
        let img = Image::open(File::open(&path).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for d in img.descriptors() {
            let data = img.read_object(d).unwrap();
            assert_eq!(data.len() as u64, d.size());
            let _ = siftool::info(d);
        }
    }
}

#[test]
fn listing_a_4_gib_image_reads_only_its_descriptors() {
    // Memory, not time, is asserted here; timing lives in bench/ (sif-parse).
    if !have("time") && !std::path::Path::new("/usr/bin/time").exists() {
        assert!(
            std::env::var_os("SIFRUN_REQUIRE_PEERS").is_none(),
            "/usr/bin/time is required"
        );
        return;
    }
    use sif::write::{self, CreateOptions, Metadata, ObjectInput};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.sif");
    let file = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    let opts = CreateOptions::default();
    let offset = write::first_object_offset(&opts, sif::DataType::PARTITION, None).unwrap();
    file.set_len(offset + (4u64 << 30)).unwrap();
    let input = ObjectInput::in_place(sif::DataType::PARTITION, 4 << 30).with_metadata(
        Metadata::Partition {
            fs_type: sif::FsType::SQUASHFS,
            part_type: sif::PartType::PRIMARY_SYSTEM,
            arch: sif::Arch::host(),
        },
    );
    write::create(file, &opts, vec![input]).unwrap();
    let out = std::process::Command::new("/usr/bin/time")
        .args(["-f", "%M"])
        .arg(sifrun_bin())
        .args(["sif", "list", path.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .contains(&format!("|{offset}-{}", offset + (4u64 << 30)))
    );
    let rss_kib: u64 = String::from_utf8_lossy(&out.stderr)
        .trim()
        .lines()
        .last()
        .unwrap()
        .parse()
        .unwrap();
    assert!(rss_kib < 20 * 1024, "sifrun sif list used {rss_kib} KiB");
}
