//! The Helm chart (deploy/helm/inplace-upgrade), checked with Helm itself (v4, built from the
//! Go module proxy by tests/helm/build.sh) and against the kustomize base:
//!
//! - `helm lint --strict` passes in both certificate modes, with the optional monitoring
//!   objects on;
//! - rendered with default values, the chart holds the same objects as `kubectl kustomize
//!   deploy`, object by object, except for what README's "Install with Helm" lists: Helm's four
//!   labels on every templated object, and no Namespace object. In `certManager` mode it
//!   holds the objects of `deploy/overlays/cert-manager` plus the CRD, with the same exceptions;
//! - for another namespace, its webhook configurations are what `inplace-upgrade manifests
//!   webhooks --namespace` prints (the generator deploy/base's copy is checked against);
//! - values change what they say and bad ones are refused with a message naming the value;
//! - `helm install`, `helm upgrade` and `helm uninstall` on the local control plane
//!   (tests/testenv). Its kubelet is simulated and runs no processes, so the controller and
//!   webhook pods never run our binary here: the test asserts on what the API holds (objects,
//!   Deployments available, a caBundle written by the webhook's own code surviving an upgrade,
//!   what uninstall leaves behind). Running the chart's pods on a real node is issue 15's;
//! - README's values table is the one values.yaml's comments give;
//! - the release metadata (Cargo.toml's version) is the chart's version and appVersion, the
//!   image tag of deploy/ and README, and the version the krew manifest gets for the tag.

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::ClusterRole;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, PostParams};
use serde_json::{Value, json};
use testenv::TestEnv;

const CHART: &str = "deploy/helm/inplace-upgrade";

/// The labels the chart adds to every templated object beyond deploy/'s.
const HELM_LABELS: [&str; 4] = [
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "helm.sh/chart",
];

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The `helm` binary: `$INPLACE_HELM_BIN/helm`, or in the directory tests/helm/build.sh
/// prints (it builds Helm on a cold cache, and is a no-op on a warm one).
fn helm_binary() -> AnyResult<PathBuf> {
    static HELM: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = HELM
        .get_or_init(|| tool_path("INPLACE_HELM_BIN", "tests/helm/build.sh"))
        .clone()?;
    Ok(dir.join("helm"))
}

