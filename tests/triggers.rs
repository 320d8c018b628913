//! Triggers through the real binary: an `all` node with two tenants, a
//! vault and the HTTP listener. Webhooks are called over loopback with
//! plain HTTP/1.1 as a sender would; each test checks what the caller gets
//! (status, JSON) and what the node did (the run, its input, how many
//! runs). A cron trigger is watched across a SIGKILL and a restart.
//! Alerts go to a loopback HTTP receiver and a loopback SMTP sink; a failed
//! run is run again from its failed step against a counting HTTP server.

use std::collections::HashMap;
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isoflow_client::Client;
use isoflow_proto::v1;
use isoflow_testkit::oauth2::{self, Provider};
use isoflow_testkit::process::Process;
use isoflow_testkit::webhook::{exchange, post, sign};
use isoflow_testkit::{HttpFixture, Reply, Responder, SmtpSink, free_port};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);
const ACME: &str = "acme-token-0123456789abcdef";
const GLOBEX: &str = "globex-token-0123456789abcdef";
const VAULT_KEY: &str = "d2ViaG9vay10ZXN0LXZhdWx0LWtleS0wMTIzNDU2Nzg=";
const HOOK_TOKEN: &str = "path-token-6f1d0c2a9b8e7d";
const HMAC_KEY: &str = "hmac-key-3a9c1e7f";

const ECHO: &str = r#"
apiVersion: isoflow.dev/v1
name: echo
version: 1
triggers:
  - id: by-token
    type: webhook
    auth: token
    secret: hook-token
  - id: signed
    type: webhook
    auth: hmac
    secret: hook-hmac
    mode: sync
    timeout: 30s
steps:
  - id: wrap
    type: code
    source: "export default (input) => ({ got: input })"
"#;

struct Node {
    dir: tempfile::TempDir,
    process: Process,
    api: String,
    http: u16,
}

fn spawn(config: &std::path::Path) -> Process {
    let mut process = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_isoflow"))
            .args(["serve", "--config"])
            .arg(config)
            .env("ISOFLOW_VAULT_KEY", VAULT_KEY)
            .env("RUST_LOG", "info"),
    );
    process.wait_for_stderr_line(LONG, |l| l.contains("listening on 127.0.0.1"));
    process
}

fn start() -> Node {
    start_with("")
}

/// A node whose configuration ends with `extra` (TOML tables).
fn start_with(extra: &str) -> Node {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (api, http) = (free_port(), free_port());
    let config = dir.path().join("all.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"all\"\ndata_dir = \"{}\"\nmax_payload_bytes = 65536\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\npublic_url = \"http://127.0.0.1:{http}\"\n[egress]\nallow = [\"127.0.0.1\"]\n[vault.key]\nid = \"k1\"\nenv = \"ISOFLOW_VAULT_KEY\"\n\
             [[auth.tokens]]\ntenant = \"acme\"\ntoken = \"{ACME}\"\n[[auth.tokens]]\ntenant = \"globex\"\ntoken = \"{GLOBEX}\"\n{extra}",
            dir.path().join("data").display()
        ),
    )
    .expect("write the config");
    let process = spawn(&config);
    let node = Node {
        dir,
        process,
        api: format!("http://127.0.0.1:{api}"),
        http,
    };
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(ECHO, "echo.yaml", HashMap::new())
            .await
            .expect("deploys");
        for (name, secret) in [("hook-token", HOOK_TOKEN), ("hook-hmac", HMAC_KEY)] {
            acme.set_credential(v1::SetCredentialRequest {
                name: name.into(),
                kind: Some(v1::set_credential_request::Kind::Bearer(
                    v1::BearerCredential {
                        token: secret.into(),
                    },
                )),
                origins: vec!["https://webhook.invalid".into()],
                allow_plain_http: false,
            })
            .await
            .expect("the secret is stored");
        }
    });
    node
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

fn runs(node: &Node, token: &str) -> Vec<v1::Run> {
    runtime().block_on(async {
        let client = Client::connect(&node.api, Some(token))
            .await
            .expect("connects");
        client.runs(Some(100)).await.expect("runs")
    })
}

