//! One-line steps written to hurt a node, on both engines. Each fails that
//! step within its limits with a clear error, the node (this test process)
//! keeps its memory, and the next step runs:
//!
//! - thrown values whose `message`, `stack`, `toJSON` or every accessor
//!   loops forever (the host reads them after the step's deadline only
//!   without calling any JavaScript), several at once;
//! - `new Array(1e9).fill(0)` (no time check inside the builtin, and a
//!   fatal out-of-memory in V8);
//! - `import()` of a specifier longer than a V8 string can quote;
//! - `ctx.xml.stringify` and `ctx.xml.parse` bombs (a million items under a
//!   long key, deep nesting, huge attribute maps, a 2 GiB result);
//! - ArrayBuffers and heap together past the heap limit; `Intl` objects,
//!   which live outside V8's heap;
//! - errors and log lines of 100 MB (cut to a few KiB, size noted);
//! - call sites that would hand out the host's functions, and a prelude
//!   whose built-ins the step replaced.
//!
//! Steps that could hang if a bound were missing run under a hang guard
//! ([`run_bounded`]); no test asserts how long anything took.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use isoflow_engine::sandbox::{Limits, Runtime, StepError};
use serde_json::json;

macro_rules! hostile {
    ($module:ident, $variant:ident) => {
        per_runtime!(
            $module,
            $variant,
            [
                looping_error_accessors_are_stopped_at_the_deadline,
                looping_error_accessors_do_not_take_every_process,
                array_fill_1e9_fails_the_step,
                a_huge_dynamic_import_specifier_is_quoted_in_part,
                xml_stringify_bombs_fail_with_a_clear_error,
                xml_parse_of_a_large_document_is_bounded,
                array_buffers_and_heap_count_together,
                huge_error_texts_are_cut,
                huge_log_lines_are_cut,
                call_sites_never_hand_out_functions,
                the_prelude_survives_replaced_builtins,
                test_hooks_do_not_exist_in_production,
            ]
        );
    };
}

#[cfg(feature = "v8")]
hostile!(v8, V8);
#[cfg(feature = "quickjs")]
hostile!(quickjs, QuickJs);

/// Many times any bound under test; only reached if one is missing.
const HANG_GUARD: Duration = Duration::from_secs(120);
const MIB: usize = 1024 * 1024;

fn bounded(rt: Runtime, source: &str, limits: Limits) -> Result<String, StepError> {
    run_bounded(
        execution(rt, source, &json!(null)).limits(limits),
        HANG_GUARD,
    )
    .result
}

const LOOPING_THROWS: &[&str] = &[
    // The message getter of a real Error.
    r#"export default () => { throw Object.defineProperty(new Error("x"), "message", { get() { while (true) {} } }); };"#,
    // The stack.
    r#"export default () => { const e = new Error("x"); Object.defineProperty(e, "stack", { get() { for (;;) {} } }); throw e; };"#,
    // Error.prepareStackTrace, which V8 calls when `stack` is read.
    r#"export default () => { Error.prepareStackTrace = () => { for (;;) {} }; throw new Error("x"); };"#,
    // A thrown object's toJSON.
    r#"export default () => { throw { toJSON() { while (true) {} } }; };"#,
    // The name of an error, read by its toString.
    r#"export default () => { const e = new TypeError("x"); Object.defineProperty(e, "name", { get() { for (;;) {} } }); throw e; };"#,
    // Every accessor and trap of a thrown value.
    r#"export default () => {
  const spin = () => { for (;;) {} };
  throw new Proxy({}, { get: spin, has: spin, ownKeys: spin, getOwnPropertyDescriptor: spin, getPrototypeOf: spin });
};"#,
    // A rejected promise with a looping getter.
    r#"export default async () => { await null; throw Object.defineProperty(new Error("x"), "message", { get() { while (true) {} } }); };"#,
];

