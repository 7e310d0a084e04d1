//! The plan's stable text form.

use std::fmt::Write as _;

use super::{Plan, Source};
use crate::fuse::TargetKind;

impl Plan {
    /// A stable text form, for golden tests and diagnostics.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "uid_map: {}gid_map: {}", self.uid_map, self.gid_map);
        for m in &self.mounts {
            let src = match &m.source {
                Source::Host { path, recursive } => {
                    format!(
                        "{}{}",
                        if *recursive { "rbind " } else { "bind " },
                        path.display()
                    )
                }
                Source::Generated(n) => format!("generated {n}"),
                Source::Proc => "proc".into(),
                Source::Tmpfs => "tmpfs".into(),
            };
            let mut flags = vec![if m.readonly { "ro" } else { "rw" }, "nosuid"];
            if !m.allow_devices {
                flags.push("nodev");
            }
            if m.in_host_dir {
                flags.push("in-host-dir");
            }
            let target = if m.resolved == m.target {
                m.target.display().to_string()
            } else {
                format!("{} (-> {})", m.target.display(), m.resolved.display())
            };
            let _ = writeln!(out, "mount {src} on {target} [{}]", flags.join(","));
        }
        for (p, k) in &self.synth {
            let _ = writeln!(
                out,
                "synth {} {}",
                if *k == TargetKind::Dir { "dir" } else { "file" },
                p.display()
            );
        }
        for f in &self.files {
            let mode = if f.executable { " (executable)" } else { "" };
            let _ = writeln!(out, "file {}{mode}", f.name);
        }
        let _ = writeln!(
            out,
            "cwd: {}{}",
            self.cwd.display(),
            if self.cwd_required { " (required)" } else { "" }
        );
        if self.writable_tmpfs {
            out.push_str("writable tmpfs overlay\n");
        }
        out
    }
}
