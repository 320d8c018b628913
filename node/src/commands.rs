//! The run commands: `run`, `validate`, `runs`, `show`, `resume`.
//!
//! Progress goes to stderr, one line per step as it finishes; the run's
//! output (JSON) goes to stdout, so `isoflow run x.yaml | jq` works. Exit
//! codes: 0 the run succeeded, 1 it failed (or was cancelled, or a
//! definition is invalid), 2 the command itself could not work (unreadable
//! file, bad flags, store errors), 130 interrupted by a signal (the run
//! stays unfinished; `isoflow resume` continues it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, UNIX_EPOCH};

use anyhow::{Context, bail};
use isoflow_engine::action::egress::{Allowed, EgressPolicy};
use isoflow_engine::action::origin::Origin;
use isoflow_engine::model::{self, Integration};
use isoflow_engine::run::{
    Credential, Engine, EngineConfig, RunEvent, RunHandle, RunOutcome, Secret, StaticCredentials,
    inline_code_files,
};
use isoflow_engine::store::{RunRecord, RunStatus, StepStatus, Store, StoreConfig};
use serde_json::Value;

/// Prefix of the environment variables that hold credentials:
/// `ISOFLOW_CREDENTIAL_ERP_API` is the token of credential `erp-api`, and
/// `ISOFLOW_CREDENTIAL_ERP_API_ORIGINS` the origins it may be sent to
/// (comma-separated).
const CREDENTIAL_PREFIX: &str = "ISOFLOW_CREDENTIAL_";
const ORIGINS_SUFFIX: &str = "_ORIGINS";

/// The credentials `vars` (the environment) hold for `tenant`; a token
/// without origins, or origins without a token, is an error naming the
/// variable.
fn credentials_from(
    vars: impl IntoIterator<Item = (String, String)>,
    tenant: &str,
) -> anyhow::Result<StaticCredentials> {
    let mut tokens = std::collections::BTreeMap::new();
    let mut origins = HashMap::new();
    for (name, value) in vars {
        let Some(suffix) = name.strip_prefix(CREDENTIAL_PREFIX) else {
            continue;
        };
        match suffix.strip_suffix(ORIGINS_SUFFIX) {
            Some(key) => {
                let parsed = value
                    .split(',')
                    .filter(|o| !o.trim().is_empty())
                    .map(|o| {
                        o.parse::<Origin>()
                            .map_err(|why| anyhow::anyhow!("{name}: {why}"))
                    })
                    .collect::<anyhow::Result<Vec<_>>>()?;
                origins.insert(key.to_owned(), parsed);
            }
            None => {
                tokens.insert(suffix.to_owned(), value);
            }
        }
    }
    let mut credentials = StaticCredentials::default();
    for (key, token) in tokens {
        let Some(origins) = origins.remove(&key).filter(|o| !o.is_empty()) else {
            bail!(
                "{CREDENTIAL_PREFIX}{key} has no origins: set {CREDENTIAL_PREFIX}{key}{ORIGINS_SUFFIX} \
                 to where it may be sent, like https://erp.example.com"
            );
        };
        let name = key.to_ascii_lowercase().replace('_', "-");
        credentials.insert(tenant, &name, Credential::new(Secret::new(token), origins));
    }
    if let Some(key) = origins.keys().next() {
        bail!(
            "{CREDENTIAL_PREFIX}{key}{ORIGINS_SUFFIX} is set but {CREDENTIAL_PREFIX}{key} is not"
        );
    }
    Ok(credentials)
}

/// What the commands take from the process environment, read once.
pub struct Env {
    data_dir: PathBuf,
    tenant: String,
    credentials: StaticCredentials,
}

impl Env {
    pub fn from_process(data_dir: Option<PathBuf>, tenant: String) -> anyhow::Result<Env> {
        let data_dir = match data_dir {
            Some(dir) => dir,
            None => {
                let home = std::env::var_os("HOME")
                    .context("neither --data-dir, ISOFLOW_DATA_DIR nor HOME is set")?;
                PathBuf::from(home).join(".local/share/isoflow")
            }
        };
        let credentials = credentials_from(std::env::vars(), &tenant)?;
        Ok(Env {
            data_dir,
            tenant,
            credentials,
        })
    }

