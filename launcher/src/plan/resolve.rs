//! Paths inside the image, resolved as if the image were the root.

use std::path::{Component, Path, PathBuf};

use super::{Entry, ImageTree, PlanError};

const MAX_SYMLINKS: usize = 40;

/// Resolves `path` inside the image as if the image were the root: symlinks
/// (absolute or relative) are followed within the image and `..` stops at
/// the root, so no link can point a mount outside the container. Components
/// past the first missing one are kept as they are.
pub fn resolve_in_image(tree: &dyn ImageTree, path: &Path) -> Result<PathBuf, PlanError> {
    let mut todo: Vec<PathBuf> = components_rev(path);
    let mut done = PathBuf::from("/");
    let mut links = 0;
    let mut missing = false;
    while let Some(c) = todo.pop() {
        if c.as_os_str() == ".." {
            if !missing {
                done.pop();
            } else {
                done.push("..");
            }
            continue;
        }
        let next = done.join(&c);
        if missing {
            done = next;
            continue;
        }
        match tree.entry(&next) {
            None => {
                missing = true;
                done = next;
            }
            Some(Entry::Symlink(target)) => {
                links += 1;
                if links > MAX_SYMLINKS {
                    return Err(PlanError::SymlinkLoop(path.to_owned()));
                }
                if target.is_absolute() {
                    done = PathBuf::from("/");
                }
                todo.extend(components_rev(&target));
            }
            Some(Entry::Dir) => done = next,
            Some(Entry::File | Entry::Other) => {
                if !todo.is_empty() {
                    return Err(PlanError::NotADirectory {
                        path: path.to_owned(),
                        component: next,
                    });
                }
                done = next;
            }
        }
    }
    Ok(done)
}

fn components_rev(p: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = p
        .components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(PathBuf::from(n)),
            Component::ParentDir => Some(PathBuf::from("..")),
            _ => None,
        })
        .collect();
    v.reverse();
    v
}

/// Whether `path` is `base` or below it, comparing whole components.
pub fn is_under(path: &Path, base: &Path) -> bool {
    path.starts_with(base)
}

/// Whether the image has a regular file at `path` (links followed inside).
pub fn is_file(tree: &dyn ImageTree, path: &str) -> Result<bool, PlanError> {
    let r = resolve_in_image(tree, Path::new(path))?;
    Ok(matches!(tree.entry(&r), Some(Entry::File)))
}
