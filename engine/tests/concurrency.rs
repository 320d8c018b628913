//! Steps running at the same time on one sandbox with two runners (so two
//! sandbox processes at once) never see each other: from many OS threads (`execute_blocking`) and from many tokio
//! tasks (`execute`), each step gets exactly its own output and exactly its
//! own log lines, in order, including when its neighbours fail, time out or
//! are abandoned by their caller; and both runtimes can be mixed freely.
//! Finally, a node may exit while its sandbox is still busy (a worker
//! stopping with steps just finished): it must exit cleanly.

#[macro_use]
mod common;

use common::*;
use isoflow_engine::sandbox::{LogLevel, Outcome, Runtime, StepError};
use serde_json::json;

macro_rules! concurrency {
    ($module:ident, $variant:ident) => {
        per_runtime!(
            $module,
            $variant,
            [
                threads_each_get_their_own_outcome,
                failing_neighbours_do_not_disturb,
                process_exits_cleanly_with_a_busy_sandbox,
            ],
            async [tasks_each_get_their_own_outcome, abandoned_executions_do_not_disturb]
        );
    };
}

#[cfg(feature = "v8")]
concurrency!(v8, V8);
#[cfg(feature = "quickjs")]
concurrency!(quickjs, QuickJs);

/// A step that logs before and after some asynchronous work and returns
/// values derived from its input only.
const TAGGED: &str = r#"
export default async (input, ctx) => {
  console.log("start", input.id);
  let acc = 0;
  for (let i = 0; i < input.work; i++) {
    acc = (acc + i * input.id) % 1000003;
    if (i % 500 === 0) await null;
  }
  ctx.log.warn("end " + input.id + " " + input.secret);
  return { id: input.id, secret: input.secret, acc, echo: input.payload };
};
"#;

fn tagged_input(id: u64) -> serde_json::Value {
    json!({
        "id": id,
        "secret": format!("secret-{id:08x}"),
        "work": 500 + (id % 7) * 400,
        "payload": { "list": [id, id * 2, id * 3], "text": "ü".repeat((id % 5) as usize) },
    })
}

/// Checks that `outcome` is exactly the result of [`TAGGED`] for `id`.
fn assert_own(outcome: &Outcome, id: u64) {
    let input = tagged_input(id);
    let work = input["work"].as_u64().expect("work");
    let acc = (0..work).fold(0u64, |acc, i| (acc + i * id) % 1_000_003);
    assert_eq!(
        ok(outcome),
        json!({ "id": id, "secret": input["secret"], "acc": acc, "echo": input["payload"] }),
        "step {id}"
    );
    assert_eq!(
        messages(outcome),
        [
            format!("start {id}"),
            format!("end {id} {}", input["secret"].as_str().expect("secret"))
        ],
        "step {id}'s logs"
    );
    assert_eq!(levels(outcome), [LogLevel::Info, LogLevel::Warn]);
}

fn run_tagged_threads(runtime_of: impl Fn(u64) -> Runtime + Sync) {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 40;
    std::thread::scope(|scope| {
        for t in 0..THREADS {
            let runtime_of = &runtime_of;
            scope.spawn(move || {
                for i in 0..PER_THREAD {
                    let id = t * 1000 + i;
                    let outcome = run(runtime_of(id), TAGGED, &tagged_input(id));
                    assert_own(&outcome, id);
                }
            });
        }
    });
}

fn threads_each_get_their_own_outcome(rt: Runtime) {
    run_tagged_threads(|_| rt);
}

fn failing_neighbours_do_not_disturb(rt: Runtime) {
    // Half the threads run steps that fail in every way; the other half
    // must see nothing of it.
    type Check = fn(&StepError) -> bool;
    let failing: [(&str, Check); 4] = [
        (
            "export default () => { console.log('x'); while (true) {} };",
            |e| matches!(e, StepError::Timeout { .. }),
        ),
        (
            "export default () => { console.log('x'); throw new Error('no'); };",
            |e| matches!(e, StepError::Exception { .. }),
        ),
        (
            "export default () => new Promise(() => { console.log('x'); });",
            |e| matches!(e, StepError::NeverSettled),
        ),
        (
            "export default () => { console.log('x'); return () => 1; };",
            |e| matches!(e, StepError::NotSerializable { .. }),
        ),
    ];
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let failing = &failing;
            scope.spawn(move || {
                for i in 0..12 {
                    let (source, expected) = failing[(t as usize + i) % failing.len()];
                    let outcome = run_with(rt, source, &json!(null), timeout(150));
                    let error = err(&outcome);
                    assert!(expected(&error), "{source}: {error:?}");
                    assert_eq!(messages(&outcome), ["x"], "{source}");
                }
            });
            scope.spawn(move || {
                for i in 0..30 {
                    let id = 50_000 + t * 1000 + i;
                    assert_own(&run(rt, TAGGED, &tagged_input(id)), id);
                }
            });
        }
    });
}

