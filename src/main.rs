//! The `inplace-upgrade` binary. Subcommands live in `cli.rs`; each is a thin edge over the
//! library.

mod cli;
mod telemetry;

use clap::Parser;

fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    telemetry::init(&cli.log)?;
    cli.command.run()
}
