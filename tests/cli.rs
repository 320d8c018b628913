//! The `isoflow` commands as a user types them: `validate`, `run` of the
//! seed integration against a local ERP and shop, `runs`, `show`, a bad
//! `--input`, and an interrupt that `resume` recovers from.

use std::path::{Path, PathBuf};
use std::time::Duration;

use isoflow_testkit::process::{Finished, Isoflow};
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, seed_orders_expected};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(90);

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("node/ is in the repository")
        .to_owned()
}

fn seed_yaml() -> PathBuf {
    repo().join("examples/integrations/seed.yaml")
}

fn isoflow(data: &tempfile::TempDir) -> Isoflow {
    Isoflow::new(env!("CARGO_BIN_EXE_isoflow"), data.path().join("data"))
}

/// The run id from `run`'s "run <id> of ..." line.
fn run_id(finished: &Finished) -> String {
    finished
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("run "))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_else(|| panic!("no run id in:\n{}", finished.stderr))
        .to_owned()
}

fn seed_input(fixture: &HttpFixture) -> String {
    json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    })
    .to_string()
}

#[test]
fn validate_accepts_the_examples() {
    let data = tempfile::tempdir().expect("a temp dir");
    let examples = repo().join("examples/integrations");
    let args = [
        "validate".into(),
        examples.join("seed.yaml").into_os_string(),
        examples.join("loop-500.yaml").into_os_string(),
    ];
    let finished = isoflow(&data).run(LONG, args);
    finished.expect_code(0);
    assert!(
        finished
            .stderr
            .contains("seed.yaml: ok: orders-to-erp version 1, 6 steps"),
        "{}",
        finished.stderr
    );
    assert!(
        finished
            .stderr
            .contains("loop-500.yaml: ok: loop-500 version 1, 2 steps"),
        "{}",
        finished.stderr
    );
}

#[test]
fn validate_reports_each_mistake_with_file_line_and_step() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        r#"apiVersion: isoflow.dev/v1
name: orders
version: 1
steps:
  - id: fetch
    type: http
    urll: https://example.com
  - id: post
    type: http
    method: POST
    url: https://example.com/orders
    body: "{{ steps.fech.output.body }}"
