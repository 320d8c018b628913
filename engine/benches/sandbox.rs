//! Sandbox benchmark: what code steps cost now that they run in sandbox
//! processes. Prints figures; asserts nothing about time.
//!
//! `cargo bench -p isoflow-engine --bench sandbox` (add `-- --quick` for a
//! smoke run with fewer steps; `--profile dev` to skip the optimised build).
//! Cargo builds the package's `isoflow-sandbox` binary with its benchmarks,
//! next to them, where `SandboxConfig::default()` finds it.
//!
//! First a reference: the round trip of a message between two processes
//! over a socket pair, the floor of any process boundary that does not
//! spin. Per engine:
//! - a trivial step and a ~20 KB-in, ~20 KB-out JSON step on a ready
//!   process (paced, so the process has prepared its next isolate): the
//!   caller's round trip (p50, p99), the time inside the sandbox process
//!   (`Outcome::duration`: isolate taken to output serialised), and the
//!   process boundary, per step round trip minus inside (p50, p99), against
//!   a target of 100 µs. Each as the scheduler places the threads, with this
//!   process and the sandbox process pinned to one CPU, and pinned apart
//!   (sharing a CPU can make the answer wait behind the process's
//!   recycling); and a trivial step with no memory cap;
//! - a trivial step back to back on one process (each step also waits for
//!   the previous isolate's disposal and the next one's creation);
//! - a 5 MB JSON transform;
//! - steps/s and CPU per step with `concurrency` steps in flight, the CPU
//!   of the bench process and of every sandbox process counted (live ones
//!   from `/proc/<pid>/stat`, reaped ones from `RUSAGE_CHILDREN`).
//!
//! Then: the cost of starting a process (time to ready, CPU), the pool's
//! hits, spares and cold starts with 1, 10 and 100 tenants round-robin,
//! private memory per idle process, and V8 with and without its JIT.
//!
//! docs/benchmarks.md records the figures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[path = "common/usage.rs"]
mod usage;

use usage::{Cpu, CpuSnapshot, children, proc_ticks, ticks_per_second};

use isoflow_engine::sandbox::{
    Execution, MemoryCap, Outcome, Program, Runtime, Sandbox, SandboxConfig, SandboxStats, Script,
};

const TRIVIAL: &str = "export default function (input) { return { n: input.n + 1 }; }";

/// ~20 KB of orders in, about as much out.
const ORDERS: &str = r#"
export default function (orders) {
  return orders.map((o) => ({
    id: o.id,
    sku: o.sku.toUpperCase(),
    amount: o.qty * o.price,
    status: o.status === "cancelled" ? "void" : "due",
    note: o.note,
  }));
}
"#;

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

const FIB: &str = r#"
function fib(n) { return n < 2 ? n : fib(n - 1) + fib(n - 2); }
export default function (input) { return { fib: fib(input.n) }; }
"#;

/// The boundary's target per step.
const BOUNDARY_TARGET: Duration = Duration::from_micros(100);

/// Pause between paced steps: longer than a process needs to dispose of
/// its last isolate and prepare the next (~2.5 ms for V8 when optimised).
const PACE: Duration = Duration::from_millis(10);

/// How many steps each part runs.
struct Counts {
    ready: usize,
    back_to_back: usize,
    transform: usize,
    throughput_trivial: [usize; 2],
    throughput_orders: [usize; 2],
    starts: usize,
    tenant_steps: usize,
    jit: usize,
}

impl Counts {
    fn new(quick: bool) -> Counts {
        if quick {
            Counts {
                ready: 50,
                back_to_back: 200,
                transform: 2,
                throughput_trivial: [300, 1_000],
                throughput_orders: [200, 500],
                starts: 6,
                tenant_steps: 100,
                jit: 30,
            }
        } else {
            Counts {
                ready: 500,
                back_to_back: 2_000,
                transform: 20,
                throughput_trivial: [5_000, 20_000],
                throughput_orders: [2_000, 5_000],
                starts: 50,
                tenant_steps: 1_000,
                jit: 300,
            }
        }
    }

