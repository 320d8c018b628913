//! The sandbox process assumed taken over: each test runs steps on the test
//! program (`isoflow-sandbox-hooked`), whose `isoflowTestHook` does what an
//! exploit that escaped its isolate would do, and checks that
//!
//! - forbidden system calls (open, socket, exec, ptrace, fork, signalling
//!   the node, executable memory without a JIT) are refused or end the
//!   process, while the same calls work in this (the node's) process;
//! - the process really is locked down, seen from outside through `/proc`:
//!   uid, capabilities, no_new_privs, seccomp, namespaces, root, limits,
//!   environment, descriptors;
//! - a crash, an abort or a `kill -9` costs exactly the one step, with a
//!   clear error, the next step runs, a run's retry policy applies, and
//!   1,000 of them do not grow the node's memory;
//! - memory outside the heap and time spent in native code are capped from
//!   outside;
//! - a process serves one tenant, and is replaced after its quota of steps.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use isoflow_engine::model;
use isoflow_engine::run::{Engine, EngineConfig};
use isoflow_engine::sandbox::{
    Execution, Limits, MemoryCap, Outcome, Program, Runtime, Sandbox, SandboxConfig, Script,
    StepError,
};
use isoflow_engine::store::RunStatus;
use serde_json::json;

fn hooked() -> Program {
    Program {
        path: PathBuf::from(env!("CARGO_BIN_EXE_isoflow-sandbox-hooked")),
        args: Vec::new(),
    }
}

fn config() -> SandboxConfig {
    SandboxConfig {
        program: hooked(),
        concurrency: 2,
        ..SandboxConfig::default()
    }
}

fn sandbox() -> Sandbox {
    Sandbox::new(config()).expect("the sandbox starts")
}

fn hook_step(rt: Runtime, name: &str, arg: &str) -> Execution {
    let source = format!("export default () => isoflowTestHook({name:?}, {arg:?});");
    Execution::new(rt, Script::new("hook.js", source), "null")
}

fn run_hook(sandbox: &Sandbox, rt: Runtime, name: &str, arg: &str) -> Outcome {
    sandbox.execute_blocking(hook_step(rt, name, arg))
}

fn crashed(outcome: &Outcome) -> String {
    match &outcome.result {
        Err(StepError::Crashed { reason }) => reason.clone(),
        other => panic!("expected the sandbox process to end, got {other:?}"),
    }
}

fn assert_healthy(sandbox: &Sandbox, rt: Runtime, after: &str) {
    let outcome = sandbox.execute_blocking(Execution::new(
        rt,
        Script::new("ok.js", "export default (n) => n * 2;"),
        "21",
    ));
    assert_eq!(
        outcome.value().map_err(|e| e.to_string()),
        Ok(json!(42)),
        "{rt}: the next step after {after}"
    );
}

#[test]
fn forbidden_system_calls_are_refused_or_end_the_process() {
    let sandbox = sandbox();
    for rt in Runtime::ALL {
        let open = run_hook(&sandbox, rt, "open", "/etc/passwd");
        assert_eq!(
            open.value().map_err(|e| e.to_string()),
            Ok(json!("refused: Operation not permitted (os error 1)")),
            "{rt}: open"
        );
        for (hook, call) in [
            ("socket", "socket"),
            ("execve", "execve"),
            ("ptrace", "ptrace"),
            ("fork", "clone"),
            ("kill-node", "kill"),
        ] {
            let reason = crashed(&run_hook(&sandbox, rt, hook, ""));
            assert!(
                reason.starts_with("it made a system call the sandbox forbids")
                    && reason.contains(&format!("({call})")),
                "{rt}: {hook}: {reason}"
            );
            assert_healthy(&sandbox, rt, hook);
        }
    }
}

#[test]
fn the_same_calls_work_outside_the_sandbox() {
    // SAFETY: plain system calls on values this test owns.
    unsafe {
        let fd = libc::open(c"/etc/passwd".as_ptr(), libc::O_RDONLY);
        assert!(fd >= 0, "open: {}", std::io::Error::last_os_error());
        libc::close(fd);
        let socket = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
        assert!(socket >= 0, "socket: {}", std::io::Error::last_os_error());
        libc::close(socket);
    }
    let status = std::process::Command::new("/bin/true")
        .status()
        .expect("fork and execve");
    assert!(status.success());
    // ptrace: a child asks to be traced, and the test process may do it.
    // SAFETY: the child only calls ptrace and _exit.
    unsafe {
        let child = libc::fork();
        if child == 0 {
            let rc = libc::ptrace(
                libc::PTRACE_TRACEME,
                0,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            );
            libc::_exit(if rc == 0 { 0 } else { 1 });
        }
        let mut status = 0;
        libc::waitpid(child, &mut status, 0);
        assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0);
    }
}

