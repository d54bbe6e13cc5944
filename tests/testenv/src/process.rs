//! Control-plane child processes that never outlive the harness.
//!
//! Every child gets `PR_SET_PDEATHSIG(SIGKILL)`. That signal fires when the *thread* that
//! forked it exits, so all children are forked by one dedicated thread that lives as long as
//! the process. Each child leads its own process group, so stopping it stops anything it
//! started.

use std::ffi::CString;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::{Error, Result};

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<std::process::Child>>);

fn spawner() -> &'static Mutex<mpsc::Sender<SpawnRequest>> {
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("testenv-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
                // The sender is in a static and never dropped: park so children keep living.
                loop {
                    std::thread::park();
                }
            })
            .map(|_| ())
            .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start the spawner thread"));
        Mutex::new(tx)
    })
}

/// A running component (control plane or real node) with its log file.
#[derive(Debug)]
pub(crate) struct Child {
    pub name: String,
    pub log: PathBuf,
    child: std::process::Child,
}

impl Child {
    /// Starts `program args…` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> Result<Self> {
        Self::spawn_with(name, program, args, log, &Extra::default())
    }

    /// [`Child::spawn`] with environment variables and a cgroup to join before exec.
    pub fn spawn_with(
        name: &str,
        program: &Path,
        args: &[String],
        log: PathBuf,
        extra: &Extra,
    ) -> Result<Self> {
        let file =
            File::create(&log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err_file = file
            .try_clone()
            .map_err(|e| Error::io(format!("open {}", log.display()), e))?;
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::from(file))
            .stderr(Stdio::from(err_file))
            .envs(extra.env.iter().map(|(k, v)| (k, v)))
            .process_group(0);
        let parent = std::process::id();
        let cgroup_procs = extra.cgroup_procs.clone();
        // SAFETY: only async-signal-safe calls (prctl, getppid, _exit, open, write, close)
        // between fork and exec; the paths were allocated before the fork.
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The parent died before prctl took effect: do not become an orphan.
                if libc::getppid() != parent as libc::pid_t {
                    libc::_exit(1);
                }
                // Join the cgroup before exec, so nothing the program starts escapes it.
                for file in &cgroup_procs {
                    let fd = libc::open(file.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                    if fd < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    let written = libc::write(fd, b"0".as_ptr().cast(), 1);
                    libc::close(fd);
                    if written != 1 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let (reply_tx, reply_rx) = mpsc::channel();
        let sent = spawner()
            .lock()
            .map_err(|_| Error::Spawn {
                component: name.to_owned(),
                message: "spawner lock poisoned".into(),
            })?
            .send((cmd, reply_tx));
        if sent.is_err() {
            return Err(Error::Spawn {
                component: name.to_owned(),
                message: "the spawner thread is gone".into(),
            });
        }
        let child = reply_rx
            .recv()
            .map_err(|_| Error::Spawn {
                component: name.to_owned(),
                message: "the spawner thread is gone".into(),
            })?
            .map_err(|e| Error::Spawn {
                component: name.to_owned(),
                message: format!("{}: {e}", program.display()),
            })?;
        Ok(Self {
            name: name.to_owned(),
            log,
            child,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Fails with the component's log tail if it has exited.
    pub fn check(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(self.exited(status)),
            Ok(None) => Ok(()),
            Err(e) => Err(Error::io(format!("wait for {}", self.name), e)),
        }
    }

    pub fn exited(&self, status: ExitStatus) -> Error {
        Error::ComponentExited {
            component: self.name.clone(),
            status: status.to_string(),
            log: self.log.clone(),
            tail: tail(&self.log, 30),
        }
    }

    /// Sends `signal` to the child's process group.
    pub fn signal(&self, signal: libc::c_int) {
        if let Ok(pid) = libc::pid_t::try_from(self.child.id()) {
            // SAFETY: kill(2) on our own child's process group.
            unsafe {
                libc::kill(-pid, signal);
            }
        }
    }

    /// SIGTERM, then SIGKILL after `grace`; reaps the child.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_)) | Err(_)) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGKILL);
            let _ = self.child.wait();
        }
    }
}

/// What a real node's processes need besides arguments.
#[derive(Debug, Default)]
pub(crate) struct Extra {
    pub env: Vec<(String, String)>,
    /// `cgroup.procs` files (one per hierarchy) the child writes `0` into before exec.
    pub cgroup_procs: Vec<CString>,
}

/// The last `lines` lines of a log file (at most the last 64 KiB are read).
pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(64 * 1024)));
    let mut buf = Vec::new();
    let _ = f.read_to_end(&mut buf);
    let text = String::from_utf8_lossy(&buf);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// `n` distinct TCP ports on 127.0.0.1 that were free a moment ago (all held until all are
/// chosen, so they differ from each other).
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let err = |e| Error::io("find a free port on 127.0.0.1".into(), e);
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(err)?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()).map_err(err))
        .collect()
}