    /// Index into the per-engine counts.
    fn engine(runtime: Runtime) -> usize {
        match runtime {
            Runtime::V8 => 0,
            Runtime::QuickJs => 1,
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--echo") {
        return echo();
    }
    let began = Instant::now();
    let quick = std::env::args().any(|a| a == "--quick");
    let counts = Counts::new(quick);
    let config = SandboxConfig::default();
    let program = Program::beside_this_executable().path;
    if !program.is_file() {
        eprintln!(
            "no sandbox program at {}: build it with `cargo build -p isoflow-engine --bin isoflow-sandbox` \
             (cargo bench builds it for the profile it runs)",
            program.display()
        );
        std::process::exit(1);
    }
    println!(
        "sandbox benchmark: {} build{}, {} cores, concurrency {}, processes {}, spare {}, \
         {} clock ticks/s",
        if cfg!(debug_assertions) {
            "debug"
        } else {
            "optimised"
        },
        if quick { ", --quick" } else { "" },
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        config.concurrency,
        config.processes,
        config.spare,
        ticks_per_second(),
    );
    println!("sandbox program: {}", program.display());
    println!();

    println!(
        "== reference: two processes, a socket pair, paced {} ms",
        PACE.as_millis()
    );
    ping_pong(counts.ready);
    println!();

    let engines: Vec<Runtime> = Runtime::ALL
        .into_iter()
        .filter(|r| r.is_available())
        .collect();
    for &runtime in &engines {
        println!("== {runtime}");
        per_engine(runtime, &counts);
        println!();
    }

    println!("== process start (spare 0, processes 1, tenants alternating: a cold start per step)");
    let mut warms = vec![engines.clone()];
    if engines.len() > 1 {
        warms.extend(engines.iter().map(|&r| vec![r]));
    }
    for warm in warms {
        process_start(&warm, counts.starts);
    }
    println!();

    let pool_runtime = engines.first().copied().unwrap_or_default();
    println!(
        "== pool: tenants round-robin, default settings, {} in flight, trivial {pool_runtime} step",
        config.concurrency
    );
    for tenants in [1, 10, 100] {
        tenant_mix(pool_runtime, tenants, counts.tenant_steps);
    }
    println!();

    println!("== memory per idle, ready sandbox process (/proc/<pid>/smaps_rollup)");
    memory(&engines);
    println!();

    if engines.contains(&Runtime::V8) {
        println!(
            "== V8 with and without its JIT (1 process, paced {} ms)",
            PACE.as_millis()
        );
        jit(counts.jit);
        println!();
    }
    println!("took {:.0} s", began.elapsed().as_secs_f64());
}

/// The floor of any boundary between two processes that does not spin: a
/// child process (this bench, run with `--echo`) sends back what it reads
/// on a socket pair, and each message waits for the other side to wake.
/// The boundary figures below are this plus what the sandbox adds.
fn ping_pong(count: usize) {
    use std::io::{Read, Write};
    use std::os::fd::OwnedFd;
    use std::os::unix::net::UnixStream;
    use std::process::{Command, Stdio};

    let (mut ours, theirs) = UnixStream::pair().expect("a socket pair");
    let mut child = Command::new(std::env::current_exe().expect("this bench's path"))
        .arg("--echo")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()
        .expect("the echo process starts");
    for size in [64, 20 * 1024] {
        let message = vec![b'x'; size];
        let mut back = vec![0u8; size];
        let mut times = Vec::with_capacity(count);
        for _ in 0..count {
            std::thread::sleep(PACE);
            let start = Instant::now();
            ours.write_all(&(size as u32).to_le_bytes()).expect("write");
            ours.write_all(&message).expect("write");
            ours.read_exact(&mut back).expect("read");
            times.push(start.elapsed());
        }
        let p = percentiles(times);
        row(
            &format!("{size} bytes each way"),
            format!(
                "round trip p50 {}  p99 {}  ({count} messages)",
                us(p.p50),
                us(p.p99)
            ),
        );
    }
    drop(ours);
    let _ = child.wait();
}

/// The other end of [`ping_pong`]: reads a length and that many bytes from
/// stdin (a socket), sends the bytes back, until the socket closes.
fn echo() {
    use std::io::{Read, Write};
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::net::UnixStream;

    // SAFETY: stdin is the socket the bench passed, owned from here on.
    let mut socket = unsafe { UnixStream::from_raw_fd(std::io::stdin().as_raw_fd()) };
    let mut len = [0u8; 4];
    while socket.read_exact(&mut len).is_ok() {
        let mut message = vec![0u8; u32::from_le_bytes(len) as usize];
        if socket.read_exact(&mut message).is_err() || socket.write_all(&message).is_err() {
            return;
        }
    }
}

/// Latency, boundary, a large transform and throughput for one engine.
fn per_engine(runtime: Runtime, counts: &Counts) {
    let trivial = Work::trivial(runtime);
    let orders_input = orders_json(20 * 1024);
    let orders = Work::new(runtime, "orders.js", ORDERS, &orders_input);

    // One process serves every step (it is never recycled), so that it can
    // be pinned to a CPU.
    let single = sandbox(SandboxConfig {
        concurrency: 1,
        steps_per_process: u32::MAX,
        warm: vec![runtime],
        ..SandboxConfig::default()
    });
    warm_up(&single, &trivial);
    warm_up(&single, &orders);
    for placement in Placement::ALL {
        let Some(pinned) = placement.apply(&single) else {
            continue;
        };
        let ready = paced(&single, &trivial, counts.ready);
        print_boundary(&format!("trivial step, {placement}"), &ready);
        let twenty = paced(&single, &orders, counts.ready);
        print_boundary(
            &format!(
                "{} KB in, {} KB out, {placement}",
                orders_input.len() / 1024,
                twenty.output / 1024
            ),
            &twenty,
        );
        drop(pinned);
    }
    let back = samples(
        (0..counts.back_to_back)
            .map(|_| trivial.run(&single))
            .collect(),
    );
    row(
        "trivial step, back to back",
        format!(
            "round trip p50 {}  p99 {}  inside p50 {}  (1 process: each step also waits for \
             the last isolate's disposal and the next one's creation; {} steps)",
            ms(back.round_trip.p50),
            ms(back.round_trip.p99),
            ms(back.inside.p50),
            back.count,
        ),
    );
    drop(single);

    // How much of the boundary is setting the memory cap before each step.
    let uncapped = sandbox(SandboxConfig {
        concurrency: 1,
        steps_per_process: u32::MAX,
        warm: vec![runtime],
        memory: MemoryCap::Off,
        ..SandboxConfig::default()
    });
    warm_up(&uncapped, &trivial);
    let placement = Placement::ALL
        .into_iter()
        .rev()
        .find_map(|p| Some((p, p.apply(&uncapped)?)));
    let ready = paced(&uncapped, &trivial, counts.ready);
    if let Some((placement, pinned)) = placement {
        print_boundary(&format!("trivial step, no memory cap, {placement}"), &ready);
        drop(pinned);
    }
    drop(uncapped);

    let pooled = sandbox(SandboxConfig {
        warm: vec![runtime],
        ..SandboxConfig::default()
    });
    let input = orders_json(5 * 1024 * 1024);
    let transform = Work::new(runtime, "transform.js", TRANSFORM, &input);
    let big = samples(
        (0..counts.transform)
            .map(|_| transform.run(&pooled))
            .collect(),
    );
    row(
        "5 MB JSON transform",
        format!(
            "round trip p50 {}  p99 {}  inside p50 {}  ({} runs, output {} KB)",
            ms(big.round_trip.p50),
            ms(big.round_trip.p99),
            ms(big.inside.p50),
            big.count,
            big.output / 1024
        ),
    );

    let in_flight = pooled.config().concurrency;
    let engine = Counts::engine(runtime);
    for (name, work, steps) in [
        ("trivial step", &trivial, counts.throughput_trivial[engine]),
        ("20 KB step", &orders, counts.throughput_orders[engine]),
    ] {
        let load = load(&pooled, in_flight, steps, |_| work.clone());
        // Issue 13's target for fresh-isolate steps on 2 cores.
        let target = match (name, runtime) {
            ("trivial step", Runtime::V8) => "  (target >= 1,000/s on 2 cores)",
            ("trivial step", Runtime::QuickJs) => "  (target >= 10,000/s on 2 cores)",
            _ => "",
        };
        row(
            &format!("{name}, {in_flight} in flight"),
            format!(
                "{:.0} steps/s{target}  CPU per step {} ({})  ({steps} steps)",
                load.per_second(),
                us(load.cpu.total() / steps as u32),
                per_step(&load.cpu, steps),
            ),
        );
    }
}

/// One line of figures under a label.
fn row(label: &str, figures: String) {
    println!("{:<44}{figures}", format!("{label}:"));
}

/// Where the node's threads and the sandbox process run while a boundary
/// is measured. As the scheduler likes, the process is as likely as not to
/// share a CPU with the node's thread that waits for its answer; then that
/// thread may wait behind the process disposing of the step's isolate and
/// preparing the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Scheduled,
    /// This process on one CPU, the sandbox process on another.
    Apart,
    /// Both on one CPU.
    Together,
}

