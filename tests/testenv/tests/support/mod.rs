// Each test binary uses a different part of this module.
#![allow(dead_code)]

//! A private containerd for tests: its own root, state, socket and `opt` dir under a
//! temporary directory, the CRI plugin off; stopped, unmounted and removed on drop. Needs root
//! and Debian's containerd; [`skip_reason`] says why not.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub fn skip_reason() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("not root".into());
    }
    for tool in ["containerd", "ctr", "runc"] {
        if !Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            return Some(format!(
                "{tool} is not installed (Debian: apt-get install containerd runc)"
            ));
        }
    }
    None
}

#[macro_export]
macro_rules! skip_unless_able {
    () => {
        if let Some(reason) = $crate::support::skip_reason() {
            eprintln!("skipped: {reason}");
            return Ok(());
        }
    };
}

/// Paths a containerd may create outside its configured directories.
pub const HOST_PATHS: &[&str] = &["/run/containerd", "/var/lib/containerd", "/opt/containerd"];

/// A containerd of our own, stopped and removed on drop.
pub struct Containerd {
    child: Child,
    pub dir: tempfile::TempDir,
    socket: PathBuf,
    host_paths_before: Vec<bool>,
}

impl Containerd {
    pub fn start() -> Result<Self, Box<dyn std::error::Error>> {
        let host_paths_before = HOST_PATHS.iter().map(|p| Path::new(p).exists()).collect();
        let dir = tempfile::Builder::new()
            .prefix("iu-containerd-")
            .tempdir()?;
        let d = dir.path();
        let socket = d.join("containerd.sock");
        let config = d.join("config.toml");
        std::fs::write(
            &config,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "{socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{opt}"
"#,
                root = d.join("root").display(),
                state = d.join("state").display(),
                socket = socket.display(),
                opt = d.join("opt").display(),
            ),
        )?;
        let log = std::fs::File::create(d.join("containerd.log"))?;
        let mut cmd = Command::new("containerd");
        cmd.arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // SAFETY: prctl is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        let c = Self {
            child,
            dir,
            socket,
            host_paths_before,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !c.ctr(&["version"]).status.success() {
            if Instant::now() > deadline {
                return Err(format!("containerd did not answer within 60 s:\n{}", c.log()).into());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(c)
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("ctr");
        cmd.arg("--address").arg(&self.socket).args(args);
        cmd
    }

    /// `ctr run --rm IMAGE ID [COMMAND…]` in our namespace, without a cgroup, with runc's
    /// state and the FIFOs under our directory.
    pub fn run(&self, image: &str, id: &str, command: &[&str]) -> Command {
        let d = self.dir.path();
        let mut cmd = self.command(&["-n", "iu-images", "run", "--rm", "--cgroup", ""]);
        cmd.arg("--runc-root")
            .arg(d.join("runc"))
            .arg("--fifo-dir")
            .arg(d.join("fifo"))
            .args([image, id])
            .args(command);
        cmd
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        self.command(args)
            .output()
            .unwrap_or_else(|e| panic!("ctr {args:?}: {e}"))
    }

    pub fn ok(&self, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
        let out = self.ctr(args);
        if !out.status.success() {
            return Err(format!(
                "ctr {args:?}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// `ctr images ls -q`-like: name → manifest digest.
    pub fn images(
        &self,
        namespace: &str,
    ) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
        let out = self.ok(&["-n", namespace, "images", "ls"])?;
        Ok(out
            .lines()
            .skip(1)
            .filter_map(|l| {
                let mut f = l.split_whitespace();
                Some((f.next()?.to_owned(), f.nth(1)?.to_owned()))
            })
            .collect())
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let pid = self.child.id() as libc::pid_t;
        // SAFETY: signals to our own child's process group.
        unsafe { libc::kill(-pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && matches!(self.child.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(50));
        }
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
        for m in mounts_under(self.dir.path()).into_iter().rev() {
            let c = std::ffi::CString::new(m).expect("no NUL in a mount path");
            // SAFETY: umount2 on a path string we own.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        // What containerd's shims create regardless of configuration, removed only when we
        // created it and it is empty now.
        for (path, existed) in HOST_PATHS.iter().zip(&self.host_paths_before) {
            if !existed {
                remove_empty_dirs(Path::new(path));
            }
        }
    }
}

fn remove_empty_dirs(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for e in entries.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_empty_dirs(&e.path());
            }
        }
        let _ = std::fs::remove_dir(path);
    }
}

fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4).map(str::to_owned))
        .filter(|m| m.starts_with(&prefix))
        .collect()
}

/// Nothing of a containerd is left where it did not exist before (checked only for paths
/// no other process of this machine was using).
pub fn assert_host_clean() {
    for path in HOST_PATHS {
        let p = Path::new(path);
        if p.exists() {
            // Another containerd (a real node of another test) may own it; ours only counts
            // if it holds our namespaces.
            let ours = ["iu-images", "kind"]
                .iter()
                .any(|ns| p.join("runc").join(ns).exists());
            assert!(!ours, "{path} still holds state of ours");
        }
    }
}
