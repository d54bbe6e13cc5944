//! End-to-end: `kubectl inplace` (the binary run as `kubectl-inplace`) against a real
//! kube-apiserver and kube-controller-manager with the simulated kubelet, and one controller
//! for the test binary. Each test has its own namespace and policy. Tables are compared with
//! golden files in tests/golden/kubectl/ (pod names, namespaces and ages normalised);
//! `UPDATE_GOLDEN=1` rewrites them.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use common::*;
use inplace_upgrade::{PAUSED_ANNOTATION, RETRY_ANNOTATION, TARGETS_ANNOTATION};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::wait_for;

const OLD_PROXY: &str = "registry.istio.io/testing/proxyv2:latest";

/// The binary under the plugin name, linked (as an install would copy it) into a directory
/// of its own under cargo's scratch directory when first used. A hard link costs no space;
/// the directories of earlier runs whose process is gone are removed first.
fn plugin() -> AnyResult<&'static Path> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    PATH.get_or_init(|| {
        let scratch = Path::new(env!("CARGO_TARGET_TMPDIR")).join("kubectl-inplace-e2e");
        remove_stale_runs(&scratch);
        let dir = scratch.join(std::process::id().to_string());
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let path = dir.join("kubectl-inplace");
        let built = env!("CARGO_BIN_EXE_inplace-upgrade");
        let _ = std::fs::remove_file(&path);
        if std::fs::hard_link(built, &path).is_err() {
            std::fs::copy(built, &path).map_err(|e| e.to_string())?;
        }
        let help = Command::new(&path)
            .arg("--help")
            .output()
            .map_err(|e| e.to_string())?;
        if !String::from_utf8_lossy(&help.stdout).contains("kubectl inplace") {
            return Err(format!(
                "{} does not answer as kubectl inplace (a build of another checkout?); rebuild",
                env!("CARGO_BIN_EXE_inplace-upgrade")
            ));
        }
        Ok(path)
    })
    .as_ref()
    .map(PathBuf::as_path)
    .map_err(|e| format!("cannot install kubectl-inplace: {e}").into())
}

