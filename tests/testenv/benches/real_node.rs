//! What a real node costs and how fast it is, on this machine: kubelet start to node Ready,
//! pod creation to Ready, an in-place image change to the new container Ready, and the RSS
//! of kubelet, containerd and the shims. Root only (it prints why and exits otherwise).
//!
//! `cargo bench -p testenv --bench real_node` (BENCH_PODS, default 10: pods created and
//! image changes made, one at a time). Prints medians and ranges, the machine's load before
//! and after.

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use testenv::{Options, TestEnv, wait_for};

type AnyResult<T> = Result<T, Box<dyn std::error::Error>>;

const V1: &str = "registry.inplace.test/testapp:1.0";
const V2: &str = "registry.inplace.test/testapp:2.0";

fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// PIDs of containerd shims serving `socket` (their command line names it).
fn shims(socket: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read_to_string(e.path().join("cmdline")).ok()?;
            (cmd.starts_with("/usr/bin/containerd-shim") && cmd.contains(socket)).then_some(pid)
        })
        .collect()
}

fn describe(mut d: Vec<Duration>) -> String {
    d.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    format!(
        "median {:.0} ms (min {:.0}, max {:.0}, n={})",
        ms(d[d.len() / 2]),
        ms(d[0]),
        ms(d[d.len() - 1]),
        d.len()
    )
}

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn container_id(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .first()?
        .container_id
        .clone()
}

#[tokio::main]
async fn main() -> AnyResult<()> {
    if !testenv::real_nodes_wanted()? {
        return Ok(());
    }
    let pods: usize = std::env::var("BENCH_PODS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    println!("load before: {}", load());
    let mut options = Options {
        real_nodes: 1,
        ..Options::default()
    };
    options.kubelet.nodes = 0;
    let started = Instant::now();
    let env = TestEnv::start(options).await?;
    println!(
        "environment (control plane, 1 real node) ready in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for (node, after) in env.real_node_ready_after() {
        println!(
            "{node}: Ready {:.2} s after kubelet started",
            after.as_secs_f64()
        );
    }
    let ns = env.namespace("bench").await?;
    let api: Api<Pod> = Api::namespaced(env.client()?, &ns);

    let mut starts = Vec::new();
    for i in 0..pods {
        let name = format!("p{i}");
        let pod: Pod = serde_json::from_value(json!({
            "metadata": {"name": name},
            "spec": {"terminationGracePeriodSeconds": 2, "containers": [{"name": "app", "image": V1,
                "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}]},
        }))?;
        let t = Instant::now();
        api.create(&PostParams::default(), &pod).await?;
        wait_for(&api, &name, "pod Ready", ready).await?;
        starts.push(t.elapsed());
    }
    println!("pod created -> Ready: {}", describe(starts));

    let mut restarts = Vec::new();
    for i in 0..pods {
        let name = format!("p{i}");
        let old = container_id(&api.get(&name).await?);
        let patch = json!({"spec": {"containers": [{"name": "app", "image": V2}]}});
        let t = Instant::now();
        api.patch(&name, &PatchParams::default(), &Patch::Strategic(&patch))
            .await?;
        wait_for(&api, &name, "new container Ready", |p: &Pod| {
            container_id(p) != old && ready(p)
        })
        .await?;
        restarts.push(t.elapsed());
    }
    println!(
        "image patched -> new container Ready (SIGTERM exits at once, grace 2 s): {}",
        describe(restarts)
    );

    for (name, pid) in env.processes() {
        if name.starts_with("kubelet") || name.starts_with("containerd") {
            println!("{name}: RSS {} MiB", rss_kib(pid) / 1024);
        }
    }
    let socket = env
        .real_node_dir("real-node-0")
        .map(|d| d.join("containerd/state/containerd.sock"))
        .ok_or("no real node")?;
    let shim_pids = shims(&socket.display().to_string());
    let total: u64 = shim_pids.iter().map(|p| rss_kib(*p)).sum();
    println!(
        "{} shims for {pods} pods: RSS {} MiB in all, {:.1} MiB per pod",
        shim_pids.len(),
        total / 1024,
        total as f64 / 1024.0 / pods as f64
    );
    println!("load after: {}", load());
    Ok(())
}
