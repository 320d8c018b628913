//! Sandbox benchmark: prints figures for both engines side by side.
//!
//! `cargo bench -p isoflow-engine --bench sandbox` (add `-- --quick` for a
//! shorter run). What it measures, per engine:
//! - latency of a trivial step taken from a ready pool (p50, p99): the
//!   caller's round trip, including the hand-off to the sandbox thread;
//! - the same when every step pays for a fresh isolate on the spot
//!   (one thread, no idle time to prepare the next one);
//! - a 5 MB JSON transform (parse, map/filter, serialise) in a fresh isolate;
//! - sustained fresh-isolate steps per second on all sandbox threads, with
//!   the CPU time each step costs;
//! - resident memory per live (ready) isolate.
//!
//! Nothing here asserts a time; docs/benchmarks.md records the figures.

use std::time::{Duration, Instant};

use isoflow_engine::sandbox::{Execution, Limits, Runtime, Sandbox, SandboxConfig, Script};

const TRIVIAL: &str = "export default function (input) { return { n: input.n + 1 }; }";

const TRANSFORM: &str = r#"
export default function (orders) {
  const open = orders.filter((o) => o.status !== "cancelled");
  return {
    count: open.length,
    total: open.reduce((sum, o) => sum + o.qty * o.price, 0),
    lines: open.map((o) => ({ id: o.id, sku: o.sku.toUpperCase(), amount: o.qty * o.price })),
  };
}
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--measure-memory") {
        measure_memory(args.get(at + 1).map_or("none", String::as_str));
        return;
    }
    let quick = args.iter().any(|a| a == "--quick");
    let scale = if quick { 10 } else { 1 };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!(
        "sandbox benchmark: {threads} sandbox threads, {} build",
        profile()
    );
    println!();
    for runtime in Runtime::ALL.into_iter().filter(|r| r.is_available()) {
        println!("== {runtime}");
        let single = pool(1, runtime);
        // Paced so that the thread has prepared its next isolate before each
        // step: the latency a step sees when the pool is not saturated.
        let ready = sequential(
            &single,
            runtime,
            1_000 / scale,
            Some(Duration::from_millis(5)),
        );
        println!(
            "trivial step, ready isolate:   p50 {}  p99 {}  (caller round trip, {} steps)",
            ms(ready.p50),
            ms(ready.p99),
            ready.count
        );
        // Back to back: every step also waits for the previous isolate's
        // disposal and the next one's creation.
        let cold = sequential(&single, runtime, 2_000 / scale, None);
        println!(
            "trivial step, back to back:    p50 {}  p99 {}  (1 thread: dispose+create+run)",
            ms(cold.p50),
            ms(cold.p99)
        );
        drop(single);

        let pooled = pool(threads, runtime);
        let transform = json_transform(&pooled, runtime, 20 / scale.min(10));
        println!(
            "5 MB JSON transform:           p50 {}  p99 {}  ({} runs, output {} KB)",
            ms(transform.0.p50),
            ms(transform.0.p99),
            transform.0.count,
            transform.1 / 1024
        );

        let steps = match runtime {
            Runtime::V8 => 20_000,
            Runtime::QuickJs => 60_000,
        } / scale;
        let (per_sec, cpu_per_step) = throughput(&pooled, runtime, steps);
        println!(
            "throughput on {threads} threads:        {per_sec:.0} steps/s, {} CPU per step ({steps} steps)",
            us(cpu_per_step)
        );
        drop(pooled);

        let per_isolate = memory_per_isolate(runtime);
        println!(
            "memory per live isolate:       {:.0} KB RSS (measured over {LIVE} ready isolates)",
            per_isolate / 1024.0
        );
        println!();
    }
}

fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

fn pool(threads: usize, runtime: Runtime) -> Sandbox {
    let sandbox = Sandbox::new(SandboxConfig {
        threads,
        limits: Limits::default(),
        warm: vec![runtime],
    })
    .expect("sandbox starts");
    // One step per thread so every thread has created its engine.
    for _ in 0..threads * 4 {
        step(&sandbox, runtime, 0);
    }
    sandbox
}

fn step(sandbox: &Sandbox, runtime: Runtime, n: u64) -> Duration {
    let exec = Execution::new(
        runtime,
        Script::new("bench.js", TRIVIAL),
        format!("{{\"n\":{n}}}"),
    );
    let start = Instant::now();
    let outcome = sandbox.execute_blocking(exec);
    let elapsed = start.elapsed();
    let output = outcome.result.expect("trivial step succeeds");
    assert_eq!(output, format!("{{\"n\":{}}}", n + 1));
    elapsed
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
    count: usize,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        count: samples.len(),
    }
}