/// Removes the per-process directories under `scratch` whose process has exited.
fn remove_stale_runs(scratch: &Path) {
    let Ok(entries) = std::fs::read_dir(scratch) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let alive = name
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// Runs `kubectl-inplace --kubeconfig <kubeconfig> ARGS` off the async runtime.
async fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> AnyResult<Run> {
    let mut cmd = Command::new(plugin()?);
    cmd.arg("--kubeconfig").arg(kubeconfig).args(args);
    let out: Output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

async fn kubectl(args: &[&str]) -> AnyResult<Run> {
    kubectl_as(shared_controller("e2e-kubectl")?.kubeconfig_path(), args).await
}

/// Runs `kubectl-inplace` with its stdout on a pseudo-terminal (util-linux `script`).
async fn kubectl_on_tty(args: &[&str]) -> AnyResult<Run> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', "'\\''"));
    let mut line = vec![
        quote(&plugin()?.display().to_string()),
        "--kubeconfig".into(),
        quote(
            &shared_controller("e2e-kubectl")?
                .kubeconfig_path()
                .display()
                .to_string(),
        ),
    ];
    line.extend(args.iter().map(|a| quote(a)));
    let mut cmd = Command::new("script");
    cmd.args(["-q", "-e", "-c", &line.join(" "), "/dev/null"]);
    let out: Output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    Ok(Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// A namespace of its own and a policy that selects exactly it.
async fn setup(prefix: &str, policy: Option<Value>) -> AnyResult<(Client, String)> {
    let env = shared_controller("e2e-kubectl")?;
    let ns = env.namespace(prefix).await?;
    let client = env.client()?;
    if let Some(policy) = policy {
        create_policy(&client, &ns, policy).await?;
    }
    Ok((client, ns))
}

/// Replaces what changes between runs: the namespace, pod names (numbered in order of first
/// appearance) and ages; runs of spaces become one, so column widths do not matter.
fn normalise(text: &str, ns: &str, pods: &[String]) -> String {
    let mut text = text.replace(ns, "NAMESPACE");
    for (i, pod) in pods.iter().enumerate() {
        text = text.replace(pod.as_str(), &format!("hello-pod-{}", i + 1));
    }
    text.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|word| if is_age(word) { "AGE" } else { word })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
        + "\n"
}

fn is_age(word: &str) -> bool {
    let mut chars = word.chars().peekable();
    let mut units = 0;
    while chars.peek().is_some() {
        let mut digits = 0;
        while chars.peek().is_some_and(char::is_ascii_digit) {
            chars.next();
            digits += 1;
        }
        if digits == 0 || !matches!(chars.next(), Some('s' | 'm' | 'h' | 'd' | 'y')) {
            return false;
        }
        units += 1;
    }
    units > 0
}

fn golden(name: &str, actual: &str) -> TestResult {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/kubectl")
        .join(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().ok_or("no parent")?)?;
        std::fs::write(&path, actual)?;
    }
    let expected = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (UPDATE_GOLDEN=1 writes it)", path.display()))?;
    assert_eq!(
        actual,
        expected,
        "output differs from {} (UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
    Ok(())
}

fn one_line_error(run: &Run, code: i32, contains: &str) {
    assert_eq!(run.code, code, "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "one line: {run:?}");
    assert!(run.stderr.starts_with("error: "), "{run:?}");
    assert!(run.stderr.contains(contains), "{contains:?} not in {run:?}");
}

/// Resource versions of the Deployment and its pods: what `plan` must leave alone.
async fn versions(client: &Client, ns: &str) -> AnyResult<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    let d = Api::<Deployment>::namespaced(client.clone(), ns)
        .get("hello")
        .await?;
    out.insert(
        "deployment/hello".into(),
        d.resource_version().unwrap_or_default(),
    );
    for (name, pod) in pods_by_name(client, ns, "hello").await? {
        out.insert(name, pod.resource_version().unwrap_or_default());
    }
    Ok(out)
}

async fn pod_names(client: &Client, ns: &str) -> AnyResult<Vec<String>> {
    Ok(pods_by_name(client, ns, "hello")
        .await?
        .into_keys()
        .collect())
}

#[tokio::test]
async fn plan_lists_pods_images_order_budget_and_policy_and_changes_nothing() -> TestResult {
    let (client, ns) = setup("kc-plan", Some(json!({}))).await?;
    deploy_hello(&client, &ns, 3, false).await?;
    let before = versions(&client, &ns).await?;
    let image = format!("istio-proxy={NEW_PROXY}");

    let run = kubectl(&["-n", &ns, "plan", "deploy/hello", "--image", &image]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let pods = pod_names(&client, &ns).await?;
    for pod in &pods {
        assert!(run.stdout.contains(pod.as_str()), "{pod} listed: {run:?}");
    }
    golden("plan.txt", &normalise(&run.stdout, &ns, &pods))?;

    let run = kubectl(&[
        "-n",
        &ns,
        "plan",
        "deploy/hello",
        "--image",
        &image,
        "-o",
        "json",
    ])
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let report: Value = serde_json::from_str(&run.stdout)?;
    assert_eq!(report["policy"]["name"], ns.as_str());
    assert_eq!(report["policy"]["podsAtOnce"], 1);
    assert_eq!(report["verdict"], "Progressing");
    let planned = report["pods"].as_array().ok_or("pods")?;
    assert_eq!(planned.len(), 3);
    let orders: Vec<&Value> = planned.iter().map(|p| &p["order"]).collect();
    assert_eq!(orders, [&json!(1), &json!(2), &json!(3)]);
    for p in planned {
        assert_eq!(p["changes"][0]["container"], "istio-proxy");
        assert_eq!(p["changes"][0]["current"], OLD_PROXY);
        assert_eq!(p["changes"][0]["target"], NEW_PROXY);
    }
    // maxUnavailable 1: the first pod now (its image pulled onto its node first: the
    // policy's prePull is on by default), the others after it.
    assert_eq!(
        planned[0]["next"],
        "pull the target image onto its node first"
    );
    assert_eq!(planned[1]["next"], "waits for its turn");

    // Unknown workload and a malformed --image are one line each.
    let run = kubectl(&["-n", &ns, "plan", "deploy/nope"]).await?;
    one_line_error(
        &run,
        3,
        &format!("deployment/nope in namespace {ns:?} not found"),
    );
    let run = kubectl(&["-n", &ns, "plan", "deploy/hello", "--image", "istio-proxy"]).await?;
    one_line_error(
        &run,
        2,
        "--image \"istio-proxy\" is invalid: entry \"istio-proxy\" has no '='",
    );

    assert_eq!(
        versions(&client, &ns).await?,
        before,
        "plan changed nothing"
    );
    Ok(())
}

#[tokio::test]
async fn plan_names_what_blocks_the_rollout() -> TestResult {
    let image = format!("istio-proxy={NEW_PROXY}");

    // No policy enables the namespace.
    let (client, ns) = setup("kc-nopolicy", None).await?;
    deploy_hello(&client, &ns, 1, false).await?;
    let before = versions(&client, &ns).await?;
    let run = kubectl(&["-n", &ns, "plan", "deploy/hello", "--image", &image]).await?;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(run.stdout.contains("Verdict:   NoPolicy"), "{run:?}");
    assert!(
        run.stdout.contains(&format!(
            "  - no InPlaceUpgradePolicy enables namespace {ns:?} for this Deployment"
        )),
        "{run:?}"
    );
    assert_eq!(versions(&client, &ns).await?, before);
    // Set anyway: the webhook's warning, and a watch that waits for a policy until --timeout.
    let run = kubectl(&["-n", &ns, "set", "deploy/hello", &image]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stderr
            .starts_with("Warning: inplace-upgrade: no InPlaceUpgradePolicy enables namespace"),
        "{run:?}"
    );
    let run = kubectl(&[
        "-n",
        &ns,
        "status",
        "deploy/hello",
        "--watch",
        "--timeout",
        "3s",
    ])
    .await?;
    one_line_error(&run, 6, "timed out after 3s waiting for deployment/hello");

    // The policy does not allow the container.
    let (client, ns) = setup("kc-container", Some(json!({"containers": ["hello"]}))).await?;
    deploy_hello(&client, &ns, 1, false).await?;
    let before = versions(&client, &ns).await?;
    let run = kubectl(&[
        "-n",
        &ns,
        "plan",
        "deploy/hello",
        "--image",
        &image,
        "-o",
        "yaml",
    ])
    .await?;
    assert_eq!(run.code, 5, "{run:?}");
    let report: Value = serde_yaml::from_str(&run.stdout)?;
    assert_eq!(report["verdict"], "Blocked");
    let blockers = report["blockers"].to_string();
    assert!(
        blockers.contains("istio-proxy") && blockers.contains("containers"),
        "{blockers}"
    );
    assert_eq!(versions(&client, &ns).await?, before);
    // The webhook's denial, word for word, and nothing written.
    let run = kubectl(&["-n", &ns, "set", "deploy/hello", &image]).await?;
    one_line_error(
        &run,
        5,
        &format!("InPlaceUpgradePolicy {ns:?} rule containers refuses {image}: "),
    );
    assert_eq!(versions(&client, &ns).await?, before);

    // A PodDisruptionBudget allows no disruption.
    let (client, ns) = setup("kc-pdb", Some(json!({}))).await?;
    deploy_hello(&client, &ns, 2, false).await?;
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), &ns);
    pdbs.create(
        &PostParams::default(),
        &obj(json!({"metadata": {"name": "hello"},
            "spec": {"minAvailable": 2, "selector": {"matchLabels": {"app": "hello"}}}})),
    )
    .await?;
    wait_for(
        &pdbs,
        "hello",
        "PDB status computed",
        |p: &PodDisruptionBudget| {
            p.status
                .as_ref()
                .is_some_and(|s| s.expected_pods == 2 && s.current_healthy == 2)
        },
    )
    .await?;
    let before = versions(&client, &ns).await?;
    let run = kubectl(&["-n", &ns, "plan", "deploy/hello", "--image", &image]).await?;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stdout
            .contains("PDB:       hello allows 0 disruption(s) now, selects 2 pod(s)"),
        "{run:?}"
    );
    assert!(
        run.stdout
            .contains("  - PodDisruptionBudget hello allows no disruption now"),
        "{run:?}"
    );
    assert_eq!(versions(&client, &ns).await?, before);
    Ok(())
}

