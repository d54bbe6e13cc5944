//! End-to-end: install `deploy/` like an operator would, on the real control plane
//! (tests/testenv), and prove its permissions are exactly what the code needs.
//!
//! - `kubectl apply -k deploy --server-side` succeeds, both Deployments roll out under the
//!   namespace's Pod Security `restricted` level, and a second apply would change nothing
//!   (`--dry-run=server` succeeds, `kubectl diff --server-side` is empty).
//! - The controller and webhook binaries run out of process, each under its deploy/
//!   ServiceAccount's identity (a TokenRequest token, not cluster-admin); the API server calls
//!   that webhook (registered by URL for the test's namespace: no kube-proxy here) and the
//!   controller upgrades a Deployment's `istio-proxy` in place. Any `forbidden` in either log
//!   fails the test at once, and a controller missing one rule is shown to produce such a line.
//! - The webhook binary runs out of process under its ServiceAccount in self-managed
//!   certificate mode: it writes its Secret and both configurations' caBundle and becomes ready
//!   (every watch listed), again with no `forbidden` in its log.
//! - The rollout is asked for by a namespace's team (a ServiceAccount with rights on workloads
//!   in that namespace only), and that team cannot use our annotations to reach another
//!   namespace: annotating or pausing the other namespace's workload, annotating any
//!   Namespace, and creating or changing a policy are all refused (403); the other
//!   namespace's same-named Deployment and its pods are left exactly as they were.
//! - `kubectl auth can-i --list` for both ServiceAccounts equals the list checked in here.
//! - The cert-manager overlay, the example policies and the generated webhook configurations
//!   are checked without a cert-manager (rendered, dry-run, compared with the generator).
//!
//! The in-cluster controller Deployment is scaled to 0 before the out-of-process run: its
//! simulated pods run no binary (there is no container runtime), so they hold no Lease, but
//! scaling it down keeps the test honest on a cluster with real kubelets too.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::OnceLock;

use common::*;
use inplace_upgrade::policy::InPlaceUpgradePolicy;
use inplace_upgrade::{PAUSED_ANNOTATION, TARGETS_ANNOTATION};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use testenv::{TestEnv, wait_for};

const NAMESPACE: &str = CONTROLLER_NAMESPACE;
const CONTROLLER_SA: &str = "inplace-upgrade-controller";
const WEBHOOK_SA: &str = "inplace-upgrade-webhook";
const LEASE: &str = inplace_upgrade::controller::LEASE_NAME;

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The kustomization `install` applies: deploy/, or on an external cluster the overlay that
/// swaps in the image loaded there (tests/e2e/kind/run.sh sets `INPLACE_E2E_KUSTOMIZATION`).
fn kustomization() -> String {
    std::env::var("INPLACE_E2E_KUSTOMIZATION").unwrap_or_else(|_| "deploy".into())
}

