//! Run benchmark: whole runs through the engine, durable checkpoints on.
//!
//! `cargo bench -p isoflow-engine --bench run` prints:
//! - the seed's 6-step integration (HTTP GET of a 21 KB XML export from a
//!   loopback server, 4 JavaScript steps each in a fresh isolate, HTTP POST
//!   with a bearer token), run after run: p50, p99, runs/s, CPU per run, and
//!   the engine's own overhead per step (wall time minus time inside the
//!   steps' JavaScript and HTTP requests minus time the run waited for
//!   durable writes), with
//!   every code step on V8, then on QuickJS;
//! - the same with 16 and with 64 runs in flight: runs/s, CPU per run,
//!   peak memory;
//! - beside them, a speed reference measured in the same run: the same six
//!   steps as plain Rust in this process (the same GET, XML parser,
//!   transforms and POST; no engine, no isolate, nothing durable), and
//!   issue 13's targets with each figure's ratio to the reference;
//! - the data directory's filesystem (a tmpfs makes fsync free) and how much
//!   it grew per run, beside the payload bytes a run checkpoints;
//! - the 500-item loop example (8 at a time);
//! - a 100 MB payload through three steps (GET, a code step that reads it,
//!   POST; the code step sets `heap: 512MiB`, which QuickJS needs), with
//!   the peak memory it adds.
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
        "run benchmark: data in {} ({}), WAL fsync on, {} code steps at once",
        dir.display(),
        filesystem(&dir),
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

    let floor = plain_floor(base, runs).await;
    let store = engine.store().expect("the bench's engine has a store");
    for runtime in [Runtime::V8, Runtime::QuickJs] {
        let integration = on_runtime(&seed, runtime);
        let before = store.disk_usage();
        let figures = sequential(&engine, &integration, &input, runs, runtime).await;
        let grown = store.disk_usage().saturating_sub(before);
        floor.judge_sequential(runtime, &figures);
        // Until the memtable fills, what a run adds is in the write-ahead
        // log, as written; compaction flushes it to compressed tables.
        store.compact().expect("compaction");
        let compacted = store.disk_usage().saturating_sub(before);
        let per_run = |bytes: u64| bytes as f64 / (figures.runs as f64 + 50.0) / 1000.0;
        println!(
            "  data directory: grew {:.1} KB per run over {} runs ({:.1} KB once compacted), \
             for {:.1} KB of payloads checkpointed per run (target: no more)",
            per_run(grown),
            figures.runs + 50,
            per_run(compacted),
            checkpointed_bytes(&engine, &integration, &input).await as f64 / 1000.0,
        );
    }
    for in_flight in [16, 64] {
        for runtime in [Runtime::V8, Runtime::QuickJs] {
            let integration = on_runtime(&seed, runtime);
            let figures =
                concurrent(&engine, &integration, &input, runs * 2, in_flight, runtime).await;
            floor.judge_concurrent(runtime, in_flight, &figures);
        }
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
) -> Figures {
    for _ in 0..50 {
        one(engine, integration, input).await;
    }
    let cpu = CpuSnapshot::take();
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(runs);
    let (mut execution, mut store, mut waited) = (Duration::ZERO, Duration::ZERO, Duration::ZERO);
    for _ in 0..runs {
        let t = Instant::now();
        let outcome = one(engine, integration, input).await;
        latencies.push(t.elapsed());
        execution += outcome.timings.execution;
        store += outcome.timings.store;
        waited += outcome.timings.store_wait;
    }
    let wall = start.elapsed();
    let cpu = CpuSnapshot::take().since(&cpu);
    latencies.sort();
    let n = runs as u32;
    let mean = wall / n;
    let steps = integration.steps.len() as u32;
    // The engine's share of the wall time: what is left once the steps'
    // own time and the waits for durable writes are taken out (writes
    // made while the next code step computed cost no wall time).
    let overhead = mean.saturating_sub(execution / n + waited / n) / steps;
    println!(
        "seed 6 steps, {runtime:<7} sequential, {runs} runs: p50 {}  p99 {}  {:.0} runs/s  \
         CPU {} per run | per run: steps {}  durable writes {} (waited for {})  engine {} per step",
        ms(quantile(&latencies, 0.5)),
        ms(quantile(&latencies, 0.99)),
        f64::from(n) / wall.as_secs_f64(),
        cpu_per_run(&cpu, runs),
        ms(execution / n),
        ms(store / n),
        ms(waited / n),
        us(overhead),
    );
    Figures {
        runs,
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        runs_per_s: f64::from(n) / wall.as_secs_f64(),
        cpu: cpu.per(runs).total(),
        engine_per_step: overhead,
        peak_mb: 0,
    }
}