async fn tasks_each_get_their_own_outcome(rt: Runtime) {
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..300u64 {
        let exec = execution(rt, TAGGED, &tagged_input(id));
        tasks.spawn(async move { (id, sandbox().execute(exec).await) });
    }
    let mut done = 0;
    while let Some(joined) = tasks.join_next().await {
        let (id, outcome) = joined.expect("task");
        assert_own(&outcome, id);
        done += 1;
    }
    assert_eq!(done, 300);
}

async fn abandoned_executions_do_not_disturb(rt: Runtime) {
    // Callers that stop waiting (a cancelled request) drop the future while
    // the step runs; the sandbox finishes it and carries on.
    let mut abandoned = Vec::new();
    for _ in 0..6 {
        let exec = execution(
            rt,
            "export default () => { console.log('abandoned'); while (true) {} };",
            &json!(null),
        )
        .limits(timeout(200));
        abandoned.push(tokio::spawn(async move { sandbox().execute(exec).await }));
    }
    for task in &abandoned {
        task.abort();
    }
    let mut tasks = tokio::task::JoinSet::new();
    for id in 0..40u64 {
        let exec = execution(rt, TAGGED, &tagged_input(id));
        tasks.spawn(async move { (id, sandbox().execute(exec).await) });
    }
    while let Some(joined) = tasks.join_next().await {
        let (id, outcome) = joined.expect("task");
        assert_own(&outcome, id);
    }
    for task in abandoned {
        // Either cancelled before it finished or finished with its timeout.
        if let Ok(outcome) = task.await {
            assert!(matches!(outcome.result, Err(StepError::Timeout { .. })));
            assert_eq!(messages(&outcome), ["abandoned"]);
        }
    }
}

#[cfg(all(feature = "v8", feature = "quickjs"))]
mod mixed {
    use super::*;

    fn runtime_of(id: u64) -> Runtime {
        Runtime::ALL[(id % 2) as usize]
    }

    #[test]
    fn threads_with_both_runtimes() {
        run_tagged_threads(runtime_of);
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn tasks_with_both_runtimes() {
        let mut tasks = tokio::task::JoinSet::new();
        for id in 0..300u64 {
            let exec = execution(runtime_of(id), TAGGED, &tagged_input(id));
            tasks.spawn(async move { (id, sandbox().execute(exec).await) });
        }
        while let Some(joined) = tasks.join_next().await {
            let (id, outcome) = joined.expect("task");
            assert_own(&outcome, id);
        }
    }
}

/// Set for the child processes of [`process_exits_cleanly_with_a_busy_sandbox`].
const CHILD_RUNTIME: &str = "ISOFLOW_TEST_EXIT_CHILD";

fn process_exits_cleanly_with_a_busy_sandbox(rt: Runtime) {
    // The child runs steps and returns; the test harness then exits the
    // process while the sandbox processes may still be disposing of used
    // isolates and preparing fresh ones. Several children, since the
    // window is a race.
    let exe = std::env::current_exe().expect("the test binary's path");
    for attempt in 0..8 {
        let child = std::process::Command::new(&exe)
            .args(["--exact", "child::exit_with_a_busy_sandbox", "--ignored"])
            .env(CHILD_RUNTIME, rt.to_string())
            .output()
            .expect("the child process starts");
        let stdout = String::from_utf8_lossy(&child.stdout);
        let stderr = String::from_utf8_lossy(&child.stderr);
        assert!(
            stdout.contains("1 passed"),
            "{rt}: child #{attempt} did not run its steps:\n{stdout}\n{stderr}"
        );
        assert!(
            child.status.success(),
            "{rt}: child #{attempt} ran its steps, then exited with {}:\n{}",
            child.status,
            stderr.lines().rev().take(15).collect::<Vec<_>>().join("\n")
        );
    }
}

mod child {
    use super::*;

    /// Only run as a child of `process_exits_cleanly_with_a_busy_sandbox`.
    #[test]
    #[ignore = "run as a child process by process_exits_cleanly_with_a_busy_sandbox"]
    fn exit_with_a_busy_sandbox() {
        let rt = match std::env::var(CHILD_RUNTIME).as_deref() {
            Ok("v8") => Runtime::V8,
            Ok("quickjs") => Runtime::QuickJs,
            other => panic!("{CHILD_RUNTIME} is {other:?}"),
        };
        for id in 0..20 {
            assert_own(&run(rt, TAGGED, &tagged_input(id)), id);
        }
    }
}
