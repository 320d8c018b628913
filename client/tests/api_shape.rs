//! The API's shape as a client library sees it, against a real
//! `isoflow serve` (role `all`): lists in pages, times as
//! `google.protobuf.Timestamp`, log levels as an enum, and a refused
//! definition's problems in `google.rpc` details.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use isoflow_client::v1::isoflow_client::IsoflowClient;
use isoflow_client::{Client, time, v1};
use isoflow_testkit::free_port;
use isoflow_testkit::process::Process;

const LONG: Duration = Duration::from_secs(120);

/// The workspace's own `isoflow`, built beside `isoflowctl`.
fn server_binary() -> PathBuf {
    let server = Path::new(env!("CARGO_BIN_EXE_isoflowctl")).with_file_name("isoflow");
    assert!(
        server.exists(),
        "{} is missing: build the workspace first (cargo build --workspace --tests)",
        server.display()
    );
    server
}

fn definition(name: &str) -> String {
    format!(
        "apiVersion: isoflow.dev/v1\nname: {name}\nversion: 1\nsteps:\n  - id: shout\n    \
         type: code\n    source: |\n      export default function (input, ctx) {{\n        \
         console.warn(\"careful\");\n        return {{ said: input.word }};\n      }}\n"
    )
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

#[test]
fn lists_page_times_are_timestamps_and_refusals_carry_details() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let port = free_port();
    let config = dir.path().join("isoflow.toml");
    std::fs::write(
        &config,
        format!(
            "role = \"all\"\ndata_dir = \"{}\"\n[api]\nlisten = \"127.0.0.1:{port}\"\n",
            dir.path().join("data").display(),
        ),
    )
    .expect("write the config");
    let mut node = Process::spawn(
        Command::new(server_binary())
            .args(["serve", "--config"])
            .arg(&config),
    );
    node.wait_for_stderr_line(LONG, |l| l.contains("listening on"));
    let server = format!("http://127.0.0.1:{port}");
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    runtime.block_on(async {
        let client = Client::connect(&server, None).await.expect("connects");
        let before = now_ms();
        for name in ["delta", "alpha", "echo", "charlie", "bravo"] {
            client
                .deploy(&definition(name), &format!("{name}.yaml"), HashMap::new())
                .await
                .expect("deploys");
        }

        // Pages of 2, in name order, each name once; the client's own
        // list follows the pages to the end.
        let mut raw = IsoflowClient::connect(server.clone())
            .await
            .expect("connects");
        let mut names = Vec::new();
        let mut page_token = String::new();
        let mut pages = 0;
        loop {
            let page = raw
                .list_integrations(v1::ListIntegrationsRequest {
                    page_size: 2,
                    page_token,
                })
                .await
                .expect("a page")
                .into_inner();
            pages += 1;
            assert!(page.integrations.len() <= 2);
            names.extend(page.integrations.into_iter().map(|i| i.name));
            if page.next_page_token.is_empty() {
                break;
            }
            page_token = page.next_page_token;
        }
        assert_eq!(names, ["alpha", "bravo", "charlie", "delta", "echo"]);
        assert_eq!(pages, 3);
        let all = client.integrations().await.expect("listed");
        assert_eq!(all.len(), 5);
        let refused = raw
            .list_integrations(v1::ListIntegrationsRequest {
                page_size: 2,
                page_token: "not-a-token".into(),
            })
            .await
            .expect_err("a token the node did not give");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument);

        // Times are Timestamps, and mean what they say.
        let deployed = &all[0];
        let deploy_ms = time::to_ms(deployed.deploy_time.as_ref());
        assert!(deploy_ms >= before && deploy_ms <= now_ms(), "{deployed:?}");

        let run = client
            .start_run("alpha", None, &serde_json::json!({"word": "hi"}))
            .await
            .expect("starts");
        let run = client.wait(&run.run_id).await.expect("ends");
        assert_eq!(run.status(), v1::RunStatus::Succeeded, "{run:?}");
        let created = time::to_ms(run.create_time.as_ref());
        let updated = time::to_ms(run.update_time.as_ref());
        assert!(before <= created && created <= updated, "{run:?}");
        let step = &run.steps[0];
        let (start, end) = (
            time::to_ms(step.start_time.as_ref()),
            time::to_ms(step.end_time.as_ref()),
        );
        assert!(
            created <= start && start <= end && end <= updated,
            "{run:?}"
        );
        let logs = client.logs(&run.run_id).await.expect("logs");
        assert_eq!(logs.len(), 1, "{logs:?}");
        assert_eq!(logs[0].level(), v1::LogLevel::Warn);
        assert!(logs[0].time.is_some());

        // An empty time range is refused, naming both bounds.
        let error = client
            .list_runs(v1::ListRunsRequest {
                create_time_from: time::from_ms(now_ms()),
                create_time_to: time::from_ms(before),
                ..v1::ListRunsRequest::default()
            })
            .await
            .expect_err("an empty range");
        assert_eq!(error.code(), Some(tonic::Code::InvalidArgument));
        assert!(error.to_string().contains("create_time_from"), "{error}");

        // A definition with two mistakes: the sentence, and the problems
        // one by one in the details, each with its file, line and step.
        let broken = "apiVersion: isoflow.dev/v1\nname: broken\nversion: 1\nsteps:\n  \
                      - id: fetch\n    type: http\n    url: \"{{ steps.fech.output }}\"\n  \
                      - id: post\n    type: htp\n";
        let error = client
            .deploy(broken, "flows/broken.yaml", HashMap::new())
            .await
            .expect_err("refused");
        assert_eq!(error.code(), Some(tonic::Code::InvalidArgument));
        assert_eq!(error.reason().as_deref(), Some("INVALID_DEFINITION"));
        let problems = error.problems();
        assert!(problems.len() >= 2, "{problems:?}");
        for problem in &problems {
            assert_eq!(problem.file, "flows/broken.yaml");
            assert!(
                error.to_string().contains(&problem.to_string()),
                "{problem} is not in the message {error}"
            );
        }
        let fetch = problems
            .iter()
            .find(|p| p.step.as_deref() == Some("fetch"))
            .unwrap_or_else(|| panic!("no problem in step fetch: {problems:?}"));
        assert_eq!(fetch.line, 7, "{fetch:?}");
        assert!(fetch.message.contains("fech"), "{fetch:?}");
        let post = problems
            .iter()
            .find(|p| p.step.as_deref() == Some("post"))
            .unwrap_or_else(|| panic!("no problem in step post: {problems:?}"));
        assert_eq!(post.line, 9, "{post:?}");
        let info = error.details();
        let info = info.error_info().expect("an ErrorInfo");
        assert_eq!(
            info.metadata.get("file").map(String::as_str),
            Some("flows/broken.yaml")
        );
        assert_eq!(info.metadata.get("line").map(String::as_str), Some("7"));
        assert_eq!(info.metadata.get("step").map(String::as_str), Some("fetch"));
    });
    drop(node);
}
