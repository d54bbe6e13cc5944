//! The `inplace-upgrade` binary. Subcommands live in `cli.rs`; each is a thin edge over the
//! library.

mod cli;
#[cfg(feature = "demo")]
mod demo;
mod telemetry;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    #[cfg(feature = "demo")]
    let default_level = if matches!(cli.command, cli::Command::Demo(_)) {
        "warn"
    } else {
        "info"
    };
    #[cfg(not(feature = "demo"))]
    let default_level = "info";
    telemetry::init(&cli.log, default_level)?;
    cli.command.run()
}
