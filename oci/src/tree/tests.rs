use super::*;

/// A layer from lines `KIND PATH [TARGET]`; kinds `d f h s c b p`.
fn layer(name: &str, spec: &str) -> Layer {
    let entries = spec
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            let mut w = l.split(' ');
            let (k, path, link) = (w.next().unwrap(), w.next().unwrap(), w.next());
            let kind = match k {
                "d" => Kind::Dir,
                "f" => Kind::File,
                "h" => Kind::HardLink,
                "s" => Kind::Symlink,
                "c" => Kind::Char,
                "b" => Kind::Block,
                "p" => Kind::Fifo,
                other => panic!("kind {other}"),
            };
            Entry {
                path: path.as_bytes().to_vec(),
                kind,
                mode: if kind == Kind::Dir { 0o755 } else { 0o644 },
                uid: 0,
                gid: 0,
                mtime: 7,
                size: 0,
                link: link.map(|t| t.as_bytes().to_vec()),
                device: (0, 0),
                xattrs: Vec::new(),
                header_offset: 0,
                data_offset: 0,
            }
        })
        .collect();
    Layer {
        name: name.to_owned(),
        entries,
    }
}

fn layers(specs: &[&str]) -> Vec<Layer> {
    specs
        .iter()
        .enumerate()
        .map(|(i, s)| layer(&format!("L{i}"), s))
        .collect()
}