impl Placement {
    const ALL: [Placement; 3] = [Placement::Scheduled, Placement::Together, Placement::Apart];

    /// Pins this process's threads and the threads of the process serving
    /// `sandbox`'s anonymous tenant; `None` where the machine cannot.
    fn apply(self, sandbox: &Sandbox) -> Option<Pinned> {
        let allowed = affinity(0)?;
        let process = sandbox
            .stats()
            .processes
            .iter()
            .find(|p| p.tenant.as_deref() == Some(""))
            .map(|p| p.pid)?;
        let (ours, theirs) = match self {
            Placement::Scheduled => {
                return Some(Pinned {
                    process,
                    allowed: allowed.clone(),
                });
            }
            Placement::Apart if allowed.len() >= 2 => (&allowed[..1], &allowed[1..2]),
            Placement::Apart => return None,
            Placement::Together => (&allowed[..1], &allowed[..1]),
        };
        let pinned = Pinned {
            process,
            allowed: allowed.clone(),
        };
        (pin(std::process::id(), ours) && pin(process, theirs)).then_some(pinned)
    }
}

impl std::fmt::Display for Placement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Placement::Scheduled => "ready process",
            Placement::Apart => "pinned apart",
            Placement::Together => "pinned to 1 CPU",
        })
    }
}