/// Runs kubectl against the environment; its stdout, or an error with the command and stderr.
fn kubectl(env: &TestEnv, args: &[&str]) -> AnyResult<String> {
    let out = env
        .kubectl()
        .args(args)
        .current_dir(repository())
        .output()?;
    if !out.status.success() {
        return Err(format!(
            "kubectl {} failed ({}):\n{}{}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
        .into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What installing deploy/ showed, recorded once per test binary.
#[derive(Debug)]
struct Installed {
    applied: String,
    dry_run: String,
    diff: String,
}

/// Applies deploy/ server-side once per test binary, waits for the CRD and both Deployments,
/// then asks what a second apply would do. This runs before any test scales a Deployment, so
/// the stability check sees deploy/ exactly as applied.
fn installed() -> AnyResult<(&'static TestEnv, &'static Installed)> {
    static INSTALLED: OnceLock<Result<Installed, String>> = OnceLock::new();
    let env = TestEnv::shared()?;
    let installed = INSTALLED
        .get_or_init(|| install(env).map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| format!("installing deploy/: {e}"))?;
    Ok((env, installed))
}

fn install(env: &TestEnv) -> AnyResult<Installed> {
    let dir = kustomization();
    let applied = kubectl(env, &["apply", "-k", &dir, "--server-side"])?;
    let limit = format!("--timeout={}s", testenv::WAIT_LIMIT.as_secs());
    kubectl(
        env,
        &[
            "wait",
            "--for=condition=Established",
            "crd/inplaceupgradepolicies.inplace-upgrade.io",
            &limit,
        ],
    )?;
    // Pod Security `restricted` rejects non-compliant pods at creation: a rollout that
    // finishes shows the pod templates comply.
    for deployment in ["inplace-upgrade-controller", "inplace-upgrade-webhook"] {
        kubectl(
            env,
            &[
                "-n",
                NAMESPACE,
                "rollout",
                "status",
                &format!("deployment/{deployment}"),
                &limit,
            ],
        )?;
    }
    let dry_run = kubectl(
        env,
        &["apply", "-k", &dir, "--server-side", "--dry-run=server"],
    )?;
    // kubectl diff exits 1 when there is a difference, which kubectl() reports as an error
    // carrying the diff itself.
    let diff = kubectl(env, &["diff", "-k", &dir, "--server-side"])?;
    Ok(Installed {
        applied,
        dry_run,
        diff,
    })
}

/// The objects `kubectl kustomize` renders from a directory of this repository.
fn render(env: &TestEnv, dir: &str) -> AnyResult<Vec<Value>> {
    let yaml = kubectl(env, &["kustomize", dir])?;
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(&yaml) {
        docs.push(<Value as serde::Deserialize>::deserialize(doc)?);
    }
    Ok(docs)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

#[test]
fn deploy_applies_server_side_and_a_second_apply_changes_nothing() -> TestResult {
    let (env, installed) = installed()?;
    let objects = render(env, &kustomization())?;
    for o in &objects {
        let line = format!(
            "{} serverside-applied",
            o["metadata"]["name"].as_str().unwrap_or_default()
        );
        assert!(
            installed.applied.contains(&line),
            "{line:?} missing from the apply output:\n{}",
            installed.applied
        );
        assert!(
            installed
                .dry_run
                .contains(&format!("{line} (server dry run)")),
            "{line:?} missing from the dry run:\n{}",
            installed.dry_run
        );
    }
    assert_eq!(installed.diff, "", "a second apply would change objects");
    Ok(())
}

#[test]
fn the_manifests_are_hardened_and_highly_available() -> TestResult {
    let env = TestEnv::shared()?;
    let objects = render(env, "deploy")?;
    for name in ["inplace-upgrade-controller", "inplace-upgrade-webhook"] {
        let d = find(&objects, "Deployment", name).ok_or(format!("no Deployment {name}"))?;
        assert!(d["spec"]["replicas"].as_i64() >= Some(2), "{name} replicas");
        let pod = &d["spec"]["template"]["spec"];
        assert_eq!(
            pod["serviceAccountName"], name,
            "{name} has its own identity"
        );
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        assert!(
            pod["topologySpreadConstraints"].is_array(),
            "{name} spreads"
        );
        for c in pod["containers"].as_array().ok_or("no containers")? {
            let sc = &c["securityContext"];
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{name}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{name}");
            assert_eq!(sc["capabilities"]["drop"], json!(["ALL"]), "{name}");
            assert!(c["readinessProbe"].is_object(), "{name} readiness probe");
            assert!(c["livenessProbe"].is_object(), "{name} liveness probe");
            assert!(c["resources"]["requests"]["cpu"].is_string(), "{name}");
            assert!(c["resources"]["requests"]["memory"].is_string(), "{name}");
        }
    }
    let pdb = find(&objects, "PodDisruptionBudget", "inplace-upgrade-webhook")
        .ok_or("no PodDisruptionBudget for the webhook")?;
    let webhook = find(&objects, "Deployment", "inplace-upgrade-webhook").ok_or("no webhook")?;
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        webhook["spec"]["template"]["metadata"]["labels"]
    );
    let service = find(&objects, "Service", "inplace-upgrade-webhook").ok_or("no Service")?;
    assert_eq!(
        service["spec"]["selector"],
        webhook["spec"]["template"]["metadata"]["labels"]
    );
    Ok(())
}

#[test]
fn the_cert_manager_overlay_replaces_self_managed_certificates() -> TestResult {
    let env = TestEnv::shared()?;
    let base = render(env, "deploy")?;
    let overlay = render(env, "deploy/overlays/cert-manager")?;
    let secret_of = |objects: &[Value]| -> Option<Value> {
        let d = find(objects, "Deployment", "inplace-upgrade-webhook")?;
        d["spec"]["template"]["spec"]["volumes"]
            .as_array()?
            .iter()
            .find(|v| v["name"] == "tls")
            .map(|v| v["secret"].clone())
    };
    let certificate =
        find(&overlay, "Certificate", "inplace-upgrade-webhook").ok_or("no Certificate")?;
    let secret = secret_of(&overlay).ok_or("the webhook mounts no tls Secret")?;
    assert_eq!(certificate["spec"]["secretName"], secret["secretName"]);
    assert_eq!(secret["optional"], false, "wait for cert-manager's Secret");
    assert_eq!(
        secret_of(&base).ok_or("base mounts no tls Secret")?["secretName"],
        secret["secretName"]
    );
    let args = |objects: &[Value]| -> Option<Value> {
        let d = find(objects, "Deployment", "inplace-upgrade-webhook")?;
        Some(d["spec"]["template"]["spec"]["containers"][0]["args"].clone())
    };
    assert_eq!(
        args(&base),
        Some(json!(["webhook", "--self-managed-certs"]))
    );
    assert_eq!(
        args(&overlay),
        Some(json!(["webhook"])),
        "serve cert-manager's files"
    );
    // The CA injector reads `<namespace>/<Certificate name>`.
    let inject_from = format!(
        "{}/{}",
        certificate["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default(),
        certificate["metadata"]["name"].as_str().unwrap_or_default()
    );
    for kind in [
        "MutatingWebhookConfiguration",
        "ValidatingWebhookConfiguration",
    ] {
        let c = find(&overlay, kind, "inplace-upgrade").ok_or(format!("no {kind}"))?;
        assert_eq!(
            c["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
            json!(inject_from),
            "{kind}"
        );
    }
    for kind in ["Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding"] {
        assert!(find(&base, kind, "inplace-upgrade-webhook-certs").is_some());
        assert!(
            find(&overlay, kind, "inplace-upgrade-webhook-certs").is_none(),
            "{kind} inplace-upgrade-webhook-certs must not be granted under cert-manager"
        );
    }
    Ok(())
}

/// deploy/base/webhook-configurations.yaml is what `inplace-upgrade manifests webhooks` prints
/// (like the CRD, it must not drift from the code that builds it).
#[test]
fn the_checked_in_webhook_configurations_are_the_generated_ones() -> TestResult {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"))
        .args(["manifests", "webhooks"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = repository().join("deploy/base/webhook-configurations.yaml");
    let checked_in = std::fs::read_to_string(&path)?;
    let body: String = checked_in
        .lines()
        .skip_while(|l| l.starts_with('#'))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_eq!(
        body,
        String::from_utf8_lossy(&out.stdout),
        "{} is stale: regenerate it with `inplace-upgrade manifests webhooks` (keep the comment header)",
        path.display()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Least privilege: `kubectl auth can-i --list` against an expected list.

/// What every authenticated identity may do in a default cluster (system:basic-user,
/// system:discovery, system:public-info-viewer), in `kubectl auth can-i --list` columns:
/// resource, non-resource URL, resource name, verbs.
const BASELINE: &[(&str, &str, &str, &str)] = &[
    ("selfsubjectreviews.authentication.k8s.io", "", "", "create"),
    (
        "selfsubjectaccessreviews.authorization.k8s.io",
        "",
        "",
        "create",
    ),
    (
        "selfsubjectrulesreviews.authorization.k8s.io",
        "",
        "",
        "create",
    ),
    ("", "/.well-known/openid-configuration", "", "get"),
    ("", "/.well-known/openid-configuration/", "", "get"),
    ("", "/api", "", "get"),
    ("", "/api/*", "", "get"),
    ("", "/apis", "", "get"),
    ("", "/apis/*", "", "get"),
    ("", "/healthz", "", "get"),
    ("", "/livez", "", "get"),
    ("", "/openapi", "", "get"),
    ("", "/openapi/*", "", "get"),
    ("", "/openid/v1/jwks", "", "get"),
    ("", "/openid/v1/jwks/", "", "get"),
    ("", "/readyz", "", "get"),
    ("", "/version", "", "get"),
    ("", "/version/", "", "get"),
];

/// The controller, in every namespace (ClusterRole inplace-upgrade-controller).
const CONTROLLER_CLUSTER: &[(&str, &str, &str, &str)] = &[
    ("pods", "", "", "list watch patch get create delete"),
    ("pods/status", "", "", "patch"),
    ("namespaces", "", "", "list watch patch"),
    ("deployments.apps", "", "", "list watch patch"),
    ("statefulsets.apps", "", "", "list watch patch"),
    ("daemonsets.apps", "", "", "list watch patch"),
    ("replicasets.apps", "", "", "list watch patch"),
    ("endpointslices.discovery.k8s.io", "", "", "list watch"),
    ("poddisruptionbudgets.policy", "", "", "list watch"),
    (
        "inplaceupgradepolicies.inplace-upgrade.io",
        "",
        "",
        "list watch",
    ),
    (
        "inplaceupgradepolicies.inplace-upgrade.io/status",
        "",
        "",
        "patch",
    ),
    ("events.events.k8s.io", "", "", "create patch"),
    ("events", "", "", "list watch"),
];

/// The controller, additionally in its own namespace (Role inplace-upgrade-controller-leader).
const CONTROLLER_NAMESPACED: &[(&str, &str, &str, &str)] = &[
    ("leases.coordination.k8s.io", "", "", "create"),
    (
        "leases.coordination.k8s.io",
        "",
        "inplace-upgrade-controller",
        "get update",
    ),
];

/// The webhook, in every namespace (ClusterRoles inplace-upgrade-webhook and -certs).
const WEBHOOK_CLUSTER: &[(&str, &str, &str, &str)] = &[
    ("pods", "", "", "list watch"),
    ("namespaces", "", "", "list watch"),
    ("deployments.apps", "", "", "list watch"),
    ("statefulsets.apps", "", "", "list watch"),
    ("daemonsets.apps", "", "", "list watch"),
    ("replicasets.apps", "", "", "list watch"),
    ("endpointslices.discovery.k8s.io", "", "", "list watch"),
    ("poddisruptionbudgets.policy", "", "", "list watch"),
    (
        "inplaceupgradepolicies.inplace-upgrade.io",
        "",
        "",
        "list watch",
    ),
    (
        "mutatingwebhookconfigurations.admissionregistration.k8s.io",
        "",
        "inplace-upgrade",
        "patch",
    ),
    (
        "validatingwebhookconfigurations.admissionregistration.k8s.io",
        "",
        "inplace-upgrade",
        "patch",
    ),
];

/// The webhook, additionally in its own namespace (Roles inplace-upgrade-webhook and -certs).
const WEBHOOK_NAMESPACED: &[(&str, &str, &str, &str)] = &[
    (
        "leases.coordination.k8s.io",
        "",
        "inplace-upgrade-controller",
        "list watch",
    ),
    ("secrets", "", "", "create"),
    ("secrets", "", "inplace-upgrade-webhook-tls", "get update"),
];

/// One permission: (resource, non-resource URL, resource name, verb). Comparing sets of these
/// ignores how kubectl happens to group rules into rows.
type Permission = (String, String, String, String);

fn permissions(rows: &[&[(&str, &str, &str, &str)]]) -> BTreeSet<Permission> {
    let mut set = BTreeSet::new();
    for (resource, url, name, verbs) in rows.iter().flat_map(|r| r.iter()) {
        for verb in verbs.split_whitespace() {
            set.insert((
                resource.to_string(),
                url.to_string(),
                name.to_string(),
                verb.to_string(),
            ));
        }
    }
    set
}

/// Parses `kubectl auth can-i --list` by the header's column offsets (the Resources column is
/// blank for non-resource URLs); bracketed lists are split on spaces.
fn parse_can_i_list(table: &str) -> AnyResult<BTreeSet<Permission>> {
    let mut lines = table.lines();
    let header = lines.next().ok_or("empty can-i output")?;
    let column = |title: &str| {
        header
            .find(title)
            .ok_or(format!("no {title} column in {header:?}"))
    };
    let (url_at, name_at, verbs_at) = (
        column("Non-Resource URLs")?,
        column("Resource Names")?,
        column("Verbs")?,
    );
    let items = |s: &str| -> Vec<String> {
        let s = s.trim().trim_start_matches('[').trim_end_matches(']');
        if s.is_empty() {
            vec![String::new()]
        } else {
            s.split_whitespace().map(str::to_string).collect()
        }
    };
    let mut set = BTreeSet::new();
    for line in lines.filter(|l| !l.trim().is_empty()) {
        let cell = |from: usize, to: usize| line.get(from..to.min(line.len())).unwrap_or("");
        let resource = cell(0, url_at).trim().to_string();
        for url in items(cell(url_at, name_at)) {
            for name in items(cell(name_at, verbs_at)) {
                for verb in items(cell(verbs_at, line.len())) {
                    set.insert((resource.clone(), url.clone(), name.clone(), verb));
                }
            }
        }
    }
    Ok(set)
}

fn check_can_i(
    env: &TestEnv,
    service_account: &str,
    namespace: &str,
    expected: BTreeSet<Permission>,
) -> AnyResult<()> {
    let user = format!("--as=system:serviceaccount:{NAMESPACE}:{service_account}");
    let table = kubectl(env, &["auth", "can-i", "--list", &user, "-n", namespace])?;
    let actual = parse_can_i_list(&table)?;
    let extra: Vec<_> = actual.difference(&expected).collect();
    let missing: Vec<_> = expected.difference(&actual).collect();
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{service_account} in namespace {namespace}:\n  allowed beyond the expected list: {extra:?}\n  expected but not allowed: {missing:?}\n{table}"
    );
    Ok(())
}

#[test]
fn service_accounts_may_do_exactly_what_the_code_needs() -> TestResult {
    let (env, _) = installed()?;
    // `default` stands for any namespace other than our own.
    check_can_i(
        env,
        CONTROLLER_SA,
        "default",
        permissions(&[BASELINE, CONTROLLER_CLUSTER]),
    )?;
    check_can_i(
        env,
        CONTROLLER_SA,
        NAMESPACE,
        permissions(&[BASELINE, CONTROLLER_CLUSTER, CONTROLLER_NAMESPACED]),
    )?;
    check_can_i(
        env,
        WEBHOOK_SA,
        "default",
        permissions(&[BASELINE, WEBHOOK_CLUSTER]),
    )?;
    check_can_i(
        env,
        WEBHOOK_SA,
        NAMESPACE,
        permissions(&[BASELINE, WEBHOOK_CLUSTER, WEBHOOK_NAMESPACED]),
    )?;
    Ok(())
}

#[test]
fn the_can_i_parser_reads_blank_and_multi_value_columns() -> TestResult {
    let table = "\
Resources          Non-Resource URLs   Resource Names   Verbs
pods               []                  []               [list watch]
leases             []                  [a]              [get]
                   [/healthz]          []               [get]
";
    let parsed = parse_can_i_list(table)?;
    let expected = permissions(&[&[
        ("pods", "", "", "list watch"),
        ("leases", "", "a", "get"),
        ("", "/healthz", "", "get"),
    ]]);
    assert_eq!(parsed, expected);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The controller binary under the deploy/ ServiceAccount.

/// An `inplace-upgrade` subcommand as a child process with a kubeconfig, its output in a file;
/// killed on drop.
struct Component {
    name: &'static str,
    child: tokio::process::Child,
    log: PathBuf,
}

impl Component {
    fn start(
        subcommand: &'static str,
        kubeconfig: &Path,
        args: &[&str],
        log: PathBuf,
    ) -> AnyResult<Self> {
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"))
            .arg(subcommand)
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args(args)
            // Plain text, greppable for `forbidden`.
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()?;
        Ok(Self {
            name: subcommand,
            child,
            log,
        })
    }

    fn controller(
        kubeconfig: &Path,
        namespace: &str,
        identity: &str,
        log: PathBuf,
    ) -> AnyResult<Self> {
        Self::start(
            "controller",
            kubeconfig,
            &[
                "--namespace",
                namespace,
                "--identity",
                identity,
                "--admin-addr",
                "127.0.0.1:0",
            ],
            log,
        )
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of its log, for a failure message.
    fn tail(&self) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    fn print_tail(&self) {
        eprintln!(
            "--- {} log {} (last lines) ---\n{}",
            self.name,
            self.log.display(),
            self.tail()
        );
    }

    /// Log lines where the API server refused a request.
    fn forbidden(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.to_ascii_lowercase().contains("forbidden"))
            .map(str::to_string)
            .collect()
    }

    async fn stop(mut self) -> AnyResult<()> {
        if let Some(status) = self.child.try_wait()? {
            return Err(format!("{} exited early ({status}):\n{}", self.name, self.tail()).into());
        }
        self.child.kill().await?;
        Ok(())
    }
}

/// Runs `body` while watching the component's log: the first `forbidden` line fails at once
/// (a missing RBAC rule would otherwise show only as a wait running out). On failure the log's
/// tail goes to stderr.
async fn with_log<T>(
    component: &Component,
    body: impl std::future::Future<Output = AnyResult<T>>,
) -> AnyResult<T> {
    /// Prints the log's tail when an assertion in `body` panics.
    struct TailOnPanic<'a>(&'a Component);
    impl Drop for TailOnPanic<'_> {
        fn drop(&mut self) {
            if std::thread::panicking() {
                self.0.print_tail();
            }
        }
    }
    let _guard = TailOnPanic(component);
    let refused = async {
        loop {
            if let Some(line) = component.forbidden().into_iter().next() {
                return line;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    };
    let outcome = tokio::select! {
        outcome = body => outcome,
        line = refused => Err(format!("the API server refused the {}: {line}", component.name).into()),
    };
    if outcome.is_err() {
        component.print_tail();
    }
    outcome
}

/// The webhook under its ServiceAccount serving certificate files (the cert-manager mode:
/// no certificate permissions needed), with a CA and a serving certificate for 127.0.0.1 made
/// by `inplace-upgrade certs`. Returns it, its HTTPS port, its admin port and the CA.
async fn start_webhook_with_files(
    env: &TestEnv,
    client: &Client,
) -> AnyResult<(Component, u16, u16, Vec<u8>)> {
    let dir = env.dir().join("e2e-deploy-webhook-files");
    let dir_arg = dir.display().to_string();
    let certs = std::process::Command::new(env!("CARGO_BIN_EXE_inplace-upgrade"))
        .args(["certs", "--out", &dir_arg, "--ip", "127.0.0.1"])
        .output()?;
    if !certs.status.success() {
        return Err(format!(
            "inplace-upgrade certs failed: {}",
            String::from_utf8_lossy(&certs.stderr)
        )
        .into());
    }
    let ca = std::fs::read(dir.join("ca.crt"))?;
    let kubeconfig = service_account_kubeconfig(env, client, NAMESPACE, WEBHOOK_SA).await?;
    let (port, admin_port) = (free_port()?, free_port()?);
    let (listen, admin) = (
        format!("127.0.0.1:{port}"),
        format!("127.0.0.1:{admin_port}"),
    );
    let webhook = Component::start(
        "webhook",
        &kubeconfig,
        &[
            "--namespace",
            NAMESPACE,
            "--cert-dir",
            &dir_arg,
            "--listen",
            &listen,
            "--admin-addr",
            &admin,
        ],
        env.dir().join("e2e-deploy-webhook-files.log"),
    )?;
    Ok((webhook, port, admin_port, ca))
}

async fn await_ready_at(port: u16, what: &str) -> AnyResult<()> {
    tokio::time::timeout(testenv::WAIT_LIMIT, async {
        while !is_ready_at(port).await {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .map_err(|_| {
        format!(
            "{what} was not ready on port {port} within {:?}",
            testenv::WAIT_LIMIT
        )
        .into()
    })
}

/// The rollout with both binaries out of process, each under its deploy/ ServiceAccount: the
/// API server calls the webhook for the new pods (readiness gate) and the annotation, and the
/// controller admits the gated pods and upgrades `istio-proxy` in place.
#[tokio::test]
async fn controller_and_webhook_under_their_service_accounts_upgrade_in_place() -> TestResult {
    let (env, _) = installed()?;
    let client = env.client()?;
    kubectl(
        env,
        &[
            "-n",
            NAMESPACE,
            "scale",
            "deployment/inplace-upgrade-controller",
            "--replicas=0",
        ],
    )?;
    let kubeconfig = service_account_kubeconfig(env, &client, NAMESPACE, CONTROLLER_SA).await?;
    let identity = "e2e-deploy-controller";
    let controller = Component::controller(
        &kubeconfig,
        NAMESPACE,
        identity,
        env.dir().join("e2e-deploy-controller.log"),
    )?;
    let (webhook, port, admin_port, ca) = start_webhook_with_files(env, &client).await?;
    let ns = env.namespace("deploy-rollout").await?;
    let body = async {
        // The webhook injects the gate only while the controller's Lease is live.
        wait_for(
            &Api::<Lease>::namespaced(client.clone(), NAMESPACE),
            LEASE,
            "the controller's Lease held by the out-of-process controller",
            |l: &Lease| {
                l.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(identity)
            },
        )
        .await?;
        await_ready_at(admin_port, "the webhook").await?;
        let registered = format!("e2e-deploy-{ns}");
        register_webhook(&client, &registered, &[&ns], port, ca).await?;
        create_policy(&client, &ns, json!({})).await?;
        // The controller, under its ServiceAccount and the namespace-label policy, labels the
        // namespace its new policy selects (what the pod webhook's namespaceSelector matches).
        wait_for(
            &Api::<Namespace>::all(client.clone()),
            &ns,
            "the namespace labelled governed by the controller",
            |n: &Namespace| {
                n.labels()
                    .get(inplace_upgrade::GOVERNED_LABEL)
                    .map(String::as_str)
                    == Some("true")
            },
        )
        .await?;
        create_service(&client, &ns, "hello").await?;
        let deployments = Api::<Deployment>::namespaced(client.clone(), &ns);
        // No gate in the template: the webhook adds it to each pod, and then the controller
        // must admit them (pods/status) or they never become Ready.
        // Annotated before it has pods: the webhook gates pods only of workloads that ask
        // for a target, and sets that target on them at creation.
        let first = "istio-proxy=proxyv2:1.24.1";
        let mut deployment = hello_deployment("hello-old-version.yaml.injected", 0, false)?;
        deployment
            .metadata
            .annotations
            .get_or_insert_default()
            .insert(TARGETS_ANNOTATION.into(), first.into());
        deployments
            .create(&PostParams::default(), &deployment)
            .await?;
        await_webhook_gates_pods_of(&client, &ns, &deployment).await?;
        deployments
            .patch(
                "hello",
                &PatchParams::default(),
                &Patch::Merge(json!({"spec": {"replicas": 2}})),
            )
            .await?;
        await_deployment_ready(&deployments, "hello", 2).await?;
        await_phase(&deployments, "hello", first, "Completed").await?;
        let before = pods_by_name(&client, &ns, "hello").await?;
        for (name, pod) in &before {
            assert_eq!(
                spec_image(pod, "istio-proxy").as_deref(),
                Some("registry.istio.io/testing/proxyv2:1.24.1"),
                "the webhook set the target on {name} at creation"
            );
            let gates = pod.spec.as_ref().and_then(|s| s.readiness_gates.clone());
            assert!(
                gates
                    .iter()
                    .flatten()
                    .any(|g| g.condition_type == "inplace-upgrade.io/ready"),
                "the webhook injected the readiness gate into {name}: {gates:?}"
            );
        }
        // A second team's namespace, governed by its own policy, with a Deployment of the same
        // name and pods of the same shape: what the first team's annotation must not reach.
        let other = env.namespace("deploy-other-team").await?;
        create_policy(&client, &other, json!({})).await?;
        let other_deployments = Api::<Deployment>::namespaced(client.clone(), &other);
        other_deployments
            .create(
                &PostParams::default(),
                &hello_deployment("hello-old-version.yaml.injected", 2, true)?,
            )
            .await?;
        await_deployment_ready(&other_deployments, "hello", 2).await?;
        let other_before = pods_by_name(&client, &other, "hello").await?;

        // The upgrade is asked for by the namespace's own team (rights on workloads in `ns`
        // only), not by an administrator: that is who annotates workloads in production.
        let tenant = tenant_client(env, &client, &ns).await?;
        assert_tenant_cannot_reach(&tenant, &ns, &other).await?;
        let target = "istio-proxy=proxyv2:1.24.2";
        annotate(
            &Api::<Deployment>::namespaced(tenant.clone(), &ns),
            "hello",
            TARGETS_ANNOTATION,
            target,
        )
        .await?;
        await_phase(&deployments, "hello", target, "Completed").await?;
        // The other team's same-named workload: same pods, same containers, nothing recorded.
        let other_after = pods_by_name(&client, &other, "hello").await?;
        assert_eq!(
            other_after.keys().collect::<Vec<_>>(),
            other_before.keys().collect::<Vec<_>>()
        );
        for (name, pod) in &other_after {
            let (b, a) = (
                facts(&other_before[name], "istio-proxy", "hello"),
                facts(pod, "istio-proxy", "hello"),
            );
            assert_eq!(
                (&a.uid, &a.proxy_id, a.proxy_restarts, &a.app_id),
                (&b.uid, &b.proxy_id, b.proxy_restarts, &b.app_id),
                "{other}/{name} was not touched"
            );
            assert_eq!(
                spec_image(pod, "istio-proxy"),
                spec_image(&other_before[name], "istio-proxy")
            );
            assert_eq!(
                state_phase(pod),
                None,
                "{other}/{name} has no upgrade record"
            );
        }
        let other_hello = other_deployments.get("hello").await?;
        assert_eq!(
            workload_status(other_hello.annotations()),
            None,
            "{other}/hello has no status: nothing asked for an upgrade there"
        );
        let after = pods_by_name(&client, &ns, "hello").await?;
        assert_eq!(
            after.keys().collect::<Vec<_>>(),
            before.keys().collect::<Vec<_>>()
        );
        for (name, pod) in &after {
            let (b, a) = (
                facts(&before[name], "istio-proxy", "hello"),
                facts(pod, "istio-proxy", "hello"),
            );
            assert_eq!((&a.uid, &a.ip, &a.node), (&b.uid, &b.ip, &b.node), "{name}");
            assert_ne!(a.proxy_id, b.proxy_id, "{name} restarted istio-proxy");
            assert_eq!(a.app_id, b.app_id, "{name} kept its app container");
            assert_eq!(spec_image(pod, "istio-proxy").as_deref(), Some(NEW_PROXY));
            // events.k8s.io create
            await_event(&client, &ns, name, "Upgraded").await?;
        }
        // inplaceupgradepolicies/status patch
        wait_for(
            &Api::<InPlaceUpgradePolicy>::all(client.clone()),
            &ns,
            "the policy's status written by the controller",
            |p: &InPlaceUpgradePolicy| p.status.is_some(),
        )
        .await?;
        // A malformed annotation is refused by the webhook: the API server does call it.
        let refused = kubectl(
            env,
            &[
                "-n",
                &ns,
                "annotate",
                "--overwrite",
                "deployment/hello",
                &format!("{TARGETS_ANNOTATION}=istio-proxy="),
            ],
        );
        assert!(
            refused
                .as_ref()
                .is_err_and(|e| e.to_string().contains("denied the request")),
            "{refused:?}"
        );
        for component in [&controller, &webhook] {
            let refused = component.forbidden();
            assert!(
                refused.is_empty(),
                "the API server refused the {}:\n{}",
                component.name,
                refused.join("\n")
            );
        }
        Api::<MutatingWebhookConfiguration>::all(client.clone())
            .delete(&registered, &Default::default())
            .await?;
        Api::<ValidatingWebhookConfiguration>::all(client.clone())
            .delete(&registered, &Default::default())
            .await?;
        Ok(())
    };
    let outcome = with_log(&controller, with_log(&webhook, body)).await;
    let stopped = (controller.stop().await, webhook.stop().await);
    // Back to deploy/'s replica count, so re-applying deploy/ on a long-lived cluster meets no
    // field-ownership conflict over `replicas`.
    let restored = kubectl(
        env,
        &[
            "-n",
            NAMESPACE,
            "scale",
            "deployment/inplace-upgrade-controller",
            "--replicas=2",
        ],
    );
    outcome?;
    stopped.0?;
    stopped.1?;
    restored?;
    Ok(())
}

/// A client for a namespace's team: ServiceAccount `tenant` of `ns` with a Role that lets it
/// manage workloads and pods in `ns` only (what the built-in `edit` role grants for these
/// resources; `edit` itself is empty here: it is filled by kube-controller-manager's
/// clusterrole-aggregation controller, which the test control plane does not run),
/// authenticated by a TokenRequest token.
async fn tenant_client(env: &TestEnv, admin: &Client, ns: &str) -> AnyResult<Client> {
    let account: ServiceAccount = obj(json!({"metadata": {"name": "tenant"}}));
    Api::<ServiceAccount>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &account)
        .await?;
    let verbs = json!([
        "get", "list", "watch", "create", "update", "patch", "delete"
    ]);
    let role: Role = obj(json!({
        "metadata": {"name": "tenant-edit"},
        "rules": [
            {"apiGroups": ["apps"], "resources": ["deployments", "statefulsets", "daemonsets",
                "replicasets"], "verbs": verbs},
            {"apiGroups": [""], "resources": ["pods", "services"], "verbs": verbs},
        ],
    }));
    Api::<Role>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &role)
        .await?;
    let binding: RoleBinding = obj(json!({
        "metadata": {"name": "tenant-edit"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "tenant-edit"},
        "subjects": [{"kind": "ServiceAccount", "name": "tenant", "namespace": ns}],
    }));
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await?;
    let path = service_account_kubeconfig(env, admin, ns, "tenant").await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    Ok(Client::try_from(config)?)
}

/// The controller's ServiceAccount may patch Namespaces (RBAC cannot narrow that to one
/// label), and the ValidatingAdmissionPolicy installed with deploy/ holds it to the label
/// `inplace-upgrade.io/governed`: setting and removing that label is allowed (server-side
/// apply under the controller's field manager, as the controller writes it), anything else —
/// another label, an annotation, a label's removal by a plain patch, a delete — is refused by
/// the API server with the policy's message. The cluster admin is not held to it.
#[tokio::test]
async fn the_controller_may_change_only_the_governed_label_of_a_namespace() -> TestResult {
    use inplace_upgrade::{GOVERNED_LABEL, NAMESPACE_FIELD_MANAGER};
    let (env, _) = installed()?;
    let admin = env.client()?;
    let ns = env.namespace("deploy-vap").await?;
    Api::<Namespace>::all(admin.clone())
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"owner": "platform"}}})),
        )
        .await?;
    let path = service_account_kubeconfig(env, &admin, NAMESPACE, CONTROLLER_SA).await?;
    let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
    let controller = Api::<Namespace>::all(Client::try_from(config)?);
    let apply = |labels: Value| {
        let body = json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": ns, "labels": labels}});
        (
            PatchParams::apply(NAMESPACE_FIELD_MANAGER).force(),
            Patch::Apply(body),
        )
    };
    let refused_by_policy = |outcome: Result<Namespace, kube::Error>| matches!(outcome, Err(kube::Error::Api(s)) if s.code == 403 && s.message.contains(GOVERNED_LABEL));
    // The API server loads a new policy asynchronously: wait until it refuses (it is applied
    // with deploy/ before this test starts; this only absorbs the load delay).
    let (params, other_label) = apply(json!({"team": "shop"}));
    let first = tokio::time::timeout(testenv::WAIT_LIMIT, async {
        loop {
            let outcome = controller.patch(&ns, &params, &other_label).await;
            if refused_by_policy(outcome) {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        first.is_ok(),
        "the controller's ServiceAccount could still set another label on Namespace {ns}"
    );
    // The one change it may make: its label, set and given up by server-side apply.
    let (params, ours) = apply(json!({GOVERNED_LABEL: "true"}));
    let labelled = controller.patch(&ns, &params, &ours).await?;
    assert_eq!(
        labelled.labels().get(GOVERNED_LABEL).map(String::as_str),
        Some("true")
    );
    for (what, outcome) in [
        (
            "another label beside ours",
            controller
                .patch(&ns, &params, &apply(json!({GOVERNED_LABEL: "true", "team": "shop"})).1)
                .await,
        ),
        (
            "an annotation",
            controller
                .patch(
                    &ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {TARGETS_ANNOTATION: "istio-proxy=:2"}}})),
                )
                .await,
        ),
        (
            "another label removed",
            controller
                .patch(
                    &ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"owner": null}}})),
                )
                .await,
        ),
        (
            "another label changed",
            controller
                .patch(
                    &ns,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"labels": {"owner": "me"}}})),
                )
                .await,
        ),
    ] {
        assert!(refused_by_policy(outcome), "{what}: not refused by the policy");
    }
    match controller.delete(&ns, &Default::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => {}
        other => panic!("deleting Namespace {ns}: expected 403, got {other:?}"),
    }
    let (params, none) = apply(json!({}));
    let released = controller.patch(&ns, &params, &none).await?;
    assert!(
        !released.labels().contains_key(GOVERNED_LABEL),
        "server-side apply without the label removes it: {:?}",
        released.labels()
    );
    assert_eq!(
        released.labels().get("owner").map(String::as_str),
        Some("platform"),
        "the other label survives every refused attempt and the apply"
    );
    // The cluster admin is not held to it.
    Api::<Namespace>::all(admin)
        .patch(
            &ns,
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"team": "shop"}}})),
        )
        .await?;
    Ok(())
}