/// `helm ARGS` with its own config and cache directories (nothing read from or written to
/// the user's), and, if given, a kubeconfig.
fn helm(args: &[&str], kubeconfig: Option<&Path>) -> AnyResult<String> {
    static HOME: OnceLock<tempfile::TempDir> = OnceLock::new();
    let home = match HOME.get() {
        Some(h) => h,
        None => {
            let _ = HOME.set(tempfile::tempdir()?);
            HOME.get().ok_or("helm home")?
        }
    };
    let mut command = Command::new(helm_binary()?);
    command
        .current_dir(repository())
        .args(args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"));
    match kubeconfig {
        Some(k) => command.env("KUBECONFIG", k),
        None => command.env("KUBECONFIG", home.path().join("no-cluster")),
    };
    run(command)
}

fn parse_stream(yaml: &str) -> AnyResult<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        let value = <Value as serde::Deserialize>::deserialize(doc)?;
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

/// The chart rendered by `helm template` in namespace `inplace-upgrade-system`, CRDs included,
/// with `--set` values.
fn render_chart(set: &[&str]) -> AnyResult<Vec<Value>> {
    let mut args = vec![
        "template",
        "inplace-upgrade",
        CHART,
        "--namespace",
        CONTROLLER_NAMESPACE,
        "--include-crds",
    ];
    for s in set {
        args.extend(["--set", s]);
    }
    parse_stream(&helm(&args, None)?)
}

/// `helm VERB RELEASE ARGS` against the environment, in our namespace, waiting for the
/// objects (the simulated kubelet reports the pods Running and Ready).
fn helm_in_cluster(env: &TestEnv, verb_and_args: &[&str]) -> AnyResult<String> {
    let timeout = format!("{}s", testenv::WAIT_LIMIT.as_secs());
    let mut args = verb_and_args.to_vec();
    args.extend([
        "--namespace",
        CONTROLLER_NAMESPACE,
        "--wait",
        "--timeout",
        &timeout,
    ]);
    helm(&args, Some(env.kubeconfig_path()))
}

/// `helm template` that must fail; its error output.
fn render_error(set: &[&str]) -> AnyResult<String> {
    let mut args = vec!["template", "inplace-upgrade", CHART];
    for s in set {
        args.extend(["--set", s]);
    }
    match helm(&args, None) {
        Ok(_) => Err(format!("helm template {set:?} succeeded").into()),
        Err(e) => Ok(e.to_string()),
    }
}

/// `kubectl kustomize DIR` (kubectl from the control plane build; no cluster needed).
fn kustomize(dir: &str) -> AnyResult<Vec<Value>> {
    let mut command = Command::new(testenv::binaries()?.join("kubectl"));
    command.current_dir(repository()).args(["kustomize", dir]);
    parse_stream(&run(command)?)
}

type ObjectKey = (String, String, String);

fn key_of(o: &Value) -> ObjectKey {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    (
        s(&o["kind"]),
        s(&o["metadata"]["namespace"]),
        s(&o["metadata"]["name"]),
    )
}

fn by_key(objects: Vec<Value>) -> BTreeMap<ObjectKey, Value> {
    objects.into_iter().map(|o| (key_of(&o), o)).collect()
}

/// The object without the chart's Helm labels (and without `labels` once empty).
fn without_helm_labels(mut o: Value) -> Value {
    if let Some(meta) = o.get_mut("metadata").and_then(Value::as_object_mut) {
        if let Some(labels) = meta.get_mut("labels").and_then(Value::as_object_mut) {
            for l in HELM_LABELS {
                labels.remove(l);
            }
        }
        if meta
            .get("labels")
            .and_then(Value::as_object)
            .is_some_and(|l| l.is_empty())
        {
            meta.remove("labels");
        }
    }
    o
}

/// Where two objects first differ (a JSON path and both sides), or None. Numbers compare by
/// value: the CRD says `minimum: 0.0` where kustomize's YAML round trip writes `0`.
fn first_difference(a: &Value, b: &Value, path: &str) -> Option<String> {
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => x.keys().chain(y.keys()).find_map(|k| {
            first_difference(
                &x.get(k).cloned().unwrap_or(Value::Null),
                &y.get(k).cloned().unwrap_or(Value::Null),
                &format!("{path}.{k}"),
            )
        }),
        (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
            .iter()
            .zip(y)
            .enumerate()
            .find_map(|(i, (p, q))| first_difference(p, q, &format!("{path}[{i}]"))),
        (Value::Number(x), Value::Number(y)) if x.as_f64() == y.as_f64() => None,
        _ if a == b => None,
        _ => Some(format!("{path}: {a} vs {b}")),
    }
}

const CLUSTER_SCOPED_UNKNOWN_TO_KUSTOMIZE: [&str; 2] = [
    "ValidatingAdmissionPolicy",
    "ValidatingAdmissionPolicyBinding",
];

/// Compares the chart's objects with kustomize's, object by object: every chart object but
/// the CRD carries the four Helm labels; without them it equals kustomize's; kustomize's
/// Namespace is the only object the chart does not render.
fn assert_same_objects(chart: Vec<Value>, kustomize: Vec<Value>) -> TestResult {
    let chart = by_key(chart);
    // kubectl's kustomize (its built-in OpenAPI) does not know that these kinds are
    // cluster-scoped and stamps the kustomization's namespace on them; the API server drops
    // it (tests/e2e_deploy.rs applies deploy/ and a second apply changes nothing).
    let kustomize = kustomize.into_iter().map(|mut o| {
        let kind = o["kind"].as_str().unwrap_or_default();
        if CLUSTER_SCOPED_UNKNOWN_TO_KUSTOMIZE.contains(&kind)
            && let Some(meta) = o["metadata"].as_object_mut()
        {
            meta.remove("namespace");
        }
        o
    });
    let mut kustomize = by_key(kustomize.collect());
    let namespace = (
        "Namespace".to_string(),
        String::new(),
        CONTROLLER_NAMESPACE.to_string(),
    );
    assert!(
        kustomize.remove(&namespace).is_some(),
        "kustomize renders the Namespace"
    );
    let only_chart: Vec<_> = chart
        .keys()
        .filter(|k| !kustomize.contains_key(k))
        .collect();
    let only_kustomize: Vec<_> = kustomize
        .keys()
        .filter(|k| !chart.contains_key(k))
        .collect();
    assert!(
        only_chart.is_empty() && only_kustomize.is_empty(),
        "objects only in the chart: {only_chart:?}; only in kustomize: {only_kustomize:?}"
    );
    for (key, expected) in kustomize {
        let rendered = chart[&key].clone();
        if key.0 != "CustomResourceDefinition" {
            for l in HELM_LABELS {
                assert!(
                    rendered["metadata"]["labels"][l].is_string(),
                    "{key:?} lacks the Helm label {l}"
                );
            }
        }
        let difference = first_difference(&without_helm_labels(rendered), &expected, "");
        assert!(
            difference.is_none(),
            "{key:?} differs between the chart and kustomize (chart vs kustomize) at {}",
            difference.unwrap_or_default()
        );
    }
    Ok(())
}

#[test]
fn the_chart_passes_helm_lint_in_every_mode() -> TestResult {
    for set in [
        "webhook.certificates.mode=selfManaged",
        "webhook.certificates.mode=certManager",
        "monitoring.podMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true",
    ] {
        let out = helm(&["lint", "--strict", CHART, "--set", set], None)?;
        assert!(out.contains("0 chart(s) failed"), "{set}: {out}");
    }
    Ok(())
}

#[test]
fn with_default_values_the_chart_renders_the_kustomize_base() -> TestResult {
    assert_same_objects(render_chart(&[])?, kustomize("deploy")?)
}

#[test]
fn in_cert_manager_mode_the_chart_renders_the_cert_manager_overlay() -> TestResult {
    let mut overlay = kustomize("deploy/overlays/cert-manager")?;
    // The overlay cannot reach the CRD (outside its root); README installs it first.
    overlay.extend(parse_stream(&std::fs::read_to_string(
        repository().join("deploy/crds/inplaceupgradepolicies.inplace-upgrade.io.yaml"),
    )?)?);
    assert_same_objects(
        render_chart(&["webhook.certificates.mode=certManager"])?,
        overlay,
    )
}

/// The chart's CRD is the file in deploy/crds (both are `inplace-upgrade crd`'s output; .ci/run
/// checks that).
#[test]
fn the_chart_crd_is_the_generated_one() -> TestResult {
    let read = |p: &str| std::fs::read_to_string(repository().join(p));
    assert_eq!(
        read("deploy/helm/inplace-upgrade/crds/inplaceupgradepolicies.inplace-upgrade.io.yaml")?,
        read("deploy/crds/inplaceupgradepolicies.inplace-upgrade.io.yaml")?
    );
    Ok(())
}

/// For another namespace the webhook configurations are exactly what the generator prints
/// for it (in both certificate modes), so the chart cannot drift from the code that decides
/// them.
#[test]
fn the_webhook_configurations_follow_the_namespace_value() -> TestResult {
    for (set, generator_extra) in [
        ("namespace=platform-iu", None),
        (
            "namespace=platform-iu,webhook.certificates.mode=certManager",
            Some("platform-iu/inplace-upgrade-webhook"),
        ),
    ] {
        let chart = by_key(render_chart(&[set])?);
        let mut args = vec!["manifests", "webhooks", "--namespace", "platform-iu"];
        if let Some(certificate) = generator_extra {
            args.extend(["--cert-manager-certificate", certificate]);
        }
        let generated = run({
            let mut c = Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"));
            c.args(&args);
            c
        })?;
        for expected in parse_stream(&generated)? {
            let key = key_of(&expected);
            let rendered = chart.get(&key).ok_or(format!("{set}: no {key:?}"))?;
            let mut rendered = without_helm_labels(rendered.clone());
            if let Some(labels) = rendered
                .pointer_mut("/metadata/labels")
                .and_then(Value::as_object_mut)
            {
                labels.remove("app.kubernetes.io/part-of");
            }
            let difference = first_difference(&rendered, &expected, "");
            assert!(
                difference.is_none(),
                "{set}: {key:?} differs from the generator's (chart vs generator) at {}",
                difference.unwrap_or_default()
            );
        }
        // Everything namespaced lives there, and the bindings name its ServiceAccounts.
        for (key, o) in &chart {
            let namespaced = !matches!(
                key.0.as_str(),
                "ClusterRole"
                    | "ClusterRoleBinding"
                    | "CustomResourceDefinition"
                    | "MutatingWebhookConfiguration"
                    | "ValidatingWebhookConfiguration"
                    | "ValidatingAdmissionPolicy"
                    | "ValidatingAdmissionPolicyBinding"
            );
            if namespaced {
                assert_eq!(key.1, "platform-iu", "{set}: {key:?}");
            }
            for subject in o["subjects"].as_array().into_iter().flatten() {
                assert_eq!(subject["namespace"], "platform-iu", "{set}: {key:?}");
            }
        }
        if generator_extra.is_some() {
            let certificate = &chart[&(
                "Certificate".to_string(),
                "platform-iu".to_string(),
                "inplace-upgrade-webhook".to_string(),
            )];
            assert_eq!(
                certificate["spec"]["dnsNames"][0],
                "inplace-upgrade-webhook.platform-iu.svc"
            );
        }
    }
    Ok(())
}

fn deployment<'a>(objects: &'a [Value], name: &str) -> AnyResult<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == "Deployment" && o["metadata"]["name"] == name)
        .ok_or_else(|| format!("no Deployment {name}").into())
}