#[test]
fn a_token_webhook_starts_a_run_once_per_idempotency_key() {
    let node = start();
    let path = format!("/hooks/acme/echo/by-token/{HOOK_TOKEN}");
    let json = [("Content-Type", "application/json")];
    let (status, headers, body) = post(node.http, &path, &json, br#"{"order": 7}"#);
    assert_eq!(status, 202, "{body}\n{}", node.process.stderr());
    let run_id = body["run_id"].as_str().expect("a run id").to_owned();
    assert!(headers["location"].ends_with(&run_id), "{headers:?}");
    let run = runtime().block_on(async {
        let client = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let run = client.wait(&run_id).await.expect("ends");
        assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
        assert_eq!(
            run.trigger, "webhook:by-token",
            "what started it is recorded"
        );
        client.output(&run_id).await.expect("an output")
    });
    assert_eq!(run, json!({ "got": { "order": 7 } }));
    // Its history is acme's alone: another tenant gets NOT_FOUND.
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        assert_eq!(
            acme.input(&run_id).await.expect("input"),
            json!({ "order": 7 })
        );
        assert_eq!(
            acme.step_output(&run_id, "wrap").await.expect("output"),
            json!({ "got": { "order": 7 } })
        );
        let globex = Client::connect(&node.api, Some(GLOBEX))
            .await
            .expect("connects");
        for error in [
            globex.input(&run_id).await.expect_err("not globex's"),
            globex
                .step_output(&run_id, "wrap")
                .await
                .expect_err("not globex's"),
            globex
                .logs(&run_id)
                .await
                .map(|_| ())
                .expect_err("not globex's"),
        ] {
            assert!(format!("{error:?}").contains("NotFound"), "{error:?}");
        }
    });

    // The same delivery again, with a key: one run.
    let keyed = [
        ("Content-Type", "application/json"),
        ("Idempotency-Key", "delivery-1"),
    ];
    let (first, _, a) = post(node.http, &path, &keyed, br#"{"order": 8}"#);
    let (again, _, b) = post(node.http, &path, &keyed, br#"{"order": 8}"#);
    assert_eq!((first, again), (202, 202));
    assert_eq!(
        a["run_id"], b["run_id"],
        "a retried delivery answers with its run"
    );
    assert_eq!(runs(&node, ACME).len(), 2, "two runs in all");
    // The API's StartRun takes a request id the same way.
    runtime().block_on(async {
        let client = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let once = client
            .start_run_once("echo", None, &json!(1), "request-1")
            .await
            .expect("starts");
        let twice = client
            .start_run_once("echo", None, &json!(1), "request-1")
            .await
            .expect("answers");
        assert_eq!(
            once.run_id, twice.run_id,
            "a retried StartRun answers with its run"
        );
        assert_eq!(once.trigger, "api");
        client.wait(&once.run_id).await.expect("ends");
    });
    assert_eq!(runs(&node, ACME).len(), 3);

    // Unknown, wrong or another tenant's: the same 404, nothing started.
    for path in [
        "/hooks/acme/echo/by-token/wrong-token".to_owned(),
        format!("/hooks/globex/echo/by-token/{HOOK_TOKEN}"),
        format!("/hooks/acme/missing/by-token/{HOOK_TOKEN}"),
        format!("/hooks/acme/echo/nope/{HOOK_TOKEN}"),
        "/hooks/acme/echo/by-token".to_owned(),
    ] {
        let (status, _, body) = post(node.http, &path, &json, b"{}");
        assert_eq!(status, 404, "{path}: {body}");
        assert!(body["error"].is_string(), "{body}");
    }
    assert_eq!(runs(&node, ACME).len(), 3);
    assert!(runs(&node, GLOBEX).is_empty());

    // Bodies it cannot take: their status, nothing started.
    let (status, _, _) = post(node.http, &path, &[("Content-Type", "image/png")], b"x");
    assert_eq!(status, 415);
    let (status, _, body) = post(node.http, &path, &json, b"{not json");
    assert_eq!(status, 400, "{body}");
    let big = format!("{{\"pad\": \"{}\"}}", "x".repeat(70_000));
    let (status, _, body) = post(node.http, &path, &json, big.as_bytes());
    assert_eq!(status, 413, "{body}");
    assert_eq!(runs(&node, ACME).len(), 3);

    // XML is kept as text, a form becomes an object.
    let (_, _, xml) = post(
        node.http,
        &path,
        &[("Content-Type", "application/xml")],
        b"<a>1</a>",
    );
    let (_, _, form) = post(
        node.http,
        &path,
        &[("Content-Type", "application/x-www-form-urlencoded")],
        b"a=1&b=x+y",
    );
    runtime().block_on(async {
        let client = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        for (started, expected) in [
            (xml, json!("<a>1</a>")),
            (form, json!({"a": "1", "b": "x y"})),
        ] {
            let id = started["run_id"].as_str().expect("a run id");
            client.wait(id).await.expect("ends");
            assert_eq!(
                client.output(id).await.expect("output"),
                json!({ "got": expected })
            );
        }
        // Runs list by what started them: a kind, or one trigger.
        let listed = |trigger: &str| {
            let request = v1::ListRunsRequest {
                trigger: trigger.into(),
                ..Default::default()
            };
            let client = client.clone();
            async move {
                let runs = client.list_runs(request).await.expect("listed").runs;
                runs.into_iter().map(|r| r.trigger).collect::<Vec<_>>()
            }
        };
        assert_eq!(listed("api").await, ["api"]);
        assert_eq!(listed("webhook").await, ["webhook:by-token"; 4]);
        assert_eq!(listed("webhook:by-token").await.len(), 4);
        assert!(listed("webhook:signed").await.is_empty());
        assert!(listed("cron").await.is_empty());
    });
}

#[test]
fn a_signed_sync_webhook_answers_with_the_output_and_refuses_bad_or_replayed_signatures() {
    let node = start();
    let path = "/hooks/acme/echo/signed";
    let body = br#"{"invoice": 42}"#;
    let signature = sign(HMAC_KEY, now(), body);
    let headers = [
        ("Content-Type", "application/json"),
        ("X-Isoflow-Signature", signature.as_str()),
    ];
    let (status, _, answer) = post(node.http, path, &headers, body);
    assert_eq!(status, 200, "{answer}\n{}", node.process.stderr());
    assert_eq!(
        answer,
        json!({ "got": { "invoice": 42 } }),
        "the run's output, at once"
    );

    let refused = |signature: &str, body: &[u8]| {
        let headers = [
            ("Content-Type", "application/json"),
            ("X-Isoflow-Signature", signature),
        ];
        post(node.http, path, &headers, body)
    };
    let (status, _, why) = refused(&sign("wrong-key", now(), body), body);
    assert_eq!(status, 401, "{why}");
    let (status, _, why) = refused(&signature, br#"{"invoice": 43}"#);
    assert_eq!(status, 401, "another body under the same signature: {why}");
    let (status, _, why) = refused(&sign(HMAC_KEY, now() - 3600, body), body);
    assert_eq!(status, 401);
    assert!(
        why["error"]
            .as_str()
            .unwrap_or_default()
            .contains("replayed"),
        "{why}"
    );
    let (status, _, _) = post(
        node.http,
        path,
        &[("Content-Type", "application/json")],
        body,
    );
    assert_eq!(status, 401, "no signature");
    assert_eq!(
        runs(&node, ACME).len(),
        1,
        "only the good delivery started a run"
    );
    assert!(
        !node.process.stderr().contains(HMAC_KEY),
        "the key is in no log"
    );
}

const TICKER: &str = r#"
apiVersion: isoflow.dev/v1
name: ticker
version: 1
triggers:
  - id: every-second
    type: cron
    schedule: "* * * * * *"
    timezone: Europe/Berlin
    overlap: allow
steps:
  - id: wrap
    type: code
    source: "export default (input) => input"
"#;

/// The ticks of the finished runs of `ticker`, in start order.
fn ticks(node: &Node) -> Vec<String> {
    runtime().block_on(async {
        let client = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let mut ticks = Vec::new();
        for run in client.runs(Some(1000)).await.expect("runs").iter().rev() {
            if run.integration != "ticker" {
                continue;
            }
            let run = client.wait(&run.run_id).await.expect("ends");
            assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
            assert_eq!(run.trigger, "cron:every-second");
            let output = client.output(&run.run_id).await.expect("an output");
            assert_eq!(output["trigger"], json!("every-second"));
            ticks.push(output["tick"].as_str().expect("a tick").to_owned());
        }
        ticks
    })
}

fn wait_for_runs(node: &Node, n: usize) {
    let deadline = std::time::Instant::now() + LONG;
    while runs(node, ACME).len() < n {
        assert!(
            std::time::Instant::now() < deadline,
            "fewer than {n} cron runs:\n{}",
            node.process.stderr()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_cron_trigger_fires_each_tick_once_across_a_kill_and_a_restart() {
    let mut node = start();
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(TICKER, "ticker.yaml", HashMap::new())
            .await
            .expect("deploys");
    });
    wait_for_runs(&node, 3);
    let config = node.dir.path().join("all.toml");
    let killed = std::mem::replace(&mut node.process, Process::spawn(&mut Command::new("true")));
    let before = killed.kill();
    let fired_before = before.stderr.matches("cron tick fired").count();
    std::thread::sleep(Duration::from_secs(2));
    node.process = spawn(&config);
    wait_for_runs(&node, fired_before + 2);
    let ticks = ticks(&node);
    let mut unique = ticks.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), ticks.len(), "a tick ran twice: {ticks:?}");
    assert!(ticks.len() >= fired_before + 2, "{ticks:?}");
    // Each tick is a whole second, read in Berlin's zone and stored in UTC.
    assert!(ticks.iter().all(|t| t.ends_with("+00:00")), "{ticks:?}");
}

#[test]
fn a_failed_run_sends_one_signed_alert_per_window_and_a_slow_one_its_own() {
    let node = start();
    let receiver = HttpFixture::start();
    receiver.route("POST", "/alerts", Responder::Echo);
    let failing = format!(
        "apiVersion: isoflow.dev/v1\nname: failing\nversion: 1\nalerts:\n  - on: failed\n    webhook: \"{url}\"\n    \
         secret: hook-hmac\n  - on: slow\n    threshold: 1ms\n    webhook: \"{url}\"\n    secret: hook-hmac\n\
         steps:\n  - id: boom\n    type: code\n    source: \"export default () => {{ throw new Error('the ERP said no'); }}\"\n",
        url = receiver.url("/alerts")
    );
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(&failing, "failing.yaml", HashMap::new())
            .await
            .expect("deploys");
        for _ in 0..3 {
            let run = acme
                .start_run("failing", None, &json!(null))
                .await
                .expect("starts");
            let run = acme.wait(&run.run_id).await.expect("ends");
            assert_eq!(run.status(), v1::RunStatus::Failed);
        }
    });
    // One `failed` and one `slow` alert: the other two runs of each cause
    // fall in the first one's window.
    assert!(
        receiver.wait_for_count("POST", "/alerts", 2, LONG),
        "{}",
        node.process.stderr()
    );
    std::thread::sleep(Duration::from_secs(1));
    let alerts = receiver.requests("POST", "/alerts");
    assert_eq!(
        alerts.len(),
        2,
        "throttled to one per cause: {}",
        node.process.stderr()
    );
    let mut causes: Vec<String> = Vec::new();
    for alert in &alerts {
        let body = alert.json();
        causes.push(body["cause"].as_str().expect("a cause").to_owned());
        assert_eq!(body["integration"], json!("failing"));
        assert!(
            body["error"]
                .as_str()
                .unwrap_or_default()
                .contains("the ERP said no"),
            "{body}"
        );
        // Signed like a webhook, with the tenant's key.
        let signature = alert.header("x-isoflow-signature").expect("signed");
        let time: u64 = signature
            .split(',')
            .find_map(|p| p.strip_prefix("t="))
            .and_then(|t| t.parse().ok())
            .expect("a time");
        assert_eq!(signature, sign(HMAC_KEY, time, alert.text().as_bytes()));
    }
    causes.sort();
    assert_eq!(causes, ["failed", "slow"]);
}

