//! Reading a Slurm step's command ahead (issue 11, section 7).
//!
//! Each step mounts its image afresh, so the first task's exec would read
//! its program, the ELF interpreter and the libraries cold through FUSE,
//! one page fault after the other. Once the holder has set the root up, a
//! thread of it resolves the step's command on the tasks' PATH and asks
//! the kernel to read those files ahead (`POSIX_FADV_WILLNEED`: FUSE
//! requests the server's threads answer in parallel) while slurmstepd
//! forks the tasks and they join the container. It is a hint: a file it
//! cannot find or read is skipped, and nothing waits for it.

use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{PosixFadviseAdvice, posix_fadvise};

/// The most bytes read ahead of one file.
const MAX_FILE: u64 = 64 << 20;
/// The most files read ahead for one command (the program, its
/// interpreter and the libraries they name).
const MAX_FILES: usize = 24;
/// Read-ahead requests go in pieces of this size (the kernel caps one
/// request at its read-ahead window).
const CHUNK: u64 = 128 << 10;

/// Reads `command` (found on `path`, a `PATH` value) and what it loads
/// ahead, on a thread of its own; returns at once.
pub(crate) fn start(command: &str, path: &str) {
    let (command, path) = (command.to_owned(), path.to_owned());
    let _ = std::thread::Builder::new()
        .name("sifrun-readahead".into())
        .spawn(move || {
            let started = std::time::Instant::now();
            let files = warm_command(&command, &path, Path::new("/"));
            tracing::debug!(
                ?files,
                ms = format_args!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
                "read the step's command ahead"
            );
        });
}

/// `p` (absolute) below `root`.
fn under(root: &Path, p: &Path) -> PathBuf {
    root.join(p.strip_prefix("/").unwrap_or(p))
}

