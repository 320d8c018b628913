//! The cluster, as real processes: a real etcd, one coordinator and three
//! workers of the real binary, all on loopback ports chosen here, killed
//! with SIGKILL where a test says so. Runs are started and read through the
//! Rust client, against the coordinator's public API; an [`HttpFixture`]
//! counts what reached the outside world, by `Idempotency-Key`
//! (`<run id>/<step key>`), so a repeated step is seen.
//!
//! One test does the same to an `all` node (one process, no etcd); two
//! more show, on an `all` node with two tenants, that tenants take turns
//! for its slots and that a tenant at its run limit leaves them to others.
//!
//! etcd runs with authentication on: the nodes log in as the fixture's
//! `isoflow` user (TLS everywhere is `tests/tls.rs`).
//!
//! What the cluster promises, and so what these tests hold it to: every run
//! completes with the output an uninterrupted run has; a step the
//! coordinator acknowledged is never run again, whatever dies; the step in
//! flight when its worker (or the coordinator) died runs again, with the
//! same key.

use std::collections::{BTreeMap, HashMap};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isoflow_client::Client;
use isoflow_proto::cluster::v1 as wire;
use isoflow_proto::v1;
use isoflow_testkit::etcd::Etcd;
use isoflow_testkit::oauth2::{self, Provider};
use isoflow_testkit::process::Process;
use isoflow_testkit::webhook::{exchange, post, sign};
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, free_port, seed_orders_expected};
use serde_json::{Value, json};

/// Bounds every wait (debug builds, a busy machine).
const LONG: Duration = Duration::from_secs(120);
const TOKEN: &str = "acme-token-0123456789abcdef";
const OTHER_TOKEN: &str = "globex-token-0123456789abcdef";
const CLUSTER_TOKEN: &str = "cluster-secret-0123456789";
const ERP_TOKEN: &str = "erp-t0ken";
/// The coordinator's vault key (32 bytes, base64).
const VAULT_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGhlLXRlc3QtdmF1bHQtMDE=";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn seed_yaml() -> String {
    std::fs::read_to_string(repo().join("examples/integrations/seed.yaml")).expect("the seed")
}

/// A step that waits on the fixture's `/hold` between two counted steps.
const HELD: &str = r#"
apiVersion: isoflow.dev/v1
name: held
version: 1
steps:
  - id: before
    type: http
    method: GET
    url: "{{ input.base }}/before"
  - id: double
    type: code
    input: "{{ steps.before.output.body }}"
    source: |
      export default function (body) { return { n: body.n * 2 }; }
  - id: hold
    type: http
    method: POST
    url: "{{ input.base }}/hold"
    body: "{{ steps.double.output }}"
    timeout: 120s
  - id: after
    type: http
    method: GET
    url: "{{ input.base }}/after"
"#;

/// etcd, a coordinator and workers, each with its config file in a temp
/// folder. Every process is killed when this is dropped.
struct Cluster {
    dir: tempfile::TempDir,
    etcd: Etcd,
    api_port: u16,
    /// The coordinator's HTTP listener (webhooks).
    http_port: u16,
    coordinator: Option<Process>,
    workers: BTreeMap<String, Process>,
    /// Stderr of processes that were killed, for failure messages.
    history: Vec<String>,
    /// The loopback server the workers' `erp-api` credential may be sent to.
    erp: HttpFixture,
    /// Where every node sends its traces.
    traces: isoflow_testkit::otlp::Receiver,
}

impl Cluster {
    fn start(workers: usize) -> Cluster {
        let etcd = Etcd::start().expect("etcd starts");
        let mut cluster = Cluster {
            dir: tempfile::tempdir().expect("a temp dir"),
            etcd,
            api_port: free_port(),
            http_port: free_port(),
            coordinator: None,
            workers: BTreeMap::new(),
            history: Vec::new(),
            erp: HttpFixture::start(),
            traces: isoflow_testkit::otlp::Receiver::start(),
        };
        cluster.start_coordinator();
        cluster.set_erp_credential();
        for i in 1..=workers {
            cluster.start_worker(&format!("worker-{i}"), None);
        }
        cluster
    }

    fn common(&self) -> String {
        format!(
            r#"
[auth]
cluster_token = "{CLUSTER_TOKEN}"
[etcd]
{}prefix = "/isoflow-test"
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
            self.traces.endpoint()
        )
    }

    fn config(&self, name: &str, text: &str) -> PathBuf {
        let path = self.dir.path().join(format!("{name}.toml"));
        std::fs::write(&path, text).expect("write a config");
        path
    }

    fn spawn(&self, config: &Path) -> Process {
        Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_isoflow"))
                .args(["serve", "--config"])
                .arg(config)
                .env("RUST_LOG", "info"),
        )
    }

    /// The vault key's file, readable by its owner only.
    fn vault_key(&self) -> PathBuf {
        let path = self.dir.path().join("vault.key");
        std::fs::write(&path, VAULT_KEY).expect("write the key");
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .expect("chmod the key");
        path
    }

    /// `acme`'s `erp-api` credential, for the ERP fixture, in the
    /// coordinator's vault: workers ask for it per request.
    fn set_erp_credential(&self) {
        runtime().block_on(async {
            client(self, TOKEN)
                .await
                .set_credential(v1::SetCredentialRequest {
                    name: "erp-api".into(),
                    kind: Some(v1::set_credential_request::Kind::Bearer(
                        v1::BearerCredential {
                            token: ERP_TOKEN.into(),
                        },
                    )),
                    origins: vec![self.erp.url("")],
                    allow_plain_http: true,
                })
                .await
                .expect("the credential is stored");
        });
    }

    fn start_coordinator(&mut self) {
        let mut process = self.spawn_coordinator("coordinator", self.api_port, self.http_port);
        process.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
        self.coordinator = Some(process);
    }

    /// A coordinator process named `id` serving on `api_port` (and webhooks
    /// on `http_port`), on the cluster's one data directory (a standby
    /// shares the leader's volume).
    fn spawn_coordinator(&self, id: &str, api_port: u16, http_port: u16) -> Process {
        let config = self.config(
            id,
            &format!(
                r#"
role = "coordinator"
node_id = "{id}"
data_dir = "{}"
[api]
listen = "127.0.0.1:{}"
[http]
listen = "127.0.0.1:{http_port}"
[vault.key]
id = "test-1"
file = "{}"
{}
[[auth.tokens]]
tenant = "acme"
token = "{TOKEN}"
[[auth.tokens]]
tenant = "globex"
token = "{OTHER_TOKEN}"
"#,
                self.dir.path().join("coordinator-data").display(),
                api_port,
                self.vault_key().display(),
                self.common()
            ),
        );
        self.spawn(&config)
    }

    /// A worker; `coordinator` overrides finding the leader in etcd.
    fn start_worker(&mut self, id: &str, coordinator: Option<&str>) {
        let fixed = coordinator
            .map(|c| format!("coordinator = \"{c}\"\n"))
            .unwrap_or_default();
        let config = self.config(
            id,
            &format!(
                r#"
role = "worker"
node_id = "{id}"
{}
[worker]
capacity = 8
{fixed}
"#,
                self.common(),
            ),
        );
        let mut process = self.spawn(&config);
        process.wait_for_stderr_line(LONG, |l| l.contains("connected"));
        self.workers.insert(id.to_owned(), process);
    }

    fn api(&self) -> String {
        format!("http://127.0.0.1:{}", self.api_port)
    }

    fn coordinator_log(&self) -> String {
        let mut log = self.history.join("\n");
        if let Some(c) = &self.coordinator {
            log.push_str(&c.stderr());
        }
        log
    }

    /// The worker the coordinator last gave `run_id` to, from its log.
    fn worker_of(&self, run_id: &str) -> Option<String> {
        self.coordinator_log()
            .lines()
            .rev()
            .filter(|l| l.contains("run assigned") && l.contains(run_id))
            .find_map(|l| field(l, "worker"))
    }

    fn kill_worker(&mut self, id: &str) {
        let process = self.workers.remove(id).expect("a running worker");
        let finished = process.kill();
        self.history.push(format!("[{id}]\n{}", finished.stderr));
    }

    fn kill_coordinator(&mut self) {
        let process = self.coordinator.take().expect("a running coordinator");
        let finished = process.kill();
        self.history
            .push(format!("[coordinator]\n{}", finished.stderr));
    }

    fn describe(&self) -> String {
        let mut out = self.coordinator_log();
        for (id, worker) in &self.workers {
            out.push_str(&format!("\n[{id}]\n{}", worker.stderr()));
        }
        out
    }
}