    fn engine_config(self) -> EngineConfig {
        let mut config = EngineConfig::new(&self.data_dir);
        config.credentials = Arc::new(self.credentials);
        config.sandbox = crate::config::Sandbox::default().engine_config();
        // The local CLI runs its own user's definitions, and the demo's
        // endpoints are on loopback: loopback is allowed here, unlike in
        // `serve`.
        config.egress = EgressPolicy::public_only().allow(LOOPBACK.iter().map(|net| {
            net.parse::<Allowed>()
                .expect("the loopback networks are networks")
        }));
        config
    }

    fn open_store(&self) -> anyhow::Result<Store> {
        Ok(Store::open(&StoreConfig::new(&self.data_dir))?)
    }
}

/// What the local CLI's http steps may reach besides public addresses.
const LOOPBACK: [&str; 2] = ["127.0.0.0/8", "::1/128"];

/// Reads `--input`: JSON text, or `@path` for a file holding it.
pub fn read_input(arg: &str) -> anyhow::Result<Value> {
    let (text, origin) = match arg.strip_prefix('@') {
        Some(path) => (
            std::fs::read_to_string(path)
                .with_context(|| format!("cannot read input file {path}"))?,
            path.to_owned(),
        ),
        None => (arg.to_owned(), "--input".to_owned()),
    };
    serde_json::from_str(&text).with_context(|| format!("{origin} is not valid JSON"))
}

/// Loads and validates a definition; its code files are read in.
/// `Err(Ok(lines))`: the definition is invalid (exit 1); `Err(Err(e))`: it
/// could not be read (exit 2).
fn load(file: &Path) -> Result<Integration, anyhow::Result<Vec<String>>> {
    let text = std::fs::read_to_string(file)
        .with_context(|| format!("cannot read {}", file.display()))
        .map_err(Err)?;
    let name = file.display().to_string();
    let mut integration = model::load(&name, &text)
        .map_err(|errors| Ok(errors.errors().iter().map(ToString::to_string).collect()))?;
    let base = file.parent().unwrap_or(Path::new("."));
    inline_code_files(&mut integration, base).map_err(|e| Ok(vec![format!("{name}: {e}")]))?;
    Ok(integration)
}

