//! Transport security, as real processes: etcd serving TLS only, requiring
//! client certificates and with authentication on; a coordinator whose
//! listener speaks TLS only; workers that connect with mutual TLS. The
//! certificates are made here, by a CA of this test (`testkit::tls`).
//!
//! What an operator relies on, and so what these tests hold the cluster
//! to: runs go on as without TLS; only a worker with a certificate from
//! the cluster's CA, naming its own id, gets runs; a client that does not
//! speak TLS, or does not trust the CA, gets nothing; a node whose etcd
//! credentials are wrong stops at start with etcd's sentence.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use isoflow_client::{Client, ConnectOptions};
use isoflow_proto::cluster::v1 as wire;
use isoflow_proto::v1;
use isoflow_testkit::etcd::Etcd;
use isoflow_testkit::process::Process;
use isoflow_testkit::tls::{Ca, Files};
use isoflow_testkit::{HttpFixture, free_port, seed_orders_expected};
use serde_json::json;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

/// Bounds every wait (debug builds, a busy machine).
const LONG: Duration = Duration::from_secs(120);
const TOKEN: &str = "acme-token-0123456789abcdef";
const CLUSTER_TOKEN: &str = "cluster-secret-0123456789";
const ERP_TOKEN: &str = "erp-t0ken";
/// The coordinator's vault key (32 bytes, base64), as ISOFLOW_VAULT_KEY.
const VAULT_KEY: &str = "dGxzLXRlc3QtdmF1bHQta2V5LTAxMjM0NTY3ODlhYmM=";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn poll(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    isoflow_testkit::poll_every(Duration::from_millis(50), timeout, done)
}

/// `key=value` from a log line.
fn field(line: &str, key: &str) -> Option<String> {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .map(|v| v.trim_matches('"').to_owned())
}

/// etcd with TLS and authentication, a coordinator with TLS, workers with
/// mutual TLS; everything killed when dropped.
struct TlsCluster {
    dir: tempfile::TempDir,
    ca: Ca,
    ca_file: PathBuf,
    etcd: Etcd,
    api_port: u16,
    coordinator: Process,
    workers: BTreeMap<String, Process>,
    /// The loopback server the workers' `erp-api` credential may be sent to.
    erp: HttpFixture,
}

impl TlsCluster {
    fn start(workers: usize) -> TlsCluster {
        let dir = tempfile::tempdir().expect("a temp dir");
        let ca = Ca::new("isoflow test CA");
        let ca_file = ca.write(dir.path(), "ca");
        let etcd = Etcd::start_tls(&ca).expect("etcd starts with TLS");
        let api_port = free_port();
        let server = ca
            .server(&["127.0.0.1", "localhost"])
            .write(dir.path(), "coordinator");
        let config = write(
            dir.path(),
            "coordinator",
            &format!(
                r#"
role = "coordinator"
node_id = "coordinator"
data_dir = "{}"
[api]
listen = "127.0.0.1:{api_port}"
[tls]
cert = "{}"
key = "{}"
client_ca = "{}"
[vault.key]
id = "tls-test"
env = "ISOFLOW_VAULT_KEY"
{}
[[auth.tokens]]
tenant = "acme"
token = "{TOKEN}"
"#,
                dir.path().join("coordinator-data").display(),
                server.cert.display(),
                server.key.display(),
                ca_file.display(),
                common(&etcd)
            ),
        );
        let mut coordinator = spawn(&config);
        coordinator.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
        let mut cluster = TlsCluster {
            dir,
            ca,
            ca_file,
            etcd,
            api_port,
            coordinator,
            workers: BTreeMap::new(),
            erp: HttpFixture::start(),
        };
        // The ERP token in the coordinator's vault, set over TLS.
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
            .block_on(async {
                cluster
                    .client()
                    .await
                    .set_credential(v1::SetCredentialRequest {
                        name: "erp-api".into(),
                        kind: Some(v1::set_credential_request::Kind::Bearer(
                            v1::BearerCredential {
                                token: ERP_TOKEN.into(),
                            },
                        )),
                        origins: vec![cluster.erp.url("")],
                        allow_plain_http: true,
                    })
                    .await
                    .expect("the credential is stored");
            });
        for i in 1..=workers {
            let id = format!("worker-{i}");
            let cert = cluster.ca.client(&id).write(cluster.dir.path(), &id);
            let mut worker = cluster.spawn_worker(&id, &cert);
            worker.wait_for_stderr_line(LONG, |l| l.contains("connected") && !l.contains("not"));
            cluster.workers.insert(id, worker);
        }
        cluster
    }