/// `key=value` from a log line.
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('"').to_owned())
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

async fn client(cluster: &Cluster, token: &str) -> Client {
    Client::connect(&cluster.api(), Some(token))
        .await
        .expect("the coordinator answers")
}

async fn deploy(client: &Client, yaml: &str, name: &str) {
    client
        .deploy(yaml, name, HashMap::new())
        .await
        .expect("deploys");
}

/// Waits for a run to end, bounded.
async fn wait(client: &Client, run_id: &str) -> v1::Run {
    tokio::time::timeout(LONG, client.wait(run_id))
        .await
        .unwrap_or_else(|_| panic!("run {run_id} did not end in time"))
        .expect("watching the run")
}

fn status(run: &v1::Run) -> v1::RunStatus {
    v1::RunStatus::try_from(run.status).expect("a known status")
}

/// Starts `n` runs of the held integration; their ids.
async fn start_held(client: &Client, input: &Value, n: usize) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for _ in 0..n {
        ids.push(
            client
                .start_run("held", None, input)
                .await
                .expect("starts")
                .run_id,
        );
    }
    ids
}

/// Requests to `path` by Idempotency-Key.
fn by_key(fixture: &HttpFixture, method: &str, path: &str) -> BTreeMap<String, usize> {
    let mut counts = BTreeMap::new();
    for request in fixture.requests(method, path) {
        let key = request
            .headers
            .get("idempotency-key")
            .cloned()
            .unwrap_or_default();
        *counts.entry(key).or_default() += 1;
    }
    counts
}

fn held_fixture() -> (HttpFixture, Gate) {
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "GET",
        "/before",
        Responder::Fixed(Reply::json(200, &json!({"n": 21}))),
    );
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

#[test]
fn two_hundred_seed_runs_spread_over_three_workers() {
    let cluster = Cluster::start(3);
    let fixture = &cluster.erp;
    fixture.serve_seed(ERP_TOKEN);
    let expected = seed_orders_expected(100);
    let input = json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    });
    runtime().block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, &seed_yaml(), "seed.yaml").await;
        let mut ids = Vec::new();
        for _ in 0..200 {
            let run = client
                .start_run("orders-to-erp", None, &input)
                .await
                .expect("starts");
            ids.push(run.run_id);
        }
        for id in &ids {
            let run = wait(&client, id).await;
            assert_eq!(
                status(&run),
                v1::RunStatus::Succeeded,
                "{}\n{}",
                run.error,
                cluster.describe()
            );
            assert_eq!(run.steps.len(), 6);
            // Each step records the node that ran it: the worker the
            // coordinator gave the run to.
            let worker = cluster.worker_of(id).expect("the run was assigned");
            for step in &run.steps {
                assert_eq!(step.node, worker, "step {} of run {id}", step.step_key);
            }
            let output = client.output(id).await.expect("an output");
            assert_eq!(output["orders"], expected.open);
            assert_eq!(output["status"], 201);
        }
    });
    let mut per_worker: BTreeMap<String, usize> = BTreeMap::new();
    for line in cluster
        .coordinator_log()
        .lines()
        .filter(|l| l.contains("run assigned"))
    {
        if let Some(worker) = field(line, "worker") {
            *per_worker.entry(worker).or_default() += 1;
        }
    }
    let log = cluster.coordinator_log();
    let trouble: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("taken back") || l.contains("worker left") || l.contains("ERROR"))
        .collect();
    assert!(trouble.is_empty(), "{}", trouble.join("\n"));
    assert_eq!(per_worker.values().sum::<usize>(), 200, "{per_worker:?}");
    assert_eq!(
        per_worker.len(),
        3,
        "every worker took runs: {per_worker:?}"
    );
    for (worker, runs) in &per_worker {
        assert!(
            *runs >= 20,
            "{worker} took only {runs} of 200: {per_worker:?}"
        );
    }
    // Each run posted once.
    let posts = by_key(fixture, "POST", "/erp/orders");
    assert_eq!(posts.len(), 200);
    assert!(posts.values().all(|n| *n == 1), "{posts:?}");
    eprintln!("runs per worker: {per_worker:?}");
}

#[test]
fn a_killed_workers_run_completes_on_another_without_repeating_steps() {
    let mut cluster = Cluster::start(3);
    let (fixture, gate) = held_fixture();
    let input = json!({ "base": fixture.url("") });
    runtime().block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, HELD, "held.yaml").await;
        let run = client
            .start_run("held", None, &input)
            .await
            .expect("starts");
        assert!(
            fixture.wait_for_count("POST", "/hold", 1, LONG),
            "the run never reached /hold"
        );
        let victim = cluster
            .worker_of(&run.run_id)
            .expect("the run was assigned");
        let killed = Instant::now();
        cluster.kill_worker(&victim);
        assert!(
            fixture.wait_for_count("POST", "/hold", 2, LONG),
            "the run did not resume\n{}",
            cluster.describe()
        );
        eprintln!(
            "from SIGKILL of {victim} to the step running again elsewhere: {:?}",
            killed.elapsed()
        );
        let resumed_on = cluster.worker_of(&run.run_id).expect("assigned again");
        assert_ne!(resumed_on, victim);
        gate.release();
        let ended = wait(&client, &run.run_id).await;
        assert_eq!(status(&ended), v1::RunStatus::Succeeded, "{}", ended.error);
    });
    assert_eq!(
        fixture.count("GET", "/before"),
        1,
        "an acknowledged step ran again"
    );
    assert_eq!(fixture.count("GET", "/after"), 1);
    let holds = by_key(&fixture, "POST", "/hold");
    assert_eq!(holds.len(), 1, "the repeat carries the same key: {holds:?}");
    assert_eq!(holds.values().next(), Some(&2));
}