/// The file exec would run for `command`: a path as it is, a bare name
/// in the first directory of `path` that holds an executable file of it.
fn resolve(command: &str, path: &str, root: &Path) -> Option<PathBuf> {
    if command.contains('/') {
        return Some(under(root, Path::new(command)));
    }
    path.split(':')
        .filter(|d| d.starts_with('/'))
        .map(|d| under(root, &Path::new(d).join(command)))
        .find(|f| {
            std::fs::metadata(f).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

/// The files read ahead for `command`, in order: the program, then what
/// its ELF headers name (interpreter, needed libraries, breadth first).
pub(crate) fn warm_command(command: &str, path: &str, root: &Path) -> Vec<PathBuf> {
    let Some(program) = resolve(command, path, root) else {
        return Vec::new();
    };
    let mut done = Vec::new();
    let mut queue = VecDeque::from([program]);
    while let Some(file) = queue.pop_front() {
        if done.len() >= MAX_FILES || done.contains(&file) {
            continue;
        }
        let Some(f) = warm(&file) else { continue };
        done.push(file);
        let deps = elf_deps(&f);
        let dirs = lib_dirs(deps.interp.as_deref());
        queue.extend(deps.interp.map(|i| under(root, Path::new(&i))));
        for lib in deps.needed {
            let found = dirs
                .iter()
                .map(|d| under(root, &Path::new(d).join(&lib)))
                .find(|p| p.is_file());
            queue.extend(found);
        }
    }
    done
}

/// Asks the kernel to read `file` into the page cache; the open file.
fn warm(file: &Path) -> Option<File> {
    let f = File::open(file).ok()?;
    let size = f.metadata().ok()?.len().min(MAX_FILE);
    let mut offset = 0;
    while offset < size {
        let len = CHUNK.min(size - offset);
        let (Ok(o), Ok(l)) = (i64::try_from(offset), i64::try_from(len)) else {
            break;
        };
        if posix_fadvise(&f, o, l, PosixFadviseAdvice::POSIX_FADV_WILLNEED).is_err() {
            break;
        }
        offset += len;
    }
    Some(f)
}

/// Where the dynamic loader looks for a library without a path: the
/// interpreter's directory, then the usual system directories.
fn lib_dirs(interp: Option<&str>) -> Vec<String> {
    let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
    let mut dirs: Vec<String> = interp
        .and_then(|i| Path::new(i).parent()?.to_str().map(str::to_owned))
        .into_iter()
        .collect();
    for d in [
        format!("/lib/{triplet}"),
        format!("/usr/lib/{triplet}"),
        "/lib64".into(),
        "/usr/lib64".into(),
        "/lib".into(),
        "/usr/lib".into(),
    ] {
        if !dirs.contains(&d) {
            dirs.push(d);
        }
    }
    dirs
}

/// What an ELF file's headers name for the loader.
#[derive(Debug, Default, PartialEq)]
struct ElfDeps {
    /// `PT_INTERP`.
    interp: Option<String>,
    /// `DT_NEEDED` names without a `/`.
    needed: Vec<String>,
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

/// Up to `len` bytes of `f` at `offset` (fewer at its end).
fn read_at(f: &File, offset: u64, len: u64) -> Option<Vec<u8>> {
    let mut buf = vec![0; usize::try_from(len.min(1 << 20)).ok()?];
    let n = f.read_at(&mut buf, offset).ok()?;
    buf.truncate(n);
    Some(buf)
}

/// The interpreter and needed libraries of a 64-bit little-endian ELF
/// file (what the container's programs are on the hosts sifrun serves);
/// nothing for anything else.
fn elf_deps(f: &File) -> ElfDeps {
    elf_segments(f)
        .map(|segs| {
            let text = |s: &Segment, len: u64| {
                read_at(f, s.offset, len)
                    .map(|b| cstr(&b))
                    .unwrap_or_default()
            };
            ElfDeps {
                interp: segs
                    .iter()
                    .find(|s| s.kind == PT_INTERP)
                    .map(|s| text(s, s.filesz.min(4096)))
                    .filter(|i| i.starts_with('/')),
                needed: needed(f, &segs).unwrap_or_default(),
            }
        })
        .unwrap_or_default()
}

fn elf_segments(f: &File) -> Option<Vec<Segment>> {
    let h = read_at(f, 0, 64)?;
    // Magic, 64-bit, little-endian.
    if h.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let (phoff, phentsize, phnum) = (u64_at(&h, 32)?, u16_at(&h, 54)?, u16_at(&h, 56)?);
    if phentsize < 56 || phnum > 128 {
        return None;
    }
    let table = read_at(f, phoff, u64::from(phentsize) * u64::from(phnum))?;
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
fn needed(f: &File, segs: &[Segment]) -> Option<Vec<String>> {
    let dynamic = segs.iter().find(|s| s.kind == PT_DYNAMIC)?;
    let d = read_at(f, dynamic.offset, dynamic.filesz.min(64 << 10))?;
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
            .filter_map(|&(_, off)| read_at(f, base.checked_add(off)?, 256).map(|b| cstr(&b)))
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
mod tests {
    use super::*;

    /// A 64-bit little-endian ELF file with a `PT_INTERP` of `interp` and
    /// `DT_NEEDED` entries for `needed`, its string table in a `PT_LOAD`
    /// segment mapped at 0x400000.
    fn elf(interp: &str, needed: &[&str]) -> Vec<u8> {
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

    fn put(root: &Path, path: &str, bytes: &[u8], mode: u32) -> PathBuf {
        let p = under(root, Path::new(path));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        p
    }

    #[test]
    fn the_elf_headers_name_the_interpreter_and_libraries() {
        let d = tempfile::tempdir().unwrap();
        let p = put(
            d.path(),
            "/prog",
            &elf("/lib64/ld.so", &["libc.so.6", "libm.so.6"]),
            0o755,
        );
        let deps = elf_deps(&File::open(&p).unwrap());
        assert_eq!(deps.interp.as_deref(), Some("/lib64/ld.so"));
        assert_eq!(deps.needed, ["libc.so.6", "libm.so.6"]);
        // A script, a truncated header: nothing.
        let s = put(d.path(), "/script", b"#!/bin/sh\ntrue\n", 0o755);
        assert_eq!(elf_deps(&File::open(&s).unwrap()), ElfDeps::default());
        let t = put(d.path(), "/cut", &elf("/x", &[])[..40], 0o755);
        assert_eq!(elf_deps(&File::open(&t).unwrap()), ElfDeps::default());
    }

    #[test]
    fn a_command_is_found_on_path_with_what_it_loads() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path();
        let triplet = format!("{}-linux-gnu", std::env::consts::ARCH);
        // Not executable: exec would skip it, so does the lookup.
        put(root, "/usr/bin/prog", b"data", 0o644);
        let prog = put(
            root,
            "/bin/prog",
            &elf("/lib64/ld.so", &["libc.so.6"]),
            0o755,
        );
        let ld = put(root, "/lib64/ld.so", &elf("/none", &[]), 0o755);
        let libc = put(
            root,
            &format!("/lib/{triplet}/libc.so.6"),
            &elf("/none", &["libc.so.6"]),
            0o644,
        );
        let files = warm_command("prog", "/nowhere:relative:/usr/bin:/bin", root);
        assert_eq!(files, [prog.clone(), ld, libc]);
        // A path is taken as it is; a missing command reads nothing.
        assert_eq!(warm_command("/bin/prog", "", root)[0], prog);
        assert!(warm_command("absent", "/bin:/usr/bin", root).is_empty());
    }

    #[test]
    fn the_page_cache_gets_the_file() {
        let d = tempfile::tempdir().unwrap();
        let p = put(d.path(), "/big", &vec![7u8; 300 << 10], 0o644);
        let f = warm(&p).expect("read ahead");
        assert_eq!(f.metadata().unwrap().len(), 300 << 10);
        assert!(warm(&d.path().join("missing")).is_none());
    }
}
