//! What operators see of a node, through the real binary: traces sent to a
//! real OTLP receiver (the testkit's), Prometheus metrics scraped from
//! `/metrics` and read with a Prometheus text parser, and health (`/healthz`,
//! `/readyz`, `grpc.health.v1`) of coordinators, a standby and a worker.
//!
//! The trace test kills the worker running a run in the middle of a held
//! step and holds the cluster to one trace: the run's span, the steps the
//! killed worker finished and the ones the next worker ran, all in one
//! trace under the run's span, and the http step's request carrying that
//! trace's `traceparent`. A webhook sent with a `traceparent` continues
//! the sender's trace.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use isoflow_client::Client;
use isoflow_proto::v1;
use isoflow_testkit::etcd::Etcd;
use isoflow_testkit::otlp::{Receiver, Span};
use isoflow_testkit::process::Process;
use isoflow_testkit::webhook::{exchange, post};
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, free_port, poll_every};
use serde_json::json;

const LONG: Duration = Duration::from_secs(120);
const TOKEN: &str = "acme-token-0123456789abcdef";
const CLUSTER_TOKEN: &str = "cluster-secret-0123456789";
const METRICS_TOKEN: &str = "metrics-token-0123456789";
const VAULT_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGhlLXRlc3QtdmF1bHQtMDE=";
const HOOK_TOKEN: &str = "hook-token-4f1a9c";
/// Sent in a step's request body: it must reach no span.
const PAYLOAD_MARKER: &str = "payload-marker-7d1e";

/// A quick code step, a held http step, an http step after it.
const TRACED: &str = r#"
apiVersion: isoflow.dev/v1
name: traced
version: 1
triggers:
  - id: hook
    type: webhook
    auth: token
    secret: hook-token
    mode: sync
    timeout: 60s
steps:
  - id: first
    type: code
    runtime: quickjs
    source: |
      export default function (input) { return { base: input.base, marker: input.marker }; }
  - id: hold
    type: http
    method: POST
    url: "{{ steps.first.output.base }}/hold"
    body: "{{ steps.first.output }}"
    timeout: 120s
  - id: after
    type: http
    method: GET
    url: "{{ steps.first.output.base }}/after?page=1"
"#;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn spawn(config: &Path) -> Process {
    Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_isoflow"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info"),
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a file");
    path
}

fn private(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = write(dir, name, text);
    std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .expect("chmod");
    path
}

/// etcd, coordinators and workers of one cluster, each exporting traces to
/// `receiver`, each with an HTTP listener.
struct Cluster {
    dir: tempfile::TempDir,
    etcd: Etcd,
    receiver: Receiver,
    nodes: BTreeMap<String, (Process, u16, u16)>,
    history: Vec<String>,
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            dir: tempfile::tempdir().expect("a temp dir"),
            etcd: Etcd::start().expect("etcd starts"),
            receiver: Receiver::start(),
            nodes: BTreeMap::new(),
            history: Vec::new(),
        }
    }

    fn common(&self) -> String {
        format!(
            r#"
[auth]
cluster_token = "{CLUSTER_TOKEN}"
[etcd]
{}prefix = "/isoflow-telemetry"
lease_ttl = "3s"
[cluster]
heartbeat_interval = "250ms"
heartbeat_timeout = "3s"
[egress]
allow = ["127.0.0.1"]
[telemetry]
otlp_endpoint = "{}"
export_interval = "100ms"
"#,
            self.etcd.node_config(),
            self.receiver.endpoint()
        )
    }

    /// A coordinator named `id`; waits for `ready_line` in its log.
    fn coordinator(&mut self, id: &str, ready_line: &str) {
        let (api, http) = (free_port(), free_port());
        let key = private(self.dir.path(), "vault.key", VAULT_KEY);
        let config = write(
            self.dir.path(),
            &format!("{id}.toml"),
            &format!(
                r#"
role = "coordinator"
node_id = "{id}"
data_dir = "{}"
[api]
listen = "127.0.0.1:{api}"
[http]
listen = "127.0.0.1:{http}"
[vault.key]
id = "test-1"
file = "{}"
{}
[[auth.tokens]]
tenant = "acme"
token = "{TOKEN}"
"#,
                self.dir.path().join("coordinator-data").display(),
                key.display(),
                self.common()
            ),
        );
        let mut process = spawn(&config);
        process.wait_for_stderr_line(LONG, |l| l.contains(ready_line));
        self.nodes.insert(id.to_owned(), (process, api, http));
    }

    fn worker(&mut self, id: &str) {
        let http = free_port();
        let config = write(
            self.dir.path(),
            &format!("{id}.toml"),
            &format!(
                r#"
role = "worker"
node_id = "{id}"
[http]
listen = "127.0.0.1:{http}"
{}
[worker]
capacity = 4
"#,
                self.common()
            ),
        );
        let mut process = spawn(&config);
        process.wait_for_stderr_line(LONG, |l| l.contains("connected"));
        self.nodes.insert(id.to_owned(), (process, 0, http));
    }

    fn api(&self, id: &str) -> String {
        format!("http://127.0.0.1:{}", self.nodes[id].1)
    }

    fn http(&self, id: &str) -> u16 {
        self.nodes[id].2
    }

    fn log(&self, id: &str) -> String {
        self.nodes[id].0.stderr()
    }

    fn kill(&mut self, id: &str) {
        let (process, _, _) = self.nodes.remove(id).expect("a running node");
        let finished = process.kill();
        self.history.push(format!("[{id}]\n{}", finished.stderr));
    }

    fn describe(&self) -> String {
        let mut out = self.history.join("\n");
        for (id, (process, _, _)) in &self.nodes {
            out.push_str(&format!("\n[{id}]\n{}", process.stderr()));
        }
        out
    }

    /// The worker the coordinator `by` last gave `run_id` to.
    fn worker_of(&self, by: &str, run_id: &str) -> Option<String> {
        self.log(by)
            .lines()
            .rev()
            .filter(|l| l.contains("run assigned") && l.contains(run_id))
            .find_map(|l| {
                l.split_whitespace()
                    .find_map(|w| w.strip_prefix("worker="))
                    .map(|v| v.trim_matches('"').to_owned())
            })
    }
}