#[test]
fn a_stopped_worker_finishes_its_step_and_hands_the_run_back() {
    let mut cluster = Cluster::start(2);
    let (fixture, gate) = held_fixture();
    let input = json!({ "base": fixture.url("") });
    runtime().block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, HELD, "held.yaml").await;
        let run = client
            .start_run("held", None, &input)
            .await
            .expect("starts");
        assert!(fixture.wait_for_count("POST", "/hold", 1, LONG));
        let holder = cluster.worker_of(&run.run_id).expect("assigned");
        let worker = cluster.workers.get_mut(&holder).expect("running");
        worker.signal("TERM");
        // Released once the worker is stopping, not before: the step in
        // flight may finish; no new one starts there.
        worker.wait_for_stderr_line(LONG, |l| l.contains("stopping"));
        gate.release();
        let ended = wait(&client, &run.run_id).await;
        assert_eq!(status(&ended), v1::RunStatus::Succeeded, "{}", ended.error);
        let finisher = cluster.worker_of(&run.run_id).expect("assigned");
        assert_ne!(finisher, holder, "the rest ran on the other worker");
        let stopped = cluster.workers.remove(&holder).expect("running");
        stopped.wait(LONG).expect_code(0);
    });
    assert_eq!(
        fixture.count("POST", "/hold"),
        1,
        "the finished step was checkpointed"
    );
    assert_eq!(fixture.count("GET", "/after"), 1);
}

#[test]
fn runs_survive_a_killed_and_restarted_coordinator() {
    let mut cluster = Cluster::start(3);
    let (fixture, gate) = held_fixture();
    let input = json!({ "base": fixture.url("") });
    let rt = runtime();
    let ids: Vec<String> = rt.block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, HELD, "held.yaml").await;
        start_held(&client, &input, 6).await
    });
    assert!(
        fixture.wait_for_count("POST", "/hold", 6, LONG),
        "runs never reached /hold"
    );
    cluster.kill_coordinator();
    cluster.start_coordinator();
    // Workers lost the coordinator and stopped their runs; the new one
    // reassigns them from the store.
    assert!(
        fixture.wait_for_count("POST", "/hold", 12, LONG),
        "runs did not resume\n{}",
        cluster.describe()
    );
    gate.release();
    rt.block_on(async {
        let client = client(&cluster, TOKEN).await;
        for id in &ids {
            let run = wait(&client, id).await;
            assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
            assert_eq!(run.steps.len(), 4);
        }
    });
    assert_eq!(
        fixture.count("GET", "/before"),
        6,
        "an acknowledged step ran again"
    );
    assert_eq!(fixture.count("GET", "/after"), 6);
    let holds = by_key(&fixture, "POST", "/hold");
    assert_eq!(holds.len(), 6, "{holds:?}");
    assert!(holds.values().all(|n| *n == 2), "{holds:?}");
}

#[test]
fn runs_go_on_while_etcd_is_away_and_nodes_register_again() {
    let mut cluster = Cluster::start(3);
    let (fixture, gate) = held_fixture();
    let input = json!({ "base": fixture.url("") });
    let rt = runtime();
    let first: Vec<String> = rt.block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, HELD, "held.yaml").await;
        start_held(&client, &input, 4).await
    });
    assert!(fixture.wait_for_count("POST", "/hold", 4, LONG));
    cluster.etcd.kill();
    let away = Instant::now();
    // In-flight runs finish while etcd is gone, and new ones start and run.
    gate.release();
    rt.block_on(async {
        let client = client(&cluster, TOKEN).await;
        for id in &first {
            let run = wait(&client, id).await;
            assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
        }
        let during = client
            .start_run("held", None, &input)
            .await
            .expect("starts");
        let run = wait(&client, &during.run_id).await;
        assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
    });
    // Away for a few seconds in all, longer than the nodes' lease TTL:
    // their keep-alives fail meanwhile and must be taken up again.
    while away.elapsed() < Duration::from_secs(4) {
        std::thread::sleep(Duration::from_millis(100));
    }
    cluster.etcd.restart().expect("etcd starts again");
    // Every node is registered again.
    let registered = poll(LONG, || {
        let workers = etcd_keys(&cluster.etcd, "/isoflow-test/workers/");
        let coordinators = etcd_keys(&cluster.etcd, "/isoflow-test/coordinators/");
        workers.len() == 3 && coordinators.len() == 1
    });
    assert!(
        registered,
        "nodes did not register again\n{}",
        cluster.describe()
    );
    rt.block_on(async {
        let client = client(&cluster, TOKEN).await;
        let after = client
            .start_run("held", None, &input)
            .await
            .expect("starts");
        let run = wait(&client, &after.run_id).await;
        assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
        let runs = client.runs(Some(100)).await.expect("lists");
        assert_eq!(runs.len(), 6, "no run lost");
        assert!(runs.iter().all(|r| status(r) == v1::RunStatus::Succeeded));
    });
    assert_eq!(fixture.count("GET", "/before"), 6);
    cluster.workers.clear();
}

#[test]
fn a_worker_cut_off_from_the_coordinator_stops_and_rejoins() {
    let mut cluster = Cluster::start(1);
    let proxy = Proxy::start(cluster.api_port);
    cluster.start_worker(
        "worker-cut",
        Some(&format!("http://127.0.0.1:{}", proxy.port)),
    );
    let (fixture, gate) = held_fixture();
    let input = json!({ "base": fixture.url("") });
    let rt = runtime();
    rt.block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, HELD, "held.yaml").await;
        // 16 runs fill both workers' 8 slots.
        let ids = start_held(&client, &input, 16).await;
        assert!(fixture.wait_for_count("POST", "/hold", 16, LONG));
        let on_cut: Vec<_> = ids
            .iter()
            .filter(|id| cluster.worker_of(id).as_deref() == Some("worker-cut"))
            .cloned()
            .collect();
        assert!(!on_cut.is_empty(), "the cut worker took no run");
        proxy.cut();
        // The coordinator takes the cut worker's runs back; they run on the
        // other worker once it has room.
        assert!(
            poll(LONG, || cluster.coordinator_log().lines().any(|l| l
                .contains("worker left")
                && l.contains("worker-cut"))),
            "the coordinator did not notice\n{}",
            cluster.describe()
        );
        gate.release();
        for id in &ids {
            let run = wait(&client, id).await;
            assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
        }
        for id in &on_cut {
            assert_eq!(cluster.worker_of(id).as_deref(), Some("worker-1"));
        }
        // While cut off, it takes nothing.
        let late = client
            .start_run("held", None, &input)
            .await
            .expect("starts");
        wait(&client, &late.run_id).await;
        assert_eq!(cluster.worker_of(&late.run_id).as_deref(), Some("worker-1"));

        proxy.restore();
        let joins = |log: &str| {
            log.lines()
                .filter(|l| l.contains("worker joined") && l.contains("worker-cut"))
                .count()
        };
        assert!(
            poll(LONG, || joins(&cluster.coordinator_log()) >= 2),
            "the worker did not rejoin\n{}",
            cluster.describe()
        );
        let mut rejoined_work = false;
        for _ in 0..16 {
            let run = client
                .start_run("held", None, &input)
                .await
                .expect("starts");
            rejoined_work |= cluster.worker_of(&run.run_id).as_deref() == Some("worker-cut");
            wait(&client, &run.run_id).await;
        }
        assert!(rejoined_work, "the rejoined worker took no work");
    });
    assert_eq!(fixture.count("GET", "/after"), 33);
}

