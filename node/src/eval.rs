//! `isoflow eval`: one code step's JavaScript, run in the sandbox exactly as
//! a run would, with its output on stdout and its logs on stderr.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use isoflow_engine::sandbox::{Execution, Limits, Runtime, Sandbox, SandboxConfig, Script};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// The step's module (an ES module whose default export takes the input)
    file: PathBuf,
    /// The step's input: JSON text, or @path to read it from a file
    #[arg(long, default_value = "null")]
    input: String,
    #[arg(long, value_enum, default_value = "v8")]
    runtime: RuntimeArg,
    /// Time limit in milliseconds
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Heap limit in MiB
    #[arg(long)]
    heap_mb: Option<usize>,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum RuntimeArg {
    V8,
    Quickjs,
}

pub fn eval(args: Args) -> anyhow::Result<ExitCode> {
    let runtime = match args.runtime {
        RuntimeArg::V8 => Runtime::V8,
        RuntimeArg::Quickjs => Runtime::QuickJs,
    };
    let mut limits = Limits::default();
    if let Some(ms) = args.timeout_ms {
        limits.timeout = Duration::from_millis(ms);
    }
    if let Some(mb) = args.heap_mb {
        limits.heap_bytes = mb << 20;
    }
    let input = crate::commands::read_input(&args.input)?;
    let source = std::fs::read_to_string(&args.file)
        .with_context(|| format!("cannot read {}", args.file.display()))?;
    let sandbox = Sandbox::new(SandboxConfig {
        concurrency: 1,
        processes: 1,
        spare: 0,
        limits,
        warm: vec![runtime],
        ..crate::config::Sandbox::default().engine_config()
    })?;
    let filename = args.file.display().to_string();
    let outcome = sandbox.execute_blocking(
        Execution::with_value(runtime, Script::new(filename, source), &input).limits(limits),
    );
    for line in &outcome.logs {
        eprintln!("[{:?}] {}", line.level, line.message);
    }
    match outcome.result {
        Ok(output) => {
            println!("{output}");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("error: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}