/// Undoes a [`Placement`] when dropped.
struct Pinned {
    process: u32,
    allowed: Vec<usize>,
}

impl Drop for Pinned {
    fn drop(&mut self) {
        pin(std::process::id(), &self.allowed);
        pin(self.process, &self.allowed);
    }
}

/// The CPUs thread `tid` (0: the calling thread) may run on.
fn affinity(tid: i32) -> Option<Vec<usize>> {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most the size it is given into `set`.
    let rc = unsafe { libc::sched_getaffinity(tid, std::mem::size_of_val(&set), &mut set) };
    if rc != 0 {
        return None;
    }
    let cpus = (0..libc::CPU_SETSIZE as usize)
        // SAFETY: CPU_ISSET reads a bit of the set, below its size.
        .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &set) })
        .collect();
    Some(cpus)
}

/// Lets every thread of process `pid` run on `cpus` only.
fn pin(pid: u32, cpus: &[usize]) -> bool {
    // SAFETY: cpu_set_t is plain data; all zeroes is the empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    for &cpu in cpus {
        // SAFETY: sets a bit of the set; `cpu` came from the kernel's own set.
        unsafe { libc::CPU_SET(cpu, &mut set) };
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .filter_map(|t| t.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .all(|tid| {
            // SAFETY: the kernel reads the set of the size it is given.
            unsafe { libc::sched_setaffinity(tid, std::mem::size_of_val(&set), &set) == 0 }
        })
}

/// A step to run again and again, whose, and the output it must give
/// (when known).
#[derive(Clone)]
struct Work {
    tenant: Arc<str>,
    runtime: Runtime,
    script: Script,
    input: Arc<str>,
    expect: Option<Arc<str>>,
}

impl Work {
    fn new(runtime: Runtime, filename: &str, source: &str, input: &str) -> Work {
        Work {
            tenant: Arc::from(""),
            runtime,
            script: Script::new(filename, source),
            input: input.into(),
            expect: None,
        }
    }

    fn trivial(runtime: Runtime) -> Work {
        Work {
            expect: Some(r#"{"n":42}"#.into()),
            ..Work::new(runtime, "trivial.js", TRIVIAL, r#"{"n":41}"#)
        }
    }

    fn for_tenant(&self, tenant: &Arc<str>) -> Work {
        Work {
            tenant: tenant.clone(),
            ..self.clone()
        }
    }

    fn execution(&self) -> Execution {
        Execution::new(self.runtime, self.script.clone(), self.input.clone())
            .tenant(self.tenant.clone())
    }

    /// Runs once on `sandbox` and times the caller's round trip.
    fn run(&self, sandbox: &Sandbox) -> Sample {
        let start = Instant::now();
        let outcome = sandbox.execute_blocking(self.execution());
        let round_trip = start.elapsed();
        Sample {
            round_trip,
            inside: outcome.duration,
            output: self.check(&outcome),
        }
    }

    /// The output's length, once checked.
    fn check(&self, outcome: &Outcome) -> usize {
        let output = match &outcome.result {
            Ok(output) => output,
            Err(error) => panic!("{} failed: {error}", self.script.filename),
        };
        if let Some(expect) = &self.expect {
            assert_eq!(output.as_str(), &**expect, "{}", self.script.filename);
        }
        output.len()
    }
}

fn sandbox(config: SandboxConfig) -> Sandbox {
    let sandbox = Sandbox::new(config).expect("the sandbox starts");
    settle(&sandbox);
    sandbox
}

/// A few steps so that the process has compiled and cached the module.
fn warm_up(sandbox: &Sandbox, work: &Work) {
    for _ in 0..5 {
        std::thread::sleep(PACE);
        work.run(sandbox);
    }
}

/// One step's times as the caller and the sandbox process saw them.
#[derive(Debug, Clone, Copy)]
struct Sample {
    round_trip: Duration,
    inside: Duration,
    /// The output's length in bytes.
    output: usize,
}

impl Sample {
    /// What the process boundary added: everything but the step itself.
    fn boundary(&self) -> Duration {
        self.round_trip.saturating_sub(self.inside)
    }
}

struct Percentiles {
    p50: Duration,
    p99: Duration,
}

fn percentiles(mut samples: Vec<Duration>) -> Percentiles {
    samples.sort();
    if samples.is_empty() {
        return Percentiles {
            p50: Duration::ZERO,
            p99: Duration::ZERO,
        };
    }
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
    }
}

struct Samples {
    count: usize,
    output: usize,
    round_trip: Percentiles,
    inside: Percentiles,
    boundary: Percentiles,
}

fn samples(all: Vec<Sample>) -> Samples {
    Samples {
        count: all.len(),
        output: all.last().map_or(0, |s| s.output),
        round_trip: percentiles(all.iter().map(|s| s.round_trip).collect()),
        inside: percentiles(all.iter().map(|s| s.inside).collect()),
        boundary: percentiles(all.iter().map(Sample::boundary).collect()),
    }
}

/// `count` steps one at a time, `PACE` apart.
fn paced(sandbox: &Sandbox, work: &Work, count: usize) -> Samples {
    samples(
        (0..count)
            .map(|_| {
                std::thread::sleep(PACE);
                work.run(sandbox)
            })
            .collect(),
    )
}

fn print_boundary(name: &str, s: &Samples) {
    let met = if s.boundary.p50 < BOUNDARY_TARGET {
        "met"
    } else {
        "not met"
    };
    row(
        name,
        format!(
            "round trip p50 {}  p99 {}  inside p50 {}  boundary p50 {}  p99 {}  \
             (target p50 < {}: {met}; {} steps, {} ms apart)",
            ms(s.round_trip.p50),
            ms(s.round_trip.p99),
            ms(s.inside.p50),
            us(s.boundary.p50),
            us(s.boundary.p99),
            us(BOUNDARY_TARGET),
            s.count,
            PACE.as_millis(),
        ),
    );
}

/// What a load run measured.
struct Load {
    wall: Duration,
    steps: usize,
    round_trips: Vec<Duration>,
    cpu: Cpu,
}

impl Load {
    fn per_second(&self) -> f64 {
        self.steps as f64 / self.wall.as_secs_f64()
    }
}

/// Runs `steps` executions with `in_flight` callers, each sending its next
/// step when its last one is answered. CPU is counted from a settled pool
/// to a settled pool, so it includes preparing the next isolates and
/// replacing processes the steps used up.
fn load(
    sandbox: &Sandbox,
    in_flight: usize,
    steps: usize,
    work: impl Fn(usize) -> Work + Sync,
) -> Load {
    settle(sandbox);
    let before = CpuSnapshot::take();
    let next = AtomicUsize::new(0);
    let start = Instant::now();
    let round_trips: Vec<Duration> = std::thread::scope(|scope| {
        let callers: Vec<_> = (0..in_flight.max(1))
            .map(|_| {
                scope.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= steps {
                            break mine;
                        }
                        mine.push(work(n).run(sandbox).round_trip);
                    }
                })
            })
            .collect();
        callers
            .into_iter()
            .flat_map(|c| c.join().expect("caller thread"))
            .collect()
    });
    let wall = start.elapsed();
    settle(sandbox);
    let cpu = CpuSnapshot::take().since(&before);
    Load {
        wall,
        steps,
        round_trips,
        cpu,
    }
}