    /// A worker with id `id` presenting `cert`, trusting the cluster's CA;
    /// not waited for.
    fn spawn_worker(&self, id: &str, cert: &Files) -> Process {
        let config = write(
            self.dir.path(),
            id,
            &format!(
                r#"
role = "worker"
node_id = "{id}"
{}
[worker]
capacity = 8
[worker.tls]
ca = "{}"
cert = "{}"
key = "{}"
"#,
                common(&self.etcd),
                self.ca_file.display(),
                cert.cert.display(),
                cert.key.display(),
            ),
        );
        spawn(&config)
    }

    fn https(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    async fn client(&self) -> Client {
        let options = ConnectOptions::new()
            .token(TOKEN)
            .ca_file(&self.ca_file)
            .expect("the CA file");
        Client::connect_with(&self.https(), &options)
            .await
            .expect("the coordinator answers over TLS")
    }

    /// Runs each worker was given, from the coordinator's log.
    fn assigned(&self) -> BTreeMap<String, usize> {
        let mut per_worker = BTreeMap::new();
        for line in self
            .coordinator
            .stderr()
            .lines()
            .filter(|l| l.contains("run assigned"))
        {
            if let Some(worker) = field(line, "worker") {
                *per_worker.entry(worker).or_default() += 1;
            }
        }
        per_worker
    }

    fn joined(&self, worker: &str) -> bool {
        self.coordinator
            .stderr()
            .lines()
            .any(|l| l.contains("worker joined") && field(l, "worker").as_deref() == Some(worker))
    }

    fn describe(&self) -> String {
        let mut out = format!("[coordinator]\n{}", self.coordinator.stderr());
        for (id, worker) in &self.workers {
            out.push_str(&format!("\n[{id}]\n{}", worker.stderr()));
        }
        out
    }

    /// A raw channel to the workers' API: TLS trusting the cluster's CA,
    /// presenting `identity` if any.
    async fn raw_channel(&self, identity: Option<&Files>) -> tonic::transport::Channel {
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(
            std::fs::read(&self.ca_file).expect("the CA file"),
        ));
        if let Some(files) = identity {
            tls = tls.identity(Identity::from_pem(
                std::fs::read(&files.cert).expect("a certificate"),
                std::fs::read(&files.key).expect("a key"),
            ));
        }
        Endpoint::from_shared(self.https())
            .expect("an address")
            .tls_config(tls)
            .expect("a TLS configuration")
            .connect()
            .await
            .expect("the TLS handshake succeeds")
    }
}

/// What every node of a cluster shares: the cluster token, etcd (TLS, a
/// client certificate, the `isoflow` user), quick heartbeats.
fn common(etcd: &Etcd) -> String {
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
"#,
        etcd.node_config()
    )
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(&path, text).expect("write a config");
    path
}

fn spawn(config: &Path) -> Process {
    Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_isoflow"))
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "info")
            .env("ISOFLOW_VAULT_KEY", VAULT_KEY),
    )
}

/// A worker's Hello on a raw Work stream, with the cluster token unless
/// `token` is false; the coordinator's answer.
async fn hello(
    channel: tonic::transport::Channel,
    worker_id: &str,
    token: bool,
) -> Result<tonic::Streaming<wire::CoordinatorMessage>, tonic::Status> {
    let mut client = wire::cluster_client::ClusterClient::new(channel);
    let message = wire::WorkerMessage {
        kind: Some(wire::worker_message::Kind::Hello(wire::Hello {
            worker_id: worker_id.to_owned(),
            capacity: 1,
            version: String::new(),
        })),
    };
    let mut request = tonic::Request::new(tokio_stream::iter([message]));
    if token {
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {CLUSTER_TOKEN}")
                .parse()
                .expect("an ASCII header"),
        );
    }
    client.work(request).await.map(tonic::Response::into_inner)
}