async fn client(api: &str) -> Client {
    Client::connect(api, Some(TOKEN))
        .await
        .expect("the coordinator answers")
}

async fn wait(client: &Client, run_id: &str) -> v1::Run {
    tokio::time::timeout(LONG, client.wait(run_id))
        .await
        .unwrap_or_else(|_| panic!("run {run_id} did not end in time"))
        .expect("watching the run")
}

fn held_fixture() -> (HttpFixture, Gate) {
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "POST",
        "/hold",
        Responder::Hold(gate.clone(), Reply::json(200, &json!({"held": true}))),
    );
    fixture.route(
        "GET",
        "/after",
        Responder::Fixed(Reply::json(200, &json!({"done": true}))),
    );
    (fixture, gate)
}

fn steps<'a>(spans: &'a [Span], trace: &str, key: &str) -> Vec<&'a Span> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace && s.name == "step" && s.attribute("step.key") == Some(key))
        .collect()
}

fn run_span<'a>(spans: &'a [Span], run_id: &str) -> Option<&'a Span> {
    spans
        .iter()
        .find(|s| s.name == "run" && s.attribute("run_id") == Some(run_id))
}

/// No span attribute holds a payload, a token or a query string.
fn assert_nothing_secret(spans: &[Span]) {
    for span in spans {
        for (key, value) in &span.attributes {
            for secret in [PAYLOAD_MARKER, HOOK_TOKEN, TOKEN, CLUSTER_TOKEN, "page=1"] {
                assert!(
                    !value.contains(secret),
                    "span {} attribute {key} = {value:?} holds {secret:?}",
                    span.name
                );
            }
        }
    }
}

