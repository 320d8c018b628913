//! Run benchmark: whole runs through the engine, durable checkpoints on.
//!
//! `cargo bench -p isoflow-engine --bench run` prints:
//! - the seed's 6-step integration (HTTP GET of a 21 KB XML export from a
//!   loopback server, 4 JavaScript steps each in a fresh isolate, HTTP POST
//!   with a bearer token), run after run: p50, p99, runs/s, CPU per run, and
//!   the engine's own overhead per step (wall time minus time inside the
//!   steps' JavaScript and HTTP requests minus time in durable writes), with
//!   every code step on V8, then on QuickJS;
//! - the same with 16 runs in flight: runs/s, CPU per run, peak memory;
//! - the 500-item loop example (8 at a time);
//! - a 100 MB payload through three steps (GET, a code step that reads it,
//!   POST), with the peak memory it adds.
//!
//! CPU counts this process (the node's side) and every sandbox process
//! that ran steps; memory is this process's RSS plus the sandbox processes'
//! Pss, sampled (see `common/usage.rs`). The HTTP servers run in a child
//! process (this binary with `--fixture`), which neither figure counts.
//! `--runs N` changes the number of sequential runs (default 1,000; twice
//! as many run concurrently), `--sandbox-threads N` the number of code
//! steps run at once (default: the engine's).

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[path = "common/usage.rs"]
mod usage;

use usage::{Cpu, CpuSnapshot, Memory, PeakMemory};

use isoflow_engine::action::egress::EgressPolicy;
use isoflow_engine::model::{self, Integration, Step};
use isoflow_engine::run::{
    Credential, Engine, EngineConfig, RunOutcome, Secret, StaticCredentials,
};
use isoflow_engine::sandbox::Runtime;
use isoflow_engine::store::RunStatus;
use isoflow_testkit::{HttpFixture, Reply, Responder};
use serde_json::{Value, json};

const TOKEN: &str = "bench-token";
const BIG: usize = 100 * 1024 * 1024;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--fixture") {
        return serve_fixture();
    }
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .and_then(|n| n.parse::<usize>().ok())
    };
    let runs = flag("--runs").unwrap_or(1_000);
    let threads = flag("--sandbox-threads");

    let mut child = Command::new(std::env::current_exe().expect("own path"))
        .arg("--fixture")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("fixture process starts");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("piped"))
        .read_line(&mut line)
        .expect("fixture prints its address");
    let base = line.trim().to_owned();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    runtime.block_on(benchmarks(&base, runs, threads));
    drop(child.stdin.take());
    let _ = child.kill();
    let _ = child.wait();
}

fn serve_fixture() {
    let fixture = HttpFixture::start();
    fixture.serve_seed(TOKEN);
    fixture.route(
        "POST",
        "/items/*",
        Responder::Fixed(Reply::json(201, &json!({"ok": true}))),
    );
    let big = "0123456789abcdef".repeat(BIG / 16);
    fixture.route("GET", "/big", Responder::Fixed(Reply::text(200, &big)));
    drop(big);
    fixture.route(
        "POST",
        "/import",
        Responder::Fixed(Reply::json(201, &json!("stored"))),
    );
    println!("{}", fixture.url(""));
    std::io::stdout().flush().expect("stdout");
    // Serve until the parent closes stdin.
    let mut sink = String::new();
    let _ = std::io::stdin().read_line(&mut sink);
}

async fn benchmarks(base: &str, runs: usize, threads: Option<usize>) {
    let dir = std::env::temp_dir().join(format!("isoflow-run-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut config = EngineConfig::new(&dir);
    // The fixture serves on loopback.
    config.egress = EgressPolicy::public_only().allow(["127.0.0.1".parse().expect("an address")]);
    if let Some(threads) = threads {
        config.sandbox.concurrency = threads;
    }
    let threads = config.sandbox.concurrency;
    let mut credentials = StaticCredentials::default();
    credentials.insert(
        "bench",
        "erp-api",
        Credential::new(Secret::new(TOKEN), [base.parse().expect("an origin")]),
    );
    config.credentials = Arc::new(credentials);
    let engine = Engine::start(config).await.expect("engine starts");
    println!(
        "run benchmark: data in {}, WAL fsync on, {} code steps at once",
        dir.display(),
        threads
    );
    let seed_text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/integrations/seed.yaml"
    ))
    .expect("seed example");
    let seed = model::load("seed.yaml", &seed_text).expect("seed loads");
    let input = json!({
        "export_url": format!("{base}/orders.xml"),
        "target_url": format!("{base}/erp/orders"),
    });

    for runtime in [Runtime::V8, Runtime::QuickJs] {
        let integration = on_runtime(&seed, runtime);
        sequential(&engine, &integration, &input, runs, runtime).await;
    }
    for runtime in [Runtime::V8, Runtime::QuickJs] {
        let integration = on_runtime(&seed, runtime);
        concurrent(&engine, &integration, &input, runs * 2, 16, runtime).await;
    }
    loop_500(&engine, base).await;
    big_payload(&engine, base).await;
    engine.shutdown(Duration::from_secs(10)).await;
    let _ = std::fs::remove_dir_all(&dir);
}

/// The integration with every code step on `runtime`.
fn on_runtime(integration: &Integration, runtime: Runtime) -> Integration {
    let mut integration = integration.clone();
    for step in &mut integration.steps {
        if let Step::Code(code) = step {
            code.runtime = runtime;
        }
    }
    integration
}

async fn one(engine: &Engine, integration: &Integration, input: &Value) -> RunOutcome {
    let handle = engine
        .start_run("bench", integration, input.clone())
        .await
        .expect("run starts");
    let outcome = handle.wait().await.expect("run ends");
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    outcome
}