#[test]
fn a_cancelled_run_stops_on_its_worker_and_a_queued_one_never_starts() {
    let mut cluster = Cluster::start(0);
    cluster.start_worker("worker-1", None);
    let (fixture, _gate) = held_fixture();
    let input = json!({ "base": fixture.url("") });
    runtime().block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, HELD, "held.yaml").await;
        // 8 slots: 8 runs hold, the ninth waits in the queue.
        let mut ids = start_held(&client, &input, 9).await;
        assert!(fixture.wait_for_count("POST", "/hold", 8, LONG));
        let queued = ids.pop().expect("nine");
        assert_eq!(cluster.worker_of(&queued), None, "the ninth run waits");
        client.cancel(&queued).await.expect("cancels");
        let run = wait(&client, &queued).await;
        assert_eq!(status(&run), v1::RunStatus::Cancelled);
        assert!(run.steps.is_empty(), "it never started");

        let running = &ids[0];
        client.cancel(running).await.expect("cancels");
        let run = wait(&client, running).await;
        assert_eq!(status(&run), v1::RunStatus::Cancelled, "{}", run.error);
        // Its slot is free again: a new run starts while the others hold.
        let next = client
            .start_run("held", None, &input)
            .await
            .expect("starts");
        assert!(
            fixture.wait_for_count("POST", "/hold", 9, LONG),
            "the slot was not freed"
        );
        assert_eq!(cluster.worker_of(&next.run_id).as_deref(), Some("worker-1"));
    });
    assert_eq!(fixture.count("GET", "/after"), 0);
}

#[test]
fn an_all_node_resumes_its_runs_after_a_kill() {
    // One process, no etcd: the embedded default behind the same API.
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("all.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"all\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[egress]\nallow = [\"127.0.0.1\"]\n",
            dir.path().join("data").display()
        ),
    )
    .expect("write the config");
    let start = || {
        let mut node = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_isoflow"))
                .args(["serve", "--config"])
                .arg(&config),
        );
        node.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
        node
    };
    let api = format!("http://127.0.0.1:{port}");
    let (fixture, gate) = held_fixture();
    let input = json!({ "base": fixture.url("") });
    let node = start();
    let rt = runtime();
    let ids = rt.block_on(async {
        let client = Client::connect(&api, None).await.expect("connects");
        deploy(&client, HELD, "held.yaml").await;
        start_held(&client, &input, 3).await
    });
    assert!(fixture.wait_for_count("POST", "/hold", 3, LONG));
    drop(node.kill());
    let _node = start();
    assert!(
        fixture.wait_for_count("POST", "/hold", 6, LONG),
        "the runs did not resume"
    );
    gate.release();
    rt.block_on(async {
        let client = Client::connect(&api, None).await.expect("connects");
        for id in &ids {
            let run = wait(&client, id).await;
            assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
        }
    });
    assert_eq!(
        fixture.count("GET", "/before"),
        3,
        "an acknowledged step ran again"
    );
    assert_eq!(fixture.count("GET", "/after"), 3);
}

/// Two http steps: the first waits on the fixture's gate, the second marks
/// the run's end. No code step, so no sandbox process start skews the order.
/// POSTs, so that each request carries its run's id in its Idempotency-Key.
const GATED: &str = r#"
apiVersion: isoflow.dev/v1
name: gated
version: 1
steps:
  - id: hold
    type: http
    method: POST
    url: "{{ input.base }}/hold"
    timeout: 60s
  - id: done
    type: http
    method: POST
    url: "{{ input.base }}/done"
"#;

/// An `all` node serving tenants acme (`TOKEN`) and globex (`OTHER_TOKEN`),
/// with `settings` (TOML tables) added to its configuration; and its API
/// address.
fn all_node(dir: &Path, settings: &str) -> (Process, String) {
    let port = free_port();
    let config = dir.join("all.toml");
    std::fs::write(
        &config,
        format!(
            r#"
role = "all"
data_dir = "{}"
[api]
listen = "127.0.0.1:{port}"
[egress]
allow = ["127.0.0.1"]
[[auth.tokens]]
tenant = "acme"
token = "{TOKEN}"
[[auth.tokens]]
tenant = "globex"
token = "{OTHER_TOKEN}"
{settings}
"#,
            dir.join("data").display()
        ),
    )
    .expect("write the config");
    let mut node = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_isoflow"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("RUST_LOG", "info"),
    );
    node.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
    (node, format!("http://127.0.0.1:{port}"))
}

/// A fixture for [`GATED`]: `/hold` waits for the gate, `/done` answers.
fn gated_fixture() -> (HttpFixture, Gate) {
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    let ok = Reply::json(200, &json!({"ok": true}));
    fixture.route("POST", "/hold", Responder::Hold(gate.clone(), ok.clone()));
    fixture.route("POST", "/done", Responder::Fixed(ok));
    (fixture, gate)
}

/// The run ids of the requests to `path`, in arrival order.
fn runs_in_order(fixture: &HttpFixture, path: &str) -> Vec<String> {
    fixture
        .requests("POST", path)
        .iter()
        .map(|r| {
            let key = r.header("idempotency-key").expect("an idempotency key");
            key.split('/').next().expect("run id/step").to_owned()
        })
        .collect()
}

#[test]
fn a_tenant_flooding_an_all_node_delays_another_tenants_run_by_one_turn() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (node, api) = all_node(dir.path(), "[worker]\ncapacity = 2\n");
    let (fixture, gate) = gated_fixture();
    let input = json!({ "base": fixture.url("") });
    runtime().block_on(async {
        let acme = Client::connect(&api, Some(TOKEN)).await.expect("connects");
        let globex = Client::connect(&api, Some(OTHER_TOKEN))
            .await
            .expect("connects");
        deploy(&acme, GATED, "gated.yaml").await;
        deploy(&globex, GATED, "gated.yaml").await;
        let mut flood = Vec::new();
        for _ in 0..12 {
            let run = acme.start_run("gated", None, &input).await.expect("starts");
            flood.push(run.run_id);
        }
        // Both slots are taken by acme's first two runs; ten wait.
        assert!(gate.wait_for_waiting(2, LONG), "{}", node.stderr());
        let single = globex
            .start_run("gated", None, &input)
            .await
            .expect("starts")
            .run_id;
        gate.release();
        for id in flood.iter().chain([&single]) {
            let client = if *id == single { &globex } else { &acme };
            let run = wait(client, id).await;
            assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
        }
        // In one queue globex's run would end last, after all twelve. Taking
        // turns, it gets the first slot that frees (the third run given
        // out): it ends before most of acme's, whatever their speed.
        let ended = runs_in_order(&fixture, "/done");
        assert_eq!(ended.len(), 13);
        let position = ended
            .iter()
            .position(|id| *id == single)
            .expect("globex's run ended");
        assert!(
            position < 6,
            "globex's run ended after {position} of acme's: {ended:?}\n{}",
            node.stderr()
        );
    });
}

