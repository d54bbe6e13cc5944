//! Real nodes: kubelet (built from the same Kubernetes module as the control plane) with its
//! own containerd, runc and a CNI bridge, on this host, as root.
//!
//! Node `i` of the environment in slot `s` (see [`crate::host`]) is `real-node-<i>`:
//! - a bridge `iu<s>n<i>` holding `10.<200+s>.<i>.1/24`, made before kubelet starts: that
//!   address is the node's InternalIP (kubelet and its healthz listen there, the API server
//!   dials it for logs and exec) and the pods' gateway. CNI's `bridge` plugin attaches pods to
//!   it, `host-local` hands out the rest of the /24; no IP masquerade, and the policy route of
//!   [`crate::host`] keeps pod traffic off the default route;
//! - containerd with a private root, state and socket under `<dir>/nodes/real-node-<i>`,
//!   cgroupfs, `restrict_oom_score_adj` (this VM lacks CAP_SYS_RESOURCE: without it every
//!   sandbox fails with "can't get final child's PID from pipe: EOF"), network namespaces
//!   under its state directory, CNI binaries from `/usr/lib/cni`, and an HTTP proxy on a
//!   closed loopback port for every registry but loopback ones, so a pull of an image that is
//!   not imported or on the local registry fails at once, without a DNS query or a packet off
//!   the machine;
//! - kubelet with `cgroupRoot` `/iu-testenv-<s>/real-node-<i>` (kubelet, containerd and its
//!   shims run in that tree too), `failCgroupV1: false`, `failSwapOn: false`, root, cert and
//!   pod-log directories under the node's directory, a client certificate
//!   `system:node:<name>` signed by the environment's CA, a `resolv.conf` that points pods at
//!   their own loopback (no DNS server outside), image garbage collection and eviction
//!   thresholds out of the way (the disk of a shared machine is not the node's to manage).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::host::{self, Slot};
use crate::process::{Child, Extra};
use crate::{Error, Result};

/// What real nodes get besides kubelet and containerd.
#[derive(Clone, Debug)]
pub struct RealNodeOptions {
    /// Image archives (OCI image layout or docker-archive tars) imported into every real
    /// node's containerd (`ctr -n k8s.io images import`). Empty: the test image set
    /// ([`crate::images`], built or taken from its cache), which holds the sandbox image.
    pub images: Vec<PathBuf>,
    /// The pod sandbox image (containerd's `sandbox_image`); one of `images` must hold it.
    pub sandbox_image: String,
    /// Run kube-proxy (iptables mode) on the host for the environment (one per host).
    pub kube_proxy: bool,
    /// Run the loopback registry ([`crate::registry`]) with the test image set pushed (all
    /// but the big image), and point every real node's containerd at it for every registry
    /// host: an image that was not imported is pulled from it, a tag it does not have is a
    /// real 404 (`ErrImagePull`). Without it, such a pull fails at once (no registry reachable).
    pub registry: bool,
}

impl Default for RealNodeOptions {
    fn default() -> Self {
        Self {
            images: Vec::new(),
            sandbox_image: crate::images::PAUSE.to_owned(),
            kube_proxy: false,
            registry: false,
        }
    }
}

/// Label on every node saying which kind it is: `real` or `simulated`.
pub const NODE_KIND_LABEL: &str = "testenv.inplace-upgrade.io/node-kind";

/// Proxy for containerd's registry client: nothing listens on the discard port of loopback.
const CLOSED_PROXY: &str = "http://127.0.0.1:9";

/// A running real node.
#[derive(Clone, Debug)]
pub(crate) struct RealNode {
    pub name: String,
    pub index: usize,
    pub ip: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    /// When kubelet was started, and how long it took to report the node Ready.
    pub kubelet_started: Instant,
    pub ready_after: Option<Duration>,
}

/// What all real nodes of an environment share.
pub(crate) struct Setup<'a> {
    pub env_dir: &'a Path,
    pub slot: Slot,
    pub bin_dir: &'a Path,
    pub api_url: &'a str,
    pub ca_pem: &'a str,
    pub ca_file: &'a Path,
    pub options: &'a RealNodeOptions,
    /// The archives to import (the options' or the test image set's).
    pub images: &'a [PathBuf],
    /// The loopback registry and the hosts it serves, for containerd's hosts directory.
    pub registry: Option<(&'a crate::registry::Registry, &'a [String])>,
    pub limit: Duration,
}

