//! The run store on a real RocksDB in a temporary folder: records and
//! payloads (inline and in files) come back as written, tenants cannot see
//! each other's runs, the unfinished-run index drives resumption, and a
//! checkpoint acknowledged by a process that is then killed with SIGKILL is
//! there after reopening.

// Test helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use isoflow_engine::store::{
    FILE_PAYLOAD_BYTES, LogRecord, RunRecord, RunStatus, StepRecord, StepStatus, Store,
    StoreConfig, StoreError, now_ms,
};
use serde_json::{Value, json};

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&StoreConfig::new(dir.path())).unwrap()
}

fn step(key: &str, output_bytes: Option<u64>) -> StepRecord {
    StepRecord {
        step_key: key.to_owned(),
        status: StepStatus::Succeeded,
        attempts: 1,
        started_at_ms: now_ms(),
        finished_at_ms: now_ms(),
        output_bytes,
        error: None,
    }
}

fn log(step_key: &str, attempt: u32, message: &str) -> LogRecord {
    LogRecord {
        step_key: step_key.into(),
        attempt,
        level: "info".into(),
        message: message.into(),
        time_ms: now_ms(),
    }
}

#[test]
fn a_run_its_steps_outputs_and_logs_come_back_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut run = RunRecord::new("acme", "orders-to-erp", 3);
    // Over the file threshold: this one is written to its own file.
    let big = Value::String("x".repeat(FILE_PAYLOAD_BYTES + 17));
    {
        let store = open(&dir);
        store
            .create_run(
                &run,
                &json!({"name": "orders-to-erp"}),
                &json!({"since": "2026-11-01"}),
            )
            .unwrap();
        run.status = RunStatus::Running;
        store
            .checkpoint(
                &run,
                vec![(step("fetch", None), Some(&json!("<a/>")))],
                &[log("fetch", 1, "fetched")],
            )
            .unwrap();
        // A failed attempt's logs, then the step and its retry's logs.
        store
            .append_logs(&run, &[log("transform", 1, "first try")])
            .unwrap();
        store
            .checkpoint(
                &run,
                vec![(step("transform", None), Some(&big))],
                &[log("transform", 2, "2 open orders of 3")],
            )
            .unwrap();
        run.status = RunStatus::Succeeded;
        store.update_run(&run, Some(&json!({"ok": true}))).unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.run("acme", &run.run_id).unwrap(), Some(run.clone()));
    assert_eq!(
        store.run_input("acme", &run.run_id).unwrap(),
        Some(json!({"since": "2026-11-01"}))
    );
    assert_eq!(
        store.run_definition("acme", &run.run_id).unwrap(),
        Some(json!({"name": "orders-to-erp"}))
    );
    assert_eq!(
        store.run_output("acme", &run.run_id).unwrap(),
        Some(json!({"ok": true}))
    );
    let steps = store.steps("acme", &run.run_id).unwrap();
    let keys: Vec<_> = steps.iter().map(|s| s.step_key.as_str()).collect();
    assert_eq!(keys, ["fetch", "transform"]);
    // Sizes are those of the stored JSON.
    assert_eq!(steps[0].output_bytes, Some(6));
    assert_eq!(steps[1].output_bytes, Some(FILE_PAYLOAD_BYTES as u64 + 19));
    assert_eq!(
        store.step_output("acme", &run.run_id, "fetch").unwrap(),
        Some(json!("<a/>"))
    );
    assert_eq!(
        store.step_output("acme", &run.run_id, "transform").unwrap(),
        Some(big)
    );
    let files = walk(&dir.path().join("payloads"));
    assert_eq!(
        files.len(),
        1,
        "only the large payload has a file: {files:?}"
    );
    let logs: Vec<_> = store
        .logs("acme", &run.run_id)
        .unwrap()
        .into_iter()
        .map(|l| (l.attempt, l.message))
        .collect();
    assert_eq!(
        logs,
        [
            (1, "fetched".to_owned()),
            (1, "first try".to_owned()),
            (2, "2 open orders of 3".to_owned())
        ]
    );
    assert!(store.unfinished_runs().unwrap().is_empty());
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[test]
fn tenants_see_only_their_own_runs() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let a = RunRecord::new("acme", "sync", 1);
    let b = RunRecord::new("acme-eu", "sync", 1);
    store.create_run(&a, &json!({}), &json!(1)).unwrap();
    store.create_run(&b, &json!({}), &json!(2)).unwrap();
    let listed = |tenant: &str| -> Vec<String> {
        store
            .runs(tenant, 100)
            .unwrap()
            .into_iter()
            .map(|r| r.run_id)
            .collect()
    };
    // "acme" is a prefix of "acme-eu": the separator keeps them apart.
    assert_eq!(listed("acme"), std::slice::from_ref(&a.run_id));
    assert_eq!(listed("acme-eu"), std::slice::from_ref(&b.run_id));
    assert_eq!(store.run("acme", &b.run_id).unwrap(), None);
    assert_eq!(store.run_input("acme-eu", &a.run_id).unwrap(), None);
    assert!(matches!(
        store.runs("ac\0me", 10),
        Err(StoreError::InvalidKey { .. })
    ));
}

