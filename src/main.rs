//! The `inplace-upgrade` binary. Subcommands live in `cli.rs`; each is a thin edge over the
//! library.

mod cli;
#[cfg(feature = "demo")]
mod demo;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Installed as `kubectl-inplace` (a symlink or a copy on PATH), it is the kubectl plugin.
    let invoked_as = std::env::args_os()
        .next()
        .map(std::path::PathBuf::from)
        .and_then(|p| p.file_stem().map(|s| s.to_os_string()));
    if invoked_as.as_deref() == Some(std::ffi::OsStr::new(inplace_upgrade::kubectl::PLUGIN_NAME)) {
        return ExitCode::from(inplace_upgrade::kubectl::main(std::env::args_os()));
    }
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
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