#[test]
fn the_seed_runs_through_a_cluster_with_tls_everywhere() {
    let cluster = TlsCluster::start(2);
    assert!(
        cluster
            .coordinator
            .stderr()
            .contains(&format!("listening on {}", cluster.https())),
        "{}",
        cluster.describe()
    );
    let fixture = &cluster.erp;
    fixture.serve_seed(ERP_TOKEN);
    let expected = seed_orders_expected(100);
    let input = json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    });
    let seed =
        std::fs::read_to_string(repo().join("examples/integrations/seed.yaml")).expect("the seed");
    runtime().block_on(async {
        let client = cluster.client().await;
        client
            .deploy(&seed, "seed.yaml", HashMap::new())
            .await
            .expect("deploys");
        let mut ids = Vec::new();
        for _ in 0..20 {
            let run = client
                .start_run("orders-to-erp", None, &input)
                .await
                .expect("starts");
            ids.push(run.run_id);
        }
        for id in &ids {
            let run = tokio::time::timeout(LONG, client.wait(id))
                .await
                .unwrap_or_else(|_| panic!("run {id} did not end in time"))
                .expect("watching the run");
            assert_eq!(
                run.status(),
                v1::RunStatus::Succeeded,
                "{}\n{}",
                run.error,
                cluster.describe()
            );
            let output = client.output(id).await.expect("an output");
            assert_eq!(output["orders"], expected.open);
            assert_eq!(output["status"], 201);
        }
    });
    let per_worker = cluster.assigned();
    assert_eq!(per_worker.values().sum::<usize>(), 20, "{per_worker:?}");
    assert_eq!(
        per_worker.keys().map(String::as_str).collect::<Vec<_>>(),
        ["worker-1", "worker-2"],
        "both workers took runs over mutual TLS"
    );
    assert_eq!(fixture.count("POST", "/erp/orders"), 20);
}

#[test]
fn a_worker_with_a_certificate_from_another_ca_gets_no_runs() {
    let mut cluster = TlsCluster::start(1);
    // Its own id, the cluster token, and a CA that trusts the coordinator:
    // only the signature on its certificate is wrong.
    let rogue_ca = Ca::new("another CA");
    let cert = rogue_ca
        .client("worker-2")
        .write(cluster.dir.path(), "worker-2");
    let rogue = cluster.spawn_worker("worker-2", &cert);
    cluster.workers.insert("worker-2".to_owned(), rogue);
    let refused_twice = poll(LONG, || {
        cluster.workers["worker-2"]
            .stderr()
            .matches("not connected to a coordinator")
            .count()
            >= 2
    });
    assert!(refused_twice, "{}", cluster.describe());
    // The coordinator says why; the worker, under TLS 1.3, sees only a
    // closed connection, and says what to check.
    assert!(
        cluster
            .coordinator
            .stderr()
            .lines()
            .any(|l| l.contains("tls accept error")
                && l.contains("invalid peer certificate: UnknownIssuer")),
        "{}",
        cluster.describe()
    );
    assert!(
        cluster.workers["worker-2"]
            .stderr()
            .contains("check that this worker's certificate (worker.tls.cert) is signed by the coordinator's tls.client_ca"),
        "{}",
        cluster.describe()
    );

    let yaml = r#"
apiVersion: isoflow.dev/v1
name: double
version: 1
steps:
  - id: double
    type: code
    input: "{{ input }}"
    source: |
      export default function (n) { return n * 2; }
"#;
    runtime().block_on(async {
        let client = cluster.client().await;
        client
            .deploy(yaml, "double.yaml", HashMap::new())
            .await
            .expect("deploys");
        for n in 0..10 {
            let run = client
                .start_run("double", None, &json!(n))
                .await
                .expect("starts");
            let run = tokio::time::timeout(LONG, client.wait(&run.run_id))
                .await
                .expect("ends in time")
                .expect("watching");
            assert_eq!(run.status(), v1::RunStatus::Succeeded, "{}", run.error);
        }
    });
    assert!(!cluster.joined("worker-2"), "{}", cluster.describe());
    assert_eq!(
        cluster.assigned(),
        BTreeMap::from([("worker-1".to_owned(), 10)]),
        "{}",
        cluster.describe()
    );
}

