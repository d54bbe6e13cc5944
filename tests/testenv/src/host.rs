//! What real nodes change on the host, recorded so that it is undone — on a clean stop, and
//! by the next start (or `testenv cleanup`) after a harness that was killed.
//!
//! Everything lives under [`STATE_DIR`], guarded by a `flock`:
//! - `envs/<slot>.json`: one record per running environment with real nodes (its slot, the
//!   harness's PID and start time, its directory). A record whose process is gone belongs to a
//!   killed run: its cgroup tree (every kubelet, containerd, shim and container) is killed, its
//!   mounts, bridges and files are removed.
//! - `baseline.json`: what the host looked like before the first of the running environments
//!   started — the sysctls kubelet and CNI change, which netfilter tables, `KUBE-*` chains and
//!   `nfacct` objects existed, and the contents of the fixed paths kubelet, containerd and CNI
//!   write to whatever they are told. When the last environment stops, the host is put back to
//!   it and the state directory is removed.
//!
//! Environments run side by side: each takes a slot `s` (0–7) that names its bridges
//! (`iu<s>n<i>`), pod subnets (`10.<200+s>.<i>.0/24`) and cgroup tree (`/iu-testenv-<s>`).
//! What they share (the Service-range route, the policy-routing rule that keeps pod traffic
//! on the host, kubelet's netfilter chains, the sysctls) is set up by the first and undone by
//! the last. kube-proxy owns netfilter chains with fixed names: one environment per host may
//! run it.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::cgroup;
use crate::{Error, Result};

/// Host-wide state of real-node environments.
pub const STATE_DIR: &str = "/var/lib/inplace-upgrade-testenv";
/// The Service range of every environment (`--service-cluster-ip-range`).
pub const SERVICE_RANGE: &str = "10.96.0.0/16";
/// A bridge with no ports that the Service range (and the simulated pods' ranges) are routed
/// into, so a packet to an address nothing answers for goes nowhere instead of leaving the
/// machine by the default route (this kernel has no `dummy` links).
pub const SERVICE_BRIDGE: &str = "iu-svc";
/// Every real node's pod subnet lies in here: `10.<200+slot>.<node>.0/24`.
pub const POD_SUPERNET: &str = "10.200.0.0/13";
/// Routing table (and rule priority) for traffic from pods: their subnets, the Service range,
/// and `unreachable` for everything else, so no pod packet can take the default route.
pub const POD_ROUTE_TABLE: u32 = 2570;
/// Environments that may run at once (slots of [`POD_SUPERNET`]).
pub const MAX_SLOTS: u8 = 8;
/// Nodes per environment (third octet of the pod subnet; `.0` to `.250`).
pub const MAX_REAL_NODES: usize = 250;

/// Paths kubelet, containerd, CNI and libmount write outside the directories they are given:
/// kubelet's device-plugin socket and checkpoint (`/var/lib/kubelet/device-plugins`), the
/// container log symlinks (`/var/log/containers`), the CNI result cache (`/var/lib/cni`),
/// containerd's shim sockets (`/run/containerd/s`), libmount's `/run/mount`. The rest are
/// defaults we override; they are watched in case a version changes that.
const HOST_PATHS: &[&str] = &[
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
    // skopeo's blob-info cache when it runs as root (pushes to the loopback registry).
    "/var/lib/containers",
];

/// Sysctls kubelet (`vm.overcommit_memory`, `vm.panic_on_oom`, `kernel.panic`,
/// `kernel.panic_on_oops`, `kernel.keys.*`), the CNI bridge plugin (`net.ipv4.ip_forward`,
/// which also flips every interface's `forwarding` and `all.accept_redirects`) and kube-proxy
/// (`route_localnet`, conntrack sizes and timeouts, bridge netfilter) may change. Restored in
/// this order: `ip_forward` first, since writing it resets the per-interface values.
const SYSCTLS: &[&str] = &[
    "net.ipv4.ip_forward",
    "net.ipv4.conf.all.forwarding",
    "net.ipv4.conf.default.forwarding",
    "net.ipv4.conf.all.accept_redirects",
    "net.ipv4.conf.all.route_localnet",
    "net.ipv6.conf.all.forwarding",
    "vm.overcommit_memory",
    "vm.panic_on_oom",
    "kernel.panic",
    "kernel.panic_on_oops",
    "kernel.keys.root_maxkeys",
    "kernel.keys.root_maxbytes",
    "net.netfilter.nf_conntrack_max",
    "net.netfilter.nf_conntrack_tcp_timeout_established",
    "net.netfilter.nf_conntrack_tcp_timeout_close_wait",
    "net.netfilter.nf_conntrack_tcp_be_liberal",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
];

/// kube-proxy's `nfacct` counters; `kube-proxy --cleanup` leaves them.
const NFACCT: &[&str] = &[
    "ct_state_invalid_dropped_pkts",
    "localhost_nps_accepted_pkts",
];
/// Netfilter tables kube-proxy makes in nftables mode (its iptables mode removes them).
const KUBE_PROXY_NFT_TABLES: &[&str] = &["ip kube-proxy", "ip6 kube-proxy"];

/// The names one environment's slot gives its nodes.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Slot(pub u8);

