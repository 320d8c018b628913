//! Helpers shared by the sandbox's integration tests: one [`Sandbox`] per
//! test binary, short ways to run a step and look at its outcome, the
//! per-runtime test macro, a canary that proves the built-ins are pristine,
//! and a hang guard for steps whose failure mode would be to never return.
//!
//! This is `common/mod.rs` rather than `common.rs` because cargo builds every
//! top-level file in `tests/` as a test binary of its own.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::sync::OnceLock;
use std::sync::mpsc;
use std::time::Duration;

use isoflow_engine::sandbox::{
    ErrorKind, Execution, Limits, LogLevel, Outcome, Runtime, Sandbox, SandboxConfig, Script,
    StepError,
};
use serde_json::{Value, json};

/// The name every step is reported under unless a test says otherwise.
pub const FILENAME: &str = "step.js";

/// Generates one module of plain `#[test]`s (and, after `async`, one of
/// `#[tokio::test]`s) that call the file's `fn name(runtime: Runtime)` with
/// the given runtime, so a failure names both the runtime and the behaviour.
#[macro_export]
macro_rules! per_runtime {
    ($module:ident, $variant:ident, [$($test:ident),* $(,)?] $(, async [$($async_test:ident),* $(,)?])? $(,)?) => {
        mod $module {
            $(
                #[test]
                fn $test() {
                    super::$test(::isoflow_engine::sandbox::Runtime::$variant)
                }
            )*
            $($(
                #[tokio::test(flavor = "multi_thread")]
                async fn $async_test() {
                    super::$async_test(::isoflow_engine::sandbox::Runtime::$variant).await
                }
            )*)?
        }
    };
}

/// The sandbox this test binary shares: two threads, like a small worker, so
/// that consecutive steps land on both the same and the other thread.
pub fn sandbox() -> &'static Sandbox {
    static SANDBOX: OnceLock<Sandbox> = OnceLock::new();
    SANDBOX.get_or_init(|| {
        Sandbox::new(SandboxConfig {
            concurrency: 2,
            ..SandboxConfig::default()
        })
        .expect("the sandbox starts")
    })
}

pub fn execution(runtime: Runtime, source: &str, input: &Value) -> Execution {
    Execution::with_value(runtime, Script::new(FILENAME, source), input)
}

/// Runs `source` with `input` and the sandbox's default limits.
pub fn run(runtime: Runtime, source: &str, input: &Value) -> Outcome {
    sandbox().execute_blocking(execution(runtime, source, input))
}

pub fn run_with(runtime: Runtime, source: &str, input: &Value, limits: Limits) -> Outcome {
    sandbox().execute_blocking(execution(runtime, source, input).limits(limits))
}

/// The step's output; panics with the step's error (and logs) otherwise.
pub fn output(runtime: Runtime, source: &str, input: &Value) -> Value {
    ok(&run(runtime, source, input))
}

/// The step's error; panics if the step succeeded.
pub fn error(runtime: Runtime, source: &str, input: &Value) -> StepError {
    err(&run(runtime, source, input))
}

pub fn error_with(runtime: Runtime, source: &str, input: &Value, limits: Limits) -> StepError {
    err(&run_with(runtime, source, input, limits))
}

pub fn ok(outcome: &Outcome) -> Value {
    match outcome.value() {
        Ok(value) => value,
        Err(e) => panic!("step failed: {e}\n{e:?}\nlogs: {:#?}", outcome.logs),
    }
}

pub fn err(outcome: &Outcome) -> StepError {
    match &outcome.result {
        Ok(text) => panic!("step succeeded with {text} but was expected to fail"),
        Err(e) => e.clone(),
    }
}

/// The messages of the outcome's log lines, in order.
pub fn messages(outcome: &Outcome) -> Vec<&str> {
    outcome.logs.iter().map(|l| l.message.as_str()).collect()
}

pub fn levels(outcome: &Outcome) -> Vec<LogLevel> {
    outcome.logs.iter().map(|l| l.level).collect()
}

/// Runs an execution on another thread and gives up after `bound`. Only for
/// steps whose failure mode is to never return (a limit not enforced): it
/// turns a hung test run into a failing test. It is not a timing assertion;
/// the bounds are many times what the step should take.
pub fn run_bounded(exec: Execution, bound: Duration) -> Outcome {
    let (tx, rx) = mpsc::channel();
    let what = format!("{} step {:?}", exec.runtime, exec.script.source);
    std::thread::spawn(move || {
        let _ = tx.send(sandbox().execute_blocking(exec));
    });
    rx.recv_timeout(bound).unwrap_or_else(|_| {
        panic!("{what} did not finish within {bound:?}: a limit is not being enforced")
    })
}

/// Heap, time, output and log limits at their defaults except `timeout`.
pub fn timeout(ms: u64) -> Limits {
    Limits {
        timeout: Duration::from_millis(ms),
        ..Limits::default()
    }
}

pub fn heap(bytes: usize) -> Limits {
    Limits {
        heap_bytes: bytes,
        ..Limits::default()
    }
}