"#,
    )
    .expect("write broken.yaml");
    let finished = isoflow(&dir).run(LONG, ["validate".as_ref(), broken.as_os_str()]);
    finished.expect_code(1);
    let name = broken.display();
    for sentence in [
        format!(r#"{name}:5: step "fetch": missing field "url""#),
        format!(r#"{name}:7: step "fetch": unknown field "urll" (did you mean "url"?)"#),
        format!(
            r#"{name}:12: step "post": unknown step "fech" referenced in body (did you mean "fetch"?)"#
        ),
    ] {
        assert!(
            finished.stderr.lines().any(|l| l == sentence),
            "missing {sentence:?} in:\n{}",
            finished.stderr
        );
    }

    let missing = dir.path().join("missing.yaml");
    let finished = isoflow(&dir).run(LONG, ["validate".as_ref(), missing.as_os_str()]);
    finished.expect_code(2);
    assert!(
        finished.stderr.contains("missing.yaml"),
        "{}",
        finished.stderr
    );
}

#[test]
fn runs_the_seed_integration_and_shows_it() {
    let data = tempfile::tempdir().expect("a temp dir");
    let fixture = HttpFixture::start();
    fixture.serve_seed("erp-t0ken");
    let expected = seed_orders_expected(100);
    let isoflow = isoflow(&data)
        .env("ISOFLOW_CREDENTIAL_ERP_API", "erp-t0ken")
        .env("ISOFLOW_CREDENTIAL_ERP_API_ORIGINS", &fixture.url(""));

    let input = seed_input(&fixture);
    let finished = isoflow.run(
        LONG,
        [
            "run".as_ref(),
            seed_yaml().as_os_str(),
            "--input".as_ref(),
            input.as_ref(),
        ],
    );
    finished.expect_code(0);
    let output = finished.json();
    assert_eq!(output["orders"], expected.open);
    assert_eq!(output["status"], 201);
    let total = output["total"].as_f64().expect("a number");
    assert!(
        (total * 100.0 - expected.total_cents as f64).abs() < 0.5,
        "total {total}"
    );
    for step in ["fetch", "parse", "filter", "enrich", "aggregate", "post"] {
        assert!(
            finished.stderr.lines().any(|l| {
                let words: Vec<&str> = l.split_whitespace().collect();
                l.starts_with("  ") && words.len() > 1 && words[0] == step && words[1] == "ok"
            }),
            "no progress line for {step}:\n{}",
            finished.stderr
        );
    }

    let posts = fixture.requests("POST", "/erp/orders");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].header("authorization"), Some("Bearer erp-t0ken"));
    assert_eq!(posts[0].header("content-type"), Some("application/json"));
    let body = posts[0].json();
    assert_eq!(body["count"], expected.open);
    assert_eq!(body["orders"].as_array().map(Vec::len), Some(expected.open));
    assert_eq!(body["exportedAt"], "2026-11-27T02:00:00Z");
    assert_eq!(
        fixture.requests("GET", "/orders.xml")[0].header("accept"),
        Some("application/xml")
    );

    let id = run_id(&finished);
    let runs = isoflow.run(LONG, ["runs"]);
    runs.expect_code(0);
    let line = runs
        .stdout
        .lines()
        .find(|l| l.starts_with(&id))
        .unwrap_or_else(|| panic!("run {id} not listed:\n{}", runs.stdout));
    assert!(
        line.contains("orders-to-erp") && line.contains("succeeded"),
        "{line}"
    );

    let shown = isoflow.run(LONG, ["show", &id]);
    shown.expect_code(0);
    assert!(shown.stdout.contains("succeeded"), "{}", shown.stdout);
    for step in ["fetch", "parse", "filter", "enrich", "aggregate", "post"] {
        assert!(
            shown
                .stdout
                .lines()
                .any(|l| l.split_whitespace().take(2).eq([step, "ok"])),
            "show lists no {step}:\n{}",
            shown.stdout
        );
    }
    let log = format!("{} open orders of {}", expected.open, expected.orders);
    assert!(
        shown
            .stdout
            .lines()
            .any(|l| l.contains("filter") && l.contains(&log)),
        "show has no log line {log:?}:\n{}",
        shown.stdout
    );
    let (_, shown_output) = shown
        .stdout
        .split_once("\noutput\n")
        .expect("an output section");
    let shown_output: Value = serde_json::from_str(shown_output).expect("show's output is JSON");
    assert_eq!(shown_output, output);
}

/// The `error:` line of a failed run, checked to name the step `post`.
fn post_error(finished: &Finished) -> String {
    finished.expect_code(1);
    assert!(
        finished.stdout.trim().is_empty(),
        "a failed run prints no output: {}",
        finished.stdout
    );
    let error = finished
        .stderr
        .lines()
        .find(|l| l.starts_with("error: "))
        .unwrap_or_else(|| panic!("no error line in:\n{}", finished.stderr));
    assert!(
        error.contains("step post:") || error.contains("step \"post\""),
        "the error does not name the step: {error}"
    );
    error.to_owned()
}