#[test]
fn values_change_what_they_say() -> TestResult {
    let digest = format!("sha256:{}", "a".repeat(64));
    let image_digest = format!("image.digest={digest}");
    let objects = render_chart(&[
        "image.repository=registry.example/iu",
        "image.tag=9.9.9",
        "image.pullPolicy=Always",
        "image.pullSecrets[0].name=pull",
        "logFormat=plain",
        "logLevel=info\\,inplace_upgrade=debug",
        "controller.replicas=3",
        "controller.leaseDurationSeconds=30",
        "controller.concurrency=16",
        "controller.resources.limits.memory=512Mi",
        "controller.nodeSelector.pool=system",
        "controller.priorityClassName=system-cluster-critical",
        "webhook.replicas=4",
        "webhook.podDisruptionBudget.minAvailable=2",
        "webhook.podAnnotations.team=platform",
        "webhook.tolerations[0].key=dedicated",
        "webhook.tolerations[0].operator=Exists",
    ])?;
    let controller = deployment(&objects, "inplace-upgrade-controller")?;
    let webhook = deployment(&objects, "inplace-upgrade-webhook")?;
    assert_eq!(controller["spec"]["replicas"], 3);
    assert_eq!(webhook["spec"]["replicas"], 4);
    let pod = |d: &Value| d["spec"]["template"]["spec"].clone();
    let container = |d: &Value| d["spec"]["template"]["spec"]["containers"][0].clone();
    for d in [controller, webhook] {
        assert_eq!(container(d)["image"], "registry.example/iu:9.9.9");
        assert_eq!(container(d)["imagePullPolicy"], "Always");
        assert_eq!(pod(d)["imagePullSecrets"], json!([{"name": "pull"}]));
        let env = container(d)["env"].clone();
        assert!(
            env.as_array()
                .into_iter()
                .flatten()
                .any(|e| *e == json!({"name": "INPLACE_UPGRADE_LOG_FORMAT", "value": "plain"})),
            "{env}"
        );
        assert!(
            env.as_array().into_iter().flatten().any(|e| *e
                == json!({"name": "INPLACE_UPGRADE_LOG_LEVEL", "value": "info,inplace_upgrade=debug"})),
            "{env}"
        );
    }
    let env = container(controller)["env"].clone();
    for (name, value) in [
        ("INPLACE_UPGRADE_LEASE_DURATION_SECONDS", "30"),
        ("INPLACE_UPGRADE_CONCURRENCY", "16"),
    ] {
        assert!(
            env.as_array()
                .into_iter()
                .flatten()
                .any(|e| *e == json!({"name": name, "value": value})),
            "{name} in {env}"
        );
    }
    assert_eq!(
        container(controller)["resources"]["limits"]["memory"],
        "512Mi"
    );
    assert_eq!(pod(controller)["nodeSelector"], json!({"pool": "system"}));
    assert_eq!(
        pod(controller)["priorityClassName"],
        "system-cluster-critical"
    );
    assert_eq!(
        pod(webhook)["tolerations"],
        json!([{"key": "dedicated", "operator": "Exists"}])
    );
    assert_eq!(
        webhook["spec"]["template"]["metadata"]["annotations"],
        json!({"team": "platform"})
    );
    let pdb = objects
        .iter()
        .find(|o| o["kind"] == "PodDisruptionBudget")
        .ok_or("no PodDisruptionBudget")?;
    assert_eq!(pdb["spec"]["minAvailable"], 2);

    // A digest wins over the tag; without a tag the image is the chart's appVersion.
    let pinned = render_chart(&[&image_digest])?;
    assert_eq!(
        container(deployment(&pinned, "inplace-upgrade-webhook")?)["image"],
        format!("ghcr.io/inplace-upgrade/inplace-upgrade@{digest}")
    );
    let default = render_chart(&[])?;
    assert_eq!(
        container(deployment(&default, "inplace-upgrade-webhook")?)["image"],
        format!(
            "ghcr.io/inplace-upgrade/inplace-upgrade:{}",
            env!("CARGO_PKG_VERSION")
        )
    );

    // cert-manager with an Issuer of the user's: no self-signed Issuer of ours.
    let issued = render_chart(&[
        "webhook.certificates.mode=certManager",
        "webhook.certificates.certManager.issuerRef.kind=ClusterIssuer",
        "webhook.certificates.certManager.issuerRef.name=corp-ca",
    ])?;
    assert!(!issued.iter().any(|o| o["kind"] == "Issuer"));
    let certificate = issued
        .iter()
        .find(|o| o["kind"] == "Certificate")
        .ok_or("no Certificate")?;
    assert_eq!(
        certificate["spec"]["issuerRef"],
        json!({"kind": "ClusterIssuer", "name": "corp-ca"})
    );
    Ok(())
}