pub(crate) fn node_name(index: usize) -> String {
    format!("real-node-{index}")
}

/// The bridge of node `index` with its IP, and its subnet in the pods' routing table. Made
/// before anything else of the environment starts (the API server listens on node 0's IP).
pub(crate) fn network(slot: Slot, index: usize) -> Result<()> {
    let (bridge, ip) = (slot.bridge(index), slot.node_ip(index));
    host::run("ip", &["link", "add", &bridge, "type", "bridge"])?;
    host::run("ip", &["addr", "add", &format!("{ip}/24"), "dev", &bridge])?;
    host::run("ip", &["link", "set", &bridge, "up"])?;
    host::run(
        "ip",
        &[
            "route",
            "replace",
            &slot.subnet(index),
            "dev",
            &bridge,
            "table",
            &host::POD_ROUTE_TABLE.to_string(),
        ],
    )?;
    Ok(())
}

/// Starts containerd and kubelet for node `index`, whose [`network`] exists (blocking: run
/// off the async threads).
/// Returns the node and its processes (containerd first).
pub(crate) fn start(
    setup: &Setup<'_>,
    index: usize,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(RealNode, Vec<Child>)> {
    let name = node_name(index);
    let dir = setup.env_dir.join("nodes").join(&name);
    let logs = setup.env_dir.join("logs");
    let ip = setup.slot.node_ip(index);
    let bridge = setup.slot.bridge(index);
    let cgroup_root = format!("{}/{name}", setup.slot.cgroup());
    for sub in [
        "containerd/root",
        "containerd/state",
        "containerd/certs.d",
        "kubelet/root",
        "kubelet/certs",
        "kubelet/volume-plugins",
        "cni/net.d",
        "cni/ipam",
        "pod-logs",
        "runc",
    ] {
        let d = dir.join(sub);
        std::fs::create_dir_all(&d).map_err(|e| Error::io(format!("create {}", d.display()), e))?;
    }

    for sub in ["containerd", "kubelet"] {
        crate::cgroup::create(&format!("{cgroup_root}/{sub}"))?;
    }

    // containerd
    let socket = dir.join("containerd/state/containerd.sock");
    if let Some((registry, hosts)) = setup.registry {
        let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
        registry
            .write_hosts_dir(&dir.join("containerd/certs.d"), &hosts)
            .map_err(|e| Error::Host(format!("containerd hosts for {name}: {e}")))?;
    }
    let config = dir.join("containerd/config.toml");
    write(
        &config,
        &containerd_config(&dir, &socket, &setup.options.sandbox_image),
    )?;
    let cni = json!({
        "cniVersion": "1.0.0",
        "name": bridge,
        "plugins": [{
            "type": "bridge",
            "bridge": bridge,
            "isGateway": true,
            "ipMasq": false,
            "hairpinMode": true,
            "ipam": {
                "type": "host-local",
                "dataDir": dir.join("cni/ipam"),
                "ranges": [[{"subnet": setup.slot.subnet(index), "gateway": ip}]],
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }],
    });
    write(
        &dir.join("cni/net.d/10-bridge.conflist"),
        &serde_json::to_string_pretty(&cni).unwrap_or_default(),
    )?;
    let path_env = ("PATH".to_owned(), host::search_path());
    let containerd = Child::spawn_with(
        &format!("containerd ({name})"),
        &host::find_command("containerd").unwrap_or_else(|| "containerd".into()),
        &["--config".to_owned(), config.display().to_string()],
        logs.join(format!("{name}-containerd.log")),
        &Extra {
            env: vec![
                path_env.clone(),
                ("HTTP_PROXY".into(), CLOSED_PROXY.into()),
                ("HTTPS_PROXY".into(), CLOSED_PROXY.into()),
                ("NO_PROXY".into(), "127.0.0.1,localhost,::1".into()),
            ],
            cgroup_procs: crate::cgroup::procs_files(&format!("{cgroup_root}/containerd")),
        },
    )?;
    let mut children = vec![containerd];
    await_socket(&socket, &mut children[0], setup.limit)?;
    let node = RealNode {
        name: name.clone(),
        index,
        ip: ip.clone(),
        dir: dir.clone(),
        socket: socket.clone(),
        kubelet_started: Instant::now(),
        ready_after: None,
    };
    for archive in setup.images {
        node.import(archive)?;
    }
    let listed = node.ctr(&["images", "ls", "-q"])?;
    if !listed
        .lines()
        .any(|l| l.trim() == setup.options.sandbox_image)
    {
        return Err(Error::Options(format!(
            "the sandbox image {} is in none of the image archives given to real nodes ({:?})",
            setup.options.sandbox_image, setup.images
        )));
    }

    // kubelet
    let certs = dir.join("kubelet/certs");
    let kubeconfig = dir.join("kubelet/kubeconfig");
    write(
        &kubeconfig,
        &crate::kubeconfig_yaml(setup.api_url, setup.ca_pem, &name, cert_pem, key_pem),
    )?;
    let resolv = dir.join("resolv.conf");
    // Pods' DNS: their own loopback, where nothing answers. Nothing asks a server outside.
    write(&resolv, "nameserver 127.0.0.1\noptions ndots:1\n")?;
    let endpoint = format!("unix://{}", socket.display());
    let config = json!({
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "address": ip,
        "port": 10250,
        "readOnlyPort": 0,
        "healthzBindAddress": ip,
        "healthzPort": 10248,
        "cgroupDriver": "cgroupfs",
        "cgroupRoot": cgroup_root,
        "failCgroupV1": false,
        "failSwapOn": false,
        "containerRuntimeEndpoint": endpoint,
        "imageServiceEndpoint": endpoint,
        "resolvConf": resolv,
        "clusterDomain": "cluster.local",
        "podLogsDir": dir.join("pod-logs"),
        "volumePluginDir": dir.join("kubelet/volume-plugins"),
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%",
            "imagefs.available": "1%", "nodefs.inodesFree": "1%"},
        "serializeImagePulls": false,
        "authentication": {
            "anonymous": {"enabled": false},
            "webhook": {"enabled": true},
            "x509": {"clientCAFile": setup.ca_file},
        },
        "authorization": {"mode": "Webhook"},
    });
    let config_path = dir.join("kubelet/config.yaml");
    write(
        &config_path,
        &serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;
    let p = |path: &Path| path.display().to_string();
    let kubelet_args = vec![
        format!("--config={}", p(&config_path)),
        format!("--kubeconfig={}", p(&kubeconfig)),
        format!("--root-dir={}", p(&dir.join("kubelet/root"))),
        format!("--cert-dir={}", p(&certs)),
        format!("--hostname-override={name}"),
        format!("--node-ip={ip}"),
        format!("--node-labels={NODE_KIND_LABEL}=real"),
        "--v=2".to_owned(),
    ];
    let mut node = node;
    node.kubelet_started = Instant::now();
    let kubelet = Child::spawn_with(
        &format!("kubelet ({name})"),
        &setup.bin_dir.join("kubelet"),
        &kubelet_args,
        logs.join(format!("{name}-kubelet.log")),
        &Extra {
            env: vec![path_env],
            cgroup_procs: crate::cgroup::procs_files(&format!("{cgroup_root}/kubelet")),
        },
    )?;
    children.push(kubelet);
    Ok((node, children))
}

impl RealNode {
    /// `ctr --namespace k8s.io ARGS` against this node's containerd.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let sock = self.socket.display().to_string();
        let mut all = vec!["--address", &sock, "--namespace", "k8s.io"];
        all.extend_from_slice(args);
        host::run("ctr", &all)
    }

    /// Removes an image from this node for good, so the next pod that needs it pulls every
    /// layer only it has (pull-time measurements). Three things each keep it, and a pull after
    /// removing only the tag fetches the manifest and nothing else:
    /// - CRI's other names for what it pulled (`repo@sha256:<manifest>`, `sha256:<config>`):
    ///   every name with the tag's target digest goes;
    /// - containers on its layers: containerd 1.6 fetches no layer whose snapshot exists, and a
    ///   container's snapshot holds its image's. kubelet removes the containers of deleted pods
    ///   in its container GC (every minute), so this waits, up to `limit`, until no snapshot
    ///   has the image's top layer as parent (pods still using it make this fail, naming them);
    /// - content, until a garbage collection: `images rm --sync` runs one.
    ///
    /// Then the top layer's snapshot must be gone, or this fails. An image the node does not
    /// have is no error.
    pub fn remove_image(&self, name: &str, limit: Duration) -> Result<()> {
        let fail =
            |what: String| Error::Host(format!("removing {name} from {}: {what}", self.name));
        let images = self.ctr(&["images", "ls"])?;
        // REF TYPE DIGEST SIZE PLATFORMS LABELS
        let rows: Vec<Vec<&str>> = images
            .lines()
            .skip(1)
            .map(|l| l.split_whitespace().collect())
            .filter(|r: &Vec<&str>| r.len() >= 3)
            .collect();
        let Some(digest) = rows.iter().find(|r| r[0] == name).map(|r| r[2]) else {
            return Ok(());
        };
        let names: Vec<&str> = rows
            .iter()
            .filter(|r| r[2] == digest)
            .map(|r| r[0])
            .collect();
        let top = self
            .top_layer_snapshot(digest)
            .map_err(|e| fail(e.to_string()))?;
        let deadline = Instant::now() + limit;
        loop {
            let users: Vec<String> = self
                .snapshots()?
                .into_iter()
                .filter(|(_, parent)| *parent == top)
                .map(|(key, _)| key)
                .collect();
            if users.is_empty() {
                break;
            }
            if Instant::now() > deadline {
                return Err(fail(format!(
                    "containers {users:?} still use its layers after {}s",
                    limit.as_secs()
                )));
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut rm = vec!["images", "rm", "--sync"];
        rm.extend(&names);
        self.ctr(&rm)?;
        if self.snapshots()?.iter().any(|(key, _)| *key == top) {
            return Err(fail(format!(
                "its top layer's snapshot {top} is still there"
            )));
        }
        Ok(())
    }

    /// The snapshot of an image's top layer (its chain ID), from the label containerd puts on
    /// the config blob when it unpacks the image (`containerd.io/gc.ref.snapshot.<name>`).
    fn top_layer_snapshot(&self, manifest_digest: &str) -> Result<String> {
        let parse = |what: &str, text: &str| {
            serde_json::from_str::<serde_json::Value>(text)
                .map_err(|e| Error::Host(format!("{what} is not JSON: {e}")))
        };
        let mut manifest = parse(
            manifest_digest,
            &self.ctr(&["content", "get", manifest_digest])?,
        )?;
        // An index: the first manifest (the test images have one platform).
        if let Some(first) = manifest
            .pointer("/manifests/0/digest")
            .and_then(|d| d.as_str())
        {
            let first = first.to_owned();
            manifest = parse(&first, &self.ctr(&["content", "get", &first])?)?;
        }
        let config = manifest
            .pointer("/config/digest")
            .and_then(|d| d.as_str())
            .ok_or_else(|| Error::Host(format!("manifest {manifest_digest} names no config")))?;
        // DIGEST SIZE AGE LABELS: AGE has spaces ("2 minutes"), LABELS none (`k=v,k=v`).
        let content = self.ctr(&["content", "ls"])?;
        content
            .lines()
            .filter(|l| l.split_whitespace().next() == Some(config))
            .flat_map(|l| l.split_whitespace().flat_map(|w| w.split(',')))
            .find_map(|label| {
                label
                    .strip_prefix("containerd.io/gc.ref.snapshot.")
                    .and_then(|kv| kv.split_once('='))
                    .map(|(_, chain)| chain.to_owned())
            })
            .ok_or_else(|| {
                Error::Host(format!(
                    "config {config} is not unpacked (no snapshot label)"
                ))
            })
    }

    /// `(key, parent)` of every snapshot (`ctr snapshots ls`: KEY PARENT KIND).
    fn snapshots(&self) -> Result<Vec<(String, String)>> {
        Ok(self
            .ctr(&["snapshots", "ls"])?
            .lines()
            .skip(1)
            .filter_map(|l| {
                let cols: Vec<&str> = l.split_whitespace().collect();
                // A layer without a parent has two columns: KEY KIND.
                match cols.as_slice() {
                    [key, parent, _kind] => Some((key.to_string(), parent.to_string())),
                    [key, _kind] => Some((key.to_string(), String::new())),
                    _ => None,
                }
            })
            .collect())
    }

    /// Imports an image archive (OCI layout or docker-archive tar).
    pub fn import(&self, archive: &Path) -> Result<()> {
        let a = archive.display().to_string();
        self.ctr(&["images", "import", &a])
            .map(drop)
            .map_err(|e| Error::Host(format!("import {a} into {}: {e}", self.name)))
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|e| Error::io(format!("write {}", path.display()), e))
}

fn containerd_config(dir: &Path, socket: &Path, sandbox_image: &str) -> String {
    let d = |sub: &str| dir.join(sub).display().to_string();
    format!(
        r#"version = 2
root = "{root}"
state = "{state}"
# Snapshotters and plugins this node does not use (they would probe the host at start).
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    sandbox_image = "{sandbox_image}"
    restrict_oom_score_adj = true
    netns_mounts_under_state_dir = true
    disable_apparmor = true
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "{cni}"
    [plugins."io.containerd.grpc.v1.cri".containerd]
      snapshotter = "overlayfs"
      default_runtime_name = "runc"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
          Root = "{runc}"
    [plugins."io.containerd.grpc.v1.cri".registry]
      config_path = "{certs}"
  [plugins."io.containerd.internal.v1.opt"]
    path = "{opt}"
"#,
        root = d("containerd/root"),
        state = d("containerd/state"),
        socket = socket.display(),
        cni = d("cni/net.d"),
        runc = d("runc"),
        certs = d("containerd/certs.d"),
        opt = d("containerd/opt"),
    )
}

/// Startup has no event to wait on: poll the socket, checking that containerd lives.
fn await_socket(socket: &Path, child: &mut Child, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        child.check()?;
        if std::os::unix::net::UnixStream::connect(socket).is_ok() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(Error::NotReady {
                component: child.name.clone(),
                seconds: limit.as_secs(),
                detail: format!("nothing listens on {}", socket.display()),
                log: child.log.clone(),
                tail: crate::process::tail(&child.log, 30),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// kube-scheduler from the same build, placing pods on real and simulated nodes alike.
pub(crate) fn scheduler(env_dir: &Path, bin_dir: &Path, kubeconfig: &Path) -> Result<Child> {
    let config = json!({
        "apiVersion": "kubescheduler.config.k8s.io/v1",
        "kind": "KubeSchedulerConfiguration",
        "clientConnection": {"kubeconfig": kubeconfig, "qps": 500, "burst": 1000},
        "leaderElection": {"leaderElect": false},
    });
    let path = env_dir.join("kube-scheduler.yaml");
    write(
        &path,
        &serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;
    Child::spawn(
        "kube-scheduler",
        &bin_dir.join("kube-scheduler"),
        &[
            format!("--config={}", path.display()),
            "--secure-port=0".to_owned(),
            "--v=1".to_owned(),
        ],
        env_dir.join("logs/kube-scheduler.log"),
    )
}

/// kube-proxy in iptables mode on the host, for the environment's first real node: it
/// leaves conntrack sizes and timeouts alone, does not open NodePorts on loopback (that
/// needs `route_localnet`), and serves NodePorts only on that node's IP.
pub(crate) fn kube_proxy(
    env_dir: &Path,
    bin_dir: &Path,
    kubeconfig: &Path,
    slot: Slot,
) -> Result<Child> {
    let ip = slot.node_ip(0);
    let config = json!({
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "mode": "iptables",
        "clientConnection": {"kubeconfig": kubeconfig},
        "hostnameOverride": node_name(0),
        "bindAddress": ip,
        "healthzBindAddress": format!("{ip}:10256"),
        "metricsBindAddress": format!("{ip}:10249"),
        "clusterCIDR": slot.pod_range(),
        "nodePortAddresses": [format!("{ip}/32")],
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": false},
    });
    let path = env_dir.join("kube-proxy.yaml");
    write(
        &path,
        &serde_json::to_string_pretty(&config).unwrap_or_default(),
    )?;
    let cgroup = format!("{}/kube-proxy", slot.cgroup());
    crate::cgroup::create(&cgroup)?;
    Child::spawn_with(
        "kube-proxy",
        &bin_dir.join("kube-proxy"),
        &[format!("--config={}", path.display()), "--v=1".to_owned()],
        env_dir.join("logs/kube-proxy.log"),
        &Extra {
            env: vec![("PATH".into(), host::search_path())],
            cgroup_procs: crate::cgroup::procs_files(&cgroup),
        },
    )
}