/// Starting a process: every step of a pool that holds one process and no
/// spare, for tenants in turn, waits for a new process.
fn process_start(warm: &[Runtime], count: usize) {
    let runtime = warm.first().copied().unwrap_or_default();
    let sandbox = sandbox(SandboxConfig {
        concurrency: 1,
        processes: 1,
        spare: 0,
        warm: warm.to_vec(),
        ..SandboxConfig::default()
    });
    let trivial = Work::trivial(runtime);
    let tenants = [
        trivial.for_tenant(&Arc::from("a")),
        trivial.for_tenant(&Arc::from("b")),
    ];
    // The first step takes the process the sandbox started with.
    tenants[1].run(&sandbox);
    settle(&sandbox);
    let stats_before = sandbox.stats();
    let cpu_before = CpuSnapshot::take();
    let cold: Vec<Sample> = (0..count).map(|i| tenants[i % 2].run(&sandbox)).collect();
    settle(&sandbox);
    let cpu = CpuSnapshot::take().since(&cpu_before);
    let stats = delta(&sandbox.stats(), &stats_before);
    let cold = samples(cold);
    let started = stats.started.max(1);
    let names: Vec<String> = warm.iter().map(ToString::to_string).collect();
    row(
        &format!("warm {}", names.join("+")),
        format!(
            "time to ready {} (mean of {} starts)  cold step round trip p50 {}  CPU per start {} \
             ({}; with one trivial step and stopping the process it replaced)",
            ms(stats.start_time / started as u32),
            stats.started,
            ms(cold.round_trip.p50),
            us(cpu.total() / started as u32),
            per_step(&cpu, started as usize),
        ),
    );
}