#[tokio::test]
async fn set_pause_watch_status_and_rollback_in_place() -> TestResult {
    let (client, ns) = setup("kc-flow", Some(json!({}))).await?;
    let deployments = deploy_hello(&client, &ns, 2, false).await?;
    let uids: BTreeMap<String, String> = pods_by_name(&client, &ns, "hello")
        .await?
        .into_iter()
        .map(|(n, p)| (n, p.uid().unwrap_or_default()))
        .collect();
    let pods: Vec<String> = uids.keys().cloned().collect();

    // Nothing was ever upgraded here: rollback refuses.
    let run = kubectl(&["-n", &ns, "rollback", "deploy/hello"]).await?;
    one_line_error(&run, 5, "nothing to roll back");

    // Malformed values get the webhook's message; nothing is written.
    let run = kubectl(&["-n", &ns, "set", "deploy/hello", "istio-proxy=Bad Image"]).await?;
    let parse_error = inplace_upgrade::annotation::parse("istio-proxy=Bad Image")
        .expect_err("malformed")
        .to_string();
    assert_eq!(run.code, 2, "{run:?}");
    assert_eq!(
        run.stderr,
        format!(
            "error: annotation {TARGETS_ANNOTATION}: \"istio-proxy=Bad Image\" is invalid: {parse_error}\n"
        )
    );
    assert!(
        !deployments
            .get("hello")
            .await?
            .annotations()
            .contains_key(TARGETS_ANNOTATION)
    );

    // Paused first: the target is set but nothing starts.
    let run = kubectl(&["-n", &ns, "pause", "deploy/hello"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert_eq!(
        deployments
            .get("hello")
            .await?
            .annotations()
            .get(PAUSED_ANNOTATION)
            .map(String::as_str),
        Some("true")
    );
    let target = format!("istio-proxy={NEW_PROXY}");
    let run = kubectl(&["-n", &ns, "set", "deploy/hello", &target]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    await_phase(&deployments, "hello", &target, "Paused").await?;
    let run = kubectl(&["-n", &ns, "plan", "deploy/hello"]).await?;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stdout
            .contains("paused by annotation inplace-upgrade.io/paused on deployment/hello"),
        "{run:?}"
    );
    let run = kubectl(&["-n", &ns, "status"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    golden("status-paused.txt", &normalise(&run.stdout, &ns, &pods))?;

    // Resumed, watched to completion with plain lines (stdout is not a terminal).
    let run = kubectl(&["-n", &ns, "resume", "deploy/hello"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !deployments
            .get("hello")
            .await?
            .annotations()
            .contains_key(PAUSED_ANNOTATION)
    );
    let run = kubectl(&["-n", &ns, "status", "deploy/hello", "--watch"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        !run.stdout.contains('\r') && !run.stdout.contains('\x1b'),
        "{run:?}"
    );
    assert!(
        run.stdout
            .lines()
            .any(|l| l.starts_with("deployment/hello ")),
        "{run:?}"
    );
    assert_eq!(
        run.stdout.lines().last(),
        Some("deployment/hello: rollout complete: 2/2 pods upgraded in place"),
        "{run:?}"
    );
    let run = kubectl(&["-n", &ns, "status"]).await?;
    golden("status-completed.txt", &normalise(&run.stdout, &ns, &pods))?;
    let run = kubectl(&["-n", &ns, "status", "-o", "wide"]).await?;
    golden(
        "status-completed-wide.txt",
        &normalise(&run.stdout, &ns, &pods),
    )?;
    let run = kubectl(&["status", "-A"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .lines()
            .next()
            .is_some_and(|l| l.starts_with("NAMESPACE ")),
        "{run:?}"
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with(&ns)
            && l.contains("deployment/hello")
            && l.contains("Completed")),
        "{run:?}"
    );
    let run = kubectl(&["-n", &ns, "status", "deploy/hello", "-o", "json"]).await?;
    let rows: Value = serde_json::from_str(&run.stdout)?;
    assert_eq!(rows[0]["status"]["phase"], "Completed");
    assert_eq!(rows[0]["status"]["upgraded"], 2);
    assert_eq!(rows[0]["target"], target.as_str());

    // Rollback: the pods go back to the recorded previous image, in place.
    let run = kubectl(&["-n", &ns, "rollback", "deploy/hello"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let back = format!("istio-proxy={OLD_PROXY}");
    assert!(run.stdout.contains(&back), "{run:?}");
    // Watched on a terminal: a progress bar redrawn in place.
    let run = kubectl_on_tty(&["-n", &ns, "status", "deploy/hello", "-w"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("\x1b[2Kdeployment/hello  ["), "{run:?}");
    assert!(
        run.stdout.contains("[####################] 2/2  Completed"),
        "{run:?}"
    );
    let after = pods_by_name(&client, &ns, "hello").await?;
    for (name, uid) in &uids {
        let pod = after.get(name).ok_or(format!("pod {name} replaced"))?;
        assert_eq!(
            pod.uid().as_deref(),
            Some(uid.as_str()),
            "{name} kept its UID"
        );
        assert_eq!(spec_image(pod, "istio-proxy").as_deref(), Some(OLD_PROXY));
    }
    Ok(())
}

#[tokio::test]
async fn watch_exits_non_zero_when_the_rollout_fails_and_retry_tries_again() -> TestResult {
    // Pre-pull off: it would find the missing image before any pod is patched, and this test
    // follows a pod's rollback.
    let (client, ns) = setup(
        "kc-fail",
        Some(json!({"readyTimeoutSeconds": 5, "prePull": {"enabled": false}})),
    )
    .await?;
    let deployments = deploy_hello(&client, &ns, 1, false).await?;
    let target = "istio-proxy=proxyv2:1.24.2-fail-pull";
    let run = kubectl(&["-n", &ns, "set", "deploy/hello", target]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let run = kubectl(&["-n", &ns, "status", "deploy/hello", "--watch"]).await?;
    one_line_error(&run, 1, "deployment/hello rollout failed (Failed): pod ");
    assert!(
        run.stdout.lines().any(|l| l.contains(" Failed ")),
        "{run:?}"
    );

    let run = kubectl(&["-n", &ns, "plan", "deploy/hello"]).await?;
    assert_eq!(run.code, 5, "{run:?}");
    assert!(
        run.stdout
            .contains("kubectl inplace retry deployment/hello"),
        "{run:?}"
    );

    let run = kubectl(&["-n", &ns, "retry", "deploy/hello"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    let asked = deployments
        .get("hello")
        .await?
        .annotations()
        .get(RETRY_ANNOTATION)
        .cloned()
        .ok_or("retry annotation written")?;
    // The controller takes the request up: the pod is patched again.
    wait_for(
        &deployments,
        "hello",
        "the retry taken up",
        |d: &Deployment| {
            workload_status(d.annotations()).is_some_and(|s| s["retry"] == asked.as_str())
        },
    )
    .await?;
    // The controller takes the request up: the pod, rolled back, gets the target again.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    let name = pod_names(&client, &ns)
        .await?
        .into_iter()
        .next()
        .ok_or("a pod")?;
    wait_for(&pods, &name, "patched again after the retry", |p: &Pod| {
        spec_image(p, "istio-proxy").is_some_and(|i| i.contains("fail-pull"))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn errors_are_one_line_with_the_documented_exit_code() -> TestResult {
    let env = shared_controller("e2e-kubectl")?;
    let (client, ns) = setup("kc-errors", Some(json!({}))).await?;
    deploy_hello(&client, &ns, 1, false).await?;

    let run = kubectl(&["-n", &ns, "status", "deploy/nope"]).await?;
    one_line_error(
        &run,
        3,
        &format!("deployment/nope in namespace {ns:?} not found"),
    );
    let run = kubectl(&["-n", &ns, "pause", "sts/nope"]).await?;
    one_line_error(&run, 3, "statefulset/nope");
    let run = kubectl(&["-n", &ns, "status", "--bogus"]).await?;
    one_line_error(&run, 2, "unexpected argument '--bogus'");
    let run = kubectl(&["-n", &ns, "plan", "pod/hello"]).await?;
    one_line_error(&run, 2, "unknown resource type \"pod\"");
    let run = kubectl(&["-n", &ns, "rollback", "ns/x"]).await?;
    one_line_error(&run, 2, "rollback takes a workload");
    let run = kubectl(&[
        "-n",
        &ns,
        "set",
        "deploy/hello",
        &format!("istio-proxy={NEW_PROXY}"),
    ])
    .await?;
    assert_eq!(run.code, 0, "{run:?}");
    let run = kubectl(&["--context", "nope", "status"]).await?;
    one_line_error(&run, 3, "cannot use the kubeconfig");

    // A read-only identity: it may look, not steer.
    let sa: ServiceAccount = obj(json!({"metadata": {"name": "viewer"}}));
    Api::<ServiceAccount>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &sa)
        .await?;
    let role: Role = obj(json!({
        "metadata": {"name": "viewer"},
        "rules": [{"apiGroups": ["", "apps", "policy", "discovery.k8s.io"],
            "resources": ["pods", "deployments", "replicasets", "statefulsets", "daemonsets",
                "poddisruptionbudgets", "endpointslices"],
            "verbs": ["get", "list", "watch"]}],
    }));
    Api::<Role>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = obj(json!({
        "metadata": {"name": "viewer"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "viewer"},
        "subjects": [{"kind": "ServiceAccount", "name": "viewer", "namespace": ns}],
    }));
    Api::<RoleBinding>::namespaced(client.clone(), &ns)
        .create(&PostParams::default(), &binding)
        .await?;
    let viewer = service_account_kubeconfig(env, &client, &ns, "viewer").await?;

    // The context's namespace is the default, as with kubectl.
    let run = kubectl_as(&viewer, &["status"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(run.stdout.contains("deployment/hello"), "{run:?}");
    let run = kubectl_as(&viewer, &["pause", "deploy/hello"]).await?;
    one_line_error(
        &run,
        4,
        &format!(
            "User \"system:serviceaccount:{ns}:viewer\" cannot patch resource \"deployments\""
        ),
    );
    let run = kubectl_as(
        &viewer,
        &["set", "deploy/hello", &format!("istio-proxy={NEW_PROXY}")],
    )
    .await?;
    assert_eq!(run.code, 4, "{run:?}");
    assert!(
        run.stderr
            .lines()
            .last()
            .is_some_and(|l| l.starts_with("error: ") && l.contains("cannot patch")),
        "{run:?}"
    );
    // Policies are cluster-scoped: unreadable here, so plan says so.
    let run = kubectl_as(&viewer, &["plan", "deploy/hello"]).await?;
    one_line_error(&run, 4, "inplaceupgradepolicies");
    let run = kubectl_as(&viewer, &["status", "-A"]).await?;
    one_line_error(&run, 4, "cannot list resource \"deployments\"");
    Ok(())
}

#[tokio::test]
async fn retry_of_a_namespace_wide_failure_retries_every_workload_it_blocks() -> TestResult {
    // Pre-pull off: this test follows the rollback of the pods patched to a missing image.
    let (client, ns) = setup(
        "kc-nsretry",
        Some(json!({"readyTimeoutSeconds": 5, "prePull": {"enabled": false}})),
    )
    .await?;
    let deployments = deploy_hello(&client, &ns, 1, false).await?;
    // A second Deployment of its own pods.
    let mut other = hello_deployment("hello-old-version.yaml.injected", 1, false)?;
    other.metadata.name = Some("hello2".into());
    let mut spec = other.spec.take().ok_or("spec")?;
    spec.selector = obj(json!({"matchLabels": {"app": "hello2"}}));
    if let Some(labels) = spec
        .template
        .metadata
        .as_mut()
        .and_then(|m| m.labels.as_mut())
    {
        labels.insert("app".into(), "hello2".into());
    }
    other.spec = Some(spec);
    deployments.create(&PostParams::default(), &other).await?;
    await_deployment_ready(&deployments, "hello2", 1).await?;

    let target = "istio-proxy=proxyv2:1.24.2-fail-pull";
    let run = kubectl(&["set", &format!("ns/{ns}"), target]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    for name in ["hello", "hello2"] {
        await_phase(&deployments, name, target, "Failed").await?;
    }
    // Both rolled back to the previous image.
    let pods = Api::<Pod>::namespaced(client.clone(), &ns);
    for app in ["hello", "hello2"] {
        for (name, _) in pods_by_name(&client, &ns, app).await? {
            wait_for(&pods, &name, "rolled back", |p: &Pod| {
                spec_image(p, "istio-proxy").as_deref() == Some(OLD_PROXY)
                    && state_phase(p).as_deref() == Some("RolledBack")
            })
            .await?;
        }
    }

    let records = |pods: BTreeMap<String, Pod>| -> BTreeMap<String, String> {
        pods.into_iter()
            .map(|(n, p)| {
                let record = p
                    .annotations()
                    .get(inplace_upgrade::STATE_ANNOTATION)
                    .cloned();
                (n, record.unwrap_or_default())
            })
            .collect()
    };
    let mut before = records(pods_by_name(&client, &ns, "hello").await?);
    before.extend(records(pods_by_name(&client, &ns, "hello2").await?));

    let run = kubectl(&["-n", &ns, "retry", "deploy/hello"]).await?;
    assert_eq!(run.code, 0, "{run:?}");
    assert!(
        run.stdout
            .contains("deployment/hello2: retry requested too"),
        "{run:?}"
    );
    // Both forget the failure...
    for app in ["hello", "hello2"] {
        let asked = deployments
            .get(app)
            .await?
            .annotations()
            .get(RETRY_ANNOTATION)
            .cloned()
            .ok_or(format!("{app} has no retry annotation"))?;
        wait_for(&deployments, app, "the retry taken up", |d: &Deployment| {
            workload_status(d.annotations()).is_some_and(|s| s["retry"] == asked.as_str())
        })
        .await?;
    }
    // ...and the target is tried again (where it fails again, the other workload stays
    // blocked: a bad image does not spread, so one new attempt is what to expect).
    let deadline = std::time::Instant::now() + testenv::WAIT_LIMIT;
    loop {
        let mut now = records(pods_by_name(&client, &ns, "hello").await?);
        now.extend(records(pods_by_name(&client, &ns, "hello2").await?));
        if now.iter().any(|(n, r)| before.get(n) != Some(r)) {
            break;
        }
        if std::time::Instant::now() > deadline {
            return Err(format!("no pod was patched again after the retry: {now:?}").into());
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    Ok(())
}
