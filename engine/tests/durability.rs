//! Pipelined durability (docs/running.md, "What is durable when"): a code
//! step may compute while the checkpoint before it is written, and nothing
//! with an effect outside the run starts before every earlier checkpoint is
//! durable. A journal around the real store holds and observes each write;
//! the http steps go to a real server on loopback.

// Test helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use isoflow_engine::action::egress::EgressPolicy;
use isoflow_engine::model;
use isoflow_engine::run::{
    Engine, EngineConfig, Journal, JournalError, JournalFuture, JournalWrite, Restored, RunEvent,
    RunHandle, RunOutcome, StoreJournal, WriteKind,
};
use isoflow_engine::store::{RunRecord, RunStatus, StepStatus, Store, StoreConfig};
use isoflow_testkit::{Answer, HttpFixture, Reply, Responder};
use serde_json::json;
use tokio::sync::Semaphore;

/// GET, two code steps, POST: the code steps may each overlap the write
/// before them; the POST may not.
fn integration(base: &str) -> model::Integration {
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: pipelined
version: 1
steps:
  - id: fetch
    type: http
    url: "{base}/source"
  - id: double
    type: code
    input: "{{{{ steps.fetch.output.body }}}}"
    source: "export default (body) => ({{ n: body.n * 2 }})"
  - id: again
    type: code
    input: "{{{{ steps.double.output }}}}"
    source: "export default (x) => ({{ n: x.n + 1 }})"
  - id: send
    type: http
    method: POST
    url: "{base}/sink"
    body: "{{{{ steps.again.output }}}}"
output: "{{{{ steps.again.output.n }}}}"
"#
    );
    model::load("pipelined.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// What happened, in order: "durable <kind> <step keys>", "sent <path>".
type Log = Arc<Mutex<Vec<String>>>;

/// The store's journal, with the write of one checkpoint held until the
/// test lets it go (or failed), and every write logged once durable.
struct Watched {
    inner: StoreJournal,
    log: Log,
    hold: String,
    gate: Arc<Semaphore>,
    fail: bool,
}

impl Journal for Watched {
    fn restored(&self, step_key: &str) -> Result<Option<Restored>, JournalError> {
        self.inner.restored(step_key)
    }

    fn write(&self, write: JournalWrite) -> JournalFuture {
        let keys: Vec<&str> = write
            .steps
            .iter()
            .map(|(r, _)| r.step_key.as_str())
            .collect();
        let entry = format!(
            "durable {} {}",
            match write.kind {
                WriteKind::Checkpoint => "checkpoint",
                WriteKind::Finish { .. } => "finish",
                WriteKind::Logs => "logs",
            },
            keys.join("+")
        );
        let held = matches!(write.kind, WriteKind::Checkpoint) && keys == [self.hold.as_str()];
        let fail = held && self.fail;
        let (gate, log) = (self.gate.clone(), self.log.clone());
        let written = self.inner.write(write);
        Box::pin(async move {
            if held {
                gate.acquire().await.unwrap().forget();
            }
            if fail {
                return Err(JournalError::Unavailable("the disk is gone".to_owned()));
            }
            written.await?;
            log.lock().unwrap().push(entry);
            Ok(())
        })
    }
}

struct Setup {
    engine: Engine,
    fixture: HttpFixture,
    log: Log,
    gate: Arc<Semaphore>,
    handle: RunHandle,
    _dir: tempfile::TempDir,
}

/// Starts the run with the checkpoint of `hold` held (and failing once let
/// go, when `fail`).
async fn start(hold: &str, fail: bool) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let fixture = HttpFixture::start();
    let log: Log = Arc::default();
    fixture.route(
        "GET",
        "/source",
        Responder::Fixed(Reply::json(200, &json!({ "n": 20 }))),
    );
    let sent = log.clone();
    fixture.route(
        "POST",
        "/sink",
        Responder::With(Answer(Arc::new(move |request| {
            sent.lock().unwrap().push(format!("sent {}", request.path));
            (Duration::ZERO, Reply::json(201, &json!("stored")))
        }))),
    );
    let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).unwrap());
    let mut config = EngineConfig::new(dir.path());
    config.egress = EgressPolicy::public_only().allow(["127.0.0.1".parse().unwrap()]);
    let engine = Engine::with_store(config, None).await.unwrap();
    let run = RunRecord::new("acme", "pipelined", 1);
    let gate = Arc::new(Semaphore::new(0));
    let journal = Watched {
        inner: StoreJournal::new(store, "acme", &run.run_id),
        log: log.clone(),
        hold: hold.to_owned(),
        gate: gate.clone(),
        fail,
    };
    let handle = engine
        .execute(
            run,
            Arc::new(integration(&fixture.url(""))),
            Arc::new(json!(null)),
            Arc::new(journal),
            false,
        )
        .await
        .unwrap();
    Setup {
        engine,
        fixture,
        log,
        gate,
        handle,
        _dir: dir,
    }
}

