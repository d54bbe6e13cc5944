//! `kubectl inplace`: the binary run as `kubectl-inplace` (a kubectl plugin). It plans, shows
//! and steers in-place upgrades through the annotations the controller honours, with
//! kubectl's conventions: `--kubeconfig`, `--context`, `-n`, `-A`, `-o json|yaml|wide`,
//! `TYPE/NAME` arguments, errors as one `error: …` line and documented exit codes
//! ([`ExitStatus`], docs/kubectl.md).

mod commands;
pub mod render;
pub mod resource;

/// The dry run from what was read, for the reconciler's tests to hold the controller to.
#[cfg(test)]
pub(crate) use commands::{Cluster, plan_report};

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use resource::ResourceRef;

/// The name the binary answers to as a kubectl plugin.
pub const PLUGIN_NAME: &str = "kubectl-inplace";

/// Exit codes (docs/kubectl.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitStatus {
    /// Done; `status --watch`: every rollout completed.
    Ok = 0,
    /// `status --watch`: a rollout failed (phase Failed or Invalid).
    RolloutFailed = 1,
    /// Bad flag, argument, `TYPE/NAME` or annotation value.
    Usage = 2,
    /// The workload, Namespace, kubeconfig or context does not exist.
    NotFound = 3,
    /// The API server refused: missing RBAC rights, or bad credentials.
    Forbidden = 4,
    /// Refused for what the cluster shows: `plan` found blockers, `set` is denied by the
    /// governing policy, `rollback` has no single recorded previous image.
    Refused = 5,
    /// `--timeout` ran out first.
    Timeout = 6,
    /// The API server could not be reached or answered unexpectedly.
    Unavailable = 7,
}

/// Every failure, as one line for the user; the variant decides the exit code.
#[derive(Debug, thiserror::Error)]
pub enum KubectlError {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    Refused(String),
    #[error("{0}")]
    RolloutFailed(String),
    #[error("{0}")]
    Timeout(String),
    #[error("{0}")]
    Unavailable(String),
}

impl KubectlError {
    pub fn exit_status(&self) -> ExitStatus {
        match self {
            KubectlError::Usage(_) => ExitStatus::Usage,
            KubectlError::NotFound(_) => ExitStatus::NotFound,
            KubectlError::Forbidden(_) => ExitStatus::Forbidden,
            KubectlError::Refused(_) => ExitStatus::Refused,
            KubectlError::RolloutFailed(_) => ExitStatus::RolloutFailed,
            KubectlError::Timeout(_) => ExitStatus::Timeout,
            KubectlError::Unavailable(_) => ExitStatus::Unavailable,
        }
    }
}

#[derive(Debug, Parser)]
#[command(
    name = "kubectl inplace",
    bin_name = "kubectl inplace",
    version,
    about = "Plan, watch and steer in-place container image upgrades (inplace-upgrade)"
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// Path to the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// The namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Every namespace (`status` only).
    #[arg(short = 'A', long = "all-namespaces", global = true)]
    pub all_namespaces: bool,
    /// Output format: json, yaml, or wide (more table columns).
    #[arg(short = 'o', long, global = true, value_enum)]
    pub output: Option<Output>,
    /// The namespace the controller runs in (policies with an empty namespaceSelector never
    /// reach it), as the webhook is configured.
    #[arg(
        long,
        global = true,
        env = "INPLACE_UPGRADE_CONTROLLER_NAMESPACE",
        default_value = "inplace-upgrade-system"
    )]
    pub controller_namespace: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Json,
    Yaml,
    Wide,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Dry run: which pods would change, to which images, in which order and budget, under
    /// which policy, and what would block it. Changes nothing.
    Plan(PlanArgs),
    /// A table of workloads with in-place upgrades: phase, upgraded/total, current pod, age.
    Status(StatusArgs),
    /// Stop before the next pod (annotation inplace-upgrade.io/paused=true).
    Pause(TargetArg),
    /// Remove the pause annotation.
    Resume(TargetArg),
    /// Try failed targets again (annotation inplace-upgrade.io/retry=<now>).
    Retry(RetryArgs),
    /// Move the upgraded pods back, in place, to the previous images their records name.
    Rollback(TargetArg),
    /// Set the targets (annotation inplace-upgrade), checked first as the webhook checks them.
    Set(SetArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The workload, e.g. deploy/hello.
    #[arg(value_name = "TYPE/NAME", value_parser = parse_resource)]
    pub resource: ResourceRef,
    /// Plan for these targets instead of the annotations' (repeatable, or comma-separated):
    /// `--image istio-proxy=docker.io/istio/proxyv2:1.24.2`.
    #[arg(long = "image", value_name = "CONTAINER=IMAGE")]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// One workload (default: every workload of the namespace, or of all with -A).
    #[arg(value_name = "TYPE/NAME", value_parser = parse_resource)]
    pub resource: Option<ResourceRef>,
    /// Follow progress until every rollout completes (exit 0) or one fails (exit 1).
    #[arg(short = 'w', long)]
    pub watch: bool,
    /// With --watch: give up after this long (e.g. 90s, 5m, 1h; 0: never), exit 6.
    #[arg(long, value_parser = parse_duration, default_value = "0")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct TargetArg {
    /// A workload (or, for pause and resume, a Namespace: ns/NAME).
    #[arg(value_name = "TYPE/NAME", value_parser = parse_resource)]
    pub resource: ResourceRef,
}