fn show(p: &[u8]) -> String {
    if p.is_empty() {
        "/".to_owned()
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

/// The plan as text: `D path src`, `F|S|C|B|P path src`, `H path => target`.
fn listing(ls: &[Layer], plan: &[Emission]) -> String {
    let src = |s: &EntryId| format!("L{}#{}", s.layer, s.index);
    plan.iter()
        .map(|e| match e {
            Emission::Dir { path, source, .. } => {
                format!(
                    "D {} {}\n",
                    show(path),
                    source.as_ref().map_or("implicit".to_owned(), src)
                )
            }
            Emission::Node { path, source } => {
                let k = match ls[source.layer].entries[source.index].kind {
                    Kind::File => 'F',
                    Kind::Symlink => 'S',
                    Kind::Char => 'C',
                    Kind::Block => 'B',
                    Kind::Fifo => 'P',
                    other => panic!("{other:?} emitted as a node"),
                };
                format!("{k} {} {}\n", show(path), src(source))
            }
            Emission::HardLink { path, target } => {
                format!("H {} => {}\n", show(path), show(target))
            }
        })
        .collect()
}

fn run(specs: &[&str]) -> String {
    let ls = layers(specs);
    let plan = merge(&ls).unwrap_or_else(|e| panic!("{e}")).plan();
    check_invariants(&plan);
    listing(&ls, &plan)
}

fn run_err(specs: &[&str]) -> String {
    merge(&layers(specs)).unwrap_err().to_string()
}

fn golden(specs: &[&str], want: &str) {
    let want: String = want
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(run(specs), want);
}

/// Invariants the fuzz target checks too: unique paths, parents emitted
/// as directories first, hard links after their target, no `..`.
pub(crate) fn check_invariants(plan: &[Emission]) {
    let mut dirs: HashSet<Vec<u8>> = HashSet::new();
    let mut nodes: HashSet<Vec<u8>> = HashSet::new();
    for e in plan {
        let (path, is_dir) = match e {
            Emission::Dir { path, .. } => (path, true),
            Emission::Node { path, .. } => (path, false),
            Emission::HardLink { path, target } => {
                assert!(
                    nodes.contains(target),
                    "link {path:?} before its target {target:?}"
                );
                (path, false)
            }
        };
        assert!(
            !path
                .split(|&b| b == b'/')
                .any(|c| c == b".." || c == b"." || (c.is_empty() && !path.is_empty()))
        );
        if !path.is_empty() {
            assert!(
                dirs.contains(parent(path)),
                "parent of {path:?} not emitted first"
            );
        }
        assert!(
            !dirs.contains(path) && !nodes.contains(path),
            "duplicate {path:?}"
        );
        if is_dir {
            dirs.insert(path.clone())
        } else {
            nodes.insert(path.clone())
        };
    }
}

#[test]
fn implicit_parents_root_metadata_and_absolute_names() {
    golden(
        &["d ./\n f /usr/bin/env\n d usr\n f ./etc//./hosts"],
        "D / L0#0
         D etc implicit
         D usr L0#2
         D usr/bin implicit
         F usr/bin/env L0#1
         F etc/hosts L0#3",
    );
}

#[test]
fn whiteout_removes_lower_subtree_only() {
    golden(
        &[
            "d a\n f a/x\n f a/y\n d gone\n f gone/deep",
            "f a/.wh.x\n f .wh.gone",
        ],
        "D / implicit
         D a L0#0
         F a/y L0#2",
    );
}

#[test]
fn whiteout_before_or_after_a_same_layer_entry_keeps_the_entry() {
    let lower = "f a\n f b";
    for upper in ["f .wh.a\n f a\n f .wh.b", "f a\n f .wh.a\n f .wh.b"] {
        let out = run(&[lower, upper]);
        assert!(out.contains("F a L1#"), "{upper}: {out}");
        assert!(!out.contains("F b"), "{upper}: {out}");
    }
}

#[test]
fn whiteout_of_a_directory_the_layer_writes_into_keeps_its_lower_children() {
    // umoci's upperPaths: `d` is an ancestor of this layer's `d/new`.
    golden(
        &["d d\n f d/old", "f d/new\n f .wh.d"],
        "D / implicit
         D d L0#0
         F d/old L0#1
         F d/new L1#0",
    );
}

#[test]
fn opaque_directory_keeps_itself_and_same_layer_children() {
    golden(
        &[
            "d o\n f o/lower\n d o/sub\n f o/sub/deep\n f keep",
            "f o/before\n f o/.wh..wh..opq\n d o/sub\n f o/after",
        ],
        "D / implicit
         D o L0#0
         D o/sub L1#2
         F keep L0#4
         F o/before L1#0
         F o/after L1#3",
    );
}

#[test]
fn opaque_root_keeps_the_root_and_this_layers_entries() {
    golden(
        &[
            "d ./\n f a\n d d\n f d/x",
            "f ./.wh..wh..opq",
            "f .wh..wh..opq\n f b",
        ],
        "D / L0#0
         F b L2#1",
    );
}

#[test]
fn unknown_aufs_whiteouts_are_ignored_with_a_warning() {
    let ls = layers(&["f a", "f .wh..wh.plnk\n f .wh..wh.aufs"]);
    let t = merge(&ls).unwrap();
    assert_eq!(listing(&ls, &t.plan()), "D / implicit\nF a L0#0\n");
    assert_eq!(
        t.warnings(),
        [
            "layer L1: ignoring unknown whiteout '.wh..wh.plnk'",
            "layer L1: ignoring unknown whiteout '.wh..wh.aufs'"
        ]
    );
}

#[test]
fn replacement_dir_to_file_file_to_dir_and_dir_over_dir() {
    golden(
        &[
            "d a\n f a/x\n f b\n d c\n f c/keep",
            "f a\n d b\n f b/y\n d c",
        ],
        "D / implicit
         D b L1#1
         D c L1#3
         F c/keep L0#4
         F a L1#0
         F b/y L1#2",
    );
}

#[test]
fn symlinked_parents_resolve_inside_the_root() {
    golden(
        &[
            "d usr\n d usr/lib\n s lib usr/lib\n s abs /usr/lib\n s up ../../..\n s rel ./lib/../lib",
            "f lib/x\n f abs/y\n f up/usr/z\n f rel/w\n s lib/l x",
        ],
        "D / implicit
         D usr L0#0
         D usr/lib L0#1
         S lib L0#2
         S abs L0#3
         S up L0#4
         S rel L0#5
         F usr/lib/x L1#0
         F usr/lib/y L1#1
         F usr/z L1#2
         F usr/lib/w L1#3
         S usr/lib/l L1#4",
    );
}

#[test]
fn final_component_is_not_followed_and_symlink_replaces_symlink() {
    golden(
        &["d d\n s l d\n f t", "s l t"],
        "D / implicit
         D d L0#0
         F t L0#2
         S l L1#0",
    );
}

#[test]
fn symlink_loops_and_files_in_parents_are_refused() {
    assert_eq!(
        run_err(&["s a b\n s b a", "f a/x"]),
        "layer L1: entry 'a/x': too many levels of symbolic links"
    );
    assert_eq!(
        run_err(&["f file\n f file/x"]),
        "layer L0: entry 'file/x': 'file' is not a directory"
    );
}

#[test]
fn hard_link_keeps_the_content_its_target_had() {
    // L1 links to L0's file; L2 replaces the target: the link keeps L0's.
    golden(
        &[
            "d bin\n f bin/su",
            "h bin/su2 bin/su\n h /bin/su3 /bin/su",
            "f bin/su",
        ],
        "D / implicit
         D bin L0#0
         F bin/su2 L0#1
         H bin/su3 => bin/su2
         F bin/su L2#0",
    );
}

#[test]
fn hard_links_within_a_layer_and_through_symlinked_parents() {
    golden(
        &["d usr\n s lib usr\n f lib/a\n h lib/b lib/a\n h c usr/a"],
        "D / implicit
         D usr L0#0
         S lib L0#1
         F c L0#2
         H usr/a => c
         H usr/b => c",
    );
}

#[test]
fn bad_hard_links_are_refused() {
    let cases = [
        (
            &["h b a\n f a"][..],
            "layer L0: hard link 'b' to 'a': target does not exist (yet)",
        ),
        (
            &["h b nowhere/a"],
            "layer L0: hard link 'b' to 'nowhere/a': target does not exist (yet)",
        ),
        (
            &["d d\n h b d"],
            "layer L0: hard link 'b' to 'd': target is a directory",
        ),
        (
            &["f a\n h b ../../etc/passwd"],
            "layer L0: hard link 'b' to '../../etc/passwd': target leaves the image root",
        ),
        (
            &["h b ./"],
            "layer L0: hard link 'b' to './': target is a directory",
        ),
    ];
    for (specs, want) in cases {
        assert_eq!(run_err(specs), want);
    }
}

#[test]
fn escapes_and_bad_roots_are_refused() {
    assert_eq!(
        run_err(&["f ../escape"]),
        "layer L0: entry '../escape' leaves the image root"
    );
    assert_eq!(
        run_err(&["f a/../../b"]),
        "layer L0: entry 'a/../../b' leaves the image root"
    );
    assert_eq!(
        run_err(&["f ./"]),
        "layer L0: the root entry is not a directory"
    );
}

#[test]
fn whiteouts_and_opaques_through_symlinked_parents() {
    golden(
        &[
            "d real\n f real/x\n f real/y\n s link real",
            "f link/.wh.x",
            "f link/.wh..wh..opq\n f link/z",
        ],
        "D / implicit
         D real L0#0
         S link L0#3
         F real/z L2#1",
    );
}

#[test]
fn removing_and_querying_paths_for_synthetic_files() {
    let ls = layers(&["d etc\n f etc/hosts\n f etc/passwd"]);
    let mut t = merge(&ls).unwrap();
    assert!(t.contains(b"etc/hosts"));
    t.remove(b"etc/hosts");
    assert!(!t.contains(b"etc/hosts"));
    assert_eq!(
        listing(&ls, &t.plan()),
        "D / implicit\nD etc L0#0\nF etc/passwd L0#2\n"
    );
}

fn lcg(seed: &mut u64) -> u64 {
    *seed = seed
        .wrapping_mul(6_364_136_223_846_793_005)
        .wrapping_add(1_442_695_040_888_963_407);
    *seed >> 33
}

/// Random layers over a small name space: merging never panics, and every
/// successful plan keeps the invariants.
#[test]
fn random_layers_keep_the_invariants() {
    let names = [
        "a",
        "b",
        "a/b",
        "a/c",
        "b/c",
        ".wh.a",
        "a/.wh.b",
        "a/.wh..wh..opq",
        "/a",
        "./b/./c/",
        "c",
        ".wh..wh..opq",
    ];
    let kinds = ["d", "f", "h", "s", "p"];
    let mut seed = 7;
    let mut ok = 0;
    for _ in 0..4000 {
        let mut specs = Vec::new();
        for _ in 0..1 + lcg(&mut seed) % 3 {
            let mut s = String::new();
            for _ in 0..lcg(&mut seed) % 6 {
                let k = kinds[(lcg(&mut seed) % 5) as usize];
                let n = names[(lcg(&mut seed) % names.len() as u64) as usize];
                let t = names[(lcg(&mut seed) % names.len() as u64) as usize];
                s += &format!("{k} {n} {t}\n");
            }
            specs.push(s);
        }
        let refs: Vec<&str> = specs.iter().map(String::as_str).collect();
        if let Ok(t) = merge(&layers(&refs)) {
            check_invariants(&t.plan());
            ok += 1;
        }
    }
    assert!(ok > 1000, "only {ok} random cases merged");
}

/// A chain of symlinks with long targets is cut off (resolved paths over
/// PATH_MAX, targets over PATH_MAX, more than 255 hops), not walked for
/// ever or grown without bound.
#[test]
fn resolution_work_is_bounded() {
    let deep = "x/".repeat(2000);
    let mut spec = format!("s l0 {deep}\n");
    for i in 1..255 {
        spec += &format!("s l{i} l{}/{deep}\n", i - 1);
    }
    spec += "f l254/file\n";
    assert_eq!(
        run_err(&[&spec]),
        "layer L0: entry 'l254/file': name too long"
    );
    let long = "y/".repeat(2049);
    assert_eq!(
        run_err(&[&format!("s l {long}\n f l/file")]),
        "layer L0: entry 'l/file': name too long"
    );
}

#[test]
fn symlink_hops_are_capped() {
    let mut spec = String::from("d d\n s l0 d\n");
    for i in 1..=255 {
        spec += &format!("s l{i} l{}\n", i - 1);
    }
    spec += "f l254/ok\n";
    let ok = run(&[&spec]);
    assert!(ok.contains("F d/ok L0#"), "255 hops resolve");
    assert_eq!(
        run_err(&[&(spec + "f l255/no")]),
        "layer L0: entry 'l255/no': too many levels of symbolic links"
    );
}
