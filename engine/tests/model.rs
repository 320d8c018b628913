//! Component tests of the integration model: the example integrations load,
//! every malformed definition in `model-corpus/` gets exactly its expected
//! sentences, definitions survive a trip through JSON, and the committed
//! JSON Schema is the one the types generate.
//!
//! `ISOFLOW_BLESS=1 cargo test -p isoflow-engine --test model` rewrites the
//! corpus's `.err` files and `docs/integration.schema.json` from what the
//! code produces; review the diff before committing it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use isoflow_engine::model::{self, CodeSource, Integration, Method, Scope, Step};
use serde_json::{Value, json};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bless() -> bool {
    std::env::var_os("ISOFLOW_BLESS").is_some_and(|v| v == "1")
}

fn load_file(path: &Path) -> Result<Integration, model::LoadErrors> {
    let text = std::fs::read_to_string(path).expect("readable file");
    let name = path.file_name().expect("a file name").to_string_lossy();
    model::load(&name, &text)
}

fn example(name: &str) -> Integration {
    let path = repo().join("examples/integrations").join(name);
    load_file(&path).unwrap_or_else(|e| panic!("{name} should load:\n{e}"))
}

/// Serialises to JSON and back, both through `load` and through serde.
fn assert_round_trips(integration: &Integration) {
    let json = serde_json::to_string_pretty(integration).expect("serialises");
    let reloaded = model::load("stored.json", &json)
        .unwrap_or_else(|e| panic!("stored form should load:\n{e}\n{json}"));
    assert_eq!(&reloaded, integration, "load(serialise(x)) == x");
    let deserialised: Integration = serde_json::from_str(&json).expect("deserialises");
    assert_eq!(&deserialised, integration, "deserialise(serialise(x)) == x");
}

#[test]
fn the_seed_example_loads() {
    let seed = example("seed.yaml");
    assert_eq!(seed.name.as_str(), "orders-to-erp");
    let ids: Vec<_> = seed.steps.iter().map(|s| s.id().as_str()).collect();
    assert_eq!(
        ids,
        ["fetch", "parse", "filter", "enrich", "aggregate", "post"]
    );
    let Step::Http(post) = &seed.steps[5] else {
        panic!("post is an http step")
    };
    assert_eq!(post.method, Method::Post);
    assert_eq!(
        post.credential.as_ref().map(|c| c.as_str()),
        Some("erp-api")
    );
    let retry = post.retry.as_ref().expect("the POST retries");
    assert_eq!(retry.max_attempts, 5);
    let Step::Code(parse) = &seed.steps[1] else {
        panic!("parse is a code step")
    };
    let CodeSource::Source(source) = &parse.code else {
        panic!("inline source")
    };
    assert!(source.contains("ctx.xml.parse"));
    assert_round_trips(&seed);
}

#[test]
fn the_500_item_loop_example_loads() {
    let integration = example("loop-500.yaml");
    let Step::Loop(each) = &integration.steps[1] else {
        panic!("a loop")
    };
    assert_eq!(each.concurrency, 8);
    let Step::Http(post) = &each.steps[0] else {
        panic!("an http step in the loop")
    };
    let input = json!({"target_url": "http://127.0.0.1:9/api"});
    let steps = serde_json::Map::new();
    let item = json!({"sku": "SKU-0041"});
    let scope = Scope::new(&input, &steps).with_item(&item, 41);
    assert_eq!(
        post.url.render_string(&scope),
        "http://127.0.0.1:9/api/items/41"
    );
    assert_eq!(post.body.as_ref().expect("a body").render(&scope), item);
    assert_round_trips(&integration);
}

#[test]
fn the_seed_templates_render_the_step_outputs() {
    let seed = example("seed.yaml");
    let input = json!({"export_url": "http://127.0.0.1:9/export.xml", "target_url": "http://127.0.0.1:9/erp"});
    let steps: serde_json::Map<String, Value> = serde_json::from_value(json!({
        "fetch": {"status": 200, "headers": {}, "body": "<orders/>"},
        "aggregate": {"count": 2, "total": 99.5},
        "post": {"status": 201, "headers": {}, "body": {}},
    }))
    .expect("a map");
    let scope = Scope::new(&input, &steps);
    let Step::Code(parse) = &seed.steps[1] else {
        panic!("parse is a code step")
    };
    assert_eq!(parse.input.render(&scope), json!("<orders/>"));
    let output = seed.output.as_ref().expect("an output template");
    assert_eq!(
        output.render(&scope),
        json!({"orders": 2, "total": 99.5, "status": 201})
    );
}