/// A team that manages the workloads of `own` has no way through our annotations to `other`: it cannot
/// annotate the other namespace's workloads, set a target or a pause on any Namespace (a
/// Namespace annotation upgrades every workload in it), or write a policy (which decides which
/// namespaces may be upgraded and to which images). Each is refused by the API server (403).
async fn assert_tenant_cannot_reach(tenant: &Client, own: &str, other: &str) -> AnyResult<()> {
    fn refused<T: std::fmt::Debug>(what: &str, outcome: Result<T, kube::Error>) -> AnyResult<()> {
        match outcome {
            Err(kube::Error::Api(status)) if status.code == 403 => Ok(()),
            other => Err(format!("{what}: expected 403 Forbidden, got {other:?}").into()),
        }
    }
    let target = json!({"metadata": {"annotations": {
        TARGETS_ANNOTATION: "istio-proxy=proxyv2:1.24.2",
    }}});
    let pause = json!({"metadata": {"annotations": {PAUSED_ANNOTATION: "true"}}});
    let merge = |v: &Value| Patch::Merge(v.clone());
    let other_deployments = Api::<Deployment>::namespaced(tenant.clone(), other);
    let params = PatchParams::default();
    refused(
        "the other team's Deployment annotated with a target",
        other_deployments
            .patch("hello", &params, &merge(&target))
            .await,
    )?;
    refused(
        "the other team's Deployment paused",
        other_deployments
            .patch("hello", &params, &merge(&pause))
            .await,
    )?;
    let namespaces = Api::<Namespace>::all(tenant.clone());
    for ns in [own, other] {
        refused(
            &format!("Namespace {ns} annotated with a target"),
            namespaces.patch(ns, &params, &merge(&target)).await,
        )?;
    }
    let policy: InPlaceUpgradePolicy = obj(json!({
        "apiVersion": "inplace-upgrade.io/v1alpha1",
        "kind": "InPlaceUpgradePolicy",
        "metadata": {"name": format!("{own}-reaches-{other}")},
        "spec": {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": other}}},
    }));
    let policies = Api::<InPlaceUpgradePolicy>::all(tenant.clone());
    refused(
        "a policy created by the team",
        policies.create(&PostParams::default(), &policy).await,
    )?;
    refused(
        "the team's own policy loosened",
        policies
            .patch(own, &params, &merge(&json!({"spec": {"paused": false}})))
            .await,
    )?;
    Ok(())
}

/// `GET /readyz` on a plain-HTTP admin port answers 200.
async fn is_ready_at(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    let request = "GET /readyz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
    if stream.write_all(request.as_bytes()).await.is_err() {
        return false;
    }
    let mut response = Vec::new();
    let _ = stream.read_to_end(&mut response).await;
    response.starts_with(b"HTTP/1.1 200")
}

/// The webhook under its ServiceAccount, in self-managed certificate mode: it lists and watches
/// everything it caches, watches the controller's Lease, writes the one Secret and the caBundle
/// of both configurations from deploy/, and becomes ready once kubelet would have mounted the
/// Secret (the test writes its files where the Deployment mounts them).
#[tokio::test]
async fn the_webhook_under_its_service_account_manages_its_certificates() -> TestResult {
    let (env, _) = installed()?;
    let client = env.client()?;
    let kubeconfig = service_account_kubeconfig(env, &client, NAMESPACE, WEBHOOK_SA).await?;
    let cert_dir = env.dir().join("e2e-deploy-webhook-tls");
    std::fs::create_dir_all(&cert_dir)?;
    let admin_port = free_port()?;
    let admin_addr = format!("127.0.0.1:{admin_port}");
    let cert_dir_arg = cert_dir.display().to_string();
    let webhook = Component::start(
        "webhook",
        &kubeconfig,
        &[
            "--namespace",
            NAMESPACE,
            "--self-managed-certs",
            "--cert-dir",
            &cert_dir_arg,
            "--listen",
            "127.0.0.1:0",
            "--admin-addr",
            &admin_addr,
        ],
        env.dir().join("e2e-deploy-webhook.log"),
    )?;
    let outcome = with_log(&webhook, async {
        let secrets = Api::<Secret>::namespaced(client.clone(), NAMESPACE);
        let secret = wait_for(
            &secrets,
            "inplace-upgrade-webhook-tls",
            "the webhook's certificate Secret",
            |s: &Secret| {
                s.data
                    .as_ref()
                    .is_some_and(|d| d.contains_key("tls.crt") && d.contains_key("tls.key"))
            },
        )
        .await?;
        let data = secret.data.unwrap_or_default();
        for (key, value) in &data {
            std::fs::write(cert_dir.join(key), &value.0)?;
        }
        let ca = data
            .get("ca.crt")
            .ok_or("the Secret has no ca.crt")?
            .0
            .clone();
        let mutating = Api::<MutatingWebhookConfiguration>::all(client.clone());
        wait_for(
            &mutating,
            "inplace-upgrade",
            "caBundle in the mutating configuration",
            |c| {
                c.webhooks
                    .iter()
                    .flatten()
                    .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca))
            },
        )
        .await?;
        let validating = Api::<ValidatingWebhookConfiguration>::all(client.clone());
        wait_for(
            &validating,
            "inplace-upgrade",
            "caBundle in the validating configuration",
            |c| {
                c.webhooks
                    .iter()
                    .flatten()
                    .all(|w| w.client_config.ca_bundle.as_ref().map(|b| &b.0) == Some(&ca))
            },
        )
        .await?;
        // Ready = certificate loaded and every cache (and the Lease watch) listed.
        await_ready_at(admin_port, "the webhook").await?;
        let refused = webhook.forbidden();
        assert!(
            refused.is_empty(),
            "the API server refused the webhook:\n{}",
            refused.join("\n")
        );
        Ok(())
    })
    .await;
    let stopped = webhook.stop().await;
    outcome?;
    stopped
}

