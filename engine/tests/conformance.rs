//! The code-step contract, one behaviour per test, on every runtime: what a
//! step receives (`input`, `ctx`), what it may return and how that is checked
//! and serialised, what it logs and how, `ctx.xml`, the absence of ambient
//! authority, and how each kind of mistake is reported (variant, message key
//! words, 1-based line and column in the user's own source).
//!
//! Engine differences that are legitimate (`Intl`, the wording of engine
//! messages) are branched on explicitly, with the reason beside the branch.

#[macro_use]
mod common;

use std::time::{Duration, SystemTime};

use common::*;
use isoflow_engine::sandbox::{
    Execution, Limits, LogLevel, LogLimitKind, Runtime, Script, StepError,
};
use serde_json::{Value, json};

macro_rules! conformance {
    ($module:ident, $variant:ident) => {
        per_runtime!(
            $module,
            $variant,
            [
                basic_transform,
                input_of_every_json_type,
                ctx_is_frozen_and_complete,
                async_function_and_await_chain,
                promise_returned_from_a_plain_function,
                top_level_await,
                module_state_is_fresh_each_execution,
                unicode_round_trip,
                raw_nul_in_source_and_logs,
                lone_surrogates_give_valid_json,
                fifty_megabyte_input,
                xml_parse_maps_elements_attributes_and_repeats,
                xml_parse_mixed_content_uses_text_key,
                xml_parse_always_array,
                xml_stringify_is_the_inverse_of_parse,
                xml_malformed_is_a_catchable_exception_with_position,
                xml_malformed_uncaught_fails_the_step,
                xml_bad_arguments_are_type_errors,
                console_levels_and_ctx_log,
                log_formatting_of_values,
                log_formatting_of_errors,
                logs_are_kept_when_the_step_fails,
                log_line_limit,
                log_line_limit_exactly_reached_is_fine,
                log_bytes_limit,
                log_limit_cannot_be_caught,
                long_log_line_is_cut,
                output_limit,
                output_limit_counts_utf8_bytes,
                intl_only_on_v8,
                no_ambient_authority,
                globals_are_the_language_and_console,
                static_import_is_rejected,
                dynamic_import_is_rejected,
                eval_and_new_function_work_inside_the_sandbox,
                missing_default_export_is_a_module_error,
                default_export_not_a_function_is_a_module_error,
                syntax_error_reports_line_and_column,
                syntax_error_on_the_first_line,
                syntax_error_column_counts_characters,
                thrown_error_reports_message_location_and_stack,
                error_thrown_while_loading_the_module,
                engine_type_error_is_an_exception,
                thrown_string,
                thrown_number,
                thrown_object,
                rejected_promise_is_an_exception,
                not_serializable_function_at_top,
                nested_functions_follow_json_stringify,
                not_serializable_bigint,
                not_serializable_cycle,
                not_serializable_undefined_at_top,
                not_serializable_symbol,
                json_semantics_for_nested_undefined_and_non_finite,
                to_json_is_respected,
                invalid_input_json_is_an_input_error,
                proto_key_in_input_is_plain_data,
            ],
            async [execute_async_returns_the_outcome, execute_async_many_at_once]
        );
    };
}

#[cfg(feature = "v8")]
conformance!(v8, V8);
#[cfg(feature = "quickjs")]
conformance!(quickjs, QuickJs);

// ---------------------------------------------------------------------------
// Input, output, async

fn basic_transform(rt: Runtime) {
    let source = r#"
export default function (input, ctx) {
  const lines = input.items.map((i) => ({ name: i.name.toUpperCase(), total: i.price * i.qty }));
  return {
    customer: input.customer,
    lines,
    total: lines.reduce((sum, l) => sum + l.total, 0),
    count: lines.length,
  };
}
"#;
    let input = json!({
        "customer": "ACME",
        "items": [
            {"name": "bolt", "price": 2.5, "qty": 4},
            {"name": "nut", "price": 0.25, "qty": 10},
        ]
    });
    assert_eq!(
        output(rt, source, &input),
        json!({
            "customer": "ACME",
            "lines": [{"name": "BOLT", "total": 10}, {"name": "NUT", "total": 2.5}],
            "total": 12.5,
            "count": 2,
        })
    );
}

fn input_of_every_json_type(rt: Runtime) {
    let source = "export default (input) => ({ type: Array.isArray(input) ? 'array' : input === null ? 'null' : typeof input, value: input })";
    for (input, ty) in [
        (json!(null), "null"),
        (json!(true), "boolean"),
        (json!(-17), "number"),
        (json!(2.5e-8), "number"),
        (json!("text"), "string"),
        (json!([1, "two", [3]]), "array"),
        (json!({"a": {"b": [null]}}), "object"),
    ] {
        assert_eq!(
            output(rt, source, &input),
            json!({ "type": ty, "value": input }),
            "input {input}"
        );
    }
}

fn ctx_is_frozen_and_complete(rt: Runtime) {
    let source = r#"
export default (input, ctx) => ({
  frozen: Object.isFrozen(ctx) && Object.isFrozen(ctx.log) && Object.isFrozen(ctx.xml),
  log: [typeof ctx.log, typeof ctx.log.debug, typeof ctx.log.info, typeof ctx.log.warn, typeof ctx.log.error],
  xml: [typeof ctx.xml.parse, typeof ctx.xml.stringify],
  keys: Object.keys(ctx).sort(),
})
"#;
    assert_eq!(
        output(rt, source, &json!(null)),
        json!({
            "frozen": true,
            "log": ["function", "function", "function", "function", "function"],
            "xml": ["function", "function"],
            "keys": ["log", "xml"],
        })
    );
}

