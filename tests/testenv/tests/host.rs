//! Real nodes leave the host as they found it: after a clean stop (SIGTERM), after a
//! SIGKILLed harness once the next environment starts, and after a SIGKILLed harness once
//! `testenv cleanup` runs. The host is compared with a snapshot taken before, made here
//! independently of the harness's own bookkeeping: links, addresses, routes and rules,
//! iptables and nftables rules, nfacct objects, cgroups, mounts, sysctls, the fixed paths
//! kubelet, containerd and CNI write, and their processes.
//!
//! Needs root (skipped with a reason otherwise; `INPLACE_REAL_NODES=require` makes that a
//! failure) and the host to itself: no other real-node environment may run meanwhile.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

type TestResult = Result<(), Box<dyn std::error::Error>>;

const START_LIMIT: Duration = Duration::from_secs(240);
const EXIT_LIMIT: Duration = Duration::from_secs(90);

type Snapshot = BTreeMap<String, BTreeSet<String>>;

fn run(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .env(
            "PATH",
            "/usr/local/sbin:/usr/sbin:/sbin:/usr/local/bin:/usr/bin:/bin",
        )
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

fn lines(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Files of a directory tree, relative, `depth` levels deep.
fn listing(root: &Path, depth: usize, out: &mut BTreeSet<String>) {
    fn walk(dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            out.insert(e.path().display().to_string());
            if depth > 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&e.path(), depth - 1, out);
            }
        }
    }
    if root.exists() {
        out.insert(root.display().to_string());
    }
    walk(root, depth, out);
}

fn sysctls(dir: &Path, out: &mut BTreeSet<String>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        // A counter of live connections, not a setting.
        if p.ends_with("nf_conntrack_count") {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            sysctls(&p, out);
        } else if let Ok(v) = std::fs::read_to_string(&p) {
            out.insert(format!("{} = {}", p.display(), v.trim()));
        }
    }
}

fn snapshot(dirs: &[&Path]) -> Snapshot {
    let mut s = Snapshot::new();
    let counters = |text: String| {
        text.lines()
            .map(|l| {
                // iptables-save "[packets:bytes]", nft "counter packets N bytes M".
                let l = l.split(" [").next().unwrap_or(l).to_owned();
                match l.find("counter packets") {
                    Some(i) => l[..i].to_owned(),
                    None => l,
                }
            })
            .filter(|l| !l.starts_with('#'))
            .collect::<Vec<_>>()
            .join("\n")
    };
    s.insert(
        "links".into(),
        lines(&run("ip", &["-o", "link", "show"]))
            .into_iter()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_owned())
            })
            .collect(),
    );
    s.insert(
        "addresses".into(),
        lines(&run("ip", &["-o", "addr", "show"]))
            .into_iter()
            .map(|l| l.split(" valid_lft").next().unwrap_or(&l).to_owned())
            .collect(),
    );
    s.insert(
        "routes".into(),
        lines(
            &(run("ip", &["-4", "route", "show", "table", "all"])
                + &run("ip", &["-6", "route", "show", "table", "all"])),
        )
        .into_iter()
        .map(|l| l.split(" expires").next().unwrap_or(&l).to_owned())
        .collect(),
    );
    s.insert(
        "rules".into(),
        lines(&(run("ip", &["rule"]) + &run("ip", &["-6", "rule"]))),
    );
    s.insert(
        "iptables".into(),
        lines(&counters(run("iptables-save", &[]))),
    );
    s.insert(
        "ip6tables".into(),
        lines(&counters(run("ip6tables-save", &[]))),
    );
    s.insert(
        "nftables".into(),
        lines(&counters(run("nft", &["list", "ruleset"]))),
    );
    s.insert(
        "nfacct".into(),
        lines(&run("nfacct", &["list"]))
            .into_iter()
            .filter_map(|l| l.rsplit(" = ").next().map(str::to_owned))
            .collect(),
    );
    let mut cgroups = BTreeSet::new();
    for h in std::fs::read_dir("/sys/fs/cgroup")
        .into_iter()
        .flatten()
        .flatten()
    {
        for top in std::fs::read_dir(h.path()).into_iter().flatten().flatten() {
            if top.file_type().is_ok_and(|t| t.is_dir()) {
                cgroups.insert(top.path().display().to_string());
            }
        }
    }
    s.insert("cgroups".into(), cgroups);
    s.insert(
        "mounts".into(),
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let f: Vec<&str> = l.split_whitespace().collect();
                let fstype = l.split(" - ").nth(1)?.split_whitespace().next()?;
                Some(format!("{} {fstype}", f.get(4)?))
            })
            .collect(),
    );
    let mut values = BTreeSet::new();
    for dir in [
        "net/ipv4",
        "net/ipv6/conf",
        "net/netfilter",
        "net/bridge",
        "vm",
        "kernel/keys",
    ] {
        sysctls(&Path::new("/proc/sys").join(dir), &mut values);
    }
    for key in ["kernel/panic", "kernel/panic_on_oops"] {
        sysctls_one(key, &mut values);
    }
    s.insert("sysctls".into(), values);
    let mut paths = BTreeSet::new();
    for p in [
        "/var/lib/kubelet",
        "/var/lib/cni",
        "/var/log/containers",
        "/var/log/pods",
        "/run/containerd",
        "/run/mount",
        "/run/netns",
        "/var/lib/containerd",
        "/opt/containerd",
        "/etc/cni",
        "/opt/cni",
        "/usr/libexec/kubernetes",
        "/var/lib/inplace-upgrade-testenv",
    ] {
        listing(Path::new(p), 4, &mut paths);
    }
    s.insert("paths".into(), paths);
    // Processes of real nodes: those named after one of this test's environment directories
    // (kubelet, containerd, its shims, kube-proxy) and those in pod cgroups (containers). On a
    // shared machine other people's processes are none of these.
    let mut procs = BTreeSet::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let cmdline = std::fs::read_to_string(e.path().join("cmdline"))
            .unwrap_or_default()
            .replace('\0', " ");
        let cgroup = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
        // Zombies (dead, not yet reaped by init) have no command line.
        if cmdline.is_empty() {
            continue;
        }
        if dirs
            .iter()
            .any(|d| cmdline.contains(&d.display().to_string()))
            || cgroup.contains("kubepods")
            || cgroup.contains("iu-testenv")
        {
            procs.insert(cmdline);
        }
    }
    s.insert("processes".into(), procs);
    s
}

