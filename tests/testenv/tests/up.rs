//! The `testenv up` binary: two environments run at once on free ports, and neither leaves a
//! process behind, whether stopped by SIGTERM or killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

/// Generous bound on a cold start of the control plane on a busy 2-core machine.
const START_LIMIT: Duration = Duration::from_secs(180);
const EXIT_LIMIT: Duration = Duration::from_secs(60);

struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Drop for Up {
    fn drop(&mut self) {
        // A failed assertion must not leave the harness running.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(dir: &Path) -> Result<Up, Box<dyn std::error::Error>> {
    // Resolve (or build) the binaries once here, so two harnesses never run build.sh at once.
    let bin = testenv::binaries()?;
    let mut child = Command::new(env!("CARGO_BIN_EXE_testenv"))
        .env(testenv::BIN_ENV, bin)
        .args(["up", "--nodes", "1", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    Ok(Up { child, lines })
}

fn await_ready(up: &Up, name: &str) -> TestResult {
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match up.lines.recv_timeout(left) {
            Ok(line) if line == "ready" => return Ok(()),
            Ok(_) => {}
            Err(_) => {
                return Err(format!(
                    "environment {name} did not print `ready` within {START_LIMIT:?}"
                )
                .into());
            }
        }
    }
}

/// PIDs whose parent is `pid`.
fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, rest)| rest.split_whitespace().nth(1).map(str::to_owned))
                })
                .flatten()
                .is_some_and(|ppid| ppid == pid.to_string())
        })
        .collect()
}

/// Whether the process is gone (or a zombie: dead, waiting for a reaper).
fn dead(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => s
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|st| st == "Z" || st == "X"),
    }
}

/// Process death has no event to wait on here: check every 50 ms, within a limit.
fn await_dead(pids: &[u32], what: &str) -> TestResult {
    let deadline = Instant::now() + EXIT_LIMIT;
    while Instant::now() < deadline {
        if pids.iter().all(|p| dead(*p)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive: Vec<&u32> = pids.iter().filter(|p| !dead(**p)).collect();
    Err(format!("{what}: processes {alive:?} still alive after {EXIT_LIMIT:?}").into())
}

fn kubectl(dir: &Path, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new(dir.join("bin/kubectl"))
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .args(args)
        .output()?;
    if !out.status.success() {
        return Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn two_environments_run_at_once_and_leave_no_orphans() -> TestResult {
    let dir_a = tempfile::tempdir()?;
    let dir_b = tempfile::tempdir()?;
    let mut a = up(dir_a.path())?;
    let mut b = up(dir_b.path())?;
    await_ready(&a, "a")?;
    await_ready(&b, "b")?;

    // Separate clusters: what one sees the other does not.
    kubectl(dir_a.path(), &["create", "namespace", "only-in-a"])?;
    assert!(
        kubectl(dir_b.path(), &["get", "namespaces", "-o", "name"])?
            .lines()
            .all(|l| l != "namespace/only-in-a")
    );
    assert!(kubectl(dir_a.path(), &["get", "nodes", "-o", "name"])?.contains("node/sim-node-0"));

    let procs_a = children_of(a.child.id());
    let procs_b = children_of(b.child.id());
    assert_eq!(
        procs_a.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager under a: {procs_a:?}"
    );
    assert_eq!(
        procs_b.len(),
        3,
        "etcd, kube-apiserver, kube-controller-manager under b: {procs_b:?}"
    );

    // SIGTERM: a clean stop that reaps its children.
    let pid_a = libc::pid_t::try_from(a.child.id())?;
    // SAFETY: kill(2) on a child we spawned.
    unsafe { libc::kill(pid_a, libc::SIGTERM) };
    let status = wait_exit(&mut a.child)?;
    assert!(status.success(), "up exits 0 on SIGTERM, got {status}");
    await_dead(&procs_a, "after SIGTERM to up")?;

    // SIGKILL: no chance to clean up; PR_SET_PDEATHSIG takes the children down.
    b.child.kill()?;
    b.child.wait()?;
    await_dead(&procs_b, "after SIGKILL to up")?;
    Ok(())
}

fn wait_exit(child: &mut Child) -> Result<std::process::ExitStatus, Box<dyn std::error::Error>> {
    let deadline = Instant::now() + EXIT_LIMIT;
    while Instant::now() < deadline {
        if let Some(s) = child.try_wait()? {
            return Ok(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("up did not exit within {EXIT_LIMIT:?} of SIGTERM").into())
}