/// An integration whose one step calls the provider's API with `credential`.
fn crm_sync(provider: &Provider, credential: &str) -> String {
    format!(
        "apiVersion: isoflow.dev/v1\nname: sync-{credential}\nversion: 1\nsteps:\n  - id: orders\n    type: http\n    \
         method: GET\n    url: \"{}\"\n    credential: {credential}\n    retry: {{ max_attempts: 1 }}\n",
        provider.url("/api/orders")
    )
}

fn oauth2_request(
    provider: &Provider,
    name: &str,
    grant: v1::Oauth2Grant,
    fill: impl FnOnce(&mut v1::OAuth2Credential),
) -> v1::SetCredentialRequest {
    let mut oauth2 = v1::OAuth2Credential {
        token_url: provider.url("/token"),
        client_id: oauth2::CLIENT_ID.into(),
        client_secret: oauth2::CLIENT_SECRET.into(),
        scopes: vec!["orders".into()],
        ..Default::default()
    };
    oauth2.set_grant(grant);
    fill(&mut oauth2);
    v1::SetCredentialRequest {
        name: name.into(),
        kind: Some(v1::set_credential_request::Kind::Oauth2(oauth2)),
        origins: vec![provider.url("/api/")],
        allow_plain_http: true,
    }
}

/// Runs `integration` once as acme: the run as it ended, and its output.
async fn run_once(acme: &Client, integration: &str) -> (v1::Run, Value) {
    let run = acme
        .start_run(integration, None, &json!(null))
        .await
        .expect("starts");
    let run = acme.wait(&run.run_id).await.expect("ends");
    let output = if run.status() == v1::RunStatus::Succeeded {
        acme.output(&run.run_id).await.expect("an output")
    } else {
        Value::Null
    };
    (run, output)
}

#[test]
fn an_oauth2_credential_renews_itself_and_says_when_it_cannot() {
    let sink = SmtpSink::start();
    let node = start_with(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"isoflow@example.com\"\nstarttls = false\n",
        sink.port()
    ));
    let provider = Provider::start(3600);
    provider.add_refresh_token("rt-0");
    let receiver = HttpFixture::start();
    receiver.route("POST", "/alerts", Responder::Echo);
    let alerting = format!(
        "{}alerts:\n  - on: credential\n    webhook: \"{}\"\n    secret: hook-hmac\n    \
         email: {{ to: [crm-owner@example.com] }}\n",
        crm_sync(&provider, "crm"),
        receiver.url("/alerts")
    );
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.set_credential(oauth2_request(
            &provider,
            "crm",
            v1::Oauth2Grant::RefreshToken,
            |o| o.refresh_token = "rt-0".into(),
        ))
        .await
        .expect("stored");
        acme.deploy(&alerting, "crm.yaml", HashMap::new())
            .await
            .expect("deploys");

        let (run, output) = run_once(&acme, "sync-crm").await;
        assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
        assert_eq!(output["body"]["issued"], json!(1));

        // The provider drops its access tokens early: the step's request
        // gets a 401, the token is renewed (with the rotated refresh
        // token), and the request is sent once more.
        provider.revoke_access_tokens();
        let (run, output) = run_once(&acme, "sync-crm").await;
        assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
        assert_eq!(output["body"]["issued"], json!(2));
        assert_eq!(provider.grants(), ["refresh_token", "refresh_token"]);
        assert_eq!(provider.api_requests().len(), 3);

        // The user revoked the app: the run fails saying so, and the
        // credential is listed as needing attention.
        provider.revoke_refresh_tokens();
        provider.revoke_access_tokens();
        let (run, _) = run_once(&acme, "sync-crm").await;
        assert_eq!(run.status(), v1::RunStatus::Failed, "{run:?}");
        assert!(run.error.contains("invalid_grant"), "{}", run.error);
        let listed = acme.credentials().await.expect("listed");
        let status = listed[0].oauth2.clone().expect("OAuth2 status");
        assert!(status.needs_attention, "{status:?}");
        assert!(status.unhealthy.contains("invalid_grant"), "{status:?}");
        assert_eq!(status.renewals, 2);
        // Its integration's `on: credential` alerts went out, once.
        assert!(receiver.wait_for_count("POST", "/alerts", 1, LONG));
        let alert = receiver.requests("POST", "/alerts")[0].json();
        assert_eq!(alert["cause"], json!("credential"));
        assert_eq!(alert["credential"], json!("crm"));
        assert_eq!(alert["integration"], json!("sync-crm"));
        assert!(
            alert["error"]
                .as_str()
                .unwrap_or_default()
                .contains("invalid_grant"),
            "{alert}"
        );
        assert!(sink.wait_for_count(1, LONG), "no email");
        let mail = &sink.messages()[0];
        assert_eq!(mail.to, ["crm-owner@example.com"]);
        assert_eq!(
            mail.header("subject").as_deref(),
            Some("isoflow: credential crm of sync-crm version 1 cannot be renewed (tenant acme)")
        );
        // A second failure of the same credential is no new event.
        let (run, _) = run_once(&acme, "sync-crm").await;
        assert_eq!(run.status(), v1::RunStatus::Failed);
        // globex sees none of it.
        let globex = Client::connect(&node.api, Some(GLOBEX))
            .await
            .expect("connects");
        assert!(globex.credentials().await.expect("listed").is_empty());
    });
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(receiver.count("POST", "/alerts"), 1);
    let logs = node.process.stderr();
    for secret in [
        oauth2::CLIENT_SECRET,
        "at-1",
        "at-2",
        "rt-0",
        "rt-1",
        "rt-2",
    ] {
        assert!(!logs.contains(secret), "{secret} is in the node's log");
    }
}

