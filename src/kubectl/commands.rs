//! The commands: API reads and annotation writes around the pure core and [`super::render`].

use std::collections::{BTreeMap, BTreeSet};
use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Client, ResourceExt};
use serde_json::json;

use super::render::{
    self, BudgetSummary, ContainerChange, PlanReport, PodPlan, PolicySummary, StatusRow,
};
use super::resource::{self, ResourceKind, ResourceRef, Workload, api_error};
use super::{Cli, Command, ExitStatus, GlobalArgs, KubectlError, Output};
use crate::admission::validate::{WorkloadObject, check_workload_or_namespace};
use crate::admission::{ClusterView, Settings};
use crate::annotation;
use crate::intent::{self, Observed, Subject};
use crate::plan::inputs::{disruption_budgets, endpoints_drained};
use crate::plan::{Action, PodEvents, Verdict, plan};
use crate::policy::InPlaceUpgradePolicy;
use crate::state::PodUpgradeState;
use crate::status::{WorkloadPhase, WorkloadStatus, progress};
use crate::target::{self, TargetSource};
use crate::workload::{WorkloadKey, WorkloadView};
use crate::{PAUSED_ANNOTATION, RETRY_ANNOTATION, STATE_ANNOTATION, TARGETS_ANNOTATION};

/// Field manager of our annotation writes.
const FIELD_MANAGER: &str = "kubectl-inplace";
/// How often `status --watch` and `retry` look again.
const POLL: Duration = Duration::from_secs(1);

struct Ctx {
    client: Client,
    namespace: String,
    global: GlobalArgs,
}

pub async fn run(cli: Cli) -> Result<ExitStatus, KubectlError> {
    let (client, default_namespace) = connect(&cli.global).await?;
    let ctx = Ctx {
        client,
        namespace: cli.global.namespace.clone().unwrap_or(default_namespace),
        global: cli.global,
    };
    if ctx.global.all_namespaces && !matches!(cli.command, Command::Status(_)) {
        return Err(KubectlError::Usage(
            "-A/--all-namespaces applies to status only; name the namespace with -n".into(),
        ));
    }
    match cli.command {
        Command::Plan(args) => plan_command(&ctx, &args.resource, &args.images).await,
        Command::Status(args) => {
            status_command(&ctx, args.resource.as_ref(), args.watch, args.timeout).await
        }
        Command::Pause(args) => {
            let what = args.resource.to_string();
            annotate(&ctx, &args.resource, &[(PAUSED_ANNOTATION, Some("true"))]).await?;
            println!("{what} paused: no new pod starts; pods in flight finish");
            Ok(ExitStatus::Ok)
        }
        Command::Resume(args) => resume(&ctx, &args.resource).await,
        Command::Retry(args) => retry(&ctx, &args.resource, args.timeout).await,
        Command::Rollback(args) => rollback(&ctx, &args.resource).await,
        Command::Set(args) => set(&ctx, &args.resource, args.targets.trim()).await,
    }
}

async fn connect(g: &GlobalArgs) -> Result<(Client, String), KubectlError> {
    use kube::config::{KubeConfigOptions, Kubeconfig};
    let options = KubeConfigOptions {
        context: g.context.clone(),
        ..Default::default()
    };
    let config = match &g.kubeconfig {
        Some(path) => {
            let kubeconfig = Kubeconfig::read_from(path).map_err(|e| {
                KubectlError::NotFound(format!("cannot read kubeconfig {}: {e}", path.display()))
            })?;
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await
        }
        None if g.context.is_some() => kube::Config::from_kubeconfig(&options).await,
        None => kube::Config::infer().await.map_err(|e| {
            kube::config::KubeconfigError::LoadContext(format!(
                "no kubeconfig found (KUBECONFIG, ~/.kube/config, in-cluster): {e}"
            ))
        }),
    }
    .map_err(|e| {
        KubectlError::NotFound(format!(
            "cannot use the kubeconfig: {e}; check --kubeconfig and --context"
        ))
    })?;
    let namespace = config.default_namespace.clone();
    let client = Client::try_from(config)
        .map_err(|e| KubectlError::Unavailable(format!("cannot build a Kubernetes client: {e}")))?;
    Ok((client, namespace))
}

fn print_structured<T: serde::Serialize>(output: Output, value: &T) -> Result<(), KubectlError> {
    let text = match output {
        Output::Json => serde_json::to_string_pretty(value)
            .map(|s| s + "\n")
            .map_err(|e| e.to_string()),
        _ => serde_yaml::to_string(value).map_err(|e| e.to_string()),
    }
    .map_err(|e| KubectlError::Unavailable(format!("cannot render the output: {e}")))?;
    print!("{text}");
    Ok(())
}

fn annotations_of(ns: Option<&Namespace>) -> BTreeMap<String, String> {
    ns.and_then(|n| n.metadata.annotations.clone())
        .unwrap_or_default()
}

