//! Cluster benchmark: the seed integration through real processes.
//!
//! `cargo bench -p isoflow-node --bench cluster` prints, for an `all` node
//! (one process, no etcd) and for a cluster (etcd + 1 coordinator + 2
//! workers), all on this machine and driven through the public API with the
//! Rust client:
//! - sequential runs (start, then wait for the end): p50, p99, runs/s;
//! - 16 and 64 runs in flight: runs/s, p50, p99;
//! - the cluster beside the all node: p50 added, share of the throughput
//!   (issue 13's targets: at most 2 ms added, at least 80%);
//! - failover: a run held inside an http step, its worker SIGKILLed, the
//!   time until the step runs again on the other worker (5 times).
//!
//! The HTTP endpoints run in this process (loopback). `--runs N` changes
//! the number of sequential runs (default 300; twice as many concurrently).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use isoflow_client::Client;
use isoflow_proto::v1;
use isoflow_testkit::etcd::Etcd;
use isoflow_testkit::process::Process;
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, free_port};
use serde_json::{Value, json};

const TOKEN: &str = "bench-api-token-0123456789";
const CLUSTER_TOKEN: &str = "bench-cluster-token-0123456789";
const ERP_TOKEN: &str = "erp-bench-token";
const LONG: Duration = Duration::from_secs(120);
/// The vault key, 32 bytes in base64, given as ISOFLOW_VAULT_KEY.
const VAULT_KEY: &str = "YmVuY2gtdmF1bHQta2V5LTAxMjM0NTY3ODlhYmNkZWY=";

const HELD: &str = r#"
apiVersion: isoflow.dev/v1
name: held
version: 1
steps:
  - id: hold
    type: http
    method: POST
    url: "{{ input.base }}/hold"
    body: { "x": 1 }
    timeout: 300s
