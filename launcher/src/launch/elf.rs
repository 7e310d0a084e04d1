//! The ELF headers a dynamic program's exec reads first: its interpreter
//! (`PT_INTERP`) and the libraries it needs (`DT_NEEDED`), for
//! [`super::ahead`] to decompress them ahead as well.

/// What an ELF file's headers name for the loader.
#[derive(Debug, Default, PartialEq)]
pub(super) struct ElfDeps {
    /// `PT_INTERP`.
    pub(super) interp: Option<String>,
    /// `DT_NEEDED` names without a `/`.
    pub(super) needed: Vec<String>,
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// One program header of a 64-bit little-endian ELF file.
struct Segment {
    kind: u32,
    offset: u64,
    vaddr: u64,
    filesz: u64,
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Reads up to `len` bytes of a file at `offset` (fewer at its end).
pub(super) type ReadAt<'a> = &'a dyn Fn(u64, u32) -> Option<Vec<u8>>;

/// The interpreter and needed libraries of a 64-bit little-endian ELF
/// file (what the container's programs are on the hosts sifrun serves);
/// nothing for anything else.
pub(super) fn elf_deps(f: ReadAt<'_>) -> ElfDeps {
    elf_segments(f)
        .map(|segs| {
            let text =
                |s: &Segment, len: u32| f(s.offset, len).map(|b| cstr(&b)).unwrap_or_default();
            ElfDeps {
                interp: segs
                    .iter()
                    .find(|s| s.kind == PT_INTERP)
                    .map(|s| text(s, s.filesz.min(4096) as u32))
                    .filter(|i| i.starts_with('/')),
                needed: needed(f, &segs).unwrap_or_default(),
            }
        })
        .unwrap_or_default()
}

fn elf_segments(f: ReadAt<'_>) -> Option<Vec<Segment>> {
    let h = f(0, 64)?;
    // Magic, 64-bit, little-endian.
    if h.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(&h, 32)?, u16_at(&h, 54)?, u16_at(&h, 56)?);
    if phentsize < 56 || phnum > 128 {
        return None;
    }
    let table = f(phoff, u32::from(phentsize) * u32::from(phnum))?;
    (0..usize::from(phnum))
        .map(|i| {
            let p = table.get(i * usize::from(phentsize)..)?;
            Some(Segment {
                kind: u32_at(p, 0)?,
                offset: u64_at(p, 8)?,
                vaddr: u64_at(p, 16)?,
                filesz: u64_at(p, 32)?,
            })
        })
        .collect()
}

/// The `DT_NEEDED` names of the dynamic section.
fn needed(f: ReadAt<'_>, segs: &[Segment]) -> Option<Vec<String>> {
    let dynamic = segs.iter().find(|s| s.kind == PT_DYNAMIC)?;
    let d = f(dynamic.offset, dynamic.filesz.min(64 << 10) as u32)?;
    let entries: Vec<(u64, u64)> = d
        .chunks_exact(16)
        .map_while(|e| Some((u64_at(e, 0)?, u64_at(e, 8)?)))
        .take_while(|&(tag, _)| tag != 0)
        .collect();
    let strtab = entries.iter().find(|&&(t, _)| t == DT_STRTAB)?.1;
    // The string table's address, as a file offset.
    let load = segs.iter().find(|s| {
        s.kind == PT_LOAD && s.vaddr <= strtab && strtab < s.vaddr.saturating_add(s.filesz)
    })?;
    let base = strtab - load.vaddr + load.offset;
    Some(
        entries
            .iter()
            .filter(|&&(t, _)| t == DT_NEEDED)
            .filter_map(|&(_, off)| f(base.checked_add(off)?, 256).map(|b| cstr(&b)))
            .filter(|n| !n.is_empty() && !n.contains('/'))
            .collect(),
    )
}

/// The bytes up to the first NUL, as text.
fn cstr(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A 64-bit little-endian ELF file with a `PT_INTERP` of `interp` and
    /// `DT_NEEDED` entries for `needed`, its string table in a `PT_LOAD`
    /// segment mapped at 0x400000.
    pub(in crate::launch) fn elf(interp: &str, needed: &[&str]) -> Vec<u8> {
        const INTERP_AT: u64 = 0x200;
        const DYN_AT: u64 = 0x300;
        const STR_AT: u64 = 0x400;
        const VADDR: u64 = 0x40_0000;
        let mut strtab = vec![0u8];
        let mut dynamic = Vec::new();
        for n in needed {
            dynamic.extend(DT_NEEDED.to_le_bytes());
            dynamic.extend((strtab.len() as u64).to_le_bytes());
            strtab.extend(n.as_bytes());
            strtab.push(0);
        }
        dynamic.extend(DT_STRTAB.to_le_bytes());
        dynamic.extend((VADDR + STR_AT).to_le_bytes());
        dynamic.extend([0u8; 16]);
        let mut f = vec![0u8; 0x600];
        f[..6].copy_from_slice(b"\x7fELF\x02\x01");
        f[32..40].copy_from_slice(&64u64.to_le_bytes());
        f[54..56].copy_from_slice(&56u16.to_le_bytes());
        f[56..58].copy_from_slice(&3u16.to_le_bytes());
        let segs = [
            (PT_INTERP, INTERP_AT, 0, interp.len() as u64 + 1),
            (PT_DYNAMIC, DYN_AT, VADDR + DYN_AT, dynamic.len() as u64),
            (PT_LOAD, 0, VADDR, 0x600),
        ];
        for (i, (kind, offset, vaddr, filesz)) in segs.into_iter().enumerate() {
            let p = 64 + i * 56;
            f[p..p + 4].copy_from_slice(&kind.to_le_bytes());
            f[p + 8..p + 16].copy_from_slice(&offset.to_le_bytes());
            f[p + 16..p + 24].copy_from_slice(&vaddr.to_le_bytes());
            f[p + 32..p + 40].copy_from_slice(&filesz.to_le_bytes());
        }
        let at = |o: u64| usize::try_from(o).unwrap();
        f[at(INTERP_AT)..at(INTERP_AT) + interp.len()].copy_from_slice(interp.as_bytes());
        f[at(DYN_AT)..at(DYN_AT) + dynamic.len()].copy_from_slice(&dynamic);
        f[at(STR_AT)..at(STR_AT) + strtab.len()].copy_from_slice(&strtab);
        f
    }

    fn reader(bytes: &[u8]) -> impl Fn(u64, u32) -> Option<Vec<u8>> + '_ {
        move |off, len| {
            let start = usize::try_from(off).ok()?.min(bytes.len());
            let end = start.saturating_add(len as usize).min(bytes.len());
            Some(bytes[start..end].to_vec())
        }
    }

    #[test]
    fn the_elf_headers_name_the_interpreter_and_libraries() {
        let prog = elf("/lib64/ld.so", &["libc.so.6", "libm.so.6"]);
        let deps = elf_deps(&reader(&prog));
        assert_eq!(deps.interp.as_deref(), Some("/lib64/ld.so"));
        assert_eq!(deps.needed, ["libc.so.6", "libm.so.6"]);
        // A script, a truncated header: nothing.
        assert_eq!(elf_deps(&reader(b"#!/bin/sh\ntrue\n")), ElfDeps::default());
        assert_eq!(elf_deps(&reader(&elf("/x", &[])[..40])), ElfDeps::default());
    }
}