impl Slot {
    pub fn bridge(self, node: usize) -> String {
        format!("iu{}n{node}", self.0)
    }
    pub fn subnet(self, node: usize) -> String {
        format!("10.{}.{node}.0/24", 200 + u32::from(self.0))
    }
    /// The node's IP: the bridge's address, the pods' gateway, where kubelet listens.
    pub fn node_ip(self, node: usize) -> String {
        format!("10.{}.{node}.1", 200 + u32::from(self.0))
    }
    /// All of this environment's pod subnets (kube-proxy's `clusterCIDR`).
    pub fn pod_range(self) -> String {
        format!("10.{}.0.0/16", 200 + u32::from(self.0))
    }
    pub fn cgroup(self) -> String {
        format!("/{}{}", cgroup::PREFIX, self.0)
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Baseline {
    sysctls: BTreeMap<String, String>,
    /// For each of [`HOST_PATHS`]: `None` if absent, else the relative paths below it.
    paths: BTreeMap<String, Option<BTreeSet<String>>>,
    /// `"<family> <table>"` of every netfilter table.
    nft_tables: BTreeSet<String>,
    /// `"<family> <table> <chain>"` of every `KUBE-*` chain.
    kube_chains: BTreeSet<String>,
    nfacct: BTreeSet<String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct EnvRecord {
    slot: u8,
    pid: u32,
    /// The harness's start time (`/proc/<pid>/stat` field 22), so a reused PID is not taken
    /// for the harness.
    start_time: u64,
    dir: PathBuf,
    real_nodes: usize,
    kube_proxy: bool,
}

impl EnvRecord {
    fn alive(&self) -> bool {
        process_start_time(self.pid) == Some(self.start_time)
    }
}

/// An environment's claim on the host: its slot and record. [`Lease::release`] undoes what
/// it changed, and the shared changes if it is the last.
#[derive(Debug)]
pub(crate) struct Lease {
    pub slot: Slot,
    dir: PathBuf,
    released: bool,
}

/// Checks that real nodes can run here (root, Linux, the commands they need, installing the
/// Debian packages that provide missing ones), once per process.
pub(crate) fn preflight(kube_proxy: bool, registry: bool) -> Result<()> {
    static BASE: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static PROXY: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    static REGISTRY: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let check = |need: &[(&str, &str)]| -> std::result::Result<(), String> {
        // SAFETY: geteuid has no preconditions.
        let uid = unsafe { libc::geteuid() };
        if uid != 0 {
            return Err(format!(
                "real nodes need root (kubelet, containerd and CNI change the host's network, cgroups and mounts); running as uid {uid}"
            ));
        }
        let missing: BTreeSet<&str> = need
            .iter()
            .filter(|(cmd, _)| find_command(cmd).is_none())
            .map(|(_, pkg)| *pkg)
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        install_packages(&missing.into_iter().collect::<Vec<_>>())
    };
    let base = &[
        ("containerd", "containerd"),
        ("ctr", "containerd"),
        ("containerd-shim-runc-v2", "containerd"),
        ("runc", "runc"),
        ("/usr/lib/cni/bridge", "containernetworking-plugins"),
        ("/usr/lib/cni/host-local", "containernetworking-plugins"),
        ("/usr/lib/cni/loopback", "containernetworking-plugins"),
        ("iptables", "iptables"),
        ("iptables-save", "iptables"),
        ("iptables-restore", "iptables"),
        ("ip6tables-save", "iptables"),
        ("ip6tables-restore", "iptables"),
        ("nft", "nftables"),
        ("ip", "iproute2"),
        ("mount", "mount"),
    ];
    BASE.get_or_init(|| check(base))
        .clone()
        .map_err(Error::Host)?;
    if kube_proxy {
        let proxy = &[("conntrack", "conntrack"), ("nfacct", "nfacct")];
        PROXY
            .get_or_init(|| check(proxy))
            .clone()
            .map_err(Error::Host)?;
    }
    if registry {
        let need = &[("docker-registry", "docker-registry"), ("skopeo", "skopeo")];
        REGISTRY
            .get_or_init(|| check(need))
            .clone()
            .map_err(Error::Host)?;
    }
    Ok(())
}

/// `PATH` plus the sbin directories, where iptables, runc and ip live on Debian.
pub(crate) fn search_path() -> String {
    let mut path = std::env::var("PATH").unwrap_or_default();
    for dir in ["/usr/local/sbin", "/usr/sbin", "/sbin", "/usr/bin", "/bin"] {
        if !path.split(':').any(|p| p == dir) {
            if !path.is_empty() {
                path.push(':');
            }
            path.push_str(dir);
        }
    }
    path
}

pub(crate) fn find_command(cmd: &str) -> Option<PathBuf> {
    if cmd.starts_with('/') {
        return Path::new(cmd).is_file().then(|| PathBuf::from(cmd));
    }
    search_path()
        .split(':')
        .map(|d| Path::new(d).join(cmd))
        .find(|p| p.is_file())
}

fn install_packages(packages: &[&str]) -> std::result::Result<(), String> {
    let list = packages.join(" ");
    let Some(apt) = find_command("apt-get") else {
        return Err(format!(
            "real nodes need the Debian packages {list}, and there is no apt-get to install them"
        ));
    };
    tracing::warn!(packages = %list, "installing Debian packages real nodes need");
    // No package may start its service on install (docker-registry's would listen on every
    // address): the policy-rc.d convention, only if the host has none of its own.
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let made_policy = !policy.exists()
        && std::fs::write(policy, "#!/bin/sh\nexit 101\n").is_ok()
        && std::fs::set_permissions(policy, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .is_ok();
    let result = apt_install(&apt, packages, &list);
    if made_policy {
        let _ = std::fs::remove_file(policy);
    }
    result
}

fn apt_install(apt: &Path, packages: &[&str], list: &str) -> std::result::Result<(), String> {
    let install = || {
        Command::new(apt)
            .args(["install", "-y", "--no-install-recommends", "-q"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .env("PATH", search_path())
            .stdin(Stdio::null())
            .output()
    };
    let mut out = install().map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !out.status.success() {
        // The package lists may be stale or absent on a fresh machine.
        let _ = Command::new(apt)
            .args(["update", "-q"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdin(Stdio::null())
            .output();
        out = install().map_err(|e| format!("cannot run apt-get: {e}"))?;
    }
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().rev().find(|l| !l.trim().is_empty());
        return Err(format!(
            "cannot install the Debian packages {list} that real nodes need: apt-get: {}",
            last.unwrap_or("failed")
        ));
    }
    Ok(())
}

/// Runs a command; its stdout, or an error with the last line of its stderr.
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String> {
    run_with_input(program, args, None)
}

fn run_with_input(program: &str, args: &[&str], input: Option<&str>) -> Result<String> {
    let path = find_command(program).unwrap_or_else(|| PathBuf::from(program));
    let mut child = Command::new(&path)
        .args(args)
        .env("PATH", search_path())
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("run {program}"), e))?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|e| Error::io(format!("write to {program}"), e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::io(format!("wait for {program}"), e))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return Err(Error::Host(format!(
            "{program} {}: {}",
            args.join(" "),
            stderr.trim().lines().last().unwrap_or("failed")
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The exclusive host lock. The lock file is removed with the state directory by the last
/// environment, so a waiter that got the lock on a file since unlinked tries again.
struct HostLock {
    _file: File,
}

fn lock() -> Result<HostLock> {
    let path = Path::new(STATE_DIR).join("lock");
    loop {
        std::fs::create_dir_all(Path::new(STATE_DIR).join("envs"))
            .map_err(|e| Error::io(format!("create {STATE_DIR}"), e))?;
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        // SAFETY: flock on a file descriptor we own.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io(
                format!("lock {}", path.display()),
                std::io::Error::last_os_error(),
            ));
        }
        let held = file.metadata().map(|m| m.ino()).ok();
        let current = std::fs::metadata(&path).map(|m| m.ino()).ok();
        if held.is_some() && held == current {
            return Ok(HostLock { _file: file });
        }
    }
}

fn records() -> Vec<(PathBuf, EnvRecord)> {
    let dir = Path::new(STATE_DIR).join("envs");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let text = std::fs::read_to_string(e.path()).ok()?;
            Some((e.path(), serde_json::from_str(&text).ok()?))
        })
        .collect()
}

fn process_start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    // Fields after the command: state is field 3, starttime field 22.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Claims a slot for an environment in `dir` with `real_nodes` nodes, after cleaning what
/// killed environments left; sets up the shared routing on first use.
pub(crate) fn acquire(
    dir: &Path,
    real_nodes: usize,
    kube_proxy: bool,
    simulated_nodes: usize,
) -> Result<Lease> {
    if real_nodes > MAX_REAL_NODES {
        return Err(Error::Options(format!(
            "{real_nodes} real nodes requested; at most {MAX_REAL_NODES}"
        )));
    }
    let _lock = lock()?;
    let claimed = claim(dir, real_nodes, kube_proxy, simulated_nodes);
    if claimed.is_err() && records().is_empty() {
        // Nothing runs and nothing was changed: leave no state directory behind.
        let _ = finish_if_last();
    }
    claimed
}

/// [`acquire`] under the lock.
fn claim(dir: &Path, real_nodes: usize, kube_proxy: bool, simulated_nodes: usize) -> Result<Lease> {
    reap_dead()?;
    let live = records();
    if live.is_empty() {
        restore_shared()?;
        check_no_leftovers()?;
    }
    if kube_proxy && let Some((_, other)) = live.iter().find(|(_, r)| r.kube_proxy) {
        return Err(Error::Host(format!(
            "kube-proxy already runs for the environment in {} (pid {}); its netfilter chains have fixed names, so one environment per host may run it",
            other.dir.display(),
            other.pid
        )));
    }
    let used: HashSet<u8> = live.iter().map(|(_, r)| r.slot).collect();
    let routes = foreign_routes()?;
    let slot = (0..MAX_SLOTS)
        .filter(|s| !used.contains(s))
        .find(|s| !overlaps_any(&Slot(*s).pod_range(), &routes))
        .ok_or_else(|| {
            Error::Host(format!(
                "no free pod subnet for real nodes: {} environments run and the rest of {POD_SUPERNET} is routed on this host ({})",
                used.len(),
                routes
                    .iter()
                    .filter(|r| overlaps(r, POD_SUPERNET))
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    let mut blackholed = vec![SERVICE_RANGE.to_owned()];
    blackholed.extend((0..simulated_nodes).map(|i| format!("10.{}.0.0/16", 128 + i)));
    for range in &blackholed {
        if let Some(r) = routes.iter().find(|r| overlaps(r, range)) {
            return Err(Error::Host(format!(
                "{range} is routed on this host ({r}); real nodes route it into {SERVICE_BRIDGE} so that nothing sent there leaves the machine"
            )));
        }
    }
    for ns in nameservers() {
        if blackholed
            .iter()
            .chain([POD_SUPERNET.to_owned()].iter())
            .any(|r| contains(r, &ns))
        {
            return Err(Error::Host(format!(
                "this host's DNS server {ns} lies in a range real nodes use"
            )));
        }
    }
    // Nothing has been changed yet: this is the host as found.
    if live.is_empty() {
        write_json(
            &Path::new(STATE_DIR).join("baseline.json"),
            &take_baseline(),
        )?;
    }
    let record = EnvRecord {
        slot,
        pid: std::process::id(),
        start_time: process_start_time(std::process::id()).unwrap_or_default(),
        dir: dir.to_path_buf(),
        real_nodes,
        kube_proxy,
    };
    write_json(&record_path(slot), &record)?;
    let mut lease = Lease {
        slot: Slot(slot),
        dir: dir.to_path_buf(),
        released: false,
    };
    if let Err(e) = setup_shared(&blackholed) {
        // Undo under the lock we hold (dropping the lease would wait for it).
        let _ = lease.release_locked();
        return Err(e);
    }
    Ok(lease)
}

fn record_path(slot: u8) -> PathBuf {
    Path::new(STATE_DIR)
        .join("envs")
        .join(format!("{slot}.json"))
}

fn write_json<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| Error::Host(format!("encode {}: {e}", path.display())))?;
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

impl Lease {
    /// Kills every process of the environment's nodes, removes their mounts, bridges,
    /// cgroups and the files they left in [`HOST_PATHS`]; if no other environment runs,
    /// restores the shared state and the baseline.
    pub fn release(mut self) -> Result<()> {
        self.release_once()
    }

    fn release_once(&mut self) -> Result<()> {
        if self.released {
            return Ok(());
        }
        let _lock = lock()?;
        self.release_locked()
    }

    /// [`Lease::release`] with the host lock held.
    fn release_locked(&mut self) -> Result<()> {
        if std::mem::replace(&mut self.released, true) {
            return Ok(());
        }
        let own = clean_env(self.slot, &self.dir);
        let _ = std::fs::remove_file(record_path(self.slot.0));
        let shared = finish_if_last();
        own.and(shared)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Err(e) = self.release_once() {
            tracing::error!(error = %e, "cleaning up real nodes");
        }
    }
}

/// Under the lock: when no environment is left, restore the shared state and remove the
/// state directory.
fn finish_if_last() -> Result<()> {
    if !records().is_empty() {
        return Ok(());
    }
    restore_shared()?;
    std::fs::remove_dir_all(STATE_DIR).map_err(|e| Error::io(format!("remove {STATE_DIR}"), e))
}

/// Cleans every environment whose harness is gone.
fn reap_dead() -> Result<()> {
    for (path, record) in records() {
        if record.alive() {
            continue;
        }
        tracing::warn!(dir = %record.dir.display(), pid = record.pid, "cleaning up after a real-node environment whose harness is gone");
        clean_env(Slot(record.slot), &record.dir)?;
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// What `testenv cleanup` did.
#[derive(Debug, Default)]
pub struct CleanupReport {
    /// Directories of killed environments that were cleaned.
    pub cleaned: Vec<PathBuf>,
    /// Directories of environments still running (left alone).
    pub running: Vec<PathBuf>,
}

/// Cleans up after killed real-node environments; when none runs any more, puts the host
/// back to the baseline. Environments that still run are left alone.
pub fn cleanup() -> Result<CleanupReport> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(Error::Host("cleanup needs root".into()));
    }
    let mut report = CleanupReport::default();
    let state_existed = Path::new(STATE_DIR).exists();
    let _lock = lock()?;
    for (_, record) in records() {
        if record.alive() {
            report.running.push(record.dir.clone());
        } else {
            report.cleaned.push(record.dir.clone());
        }
    }
    reap_dead()?;
    // Trees and bridges named like ours but without a record (state directory removed by
    // hand): nothing else makes them.
    if records().is_empty() {
        for tree in cgroup::environment_trees() {
            cgroup::kill_and_remove(&format!("/{tree}"), Duration::from_secs(10))?;
        }
        for link in our_links()? {
            let _ = run("ip", &["link", "del", &link]);
        }
    }
    if state_existed {
        finish_if_last()?;
    } else {
        // Nothing recorded: remove only what is unambiguously ours.
        restore_routing()?;
        let _ = std::fs::remove_dir_all(STATE_DIR);
    }
    // What running environments hold is theirs, not a leftover.
    if records().is_empty() {
        check_no_leftovers()?;
    }
    Ok(report)
}

/// One environment's own changes: processes, mounts, cgroups, bridges, files.
fn clean_env(slot: Slot, dir: &Path) -> Result<()> {
    let mut errors = Vec::new();
    // Sandbox IDs name the CNI cache entries of the loopback network; read them first.
    let sandboxes = sandbox_ids(dir);
    if let Err(e) = cgroup::kill_and_remove(&slot.cgroup(), Duration::from_secs(15)) {
        errors.push(e.to_string());
    }
    if let Err(e) = unmount_below(dir) {
        errors.push(e.to_string());
    }
    // Unmounted network namespaces take their veths with them; the bridges are ours.
    for link in our_links().unwrap_or_default() {
        if link.starts_with(&format!("iu{}n", slot.0))
            && let Err(e) = run("ip", &["link", "del", &link])
        {
            errors.push(e.to_string());
        }
    }
    // kubelet's symlinks to the pod logs in our directory.
    if let Ok(entries) = std::fs::read_dir("/var/log/containers") {
        for e in entries.flatten() {
            if std::fs::read_link(e.path()).is_ok_and(|t| t.starts_with(dir)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // The CNI result cache: `<network>-<sandbox>-<interface>`.
    if let Ok(entries) = std::fs::read_dir("/var/lib/cni/results") {
        let prefix = format!("iu{}n", slot.0);
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) || sandboxes.iter().any(|id| name.contains(id.as_str())) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
    // The runtime's data (images, snapshots, pod volumes); configs and logs stay.
    if let Ok(nodes) = std::fs::read_dir(dir.join("nodes")) {
        for n in nodes.flatten() {
            for sub in ["containerd", "kubelet/root", "runc"] {
                let _ = std::fs::remove_dir_all(n.path().join(sub));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Host(format!(
            "cleaning up real nodes of {}: {}",
            dir.display(),
            errors.join("; ")
        )))
    }
}

fn sandbox_ids(dir: &Path) -> Vec<String> {
    let Ok(nodes) = std::fs::read_dir(dir.join("nodes")) else {
        return Vec::new();
    };
    nodes
        .flatten()
        .flat_map(|n| {
            let d = n
                .path()
                .join("containerd/state/io.containerd.grpc.v1.cri/sandboxes");
            std::fs::read_dir(d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Mount points at or below `dir`, deepest first (kubelet's rshared bind mount of its root
/// dir, pod volumes, container root file systems, sandbox `/dev/shm`, network namespaces).
pub(crate) fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .map(|m| PathBuf::from(cgroup::unescape(m)))
        .filter(|m| m.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    points.dedup();
    points
}

fn unmount_below(dir: &Path) -> Result<()> {
    // A bind mount can be stacked; unmount until nothing is left (bounded).
    for _ in 0..10 {
        let points = mounts_below(dir);
        if points.is_empty() {
            return Ok(());
        }
        for p in points {
            let Ok(c) = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()) else {
                continue;
            };
            // SAFETY: umount2 on a path string we own.
            unsafe {
                libc::umount2(c.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
    let left = mounts_below(dir);
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Host(format!(
            "mounts left below {}: {left:?}",
            dir.display()
        )))
    }
}

/// Bridges named by our slots, and the Service bridge.
fn our_links() -> Result<Vec<String>> {
    let out = run("ip", &["-o", "link", "show"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .filter(|n| {
            n == SERVICE_BRIDGE
                || n.strip_prefix("iu").is_some_and(|rest| {
                    rest.split_once('n')
                        .is_some_and(|(s, i)| s.parse::<u8>().is_ok() && i.parse::<usize>().is_ok())
                })
        })
        .collect())
}

fn setup_shared(blackholed: &[String]) -> Result<()> {
    if !our_links()?.iter().any(|l| l == SERVICE_BRIDGE) {
        run("ip", &["link", "add", SERVICE_BRIDGE, "type", "bridge"])?;
    }
    run("ip", &["link", "set", SERVICE_BRIDGE, "up"])?;
    let table = POD_ROUTE_TABLE.to_string();
    for range in blackholed {
        run("ip", &["route", "replace", range, "dev", SERVICE_BRIDGE])?;
        run(
            "ip",
            &[
                "route",
                "replace",
                range,
                "dev",
                SERVICE_BRIDGE,
                "table",
                &table,
            ],
        )?;
    }
    run(
        "ip",
        &[
            "route",
            "replace",
            "unreachable",
            "default",
            "table",
            &table,
        ],
    )?;
    let rules = run("ip", &["rule", "show"])?;
    if !rules
        .lines()
        .any(|l| l.starts_with(&format!("{POD_ROUTE_TABLE}:")))
    {
        run(
            "ip",
            &[
                "rule",
                "add",
                "from",
                POD_SUPERNET,
                "lookup",
                &table,
                "priority",
                &table,
            ],
        )?;
    }
    Ok(())
}

/// The policy rule, the pod table and the Service bridge (its routes go with it).
fn restore_routing() -> Result<()> {
    let table = POD_ROUTE_TABLE.to_string();
    while run("ip", &["rule", "show"])?
        .lines()
        .any(|l| l.starts_with(&format!("{POD_ROUTE_TABLE}:")))
    {
        run("ip", &["rule", "del", "priority", &table])?;
    }
    let _ = run("ip", &["route", "flush", "table", &table]);
    if our_links()?.iter().any(|l| l == SERVICE_BRIDGE) {
        run("ip", &["link", "del", SERVICE_BRIDGE])?;
    }
    Ok(())
}

/// Puts back what environments share, from `baseline.json` (a no-op without one).
fn restore_shared() -> Result<()> {
    let path = Path::new(STATE_DIR).join("baseline.json");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(());
    };
    let baseline: Baseline = serde_json::from_str(&text)
        .map_err(|e| Error::Host(format!("{} is unreadable: {e}", path.display())))?;
    let mut errors = Vec::new();
    if let Err(e) = restore_routing() {
        errors.push(e.to_string());
    }
    if let Err(e) = restore_netfilter(&baseline) {
        errors.push(e.to_string());
    }
    for (key, value) in &baseline.sysctls {
        if sysctl(key).as_deref() != Some(value.as_str()) {
            let file = sysctl_path(key);
            if let Err(e) = std::fs::write(&file, value) {
                errors.push(format!("restore {key} = {value}: {e}"));
            }
        }
    }
    let listening = listening_sockets();
    for (path, before) in &baseline.paths {
        remove_new_entries(Path::new(path), before.as_ref(), &listening);
    }
    let _ = std::fs::remove_file(&path);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Host(format!(
            "restoring the host: {}",
            errors.join("; ")
        )))
    }
}

/// Fails naming what of ours is still on the host.
fn check_no_leftovers() -> Result<()> {
    let mut left = Vec::new();
    let trees = cgroup::environment_trees();
    if !trees.is_empty() {
        left.push(format!("cgroups {trees:?}"));
    }
    let links = our_links()?;
    if !links.is_empty() {
        left.push(format!("links {links:?}"));
    }
    if left.is_empty() {
        Ok(())
    } else {
        Err(Error::Host(format!(
            "leftovers of a killed real-node run that could not be cleaned: {}; run `testenv cleanup` as root",
            left.join(", ")
        )))
    }
}

fn take_baseline() -> Baseline {
    let sysctls = SYSCTLS
        .iter()
        .filter_map(|k| Some(((*k).to_owned(), sysctl(k)?)))
        .collect();
    let paths = HOST_PATHS
        .iter()
        .map(|p| {
            let path = Path::new(p);
            let listing = path.exists().then(|| list_below(path, 3));
            ((*p).to_owned(), listing)
        })
        .collect();
    let (nft_tables, kube_chains) = netfilter_state();
    let nfacct = NFACCT
        .iter()
        .filter(|n| find_command("nfacct").is_some() && run("nfacct", &["get", n]).is_ok())
        .map(|n| (*n).to_owned())
        .collect();
    Baseline {
        sysctls,
        paths,
        nft_tables,
        kube_chains,
        nfacct,
    }
}

fn sysctl_path(key: &str) -> PathBuf {
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

fn sysctl(key: &str) -> Option<String> {
    std::fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|s| s.trim().to_owned())
}

/// Relative paths below `root`, `depth` levels deep.
fn list_below(root: &Path, depth: usize) -> BTreeSet<String> {
    fn walk(root: &Path, dir: &Path, depth: usize, out: &mut BTreeSet<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            let p = e.path();
            if let Ok(rel) = p.strip_prefix(root) {
                out.insert(rel.display().to_string());
            }
            if depth > 1 && e.file_type().is_ok_and(|t| t.is_dir()) {
                walk(root, &p, depth - 1, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(root, root, depth, &mut out);
    out
}

/// Paths of unix sockets some process listens on (`/proc/net/unix`).
fn listening_sockets() -> HashSet<PathBuf> {
    std::fs::read_to_string("/proc/net/unix")
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(7))
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect()
}

/// Removes what appeared below `root` since the baseline (all of it if `root` was absent),
/// except sockets something listens on (and the directories holding them).
fn remove_new_entries(
    root: &Path,
    before: Option<&BTreeSet<String>>,
    listening: &HashSet<PathBuf>,
) {
    if !root.exists() {
        return;
    }
    let keep = |p: &Path| listening.iter().any(|s| s.starts_with(p));
    let Some(before) = before else {
        if keep(root) {
            remove_new_entries(root, Some(&BTreeSet::new()), listening);
        } else {
            let _ = std::fs::remove_dir_all(root);
        }
        return;
    };
    let now = list_below(root, 3);
    // Deepest first; a new directory goes with everything in it.
    let mut new: Vec<&String> = now.iter().filter(|p| !before.contains(*p)).collect();
    new.sort_by_key(|p| std::cmp::Reverse(p.matches('/').count()));
    for rel in new {
        let p = root.join(rel);
        if keep(&p) {
            continue;
        }
        if p.is_dir() && !p.is_symlink() {
            let _ = std::fs::remove_dir_all(&p);
        } else {
            let _ = std::fs::remove_file(&p);
        }
    }
}

/// Netfilter tables and `KUBE-*` chains, for both address families.
fn netfilter_state() -> (BTreeSet<String>, BTreeSet<String>) {
    let mut tables = BTreeSet::new();
    if let Ok(out) = run("nft", &["list", "tables"]) {
        for l in out.lines() {
            if let Some(rest) = l.strip_prefix("table ") {
                tables.insert(rest.trim().to_owned());
            }
        }
    }
    let mut chains = BTreeSet::new();
    for (family, save) in [("ip", "iptables-save"), ("ip6", "ip6tables-save")] {
        let Ok(text) = run(save, &[]) else {
            continue;
        };
        let mut table = "";
        for l in text.lines() {
            if let Some(t) = l.strip_prefix('*') {
                table = t;
            } else if let Some(c) = l.strip_prefix(':')
                && let Some(name) = c.split_whitespace().next()
                && name.starts_with("KUBE-")
            {
                chains.insert(format!("{family} {table} {name}"));
            }
        }
    }
    (tables, chains)
}

/// Removes the `KUBE-*` chains (kubelet's, kube-proxy's) that were not there before, the
/// rules jumping to them, the netfilter tables that were not there and are now empty,
/// kube-proxy's nftables tables and its `nfacct` counters.
fn restore_netfilter(baseline: &Baseline) -> Result<()> {
    let mut errors = Vec::new();
    for (family, save, restore) in [
        ("ip", "iptables-save", "iptables-restore"),
        ("ip6", "ip6tables-save", "ip6tables-restore"),
    ] {
        let Ok(text) = run(save, &[]) else {
            continue;
        };
        let input = netfilter_undo(family, &text, &baseline.kube_chains);
        if !input.is_empty()
            && let Err(e) = run_with_input(restore, &["--noflush"], Some(&input))
        {
            errors.push(e.to_string());
        }
    }
    if let Ok(out) = run("nft", &["list", "tables"]) {
        for table in out.lines().filter_map(|l| l.strip_prefix("table ")) {
            let table = table.trim();
            if baseline.nft_tables.contains(table) {
                continue;
            }
            let ours = KUBE_PROXY_NFT_TABLES.contains(&table);
            let (family, name) = table.split_once(' ').unwrap_or(("ip", table));
            let empty = run("nft", &["list", "table", family, name])
                .is_ok_and(|listing| nft_table_is_empty(&listing));
            if (ours || empty)
                && let Err(e) = run("nft", &["delete", "table", family, name])
            {
                errors.push(e.to_string());
            }
        }
    }
    if find_command("nfacct").is_some() {
        for name in NFACCT {
            if !baseline.nfacct.contains(*name) && run("nfacct", &["get", name]).is_ok() {
                let _ = run("nfacct", &["del", name]);
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::Host(errors.join("; ")))
    }
}

/// `iptables-restore --noflush` input that deletes the rules jumping to new `KUBE-*` chains,
/// then flushes and deletes those chains (all flushed before any is deleted: they refer to
/// each other).
fn netfilter_undo(family: &str, save: &str, before: &BTreeSet<String>) -> String {
    let mut out = String::new();
    let mut table = String::new();
    let mut chains: Vec<String> = Vec::new();
    let mut rules: Vec<String> = Vec::new();
    let mut flush = |table: &str, chains: &mut Vec<String>, rules: &mut Vec<String>| {
        if !chains.is_empty() {
            out.push_str(&format!("*{table}\n"));
            for r in rules.iter() {
                out.push_str(r);
                out.push('\n');
            }
            for c in chains.iter() {
                out.push_str(&format!("-F {c}\n"));
            }
            for c in chains.iter() {
                out.push_str(&format!("-X {c}\n"));
            }
            out.push_str("COMMIT\n");
        }
        chains.clear();
        rules.clear();
    };
    let mut pending: Vec<&str> = Vec::new();
    for l in save.lines() {
        if let Some(t) = l.strip_prefix('*') {
            table = t.to_owned();
            pending.clear();
        } else if let Some(c) = l.strip_prefix(':') {
            if let Some(name) = c.split_whitespace().next()
                && name.starts_with("KUBE-")
                && !before.contains(&format!("{family} {table} {name}"))
            {
                chains.push(name.to_owned());
            }
        } else if l.starts_with("-A ") {
            pending.push(l);
        } else if l == "COMMIT" {
            for r in &pending {
                let mut words = r.split_whitespace();
                let _ = words.next();
                let chain = words.next().unwrap_or_default();
                let target = r
                    .split_whitespace()
                    .skip_while(|w| *w != "-j" && *w != "-g")
                    .nth(1)
                    .unwrap_or_default();
                if !chains.iter().any(|c| c == chain) && chains.iter().any(|c| c == target) {
                    rules.push(format!("-D {}", &r[3..]));
                }
            }
            pending.clear();
            flush(&table, &mut chains, &mut rules);
        }
    }
    out
}

/// Whether `nft list table` shows only chain headers (base chains with no rules).
fn nft_table_is_empty(listing: &str) -> bool {
    listing.lines().map(str::trim).all(|l| {
        l.is_empty()
            || l.starts_with('#')
            || l.starts_with("table ")
            || l.starts_with("chain ")
            || l.starts_with("type ")
            || l == "}"
    })
}

/// IPv4 prefixes routed on the host that are not ours, in every table, local addresses
/// included (`local 10.0.0.5 dev eth0 table local`).
fn foreign_routes() -> Result<Vec<String>> {
    let ours = our_links()?;
    let out = run("ip", &["-4", "-o", "route", "show", "table", "all"])?;
    Ok(out
        .lines()
        .filter(|l| {
            let dev = l
                .split_whitespace()
                .skip_while(|w| *w != "dev")
                .nth(1)
                .unwrap_or_default();
            !ours.iter().any(|o| o == dev) && !l.contains(&format!("table {POD_ROUTE_TABLE}"))
        })
        .filter_map(route_prefix)
        .collect())
}

/// The destination of an `ip -o route` line, after its type (`blackhole`, `local`, …).
fn route_prefix(line: &str) -> Option<String> {
    const TYPES: &[&str] = &[
        "unicast",
        "local",
        "broadcast",
        "multicast",
        "anycast",
        "blackhole",
        "unreachable",
        "prohibit",
        "throw",
        "nat",
    ];
    let mut words = line.split_whitespace();
    let mut first = words.next()?;
    if TYPES.contains(&first) {
        first = words.next()?;
    }
    if first == "default" {
        return None;
    }
    Some(if first.contains('/') {
        first.to_owned()
    } else {
        format!("{first}/32")
    })
}

fn nameservers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.strip_prefix("nameserver"))
        .map(|s| s.trim().to_owned())
        .collect()
}

fn parse_cidr(cidr: &str) -> Option<(u32, u32)> {
    let (ip, len) = cidr.split_once('/').unwrap_or((cidr, "32"));
    let ip: std::net::Ipv4Addr = ip.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    Some((u32::from(ip) & mask, mask))
}

fn overlaps(a: &str, b: &str) -> bool {
    match (parse_cidr(a), parse_cidr(b)) {
        (Some((na, ma)), Some((nb, mb))) => {
            let m = ma & mb;
            na & m == nb & m
        }
        _ => false,
    }
}

fn overlaps_any(range: &str, routes: &[String]) -> bool {
    routes.iter().any(|r| overlaps(r, range))
}

fn contains(range: &str, ip: &str) -> bool {
    ip.parse::<std::net::Ipv4Addr>().is_ok() && overlaps(range, &format!("{ip}/32"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_overlap() {
        assert!(overlaps("10.200.0.0/13", "10.201.3.0/24"));
        assert!(!overlaps("10.200.0.0/13", "10.96.0.0/16"));
        assert!(overlaps("192.0.2.0/24", "192.0.2.7/32"));
        assert!(!contains("10.128.0.0/16", "10.255.255.53"));
        assert!(contains("10.96.0.0/16", "10.96.0.10"));
    }

    #[test]
    fn route_lines() {
        assert_eq!(
            route_prefix("blackhole 10.200.0.0/13").as_deref(),
            Some("10.200.0.0/13")
        );
        assert_eq!(
            route_prefix("local 192.0.2.2 dev eth0 table local proto kernel").as_deref(),
            Some("192.0.2.2/32")
        );
        assert_eq!(route_prefix("default via 192.0.2.1 dev eth0"), None);
        assert_eq!(
            route_prefix("192.0.2.0/24 dev eth0 proto kernel").as_deref(),
            Some("192.0.2.0/24")
        );
    }

    #[test]
    fn slot_names() {
        let s = Slot(3);
        assert_eq!(s.bridge(1), "iu3n1");
        assert_eq!(s.subnet(1), "10.203.1.0/24");
        assert_eq!(s.node_ip(0), "10.203.0.1");
        assert!(overlaps(POD_SUPERNET, &s.pod_range()));
        assert!(!overlaps(POD_SUPERNET, &Slot(MAX_SLOTS).pod_range()));
    }

    #[test]
    fn netfilter_undo_removes_jumps_then_chains() {
        let save = "*filter
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-KUBELET-CANARY - [0:0]
:MINE - [0:0]
-A INPUT -j KUBE-FIREWALL
-A INPUT -j MINE
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment \"block incoming localnet connections\" -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
COMMIT
";
        let undo = netfilter_undo("ip", save, &BTreeSet::new());
        assert_eq!(
            undo,
            "*filter
-D INPUT -j KUBE-FIREWALL
-F KUBE-FIREWALL
-F KUBE-KUBELET-CANARY
-X KUBE-FIREWALL
-X KUBE-KUBELET-CANARY
COMMIT
"
        );
        let before: BTreeSet<String> = ["ip filter KUBE-FIREWALL", "ip filter KUBE-KUBELET-CANARY"]
            .into_iter()
            .map(String::from)
            .collect();
        assert_eq!(netfilter_undo("ip", save, &before), "");
    }

    #[test]
    fn empty_nft_tables() {
        assert!(nft_table_is_empty(
            "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t}\n}\n"
        ));
        assert!(!nft_table_is_empty(
            "table ip filter {\n\tchain INPUT {\n\t\ttype filter hook input priority filter; policy accept;\n\t\tcounter jump X\n\t}\n}\n"
        ));
    }
}