"#;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|n| n.parse::<usize>().ok())
        .unwrap_or(300);
    let fixture = HttpFixture::start();
    fixture.serve_seed(ERP_TOKEN);
    let seed = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/integrations/seed.yaml"),
    )
    .expect("the seed integration");
    let input = json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");

    let all = {
        let dir = tempfile::tempdir().expect("a temp dir");
        let port = free_port();
        let config = write(
            dir.path(),
            "all",
            &format!(
                "role = \"all\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[egress]\nallow = [\"127.0.0.1\"]\n[vault.key]\nid = \"bench\"\nenv = \"ISOFLOW_VAULT_KEY\"\n",
                dir.path().join("data").display(),
            ),
        );
        let mut node = spawn(&config);
        node.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
        runtime.block_on(async {
            let client = Client::connect(&format!("http://127.0.0.1:{port}"), None)
                .await
                .expect("connects");
            set_erp_credential(&client, &fixture.url("")).await;
            measure("all (1 process)", &client, &seed, &input, runs).await
        })
    };

    let etcd = Etcd::start().expect("etcd starts");
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let erp = fixture.url("");
    let common = format!(
        "[auth]\ncluster_token = \"{CLUSTER_TOKEN}\"\n[etcd]\n{}lease_ttl = \"2s\"\n[cluster]\nheartbeat_interval = \"200ms\"\nheartbeat_timeout = \"1s\"\n[egress]\nallow = [\"127.0.0.1\"]\n",
        etcd.node_config()
    );
    let coordinator_config = write(
        dir.path(),
        "coordinator",
        &format!(
            "role = \"coordinator\"\nnode_id = \"coordinator\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n[vault.key]\nid = \"bench\"\nenv = \"ISOFLOW_VAULT_KEY\"\n{common}[[auth.tokens]]\ntenant = \"local\"\ntoken = \"{TOKEN}\"\n",
            dir.path().join("data").display()
        ),
    );
    let mut coordinator = spawn(&coordinator_config);
    coordinator.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
    let mut workers = std::collections::BTreeMap::new();
    let spawn_worker = |i: usize| {
        let config = write(
            dir.path(),
            &format!("worker-{i}"),
            &format!(
                "role = \"worker\"\nnode_id = \"worker-{i}\"\n{common}[worker]\ncapacity = 16\n"
            ),
        );
        let mut worker = spawn(&config);
        worker.wait_for_stderr_line(LONG, |l| l.contains("connected"));
        worker
    };
    workers.insert("worker-1".to_owned(), spawn_worker(1));
    workers.insert("worker-2".to_owned(), spawn_worker(2));
    let api = format!("http://127.0.0.1:{port}");
    let cluster = runtime.block_on(async {
        let client = Client::connect(&api, Some(TOKEN)).await.expect("connects");
        set_erp_credential(&client, &erp).await;
        measure(
            "cluster (1 coordinator + 2 workers)",
            &client,
            &seed,
            &input,
            runs,
        )
        .await
    });
    compare(&all, &cluster);

    // Failover: a held run, its worker killed, until the step runs again.
    let gate = Gate::new();
    fixture.route(
        "POST",
        "/hold",
        Responder::Hold(gate.clone(), Reply::json(200, &json!({}))),
    );
    let mut next_worker = 3;
    let mut times = Vec::new();
    runtime.block_on(async {
        let client = Client::connect(&api, Some(TOKEN)).await.expect("connects");
        client
            .deploy(HELD, "held.yaml", Default::default())
            .await
            .expect("deploys");
        for _ in 0..5 {
            let before = fixture.count("POST", "/hold");
            let run = client
                .start_run("held", None, &json!({ "base": fixture.url("") }))
                .await
                .expect("starts");
            assert!(fixture.wait_for_count("POST", "/hold", before + 1, LONG));
            let holder = worker_of(&coordinator, &run.run_id);
            let victim = workers.remove(&holder).expect("a live worker");
            let killed = Instant::now();
            drop(victim.kill());
            assert!(
                fixture.wait_for_count("POST", "/hold", before + 2, LONG),
                "the run did not resume"
            );
            times.push(killed.elapsed());
            // Keep two workers: start a fresh one for the next round.
            workers.insert(format!("worker-{next_worker}"), spawn_worker(next_worker));
            next_worker += 1;
        }
    });
    // A hung worker (SIGSTOP): its connection stays open, so only the
    // heartbeat time-out (or the lease) tells the coordinator.
    let mut hung = Vec::new();
    runtime.block_on(async {
        let client = Client::connect(&api, Some(TOKEN)).await.expect("connects");
        for _ in 0..3 {
            let before = fixture.count("POST", "/hold");
            let run = client
                .start_run("held", None, &json!({ "base": fixture.url("") }))
                .await
                .expect("starts");
            assert!(fixture.wait_for_count("POST", "/hold", before + 1, LONG));
            let holder = worker_of(&coordinator, &run.run_id);
            let victim = workers.remove(&holder).expect("a live worker");
            let stopped = Instant::now();
            victim.signal("STOP");
            assert!(
                fixture.wait_for_count("POST", "/hold", before + 2, LONG),
                "the run did not resume"
            );
            hung.push(stopped.elapsed());
            drop(victim.kill());
            workers.insert(format!("worker-{next_worker}"), spawn_worker(next_worker));
            next_worker += 1;
        }
    });
    gate.release();
    times.sort();
    hung.sort();
    println!(
        "failover after SIGKILL of a worker (5 times): median {}  max {}  \
         (from the kill to the held step starting again on another worker; the closed connection tells the coordinator)",
        ms(times[times.len() / 2]),
        ms(times[times.len() - 1]),
    );
    println!(
        "failover after SIGSTOP of a worker (3 times, heartbeat 200 ms, time-out 1 s, lease TTL 2 s): median {}  max {}",
        ms(hung[hung.len() / 2]),
        ms(hung[hung.len() - 1]),
    );
    drop(workers);
    drop(coordinator);
}

/// The worker the coordinator gave `run_id` to, from its log.
fn worker_of(coordinator: &Process, run_id: &str) -> String {
    coordinator
        .stderr()
        .lines()
        .rev()
        .filter(|l| l.contains("run assigned") && l.contains(run_id))
        .find_map(|l| {
            l.split_whitespace()
                .find_map(|w| w.strip_prefix("worker="))
                .map(|w| w.trim_matches('"').to_owned())
        })
        .expect("the run was assigned")
}

