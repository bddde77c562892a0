//! `ringkv`: the server. Parses flags, loads the configuration, sets up
//! logging, serves until SIGTERM/SIGINT or `SHUTDOWN`, and exits 0 after a
//! clean stop (1 if it could not start or could not close its data cleanly).

use clap::Parser;
use tracing_subscriber::EnvFilter;

use ringkv::config::{CliArgs, Config};
use ringkv::server::Server;

fn main() -> std::process::ExitCode {
    let cli = CliArgs::parse();
    let config = match Config::load(&cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ringkv: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.log_level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();

    raise_fd_limit(u64::from(config.maxclients) + RESERVED_FDS);

    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if config.threads > 0 {
        builder.worker_threads(config.threads);
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ringkv: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(config)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("ringkv: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// File descriptors kept for the data directory, logs and peers, on top of
/// one per client (Redis keeps 32 too).
const RESERVED_FDS: u64 = 32;

/// Raises the soft open-files limit toward `wanted` (never past the hard
/// limit), as Redis does for `maxclients`; logs when it cannot.
fn raise_fd_limit(wanted: u64) {
    // SAFETY: getrlimit/setrlimit only read and write the struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= wanted {
            return;
        }
        let target = wanted.min(lim.rlim_max);
        lim.rlim_cur = target;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 || target < wanted {
            tracing::warn!(
                wanted,
                got = target,
                "cannot raise the open-files limit; fewer than maxclients clients may connect"
            );
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = Server::bind(config).await?;
    let handle = server.shutdown_handle();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::spawn(async move {
        tokio::select! {
            _ = sigterm.recv() => tracing::info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        }
        handle.shutdown();
    });
    server.run().await?;
    Ok(())
}
