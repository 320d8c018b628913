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
    FILE_PAYLOAD_BYTES, LogRecord, RunFilter, RunRecord, RunStatus, StepRecord, StepStatus, Store,
    StoreConfig, StoreError, TenantQuotas, TenantRecord, TokenRecord, now_ms,
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
        node: None,
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

/// Waits for the clock's next millisecond, so that runs made on either
/// side of it have ids in creation order.
fn next_ms() {
    let t = now_ms();
    while now_ms() == t {
        std::hint::spin_loop();
    }
}

#[test]
fn tenants_and_token_hashes_are_kept_and_tokens_revoked_by_id() {
    let dir = tempfile::tempdir().unwrap();
    let record = TenantRecord {
        name: "acme".into(),
        disabled: false,
        created_at_ms: now_ms(),
        quotas: TenantQuotas {
            runs_in_flight: Some(2),
            webhook_runs_per_minute: Some(60),
            ..TenantQuotas::default()
        },
    };
    let hash = [7u8; 32];
    let token = TokenRecord {
        token_id: "0707070707070707".into(),
        tenant: "acme".into(),
        label: "ci".into(),
        created_at_ms: now_ms(),
    };
    {
        let store = open(&dir);
        assert_eq!(store.tenant("acme").unwrap(), None);
        store.put_tenant(&record).unwrap();
        store.put_token(&hash, &token).unwrap();
    }
    let store = open(&dir);
    assert_eq!(store.tenant("acme").unwrap(), Some(record.clone()));
    assert_eq!(store.tenants().unwrap(), [record]);
    assert_eq!(store.token(&hash).unwrap(), Some(token.clone()));
    assert_eq!(store.token(&[8u8; 32]).unwrap(), None);
    assert_eq!(store.delete_token("nope").unwrap(), None);
    assert_eq!(
        store.delete_token("0707070707070707").unwrap(),
        Some((hash.to_vec(), token))
    );
    assert_eq!(store.token(&hash).unwrap(), None, "revoked");
    assert!(matches!(
        store.tenant("a\0b"),
        Err(StoreError::InvalidKey { .. })
    ));
}

#[test]
fn run_filters_page_through_matches_and_bound_what_one_call_reads() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let mut made = Vec::new();
    for i in 0..12u32 {
        let mut run = RunRecord::new(
            "acme",
            if i % 3 == 0 { "orders" } else { "stock" },
            1 + i % 2,
        );
        store.create_run(&run, &json!({}), &Value::Null).unwrap();
        if i % 4 == 0 {
            run.status = RunStatus::Failed;
            store.update_run(&run, None).unwrap();
        }
        made.push(run);
        next_ms();
    }
    // Another tenant's runs never show.
    let other = RunRecord::new("acme-eu", "orders", 1);
    store.create_run(&other, &json!({}), &Value::Null).unwrap();

    let all_pages = |filter: &RunFilter, limit: usize, max_scan: usize| {
        let mut ids = Vec::new();
        let mut before: Option<String> = None;
        let mut calls = 0;
        loop {
            calls += 1;
            let page = store
                .runs_page("acme", filter, before.as_deref(), limit, max_scan)
                .unwrap();
            assert!(page.runs.len() <= limit);
            ids.extend(page.runs.into_iter().map(|r| r.run_id));
            match page.next {
                Some(next) => before = Some(next),
                None => return (ids, calls),
            }
        }
    };
    let expected = |keep: &dyn Fn(&RunRecord) -> bool| -> Vec<String> {
        made.iter()
            .rev()
            .filter(|r| keep(r))
            .map(|r| r.run_id.clone())
            .collect()
    };
    let orders = RunFilter {
        integration: Some("orders".into()),
        ..RunFilter::default()
    };
    assert_eq!(
        all_pages(&orders, 2, 1000).0,
        expected(&|r| r.integration == "orders")
    );
    let failed_v1 = RunFilter {
        status: Some(RunStatus::Failed),
        version: Some(1),
        ..RunFilter::default()
    };
    assert_eq!(
        all_pages(&failed_v1, 100, 1000).0,
        expected(&|r| r.status == RunStatus::Failed && r.version == 1)
    );
    // A time range: runs 4 to 7.
    let range = RunFilter {
        created_from_ms: Some(made[4].created_at_ms),
        created_to_ms: Some(made[8].created_at_ms),
        ..RunFilter::default()
    };
    assert_eq!(
        all_pages(&range, 100, 1000).0,
        expected(&|r| r.created_at_ms >= made[4].created_at_ms
            && r.created_at_ms < made[8].created_at_ms)
    );
    // A filter that matches nothing: each call reads at most 5 runs and
    // says where to go on; the last call says there is nothing more.
    let nothing = RunFilter {
        integration: Some("missing".into()),
        ..RunFilter::default()
    };
    let first = store.runs_page("acme", &nothing, None, 10, 5).unwrap();
    assert!(first.runs.is_empty());
    assert_eq!(first.next.as_deref(), Some(made[7].run_id.as_str()));
    let (ids, calls) = all_pages(&nothing, 10, 5);
    assert!(ids.is_empty());
    assert_eq!(calls, 3, "12 runs, 5 a call");
    // Bounded reads still find every match, only over more calls.
    assert_eq!(all_pages(&orders, 10, 5).0, all_pages(&orders, 10, 1000).0);
    // Without a filter, the pages join up to every run, newest first.
    assert_eq!(
        all_pages(&RunFilter::default(), 5, 1000).0,
        expected(&|_| true)
    );
}