/// Runs a step that spins until `release` is dropped... or rather until its
/// time limit, and returns the pid of the process running it.
fn busy_process(sandbox: &Sandbox, tenant: &str) -> u32 {
    let start = Instant::now();
    loop {
        let stats = sandbox.stats();
        if let Some(p) = stats
            .processes
            .iter()
            .find(|p| p.busy && p.tenant.as_deref() == Some(tenant))
        {
            return p.pid;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "no busy process");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn spin_in_background(
    sandbox: &Sandbox,
    tenant: &str,
    ms: u64,
) -> std::thread::JoinHandle<Outcome> {
    let sandbox = sandbox.clone();
    let tenant = tenant.to_owned();
    std::thread::spawn(move || {
        let limits = Limits {
            timeout: Duration::from_millis(ms),
            ..Limits::default()
        };
        sandbox.execute_blocking(
            Execution::new(
                Runtime::V8,
                Script::new("spin.js", "export default () => { while (true) {} };"),
                "null",
            )
            .limits(limits)
            .tenant(tenant),
        )
    })
}

fn status_field(pid: u32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
        .trim()
        .to_owned()
}

#[test]
fn the_process_is_locked_down_seen_from_outside() {
    let sandbox = sandbox();
    let spinning = spin_in_background(&sandbox, "outside", 5_000);
    let pid = busy_process(&sandbox, "outside");

    let root = unsafe { libc::geteuid() } == 0;
    let uid = status_field(pid, "Uid");
    if root {
        assert_eq!(uid, "65534\t65534\t65534\t65534", "runs as nobody");
        assert_eq!(status_field(pid, "Gid"), "65534\t65534\t65534\t65534");
    }
    assert_eq!(status_field(pid, "NoNewPrivs"), "1");
    assert_eq!(status_field(pid, "Seccomp"), "2", "a seccomp filter");
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).expect("tasks") {
        let task = task.expect("task").path();
        let status = std::fs::read_to_string(task.join("status")).expect("task status");
        for field in ["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"] {
            let line = status
                .lines()
                .find(|l| l.starts_with(field))
                .expect("capability line");
            assert!(
                line.ends_with("0000000000000000"),
                "{}: {line}",
                task.display()
            );
        }
        assert!(status.contains("Seccomp:\t2"), "every thread filtered");
    }
    if root {
        let ns = |p: &str| std::fs::read_link(format!("/proc/{p}/ns/net")).expect("ns link");
        assert_ne!(
            ns(&pid.to_string()),
            ns("self"),
            "a network namespace of its own"
        );
        let root_dir = std::fs::read_link(format!("/proc/{pid}/root")).expect("root link");
        assert_ne!(root_dir, PathBuf::from("/"), "an empty root");
        let listing: Vec<_> = std::fs::read_dir(format!("/proc/{pid}/root"))
            .expect("its root")
            .collect();
        assert!(listing.is_empty(), "its root is empty: {listing:?}");
    }
    let environ = std::fs::read(format!("/proc/{pid}/environ")).expect("environ");
    assert!(
        environ.is_empty(),
        "no environment: {:?}",
        String::from_utf8_lossy(&environ)
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .map(|e| {
            let e = e.expect("fd");
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!("{}->{}", e.file_name().to_string_lossy(), target.display())
        })
        .collect();
    assert!(
        fds.len() <= 4,
        "its socket, stdout, stderr and /proc/self/statm: {fds:?}"
    );
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    for (name, value) in [
        ("Max core file size", "0"),
        ("Max file size", "0"),
        ("Max open files", "16"),
    ] {
        let line = limits.lines().find(|l| l.starts_with(name)).expect(name);
        assert_eq!(
            line.split_whitespace().nth(name.split(' ').count()),
            Some(value),
            "{line}"
        );
    }
    let outcome = spinning.join().expect("the spinning step returns");
    assert!(matches!(outcome.result, Err(StepError::Timeout { .. })));
}

#[test]
fn crashes_and_kills_cost_one_step() {
    let sandbox = sandbox();
    for rt in Runtime::ALL {
        let aborted = crashed(&run_hook(&sandbox, rt, "abort", ""));
        assert!(aborted.contains("SIGABRT"), "{rt}: {aborted}");
        assert_healthy(&sandbox, rt, "abort");
        let segfault = crashed(&run_hook(&sandbox, rt, "null", ""));
        assert!(segfault.contains("SIGSEGV"), "{rt}: {segfault}");
        assert_healthy(&sandbox, rt, "a null dereference");
    }
    let spinning = spin_in_background(&sandbox, "victim", 60_000);
    let pid = busy_process(&sandbox, "victim");
    nix_kill(pid);
    let killed = crashed(&spinning.join().expect("the step returns"));
    assert!(killed.contains("SIGKILL"), "{killed}");
    assert_healthy(&sandbox, Runtime::V8, "kill -9");
}

fn nix_kill(pid: u32) {
    // SAFETY: signals a child process of this test.
    let rc = unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill -9 {pid}");
}

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[test]
fn a_thousand_crashes_do_not_grow_the_node() {
    let sandbox = Sandbox::new(SandboxConfig {
        spare: 4,
        ..config()
    })
    .expect("the sandbox starts");
    let crash = |i: usize| {
        let rt = if i.is_multiple_of(2) {
            Runtime::V8
        } else {
            Runtime::QuickJs
        };
        let reason = crashed(&run_hook(&sandbox, rt, "abort", ""));
        assert!(reason.contains("SIGABRT"), "{reason}");
    };
    for i in 0..50 {
        crash(i);
    }
    let before = rss_bytes();
    let start = Instant::now();
    const CRASHES: usize = 1_000;
    for i in 0..CRASHES {
        crash(i);
    }
    let took = start.elapsed();
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    let stats = sandbox.stats();
    println!(
        "{CRASHES} crashed steps in {:.1} s ({:.1} ms each): node RSS {:.1} -> {:.1} MiB; \
         {} processes started, {:.1} ms to ready on average",
        took.as_secs_f64(),
        took.as_secs_f64() * 1000.0 / CRASHES as f64,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
        stats.started,
        stats.start_time.as_secs_f64() * 1000.0 / stats.started.max(1) as f64,
    );
    assert!(
        growth < 16 << 20,
        "the node's memory grew by {growth} bytes over {CRASHES} crashed steps"
    );
    assert_healthy(&sandbox, Runtime::V8, "a thousand crashes");
}

#[test]
fn a_thousand_out_of_memory_deaths_do_not_grow_the_node() {
    // A 16 MiB flat string made under a 4 MiB heap: V8 allocates it in one
    // piece and, mostly, the kernel stops the process at its memory cap
    // (4 MiB + a 16 MiB margin); now and then V8 notices its heap limit
    // first and the process survives. A thousand of those in a row.
    let sandbox = Sandbox::new(SandboxConfig {
        memory_margin: 16 << 20,
        spare: 4,
        ..config()
    })
    .expect("the sandbox starts");
    if !cgroup_capped(&sandbox) {
        println!("no memory cgroup on this machine: the cap is RLIMIT_AS, which V8 survives here");
        return;
    }
    let limits = Limits {
        heap_bytes: 4 << 20,
        ..Limits::default()
    };
    let bomb = || {
        let outcome = sandbox.execute_blocking(
            Execution::new(
                Runtime::V8,
                Script::new(
                    "oom.js",
                    "export default () => 'x'.repeat(2 ** 24).toUpperCase().length;",
                ),
                "null",
            )
            .limits(limits),
        );
        match outcome.result {
            Err(
                StepError::MemoryLimit { limit_bytes, .. } | StepError::HeapLimit { limit_bytes },
            ) => assert_eq!(limit_bytes, 4 << 20),
            other => panic!("expected the memory or heap limit, got {other:?}"),
        }
    };
    for _ in 0..50 {
        bomb();
    }
    let (before, failed_before) = (rss_bytes(), sandbox.stats().failed);
    let start = Instant::now();
    const BOMBS: u64 = 1_000;
    for _ in 0..BOMBS {
        bomb();
    }
    let took = start.elapsed();
    let after = rss_bytes();
    let died = sandbox.stats().failed - failed_before;
    println!(
        "{BOMBS} out-of-memory steps in {:.1} s, {died} of which ended their process: node RSS \
         {:.1} -> {:.1} MiB",
        took.as_secs_f64(),
        before as f64 / 1048576.0,
        after as f64 / 1048576.0,
    );
    assert!(died >= BOMBS / 2, "only {died} ended their process");
    assert!(
        after.saturating_sub(before) < 16 << 20,
        "the node's memory grew from {before} to {after} bytes"
    );
    assert_healthy(&sandbox, Runtime::V8, "a thousand memory-cap deaths");
}

/// Whether the sandbox caps memory with a cgroup: its idle processes have a
/// cgroup's peak memory.
fn cgroup_capped(sandbox: &Sandbox) -> bool {
    sandbox
        .stats()
        .processes
        .iter()
        .any(|p| p.peak_memory.is_some())
}

#[test]
fn v8s_fatal_out_of_memory_ends_the_process_not_the_node() {
    // `new Array(1e9).fill(0)` grows a hash table inside a builtin until V8
    // cannot allocate its next size: V8's fatal out-of-memory handler, which
    // in the sandbox ends the process. Under an address space cap that
    // happens before the kernel steps in.
    let sandbox = Sandbox::new(SandboxConfig {
        memory: MemoryCap::AddressSpace,
        ..config()
    })
    .expect("the sandbox starts");
    let limits = Limits {
        heap_bytes: 16 << 20,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    for _ in 0..3 {
        let failed = sandbox.stats().failed;
        let outcome = sandbox.execute_blocking(
            Execution::new(
                Runtime::V8,
                Script::new(
                    "fill.js",
                    "export default () => new Array(1e9).fill(0).length;",
                ),
                "null",
            )
            .limits(limits),
        );
        assert_eq!(
            outcome.result.map_err(|e| e.to_string()),
            Err("step exceeded its heap limit of 16 MiB".to_owned()),
            "V8 reached the heap limit, then gave up"
        );
        assert_eq!(sandbox.stats().failed, failed + 1, "the process ended");
        assert_healthy(&sandbox, Runtime::V8, "V8's fatal out-of-memory");
    }
}

#[test]
fn memory_outside_the_heap_is_capped_from_outside() {
    let sandbox = sandbox();
    let limits = Limits {
        heap_bytes: 64 << 20,
        ..Limits::default()
    };
    for rt in Runtime::ALL {
        let outcome = sandbox.execute_blocking(hook_step(rt, "allocate", "2048").limits(limits));
        match &outcome.result {
            Err(StepError::MemoryLimit {
                limit_bytes,
                cap_bytes,
            }) => {
                assert_eq!(*limit_bytes, 64 << 20);
                assert!(*cap_bytes < 256 << 20, "{cap_bytes}");
            }
            // Without a memory cgroup the address space limit makes the
            // allocation fail, and the process ends.
            Err(StepError::Crashed { reason }) if reason.contains("SIGABRT") => {
                println!("{rt}: no cgroup here: {reason}");
            }
            other => panic!("{rt}: 2 GiB outside a 64 MiB heap: {other:?}"),
        }
        assert_healthy(&sandbox, rt, "an allocation outside the heap");
    }
}

#[test]
fn the_address_space_cap_works_where_no_cgroup_is_made() {
    let sandbox = Sandbox::new(SandboxConfig {
        memory: MemoryCap::AddressSpace,
        ..config()
    })
    .expect("the sandbox starts");
    let limits = Limits {
        heap_bytes: 64 << 20,
        ..Limits::default()
    };
    for rt in Runtime::ALL {
        let reason =
            crashed(&sandbox.execute_blocking(hook_step(rt, "allocate", "4096").limits(limits)));
        assert!(reason.contains("SIGABRT"), "{rt}: {reason}");
        let fine = sandbox.execute_blocking(hook_step(rt, "allocate", "16").limits(limits));
        assert_eq!(
            fine.value().map_err(|e| e.to_string()),
            Ok(json!("allocated 16 MiB")),
            "{rt}: what fits the cap"
        );
    }
}

#[test]
fn native_code_past_the_deadline_is_killed() {
    let sandbox = sandbox();
    let limits = Limits {
        timeout: Duration::from_millis(300),
        ..Limits::default()
    };
    for rt in Runtime::ALL {
        let outcome = sandbox.execute_blocking(hook_step(rt, "spin", "").limits(limits));
        assert_eq!(
            outcome.result.as_ref().map_err(Clone::clone),
            Err(StepError::Timeout {
                limit: limits.timeout
            }),
            "{rt}"
        );
        assert_healthy(&sandbox, rt, "native spin");
    }
}

#[test]
fn a_process_that_keeps_computing_between_steps_is_stopped() {
    let sandbox = sandbox();
    let outcome =
        sandbox.execute_blocking(hook_step(Runtime::QuickJs, "background", "").tenant("miner"));
    assert_eq!(
        outcome.value().map_err(|e| e.to_string()),
        Ok(json!("a thread spins in the background"))
    );
    let pid = sandbox
        .stats()
        .processes
        .iter()
        .find(|p| p.tenant.as_deref() == Some("miner"))
        .expect("the miner's idle process")
        .pid;
    let start = Instant::now();
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "process {pid} still runs after computing for {:?} with no step",
            start.elapsed()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(sandbox.stats().failed >= 1);
    let next = sandbox.execute_blocking(hook_step(Runtime::QuickJs, "ids", "").tenant("miner"));
    assert!(
        next.result.is_ok(),
        "the tenant's next step gets a new process"
    );
}

#[test]
fn without_a_jit_no_memory_becomes_executable() {
    let jitless = Sandbox::new(SandboxConfig {
        jitless: true,
        ..config()
    })
    .expect("a jitless sandbox starts");
    let reason = crashed(&run_hook(&jitless, Runtime::V8, "exec-memory", ""));
    assert!(reason.contains("(mmap)"), "{reason}");
    assert_healthy(&jitless, Runtime::V8, "exec memory, jitless");
    assert_healthy(&jitless, Runtime::QuickJs, "exec memory, jitless");
    let with_jit = sandbox();
    assert_eq!(
        run_hook(&with_jit, Runtime::V8, "exec-memory", "")
            .value()
            .map_err(|e| e.to_string()),
        Ok(json!("mapped an executable page"))
    );
}

#[test]
fn a_process_serves_one_tenant_and_is_recycled() {
    let sandbox = Sandbox::new(SandboxConfig {
        steps_per_process: 5,
        processes: 4,
        ..config()
    })
    .expect("the sandbox starts");
    let mut pids_of: HashMap<&str, Vec<u32>> = HashMap::new();
    for round in 0..20u32 {
        for tenant in ["a", "b", "c"] {
            let rt = if round.is_multiple_of(2) {
                Runtime::V8
            } else {
                Runtime::QuickJs
            };
            let outcome = sandbox.execute_blocking(hook_step(rt, "ids", "").tenant(tenant));
            let text = outcome
                .value()
                .expect("ids")
                .as_str()
                .expect("a string")
                .to_owned();
            let pid: u32 = text.rsplit(':').next().unwrap().parse().unwrap();
            pids_of.entry(tenant).or_default().push(pid);
        }
    }
    let sets: Vec<HashSet<u32>> = pids_of
        .values()
        .map(|p| p.iter().copied().collect())
        .collect();
    for (i, a) in sets.iter().enumerate() {
        for b in &sets[i + 1..] {
            assert!(
                a.is_disjoint(b),
                "a process served two tenants: {pids_of:?}"
            );
        }
    }
    for (tenant, pids) in &pids_of {
        for run in pids.chunk_by(|a, b| a == b) {
            assert!(
                run.len() <= 5,
                "{tenant}: a process ran more than 5 steps: {pids:?}"
            );
        }
        assert!(
            pids.len() == 20 && sets.iter().all(|s| s.len() >= 4),
            "{pids_of:?}"
        );
    }
    let stats = sandbox.stats();
    assert!(stats.recycled >= 9, "{stats:?}");
    assert!(stats.hits > 0, "{stats:?}");
}

#[test]
fn a_crashed_step_is_retried_by_its_run_policy() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let dir = tempfile::tempdir().expect("a temp dir");
        let mut engine_config = EngineConfig::new(dir.path());
        engine_config.sandbox = SandboxConfig {
            spare: 1,
            ..config()
        };
        let engine = Engine::start(engine_config)
            .await
            .expect("the engine starts");
        let yaml = r#"
apiVersion: isoflow.dev/v1
name: crashy
version: 1
steps:
  - id: boom
    type: code
    source: export default () => isoflowTestHook("abort", "");
    retry: { max_attempts: 3, backoff: { initial: 1ms, max: 2ms } }
"#;
        let integration = model::load("crashy.yaml", yaml).expect("a valid definition");
        let handle = engine
            .start_run("t", &integration, serde_json::Value::Null)
            .await
            .expect("the run starts");
        let run_id = handle.run_id.clone();
        let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait())
            .await
            .expect("the run ends within a minute")
            .expect("the run finishes");
        assert_eq!(outcome.status, RunStatus::Failed);
        let error = outcome.error.expect("the run's error");
        assert!(
            error.contains("step's sandbox crashed") && error.contains("SIGABRT"),
            "{error}"
        );
        let step = engine
            .store()
            .expect("a local engine has a store")
            .step("t", &run_id, "boom")
            .expect("the store reads")
            .expect("the step is recorded");
        assert_eq!(step.attempts, 3, "the retry policy applied");
        engine.shutdown(Duration::from_secs(5)).await;
    });
}