/// Hits, spares and cold starts with `tenants` tenants in turn.
fn tenant_mix(runtime: Runtime, tenants: usize, steps: usize) {
    let sandbox = sandbox(SandboxConfig::default());
    let trivial = Work::trivial(runtime);
    let work: Vec<Work> = (0..tenants)
        .map(|i| trivial.for_tenant(&Arc::from(format!("tenant-{i}"))))
        .collect();
    let in_flight = sandbox.config().concurrency;
    let before = sandbox.stats();
    let load = load(&sandbox, in_flight, steps, |n| work[n % tenants].clone());
    let stats = delta(&sandbox.stats(), &before);
    let latency = percentiles(load.round_trips.clone());
    row(
        &format!("{tenants} tenant{}", if tenants == 1 { "" } else { "s" }),
        format!(
            "{:.0} steps/s  hits {}  spares taken {}  cold starts {}  processes started {}  \
             evicted {}  p50 {}  p99 {}  CPU per step {}  ({steps} steps)",
            load.per_second(),
            stats.hits,
            stats.spares_taken,
            stats.cold_starts,
            stats.started,
            stats.evicted,
            ms(latency.p50),
            ms(latency.p99),
            us(load.cpu.total() / steps as u32),
        ),
    );
}

/// The counters that grew from `before` to `after`.
fn delta(after: &SandboxStats, before: &SandboxStats) -> SandboxStats {
    SandboxStats {
        steps: after.steps - before.steps,
        hits: after.hits - before.hits,
        spares_taken: after.spares_taken - before.spares_taken,
        cold_starts: after.cold_starts - before.cold_starts,
        started: after.started - before.started,
        start_time: after.start_time.saturating_sub(before.start_time),
        evicted: after.evicted - before.evicted,
        recycled: after.recycled - before.recycled,
        failed: after.failed - before.failed,
        processes: after.processes.clone(),
    }
}

