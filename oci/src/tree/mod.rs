//! The merge of layers into the final tree (design §3.1–3.2), as a pure
//! function of the layers' entry lists, and the emission plan that says
//! which layer entry supplies each final path.
//!
//! Rules, per layer (base first): regular entries apply in order, then the
//! layer's whiteouts, then its opaque markers; a whiteout `DIR/.wh.NAME`
//! removes `DIR/NAME` unless this layer touched that path or something
//! below it (umoci's `upperPaths`), so the order of entries within a layer
//! does not matter; `DIR/.wh..wh..opq` removes every descendant of `DIR`
//! this layer did not touch. An entry at an existing path replaces it
//! (subtree included) unless both are directories (metadata replaced).
//! Missing parents are created (`0755 0:0`, the entry's mtime). Symlinks
//! in parents are followed inside the root (absolute targets restart at
//! the root, `..` stops at the root, at most 255 hops); the final
//! component is never followed. A hard link shares its target's inode as
//! of the moment it is applied, so a later replacement of the target does
//! not change it. `..` in a name or a hard-link target refuses the layer.

mod path;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use crate::tar::{Entry, Kind};
use path::{child, clean, parent, subtree_bounds};

/// Most entries over all layers.
pub const MAX_ENTRIES: usize = 5_000_000;
const MAX_HOPS: usize = 255;
/// Most components one resolution walks (symlink expansions included).
const MAX_STEPS: usize = 65_536;

/// Why the layers do not merge; `layer` names the layer (its digest).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TreeError {
    /// A name or link target with `..`.
    #[error("layer {layer}: entry '{path}' leaves the image root")]
    Escape {
        /// The layer.
        layer: String,
        /// The name as recorded.
        path: String,
    },
    /// A component over 255 bytes or a path over 4096.
    #[error("layer {layer}: entry '{path}': name too long")]
    NameTooLong {
        /// The layer.
        layer: String,
        /// The name as recorded.
        path: String,
    },
    /// A hard link whose target is missing or a directory.
    #[error("layer {layer}: hard link '{path}' to '{target}': {why}")]
    LinkTarget {
        /// The layer.
        layer: String,
        /// The link's name.
        path: String,
        /// Its target.
        target: String,
        /// `target does not exist (yet)` or `target is a directory`.
        why: &'static str,
    },
    /// A parent path runs through a non-directory.
    #[error("layer {layer}: entry '{path}': '{parent}' is not a directory")]
    NotADirectory {
        /// The layer.
        layer: String,
        /// The entry.
        path: String,
        /// The offending component's path.
        parent: String,
    },
    /// Too many symlinks while resolving a parent.
    #[error("layer {layer}: entry '{path}': too many levels of symbolic links")]
    SymlinkLoop {
        /// The layer.
        layer: String,
        /// The entry.
        path: String,
    },
    /// The root entry (`./`) is not a directory.
    #[error("layer {layer}: the root entry is not a directory")]
    RootNotDir {
        /// The layer.
        layer: String,
    },
    /// More than [`MAX_ENTRIES`] entries.
    #[error("image has {count} entries, more than the {MAX_ENTRIES} allowed")]
    TooManyEntries {
        /// How many.
        count: usize,
    },
}

/// One layer's entries, in stream order.
#[derive(Debug, Clone)]
pub struct Layer {
    /// The layer's name in errors (its digest).
    pub name: String,
    /// Its entries.
    pub entries: Vec<Entry>,
}

/// An entry: layer index and position in that layer's list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EntryId {
    /// Layer index (0 = base).
    pub layer: usize,
    /// Position in the layer's entry list.
    pub index: usize,
}

#[derive(Debug, Clone)]
enum Node {
    Dir { source: Option<EntryId>, mtime: i64 },
    Other { inode: usize },
}

#[derive(Debug, Clone)]
struct Inode {
    source: EntryId,
    symlink: Option<Vec<u8>>,
}

