//! The generated `/etc/passwd` and `/etc/group`.

use std::fmt::Write as _;
use std::path::Path;

use super::{Generated, HostFacts, ImageTree, PlanInput, RunOptions};

/// passwd and group, in that order.
pub(super) fn generate(tree: &dyn ImageTree, input: &PlanInput<'_>, home: &Path) -> Vec<Generated> {
    let file = |name: &str, bytes| Generated {
        name: name.into(),
        bytes,
        executable: false,
    };
    vec![
        file(
            "passwd",
            passwd(tree, input.host, input.opts, home, input.service_accounts),
        ),
        file("group", group(tree, input.host, input.opts)),
    ]
}

fn image_text(tree: &dyn ImageTree, path: &str) -> String {
    let image = tree.read_small(Path::new(path)).unwrap_or_default();
    let mut text = String::from_utf8_lossy(&image).into_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

/// The passwd file of the container: the image's, plus the user's entry,
/// plus the service accounts the image lacks (by name).
fn passwd(
    tree: &dyn ImageTree,
    host: &HostFacts,
    opts: &RunOptions,
    home: &Path,
    service_accounts: &[String],
) -> Vec<u8> {
    let mut text = image_text(tree, "/etc/passwd");
    let (name, uid, gid) = if opts.fakeroot {
        ("root".to_owned(), 0, 0)
    } else {
        (host.user.clone(), host.uid, host.gid)
    };
    let has_uid = text
        .lines()
        .any(|l| l.split(':').nth(2).and_then(|u| u.parse::<u32>().ok()) == Some(uid));
    if !has_uid {
        let gecos = host.passwd_line.split(':').nth(4).unwrap_or("");
        let _ = writeln!(
            text,
            "{name}:x:{uid}:{gid}:{gecos}:{}:/bin/sh",
            home.display()
        );
    } else if !opts.fakeroot {
        // Point the existing entry's home at the bound home.
        text = text
            .lines()
            .map(|l| {
                let mut f: Vec<&str> = l.split(':').collect();
                let h = home.display().to_string();
                if f.len() == 7 && f[2].parse::<u32>().ok() == Some(uid) {
                    f[5] = &h;
                    format!("{}\n", f.join(":"))
                } else {
                    format!("{l}\n")
                }
            })
            .collect();
    }
    for line in service_accounts {
        let name = line.split(':').next().unwrap_or("");
        if !text.lines().any(|l| l.split(':').next() == Some(name)) {
            let _ = writeln!(text, "{line}");
        }
    }
    text.into_bytes()
}

/// The group file of the container: the image's, plus the user's groups.
fn group(tree: &dyn ImageTree, host: &HostFacts, opts: &RunOptions) -> Vec<u8> {
    let mut text = image_text(tree, "/etc/group");
    if opts.fakeroot {
        return text.into_bytes();
    }
    let present: Vec<u32> = text
        .lines()
        .filter_map(|l| l.split(':').nth(2).and_then(|g| g.parse().ok()))
        .collect();
    for line in &host.group_lines {
        let gid = line.split(':').nth(2).and_then(|g| g.parse::<u32>().ok());
        if gid.is_some_and(|g| !present.contains(&g)) {
            let _ = writeln!(text, "{line}");
        }
    }
    text.into_bytes()
}
