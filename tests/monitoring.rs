//! deploy/monitoring, checked with the real tools and the real binaries:
//!
//! - `promtool check rules` and `promtool test rules` (Debian's prometheus package; .ci/run
//!   provides it): every alert fires on crafted series and stays silent on its neighbours;
//! - prometheusrule.yaml is what tests/monitoring/prometheusrule.sh makes of alerts.yaml;
//! - every query of the Grafana dashboard and every alert names metrics the binaries export,
//!   with labels they carry. The test starts `inplace-upgrade controller` and `inplace-upgrade
//!   webhook` on the local control plane (the webhook registered with the API server by URL),
//!   makes things happen — a rollout that completes, one that fails and rolls back, one held in
//!   its drain by a long grace period, pods created through the webhook — then scrapes both
//!   `/metrics` and parses each query with a PromQL parser.
//!
//! prometheus-client exports a labelled family only once it has a series. Counters whose label
//! values are known in advance (results, reconcile errors, shed and certificate-error reasons,
//! reload results) are created at 0 at start-up, so they are there before their first event
//! (which `increase()` would otherwise miss); this test found them missing before that.
//! The rollout gauges are exported with no series while nothing rolls: the scenario keeps one
//! rollout held in its drain so that they have samples too.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use common::*;
use inplace_upgrade::TARGETS_ANNOTATION;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::Api;
use promql_parser::parser::{Expr, LabelModifier};
use serde_json::{Value, json};
use testenv::TestEnv;

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["instance", "job"];

fn repository() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn monitoring(file: &str) -> PathBuf {
    repository().join("deploy/monitoring").join(file)
}

/// `promtool`: `$INPLACE_PROMTOOL`, else what tests/monitoring/promtool.sh finds (the one on
/// PATH, or extracted from Debian's prometheus package into the cache).
fn promtool() -> AnyResult<Command> {
    static PATH: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let path = PATH
        .get_or_init(|| tool_path("INPLACE_PROMTOOL", "tests/monitoring/promtool.sh"))
        .clone()?;
    let mut command = Command::new(path);
    command.current_dir(repository());
    Ok(command)
}

#[test]
fn the_alerts_pass_promtool_check_and_their_unit_tests() -> TestResult {
    let check = run({
        let mut c = promtool()?;
        c.args(["check", "rules"]).arg(monitoring("alerts.yaml"));
        c
    })?;
    assert!(check.contains("SUCCESS"), "{check}");
    let tests = run({
        let mut c = promtool()?;
        c.args(["test", "rules"])
            .arg(monitoring("alerts.test.yaml"));
        c
    })?;
    assert!(tests.contains("SUCCESS"), "{tests}");
    // Every alert has a unit test that expects it to fire.
    let test_file = std::fs::read_to_string(monitoring("alerts.test.yaml"))?;
    for alert in alerts()?.keys() {
        assert!(
            test_file.contains(&format!(
                "alertname: {alert}\n    exp_alerts:\n    - exp_labels:"
            )),
            "alerts.test.yaml never expects {alert} to fire"
        );
    }
    Ok(())
}

#[test]
fn the_prometheus_rule_is_generated_from_the_alerts() -> TestResult {
    let generated = run({
        let mut c = Command::new("bash");
        c.arg(repository().join("tests/monitoring/prometheusrule.sh"));
        c
    })?;
    let checked_in = std::fs::read_to_string(monitoring("prometheusrule.yaml"))?;
    assert!(
        generated == checked_in,
        "deploy/monitoring/prometheusrule.yaml is stale: run tests/monitoring/prometheusrule.sh > deploy/monitoring/prometheusrule.yaml"
    );
    let rule: Value = serde_yaml::from_str(&checked_in)?;
    let alerts: Value = serde_yaml::from_str(&std::fs::read_to_string(monitoring("alerts.yaml"))?)?;
    assert_eq!(rule["spec"], alerts);
    Ok(())
}

/// Alert name → expression, from alerts.yaml.
fn alerts() -> AnyResult<BTreeMap<String, String>> {
    let file: Value = serde_yaml::from_str(&std::fs::read_to_string(monitoring("alerts.yaml"))?)?;
    let mut out = BTreeMap::new();
    for group in file["groups"]
        .as_array()
        .ok_or("alerts.yaml has no groups")?
    {
        for rule in group["rules"].as_array().ok_or("a group without rules")? {
            let name = rule["alert"].as_str().ok_or("a rule without alert")?;
            let expr = rule["expr"].as_str().ok_or("an alert without expr")?;
            out.insert(name.to_string(), expr.to_string());
        }
    }
    Ok(out)
}