/// The check above can fail: a controller whose ClusterRole lacks one rule of deploy/'s logs a
/// `forbidden` line for exactly that resource.
#[tokio::test]
async fn a_controller_missing_one_rule_is_refused_and_says_so() -> TestResult {
    let (env, _) = installed()?;
    let client = env.client()?;
    let ns = env.namespace("deploy-minus").await?;
    let name = format!("{ns}-controller");
    let mut role = Api::<ClusterRole>::all(client.clone())
        .get(CONTROLLER_SA)
        .await?;
    let rules = role
        .rules
        .as_mut()
        .ok_or("the controller ClusterRole has no rules")?;
    let before = rules.len();
    rules.retain(|r| {
        !r.resources
            .as_ref()
            .is_some_and(|rs| rs.iter().any(|r| r == "endpointslices"))
    });
    assert_eq!(rules.len() + 1, before, "one rule grants endpointslices");
    role.metadata = kube::api::ObjectMeta {
        name: Some(name.clone()),
        ..Default::default()
    };
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = obj(json!({
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "default", "namespace": ns}],
    }));
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let kubeconfig = service_account_kubeconfig(env, &client, &ns, "default").await?;
    // Its own namespace, so its Lease never competes with the other test's controller.
    let controller =
        Component::controller(&kubeconfig, &ns, &name, env.dir().join(format!("{ns}.log")))?;
    let found = tokio::time::timeout(testenv::WAIT_LIMIT, async {
        loop {
            let refused = controller.forbidden();
            if let Some(line) = refused.iter().find(|l| l.contains("endpointslices")) {
                return line.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    })
    .await;
    let tail = controller.tail();
    controller.stop().await?;
    let line = found.map_err(|_| format!("no forbidden endpointslices line:\n{tail}"))?;
    assert!(
        line.contains(&format!("system:serviceaccount:{ns}:default")),
        "{line}"
    );
    Api::<ClusterRoleBinding>::all(client.clone())
        .delete(&name, &Default::default())
        .await?;
    Api::<ClusterRole>::all(client)
        .delete(&name, &Default::default())
        .await?;
    Ok(())
}

/// The kind path cannot run here (no Docker); at least its script, its real-node twin and the
/// steps they share parse, and its cluster config is a kind Cluster.
#[test]
fn the_kind_path_is_well_formed() -> TestResult {
    for script in ["kind/run.sh", "real/run.sh", "lib.sh"] {
        let script = repository().join("tests/e2e").join(script);
        let syntax = std::process::Command::new("bash")
            .arg("-n")
            .arg(&script)
            .output()?;
        assert!(
            syntax.status.success(),
            "{}: {}",
            script.display(),
            String::from_utf8_lossy(&syntax.stderr)
        );
    }
    let config: Value = serde_yaml::from_str(&std::fs::read_to_string(
        repository().join("tests/e2e/kind/kind-config.yaml"),
    )?)?;
    assert_eq!(config["kind"], "Cluster");
    Ok(())
}

fn example(file: &str) -> AnyResult<InPlaceUpgradePolicy> {
    let path = repository().join("deploy/examples").join(file);
    let text = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_yaml::from_str(&text)?)
}

#[test]
fn the_example_policies_are_valid_and_mean_what_they_say() -> TestResult {
    let (env, _) = installed()?;
    // The API server checks them against the CRD's schema.
    kubectl(
        env,
        &[
            "apply",
            "-f",
            "deploy/examples",
            "--server-side",
            "--dry-run=server",
        ],
    )?;
    let istio = example("istio-sidecars.yaml")?;
    assert!(istio.spec.allows_container("istio-proxy"));
    assert!(!istio.spec.allows_container("app"));
    let images = istio.spec.image_allowlist()?;
    for allowed in [
        "docker.io/istio/proxyv2:1.24.2",
        "istio/proxyv2:1.24.2",
        "registry.istio.io/testing/proxyv2:1.24.2",
    ] {
        assert!(images.check(allowed).is_ok(), "{allowed}");
    }
    for refused in [
        "docker.io/library/nginx:1.27",
        "docker.io/evil/proxyv2:1.24.2",
    ] {
        assert!(images.check(refused).is_err(), "{refused}");
    }
    let team = example("team-canary.yaml")?;
    assert_eq!(team.spec.max_unavailable_pods(8)?, 2);
    assert!(team.spec.priority > istio.spec.priority);
    Ok(())
}