fn sysctls_one(key: &str, out: &mut BTreeSet<String>) {
    let p = Path::new("/proc/sys").join(key);
    if let Ok(v) = std::fs::read_to_string(&p) {
        out.insert(format!("{} = {}", p.display(), v.trim()));
    }
}

/// Lines that differ between two snapshots, per section, minus `volatile` ones.
fn diff(a: &Snapshot, b: &Snapshot, volatile: &BTreeSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    for (section, before) in a {
        let empty = BTreeSet::new();
        let after = b.get(section).unwrap_or(&empty);
        for l in before.difference(after) {
            if !volatile.contains(l) {
                out.push(format!("{section}: gone: {l}"));
            }
        }
        for l in after.difference(before) {
            if !volatile.contains(l) {
                out.push(format!("{section}: new: {l}"));
            }
        }
    }
    out
}

/// Lines that changed on their own while nothing ran (counters, other users' cgroups).
fn volatile(a: &Snapshot, b: &Snapshot) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for (section, before) in a {
        let empty = BTreeSet::new();
        let after = b.get(section).unwrap_or(&empty);
        out.extend(before.symmetric_difference(after).cloned());
    }
    out
}

struct Up {
    child: Child,
    lines: mpsc::Receiver<String>,
    dir: PathBuf,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn up(dir: &Path, kube_proxy: bool) -> Result<Up, Box<dyn std::error::Error>> {
    let bin = testenv::binaries()?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_testenv"));
    cmd.env(testenv::BIN_ENV, bin)
        .args(["up", "--nodes", "1", "--real-nodes", "1", "--dir"])
        .arg(dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    if kube_proxy {
        // And the loopback registry (skopeo writes a cache when it runs as root).
        cmd.args(["--kube-proxy", "--registry"]);
    }
    let mut child = cmd.spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let up = Up {
        child,
        lines,
        dir: dir.to_path_buf(),
    };
    let deadline = Instant::now() + START_LIMIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match up.lines.recv_timeout(left) {
            Ok(line) if line == "ready" => return Ok(up),
            Ok(_) => {}
            Err(_) => {
                return Err(
                    format!("testenv up did not print `ready` within {START_LIMIT:?}").into(),
                );
            }
        }
    }
}

fn kubectl(
    dir: &Path,
    args: &[&str],
    stdin: Option<&str>,
) -> Result<String, Box<dyn std::error::Error>> {
    let mut child = Command::new(dir.join("bin/kubectl"))
        .env("KUBECONFIG", dir.join("kubeconfig"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let (Some(text), Some(mut i)) = (stdin, child.stdin.take()) {
        i.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        return Err(format!("kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A pod on the real node behind a NodePort Service: a sandbox, a container, a veth, CNI
/// state, pod volumes (tmpfs mounts), container logs and, with kube-proxy, its rules.
fn run_a_pod(up: &Up) -> TestResult {
    let manifest = r#"
apiVersion: v1
kind: Pod
metadata: {name: web, labels: {app: web}}
spec:
  nodeSelector: {testenv.inplace-upgrade.io/node-kind: real}
  terminationGracePeriodSeconds: 1
  containers:
  - {name: pause, image: "registry.k8s.io/pause:3.10"}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  type: NodePort
  selector: {app: web}
  ports: [{port: 80, targetPort: 80}]
"#;
    kubectl(&up.dir, &["apply", "-f", "-"], Some(manifest))?;
    kubectl(
        &up.dir,
        &["wait", "--for=condition=Ready", "pod/web", "--timeout=120s"],
        None,
    )?;
    Ok(())
}

fn stop(up: &mut Up, signal: libc::c_int) -> TestResult {
    let pid = libc::pid_t::try_from(up.child.id())?;
    // SAFETY: kill(2) on a child we spawned.
    unsafe { libc::kill(pid, signal) };
    let deadline = Instant::now() + EXIT_LIMIT;
    while Instant::now() < deadline {
        if up.child.try_wait()?.is_some() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(format!("testenv up did not exit within {EXIT_LIMIT:?} of signal {signal}").into())
}

fn assert_same(
    what: &str,
    before: &Snapshot,
    after: &Snapshot,
    volatile: &BTreeSet<String>,
) -> TestResult {
    let d = diff(before, after, volatile);
    if d.is_empty() {
        Ok(())
    } else {
        Err(format!("{what}: the host differs from before:\n{}", d.join("\n")).into())
    }
}

/// Asserts the real node changed the host, so a comparison that finds nothing is not blind.
fn assert_changed(before: &Snapshot, volatile: &BTreeSet<String>, dirs: &[&Path]) -> TestResult {
    let d = diff(before, &snapshot(dirs), volatile);
    for section in [
        "links",
        "routes",
        "iptables",
        "cgroups",
        "mounts",
        "paths",
        "processes",
        "sysctls",
    ] {
        if !d.iter().any(|l| l.starts_with(&format!("{section}: new"))) {
            return Err(
                format!("a running real node shows nothing new in {section}: {d:#?}").into(),
            );
        }
    }
    Ok(())
}

/// Waits until no other real-node environment runs (the comparison needs the host alone).
fn await_host_alone() -> TestResult {
    let envs = Path::new(testenv::host::STATE_DIR).join("envs");
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let busy = std::fs::read_dir(&envs)
            .map(|d| d.count() > 0)
            .unwrap_or(false);
        if !busy {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "other real-node environments still run ({}); this test needs the host alone",
                envs.display()
            )
            .into());
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn real_nodes_leave_the_host_as_they_found_it() -> TestResult {
    if !testenv::real_nodes_wanted()? {
        return Ok(());
    }
    await_host_alone()?;
    // Resolve (or build) the binaries and images before the baseline.
    testenv::binaries()?;
    testenv::test_images()?;
    let (a, b, c, d) = (
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
        tempfile::tempdir()?,
    );
    let dirs = [a.path(), b.path(), c.path(), d.path()];
    let before = snapshot(&dirs);
    std::thread::sleep(Duration::from_secs(1));
    let volatile = volatile(&before, &snapshot(&dirs));

    // 1. A clean stop, with kube-proxy.
    let mut env = up(a.path(), true)?;
    run_a_pod(&env)?;
    assert_changed(&before, &volatile, &dirs)?;
    stop(&mut env, libc::SIGTERM)?;
    assert_same("after SIGTERM", &before, &snapshot(&dirs), &volatile)?;

    // 2. SIGKILL: containerd's shims and the containers outlive the harness; the next
    // environment's start cleans them up.
    let mut killed = up(b.path(), true)?;
    run_a_pod(&killed)?;
    stop(&mut killed, libc::SIGKILL)?;
    let left = diff(&before, &snapshot(&dirs), &volatile);
    assert!(
        left.iter()
            .any(|l| l.starts_with("processes: new") && l.contains("containerd-shim")),
        "a SIGKILLed harness leaves the shims running (else this test proves nothing): {left:#?}"
    );
    let mut next = up(c.path(), false)?;
    let killed_mounts: Vec<String> = snapshot(&dirs)["mounts"]
        .iter()
        .filter(|m| m.starts_with(&b.path().display().to_string()))
        .cloned()
        .collect();
    assert!(
        killed_mounts.is_empty(),
        "the next start left the killed run's mounts: {killed_mounts:?}"
    );
    stop(&mut next, libc::SIGTERM)?;
    assert_same(
        "after SIGKILL and the next start",
        &before,
        &snapshot(&dirs),
        &volatile,
    )?;

    // 3. SIGKILL, then `testenv cleanup`.
    let mut killed = up(d.path(), true)?;
    run_a_pod(&killed)?;
    stop(&mut killed, libc::SIGKILL)?;
    let out = Command::new(env!("CARGO_BIN_EXE_testenv"))
        .arg("cleanup")
        .output()?;
    assert!(
        out.status.success(),
        "testenv cleanup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("cleaned up after the killed environment"),
        "{stdout}"
    );
    assert_same(
        "after SIGKILL and testenv cleanup",
        &before,
        &snapshot(&dirs),
        &volatile,
    )?;
    Ok(())
}
