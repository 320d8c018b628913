//! The run engine end to end in one process: real sandbox, real RocksDB in a
//! temporary folder, real HTTP servers on loopback. Every step kind, retries
//! with backoff against flaky servers, `when`, loops (ordering and the
//! concurrency bound), time-outs, cancellation, graceful shutdown and
//! resumption, reruns of a failed run, credentials, tenants and a 100 MB
//! payload.

// Test helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use isoflow_engine::action::egress::EgressPolicy;
use isoflow_engine::model;
use isoflow_engine::run::{
    Credential, Engine, EngineConfig, RunEvent, RunOutcome, Secret, StaticCredentials,
};
use isoflow_engine::run::{ReplayError, RerunError, create_rerun, step_replay};
use isoflow_engine::sandbox::SandboxConfig;
use isoflow_engine::store::{RunStatus, RunTrigger, StepStatus};
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder};
use serde_json::{Value, json};

const TOKEN: &str = "erp-secret-token";

/// An engine config whose http steps may reach this test's loopback
/// servers.
fn config(dir: &tempfile::TempDir) -> EngineConfig {
    let mut config = EngineConfig::new(dir.path());
    config.egress = EgressPolicy::public_only().allow(["127.0.0.1".parse().unwrap()]);
    config
}

async fn engine(dir: &tempfile::TempDir) -> Engine {
    engine_with_erp(dir, None).await
}

/// An engine where tenant acme's `erp-api` credential may be sent to the
/// origin `erp` only (to none without one).
async fn engine_with_erp(dir: &tempfile::TempDir, erp: Option<&str>) -> Engine {
    let mut config = config(dir);
    config.sandbox = SandboxConfig {
        concurrency: 2,
        ..SandboxConfig::default()
    };
    let mut credentials = StaticCredentials::default();
    let origins = erp.map(|o| o.parse().expect("an origin"));
    credentials.insert(
        "acme",
        "erp-api",
        Credential::new(Secret::new(TOKEN), origins),
    );
    config.credentials = Arc::new(credentials);
    Engine::start(config).await.unwrap()
}

fn integration(yaml: &str) -> model::Integration {
    model::load("test.yaml", yaml).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(engine: &Engine, yaml: &str, input: Value) -> (RunOutcome, Vec<RunEvent>, String) {
    let mut handle = engine
        .start_run("acme", &integration(yaml), input)
        .await
        .unwrap();
    let run_id = handle.run_id.clone();
    let mut events = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(event) = handle.next_event().await {
            if let RunEvent::Finished(outcome) = &event {
                return outcome.clone();
            }
            events.push(event);
        }
        panic!("the run stopped without finishing")
    })
    .await
    .expect("the run finishes within a minute");
    (outcome, events, run_id)
}