fn looping_error_accessors_are_stopped_at_the_deadline(rt: Runtime) {
    let limits = timeout(300);
    for source in LOOPING_THROWS {
        match bounded(rt, source, limits) {
            Err(StepError::Timeout { limit }) => assert_eq!(limit, limits.timeout),
            // QuickJS builds an error's stack when it is made, before
            // anything loops, and may have the message already.
            Err(StepError::Exception { message, .. }) => {
                assert!(message.len() < 9 * 1024, "{rt}: {source}: {message}")
            }
            other => panic!("{rt}: {source}: expected the time limit, got {other:?}"),
        }
        assert_healthy(rt, source);
    }
}

fn looping_error_accessors_do_not_take_every_process(rt: Runtime) {
    // More of them at once than the sandbox runs steps at once: if any kept
    // its process past the deadline, the healthy step at the end would
    // wait forever.
    let limits = timeout(300);
    std::thread::scope(|scope| {
        for source in LOOPING_THROWS.iter().take(4) {
            scope.spawn(move || {
                let result = bounded(rt, source, limits);
                assert!(result.is_err(), "{rt}: {source}");
            });
        }
    });
    assert_healthy(rt, "looping error accessors, at once");
}

fn array_fill_1e9_fails_the_step(rt: Runtime) {
    let limits = Limits {
        heap_bytes: 64 * MIB,
        timeout: Duration::from_secs(2),
        ..Limits::default()
    };
    match bounded(
        rt,
        "export default () => new Array(1e9).fill(0).length;",
        limits,
    ) {
        Err(
            StepError::Timeout { .. }
            | StepError::HeapLimit { .. }
            | StepError::MemoryLimit { .. }
            | StepError::Crashed { .. },
        ) => {}
        Err(StepError::Exception { message, .. }) if message.starts_with("RangeError") => {}
        other => panic!("{rt}: new Array(1e9).fill(0): {other:?}"),
    }
    assert_healthy(rt, "new Array(1e9).fill(0)");
}

fn a_huge_dynamic_import_specifier_is_quoted_in_part(rt: Runtime) {
    // The longest string V8 can make, as the specifier: the sentence that
    // quotes it would be longer than any string.
    let source = r#"
export default async () => {
  const specifier = "x".repeat((1 << 29) - 24);
  try { await import(specifier); } catch (e) { return String(e.message).length; }
  return "imported";
};"#;
    let limits = Limits {
        heap_bytes: 1536 * MIB,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    match bounded(rt, source, limits) {
        Ok(length) => {
            let length: usize = length.parse().expect("a number");
            assert!(
                length < 1024,
                "{rt}: the refusal quotes {length} characters"
            );
        }
        // QuickJS copies the specifier to resolve it, which a heap of its
        // own size cannot hold.
        Err(StepError::HeapLimit { .. }) if rt == Runtime::QuickJs => {}
        Err(StepError::Module { message }) => {
            assert!(message.len() < 9 * 1024, "{rt}: {}", message.len())
        }
        Err(StepError::Exception { message, .. }) => {
            assert!(message.len() < 9 * 1024, "{rt}: {}", message.len())
        }
        other => panic!("{rt}: {other:?}"),
    }
    assert_healthy(rt, "a huge import specifier");
}

fn xml_stringify_bombs_fail_with_a_clear_error(rt: Runtime) {
    let limits = Limits {
        heap_bytes: 64 * MIB,
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    let bombs = [
        // A million items under a 1,000-character key: 2 GB of XML from a
        // few MB of JSON.
        r#"export default (_, ctx) => ctx.xml.stringify({ r: { ["k".repeat(1000)]: new Array(1e6).fill("") } }).length;"#,
        // Deep nesting, pretty-printed at the widest indent: each of the
        // 100,000 leaves on a line of its own, 580 spaces in.
        r#"export default (_, ctx) => {
  let v = { leaf: new Array(1e5).fill("") }; for (let i = 0; i < 57; i++) v = { a: v };
  return ctx.xml.stringify({ r: v }, { indent: 10 }).length;
};"#,
        // A result past 2 GiB.
        r#"export default (_, ctx) => ctx.xml.stringify({ r: { a: new Array(2e5).fill("y".repeat(12000)) } }).length;"#,
    ];
    for bomb in bombs {
        match bounded(rt, bomb, limits) {
            Err(StepError::Exception { message, .. }) => assert!(
                message.contains("ctx.xml.stringify") && message.contains("memory"),
                "{rt}: {bomb}: {message}"
            ),
            Err(StepError::HeapLimit { .. }) => {}
            other => panic!("{rt}: {bomb}: expected ctx.xml's memory error, got {other:?}"),
        }
        assert_healthy(rt, bomb);
    }
    // A huge attribute map still works within the limit.
    let attributes = r#"export default (_, ctx) => {
  const r = {}; for (let i = 0; i < 100000; i++) r["@a" + i] = "v";
  return ctx.xml.parse(ctx.xml.stringify({ r })).r["@a99999"];
};"#;
    assert_eq!(
        bounded(rt, attributes, limits).map_err(|e| e.to_string()),
        Ok("\"v\"".into())
    );
}

