//! Tenants through the real binary: an `all` node with an admin token, a
//! tenant from the configuration (`acme`) and tenants created through the
//! admin API. Each test checks what a caller gets (codes, sentences,
//! statuses) and what the node did: who sees which runs, what quotas let
//! through, which runs retention deleted and how much disk came back.

use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use isoflow_client::{AdminClient, Client, ConnectOptions, Error};
use isoflow_proto::time::from_ms;
use isoflow_proto::v1;
use isoflow_testkit::process::Process;
use isoflow_testkit::webhook;
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, free_port};
use serde_json::{Value, json};
use tonic::Code;

const LONG: Duration = Duration::from_secs(120);
const ADMIN: &str = "admin-token-0123456789abcdef";
const ACME: &str = "acme-token-0123456789abcdef";
const VAULT_KEY: &str = "dGVuYW50cy10ZXN0LXZhdWx0LWtleS0wMTIzNDU2Nzg=";
const HOOK_TOKEN: &str = "path-token-6f1d0c2a9b8e7d";

const ECHO: &str = r#"
apiVersion: isoflow.dev/v1
name: echo
version: 1
triggers:
  - id: by-token
    type: webhook
    auth: token
    secret: hook-token
steps:
  - id: wrap
    type: code
    source: "export default (input) => ({ got: input })"
"#;

const FAILING: &str = r#"
apiVersion: isoflow.dev/v1
name: failing
version: 1
steps:
  - id: boom
    type: code
    source: "export default () => { throw new Error('no'); }"
"#;

const TICKER: &str = r#"
apiVersion: isoflow.dev/v1
name: ticker
version: 1
triggers:
  - id: every-second
    type: cron
    schedule: "* * * * * *"
    overlap: allow
steps:
  - id: wrap
    type: code
    source: "export default (input) => input"
"#;

struct Node {
    dir: tempfile::TempDir,
    process: Process,
    api: String,
    http: u16,
}

/// An `all` node with `acme`'s token in its configuration, the admin token
/// (when `admin`), webhooks, and `extra` TOML at the end.
fn start(admin: bool, extra: &str) -> Node {
    let dir = tempfile::tempdir().expect("a temp dir");
    let (api, http) = (free_port(), free_port());
    let admin_file = dir.path().join("admin-token");
    std::fs::write(&admin_file, format!("{ADMIN}\n")).expect("write the admin token");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let admin_line = if admin {
        format!("admin_token_file = \"{}\"\n", admin_file.display())
    } else {
        String::new()
    };
    let config = dir.path().join("all.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"all\"\ndata_dir = \"{}\"\nmax_payload_bytes = 8388608\n[api]\nlisten = \"127.0.0.1:{api}\"\n\
             [http]\nlisten = \"127.0.0.1:{http}\"\n[egress]\nallow = [\"127.0.0.1\"]\n\
             [vault.key]\nid = \"k1\"\nenv = \"ISOFLOW_VAULT_KEY\"\n\
             [auth]\n{admin_line}[[auth.tokens]]\ntenant = \"acme\"\ntoken = \"{ACME}\"\n{extra}",
            dir.path().join("data").display()
        ),
    )
    .expect("write the config");
    let mut process = Process::spawn(
        Command::new(env!("CARGO_BIN_EXE_isoflow"))
            .args(["serve", "--config"])
            .arg(&config)
            .env("ISOFLOW_VAULT_KEY", VAULT_KEY)
            .env("RUST_LOG", "info"),
    );
    process.wait_for_stderr_line(LONG, |l| l.contains("listening on 127.0.0.1"));
    Node {
        dir,
        process,
        api: format!("http://127.0.0.1:{api}"),
        http,
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

impl Node {
    async fn client(&self, token: &str) -> Client {
        Client::connect(&self.api, Some(token))
            .await
            .expect("connects")
    }

    async fn admin(&self, token: &str) -> AdminClient {
        AdminClient::connect_with(&self.api, &ConnectOptions::new().token(token))
            .await
            .expect("connects")
    }

    /// A created tenant and a token issued for it.
    async fn tenant(&self, name: &str, quotas: v1::TenantQuotas) -> String {
        let admin = self.admin(ADMIN).await;
        admin.create_tenant(name, quotas).await.expect("created");
        admin.issue_token(name, "test").await.expect("issued").token
    }

    /// Deploys ECHO for the token's tenant, with its webhook's secret.
    async fn echo(&self, token: &str) {
        let client = self.client(token).await;
        client
            .deploy(ECHO, "echo.yaml", HashMap::new())
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
            .expect("the webhook's secret is stored");
    }

    fn data_bytes(&self) -> u64 {
        dir_bytes(&self.dir.path().join("data"))
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&entry.path()),
            _ => entry.metadata().map_or(0, |m| m.len()),
        })
        .sum()
}