#[test]
fn runs_list_newest_first_with_a_limit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut ids = Vec::new();
    for _ in 0..5 {
        let run = RunRecord::new("acme", "sync", 1);
        store.create_run(&run, &json!({}), &Value::Null).unwrap();
        ids.push(run.run_id);
        // UUIDv7 orders by millisecond; make each run's millisecond distinct.
        let t = now_ms();
        while now_ms() == t {
            std::hint::spin_loop();
        }
    }
    let listed: Vec<_> = store
        .runs("acme", 3)
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    let newest: Vec<_> = ids.iter().rev().take(3).cloned().collect();
    assert_eq!(listed, newest);
}

#[test]
fn unfinished_runs_are_those_not_yet_finished() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut done = RunRecord::new("acme", "sync", 1);
    let running = RunRecord::new("globex", "sync", 2);
    store.create_run(&done, &json!({}), &Value::Null).unwrap();
    store
        .create_run(&running, &json!({}), &Value::Null)
        .unwrap();
    done.status = RunStatus::Failed;
    done.error = Some("step \"post\" failed: POST https://api/orders answered 422".into());
    store.update_run(&done, None).unwrap();
    let unfinished = store.unfinished_runs().unwrap();
    assert_eq!(unfinished, [running]);
}

const CHILD_DIR: &str = "ISOFLOW_TEST_STORE_CHILD_DIR";

/// Run as a child process by `acknowledged_checkpoints_survive_sigkill`:
/// checkpoints steps forever, printing each one once `checkpoint`
/// returned.
#[test]
#[ignore = "run as a child process by acknowledged_checkpoints_survive_sigkill"]
fn child_checkpoints_until_killed() {
    let dir = std::env::var(CHILD_DIR).unwrap();
    let store = Store::open(&StoreConfig::new(dir)).unwrap();
    let run = RunRecord::new("acme", "loop", 1);
    store.create_run(&run, &json!({}), &json!([])).unwrap();
    println!("run {}", run.run_id);
    for i in 0.. {
        let key = format!("each/{i}/post");
        store
            .checkpoint(
                &run,
                vec![(step(&key, None), Some(&json!({ "item": i })))],
                &[],
            )
            .unwrap();
        println!("acked {i}");
    }
}

