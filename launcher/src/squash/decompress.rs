//! Decompression of one block with a fixed output limit.

use std::io;

use super::Compression;

/// Most memory the xz decoder may use for one block: mksquashfs's xz
/// dictionary is at most the block size (1 MiB).
const XZ_MEMLIMIT: u64 = 2 << 20;

/// Decompresses one block, refusing output larger than `limit` (so a
/// hostile image cannot make the server allocate without bound).
pub(crate) fn decompress(
    compression: Compression,
    input: &[u8],
    limit: usize,
) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
    let mut out = Vec::with_capacity(limit);
    match compression {
        Compression::Gzip => {
            flate2::read::ZlibDecoder::new(input)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)?;
        }
        Compression::Xz => {
            // The stream names its dictionary size; refuse one that would
            // make the decoder allocate more than any squashfs needs.
            let stream = liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, 0)
                .map_err(|_| bad("xz decoder"))?;
            liblzma::read::XzDecoder::new_stream(input, stream)
                .take(limit as u64 + 1)
                .read_to_end(&mut out)?;
        }
        Compression::Zstd => {
            out = zstd::bulk::decompress(input, limit).map_err(|_| bad("corrupt zstd block"))?;
        }
        Compression::Lz4 => {
            out.resize(limit, 0);
            let n = lz4_flex::block::decompress_into(input, &mut out)
                .map_err(|_| bad("corrupt lz4 block"))?;
            out.truncate(n);
        }
    }
    if out.len() > limit {
        return Err(bad("block inflates past the block size"));
    }
    Ok(out)
}