#[test]
fn a_tenant_at_its_run_limit_leaves_the_free_slots_to_another() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (node, api) = all_node(
        dir.path(),
        "[worker]\ncapacity = 3\n[cluster]\ntenant_runs_in_flight = 2\n",
    );
    let (fixture, gate) = gated_fixture();
    let input = json!({ "base": fixture.url("") });
    runtime().block_on(async {
        let acme = Client::connect(&api, Some(TOKEN)).await.expect("connects");
        let globex = Client::connect(&api, Some(OTHER_TOKEN))
            .await
            .expect("connects");
        deploy(&acme, GATED, "gated.yaml").await;
        deploy(&globex, GATED, "gated.yaml").await;
        let mut capped = Vec::new();
        for _ in 0..4 {
            let run = acme.start_run("gated", None, &input).await.expect("starts");
            capped.push(run.run_id);
        }
        assert!(gate.wait_for_waiting(2, LONG), "{}", node.stderr());
        // The third slot is free, but acme is at its limit: globex's run
        // takes it. Without the limit acme's third run would have.
        let other = globex
            .start_run("gated", None, &input)
            .await
            .expect("starts")
            .run_id;
        assert!(gate.wait_for_waiting(3, LONG), "{}", node.stderr());
        let held = runs_in_order(&fixture, "/hold");
        assert_eq!(held.len(), 3, "{held:?}");
        assert!(
            held.contains(&other) && !held.contains(&capped[2]) && !held.contains(&capped[3]),
            "held: {held:?}, acme's: {capped:?}, globex's: {other}\n{}",
            node.stderr()
        );
        gate.release();
        for id in capped.iter().chain([&other]) {
            let client = if *id == other { &globex } else { &acme };
            let run = wait(client, id).await;
            assert_eq!(status(&run), v1::RunStatus::Succeeded, "{}", run.error);
        }
    });
}

#[test]
fn payloads_larger_than_a_message_cross_the_cluster_in_chunks() {
    let cluster = Cluster::start(1);
    let yaml = r#"
apiVersion: isoflow.dev/v1
name: big
version: 1
steps:
  - id: grow
    type: code
    input: "{{ input }}"
    source: |
      export default function (input) {
        return { text: input.text + input.text, length: input.text.length };
      }
"#;
    runtime().block_on(async {
        let client = client(&cluster, TOKEN).await;
        deploy(&client, yaml, "big.yaml").await;
        let text = "abcdefgh".repeat(1 << 20); // 8 MiB, twice the message limit
        let run = client
            .start_run("big", None, &json!({ "text": text }))
            .await
            .expect("starts");
        let ended = wait(&client, &run.run_id).await;
        assert_eq!(status(&ended), v1::RunStatus::Succeeded, "{}", ended.error);
        let output = client.output(&run.run_id).await.expect("the output");
        assert_eq!(output["length"], 8 << 20);
        assert_eq!(output["text"].as_str().map(str::len), Some(16 << 20));
    });
}

#[test]
fn bad_requests_get_their_code_and_one_sentence() {
    let cluster = Cluster::start(1);
    runtime().block_on(async {
        // No token, a wrong token.
        let anonymous = Client::connect(&cluster.api(), None)
            .await
            .expect("connects");
        let error = anonymous.runs(Some(10)).await.expect_err("needs a token");
        assert_eq!(code(&error), tonic::Code::Unauthenticated, "{error}");
        let wrong = Client::connect(&cluster.api(), Some("not-a-token-0123456789"))
            .await
            .expect("connects");
        assert_eq!(
            code(&wrong.runs(Some(10)).await.expect_err("bad token")),
            tonic::Code::Unauthenticated
        );

        let client = client(&cluster, TOKEN).await;
        // A definition with a mistake: the validator's sentence.
        let broken = HELD.replace("type: code", "type: cod");
        let error = client
            .deploy(&broken, "held.yaml", HashMap::new())
            .await
            .expect_err("invalid");
        assert_eq!(code(&error), tonic::Code::InvalidArgument);
        assert!(message(&error).starts_with("held.yaml:"), "{error}");
        assert!(
            message(&error).contains("double"),
            "names the step: {error}"
        );

        // A step time limit over the coordinator's (limits.step_timeout,
        // 1h by default): the file and line of the step's timeout.
        let long = HELD.replace("timeout: 120s", "timeout: 2h");
        let error = client
            .deploy(&long, "held.yaml", HashMap::new())
            .await
            .expect_err("over the limit");
        assert_eq!(code(&error), tonic::Code::InvalidArgument);
        assert!(
            message(&error).starts_with(
                "held.yaml:20: step \"hold\": timeout is 2h, over the longest this node allows, 1h"
            ),
            "{error}"
        );

        // A code file the definition names but the request does not carry.
        let with_file = HELD.replace(
            "source: |\n      export default function (body) { return { n: body.n * 2 }; }",
            "file: steps/double.js",
        );
        let error = client
            .deploy(&with_file, "held.yaml", HashMap::new())
            .await
            .expect_err("missing file");
        assert_eq!(code(&error), tonic::Code::InvalidArgument);
        assert!(message(&error).contains("steps/double.js"), "{error}");

        deploy(&client, HELD, "held.yaml").await;
        // The same version with another definition.
        let changed = HELD.replace("/after", "/later");
        let error = client
            .deploy(&changed, "held.yaml", HashMap::new())
            .await
            .expect_err("conflict");
        assert_eq!(code(&error), tonic::Code::AlreadyExists, "{error}");

        let error = client
            .start_run("nope", None, &Value::Null)
            .await
            .expect_err("unknown");
        assert_eq!(code(&error), tonic::Code::NotFound);
        assert!(message(&error).contains("\"nope\""), "{error}");
        let error = client
            .start_run("held", Some(7), &Value::Null)
            .await
            .expect_err("unknown version");
        assert_eq!(code(&error), tonic::Code::NotFound);

        let error = client
            .run("0190aaaa-0000-7000-8000-000000000000")
            .await
            .expect_err("none");
        assert_eq!(code(&error), tonic::Code::NotFound);
        let error = client.run("").await.expect_err("empty");
        assert_eq!(code(&error), tonic::Code::InvalidArgument);

        // A run that fails at once (nothing listens there), then cancelled.
        let run = client
            .start_run("held", None, &json!({ "base": "http://127.0.0.1:1" }))
            .await
            .expect("starts");
        let ended = wait(&client, &run.run_id).await;
        assert_eq!(status(&ended), v1::RunStatus::Failed);
        assert!(
            ended.error.starts_with("step \"before\""),
            "{}",
            ended.error
        );
        let error = client.cancel(&run.run_id).await.expect_err("ended");
        assert_eq!(code(&error), tonic::Code::FailedPrecondition, "{error}");
        let error = client.output(&run.run_id).await.expect_err("no output");
        assert_eq!(code(&error), tonic::Code::FailedPrecondition, "{error}");

        // Another tenant sees none of it.
        let other = crate::client(&cluster, OTHER_TOKEN).await;
        let error = other.run(&run.run_id).await.expect_err("not theirs");
        assert_eq!(code(&error), tonic::Code::NotFound);
        assert!(other.runs(Some(10)).await.expect("lists").is_empty());
        assert!(other.integrations().await.expect("lists").is_empty());
        let error = other
            .start_run("held", None, &Value::Null)
            .await
            .expect_err("not theirs");
        assert_eq!(code(&error), tonic::Code::NotFound);
    });
    // The workers' API wants the cluster token.
    runtime().block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(cluster.api())
            .expect("an address")
            .connect()
            .await
            .expect("connects");
        let mut raw = wire::cluster_client::ClusterClient::new(channel);
        let hello = wire::WorkerMessage {
            kind: Some(wire::worker_message::Kind::Hello(wire::Hello {
                worker_id: "intruder".into(),
                capacity: 1,
                version: String::new(),
            })),
        };
        let error = raw
            .work(tokio_stream::iter([hello]))
            .await
            .expect_err("no cluster token");
        assert_eq!(error.code(), tonic::Code::Unauthenticated);
    });
}