/// Panel title → its queries, from the dashboard, with Grafana's `$__rate_interval` as 5m.
fn dashboard_queries() -> AnyResult<Vec<(String, String)>> {
    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(monitoring("dashboard.json"))?)?;
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().ok_or("no panels")? {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().ok_or("a target without expr")?;
            out.push((
                panel["title"].as_str().unwrap_or_default().to_string(),
                expr.replace("$__rate_interval", "5m"),
            ));
        }
    }
    Ok(out)
}

/// What a query reads: metric names, and label names it matches, groups or joins on.
#[derive(Default, Debug)]
struct Reads {
    metrics: BTreeSet<String>,
    labels: BTreeSet<String>,
}

fn reads(expr: &Expr, into: &mut Reads) {
    let modifier = |m: &Option<LabelModifier>, into: &mut Reads| {
        if let Some(m) = m {
            into.labels.extend(m.labels().labels.iter().cloned());
        }
    };
    match expr {
        Expr::Aggregate(a) => {
            modifier(&a.modifier, into);
            reads(&a.expr, into);
            if let Some(p) = &a.param {
                reads(p, into);
            }
        }
        Expr::Unary(u) => reads(&u.expr, into),
        Expr::Binary(b) => {
            if let Some(m) = &b.modifier {
                modifier(&m.matching, into);
            }
            reads(&b.lhs, into);
            reads(&b.rhs, into);
        }
        Expr::Paren(p) => reads(&p.expr, into),
        Expr::Subquery(s) => reads(&s.expr, into),
        Expr::VectorSelector(v) => {
            into.metrics.extend(v.name.clone());
            for m in &v.matchers.matchers {
                into.labels.insert(m.name.clone());
            }
        }
        Expr::MatrixSelector(m) => reads(&Expr::VectorSelector(m.vs.clone()), into),
        Expr::Call(c) => {
            for a in &c.args.args {
                reads(a, into);
            }
        }
        Expr::NumberLiteral(_) | Expr::StringLiteral(_) | Expr::Extension(_) => {}
    }
}

/// What one `/metrics` exposition declares: each sample name a family can produce (from its
/// `# TYPE` line), and the label names seen on its samples.
#[derive(Default, Debug)]
struct Exposition {
    /// Sample name → label names seen (empty when the family has no sample yet).
    samples: BTreeMap<String, BTreeSet<String>>,
    /// Sample names that had at least one sample.
    seen: BTreeSet<String>,
}

impl Exposition {
    fn parse(text: &str, into: &mut Exposition) -> AnyResult<()> {
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (family, kind) = rest
                    .split_once(' ')
                    .ok_or(format!("bad TYPE line {line:?}"))?;
                let names: Vec<String> = match kind {
                    "counter" => vec![format!("{family}_total")],
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .map(|s| format!("{family}{s}"))
                        .collect(),
                    _ => vec![family.to_string()],
                };
                for n in names {
                    into.samples.entry(n).or_default();
                }
            } else if !line.starts_with('#') && !line.trim().is_empty() {
                let name_end = line.find(['{', ' ']).unwrap_or(line.len());
                let name = &line[..name_end];
                let labels = into
                    .samples
                    .get_mut(name)
                    .ok_or(format!("sample {name} without a TYPE line"))?;
                if line[name_end..].starts_with('{') {
                    let body = &line[name_end + 1..line.rfind('}').unwrap_or(line.len())];
                    // Label values are quoted; names are what precedes each `="`.
                    for part in body.split("\",") {
                        if let Some((label, _)) = part.split_once("=\"") {
                            labels.insert(label.trim_start_matches(',').to_string());
                        }
                    }
                }
                into.seen.insert(name.to_string());
            }
        }
        Ok(())
    }
}