async fn concurrent(
    engine: &Engine,
    integration: &Integration,
    input: &Value,
    runs: usize,
    in_flight: usize,
    runtime: Runtime,
) -> Figures {
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
    Figures {
        runs,
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        runs_per_s: runs as f64 / wall.as_secs_f64(),
        cpu: cpu.per(runs).total(),
        engine_per_step: Duration::ZERO,
        peak_mb: memory.total_kb() / 1024,
    }
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
        "loop of 500 items (8 at a time, a POST and a checkpoint each): median {} (target <= 150 ms)  best {}  CPU {} per run",
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
    heap: 512MiB
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
            "100 MB payload, 3 steps ({runtime}): {} (target <= 1 s)  (steps {}, durable writes {})  \
             peak memory {} (+{} MB = {:.1}x the payload; target <= 3x)",
            ms(wall),
            ms(outcome.timings.execution),
            ms(outcome.timings.store),
            megabytes(&peak),
            added / 1024,
            added as f64 * 1024.0 / BIG as f64,
        );
    }
}

/// What one batch of seed runs measured.
struct Figures {
    runs: usize,
    p50: Duration,
    p99: Duration,
    runs_per_s: f64,
    /// CPU per run: this process and the sandbox processes.
    cpu: Duration,
    /// Sequential runs only: wall time minus steps and durable writes, per
    /// step.
    engine_per_step: Duration,
    /// Concurrent runs only.
    peak_mb: u64,
}

/// The speed reference of this run: the seed's six steps as plain code.
struct Floor {
    p50: Duration,
    p99: Duration,
    cpu: Duration,
}

/// Issue 13's targets, stated against its table (measured on one day on
/// this kind of machine): CPU per run, sequential p50 and p99 (2.5x and 3x
/// that table's plain-code p50 of up to 5.1 ms and p99 of up to 10.9 ms),
/// and the comparison engine's runs/s at 16 and at 64 in flight (the middle
/// of its range). This bench's own reference, the seed as plain Rust, is
/// a faster program than the table's plain code (about 2x): it is printed
/// as the day's speed of the machine, and the ratios to it are printed
/// beside the targets, which are not rescaled by it.
const TARGET_CPU_MS_V8: f64 = 7.0;
const TARGET_CPU_MS_QUICKJS: f64 = 3.5;
const TARGET_P50_MS: f64 = 2.5 * 5.1;
const TARGET_P99_MS: f64 = 3.0 * 10.9;
const TABLE_COMPARISON_RUNS_PER_S_16: f64 = 89.0;
const TABLE_COMPARISON_RUNS_PER_S_64: f64 = 100.0;

impl Floor {
    fn judge_sequential(&self, runtime: Runtime, figures: &Figures) {
        let cpu_target = match runtime {
            Runtime::V8 => TARGET_CPU_MS_V8,
            Runtime::QuickJs => TARGET_CPU_MS_QUICKJS,
        };
        let cpu = figures.cpu.as_secs_f64() * 1e3;
        println!(
            "  targets: p50 {} (<= {TARGET_P50_MS:.1} ms; {:.1}x the reference)  p99 {} (<= \
             {TARGET_P99_MS:.1} ms; {:.1}x)  CPU {cpu:.2} ms (<= {cpu_target} ms; {:.1}x the \
             reference's)  engine per step {} (<= 100 µs)",
            ms(figures.p50),
            ratio(figures.p50, self.p50),
            ms(figures.p99),
            ratio(figures.p99, self.p99),
            ratio(figures.cpu, self.cpu),
            us(figures.engine_per_step),
        );
    }

    fn judge_concurrent(&self, runtime: Runtime, in_flight: usize, figures: &Figures) {
        let comparison = if in_flight >= 64 {
            TABLE_COMPARISON_RUNS_PER_S_64
        } else {
            TABLE_COMPARISON_RUNS_PER_S_16
        };
        let factor = match runtime {
            Runtime::V8 => 1.2,
            Runtime::QuickJs => 2.4,
        };
        println!(
            "  targets: {:.0} runs/s (>= {:.0}: {factor}x the comparison engine's {comparison:.0})  \
             CPU {} per run ({:.1}x the reference's)  peak memory {} MB (<= 200 MB)",
            figures.runs_per_s,
            factor * comparison,
            ms(figures.cpu),
            ratio(figures.cpu, self.cpu),
            figures.peak_mb,
        );
    }
}