fn code<T: std::fmt::Debug>(result: Result<T, Error>) -> (Code, String) {
    let error = result.expect_err("refused");
    (error.code().unwrap_or(Code::Ok), error.to_string())
}

/// A JSON POST to the HTTP listener: status, headers, body.
fn post(port: u16, path: &str, body: &[u8]) -> (u16, HashMap<String, String>, Value) {
    webhook::post(port, path, &[("Content-Type", "application/json")], body)
}

fn hook(tenant: &str) -> String {
    format!("/hooks/{tenant}/echo/by-token/{HOOK_TOKEN}")
}

fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .expect("after 1970")
            .as_millis(),
    )
    .expect("fits")
}

/// Every page of a filtered listing, joined.
async fn all_runs(client: &Client, mut request: v1::ListRunsRequest) -> Vec<v1::Run> {
    let mut runs = Vec::new();
    loop {
        let page = client.list_runs(request.clone()).await.expect("lists");
        runs.extend(page.runs);
        if page.next_page_token.is_empty() {
            return runs;
        }
        request.page_token = page.next_page_token;
    }
}

#[test]
fn admin_calls_need_the_admin_token_and_tenants_never_see_each_other() {
    let node = start(true, "");
    runtime().block_on(async {
        // Who may call the admin API.
        let (wrong, why) = code(node.admin("not-the-admin-token-000").await.tenants().await);
        assert_eq!(wrong, Code::Unauthenticated, "{why}");
        let (tenant, why) = code(node.admin(ACME).await.tenants().await);
        assert_eq!(tenant, Code::PermissionDenied, "{why}");
        assert!(
            why.contains("tenant's token cannot call the admin API"),
            "{why}"
        );

        let admin = node.admin(ADMIN).await;
        let globex = admin
            .create_tenant("globex", v1::TenantQuotas::default())
            .await
            .expect("created");
        assert!(!globex.disabled);
        // Bad input: one sentence each.
        let (duplicate, why) = code(
            admin
                .create_tenant("globex", v1::TenantQuotas::default())
                .await,
        );
        assert_eq!(duplicate, Code::AlreadyExists, "{why}");
        assert_eq!(why, "tenant \"globex\" already exists");
        let (invalid, why) = code(
            admin
                .create_tenant("Bad_Name", v1::TenantQuotas::default())
                .await,
        );
        assert_eq!(invalid, Code::InvalidArgument, "{why}");
        assert!(
            why.starts_with("tenant name \"Bad_Name\" is not valid"),
            "{why}"
        );
        let (unknown, why) = code(admin.issue_token("nobody", "").await);
        assert_eq!(unknown, Code::NotFound, "{why}");
        assert!(why.starts_with("tenant \"nobody\" does not exist"), "{why}");
        let (unknown, _) = code(admin.set_disabled("nobody", true).await);
        assert_eq!(unknown, Code::NotFound);
        let names: Vec<(String, bool)> = admin
            .tenants()
            .await
            .expect("listed")
            .into_iter()
            .map(|t| (t.name, t.from_config))
            .collect();
        assert_eq!(
            names,
            [("acme".to_owned(), true), ("globex".to_owned(), false)]
        );

        // An issued token works like a configured one, for its tenant.
        let issued = admin.issue_token("globex", "ci").await.expect("issued");
        let info = issued.info.clone().expect("its info");
        assert!(issued.token.starts_with("ifl_"));
        assert!(!format!("{issued:?}").contains(&issued.token));
        let listed = admin.tokens(Some("globex")).await.expect("listed");
        assert_eq!(listed, std::slice::from_ref(&info));
        assert!(admin.tokens(Some("acme")).await.expect("listed").is_empty());
        assert!(
            !node.process.stderr().contains(&issued.token),
            "the token is in no log"
        );

        let g = node.client(&issued.token).await;
        g.deploy(
            &ECHO.replace("name: echo", "name: globex-only"),
            "g.yaml",
            HashMap::new(),
        )
        .await
        .expect("deploys");
        let g_run = g
            .start_run("globex-only", None, &json!({"secret": "globex"}))
            .await
            .expect("starts");
        assert_eq!(g_run.tenant, "globex");
        g.wait(&g_run.run_id).await.expect("ends");

        let a = node.client(ACME).await;
        node.echo(ACME).await;
        let a_run = a.start_run("echo", None, &json!(1)).await.expect("starts");
        a.wait(&a_run.run_id).await.expect("ends");

        // Neither sees the other's runs or integrations, under any call.
        for (client, other) in [(&a, &g_run.run_id), (&g, &a_run.run_id)] {
            let id = other.as_str();
            let mut codes = vec![
                code(client.run(id).await).0,
                code(client.input(id).await).0,
                code(client.output(id).await).0,
                code(client.step_output(id, "wrap").await).0,
                code(client.logs(id).await).0,
                code(client.cancel(id).await).0,
            ];
            codes.push(match client.watch(id, true).await {
                Err(e) => e.code().unwrap_or(Code::Ok),
                Ok(_) => Code::Ok,
            });
            assert!(codes.iter().all(|c| *c == Code::NotFound), "{codes:?}");
            let listed = all_runs(client, v1::ListRunsRequest::default()).await;
            assert!(listed.iter().all(|r| r.run_id != id), "{listed:?}");
        }
        assert_eq!(
            code(a.integration("globex-only", None).await).0,
            Code::NotFound
        );
        let (_, why) = code(a.input(&g_run.run_id).await);
        assert!(
            !why.contains("globex"),
            "nothing of the other tenant: {why}"
        );
        assert_eq!(
            g.integrations().await.expect("listed").len(),
            1,
            "globex sees its own integration only"
        );

        // A revoked token is refused from the next call on.
        let revoked = admin.revoke_token(&info.token_id).await.expect("revoked");
        assert_eq!(revoked.tenant, "globex");
        let (refused, why) = code(g.runs(None).await);
        assert_eq!(refused, Code::Unauthenticated, "{why}");
        assert_eq!(
            code(admin.revoke_token(&info.token_id).await).0,
            Code::NotFound
        );

        // A disabled tenant: tokens refused, webhooks 404, cron silent.
        let token = admin.issue_token("globex", "").await.expect("issued").token;
        node.echo(&token).await;
        let g = node.client(&token).await;
        g.deploy(TICKER, "ticker.yaml", HashMap::new())
            .await
            .expect("deploys");
        let (status, _, body) = post(node.http, &hook("globex"), b"{}");
        assert_eq!(status, 202, "{body}");
        let disabled_at = now_ms();
        let disabled = admin.set_disabled("globex", true).await.expect("disabled");
        assert!(disabled.disabled);
        let (refused, why) = code(g.runs(None).await);
        assert_eq!(refused, Code::PermissionDenied, "{why}");
        assert_eq!(
            why,
            "tenant \"globex\" is disabled: its tokens are refused until an admin enables it"
        );
        let (status, _, body) = post(node.http, &hook("globex"), b"{}");
        assert_eq!(status, 404, "{body}");
        std::thread::sleep(Duration::from_secs(3));
        let enabled_at = now_ms();
        admin.set_disabled("globex", false).await.expect("enabled");
        let (status, _, body) = post(node.http, &hook("globex"), b"{}");
        assert_eq!(status, 202, "enabled again: {body}");
        // No tick fired while it was disabled (a second of slack for the
        // tick in flight when it was disabled); ticks fire again after.
        let gap = all_runs(
            &g,
            v1::ListRunsRequest {
                integration: "ticker".into(),
                create_time_from: from_ms(disabled_at + 1_000),
                create_time_to: from_ms(enabled_at),
                ..v1::ListRunsRequest::default()
            },
        )
        .await;
        assert!(gap.is_empty(), "ticks fired while disabled: {gap:?}");
        let deadline = Instant::now() + LONG;
        loop {
            let after = all_runs(
                &g,
                v1::ListRunsRequest {
                    integration: "ticker".into(),
                    create_time_from: from_ms(enabled_at),
                    ..v1::ListRunsRequest::default()
                },
            )
            .await;
            if !after.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "no tick after enabling");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
}

#[test]
fn a_node_without_an_admin_token_refuses_every_admin_call() {
    let node = start(false, "");
    runtime().block_on(async {
        for token in [ADMIN, ACME] {
            let (refused, why) = code(node.admin(token).await.tenants().await);
            assert_eq!(refused, Code::PermissionDenied, "{why}");
            assert!(why.contains("this node has no admin token"), "{why}");
        }
        // The configured tenant is served as before.
        node.client(ACME)
            .await
            .runs(None)
            .await
            .expect("acme's runs");
    });
}

const HELD: &str = r#"
apiVersion: isoflow.dev/v1
name: held
version: 1
steps:
  - id: wait
    type: http
    method: GET
    url: "{{ input.url }}"
"#;

#[test]
fn quotas_cap_payloads_webhook_rates_and_runs_in_flight_per_tenant() {
    let node = start(true, "");
    runtime().block_on(async {
        let flood = node
            .tenant(
                "flood",
                v1::TenantQuotas {
                    max_payload_bytes: Some(1_000),
                    webhook_runs_per_minute: Some(3),
                    ..v1::TenantQuotas::default()
                },
            )
            .await;
        let calm = node.tenant("calm", v1::TenantQuotas::default()).await;
        node.echo(&flood).await;
        node.echo(&calm).await;
        let (f, c) = (node.client(&flood).await, node.client(&calm).await);

        // The payload cap: the API and webhooks refuse more, for flood only.
        let big = json!({ "pad": "x".repeat(2_000) });
        let (refused, why) = code(f.start_run("echo", None, &big).await);
        assert_eq!(refused, Code::ResourceExhausted, "{why}");
        assert!(why.contains("payload limit of 1000 bytes"), "{why}");
        let body = serde_json::to_vec(&big).expect("json");
        let (status, _, answer) = post(node.http, &hook("flood"), &body);
        assert_eq!(status, 413, "{answer}");
        let run = c
            .start_run("echo", None, &big)
            .await
            .expect("calm has no cap");
        c.wait(&run.run_id).await.expect("ends");

        // Webhook runs per minute: flood gets 3, then 429 with when to
        // retry; calm's webhook still starts, and its run ends.
        let mut statuses = Vec::new();
        let mut limited = None;
        for _ in 0..10 {
            let (status, headers, answer) = post(node.http, &hook("flood"), b"{}");
            statuses.push(status);
            if status == 429 {
                limited = Some((headers, answer));
            }
        }
        assert_eq!(
            statuses.iter().filter(|s| **s == 202).count(),
            3,
            "{statuses:?}"
        );
        assert_eq!(
            statuses.iter().filter(|s| **s == 429).count(),
            7,
            "{statuses:?}"
        );
        let (headers, answer) = limited.expect("a 429");
        let retry: u64 = headers["retry-after"].parse().expect("seconds");
        assert!(
            (1..=21).contains(&retry),
            "3 a minute: one every 20 s, {retry}"
        );
        assert_eq!(answer["retry_after_seconds"], json!(retry));
        assert!(
            answer["error"]
                .as_str()
                .unwrap_or_default()
                .contains("has started its 3 webhook runs this minute"),
            "{answer}"
        );
        let asked = Instant::now();
        let (status, _, answer) = post(node.http, &hook("calm"), b"{\"n\": 1}");
        assert_eq!(status, 202, "calm is not limited by flood: {answer}");
        let id = answer["run_id"].as_str().expect("a run id");
        let ended = c.wait(id).await.expect("ends");
        assert_eq!(ended.status(), v1::RunStatus::Succeeded);
        println!(
            "calm's webhook run ended {} ms after its request, during flood's 429s",
            asked.elapsed().as_millis()
        );

        // Runs in flight: flood may have 1 on a worker, calm the default
        // (no limit); flood's others wait in its queue.
        let admin = node.admin(ADMIN).await;
        admin
            .set_quotas(
                "flood",
                v1::TenantQuotas {
                    runs_in_flight: Some(1),
                    ..v1::TenantQuotas::default()
                },
            )
            .await
            .expect("set");
        let server = HttpFixture::start();
        let gate = Gate::new();
        for path in ["/flood", "/calm"] {
            server.route(
                "GET",
                path,
                Responder::Hold(gate.clone(), Reply::json(200, &json!({}))),
            );
        }
        for client in [&f, &c] {
            client
                .deploy(HELD, "held.yaml", HashMap::new())
                .await
                .expect("deploys");
        }
        let mut held = Vec::new();
        for _ in 0..3 {
            let input = json!({ "url": server.url("/flood") });
            held.push((
                f.clone(),
                f.start_run("held", None, &input).await.expect("starts"),
            ));
        }
        for _ in 0..2 {
            let input = json!({ "url": server.url("/calm") });
            held.push((
                c.clone(),
                c.start_run("held", None, &input).await.expect("starts"),
            ));
        }
        assert!(gate.wait_for_waiting(3, LONG), "{}", node.process.stderr());
        // Give a second flood run every chance to start: it must not.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(gate.waiting(), 3, "one of flood's and both of calm's");
        assert_eq!(
            (server.count("GET", "/flood"), server.count("GET", "/calm")),
            (1, 2),
            "flood's other two wait in its queue"
        );
        gate.release();
        for (client, run) in held {
            let ended = client.wait(&run.run_id).await.expect("ends");
            assert_eq!(ended.status(), v1::RunStatus::Succeeded, "{ended:?}");
        }
    });
}

#[test]
fn list_runs_filters_by_integration_version_status_and_time_through_the_api_and_the_cli() {
    let node = start(true, "");
    let started = now_ms();
    runtime().block_on(async {
        let a = node.client(ACME).await;
        node.echo(ACME).await;
        a.deploy(FAILING, "failing.yaml", HashMap::new())
            .await
            .expect("deploys");
        a.deploy(
            &ECHO.replace("version: 1", "version: 2"),
            "echo.yaml",
            HashMap::new(),
        )
        .await
        .expect("deploys");
        for (name, version) in [
            ("echo", 1),
            ("echo", 2),
            ("echo", 2),
            ("failing", 1),
            ("failing", 1),
        ] {
            let run = a
                .start_run(name, Some(version), &json!(1))
                .await
                .expect("starts");
            a.wait(&run.run_id).await.expect("ends");
        }
        let count = |request: v1::ListRunsRequest| {
            let a = a.clone();
            async move { all_runs(&a, request).await.len() }
        };
        let failed = v1::ListRunsRequest {
            status: v1::RunStatus::Failed as i32,
            ..v1::ListRunsRequest::default()
        };
        assert_eq!(count(failed.clone()).await, 2);
        let echo_v2 = v1::ListRunsRequest {
            integration: "echo".into(),
            version: 2,
            status: v1::RunStatus::Succeeded as i32,
            ..v1::ListRunsRequest::default()
        };
        assert_eq!(count(echo_v2).await, 2);
        // A page at a time: one run a page, each token leads on.
        let page = a
            .list_runs(v1::ListRunsRequest {
                page_size: 1,
                ..failed.clone()
            })
            .await
            .expect("lists");
        assert_eq!(page.runs.len(), 1);
        assert!(!page.next_page_token.is_empty());
        let second = a
            .list_runs(v1::ListRunsRequest {
                page_size: 1,
                page_token: page.next_page_token,
                ..failed.clone()
            })
            .await
            .expect("lists");
        assert_eq!(second.runs.len(), 1);
        assert_ne!(second.runs[0].run_id, page.runs[0].run_id);
        assert_eq!(
            count(v1::ListRunsRequest {
                create_time_from: from_ms(started),
                create_time_to: from_ms(now_ms() + 1),
                ..v1::ListRunsRequest::default()
            })
            .await,
            5
        );
        assert_eq!(
            count(v1::ListRunsRequest {
                create_time_from: from_ms(now_ms() + 3_600_000),
                ..v1::ListRunsRequest::default()
            })
            .await,
            0
        );
        let (bad, why) = code(
            a.list_runs(v1::ListRunsRequest {
                create_time_from: from_ms(10),
                create_time_to: from_ms(5),
                ..v1::ListRunsRequest::default()
            })
            .await,
        );
        assert_eq!(bad, Code::InvalidArgument, "{why}");
    });

    // The CLI, as an operator types it.
    let ctl = Path::new(env!("CARGO_BIN_EXE_isoflow")).with_file_name("isoflowctl");
    assert!(
        ctl.exists(),
        "build isoflowctl too (cargo build --workspace)"
    );
    let output = Command::new(&ctl)
        .args([
            "--server",
            node.api.as_str(),
            "runs",
            "--integration",
            "failing",
            "--status",
            "failed",
            "--since",
            "1h",
        ])
        .env("ISOFLOW_TOKEN", ACME)
        .output()
        .expect("isoflowctl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let rows: Vec<&str> = stdout.lines().skip(1).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(
        rows.iter()
            .all(|r| r.contains("failing") && r.contains("failed")),
        "{stdout}"
    );

    // Admin commands take the admin token from a file, never argv.
    let token_file = node.dir.path().join("admin-token");
    let admin = |args: &[&str]| {
        let output = Command::new(&ctl)
            .args(["--server", node.api.as_str(), "admin", "--admin-token-file"])
            .arg(&token_file)
            .args(args)
            .output()
            .expect("isoflowctl admin");
        (
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };
    let (status, out, err) = admin(&["tenants", "create", "initech", "--runs-in-flight", "2"]);
    assert_eq!(status, Some(0), "{out}{err}");
    let (status, token, err) = admin(&["tokens", "issue", "initech", "--label", "cli"]);
    assert_eq!(status, Some(0), "{err}");
    assert!(err.contains("shown this once"), "{err}");
    let (_, list, _) = admin(&["tenants", "list"]);
    assert!(
        list.lines()
            .any(|l| l.starts_with("initech\tenabled\tadmin\t2\t")),
        "{list}"
    );
    let output = Command::new(&ctl)
        .args(["--server", node.api.as_str(), "runs"])
        .env("ISOFLOW_TOKEN", token.trim())
        .output()
        .expect("isoflowctl runs");
    assert!(output.status.success(), "the issued token works");
    let (_, tokens, _) = admin(&["tokens", "list", "--tenant", "initech"]);
    let id = tokens
        .lines()
        .nth(1)
        .and_then(|l| l.split('\t').next())
        .expect("a token row")
        .to_owned();
    let (status, out, _) = admin(&["tokens", "revoke", &id]);
    assert_eq!(status, Some(0));
    assert!(out.contains("revoked"), "{out}");
    let (status, _, err) = admin(&["tenants", "disable", "nobody"]);
    assert_eq!(status, Some(2));
    assert!(
        err.starts_with("error: tenant \"nobody\" does not exist"),
        "{err}"
    );
}

#[test]
fn retention_deletes_old_finished_runs_from_every_call_and_gives_the_disk_space_back() {
    let node = start(
        true,
        "[retention]\nkeep = \"8s\"\nsweep_interval = \"1s\"\n",
    );
    let server = HttpFixture::start();
    let gate = Gate::new();
    server.route(
        "GET",
        "/held",
        Responder::Hold(gate.clone(), Reply::json(200, &json!({}))),
    );
    runtime().block_on(async {
        let keeper = node
            .tenant(
                "keeper",
                v1::TenantQuotas {
                    retention: Some(isoflow_client::prost_types::Duration::default()),
                    ..v1::TenantQuotas::default()
                },
            )
            .await;
        node.echo(&keeper).await;
        let k = node.client(&keeper).await;
        let kept = k.start_run("echo", None, &json!(1)).await.expect("starts");
        k.wait(&kept.run_id).await.expect("ends");

        let a = node.client(ACME).await;
        node.echo(ACME).await;
        a.deploy(HELD, "held.yaml", HashMap::new())
            .await
            .expect("deploys");
        // Still running when the others expire: never deleted.
        let running = a
            .start_run("held", None, &json!({ "url": server.url("/held") }))
            .await
            .expect("starts");
        assert!(gate.wait_for_waiting(1, LONG));
        let mut old = Vec::new();
        for i in 0..7 {
            // 400 KB each (BlobDB), the last 1.5 MB (its own file); each
            // is stored as the input, the step's output and the run's.
            let size = if i == 6 { 1_500_000 } else { 400_000 };
            let input = json!({ "pad": "x".repeat(size) });
            let run = a.start_run("echo", None, &input).await.expect("starts");
            old.push(run.run_id);
        }
        for id in &old {
            let ended = a.wait(id).await.expect("ends");
            assert_eq!(ended.status(), v1::RunStatus::Succeeded);
        }
        let before = node.data_bytes();
        // Gone from every call once the sweep has seen them.
        let deadline = Instant::now() + LONG;
        for id in &old {
            while a.run(id).await.is_ok() {
                assert!(Instant::now() < deadline, "run {id} was never deleted");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        for id in &old {
            let id = id.as_str();
            let mut codes = vec![
                code(a.run(id).await).0,
                code(a.input(id).await).0,
                code(a.output(id).await).0,
                code(a.step_output(id, "wrap").await).0,
                code(a.logs(id).await).0,
                code(a.cancel(id).await).0,
            ];
            codes.push(match a.watch(id, true).await {
                Err(e) => e.code().unwrap_or(Code::Ok),
                Ok(_) => Code::Ok,
            });
            assert!(codes.iter().all(|c| *c == Code::NotFound), "{codes:?}");
        }
        let listed: Vec<String> = all_runs(&a, v1::ListRunsRequest::default())
            .await
            .into_iter()
            .map(|r| r.run_id)
            .collect();
        assert_eq!(
            listed,
            std::slice::from_ref(&running.run_id),
            "only the unfinished run is left"
        );
        assert!(
            k.run(&kept.run_id).await.is_ok(),
            "keeper keeps its runs forever"
        );

        // The space comes back once the sweep has compacted the store.
        let deadline = Instant::now() + LONG;
        let mut after = node.data_bytes();
        while after + 4_000_000 >= before {
            assert!(
                Instant::now() < deadline,
                "the payloads' space never came back: {before} -> {after} bytes\n{}",
                node.process.stderr()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
            after = node.data_bytes();
        }
        // Deleting a run removes its payload files at once: the space can
        // come back before the compaction that follows has finished and
        // said so.
        while !node.process.stderr().contains("retention: store compacted") {
            assert!(
                Instant::now() < deadline,
                "the sweep never said it compacted the store:\n{}",
                node.process.stderr()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // For the figure only: what a settled folder holds.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = node.data_bytes();
        println!(
            "data folder: {before} bytes with the 7 runs (about 9 MB of payloads), \
             {after} bytes after retention deleted them and compacted"
        );

        gate.release();
        let ended = a.wait(&running.run_id).await.expect("ends");
        assert_eq!(ended.status(), v1::RunStatus::Succeeded);
    });
}