/// A step that reports the state of everything the isolation attacks touch.
/// In a pristine isolate it returns [`canary_expected`] for its input.
pub const CANARY: &str = r#"
export default function (input, ctx) {
  console.log("canary", input.tenant);
  ctx.log.warn("canary-ctx", input.tenant);
  const seen = {
    tenant: input.tenant,
    map: [1, 2, 3].map((x) => x * 2),
    parse: JSON.parse('{"a":[1,2]}'),
    stringify: JSON.stringify({ b: 1 }),
    protoKeys: Object.keys(Object.prototype),
    protoToJSON: typeof Object.prototype.toJSON,
    emptyKeys: Object.keys({}),
    forIn: (() => { const ks = []; for (const k in {}) ks.push(k); return ks; })(),
    then: Promise.prototype.then.toString().includes("[native code]"),
    call: Function.prototype.call.toString().includes("[native code]"),
    apply: Function.prototype.apply.toString().includes("[native code]"),
    math: typeof Math === "object" && Math.max(1, 5, 3) === 5,
    mathFrozen: Object.isFrozen(Math),
    arrayFrozen: Object.isFrozen(Array.prototype),
    xhr: typeof XMLHttpRequest,
    consoleLog: typeof console.log === "function" && console.log.name,
    leaked: Object.getOwnPropertyNames(globalThis).filter((n) => n.startsWith("leak")),
    stolen: typeof globalThis.stolen,
    secret: typeof globalThis.secret,
    dateNow: typeof Date.now() === "number",
    stringProto: "abc".toUpperCase(),
    regex: /b+/.exec("abbbc")[0],
    spread: [...[1, 2]],
    prepareStackTrace: typeof Error.prepareStackTrace,
    stack: new Error("probe").stack.includes("step.js"),
  };
  return seen;
}
"#;

/// What [`CANARY`] returns in a pristine isolate.
pub fn canary_expected(tenant: &str) -> Value {
    json!({
        "tenant": tenant,
        "map": [2, 4, 6],
        "parse": {"a": [1, 2]},
        "stringify": "{\"b\":1}",
        "protoKeys": [],
        "protoToJSON": "undefined",
        "emptyKeys": [],
        "forIn": [],
        "then": true,
        "call": true,
        "apply": true,
        "math": true,
        "mathFrozen": false,
        "arrayFrozen": false,
        "xhr": "undefined",
        "consoleLog": "log",
        "leaked": [],
        "stolen": "undefined",
        "secret": "undefined",
        "dateNow": true,
        "stringProto": "ABC",
        "regex": "bbb",
        "spread": [1, 2],
        "prepareStackTrace": "undefined",
        "stack": true,
    })
}

/// Runs [`CANARY`] as `tenant` and asserts pristine built-ins and that the
/// canary's own two log lines, and nothing else, are in its outcome.
pub fn assert_pristine(runtime: Runtime, tenant: &str, after: &str) {
    assert_pristine_on(sandbox(), runtime, tenant, after);
}

/// [`assert_pristine`] on a given sandbox.
pub fn assert_pristine_on(sandbox: &Sandbox, runtime: Runtime, tenant: &str, after: &str) {
    let outcome = sandbox
        .execute_blocking(execution(runtime, CANARY, &json!({ "tenant": tenant })).tenant(tenant));
    let seen = match outcome.value() {
        Ok(value) => value,
        Err(e) => panic!("{runtime}: canary failed after {after}: {e}"),
    };
    assert_eq!(
        seen,
        canary_expected(tenant),
        "{runtime}: canary saw a non-pristine isolate after {after}"
    );
    assert_eq!(
        messages(&outcome),
        [format!("canary {tenant}"), format!("canary-ctx {tenant}")],
        "{runtime}: canary's logs after {after}"
    );
    assert_eq!(levels(&outcome), [LogLevel::Info, LogLevel::Warn]);
}

/// A trivial step that must succeed: proves the sandbox still works.
pub fn assert_healthy(runtime: Runtime, after: &str) {
    let outcome = run(
        runtime,
        "export default (input) => ({ doubled: input.n * 2, text: `n=${input.n}` })",
        &json!({ "n": 21 }),
    );
    match outcome.value() {
        Ok(value) => assert_eq!(
            value,
            json!({ "doubled": 42, "text": "n=21" }),
            "{runtime}: healthy step after {after}"
        ),
        Err(e) => panic!("{runtime}: sandbox unhealthy after {after}: {e}"),
    }
}

/// The user-facing error classes: anything else means the sandbox, not the
/// step, went wrong.
pub fn assert_step_level(runtime: Runtime, error: &StepError) {
    assert_ne!(
        error.kind(),
        ErrorKind::Sandbox,
        "{runtime}: the sandbox itself failed: {error}"
    );
}

/// The process's resident set size, from `/proc/self/status`.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS in /proc/self/status");
    let kib: u64 = line
        .trim_start_matches("VmRSS:")
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("VmRSS is a number of kB");
    kib * 1024
}