#[test]
fn json_definitions_read_like_yaml_ones() {
    let yaml =
        std::fs::read_to_string(repo().join("examples/integrations/seed.yaml")).expect("readable");
    let from_yaml = model::load("seed.yaml", &yaml).expect("loads");
    // Written by hand-free means: the YAML's plain JSON form, not our serialisation.
    let as_json = serde_json::to_string_pretty(&serde_json::to_value(&from_yaml).expect("a value"))
        .expect("text");
    let from_json = model::load("seed.json", &as_json).expect("loads");
    assert_eq!(from_json, from_yaml);
}

#[test]
fn defaults_are_filled_in() {
    let text = "apiVersion: isoflow.dev/v1\nname: d\nversion: 1\nsteps:\n  - id: get\n    type: http\n    url: https://example.com\n  - id: run\n    type: code\n    file: steps/run.js\n  - id: each\n    type: loop\n    for_each: [1]\n    steps:\n      - id: inner\n        type: code\n        source: 'export default (x) => x'\n        retry: {}\n";
    let integration = model::load("defaults.yaml", text).expect("loads");
    let Step::Http(get) = &integration.steps[0] else {
        panic!()
    };
    assert_eq!(get.method, Method::Get);
    assert_eq!(get.timeout, std::time::Duration::from_secs(30));
    assert_eq!(get.max_response_bytes, model::ByteSize(64 << 20));
    let Step::Code(run) = &integration.steps[1] else {
        panic!()
    };
    assert_eq!(run.code, CodeSource::File("steps/run.js".into()));
    assert_eq!(run.input.to_value(), json!("{{ input }}"));
    let Step::Loop(each) = &integration.steps[2] else {
        panic!()
    };
    assert_eq!((each.concurrency, each.timeout), (1, None));
    let Step::Code(inner) = &each.steps[0] else {
        panic!()
    };
    assert_eq!(inner.retry, Some(model::Retry::default()));
    assert_round_trips(&integration);
}

#[test]
fn the_malformed_corpus_gets_exactly_its_sentences() {
    let dir = repo().join("engine/tests/model-corpus");
    let mut cases: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("the corpus directory")
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e != "err"))
        .collect();
    cases.sort();
    assert!(cases.len() >= 30, "the corpus has {} cases", cases.len());
    let mut failures = String::new();
    for case in &cases {
        let got = match load_file(case) {
            Ok(_) => "(loaded without errors)".to_owned(),
            Err(e) => e.to_string(),
        };
        let expected_path = case.with_extension("err");
        if bless() {
            std::fs::write(&expected_path, format!("{got}\n")).expect("writable corpus");
            continue;
        }
        let expected = std::fs::read_to_string(&expected_path).unwrap_or_default();
        if got != expected.trim_end() {
            let _ = writeln!(
                failures,
                "--- {}\nexpected:\n{}\ngot:\n{got}\n",
                case.display(),
                expected.trim_end()
            );
        }
    }
    assert!(
        failures.is_empty(),
        "{failures}\nIf the new sentences are right, run `ISOFLOW_BLESS=1 cargo test -p isoflow-engine --test model` and review the diff."
    );
}

#[test]
fn every_error_is_one_line_naming_the_file_and_a_line() {
    let dir = repo().join("engine/tests/model-corpus");
    for entry in std::fs::read_dir(&dir).expect("the corpus directory") {
        let path = entry.expect("an entry").path();
        if path.extension().is_some_and(|e| e == "err") {
            continue;
        }
        let name = path
            .file_name()
            .expect("a name")
            .to_string_lossy()
            .into_owned();
        let errors = load_file(&path).expect_err("a malformed case");
        let lines: Vec<_> = errors.errors().iter().map(|e| e.line).collect();
        assert!(lines.is_sorted(), "{name}: sorted by line");
        for e in errors.errors() {
            let text = e.to_string();
            assert!(text.starts_with(&format!("{name}:{}: ", e.line)), "{text}");
            assert!(!text.contains('\n'), "one line: {text:?}");
            assert!(!text.ends_with('.'), "no trailing period: {text}");
        }
    }
}

#[test]
fn a_10000_step_definition_loads() {
    let mut text = String::from("apiVersion: isoflow.dev/v1\nname: big\nversion: 1\nsteps:\n");
    for i in 0..10_000 {
        let previous = if i == 0 {
            "input".to_owned()
        } else {
            format!("steps.s{}.output", i - 1)
        };
        let _ = write!(
            text,
            "  - id: s{i}\n    type: code\n    runtime: quickjs\n    input: \"{{{{ {previous} }}}}\"\n    source: \"export default (x) => x\"\n"
        );
    }
    let integration = model::load("big.yaml", &text).expect("loads");
    assert_eq!(integration.steps.len(), 10_000);
    assert!(integration.find_step("s9999").is_some());
    // And one broken reference among them is found, with its line.
    let broken = text.replace("steps.s4999.output", "steps.s9999.output");
    let errors = model::load("big.yaml", &broken).expect_err("a later step");
    assert_eq!(
        errors.to_string(),
        "big.yaml:25008: step \"s5000\": step \"s9999\" referenced in input runs later (line 50000)"
    );
}

