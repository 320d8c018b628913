//! Every per-step limit is enforced and fails only that step, with an error
//! naming the limit and its value, and the node and its sandbox live on:
//! run-away loops (plain, in a regex, in microtasks, in serialisation) end
//! as `Timeout`; a promise nothing can settle ends at once as
//! `NeverSettled`; memory bombs end as `HeapLimit` (or, where the engine
//! itself refuses one huge allocation with a catchable `RangeError` before
//! the heap fills, as that exception, or, where one allocation takes the
//! sandbox process past its memory cap first, as `MemoryLimit`); deep
//! recursion is an ordinary `RangeError`. After each, a normal step on the
//! same sandbox succeeds, and a final test mixes all of them with normal
//! steps on two runners at once.
//!
//! Steps that could hang if a limit were not enforced run under a generous
//! hang guard ([`run_bounded`]): a broken limit fails the test instead of
//! hanging the run. No test asserts how long anything took.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use isoflow_engine::sandbox::{Execution, Limits, Runtime, Script, StepError};
use serde_json::json;

macro_rules! limits {
    ($module:ident, $variant:ident) => {
        per_runtime!(
            $module,
            $variant,
            [
                infinite_loop_is_a_timeout,
                infinite_loop_while_loading_is_a_timeout,
                timeout_cannot_be_caught,
                infinite_to_json_is_a_timeout,
                regex_catastrophe_is_a_timeout,
                never_settling_promise,
                never_settling_await,
                never_settling_top_level_await,
                microtask_loop_is_a_timeout,
                promise_chain_loop_is_a_timeout,
                atomics_wait_cannot_block_the_thread,
                growing_array_is_a_heap_limit,
                object_explosion_is_a_heap_limit,
                string_doubling_fails_the_step,
                flat_string_allocation_fails_the_step,
                single_huge_array_fails_the_step,
                huge_typed_array_fails_the_step,
                array_buffers_count_against_the_heap,
                array_fill_1e9_fails_the_step,
                heap_limit_cannot_be_caught,
                input_larger_than_the_heap_is_a_heap_limit,
                deep_recursion_is_a_range_error,
                deep_recursion_can_be_caught,
                deeply_nested_output_fails_the_step,
                deeply_nested_input_does_not_crash,
                all_limits_interleaved_with_normal_steps,
            ]
        );
    };
}

#[cfg(feature = "v8")]
limits!(v8, V8);
#[cfg(feature = "quickjs")]
limits!(quickjs, QuickJs);

/// Many times any limit under test; only reached if a limit is broken.
const HANG_GUARD: Duration = Duration::from_secs(180);

const MIB: usize = 1024 * 1024;

fn bounded(rt: Runtime, source: &str, limits: Limits) -> Result<String, StepError> {
    let exec = execution(rt, source, &json!(null)).limits(limits);
    run_bounded(exec, HANG_GUARD).result
}

fn assert_timeout(rt: Runtime, source: &str) {
    let result = bounded(rt, source, timeout(200));
    match result {
        Err(e @ StepError::Timeout { .. }) => {
            assert_eq!(
                e,
                StepError::Timeout {
                    limit: Duration::from_millis(200)
                }
            );
            assert_eq!(e.to_string(), "step timed out after 200 ms");
            assert!(e.is_timeout());
        }
        other => panic!("{rt}: expected a 200 ms timeout for {source}, got {other:?}"),
    }
    assert_healthy(rt, source);
}

// ---------------------------------------------------------------------------
// Time

fn infinite_loop_is_a_timeout(rt: Runtime) {
    assert_timeout(rt, "export default () => { while (true) {} };");
}

fn infinite_loop_while_loading_is_a_timeout(rt: Runtime) {
    assert_timeout(rt, "while (true) {}\nexport default () => 1;");
}

fn timeout_cannot_be_caught(rt: Runtime) {
    assert_timeout(
        rt,
        r#"
export default () => {
  for (;;) {
    try { while (true) {} } catch (e) { /* keep going */ } finally { /* and again */ }
  }
};
"#,
    );
}

fn infinite_to_json_is_a_timeout(rt: Runtime) {
    // The limit covers serialising the output too.
    assert_timeout(
        rt,
        "export default () => ({ toJSON() { while (true) {} } });",
    );
}

fn regex_catastrophe_is_a_timeout(rt: Runtime) {
    assert_timeout(
        rt,
        r#"export default () => /^(a+)+$/.test("a".repeat(40) + "b");"#,
    );
}

