//! The `inplace-upgrade` binary. Subcommands live in `cli.rs`; each is a thin edge over the
//! library.

mod cli;
#[cfg(feature = "demo")]
mod demo;
mod telemetry;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    telemetry::init(&cli.log)?;
    cli.command.run()
}
