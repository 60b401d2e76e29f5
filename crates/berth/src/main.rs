//! The `berth` binary: `berth serve`, or a CLI client of the HTTP API.

use std::process::ExitCode;

use anyhow::Context as _;
use berth::cli::{Cli, Command};
use berth::config::Config;
use clap::Parser;

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

async fn serve(args: berth::config::ServeArgs) -> anyhow::Result<()> {
    let config = Config::load(&args).context("invalid configuration")?;
    berth::app::serve(config).await?;
    Ok(())
}

/// glibc gives every thread that allocates its own malloc arena, and keeps
/// freed memory in each: an idle server with a few busy moments behind it
/// holds tens of megabytes it does not use. Two arenas are plenty here.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only tunes the allocator; it is called before any
    // other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

fn main() -> ExitCode {
    limit_malloc_arenas();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => {
            init_tracing();
            match serve(*args).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        _ => ExitCode::from(berth::cli::run(cli).await.clamp(0, 255) as u8),
    }
}