async fn policies(client: &Client) -> Result<Vec<InPlaceUpgradePolicy>, KubectlError> {
    match Api::<InPlaceUpgradePolicy>::all(client.clone())
        .list(&ListParams::default())
        .await
    {
        Ok(list) => Ok(list.items),
        // The CRD is not installed: no policy enables anything.
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(Vec::new()),
        Err(e) => Err(api_error("InPlaceUpgradePolicies", e)),
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

// ---------------------------------------------------------------------------------------------
// plan

async fn plan_command(
    ctx: &Ctx,
    resource: &ResourceRef,
    images: &[String],
) -> Result<ExitStatus, KubectlError> {
    let report = build_plan(ctx, resource, images).await?;
    match ctx.global.output {
        Some(o @ (Output::Json | Output::Yaml)) => print_structured(o, &report)?,
        _ => print!("{}", render::plan_text(&report)),
    }
    Ok(if report.blockers.is_empty() {
        ExitStatus::Ok
    } else {
        ExitStatus::Refused
    })
}

async fn build_plan(
    ctx: &Ctx,
    resource: &ResourceRef,
    images: &[String],
) -> Result<PlanReport, KubectlError> {
    let client = &ctx.client;
    let ns_name = ctx.namespace.as_str();
    let Workload { mut view, .. } =
        resource::get_workload(client, ns_name, resource, "plan").await?;
    if !images.is_empty() {
        // Planned as if the workload were annotated with them.
        let joined = images.join(",");
        annotation::parse(&joined)
            .map_err(|e| KubectlError::Usage(format!("--image {joined:?} is invalid: {e}")))?;
        view.annotations.insert(TARGETS_ANNOTATION.into(), joined);
    }
    // An unreadable Namespace: its name label is all the policies' selectors can go by.
    let namespace = resource::namespace(client, ns_name)
        .await
        .unwrap_or_else(|| unreadable_namespace(ns_name));
    let policies = policies(client).await?;
    // The Namespace-wide failure memory: the other workloads' records, as the controller reads them.
    let siblings = if intent::namespace_wide(&view, Some(&namespace)) {
        intent::sibling_statuses(
            &view.key,
            resource::list_workloads(client, Some(ns_name)).await?,
        )
    } else {
        Vec::new()
    };
    let pods = resource::pods_of(client, &view).await?;
    let list = |what: &'static str| {
        let what = format!("{what} in namespace {ns_name:?}");
        move |e| api_error(&what, e)
    };
    let pdbs = Api::<PodDisruptionBudget>::namespaced(client.clone(), ns_name)
        .list(&ListParams::default())
        .await
        .map_err(list("poddisruptionbudgets"))?;
    let slices = Api::<EndpointSlice>::namespaced(client.clone(), ns_name)
        .list(&ListParams::default())
        .await
        .map_err(list("endpointslices"))?;
    plan_report(
        &Cluster {
            workload: &view,
            namespace: &namespace,
            policies: &policies,
            siblings,
            pods: &pods,
            pdbs: &pdbs.items,
            slices: &slices.items,
        },
        resource,
        !images.is_empty(),
        &ctx.global.controller_namespace,
        Timestamp::now(),
    )
}

/// A Namespace that cannot be read, as the policies' selectors see it: its name label only.
fn unreadable_namespace(name: &str) -> Namespace {
    Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                name.to_string(),
            )])),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// What `plan` read of the cluster.
pub(crate) struct Cluster<'a> {
    /// The workload, with `--image` (if given) as its annotation.
    pub workload: &'a WorkloadView,
    pub namespace: &'a Namespace,
    pub policies: &'a [InPlaceUpgradePolicy],
    /// The status records of the namespace's other workloads (read only under a Namespace
    /// annotation).
    pub siblings: Vec<WorkloadStatus>,
    pub pods: &'a [Pod],
    pub pdbs: &'a [PodDisruptionBudget],
    pub slices: &'a [EndpointSlice],
}

