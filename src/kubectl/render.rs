//! Pure output: kubectl-style tables, ages, progress bars, the `plan` report and the lines
//! `status --watch` prints. Nothing here reads the clock or the API.

use std::time::Duration;

use serde::Serialize;

use crate::status::{WorkloadPhase, WorkloadStatus};

/// Columns separated by three spaces and left-aligned, headers in capitals (kubectl's
/// printer); the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let pad = widths.get(i).copied().unwrap_or(0);
                line.push_str(&format!("{cell:<pad$}   "));
            } else {
                line.push_str(cell);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// kubectl's `HumanDuration`: `45s`, `3m12s`, `17m`, `5h3m`, `30h`, `3d4h`, `20d`, `2y10d`.
pub fn human_duration(d: Duration) -> String {
    let secs = d.as_secs();
    let (mins, hours) = (secs / 60, secs / 3600);
    if secs < 120 {
        format!("{secs}s")
    } else if mins < 10 {
        match secs % 60 {
            0 => format!("{mins}m"),
            s => format!("{mins}m{s}s"),
        }
    } else if mins < 180 {
        format!("{mins}m")
    } else if hours < 8 {
        match mins % 60 {
            0 => format!("{hours}h"),
            m => format!("{hours}h{m}m"),
        }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        match hours % 24 {
            0 => format!("{}d", hours / 24),
            h => format!("{}d{h}h", hours / 24),
        }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let days = hours / 24;
        match days % 365 {
            0 => format!("{}y", days / 365),
            d => format!("{}y{d}d", days / 365),
        }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// `[########............] 2/5`, 20 cells wide.
pub fn progress_bar(done: u32, total: u32) -> String {
    const WIDTH: u64 = 20;
    let filled = if total == 0 {
        WIDTH
    } else {
        (u64::from(done.min(total)) * WIDTH / u64::from(total)).min(WIDTH)
    };
    let filled = usize::try_from(filled).unwrap_or(0);
    let empty = usize::try_from(WIDTH).unwrap_or(0) - filled;
    format!(
        "[{}{}] {done}/{total}",
        "#".repeat(filled),
        ".".repeat(empty)
    )
}

/// Phase shown when the controller has not reported on the current target yet.
pub const PENDING: &str = "Pending";
/// Phase shown for a named workload without any target.
pub const NO_TARGET: &str = "NoTarget";

/// One workload in `status`, also its `-o json|yaml` item.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusRow {
    pub namespace: String,
    /// `deployment/hello`.
    pub workload: String,
    /// The effective target now (workload over Namespace annotation), as written.
    pub target: String,
    /// The controller's record; `None` until it reported on `target`.
    pub status: Option<WorkloadStatus>,
    /// Seconds since the phase last changed (`None` when unknown).
    #[serde(skip)]
    pub age: Option<Duration>,
}

impl StatusRow {
    pub fn phase(&self) -> &str {
        match &self.status {
            Some(s) => s.phase.as_str(),
            None if self.target.is_empty() => NO_TARGET,
            None => PENDING,
        }
    }

    /// Whether the rollout reached an end: `Some(true)` completed, `Some(false)` failed.
    pub fn outcome(&self) -> Option<bool> {
        match self.status.as_ref()?.phase {
            WorkloadPhase::Completed => Some(true),
            WorkloadPhase::Failed | WorkloadPhase::Invalid => Some(false),
            _ => None,
        }
    }

    fn upgraded(&self) -> String {
        self.status
            .as_ref()
            .map_or("-".into(), |s| format!("{}/{}", s.upgraded, s.total))
    }

    fn current(&self) -> String {
        match self.status.as_ref().map(|s| s.current_pods.join(",")) {
            Some(c) if !c.is_empty() => c,
            _ => "-".into(),
        }
    }

    fn message(&self) -> String {
        match &self.status {
            Some(s) => s.message.clone().unwrap_or_default(),
            None => "the controller has not reported on this target yet".into(),
        }
    }
}

/// The `status` table; `all_namespaces` adds NAMESPACE, `wide` adds TARGET, POLICY, MESSAGE.
pub fn status_table(rows: &[StatusRow], all_namespaces: bool, wide: bool) -> String {
    let mut headers = Vec::new();
    if all_namespaces {
        headers.push("NAMESPACE");
    }
    headers.extend(["NAME", "PHASE", "UPGRADED", "CURRENT", "AGE"]);
    if wide {
        headers.extend(["TARGET", "POLICY", "MESSAGE"]);
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let mut cells = Vec::new();
            if all_namespaces {
                cells.push(r.namespace.clone());
            }
            cells.extend([
                r.workload.clone(),
                r.phase().to_string(),
                r.upgraded(),
                r.current(),
                r.age.map_or("<unknown>".into(), human_duration),
            ]);
            if wide {
                cells.extend([
                    or_dash(&r.target),
                    or_dash(
                        r.status
                            .as_ref()
                            .and_then(|s| s.policy.as_deref())
                            .unwrap_or_default(),
                    ),
                    r.message(),
                ]);
            }
            cells
        })
        .collect();
    table(&headers, &cells)
}

fn or_dash(s: &str) -> String {
    if s.is_empty() { "-".into() } else { s.into() }
}

/// One `status --watch` line when the output is not a terminal.
pub fn watch_line(row: &StatusRow, all_namespaces: bool) -> String {
    let mut line = String::new();
    if all_namespaces {
        line.push_str(&format!("{} ", row.namespace));
    }
    line.push_str(&format!(
        "{} {} {}",
        row.workload,
        row.phase(),
        row.upgraded()
    ));
    let current = row.current();
    if current != "-" {
        line.push_str(&format!(" current={current}"));
    }
    let message = row.message();
    if !message.is_empty() && row.outcome() != Some(true) {
        line.push_str(&format!(" message={message:?}"));
    }
    line
}

/// One `status --watch` line on a terminal: a progress bar per workload.
pub fn watch_bar(row: &StatusRow, all_namespaces: bool, name_width: usize) -> String {
    let name = if all_namespaces {
        format!("{}/{}", row.namespace, row.workload)
    } else {
        row.workload.clone()
    };
    // No record yet: an empty bar, not a full one for 0/0.
    let bar = row.status.as_ref().map_or_else(
        || format!("[{}] -", ".".repeat(20)),
        |s| progress_bar(s.upgraded, s.total),
    );
    let mut line = format!("{name:<name_width$}  {bar}  {}", row.phase());
    let current = row.current();
    if current != "-" {
        line.push_str(&format!("  {current}"));
    }
    line
}

/// The `plan` dry run, also its `-o json|yaml` form.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PlanReport {
    pub namespace: String,
    pub workload: String,
    /// The targets planned for, as written.
    pub targets: String,
    /// `--image`, `workload annotation`, `namespace annotation`, or empty.
    pub source: String,
    pub policy: Option<PolicySummary>,
    pub desired_replicas: i32,
    pub disruption_budgets: Vec<BudgetSummary>,
    /// Every pod the targets apply to, in the order the controller takes them.
    pub pods: Vec<PodPlan>,
    /// What the controller would report now: `Progressing`, `Completed`, `Blocked`, ….
    pub verdict: String,
    /// Everything that stops pods from being upgraded now; empty when nothing does.
    pub blockers: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicySummary {
    pub name: String,
    /// `maxUnavailable` as written.
    pub max_unavailable: String,
    /// Pods upgraded at once, from `maxUnavailable` and the desired replicas.
    pub pods_at_once: Option<u32>,
    pub on_failure: String,
    pub ready_timeout_seconds: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BudgetSummary {
    pub name: String,
    pub disruptions_allowed: i32,
    pub pods: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodPlan {
    /// Position in the rollout (1 is first); `None` for pods with nothing to change.
    pub order: Option<usize>,
    pub name: String,
    pub ready: bool,
    pub changes: Vec<ContainerChange>,
    /// What happens to the pod next.
    pub next: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerChange {
    pub container: String,
    pub current: String,
    pub target: String,
}

/// The human form of a [`PlanReport`].
pub fn plan_text(r: &PlanReport) -> String {
    let mut out = String::new();
    out.push_str(&format!(
        "Workload:  {} in namespace {}\n",
        r.workload, r.namespace
    ));
    if r.targets.is_empty() {
        out.push_str("Targets:   none\n");
    } else {
        out.push_str(&format!("Targets:   {} (from {})\n", r.targets, r.source));
    }
    match &r.policy {
        Some(p) => {
            out.push_str(&format!(
                "Policy:    {} (onFailure {}, readyTimeoutSeconds {})\n",
                p.name, p.on_failure, p.ready_timeout_seconds
            ));
            let at_once = p
                .pods_at_once
                .map_or("invalid".to_string(), |n| format!("{n} pod(s) at a time"));
            out.push_str(&format!(
                "Budget:    maxUnavailable {} of {} desired replicas: {at_once}\n",
                p.max_unavailable, r.desired_replicas
            ));
        }
        None => out.push_str("Policy:    none\n"),
    }
    for b in &r.disruption_budgets {
        out.push_str(&format!(
            "PDB:       {} allows {} disruption(s) now, selects {} pod(s)\n",
            b.name, b.disruptions_allowed, b.pods
        ));
    }
    out.push_str(&format!("Verdict:   {}\n", r.verdict));
    if !r.pods.is_empty() {
        out.push('\n');
        let mut rows = Vec::new();
        for pod in &r.pods {
            let order = pod.order.map_or("-".into(), |o| o.to_string());
            let ready = if pod.ready { "True" } else { "False" }.to_string();
            if pod.changes.is_empty() {
                rows.push(vec![
                    order.clone(),
                    pod.name.clone(),
                    ready.clone(),
                    "-".into(),
                    "-".into(),
                    "-".into(),
                    pod.next.clone(),
                ]);
            }
            for (i, c) in pod.changes.iter().enumerate() {
                let first = i == 0;
                let keep = |s: &String| if first { s.clone() } else { String::new() };
                rows.push(vec![
                    keep(&order),
                    keep(&pod.name),
                    keep(&ready),
                    c.container.clone(),
                    c.current.clone(),
                    c.target.clone(),
                    keep(&pod.next),
                ]);
            }
        }
        out.push_str(&table(
            &[
                "ORDER",
                "POD",
                "READY",
                "CONTAINER",
                "CURRENT",
                "TARGET",
                "NEXT",
            ],
            &rows,
        ));
    }
    out.push('\n');
    if r.blockers.is_empty() {
        out.push_str("Blockers:  none\n");
    } else {
        out.push_str("Blockers:\n");
        for b in &r.blockers {
            out.push_str(&format!("  - {b}\n"));
        }
    }
    out.push_str("Nothing was changed (dry run).\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_like_kubectl() {
        let cases = [
            (0, "0s"),
            (59, "59s"),
            (119, "119s"),
            (120, "2m"),
            (190, "3m10s"),
            (600, "10m"),
            (179 * 60 + 59, "179m"),
            (3 * 3600 + 120, "3h2m"),
            (5 * 3600, "5h"),
            (47 * 3600, "47h"),
            (3 * 86400 + 4 * 3600, "3d4h"),
            (2 * 86400, "2d"),
            (20 * 86400, "20d"),
            (800 * 86400, "2y70d"),
            (3000 * 86400, "8y"),
        ];
        for (secs, shown) in cases {
            assert_eq!(human_duration(Duration::from_secs(secs)), shown, "{secs}s");
        }
    }

    #[test]
    fn progress_bars_fill_in_proportion() {
        assert_eq!(progress_bar(0, 4), "[....................] 0/4");
        assert_eq!(progress_bar(1, 4), "[#####...............] 1/4");
        assert_eq!(progress_bar(4, 4), "[####################] 4/4");
        assert_eq!(progress_bar(9, 4), "[####################] 9/4");
        assert_eq!(progress_bar(0, 0), "[####################] 0/0");
    }

    fn row(ns: &str, name: &str, status: Option<WorkloadStatus>, age: u64) -> StatusRow {
        StatusRow {
            namespace: ns.into(),
            workload: name.into(),
            target: "istio-proxy=proxyv2:1.24.2".into(),
            status,
            age: Some(Duration::from_secs(age)),
        }
    }

    fn sample_rows() -> Vec<StatusRow> {
        vec![
            row(
                "shop",
                "deployment/cart",
                Some(WorkloadStatus {
                    phase: WorkloadPhase::Progressing,
                    policy: Some("mesh".into()),
                    upgraded: 1,
                    total: 3,
                    current_pods: vec!["cart-7d9-abcde".into()],
                    ..WorkloadStatus::default()
                }),
                75,
            ),
            row(
                "payments",
                "statefulset/ledger",
                Some(WorkloadStatus {
                    phase: WorkloadPhase::Failed,
                    policy: Some("mesh".into()),
                    upgraded: 0,
                    total: 2,
                    message: Some("pod ledger-0: ImagePullBackOff: back-off".into()),
                    ..WorkloadStatus::default()
                }),
                4000,
            ),
            row("shop", "daemonset/agent", None, 5),
        ]
    }

    #[test]
    fn status_tables_are_aligned_like_kubectl_get() {
        let rows = sample_rows();
        assert_eq!(
            status_table(&rows, false, false),
            "\
NAME                 PHASE         UPGRADED   CURRENT          AGE
deployment/cart      Progressing   1/3        cart-7d9-abcde   75s
statefulset/ledger   Failed        0/2        -                66m
daemonset/agent      Pending       -          -                5s
"
        );
        assert_eq!(
            status_table(&rows[..2], true, true),
            "\
NAMESPACE   NAME                 PHASE         UPGRADED   CURRENT          AGE   TARGET                       POLICY   MESSAGE
shop        deployment/cart      Progressing   1/3        cart-7d9-abcde   75s   istio-proxy=proxyv2:1.24.2   mesh
payments    statefulset/ledger   Failed        0/2        -                66m   istio-proxy=proxyv2:1.24.2   mesh     pod ledger-0: ImagePullBackOff: back-off
"
        );
    }

    #[test]
    fn watch_lines_say_phase_progress_and_why() {
        let rows = sample_rows();
        assert_eq!(
            watch_line(&rows[0], false),
            "deployment/cart Progressing 1/3 current=cart-7d9-abcde"
        );
        assert_eq!(
            watch_line(&rows[1], true),
            "payments statefulset/ledger Failed 0/2 message=\"pod ledger-0: ImagePullBackOff: back-off\""
        );
        assert_eq!(rows[0].outcome(), None);
        assert_eq!(rows[1].outcome(), Some(false));
        assert_eq!(
            watch_bar(&rows[0], false, 18),
            "deployment/cart     [######..............] 1/3  Progressing  cart-7d9-abcde"
        );
        assert_eq!(
            watch_bar(&rows[2], true, 20),
            "shop/daemonset/agent  [....................] -  Pending"
        );
    }

    #[test]
    fn plans_list_pods_in_order_with_blockers() {
        let report = PlanReport {
            namespace: "shop".into(),
            workload: "deployment/cart".into(),
            targets: "istio-proxy=proxyv2:2".into(),
            source: "--image".into(),
            policy: Some(PolicySummary {
                name: "mesh".into(),
                max_unavailable: "1".into(),
                pods_at_once: Some(1),
                on_failure: "Rollback".into(),
                ready_timeout_seconds: 300,
            }),
            desired_replicas: 2,
            disruption_budgets: vec![BudgetSummary {
                name: "cart".into(),
                disruptions_allowed: 0,
                pods: 2,
            }],
            pods: vec![
                PodPlan {
                    order: Some(1),
                    name: "cart-a".into(),
                    ready: true,
                    changes: vec![ContainerChange {
                        container: "istio-proxy".into(),
                        current: "proxyv2:1".into(),
                        target: "proxyv2:2".into(),
                    }],
                    next: "blocked".into(),
                },
                PodPlan {
                    order: None,
                    name: "cart-b".into(),
                    ready: true,
                    changes: vec![],
                    next: "already at its targets".into(),
                },
            ],
            verdict: "Blocked".into(),
            blockers: vec!["PodDisruptionBudget cart allows no disruption now".into()],
        };
        assert_eq!(
            plan_text(&report),
            "\
Workload:  deployment/cart in namespace shop
Targets:   istio-proxy=proxyv2:2 (from --image)
Policy:    mesh (onFailure Rollback, readyTimeoutSeconds 300)
Budget:    maxUnavailable 1 of 2 desired replicas: 1 pod(s) at a time
PDB:       cart allows 0 disruption(s) now, selects 2 pod(s)
Verdict:   Blocked

ORDER   POD      READY   CONTAINER     CURRENT     TARGET      NEXT
1       cart-a   True    istio-proxy   proxyv2:1   proxyv2:2   blocked
-       cart-b   True    -             -           -           already at its targets

Blockers:
  - PodDisruptionBudget cart allows no disruption now
Nothing was changed (dry run).
"
        );
    }
}
