//! Command-line interface: global logging flags and one variant per working subcommand.
//!
//! Every flag has an `env =` fallback (`INPLACE_UPGRADE_*`) so the same binary is configured
//! by flags on a laptop and by environment in a Deployment. A new subcommand is a new
//! [`Command`] variant with its own flattened `Args` struct and a `run` arm.

use std::io::Write;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "inplace-upgrade",
    version,
    about = "Upgrade container images of running pods in place"
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, Args)]
pub struct LogArgs {
    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "INPLACE_UPGRADE_LOG_FORMAT",
        value_enum,
        default_value_t = LogFormat::Plain
    )]
    pub log_format: LogFormat,
    /// Log filter in `tracing` EnvFilter syntax, e.g. `info` or `inplace_upgrade=debug,kube=warn`.
    #[arg(
        long,
        global = true,
        env = "INPLACE_UPGRADE_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print the InPlaceUpgradePolicy CustomResourceDefinition as YAML (what deploy/crds holds).
    Crd,
}

impl Command {
    pub fn run(self) -> anyhow::Result<()> {
        match self {
            Command::Crd => {
                let yaml = inplace_upgrade::policy::crd_yaml()?;
                std::io::stdout().lock().write_all(yaml.as_bytes())?;
                Ok(())
            }
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
    fn log_flags_are_global() {
        let cli = Cli::try_parse_from(["inplace-upgrade", "crd", "--log-format", "json"])
            .expect("parses");
        assert_eq!(cli.log.log_format, LogFormat::Json);
        assert!(matches!(cli.command, Command::Crd));
        assert!(Cli::try_parse_from(["inplace-upgrade", "--log-format", "xml", "crd"]).is_err());
        assert!(Cli::try_parse_from(["inplace-upgrade", "controller"]).is_err());
    }
}
