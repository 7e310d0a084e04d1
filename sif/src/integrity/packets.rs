//! OpenPGP packets as other implementations write them, normalised before
//! sequoia parses them.
//!
//! Go's OpenPGP libraries (which Singularity and Apptainer use) write
//! signature MPIs whose bit count is the byte length times eight, counting
//! the leading zero bits of the first byte (and older releases even kept
//! leading zero bytes). gpg and go-crypto read such MPIs; sequoia refuses
//! them as malformed, so a key whose self-signatures have them has no valid
//! binding signature and an image signature with them does not parse. The
//! bit count is not covered by any signature (RFC 9580 §5.2.4 hashes the
//! packet body up to the hashed subpackets only), so rewriting it to the
//! number's real length changes nothing a signature protects.

/// Public-key algorithms whose v4 signatures are a sequence of MPIs:
/// RSA (1, 3), DSA (17), ECDSA (19) and the legacy EdDSA (22).
const MPI_SIGNATURE_ALGORITHMS: &[u8] = &[1, 3, 17, 19, 22];

/// The signature packet tag.
const SIGNATURE_TAG: u8 = 2;

/// One packet of a binary packet sequence.
struct Packet<'a> {
    tag: u8,
    /// The whole packet, header included.
    raw: &'a [u8],
    body: &'a [u8],
}

/// Splits `data` into packets; `None` on framing this module does not
/// rewrite (partial or indeterminate lengths, truncation).
fn split_packets(data: &[u8]) -> Option<Vec<Packet<'_>>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let (tag, header_len, body_len) = packet_header(&data[at..])?;
        let end = at.checked_add(header_len)?.checked_add(body_len)?;
        let raw = data.get(at..end)?;
        out.push(Packet {
            tag,
            raw,
            body: &raw[header_len..],
        });
        at = end;
    }
    Some(out)
}

/// (tag, header length, body length) of the packet at the start of `p`.
fn packet_header(p: &[u8]) -> Option<(u8, usize, usize)> {
    let ctb = *p.first()?;
    if ctb & 0x80 == 0 {
        return None;
    }
    if ctb & 0x40 != 0 {
        let tag = ctb & 0x3f;
        let l0 = usize::from(*p.get(1)?);
        return match l0 {
            0..=191 => Some((tag, 2, l0)),
            192..=223 => Some((tag, 3, ((l0 - 192) << 8) + usize::from(*p.get(2)?) + 192)),
            255 => Some((
                tag,
                6,
                u32::from_be_bytes(p.get(2..6)?.try_into().ok()?) as usize,
            )),
            _ => None,
        };
    }
    let tag = (ctb >> 2) & 0xf;
    match ctb & 3 {
        0 => Some((tag, 2, usize::from(*p.get(1)?))),
        1 => Some((
            tag,
            3,
            usize::from(u16::from_be_bytes(p.get(1..3)?.try_into().ok()?)),
        )),
        2 => Some((
            tag,
            5,
            u32::from_be_bytes(p.get(1..5)?.try_into().ok()?) as usize,
        )),
        _ => None,
    }
}

/// The body of a v4 signature with every MPI in its minimal form, or
/// `None` when it has none to change (or is not such a signature).
fn normalize_signature_body(body: &[u8]) -> Option<Vec<u8>> {
    if body.first() != Some(&4) || !MPI_SIGNATURE_ALGORITHMS.contains(body.get(2)?) {
        return None;
    }
    let hashed = usize::from(u16::from_be_bytes(body.get(4..6)?.try_into().ok()?));
    let unhashed_at = 6 + hashed;
    let unhashed = usize::from(u16::from_be_bytes(
        body.get(unhashed_at..unhashed_at + 2)?.try_into().ok()?,
    ));
    // Then the two-byte left 16 bits of the hash, then the MPIs.
    let mpis_at = unhashed_at + 2 + unhashed + 2;
    let mut out = body.get(..mpis_at)?.to_vec();
    let mut at = mpis_at;
    let mut changed = false;
    while at < body.len() {
        let bits = usize::from(u16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?));
        let bytes = body.get(at + 2..at + 2 + bits.div_ceil(8))?;
        let value = &bytes[bytes.iter().take_while(|&&b| b == 0).count()..];
        let real = value
            .first()
            .map_or(0, |&b| value.len() * 8 - b.leading_zeros() as usize);
        changed |= real != bits;
        out.extend_from_slice(&u16::try_from(real).ok()?.to_be_bytes());
        out.extend_from_slice(value);
        at += 2 + bytes.len();
    }
    changed.then_some(out)
}

/// A new-format packet header for `tag` and a body of `len` bytes.
fn new_format_header(tag: u8, len: usize) -> Option<Vec<u8>> {
    let mut h = vec![0xc0 | tag];
    match len {
        0..=191 => h.push(len as u8),
        192..=8383 => {
            let l = len - 192;
            h.extend([(l >> 8) as u8 + 192, l as u8]);
        }
        _ => {
            h.push(255);
            h.extend(u32::try_from(len).ok()?.to_be_bytes());
        }
    }
    Some(h)
}

