//! The `isoflow` binary.
//!
//! The commands of the embedded single process, which needs no etcd and no
//! server: `run` an integration from a file, `validate` one, list local
//! `runs`, `show` one, `resume` the runs a stopped process left unfinished,
//! and `eval` one code step's JavaScript as a run would. Each opens the run
//! store in the data directory (`--data-dir`, `ISOFLOW_DATA_DIR`, or
//! `~/.local/share/isoflow`).
//!
//! `serve` runs a node: `--role all` (the default) is everything in one
//! process with a gRPC API; `coordinator` and `worker` make a cluster with
//! etcd (see `server.rs`).
//!
//! `main` reads the environment once (data directory, credentials) and
//! passes it down. Where to look next: `commands.rs` for the run commands,
//! `eval.rs` for `eval`, and the `isoflow-engine` crate for everything they
//! call.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod commands;
mod config;
mod console;
mod eval;
mod server;
mod telemetry;

/// The hidden subcommand that makes this binary a sandbox process: the
/// node runs itself as `isoflow sandbox-process <options>` (see the
/// isoflow-sandbox crate). Not for people to type.
pub const SANDBOX_SUBCOMMAND: &str = "sandbox-process";

#[derive(Debug, Parser)]
#[command(
    name = "isoflow",
    version,
    about = "Runs integrations: durable multi-step workflows with isolated JavaScript steps"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Store {
    /// Where runs are stored [default: ~/.local/share/isoflow]
    #[arg(long, env = "ISOFLOW_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// The tenant whose runs to start or read
    #[arg(long, env = "ISOFLOW_TENANT", default_value = "local", global = true)]
    tenant: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Validate an integration, run it and print its output
    Run {
        /// The integration definition (YAML or JSON)
        file: PathBuf,
        /// The run's input: JSON text, or @path to read it from a file
        #[arg(long, default_value = "null")]
        input: String,
        #[command(flatten)]
        store: Store,
    },
    /// Check integration definitions without running them
    Validate {
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
    /// List the runs in the data directory, newest first
    Runs {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        store: Store,
    },
    /// Show a run: its steps, timings, logs and output
    Show {
        run_id: String,
        #[command(flatten)]
        store: Store,
    },
    /// Continue every run a stopped process left unfinished
    Resume {
        #[command(flatten)]
        store: Store,
    },
    /// Run one code step's JavaScript in the sandbox and print its output
    Eval(eval::Args),
    /// Serve the API as a coordinator, a worker, or both in one process
    Serve(config::Flags),
}

fn main() -> ExitCode {
    // Before anything else: a sandbox process must start with nothing of
    // the node's (no runtime, no logging, no configuration).
    let mut args = std::env::args();
    if args.nth(1).as_deref() == Some(SANDBOX_SUBCOMMAND) {
        return isoflow_sandbox::process::main(args);
    }
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Validate { files } => commands::validate(&files),
        Command::Eval(args) => eval::eval(args),
        Command::Run { file, input, store } => with_runtime(|| async move {
            let env = commands::Env::from_process(store.data_dir, store.tenant)?;
            commands::run(env, &file, &input).await
        }),
        Command::Runs { limit, store } => commands::Env::from_process(store.data_dir, store.tenant)
            .and_then(|env| commands::runs(&env, limit)),
        Command::Show { run_id, store } => {
            commands::Env::from_process(store.data_dir, store.tenant)
                .and_then(|env| commands::show(&env, &run_id))
        }
        Command::Resume { store } => with_runtime(|| async move {
            let env = commands::Env::from_process(store.data_dir, store.tenant)?;
            commands::resume(env).await
        }),
        Command::Serve(flags) => serve(&flags),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

/// `isoflow serve`: until SIGINT or SIGTERM, then a graceful stop.
fn serve(flags: &config::Flags) -> anyhow::Result<ExitCode> {
    let env: std::collections::HashMap<String, String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("ISOFLOW_"))
        .collect();
    let home = std::env::var_os("HOME").map(PathBuf::from);
    let config = config::Config::load(flags, &env)?;
    with_runtime(|| async move {
        let telemetry = telemetry::init(&config)?;
        let (stop_tx, stop) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("a SIGTERM handler can be installed");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: in-flight steps finish and are checkpointed");
            let _ = stop_tx.send(true);
        });
        let served = server::serve(config, home, stop).await;
        telemetry.shutdown().await;
        served?;
        Ok(ExitCode::SUCCESS)
    })
}

fn with_runtime<F, Fut>(f: F) -> anyhow::Result<ExitCode>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<ExitCode>>,
{
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(f())
}