fn xml_parse_of_a_large_document_is_bounded(rt: Runtime) {
    // 32 MB of small elements: an order of magnitude more as objects.
    let source = r#"
export default (_, ctx) => {
  const doc = "<r>" + "<i/>".repeat(8 << 20) + "</r>";
  return ctx.xml.parse(doc).r.i.length;
};"#;
    let limits = Limits {
        heap_bytes: 128 * MIB,
        timeout: Duration::from_secs(60),
        ..Limits::default()
    };
    match bounded(rt, source, limits) {
        Err(StepError::Exception { message, .. }) => assert!(
            message.contains("ctx.xml.parse") && message.contains("memory"),
            "{rt}: {message}"
        ),
        Err(StepError::HeapLimit { .. }) => {}
        other => panic!("{rt}: expected ctx.xml.parse's memory error, got {other:?}"),
    }
    assert_healthy(rt, "a 32 MB document");
}

fn array_buffers_and_heap_count_together(rt: Runtime) {
    // 100 MiB of buffers and 100 MiB of heap under a 128 MiB limit, in
    // both orders.
    // (12,800 arrays of 1,024 doubles: 100 MiB of heap.)
    let sources = [
        r#"export default () => {
  const b = new Uint8Array(100 << 20); b.fill(1);
  const keep = []; for (let i = 0; i < 12800; i++) keep.push(new Array(1024).fill(i + 0.5));
  return keep.length + b.length;
};"#,
        r#"export default () => {
  const keep = []; for (let i = 0; i < 12800; i++) keep.push(new Array(1024).fill(i + 0.5));
  const b = new Uint8Array(100 << 20); b.fill(1);
  return keep.length + b.length;
};"#,
    ];
    let limits = Limits {
        heap_bytes: 128 * MIB,
        timeout: Duration::from_secs(30),
        ..Limits::default()
    };
    for source in sources {
        match bounded(rt, source, limits) {
            Err(StepError::HeapLimit { .. } | StepError::MemoryLimit { .. }) => {}
            Err(StepError::Exception { message, .. }) if message.starts_with("RangeError") => {}
            other => panic!("{rt}: 200 MiB under a 128 MiB limit: {other:?}"),
        }
        assert_healthy(rt, source);
    }
}

fn huge_error_texts_are_cut(rt: Runtime) {
    let sources = [
        r#"export default () => { throw new Error("x".repeat(100e6)); };"#,
        r#"export default () => { throw "y".repeat(100e6); };"#,
        r#"export default () => { throw { big: "z".repeat(50e6) }; };"#,
    ];
    let limits = Limits {
        heap_bytes: 1024 * MIB,
        ..Limits::default()
    };
    for source in sources {
        match bounded(rt, source, limits) {
            Err(StepError::Exception { message, stack, .. }) => {
                assert!(message.len() <= 8 * 1024 + 64, "{rt}: {}", message.len());
                assert!(
                    message.contains("(cut: "),
                    "{rt}: the original size is noted"
                );
                assert!(stack.is_none_or(|s| s.len() <= 8 * 1024 + 64), "{rt}");
            }
            other => panic!("{rt}: {source}: {other:?}"),
        }
    }
    assert_healthy(rt, "huge error texts");
}