#[test]
fn bad_values_are_refused_with_a_message_naming_them() -> TestResult {
    let mode = render_error(&["webhook.certificates.mode=selfSigned"])?;
    assert!(
        mode.contains(
            "webhook.certificates.mode must be selfManaged or certManager, not \"selfSigned\""
        ),
        "{mode}"
    );
    let format = render_error(&["logFormat=xml"])?;
    assert!(
        format.contains("logFormat must be json or plain, not \"xml\""),
        "{format}"
    );
    Ok(())
}

/// The optional monitoring objects carry deploy/monitoring's content: the PrometheusRule's
/// groups are alerts.yaml's, the dashboard ConfigMap holds dashboard.json, the PodMonitor is
/// deploy/monitoring/podmonitor.yaml's (plus Helm's labels and the interval).
#[test]
fn the_monitoring_objects_carry_deploy_monitoring() -> TestResult {
    let read = |p: &str| std::fs::read_to_string(repository().join("deploy/monitoring").join(p));
    let objects = render_chart(&[
        "monitoring.podMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true",
        "monitoring.prometheusRule.labels.release=kps",
    ])?;
    let find = |kind: &str| {
        objects
            .iter()
            .find(|o| o["kind"] == kind)
            .ok_or(format!("no {kind}"))
    };
    let rule = find("PrometheusRule")?;
    let alerts: Value = serde_yaml::from_str(&read("alerts.yaml")?)?;
    assert_eq!(rule["spec"], alerts);
    assert_eq!(rule["metadata"]["labels"]["release"], "kps");
    let dashboard = find("ConfigMap")?;
    let json_text = dashboard["data"]["inplace-upgrade.json"]
        .as_str()
        .ok_or("no dashboard in the ConfigMap")?;
    assert_eq!(
        serde_json::from_str::<Value>(json_text)?,
        serde_json::from_str::<Value>(&read("dashboard.json")?)?
    );
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let mut monitor = without_helm_labels(find("PodMonitor")?.clone());
    assert_eq!(monitor["spec"]["podMetricsEndpoints"][0]["interval"], "30s");
    if let Some(endpoint) = monitor["spec"]["podMetricsEndpoints"][0].as_object_mut() {
        endpoint.remove("interval");
    }
    let plain: Value = serde_yaml::from_str(&read("podmonitor.yaml")?)?;
    assert_eq!(monitor, plain);
    // Off by default (the default rendering is compared with kustomize above).
    let default = render_chart(&[])?;
    for kind in ["PodMonitor", "PrometheusRule", "ConfigMap"] {
        assert!(!default.iter().any(|o| o["kind"] == kind), "{kind}");
    }
    Ok(())
}