/// One step of the final tar stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emission {
    /// A directory (parents first; the root has the empty path).
    /// `source` supplies its metadata; `None` = implicit (`0755 0:0`,
    /// `mtime`).
    Dir {
        /// Final path.
        path: Vec<u8>,
        /// The entry whose header applies, if any.
        source: Option<EntryId>,
        /// Modification time of an implicit directory.
        mtime: i64,
    },
    /// A non-directory: `source`'s header and data under `path`.
    Node {
        /// Final path.
        path: Vec<u8>,
        /// The entry.
        source: EntryId,
    },
    /// A hard link to a path emitted just before.
    HardLink {
        /// Final path.
        path: Vec<u8>,
        /// The path it links to.
        target: Vec<u8>,
    },
}

/// The merged tree.
#[derive(Debug, Clone)]
pub struct Tree {
    nodes: BTreeMap<Vec<u8>, Node>,
    inodes: Vec<Inode>,
    warnings: Vec<String>,
}

enum Fail {
    Loop,
    NotDir(Vec<u8>),
    TooLong,
}

/// Merges `layers` (base first).
pub fn merge(layers: &[Layer]) -> Result<Tree, TreeError> {
    let count = layers.iter().map(|l| l.entries.len()).sum();
    if count > MAX_ENTRIES {
        return Err(TreeError::TooManyEntries { count });
    }
    let mut t = Tree::new();
    for (i, l) in layers.iter().enumerate() {
        t.apply(i, l)?;
    }
    Ok(t)
}

impl Default for Tree {
    fn default() -> Self {
        Self::new()
    }
}