async fn sequential(
    engine: &Engine,
    integration: &Integration,
    input: &Value,
    runs: usize,
    runtime: Runtime,
) {
    for _ in 0..50 {
        one(engine, integration, input).await;
    }
    let cpu = CpuSnapshot::take();
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(runs);
    let (mut execution, mut store) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..runs {
        let t = Instant::now();
        let outcome = one(engine, integration, input).await;
        latencies.push(t.elapsed());
        execution += outcome.timings.execution;
        store += outcome.timings.store;
    }
    let wall = start.elapsed();
    let cpu = CpuSnapshot::take().since(&cpu);
    latencies.sort();
    let n = runs as u32;
    let mean = wall / n;
    let steps = integration.steps.len() as u32;
    let overhead = mean.saturating_sub(execution / n + store / n) / steps;
    println!(
        "seed 6 steps, {runtime:<7} sequential, {runs} runs: p50 {}  p99 {}  {:.0} runs/s  \
         CPU {} per run | per run: steps {}  durable writes {}  engine {} per step",
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        f64::from(n) / wall.as_secs_f64(),
        cpu_per_run(&cpu, runs),
        ms(execution / n),
        ms(store / n),
        us(overhead),
    );
}

async fn concurrent(
    engine: &Engine,
    integration: &Integration,
    input: &Value,
    runs: usize,
    in_flight: usize,
    runtime: Runtime,
) {
    let memory = PeakMemory::start(Duration::from_millis(50));
    let cpu = CpuSnapshot::take();
    let start = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..in_flight {
        let (engine, integration, input, next) = (
            engine.clone(),
            integration.clone(),
            input.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < runs {
                let t = Instant::now();
                one(&engine, &integration, &input).await;
                latencies.push(t.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let wall = start.elapsed();
    let cpu = CpuSnapshot::take().since(&cpu);
    let memory = memory.stop();
    latencies.sort();
    println!(
        "seed 6 steps, {runtime:<7} {in_flight} in flight, {runs} runs: {:.0} runs/s  p50 {}  p99 {}  \
         CPU {} per run  peak memory {}",
        runs as f64 / wall.as_secs_f64(),
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        cpu_per_run(&cpu, runs),
        megabytes(&memory),
    );
}

async fn loop_500(engine: &Engine, base: &str) {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/integrations/loop-500.yaml"
    ))
    .expect("loop example");
    let integration = model::load("loop-500.yaml", &text).expect("loop example loads");
    let input = json!({ "target_url": base });
    let mut times = Vec::new();
    let cpu = CpuSnapshot::take();
    for _ in 0..5 {
        let t = Instant::now();
        let outcome = one(engine, &integration, &input).await;
        times.push(t.elapsed());
        let items = outcome
            .output
            .as_ref()
            .and_then(Value::as_array)
            .map_or(0, Vec::len);
        assert_eq!(items, 500);
    }
    let cpu = CpuSnapshot::take().since(&cpu);
    times.sort();
    println!(
        "loop of 500 items (8 at a time, a POST and a checkpoint each): median {}  best {}  CPU {} per run",
        ms(times[2]),
        ms(times[0]),
        cpu_per_run(&cpu, 5)
    );
}

async fn big_payload(engine: &Engine, base: &str) {
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: big
version: 1
steps:
  - id: fetch
    type: http
    url: "{base}/big"
    max_response_bytes: 200MiB
  - id: measure
    type: code
    input: "{{{{ steps.fetch.output.body }}}}"
    source: "export default (text) => ({{ length: text.length }})"
  - id: post
    type: http
    method: POST
    url: "{base}/import"
    body: "{{{{ steps.fetch.output.body }}}}"
output: "{{{{ steps.measure.output.length }}}}"
"#
    );
    let integration = model::load("big.yaml", &yaml).expect("loads");
    for runtime in [Runtime::V8, Runtime::QuickJs] {
        let integration = on_runtime(&integration, runtime);
        let before = Memory::now();
        let memory = PeakMemory::start(Duration::from_millis(10));
        let t = Instant::now();
        let outcome = engine
            .start_run("bench", &integration, Value::Null)
            .await
            .expect("run starts")
            .wait()
            .await
            .expect("run ends");
        let wall = t.elapsed();
        let peak = memory.stop();
        let added = peak.total_kb().saturating_sub(before.total_kb());
        if outcome.status != RunStatus::Succeeded {
            println!(
                "100 MB payload, 3 steps ({runtime}): FAILED after {}: {}",
                ms(wall),
                outcome.error.unwrap_or_default()
            );
            continue;
        }
        assert_eq!(outcome.output, Some(json!(BIG)));
        println!(
            "100 MB payload, 3 steps ({runtime}): {}  (steps {}, durable writes {})  \
             peak memory {} (+{} MB = {:.1}x the payload)",
            ms(wall),
            ms(outcome.timings.execution),
            ms(outcome.timings.store),
            megabytes(&peak),
            added / 1024,
            added as f64 * 1024.0 / BIG as f64,
        );
    }
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * q).round() as usize]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

/// CPU per run, and how it splits between the node's process and the
/// sandbox processes.
fn cpu_per_run(cpu: &Cpu, runs: usize) -> String {
    let each = cpu.per(runs);
    format!(
        "{} (node {} + sandboxes {})",
        ms(each.total()),
        ms(each.own),
        ms(each.sandboxes)
    )
}

/// The node's RSS plus the sandbox processes' Pss.
fn megabytes(memory: &Memory) -> String {
    format!(
        "{} MB (node RSS {} + sandboxes Pss {})",
        memory.total_kb() / 1024,
        memory.own_rss_kb / 1024,
        memory.sandboxes_pss_kb / 1024
    )
}