/// Events until `step` is reported started (`finished` false) or
/// succeeded, or the run's end.
async fn until(handle: &mut RunHandle, step: &str, finished: bool) -> Option<RunOutcome> {
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = handle.next_event().await {
            match event {
                RunEvent::StepStarted { step_key, .. } if !finished && step_key == step => {
                    return None;
                }
                RunEvent::StepFinished {
                    step_key,
                    status: StepStatus::Succeeded,
                    ..
                } if finished && step_key == step => return None,
                RunEvent::Finished(outcome) => return Some(outcome),
                _ => {}
            }
        }
        panic!("the run stopped without finishing")
    })
    .await;
    found.unwrap_or_else(|_| panic!("step {step:?} did not get there within 30 s"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_step_computes_while_the_checkpoint_before_it_is_written_and_an_http_step_waits() {
    let mut setup = start("fetch", false).await;
    // fetch's checkpoint is held: double, a code step, runs all the same
    // (before pipelining, it started only once fetch was durable).
    let ended = until(&mut setup.handle, "double", false).await;
    assert!(ended.is_none(), "the run ended early: {ended:?}");
    assert_eq!(
        *setup.log.lock().unwrap(),
        Vec::<String>::new(),
        "nothing is durable yet, and nothing was sent"
    );
    // Nothing after double starts before fetch's checkpoint is durable:
    // again's own checkpoint waits for it, and send waits for again's.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(setup.fixture.requests("POST", "/sink").is_empty());

    setup.gate.add_permits(1);
    let outcome = until(&mut setup.handle, "never", true).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Succeeded, "{outcome:?}");
    assert_eq!(outcome.output, Some(json!(41)));
    assert_eq!(
        *setup.log.lock().unwrap(),
        [
            "durable checkpoint fetch",
            "durable checkpoint double",
            "durable checkpoint again",
            "sent /sink",
            "durable finish send",
        ]
    );
    setup.engine.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_checkpoint_that_cannot_be_written_fails_the_run_before_any_later_effect() {
    let mut setup = start("double", true).await;
    let ended = until(&mut setup.handle, "again", false).await;
    assert!(ended.is_none(), "the run ended early: {ended:?}");
    setup.gate.add_permits(1);
    let outcome = until(&mut setup.handle, "never", true).await.unwrap();
    assert_eq!(outcome.status, RunStatus::Failed, "{outcome:?}");
    let error = outcome.error.unwrap_or_default();
    assert!(error.contains("the disk is gone"), "{error}");
    assert!(
        setup.fixture.requests("POST", "/sink").is_empty(),
        "the POST after the lost checkpoint was sent"
    );
    assert_eq!(
        *setup.log.lock().unwrap(),
        ["durable checkpoint fetch", "durable finish "],
        "the run's end is the only write after the failed one"
    );
    setup.engine.shutdown(Duration::from_secs(5)).await;
}