#[test]
fn a_missing_or_wrong_credential_fails_the_run_and_names_the_step() {
    let data = tempfile::tempdir().expect("a temp dir");
    let fixture = HttpFixture::start();
    fixture.serve_seed("erp-t0ken");
    let input = seed_input(&fixture);
    let args = [
        "run".into(),
        seed_yaml().into_os_string(),
        "--input".into(),
        input.into(),
    ];

    // No credential in the environment: the step fails before it sends
    // anything.
    let missing = isoflow(&data).run(LONG, &args);
    let error = post_error(&missing);
    assert!(
        error.contains("erp-api"),
        "the error does not name the credential: {error}"
    );
    assert_eq!(
        fixture.count("POST", "/erp/orders"),
        0,
        "sent without its credential"
    );

    // A wrong one: the ERP answers 401, which is not retried.
    let isoflow = isoflow(&data)
        .env("ISOFLOW_CREDENTIAL_ERP_API", "wrong")
        .env("ISOFLOW_CREDENTIAL_ERP_API_ORIGINS", &fixture.url(""));
    let rejected = isoflow.run(LONG, &args);
    let error = post_error(&rejected);
    assert!(
        error.contains("401"),
        "the error does not give the status: {error}"
    );
    assert_eq!(
        fixture.count("POST", "/erp/orders"),
        1,
        "a 401 is not retried"
    );
    assert_eq!(
        fixture.requests("POST", "/erp/orders")[0].header("authorization"),
        Some("Bearer wrong")
    );

    let runs = isoflow.run(LONG, ["runs"]);
    runs.expect_code(0);
    for finished in [&missing, &rejected] {
        let id = run_id(finished);
        assert!(
            runs.stdout
                .lines()
                .any(|l| l.starts_with(&id) && l.contains("failed")),
            "{id} is not listed as failed:\n{}",
            runs.stdout
        );
    }
    let shown = isoflow.run(LONG, ["show", &run_id(&rejected)]);
    shown.expect_code(0);
    let row = |step: &str, status: &str| {
        shown
            .stdout
            .lines()
            .any(|l| l.split_whitespace().take(2).eq([step, status]))
    };
    assert!(
        row("post", "failed") && row("aggregate", "ok"),
        "{}",
        shown.stdout
    );
    assert!(
        shown.stdout.contains("401"),
        "show gives no reason:\n{}",
        shown.stdout
    );
}

#[test]
fn bad_input_is_a_usage_error() {
    let data = tempfile::tempdir().expect("a temp dir");
    let isoflow = isoflow(&data);
    let finished = isoflow.run(
        LONG,
        [
            "run".as_ref(),
            seed_yaml().as_os_str(),
            "--input".as_ref(),
            "{not json".as_ref(),
        ],
    );
    finished.expect_code(2);
    assert!(
        finished.stderr.contains("--input is not valid JSON"),
        "{}",
        finished.stderr
    );
    assert_eq!(
        finished.stderr.lines().count(),
        1,
        "one sentence:\n{}",
        finished.stderr
    );

    let missing = data.path().join("missing.json");
    let finished = isoflow.run(
        LONG,
        [
            "run".as_ref(),
            seed_yaml().as_os_str(),
            "--input".as_ref(),
            format!("@{}", missing.display()).as_ref(),
        ],
    );
    finished.expect_code(2);
    assert!(
        finished.stderr.contains("cannot read input file"),
        "{}",
        finished.stderr
    );
}

/// SIGTERM lets the step in flight finish and be checkpointed, exits 130,
/// and `resume` carries on from the next step without repeating it.
#[test]
fn sigterm_leaves_the_run_for_resume() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let file = dir.path().join("two-posts.yaml");
    std::fs::write(
        &file,
        r#"apiVersion: isoflow.dev/v1
name: two-posts
version: 1
steps:
  - id: first
    type: http
    method: POST
    url: "{{ input.base }}/first"
  - id: second
    type: http
    method: POST
    url: "{{ input.base }}/second"
output: "{{ steps.second.output.body }}"
"#,
    )
    .expect("write the integration");
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "POST",
        "/first",
        Responder::Hold(gate.clone(), Reply::text(200, "one")),
    );
    fixture.route("POST", "/second", Responder::Fixed(Reply::text(200, "two")));
    let isoflow = isoflow(&dir);
    let input = json!({"base": fixture.url("")}).to_string();
    let mut run = isoflow.spawn([
        "run".as_ref(),
        file.as_os_str(),
        "--input".as_ref(),
        input.as_ref(),
    ]);
    assert!(
        gate.wait_for_waiting(1, LONG),
        "first never arrived:\n{}",
        run.stderr()
    );
    run.signal("TERM");
    run.wait_for_stderr_line(LONG, |l| l.starts_with("interrupted"));
    gate.release();
    let interrupted = run.wait(LONG);
    interrupted.expect_code(130);
    assert_eq!(
        fixture.count("POST", "/second"),
        0,
        "no step starts after the signal"
    );

    let resumed = isoflow.run(LONG, ["resume"]);
    resumed.expect_code(0);
    assert_eq!(resumed.json(), json!("two"));
    assert_eq!(
        fixture.count("POST", "/first"),
        1,
        "the drained step was checkpointed"
    );
    assert_eq!(fixture.count("POST", "/second"), 1);
}