#[test]
fn retention_deletes_finished_runs_with_everything_they_stored_and_compaction_frees_the_space() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    let big_inline = Value::String("b".repeat(300 * 1024));
    let big_file = Value::String("f".repeat(FILE_PAYLOAD_BYTES + 1024));
    let mut old = Vec::new();
    for i in 0..6 {
        let mut run = RunRecord::new("acme", "sync", 1);
        let input = if i == 0 { &big_file } else { &big_inline };
        store
            .create_requested_run(&run, &json!({}), input, "hook\u{1}sync", &format!("k{i}"))
            .unwrap();
        run.status = RunStatus::Running;
        store
            .checkpoint(
                &run,
                vec![(step("fetch", None), Some(&big_inline))],
                &[log("fetch", 1, "fetched")],
            )
            .unwrap();
        run.status = RunStatus::Succeeded;
        run.updated_at_ms = 1_000;
        store.update_run(&run, Some(&json!({"ok": i}))).unwrap();
        old.push(run);
    }
    // Unfinished, and finished but recent, and another tenant's: kept.
    next_ms();
    let running = RunRecord::new("acme", "sync", 1);
    store.create_run(&running, &json!({}), &big_inline).unwrap();
    next_ms();
    let mut recent = RunRecord::new("acme", "sync", 1);
    store.create_run(&recent, &json!({}), &json!(1)).unwrap();
    recent.status = RunStatus::Failed;
    store.update_run(&recent, None).unwrap();
    let mut kept = RunRecord::new("globex", "sync", 1);
    store.create_run(&kept, &json!({}), &json!(2)).unwrap();
    kept.status = RunStatus::Succeeded;
    kept.updated_at_ms = 1_000;
    store.update_run(&kept, None).unwrap();

    let cutoff = now_ms() - 60_000;
    let expired = store
        .expired_runs(
            |tenant| (tenant == "acme").then_some(cutoff.max(2_000)),
            100,
        )
        .unwrap();
    let ids: Vec<String> = old.iter().map(|r| r.run_id.clone()).collect();
    assert!(
        expired.is_empty(),
        "created in the last minute: {expired:?}"
    );
    let expired = store
        .expired_runs(|tenant| (tenant == "acme").then_some(now_ms() + 1), 100)
        .unwrap();
    let mut expected: Vec<(String, String)> = ids
        .iter()
        .chain([&recent.run_id])
        .map(|id| ("acme".to_owned(), id.clone()))
        .collect();
    expected.sort();
    let mut got = expired.clone();
    got.sort();
    assert_eq!(got, expected, "every finished acme run, none running");
    assert_eq!(
        store.expired_runs(|_| Some(now_ms() + 1), 3).unwrap().len(),
        3
    );

    let before = store.disk_usage();
    let deleted = store.delete_runs("acme", &ids).unwrap();
    assert_eq!(deleted, 6);
    assert_eq!(
        store
            .delete_runs("acme", std::slice::from_ref(&running.run_id))
            .unwrap(),
        0,
        "an unfinished run is never deleted"
    );
    store.compact().unwrap();
    let after = store.disk_usage();
    println!(
        "store folder: {before} bytes before, {after} bytes after deleting 6 runs and compacting"
    );
    assert!(
        after + 1_000_000 < before,
        "about 3.3 MB of payloads were freed: {before} -> {after}"
    );
    for run in &old {
        assert_eq!(store.run("acme", &run.run_id).unwrap(), None);
        assert!(store.steps("acme", &run.run_id).unwrap().is_empty());
        assert!(store.logs("acme", &run.run_id).unwrap().is_empty());
        assert_eq!(store.run_input("acme", &run.run_id).unwrap(), None);
        assert_eq!(store.run_output("acme", &run.run_id).unwrap(), None);
        assert_eq!(
            store.step_output("acme", &run.run_id, "fetch").unwrap(),
            None
        );
    }
    // The request keys that started them are gone, but the last of the
    // scope stays (with no run), so a schedule keeps its place.
    for i in 0..5 {
        assert_eq!(
            store
                .requested_run("acme", "hook\u{1}sync", &format!("k{i}"))
                .unwrap(),
            None
        );
    }
    assert_eq!(
        store.last_request("acme", "hook\u{1}sync").unwrap(),
        Some(("k5".to_owned(), String::new()))
    );
    assert!(
        walk(&dir.path().join("payloads"))
            .iter()
            .all(|f| !f.to_string_lossy().contains("json")),
        "payload files are gone"
    );
    let left: Vec<String> = store
        .runs("acme", 100)
        .unwrap()
        .into_iter()
        .map(|r| r.run_id)
        .collect();
    assert_eq!(left, [recent.run_id.clone(), running.run_id.clone()]);
    assert_eq!(
        store.run_input("acme", &running.run_id).unwrap(),
        Some(big_inline)
    );
    assert!(store.run("globex", &kept.run_id).unwrap().is_some());
    assert_eq!(store.unfinished_runs().unwrap(), [running]);
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
fn the_latest_version_of_each_integration_is_read_from_keys() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let store = open(&dir);
    let deploy = |tenant: &str, name: &str, version: u32| {
        store
            .put_integration(
                tenant,
                isoflow_engine::store::IntegrationRecord {
                    name: name.into(),
                    version,
                    deployed_at_ms: 0,
                    definition: serde_json::json!({ "v": version }),
                },
            )
            .expect("stored");
    };
    // Versions whose big-endian bytes hold zeros and the separator's value.
    for version in [1, 256, 2] {
        deploy("acme", "orders", version);
    }
    deploy("acme", "crm", 7);
    deploy("globex", "orders", 65_536);
    assert_eq!(
        store.latest_versions().expect("listed"),
        [
            ("acme".to_owned(), "crm".to_owned(), 7),
            ("acme".to_owned(), "orders".to_owned(), 256),
            ("globex".to_owned(), "orders".to_owned(), 65_536),
        ]
    );
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
    store
        .create_rerun(&rerun, &old.run_id, &kept, None)
        .unwrap();
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
    store
        .create_rerun(&intruder, &old.run_id, &[], None)
        .unwrap();
    assert_eq!(store.run_input("globex", &intruder.run_id).unwrap(), None);
    assert_eq!(
        store.run_definition("globex", &intruder.run_id).unwrap(),
        None
    );
}