fn async_function_and_await_chain(rt: Runtime) {
    let source = r#"
async function double(x) { await null; return x * 2; }
export default async function (input) {
  const a = await Promise.resolve(input.n);
  const b = await double(a);
  const c = await new Promise((resolve) => resolve(b + 1));
  const [d, e] = await Promise.all([double(c), (async () => "done")()]);
  return [a, b, c, d, e];
}
"#;
    assert_eq!(
        output(rt, source, &json!({"n": 5})),
        json!([5, 10, 11, 22, "done"])
    );
}

fn promise_returned_from_a_plain_function(rt: Runtime) {
    let source = r#"
export default (input) =>
  Promise.resolve(input)
    .then((x) => x + 1)
    .then((x) => Promise.resolve(x * 10))
    .then((x) => ({ x }));
"#;
    assert_eq!(output(rt, source, &json!(1)), json!({"x": 20}));
}

fn top_level_await(rt: Runtime) {
    let source = r#"
const base = await Promise.resolve(40);
const extra = await (async () => { await null; return 1; })();
export default (input) => base + extra + input;
"#;
    assert_eq!(output(rt, source, &json!(1)), json!(42));
}

fn module_state_is_fresh_each_execution(rt: Runtime) {
    let source = r#"
let calls = 0;
globalThis.runs = (globalThis.runs || 0) + 1;
export default () => { calls += 1; return [calls, globalThis.runs]; }
"#;
    for _ in 0..6 {
        assert_eq!(output(rt, source, &json!(null)), json!([1, 1]));
    }
}

fn unicode_round_trip(rt: Runtime) {
    let source = r#"
export default (input) => {
  console.log(input.emoji, input.rtl);
  return {
    echo: input,
    utf16Lengths: Object.fromEntries(Object.entries(input).map(([k, v]) => [k, v.length])),
    codePoints: [...input.gothic].length,
    made: "\u{1F600}" + "\u05E9" + "\u0000" + "é",
    upper: input.accents.toUpperCase(),
  };
};
"#;
    let input = json!({
        "emoji": "😀👩‍👩‍👧",
        "gothic": "𝔘𝔫𝔦𝔠𝔬𝔡𝔢",
        "rtl": "مرحبا שלום",
        "nul": "a\u{0}b",
        "controls": "\t\n\r\u{1}\u{1f}\u{7f}",
        "separators": "\u{2028}\u{2029}",
        "accents": "écoute naïve",
        "combining": "e\u{301}",
    });
    let outcome = run(rt, source, &input);
    assert_eq!(
        ok(&outcome),
        json!({
            "echo": input,
            "utf16Lengths": {
                "emoji": 10, "gothic": 14, "rtl": 10, "nul": 3, "controls": 6,
                "separators": 2, "accents": 12, "combining": 2,
            },
            "codePoints": 7,
            "made": "😀ש\u{0}é",
            "upper": "ÉCOUTE NAÏVE",
        })
    );
    assert_eq!(messages(&outcome), ["😀👩‍👩‍👧 مرحبا שלום"]);
}

fn raw_nul_in_source_and_logs(rt: Runtime) {
    // NUL in a string (written as an escape) reaches the output and the log
    // line whole: a bridge that passed C strings would cut both at the NUL.
    // (In logs, control characters are shown escaped, so that a log line
    // cannot drive a terminal.)
    let escaped = r#"export default () => { const s = "before\0after"; console.log(s, "|"); return [s, s.length]; }"#;
    let outcome = run(rt, escaped, &json!(null));
    assert_eq!(ok(&outcome), json!(["before\u{0}after", 12]));
    assert_eq!(messages(&outcome), ["before\\u{0}after |"]);

    // A raw NUL character in the source text, which JavaScript allows inside
    // a string literal.
    let raw = "export default () => { const s = \"before\0after\"; return s; }";
    match rt {
        Runtime::V8 => assert_eq!(output(rt, raw, &json!(null)), json!("before\u{0}after")),
        // rquickjs hands QuickJS its source as a C string, so the backend
        // refuses a raw NUL up front, as a syntax error at the NUL (line 1,
        // column 41) that says how to write it instead.
        Runtime::QuickJs => match error(rt, raw, &json!(null)) {
            StepError::Syntax { message, location } => {
                assert_eq!((location.line, location.column), (1, 41), "{message}");
                assert!(message.contains("NUL"), "{message}");
            }
            other => panic!("expected a syntax error, got {other:?}"),
        },
    }
}