fn write(dir: &Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write a config");
    path
}

fn spawn(config: &Path) -> Process {
    Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_isoflow"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn,isoflow=info")
            .env("ISOFLOW_VAULT_KEY", VAULT_KEY),
    )
}

/// The seed's `erp-api` credential, in the node's vault.
async fn set_erp_credential(client: &Client, erp: &str) {
    client
        .set_credential(v1::SetCredentialRequest {
            name: "erp-api".into(),
            kind: Some(v1::set_credential_request::Kind::Bearer(
                v1::BearerCredential {
                    token: ERP_TOKEN.into(),
                },
            )),
            origins: vec![erp.to_owned()],
            allow_plain_http: true,
        })
        .await
        .expect("the credential is stored");
}

async fn one_run(client: &Client, input: &Value) -> Duration {
    let start = Instant::now();
    let run = client
        .start_run("orders-to-erp", None, input)
        .await
        .expect("starts");
    let ended = client.wait(&run.run_id).await.expect("ends");
    assert_eq!(
        ended.status,
        v1::RunStatus::Succeeded as i32,
        "{}",
        ended.error
    );
    start.elapsed()
}

async fn measure(label: &str, client: &Client, seed: &str, input: &Value, runs: usize) -> Figures {
    client
        .deploy(seed, "seed.yaml", Default::default())
        .await
        .expect("deploys");
    for _ in 0..20 {
        one_run(client, input).await;
    }
    let mut times = Vec::with_capacity(runs);
    let start = Instant::now();
    for _ in 0..runs {
        times.push(one_run(client, input).await);
    }
    let wall = start.elapsed();

    let mut figures = Figures {
        p50: report(&format!("{label}, sequential"), runs, &mut times, wall).0,
        runs_per_s: Vec::new(),
    };

    for in_flight in IN_FLIGHT {
        let total = runs * 2;
        let start = Instant::now();
        let mut set = tokio::task::JoinSet::new();
        let mut started = 0;
        let mut times = Vec::with_capacity(total);
        while started < in_flight.min(total) {
            let (client, input) = (client.clone(), input.clone());
            set.spawn(async move { one_run(&client, &input).await });
            started += 1;
        }
        while let Some(done) = set.join_next().await {
            times.push(done.expect("a run task"));
            if started < total {
                let (client, input) = (client.clone(), input.clone());
                set.spawn(async move { one_run(&client, &input).await });
                started += 1;
            }
        }
        let wall = start.elapsed();
        let label = format!("{label}, {in_flight} in flight");
        figures
            .runs_per_s
            .push(report(&label, total, &mut times, wall).1);
    }
    figures
}

/// Runs at once in the throughput measurements.
const IN_FLIGHT: [usize; 2] = [16, 64];

/// What [`measure`] found: sequential p50, and runs/s at each of
/// [`IN_FLIGHT`].
struct Figures {
    p50: Duration,
    runs_per_s: Vec<f64>,
}

/// Prints a batch's figures and returns its p50 and runs/s.
fn report(label: &str, runs: usize, times: &mut [Duration], wall: Duration) -> (Duration, f64) {
    times.sort();
    let p = |q: f64| times[((times.len() as f64 * q) as usize).min(times.len() - 1)];
    let per_second = runs as f64 / wall.as_secs_f64();
    println!(
        "seed 6 steps, {label}, {runs} runs: p50 {}  p99 {}  {per_second:.0} runs/s",
        ms(p(0.50)),
        ms(p(0.99)),
    );
    (p(0.50), per_second)
}

/// The cluster beside the all node, against issue 13's targets.
fn compare(all: &Figures, cluster: &Figures) {
    let added = cluster.p50.as_secs_f64() * 1000.0 - all.p50.as_secs_f64() * 1000.0;
    println!("cluster against the all node: sequential p50 {added:+.1} ms (target <= +2 ms)");
    for ((in_flight, a), c) in IN_FLIGHT
        .iter()
        .zip(&all.runs_per_s)
        .zip(&cluster.runs_per_s)
    {
        println!(
            "cluster against the all node: {in_flight} in flight {:.0}% of the runs/s (target >= 80%)",
            c / a * 100.0
        );
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}