#[test]
fn many_problems_are_all_reported_in_line_order() {
    let text = "apiVersion: isoflow.dev/v1\nname: x\nversion: 1\nsteps:\n  - id: a\n    type: http\n    url: https://example.com\n    timeout: soon\n  - id: b\n    type: code\n    bogus: 1\n    source: 'export default (x) => x'\n    input: '{{ steps.zz.output }}'\n";
    let errors = model::load("x.yaml", text).expect_err("three problems");
    assert_eq!(
        errors.to_string(),
        "x.yaml:8: step \"a\": invalid duration \"soon\" for timeout\n\
         x.yaml:11: step \"b\": unknown field \"bogus\" (a code step takes: id, type, when, retry, timeout, runtime, source, file, input, heap)\n\
         x.yaml:13: step \"b\": unknown step \"zz\" referenced in input"
    );
}

#[test]
fn the_committed_schema_is_the_generated_one() {
    let path = repo().join("docs/integration.schema.json");
    let generated = format!(
        "{}\n",
        serde_json::to_string_pretty(&model::json_schema()).expect("serialises")
    );
    if bless() {
        std::fs::write(&path, &generated).expect("writable docs/");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "docs/integration.schema.json is not what the model types generate.\n\
         Regenerate it with `ISOFLOW_BLESS=1 cargo test -p isoflow-engine --test model` and commit the result."
    );
}

#[test]
fn the_schema_describes_the_format() {
    let schema = model::json_schema();
    let text = schema.to_string();
    for needle in [
        "isoflow.dev/v1",
        "for_each",
        "max_response_bytes",
        "quickjs",
        "credential",
        "multiplier",
    ] {
        assert!(text.contains(needle), "the schema mentions {needle}");
    }
    assert_eq!(schema["title"], "Isoflow integration");
    assert_eq!(schema["additionalProperties"], false);
}

