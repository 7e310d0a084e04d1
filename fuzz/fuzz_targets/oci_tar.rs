//! `oci::tar`: arbitrary bytes never panic the reader; every entry's data
//! lies inside the input and reads back at its announced size.

#![no_main]

use std::io::Read;

use libfuzzer_sys::fuzz_target;
use oci::tar::{Kind, Reader};

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    while let Ok(Some(e)) = r.next_entry() {
        assert!(e.header_offset < e.data_offset && e.data_offset <= data.len() as u64);
        if e.kind != Kind::File {
            assert_eq!(e.size, 0);
        }
        let mut body = Vec::new();
        match (&mut r).take(1 << 20).read_to_end(&mut body) {
            Ok(n) => {
                assert!(n as u64 <= e.size);
                assert!(e.data_offset + n as u64 <= data.len() as u64);
            }
            Err(_) => break,
        }
    }
});