/// The seed's six steps as plain Rust, run after run in this process: the
/// same requests to the same fixture, the engine's own XML parser, the
/// three transforms in serde_json, the POST with the bearer token. No
/// engine, no isolate, nothing durable: the floor the engine's figures are
/// read against, measured in the same run on the same machine.
async fn plain_floor(base: &str, runs: usize) -> Floor {
    let client = reqwest::Client::new();
    let export = format!("{base}/orders.xml");
    let target = format!("{base}/erp/orders");
    let run = || async {
        let xml = client
            .get(&export)
            .header("Accept", "application/xml")
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the export")
            .text()
            .await
            .expect("the export's body");
        let summary = seed_steps(&xml);
        let body = client
            .post(&target)
            .bearer_auth(TOKEN)
            .header("Content-Type", "application/json")
            .body(serde_json::to_vec(&summary).expect("JSON"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("the ERP takes the summary")
            .bytes()
            .await
            .expect("the ERP's answer");
        let reply: Value = serde_json::from_slice(&body).expect("the ERP answers JSON");
        std::hint::black_box(reply);
    };
    for _ in 0..50 {
        run().await;
    }
    let cpu = CpuSnapshot::take();
    let start = Instant::now();
    let mut latencies = Vec::with_capacity(runs);
    for _ in 0..runs {
        let t = Instant::now();
        run().await;
        latencies.push(t.elapsed());
    }
    let wall = start.elapsed();
    let cpu = CpuSnapshot::take().since(&cpu).per(runs).total();
    latencies.sort();
    let floor = Floor {
        p50: quantile(&latencies, 0.5),
        p99: quantile(&latencies, 0.99),
        cpu,
    };
    println!(
        "reference: the seed's 6 steps as plain Rust (no engine), {runs} runs: p50 {}  p99 {}  \
         {:.0} runs/s  CPU {} per run",
        ms(floor.p50),
        ms(floor.p99),
        runs as f64 / wall.as_secs_f64(),
        ms(cpu),
    );
    floor
}

/// parse, filter, enrich and aggregate of the seed, in serde_json.
fn seed_steps(xml: &str) -> Value {
    use isoflow_sandbox::xml::{AlwaysArray, ParseOptions};
    let options = ParseOptions {
        always_array: AlwaysArray::Names(["order".to_owned(), "line".to_owned()].into()),
    };
    let doc = isoflow_sandbox::xml::parse(xml, &options).expect("the export parses");
    let exported_at = doc["orders"]["@exported"].clone();
    let orders = doc["orders"]["order"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let all = orders.len();
    let open: Vec<Value> = orders
        .into_iter()
        .filter(|o| o["@status"] != "cancelled")
        .collect();
    std::hint::black_box(format!("{} open orders of {all}", open.len()));
    let number = |v: &Value| {
        v.as_str()
            .and_then(|s| s.parse::<f64>().ok())
            .unwrap_or(f64::NAN)
    };
    let enriched: Vec<Value> = open
        .iter()
        .map(|o| {
            let lines: Vec<Value> = o["line"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
                .iter()
                .map(|l| {
                    json!({
                        "sku": l["@sku"],
                        "quantity": number(&l["@qty"]),
                        "amount": number(&l["@qty"]) * number(&l["@price"]),
                    })
                })
                .collect();
            let total: f64 = lines.iter().filter_map(|l| l["amount"].as_f64()).sum();
            json!({ "id": o["@id"], "customer": o["customer"], "lines": lines, "total": total })
        })
        .collect();
    let total: f64 = enriched.iter().filter_map(|o| o["total"].as_f64()).sum();
    json!({
        "exportedAt": exported_at,
        "count": enriched.len(),
        "total": (total * 100.0).round() / 100.0,
        "orders": enriched,
    })
}

/// The payload bytes one run checkpoints: its input, each step's output
/// and its own output, as stored.
async fn checkpointed_bytes(engine: &Engine, integration: &Integration, input: &Value) -> u64 {
    let handle = engine
        .start_run("bench", integration, input.clone())
        .await
        .expect("run starts");
    let run_id = handle.run_id.clone();
    let outcome = handle.wait().await.expect("run ends");
    let store = engine.store().expect("the bench's engine has a store");
    let steps: u64 = store
        .steps("bench", &run_id)
        .expect("steps")
        .iter()
        .filter_map(|s| s.output_bytes)
        .sum();
    let json_len = |v: &Value| serde_json::to_vec(v).map_or(0, |b| b.len() as u64);
    steps + json_len(input) + outcome.output.as_ref().map_or(0, json_len)
}

/// The filesystem type of `dir` (`stat -f`), or why it is unknown.
fn filesystem(dir: &std::path::Path) -> String {
    Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(dir)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map_or_else(
            || "filesystem unknown".to_owned(),
            |o| String::from_utf8_lossy(&o.stdout).trim().to_owned(),
        )
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64().max(1e-9)
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