pub fn validate(files: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut ok = true;
    for file in files {
        match load(file) {
            Ok(integration) => eprintln!(
                "{}: ok: {} version {}, {} steps",
                file.display(),
                integration.name.as_str(),
                integration.version,
                integration.steps.len()
            ),
            Err(Ok(lines)) => {
                ok = false;
                for line in lines {
                    eprintln!("{line}");
                }
            }
            Err(Err(e)) => return Err(e),
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

pub async fn run(env: Env, file: &Path, input: &str) -> anyhow::Result<ExitCode> {
    let integration = match load(file) {
        Ok(integration) => integration,
        Err(Ok(lines)) => {
            for line in lines {
                eprintln!("{line}");
            }
            return Ok(ExitCode::FAILURE);
        }
        Err(Err(e)) => return Err(e),
    };
    let input = read_input(input)?;
    let tenant = env.tenant.clone();
    let engine = Engine::start(env.engine_config()).await?;
    let unfinished = engine
        .store()
        .expect("a local engine has a store")
        .unfinished_runs()?
        .len();
    if unfinished > 0 {
        eprintln!(
            "note: {unfinished} unfinished run(s) in this data directory; `isoflow resume` continues them"
        );
    }
    let handle = engine.start_run(&tenant, &integration, input).await?;
    eprintln!(
        "run {} of {} version {}",
        handle.run_id,
        integration.name.as_str(),
        integration.version
    );
    let outcome = follow(&engine, handle).await;
    finish(engine, outcome).await
}

pub async fn resume(env: Env) -> anyhow::Result<ExitCode> {
    let engine = Engine::start(env.engine_config()).await?;
    let handles = engine.resume_unfinished().await?;
    if handles.is_empty() {
        eprintln!("no unfinished runs");
    }
    let mut code = ExitCode::SUCCESS;
    // Runs go on concurrently; their progress is printed one run at a time.
    for handle in handles {
        eprintln!("resuming run {}", handle.run_id);
        let outcome = follow(&engine, handle).await;
        match outcome {
            Some(outcome) => {
                if outcome.status != RunStatus::Succeeded {
                    code = ExitCode::FAILURE;
                }
                print_outcome(&outcome);
            }
            None => return interrupted(engine).await,
        }
    }
    engine.shutdown(Duration::from_secs(10)).await;
    Ok(code)
}

/// Prints a run's events as they come; on SIGINT or SIGTERM shuts the
/// engine down gracefully and returns `None`.
async fn follow(engine: &Engine, mut handle: RunHandle) -> Option<RunOutcome> {
    let start = Instant::now();
    let mut interrupt = std::pin::pin!(shutdown_signal());
    loop {
        tokio::select! {
            event = handle.next_event() => match event? {
                RunEvent::Finished(outcome) => {
                    eprintln!(
                        "{} in {}",
                        outcome.status.as_str(),
                        millis(start.elapsed())
                    );
                    return Some(outcome);
                }
                event => print_event(&event),
            },
            () = &mut interrupt => {
                eprintln!("interrupted: finishing the steps in flight");
                engine.shutdown(Duration::from_secs(10)).await;
                return None;
            }
        }
    }
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(mut int), Ok(mut term)) => {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
        // No signal handling: never resolve.
        _ => std::future::pending().await,
    }
}

fn print_event(event: &RunEvent) {
    match event {
        RunEvent::StepStarted { .. } | RunEvent::Finished(_) => {}
        RunEvent::StepRestored { step_key } => {
            eprintln!("  {step_key:<24} done before the restart, not run again");
        }
        RunEvent::StepRetrying {
            step_key,
            attempt,
            error,
            delay,
        } => eprintln!(
            "  {step_key:<24} attempt {attempt} failed: {error}; retrying in {}",
            millis(*delay)
        ),
        RunEvent::StepFinished {
            step_key,
            status,
            attempt,
            duration,
            error,
        } => {
            let mut line = format!("  {step_key:<24} {:<9}", step_word(*status));
            if *status != StepStatus::Skipped {
                line.push_str(&format!(" {:>10}", millis(*duration)));
            }
            if *attempt > 1 {
                line.push_str(&format!("  attempt {attempt}"));
            }
            if let Some(error) = error {
                line.push_str(&format!("  {error}"));
            }
            eprintln!("{line}");
        }
    }
}

async fn finish(engine: Engine, outcome: Option<RunOutcome>) -> anyhow::Result<ExitCode> {
    let Some(outcome) = outcome else {
        return interrupted(engine).await;
    };
    engine.shutdown(Duration::from_secs(10)).await;
    print_outcome(&outcome);
    Ok(match outcome.status {
        RunStatus::Succeeded => ExitCode::SUCCESS,
        _ => ExitCode::FAILURE,
    })
}

fn print_outcome(outcome: &RunOutcome) {
    if let Some(error) = &outcome.error {
        eprintln!("error: {error}");
    }
    if let Some(output) = &outcome.output {
        println!("{}", pretty(output));
    }
}

async fn interrupted(engine: Engine) -> anyhow::Result<ExitCode> {
    engine.shutdown(Duration::from_secs(10)).await;
    eprintln!("the run is unfinished; `isoflow resume` continues it");
    Ok(ExitCode::from(130))
}

pub fn runs(env: &Env, limit: usize) -> anyhow::Result<ExitCode> {
    let store = env.open_store()?;
    let runs = store.runs(&env.tenant, limit)?;
    if runs.is_empty() {
        eprintln!("no runs in {}", env.data_dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<36}  {:<24} {:>7}  {:<9}  {:<24} {:>10}",
        "RUN", "INTEGRATION", "VERSION", "STATUS", "CREATED", "DURATION"
    );
    for run in runs {
        let duration = if run.status.is_finished() {
            millis(Duration::from_millis(
                run.updated_at_ms.saturating_sub(run.created_at_ms),
            ))
        } else {
            "-".to_owned()
        };
        println!(
            "{:<36}  {:<24} {:>7}  {:<9}  {:<24} {:>10}",
            run.run_id,
            run.integration,
            run.version,
            run.status.as_str(),
            timestamp(run.created_at_ms),
            duration
        );
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(env: &Env, run_id: &str) -> anyhow::Result<ExitCode> {
    let store = env.open_store()?;
    let Some(run) = store.run(&env.tenant, run_id)? else {
        bail!(
            "no run {run_id} for tenant {} in {}",
            env.tenant,
            env.data_dir.display()
        );
    };
    print_run(&store, &run)?;
    Ok(ExitCode::SUCCESS)
}

fn print_run(store: &Store, run: &RunRecord) -> anyhow::Result<()> {
    println!("run        {}", run.run_id);
    println!("integration {} version {}", run.integration, run.version);
    println!("status     {}", run.status.as_str());
    println!("created    {}", timestamp(run.created_at_ms));
    println!("updated    {}", timestamp(run.updated_at_ms));
    if let Some(error) = &run.error {
        println!("error      {error}");
    }
    println!();
    println!(
        "{:<32} {:<9} {:>8} {:>10} {:>12}",
        "STEP", "STATUS", "ATTEMPTS", "DURATION", "OUTPUT"
    );
    let steps = store.steps(&run.tenant, &run.run_id)?;
    let mut errors: HashMap<String, String> = HashMap::new();
    for step in &steps {
        let output = step
            .output_bytes
            .map_or_else(|| "-".to_owned(), |b| format!("{b} B"));
        println!(
            "{:<32} {:<9} {:>8} {:>10} {:>12}",
            step.step_key,
            step_word(step.status),
            step.attempts,
            millis(Duration::from_millis(
                step.finished_at_ms.saturating_sub(step.started_at_ms)
            )),
            output
        );
        if let Some(error) = &step.error {
            errors.insert(step.step_key.clone(), error.clone());
        }
    }
    for (key, error) in &errors {
        println!("  {key}: {error}");
    }
    let logs = store.logs(&run.tenant, &run.run_id)?;
    if !logs.is_empty() {
        println!();
        println!("logs");
        for line in logs {
            println!(
                "  {} {:<24} {:<5} {}",
                timestamp(line.time_ms),
                line.step_key,
                line.level,
                line.message
            );
        }
    }
    if let Some(output) = store.run_output(&run.tenant, &run.run_id)? {
        println!();
        println!("output");
        println!("{}", pretty(&output));
    }
    Ok(())
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn step_word(status: StepStatus) -> &'static str {
    match status {
        StepStatus::Succeeded => "ok",
        StepStatus::Failed => "failed",
        StepStatus::Skipped => "skipped",
    }
}

fn millis(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1e3)
}

/// RFC 3339 for any time before the year 10000 (humantime cannot write
/// later ones); the number of milliseconds past that.
fn timestamp(ms: u64) -> String {
    const YEAR_10000_MS: u64 = 253_402_300_800_000;
    if ms >= YEAR_10000_MS {
        return format!("{ms} ms since 1970");
    }
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

#[cfg(test)]
mod tests {
    fn vars(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn environment_credentials_come_with_their_origins() {
        let credentials = credentials_from(
            vars(&[
                ("ISOFLOW_CREDENTIAL_ERP_API", "t0ken"),
                (
                    "ISOFLOW_CREDENTIAL_ERP_API_ORIGINS",
                    "https://erp.example.com, http://127.0.0.1:8080/api",
                ),
                ("HOME", "/root"),
            ]),
            "local",
        )
        .expect("valid");
        let erp = credentials
            .0
            .get(&("local".to_owned(), "erp-api".to_owned()))
            .expect("erp-api is there");
        assert_eq!(erp.kind.secret().expose(), "t0ken");
        let origins: Vec<String> = erp.origins.iter().map(ToString::to_string).collect();
        assert_eq!(
            origins,
            ["https://erp.example.com", "http://127.0.0.1:8080/api"]
        );
    }

    #[test]
    fn an_environment_credential_without_origins_is_refused_naming_the_variable() {
        let error = credentials_from(vars(&[("ISOFLOW_CREDENTIAL_ERP_API", "t0ken")]), "local")
            .expect_err("no origins")
            .to_string();
        assert_eq!(
            error,
            "ISOFLOW_CREDENTIAL_ERP_API has no origins: set ISOFLOW_CREDENTIAL_ERP_API_ORIGINS \
             to where it may be sent, like https://erp.example.com"
        );
        let error = credentials_from(
            vars(&[
                ("ISOFLOW_CREDENTIAL_ERP_API", "t0ken"),
                ("ISOFLOW_CREDENTIAL_ERP_API_ORIGINS", "erp.example.com"),
            ]),
            "local",
        )
        .expect_err("not an origin")
        .to_string();
        assert!(
            error.starts_with(
                "ISOFLOW_CREDENTIAL_ERP_API_ORIGINS: \"erp.example.com\" is not an origin"
            ),
            "{error}"
        );
    }

    use super::*;

    #[test]
    fn any_timestamp_prints() {
        assert_eq!(timestamp(1_000), "1970-01-01T00:00:01.000Z");
        assert_eq!(timestamp(u64::MAX), format!("{} ms since 1970", u64::MAX));
    }
}
