//! The `isoflow` binary.
//!
//! Today it offers `isoflow eval`, which runs one code step's JavaScript in
//! the sandbox exactly as a run would, and prints its output and logs. The
//! run engine's commands (`run`, `validate`, `runs`, `show`) and the server
//! roles build on the same engine.

use std::process::ExitCode;

use anyhow::{Context, bail};
use isoflow_engine::sandbox::{Execution, Limits, Runtime, Sandbox, SandboxConfig, Script};

const USAGE: &str = "usage: isoflow eval <file.js> [--input <json|@file>] [--runtime v8|quickjs] \
                     [--timeout-ms N] [--heap-mb N]";

fn main() -> ExitCode {
    match run(std::env::args().skip(1).collect()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let mut args = args.into_iter();
    match args.next().as_deref() {
        Some("eval") => eval(args.collect()),
        Some("--help" | "-h" | "help") | None => {
            println!("{USAGE}");
            Ok(ExitCode::SUCCESS)
        }
        Some(other) => bail!("unknown command {other:?}; {USAGE}"),
    }
}

fn eval(args: Vec<String>) -> anyhow::Result<ExitCode> {
    let mut file = None;
    let mut input = "null".to_owned();
    let mut runtime = Runtime::default();
    let mut limits = Limits::default();
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--input" => {
                let v = value("--input")?;
                input = match v.strip_prefix('@') {
                    Some(path) => std::fs::read_to_string(path)
                        .with_context(|| format!("cannot read input file {path}"))?,
                    None => v,
                };
            }
            "--runtime" => {
                runtime = match value("--runtime")?.as_str() {
                    "v8" => Runtime::V8,
                    "quickjs" => Runtime::QuickJs,
                    other => bail!("unknown runtime {other:?}: expected v8 or quickjs"),
                }
            }
            "--timeout-ms" => {
                limits.timeout = std::time::Duration::from_millis(value("--timeout-ms")?.parse()?)
            }
            "--heap-mb" => limits.heap_bytes = value("--heap-mb")?.parse::<usize>()? << 20,
            _ if arg.starts_with("--") => bail!("unknown option {arg}; {USAGE}"),
            _ if file.is_none() => file = Some(arg),
            _ => bail!("unexpected argument {arg}; {USAGE}"),
        }
    }
    let file = file.with_context(|| USAGE.to_owned())?;
    let source = std::fs::read_to_string(&file).with_context(|| format!("cannot read {file}"))?;
    serde_json::from_str::<serde_json::Value>(&input).context("--input is not valid JSON")?;

    let sandbox = Sandbox::new(SandboxConfig {
        threads: 1,
        limits,
        warm: vec![runtime],
    })?;
    let outcome = sandbox
        .execute_blocking(Execution::new(runtime, Script::new(file, source), input).limits(limits));
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