fn sequential(
    sandbox: &Sandbox,
    runtime: Runtime,
    count: usize,
    pace: Option<Duration>,
) -> Percentiles {
    percentiles(
        (0..count as u64)
            .map(|n| {
                if let Some(pause) = pace {
                    std::thread::sleep(pause);
                }
                step(sandbox, runtime, n)
            })
            .collect(),
    )
}

fn orders_json(target_bytes: usize) -> String {
    let mut out = String::with_capacity(target_bytes + 256);
    out.push('[');
    let mut id = 0;
    while out.len() < target_bytes {
        if id > 0 {
            out.push(',');
        }
        let status = if id % 7 == 0 { "cancelled" } else { "open" };
        out.push_str(&format!(
            "{{\"id\":{id},\"sku\":\"sku-{:05}\",\"qty\":{},\"price\":{}.25,\"status\":\"{status}\",\"note\":\"order number {id} for customer {}\"}}",
            id % 10_000,
            id % 9 + 1,
            id % 100,
            id % 997
        ));
        id += 1;
    }
    out.push(']');
    out
}

fn json_transform(sandbox: &Sandbox, runtime: Runtime, runs: usize) -> (Percentiles, usize) {
    let input: std::sync::Arc<str> = orders_json(5 * 1024 * 1024).into();
    let mut output_len = 0;
    let samples = (0..runs.max(3))
        .map(|_| {
            let exec = Execution::new(
                runtime,
                Script::new("transform.js", TRANSFORM),
                input.clone(),
            );
            let start = Instant::now();
            let outcome = sandbox.execute_blocking(exec);
            let elapsed = start.elapsed();
            output_len = outcome.result.expect("transform succeeds").len();
            elapsed
        })
        .collect();
    (percentiles(samples), output_len)
}

fn throughput(sandbox: &Sandbox, runtime: Runtime, steps: usize) -> (f64, Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .build()
        .expect("tokio runtime");
    let cpu_before = cpu_time();
    let start = Instant::now();
    rt.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let in_flight = 64;
        for n in 0..steps as u64 {
            if tasks.len() >= in_flight {
                tasks.join_next().await;
            }
            let sandbox = sandbox.clone();
            tasks.spawn(async move {
                let exec = Execution::new(
                    runtime,
                    Script::new("bench.js", TRIVIAL),
                    format!("{{\"n\":{n}}}"),
                );
                sandbox
                    .execute(exec)
                    .await
                    .result
                    .expect("trivial step succeeds")
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    let wall = start.elapsed();
    let cpu = cpu_time() - cpu_before;
    (steps as f64 / wall.as_secs_f64(), cpu / steps as u32)
}

/// User + system CPU time of the whole process.
fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("procfs");
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("stat has a command name")
        .1
        .split_whitespace()
        .collect();
    let ticks: u64 =
        fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime");
    // Linux reports in USER_HZ, 100 on every architecture Isoflow targets.
    Duration::from_millis(ticks * 10)
}

fn rss_bytes() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("procfs");
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kb * 1024.0
}

/// Ready isolates held by the memory measurement.
const LIVE: usize = 32;

/// RSS per live (ready) isolate: in fresh child processes, so that memory
/// freed by earlier measurements cannot be reused and hide the growth.
/// Threads holding an isolate minus the same threads holding none.
fn memory_per_isolate(runtime: Runtime) -> f64 {
    let child = |warm: &str| -> f64 {
        let out = std::process::Command::new(std::env::current_exe().expect("own path"))
            .args(["--measure-memory", warm])
            .output()
            .expect("child runs");
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("child prints bytes")
    };
    let with = child(&runtime.to_string());
    let without = child("none");
    (with - without) / LIVE as f64
}

/// In the child: RSS growth from starting a sandbox of LIVE threads that
/// each prepare one isolate of `warm` (or none), printed in bytes.
fn measure_memory(warm: &str) {
    let warm = match warm {
        "v8" => vec![Runtime::V8],
        "quickjs" => vec![Runtime::QuickJs],
        _ => vec![],
    };
    // Start the engines (V8's process-wide state) before the baseline.
    drop(Sandbox::new(SandboxConfig {
        threads: 1,
        limits: Limits::default(),
        warm: warm.clone(),
    }));
    let before = rss_bytes();
    let sandbox = Sandbox::new(SandboxConfig {
        threads: LIVE,
        limits: Limits::default(),
        warm,
    })
    .expect("sandbox starts");
    // Every thread has its isolate once RSS stops growing.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = rss_bytes();
    loop {
        std::thread::sleep(Duration::from_millis(200));
        let now = rss_bytes();
        if (now - last).abs() < 16.0 * 1024.0 || Instant::now() > deadline {
            break;
        }
        last = now;
    }
    println!("{}", rss_bytes() - before);
    drop(sandbox);
}

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}