/// Every secret of every kind, in every form it travels in, is looked for
/// in everything the cluster stored (the coordinator's data folder, byte
/// for byte, write-ahead log included), everything its API returns, every
/// node's log and every config file, after runs whose endpoints echo the
/// request back (headers and body), set cookies, repeat the token in a
/// header, and answer an error page quoting it, and whose code step logs
/// what it got. A marker from the run's input is looked for the same way,
/// and must be found: the search can see what the cluster stores.
#[test]
fn a_credential_is_found_nowhere_but_at_the_server_it_is_sent_to() {
    const MARKER: &str = "input-marker-5e1f0c";
    const BASIC_PASSWORD: &str = "basic-pa55-9f1c";
    const HEADER_KEY: &str = "hdr-k3y-4e7d";
    const QUERY_KEY: &str = "q-k3y/+&=8a2b";
    let cluster = Cluster::start(2);
    let erp = &cluster.erp;
    erp.route("POST", "/echo", Responder::Echo);
    erp.route(
        "POST",
        "/cookie",
        Responder::Fixed(
            Reply::json(200, &json!({ "ok": true }))
                .with_header("Set-Cookie", "session=cookie-s3cret")
                .with_header("X-Seen", &format!("Bearer {ERP_TOKEN}")),
        ),
    );
    erp.route(
        "POST",
        "/denied",
        Responder::Fixed(Reply::text(
            401,
            &format!("key {HEADER_KEY} is not valid here"),
        )),
    );
    let basic_encoded = "c3ZjOmJhc2ljLXBhNTUtOWYxYw=="; // base64("svc:basic-pa55-9f1c")
    let query_encoded = "q-k3y%2F%2B%26%3D8a2b";
    let secrets = [
        ERP_TOKEN,
        BASIC_PASSWORD,
        basic_encoded,
        HEADER_KEY,
        QUERY_KEY,
        query_encoded,
    ];
    let echo = |id: &str, credential: &str| {
        format!(
            "  - id: {id}\n    type: http\n    method: POST\n    url: \"{{{{ input.base }}}}/echo\"\n    \
             credential: {credential}\n    body: {{ note: \"{{{{ input.marker }}}}\" }}\n"
        )
    };
    let leak = format!(
        "apiVersion: isoflow.dev/v1\nname: leak\nversion: 1\nsteps:\n{}{}{}{}\
         \x20 - id: cookie\n    type: http\n    method: POST\n    url: \"{{{{ input.base }}}}/cookie\"\n    credential: erp-api\n    body: \"x\"\n\
         \x20 - id: look\n    type: code\n    input:\n      bearer: \"{{{{ steps.bearer.output }}}}\"\n      basic: \"{{{{ steps.basic.output }}}}\"\n      \
         header: \"{{{{ steps.header.output }}}}\"\n      query: \"{{{{ steps.query.output }}}}\"\n      cookie: \"{{{{ steps.cookie.output }}}}\"\n    \
         source: \"export default (s, ctx) => {{ ctx.log(JSON.stringify(s)); return s; }}\"\n",
        echo("bearer", "erp-api"),
        echo("basic", "crm-basic"),
        echo("header", "api-header"),
        echo("query", "api-query"),
    );
    let denied = "apiVersion: isoflow.dev/v1\nname: denied\nversion: 1\nsteps:\n  - id: denied\n    type: http\n    \
                  method: POST\n    url: \"{{ input.base }}/denied\"\n    credential: api-header\n    body: \"x\"\n";
    let input = json!({ "base": erp.url(""), "marker": MARKER });
    let mut seen = String::new();
    runtime().block_on(async {
        let client = client(&cluster, TOKEN).await;
        let set = |name: &str, kind| v1::SetCredentialRequest {
            name: name.into(),
            kind: Some(kind),
            origins: vec![erp.url("")],
            allow_plain_http: true,
        };
        use v1::set_credential_request::Kind;
        for request in [
            set(
                "crm-basic",
                Kind::Basic(v1::BasicCredential {
                    username: "svc".into(),
                    password: BASIC_PASSWORD.into(),
                }),
            ),
            set(
                "api-header",
                Kind::Header(v1::HeaderCredential {
                    header: "X-Api-Key".into(),
                    value: HEADER_KEY.into(),
                }),
            ),
            set(
                "api-query",
                Kind::Query(v1::QueryCredential {
                    param: "api_key".into(),
                    value: QUERY_KEY.into(),
                }),
            ),
        ] {
            seen.push_str(&format!(
                "{:?}",
                client.set_credential(request).await.expect("set")
            ));
        }
        deploy(&client, &leak, "leak.yaml").await;
        deploy(&client, denied, "denied.yaml").await;
        let ok = client
            .start_run("leak", None, &input)
            .await
            .expect("starts");
        let ok = wait(&client, &ok.run_id).await;
        assert_eq!(
            status(&ok),
            v1::RunStatus::Succeeded,
            "{ok:?}\n{}",
            cluster.describe()
        );
        let failed = client
            .start_run("denied", None, &input)
            .await
            .expect("starts");
        let failed = wait(&client, &failed.run_id).await;
        assert_eq!(status(&failed), v1::RunStatus::Failed);
        assert!(failed.error.contains("401"), "{}", failed.error);
        for run in [&ok.run_id, &failed.run_id] {
            seen.push_str(&format!("{:?}", client.run(run).await.expect("get")));
            let mut updates = client.watch(run, true).await.expect("watch");
            while let Some(update) = tokio_stream::StreamExt::next(&mut updates).await {
                seen.push_str(&format!("{:?}", update.expect("an update")));
            }
        }
        let output = client.output(&ok.run_id).await.expect("the output");
        seen.push_str(&output.to_string());
        seen.push_str(&format!("{:?}", client.runs(None).await.expect("list")));
        seen.push_str(&format!("{:?}", client.credentials().await.expect("list")));
        // The echoes came back with the secrets replaced.
        assert_eq!(
            output["bearer"]["body"]["headers"]["authorization"],
            json!("Bearer [credential]")
        );
        assert_eq!(
            output["basic"]["body"]["headers"]["authorization"],
            json!("Basic [credential]")
        );
        assert_eq!(
            output["header"]["body"]["headers"]["x-api-key"],
            json!("[credential]")
        );
        assert!(
            output["cookie"]["headers"].get("set-cookie").is_none(),
            "{output}"
        );
        assert!(
            output["cookie"]["headers"].get("x-seen").is_none(),
            "{output}"
        );
    });
    // The secrets did reach the server they are for.
    let sent: Vec<String> = erp
        .requests("POST", "/echo")
        .iter()
        .map(|r| format!("{:?} {:?}", r.query, r.headers))
        .collect();
    let sent = sent.join("\n");
    for secret in [ERP_TOKEN, basic_encoded, HEADER_KEY, query_encoded] {
        assert!(sent.contains(secret), "{secret} was not sent: {sent}");
    }

    let mut files = Vec::new();
    let mut stack = vec![cluster.dir.path().to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("a readable folder") {
            let path = entry.expect("an entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if let Ok(bytes) = std::fs::read(&path) {
                files.push((path, bytes));
            }
        }
    }
    let in_files = |needle: &str| {
        files
            .iter()
            .filter(|(_, bytes)| bytes.windows(needle.len()).any(|w| w == needle.as_bytes()))
            .map(|(path, _)| path.display().to_string())
            .collect::<Vec<_>>()
    };
    assert!(
        !in_files(MARKER).is_empty(),
        "the search sees what the run stored"
    );
    assert!(
        seen.contains(MARKER),
        "the search sees what the API returns"
    );
    let logs = cluster.describe();
    assert!(
        logs.contains("credential set"),
        "the logs are there: {logs}"
    );
    for secret in secrets {
        assert_eq!(in_files(secret), Vec::<String>::new(), "{secret} is stored");
        assert!(
            !seen.contains(secret),
            "{secret} is returned by the API: {seen}"
        );
        assert!(!logs.contains(secret), "{secret} is in a log: {logs}");
    }
    assert!(!seen.contains("cookie-s3cret") && in_files("cookie-s3cret").is_empty());
    // Nor in a span: attributes carry names, sizes and outcomes, never a
    // header value, a query or a payload.
    let spans = cluster
        .traces
        .wait_for(LONG, |spans| {
            spans
                .iter()
                .filter(|s| s.attribute("http.request.method") == Some("POST"))
                .count()
                >= 4
        })
        .expect("the http steps' spans arrive");
    let attributes: Vec<String> = spans
        .iter()
        .flat_map(|s| s.attributes.iter().map(|(k, v)| format!("{k}={v}")))
        .collect();
    let attributes = attributes.join("\n");
    for secret in secrets.iter().copied().chain([MARKER, "cookie-s3cret"]) {
        assert!(
            !attributes.contains(secret),
            "{secret} is in a span: {attributes}"
        );
    }
}