#[test]
fn a_run_resumed_after_its_worker_is_killed_is_one_trace_and_a_webhook_continues_its_callers() {
    let mut cluster = Cluster::new();
    cluster.coordinator("coordinator", "listening on http://");
    cluster.worker("worker-1");
    cluster.worker("worker-2");
    let (fixture, gate) = held_fixture();
    let input = json!({ "base": fixture.url(""), "marker": PAYLOAD_MARKER });
    let api = cluster.api("coordinator");
    let run = runtime().block_on(async {
        let client = client(&api).await;
        client
            .deploy(TRACED, "traced.yaml", HashMap::new())
            .await
            .expect("deploys");
        client
            .set_credential(v1::SetCredentialRequest {
                name: "hook-token".into(),
                kind: Some(v1::set_credential_request::Kind::Bearer(
                    v1::BearerCredential {
                        token: HOOK_TOKEN.into(),
                    },
                )),
                origins: vec!["https://webhook.invalid".into()],
                allow_plain_http: false,
            })
            .await
            .expect("the webhook's token is stored");
        client
            .start_run("traced", None, &input)
            .await
            .expect("starts")
    });
    assert!(
        fixture.wait_for_count("POST", "/hold", 1, LONG),
        "the run never reached /hold\n{}",
        cluster.describe()
    );
    let victim = cluster
        .worker_of("coordinator", &run.run_id)
        .expect("the run was assigned");
    // The killed worker's finished step, and the checkpoint that made it
    // durable (its span ends at the Ack, after the step's), are exported
    // before it dies (spans go every 100 ms): wait for both, or the kill
    // may come between the two exports. The step it was in never ends, so
    // it is never sent.
    let before = cluster.receiver.wait_for(LONG, |spans| {
        spans.iter().any(|s| {
            s.name == "step" && s.attribute("step.key") == Some("first") && s.node() == victim
        }) && spans
            .iter()
            .any(|s| s.name == "checkpoint" && s.node() == victim)
    });
    assert!(
        before.is_some(),
        "no span of the first step or of its checkpoint\n{}",
        cluster.describe()
    );
    cluster.kill(&victim);
    assert!(
        fixture.wait_for_count("POST", "/hold", 2, LONG),
        "the run did not resume\n{}",
        cluster.describe()
    );
    let survivor = cluster
        .worker_of("coordinator", &run.run_id)
        .expect("assigned again");
    assert_ne!(survivor, victim);
    gate.release();
    let ended = runtime().block_on(async { wait(&client(&api).await, &run.run_id).await });
    assert_eq!(
        v1::RunStatus::try_from(ended.status),
        Ok(v1::RunStatus::Succeeded),
        "{}",
        ended.error
    );

    let spans = cluster
        .receiver
        .wait_for(LONG, |spans| {
            run_span(spans, &run.run_id).is_some_and(|run| {
                steps(spans, &run.trace_id, "after").len() == 1
                    && spans
                        .iter()
                        .any(|s| s.name == "GET" && s.trace_id == run.trace_id)
            })
        })
        .unwrap_or_else(|| {
            panic!(
                "the run's spans did not all arrive: {:#?}\n{}",
                cluster.receiver.spans(),
                cluster.describe()
            )
        });
    let root = run_span(&spans, &run.run_id).expect("the run's span");
    let trace = root.trace_id.clone();
    assert_eq!(root.attribute("tenant"), Some("acme"));
    assert_eq!(root.attribute("integration"), Some("traced"));
    assert_eq!(root.attribute("version"), Some("1"));
    assert_eq!(root.attribute("trigger"), Some("api"));
    assert_eq!(root.node(), "coordinator");
    // The run was started by StartRun: its server span is the run's parent.
    let rpc = spans
        .iter()
        .find(|s| s.span_id == root.parent_span_id)
        .expect("the run's parent span was exported");
    assert_eq!(rpc.name, "isoflow.v1.Isoflow/StartRun");
    assert_eq!(rpc.trace_id, trace);
    assert_eq!(rpc.kind, 2, "a server span");

    let first = steps(&spans, &trace, "first");
    assert_eq!(first.len(), 1, "{first:#?}");
    assert_eq!(first[0].node(), victim);
    assert_eq!(first[0].attribute("step.kind"), Some("code"));
    assert_eq!(first[0].attribute("step.runtime"), Some("quickjs"));
    assert_eq!(first[0].attribute("step.outcome"), Some("succeeded"));
    let hold = steps(&spans, &trace, "hold");
    assert_eq!(hold.len(), 1, "only the resumed attempt ended: {hold:#?}");
    assert_eq!(hold[0].node(), survivor);
    let after = steps(&spans, &trace, "after");
    assert_eq!(after[0].node(), survivor);
    for step in first.iter().chain(&hold).chain(&after) {
        assert_eq!(step.parent_span_id, root.span_id, "{step:#?}");
    }
    for node in [&victim, &survivor] {
        assert!(
            spans.iter().any(|s| s.name == "checkpoint"
                && s.trace_id == trace
                && s.node() == node.as_str()
                && s.parent_span_id == root.span_id),
            "no checkpoint span of {node}"
        );
    }
    // The http step's client span, under its step, and the traceparent it
    // sent naming the step in the run's trace.
    let get = spans
        .iter()
        .find(|s| s.name == "GET" && s.trace_id == trace)
        .expect("the client span");
    assert_eq!(get.parent_span_id, after[0].span_id);
    assert_eq!(get.kind, 3, "a client span");
    assert_eq!(get.attribute("http.request.method"), Some("GET"));
    assert_eq!(get.attribute("http.response.status_code"), Some("200"));
    assert_eq!(get.attribute("server.address"), Some("127.0.0.1"));
    assert_eq!(
        get.attribute("url.full").map(|u| u.ends_with("/after")),
        Some(true),
        "{get:#?}"
    );
    let sent = fixture.requests("GET", "/after");
    assert_eq!(
        sent[0].header("traceparent"),
        Some(format!("00-{trace}-{}-01", after[0].span_id).as_str())
    );
    assert!(
        fixture.requests("POST", "/hold")[1]
            .header("traceparent")
            .is_some_and(|t| t.contains(&trace))
    );

    // A webhook sent inside a caller's trace continues it.
    let caller_trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let caller = format!("00-{caller_trace}-{caller_span}-01");
    fixture.route(
        "POST",
        "/hold",
        Responder::Fixed(Reply::json(200, &json!({"held": false}))),
    );
    let body = serde_json::to_vec(&input).expect("json");
    let (status, headers, answer) = post(
        cluster.http("coordinator"),
        &format!("/hooks/acme/traced/hook/{HOOK_TOKEN}"),
        &[
            ("Content-Type", "application/json"),
            ("traceparent", &caller),
        ],
        &body,
    );
    assert_eq!(status, 200, "{answer}\n{}", cluster.describe());
    let hooked = headers["x-isoflow-run-id"].clone();
    let spans = cluster
        .receiver
        .wait_for(LONG, |spans| {
            run_span(spans, &hooked).is_some() && steps(spans, caller_trace, "after").len() == 1
        })
        .unwrap_or_else(|| panic!("the webhook's run was not traced\n{}", cluster.describe()));
    let server = spans
        .iter()
        .find(|s| s.trace_id == caller_trace && s.parent_span_id == caller_span)
        .expect("the webhook's server span continues the caller's");
    assert_eq!(server.kind, 2);
    assert_eq!(
        server.attribute("http.route"),
        Some("/hooks/{tenant}/{integration}/{trigger}/{token}")
    );
    assert_eq!(server.attribute("http.response.status_code"), Some("200"));
    let hooked_run = run_span(&spans, &hooked).expect("its run span");
    assert_eq!(hooked_run.trace_id, caller_trace);
    assert_eq!(hooked_run.parent_span_id, server.span_id);
    assert_eq!(hooked_run.attribute("trigger"), Some("webhook:hook"));
    assert_nothing_secret(&spans);
}