#[test]
fn acknowledged_checkpoints_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "child_checkpoints_until_killed",
            "--ignored",
            "--nocapture",
        ])
        .env(CHILD_DIR, dir.path())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut run_id = None;
    let mut acked = None;
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(id) = line.strip_prefix("run ") {
            run_id = Some(id.to_owned());
        } else if let Some(n) = line.strip_prefix("acked ") {
            let n: u64 = n.parse().unwrap();
            acked = Some(n);
            if n >= 200 {
                break;
            }
        }
    }
    // Child::kill sends SIGKILL: no destructor, no flush, no goodbye.
    child.kill().unwrap();
    // Whatever else the child printed before dying was acknowledged too.
    for line in lines.map_while(Result::ok) {
        if let Some(n) = line.strip_prefix("acked ") {
            acked = Some(n.parse().unwrap());
        }
    }
    child.wait().unwrap();
    let (run_id, acked) = (run_id.unwrap(), acked.unwrap());

    let store = open(&dir);
    let steps = store.steps("acme", &run_id).unwrap();
    assert!(
        steps.len() as u64 > acked,
        "{} checkpoints stored, {} acknowledged",
        steps.len(),
        acked + 1
    );
    for i in 0..=acked {
        let output = store
            .step_output("acme", &run_id, &format!("each/{i}/post"))
            .unwrap();
        assert_eq!(
            output,
            Some(json!({ "item": i })),
            "checkpoint {i} was acknowledged"
        );
    }
    assert_eq!(store.unfinished_runs().unwrap().len(), 1);
}

#[test]
fn a_rerun_gets_the_old_runs_definition_input_and_the_checkpoints_it_is_given() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut old = RunRecord::new("acme", "sync", 2);
    let big = Value::String("y".repeat(FILE_PAYLOAD_BYTES + 5));
    store
        .create_run(&old, &json!({"name": "sync"}), &big)
        .unwrap();
    old.status = RunStatus::Failed;
    let mut failed = step("post", None);
    failed.status = StepStatus::Failed;
    store
        .finish_run(
            &old,
            vec![
                (step("fetch", None), Some(&big)),
                (step("shape", None), Some(&json!({"n": 1}))),
                (failed, None),
            ],
            &[log("fetch", 1, "fetched")],
            None,
        )
        .unwrap();
    let kept: Vec<StepRecord> = store
        .steps("acme", &old.run_id)
        .unwrap()
        .into_iter()
        .filter(|s| s.status == StepStatus::Succeeded)
        .collect();
    let mut rerun = RunRecord::new("acme", "sync", 2);
    rerun.rerun_of = Some(old.run_id.clone());
    rerun.from_step = Some("post".into());
    store.create_rerun(&rerun, &old.run_id, &kept).unwrap();
    drop(store);

    let store = open(&dir);
    let stored = store.run("acme", &rerun.run_id).unwrap().unwrap();
    assert_eq!(stored.rerun_of.as_deref(), Some(old.run_id.as_str()));
    assert_eq!(stored.from_step.as_deref(), Some("post"));
    let unfinished: Vec<String> = store
        .unfinished_runs()
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(unfinished, [rerun.run_id.clone()], "the rerun waits to run");
    assert_eq!(
        store.run_definition("acme", &rerun.run_id).unwrap(),
        Some(json!({"name": "sync"}))
    );
    assert_eq!(
        store.run_input("acme", &rerun.run_id).unwrap(),
        Some(big.clone())
    );
    let keys: Vec<String> = store
        .steps("acme", &rerun.run_id)
        .unwrap()
        .into_iter()
        .map(|s| s.step_key)
        .collect();
    assert_eq!(keys, ["fetch", "shape"]);
    assert_eq!(
        store.step_output("acme", &rerun.run_id, "fetch").unwrap(),
        Some(big)
    );
    assert_eq!(
        store.step_output("acme", &rerun.run_id, "shape").unwrap(),
        Some(json!({"n": 1}))
    );
    assert!(
        store.logs("acme", &rerun.run_id).unwrap().is_empty(),
        "logs stay with the old run"
    );
    // The copy of a payload file is the rerun's own: the old run's reads
    // the same after the copy.
    assert_eq!(
        store
            .step_output("acme", &old.run_id, "fetch")
            .unwrap()
            .map(|v| v.as_str().map(str::len)),
        Some(Some(FILE_PAYLOAD_BYTES + 5))
    );
    // Another tenant cannot name the old run.
    let intruder = RunRecord::new("globex", "sync", 2);
    store.create_rerun(&intruder, &old.run_id, &[]).unwrap();
    assert_eq!(store.run_input("globex", &intruder.run_id).unwrap(), None);
    assert_eq!(
        store.run_definition("globex", &intruder.run_id).unwrap(),
        None
    );
}