fn assert_never_settled(rt: Runtime, source: &str) {
    // A long timeout: the step must be found unsettleable as soon as its
    // microtasks run out, not when the time is up.
    let result = bounded(rt, source, timeout(60_000));
    match result {
        Err(e @ StepError::NeverSettled) => {
            assert!(e.is_timeout());
            assert!(e.to_string().contains("never settled"), "{e}");
        }
        other => panic!("{rt}: expected NeverSettled for {source}, got {other:?}"),
    }
    assert_healthy(rt, source);
}

fn never_settling_promise(rt: Runtime) {
    assert_never_settled(rt, "export default () => new Promise(() => {});");
}

fn never_settling_await(rt: Runtime) {
    assert_never_settled(
        rt,
        "export default async () => { await null; await new Promise(() => {}); return 1; };",
    );
}

fn never_settling_top_level_await(rt: Runtime) {
    assert_never_settled(rt, "await new Promise(() => {});\nexport default () => 1;");
}

fn microtask_loop_is_a_timeout(rt: Runtime) {
    assert_timeout(
        rt,
        "async function f() { while (true) await null; }\nexport default () => f();",
    );
}

fn promise_chain_loop_is_a_timeout(rt: Runtime) {
    // The promise the step returns never settles, but the microtask queue is
    // never empty either: that is a run-away step, not an unsettleable one.
    assert_timeout(
        rt,
        r#"
export default () => {
  const spin = () => Promise.resolve().then(spin);
  spin();
  return new Promise(() => {});
};
"#,
    );
}

fn atomics_wait_cannot_block_the_thread(rt: Runtime) {
    // Nothing can ever notify this wait. Either the engine refuses to block
    // (a TypeError) or the watchdog ends the wait as a timeout; blocking
    // its sandbox process for good would be a denial of service.
    let source = r#"
export default () => Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0);
"#;
    match bounded(rt, source, timeout(200)) {
        Err(StepError::Timeout { limit }) => {
            assert_eq!(limit, Duration::from_millis(200));
            println!("{rt}: Atomics.wait ended by the timeout");
        }
        Err(StepError::Exception { message, .. }) => {
            assert!(message.starts_with("TypeError"), "{message}");
            println!("{rt}: Atomics.wait refused: {message}");
        }
        other => panic!("{rt}: Atomics.wait: {other:?}"),
    }
    assert_healthy(rt, "Atomics.wait");
}

// ---------------------------------------------------------------------------
// Memory

fn heap_64() -> Limits {
    Limits {
        heap_bytes: 64 * MIB,
        ..Limits::default()
    }
}

fn assert_heap_limit(rt: Runtime, source: &str) {
    let result = bounded(rt, source, heap_64());
    match result {
        Err(e @ StepError::HeapLimit { .. }) => {
            assert_eq!(
                e,
                StepError::HeapLimit {
                    limit_bytes: 64 * MIB
                }
            );
            assert_eq!(e.to_string(), "step exceeded its heap limit of 64 MiB");
        }
        other => panic!("{rt}: expected the 64 MiB heap limit for {source}, got {other:?}"),
    }
    assert_healthy(rt, source);
}

/// For bombs where the engine may refuse one oversized allocation with a
/// catchable RangeError ("Invalid string length", "Array buffer allocation
/// failed", "invalid array length") before the heap is full, or where one
/// allocation larger than the heap takes the sandbox process over its
/// memory cap before V8 looks at its heap limit: the step must fail, as the
/// heap limit, the memory limit or that exception. Which one it was is
/// printed (`-- --nocapture`).
fn assert_heap_limit_or_range_error(rt: Runtime, source: &str) {
    match bounded(rt, source, heap_64()) {
        Err(StepError::HeapLimit { limit_bytes }) => {
            assert_eq!(limit_bytes, 64 * MIB);
            println!("{rt}: heap limit for {source}");
        }
        Err(StepError::MemoryLimit { limit_bytes, .. }) => {
            assert_eq!(limit_bytes, 64 * MIB);
            println!("{rt}: memory limit for {source}");
        }
        Err(StepError::Exception { message, .. }) => {
            // QuickJS reports its maximum string length as an InternalError
            // where V8 throws RangeError("Invalid string length").
            let quickjs_string_length =
                rt == Runtime::QuickJs && message == "InternalError: string too long";
            assert!(
                message.starts_with("RangeError: ") || quickjs_string_length,
                "{rt}: {source}: {message}"
            );
            println!("{rt}: {message} for {source}");
        }
        other => panic!("{rt}: {source}: expected the heap limit or a RangeError, got {other:?}"),
    }
    assert_healthy(rt, source);
}