fn huge_log_lines_are_cut(rt: Runtime) {
    let limits = Limits {
        heap_bytes: 512 * MIB,
        ..Limits::default()
    };
    let outcome = run_with(
        rt,
        r#"export default () => { console.log("w".repeat(100e6)); return 1; };"#,
        &json!(null),
        limits,
    );
    assert_eq!(ok(&outcome), json!(1));
    let line = &outcome.logs[0].message;
    assert!(
        line.len() < Limits::MAX_LOG_LINE_BYTES + 64,
        "{rt}: {}",
        line.len()
    );
    assert!(
        line.ends_with(&format!(
            "({} bytes cut)",
            100_000_000 - Limits::MAX_LOG_LINE_BYTES
        )),
        "{rt}: {}",
        &line[line.len() - 40..]
    );
}

fn call_sites_never_hand_out_functions(rt: Runtime) {
    // An error thrown by ctx.xml has the host's own function in its trace;
    // the prelude's functions are in every trace of a console call.
    let source = r#"
export default (_, ctx) => {
  const found = [];
  Error.prepareStackTrace = (e, sites) => {
    for (const site of sites) {
      const f = site.getFunction && site.getFunction();
      if (f !== undefined && f !== null) found.push(String(f.name || "anonymous"));
      const t = site.getThis && site.getThis();
      if (t !== undefined && t !== null && t !== globalThis) found.push("this");
    }
    return "";
  };
  try { ctx.xml.parse("<unclosed>"); } catch (e) { void e.stack; }
  console.log({ toJSON() { void new Error("inside the prelude").stack; return 1; } });
  Error.prepareStackTrace = undefined;
  return found;
};"#;
    assert_eq!(output(rt, source, &json!(null)), json!([]), "{rt}");
}

fn the_prelude_survives_replaced_builtins(rt: Runtime) {
    // Everything the prelude's own code could call, replaced or trapped:
    // logging and output (a cycle's path, an Error with a stack) still work.
    let source = r#"
export default (_, ctx) => {
  const trap = () => { throw new Error("the prelude called a replaced built-in"); };
  for (const name of ["push", "pop", "slice", "indexOf", "join", "map", "concat"]) Array.prototype[name] = trap;
  String.prototype.startsWith = trap;
  String.prototype.slice = trap;
  Symbol.prototype.toString = trap;
  Object.defineProperty(Array.prototype, "0", { set: trap, configurable: true });
  Object.defineProperty(Object.prototype, "get", { value: trap, configurable: true });
  Function.prototype.call = trap;
  Function.prototype.apply = trap;
  Function.prototype.bind = trap;
  console.log(new Error("logged"), Symbol("s"));
  const a = { n: 1 }; a.self = [a];
  return a;
};"#;
    match run(rt, source, &json!(null)).result {
        Err(StepError::NotSerializable { reason }) => assert_eq!(
            reason, "output.self[0] refers back to output (a cycle)",
            "{rt}"
        ),
        other => panic!("{rt}: {other:?}"),
    }
    let logged = run(
        rt,
        r#"export default () => {
  String.prototype.startsWith = () => { throw new Error("replaced"); };
  Array.prototype.push = () => { throw new Error("replaced"); };
  console.log(new Error("boom"), Symbol("s"));
  return 1;
};"#,
        &json!(null),
    );
    assert_eq!(ok(&logged), json!(1));
    let line = &logged.logs[0].message;
    assert!(
        line.starts_with("Error: boom") && line.ends_with("Symbol(s)"),
        "{rt}: {line}"
    );
}

fn test_hooks_do_not_exist_in_production(rt: Runtime) {
    assert_eq!(
        output(
            rt,
            "export default () => typeof isoflowTestHook;",
            &json!(null)
        ),
        json!("undefined")
    );
}
