//! `isoflowctl` against a real `isoflow serve` (role `all`, no etcd): the
//! seed integration deployed, run and read back through the CLI, as a user
//! does it. The server binary is the workspace's own `isoflow`, built
//! beside `isoflowctl` by `cargo build --workspace --tests` (the test
//! command builds both).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use isoflow_testkit::process::Process;
use isoflow_testkit::{HttpFixture, free_port, seed_orders_expected};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn server_binary() -> PathBuf {
    let ctl = Path::new(env!("CARGO_BIN_EXE_isoflowctl"));
    let server = ctl.with_file_name("isoflow");
    assert!(
        server.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --tests)",
        server.display()
    );
    server
}

fn ctl(server: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isoflowctl"))
        .args(["--server", server])
        .args(args)
        .output()
        .expect("isoflowctl runs")
}

/// The coordinator's vault key (32 bytes, base64).
const VAULT_KEY: &str = "c2VjcmV0LWtleS1mb3ItdGhlLXRlc3QtdmF1bHQtMDE=";

fn ctl_with_stdin(server: &str, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut child = Command::new(env!("CARGO_BIN_EXE_isoflowctl"))
        .args(["--server", server])
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("isoflowctl runs");
    child
        .stdin
        .take()
        .expect("a stdin")
        .write_all(stdin.as_bytes())
        .expect("the secret is written");
    child.wait_with_output().expect("isoflowctl ends")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn deploys_runs_and_shows_the_seed_integration() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("isoflow.toml");
    let fixture = HttpFixture::start();
    fixture.serve_seed("erp-t0ken");
    std::fs::write(
        &config,
        format!(
            "role = \"all\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [egress]\nallow = [\"127.0.0.1\"]\n\
             [vault.key]\nid = \"local-1\"\nenv = \"ISOFLOW_VAULT_KEY\"\n",
            dir.path().join("data").display(),
        ),
    )
    .expect("write the config");
    let mut node = Process::spawn(
        Command::new(server_binary())
            .args(["serve", "--config"])
            .arg(&config)
            .env("ISOFLOW_VAULT_KEY", VAULT_KEY),
    );
    node.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
    let server = format!("http://127.0.0.1:{port}");

    // The ERP token goes into the node's vault, read from stdin.
    let origin = fixture.url("");
    let set = ctl_with_stdin(
        &server,
        &[
            "credentials",
            "set",
            "erp-api",
            "--origin",
            &origin,
            "--allow-plain-http",
        ],
        "erp-t0ken\n",
    );
    assert!(set.status.success(), "{}", text(&set.stderr));
    assert!(
        text(&set.stdout).contains("credential erp-api version 1 (bearer, key local-1)"),
        "{}",
        text(&set.stdout)
    );

    let seed = repo().join("examples/integrations/seed.yaml");
    let deployed = ctl(&server, &["deploy", seed.to_str().expect("utf-8 path")]);
    assert!(deployed.status.success(), "{}", text(&deployed.stderr));
    assert!(
        text(&deployed.stdout).contains("orders-to-erp"),
        "{}",
        text(&deployed.stdout)
    );

    let input = json!({
        "export_url": fixture.url("/orders.xml"),
        "target_url": fixture.url("/erp/orders"),
    })
    .to_string();
    let started = ctl(
        &server,
        &["start", "orders-to-erp", "--input", &input, "--wait"],
    );
    assert_eq!(started.status.code(), Some(0), "{}", text(&started.stderr));
    let output: Value = serde_json::from_slice(&started.stdout).expect("the output is JSON");
    assert_eq!(output["orders"], seed_orders_expected(100).open);
    let progress = text(&started.stderr);
    for step in ["fetch", "parse", "filter", "enrich", "aggregate", "post"] {
        assert!(
            progress.contains(step),
            "no progress for {step}:\n{progress}"
        );
    }
    let run_id = progress
        .lines()
        .find_map(|l| {
            l.strip_prefix("run ")
                .and_then(|r| r.split_whitespace().next())
        })
        .expect("a `run <id> ...` line")
        .to_owned();

    let runs = ctl(&server, &["runs"]);
    assert!(runs.status.success());
    assert!(
        text(&runs.stdout).contains(&run_id),
        "{}",
        text(&runs.stdout)
    );

    // Credentials: listed without their secret; rotated; a rotated token
    // is what the next run sends; deleted.
    let listed = ctl(&server, &["credentials", "list"]);
    let listing = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(
        listing.contains("erp-api\tbearer\t-\t1\tlocal-1") && !listing.contains("erp-t0ken"),
        "{listing}"
    );
    let rotated = ctl_with_stdin(
        &server,
        &["credentials", "rotate", "erp-api"],
        "erp-t0ken-2",
    );
    assert!(rotated.status.success(), "{}", text(&rotated.stderr));
    assert!(
        text(&rotated.stdout).contains("version 2"),
        "{}",
        text(&rotated.stdout)
    );
    fixture.serve_seed("erp-t0ken-2");
    let second = ctl(
        &server,
        &["start", "orders-to-erp", "--input", &input, "--wait"],
    );
    assert_eq!(second.status.code(), Some(0), "{}", text(&second.stderr));
    let posts = fixture.requests("POST", "/erp/orders");
    assert_eq!(
        posts.last().and_then(|r| r.header("authorization")),
        Some("Bearer erp-t0ken-2"),
        "the rotated token is sent"
    );
    // Pages: one run per page, the token leads to the older one.
    let first_page = ctl(&server, &["runs", "--limit", "1"]);
    let more = text(&first_page.stderr);
    let token = more
        .split("--page-token ")
        .nth(1)
        .map(str::trim)
        .expect("a next page token")
        .to_owned();
    let older = ctl(&server, &["runs", "--limit", "1", "--page-token", &token]);
    assert!(
        text(&older.stdout).contains(&run_id),
        "{}",
        text(&older.stdout)
    );
    assert!(!text(&first_page.stdout).contains(&run_id), "newest first");
    let plain = ctl_with_stdin(
        &server,
        &["credentials", "set", "other", "--origin", &origin],
        "x",
    );
    assert_eq!(plain.status.code(), Some(2));
    assert!(
        text(&plain.stderr).contains("plain http"),
        "{}",
        text(&plain.stderr)
    );
    let deleted = ctl(&server, &["credentials", "delete", "erp-api"]);
    assert!(deleted.status.success(), "{}", text(&deleted.stderr));
    let again = ctl(&server, &["credentials", "delete", "erp-api"]);
    assert_eq!(again.status.code(), Some(2), "nothing left to delete");
    let shown = ctl(&server, &["show", &run_id]);
    assert!(shown.status.success(), "{}", text(&shown.stderr));
    assert!(
        text(&shown.stdout).contains("succeeded"),
        "{}",
        text(&shown.stdout)
    );
    // The run's history: its input, what each step handed the next, its logs.
    let given = ctl(&server, &["input", &run_id]);
    let given: Value = serde_json::from_slice(&given.stdout).expect("the input is JSON");
    assert_eq!(given, serde_json::from_str::<Value>(&input).expect("json"));
    let fetched = ctl(&server, &["step-output", &run_id, "filter"]);
    assert!(fetched.status.success(), "{}", text(&fetched.stderr));
    let filtered: Value = serde_json::from_slice(&fetched.stdout).expect("JSON");
    assert!(filtered.is_object() || filtered.is_array(), "{filtered}");
    let missing = ctl(&server, &["step-output", &run_id, "nope"]);
    assert_eq!(missing.status.code(), Some(2), "{}", text(&missing.stderr));
    let logs = ctl(&server, &["logs", &run_id]);
    assert!(logs.status.success(), "{}", text(&logs.stderr));
    assert!(!text(&logs.stdout).is_empty(), "the seed's steps log");

    let fetched = ctl(&server, &["output", &run_id]);
    let again: Value = serde_json::from_slice(&fetched.stdout).expect("JSON");
    assert_eq!(again, output);

    // A finished run cannot be cancelled: one sentence, exit 2.
    let cancelled = ctl(&server, &["cancel", &run_id]);
    assert_eq!(cancelled.status.code(), Some(2));
    let error = text(&cancelled.stderr);
    assert!(
        error.starts_with("error: ") && error.contains("already ended"),
        "{error}"
    );

    // An integration with a mistake: the validator's sentence, exit 2.
    let broken = dir.path().join("broken.yaml");
    std::fs::write(
        &broken,
        std::fs::read_to_string(&seed)
            .expect("the seed")
            .replace("type: http", "type: htp"),
    )
    .expect("write");
    let refused = ctl(&server, &["deploy", broken.to_str().expect("utf-8 path")]);
    assert_eq!(refused.status.code(), Some(2));
    assert!(
        text(&refused.stderr).contains("broken.yaml:"),
        "{}",
        text(&refused.stderr)
    );
    drop(node);
}

