//! The `inplace-upgrade` binary. Subcommands live in `cli.rs`; each is a thin edge over the
//! library.

mod cli;
#[cfg(feature = "demo")]
mod demo;
mod telemetry;

use std::process::ExitCode;

use clap::Parser;

// The process-wide allocator, chosen at build time (docs/benchmarks.md, "Allocators"): the
// system's by default; `--features jemalloc` or `--features mimalloc` builds another in.
#[cfg(all(feature = "jemalloc", feature = "mimalloc"))]
compile_error!("features `jemalloc` and `mimalloc` each choose the global allocator: enable one");
#[cfg(feature = "jemalloc")]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;
#[cfg(all(feature = "mimalloc", not(feature = "jemalloc")))]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    keep_large_blocks_mapped();
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

/// glibc raises its mmap threshold each time a large block is freed, so the LIST pages of the
/// initial sync (MiBs of JSON each) end up in the heap and stay counted in RSS after they are
/// freed: most of a synced webhook's and a good part of a synced controller's memory. A fixed
/// threshold (what `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=131072` sets, measured in
/// docs/benchmarks.md) gives every block over 128 KiB a mapping of its own, returned on free.
/// Called first thing, before any thread starts.
fn keep_large_blocks_mapped() {
    #[cfg(all(
        target_os = "linux",
        target_env = "gnu",
        not(any(feature = "jemalloc", feature = "mimalloc"))
    ))]
    // SAFETY: mallopt only changes a malloc parameter; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
    }
}

fn run() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    #[cfg(feature = "demo")]
    let default_level = if matches!(cli.command, cli::Command::Demo(_)) {
        // kube's client logs every 5xx answer at ERROR, and the embedded control plane
        // answers the demo's /readyz polls with 500 until it is up: not the user's concern.
        "warn,kube_client::client::builder=off"
    } else {
        "info"
    };
    #[cfg(not(feature = "demo"))]
    let default_level = "info";
    telemetry::init(&cli.log, default_level)?;
    cli.command.run()
}
