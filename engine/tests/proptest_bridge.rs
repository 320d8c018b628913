//! Properties of the Rust–JavaScript bridge, on random data: any JSON input
//! comes back exactly from `(x) => x`; any JSON value written into a step's
//! source comes back exactly as its output; any string logged arrives as
//! that log line; arbitrary source text and mangled programs never crash
//! the process or fail the sandbox itself (only the step), errors point
//! inside the source, and after every case a canary step sees pristine
//! built-ins.
//!
//! Numbers: JavaScript and serde_json print the same f64 alike except for
//! integral values between 1e15 and 1e21 (JavaScript writes them out in
//! full, serde_json in exponent form, and serde_json's default float parser
//! may round the two forms differently), so generated floats avoid that
//! range; integers are i32. Values are compared after turning every number
//! into an f64, since JavaScript has one number type (`2.0` comes back as
//! `2`).

#[macro_use]
mod common;

use common::*;
use isoflow_engine::sandbox::{ErrorKind, Execution, Runtime, Script, StepError};
use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use serde_json::{Map, Value, json};

macro_rules! bridge {
    ($module:ident, $variant:ident) => {
        mod $module {
            use super::*;

            const RT: Runtime = Runtime::$variant;

            proptest! {
                #![proptest_config(config(128))]

                #[test]
                fn input_is_echoed_exactly(value in json_value(true)) {
                    echo(RT, &value)?;
                }

                #[test]
                fn output_written_in_source_comes_back(value in json_value(false)) {
                    output_literal(RT, &value)?;
                }

                #[test]
                fn mangled_programs_fail_cleanly(program in program()) {
                    mangled(RT, &program)?;
                }
            }

            proptest! {
                #![proptest_config(config(64))]

                #[test]
                fn arbitrary_source_fails_cleanly(source in arbitrary_source()) {
                    arbitrary(RT, &source)?;
                }

                #[test]
                fn logged_strings_arrive_exactly(parts in prop::collection::vec(json_string(), 1..4)) {
                    logged(RT, &parts)?;
                }

                #[test]
                fn xml_text_through_the_bridge_never_crashes(text in xml_text()) {
                    xml(RT, &text)?;
                }
            }
        }
    };
}

#[cfg(feature = "v8")]
bridge!(v8, V8);
#[cfg(feature = "quickjs")]
bridge!(quickjs, QuickJs);

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        // Integration tests have no lib.rs for proptest's default place;
        // the path is relative to the package, where cargo runs tests.
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            "tests/proptest-regressions/proptest_bridge.txt",
        ))),
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------
// Strategies

fn json_number() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<i32>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite, formatted alike by JS and serde_json", |f| {
                f.is_finite() && (f.abs() < 1e15 || f.abs() >= 1e21)
            })
            .prop_map(Value::from),
        prop::sample::select(vec![
            0.0,
            -0.0,
            0.1,
            -1.5,
            1e-7,
            1e21,
            5e-324,
            f64::MIN_POSITIVE,
            f64::MAX,
            f64::MIN,
            123_456.789,
        ])
        .prop_map(Value::from),
    ]
}

fn json_string() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => any::<String>(),
        2 => "[a-z0-9 ]{0,12}",
        1 => prop::sample::select(vec![
            String::new(),
            "\u{0}".to_owned(),
            "\u{2028}\u{2029}".to_owned(),
            "😀𝔘".to_owned(),
            "\"\\/\u{8}\u{c}\n\r\t".to_owned(),
            "</script>".to_owned(),
            "مرحبا".to_owned(),
            "\u{FEFF}\u{FFFF}\u{10FFFF}".to_owned(),
            "__proto__".to_owned(),
            "constructor".to_owned(),
            "toJSON".to_owned(),
        ]),
    ]
}

/// JSON values. With `proto_keys` false, no object has a `__proto__` key:
/// written as an object literal in source, that key sets the prototype
/// instead of making a property (JSON.parse, on the other hand, makes it a
/// plain property, so inputs may have it).
fn json_value(proto_keys: bool) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        json_number(),
        json_string().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 64, 8, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
            prop::collection::btree_map(json_string(), inner, 0..8).prop_map(move |map| {
                Value::Object(
                    map.into_iter()
                        .filter(|(k, _)| proto_keys || k != "__proto__")
                        .collect::<Map<_, _>>(),
                )
            }),
        ]
    })
}

fn arbitrary_source() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        // Mostly JavaScript punctuation and keywords: more of it parses.
        r"(export|default|import|await|async|function|=>|\(|\)|\{|\}|\[|\]|;|,|return|x|1|'s'|`t\$\{|\}`|/re/|\n| ){0,40}",
    ]
}