#[test]
fn an_oauth2_authorization_completes_once_through_the_callback() {
    let node = start();
    let provider = Provider::start(3600);
    let base = format!("http://127.0.0.1:{}/oauth/callback/", node.http);
    let (url, listed) = runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let set = acme
            .set_credential(oauth2_request(
                &provider,
                "crm-user",
                v1::Oauth2Grant::AuthorizationCode,
                |o| o.authorize_url = provider.url("/authorize"),
            ))
            .await
            .expect("stored");
        let listed = set.oauth2.expect("OAuth2 status").redirect_uri;
        let globex = Client::connect(&node.api, Some(GLOBEX))
            .await
            .expect("connects");
        let other = globex
            .authorize_credential("crm-user")
            .await
            .expect_err("not globex's");
        assert!(other.to_string().contains("no credential"), "{other}");
        let url = acme
            .authorize_credential("crm-user")
            .await
            .expect("an authorization")
            .authorize_url;
        (url, listed)
    });
    let url = reqwest::Url::parse(&url).expect("a URL");
    let param = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
            .expect("the parameter")
    };
    // The credential's own redirect URI, the one SetCredential listed to
    // register with the provider.
    let callback = param("redirect_uri");
    assert!(callback.starts_with(&base), "{callback}");
    assert_eq!(callback, listed);
    assert_eq!(param("client_id"), oauth2::CLIENT_ID);
    let state = param("state");
    let code = provider.issue_code(&callback);
    let path = callback
        .strip_prefix(&format!("http://127.0.0.1:{}", node.http))
        .expect("on the listener")
        .to_owned();
    // The callback as a browser calls it: GET `at` with the query `pairs`.
    let callback_at = |at: &str, pairs: &[(&str, &str)]| {
        let mut query = form_urlencoded::Serializer::new(String::new());
        query.extend_pairs(pairs);
        exchange(
            node.http,
            "GET",
            &format!("{at}?{}", query.finish()),
            &[],
            b"",
        )
    };
    // The right state at another path (the shared callback of before, or
    // another credential's) is no callback of this credential.
    for elsewhere in ["/oauth/callback", "/oauth/callback/AAAAAAAAAAAAAAAAAAAAAA"] {
        let (status, _, page) = callback_at(elsewhere, &[("state", &state), ("code", &code)]);
        assert!(
            status == 404 || status == 400,
            "{elsewhere}: {status} {page}"
        );
    }

    let (status, _, page) = callback_at(&path, &[("state", &state), ("error", "access_denied")]);
    assert_eq!(status, 400, "{page}");
    let forged = format!(
        "{}.{}",
        state.split_once('.').expect("two parts").0,
        "A".repeat(43)
    );
    let (status, _, page) = callback_at(&path, &[("state", &forged), ("code", &code)]);
    assert_eq!(status, 400, "{page}");
    let (status, headers, page) = callback_at(&path, &[("state", &state), ("code", &code)]);
    assert_eq!(status, 200, "{page}\n{}", node.process.stderr());
    assert!(page.contains("is connected"), "{page}");
    assert_eq!(headers["cache-control"], "no-store");
    let (status, _, page) = callback_at(&path, &[("state", &state), ("code", &code)]);
    assert_eq!(status, 400, "used once: {page}");

    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(&crm_sync(&provider, "crm-user"), "crm.yaml", HashMap::new())
            .await
            .expect("deploys");
        let (run, output) = run_once(&acme, "sync-crm-user").await;
        assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
        assert_eq!(output["body"]["issued"], json!(2));
    });
    assert_eq!(provider.grants(), ["authorization_code"]);
}

#[test]
fn execute_run_answers_with_the_output_in_one_call() {
    let node = start();
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let (run, output) = acme
            .execute("echo", None, &json!({ "order": 9 }), "")
            .await
            .expect("executes");
        assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
        assert_eq!(run.steps.len(), 1, "the run comes with its steps");
        assert_eq!(output, Some(json!({ "got": { "order": 9 } })));

        // Retried with its request_id: the same run, not a second.
        let (first, _) = acme
            .execute("echo", None, &json!(1), "order-10")
            .await
            .expect("executes");
        let (again, output) = acme
            .execute("echo", None, &json!(2), "order-10")
            .await
            .expect("executes");
        assert_eq!(first.run_id, again.run_id);
        assert_eq!(output, Some(json!({ "got": 1 })));

        let failing = "apiVersion: isoflow.dev/v1\nname: refuse\nversion: 1\nsteps:\n  - id: no\n    type: code\n    \
                       source: \"export default () => { throw new Error('out of stock'); }\"\n";
        acme.deploy(failing, "refuse.yaml", HashMap::new())
            .await
            .expect("deploys");
        let (run, output) = acme
            .execute("refuse", None, &json!(null), "")
            .await
            .expect("executes");
        assert_eq!(run.status(), v1::RunStatus::Failed);
        assert!(run.error.contains("out of stock"), "{}", run.error);
        assert_eq!(output, None);

        let globex = Client::connect(&node.api, Some(GLOBEX))
            .await
            .expect("connects");
        let error = globex
            .execute("echo", None, &json!(null), "")
            .await
            .expect_err("not globex's");
        assert!(error.to_string().contains("not deployed"), "{error}");
    });
}

