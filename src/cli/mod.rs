//! The command line: `run`, `check`, `rules`, `demo`.

mod demo;
mod runtime;
mod signal;
pub use signal::wait_for_stop_signal;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::sidecar::{ConfigFile, Reloader, Sidecar, Trigger};
use crate::telemetry::init_logging;
use runtime::Runtime;

#[derive(Debug, Parser)]
#[command(
    name = "sloguard",
    version,
    about = "SRE sidecar for AI agents: SLIs, SLOs and guard rails for agent and LLM traffic"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sidecar.
    Run {
        #[arg(long, env = "SLOGUARD_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file; errors name the key path and line.
    Check {
        #[arg(long, env = "SLOGUARD_CONFIG")]
        config: PathBuf,
    },
    /// Print Prometheus SLO rules for the config's SLOs.
    Rules {
        #[arg(long, env = "SLOGUARD_CONFIG")]
        config: PathBuf,
    },
    /// Run against built-in simulated upstreams with synthetic traffic; needs no config or network.
    Demo(demo::DemoArgs),
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match check(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} routes, {} upstreams)",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len(),
                    c.upstreams.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Rules { config } => match Config::load(&config) {
            Ok(c) => {
                print!("{}", crate::slo::rules::rules(&c));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config } => {
            init_logging();
            let (file, config) = match ConfigFile::load(config) {
                Ok(loaded) => loaded,
                Err(e) => {
                    tracing::error!(error = %e, "invalid config");
                    eprintln!("error: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match Runtime::for_sidecar() {
                Ok(runtime) => {
                    tracing::info!(runtime = runtime.name(), "runtime");
                    runtime_then(runtime, || run(config, file))
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Demo(args) => runtime_then(Runtime::WorkStealing, || demo::run(args)),
    }
}

/// Parses and validates, then builds the running state too, so that what only shows when
/// building (an unreadable CA file) is caught by `check` as well.
fn check(path: &std::path::Path) -> Result<Config, String> {
    let config = Config::load(path).map_err(|e| e.to_string())?;
    let telemetry = crate::telemetry::Telemetry::new();
    let shared = crate::proxy::Shared::new(&config, &telemetry, false);
    crate::proxy::Snapshot::build(config.clone(), &telemetry, &shared)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    if let Some(token) = &config.admin.token_file {
        crate::admin::read_token(token)
            .map_err(|e| format!("{}: admin.token_file: {e}", path.display()))?;
    }
    Ok(config)
}

fn runtime_then<F, Fut>(runtime: Runtime, f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let runtime = match runtime.build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(f()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config, file: ConfigFile) -> anyhow::Result<()> {
    // Listened for before anything starts: SIGHUP's default action ends the process.
    let hangups = Hangups::listen()?;
    let sidecar = Sidecar::start_from_file(config, file)
        .await
        .inspect_err(|e| {
            tracing::error!(error = %e, "startup failed");
        })?;
    let stop = wait_for_stop_signal();
    tokio::select! {
        stopped = stop => stopped?,
        () = hangups.reload(sidecar.reloader()) => {}
    }
    tracing::info!("stop signal received: draining");
    sidecar.shutdown().await;
    Ok(())
}

/// SIGHUP, listened for.
struct Hangups {
    #[cfg(unix)]
    signal: tokio::signal::unix::Signal,
}

impl Hangups {
    fn listen() -> anyhow::Result<Hangups> {
        Ok(Hangups {
            #[cfg(unix)]
            signal: tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?,
        })
    }

    /// Reloads the config at each SIGHUP (outcomes are logged and counted by the reload
    /// itself); never returns.
    async fn reload(self, reloader: std::sync::Arc<Reloader>) {
        #[cfg(unix)]
        {
            let mut signal = self.signal;
            while signal.recv().await.is_some() {
                let _ = reloader.reload(Trigger::Signal).await;
            }
        }
        let _ = reloader;
        std::future::pending::<()>().await
    }
}