const STATEMENTS: &[&str] = &[
    "return input;",
    "return [input, ctx.log.name];",
    "throw new Error('thrown');",
    "throw 1;",
    "globalThis.leakP = 1;",
    "Object.prototype.leakP = 1;",
    "Object.prototype.toJSON = () => 'p';",
    "Array.prototype.map = null;",
    "JSON.stringify = null;",
    "JSON.parse = null;",
    "delete globalThis.Math;",
    "console.log = () => {};",
    "Promise.prototype.then = function () { return this; };",
    "console.log(input);",
    "ctx.log.warn('w', input);",
    "await null;",
    "return () => 1;",
    "return 1n;",
    "return undefined;",
    "return Symbol('s');",
    "return ctx.xml.parse('<a b=\"1\">t</a>');",
    "return ctx.xml.stringify({ a: { b: ['1', '2'] } });",
    "for (let i = 0; i < 100; i++) { input = [input]; }",
    "{ let x = {}; x.self = x; return x; }",
    "return new Promise(() => {});",
    "return Promise.reject(new TypeError('rejected'));",
    "return new Date(0);",
    "return { toJSON() { return 'custom'; } };",
    "return eval('1 + 1');",
    "return new Function('return typeof globalThis')();",
];

/// A step: random statements in an async default export, optionally
/// mangled by deleting or inserting one character.
#[derive(Debug, Clone)]
struct Program {
    source: String,
    mangled: bool,
}

fn program() -> impl Strategy<Value = Program> {
    let statement = prop_oneof![
        4 => prop::sample::select(STATEMENTS).prop_map(str::to_owned),
        1 => json_value(false).prop_map(|v| format!("return {v};")),
    ];
    let mangle = prop::option::of((any::<prop::sample::Index>(), any::<bool>(), any::<char>()));
    (prop::collection::vec(statement, 0..6), mangle).prop_map(|(statements, mangle)| {
        let mut source = format!(
            "export default async (input, ctx) => {{\n  {}\n}};\n",
            statements.join("\n  ")
        );
        let mangled = mangle.is_some();
        if let Some((at, delete, c)) = mangle {
            let boundaries: Vec<usize> = source.char_indices().map(|(i, _)| i).collect();
            let i = boundaries[at.index(boundaries.len())];
            if delete {
                source.remove(i);
            } else {
                source.insert(i, c);
            }
        }
        Program { source, mangled }
    })
}

fn xml_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        r#"[<>/?!a-c:="' &;#x0-9\n]{0,40}"#,
        r#"<a( b="[^"<&]{0,5}")?>([a-z &amp;]{0,5}|<c>[a-z]{0,3}</c>|<d/>){0,4}</a>"#,
    ]
}

// ---------------------------------------------------------------------------
// Properties

/// Every number as an f64: JavaScript has one number type.
fn normalise(value: &Value) -> Value {
    match value {
        Value::Number(n) => Value::from(n.as_f64().expect("JSON numbers are f64")),
        Value::Array(items) => Value::Array(items.iter().map(normalise).collect()),
        Value::Object(map) => {
            Value::Object(map.iter().map(|(k, v)| (k.clone(), normalise(v))).collect())
        }
        other => other.clone(),
    }
}

/// What the engine gives back for `value`, read the way the engine reads
/// its own output (serde_json, floats included).
fn expected(value: &Value) -> Value {
    let reread: Value =
        serde_json::from_str(&value.to_string()).expect("serde_json re-reads its own text");
    normalise(&reread)
}

fn canary(rt: Runtime, case: &str) -> Result<(), TestCaseError> {
    let outcome = run(rt, CANARY, &json!({ "tenant": "canary" }));
    let seen = outcome
        .value()
        .map_err(|e| TestCaseError::fail(format!("canary failed after {case}: {e}")))?;
    prop_assert_eq!(seen, canary_expected("canary"), "after {}", case);
    prop_assert_eq!(messages(&outcome), ["canary canary", "canary-ctx canary"]);
    Ok(())
}

fn not_the_sandboxs_fault(error: &StepError, source: &str) -> Result<(), TestCaseError> {
    prop_assert_ne!(
        error.kind(),
        ErrorKind::Sandbox,
        "the sandbox failed ({}) on {:?}",
        error,
        source
    );
    Ok(())
}

fn echo(rt: Runtime, value: &Value) -> Result<(), TestCaseError> {
    let outcome = run(rt, "export default (x) => x;", value);
    let got = outcome
        .value()
        .map_err(|e| TestCaseError::fail(format!("echo of {value} failed: {e}")))?;
    prop_assert_eq!(normalise(&got), expected(value));
    canary(rt, "an echo")
}