fn get(port: u16, path: &str, headers: &[(&str, &str)]) -> (u16, String) {
    let (status, _, body) = exchange(port, "GET", path, headers, b"");
    (status, body)
}

/// Samples by (name, sorted labels).
type Samples = HashMap<(String, Vec<(String, String)>), f64>;

/// The samples of `/metrics`, parsed by a Prometheus text-format parser:
/// (name, sorted labels) → value; histograms' counts as `<name>_count`.
fn scrape(port: u16) -> Samples {
    let (status, text) = get(
        port,
        "/metrics",
        &[("Authorization", &format!("Bearer {METRICS_TOKEN}"))],
    );
    assert_eq!(status, 200, "{text}");
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let parsed = prometheus_parse::Scrape::parse(lines).expect("Prometheus text");
    let mut samples = HashMap::new();
    for sample in parsed.samples {
        let mut labels: Vec<(String, String)> = sample
            .labels
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        labels.sort();
        let (name, value) = match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => (sample.metric, v),
            prometheus_parse::Value::Histogram(buckets) => (
                format!("{}_count", sample.metric),
                buckets.last().map_or(0.0, |b| b.count),
            ),
            prometheus_parse::Value::Summary(_) => continue,
        };
        samples.insert((name, labels), value);
    }
    samples
}

fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    samples
        .get(&(name.to_owned(), labels))
        .copied()
        .unwrap_or(0.0)
}

const COUNTED: &str = r#"
apiVersion: isoflow.dev/v1
name: counted
version: 1
steps:
  - id: add
    type: code
    runtime: quickjs
    source: |
      export default function (input) {
        if (input.fail) { throw new Error("asked to fail"); }
        return { n: input.n + 1 };
      }
  - id: fetch
    type: http
    method: GET
    url: "{{ input.base }}/ok"
"#;