#[test]
fn a_paused_cron_trigger_starts_nothing_and_resumes_without_catching_up() {
    let node = start();
    let acme = || async {
        Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects")
    };
    runtime().block_on(async {
        acme()
            .await
            .deploy(TICKER, "ticker.yaml", HashMap::new())
            .await
            .expect("deploys");
    });
    wait_for_runs(&node, 2);
    let paused = runtime().block_on(async {
        let client = acme().await;
        let info = client
            .set_trigger_paused("ticker", "every-second", true)
            .await
            .expect("paused");
        assert!(info.paused && info.r#type == "cron", "{info:?}");
        // Not another tenant's to pause, and a webhook does not pause.
        let globex = Client::connect(&node.api, Some(GLOBEX))
            .await
            .expect("connects");
        let error = globex
            .set_trigger_paused("ticker", "every-second", true)
            .await
            .expect_err("not globex's");
        assert!(error.to_string().contains("not deployed"), "{error}");
        let error = client
            .set_trigger_paused("echo", "by-token", true)
            .await
            .expect_err("a webhook");
        assert!(
            error.to_string().contains("only cron triggers pause"),
            "{error}"
        );
        let listed = client.triggers(Some("ticker")).await.expect("listed");
        assert_eq!(listed.len(), 1);
        assert!(
            listed[0].paused && listed[0].next_tick_time.is_some(),
            "{listed:?}"
        );
        // A pass that read the trigger just before the pause may still
        // start one run.
        tokio::time::sleep(Duration::from_millis(600)).await;
        now()
    });
    let count = runs(&node, ACME).len();
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(runs(&node, ACME).len(), count, "runs started while paused");

    let resumed_at = runtime().block_on(async {
        let info = acme()
            .await
            .set_trigger_paused("ticker", "every-second", false)
            .await
            .expect("resumed");
        assert!(!info.paused);
        now()
    });
    wait_for_runs(&node, count + 2);
    // The paused seconds were passed over, not caught up.
    let ticks = ticks(&node);
    let after_pause: Vec<&String> = ticks
        .iter()
        .filter(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| u64::try_from(t.timestamp()).unwrap_or(0) > paused)
                .unwrap_or(false)
        })
        .collect();
    assert!(
        after_pause.iter().all(|t| {
            chrono::DateTime::parse_from_rfc3339(t)
                .map(|t| u64::try_from(t.timestamp()).unwrap_or(0) + 1 >= resumed_at)
                .unwrap_or(false)
        }),
        "a paused tick ran: paused at {paused}, resumed at {resumed_at}, ticks {ticks:?}"
    );
}

#[test]
fn a_queued_cron_tick_waits_for_the_previous_run_and_then_runs_at_once() {
    let node = start();
    let slow = HttpFixture::start();
    slow.route(
        "GET",
        "/slow",
        Responder::Slow(
            Duration::from_millis(2500),
            isoflow_testkit::Reply::text(200, "done"),
        ),
    );
    let queued = format!(
        "apiVersion: isoflow.dev/v1\nname: queued\nversion: 1\ntriggers:\n  - id: every-2s\n    type: cron\n    \
         schedule: \"*/2 * * * * *\"\n    overlap: queue\nsteps:\n  - id: wait\n    type: http\n    method: GET\n    \
         url: \"{}\"\n",
        slow.url("/slow")
    );
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(&queued, "queued.yaml", HashMap::new())
            .await
            .expect("deploys");
    });
    wait_for_runs(&node, 3);
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let mut runs = acme.runs(Some(100)).await.expect("runs");
        runs.reverse();
        let mut waited = 0;
        let mut previous_end = 0;
        for run in &runs[..3] {
            let run = acme.wait(&run.run_id).await.expect("ends");
            let input = acme.input(&run.run_id).await.expect("its input");
            let tick =
                chrono::DateTime::parse_from_rfc3339(input["tick"].as_str().expect("a tick"))
                    .expect("a time");
            let tick_ms = u64::try_from(tick.timestamp_millis()).expect("after 1970");
            // Never beside the previous run: each starts after it ended.
            assert!(ms(&run.create_time) >= previous_end, "{runs:?}");
            // A tick that came due during the previous run started when
            // that run ended, not at the next tick.
            if ms(&run.create_time) >= tick_ms + 400 {
                waited += 1;
                assert!(ms(&run.create_time) <= previous_end + 1000, "{runs:?}");
            }
            previous_end = ms(&run.update_time);
        }
        assert!(waited >= 1, "no tick waited for its predecessor: {runs:?}");
    });
}

/// The gRPC code of a client error.
fn code_of(error: &isoflow_client::Error) -> tonic::Code {
    match error {
        isoflow_client::Error::Status(status) => status.code(),
        other => panic!("not a status: {other}"),
    }
}

#[test]
fn another_tenant_gets_not_found_from_every_call_and_route() {
    let node = start();
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(TICKER, "ticker.yaml", HashMap::new())
            .await
            .expect("deploys");
        let (run, _) = acme
            .execute("echo", None, &json!({ "secret": "acme-only" }), "")
            .await
            .expect("executes");
        let id = run.run_id.as_str();
        let globex = Client::connect(&node.api, Some(GLOBEX))
            .await
            .expect("connects");
        let not_found = |what: &str, result: Result<(), isoflow_client::Error>| {
            let error = result.expect_err(what);
            assert_eq!(code_of(&error), tonic::Code::NotFound, "{what}: {error}");
        };
        not_found(
            "GetIntegration",
            globex.integration("echo", None).await.map(drop),
        );
        not_found(
            "StartRun",
            globex.start_run("echo", None, &json!(null)).await.map(drop),
        );
        not_found(
            "ExecuteRun",
            globex
                .execute("echo", None, &json!(null), "")
                .await
                .map(drop),
        );
        not_found("GetRun", globex.run(id).await.map(drop));
        not_found("GetRunOutput", globex.output(id).await.map(drop));
        not_found("GetRunInput", globex.input(id).await.map(drop));
        not_found(
            "GetStepOutput",
            globex.step_output(id, "wrap").await.map(drop),
        );
        not_found("GetRunLogs", globex.logs(id).await.map(drop));
        not_found("WatchRun", globex.watch(id, true).await.map(drop));
        not_found("CancelRun", globex.cancel(id).await.map(drop));
        not_found(
            "ListTriggers",
            globex.triggers(Some("ticker")).await.map(drop),
        );
        not_found(
            "SetTriggerPaused",
            globex
                .set_trigger_paused("ticker", "every-second", true)
                .await
                .map(drop),
        );
        not_found(
            "RotateCredential",
            globex.rotate_credential("hook-token", "x").await.map(drop),
        );
        not_found(
            "AuthorizeCredential",
            globex.authorize_credential("hook-token").await.map(drop),
        );
        assert!(
            !globex
                .delete_credential("hook-token")
                .await
                .expect("answers")
        );
        assert!(globex.integrations().await.expect("lists").is_empty());
        assert!(globex.runs(Some(100)).await.expect("lists").is_empty());
        assert!(globex.credentials().await.expect("lists").is_empty());
        assert!(globex.triggers(None).await.expect("lists").is_empty());
        // acme's still work, untouched.
        assert_eq!(acme.credentials().await.expect("lists").len(), 2);
        assert_eq!(acme.triggers(None).await.expect("lists").len(), 3);
    });
    // A webhook route names its tenant: globex's path to acme's trigger is
    // unknown, and acme's needs acme's token.
    let json = [("Content-Type", "application/json")];
    for path in [
        format!("/hooks/globex/echo/by-token/{HOOK_TOKEN}"),
        "/hooks/acme/echo/by-token/globex-guess".to_owned(),
    ] {
        let (status, _, body) = post(node.http, &path, &json, b"{}");
        assert_eq!(status, 404, "{path}: {body}");
    }
    assert!(runs(&node, GLOBEX).is_empty());
}