fn output_literal(rt: Runtime, value: &Value) -> Result<(), TestCaseError> {
    // JSON text is a JavaScript expression (ES2019 and later).
    let source = format!("export default () => ({value});");
    let outcome = run(rt, &source, &Value::Null);
    let got = outcome
        .value()
        .map_err(|e| TestCaseError::fail(format!("{source:?} failed: {e}")))?;
    prop_assert_eq!(normalise(&got), expected(value));
    canary(rt, "an output literal")
}

fn logged(rt: Runtime, parts: &[String]) -> Result<(), TestCaseError> {
    let args: Vec<String> = parts
        .iter()
        .map(|p| serde_json::to_string(p).expect("a string serialises"))
        .collect();
    let source = format!(
        "export default (input, ctx) => {{ console.log({0}); ctx.log.error({0}); return null; }};",
        args.join(", ")
    );
    let outcome = run(rt, &source, &Value::Null);
    if let Err(e) = &outcome.result {
        return Err(TestCaseError::fail(format!("{source:?} failed: {e}")));
    }
    // Control characters other than line breaks and tabs come back shown as
    // `\u{..}`, so that no log line can drive a terminal.
    let line: String = parts
        .join(" ")
        .chars()
        .map(|c| {
            if c.is_control() && c != '\n' && c != '\t' {
                c.escape_unicode().to_string()
            } else {
                c.to_string()
            }
        })
        .collect();
    prop_assert_eq!(messages(&outcome), [line.as_str(), line.as_str()]);
    canary(rt, "logging")
}

/// Lines as JavaScript counts them.
fn js_lines(source: &str) -> Vec<&str> {
    source
        .split("\r\n")
        .flat_map(|chunk| chunk.split(['\n', '\r', '\u{2028}', '\u{2029}']))
        .collect()
}

fn check_failure(rt: Runtime, source: &str, error: &StepError) -> Result<(), TestCaseError> {
    not_the_sandboxs_fault(error, source)?;
    if let StepError::Syntax { location, .. } = error {
        let lines = js_lines(source);
        prop_assert_eq!(&location.filename, FILENAME);
        prop_assert!(
            location.line >= 1 && (location.line as usize) <= lines.len(),
            "{}: line {} outside the {} lines of {:?}",
            rt,
            location.line,
            lines.len(),
            source
        );
        let line = lines[location.line as usize - 1];
        prop_assert!(
            location.column >= 1 && location.column as usize <= line.encode_utf16().count() + 1,
            "{}: column {} outside line {:?} of {:?}",
            rt,
            location.column,
            line,
            source
        );
    }
    Ok(())
}

fn arbitrary(rt: Runtime, source: &str) -> Result<(), TestCaseError> {
    let outcome = run(rt, source, &json!({ "x": 1 }));
    if let Err(e) = &outcome.result {
        check_failure(rt, source, e)?;
    }
    canary(rt, "arbitrary source")
}

fn mangled(rt: Runtime, program: &Program) -> Result<(), TestCaseError> {
    let exec = Execution::with_value(
        rt,
        Script::new(FILENAME, program.source.as_str()),
        &json!({ "x": 1 }),
    );
    let outcome = sandbox().execute_blocking(exec);
    if let Err(e) = &outcome.result {
        check_failure(rt, &program.source, e)?;
        if !program.mangled {
            prop_assert!(
                !matches!(e, StepError::Syntax { .. } | StepError::Module { .. }),
                "{}: a well-formed program was refused: {} in {:?}",
                rt,
                e,
                program.source
            );
        }
    }
    canary(rt, "a generated program")
}

fn xml(rt: Runtime, text: &str) -> Result<(), TestCaseError> {
    let source = r#"
export default (input, ctx) => {
  let parsed;
  try { parsed = ctx.xml.parse(input); } catch (e) {
    if (!(e instanceof Error) || !e.message.startsWith("ctx.xml.parse: ")) throw e;
    return { error: e.message };
  }
  const again = ctx.xml.parse(ctx.xml.stringify(parsed));
  return { parsed, again };
};
"#;
    let outcome = run(rt, source, &Value::String(text.to_owned()));
    let out = outcome
        .value()
        .map_err(|e| TestCaseError::fail(format!("xml step failed on {text:?}: {e}")))?;
    if out.get("error").is_none() {
        prop_assert_eq!(
            &out["parsed"],
            &out["again"],
            "xml round trip of {:?}",
            text
        );
    }
    canary(rt, "ctx.xml")
}