fn lone_surrogates_give_valid_json(rt: Runtime) {
    // A JS string may hold unpaired UTF-16 surrogates; JSON.stringify then
    // writes `\ud800` escapes, which strict JSON parsers (serde_json, the
    // engine's own) reject. The output and the logs must still be valid:
    // the sensible mapping is U+FFFD, as in any lossy UTF-16 to UTF-8 step.
    let source = r#"
export default (input) => {
  const lone = "a\uD800b";
  const reversed = "\uDC00\uD800";
  console.log(lone);
  return { lone, reversed, fromInput: input, inputLength: input.length, pair: "\uD83D\uDE00" };
};
"#;
    let exec = Execution::new(rt, Script::new(FILENAME, source), r#""x\udfffy""#);
    let outcome = sandbox().execute_blocking(exec);
    assert_eq!(
        ok(&outcome),
        json!({
            "lone": "a\u{FFFD}b",
            "reversed": "\u{FFFD}\u{FFFD}",
            "fromInput": "x\u{FFFD}y",
            "inputLength": 3,
            "pair": "😀",
        })
    );
    assert_eq!(messages(&outcome), ["a\u{FFFD}b"]);
}

fn fifty_megabyte_input(rt: Runtime) {
    use std::fmt::Write;

    // ~50 MB of JSON text: about 290,000 orders of ~180 bytes.
    let note = "lorem ipsum dolor sit amet ".repeat(4);
    let mut input = String::with_capacity(52 << 20);
    let mut expected_output_len = 0;
    let (mut count, mut total) = (0u64, 0u64);
    input.push('[');
    while input.len() < 50 << 20 {
        if count > 0 {
            input.push(',');
        }
        let amount = count % 1000;
        write!(
            input,
            r#"{{"id":{count},"amount":{amount},"customer":"customer-{:06}","note":"{note}"}}"#,
            count % 5000
        )
        .expect("writing to a String");
        expected_output_len += format!(
            r#"{{"id":{count},"amount":{amount},"note":"{}"}},"#,
            note.to_uppercase()
        )
        .len();
        total += amount;
        count += 1;
    }
    input.push(']');
    assert!(input.len() >= 50 << 20);

    let source = r#"
export default function (orders) {
  let total = 0;
  const customers = new Set();
  const out = orders.map((o) => {
    total += o.amount;
    customers.add(o.customer);
    return { id: o.id, amount: o.amount, note: o.note.toUpperCase() };
  });
  return { count: orders.length, total, customers: customers.size, orders: out };
}
"#;
    // The 50 MB of text, the ~290,000 parsed objects, their upper-cased
    // copies and the ~45 MB output string are all alive at once: several
    // hundred MB of heap on either engine, far over the 128 MiB default.
    // The output is over the 64 MiB-default's comfort too, and a debug build
    // of QuickJS needs longer than the 30 s default to parse it all.
    let limits = Limits {
        heap_bytes: 1 << 30,
        output_bytes: 256 << 20,
        timeout: Duration::from_secs(300),
        ..Limits::default()
    };
    let exec = Execution::new(rt, Script::new(FILENAME, source), input).limits(limits);
    let outcome = sandbox().execute_blocking(exec);
    let text = outcome
        .result
        .as_ref()
        .unwrap_or_else(|e| panic!("50 MB step failed: {e}"));
    let head = format!(r#"{{"count":{count},"total":{total},"customers":5000,"orders":["#);
    assert!(
        text.starts_with(&head),
        "output starts {:?}",
        &text[..200.min(text.len())]
    );
    // `head` + every order with its comma, minus the last comma, plus `]}`.
    assert_eq!(text.len(), head.len() + expected_output_len - 1 + 2);
    let value: Value = serde_json::from_str(text).expect("output is JSON");
    let orders = value["orders"].as_array().expect("orders array");
    assert_eq!(orders.len() as u64, count);
    let last = count - 1;
    assert_eq!(
        orders[last as usize],
        json!({"id": last, "amount": last % 1000, "note": note.to_uppercase()})
    );
}

// ---------------------------------------------------------------------------
// ctx.xml

fn xml_parse_maps_elements_attributes_and_repeats(rt: Runtime) {
    let source = r#"
export default (input, ctx) => ctx.xml.parse(input);
"#;
    let xml = r#"<?xml version="1.0"?>
<order id="7" status="open">
  <customer>ACME &amp; Sons</customer>
  <item sku="A1"><qty>2</qty></item>
  <item sku="B2"><qty>5</qty></item>
  <note>ship &lt;fast&gt;</note>
</order>"#;
    assert_eq!(
        output(rt, source, &json!(xml)),
        json!({
            "order": {
                "@id": "7",
                "@status": "open",
                "customer": "ACME & Sons",
                "item": [
                    {"@sku": "A1", "qty": "2"},
                    {"@sku": "B2", "qty": "5"},
                ],
                "note": "ship <fast>",
            }
        })
    );
}

fn xml_parse_mixed_content_uses_text_key(rt: Runtime) {
    let source = "export default (input, ctx) => ctx.xml.parse(input);";
    assert_eq!(
        output(rt, source, &json!(r#"<p lang="en">Hello <b>world</b></p>"#)),
        json!({"p": {"@lang": "en", "#text": "Hello ", "b": "world"}})
    );
}

fn xml_parse_always_array(rt: Runtime) {
    let source = r#"
export default (input, ctx) => ({
  named: ctx.xml.parse(input, { alwaysArray: ["item"] }),
  plain: ctx.xml.parse(input),
});
"#;
    let xml = "<list><item>one</item><title>t</title></list>";
    assert_eq!(
        output(rt, source, &json!(xml)),
        json!({
            "named": {"list": {"item": ["one"], "title": "t"}},
            "plain": {"list": {"item": "one", "title": "t"}},
        })
    );
    let all = output(
        rt,
        "export default (input, ctx) => ctx.xml.parse(input, { alwaysArray: true });",
        &json!(xml),
    );
    assert_eq!(
        all["list"]["item"],
        json!(["one"]),
        "alwaysArray: true gave {all}"
    );
    assert_eq!(
        all["list"]["title"],
        json!(["t"]),
        "alwaysArray: true gave {all}"
    );
}

fn xml_stringify_is_the_inverse_of_parse(rt: Runtime) {
    let source = r#"
export default (input, ctx) => {
  const text = ctx.xml.stringify(input);
  return { text, back: ctx.xml.parse(text) };
};
"#;
    let value = json!({
        "order": {
            "@id": "7",
            "customer": "ACME & <Sons>",
            "item": [{"@sku": "A1", "qty": "2"}, {"@sku": "B2", "qty": "5"}],
            "note": "ünïcödé 😀",
        }
    });
    let out = output(rt, source, &value);
    assert_eq!(out["back"], value, "stringify gave {}", out["text"]);
    let text = out["text"].as_str().expect("stringify returns a string");
    assert!(text.contains(r#"<order id="7">"#), "{text}");
    assert!(text.contains("ACME &amp; &lt;Sons&gt;"), "{text}");
    assert_eq!(text.matches("<item ").count(), 2, "{text}");
}

fn xml_malformed_is_a_catchable_exception_with_position(rt: Runtime) {
    let source = r#"
export default (input, ctx) => {
  try {
    ctx.xml.parse(input);
    return "parsed";
  } catch (e) {
    return { isError: e instanceof Error, message: e.message };
  }
};
"#;
    // The closing tag on line 3 does not match `<b>` opened on line 2.
    let out = output(rt, source, &json!("<a>\n  <b>text\n</a>"));
    assert_eq!(out["isError"], json!(true), "{out}");
    let message = out["message"].as_str().expect("message");
    assert!(message.contains("ctx.xml.parse"), "{message}");
    assert!(
        message.contains("line 3") || message.contains("3:"),
        "malformed XML error should give the line (3): {message}"
    );
    assert!(
        message.contains("column"),
        "malformed XML error should give the column: {message}"
    );
}

fn xml_malformed_uncaught_fails_the_step(rt: Runtime) {
    let err = error(
        rt,
        "export default (input, ctx) => ctx.xml.parse('<a><b></a>');",
        &json!(null),
    );
    match err {
        StepError::Exception { message, .. } => {
            assert!(message.contains("ctx.xml.parse"), "{message}")
        }
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn xml_bad_arguments_are_type_errors(rt: Runtime) {
    let source = r#"
export default (input, ctx) => {
  const attempts = [
    () => ctx.xml.parse(42),
    () => ctx.xml.parse("<a/>", 5),
    () => ctx.xml.parse("<a/>", ["x"]),
    () => ctx.xml.stringify(undefined),
    () => ctx.xml.stringify({ a: 1 }, "pretty"),
  ];
  return attempts.map((f) => {
    try { f(); return "no error"; } catch (e) { return e.name + ": " + e.message; }
  });
};
"#;
    assert_eq!(
        output(rt, source, &json!(null)),
        json!([
            "TypeError: ctx.xml.parse: expected a string of XML, got number",
            "TypeError: ctx.xml.parse: options must be an object",
            "TypeError: ctx.xml.parse: options must be an object",
            "TypeError: ctx.xml.stringify: expected an object with one root element, such as { order: { id: 1 } }",
            "TypeError: ctx.xml.stringify: options must be an object",
        ])
    );
}

// ---------------------------------------------------------------------------
// Logs

fn console_levels_and_ctx_log(rt: Runtime) {
    let source = r#"
export default (input, ctx) => {
  console.debug("d"); console.log("l"); console.info("i");
  console.warn("w"); console.error("e"); console.trace("t");
  ctx.log("c"); ctx.log.debug("cd"); ctx.log.info("ci"); ctx.log.warn("cw"); ctx.log.error("ce");
  return null;
};
"#;
    let before = SystemTime::now();
    let outcome = run(rt, source, &json!(null));
    let after = SystemTime::now();
    assert_eq!(ok(&outcome), json!(null));
    use LogLevel::*;
    assert_eq!(
        outcome
            .logs
            .iter()
            .map(|l| (l.level, l.message.as_str()))
            .collect::<Vec<_>>(),
        [
            (Debug, "d"),
            (Info, "l"),
            (Info, "i"),
            (Warn, "w"),
            (Error, "e"),
            (Debug, "t"),
            (Info, "c"),
            (Debug, "cd"),
            (Info, "ci"),
            (Warn, "cw"),
            (Error, "ce"),
        ]
    );
    // Each line carries the time it was logged, not a placeholder.
    for line in &outcome.logs {
        assert!(line.time >= before && line.time <= after, "{line:?}");
    }
}

fn log_formatting_of_values(rt: Runtime) {
    let source = r#"
export default () => {
  console.log("a", 1, 1.5, -0, true, null, undefined, { x: [1, "y"] }, [1, 2],
    function foo() {}, () => 1, 10n, Symbol("s"), NaN);
  const cyclic = { name: "c" };
  cyclic.self = cyclic;
  console.log(cyclic);
  console.log({ toJSON() { return "custom"; } });
  console.log();
  return null;
};
"#;
    let outcome = run(rt, source, &json!(null));
    assert_eq!(ok(&outcome), json!(null));
    assert_eq!(
        messages(&outcome),
        [
            r#"a 1 1.5 0 true null undefined {"x":[1,"y"]} [1,2] [Function foo] [Function (anonymous)] 10n Symbol(s) NaN"#,
            "[object Object]",
            r#""custom""#,
            "",
        ]
    );
}

fn log_formatting_of_errors(rt: Runtime) {
    // An Error is logged with its message and its stack, so a user sees what
    // went wrong and where.
    let source = r#"
export default () => {
  function check() { return new TypeError("bad thing"); }
  console.error(check());
  console.log("caught:", new RangeError("out of range"));
  return null;
};
"#;
    let outcome = run(rt, source, &json!(null));
    assert_eq!(ok(&outcome), json!(null));
    let lines = messages(&outcome);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert_eq!(outcome.logs[0].level, LogLevel::Error);
    assert!(
        lines[0].starts_with("TypeError: bad thing\n"),
        "{:?}",
        lines[0]
    );
    assert!(lines[0].contains("check"), "{:?}", lines[0]);
    assert!(lines[0].contains("step.js:3:"), "{:?}", lines[0]);
    assert!(
        lines[1].starts_with("caught: RangeError: out of range\n"),
        "{:?}",
        lines[1]
    );
}

fn logs_are_kept_when_the_step_fails(rt: Runtime) {
    let source = r#"
export default async (input, ctx) => {
  console.log("starting", input.id);
  await null;
  ctx.log.warn("about to fail");
  throw new Error("failed " + input.id);
};
"#;
    let outcome = run(rt, source, &json!({"id": 9}));
    assert!(matches!(
        &outcome.result,
        Err(StepError::Exception { message, .. }) if message.contains("failed 9")
    ));
    assert_eq!(messages(&outcome), ["starting 9", "about to fail"]);
    assert_eq!(levels(&outcome), [LogLevel::Info, LogLevel::Warn]);
}

fn log_line_limit(rt: Runtime) {
    let limits = Limits {
        log_lines: 5,
        ..Limits::default()
    };
    let source = r#"
export default (input, ctx) => {
  for (let i = 0; i < 10; i++) (i % 2 ? ctx.log : console.log)("line " + i);
  return "finished";
};
"#;
    let outcome = run_with(rt, source, &json!(null), limits);
    let err = err(&outcome);
    assert_eq!(
        err,
        StepError::LogLimit {
            what: LogLimitKind::Lines,
            limit: 5
        }
    );
    assert_eq!(
        err.to_string(),
        "step logged more than 5 lines, the log limit"
    );
    assert_eq!(
        messages(&outcome),
        ["line 0", "line 1", "line 2", "line 3", "line 4"]
    );
}

fn log_line_limit_exactly_reached_is_fine(rt: Runtime) {
    let limits = Limits {
        log_lines: 5,
        log_bytes: 30,
        ..Limits::default()
    };
    // Five lines of six bytes: both limits reached exactly, neither exceeded.
    let source = r#"
export default () => { for (let i = 0; i < 5; i++) console.log("line " + i); return "ok"; };
"#;
    let outcome = run_with(rt, source, &json!(null), limits);
    assert_eq!(ok(&outcome), json!("ok"));
    assert_eq!(outcome.logs.len(), 5);
}

fn log_bytes_limit(rt: Runtime) {
    let limits = Limits {
        log_bytes: 100,
        ..Limits::default()
    };
    // 30 bytes a line: the fourth line would make 120 bytes.
    let source = r#"
export default () => { for (let i = 0; i < 10; i++) console.log(String(i).repeat(30)); return "finished"; };
"#;
    let outcome = run_with(rt, source, &json!(null), limits);
    assert_eq!(
        err(&outcome),
        StepError::LogLimit {
            what: LogLimitKind::Bytes,
            limit: 100
        }
    );
    assert_eq!(
        messages(&outcome),
        ["0".repeat(30), "1".repeat(30), "2".repeat(30)]
    );
}

fn log_limit_cannot_be_caught(rt: Runtime) {
    let limits = Limits {
        log_lines: 3,
        ..Limits::default()
    };
    let source = r#"
export default () => {
  for (let i = 0; i < 10; i++) {
    try { console.log("line " + i); } catch (e) { /* a step cannot opt out */ }
  }
  return "swallowed";
};
"#;
    let outcome = run_with(rt, source, &json!(null), limits);
    assert_eq!(
        err(&outcome),
        StepError::LogLimit {
            what: LogLimitKind::Lines,
            limit: 3
        }
    );
    assert_eq!(outcome.logs.len(), 3);
}

fn long_log_line_is_cut(rt: Runtime) {
    let source = r#"export default () => { console.log("é" + "x".repeat(20000)); return null; };"#;
    let outcome = run(rt, source, &json!(null));
    assert_eq!(ok(&outcome), json!(null));
    let message = &outcome.logs[0].message;
    let max = Limits::MAX_LOG_LINE_BYTES;
    // 20,002 bytes of UTF-8 cut to 16,384 bytes (the "é" is two of them).
    let cut = 20_002 - max;
    assert_eq!(
        *message,
        format!("é{}… ({cut} bytes cut)", "x".repeat(max - 2))
    );
}

fn output_limit(rt: Runtime) {
    let limits = Limits {
        output_bytes: 1000,
        ..Limits::default()
    };
    let source = "export default (n) => 'x'.repeat(n);";
    // The JSON text is the string plus its two quotes.
    let at_limit = run_with(rt, source, &json!(998), limits);
    assert_eq!(ok(&at_limit), json!("x".repeat(998)));
    let err = err(&run_with(rt, source, &json!(2000), limits));
    assert_eq!(
        err,
        StepError::OutputLimit {
            limit_bytes: 1000,
            actual_bytes: 2002
        }
    );
    assert_eq!(
        err.to_string(),
        "step output is 2002 bytes, over the output limit of 1000 bytes"
    );
}

fn output_limit_counts_utf8_bytes(rt: Runtime) {
    let limits = Limits {
        output_bytes: 1000,
        ..Limits::default()
    };
    // 500 UTF-16 units, 1,000 bytes of UTF-8, 1,002 with the quotes.
    let err = error_with(
        rt,
        "export default () => 'é'.repeat(500);",
        &json!(null),
        limits,
    );
    assert_eq!(
        err,
        StepError::OutputLimit {
            limit_bytes: 1000,
            actual_bytes: 1002
        }
    );
}

// ---------------------------------------------------------------------------
// The global environment

fn intl_only_on_v8(rt: Runtime) {
    let source = r#"
export default () => {
  if (typeof Intl === "undefined") return { intl: "undefined" };
  return {
    intl: typeof Intl,
    currency: new Intl.NumberFormat("en-US", { style: "currency", currency: "USD" }).format(1234.5),
    date: new Intl.DateTimeFormat("en-US", { timeZone: "UTC" }).format(new Date(0)),
    german: (1234.5).toLocaleString("de-DE"),
  };
};
"#;
    let out = output(rt, source, &json!(null));
    match rt {
        // V8 is linked against the system's ICU, so Intl is complete.
        Runtime::V8 => assert_eq!(
            out,
            json!({
                "intl": "object",
                "currency": "$1,234.50",
                "date": "1/1/1970",
                "german": "1.234,5",
            })
        ),
        // QuickJS-ng has no Intl at all: the global does not exist.
        Runtime::QuickJs => assert_eq!(out, json!({ "intl": "undefined" })),
    }
}

fn no_ambient_authority(rt: Runtime) {
    let names = [
        "setTimeout",
        "setInterval",
        "setImmediate",
        "clearTimeout",
        "clearInterval",
        "fetch",
        "XMLHttpRequest",
        "WebSocket",
        "EventSource",
        "require",
        "module",
        "exports",
        "process",
        "Buffer",
        "global",
        "Deno",
        "Bun",
        "std",
        "os",
        "importScripts",
        "print",
        "load",
        "read",
        "readline",
        "readbuffer",
        "write",
        "quit",
        "scriptArgs",
        "__dirname",
        "__filename",
        "host",
        "__isoflow",
    ];
    let source = format!(
        "export default () => Object.fromEntries({names:?}.map((n) => [n, typeof globalThis[n]]));"
    );
    let out = output(rt, &source, &json!(null));
    let expected: serde_json::Map<String, Value> = names
        .iter()
        .map(|n| ((*n).to_owned(), json!("undefined")))
        .collect();
    assert_eq!(out, Value::Object(expected));
}

fn globals_are_the_language_and_console(rt: Runtime) {
    // Everything on the global object must be ECMAScript itself, `console`,
    // or an engine extra that grants no authority. A new name here (say, a
    // host binding the prelude forgot to hide) fails this test until someone
    // has looked at it.
    const ALLOWED: &[&str] = &[
        // ECMAScript
        "globalThis",
        "Infinity",
        "NaN",
        "undefined",
        "eval",
        "isFinite",
        "isNaN",
        "parseFloat",
        "parseInt",
        "decodeURI",
        "decodeURIComponent",
        "encodeURI",
        "encodeURIComponent",
        "escape",
        "unescape",
        "Object",
        "Function",
        "Array",
        "Number",
        "Boolean",
        "String",
        "Symbol",
        "BigInt",
        "Date",
        "RegExp",
        "Promise",
        "Proxy",
        "Reflect",
        "Map",
        "Set",
        "WeakMap",
        "WeakSet",
        "WeakRef",
        "FinalizationRegistry",
        "JSON",
        "Math",
        "Atomics",
        "ArrayBuffer",
        "SharedArrayBuffer",
        "DataView",
        "Int8Array",
        "Uint8Array",
        "Uint8ClampedArray",
        "Int16Array",
        "Uint16Array",
        "Int32Array",
        "Uint32Array",
        "Float16Array",
        "Float32Array",
        "Float64Array",
        "BigInt64Array",
        "BigUint64Array",
        "Error",
        "AggregateError",
        "EvalError",
        "RangeError",
        "ReferenceError",
        "SyntaxError",
        "TypeError",
        "URIError",
        "SuppressedError",
        "DisposableStack",
        "AsyncDisposableStack",
        "Iterator",
        "Intl",
        // The sandbox's own.
        "console",
        // QuickJS-ng's extras, none of which grants authority: DOMException,
        // atob and btoa (pure functions), InternalError and queueMicrotask.
        // (V8's WebAssembly is not exposed.)
        "DOMException",
        "atob",
        "btoa",
        "InternalError",
        "queueMicrotask",
    ];
    let out = output(
        rt,
        "export default () => Object.getOwnPropertyNames(globalThis).sort();",
        &json!(null),
    );
    let names: Vec<&str> = out
        .as_array()
        .expect("names")
        .iter()
        .map(|n| n.as_str().expect("name"))
        .collect();
    println!("{rt} globals: {names:?}");
    let unexpected: Vec<&&str> = names.iter().filter(|n| !ALLOWED.contains(n)).collect();
    assert!(
        unexpected.is_empty(),
        "unexpected globals on {rt}: {unexpected:?}"
    );
    assert!(names.contains(&"console"));
}

fn static_import_is_rejected(rt: Runtime) {
    for specifier in ["fs", "./helper.js", "https://example.com/x.js"] {
        let source = format!("import x from {specifier:?};\nexport default () => typeof x;");
        match error(rt, &source, &json!(null)) {
            StepError::Module { message } => assert!(
                // QuickJS names "./helper.js" as the loader normalised it.
                message.contains(specifier.trim_start_matches("./")) && message.contains("import"),
                "import of {specifier}: {message}"
            ),
            other => panic!("import of {specifier}: expected a module error, got {other:?}"),
        }
    }
}

fn dynamic_import_is_rejected(rt: Runtime) {
    // Refused as a catchable Error whose message names what was refused.
    let source = r#"
export default async () => {
  try {
    await import("fs");
    return "imported";
  } catch (e) {
    return [e instanceof Error, e.message];
  }
};
"#;
    let out = output(rt, source, &json!(null));
    assert_eq!(out[0], json!(true), "{out}");
    let message = out[1].as_str().expect("message");
    assert!(
        message.contains("fs"),
        "dynamic import refused with {message:?}"
    );
}

fn eval_and_new_function_work_inside_the_sandbox(rt: Runtime) {
    // Allowed and harmless: they compile more code into the same sandbox.
    let source = r#"
export default (input) => [
  eval("1 + 2"),
  new Function("a", "b", "return a * b")(6, 7),
  (0, eval)("typeof setTimeout"),
  Function("return typeof this")(),
  eval("input.n + 1"),
];
"#;
    assert_eq!(
        output(rt, source, &json!({"n": 9})),
        json!([3, 42, "undefined", "object", 10])
    );
}

// ---------------------------------------------------------------------------
// Mistakes in the module

fn missing_default_export_is_a_module_error(rt: Runtime) {
    for source in [
        "export const run = () => 1;",
        "function run() { return 1 }",
        "",
    ] {
        match error(rt, source, &json!(null)) {
            StepError::Module { message } => {
                assert!(message.contains("default export"), "{source:?}: {message}")
            }
            other => panic!("{source:?}: expected a module error, got {other:?}"),
        }
    }
}

fn default_export_not_a_function_is_a_module_error(rt: Runtime) {
    for source in [
        "export default 42;",
        "export default { run() { return 1 } };",
        "export default 'x';",
        "export default null;",
    ] {
        match error(rt, source, &json!(null)) {
            StepError::Module { message } => assert!(
                message.contains("default export") && message.contains("not a function"),
                "{source:?}: {message}"
            ),
            other => panic!("{source:?}: expected a module error, got {other:?}"),
        }
    }
}

fn syntax_error_reports_line_and_column(rt: Runtime) {
    // Line 3, column 16 is the `*`.
    let source =
        "export default function (input) {\n  const a = 1;\n  const b = a +* 2;\n  return b;\n}\n";
    let exec = Execution::new(rt, Script::new("orders/transform.js", source), "null");
    match sandbox().execute_blocking(exec).result {
        Err(StepError::Syntax { message, location }) => {
            assert_eq!(
                (location.filename.as_str(), location.line, location.column),
                ("orders/transform.js", 3, 16),
                "{message}"
            );
            // V8 says "Unexpected token '*'", QuickJS "unexpected token in
            // expression: '*'".
            assert!(
                message.to_lowercase().contains("unexpected token") && message.contains('*'),
                "{message}"
            );
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

fn syntax_error_column_counts_characters(rt: Runtime) {
    // Columns count characters, not UTF-8 bytes: the `*` is the 33rd
    // character of line 2 (the three CJK characters are nine bytes).
    let source = "export default () => {\n  const s = \"日本語\"; const t = s +* 1;\n};\n";
    match error(rt, source, &json!(null)) {
        StepError::Syntax { location, message } => {
            assert_eq!((location.line, location.column), (2, 33), "{message}")
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

fn syntax_error_on_the_first_line(rt: Runtime) {
    match error(rt, "export default ) => 1;", &json!(null)) {
        StepError::Syntax { location, .. } => {
            assert_eq!((location.line, location.column), (1, 16), "{location}")
        }
        other => panic!("expected a syntax error, got {other:?}"),
    }
}

fn thrown_error_reports_message_location_and_stack(rt: Runtime) {
    let source = "export default function (input) {\n  if (input.ok) return 1;\n  throw new Error(\"boom \" + input.id);\n}\n";
    match error(rt, source, &json!({"ok": false, "id": 7})) {
        StepError::Exception {
            message,
            location,
            stack,
        } => {
            assert_eq!(message, "Error: boom 7");
            let location = location.expect("an Error has a location");
            assert_eq!(location.filename, FILENAME);
            assert_eq!(location.line, 3, "{location}");
            // Where the Error was created, as its stack says. V8 points at
            // `new` (column 9); QuickJS-ng attributes the `new Error(...)`
            // call to the position of its last argument, `input.id`.
            let column = match rt {
                Runtime::V8 => 9,
                Runtime::QuickJs => 29,
            };
            assert_eq!(location.column, column, "{location}");
            let stack = stack.expect("an Error has a stack");
            assert!(stack.contains("step.js:3:"), "{stack}");
        }
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn error_thrown_while_loading_the_module(rt: Runtime) {
    let source =
        "const config = null;\nconst retries = config.retries;\nexport default () => retries;\n";
    match error(rt, source, &json!(null)) {
        StepError::Exception {
            message, location, ..
        } => {
            assert!(message.starts_with("TypeError: "), "{message}");
            assert!(message.contains("retries"), "{message}");
            let location = location.expect("location");
            assert_eq!((location.filename.as_str(), location.line), (FILENAME, 2));
        }
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn engine_type_error_is_an_exception(rt: Runtime) {
    let source = "export default (input) => {\n  return input.customer.name;\n};\n";
    match error(rt, source, &json!({})) {
        StepError::Exception {
            message, location, ..
        } => {
            // V8: "Cannot read properties of undefined (reading 'name')";
            // QuickJS: "cannot read property 'name' of undefined".
            assert!(message.starts_with("TypeError: "), "{message}");
            assert!(
                message.contains("name") && message.contains("undefined"),
                "{message}"
            );
            assert_eq!(location.expect("location").line, 2);
        }
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn thrown_string(rt: Runtime) {
    match error(
        rt,
        "export default () => { throw 'not allowed'; };",
        &json!(null),
    ) {
        StepError::Exception { message, .. } => assert_eq!(message, "not allowed"),
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn thrown_number(rt: Runtime) {
    match error(rt, "export default () => { throw 42; };", &json!(null)) {
        StepError::Exception { message, .. } => assert_eq!(message, "42"),
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn thrown_object(rt: Runtime) {
    // A plain object says nothing as "[object Object]": the user needs its
    // content.
    match error(
        rt,
        "export default () => { throw { code: 'E_RATE', retryIn: 30 }; };",
        &json!(null),
    ) {
        StepError::Exception { message, .. } => {
            assert!(
                message.contains("E_RATE") && message.contains("retryIn"),
                "{message}"
            )
        }
        other => panic!("expected an exception, got {other:?}"),
    }
}

fn rejected_promise_is_an_exception(rt: Runtime) {
    for (source, expected) in [
        (
            "export default async () => { await null; throw new TypeError('nope'); };",
            "TypeError: nope",
        ),
        (
            "export default () => Promise.reject(new RangeError('too far'));",
            "RangeError: too far",
        ),
        (
            "export default () => new Promise((_, reject) => reject('plain'));",
            "plain",
        ),
    ] {
        match error(rt, source, &json!(null)) {
            StepError::Exception { message, .. } => assert_eq!(message, expected, "{source}"),
            other => panic!("{source}: expected an exception, got {other:?}"),
        }
    }
}

// ---------------------------------------------------------------------------
// Output serialisation

fn not_serializable(rt: Runtime, source: &str) -> String {
    match error(rt, source, &json!(null)) {
        StepError::NotSerializable { reason } => reason,
        other => panic!("{source}: expected NotSerializable, got {other:?}"),
    }
}

fn not_serializable_function_at_top(rt: Runtime) {
    let expected = "the step returned a function; call it, or return data";
    assert_eq!(
        not_serializable(rt, "export default () => function total() {};"),
        expected
    );
    assert_eq!(
        not_serializable(rt, "export default async () => () => 1;"),
        expected
    );
}

fn nested_functions_follow_json_stringify(rt: Runtime) {
    // A function or symbol held by a property is left out, and one in an
    // array becomes null, exactly as JSON.stringify does; only a value JSON
    // cannot carry at all (a function at the top, a BigInt, a cycle) fails.
    assert_eq!(
        output(
            rt,
            "const computeTotal = () => 3;\nexport default () => ({ id: 1, total: computeTotal, kind: Symbol('k') });",
            &json!(null)
        ),
        json!({"id": 1})
    );
    assert_eq!(
        output(
            rt,
            "export default () => ({ lines: [{ qty: 1 }, () => 1, Symbol('s')] });",
            &json!(null)
        ),
        json!({"lines": [{"qty": 1}, null, null]})
    );
}

fn not_serializable_bigint(rt: Runtime) {
    assert_eq!(
        not_serializable(rt, "export default () => ({ ids: [1, 2n] });"),
        "output.ids[1] is a BigInt (convert it to a string or a number)"
    );
    assert_eq!(
        not_serializable(rt, "export default () => 10n;"),
        "the step returned a BigInt (convert it to a string or a number)"
    );
}

fn not_serializable_cycle(rt: Runtime) {
    let source = r#"
export default () => {
  const order = { id: 1, customer: { name: "x" } };
  order.customer.lastOrder = order;
  return order;
};
"#;
    assert_eq!(
        not_serializable(rt, source),
        "output.customer.lastOrder refers back to output (a cycle)"
    );
}

fn not_serializable_undefined_at_top(rt: Runtime) {
    let expected = "the step returned undefined; return null, a boolean, a number, a string, an array or an object";
    // The classic slip: an arrow function with a block body and no return.
    for source in [
        "export default () => undefined;",
        "export default () => { const total = 1 + 1; };",
        "export default async () => {};",
    ] {
        assert_eq!(not_serializable(rt, source), expected, "{source}");
    }
}

fn not_serializable_symbol(rt: Runtime) {
    assert_eq!(
        not_serializable(rt, "export default () => Symbol('x');"),
        "the step returned a symbol"
    );
}

fn json_semantics_for_nested_undefined_and_non_finite(rt: Runtime) {
    // Standard JSON.stringify rules, which users know: undefined properties
    // are dropped, undefined array items and non-finite numbers become null.
    let source =
        "export default () => ({ a: undefined, b: 1, list: [undefined, NaN, Infinity, -0] });";
    assert_eq!(
        output(rt, source, &json!(null)),
        json!({"b": 1, "list": [null, null, null, 0]})
    );
}

fn to_json_is_respected(rt: Runtime) {
    let source = r#"
export default () => ({
  when: new Date(Date.UTC(2024, 0, 2, 3, 4, 5, 6)),
  custom: { secret: "s", toJSON() { return { shown: true }; } },
  nested: [{ toJSON: () => "inner" }],
});
"#;
    assert_eq!(
        output(rt, source, &json!(null)),
        json!({
            "when": "2024-01-02T03:04:05.006Z",
            "custom": {"shown": true},
            "nested": ["inner"],
        })
    );
}

fn invalid_input_json_is_an_input_error(rt: Runtime) {
    let exec = Execution::new(
        rt,
        Script::new(FILENAME, "export default (x) => x;"),
        "{\"a\": ",
    );
    match sandbox().execute_blocking(exec).result {
        Err(StepError::Input { message }) => assert!(!message.is_empty()),
        other => panic!("expected an input error, got {other:?}"),
    }
}

fn proto_key_in_input_is_plain_data(rt: Runtime) {
    // JSON.parse makes "__proto__" an own property, never a prototype: input
    // cannot pollute Object.prototype.
    let source = r#"
export default (input) => ({
  polluted: ({}).isAdmin === undefined ? "no" : "yes",
  own: Object.keys(input),
  echo: input,
});
"#;
    let exec = Execution::new(
        rt,
        Script::new(FILENAME, source),
        r#"{"__proto__": {"isAdmin": true}}"#,
    );
    let out = ok(&sandbox().execute_blocking(exec));
    assert_eq!(
        out,
        json!({"polluted": "no", "own": ["__proto__"], "echo": {"__proto__": {"isAdmin": true}}})
    );
}

// ---------------------------------------------------------------------------
// The async API

async fn execute_async_returns_the_outcome(rt: Runtime) {
    let exec = execution(
        rt,
        "export default async (input, ctx) => { ctx.log('hi', input.n); await null; return input.n + 1; };",
        &json!({"n": 41}),
    );
    let outcome = sandbox().execute(exec).await;
    assert_eq!(ok(&outcome), json!(42));
    assert_eq!(messages(&outcome), ["hi 41"]);
}

async fn execute_async_many_at_once(rt: Runtime) {
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..64 {
        let exec = execution(
            rt,
            "export default async (input) => { console.log('n', input.n); return input.n * input.n; };",
            &json!({"n": n}),
        );
        tasks.spawn(async move { (n, sandbox().execute(exec).await) });
    }
    let mut seen = 0;
    while let Some(joined) = tasks.join_next().await {
        let (n, outcome) = joined.expect("task");
        assert_eq!(ok(&outcome), json!(n * n));
        assert_eq!(messages(&outcome), [format!("n {n}")]);
        seen += 1;
    }
    assert_eq!(seen, 64);
}