const GROWING_ARRAY: &str = r#"
export default () => {
  const keep = [];
  while (true) keep.push({ i: keep.length, s: "item-" + keep.length });
};
"#;

fn growing_array_is_a_heap_limit(rt: Runtime) {
    assert_heap_limit(rt, GROWING_ARRAY);
}

fn object_explosion_is_a_heap_limit(rt: Runtime) {
    assert_heap_limit(
        rt,
        r#"
export default () => {
  const root = {};
  for (let i = 0; ; i++) root["k" + i] = { i, nested: { list: [i, i + 1], name: "n" + i } };
};
"#,
    );
}

fn string_doubling_fails_the_step(rt: Runtime) {
    // V8 builds `s += s` as a rope and reaches its maximum string length
    // (a RangeError) with little memory; QuickJS copies and fills the heap.
    assert_heap_limit_or_range_error(
        rt,
        r#"export default () => { let s = "xy"; while (true) s += s; };"#,
    );
}

fn flat_string_allocation_fails_the_step(rt: Runtime) {
    // `repeat` may build a rope (V8 does); JSON.stringify needs a flat
    // string of 128 MiB, one allocation twice the heap limit.
    assert_heap_limit_or_range_error(
        rt,
        r#"export default () => JSON.stringify("x".repeat(2 ** 27)).length;"#,
    );
}

fn single_huge_array_fails_the_step(rt: Runtime) {
    // 2^24 doubles: one 128 MiB backing store, twice the heap limit.
    assert_heap_limit_or_range_error(
        rt,
        "export default () => new Array(2 ** 24).fill(1.5).length;",
    );
}

fn huge_typed_array_fails_the_step(rt: Runtime) {
    assert_heap_limit_or_range_error(rt, "export default () => new Uint8Array(2 ** 30).length;");
}

fn array_buffers_count_against_the_heap(rt: Runtime) {
    // Buffers outside the JS heap proper, each filled so its pages are real.
    // Unbounded, this would take the machine's memory; a short timeout caps
    // the damage if the limit is not enforced (the test then fails on it).
    let source = r#"
export default () => {
  const keep = [];
  while (true) { const b = new Uint8Array(8 << 20); b.fill(1); keep.push(b); }
};
"#;
    let limits = Limits {
        heap_bytes: 64 * MIB,
        timeout: Duration::from_secs(5),
        ..Limits::default()
    };
    match bounded(rt, source, limits) {
        Err(StepError::HeapLimit { limit_bytes }) => assert_eq!(limit_bytes, 64 * MIB),
        Err(StepError::Exception { message, .. }) => {
            assert!(message.contains("RangeError"), "{rt}: {message}");
            println!("{rt}: {message}");
        }
        other => panic!("{rt}: 8 MiB buffers up to 64 MiB: expected the heap limit, got {other:?}"),
    }
    assert_healthy(rt, "array buffers");
}

fn array_fill_1e9_fails_the_step(rt: Runtime) {
    assert_heap_limit_or_range_error(rt, "export default () => new Array(1e9).fill(0).length;");
}

fn heap_limit_cannot_be_caught(rt: Runtime) {
    assert_heap_limit(
        rt,
        r#"
export default () => {
  const keep = [];
  try {
    while (true) keep.push({ i: keep.length, s: "item-" + keep.length });
  } catch (e) {
    keep.length = 0;
    return "caught " + e;
  }
};
"#,
    );
}

fn input_larger_than_the_heap_is_a_heap_limit(rt: Runtime) {
    // 32 MiB of input text parsed into objects under a 16 MiB heap.
    let item = r#"{"name":"something reasonably long","tags":["a","b","c"],"n":12345},"#;
    let mut input = String::from("[");
    while input.len() < 32 * MIB {
        input.push_str(item);
    }
    input.push_str("null]");
    let limits = Limits {
        heap_bytes: 16 * MIB,
        ..Limits::default()
    };
    let exec = Execution::new(
        rt,
        Script::new(FILENAME, "export default (items) => items.length;"),
        input,
    )
    .limits(limits);
    match run_bounded(exec, HANG_GUARD).result {
        Err(StepError::HeapLimit { limit_bytes }) => assert_eq!(limit_bytes, 16 * MIB),
        other => panic!("{rt}: expected the 16 MiB heap limit, got {other:?}"),
    }
    assert_healthy(rt, "an input larger than the heap");
}

// ---------------------------------------------------------------------------
// The stack