#[derive(Debug, Args)]
pub struct RetryArgs {
    /// The workload, e.g. deploy/hello.
    #[arg(value_name = "TYPE/NAME", value_parser = parse_resource)]
    pub resource: ResourceRef,
    /// How long to wait for the controller to take up a Namespace-wide retry before giving
    /// the workloads still blocked by another's failure a second nudge.
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    pub timeout: Duration,
}

#[derive(Debug, Args)]
pub struct SetArgs {
    /// A workload or Namespace, e.g. deploy/hello or ns/shop.
    #[arg(value_name = "TYPE/NAME", value_parser = parse_resource)]
    pub resource: ResourceRef,
    /// `CONTAINER=IMAGE[,CONTAINER=IMAGE…]` (IMAGE may be `:tag` or `@sha256:…` to keep the
    /// repository).
    #[arg(value_name = "CONTAINER=IMAGE[,…]")]
    pub targets: String,
}

fn parse_resource(s: &str) -> Result<ResourceRef, String> {
    s.parse()
}

/// `90s`, `5m`, `1h`, `1h30m`, a bare number of seconds, or `0`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("{s:?} is not a duration: use e.g. 90s, 5m, 1h30m or 0");
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    let mut total = 0u64;
    let mut number = String::new();
    for c in s.chars() {
        if c.is_ascii_digit() {
            number.push(c);
            continue;
        }
        let n: u64 = number.parse().map_err(|_| bad())?;
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        total = total.saturating_add(n.saturating_mul(unit));
        number.clear();
    }
    if !number.is_empty() || s.is_empty() {
        return Err(bad());
    }
    Ok(Duration::from_secs(total))
}

/// Runs `kubectl inplace` with these arguments (the first is the program name) and returns
/// the exit code. Output goes to stdout; every error is one `error: …` line on stderr.
pub fn main(args: impl IntoIterator<Item = OsString>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(
                e.kind(),
                ErrorKind::DisplayHelp
                    | ErrorKind::DisplayVersion
                    | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                let _ = e.print();
                return if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                    ExitStatus::Usage as u8
                } else {
                    ExitStatus::Ok as u8
                };
            }
            // clap's first line names the problem; its usage block and tips are left out so
            // an error stays one line.
            let rendered = e.to_string();
            let first = rendered
                .lines()
                .next()
                .unwrap_or("invalid arguments")
                .trim_start_matches("error: ");
            eprintln!("error: {first}; see 'kubectl inplace --help'");
            return ExitStatus::Usage as u8;
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitStatus::Unavailable as u8;
        }
    };
    match runtime.block_on(commands::run(cli)) {
        Ok(status) => status as u8,
        Err(e) => {
            eprintln!("error: {}", resource::one_line(&e.to_string()));
            e.exit_status() as u8
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn kubectl_flags_parse_anywhere() {
        let cli = Cli::try_parse_from([
            "kubectl-inplace",
            "status",
            "-A",
            "-o",
            "wide",
            "--context",
            "kind",
            "-w",
            "--timeout",
            "5m",
        ])
        .expect("parses");
        assert!(cli.global.all_namespaces);
        assert_eq!(cli.global.output, Some(Output::Wide));
        assert_eq!(cli.global.context.as_deref(), Some("kind"));
        assert!(
            matches!(cli.command, Command::Status(ref s) if s.watch && s.timeout == Duration::from_secs(300))
        );
        let cli = Cli::try_parse_from([
            "kubectl-inplace",
            "-n",
            "shop",
            "plan",
            "deploy/cart",
            "--image",
            "istio-proxy=proxyv2:2",
            "--image",
            "app=:v2",
        ])
        .expect("parses");
        assert_eq!(cli.global.namespace.as_deref(), Some("shop"));
        assert!(matches!(cli.command, Command::Plan(ref p) if p.images.len() == 2));
        assert!(Cli::try_parse_from(["kubectl-inplace", "plan", "hello"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-inplace", "status", "-o", "table"]).is_err());
        assert!(Cli::try_parse_from(["kubectl-inplace", "set", "deploy/x"]).is_err());
    }

    #[test]
    fn durations_read_like_kubectl_timeouts() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("45"), Ok(Duration::from_secs(45)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "m", "5x", "1h30", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn usage_errors_are_one_line_with_exit_code_2() {
        assert_eq!(
            main(["kubectl-inplace", "plan", "pod/x"].map(OsString::from)),
            ExitStatus::Usage as u8
        );
        assert_eq!(
            main(["kubectl-inplace", "frobnicate"].map(OsString::from)),
            ExitStatus::Usage as u8
        );
        assert_eq!(
            main(["kubectl-inplace", "--help"].map(OsString::from)),
            ExitStatus::Ok as u8
        );
    }
}