#[test]
fn the_query_reader_finds_names_and_labels() -> TestResult {
    let expr = promql_parser::parser::parse(
        "max by (namespace) (time() - a_seconds{phase=\"x\"}) > on (pod) group_left sum without (le) (rate(b_total[5m]))",
    )?;
    let mut r = Reads::default();
    reads(&expr, &mut r);
    assert_eq!(
        r.metrics,
        BTreeSet::from(["a_seconds".to_string(), "b_total".to_string()])
    );
    assert_eq!(
        r.labels,
        ["le", "namespace", "phase", "pod"]
            .map(String::from)
            .into_iter()
            .collect()
    );
    let mut e = Exposition::default();
    Exposition::parse(
        "# TYPE a counter\na_total{x=\"1,2\",y=\"\\\"q\\\"\"} 3\n# TYPE h histogram\nh_bucket{le=\"1\"} 0\n# TYPE g gauge\n",
        &mut e,
    )?;
    assert_eq!(
        e.samples["a_total"],
        BTreeSet::from(["x".to_string(), "y".to_string()])
    );
    assert!(e.samples.contains_key("h_sum") && e.samples.contains_key("g"));
    assert!(e.seen.contains("a_total") && !e.seen.contains("g"));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The binaries, scraped.

async fn scrape(admin: SocketAddr, what: &str) -> AnyResult<String> {
    match admin_get(admin, "/metrics").await {
        Some((200, body)) => Ok(body),
        other => Err(format!("GET /metrics of the {what} at {admin}: {other:?}").into()),
    }
}

/// Until the pod of `ns` named by `pred` shows up.
async fn await_pod(
    client: &Client,
    ns: &str,
    what: &str,
    pred: impl Fn(&Pod) -> bool,
) -> AnyResult<()> {
    testenv::wait_list(
        &Api::<Pod>::namespaced(client.clone(), ns),
        kube::runtime::watcher::Config::default(),
        what,
        |pods: &[Pod]| pods.iter().any(&pred),
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn every_dashboard_and_alert_query_names_what_the_binaries_export() -> TestResult {
    let env = TestEnv::shared()?;
    let client = env.client()?;
    install(&client).await?;
    let binary = Path::new(env!("CARGO_BIN_EXE_inplace-upgrade"));

    // The webhook, serving files made by `inplace-upgrade certs`, registered for our namespaces.
    let cert_dir = env.dir().join("monitoring-certs");
    run({
        let mut c = Command::new(binary);
        c.args(["certs", "--ip", "127.0.0.1", "--out"])
            .arg(&cert_dir);
        c
    })?;
    let port = free_port()?;
    let mut webhook = WebhookProcess::start(
        binary,
        env.kubeconfig_path(),
        &cert_dir,
        port,
        env.dir().join("monitoring-webhook.log"),
    )?;
    webhook.await_ready().await?;
    let (done, held) = (
        env.namespace("mon-done").await?,
        env.namespace("mon-held").await?,
    );
    register_webhook(
        &client,
        "monitoring-test",
        &[&done, &held],
        port,
        std::fs::read(cert_dir.join("ca.crt"))?,
    )
    .await?;

    let controller = Replica::start(env, "monitoring")?;
    let controller_admin: SocketAddr = ([127, 0, 0, 1], controller.admin).into();
    tokio::time::timeout(testenv::WAIT_LIMIT, async {
        while controller.leader_metric().ok().flatten().as_deref() != Some("1") {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .map_err(|_| format!("the controller never led:\n{}", controller.log_tail()))?;

    // A rollout that completes, then a target that fails and is rolled back (pre-pull off:
    // it would stop the missing image before any patch, and nothing would be rolled back).
    create_policy(&client, &done, json!({"prePull": {"enabled": false}})).await?;
    let deployments = deploy_hello(&client, &done, 2, true).await?;
    let target = format!("istio-proxy={NEW_PROXY}");
    annotate(&deployments, "hello", TARGETS_ANNOTATION, &target).await?;
    await_phase(&deployments, "hello", &target, "Completed").await?;
    let failing = "istio-proxy=registry.istio.io/testing/proxyv2:fail-pull";
    annotate(&deployments, "hello", TARGETS_ANNOTATION, failing).await?;
    await_phase(&deployments, "hello", failing, "Failed").await?;

    // A rollout held in its drain: the grace period outlasts the test.
    create_policy(
        &client,
        &held,
        json!({"drain": {"gracePeriodSeconds": 3600, "timeoutSeconds": 7200}}),
    )
    .await?;
    let held_deployments: Api<Deployment> = deploy_hello(&client, &held, 1, true).await?;
    annotate(&held_deployments, "hello", TARGETS_ANNOTATION, &target).await?;
    await_pod(&client, &held, "a pod drained by the readiness gate", |p| {
        gate(p).is_some_and(|(status, reason)| status == "False" && reason == "Draining")
    })
    .await?;

    // The gauges of the held rollout, computed at scrape time from what the reconcile that
    // drained the pod recorded after its writes.
    let held_drain =
        format!("inplace_upgrade_pod_drain_timeout_seconds{{namespace=\"{held}\",pod=\"hello-");
    let controller_text = tokio::time::timeout(testenv::WAIT_LIMIT, async {
        loop {
            match scrape(controller_admin, "controller").await {
                Ok(text) if text.contains(&held_drain) => return Ok(text),
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
    .await
    .map_err(|_| format!("the controller never exported {held_drain}…"))??;
    let webhook_text = scrape(webhook.admin, "webhook").await?;
    let mut exposition = Exposition::default();
    Exposition::parse(&controller_text, &mut exposition)?;
    Exposition::parse(&webhook_text, &mut exposition)?;

    // What the scenario made happen is in the samples, with the values it implies.
    for name in [
        "inplace_upgrade_pods_upgraded_total",
        "inplace_upgrade_pod_upgrade_duration_seconds_bucket",
        "inplace_upgrade_api_writes_total",
        "inplace_upgrade_leader",
        "inplace_upgrade_workloads",
        "inplace_upgrade_workloads_in_progress",
        "inplace_upgrade_workload_phase",
        "inplace_upgrade_workload_progress_timestamp_seconds",
        "inplace_upgrade_pod_drain_started_timestamp_seconds",
        "inplace_upgrade_pod_drain_timeout_seconds",
        "webhook_admission_requests_total",
        "webhook_admission_duration_seconds_bucket",
        "webhook_admission_in_flight",
        "webhook_certificate_valid",
        "webhook_certificate_not_after_seconds",
        "webhook_certificate_reloads_total",
        "inplace_upgrade_reconcile_errors_total",
        "webhook_admission_shed_total",
        "webhook_certificate_errors_total",
    ] {
        assert!(
            exposition.seen.contains(name),
            "no {name} sample after the scenario:\ncontroller:\n{controller_text}\nwebhook:\n{webhook_text}"
        );
    }
    let has_line = |text: &str, prefix: &str, suffix: &str| {
        text.lines()
            .any(|l| l.starts_with(prefix) && l.ends_with(suffix))
    };
    let failed = format!(
        "inplace_upgrade_workload_phase{{namespace=\"{done}\",workload=\"Deployment/hello\",policy=\"{done}\",phase=\"Failed\"}}"
    );
    assert!(
        has_line(&controller_text, &failed, " 1"),
        "{failed}:\n{controller_text}"
    );
    assert!(
        has_line(&controller_text, &held_drain, " 7200.0"),
        "{held_drain}…:
{controller_text}"
    );
    assert!(has_line(
        &controller_text,
        "inplace_upgrade_pods_upgraded_total{result=\"succeeded\"}",
        " 2"
    ));
    assert!(has_line(
        &controller_text,
        "inplace_upgrade_pods_upgraded_total{result=\"rolled_back\"}",
        " 1"
    ));
    assert!(has_line(&webhook_text, "webhook_certificate_valid ", " 1"));

    // Every query reads only what is exported.
    let mut queries: Vec<(String, String)> = alerts()?
        .into_iter()
        .map(|(alert, expr)| (format!("alert {alert}"), expr))
        .collect();
    queries.extend(
        dashboard_queries()?
            .into_iter()
            .map(|(panel, expr)| (format!("panel {panel:?}"), expr)),
    );
    assert!(queries.len() > 20, "{} queries", queries.len());
    let mut problems = Vec::new();
    for (place, query) in &queries {
        let expr =
            promql_parser::parser::parse(query).map_err(|e| format!("{place}: {query}: {e}"))?;
        let mut r = Reads::default();
        reads(&expr, &mut r);
        if r.metrics.is_empty() {
            problems.push(format!("{place}: names no metric: {query}"));
        }
        let mut known: BTreeSet<String> = TARGET_LABELS.iter().map(|l| l.to_string()).collect();
        for metric in &r.metrics {
            match exposition.samples.get(metric) {
                Some(labels) => known.extend(labels.iter().cloned()),
                None => problems.push(format!("{place}: {metric} is not exported")),
            }
        }
        for label in r.labels.difference(&known) {
            problems.push(format!(
                "{place}: label {label} is on none of {:?}",
                r.metrics
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));

    // Leave the cluster's webhooks as they were for any other test of this binary.
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .delete("monitoring-test", &Default::default())
        .await?;
    Api::<ValidatingWebhookConfiguration>::all(client)
        .delete("monitoring-test", &Default::default())
        .await?;
    drop(controller);
    drop(webhook);
    Ok(())
}