#[test]
fn a_worker_whose_certificate_names_another_id_is_refused() {
    let mut cluster = TlsCluster::start(1);
    // Signed by the cluster's CA, but for worker-9.
    let cert = cluster
        .ca
        .client("worker-9")
        .write(cluster.dir.path(), "worker-9");
    let impostor = cluster.spawn_worker("worker-2", &cert);
    cluster.workers.insert("worker-2".to_owned(), impostor);
    let sentence = "worker id \"worker-2\" is not named by the worker's certificate \
                    (common name \"worker-9\"; DNS names none)";
    assert!(
        poll(LONG, || cluster.workers["worker-2"]
            .stderr()
            .contains(sentence)),
        "{}",
        cluster.describe()
    );
    assert!(
        cluster.workers["worker-2"]
            .stderr()
            .contains("refused this worker (PermissionDenied)"),
        "{}",
        cluster.describe()
    );
    assert!(
        cluster
            .coordinator
            .stderr()
            .lines()
            .any(|l| l.contains("worker refused") && l.contains(sentence)),
        "{}",
        cluster.describe()
    );
    assert!(!cluster.joined("worker-2"));

    runtime().block_on(async {
        // The same stream, raw: the code is PERMISSION_DENIED.
        let channel = cluster.raw_channel(Some(&cert)).await;
        let refused = hello(channel.clone(), "worker-2", true)
            .await
            .expect_err("another worker's id");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
        assert!(
            refused.message().starts_with(sentence),
            "{}",
            refused.message()
        );

        // The id the certificate names is welcome.
        let mut stream = hello(channel.clone(), "worker-9", true)
            .await
            .expect("its own id");
        let first = tokio::time::timeout(LONG, stream.message())
            .await
            .expect("an answer in time")
            .expect("a message")
            .expect("not the end");
        assert!(
            matches!(
                first.kind,
                Some(wire::coordinator_message::Kind::Welcome(_))
            ),
            "{first:?}"
        );

        // The certificate does not replace the cluster token.
        let refused = hello(channel, "worker-9", false)
            .await
            .expect_err("no cluster token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);

        // Nor the token the certificate: TLS without one is not a worker.
        let anonymous = cluster.raw_channel(None).await;
        let refused = hello(anonymous, "worker-1", true)
            .await
            .expect_err("no client certificate");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(
            refused.message().contains("client certificate"),
            "{}",
            refused.message()
        );
    });
}

#[test]
fn clients_without_tls_or_without_the_ca_are_refused() {
    let cluster = TlsCluster::start(0);
    let other_ca = Ca::new("another CA");
    let other_ca_file = other_ca.write(cluster.dir.path(), "other-ca");
    runtime().block_on(async {
        // Plain HTTP/2 to the TLS port.
        let plain = format!("http://127.0.0.1:{}", cluster.api_port);
        match Client::connect(&plain, Some(TOKEN)).await {
            Err(error) => assert!(
                matches!(error, isoflow_client::Error::Connect { .. }),
                "{error}"
            ),
            Ok(client) => {
                client.runs(None).await.expect_err("no TLS, no answer");
            }
        }
        assert!(
            poll(LONG, || cluster
                .coordinator
                .stderr()
                .contains("tls accept error")),
            "the coordinator logs the refused handshake\n{}",
            cluster.describe()
        );

        // TLS, but trusting another CA.
        let options = ConnectOptions::new()
            .token(TOKEN)
            .ca_file(&other_ca_file)
            .expect("the CA file");
        let error = Client::connect_with(&cluster.https(), &options)
            .await
            .expect_err("the server's certificate is not trusted");
        assert!(
            matches!(error, isoflow_client::Error::Connect { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("certificate"),
            "says why: {error}"
        );

        // A CA with an http:// address is refused before connecting.
        let options = ConnectOptions::new().ca_file(&cluster.ca_file).expect("CA");
        let error = Client::connect_with(&plain, &options)
            .await
            .expect_err("a CA needs https");
        assert!(
            matches!(error, isoflow_client::Error::CaWithoutTls { .. }),
            "{error}"
        );

        // With the cluster's CA, the API answers.
        let client = cluster.client().await;
        assert!(client.runs(None).await.expect("lists").is_empty());
    });
}

#[test]
fn a_node_that_etcd_refuses_stops_with_etcds_sentence() {
    let etcd = Etcd::start().expect("etcd starts");
    let dir = tempfile::tempdir().expect("a temp dir");
    let wrong = dir.path().join("wrong-password");
    std::fs::write(&wrong, "not-the-password\n").expect("write");
    let coordinator = |name: &str, etcd_lines: &str| {
        write(
            dir.path(),
            name,
            &format!(
                r#"
role = "coordinator"
node_id = "{name}"
data_dir = "{}"
[api]
listen = "127.0.0.1:{}"
[auth]
cluster_token = "{CLUSTER_TOKEN}"
[[auth.tokens]]
tenant = "acme"
token = "{TOKEN}"
[etcd]
endpoints = ["{}"]
prefix = "/isoflow-test"
{etcd_lines}
"#,
                dir.path().join(name).display(),
                free_port(),
                etcd.endpoint()
            ),
        )
    };
    let cases = [
        (
            coordinator(
                "wrong-password",
                &format!(
                    "user = \"isoflow\"\npassword_file = \"{}\"\n",
                    wrong.display()
                ),
            ),
            format!(
                "error: etcd at {} refused access to the keys under /isoflow-test/ as user \"isoflow\": \
                 etcdserver: authentication failed, invalid user ID or password",
                etcd.endpoint()
            ),
        ),
        (
            coordinator("no-user", ""),
            format!(
                "error: etcd at {} refused access to the keys under /isoflow-test/ without a user (etcd.user): \
                 etcdserver: user name is empty",
                etcd.endpoint()
            ),
        ),
    ];
    for (config, sentence) in cases {
        let finished = spawn(&config).wait(LONG);
        finished.expect_code(2);
        assert!(
            finished.stderr.lines().any(|l| l == sentence),
            "expected {sentence:?} in\n{}",
            finished.stderr
        );
    }
    // The right password gets in: the refusals above were about them.
    let right = coordinator(
        "right-password",
        &format!(
            "user = \"isoflow\"\npassword_file = \"{}\"\n",
            etcd.password_file().display()
        ),
    );
    let mut node = spawn(&right);
    node.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
}

/// The workspace's built example programs: `target/<profile>/examples`,
/// beside this test's `deps` folder (`cargo test` and nextest build them).
fn example_program(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("the test's path");
    let program = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .join("examples")
        .join(name);
    assert!(
        program.exists(),
        "{} is missing: build the examples (cargo build --workspace --tests --examples)",
        program.display()
    );
    program
}

/// The last two lines a follow program prints: `run <id> <STATUS>` and the
/// output JSON. Before them, one line per finished step (`  step <id>
/// <status> (...)`) and per log line (`  <step>: [<level>] <text>`).
fn followed_run(stdout: &str) -> (String, String, serde_json::Value) {
    let lines: Vec<&str> = stdout.lines().collect();
    let [.., ended, output] = lines.as_slice() else {
        panic!("fewer than two lines: {stdout}");
    };
    let mut words = ended.split_whitespace();
    assert_eq!(words.next(), Some("run"), "{stdout}");
    let id = words.next().expect("a run id").to_owned();
    let status = words.next().expect("a status").to_owned();
    let output = serde_json::from_str(output).unwrap_or_else(|e| panic!("{e}: {output}"));
    (id, status, output)
}

/// A user's programs, one in Rust (client/examples/follow.rs) and one in
/// Python (client/python/examples/follow.py), each deploy the seed, start
/// it and follow its steps and log lines as they come, against a cluster
/// with TLS everywhere, trusting the cluster's CA.
#[test]
fn rust_and_python_programs_deploy_run_and_follow_a_run_over_tls() {
    let cluster = TlsCluster::start(2);
    let fixture = &cluster.erp;
    fixture.serve_seed(ERP_TOKEN);
    let expected = seed_orders_expected(100);
    let input = json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    })
    .to_string();
    let seed = repo().join("examples/integrations/seed.yaml");
    let args = |command: &mut Command| {
        command
            .args(["--server", &cluster.https(), "--token", TOKEN, "--ca"])
            .arg(&cluster.ca_file)
            .arg("--definition")
            .arg(&seed)
            .args(["--input", &input]);
    };
    let mut rust = Command::new(example_program("follow"));
    args(&mut rust);
    // The venv deploy/scripts/setup.sh makes with the client's packages.
    let mut python = Command::new(repo().join(".deps/python/bin/python"));
    python
        .arg(repo().join("client/python/examples/follow.py"))
        .env("PYTHONPATH", repo().join("client/python/src"));
    args(&mut python);
    for (language, mut command) in [("rust", rust), ("python", python)] {
        let out = command.output().expect("the program starts");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "{language}: {}\n{stdout}\n{}",
            String::from_utf8_lossy(&out.stderr),
            cluster.describe()
        );
        let (run_id, status, output) = followed_run(&stdout);
        assert_eq!(status, "SUCCEEDED", "{language}: {stdout}");
        assert_eq!(output["orders"], expected.open, "{language}");
        // It followed the run as it went: every step of the seed, and the
        // log lines its code steps write, each naming its step.
        for step in ["fetch", "parse", "filter", "enrich", "aggregate", "post"] {
            assert!(
                stdout.lines().any(|l| l
                    .trim_start()
                    .starts_with(&format!("step {step} succeeded"))),
                "{language} did not see step {step}: {stdout}"
            );
        }
        assert!(
            stdout
                .lines()
                .any(|l| l.trim_start().starts_with("filter: [info] ") && l.contains("open orders")),
            "{language} saw no log line of step filter: {stdout}"
        );
        // The run it printed is the tenant's, and ended as printed.
        runtime().block_on(async {
            let run = cluster.client().await.run(&run_id).await.expect("the run");
            assert_eq!(run.status(), v1::RunStatus::Succeeded, "{language}");
        });
    }
    assert_eq!(fixture.count("POST", "/erp/orders"), 2);
}