#[test]
fn metrics_count_runs_steps_and_checkpoints_and_need_their_token() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (api, http) = (free_port(), free_port());
    let token = private(dir.path(), "metrics.token", METRICS_TOKEN);
    let config = write(
        dir.path(),
        "all.toml",
        &format!(
            r#"
role = "all"
data_dir = "{}"
[api]
listen = "127.0.0.1:{api}"
[http]
listen = "127.0.0.1:{http}"
metrics_token_file = "{}"
[egress]
allow = ["127.0.0.1"]
[log]
format = "json"
"#,
            dir.path().join("data").display(),
            token.display()
        ),
    );
    let mut node = spawn(&config);
    node.wait_for_stderr_line(LONG, |l| l.contains("listening on http://"));
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/ok",
        Responder::Fixed(Reply::json(200, &json!({"ok": true}))),
    );

    // Without the token, or with another, /metrics says no; health does not
    // need it.
    assert_eq!(get(http, "/metrics", &[]).0, 401);
    assert_eq!(
        get(
            http,
            "/metrics",
            &[("Authorization", "Bearer not-the-token-at-all")]
        )
        .0,
        401
    );
    assert_eq!(get(http, "/healthz", &[]).0, 200);
    let (status, ready) = get(http, "/readyz", &[]);
    assert_eq!(status, 200, "{ready}");

    let api_url = format!("http://127.0.0.1:{api}");
    let run_ids = runtime().block_on(async {
        let client = Client::connect(&api_url, None).await.expect("connects");
        client
            .deploy(COUNTED, "counted.yaml", HashMap::new())
            .await
            .expect("deploys");
        // Once before counting: isolates, the first checkpoint.
        let warm = client
            .start_run("counted", None, &json!({"n": 0, "base": fixture.url("")}))
            .await
            .expect("starts");
        wait(&client, &warm.run_id).await;
        warm.run_id
    });
    let before = scrape(http);
    let labels = [("tenant", "local"), ("integration", "counted")];
    let run_ids = runtime().block_on(async {
        let client = Client::connect(&api_url, None).await.expect("connects");
        let mut ids = vec![run_ids];
        for n in 0..3 {
            let run = client
                .start_run("counted", None, &json!({"n": n, "base": fixture.url("")}))
                .await
                .expect("starts");
            assert_eq!(
                v1::RunStatus::try_from(wait(&client, &run.run_id).await.status),
                Ok(v1::RunStatus::Succeeded)
            );
            ids.push(run.run_id);
        }
        let failing = client
            .start_run(
                "counted",
                None,
                &json!({"fail": true, "base": fixture.url("")}),
            )
            .await
            .expect("starts");
        assert_eq!(
            v1::RunStatus::try_from(wait(&client, &failing.run_id).await.status),
            Ok(v1::RunStatus::Failed)
        );
        ids.push(failing.run_id);
        ids
    });
    let after = scrape(http);
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    assert_eq!(moved("isoflow_runs_started_total", &labels), 4.0);
    let finished = |status: &'static str| {
        [
            ("tenant", "local"),
            ("integration", "counted"),
            ("status", status),
        ]
    };
    assert_eq!(
        moved("isoflow_runs_finished_total", &finished("succeeded")),
        3.0
    );
    assert_eq!(
        moved("isoflow_runs_finished_total", &finished("failed")),
        1.0
    );
    assert_eq!(
        moved("isoflow_runs_finished_total", &finished("cancelled")),
        0.0
    );
    // Four code attempts (no retries), three http ones.
    let code = [("kind", "code"), ("runtime", "quickjs")];
    let http_steps = [("kind", "http"), ("runtime", "none")];
    assert_eq!(moved("isoflow_step_duration_seconds_count", &code), 4.0);
    assert_eq!(
        moved("isoflow_step_duration_seconds_count", &http_steps),
        3.0
    );
    assert_eq!(
        moved(
            "isoflow_isolate_create_seconds_count",
            &[("runtime", "quickjs")]
        ),
        4.0
    );
    assert_eq!(moved("isoflow_sandbox_queue_wait_seconds_count", &[]), 4.0);
    // Each succeeded run: a checkpoint per step (the last with its end);
    // the failed one: its end.
    assert_eq!(moved("isoflow_checkpoint_duration_seconds_count", &[]), 7.0);
    assert_eq!(moved("isoflow_checkpoint_bytes_count", &[]), 7.0);
    assert_eq!(value(&after, "isoflow_queue_depth", &[]), 0.0);
    assert_eq!(value(&after, "isoflow_workers_connected", &[]), 0.0);
    assert!(after.contains_key(&("isoflow_assignments_revoked_total".to_owned(), Vec::new())));

    // JSON logs: a line logged inside a run names it at the top level.
    let logged = node.stderr();
    let inside: Vec<serde_json::Value> = logged
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|l| l.get("run_id").is_some())
        .collect();
    assert!(
        run_ids
            .iter()
            .any(|id| inside.iter().any(|l| l["run_id"] == id.as_str())),
        "no log line carries a run id:\n{logged}"
    );
    let all_json = logged
        .lines()
        .filter(|l| l.starts_with('{'))
        .all(|l| serde_json::from_str::<serde_json::Value>(l).is_ok());
    assert!(all_json, "{logged}");
}