/// An integration whose one step fails, alerting by email.
const FAILING_MAILED: &str = r#"
apiVersion: isoflow.dev/v1
name: mailed
version: 4
alerts:
  - on: failed
    email:
      to: [ops@example.com, oncall@example.com]
      subject: "[ERP]"
steps:
  - id: boom
    type: code
    source: "export default () => { throw new Error('the ERP said no'); }"
"#;

#[test]
fn a_failed_run_mails_its_alert_once_per_window_through_the_smtp_server() {
    let sink = SmtpSink::start();
    let mut node = start_with(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {}\nfrom = \"Isoflow <isoflow@example.com>\"\nstarttls = false\n",
        sink.port()
    ));
    let failed: Vec<String> = runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(FAILING_MAILED, "mailed.yaml", HashMap::new())
            .await
            .expect("deploys");
        let mut failed = Vec::new();
        for _ in 0..2 {
            let run = acme
                .start_run("mailed", None, &json!(null))
                .await
                .expect("starts");
            let run = acme.wait(&run.run_id).await.expect("ends");
            assert_eq!(run.status(), v1::RunStatus::Failed);
            failed.push(run.run_id);
        }
        failed
    });
    assert!(
        sink.wait_for_count(1, LONG),
        "no email: {}",
        node.process.stderr()
    );
    // The second failure falls in the first one's window: it is held
    // back, not mailed. Its alert would come at once if it were sent.
    node.process
        .wait_for_stderr_line(LONG, |l| l.contains("alert email sent"));
    std::thread::sleep(Duration::from_secs(2));
    let mails = sink.messages();
    assert_eq!(mails.len(), 1, "throttled to one per window: {mails:#?}");
    let mail = &mails[0];
    assert_eq!(mail.from, "isoflow@example.com");
    assert_eq!(mail.to, ["ops@example.com", "oncall@example.com"]);
    assert_eq!(
        mail.header("subject").as_deref(),
        Some("[ERP] isoflow: mailed version 4 failed (tenant acme)")
    );
    assert!(
        mail.header("to")
            .is_some_and(|to| to.contains("ops@example.com") && to.contains("oncall@example.com")),
        "{mail:?}"
    );
    let body = mail.body();
    assert!(
        body.contains(&format!("run          {}\n", failed[0])),
        "the first failed run: {body}"
    );
    assert!(
        body.contains("error        step \"boom\": ") && body.contains("the ERP said no"),
        "{body}"
    );
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "no links: {body}"
    );
}

#[test]
fn an_unreachable_smtp_server_costs_a_warning_and_nothing_else() {
    // Nothing listens there.
    let closed = free_port();
    let mut node = start_with(&format!(
        "[smtp]\nhost = \"127.0.0.1\"\nport = {closed}\nfrom = \"isoflow@example.com\"\nstarttls = false\n"
    ));
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(FAILING_MAILED, "mailed.yaml", HashMap::new())
            .await
            .expect("deploys");
        let run = acme
            .start_run("mailed", None, &json!(null))
            .await
            .expect("starts");
        let run = acme.wait(&run.run_id).await.expect("ends");
        assert_eq!(run.status(), v1::RunStatus::Failed);
        assert!(run.error.contains("the ERP said no"), "{run:?}");
    });
    let warning = node
        .process
        .wait_for_stderr_line(LONG, |l| l.contains("alert email not sent"));
    // The node goes on: runs start and end as before.
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let run = acme
            .start_run("echo", None, &json!({"after": "the warning"}))
            .await
            .expect("starts");
        let run = acme.wait(&run.run_id).await.expect("ends");
        assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
    });
    assert!(warning.contains("WARN"), "{warning}");
    assert!(
        warning.contains(&format!("127.0.0.1:{closed}")),
        "{warning}"
    );
}

/// fetch (GET) → shape (code) → post (POST) → done (code), against a
/// counting server whose POST fails the first time.
fn rerun_definition(fixture: &HttpFixture) -> String {
    format!(
        r#"
apiVersion: isoflow.dev/v1
name: orders
version: 2
steps:
  - id: fetch
    type: http
    url: "{fetch}"
  - id: shape
    type: code
    source: "export default (input) => ({{ count: input.orders.length, tag: input.tag }})"
    input: {{ orders: "{{{{ steps.fetch.output.body.orders }}}}", tag: "{{{{ input.tag }}}}" }}
  - id: post
    type: http
    method: POST
    url: "{post}"
    body: "{{{{ steps.shape.output }}}}"
  - id: done
    type: code
    source: "export default (input) => ({{ sent: input.sent, status: input.status }})"
    input: {{ sent: "{{{{ steps.shape.output }}}}", status: "{{{{ steps.post.output.status }}}}" }}
"#,
        fetch = fixture.url("/orders"),
        post = fixture.url("/erp"),
    )
}

/// A shop that answers `GET /orders` with three orders, and an ERP whose
/// `POST /erp` answers as `erp` says.
fn orders_and_erp(erp: Responder) -> HttpFixture {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/orders",
        Responder::Fixed(Reply::json(200, &json!({ "orders": [1, 2, 3] }))),
    );
    fixture.route("POST", "/erp", erp);
    fixture
}