/// Private memory of idle processes: spares that never ran a step, and
/// processes that ran steps of both engines and prepared their next
/// isolates.
fn memory(engines: &[Runtime]) {
    let sandbox = sandbox(SandboxConfig::default());
    for tenant in 0..4 {
        for &runtime in engines {
            Work::trivial(runtime)
                .for_tenant(&Arc::from(format!("memory-{tenant}")))
                .run(&sandbox);
        }
    }
    settle(&sandbox);
    let mut groups: BTreeMap<&str, Vec<Smaps>> = BTreeMap::new();
    let mut unreadable = 0;
    for process in sandbox.stats().processes {
        let group = if process.tenant.is_some() {
            "idle after steps"
        } else {
            "spare, no step yet"
        };
        match Smaps::read(process.pid) {
            Some(smaps) => groups.entry(group).or_default().push(smaps),
            None => unreadable += 1,
        }
    }
    for (group, all) in &groups {
        let n = all.len() as u64;
        let mean = |f: fn(&Smaps) -> u64| all.iter().map(f).sum::<u64>() / n.max(1);
        let private = |s: &Smaps| s.private_clean + s.private_dirty;
        let (low, high) = (
            all.iter().map(private).min().unwrap_or(0),
            all.iter().map(private).max().unwrap_or(0),
        );
        row(
            group,
            format!(
                "private {} (range {}–{})  Pss {}  Rss {}  (mean of {n} processes)",
                kb(mean(private)),
                kb(low),
                kb(high),
                kb(mean(|s| s.pss)),
                kb(mean(|s| s.rss)),
            ),
        );
    }
    if unreadable > 0 {
        println!("({unreadable} processes' smaps_rollup could not be read)");
    }
}

/// Memory figures from `/proc/<pid>/smaps_rollup`, in bytes.
struct Smaps {
    rss: u64,
    pss: u64,
    private_clean: u64,
    private_dirty: u64,
}

impl Smaps {
    fn read(pid: u32) -> Option<Smaps> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
        let field = |name: &str| -> Option<u64> {
            let line = text.lines().find_map(|l| l.strip_prefix(name))?;
            let kb: u64 = line.trim().trim_end_matches("kB").trim().parse().ok()?;
            Some(kb * 1024)
        };
        Some(Smaps {
            rss: field("Rss:")?,
            pss: field("Pss:")?,
            private_clean: field("Private_Clean:")?,
            private_dirty: field("Private_Dirty:")?,
        })
    }
}

/// A trivial step and fib(25) on V8 with its JIT and with `jitless`.
fn jit(count: usize) {
    let trivial = Work::trivial(Runtime::V8);
    let fib = Work {
        expect: Some(r#"{"fib":75025}"#.into()),
        ..Work::new(Runtime::V8, "fib.js", FIB, r#"{"n":25}"#)
    };
    let mut rows = Vec::new();
    for jitless in [false, true] {
        let sandbox = sandbox(SandboxConfig {
            concurrency: 1,
            jitless,
            warm: vec![Runtime::V8],
            ..SandboxConfig::default()
        });
        warm_up(&sandbox, &trivial);
        warm_up(&sandbox, &fib);
        let t = paced(&sandbox, &trivial, count);
        let f = paced(&sandbox, &fib, count);
        rows.push((jitless, t, f));
    }
    for (jitless, t, f) in rows {
        row(
            if jitless { "jitless" } else { "JIT" },
            format!(
                "trivial step p50 {} (inside {})  fib(25) p50 {} (inside {})  ({} steps each)",
                ms(t.round_trip.p50),
                ms(t.inside.p50),
                ms(f.round_trip.p50),
                ms(f.inside.p50),
                t.count,
            ),
        );
    }
}

/// Waits until the pool is at rest: every child process is one the pool
/// lists (none starting, none waiting to be reaped), no step is running,
/// the spares are there, and no process is using CPU (preparing its next
/// isolate). Gives up after 10 s: a figure then includes some of that work.
fn settle(sandbox: &Sandbox) {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last: Option<u64> = None;
    while Instant::now() < deadline {
        let stats = sandbox.stats();
        let listed: BTreeSet<u32> = stats.processes.iter().map(|p| p.pid).collect();
        let spares = stats
            .processes
            .iter()
            .filter(|p| p.tenant.is_none())
            .count();
        let at_rest = listed == children()
            && stats.processes.iter().all(|p| !p.busy)
            && spares >= sandbox.config().spare;
        let ticks: u64 = listed.iter().filter_map(|&pid| proc_ticks(pid)).sum();
        if at_rest && last == Some(ticks) {
            return;
        }
        last = at_rest.then_some(ticks);
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// CPU per step, split by who used it.
fn per_step(cpu: &Cpu, steps: usize) -> String {
    let each = cpu.per(steps);
    format!(
        "bench process {} + sandbox processes {}",
        us(each.own),
        us(each.sandboxes)
    )
}

/// Orders as JSON text of about `target_bytes`.
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

fn ms(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn us(d: Duration) -> String {
    format!("{:.0} µs", d.as_secs_f64() * 1e6)
}

fn kb(bytes: u64) -> String {
    format!("{} KB", bytes / 1024)
}