async fn grpc_health(api: &str) -> Result<i32, String> {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;
    let channel = tonic::transport::Endpoint::from_shared(api.to_owned())
        .expect("an endpoint")
        .connect()
        .await
        .map_err(|e| e.to_string())?;
    let mut client = HealthClient::new(channel);
    let answer = client
        .check(HealthCheckRequest {
            service: "isoflow.v1.Isoflow".to_owned(),
        })
        .await
        .map_err(|status| status.to_string())?;
    Ok(answer.into_inner().status)
}

fn ready(port: u16) -> (u16, serde_json::Value) {
    let (status, body) = get(port, "/readyz", &[]);
    (status, serde_json::from_str(&body).unwrap_or_default())
}

#[test]
fn readiness_follows_leadership_and_the_workers_connection() {
    const SERVING: i32 = 1;
    const NOT_SERVING: i32 = 2;
    let mut cluster = Cluster::new();
    cluster.coordinator("leader", "listening on http://");
    cluster.coordinator("standby", "waiting to lead");
    cluster.worker("worker-1");
    let rt = runtime();

    assert_eq!(
        rt.block_on(grpc_health(&cluster.api("leader"))),
        Ok(SERVING)
    );
    let (status, why) = ready(cluster.http("leader"));
    assert_eq!(status, 200, "{why}");
    // A standby is alive, not ready, and says so on both listeners.
    assert_eq!(get(cluster.http("standby"), "/healthz", &[]).0, 200);
    let (status, why) = ready(cluster.http("standby"));
    assert_eq!(status, 503, "{why}");
    assert!(
        why["reason"]
            .as_str()
            .is_some_and(|r| r.contains("standby")),
        "{why}"
    );
    assert_eq!(
        rt.block_on(grpc_health(&cluster.api("standby"))),
        Ok(NOT_SERVING)
    );
    // Its webhooks are the leader's.
    let (status, _, _) = post(cluster.http("standby"), "/hooks/acme/x/y/z", &[], b"{}");
    assert_eq!(status, 503);
    let worker = cluster.http("worker-1");
    assert_eq!(ready(worker).0, 200);
    // A worker serves health and metrics, not webhooks.
    let (status, _, _) = post(worker, "/hooks/acme/x/y/z", &[], b"{}");
    assert_eq!(status, 404);
    let (status, text) = get(worker, "/metrics", &[]);
    assert_eq!(status, 200);
    assert!(
        text.contains("isoflow_checkpoint_duration_seconds"),
        "{text}"
    );
    assert!(
        !text.contains("isoflow_queue_depth"),
        "a worker has no queue: {text}"
    );

    cluster.kill("leader");
    // The worker lost its coordinator: not ready until it has one again.
    assert!(
        poll_every(Duration::from_millis(20), LONG, || ready(worker).0 == 503),
        "{}",
        cluster.describe()
    );
    let started = Instant::now();
    assert!(
        poll_every(Duration::from_millis(100), LONG, || ready(
            cluster.http("standby")
        )
        .0 == 200),
        "the standby never led\n{}",
        cluster.describe()
    );
    assert!(
        poll_every(Duration::from_millis(100), LONG, || rt
            .block_on(grpc_health(&cluster.api("standby")))
            == Ok(SERVING)),
        "{}",
        cluster.describe()
    );
    assert!(
        poll_every(Duration::from_millis(100), LONG, || ready(worker).0 == 200),
        "the worker did not reach the new leader\n{}",
        cluster.describe()
    );
    eprintln!(
        "from the leader's kill to the standby ready: {:?}",
        started.elapsed()
    );
    let (_, why) = ready(worker);
    assert!(
        why["reason"]
            .as_str()
            .is_some_and(|r| r.contains("standby")),
        "{why}"
    );
}