/// The dry run from what was read: the controller's own decision ([`intent::decide`]), plan
/// and status ([`progress`]), and every blocker named.
pub(crate) fn plan_report(
    cluster: &Cluster<'_>,
    resource: &ResourceRef,
    from_image: bool,
    controller_namespace: &str,
    now: Timestamp,
) -> Result<PlanReport, KubectlError> {
    let view = cluster.workload;
    let ns_name = view.key.namespace.as_str();
    let previous = WorkloadStatus::of(view);
    let subject = Subject {
        workload: view,
        namespace: Some(cluster.namespace),
        policies: cluster.policies,
        controller_namespace,
        status: previous.as_ref(),
        now,
    };
    let intent = intent::decide(&subject, || cluster.siblings.clone());
    if let Some(e) = &intent.asked.invalid {
        return Err(KubectlError::Refused(format!(
            "annotation {TARGETS_ANNOTATION}: {:?} is invalid: {e}",
            intent.asked.written
        )));
    }
    let source = match intent.asked.source {
        Some(_) if from_image => "--image",
        Some(TargetSource::Workload) => "workload annotation",
        Some(TargetSource::Namespace) => "namespace annotation",
        None => "",
    };

    let mut blockers = Vec::new();
    if intent.asked.source.is_none() {
        blockers.push(format!(
            "no target: neither {resource} nor namespace {ns_name} has the {TARGETS_ANNOTATION} annotation; give --image CONTAINER=IMAGE or run kubectl inplace set"
        ));
    }
    match &intent.governance {
        Ok(Some(g)) if g.paused() => blockers.push(format!(
            "paused by InPlaceUpgradePolicy {}",
            g.paused_by.join(", ")
        )),
        Ok(Some(_)) => {}
        Ok(None) => blockers.push(format!(
            "no InPlaceUpgradePolicy enables namespace {ns_name:?} for this {}; create one (see deploy/examples)",
            view.key.kind.as_str()
        )),
        Err(e) => blockers.push(format!(
            "{e}; nothing is upgraded until that policy is fixed"
        )),
    }
    for (what, paused) in [
        (resource.to_string(), intent.paused_workload),
        (format!("namespace/{ns_name}"), intent.paused_namespace),
    ] {
        if paused {
            blockers.push(format!(
                "paused by annotation {PAUSED_ANNOTATION} on {what}; kubectl inplace resume {what}"
            ));
        }
    }
    if let Some(hold) = &intent.hold {
        blockers.push(hold.clone());
    }

    let budgets = disruption_budgets(cluster.pdbs.iter(), cluster.pods);
    // A dry run does not know when, or against which EndpointSlices, the controller drained
    // a pod: it judges the slices and times the grace period as a restarted controller would.
    let drains = BTreeMap::new();
    let drained = endpoints_drained(cluster.slices.iter(), cluster.pods, &drains);
    // A dry run reads no Events: a native sidecar failing without a waiting reason shows here
    // as in progress until the controller, which watches them, records the failure.
    let events = PodEvents::new();
    let seen = Observed {
        pods: cluster.pods,
        desired_replicas: view.desired_replicas,
        disruption_budgets: &budgets,
        endpoints_drained: &drained,
        drains: &drains,
        events: &events,
        pulls: &Default::default(),
    };
    let input = intent.plan_input(seen, now);
    let mut planned = plan(&input);
    if intent.hold.is_some() {
        planned.hold_new_pods();
    }
    match &planned.verdict {
        Verdict::Blocked { reason } => blockers.extend(reason.split("; ").map(str::to_string)),
        Verdict::Failed { pod, reason } => blockers.push(format!(
            "pod {pod}: {reason}; kubectl inplace retry {resource} tries the target again"
        )),
        Verdict::Progressing | Verdict::Completed | Verdict::Paused => {}
    }
    // What the controller would record (the rollout slots aside: only it knows them).
    let verdict = progress(
        &intent.reported(intent.hold.as_deref()),
        &planned,
        previous.as_ref(),
        now,
    )
    .phase;
    let pods = cluster.pods;
    let targets = &intent.asked.targets;

    // The pods in the order the planner takes them: in-flight first, then not Ready ones,
    // then by name (its stable sort).
    let steps: BTreeMap<&str, &Action> = planned
        .steps
        .iter()
        .map(|s| (s.pod.as_str(), &s.action))
        .collect();
    let stopped = !blockers.is_empty() || !matches!(planned.verdict, Verdict::Progressing);
    let mut rows: Vec<(u8, bool, PodPlan)> = Vec::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let name = pod.name_any();
        let Some(spec) = pod.spec.as_ref() else {
            continue;
        };
        let ready = is_ready(pod);
        let record = PodUpgradeState::from_pod(pod).ok().flatten();
        let active = record.as_ref().filter(|s| s.phase.in_progress());
        let changes: Vec<ContainerChange> = match (active, target::resolve(spec, targets)) {
            (Some(st), _) => st
                .containers
                .iter()
                .map(|c| ContainerChange {
                    container: c.name.clone(),
                    current: c.previous_image.clone(),
                    target: c.expected_image(st.phase).to_string(),
                })
                .collect(),
            (None, Ok(resolved)) => resolved
                .pending()
                .map(|t| ContainerChange {
                    container: t.location.name.clone(),
                    current: t.location.image.clone(),
                    target: t.image.clone(),
                })
                .collect(),
            (None, Err(e)) => {
                rows.push((
                    3,
                    ready,
                    PodPlan {
                        order: None,
                        name,
                        ready,
                        changes: vec![],
                        next: format!("cannot be upgraded: {e}"),
                    },
                ));
                continue;
            }
        };
        let next = match steps.get(name.as_str()) {
            Some(Action::PrePull { .. }) => "pull the target image onto its node first".to_string(),
            Some(Action::Drain) => "drain now, then upgrade".to_string(),
            Some(Action::Patch { .. }) => "upgrade now".to_string(),
            Some(Action::Wait { reason }) => format!("in progress: {reason}"),
            Some(Action::Undrain) => "return to load balancing".to_string(),
            Some(Action::Rollback { reason, .. }) => format!("roll back ({reason})"),
            Some(Action::Finish { phase, .. }) => format!("record {phase:?}"),
            Some(Action::MarkReady) | None if changes.is_empty() => "nothing to change".to_string(),
            Some(Action::MarkReady) | None if planned.held.contains_key(name.as_str()) => {
                format!("blocked: {}", planned.held[name.as_str()])
            }
            Some(Action::MarkReady) | None if stopped => "blocked".to_string(),
            Some(Action::MarkReady) | None => "waits for its turn".to_string(),
        };
        let group = match (active.is_some(), changes.is_empty()) {
            (true, _) => 0,
            (false, false) => 1,
            (false, true) => 2,
        };
        rows.push((
            group,
            ready,
            PodPlan {
                order: None,
                name,
                ready,
                changes,
                next,
            },
        ));
    }
    rows.sort_by(|a, b| (a.0, a.1, &a.2.name).cmp(&(b.0, b.1, &b.2.name)));
    let mut order = 0;
    let pods_out: Vec<PodPlan> = rows
        .into_iter()
        .map(|(group, _, mut p)| {
            if group <= 1 {
                order += 1;
                p.order = Some(order);
            }
            p
        })
        .collect();

    Ok(PlanReport {
        namespace: ns_name.to_string(),
        workload: resource.to_string(),
        targets: intent.asked.written.clone(),
        source: source.to_string(),
        policy: intent.policy.clone().map(|name| PolicySummary {
            name,
            max_unavailable: match &intent.spec.max_unavailable {
                IntOrString::Int(n) => n.to_string(),
                IntOrString::String(s) => s.clone(),
            },
            pods_at_once: intent.spec.max_unavailable_pods(view.desired_replicas).ok(),
            on_failure: format!("{:?}", intent.spec.on_failure),
            ready_timeout_seconds: intent.spec.ready_timeout_seconds,
        }),
        desired_replicas: view.desired_replicas,
        disruption_budgets: budgets
            .iter()
            .map(|b| BudgetSummary {
                name: b.name.clone(),
                disruptions_allowed: b.disruptions_allowed,
                pods: b.pods.len(),
            })
            .collect(),
        pods: pods_out,
        verdict: verdict.as_str().to_string(),
        blockers,
    })
}