fn code(error: &isoflow_client::Error) -> tonic::Code {
    match error {
        isoflow_client::Error::Status(status) => status.code(),
        other => panic!("not a status: {other}"),
    }
}

fn message(error: &isoflow_client::Error) -> String {
    match error {
        isoflow_client::Error::Status(status) => status.message().to_owned(),
        other => panic!("not a status: {other}"),
    }
}

fn poll(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    isoflow_testkit::poll_every(Duration::from_millis(50), timeout, done)
}

/// Keys under `prefix`, read through etcd's JSON gateway.
fn etcd_keys(etcd: &Etcd, prefix: &str) -> Vec<String> {
    use base64_lite as b64;
    let mut end = prefix.as_bytes().to_vec();
    if let Some(last) = end.last_mut() {
        *last += 1;
    }
    let body = format!(
        "{{\"key\":\"{}\",\"range_end\":\"{}\",\"keys_only\":true}}",
        b64::encode(prefix.as_bytes()),
        b64::encode(&end)
    );
    let Ok((200, text)) = etcd.request("POST", "/v3/kv/range", body.as_bytes()) else {
        return Vec::new();
    };
    let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    value["kvs"]
        .as_array()
        .map(|kvs| {
            kvs.iter()
                .filter_map(|kv| kv["key"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Base64 for the few bytes of an etcd key.
mod base64_lite {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

    pub fn encode(bytes: &[u8]) -> String {
        let mut out = String::new();
        for chunk in bytes.chunks(3) {
            let b = [
                chunk[0],
                *chunk.get(1).unwrap_or(&0),
                *chunk.get(2).unwrap_or(&0),
            ];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

/// A TCP proxy in front of the coordinator that can be cut (every
/// connection dropped, new ones refused) and restored.
struct Proxy {
    port: u16,
    open: Arc<AtomicBool>,
    connections: Arc<Mutex<Vec<TcpStream>>>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(target: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a port");
        listener.set_nonblocking(true).expect("non-blocking");
        let port = listener.local_addr().expect("bound").port();
        let open = Arc::new(AtomicBool::new(true));
        let connections: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let (open2, connections2, stop2) = (open.clone(), connections.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Acquire) {
                match listener.accept() {
                    Ok((client, _)) => {
                        if !open2.load(Ordering::Acquire) {
                            drop(client);
                            continue;
                        }
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                            continue;
                        };
                        let mut held = connections2.lock().unwrap_or_else(|e| e.into_inner());
                        for stream in [&client, &server] {
                            if let Ok(clone) = stream.try_clone() {
                                held.push(clone);
                            }
                        }
                        pipe(
                            client.try_clone().expect("clone"),
                            server.try_clone().expect("clone"),
                        );
                        pipe(server, client);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Proxy {
            port,
            open,
            connections,
            stop,
        }
    }

    fn cut(&self) {
        self.open.store(false, Ordering::Release);
        for stream in self
            .connections
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.open.store(true, Ordering::Release);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        self.cut();
    }
}

fn pipe(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if to.write_all(&buffer[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Both);
    });
}

#[test]
fn workers_share_one_oauth2_renewal_that_the_coordinator_makes() {
    let cluster = Cluster::start(2);
    let provider = Provider::start(3600);
    let mut oauth2 = v1::OAuth2Credential {
        token_url: provider.url("/token"),
        client_id: oauth2::CLIENT_ID.into(),
        client_secret: oauth2::CLIENT_SECRET.into(),
        ..Default::default()
    };
    oauth2.set_grant(v1::Oauth2Grant::ClientCredentials);
    let yaml = format!(
        "apiVersion: isoflow.dev/v1\nname: crm\nversion: 1\nsteps:\n  - id: orders\n    type: http\n    \
         method: GET\n    url: \"{}\"\n    credential: crm\n    retry: {{ max_attempts: 1 }}\n",
        provider.url("/api/orders")
    );
    runtime().block_on(async {
        let acme = client(&cluster, TOKEN).await;
        acme.set_credential(v1::SetCredentialRequest {
            name: "crm".into(),
            kind: Some(v1::set_credential_request::Kind::Oauth2(oauth2)),
            origins: vec![provider.url("/api/")],
            allow_plain_http: true,
        })
        .await
        .expect("stored");
        deploy(&acme, &yaml, "crm.yaml").await;
        let first = acme
            .start_run("crm", None, &json!(null))
            .await
            .expect("starts");
        assert_eq!(
            status(&wait(&acme, &first.run_id).await),
            v1::RunStatus::Succeeded
        );

        // Every run's request now gets a 401 for the old token, on both
        // workers at once, and the token endpoint is slow: each worker asks
        // the coordinator to renew, and one renewal serves them all.
        provider.revoke_access_tokens();
        provider.set_delay(Duration::from_millis(500));
        let mut ids = Vec::new();
        for _ in 0..6 {
            let run = acme
                .start_run("crm", None, &json!(null))
                .await
                .expect("starts");
            ids.push(run.run_id);
        }
        for id in &ids {
            let run = wait(&acme, id).await;
            assert_eq!(
                status(&run),
                v1::RunStatus::Succeeded,
                "{run:?}\n{}",
                cluster.describe()
            );
            let output = acme.output(id).await.expect("an output");
            assert_eq!(output["body"]["issued"], json!(2), "the renewed token");
        }
    });
    assert_eq!(
        provider.grants(),
        ["client_credentials", "client_credentials"],
        "one renewal for six refused requests"
    );
    assert_eq!(provider.api_requests().len(), 13);
}

#[test]
fn a_standby_takes_over_the_cron_ticks_of_a_killed_leader_without_repeating_one() {
    let mut cluster = Cluster::start(1);
    let ticker = "apiVersion: isoflow.dev/v1\nname: ticker\nversion: 1\ntriggers:\n  - id: every-second\n    \
                  type: cron\n    schedule: \"* * * * * *\"\n    overlap: allow\nsteps:\n  - id: wrap\n    \
                  type: code\n    source: \"export default (input) => input\"\n";
    runtime()
        .block_on(async { deploy(&client(&cluster, TOKEN).await, ticker, "ticker.yaml").await });
    // The standby waits in the election, its store closed.
    let standby_port = free_port();
    let mut standby = cluster.spawn_coordinator("standby", standby_port, free_port());
    standby.wait_for_stderr_line(LONG, |l| l.contains("waiting to lead"));
    let fired = |log: &str| log.matches("cron tick fired").count();
    let deadline = Instant::now() + LONG;
    while fired(&cluster.coordinator_log()) < 3 {
        assert!(Instant::now() < deadline, "{}", cluster.describe());
        std::thread::sleep(Duration::from_millis(100));
    }
    // Killed between ticks or in the middle of one: the tick's run and its
    // record are one write, so either both are stored or neither.
    std::thread::sleep(Duration::from_millis(400));
    cluster.kill_coordinator();
    let fired_by_leader = fired(&cluster.coordinator_log());
    standby.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
    let deadline = Instant::now() + LONG;
    while fired(&standby.stderr()) < 3 {
        assert!(Instant::now() < deadline, "{}", standby.stderr());
        std::thread::sleep(Duration::from_millis(100));
    }
    let ticks = runtime().block_on(async {
        let acme = Client::connect(&format!("http://127.0.0.1:{standby_port}"), Some(TOKEN))
            .await
            .expect("the standby serves");
        let mut ticks = Vec::new();
        for run in acme.runs(Some(1000)).await.expect("runs") {
            let input = acme.input(&run.run_id).await.expect("its input");
            ticks.push(input["tick"].as_str().expect("a tick").to_owned());
        }
        ticks
    });
    let mut unique = ticks.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ticks.len(), "a tick ran twice: {ticks:?}");
    assert!(
        ticks.len() >= fired_by_leader + 3,
        "the leader's runs and the standby's are all there: {ticks:?}"
    );
}

#[test]
fn a_signed_webhook_runs_on_a_worker_and_answers_with_the_output() {
    const HOOK_KEY: &str = "cluster-hook-key-5d2c";
    let cluster = Cluster::start(1);
    let hooked = "apiVersion: isoflow.dev/v1\nname: hooked\nversion: 1\ntriggers:\n  - id: orders\n    type: webhook\n    \
                  auth: hmac\n    secret: hook-key\n    mode: sync\n    timeout: 60s\nsteps:\n  - id: wrap\n    \
                  type: code\n    source: \"export default (input) => ({ got: input })\"\n";
    runtime().block_on(async {
        let acme = client(&cluster, TOKEN).await;
        deploy(&acme, hooked, "hooked.yaml").await;
        acme.set_credential(v1::SetCredentialRequest {
            name: "hook-key".into(),
            kind: Some(v1::set_credential_request::Kind::Bearer(
                v1::BearerCredential {
                    token: HOOK_KEY.into(),
                },
            )),
            origins: vec!["https://webhook.invalid".into()],
            allow_plain_http: false,
        })
        .await
        .expect("stored");
    });
    let body = br#"{"order": 11}"#;
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let signature = sign(HOOK_KEY, time, body);
    let (status, headers, answer) = post(
        cluster.http_port,
        "/hooks/acme/hooked/orders",
        &[
            ("Content-Type", "application/json"),
            ("X-Isoflow-Signature", &signature),
        ],
        body,
    );
    assert_eq!(status, 200, "{answer}\n{}", cluster.describe());
    assert_eq!(answer, json!({ "got": { "order": 11 } }));
    let run_id = headers["x-isoflow-run-id"].clone();
    assert_eq!(
        cluster.worker_of(&run_id).as_deref(),
        Some("worker-1"),
        "the run went to the worker"
    );
    // The leading coordinator's console shows the run, and that worker-1
    // ran its step.
    let (status, headers, _) = exchange(
        cluster.http_port,
        "POST",
        "/console/sign-in",
        &[("Content-Type", "application/x-www-form-urlencoded")],
        format!("token={TOKEN}").as_bytes(),
    );
    assert_eq!(status, 303, "{headers:?}");
    let cookie = headers["set-cookie"]
        .split(';')
        .next()
        .expect("a cookie")
        .to_owned();
    let (status, _, page) = exchange(
        cluster.http_port,
        "GET",
        &format!("/console/runs/{run_id}"),
        &[("Cookie", &cookie)],
        b"",
    );
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("id=\"run\" data-run-id="), "{page}");
    assert!(page.contains("data-status=\"succeeded\""), "{page}");
    assert!(page.contains("on <code>worker-1</code>"), "{page}");
    // Signed with another key: refused, nothing started.
    let forged = sign("not-the-key", time, body);
    let (status, _, _) = post(
        cluster.http_port,
        "/hooks/acme/hooked/orders",
        &[
            ("Content-Type", "application/json"),
            ("X-Isoflow-Signature", &forged),
        ],
        body,
    );
    assert_eq!(status, 401);
    let runs = runtime().block_on(async { client(&cluster, TOKEN).await.runs(Some(10)).await });
    assert_eq!(runs.expect("runs").len(), 1);
}

/// A coordinator or worker that cannot reach etcd yet waits for it, and a
/// SIGTERM ends the wait: it exits 0 instead of waiting to be killed (a
/// pod's grace period on Kubernetes).
#[test]
fn a_node_waiting_for_etcd_stops_at_sigterm() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // A port nothing listens on: etcd "is not up yet".
    let etcd_port = free_port();
    for role in ["coordinator", "worker"] {
        let config = dir.path().join(format!("{role}.toml"));
        std::fs::write(
            &config,
            format!(
                "role = \"{role}\"\nnode_id = \"{role}-1\"\ndata_dir = \"{}\"\n\
                 [api]\nlisten = \"127.0.0.1:{}\"\n\
                 [auth]\ncluster_token = \"{CLUSTER_TOKEN}\"\n\
                 [[auth.tokens]]\ntenant = \"acme\"\ntoken = \"{TOKEN}\"\n\
                 [etcd]\nendpoints = [\"http://127.0.0.1:{etcd_port}\"]\n",
                dir.path().join(role).display(),
                free_port(),
            ),
        )
        .expect("write the config");
        let mut node = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_isoflow"))
                .args(["serve", "--config"])
                .arg(&config),
        );
        node.wait_for_stderr_line(LONG, |l| l.contains("cannot reach etcd yet"));
        node.signal("TERM");
        let finished = node.wait(LONG);
        assert_eq!(finished.code(), Some(0), "{role}: {finished:?}");
    }
}