fn deep_recursion_is_a_range_error(rt: Runtime) {
    let source = "function down(n) { return down(n + 1) + 1; }\nexport default () => down(0);";
    match bounded(rt, source, Limits::default()) {
        // Both engines use V8's wording (QuickJS-ng adopted it).
        Err(StepError::Exception { message, .. }) => {
            assert_eq!(message, "RangeError: Maximum call stack size exceeded")
        }
        other => panic!("{rt}: expected a stack overflow RangeError, got {other:?}"),
    }
    assert_healthy(rt, "deep recursion");
}

fn deep_recursion_can_be_caught(rt: Runtime) {
    let source = r#"
function down(n) { return down(n + 1) + 1; }
export default () => {
  try { return down(0); } catch (e) { return [e instanceof RangeError, e.message]; }
};
"#;
    let outcome = run_bounded(execution(rt, source, &json!(null)), HANG_GUARD);
    assert_eq!(
        ok(&outcome),
        json!([true, "Maximum call stack size exceeded"])
    );
    assert_healthy(rt, "caught deep recursion");
}

fn deeply_nested_output_fails_the_step(rt: Runtime) {
    // JSON.stringify recurses; 1,000,000 levels overflow any stack. The step
    // fails as a user error (which variant depends on where the engine gives
    // up), never as a sandbox failure.
    let source =
        "export default () => { let v = []; for (let i = 0; i < 1e6; i++) v = [v]; return v; };";
    match bounded(rt, source, Limits::default()) {
        Err(e) => {
            assert_step_level(rt, &e);
            println!("{rt}: deeply nested output: {e}");
        }
        Ok(text) => panic!("{rt}: a million levels serialised to {} bytes", text.len()),
    }
    assert_healthy(rt, "deeply nested output");
}

fn deeply_nested_input_does_not_crash(rt: Runtime) {
    // 200,000 levels of `[`: whether the engine's JSON.parse manages it is
    // its business; the process must survive, and if the step fails it is
    // the step's failure, never "the input is not valid JSON" (it is valid).
    let depth = 200_000;
    let input = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
    let exec = Execution::new(
        rt,
        Script::new(FILENAME, "export default (x) => Array.isArray(x);"),
        input,
    );
    match run_bounded(exec, HANG_GUARD).result {
        Ok(text) => assert_eq!(text, "true"),
        Err(e) => {
            println!("{rt}: deeply nested input: {e}");
            assert_step_level(rt, &e);
            assert!(
                !e.to_string().contains("not valid JSON"),
                "{rt}: valid JSON reported as invalid: {e}"
            );
        }
    }
    assert_healthy(rt, "deeply nested input");
}

// ---------------------------------------------------------------------------
// All together

fn all_limits_interleaved_with_normal_steps(rt: Runtime) {
    let bad: &[(&str, Limits)] = &[
        ("export default () => { while (true) {} };", timeout(200)),
        (
            r#"export default () => /^(a+)+$/.test("a".repeat(40) + "b");"#,
            timeout(200),
        ),
        (
            "export default () => new Promise(() => {});",
            timeout(60_000),
        ),
        (
            "async function f() { while (true) await null; }\nexport default () => f();",
            timeout(200),
        ),
        (GROWING_ARRAY, heap_64()),
        (
            r#"export default () => { let s = "xy"; while (true) s += s; };"#,
            heap_64(),
        ),
        (
            "export default () => new Uint8Array(2 ** 30).length;",
            heap_64(),
        ),
        (
            "function down(n) { return down(n + 1) + 1; }\nexport default () => down(0);",
            Limits::default(),
        ),
        (
            "export default () => { for (let i = 0; i < 5000; i++) console.log(i); };",
            Limits::default(),
        ),
        (
            "export default () => 'x'.repeat(1 << 20);",
            Limits {
                output_bytes: 1000,
                ..Limits::default()
            },
        ),
    ];
    std::thread::scope(|scope| {
        for worker in 0..2 {
            scope.spawn(move || {
                for round in 0..2 {
                    for (i, (source, limits)) in bad.iter().enumerate() {
                        let exec = execution(rt, source, &json!(null)).limits(*limits);
                        match run_bounded(exec, HANG_GUARD).result {
                            Err(e) => assert_step_level(rt, &e),
                            Ok(text) => panic!("{rt}: bad step #{i} succeeded with {text:.80}"),
                        }
                        let n = worker * 1000 + round * 100 + i;
                        let outcome = run(
                            rt,
                            "export default (input, ctx) => { ctx.log('n', input.n); return input.n + 1; };",
                            &json!({ "n": n }),
                        );
                        assert_eq!(ok(&outcome), json!(n + 1), "after bad step #{i}");
                        assert_eq!(messages(&outcome), [format!("n {n}")]);
                    }
                }
            });
        }
    });
}