// ---------------------------------------------------------------------------------------------
// status

async fn status_rows(ctx: &Ctx, one: Option<&ResourceRef>) -> Result<Vec<StatusRow>, KubectlError> {
    let client = &ctx.client;
    let views: Vec<WorkloadView> = match one {
        Some(r) => vec![
            resource::get_workload(client, &ctx.namespace, r, "status")
                .await?
                .view,
        ],
        None if ctx.global.all_namespaces => resource::list_workloads(client, None).await?,
        None => resource::list_workloads(client, Some(&ctx.namespace)).await?,
    };
    let mut namespaces: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    let now = Timestamp::now();
    let mut rows = Vec::new();
    for view in views {
        let ns = view.key.namespace.clone();
        if !namespaces.contains_key(&ns) {
            let annotations = annotations_of(resource::namespace(client, &ns).await.as_ref());
            namespaces.insert(ns.clone(), annotations);
        }
        let ns_annotations = namespaces.get(&ns).cloned().unwrap_or_default();
        // The targets as the controller records them in `status.target`.
        let target = intent::asked(&view.annotations, &ns_annotations).written;
        let recorded = WorkloadStatus::of(&view);
        if one.is_none() && target.is_empty() && recorded.is_none() {
            continue; // never asked for an in-place upgrade
        }
        // A record about an earlier target says nothing about this one yet.
        let status = recorded.filter(|s| s.target == target);
        let age = status
            .as_ref()
            .and_then(|s| s.last_transition_time)
            .map(|t| {
                Duration::from_secs(u64::try_from(now.duration_since(t).as_secs()).unwrap_or(0))
            });
        rows.push(StatusRow {
            namespace: ns,
            workload: format!(
                "{}/{}",
                view.key.kind.as_str().to_lowercase(),
                view.key.name
            ),
            target,
            status,
            age,
        });
    }
    Ok(rows)
}

async fn status_command(
    ctx: &Ctx,
    one: Option<&ResourceRef>,
    watch: bool,
    timeout: Duration,
) -> Result<ExitStatus, KubectlError> {
    let all = ctx.global.all_namespaces;
    if all && one.is_some() {
        return Err(KubectlError::Usage(
            "give either TYPE/NAME or -A/--all-namespaces, not both".into(),
        ));
    }
    let rows = status_rows(ctx, one).await?;
    if !watch {
        match ctx.global.output {
            Some(o @ (Output::Json | Output::Yaml)) => print_structured(o, &rows)?,
            wide => {
                if rows.is_empty() {
                    let scope = if all {
                        "any namespace".to_string()
                    } else {
                        format!("namespace {}", ctx.namespace)
                    };
                    eprintln!("No in-place upgrades found in {scope}.");
                } else {
                    print!(
                        "{}",
                        render::status_table(&rows, all, wide == Some(Output::Wide))
                    );
                }
            }
        }
        return Ok(ExitStatus::Ok);
    }
    if let (Some(r), Some(row)) = (one, rows.first())
        && row.target.is_empty()
    {
        return Err(KubectlError::Refused(format!(
            "{r} has no {TARGETS_ANNOTATION} target to watch; set one with kubectl inplace set {r} CONTAINER=IMAGE"
        )));
    }
    if rows.is_empty() {
        eprintln!("No in-place upgrades to watch.");
        return Ok(ExitStatus::Ok);
    }
    watch_rows(ctx, one, rows, timeout).await
}

async fn watch_rows(
    ctx: &Ctx,
    one: Option<&ResourceRef>,
    mut rows: Vec<StatusRow>,
    timeout: Duration,
) -> Result<ExitStatus, KubectlError> {
    let all = ctx.global.all_namespaces;
    let tty = std::io::stdout().is_terminal();
    let started = Instant::now();
    let mut printed: BTreeMap<String, String> = BTreeMap::new();
    let mut drawn = 0usize;
    loop {
        let mut out = std::io::stdout().lock();
        if tty {
            let width = rows
                .iter()
                .map(|r| r.workload.len() + if all { r.namespace.len() + 1 } else { 0 })
                .max()
                .unwrap_or(0);
            if drawn > 0 {
                let _ = write!(out, "\x1b[{drawn}F");
            }
            for row in &rows {
                let _ = writeln!(out, "\x1b[2K{}", render::watch_bar(row, all, width));
            }
            drawn = rows.len();
        } else {
            for row in &rows {
                let line = render::watch_line(row, all);
                let key = format!("{}/{}", row.namespace, row.workload);
                if printed.get(&key) != Some(&line) {
                    let _ = writeln!(out, "{line}");
                    printed.insert(key, line);
                }
            }
        }
        let _ = out.flush();
        drop(out);
        let failed: Vec<&StatusRow> = rows.iter().filter(|r| r.outcome() == Some(false)).collect();
        if rows.iter().all(|r| r.outcome().is_some()) {
            if let Some(f) = failed.first() {
                let message = f
                    .status
                    .as_ref()
                    .and_then(|s| s.message.clone())
                    .unwrap_or_default();
                return Err(KubectlError::RolloutFailed(format!(
                    "{} rollout failed ({}): {message}",
                    f.workload,
                    f.phase()
                )));
            }
            for r in &rows {
                let (u, t) = r.status.as_ref().map_or((0, 0), |s| (s.upgraded, s.total));
                println!(
                    "{}: rollout complete: {u}/{t} pods upgraded in place",
                    r.workload
                );
            }
            return Ok(ExitStatus::Ok);
        }
        if !timeout.is_zero() && started.elapsed() >= timeout {
            let waiting: Vec<String> = rows
                .iter()
                .filter(|r| r.outcome().is_none())
                .map(|r| format!("{} ({})", r.workload, r.phase()))
                .collect();
            return Err(KubectlError::Timeout(format!(
                "timed out after {} waiting for {}",
                render::human_duration(timeout),
                waiting.join(", ")
            )));
        }
        tokio::time::sleep(POLL).await;
        rows = status_rows(ctx, one).await?;
    }
}