/// What a layer entry's name is.
enum Name<'a> {
    Regular(Vec<&'a [u8]>),
    Whiteout(Vec<&'a [u8]>),
    Opaque(Vec<&'a [u8]>),
    Ignored,
}

fn classify(comps: Vec<&[u8]>) -> Name<'_> {
    let Some(last) = comps.last() else {
        return Name::Regular(comps);
    };
    let Some(rest) = last.strip_prefix(b".wh.") else {
        return Name::Regular(comps);
    };
    let dir = comps[..comps.len() - 1].to_vec();
    if rest == b".wh..opq" {
        Name::Opaque(dir)
    } else if rest.starts_with(b".wh.") || rest.is_empty() {
        Name::Ignored
    } else {
        let mut target = dir;
        target.push(rest);
        Name::Whiteout(target)
    }
}

impl Tree {
    /// A tree holding only the root directory.
    pub fn new() -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(
            Vec::new(),
            Node::Dir {
                source: None,
                mtime: 0,
            },
        );
        Self {
            nodes,
            inodes: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// Applies one more layer on top; `li` is its index in the
    /// [`EntryId`]s of the plan (the converter adds the Apptainer layout
    /// as a last layer this way, so its paths resolve like any entry's).
    pub fn apply(&mut self, li: usize, layer: &Layer) -> Result<(), TreeError> {
        let mut upper: HashSet<Vec<u8>> = HashSet::new();
        let (mut whiteouts, mut opaques) = (Vec::new(), Vec::new());
        for (i, e) in layer.entries.iter().enumerate() {
            match classify(clean(&layer.name, &e.path)?) {
                Name::Regular(comps) => {
                    let mut p = self.apply_entry(
                        EntryId {
                            layer: li,
                            index: i,
                        },
                        layer,
                        &comps,
                    )?;
                    while upper.insert(p.clone()) && !p.is_empty() {
                        p = parent(&p).to_vec();
                    }
                }
                Name::Whiteout(c) => whiteouts.push((i, c)),
                Name::Opaque(c) => opaques.push((i, c)),
                Name::Ignored => self.warnings.push(format!(
                    "layer {}: ignoring unknown whiteout '{}'",
                    layer.name,
                    String::from_utf8_lossy(&e.path)
                )),
            }
        }
        for (i, comps) in whiteouts {
            let (dir, name) = comps.split_at(comps.len() - 1);
            let resolved = self
                .resolve(dir, None)
                .map_err(|f| self.fail(f, layer, i))?;
            if let Some(d) = resolved {
                let target = child(&d, name[0]);
                if !upper.contains(&target) {
                    self.remove(&target);
                }
            }
        }
        for (i, comps) in opaques {
            if let Some(d) = self
                .resolve(&comps, None)
                .map_err(|f| self.fail(f, layer, i))?
            {
                let (lo, hi) = subtree_bounds(&d);
                let lower: Vec<Vec<u8>> = self
                    .nodes
                    .range(lo..hi)
                    .map(|(k, _)| k.clone())
                    .filter(|k| !upper.contains(k))
                    .collect();
                for k in lower {
                    self.remove(&k);
                }
            }
        }
        Ok(())
    }

    fn fail(&self, f: Fail, layer: &Layer, i: usize) -> TreeError {
        let path = String::from_utf8_lossy(&layer.entries[i].path).into_owned();
        match f {
            Fail::Loop => TreeError::SymlinkLoop {
                layer: layer.name.clone(),
                path,
            },
            Fail::TooLong => TreeError::NameTooLong {
                layer: layer.name.clone(),
                path,
            },
            Fail::NotDir(p) => TreeError::NotADirectory {
                layer: layer.name.clone(),
                path,
                parent: String::from_utf8_lossy(&p).into_owned(),
            },
        }
    }

    /// Applies one regular entry; returns its final path.
    fn apply_entry(
        &mut self,
        id: EntryId,
        layer: &Layer,
        comps: &[&[u8]],
    ) -> Result<Vec<u8>, TreeError> {
        let e = &layer.entries[id.index];
        let Some((last, dir)) = comps.split_last() else {
            if e.kind != Kind::Dir {
                return Err(TreeError::RootNotDir {
                    layer: layer.name.clone(),
                });
            }
            self.nodes.insert(
                Vec::new(),
                Node::Dir {
                    source: Some(id),
                    mtime: e.mtime,
                },
            );
            return Ok(Vec::new());
        };
        let parent = self
            .resolve(dir, Some(e.mtime))
            .map_err(|f| self.fail(f, layer, id.index))?;
        let path = child(&parent.unwrap_or_default(), last);
        let node = match e.kind {
            Kind::Dir => {
                if let Some(Node::Dir { source, .. }) = self.nodes.get_mut(&path) {
                    *source = Some(id);
                    return Ok(path);
                }
                Node::Dir {
                    source: Some(id),
                    mtime: e.mtime,
                }
            }
            Kind::HardLink => {
                let (inode, target) = self.link_target(layer, id.index)?;
                if target == path {
                    return Ok(path);
                }
                Node::Other { inode }
            }
            _ => {
                let symlink = (e.kind == Kind::Symlink).then(|| e.link.clone().unwrap_or_default());
                self.inodes.push(Inode {
                    source: id,
                    symlink,
                });
                Node::Other {
                    inode: self.inodes.len() - 1,
                }
            }
        };
        self.remove(&path);
        self.nodes.insert(path.clone(), node);
        Ok(path)
    }

    /// The inode and final path a hard link entry names.
    fn link_target(&mut self, layer: &Layer, index: usize) -> Result<(usize, Vec<u8>), TreeError> {
        let e = &layer.entries[index];
        let raw = e.link.as_deref().unwrap_or_default();
        let err = |why| TreeError::LinkTarget {
            layer: layer.name.clone(),
            path: String::from_utf8_lossy(&e.path).into_owned(),
            target: String::from_utf8_lossy(raw).into_owned(),
            why,
        };
        let comps = clean(&layer.name, raw).map_err(|e| match e {
            TreeError::Escape { .. } => err("target leaves the image root"),
            other => other,
        })?;
        let Some((last, dir)) = comps.split_last() else {
            return Err(err("target is a directory"));
        };
        let missing = "target does not exist (yet)";
        let dir = self
            .resolve(dir, None)
            .map_err(|f| self.fail(f, layer, index))?
            .ok_or_else(|| err(missing))?;
        let target = child(&dir, last);
        match self.nodes.get(&target) {
            Some(Node::Other { inode }) => Ok((*inode, target)),
            Some(Node::Dir { .. }) => Err(err("target is a directory")),
            None => Err(err(missing)),
        }
    }

    /// Resolves `comps` as a directory, following every symlink inside the
    /// root; missing directories are created with `create`'s mtime, or
    /// make the result `None`.
    fn resolve(&mut self, comps: &[&[u8]], create: Option<i64>) -> Result<Option<Vec<u8>>, Fail> {
        let mut todo: VecDeque<Vec<u8>> = comps.iter().map(|c| c.to_vec()).collect();
        // The resolved path so far, and where each of its components starts.
        let mut cur: Vec<u8> = Vec::new();
        let mut starts: Vec<usize> = Vec::new();
        let (mut hops, mut steps) = (0, 0);
        while let Some(c) = todo.pop_front() {
            steps += 1;
            if steps > MAX_STEPS {
                return Err(Fail::Loop);
            }
            match c.as_slice() {
                b"" | b"." => continue,
                b".." => {
                    cur.truncate(starts.pop().unwrap_or(0));
                    continue;
                }
                _ => {}
            }
            let start = cur.len();
            let key = child(&cur, &c);
            if key.len() > path::PATH_MAX {
                return Err(Fail::TooLong);
            }
            match self.nodes.get(&key) {
                Some(Node::Dir { .. }) => {
                    starts.push(start);
                    cur = key;
                }
                Some(Node::Other { inode }) => {
                    let Some(target) = &self.inodes[*inode].symlink else {
                        return Err(Fail::NotDir(key));
                    };
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Err(Fail::Loop);
                    }
                    if target.len() > path::PATH_MAX {
                        return Err(Fail::TooLong);
                    }
                    if target.starts_with(b"/") {
                        cur.clear();
                        starts.clear();
                    }
                    for part in target.split(|&b| b == b'/').rev() {
                        todo.push_front(part.to_vec());
                    }
                }
                None => match create {
                    Some(mtime) => {
                        self.nodes.insert(
                            key.clone(),
                            Node::Dir {
                                source: None,
                                mtime,
                            },
                        );
                        starts.push(start);
                        cur = key;
                    }
                    None => return Ok(None),
                },
            }
        }
        Ok(Some(cur))
    }

    /// Removes `path` and everything below it (not the root itself).
    pub fn remove(&mut self, path: &[u8]) {
        let (lo, hi) = subtree_bounds(path);
        let below: Vec<Vec<u8>> = self.nodes.range(lo..hi).map(|(k, _)| k.clone()).collect();
        for k in below {
            self.nodes.remove(&k);
        }
        if !path.is_empty() {
            self.nodes.remove(path);
        }
    }

    /// Whether `path` (clean, relative, as the plan names it) exists.
    pub fn contains(&self, path: &[u8]) -> bool {
        self.nodes.contains_key(path)
    }

    /// Whether a layer entry named `name` would land on an existing path
    /// (parents resolved through symlinks, the final component not
    /// followed); `false` for names that cannot be applied.
    pub fn exists(&mut self, name: &[u8]) -> bool {
        let Ok(comps) = clean("", name) else {
            return false;
        };
        let Some((last, dir)) = comps.split_last() else {
            return true;
        };
        match self.resolve(dir, None) {
            Ok(Some(d)) => self.nodes.contains_key(&child(&d, last)),
            _ => false,
        }
    }

    /// Non-fatal oddities met (unknown whiteout names).
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    /// The emission plan: every directory (parents first), then every
    /// surviving inode in source order: its first path carrying the data,
    /// its other paths as hard links right after it.
    pub fn plan(&self) -> Vec<Emission> {
        let mut out = Vec::new();
        let mut paths: HashMap<usize, Vec<&Vec<u8>>> = HashMap::new();
        for (path, node) in &self.nodes {
            match node {
                Node::Dir { source, mtime } => {
                    out.push(Emission::Dir {
                        path: path.clone(),
                        source: *source,
                        mtime: *mtime,
                    });
                }
                Node::Other { inode } => paths.entry(*inode).or_default().push(path),
            }
        }
        let mut inodes: Vec<(EntryId, Vec<&Vec<u8>>)> = paths
            .into_iter()
            .map(|(i, p)| (self.inodes[i].source, p))
            .collect();
        inodes.sort();
        for (source, paths) in inodes {
            let primary = paths[0];
            out.push(Emission::Node {
                path: primary.clone(),
                source,
            });
            for p in &paths[1..] {
                out.push(Emission::HardLink {
                    path: (*p).clone(),
                    target: primary.clone(),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests;