#[test]
fn a_failed_run_reruns_from_its_failed_step_and_the_steps_before_are_not_run_again() {
    let node = start();
    let fixture = orders_and_erp(Responder::Sequence(vec![
        Reply::text(500, "the ERP is down"),
        Reply::json(201, &json!({ "ok": true })),
    ]));
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        acme.deploy(&rerun_definition(&fixture), "orders.yaml", HashMap::new())
            .await
            .expect("deploys");
        let input = json!({ "tag": "nightly" });
        let first = acme
            .start_run("orders", None, &input)
            .await
            .expect("starts");
        let first = acme.wait(&first.run_id).await.expect("ends");
        assert_eq!(first.status(), v1::RunStatus::Failed, "{first:?}");
        assert!(first.error.contains("step \"post\""), "{first:?}");
        assert_eq!(
            (
                fixture.count("GET", "/orders"),
                fixture.count("POST", "/erp")
            ),
            (1, 1)
        );

        // Only a failed run of one's own tenant can be run again.
        let globex = Client::connect(&node.api, Some(GLOBEX))
            .await
            .expect("connects");
        let error = globex.rerun(&first.run_id).await.expect_err("not globex's");
        assert!(format!("{error:?}").contains("NotFound"), "{error:?}");
        let error = acme.rerun("no-such-run").await.expect_err("no such run");
        assert!(format!("{error:?}").contains("NotFound"), "{error:?}");

        let rerun = acme.rerun(&first.run_id).await.expect("reruns");
        assert_ne!(rerun.run_id, first.run_id, "a new run");
        assert_eq!(
            (
                rerun.trigger.as_str(),
                rerun.rerun_of.as_str(),
                rerun.from_step.as_str()
            ),
            ("rerun", first.run_id.as_str(), "post")
        );
        assert_eq!((rerun.integration.as_str(), rerun.version), ("orders", 2));
        let rerun = acme.wait(&rerun.run_id).await.expect("ends");
        assert_eq!(rerun.status(), v1::RunStatus::Succeeded, "{rerun:?}");
        // fetch ran once in all; post once more, and it answered 201 now.
        assert_eq!(
            fixture.count("GET", "/orders"),
            1,
            "fetch was not run again"
        );
        assert_eq!(fixture.count("POST", "/erp"), 2);
        let posted = fixture.requests("POST", "/erp");
        assert_eq!(posted[1].json(), json!({ "count": 3, "tag": "nightly" }));
        assert_eq!(
            acme.output(&rerun.run_id).await.expect("an output"),
            json!({ "sent": { "count": 3, "tag": "nightly" }, "status": 201 })
        );
        assert_eq!(acme.input(&rerun.run_id).await.expect("input"), input);

        // GetRun tells where it comes from; the copied steps are its own
        // checkpoints (with the old run's outputs).
        let shown = acme.run(&rerun.run_id).await.expect("the rerun");
        assert_eq!(
            (
                shown.trigger.as_str(),
                shown.rerun_of.as_str(),
                shown.from_step.as_str()
            ),
            ("rerun", first.run_id.as_str(), "post")
        );
        let keys: Vec<&str> = shown.steps.iter().map(|s| s.step_key.as_str()).collect();
        assert_eq!(keys, ["done", "fetch", "post", "shape"], "{shown:?}");
        assert!(
            shown
                .steps
                .iter()
                .all(|s| s.status() == v1::StepStatus::Succeeded),
            "{shown:?}"
        );
        assert_eq!(
            acme.step_output(&rerun.run_id, "shape")
                .await
                .expect("copied"),
            acme.step_output(&first.run_id, "shape")
                .await
                .expect("stored")
        );
        // The old run is as it was.
        let old = acme.run(&first.run_id).await.expect("the old run");
        assert_eq!(old.status(), v1::RunStatus::Failed);
        assert_eq!((old.trigger.as_str(), old.rerun_of.as_str()), ("api", ""));

        // A run that did not fail cannot be run again.
        let error = acme.rerun(&rerun.run_id).await.expect_err("it succeeded");
        assert!(
            format!("{error:?}").contains("FailedPrecondition"),
            "{error:?}"
        );
        let listed = acme.runs(Some(10)).await.expect("runs");
        assert_eq!(listed[0].trigger, "rerun");
        assert_eq!(listed[0].rerun_of, first.run_id);
    });
}

/// Version `version` of `repair`: fetch (GET, counted) → shape (code,
/// whose body is `shape`) → post (POST, counted), and a step `after` in
/// later versions.
fn repair_definition(fixture: &HttpFixture, version: u32, shape: &str, before: &str) -> String {
    format!(
        r#"
apiVersion: isoflow.dev/v1
name: repair
version: {version}
steps:{before}
  - id: fetch
    type: http
    url: "{fetch}"
  - id: shape
    type: code
    source: "export default (input) => {shape}"
    input: "{{{{ steps.fetch.output.body.orders }}}}"
  - id: post
    type: http
    method: POST
    url: "{post}"
    body: "{{{{ steps.shape.output }}}}"
"#,
        fetch = fixture.url("/orders"),
        post = fixture.url("/erp"),
    )
}