// ---------------------------------------------------------------------------------------------
// annotation writes

async fn annotate(
    ctx: &Ctx,
    resource: &ResourceRef,
    values: &[(&str, Option<&str>)],
) -> Result<(), KubectlError> {
    let ar = resource.kind.api_resource();
    let (api, what) = match resource.kind {
        ResourceKind::Namespace => (
            Api::<DynamicObject>::all_with(ctx.client.clone(), &ar),
            resource.to_string(),
        ),
        ResourceKind::Workload(_) => (
            Api::<DynamicObject>::namespaced_with(ctx.client.clone(), &ctx.namespace, &ar),
            format!("{resource} in namespace {:?}", ctx.namespace),
        ),
    };
    let annotations: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(k, v)| {
            (
                k.to_string(),
                v.map_or(serde_json::Value::Null, |v| json!(v)),
            )
        })
        .collect();
    let patch = json!({"metadata": {"annotations": annotations}});
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch(&resource.name, &params, &Patch::Merge(&patch))
        .await
        .map_err(|e| api_error(&what, e))?;
    Ok(())
}

async fn resume(ctx: &Ctx, resource: &ResourceRef) -> Result<ExitStatus, KubectlError> {
    annotate(ctx, resource, &[(PAUSED_ANNOTATION, None)]).await?;
    println!("{resource} resumed");
    if resource.kind != ResourceKind::Namespace {
        let ns = resource::namespace(&ctx.client, &ctx.namespace).await;
        if annotations_of(ns.as_ref())
            .get(PAUSED_ANNOTATION)
            .is_some_and(|v| v == "true")
        {
            eprintln!(
                "Warning: namespace/{0} is paused too; kubectl inplace resume ns/{0}",
                ctx.namespace
            );
        }
    }
    Ok(ExitStatus::Ok)
}

/// The request time, to the second (the controller compares it with pod records kept to the
/// second).
fn retry_value() -> String {
    Timestamp::from_second(Timestamp::now().as_second())
        .map(|t| t.to_string())
        .unwrap_or_else(|_| Timestamp::now().to_string())
}

async fn retry(
    ctx: &Ctx,
    resource: &ResourceRef,
    timeout: Duration,
) -> Result<ExitStatus, KubectlError> {
    let client = &ctx.client;
    let Workload { view, .. } =
        resource::get_workload(client, &ctx.namespace, resource, "retry").await?;
    let ns_annotations = annotations_of(resource::namespace(client, &ctx.namespace).await.as_ref());
    let source = intent::asked(&view.annotations, &ns_annotations).source;
    let recorded_source = WorkloadStatus::of(&view).and_then(|s| s.source);
    let asked_at = retry_value();
    // Under a Namespace annotation a failed target is remembered by the workload it failed in
    // and blocks every other workload of the namespace: each of them forgets it only on a
    // retry of its own.
    let mut siblings: Vec<WorkloadKey> = Vec::new();
    if source == Some(TargetSource::Namespace) || recorded_source == Some(TargetSource::Namespace) {
        for other in resource::list_workloads(client, Some(&ctx.namespace)).await? {
            if other.key == view.key {
                continue;
            }
            let Some(s) = WorkloadStatus::of(&other) else {
                continue;
            };
            if s.source == Some(TargetSource::Namespace)
                && (s.phase == WorkloadPhase::Failed || !s.failed_targets.is_empty())
            {
                siblings.push(other.key);
            }
        }
    }
    annotate(ctx, resource, &[(RETRY_ANNOTATION, Some(&asked_at))]).await?;
    println!("{resource}: retry requested ({RETRY_ANNOTATION}={asked_at})");
    for key in &siblings {
        let r = key_ref(key);
        annotate(ctx, &r, &[(RETRY_ANNOTATION, Some(&asked_at))]).await?;
        println!(
            "{r}: retry requested too (a failure there under the Namespace annotation blocks the same target in {resource})"
        );
    }
    if siblings.is_empty() {
        return Ok(ExitStatus::Ok);
    }
    // Once every sibling forgot its failure, the asked workload plans again with a clean slate.
    let started = Instant::now();
    loop {
        let mut pending = Vec::new();
        for key in &siblings {
            let w = resource::get_workload(client, &ctx.namespace, &key_ref(key), "retry").await?;
            let taken = WorkloadStatus::of(&w.view)
                .is_some_and(|s| s.retry.as_deref() == Some(asked_at.as_str()));
            if !taken {
                pending.push(key_ref(key).to_string());
            }
        }
        if pending.is_empty() {
            break;
        }
        if started.elapsed() >= timeout {
            eprintln!(
                "Warning: the controller has not taken up the retry of {} within {}; is it running? Run kubectl inplace retry {resource} again once it is",
                pending.join(", "),
                render::human_duration(timeout)
            );
            return Ok(ExitStatus::Ok);
        }
        tokio::time::sleep(POLL).await;
    }
    let mut again = retry_value();
    while again == asked_at {
        tokio::time::sleep(Duration::from_millis(200)).await;
        again = retry_value();
    }
    annotate(ctx, resource, &[(RETRY_ANNOTATION, Some(&again))]).await?;
    Ok(ExitStatus::Ok)
}

