//! Several real nodes in one cluster with a simulated one: each real node has its own
//! containerd, bridge, pod subnet and node IP on this host, kube-scheduler places pods on all
//! of them, every pod on a real node answers on its IP from the host, and with kube-proxy a
//! Service IP answers from the host. Root only (skipped with a reason otherwise;
//! `INPLACE_REAL_NODES=require` makes that a failure); kube-proxy runs in one environment per
//! host at a time.

use std::collections::BTreeSet;
use std::io::{Read, Write};

use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::runtime::watcher;
use serde_json::json;
use testenv::{NODE_KIND_LABEL, Options, TestEnv, wait_list};

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// `GET /` on `ip:port` from the host: the app answers with its version.
fn get(ip: &str, port: u16) -> Result<String, Box<dyn std::error::Error>> {
    let mut s = std::net::TcpStream::connect_timeout(
        &format!("{ip}:{port}").parse()?,
        std::time::Duration::from_secs(5),
    )?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
    s.write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")?;
    let mut body = String::new();
    s.read_to_string(&mut body)?;
    Ok(body)
}

#[tokio::test]
async fn two_real_nodes_and_a_simulated_one_share_a_cluster() -> TestResult {
    if !testenv::real_nodes_wanted()? {
        return Ok(());
    }
    let mut options = Options {
        real_nodes: 2,
        ..Options::default()
    };
    options.real.kube_proxy = true;
    options.kubelet.nodes = 1;
    let env = TestEnv::start(options).await?;
    let real = env.real_nodes();
    assert_eq!(real, ["real-node-0", "real-node-1"]);
    let ips: Vec<&str> = real
        .iter()
        .map(|n| env.real_node_ip(n).ok_or("no node IP"))
        .collect::<Result<_, _>>()?;
    assert_ne!(ips[0], ips[1], "each real node has its own IP");

    let ns = env.namespace("multi").await?;
    let client = env.client()?;
    let ds: DaemonSet = serde_json::from_value(json!({
        "metadata": {"name": "agent"},
        "spec": {"selector": {"matchLabels": {"app": "agent"}},
            "template": {"metadata": {"labels": {"app": "agent"}},
                "spec": {"containers": [{"name": "app", "image": "registry.inplace.test/testapp:1.0",
                    "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}]}}},
    }))?;
    Api::<DaemonSet>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &ds)
        .await?;
    let all: BTreeSet<String> = env.nodes().into_iter().collect();
    let pods = wait_list(
        &Api::<Pod>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("app=agent"),
        &format!("one Ready agent on each of {all:?}"),
        |ps: &[Pod]| {
            ps.len() == all.len()
                && ps
                    .iter()
                    .filter_map(|p| p.spec.as_ref()?.node_name.clone())
                    .collect::<BTreeSet<_>>()
                    == all
                && ps.iter().all(ready)
        },
    )
    .await?;
    let nodes = Api::<k8s_openapi::api::core::v1::Node>::all(client.clone());
    for p in &pods {
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let kind =
            nodes.get(&node).await?.metadata.labels.unwrap_or_default()[NODE_KIND_LABEL].clone();
        if kind != "real" {
            continue;
        }
        let ip = p
            .status
            .as_ref()
            .and_then(|s| s.pod_ip.clone())
            .ok_or("no pod IP")?;
        let node_ip = env.real_node_ip(&node).ok_or("no node IP")?;
        let subnet = node_ip
            .rsplit_once('.')
            .map(|(net, _)| net)
            .unwrap_or_default();
        assert!(
            ip.starts_with(&format!("{subnet}.")),
            "{ip} is in {node}'s subnet"
        );
        let answer = get(&ip, 8080)?;
        assert!(answer.contains("version=1.0"), "{ip} on {node}: {answer}");
    }

    // A Service over pods on the real nodes: kube-proxy (iptables) answers its ClusterIP from
    // the host, from both backends over enough requests.
    let web: k8s_openapi::api::apps::v1::Deployment = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "web"}},
            "template": {"metadata": {"labels": {"app": "web"}},
                "spec": {"nodeSelector": {NODE_KIND_LABEL: "real"},
                    "containers": [{"name": "app", "image": "registry.inplace.test/testapp:2.0",
                        "readinessProbe": {"httpGet": {"path": "/ready", "port": 8080}, "periodSeconds": 1}}]}}},
    }))?;
    Api::<k8s_openapi::api::apps::v1::Deployment>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &web)
        .await?;
    let svc: k8s_openapi::api::core::v1::Service = serde_json::from_value(json!({
        "metadata": {"name": "web"},
        "spec": {"selector": {"app": "web"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }))?;
    let svc = Api::<k8s_openapi::api::core::v1::Service>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &svc)
        .await?;
    let cluster_ip = svc.spec.and_then(|s| s.cluster_ip).ok_or("no ClusterIP")?;
    // Both endpoints ready in the EndpointSlice, which kube-proxy programs from.
    wait_list(
        &Api::<k8s_openapi::api::discovery::v1::EndpointSlice>::namespaced(client.clone(), &ns),
        watcher::Config::default().labels("kubernetes.io/service-name=web"),
        "two ready endpoints of Service web",
        |slices: &[k8s_openapi::api::discovery::v1::EndpointSlice]| {
            slices
                .iter()
                .flat_map(|s| s.endpoints.iter())
                .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
                .count()
                == 2
        },
    )
    .await?;
    // kube-proxy syncs its rules a moment after the slice changes: the first answers may be
    // refused; every answer that comes is from the app, and within the attempts both pods
    // answer.
    let mut hosts = BTreeSet::new();
    for _ in 0..200 {
        if let Ok(answer) = get(&cluster_ip, 80) {
            assert!(answer.contains("version=2.0"), "{cluster_ip}: {answer}");
            if let Some(h) = answer
                .split_whitespace()
                .find(|w| w.starts_with("hostname="))
            {
                hosts.insert(h.to_owned());
            }
        }
        if hosts.len() == 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert_eq!(
        hosts.len(),
        2,
        "both backends answered on {cluster_ip}: {hosts:?}"
    );
    Ok(())
}
