//! Control groups for real nodes: one tree per environment (`/iu-testenv-<slot>`) in every
//! mounted hierarchy (cgroup v1 controllers, the named `systemd` one, and a cgroup2 mount),
//! holding kubelet, containerd (and so every containerd shim, which inherits its cgroup) and,
//! below kubelet's `cgroupRoot`, every pod. Whatever a node started, however the harness
//! ended, is found and killed by walking that tree.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// The prefix of every environment's tree, directly under each hierarchy's root.
pub(crate) const PREFIX: &str = "iu-testenv-";

/// Mount points of the cgroup hierarchies (`cgroup` and `cgroup2` file systems).
pub(crate) fn hierarchies() -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = info
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let fstype = right.split_whitespace().next()?;
            let mount = left.split_whitespace().nth(4)?;
            matches!(fstype, "cgroup" | "cgroup2").then(|| PathBuf::from(unescape(mount)))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal.
pub(crate) fn unescape(field: &str) -> String {
    let mut out = String::with_capacity(field.len());
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && i + 3 < bytes.len()
            && let Ok(v) = u8::from_str_radix(&field[i + 1..i + 4], 8)
        {
            out.push(v as char);
            i += 4;
            continue;
        }
        out.push(bytes[i] as char);
        i += 1;
    }
    out
}

fn is_cpuset_v1(hierarchy: &Path) -> bool {
    hierarchy.join("cpuset.cpus").exists() && !hierarchy.join("cgroup.controllers").exists()
}

/// Creates `path` (absolute within each hierarchy, e.g. `/iu-testenv-0/real-node-0/kubelet`)
/// in every hierarchy. In the v1 cpuset hierarchy every new level inherits the parent's CPUs
/// and memory nodes (a cpuset without them accepts no task).
pub(crate) fn create(path: &str) -> Result<()> {
    for h in hierarchies() {
        let mut dir = h.clone();
        for part in path.split('/').filter(|p| !p.is_empty()) {
            let parent = dir.clone();
            dir.push(part);
            if dir.is_dir() {
                continue;
            }
            std::fs::create_dir(&dir)
                .map_err(|e| Error::io(format!("create cgroup {}", dir.display()), e))?;
            if is_cpuset_v1(&h) {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(parent.join(file)).unwrap_or_default();
                    std::fs::write(dir.join(file), value.trim())
                        .map_err(|e| Error::io(format!("set {}/{file}", dir.display()), e))?;
                }
            }
        }
    }
    Ok(())
}

/// The `cgroup.procs` files of `path` in every hierarchy, for a child to write `0` into
/// between fork and exec (see [`crate::process::Child::spawn`]).
pub(crate) fn procs_files(path: &str) -> Vec<CString> {
    hierarchies()
        .into_iter()
        .filter_map(|h| {
            let file = h.join(path.trim_start_matches('/')).join("cgroup.procs");
            CString::new(file.into_os_string().into_encoded_bytes()).ok()
        })
        .collect()
}

/// Every directory of the tree at `path` in every hierarchy, deepest first.
fn tree(path: &str) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    walk(&e.path(), out);
                }
            }
        }
        out.push(dir.to_path_buf());
    }
    let mut out = Vec::new();
    for h in hierarchies() {
        let root = h.join(path.trim_start_matches('/'));
        if root.is_dir() {
            walk(&root, &mut out);
        }
    }
    out
}

/// PIDs of every process in the tree at `path`.
pub(crate) fn pids(path: &str) -> Vec<i32> {
    let mut pids: Vec<i32> = tree(path)
        .iter()
        .filter_map(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .flat_map(|s| {
            s.lines()
                .filter_map(|l| l.trim().parse().ok())
                .collect::<Vec<_>>()
        })
        .collect();
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGKILLs every process in the tree until it is empty (a process may fork while it is
/// being killed), then removes the tree. Fails naming what is left after `limit`.
pub(crate) fn kill_and_remove(path: &str, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let pids = pids(path);
        if pids.is_empty() {
            break;
        }
        for pid in &pids {
            // SAFETY: kill(2) on processes of our own cgroup tree.
            unsafe {
                libc::kill(*pid, libc::SIGKILL);
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Host(format!(
                "processes {pids:?} in cgroup {path} survive SIGKILL"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    // A killed task leaves its cgroup a moment after it is reaped: retry rmdir briefly.
    loop {
        let left: Vec<PathBuf> = tree(path)
            .into_iter()
            .filter(|d| std::fs::remove_dir(d).is_err() && d.exists())
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::Host(format!(
                "cannot remove cgroups {}",
                left.iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Names of environment trees (`iu-testenv-<slot>`) present in any hierarchy.
pub(crate) fn environment_trees() -> Vec<String> {
    let mut out: Vec<String> = hierarchies()
        .iter()
        .filter_map(|h| std::fs::read_dir(h).ok())
        .flat_map(|d| d.flatten())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| e.file_name().to_str().map(str::to_owned))
        .filter(|n| n.starts_with(PREFIX))
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape("/sys/fs/cgroup/cpu"), "/sys/fs/cgroup/cpu");
    }
}
