//! A fresh isolate per execution must not mean a leak per execution: after
//! a warm-up, 10,000 more executions (a realistic mix: JSON work, logs,
//! XML, async, the odd failing step) leave the process's resident memory
//! within a generous bound, on each runtime; and so do repeated heap-limit
//! failures, the path most likely to leak (an aborted isolate).
//!
//! The figures are printed: `cargo test --test memory -- --nocapture`.
//! The tests take a lock so that one runtime's warm-up is not counted as
//! the other's growth.

#[macro_use]
mod common;

use std::sync::Mutex;

use common::*;
use isoflow_engine::sandbox::{Limits, Runtime, StepError};
use serde_json::json;

macro_rules! memory {
    ($module:ident, $variant:ident) => {
        per_runtime!(
            $module,
            $variant,
            [
                ten_thousand_executions_do_not_leak,
                heap_limit_failures_do_not_leak
            ]
        );
    };
}

#[cfg(feature = "v8")]
memory!(v8, V8);
#[cfg(feature = "quickjs")]
memory!(quickjs, QuickJs);

/// Serialises the tests: resident memory is per process.
static MEASURING: Mutex<()> = Mutex::new(());

const MIB: u64 = 1024 * 1024;
/// Generous: the real growth should be a few MiB at most (allocator
/// fragmentation), while a leak of even 7 KiB per execution exceeds it.
const MAX_GROWTH: u64 = 64 * MIB;

const WARM_UP: usize = 500;
const EXECUTIONS: usize = 10_000;

const STEP: &str = r#"
export default async (input, ctx) => {
  const items = input.items.map((x, i) => ({ x, i, label: "item-" + x }));
  if (input.n % 10 === 0) console.log("tenth", input.n);
  if (input.n % 25 === 0) ctx.xml.parse("<a><b>" + input.n + "</b><b>2</b></a>");
  if (input.n % 100 === 0) throw new Error("every hundredth " + input.n);
  await null;
  globalThis.garbage = new Array(200).fill(input.n);
  return { n: input.n, count: items.length, sum: input.items.reduce((a, b) => a + b, 0) };
};
"#;

fn one(rt: Runtime, n: usize) {
    let items: Vec<usize> = (n..n + 20).collect();
    let outcome = run(rt, STEP, &json!({ "n": n, "items": items }));
    if n.is_multiple_of(100) {
        assert!(
            matches!(&outcome.result, Err(StepError::Exception { message, .. }) if message.contains("every hundredth")),
            "{:?}",
            outcome.result
        );
    } else {
        let sum: usize = items.iter().sum();
        assert_eq!(ok(&outcome), json!({ "n": n, "count": 20, "sum": sum }));
    }
}

fn ten_thousand_executions_do_not_leak(rt: Runtime) {
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    for n in 0..WARM_UP {
        one(rt, n);
    }
    let before = rss_bytes();
    for n in WARM_UP..WARM_UP + EXECUTIONS {
        one(rt, n);
    }
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    println!(
        "{rt}: resident {:.1} MiB after {WARM_UP} warm-up executions, {:.1} MiB after {EXECUTIONS} more \
         (growth {:.1} MiB, {:.0} bytes per execution)",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64,
        growth as f64 / MIB as f64,
        growth as f64 / EXECUTIONS as f64,
    );
    assert!(
        growth < MAX_GROWTH,
        "{rt}: resident memory grew by {growth} bytes over {EXECUTIONS} executions"
    );
}

fn heap_limit_failures_do_not_leak(rt: Runtime) {
    let _measuring = MEASURING.lock().unwrap_or_else(|e| e.into_inner());
    let limits = Limits {
        heap_bytes: 32 * MIB as usize,
        ..Limits::default()
    };
    let bomb =
        "export default () => { const k = []; while (true) k.push({ s: 'x' + k.length }); };";
    let explode = || match run_with(rt, bomb, &json!(null), limits).result {
        Err(StepError::HeapLimit { .. }) => {}
        other => panic!("{rt}: expected the heap limit, got {other:?}"),
    };
    // Both runners' processes have to have reached their peak once.
    for _ in 0..4 {
        explode();
    }
    let before = rss_bytes();
    const BOMBS: usize = 16;
    for _ in 0..BOMBS {
        explode();
    }
    assert_healthy(rt, "heap bombs");
    let after = rss_bytes();
    let growth = after.saturating_sub(before);
    println!(
        "{rt}: resident {:.1} MiB after warm-up heap bombs, {:.1} MiB after {BOMBS} more (growth {:.1} MiB)",
        before as f64 / MIB as f64,
        after as f64 / MIB as f64,
        growth as f64 / MIB as f64,
    );
    assert!(
        growth < MAX_GROWTH,
        "{rt}: resident memory grew by {growth} bytes over {BOMBS} heap-limit failures"
    );
}
