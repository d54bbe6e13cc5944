//! tracing setup. Logs go to stderr so that subcommands printing data (`crd`) keep stdout clean.

use anyhow::Context;
use tracing_subscriber::EnvFilter;

use crate::cli::{LogArgs, LogFormat};

pub fn init(args: &LogArgs, default_level: &str) -> anyhow::Result<()> {
    let level = args.log_level.as_deref().unwrap_or(default_level);
    let filter =
        EnvFilter::try_new(level).with_context(|| format!("invalid --log-level {level:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match args.log_format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    result.map_err(|e| anyhow::anyhow!("cannot install the tracing subscriber: {e}"))
}