fn seed() -> String {
    std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/integrations/seed.yaml"
    ))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_integration_runs_end_to_end_and_every_step_is_checkpointed() {
    let fixture = HttpFixture::start();
    fixture.serve_seed(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_erp(&dir, Some(&fixture.url(""))).await;
    let input = json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    });
    let (outcome, events, run_id) = run(&engine, &seed(), input).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let output = outcome.output.unwrap();
    assert_eq!(output["status"], 201);

    // The ERP received the aggregate, with the bearer token the engine added.
    let posts = fixture.requests("POST", "/erp/orders");
    assert_eq!(posts.len(), 1);
    let sent = posts[0].json();
    assert_eq!(output["orders"], sent["count"]);
    assert_eq!(output["total"], sent["total"]);
    assert!(sent["count"].as_u64().unwrap() > 50, "{sent}");
    assert_eq!(
        posts[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    assert_eq!(
        posts[0].header("idempotency-key"),
        Some(format!("{run_id}/post").as_str())
    );

    let store = engine.store().expect("a local engine has a store");
    let steps = store.steps("acme", &run_id).unwrap();
    let keys: Vec<_> = steps.iter().map(|s| s.step_key.as_str()).collect();
    let mut expected = vec!["aggregate", "enrich", "fetch", "filter", "parse", "post"];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert!(
        steps
            .iter()
            .all(|s| s.status == StepStatus::Succeeded && s.attempts == 1)
    );
    let aggregate = store
        .step_output("acme", &run_id, "aggregate")
        .unwrap()
        .unwrap();
    assert_eq!(aggregate, sent);
    let logs = store.logs("acme", &run_id).unwrap();
    assert!(
        logs.iter()
            .any(|l| l.step_key == "filter" && l.message.ends_with("open orders of 100")),
        "{logs:?}"
    );
    let record = store.run("acme", &run_id).unwrap().unwrap();
    assert_eq!(record.status, RunStatus::Succeeded);
    assert_eq!(store.run_output("acme", &run_id).unwrap(), Some(output));
    assert!(store.unfinished_runs().unwrap().is_empty());
    let started = events
        .iter()
        .filter(|e| matches!(e, RunEvent::StepStarted { .. }))
        .count();
    assert_eq!(started, 6);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flaky_server_is_retried_with_backoff_until_it_answers() {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/flaky",
        Responder::Sequence(vec![
            Reply::text(503, "busy"),
            Reply::text(502, "bad gateway"),
            Reply::json(200, &json!({"ok": true})),
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: flaky
version: 1
steps:
  - id: fetch
    type: http
    url: "{}"
    retry: {{ max_attempts: 4, backoff: {{ initial: 20ms, max: 100ms }}, jitter: false }}
"#,
        fixture.url("/flaky")
    );
    let (outcome, events, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output.unwrap()["body"], json!({"ok": true}));
    assert_eq!(fixture.count("GET", "/flaky"), 3);
    let delays: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::StepRetrying { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [Duration::from_millis(20), Duration::from_millis(40)]
    );
    let step = engine
        .store()
        .expect("a local engine has a store")
        .step("acme", &run_id, "fetch")
        .unwrap()
        .unwrap();
    assert_eq!(step.attempts, 3);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_of_a_year_waits_no_longer_than_the_backoff_maximum() {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/busy",
        Responder::Sequence(vec![
            Reply::text(429, "slow down").with_header("Retry-After", "31536000"),
            Reply::text(503, "still busy").with_header("Retry-After", "2"),
            Reply::json(200, &json!({"ok": true})),
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: busy
version: 1
steps:
  - id: fetch
    type: http
    url: "{}"
    retry: {{ max_attempts: 3, backoff: {{ initial: 20ms, max: 150ms }}, jitter: false }}
"#,
        fixture.url("/busy")
    );
    let (outcome, events, _) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let delays: Vec<Duration> = events
        .iter()
        .filter_map(|e| match e {
            RunEvent::StepRetrying { delay, .. } => Some(*delay),
            _ => None,
        })
        .collect();
    assert_eq!(
        delays,
        [Duration::from_millis(150), Duration::from_millis(150)],
        "each Retry-After honoured up to the backoff's maximum"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_error_is_not_retried_and_fails_the_run_naming_the_step() {
    let fixture = HttpFixture::start();
    fixture.route(
        "POST",
        "/orders",
        Responder::Fixed(Reply::text(422, "missing field sku")),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: rejected
version: 1
steps:
  - id: build
    type: code
    source: "export default () => ({{ qty: 1 }})"
  - id: post
    type: http
    method: POST
    url: "{}"
    body: "{{{{ steps.build.output }}}}"
    retry: {{ max_attempts: 5, backoff: {{ initial: 10ms }} }}
"#,
        fixture.url("/orders")
    );
    let (outcome, _, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.starts_with("step \"post\": "), "{error}");
    assert!(
        error.contains("422") && error.contains("missing field sku"),
        "{error}"
    );
    assert_eq!(fixture.count("POST", "/orders"), 1);
    // What was done before the failure is kept.
    let store = engine.store().expect("a local engine has a store");
    assert_eq!(
        store.step_output("acme", &run_id, "build").unwrap(),
        Some(json!({"qty": 1}))
    );
    let post = store.step("acme", &run_id, "post").unwrap().unwrap();
    assert_eq!(post.status, StepStatus::Failed);
    assert_eq!(
        store.run("acme", &run_id).unwrap().unwrap().status,
        RunStatus::Failed
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stop_at_max_attempts() {
    let fixture = HttpFixture::start();
    fixture.route("GET", "/down", Responder::Fixed(Reply::text(503, "down")));
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: down
version: 1
steps:
  - id: fetch
    type: http
    url: "{}"
    retry: {{ max_attempts: 3, backoff: {{ initial: 5ms, max: 10ms }} }}
"#,
        fixture.url("/down")
    );
    let (outcome, _, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(fixture.count("GET", "/down"), 3);
    let step = engine
        .store()
        .expect("a local engine has a store")
        .step("acme", &run_id, "fetch")
        .unwrap()
        .unwrap();
    assert_eq!(step.attempts, 3);
    assert!(step.error.unwrap().contains("503"));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throwing_code_step_is_retried_then_fails_with_its_exception_and_logs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: throws
version: 1
steps:
  - id: check
    type: code
    runtime: quickjs
    retry: { max_attempts: 2, backoff: { initial: 5ms } }
    source: |
      export default function (input, ctx) {
        ctx.log("checking " + input.sku);
        throw new Error("sku " + input.sku + " is unknown");
      }
"#;
    let (outcome, _, run_id) = run(&engine, yaml, json!({"sku": "X-1"})).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("step \"check\": uncaught Error: sku X-1 is unknown"),
        "{error}"
    );
    let logs = engine
        .store()
        .expect("a local engine has a store")
        .logs("acme", &run_id)
        .unwrap();
    let attempts: Vec<u32> = logs.iter().map(|l| l.attempt).collect();
    assert_eq!(attempts, [1, 2], "{logs:?}");
    assert!(logs.iter().all(|l| l.message == "checking X-1"));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_syntax_error_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: broken
version: 1
steps:
  - id: broken
    type: code
    retry: { max_attempts: 5, backoff: { initial: 5ms } }
    source: "export default function ( {"
"#;
    let (outcome, events, _) = run(&engine, yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(outcome.error.unwrap().contains("syntax error"));
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, RunEvent::StepRetrying { .. }))
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_skips_steps_and_a_skipped_output_reads_as_null() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: conditional
version: 1
steps:
  - id: big
    type: code
    when: "{{ input.amount > 1000 }}"
    source: "export default (input) => 'needs approval'"
  - id: small
    type: code
    when: "{{ input.amount <= 1000 }}"
    source: "export default (input) => 'auto-approved'"
output:
  decision: "{{ steps.big.output || steps.small.output }}"
  big: "{{ steps.big.output }}"
"#;
    for (amount, decision, big) in [
        (5000, json!("needs approval"), json!("needs approval")),
        (20, json!("auto-approved"), Value::Null),
    ] {
        let (outcome, _, run_id) = run(&engine, yaml, json!({ "amount": amount })).await;
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
        assert_eq!(
            outcome.output.unwrap(),
            json!({"decision": decision, "big": big})
        );
        let skipped = if amount > 1000 { "small" } else { "big" };
        let record = engine
            .store()
            .expect("a local engine has a store")
            .step("acme", &run_id, skipped)
            .unwrap()
            .unwrap();
        assert_eq!(record.status, StepStatus::Skipped);
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_runs_its_steps_per_element_and_collects_outputs_in_order() {
    let fixture = HttpFixture::start();
    fixture.route("POST", "/items/*", Responder::Echo);
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: items
version: 1
steps:
  - id: build
    type: code
    source: "export default () => Array.from({{ length: 25 }}, (_, i) => ({{ n: i, even: i % 2 === 0 }}))"
  - id: each
    type: loop
    for_each: "{{{{ steps.build.output }}}}"
    concurrency: 5
    steps:
      - id: post
        type: http
        method: POST
        when: "{{{{ item.even }}}}"
        url: "{}/items/{{{{ index }}}}"
        body: {{ n: "{{{{ item.n }}}}", at: "{{{{ index }}}}" }}
      - id: shape
        type: code
        runtime: quickjs
        input: {{ item: "{{{{ item }}}}", echoed: "{{{{ steps.post.output.body.body }}}}", before: "{{{{ steps.build.output[24].n }}}}" }}
        source: "export default (i) => ({{ n: i.item.n, echoed: i.echoed, before: i.before }})"
"#,
        fixture.url("")
    );
    let (outcome, _, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let output = outcome.output.unwrap();
    let items = output.as_array().unwrap();
    assert_eq!(items.len(), 25);
    for (i, item) in items.iter().enumerate() {
        let echoed = if i % 2 == 0 {
            json!({"n": i, "at": i})
        } else {
            Value::Null
        };
        assert_eq!(
            item,
            &json!({"n": i, "echoed": echoed, "before": 24}),
            "element {i}"
        );
    }
    assert_eq!(fixture.count("POST", "/items/*"), 13);
    let store = engine.store().expect("a local engine has a store");
    let odd = store
        .step("acme", &run_id, "each/00000003/post")
        .unwrap()
        .unwrap();
    assert_eq!(odd.status, StepStatus::Skipped);
    assert!(
        store
            .step("acme", &run_id, "each/00000024")
            .unwrap()
            .is_some()
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_loop_never_runs_more_elements_at_once_than_its_concurrency() {
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "GET",
        "/slow/*",
        Responder::Hold(gate.clone(), Reply::json(200, &json!("done"))),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: bounded
version: 1
steps:
  - id: each
    type: loop
    for_each: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    concurrency: 3
    steps:
      - id: get
        type: http
        url: "{}/slow/{{{{ index }}}}"
"#,
        fixture.url("")
    );
    let integration = integration(&yaml);
    let handle = engine
        .start_run("acme", &integration, Value::Null)
        .await
        .unwrap();
    assert!(gate.wait_for_waiting(3, Duration::from_secs(20)));
    // Held for a while, the three requests stay three.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(gate.waiting(), 3);
        assert_eq!(fixture.count("GET", "/slow/*"), 3);
    }
    gate.release();
    let outcome = tokio::time::timeout(Duration::from_secs(30), handle.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Succeeded);
    assert_eq!(fixture.count("GET", "/slow/*"), 10);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_element_fails_the_loop_and_the_run() {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/items/*",
        Responder::Fixed(Reply::json(200, &json!("ok"))),
    );
    fixture.route(
        "GET",
        "/items/3",
        Responder::Fixed(Reply::text(404, "no such item")),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: failing-element
version: 1
steps:
  - id: each
    type: loop
    for_each: [0, 1, 2, 3, 4]
    steps:
      - id: get
        type: http
        url: "{}/items/{{{{ item }}}}"
"#,
        fixture.url("")
    );
    let (outcome, _, _) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(
        error.starts_with("step \"each\": element 3: step \"each/00000003/get\": "),
        "{error}"
    );
    assert!(error.contains("404"), "{error}");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn for_each_that_is_not_an_array_fails_with_a_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: not-an-array
version: 1
steps:
  - id: each
    type: loop
    for_each: "{{ input.items }}"
    steps:
      - id: echo
        type: code
        source: "export default (x) => x"
"#;
    let (outcome, _, _) = run(&engine, yaml, json!({"items": {"a": 1}})).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(
        outcome.error.unwrap(),
        "step \"each\": for_each gave an object, not an array"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A step that needs 200 MiB of heap (an ArrayBuffer, which counts against
/// it, written through so its pages are real).
fn big_buffer(runtime: &str, heap: Option<&str>) -> String {
    format!(
        r#"
apiVersion: isoflow.dev/v1
name: big-buffer
version: 1
steps:
  - id: fill
    type: code
    runtime: {runtime}{}
    source: |
      export default function () {{
        const bytes = new Uint8Array(200 << 20).fill(7);
        return {{ sum: bytes[0] + bytes[bytes.length - 1], length: bytes.length }};
      }}
"#,
        heap.map(|h| format!("\n    heap: {h}")).unwrap_or_default()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_step_sets_its_own_heap_within_the_nodes_limit() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    for runtime in ["v8", "quickjs"] {
        // The sandbox's default heap, 128 MiB, is too small for the step
        // (V8 refuses the buffer with a RangeError, QuickJS stops the step).
        let (outcome, _, _) = run(&engine, &big_buffer(runtime, None), Value::Null).await;
        assert_eq!(outcome.status, RunStatus::Failed, "{runtime}");
        let error = outcome.error.unwrap();
        assert!(
            error == "step \"fill\": step exceeded its heap limit of 128 MiB"
                || error.starts_with(
                    "step \"fill\": uncaught RangeError: Array buffer allocation failed"
                ),
            "{runtime}: {error}"
        );
        // Its own `heap` lets it through.
        let (outcome, _, _) = run(&engine, &big_buffer(runtime, Some("384MiB")), Value::Null).await;
        assert_eq!(
            outcome.status,
            RunStatus::Succeeded,
            "{runtime}: {:?}",
            outcome.error
        );
        assert_eq!(
            outcome.output,
            Some(json!({"sum": 14, "length": 200 << 20})),
            "{runtime}"
        );
    }
    engine.shutdown(Duration::from_secs(5)).await;

    // A node that allows 256 MiB refuses the definition, at the line of
    // its `heap`.
    let limits = model::Limits {
        step_heap: model::ByteSize(256 << 20),
        ..model::Limits::default()
    };
    let error = model::load_with("big.yaml", &big_buffer("v8", Some("384MiB")), &limits)
        .expect_err("over the node's limit");
    assert_eq!(
        error.to_string(),
        "big.yaml:9: step \"fill\": heap is 384MiB, over the largest this node allows, 256MiB (limits.step_heap)"
    );
    model::load_with("big.yaml", &big_buffer("v8", Some("256MiB")), &limits).expect("at the limit");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_outs_fail_http_and_code_steps() {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/slow",
        Responder::Slow(Duration::from_secs(10), Reply::text(200, "late")),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let http = format!(
        r#"
apiVersion: isoflow.dev/v1
name: slow-http
version: 1
steps:
  - id: fetch
    type: http
    url: "{}"
    timeout: 200ms
"#,
        fixture.url("/slow")
    );
    let (outcome, _, _) = run(&engine, &http, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(outcome.error.unwrap().contains("within 200 ms"));

    let code = r#"
apiVersion: isoflow.dev/v1
name: slow-code
version: 1
steps:
  - id: spin
    type: code
    timeout: 200ms
    source: "export default () => { for (;;) {} }"
"#;
    let (outcome, _, _) = run(&engine, code, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(
        outcome.error.unwrap(),
        "step \"spin\": step timed out after 200 ms"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_goes_only_to_its_origins_and_nothing_is_sent_elsewhere() {
    let erp = HttpFixture::start();
    let elsewhere = HttpFixture::start();
    for fixture in [&erp, &elsewhere] {
        fixture.route("POST", "/api/*", Responder::Echo);
        fixture.route("POST", "/apix", Responder::Echo);
    }
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_erp(&dir, Some(&erp.url("/api"))).await;
    let post = |url: String, query: &str| {
        format!(
            "apiVersion: isoflow.dev/v1\nname: bound\nversion: 1\nsteps:\n  - id: post\n    type: http\n    \
             method: POST\n    url: \"{url}\"\n    credential: erp-api\n    body: \"x\"\n{query}"
        )
    };
    // Under the origin: sent, with the token.
    let (sent, _, _) = run(&engine, &post(erp.url("/api/orders"), ""), Value::Null).await;
    assert_eq!(sent.status, RunStatus::Succeeded, "{sent:?}");
    assert_eq!(
        erp.requests("POST", "/api/orders")[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    // Anywhere else: another port, a sibling path, a look-alike host in the
    // query: the step fails before anything is sent.
    for (url, query) in [
        (elsewhere.url("/api/orders"), ""),
        (erp.url("/apix"), ""),
        (
            format!("http://127.0.0.1.nip.io:{}/api/orders", erp.port()),
            "",
        ),
        (
            elsewhere.url("/api/orders"),
            "    query:\n      next: \"http://127.0.0.1\"\n",
        ),
    ] {
        let (refused, _, _) = run(&engine, &post(url.clone(), query), Value::Null).await;
        assert_eq!(refused.status, RunStatus::Failed, "{url}: {refused:?}");
        let error = refused.error.unwrap_or_default();
        assert!(
            error.contains(&format!(
                "credential \"erp-api\" may be sent only to {}",
                erp.url("/api")
            )) && error.contains("nothing was sent"),
            "{url}: {error}"
        );
        assert!(!error.contains(TOKEN), "{url}: {error}");
    }
    // Nor may the step set the headers a front end routes by.
    for header in ["Authorization", "X-Forwarded-Host", "Forwarded"] {
        let yaml = post(
            erp.url("/api/orders"),
            &format!("    headers:\n      {header}: \"attacker.example\"\n"),
        );
        let (refused, _, _) = run(&engine, &yaml, Value::Null).await;
        assert_eq!(refused.status, RunStatus::Failed, "{header}: {refused:?}");
        let error = refused.error.unwrap_or_default();
        assert!(
            error.contains(&format!(
                "header \"{header}\" cannot be set on a step that sends credential \"erp-api\""
            )),
            "{header}: {error}"
        );
    }
    assert_eq!(
        erp.count("POST", "/api/orders"),
        1,
        "only the first was sent"
    );
    assert_eq!(erp.count("POST", "/apix"), 0);
    assert_eq!(elsewhere.count("POST", "/api/orders"), 0);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_echoed_back_is_scrubbed_from_everything_stored() {
    let erp = HttpFixture::start();
    erp.route("POST", "/echo", Responder::Echo);
    erp.route(
        "POST",
        "/cookie",
        Responder::Fixed(
            Reply::json(200, &json!({ "ok": true }))
                .with_header("Set-Cookie", "session=s3cret-session")
                .with_header("X-Seen", &format!("Bearer {TOKEN}")),
        ),
    );
    erp.route(
        "POST",
        "/denied",
        Responder::Fixed(Reply::text(
            401,
            &format!("token {TOKEN} is not valid here"),
        )),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_erp(&dir, Some(&erp.url(""))).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: echo
version: 1
steps:
  - id: echo
    type: http
    method: POST
    url: "{echo}"
    credential: erp-api
    body: {{ note: "hello" }}
  - id: cookie
    type: http
    method: POST
    url: "{cookie}"
    credential: erp-api
    body: "x"
  - id: inspect
    type: code
    input: "{{{{ steps.echo.output }}}}"
    source: "export default (s, ctx) => {{ ctx.log(JSON.stringify(s)); return s; }}"
  - id: denied
    type: http
    method: POST
    url: "{denied}"
    credential: erp-api
    body: "x"
"#,
        echo = erp.url("/echo"),
        cookie = erp.url("/cookie"),
        denied = erp.url("/denied"),
    );
    let (outcome, _, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    assert_eq!(
        erp.requests("POST", "/echo")[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str()),
        "the server got the token"
    );
    let store = engine.store().expect("a local engine has a store");
    let echo = store
        .step_output("acme", &run_id, "echo")
        .unwrap()
        .expect("the echo's output");
    assert_eq!(
        echo["body"]["headers"]["authorization"],
        json!("Bearer [credential]"),
        "{echo}"
    );
    let cookie = store
        .step_output("acme", &run_id, "cookie")
        .unwrap()
        .expect("the cookie step's output");
    assert!(
        cookie["headers"].get("set-cookie").is_none(),
        "no session cookie in the output: {cookie}"
    );
    assert!(
        cookie["headers"].get("x-seen").is_none(),
        "a header echoing the credential is dropped: {cookie}"
    );
    assert_eq!(cookie["headers"]["content-type"], json!("application/json"));
    // Everything the run stored: step records (errors), outputs, the run's
    // error, logs.
    let mut stored = format!("{outcome:?}");
    for step in store.steps("acme", &run_id).unwrap() {
        stored.push_str(&format!("{step:?}"));
        if let Some(output) = store.step_output("acme", &run_id, &step.step_key).unwrap() {
            stored.push_str(&output.to_string());
        }
    }
    stored.push_str(&format!("{:?}", store.logs("acme", &run_id).unwrap()));
    stored.push_str(&format!("{:?}", store.run("acme", &run_id).unwrap()));
    assert!(stored.contains("401"), "the denied step's error is there");
    assert!(
        !stored.contains(TOKEN) && !stored.contains("s3cret-session"),
        "the secret is stored somewhere: {stored}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_page_cut_inside_the_secret_leaves_none_of_it() {
    // The error keeps a 200-byte excerpt of the body: padded so that the
    // cut falls one byte before the token's end, a scrub after the cut
    // would miss the token and store all but its last byte.
    let erp = HttpFixture::start();
    let body = format!("{}{TOKEN} was refused", "p".repeat(200 - TOKEN.len() + 1));
    erp.route("POST", "/denied", Responder::Fixed(Reply::text(401, &body)));
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_erp(&dir, Some(&erp.url(""))).await;
    let yaml = format!(
        "apiVersion: isoflow.dev/v1\nname: cut\nversion: 1\nsteps:\n  - id: denied\n    type: http\n    \
         method: POST\n    url: \"{}\"\n    credential: erp-api\n    body: \"x\"\n",
        erp.url("/denied")
    );
    let (outcome, _, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let store = engine.store().expect("a local engine has a store");
    let stored = format!(
        "{:?}{:?}",
        store.steps("acme", &run_id).unwrap(),
        store.run("acme", &run_id).unwrap()
    );
    assert!(stored.contains("401"), "{stored}");
    assert!(
        !stored.contains(&TOKEN[..TOKEN.len() - 1]),
        "part of the token is stored: {stored}"
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_text_the_tenant_sized_is_stored_cut() {
    // A port nobody listens on, and a 1 MB path from the run's input: the
    // error names the URL.
    let port = isoflow_testkit::free_port();
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        "apiVersion: isoflow.dev/v1\nname: long\nversion: 1\nsteps:\n  - id: fetch\n    type: http\n    \
         url: \"http://127.0.0.1:{port}/{{{{ input.path }}}}\"\n"
    );
    let input = json!({ "path": "p".repeat(1 << 20) });
    let (outcome, _, run_id) = run(&engine, &yaml, input).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let step = engine
        .store()
        .expect("a local engine has a store")
        .step("acme", &run_id, "fetch")
        .unwrap()
        .expect("the step's record");
    let error = step.error.expect("an error");
    assert!(error.len() < 17 * 1024, "{} bytes stored", error.len());
    assert!(
        error.contains(&format!("http://127.0.0.1:{port}/ppp"))
            && error.contains("(error text cut at 16384 of "),
        "{}",
        &error[..200]
    );
    let run_error = outcome.error.expect("the run's error");
    assert!(run_error.len() < 17 * 1024, "{} bytes", run_error.len());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_credential_fails_the_step_and_its_value_never_reaches_javascript() {
    let fixture = HttpFixture::start();
    fixture.route(
        "POST",
        "/echo",
        Responder::Fixed(Reply::json(200, &json!({"ok": true}))),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_erp(&dir, Some(&fixture.url(""))).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: credentials
version: 1
steps:
  - id: post
    type: http
    method: POST
    url: "{url}"
    credential: erp-api
    body: "hello"
  - id: inspect
    type: code
    input: "{{{{ steps.post.output }}}}"
    source: "export default (r) => JSON.stringify(r).includes('{TOKEN}')"
  - id: other
    type: http
    method: POST
    url: "{url}"
    credential: crm-api
"#,
        url = fixture.url("/echo")
    );
    let (outcome, _, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    assert_eq!(
        outcome.error.unwrap(),
        "step \"other\": credential \"crm-api\" is not defined"
    );
    // The request carried the token; the step's output (what JavaScript
    // sees next) holds the response only.
    assert_eq!(
        fixture.requests("POST", "/echo")[0].header("authorization"),
        Some(format!("Bearer {TOKEN}").as_str())
    );
    let inspect = engine
        .store()
        .expect("a local engine has a store")
        .step_output("acme", &run_id, "inspect")
        .unwrap();
    assert_eq!(inspect, Some(json!(false)));
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_run_in_flight() {
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "GET",
        "/held",
        Responder::Hold(gate.clone(), Reply::text(200, "late")),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: cancellable
version: 1
steps:
  - id: wait
    type: http
    url: "{}"
  - id: after
    type: code
    source: "export default () => 1"
"#,
        fixture.url("/held")
    );
    let handle = engine
        .start_run("acme", &integration(&yaml), Value::Null)
        .await
        .unwrap();
    let run_id = handle.run_id.clone();
    assert!(gate.wait_for_waiting(1, Duration::from_secs(20)));
    assert!(engine.cancel("acme", &run_id));
    assert!(!engine.cancel("other-tenant", &run_id));
    let outcome = tokio::time::timeout(Duration::from_secs(20), handle.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Cancelled);
    assert_eq!(
        outcome.error.as_deref(),
        Some("cancelled during step \"wait\"")
    );
    gate.release();
    let store = engine.store().expect("a local engine has a store");
    assert_eq!(
        store.run("acme", &run_id).unwrap().unwrap().status,
        RunStatus::Cancelled
    );
    assert!(store.step("acme", &run_id, "after").unwrap().is_none());
    assert!(store.unfinished_runs().unwrap().is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_checkpoints_the_step_in_flight_and_a_new_engine_resumes_after_it() {
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "POST",
        "/first",
        Responder::Hold(gate.clone(), Reply::json(201, &json!({"id": 7}))),
    );
    fixture.route("POST", "/second", Responder::Echo);
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: two-posts
version: 1
steps:
  - id: first
    type: http
    method: POST
    url: "{}"
    body: "{{{{ input }}}}"
  - id: second
    type: http
    method: POST
    url: "{}"
    body: {{ id: "{{{{ steps.first.output.body.id }}}}" }}
output: "{{{{ steps.second.output.body.body }}}}"
"#,
        fixture.url("/first"),
        fixture.url("/second")
    );
    let run_id = {
        let engine = engine(&dir).await;
        let handle = engine
            .start_run("acme", &integration(&yaml), json!({"order": 1}))
            .await
            .unwrap();
        assert!(gate.wait_for_waiting(1, Duration::from_secs(20)));
        let shutdown = tokio::spawn({
            let engine = engine.clone();
            async move { engine.shutdown(Duration::from_secs(20)).await }
        });
        // The step in flight is allowed to finish; nothing after it starts.
        tokio::time::sleep(Duration::from_millis(50)).await;
        gate.release();
        shutdown.await.unwrap();
        assert_eq!(handle.wait().await, None, "the run did not finish");
        assert_eq!(fixture.count("POST", "/second"), 0);
        let store = engine.store().expect("a local engine has a store");
        let unfinished = store.unfinished_runs().unwrap();
        assert_eq!(unfinished.len(), 1);
        let first = store.step("acme", &unfinished[0].run_id, "first").unwrap();
        assert_eq!(first.unwrap().status, StepStatus::Succeeded);
        unfinished[0].run_id.clone()
    };
    let engine = engine(&dir).await;
    let mut handles = engine.resume_unfinished().await.unwrap();
    assert_eq!(handles.len(), 1);
    let handle = handles.remove(0);
    assert_eq!(handle.run_id, run_id);
    let mut restored = Vec::new();
    let mut handle = handle;
    let outcome = loop {
        match handle.next_event().await.unwrap() {
            RunEvent::StepRestored { step_key } => restored.push(step_key),
            RunEvent::Finished(outcome) => break outcome,
            _ => {}
        }
    };
    assert_eq!(restored, ["first"]);
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output.unwrap(), json!({"id": 7}));
    assert_eq!(
        fixture.count("POST", "/first"),
        1,
        "a checkpointed step is not sent again"
    );
    assert_eq!(fixture.count("POST", "/second"), 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenants_see_only_their_own_runs() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: private
version: 1
steps:
  - id: secret
    type: code
    source: "export default (i) => i"
"#;
    let handle = engine
        .start_run("globex", &integration(yaml), json!({"payroll": 1}))
        .await
        .unwrap();
    let run_id = handle.run_id.clone();
    assert_eq!(handle.wait().await.unwrap().status, RunStatus::Succeeded);
    let store = engine.store().expect("a local engine has a store");
    assert!(store.run("acme", &run_id).unwrap().is_none());
    assert!(store.runs("acme", 10).unwrap().is_empty());
    assert!(
        store
            .step_output("acme", &run_id, "secret")
            .unwrap()
            .is_none()
    );
    assert_eq!(store.runs("globex", 10).unwrap().len(), 1);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_100_mb_payload_passes_through_three_steps_durably() {
    const SIZE: usize = 100 * 1024 * 1024;
    let fixture = HttpFixture::start();
    let body: String = "0123456789abcdef".repeat(SIZE / 16);
    fixture.route("GET", "/export", Responder::Fixed(Reply::text(200, &body)));
    fixture.route(
        "POST",
        "/import",
        Responder::Fixed(Reply::json(201, &json!("stored"))),
    );
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: big
version: 1
steps:
  - id: fetch
    type: http
    url: "{}"
    max_response_bytes: 200MiB
  - id: measure
    type: code
    input: "{{{{ steps.fetch.output.body }}}}"
    source: "export default (text) => ({{ length: text.length, head: text.slice(0, 16) }})"
  - id: post
    type: http
    method: POST
    url: "{}"
    body: "{{{{ steps.fetch.output.body }}}}"
output:
  measured: "{{{{ steps.measure.output }}}}"
  status: "{{{{ steps.post.output.status }}}}"
"#,
        fixture.url("/export"),
        fixture.url("/import")
    );
    let (outcome, _, run_id) = run(&engine, &yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        outcome.output.unwrap(),
        json!({"measured": {"length": SIZE, "head": "0123456789abcdef"}, "status": 201})
    );
    let posted = fixture.requests("POST", "/import");
    assert_eq!(posted.len(), 1);
    assert_eq!(posted[0].body.len(), SIZE);
    assert!(posted[0].body == body.as_bytes());
    drop(posted);
    // The stored output is the whole payload, read back from its file.
    let stored = engine
        .store()
        .expect("a local engine has a store")
        .step_output("acme", &run_id, "fetch")
        .unwrap()
        .unwrap();
    assert_eq!(stored["body"].as_str().map(str::len), Some(SIZE));
    let record = engine
        .store()
        .expect("a local engine has a store")
        .step("acme", &run_id, "fetch")
        .unwrap()
        .unwrap();
    assert!(record.output_bytes.unwrap() > SIZE as u64);
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_flooding_the_node_does_not_hold_up_another() {
    // Two code steps run at once, one per tenant at most (the default):
    // the flood's runs take turns on one runner, the other tenant's run
    // finds the second.
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let busy = integration(
        "apiVersion: isoflow.dev/v1\nname: busy\nversion: 1\nsteps:\n  - id: spin\n    type: code\n    \
         source: \"export default () => { const end = Date.now() + 200; while (Date.now() < end) {} return 1; }\"\n",
    );
    let quick = integration(
        "apiVersion: isoflow.dev/v1\nname: quick\nversion: 1\nsteps:\n  - id: one\n    type: code\n    \
         source: \"export default () => 1\"\n",
    );
    let finished = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waits = Vec::new();
    for _ in 0..12 {
        let handle = engine.start_run("acme", &busy, Value::Null).await.unwrap();
        let finished = finished.clone();
        waits.push(tokio::spawn(async move {
            let outcome = handle.wait().await.expect("the run ends");
            finished.lock().unwrap().push(("acme", outcome.status));
        }));
    }
    let handle = engine
        .start_run("other", &quick, Value::Null)
        .await
        .unwrap();
    let outcome = handle.wait().await.expect("the run ends");
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    let flood_done = finished.lock().unwrap().len();
    assert!(
        flood_done < 6,
        "the other tenant's run waited for {flood_done} of the flood's 12 runs"
    );
    for wait in waits {
        wait.await.unwrap();
    }
    assert!(
        finished
            .lock()
            .unwrap()
            .iter()
            .all(|(_, status)| *status == RunStatus::Succeeded)
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_go_on_concurrently() {
    let fixture = HttpFixture::start();
    fixture.serve_seed(TOKEN);
    let dir = tempfile::tempdir().unwrap();
    let engine = engine_with_erp(&dir, Some(&fixture.url(""))).await;
    let integration = integration(&seed());
    let input = json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    });
    let mut handles = Vec::new();
    for _ in 0..20 {
        handles.push(
            engine
                .start_run("acme", &integration, input.clone())
                .await
                .unwrap(),
        );
    }
    let mut outputs = HashMap::new();
    for handle in handles {
        let outcome = handle.wait().await.unwrap();
        assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
        *outputs
            .entry(outcome.output.unwrap().to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(
        outputs.len(),
        1,
        "every run gives the same output: {outputs:?}"
    );
    assert_eq!(fixture.count("POST", "/erp/orders"), 20);
    assert_eq!(
        engine
            .store()
            .expect("a local engine has a store")
            .runs("acme", 100)
            .unwrap()
            .len(),
        20
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_javascript_fails_its_run_with_one_sentence_naming_the_step() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let cases: &[(&str, &str)] = &[
        (
            "export default function (",
            "syntax error at transform.js:1",
        ),
        ("export const x = 1;", "default export"),
        ("export default 42;", "default export"),
        (
            "export default () => { throw 'plain string' }",
            "uncaught plain string",
        ),
        ("export default () => { null.x }", "uncaught TypeError"),
        ("export default () => 10n", "BigInt"),
        (
            "export default () => { const a = {}; a.a = a; return a }",
            "cycle",
        ),
        ("import fs from 'fs'; export default () => 1", "fs"),
        (
            "export default () => new Promise(() => {})",
            "never settled",
        ),
    ];
    for runtime in ["v8", "quickjs"] {
        for (source, expected) in cases {
            let yaml = format!(
                "apiVersion: isoflow.dev/v1\nname: bad-js\nversion: 1\nsteps:\n  - id: transform\n    \
                 type: code\n    runtime: {runtime}\n    source: {}\n",
                serde_json::to_string(source).unwrap()
            );
            let (outcome, _, _) = run(&engine, &yaml, Value::Null).await;
            assert_eq!(outcome.status, RunStatus::Failed, "{runtime}: {source}");
            let error = outcome.error.unwrap();
            assert!(
                error.starts_with("step \"transform\": "),
                "{runtime}: {source}: {error}"
            );
            assert!(
                error.to_lowercase().contains(&expected.to_lowercase()),
                "{runtime}: {source}: {error:?} does not mention {expected:?}"
            );
            assert!(
                !error.contains('\n'),
                "{runtime}: {source}: one line: {error:?}"
            );
        }
    }
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_whose_stored_definition_cannot_be_read_fails_and_the_others_resume() {
    use isoflow_engine::store::{RunRecord, Store, StoreConfig};
    let dir = tempfile::tempdir().unwrap();
    let (broken, fine) = {
        let store = Store::open(&StoreConfig::new(dir.path())).unwrap();
        let broken = RunRecord::new("acme", "old-format", 1);
        store
            .create_run(&broken, &json!({"steps": "not a list"}), &Value::Null)
            .unwrap();
        let fine = RunRecord::new("acme", "private", 1);
        let definition = serde_json::to_value(integration(
            "apiVersion: isoflow.dev/v1\nname: private\nversion: 1\nsteps:\n  - id: echo\n    \
             type: code\n    source: \"export default (i) => i\"\n",
        ))
        .unwrap();
        store.create_run(&fine, &definition, &json!(7)).unwrap();
        (broken.run_id, fine.run_id)
    };
    let engine = engine(&dir).await;
    let handles = engine.resume_unfinished().await.unwrap();
    assert_eq!(handles.len(), 1);
    let outcome = handles.into_iter().next().unwrap().wait().await.unwrap();
    assert_eq!(outcome.output, Some(json!(7)));
    let store = engine.store().expect("a local engine has a store");
    let failed = store.run("acme", &broken).unwrap().unwrap();
    assert_eq!(failed.status, RunStatus::Failed);
    assert!(
        failed
            .error
            .unwrap()
            .starts_with("cannot resume: the stored definition cannot be read")
    );
    assert_eq!(
        store.run("acme", &fine).unwrap().unwrap().status,
        RunStatus::Succeeded
    );
    assert!(store.unfinished_runs().unwrap().is_empty());
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_payload_limit_applies_to_inputs_outputs_and_responses() {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/big",
        Responder::Fixed(Reply::text(200, &"x".repeat(10_000))),
    );
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(&dir);
    config.max_payload_bytes = 4096;
    let engine = Engine::start(config).await.unwrap();
    let echo = integration(
        "apiVersion: isoflow.dev/v1\nname: echo\nversion: 1\nsteps:\n  - id: grow\n    type: code\n    \
         source: \"export default (s) => s.repeat(2)\"\n",
    );
    let error = engine
        .start_run("acme", &echo, json!("y".repeat(5000)))
        .await
        .unwrap_err();
    assert_eq!(
        error.to_string(),
        "run input is 5002 bytes, over the payload limit of 4096 bytes"
    );
    assert!(
        engine
            .store()
            .expect("a local engine has a store")
            .runs("acme", 10)
            .unwrap()
            .is_empty(),
        "nothing stored"
    );

    let outcome = engine
        .start_run("acme", &echo, json!("y".repeat(3000)))
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(
        outcome
            .error
            .unwrap()
            .contains("over the output limit of 4096 bytes")
    );

    let fetch = integration(&format!(
        "apiVersion: isoflow.dev/v1\nname: fetch\nversion: 1\nsteps:\n  - id: get\n    type: http\n    \
         url: \"{}\"\n",
        fixture.url("/big")
    ));
    let outcome = engine
        .start_run("acme", &fetch, Value::Null)
        .await
        .unwrap()
        .wait()
        .await
        .unwrap();
    assert_eq!(outcome.status, RunStatus::Failed);
    assert!(
        outcome
            .error
            .unwrap()
            .contains("over the limit of 4096 bytes")
    );
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_output_nested_too_deep_to_store_fails_once_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: deep
version: 1
steps:
  - id: nest
    type: code
    source: |
      export default () => { let v = 1; for (let i = 0; i < 200; i++) v = [v]; return v; }
    retry: { max_attempts: 3, backoff: { initial: 1ms } }
"#;
    let (outcome, _, run_id) = run(&engine, yaml, Value::Null).await;
    assert_eq!(outcome.status, RunStatus::Failed);
    let error = outcome.error.unwrap();
    assert!(error.contains("nests deeper than 128 levels"), "{error}");
    let step = engine
        .store()
        .expect("a local engine has a store")
        .step("acme", &run_id, "nest")
        .unwrap()
        .unwrap();
    assert_eq!(step.attempts, 1, "not retried: it would nest as deep again");
    engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rerun_resumes_at_the_failed_step_keeping_the_steps_and_loop_elements_before_it() {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/start",
        Responder::Fixed(Reply::json(200, &json!([0, 1, 2, 3, 4]))),
    );
    fixture.route(
        "GET",
        "/items/*",
        Responder::Fixed(Reply::json(200, &json!("ok"))),
    );
    // Element 3's request fails the first time only.
    fixture.route(
        "GET",
        "/items/3",
        Responder::Sequence(vec![
            Reply::text(404, "not yet"),
            Reply::json(200, &json!("late")),
        ]),
    );
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: rerun
version: 3
steps:
  - id: start
    type: http
    url: "{start}"
  - id: each
    type: loop
    for_each: "{{{{ steps.start.output.body }}}}"
    concurrency: 1
    steps:
      - id: get
        type: http
        url: "{items}/{{{{ item }}}}"
      - id: mark
        type: code
        source: "export default (input) => input.body + '!'"
        input: "{{{{ steps.get.output }}}}"
  - id: last
    type: code
    source: "export default (input) => input"
    input: "{{{{ steps.each.output }}}}"
"#,
        start = fixture.url("/start"),
        items = fixture.url("/items"),
    );
    let engine = engine(&dir).await;
    let (outcome, _, failed) = run(&engine, &yaml, json!({"batch": 9})).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let store = engine.store().expect("a local engine has a store");

    // Only a failed run of the tenant's own can be run again.
    assert!(matches!(
        create_rerun(store, "globex", &failed, None),
        Err(RerunError::NotFound(_))
    ));
    let rerun = create_rerun(store, "acme", &failed, None).unwrap();
    assert_eq!(rerun.trigger, Some(RunTrigger::Rerun));
    assert_eq!(rerun.rerun_of.as_deref(), Some(failed.as_str()));
    assert_eq!(rerun.from_step.as_deref(), Some("each"));
    assert_eq!((rerun.integration.as_str(), rerun.version), ("rerun", 3));
    assert_eq!(
        store.run_input("acme", &rerun.run_id).unwrap(),
        Some(json!({"batch": 9}))
    );

    // It runs through the resume path: what was copied is restored.
    let mut handles = engine.resume_unfinished().await.unwrap();
    assert_eq!(handles.len(), 1);
    let mut handle = handles.remove(0);
    assert_eq!(handle.run_id, rerun.run_id);
    let mut restored = Vec::new();
    let outcome = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match handle.next_event().await.expect("the run ends") {
                RunEvent::StepRestored { step_key } => restored.push(step_key),
                RunEvent::Finished(outcome) => break outcome,
                _ => {}
            }
        }
    })
    .await
    .expect("the rerun ends within a minute");
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(
        outcome.output,
        Some(json!(["ok!", "ok!", "ok!", "late!", "ok!"]))
    );
    // The step before and the finished elements were not run again; the
    // failed element and the one never started were.
    assert_eq!(
        restored,
        ["start"],
        "elements are restored by the loop itself"
    );
    assert_eq!(fixture.count("GET", "/start"), 1);
    for (item, hits) in [(0, 1), (1, 1), (2, 1), (3, 2), (4, 1)] {
        assert_eq!(
            fixture.count("GET", &format!("/items/{item}")),
            hits,
            "element {item}"
        );
    }
    let steps = store.steps("acme", &rerun.run_id).unwrap();
    assert!(
        steps.iter().all(|s| s.status == StepStatus::Succeeded),
        "{steps:?}"
    );
    // The old run is untouched, and a run that did not fail is not rerun.
    let old = store.run("acme", &failed).unwrap().unwrap();
    assert_eq!(old.status, RunStatus::Failed);
    assert_eq!(old.trigger, Some(RunTrigger::Cli));
    assert!(matches!(
        create_rerun(store, "acme", &rerun.run_id, None),
        Err(RerunError::NotFailed {
            status: "succeeded",
            ..
        })
    ));
    engine.shutdown(Duration::from_secs(5)).await;
}

/// A code step's input, rendered again from the stored run, is what the
/// step was given: checked against steps that return their input, a loop
/// element's step, and the step that failed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_steps_input_is_rendered_again_from_the_stored_run() {
    let dir = tempfile::tempdir().unwrap();
    let engine = engine(&dir).await;
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: replay
version: 1
steps:
  - id: seed
    type: code
    source: "export default (input) => ({ items: [10, 20, 30], tag: input.tag })"
  - id: each
    type: loop
    for_each: "{{ steps.seed.output.items }}"
    steps:
      - id: double
        type: code
        source: "export default (n) => n * 2"
        input: "{{ item }}"
      - id: echo
        type: code
        source: "export default (input) => input"
        input: { doubled: "{{ steps.double.output }}", index: "{{ index }}", tag: "{{ steps.seed.output.tag }}" }
  - id: fail
    type: code
    source: "export default (input) => { throw new Error('no ' + input.first.doubled); }"
    input: { first: "{{ steps.each.output[0] }}", run: "{{ input }}" }
"#;
    let (outcome, _, run_id) = run(&engine, yaml, json!({"tag": "t"})).await;
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let store = engine.store().expect("a local engine has a store");
    let replay = |key: &str| step_replay(store, "acme", &run_id, key);

    // Each element's echo returned its input: the replayed input is that.
    for index in 0..3 {
        let key = format!("each/{index:08}/echo");
        let given = store.step_output("acme", &run_id, &key).unwrap().unwrap();
        assert_eq!(replay(&key).unwrap().input, given, "{key}");
    }
    assert_eq!(replay("each/00000002/double").unwrap().input, json!(30));
    // The failed step: its input, and its source to run it with.
    let failed = replay("fail").unwrap();
    assert_eq!(
        failed.input,
        json!({"first": {"doubled": 20, "index": 0, "tag": "t"}, "run": {"tag": "t"}})
    );
    assert!(failed.source.contains("throw new Error"), "{failed:?}");
    assert_eq!(replay("seed").unwrap().input, json!({"tag": "t"}));

    // What has no input to replay, each with its sentence.
    for (key, says) in [
        ("each", "is a loop step"),
        ("nope", "has no step nope"),
        ("each/00000007/echo", "its loop each has no element 7"),
        ("#definition", "has no step #definition"),
    ] {
        let error = replay(key).expect_err(key).to_string();
        assert!(error.contains(says), "{key}: {error}");
    }
    assert!(matches!(
        step_replay(store, "globex", &run_id, "fail"),
        Err(ReplayError::NotFound(_))
    ));
    engine.shutdown(Duration::from_secs(5)).await;
}