/// files/ links to deploy/monitoring (one source); `helm package` must carry the linked
/// content, so a chart installed from its archive renders the same monitoring objects.
#[test]
fn the_packaged_chart_carries_the_linked_monitoring_files() -> TestResult {
    let out = tempfile::tempdir()?;
    let dir = out.path().display().to_string();
    helm(&["package", CHART, "--destination", &dir], None)?;
    let archive = out
        .path()
        .join(format!("inplace-upgrade-{}.tgz", env!("CARGO_PKG_VERSION")));
    let archive = archive.display().to_string();
    let all = "monitoring.podMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true";
    let from_archive = parse_stream(&helm(
        &[
            "template",
            "inplace-upgrade",
            &archive,
            "--namespace",
            CONTROLLER_NAMESPACE,
            "--set",
            all,
        ],
        None,
    )?)?;
    let from_directory = render_chart(&[all])?;
    for kind in ["PrometheusRule", "ConfigMap"] {
        let pick = |objects: &[Value]| objects.iter().find(|o| o["kind"] == kind).cloned();
        let packaged = pick(&from_archive).ok_or(format!("no {kind} from the archive"))?;
        assert_eq!(Some(packaged), pick(&from_directory), "{kind}");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// README's values table.

/// The values table values.yaml's `# --` comments give: one row per documented key (dotted
/// path, default as compact JSON, the comment). A documented map is one row; an undocumented
/// map is documented key by key; an undocumented leaf is an error.
fn values_table(values_yaml: &str) -> AnyResult<String> {
    let values: Value = serde_yaml::from_str(values_yaml)?;
    let mut rows = Vec::new();
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut comment: Option<String> = None;
    for line in values_yaml.lines() {
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        if let Some(text) = trimmed.strip_prefix("# -- ") {
            comment = Some(text.to_string());
            continue;
        }
        if trimmed.is_empty() || trimmed.starts_with('#') || trimmed.starts_with('-') {
            continue;
        }
        let Some((key, _)) = trimmed.split_once(':') else {
            continue;
        };
        path.retain(|(i, _)| *i < indent);
        // Inside a documented map: its keys are part of its default, not rows.
        if path.iter().any(|(_, k)| k.ends_with('*')) {
            continue;
        }
        let dotted: Vec<&str> = path.iter().map(|(_, k)| k.as_str()).chain([key]).collect();
        let pointer = format!("/{}", dotted.join("/"));
        let default = values
            .pointer(&pointer)
            .ok_or(format!("{pointer} not in values.yaml"))?;
        match comment.take() {
            Some(text) => {
                rows.push(format!(
                    "| `{}` | `{}` | {} |",
                    dotted.join("."),
                    serde_json::to_string(default)?,
                    text
                ));
                if default.is_object() {
                    path.push((indent, format!("{key}*")));
                }
            }
            None if default.is_object() => path.push((indent, key.to_string())),
            None => {
                return Err(
                    format!("values.yaml: {} has no `# --` comment", dotted.join(".")).into(),
                );
            }
        }
    }
    let mut table = String::from("| value | default | meaning |\n|---|---|---|\n");
    for row in rows {
        table.push_str(&row);
        table.push('\n');
    }
    Ok(table)
}

#[test]
fn readme_lists_every_value_of_values_yaml() -> TestResult {
    let values = std::fs::read_to_string(repository().join(CHART).join("values.yaml"))?;
    let table = values_table(&values)?;
    let readme = std::fs::read_to_string(repository().join("README.md"))?;
    let begin = "<!-- values table: generated from values.yaml by tests/helm.rs -->\n";
    let end = "<!-- end of values table -->";
    let start = readme
        .find(begin)
        .ok_or("README has no values table marker")?
        + begin.len();
    let stop = readme[start..]
        .find(end)
        .ok_or("README's values table has no end marker")?
        + start;
    assert!(
        readme[start..stop] == table,
        "README's values table is not values.yaml's; replace it with:\n{table}"
    );
    Ok(())
}

#[test]
fn the_values_table_reader_needs_a_comment_on_every_leaf() -> TestResult {
    let table =
        values_table("# -- A.\na: 1\nb:\n  # -- B's c.\n  c: x\n  # -- Map d.\n  d:\n    e: 2\n")?;
    assert_eq!(
        table,
        "| value | default | meaning |\n|---|---|---|\n| `a` | `1` | A. |\n| `b.c` | `\"x\"` | B's c. |\n| `b.d` | `{\"e\":2}` | Map d. |\n"
    );
    let missing = values_table("a: 1\n").err().map(|e| e.to_string());
    assert_eq!(
        missing.as_deref(),
        Some("values.yaml: a has no `# --` comment")
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Release metadata: one version, Cargo.toml's.

#[test]
fn the_release_metadata_follows_cargo_toml() -> TestResult {
    let version = env!("CARGO_PKG_VERSION");
    let read = |p: &str| std::fs::read_to_string(repository().join(p));
    let chart: Value = serde_yaml::from_str(&read("deploy/helm/inplace-upgrade/Chart.yaml")?)?;
    assert_eq!(chart["version"], version, "Chart.yaml version");
    assert_eq!(chart["appVersion"], version, "Chart.yaml appVersion");
    let kustomization: Value = serde_yaml::from_str(&read("deploy/base/kustomization.yaml")?)?;
    assert_eq!(
        kustomization["images"][0]["newTag"], version,
        "deploy/base image tag"
    );
    let image = format!("ghcr.io/inplace-upgrade/inplace-upgrade:{version}");
    assert!(
        read("README.md")?.contains(&image),
        "README names the image {image}"
    );
    // The binary reports it (`inplace-upgrade --version`, and so the image and the plugin).
    let reported = run({
        let mut c = Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"));
        c.arg("--version");
        c
    })?;
    assert_eq!(reported.trim(), format!("inplace-upgrade {version}"));

    // The krew manifest is a krew-release-bot template: for the release tag `v<version>` it
    // must become a Plugin of that version whose archives are that tag's.
    let tag = format!("v{version}");
    let manifest = render_krew_template(&read("deploy/krew/inplace.yaml")?, &tag)?;
    let plugin: Value = serde_yaml::from_str(&manifest)?;
    assert_eq!(plugin["kind"], "Plugin");
    assert_eq!(plugin["metadata"]["name"], "inplace");
    assert_eq!(plugin["spec"]["version"], tag.as_str());
    let platforms = plugin["spec"]["platforms"]
        .as_array()
        .ok_or("no platforms")?;
    assert!(!platforms.is_empty());
    for p in platforms {
        let uri = p["uri"].as_str().ok_or("a platform without uri")?;
        assert!(
            uri.contains(&format!("/download/{tag}/")),
            "{uri} is not the {tag} release's"
        );
        assert_eq!(p["bin"], "kubectl-inplace");
        assert!(p["sha256"].is_string());
    }
    Ok(())
}

/// What krew-release-bot does to the template for a tag: `{{ .TagName }}` becomes the tag and
/// `{{ addURIAndSha "URL" .TagName }}` becomes `uri:` and `sha256:` lines (a placeholder sum
/// here: the archives are built at release time).
fn render_krew_template(template: &str, tag: &str) -> AnyResult<String> {
    let mut out = String::new();
    for line in template.lines() {
        let trimmed = line.trim_start();
        if let Some(rest) = trimmed.strip_prefix("{{ addURIAndSha \"") {
            let url = rest
                .split_once('"')
                .ok_or(format!("unterminated URL in {line:?}"))?
                .0
                .replace("{{ .TagName }}", tag);
            let indent = &line[..line.len() - trimmed.len()];
            out.push_str(&format!(
                "{indent}uri: {url}\n{indent}sha256: \"{}\"\n",
                "0".repeat(64)
            ));
        } else {
            out.push_str(&line.replace("{{ .TagName }}", tag));
            out.push('\n');
        }
    }
    if out.contains("{{") {
        return Err(format!("a template action the bot would not fill is left:\n{out}").into());
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// On the local control plane.

/// `helm install`, `helm upgrade` and `helm uninstall` against the real API server. The pods
/// are simulated (no process runs in them): everything asserted is what the API holds.
#[tokio::test]
async fn helm_installs_upgrades_and_uninstalls_on_the_control_plane() -> TestResult {
    let env = TestEnv::shared()?;
    let client = env.client()?;
    let kubeconfig = env.kubeconfig_path();
    // The chart does not create its namespace (Helm keeps the release there); README creates
    // it with Pod Security `restricted`, which the pods must satisfy.
    let ns: Namespace = obj(json!({"metadata": {
        "name": CONTROLLER_NAMESPACE,
        "labels": {
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        },
    }}));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let install = helm_in_cluster(env, &["install", "iu", CHART])?;
    assert!(install.contains("STATUS: deployed"), "{install}");

    // The API holds what `helm template` renders (CRD included), labelled as Helm's.
    let rendered = render_chart(&[])?;
    let crds = Api::<CustomResourceDefinition>::all(client.clone());
    let crd = crds
        .get("inplaceupgradepolicies.inplace-upgrade.io")
        .await?;
    assert!(
        crd.status
            .and_then(|s| s.conditions)
            .into_iter()
            .flatten()
            .any(|c| c.type_ == "Established" && c.status == "True"),
        "the CRD is established"
    );
    let deployments = Api::<Deployment>::namespaced(client.clone(), CONTROLLER_NAMESPACE);
    for name in ["inplace-upgrade-controller", "inplace-upgrade-webhook"] {
        let d = deployments.get(name).await?;
        let expected = deployment(&rendered, name)?;
        let labels = d.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels["app.kubernetes.io/managed-by"], "Helm");
        assert_eq!(labels["app.kubernetes.io/instance"], "iu");
        let spec = d.spec.as_ref().ok_or("no spec")?;
        assert_eq!(
            Some(json!(spec.replicas)),
            Some(expected["spec"]["replicas"].clone())
        );
        // `--wait` returned, so both are available (the simulated kubelet reports the pods
        // Running and Ready; no binary runs in them).
        let available = d.status.and_then(|s| s.available_replicas).unwrap_or(0);
        assert_eq!(
            Some(json!(available)),
            Some(expected["spec"]["replicas"].clone()),
            "{name}"
        );
    }
    let role = Api::<ClusterRole>::all(client.clone())
        .get("inplace-upgrade-webhook-certs")
        .await?;
    assert!(role.rules.is_some());

    // The webhook writes the caBundle with its own code and field manager, as in a cluster.
    let ca =
        b"-----BEGIN CERTIFICATE-----\nnot checked by the API server\n-----END CERTIFICATE-----\n"
            .to_vec();
    {
        use inplace_upgrade::admission::configuration::{ConfigurationOptions, Endpoint, apply};
        let options = ConfigurationOptions {
            endpoint: Endpoint::Service {
                namespace: CONTROLLER_NAMESPACE.into(),
                name: "inplace-upgrade-webhook".into(),
                port: None,
            },
            ca_bundle: Some(ca.clone()),
            own_namespace: CONTROLLER_NAMESPACE.into(),
            cert_manager_certificate: None,
        };
        apply(&client, &options, inplace_upgrade::FIELD_MANAGER).await?;
    }

    let upgrade = helm_in_cluster(
        env,
        &[
            "upgrade",
            "iu",
            CHART,
            "--set",
            "controller.replicas=3",
            "--set",
            "logLevel=debug",
        ],
    )?;
    assert!(upgrade.contains("REVISION: 2"), "{upgrade}");
    let controller = deployments.get("inplace-upgrade-controller").await?;
    assert_eq!(controller.spec.as_ref().and_then(|s| s.replicas), Some(3));
    let env_of = |d: &Deployment| {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|p| p.containers[0].env.clone())
            .unwrap_or_default()
    };
    assert!(
        env_of(&controller)
            .iter()
            .any(|e| e.name == "INPLACE_UPGRADE_LOG_LEVEL" && e.value.as_deref() == Some("debug"))
    );
    // Helm does not own caBundle: the upgrade left the webhook's certificate trusted.
    let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone())
        .get("inplace-upgrade")
        .await?;
    let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .get("inplace-upgrade")
        .await?;
    for bundle in mutating
        .webhooks
        .iter()
        .flatten()
        .map(|w| &w.client_config.ca_bundle)
        .chain(
            validating
                .webhooks
                .iter()
                .flatten()
                .map(|w| &w.client_config.ca_bundle),
        )
    {
        assert_eq!(
            bundle.as_ref().map(|b| &b.0),
            Some(&ca),
            "caBundle after helm upgrade"
        );
    }
    let history = helm(
        &["history", "iu", "--namespace", CONTROLLER_NAMESPACE],
        Some(kubeconfig),
    )?;
    assert!(history.contains("Upgrade complete"), "{history}");

    let uninstall = helm_in_cluster(env, &["uninstall", "iu"])?;
    assert!(uninstall.contains("uninstalled"), "{uninstall}");
    // Everything templated is gone; the CRD stays (Helm never deletes crds/, so policies
    // survive), and so does the namespace the chart did not create.
    for (kind, name) in [
        ("Deployment", "inplace-upgrade-controller"),
        ("Deployment", "inplace-upgrade-webhook"),
    ] {
        assert!(
            deployments.get_opt(name).await?.is_none(),
            "{kind} {name} left after uninstall"
        );
    }
    assert!(
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .get_opt("inplace-upgrade")
            .await?
            .is_none()
    );
    assert!(
        Api::<ClusterRole>::all(client.clone())
            .get_opt("inplace-upgrade-controller")
            .await?
            .is_none()
    );
    assert!(
        crds.get_opt("inplaceupgradepolicies.inplace-upgrade.io")
            .await?
            .is_some()
    );
    Ok(())
}