/// Rewrites the MPIs of every v4 signature packet in the binary packet
/// sequence `data` to their minimal form (see the module documentation).
/// `None` when nothing needs rewriting or the framing is not understood;
/// the caller then parses `data` as it is.
pub(crate) fn normalize_signature_mpis(data: &[u8]) -> Option<Vec<u8>> {
    let packets = split_packets(data)?;
    let mut out = Vec::with_capacity(data.len());
    let mut changed = false;
    for p in packets {
        match (p.tag == SIGNATURE_TAG)
            .then(|| normalize_signature_body(p.body))
            .flatten()
        {
            Some(body) => {
                out.extend(new_format_header(p.tag, body.len())?);
                out.extend(body);
                changed = true;
            }
            None => out.extend_from_slice(p.raw),
        }
    }
    changed.then_some(out)
}

/// The binary packets of `bytes`: each ASCII-armored block decoded in turn,
/// or `bytes` as they are when they are not armored. `None` when an armored
/// block does not decode.
pub(crate) fn dearmor_all(bytes: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;

    use sequoia_openpgp::armor::{Reader, ReaderMode};

    const BEGIN: &[u8] = b"-----BEGIN PGP ";
    let starts: Vec<usize> = (0..bytes.len())
        .filter(|&i| bytes[i..].starts_with(BEGIN) && (i == 0 || bytes[i - 1] == b'\n'))
        .collect();
    let Some(&first) = starts.first() else {
        return Some(bytes.to_vec());
    };
    if bytes[..first].iter().any(|b| !b.is_ascii_whitespace()) {
        // Something before the first armor line: leave it to sequoia.
        return None;
    }
    let mut out = Vec::new();
    for (n, &start) in starts.iter().enumerate() {
        let end = starts.get(n + 1).copied().unwrap_or(bytes.len());
        Reader::from_bytes(&bytes[start..end], ReaderMode::Tolerant(None))
            .read_to_end(&mut out)
            .ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A v4 RSA signature packet (old-format header) whose one MPI is
    /// `mpi` with bit count `bits`.
    fn signature(bits: u16, mpi: &[u8]) -> Vec<u8> {
        let mut body = vec![4, 0x13, 1, 8, 0, 2, 0xaa, 0xbb, 0, 0, 0x12, 0x34];
        body.extend(bits.to_be_bytes());
        body.extend(mpi);
        let mut p = vec![0x88, body.len() as u8];
        p.extend(body);
        p
    }

    #[test]
    fn overstated_bit_counts_and_leading_zero_bytes_are_normalised() {
        // 0x1f has 5 significant bits: 13 in all, not 16.
        let out = normalize_signature_mpis(&signature(16, &[0x1f, 0xff])).unwrap();
        assert_eq!(out[0], 0xc2, "rewritten with a new-format header");
        assert_eq!(&out[2..], &signature(13, &[0x1f, 0xff])[2..]);
        // A leading zero byte is dropped and the length follows.
        let out = normalize_signature_mpis(&signature(24, &[0, 0x1f, 0xff])).unwrap();
        assert_eq!(usize::from(out[1]), out.len() - 2);
        assert_eq!(&out[2..], &signature(13, &[0x1f, 0xff])[2..]);
        // Correct MPIs, and packets of other kinds, are left alone.
        assert_eq!(
            normalize_signature_mpis(&signature(13, &[0x1f, 0xff])),
            None
        );
        let mut user_id = vec![0xb4, 3];
        user_id.extend(b"abc");
        assert_eq!(normalize_signature_mpis(&user_id), None);
        let mut both = user_id.clone();
        both.extend(signature(16, &[0x1f, 0xff]));
        let out = normalize_signature_mpis(&both).unwrap();
        assert_eq!(&out[..5], &user_id[..]);
    }

    #[test]
    fn framing_it_does_not_understand_is_left_to_sequoia() {
        // Truncated MPI, truncated packet, partial body length, not a packet.
        assert_eq!(
            normalize_signature_mpis(&signature(64, &[0x1f, 0xff])),
            None
        );
        assert_eq!(
            normalize_signature_mpis(&signature(16, &[0x1f, 0xff])[..5]),
            None
        );
        assert_eq!(normalize_signature_mpis(&[0xc2, 0xe1, 0, 0]), None);
        assert_eq!(normalize_signature_mpis(b"hello"), None);
    }

    #[test]
    fn every_armored_block_is_decoded() {
        let key = |body: &str| {
            format!(
                "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\n{body}\n-----END PGP PUBLIC KEY BLOCK-----\n"
            )
        };
        let two = format!("{}{}", key("tAJhYg=="), key("tAJjZA=="));
        assert_eq!(
            dearmor_all(two.as_bytes()).unwrap(),
            [0xb4, 2, b'a', b'b', 0xb4, 2, b'c', b'd']
        );
        assert_eq!(dearmor_all(&[0x99, 1, 2]).unwrap(), [0x99, 1, 2]);
        assert_eq!(dearmor_all(b"junk\n-----BEGIN PGP X-----\n"), None);
    }
}
