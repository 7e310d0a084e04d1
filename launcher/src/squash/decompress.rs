//! Decompression of one block with a fixed output limit.
//!
//! The gzip and zstd decoders' state is kept per thread and reset for each
//! block: making a zstd context afresh took a twentieth of a block's time
//! (`bench/src/squash_read.rs`), and a step's first exec waits for every
//! block of its program.

use std::cell::RefCell;
use std::io;

use super::Compression;

/// Most memory the xz decoder may use for one block: mksquashfs's xz
/// dictionary is at most the block size (1 MiB).
const XZ_MEMLIMIT: u64 = 2 << 20;

/// The decoders a thread has made so far.
#[derive(Default)]
struct Decoders {
    zlib: Option<flate2::Decompress>,
    zstd: Option<zstd::bulk::Decompressor<'static>>,
}

thread_local! {
    static DECODERS: RefCell<Decoders> = RefCell::new(Decoders::default());
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// Decompresses one block, refusing output larger than `limit` (so a
/// hostile image cannot make the server allocate without bound).
pub(crate) fn decompress(
    compression: Compression,
    input: &[u8],
    limit: usize,
) -> io::Result<Vec<u8>> {
    // One byte more than allowed: output that fills it is too large.
    let mut out = Vec::with_capacity(limit + 1);
    decompress_into(compression, input, limit, &mut out)?;
    Ok(out)
}

/// [`decompress`] into `out` (emptied first). With `limit + 1` bytes of
/// room in `out` and the thread's decoder made (a block decompressed on
/// this thread before), gzip, zstd and lz4 allocate nothing.
pub(crate) fn decompress_into(
    compression: Compression,
    input: &[u8],
    limit: usize,
    out: &mut Vec<u8>,
) -> io::Result<()> {
    use std::io::Read;
    out.clear();
    out.reserve(limit + 1);
    match compression {
        Compression::Gzip => DECODERS.with_borrow_mut(|d| inflate(d, input, out))?,
        Compression::Xz => {
            // The stream names its dictionary size; refuse one that would
            // make the decoder allocate more than any squashfs needs.
            let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                .map_err(|_| bad("xz decoder"))?;
            liblzma::read::XzDecoder::new_stream(input, stream)
                .take(limit as u64 + 1)
                .read_to_end(out)?;
        }
        Compression::Zstd => DECODERS
            .with_borrow_mut(|d| {
                let z = match &mut d.zstd {
                    Some(z) => z,
                    empty => empty.insert(zstd::bulk::Decompressor::new()?),
                };
                // Writes at most the vector's capacity; a frame that needs more
                // is an error.
                z.decompress_to_buffer(input, out).map_err(|_| {
                    bad("corrupt zstd block, or one that inflates past the block size")
                })
            })
            .map(drop)?,
        Compression::Lz4 => {
            out.resize(limit, 0);
            let n = lz4_flex::block::decompress_into(input, out)
                .map_err(|_| bad("corrupt lz4 block"))?;
            out.truncate(n);
        }
    }
    if out.len() > limit {
        return Err(bad("block inflates past the block size"));
    }
    Ok(())
}

/// A zlib stream (squashfs's "gzip") into `out`, at most its capacity.
fn inflate(d: &mut Decoders, input: &[u8], out: &mut Vec<u8>) -> io::Result<()> {
    let z = d.zlib.get_or_insert_with(|| flate2::Decompress::new(true));
    z.reset(true);
    let status = z
        .decompress_vec(input, out, flate2::FlushDecompress::Finish)
        .map_err(|_| bad("corrupt gzip block"))?;
    match status {
        flate2::Status::StreamEnd => Ok(()),
        // Out of room: the block is larger than allowed (checked by the
        // caller); else the stream ended early.
        _ if out.len() == out.capacity() => Ok(()),
        _ => Err(bad("truncated gzip block")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// The same thread's decoder serves block after block, good or bad.
    #[test]
    fn decoders_are_reused_across_blocks_and_errors() {
        let a: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let b = vec![7u8; 4096];
        for c in [Compression::Gzip, Compression::Zstd] {
            let pack = |d: &[u8]| match c {
                Compression::Gzip => zlib(d),
                _ => zstd::bulk::compress(d, 3).unwrap(),
            };
            assert_eq!(decompress(c, &pack(&a), 8192).unwrap(), a, "{c:?}");
            // Too large for the limit, then truncated, then corrupt.
            let err = decompress(c, &pack(&a), 4096).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{c:?}");
            let packed = pack(&a);
            assert!(
                decompress(c, &packed[..packed.len() / 2], 8192).is_err(),
                "{c:?}"
            );
            assert!(decompress(c, &[0xff; 64], 8192).is_err(), "{c:?}");
            // The next block decodes as if nothing had gone before.
            assert_eq!(decompress(c, &pack(&b), 8192).unwrap(), b, "{c:?}");
            assert_eq!(decompress(c, &pack(&a), 5000).unwrap(), a, "{c:?}");
        }
    }
}