/// The schema is for editors: it must accept what `load` accepts, in the
/// form users write (defaults left out) and in the stored form, and flag
/// the common mistakes.
#[test]
fn the_schema_accepts_valid_definitions_and_flags_mistakes() {
    let validator = jsonschema::validator_for(&model::json_schema()).expect("a valid JSON Schema");
    let check = |what: &str, definition: &Value, valid: bool| {
        let errors: Vec<String> = validator
            .iter_errors(definition)
            .map(|e| e.to_string())
            .collect();
        assert_eq!(errors.is_empty(), valid, "{what}: {errors:?}");
    };
    for name in ["seed.yaml", "loop-500.yaml"] {
        let stored = serde_json::to_value(example(name)).expect("a value");
        check(name, &stored, true);
    }
    let written = json!({
        "apiVersion": "isoflow.dev/v1",
        "name": "minimal",
        "version": 1,
        "steps": [
            {"id": "get", "type": "http", "url": "https://example.com", "query": {"limit": 100},
             "max_response_bytes": "1MiB", "retry": {"backoff": {"initial": "200ms"}}},
            {"id": "run", "type": "code", "file": "run.js", "timeout": "5s"},
            {"id": "each", "type": "loop", "for_each": [1, 2], "steps": [
                {"id": "inner", "type": "code", "source": "export default (x) => x", "input": {"n": "{{ item }}"}}
            ]}
        ]
    });
    assert!(
        model::load("minimal.json", &written.to_string()).is_ok(),
        "the loader accepts it"
    );
    check("as written, defaults left out", &written, true);

    let broken = |path: &[&str], value: Value| {
        let mut definition = written.clone();
        let mut at = &mut definition;
        for key in &path[..path.len() - 1] {
            at = match key.parse::<usize>() {
                Ok(i) => &mut at[i],
                Err(_) => &mut at[*key],
            };
        }
        at[path[path.len() - 1]] = value;
        definition
    };
    check(
        "unknown top-level field",
        &broken(&["trigger"], json!([])),
        false,
    );
    let hooked = broken(
        &["triggers"],
        json!([{"id": "orders", "type": "webhook", "auth": "hmac", "secret": "orders-hook", "mode": "sync"}]),
    );
    check("a webhook trigger", &hooked, true);
    let loaded = model::load("hooked.json", &hooked.to_string()).expect("the loader accepts it");
    let stored = serde_json::to_value(&loaded).expect("a value");
    check("a webhook trigger, stored", &stored, true);
    let back: Integration = serde_json::from_value(stored).expect("the stored form reads back");
    assert_eq!(back, loaded, "a trigger survives the trip through JSON");
    check(
        "a trigger with an unknown field",
        &broken(
            &["triggers"],
            json!([{"id": "o", "type": "webhook", "auth": "token", "secret": "s", "hmac": 1}]),
        ),
        false,
    );
    check(
        "unknown step field",
        &broken(&["steps", "0", "urll"], json!("x")),
        false,
    );
    check(
        "unknown step type",
        &broken(&["steps", "0", "type"], json!("htp")),
        false,
    );
    check(
        "source and file",
        &broken(&["steps", "1", "source"], json!("x")),
        false,
    );
    check(
        "bad step id",
        &broken(&["steps", "0", "id"], json!("Get")),
        false,
    );
    check("bad name", &broken(&["name"], json!("Minimal")), false);
    check("version 0", &broken(&["version"], json!(0)), false);
    check(
        "bad method",
        &broken(&["steps", "0", "method"], json!("get")),
        false,
    );
    check(
        "bad runtime",
        &broken(&["steps", "1", "runtime"], json!("node")),
        false,
    );
    check(
        "concurrency 0",
        &broken(&["steps", "2", "concurrency"], json!(0)),
        false,
    );
    check(
        "max_attempts 0",
        &broken(&["steps", "0", "retry", "max_attempts"], json!(0)),
        false,
    );
    check(
        "bad size",
        &broken(&["steps", "0", "max_response_bytes"], json!("64MB")),
        false,
    );

    let mailed = broken(
        &["alerts"],
        json!([
            {"on": "failed", "email": {"to": ["ops@example.com", "a.b+x@mail.example.co.uk"], "subject": "[ERP]"}},
            {"on": "slow", "threshold": "5m", "webhook": "https://ops.example.com/x", "secret": "alert-key",
             "email": {"to": ["ops@example.com"]}}
        ]),
    );
    check("email alerts", &mailed, true);
    let loaded = model::load("mailed.json", &mailed.to_string()).expect("the loader accepts it");
    let stored = serde_json::to_value(&loaded).expect("a value");
    check("email alerts, stored", &stored, true);
    let back: Integration = serde_json::from_value(stored).expect("the stored form reads back");
    assert_eq!(
        back, loaded,
        "an email alert survives the trip through JSON"
    );
    for (what, email) in [
        ("no recipient", json!({"to": []})),
        ("a bad address", json!({"to": ["ops at example.com"]})),
        ("a display name", json!({"to": ["Ops <ops@example.com>"]})),
        (
            "a two-line subject",
            json!({"to": ["ops@example.com"], "subject": "a\nb"}),
        ),
        (
            "an unknown field",
            json!({"to": ["ops@example.com"], "cc": ["x@example.com"]}),
        ),
        (
            "21 recipients",
            json!({"to": (1..=21).map(|i| format!("a{i}@example.com")).collect::<Vec<_>>()}),
        ),
    ] {
        check(
            what,
            &broken(
                &["alerts"],
                json!([{"on": "failed", "email": email.clone()}]),
            ),
            false,
        );
        assert!(
            model::load(
                "bad.json",
                &broken(&["alerts"], json!([{"on": "failed", "email": email}])).to_string()
            )
            .is_err(),
            "the loader refuses {what} too"
        );
    }
}

/// The reference's opening example is a real definition.
#[test]
fn the_format_reference_example_loads() {
    let doc = std::fs::read_to_string(repo().join("docs/integration-format.md")).expect("readable");
    let start = doc.find("```yaml\n").expect("a YAML example") + "```yaml\n".len();
    let end = start + doc[start..].find("```").expect("the example ends");
    let integration =
        model::load("integration-format.md", &doc[start..end]).unwrap_or_else(|e| panic!("{e}"));
    let input = json!({"target_url": "https://erp.example.com"});
    let steps = serde_json::Map::new();
    let item = json!({"@id": "A-1"});
    let scope = Scope::new(&input, &steps).with_item(&item, 0);
    let Some(Step::Loop(each)) = integration.find_step("each_order") else {
        panic!("a loop")
    };
    let Step::Http(post) = &each.steps[0] else {
        panic!("an http step")
    };
    assert_eq!(
        post.url.render_string(&scope),
        "https://erp.example.com/orders/A-1"
    );
}