fn key_ref(key: &WorkloadKey) -> ResourceRef {
    ResourceRef {
        kind: ResourceKind::Workload(key.kind),
        name: key.name.clone(),
    }
}

/// The cluster as `set` checks against it: the Namespace and the policies, read once.
struct Snapshot {
    namespace: Option<Arc<Namespace>>,
    policies: Vec<InPlaceUpgradePolicy>,
}

impl ClusterView for Snapshot {
    fn synced(&self) -> bool {
        true
    }
    fn namespace(&self, name: &str) -> Option<Arc<Namespace>> {
        self.namespace
            .clone()
            .filter(|n| n.metadata.name.as_deref() == Some(name))
    }
    fn replica_set(&self, _: &str, _: &str) -> Option<Arc<ReplicaSet>> {
        None
    }
    fn workload(&self, _: &WorkloadKey) -> Option<WorkloadView> {
        None
    }
    fn workloads_in(&self, _: &str) -> Vec<WorkloadView> {
        Vec::new()
    }
    fn policies(&self) -> Vec<InPlaceUpgradePolicy> {
        self.policies.clone()
    }
    fn controller_alive(&self) -> bool {
        true
    }
}

/// An object read from the API server as the webhook decodes it (metadata, the spec raw).
fn as_workload_object(object: &DynamicObject) -> Result<WorkloadObject, KubectlError> {
    serde_json::to_string(object)
        .and_then(|json| serde_json::from_str(&json))
        .map_err(|e| {
            KubectlError::Unavailable(format!(
                "cannot read {} as a workload: {e}",
                object.name_any()
            ))
        })
}

async fn set(ctx: &Ctx, resource: &ResourceRef, value: &str) -> Result<ExitStatus, KubectlError> {
    let client = &ctx.client;
    let object = resource::get_object(client, &ctx.namespace, resource).await?;
    let ns_name = match resource.kind {
        ResourceKind::Namespace => resource.name.clone(),
        ResourceKind::Workload(_) => ctx.namespace.clone(),
    };
    let namespace = match resource.kind {
        ResourceKind::Namespace => serde_json::to_value(&object)
            .and_then(serde_json::from_value::<Namespace>)
            .ok(),
        ResourceKind::Workload(_) => resource::namespace(client, &ns_name).await,
    }
    .or_else(|| {
        // Unreadable Namespace: its name label is all the policies' selectors can go by.
        serde_json::from_value(json!({"metadata": {"name": ns_name, "labels": {"kubernetes.io/metadata.name": ns_name}}})).ok()
    });
    let policies = match policies(client).await {
        Ok(p) => p,
        Err(KubectlError::Forbidden(why)) => {
            eprintln!(
                "Warning: cannot read InPlaceUpgradePolicies ({why}); only the annotation itself was checked"
            );
            Vec::new()
        }
        Err(e) => return Err(e),
    };
    let snapshot = Snapshot {
        namespace: namespace.map(Arc::new),
        policies,
    };
    let mut changed = object.clone();
    changed
        .annotations_mut()
        .insert(TARGETS_ANNOTATION.into(), value.into());
    let settings = Settings {
        controller_namespace: ctx.global.controller_namespace.clone(),
    };
    // The webhook's own view of an UPDATE: the old and the new object as it decodes them.
    let (changed, object) = (as_workload_object(&changed)?, as_workload_object(&object)?);
    let verdict = check_workload_or_namespace(
        resource.kind.kind(),
        &changed,
        Some(&object),
        Some(&ns_name),
        &snapshot,
        &settings,
    );
    if let Some(denied) = verdict.denied {
        // The same message the webhook denies with; a malformed value is a usage error.
        return Err(if annotation::parse(value).is_err() {
            KubectlError::Usage(denied)
        } else {
            KubectlError::Refused(denied)
        });
    }
    for w in &verdict.warnings {
        eprintln!("Warning: {w}");
    }
    annotate(ctx, resource, &[(TARGETS_ANNOTATION, Some(value))]).await?;
    println!("{resource}: {TARGETS_ANNOTATION}={value}");
    Ok(ExitStatus::Ok)
}

/// The previous image of each container that upgraded pods agree on, or why not.
pub(super) fn previous_images(pods: &[Pod]) -> Result<Vec<(String, String)>, String> {
    use crate::state::Phase;
    let mut seen: BTreeMap<String, BTreeMap<String, BTreeSet<String>>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    for pod in pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
    {
        let record = match PodUpgradeState::from_pod(pod) {
            Ok(Some(r)) => r,
            Ok(None) => continue,
            Err(e) => return Err(format!("pod {}: {e}", pod.name_any())),
        };
        if !matches!(record.phase, Phase::Succeeded | Phase::Patched) {
            continue; // rolled back, failed or superseded: not on an upgraded image
        }
        for c in &record.containers {
            if !order.contains(&c.name) {
                order.push(c.name.clone());
            }
            seen.entry(c.name.clone())
                .or_default()
                .entry(c.previous_image.clone())
                .or_default()
                .insert(pod.name_any());
        }
    }
    if order.is_empty() {
        return Err(format!(
            "no pod has a recorded in-place upgrade ({STATE_ANNOTATION} in phase Succeeded or Patched): nothing to roll back"
        ));
    }
    let mut out = Vec::new();
    for container in order {
        let images = &seen[&container];
        if images.len() > 1 {
            let which: Vec<String> = images
                .iter()
                .map(|(image, pods)| {
                    format!(
                        "{image} (pods {})",
                        pods.iter().cloned().collect::<Vec<_>>().join(", ")
                    )
                })
                .collect();
            return Err(format!(
                "the upgraded pods disagree about the previous image of container {container:?}: {}; set the target yourself with kubectl inplace set",
                which.join(" vs ")
            ));
        }
        if let Some(image) = images.keys().next() {
            out.push((container, image.clone()));
        }
    }
    Ok(out)
}

