//! Deploys an integration, starts a run of it and follows the run as it
//! goes: each step as it finishes and each log line as it is written, then
//! the output.
//!
//! ```sh
//! cargo run -p isoflow-client --example follow -- \
//!     --server https://isoflow.internal:7700 --token "$ISOFLOW_TOKEN" --ca ca.pem \
//!     --definition examples/integrations/seed.yaml --input '{"export_url": "..."}'
//! ```
//!
//! The last two lines are `run <id> SUCCEEDED` (or how it ended) and the
//! output as JSON. On an error it prints the error's one sentence (and a
//! refused definition's problems, one a line) and exits 1.

use std::process::ExitCode;

use isoflow_client::v1::run_update::Update;
use isoflow_client::{Client, ConnectOptions, Error, time, v1};
use tokio_stream::StreamExt;

struct Args {
    server: String,
    token: Option<String>,
    ca: Option<String>,
    definition: String,
    input: serde_json::Value,
}

fn args() -> Result<Args, String> {
    let mut server = std::env::var("ISOFLOW_SERVER").ok();
    let mut token = std::env::var("ISOFLOW_TOKEN").ok();
    let mut ca = std::env::var("ISOFLOW_CA").ok();
    let mut definition = None;
    let mut input = serde_json::Value::Null;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--server" => server = Some(value()?),
            "--token" => token = Some(value()?),
            "--ca" => ca = Some(value()?),
            "--definition" => definition = Some(value()?),
            "--input" => {
                input = serde_json::from_str(&value()?)
                    .map_err(|e| format!("--input is not JSON: {e}"))?;
            }
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    Ok(Args {
        server: server.ok_or("--server (or ISOFLOW_SERVER) is required")?,
        token,
        ca,
        definition: definition.ok_or("--definition is required")?,
        input,
    })
}

async fn follow(args: Args) -> Result<(), Error> {
    let mut options = ConnectOptions::new();
    if let Some(token) = &args.token {
        options = options.token(token);
    }
    if let Some(ca) = &args.ca {
        options = options.ca_file(ca)?;
    }
    let client = Client::connect_with(&args.server, &options).await?;
    let integration = client.deploy_file(&args.definition).await?;
    println!(
        "deployed {} version {}",
        integration.name, integration.version
    );
    let run = client
        .start_run(&integration.name, Some(integration.version), &args.input)
        .await?;
    println!("run {} started", run.run_id);
    let mut updates = client.watch(&run.run_id, true).await?;
    let mut ended = None;
    while let Some(update) = updates.next().await {
        match update?.update {
            Some(Update::Step(step)) => {
                let took = time::to_ms(step.end_time.as_ref())
                    .saturating_sub(time::to_ms(step.start_time.as_ref()));
                println!(
                    "  step {} {} ({} attempt(s), {took} ms)",
                    step.step_key,
                    lower(step.status().as_str_name(), "STEP_STATUS_"),
                    step.attempts
                );
            }
            Some(Update::Log(line)) => {
                let level = lower(line.level().as_str_name(), "LOG_LEVEL_");
                println!("  {}: [{level}] {}", line.step_key, line.message);
            }
            Some(Update::Finished(run)) => ended = Some(run),
            None => {}
        }
    }
    let run = ended.ok_or_else(|| Error::WatchEnded {
        run_id: run.run_id.clone(),
    })?;
    let status = run.status().as_str_name().trim_start_matches("RUN_STATUS_");
    println!("run {} {status}", run.run_id);
    if run.status() == v1::RunStatus::Succeeded {
        println!("{}", client.output(&run.run_id).await?);
    } else {
        println!("{}", run.error);
    }
    Ok(())
}

/// `STEP_STATUS_SUCCEEDED` → `succeeded`.
fn lower(name: &str, prefix: &str) -> String {
    name.trim_start_matches(prefix).to_lowercase()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(args) => args,
        Err(usage) => {
            eprintln!("error: {usage}");
            return ExitCode::from(2);
        }
    };
    match follow(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            for problem in error.problems() {
                eprintln!("  {problem}");
            }
            ExitCode::FAILURE
        }
    }
}