#[test]
fn a_failed_run_resumes_from_its_failed_step_with_a_fixed_version() {
    let node = start();
    let fixture = orders_and_erp(Responder::Fixed(Reply::json(201, &json!({ "ok": true }))));
    runtime().block_on(async {
        let acme = Client::connect(&node.api, Some(ACME))
            .await
            .expect("connects");
        let broken = "({ total: input.reduce((a, b) => a + b.amount.value, 0) })";
        acme.deploy(&repair_definition(&fixture, 1, broken, ""), "repair.yaml", HashMap::new())
            .await
            .expect("deploys v1");
        let first = acme
            .start_run("repair", None, &json!({}))
            .await
            .expect("starts");
        let first = acme.wait(&first.run_id).await.expect("ends");
        assert_eq!(first.status(), v1::RunStatus::Failed, "{first:?}");
        assert!(first.error.contains("step \"shape\""), "{first:?}");
        assert_eq!(fixture.count("GET", "/orders"), 1);
        assert_eq!(fixture.count("POST", "/erp"), 0);

        // What the failed step was given, to reproduce the failure with;
        // the caller's own runs' code steps only.
        assert_eq!(
            acme.step_input(&first.run_id, "shape").await.expect("its input"),
            json!([1, 2, 3])
        );
        let error = acme.step_input(&first.run_id, "fetch").await.expect_err("http");
        assert!(format!("{error:?}").contains("FailedPrecondition"), "{error:?}");
        let globex = Client::connect(&node.api, Some(GLOBEX)).await.expect("connects");
        let error = globex.step_input(&first.run_id, "shape").await.expect_err("not globex's");
        assert!(format!("{error:?}").contains("NotFound"), "{error:?}");
        // `isoflow eval` on that input: the run's failure, then the fix's output.
        let dir = tempfile::tempdir().expect("a temp dir");
        let input = dir.path().join("input.json");
        let given = acme.step_input(&first.run_id, "shape").await.expect("its input");
        std::fs::write(&input, given.to_string()).expect("write");
        let eval = |body: &str| {
            let step = dir.path().join("shape.js");
            std::fs::write(&step, format!("export default (input) => {body}")).expect("write");
            Command::new(env!("CARGO_BIN_EXE_isoflow"))
                .arg("eval")
                .arg(&step)
                .arg("--input")
                .arg(format!("@{}", input.display()))
                .output()
                .expect("isoflow eval runs")
        };
        let failing = eval(broken);
        let said = String::from_utf8_lossy(&failing.stderr);
        assert!(!failing.status.success(), "{said}");
        let run_said = first.error.split_once("uncaught ").map(|(_, e)| e).unwrap_or(&first.error);
        let first_line = run_said.lines().next().expect("a sentence");
        assert!(said.contains(first_line.split(" at ").next().expect("text")), "{said} / {run_said}");

        // The fix, as version 2; and two versions that cannot take over:
        // one without the failed step, one with a step before it.
        let fixed = "({ total: input.reduce((a, b) => a + b, 0), fixed: true })";
        let passing = eval(fixed);
        assert!(passing.status.success(), "{}", String::from_utf8_lossy(&passing.stderr));
        assert_eq!(
            serde_json::from_slice::<Value>(&passing.stdout).expect("JSON"),
            json!({ "total": 6, "fixed": true })
        );
        acme.deploy(&repair_definition(&fixture, 2, fixed, ""), "repair.yaml", HashMap::new())
            .await
            .expect("deploys v2");
        let renamed = repair_definition(&fixture, 3, fixed, "").replace("id: shape", "id: shaped")
            .replace("steps.shape.output", "steps.shaped.output");
        acme.deploy(&renamed, "repair.yaml", HashMap::new())
            .await
            .expect("deploys v3");
        let earlier = "\n  - id: first\n    type: code\n    source: \"export default () => 1\"";
        acme.deploy(&repair_definition(&fixture, 4, fixed, earlier), "repair.yaml", HashMap::new())
            .await
            .expect("deploys v4");
        for (version, says) in [
            (3, "version 3 of integration repair cannot resume run"),
            (4, "its steps up to \"shape\" are \"first\", \"fetch\", \"shape\", where the run had \"fetch\", \"shape\""),
        ] {
            let error = acme
                .rerun_with(&first.run_id, Some(version))
                .await
                .expect_err("cannot take over");
            assert!(format!("{error:?}").contains("FailedPrecondition"), "{error:?}");
            assert!(format!("{error}").contains(says), "{error}");
        }
        let error = acme
            .rerun_with(&first.run_id, Some(9))
            .await
            .expect_err("no version 9");
        assert!(format!("{error:?}").contains("NotFound"), "{error:?}");
        assert!(format!("{error}").contains("integration repair has no version 9"), "{error}");

        let resumed = acme
            .rerun_with(&first.run_id, Some(2))
            .await
            .expect("resumes with v2");
        assert_eq!(
            (
                resumed.rerun_of.as_str(),
                resumed.from_step.as_str(),
                resumed.version,
                resumed.from_version
            ),
            (first.run_id.as_str(), "shape", 2, 1)
        );
        let resumed = acme.wait(&resumed.run_id).await.expect("ends");
        assert_eq!(resumed.status(), v1::RunStatus::Succeeded, "{resumed:?}");
        // fetch was not run again; version 2's shape ran, then post.
        assert_eq!(fixture.count("GET", "/orders"), 1, "fetch ran once in all");
        assert_eq!(fixture.count("POST", "/erp"), 1);
        assert_eq!(
            fixture.requests("POST", "/erp")[0].json(),
            json!({ "total": 6, "fixed": true })
        );
        assert_eq!(
            acme.step_output(&resumed.run_id, "fetch").await.expect("copied"),
            acme.step_output(&first.run_id, "fetch").await.expect("stored")
        );
        // Both versions are on record: the resumed run says it moved from
        // version 1 to 2, the failed run is as it was.
        let shown = acme.run(&resumed.run_id).await.expect("the resumed run");
        assert_eq!((shown.version, shown.from_version), (2, 1));
        let old = acme.run(&first.run_id).await.expect("the failed run");
        assert_eq!((old.status(), old.version, old.from_version), (v1::RunStatus::Failed, 1, 0));
    });
}

/// `examples/platform/run.sh`, the README's platform example, with the
/// binaries this test run built: everything it shows happens.
#[test]
fn the_platform_example_runs_end_to_end() {
    let bin = std::path::Path::new(env!("CARGO_BIN_EXE_isoflow"));
    let target = bin
        .parent()
        .and_then(std::path::Path::parent)
        .expect("target/debug/isoflow");
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the workspace");
    let output = Command::new("bash")
        .arg(root.join("examples/platform/run.sh"))
        .env("ISOFLOW_EXAMPLE_PREBUILT", "1")
        .env("CARGO_TARGET_DIR", target)
        .env_remove("ISOFLOW_TOKEN")
        .env_remove("ISOFLOW_SERVER")
        .output()
        .expect("bash runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.status.success(), "{text}");
    for expected in [
        // the sync webhook's answer, twice (the second after a renewal)
        "{\"open\":2,\"total\":430.75}",
        "x-isoflow-run-id: ",
        "location: /isoflow.v1.Isoflow/GetRun/",
        // two access tokens: the first, and the one renewed after a 401
        "token 2 expires",
        "\"cause\":\"failed\"",
        "Subject: [CRM] isoflow: crm-orders version 1 failed (tenant acme)",
        "cron:every-5s",
        "webhook:orders-async",
        "2 of 3 orders are open",
    ] {
        assert!(text.contains(expected), "{expected:?} is missing:\n{text}");
    }
}

/// A webhook body is refused by what its request says before it is read:
/// a signed trigger without a well-formed, current signature, and a length
/// over the limit, answer at once, without waiting for (or holding) the
/// body.
#[test]
fn a_webhook_is_refused_before_its_body_is_read() {
    use std::io::{Read, Write};
    let node = start();
    let ask = |path: &str, headers: &str| {
        let mut stream =
            std::net::TcpStream::connect(("127.0.0.1", node.http)).expect("the listener accepts");
        stream
            .set_read_timeout(Some(Duration::from_secs(20)))
            .expect("a timeout");
        // 300 MiB announced, 2 bytes sent: a node that read first would
        // wait for the rest.
        let request = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
             Content-Length: 314572800\r\n{headers}\r\n{{}}"
        );
        stream.write_all(request.as_bytes()).expect("sent");
        let mut answer = [0u8; 512];
        let n = stream.read(&mut answer).expect("an answer before the body");
        String::from_utf8_lossy(&answer[..n]).into_owned()
    };
    let unsigned = ask("/hooks/acme/echo/signed", "");
    assert!(unsigned.starts_with("HTTP/1.1 401"), "{unsigned}");
    let stale = ask(
        "/hooks/acme/echo/signed",
        "X-Isoflow-Signature: t=1000,v1=00\r\n",
    );
    assert!(stale.starts_with("HTTP/1.1 401"), "{stale}");
    let large = ask(&format!("/hooks/acme/echo/by-token/{HOOK_TOKEN}"), "");
    assert!(large.starts_with("HTTP/1.1 413"), "{large}");
    assert!(runs(&node, ACME).is_empty());
}

/// A time of the API in milliseconds since 1970.
fn ms(time: &Option<isoflow_client::prost_types::Timestamp>) -> u64 {
    isoflow_client::time::to_ms(time.as_ref())
}