async fn rollback(ctx: &Ctx, resource: &ResourceRef) -> Result<ExitStatus, KubectlError> {
    let Workload { view, .. } =
        resource::get_workload(&ctx.client, &ctx.namespace, resource, "rollback").await?;
    let pods = resource::pods_of(&ctx.client, &view).await?;
    let previous = previous_images(&pods)
        .map_err(|why| KubectlError::Refused(format!("{resource}: {why}")))?;
    let value = previous
        .iter()
        .map(|(c, i)| format!("{c}={i}"))
        .collect::<Vec<_>>()
        .join(",");
    println!("{resource}: rolling back in place to the recorded previous images");
    set(ctx, resource, &value).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, phase: &str, previous: &[(&str, &str)]) -> Pod {
        let containers: Vec<serde_json::Value> = previous
            .iter()
            .enumerate()
            .map(|(i, (c, image))| {
                json!({"name": c, "kind": "container", "index": i, "previousImage": image, "targetImage": "new:2"})
            })
            .collect();
        let state = json!({"version": 1, "phase": phase, "patchedAt": "2026-01-01T00:00:00Z", "containers": containers});
        serde_json::from_value(json!({"metadata": {"name": name, "annotations": {STATE_ANNOTATION: state.to_string()}}}))
            .expect("pod")
    }

    /// A namespace `shop` with a policy, a Deployment `web` of three Ready pods running
    /// `app=nginx:1`, and one sibling workload's status record.
    struct Shop {
        workload: WorkloadView,
        namespace: Namespace,
        policies: Vec<InPlaceUpgradePolicy>,
        siblings: Vec<WorkloadStatus>,
        pods: Vec<Pod>,
    }

    impl Shop {
        fn new(
            workload_annotations: serde_json::Value,
            namespace_annotations: serde_json::Value,
        ) -> Self {
            let deployment: k8s_openapi::api::apps::v1::Deployment =
                serde_json::from_value(json!({
                    "metadata": {"name": "web", "namespace": "shop", "generation": 1,
                                 "annotations": workload_annotations},
                    "spec": {"replicas": 3, "selector": {}, "template": {}},
                    "status": {"observedGeneration": 1, "replicas": 3, "updatedReplicas": 3},
                }))
                .expect("deployment");
            let running = |name: &str| -> Pod {
                serde_json::from_value(json!({
                    "metadata": {"name": name, "namespace": "shop"},
                    "spec": {"containers": [{"name": "app", "image": "nginx:1"}]},
                    "status": {"conditions": [{"type": "Ready", "status": "True"}],
                               "containerStatuses": [{"name": "app", "image": "nginx:1", "imageID": "",
                                   "containerID": format!("containerd://{name}"), "ready": true,
                                   "restartCount": 0, "state": {"running": {}}}]},
                }))
                .expect("pod")
            };
            Shop {
                workload: WorkloadView::from_deployment(&deployment),
                namespace: serde_json::from_value(json!({"metadata": {"name": "shop",
                    "labels": {"kubernetes.io/metadata.name": "shop"},
                    "annotations": namespace_annotations}}))
                .expect("namespace"),
                policies: vec![policy("mesh", json!({"namespaceSelector": {}}))],
                siblings: Vec::new(),
                pods: vec![running("web-1"), running("web-2"), running("web-3")],
            }
        }

        fn plan(&self, from_image: bool) -> PlanReport {
            let cluster = Cluster {
                workload: &self.workload,
                namespace: &self.namespace,
                policies: &self.policies,
                siblings: self.siblings.clone(),
                pods: &self.pods,
                pdbs: &[],
                slices: &[],
            };
            let resource: ResourceRef = "deploy/web".parse().expect("resource");
            let now = "2026-01-02T00:00:00Z".parse().expect("time");
            plan_report(
                &cluster,
                &resource,
                from_image,
                "inplace-upgrade-system",
                now,
            )
            .expect("a report")
        }
    }

    fn policy(name: &str, spec: serde_json::Value) -> InPlaceUpgradePolicy {
        serde_json::from_value(json!({"apiVersion": "inplace-upgrade.io/v1alpha1",
            "kind": "InPlaceUpgradePolicy", "metadata": {"name": name}, "spec": spec}))
        .expect("policy")
    }

    fn nexts(report: &PlanReport) -> Vec<&str> {
        report.pods.iter().map(|p| p.next.as_str()).collect()
    }

    #[test]
    fn plan_reports_what_the_controller_would_do() {
        let shop = Shop::new(json!({TARGETS_ANNOTATION: "app=nginx:2"}), json!({}));
        let report = shop.plan(false);
        assert_eq!(report.verdict, "Progressing");
        assert!(report.blockers.is_empty(), "{:?}", report.blockers);
        assert_eq!(report.source, "workload annotation");
        assert_eq!(
            nexts(&report),
            ["upgrade now", "waits for its turn", "waits for its turn"]
        );
    }

    /// Before: `plan` read the workload's own failure memory only and said "upgrade now" for
    /// a target the controller held back because it failed in another workload.
    #[test]
    fn plan_honours_the_namespace_wide_failure_memory() {
        let mut shop = Shop::new(json!({}), json!({TARGETS_ANNOTATION: "app=nginx:2"}));
        shop.siblings = vec![WorkloadStatus {
            phase: WorkloadPhase::Failed,
            source: Some(TargetSource::Namespace),
            failed_targets: vec![crate::plan::FailedTarget {
                container: "app".into(),
                image: "docker.io/library/nginx:2".into(),
                message: None,
            }],
            ..WorkloadStatus::default()
        }];
        let report = shop.plan(false);
        assert_eq!(report.source, "namespace annotation");
        assert_eq!(report.verdict, "Failed");
        assert!(!nexts(&report).contains(&"upgrade now"), "{report:?}");
        assert!(
            report.blockers.iter().any(|b| b.contains("failed before")),
            "{:?}",
            report.blockers
        );
    }

    /// The Istio revision guard, as the controller applies it: a pod that Istio's revision
    /// `default` injected, in a namespace that now asks for `canary`, is a blocker with the
    /// reason; the others are planned; alone, it blocks the workload.
    #[test]
    fn plan_names_pods_the_istio_revision_guard_holds() {
        let mut shop = Shop::new(json!({TARGETS_ANNOTATION: "app=nginx:2"}), json!({}));
        shop.namespace
            .labels_mut()
            .insert("istio.io/rev".into(), "canary".into());
        shop.pods[0].annotations_mut().insert(
            "sidecar.istio.io/status".into(),
            r#"{"containers":["app"],"revision":"default"}"#.into(),
        );
        let report = shop.plan(false);
        assert_eq!(report.verdict, "Progressing");
        let held = "blocked: IstioRevisionMismatch: app was injected by Istio revision \"default\" but the Namespace label istio.io/rev asks for \"canary\": an image-only change keeps the old revision's proxy configuration, so re-inject the pod (e.g. kubectl rollout restart) or set istioRevisionGuard: false on the policy";
        let web1 = report
            .pods
            .iter()
            .find(|p| p.name == "web-1")
            .expect("web-1");
        assert_eq!(web1.next, held);
        assert!(nexts(&report).contains(&"upgrade now"), "{report:?}");

        shop.pods.truncate(1);
        let report = shop.plan(false);
        assert_eq!(report.verdict, "Blocked");
        assert_eq!(
            report.blockers,
            [format!(
                "pod web-1: {}",
                held.trim_start_matches("blocked: ")
            )]
        );
    }

    /// Before: a broken policy paused the workload in the controller, and `plan` still said
    /// "upgrade now" (verdict Progressing).
    #[test]
    fn plan_stops_on_a_broken_policy_as_the_controller_does() {
        let mut shop = Shop::new(json!({TARGETS_ANNOTATION: "app=nginx:2"}), json!({}));
        shop.policies.push(policy(
            "broken",
            json!({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}),
        ));
        let report = shop.plan(false);
        assert_eq!(report.verdict, "Blocked");
        assert_eq!(nexts(&report), ["blocked", "blocked", "blocked"]);
        assert!(
            report.blockers.iter().any(|b| b.contains("broken")
                && b.ends_with("nothing is upgraded until that policy is fixed")),
            "{:?}",
            report.blockers
        );
    }

    /// Before: without a policy `plan` planned under its own copy of the defaults and said
    /// "upgrade now" for pods the controller never touches.
    #[test]
    fn plan_starts_nothing_without_a_policy_but_shows_the_changes() {
        let mut shop = Shop::new(json!({TARGETS_ANNOTATION: "app=nginx:2"}), json!({}));
        shop.policies.clear();
        let report = shop.plan(true);
        assert_eq!(report.verdict, "NoPolicy");
        assert_eq!(report.source, "--image");
        assert!(report.policy.is_none());
        assert_eq!(nexts(&report), ["blocked", "blocked", "blocked"]);
        assert!(
            report
                .pods
                .iter()
                .all(|p| p.changes.len() == 1 && p.changes[0].target == "nginx:2")
        );
    }

    /// Before: `plan` named the workload's own rollout as a blocker and still said "upgrade
    /// now"; the controller holds new pods back until it is done.
    #[test]
    fn plan_holds_new_pods_while_the_workloads_own_rollout_runs() {
        let mut shop = Shop::new(json!({TARGETS_ANNOTATION: "app=nginx:2"}), json!({}));
        shop.workload.settled = false;
        let report = shop.plan(false);
        assert_eq!(report.verdict, "Blocked");
        assert_eq!(nexts(&report), ["blocked", "blocked", "blocked"]);
        assert_eq!(
            report.blockers,
            ["waiting for the Deployment's own rollout to finish"]
        );
    }

    #[test]
    fn rollback_needs_one_recorded_previous_image_per_container() {
        let agree = [
            pod(
                "a",
                "Succeeded",
                &[("istio-proxy", "proxy:1"), ("app", "app:1")],
            ),
            pod("b", "Patched", &[("istio-proxy", "proxy:1")]),
            pod("c", "RolledBack", &[("istio-proxy", "proxy:0")]),
        ];
        assert_eq!(
            previous_images(&agree),
            Ok(vec![
                ("istio-proxy".into(), "proxy:1".into()),
                ("app".into(), "app:1".into())
            ])
        );
        let disagree = [
            pod("a", "Succeeded", &[("istio-proxy", "proxy:1")]),
            pod("b", "Succeeded", &[("istio-proxy", "proxy:0")]),
        ];
        assert_eq!(
            previous_images(&disagree).expect_err("disagree"),
            "the upgraded pods disagree about the previous image of container \"istio-proxy\": proxy:0 (pods b) vs proxy:1 (pods a); set the target yourself with kubectl inplace set"
        );
        let nothing = [pod("c", "RolledBack", &[("istio-proxy", "proxy:0")])];
        assert!(
            previous_images(&nothing)
                .expect_err("nothing")
                .starts_with("no pod has a recorded in-place upgrade")
        );
        assert!(previous_images(&[]).is_err());
    }
}