#[test]
fn talks_to_a_server_with_tls_given_its_ca() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let ca = isoflow_testkit::tls::Ca::new("isoflowctl test CA");
    let ca_file = ca.write(dir.path(), "ca");
    let server_cert = ca.server(&["127.0.0.1"]).write(dir.path(), "server");
    let config = dir.path().join("isoflow.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"all\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n\
             [tls]\ncert = \"{}\"\nkey = \"{}\"\n",
            dir.path().join("data").display(),
            server_cert.cert.display(),
            server_cert.key.display()
        ),
    )
    .expect("write the config");
    let mut node = Process::spawn(
        Command::new(server_binary())
            .args(["serve", "--config"])
            .arg(&config),
    );
    node.wait_for_stderr_line(LONG, |l| l.contains("listening on https://"));
    let server = format!("https://127.0.0.1:{port}");
    let ca_arg = ca_file.to_str().expect("utf-8 path");

    let listed = ctl(&server, &["--ca", ca_arg, "runs"]);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert_eq!(text(&listed.stderr), "no runs\n");

    let from_env = Command::new(env!("CARGO_BIN_EXE_isoflowctl"))
        .args(["--server", &server, "integrations"])
        .env("ISOFLOW_CA", &ca_file)
        .output()
        .expect("isoflowctl runs");
    assert!(from_env.status.success(), "{}", text(&from_env.stderr));

    // Without the CA, the server's certificate is not trusted: exit 2 and
    // one line that says so.
    let untrusted = Command::new(env!("CARGO_BIN_EXE_isoflowctl"))
        .args(["--server", &server, "runs"])
        .env_remove("ISOFLOW_CA")
        .output()
        .expect("isoflowctl runs");
    assert_eq!(untrusted.status.code(), Some(2));
    let error = text(&untrusted.stderr);
    assert!(
        error.starts_with(&format!("error: cannot connect to {server}"))
            && error.contains("certificate"),
        "{error}"
    );
    drop(node);
}
