//! Crash recovery of the real binary: `isoflow run` is killed with SIGKILL
//! at chosen and at random points, `isoflow resume` continues the run in the
//! same data directory, and an [`HttpFixture`] counts what reached the
//! outside world.
//!
//! What the engine promises, and so what these tests hold it to: a step
//! whose checkpoint was written is never run again; the step in flight when
//! the process died runs again from its first attempt (at least once), with
//! the same `Idempotency-Key`. A progress line `<key> ok` on stderr is
//! printed only after that step's checkpoint, so a step a killed process
//! reported as ok must not reach the fixture again.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::time::Duration;

use isoflow_testkit::process::{Finished, Isoflow, Process};
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, seed_orders_expected, seed_orders_xml};
use serde_json::{Value, json};

/// Bounds every wait for a process (debug builds, a busy machine).
const LONG: Duration = Duration::from_secs(90);

/// A data directory, an integration file in it, and the binary pointed at
/// both.
struct Case {
    _dir: tempfile::TempDir,
    file: PathBuf,
    isoflow: Isoflow,
}

impl Case {
    fn new(yaml: &str) -> Case {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = dir.path().join("integration.yaml");
        std::fs::write(&file, yaml).expect("write the integration");
        let isoflow = Isoflow::new(env!("CARGO_BIN_EXE_isoflow"), dir.path().join("data"));
        Case {
            _dir: dir,
            file,
            isoflow,
        }
    }

    /// `isoflow run` with `input`; returns once the run is stored, with its id.
    fn start(&self, isoflow: &Isoflow, input: &Value) -> (Process, String) {
        let mut run = isoflow.spawn([
            "run".as_ref(),
            self.file.as_os_str(),
            "--input".as_ref(),
            input.to_string().as_ref(),
        ]);
        let line = run.wait_for_stderr_line(LONG, |l| l.starts_with("run "));
        let run_id = line
            .split_whitespace()
            .nth(1)
            .expect("run <id> of ...")
            .to_owned();
        (run, run_id)
    }

    fn show(&self, run_id: &str) -> Shown {
        let shown = self.isoflow.run(LONG, ["show", run_id]);
        shown.expect_code(0);
        Shown::parse(&shown.stdout)
    }
}

/// What `isoflow show` printed, taken apart.
#[derive(Debug)]
struct Shown {
    status: String,
    /// Step key → (status, attempts).
    steps: BTreeMap<String, (String, u32)>,
    output: Option<Value>,
}

impl Shown {
    fn parse(text: &str) -> Shown {
        let field = |name: &str| {
            text.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
                .unwrap_or_else(|| panic!("no {name:?} line in:\n{text}"))
        };
        let mut steps = BTreeMap::new();
        let mut lines = text.lines().skip_while(|l| !l.starts_with("STEP"));
        lines.next();
        for line in lines.take_while(|l| !l.trim().is_empty()) {
            let words: Vec<&str> = line.split_whitespace().collect();
            if words.len() >= 3 && !line.starts_with(' ') {
                let attempts = words[2]
                    .parse()
                    .unwrap_or_else(|_| panic!("attempts in {line:?}"));
                steps.insert(words[0].to_owned(), (words[1].to_owned(), attempts));
            }
        }
        let output = text.split_once("\noutput\n").map(|(_, json)| {
            serde_json::from_str(json)
                .unwrap_or_else(|e| panic!("show's output is not JSON ({e}):\n{json}"))
        });
        Shown {
            status: field("status"),
            steps,
            output,
        }
    }
}

/// Keys of the steps a process reported finished `ok` on stderr (each
/// such report comes after the step's checkpoint).
fn reported_ok(stderr: &str) -> BTreeSet<String> {
    stderr
        .lines()
        .filter(|l| l.starts_with("  "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let key = words.next()?;
            (words.next()? == "ok").then(|| key.to_owned())
        })
        .collect()
}

/// Keys a resumed process took from checkpoints instead of running them.
fn reported_restored(stderr: &str) -> BTreeSet<String> {
    stderr
        .lines()
        .filter(|l| l.contains("done before the restart"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The child processes of `pid` (all its threads' children).
fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|text| {
            text.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// Whether `pid` runs (a zombie waiting for its parent counts as gone).
fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let rest = stat.rsplit_once(')')?.1.trim_start().to_owned();
            rest.chars().next()
        })
        .is_some_and(|state| state != 'Z' && state != 'X')
}

fn idempotency_keys(fixture: &HttpFixture, method: &str, path: &str) -> Vec<Option<String>> {
    fixture
        .requests(method, path)
        .iter()
        .map(|r| r.header("idempotency-key").map(str::to_owned))
        .collect()
}

fn killed(finished: &Finished) {
    assert_eq!(
        finished.code(),
        None,
        "the process should have died of SIGKILL, it exited\n--- stderr\n{}",
        finished.stderr
    );
}

/// (a) Killed while an http step's request is in flight: the POST before it
/// was checkpointed and is not sent again; the one in flight is sent again,
/// with the same idempotency key.
#[test]
fn kill_during_an_http_step() {
    let case = Case::new(
        r#"
apiVersion: isoflow.dev/v1
name: crash-mid-step
version: 1
steps:
  - id: create
    type: http
    method: POST
    url: "{{ input.base }}/create"
    body: { order: 7 }
  - id: confirm
    type: http
    method: POST
    url: "{{ input.base }}/confirm"
    body: { id: "{{ steps.create.output.body.id }}" }
output:
  created: "{{ steps.create.output.body }}"
  confirmed: "{{ steps.confirm.output.body }}"
"#,
    );
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "POST",
        "/create",
        Responder::Fixed(Reply::json(201, &json!({"id": "c-1"}))),
    );
    fixture.route(
        "POST",
        "/confirm",
        Responder::Hold(gate.clone(), Reply::json(200, &json!({"confirmed": true}))),
    );

    let (run, run_id) = case.start(&case.isoflow, &json!({"base": fixture.url("")}));
    assert!(
        gate.wait_for_waiting(1, LONG),
        "confirm never arrived:\n{}",
        run.stderr()
    );
    // The report of a finished step is printed beside the next step's
    // start, not before it: wait for the line, then kill.
    let mut run = run;
    run.wait_for_stderr_line(LONG, |l| reported_ok(l).contains("create"));
    let first = run.kill();
    killed(&first);
    assert!(
        reported_ok(&first.stderr).contains("create"),
        "{}",
        first.stderr
    );

    let resume = case.isoflow.spawn(["resume"]);
    assert!(
        fixture.wait_for_count("POST", "/confirm", 2, LONG),
        "the step in flight was not sent again:\n{}",
        resume.stderr()
    );
    gate.release();
    let resumed = resume.wait(LONG);
    resumed.expect_code(0);
    assert_eq!(
        resumed.json(),
        json!({"created": {"id": "c-1"}, "confirmed": {"confirmed": true}})
    );
    assert!(
        reported_restored(&resumed.stderr).contains("create"),
        "{}",
        resumed.stderr
    );

    assert_eq!(
        fixture.count("POST", "/create"),
        1,
        "a checkpointed POST was sent again"
    );
    assert_eq!(fixture.count("POST", "/confirm"), 2);
    let keys = idempotency_keys(&fixture, "POST", "/confirm");
    assert_eq!(keys[0], Some(format!("{run_id}/confirm")));
    assert_eq!(
        keys[0], keys[1],
        "the retried request must carry the same key"
    );
    assert_eq!(
        fixture.requests("POST", "/confirm")[1].json(),
        json!({"id": "c-1"})
    );

    let shown = case.show(&run_id);
    assert_eq!(shown.status, "succeeded");
    assert_eq!(shown.steps["create"], ("ok".to_owned(), 1));
    assert_eq!(shown.steps["confirm"], ("ok".to_owned(), 1));
}

/// (b) Killed while a code step computes, after a POST: the POST is not
/// sent again, the code step runs again, the step after it runs once.
#[test]
fn kill_during_a_code_step() {
    let case = Case::new(
        r#"
apiVersion: isoflow.dev/v1
name: crash-mid-code
version: 1
steps:
  - id: create
    type: http
    method: POST
    url: "{{ input.base }}/create"
    body: { order: 8 }
  - id: crunch
    type: code
    input: "{{ steps.create.output.body }}"
    source: |
      export default function (created) {
        // Long enough that the kill lands inside it.
        const end = Date.now() + 800;
        let spins = 0;
        while (Date.now() < end) spins++;
        return { id: created.id, doubled: created.n * 2 };
      }
  - id: done
    type: http
    method: POST
    url: "{{ input.base }}/done"
    body: "{{ steps.crunch.output }}"
"#,
    );
    let fixture = HttpFixture::start();
    fixture.route(
        "POST",
        "/create",
        Responder::Fixed(Reply::json(201, &json!({"id": "c-2", "n": 21}))),
    );
    fixture.route("POST", "/done", Responder::Echo);

    let (mut run, _run_id) = case.start(&case.isoflow, &json!({"base": fixture.url("")}));
    run.wait_for_stderr_line(LONG, |l| reported_ok(l).contains("create"));
    let sandboxes = children(run.pid());
    assert!(
        !sandboxes.is_empty(),
        "the node runs its code in sandbox processes"
    );
    let first = run.kill();
    killed(&first);
    // They die with the node: none is left running customer code.
    let start = std::time::Instant::now();
    while sandboxes.iter().any(|pid| alive(*pid)) {
        assert!(
            start.elapsed() < LONG,
            "sandbox processes outlived their node"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !reported_ok(&first.stderr).contains("crunch"),
        "the kill came after the code step had finished, too late to test anything:\n{}",
        first.stderr
    );
    assert_eq!(fixture.count("POST", "/done"), 0);

    let resumed = case.isoflow.run(LONG, ["resume"]);
    resumed.expect_code(0);
    assert!(
        reported_restored(&resumed.stderr).contains("create"),
        "{}",
        resumed.stderr
    );
    assert!(
        reported_ok(&resumed.stderr).contains("crunch"),
        "{}",
        resumed.stderr
    );
    assert_eq!(
        fixture.count("POST", "/create"),
        1,
        "a checkpointed POST was sent again"
    );
    assert_eq!(fixture.count("POST", "/done"), 1);
    assert_eq!(
        fixture.requests("POST", "/done")[0].json(),
        json!({"id": "c-2", "doubled": 42})
    );
    assert_eq!(
        resumed.json()["body"]["body"],
        json!({"id": "c-2", "doubled": 42})
    );
}

/// (c) Killed in the middle of a 50-element loop (4 at a time) while
/// element 30 is held: every element ends up requested; an element reported
/// done before the kill is not requested again; only elements in flight at
/// the kill (at most 4) are requested twice, with the same key.
#[test]
fn kill_in_the_middle_of_a_loop() {
    let case = Case::new(
        r#"
apiVersion: isoflow.dev/v1
name: crash-mid-loop
version: 1
steps:
  - id: build
    type: code
    source: |
      export default function () {
        return Array.from({ length: 50 }, (_, i) => ({ n: i }));
      }
  - id: each
    type: loop
    for_each: "{{ steps.build.output }}"
    concurrency: 4
    steps:
      - id: post
        type: http
        method: POST
        url: "{{ input.base }}/items/{{ index }}"
        body: "{{ item }}"
"#,
    );
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    for i in 0..50 {
        let reply = Reply::json(200, &json!({ "index": i }));
        let responder = if i == 30 {
            Responder::Hold(gate.clone(), reply)
        } else {
            // Slow enough that the loop is far from done at the kill.
            Responder::Slow(Duration::from_millis(30), reply)
        };
        fixture.route("POST", &format!("/items/{i}"), responder);
    }

    let (run, run_id) = case.start(&case.isoflow, &json!({"base": fixture.url("")}));
    assert!(
        gate.wait_for_waiting(1, LONG),
        "item 30 never arrived:\n{}",
        run.stderr()
    );
    assert!(fixture.wait_for_count("POST", "/items/*", 30, LONG));
    let first = run.kill();
    killed(&first);
    let done_before: BTreeSet<usize> = reported_ok(&first.stderr)
        .iter()
        .filter_map(|key| {
            key.strip_prefix("each/")?
                .strip_suffix("/post")?
                .parse()
                .ok()
        })
        .collect();
    assert!(!done_before.contains(&30));
    assert!(
        done_before.len() >= 10,
        "only {} items done before the kill",
        done_before.len()
    );

    let resume = case.isoflow.spawn(["resume"]);
    assert!(
        fixture.wait_for_count("POST", "/items/30", 2, LONG),
        "item 30 was not requested again:\n{}",
        resume.stderr()
    );
    gate.release();
    let resumed = resume.wait(LONG);
    resumed.expect_code(0);

    let mut twice = Vec::new();
    for i in 0..50 {
        let path = format!("/items/{i}");
        let requests = fixture.requests("POST", &path);
        assert!(!requests.is_empty(), "item {i} was never requested");
        assert_eq!(requests[0].json(), json!({ "n": i }));
        if done_before.contains(&i) {
            assert_eq!(
                requests.len(),
                1,
                "item {i} was done before the kill, then requested again"
            );
        }
        assert!(
            requests.len() <= 2,
            "item {i} requested {} times",
            requests.len()
        );
        if requests.len() == 2 {
            twice.push(i);
            let keys = idempotency_keys(&fixture, "POST", &path);
            assert_eq!(keys[0], Some(format!("{run_id}/each/{i:08}/post")));
            assert_eq!(
                keys[0], keys[1],
                "item {i}: the repeated request must carry the same key"
            );
        }
    }
    assert!(twice.contains(&30));
    assert!(
        twice.len() <= 4,
        "more items repeated than were in flight: {twice:?}"
    );

    let output = resumed.json();
    let output = output.as_array().expect("the loop's output is an array");
    assert_eq!(output.len(), 50);
    for (i, response) in output.iter().enumerate() {
        assert_eq!(response["status"], 200);
        assert_eq!(
            response["body"],
            json!({ "index": i }),
            "item {i} out of order"
        );
    }
    let shown = case.show(&run_id);
    assert_eq!(shown.status, "succeeded");
    assert_eq!(
        shown.steps.keys().filter(|k| k.ends_with("/post")).count(),
        50
    );
}

/// The seed integration's shape with every http step slow and tagged: each
/// process gets its own token, so the fixture tells which process sent what.
const SEED_LIKE: &str = r#"
apiVersion: isoflow.dev/v1
name: crash-seed-like
version: 1
steps:
  - id: fetch
    type: http
    url: "{{ input.base }}/orders.xml"
    credential: erp-api
  - id: parse
    type: code
    input: "{{ steps.fetch.output.body }}"
    source: |
      export default function (xml, ctx) {
        const end = Date.now() + 40;
        while (Date.now() < end);
        const doc = ctx.xml.parse(xml, { alwaysArray: ["order", "line"] });
        return { exportedAt: doc.orders["@exported"], orders: doc.orders.order };
      }
  - id: filter
    type: code
    input: "{{ steps.parse.output }}"
    source: |
      export default function (input, ctx) {
        const end = Date.now() + 40;
        while (Date.now() < end);
        const open = input.orders.filter((o) => o["@status"] !== "cancelled");
        ctx.log(`${open.length} open orders of ${input.orders.length}`);
        return { exportedAt: input.exportedAt, orders: open };
      }
  - id: enrich
    type: code
    runtime: quickjs
    input: "{{ steps.filter.output }}"
    source: |
      export default function (input) {
        const end = Date.now() + 40;
        while (Date.now() < end);
        return {
          exportedAt: input.exportedAt,
          orders: input.orders.map((o) => {
            const lines = o.line.map((l) => ({
              sku: l["@sku"],
              quantity: Number(l["@qty"]),
              amount: Number(l["@qty"]) * Number(l["@price"]),
            }));
            return { id: o["@id"], lines, total: lines.reduce((s, l) => s + l.amount, 0) };
          }),
        };
      }
  - id: aggregate
    type: code
    input: "{{ steps.enrich.output }}"
    source: |
      export default function (input) {
        const end = Date.now() + 40;
        while (Date.now() < end);
        const total = input.orders.reduce((sum, o) => sum + o.total, 0);
        return {
          exportedAt: input.exportedAt,
          count: input.orders.length,
          total: Math.round(total * 100) / 100,
          orders: input.orders,
        };
      }
  - id: post
    type: http
    method: POST
    url: "{{ input.base }}/erp/orders"
    credential: erp-api
    body: "{{ steps.aggregate.output }}"
output:
  orders: "{{ steps.aggregate.output.count }}"
  total: "{{ steps.aggregate.output.total }}"
  status: "{{ steps.post.output.status }}"
  reply: "{{ steps.post.output.body }}"
"#;

const SEED_STEPS: [&str; 6] = ["fetch", "parse", "filter", "enrich", "aggregate", "post"];

fn seed_like_fixture() -> HttpFixture {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/orders.xml",
        Responder::Slow(Duration::from_millis(60), Reply::xml(&seed_orders_xml(100))),
    );
    fixture.route(
        "POST",
        "/erp/orders",
        Responder::Slow(
            Duration::from_millis(60),
            Reply::json(201, &json!({"accepted": true})),
        ),
    );
    fixture
}

/// Which process (by its token `p<k>`) sent each request.
fn senders(fixture: &HttpFixture, method: &str, path: &str) -> Vec<usize> {
    fixture
        .requests(method, path)
        .iter()
        .map(|r| {
            r.header("authorization")
                .and_then(|a| a.strip_prefix("Bearer p"))
                .and_then(|k| k.parse().ok())
                .unwrap_or_else(|| panic!("{method} {path} without a process token: {r:?}"))
        })
        .collect()
}

/// A small xorshift generator: the kill times differ from run to run, and
/// the seed is printed so that a failure can be replayed with
/// `ISOFLOW_CRASH_SEED`.
struct Random(u64);

impl Random {
    fn new() -> Random {
        let seed = std::env::var("ISOFLOW_CRASH_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(1, |d| d.as_nanos() as u64)
            })
            | 1;
        eprintln!("kill times from ISOFLOW_CRASH_SEED={seed}");
        Random(seed)
    }

    fn millis(&mut self, range: std::ops::RangeInclusive<u64>) -> Duration {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        Duration::from_millis(range.start() + self.0 % (range.end() - range.start() + 1))
    }
}

/// (d) Five SIGKILLs at random points of a seed-like run, then a resume
/// that finishes it: the output equals an uninterrupted run's; no step a
/// killed process reported done ran again; each http step was sent at most
/// once per process, and only by processes that died before its checkpoint,
/// all with one idempotency key.
#[test]
fn random_kills_then_resume_give_the_uninterrupted_output() {
    let expected_output = {
        let fixture = seed_like_fixture();
        let case = Case::new(SEED_LIKE);
        let finished = case
            .isoflow
            .clone()
            .env("ISOFLOW_CREDENTIAL_ERP_API", "p0")
            .env("ISOFLOW_CREDENTIAL_ERP_API_ORIGINS", &fixture.url(""))
            .run(
                LONG,
                [
                    "run".as_ref(),
                    case.file.as_os_str(),
                    "--input".as_ref(),
                    json!({"base": fixture.url("")}).to_string().as_ref(),
                ],
            );
        finished.expect_code(0);
        eprintln!("uninterrupted run:\n{}", finished.stderr);
        finished.json()
    };
    let seed = seed_orders_expected(100);
    assert_eq!(expected_output["orders"], seed.open);
    let total = expected_output["total"].as_f64().expect("a total");
    assert!(
        (total * 100.0 - seed.total_cents as f64).abs() < 0.5,
        "total {total}"
    );
    assert_eq!(expected_output["status"], 201);

    let fixture = seed_like_fixture();
    let case = Case::new(SEED_LIKE);
    let input = json!({"base": fixture.url("")});
    let mut random = Random::new();
    let mut stderrs = Vec::new();
    let mut run_id = String::new();
    for k in 0..5 {
        let isoflow = case
            .isoflow
            .clone()
            .env("ISOFLOW_CREDENTIAL_ERP_API", &format!("p{k}"))
            .env("ISOFLOW_CREDENTIAL_ERP_API_ORIGINS", &fixture.url(""));
        let process = if k == 0 {
            let (process, id) = case.start(&isoflow, &input);
            run_id = id;
            process
        } else {
            let mut process = isoflow.spawn(["resume"]);
            process.wait_for_stderr_line(LONG, |l| {
                l.starts_with("resuming run") || l.starts_with("no unfinished runs")
            });
            process
        };
        // A deliberate random delay after the process is under way: where
        // the kill lands is the point.
        std::thread::sleep(random.millis(20..=200));
        let finished = process.kill();
        // The kill may come after the process ended on its own, which it
        // must have done successfully.
        let how = match finished.code() {
            None => "killed",
            Some(0) => "exited by itself",
            Some(code) => panic!("process {k} exited with {code}:\n{}", finished.stderr),
        };
        eprintln!(
            "process {k}: {how}; reported done {:?}, restored {:?}",
            reported_ok(&finished.stderr),
            reported_restored(&finished.stderr)
        );
        stderrs.push(finished.stderr);
    }
    let last = case
        .isoflow
        .clone()
        .env("ISOFLOW_CREDENTIAL_ERP_API", "p5")
        .env("ISOFLOW_CREDENTIAL_ERP_API_ORIGINS", &fixture.url(""))
        .run(LONG, ["resume"]);
    last.expect_code(0);
    stderrs.push(last.stderr);

    let shown = case.show(&run_id);
    assert_eq!(shown.status, "succeeded", "{shown:?}");
    assert_eq!(shown.output.as_ref(), Some(&expected_output));
    for step in SEED_STEPS {
        assert_eq!(
            shown.steps.get(step),
            Some(&("ok".to_owned(), 1)),
            "{step}: {shown:?}"
        );
    }

    // The first process that reported each step done; none after it may
    // run the step again.
    let mut done_in: BTreeMap<&str, usize> = BTreeMap::new();
    for (k, stderr) in stderrs.iter().enumerate() {
        let ok = reported_ok(stderr);
        for step in SEED_STEPS {
            if ok.contains(step) {
                if let Some(first) = done_in.get(step) {
                    panic!(
                        "step {step} reported done by process {first}, then run again by process {k}:\n{stderr}"
                    );
                }
                done_in.insert(step, k);
            }
        }
    }
    for (method, path, step) in [
        ("GET", "/orders.xml", "fetch"),
        ("POST", "/erp/orders", "post"),
    ] {
        let senders = senders(&fixture, method, path);
        eprintln!("{step} sent by processes {senders:?}");
        assert!(!senders.is_empty(), "{step} was never sent");
        let unique: BTreeSet<usize> = senders.iter().copied().collect();
        assert_eq!(
            unique.len(),
            senders.len(),
            "{step} sent twice by one process: {senders:?}"
        );
        if let Some(&k) = done_in.get(step) {
            // Sent by process k or by processes that died before any
            // checkpoint of it; never after.
            assert!(
                senders.iter().all(|&s| s <= k),
                "{step} done by process {k}, sent by {senders:?}"
            );
        }
        // Duplicates only from processes killed while it was in flight.
        for &s in &senders[..senders.len() - 1] {
            assert!(
                !reported_ok(&stderrs[s]).contains(step),
                "{step}: process {s} reported it done, yet a later process sent it ({senders:?})"
            );
        }
    }
    // The process that finished the run took every step reported done
    // before from its checkpoint.
    let finisher = stderrs
        .iter()
        .rposition(|e| e.contains("resuming run") && e.contains("succeeded in"));
    if let Some(finisher) = finisher {
        let restored = reported_restored(&stderrs[finisher]);
        for (step, _) in done_in.iter().filter(|(_, k)| **k < finisher) {
            assert!(
                restored.contains(*step),
                "process {finisher} did not restore {step}"
            );
        }
    }
    let keys = idempotency_keys(&fixture, "POST", "/erp/orders");
    assert!(
        keys.iter().all(|k| *k == Some(format!("{run_id}/post"))),
        "{keys:?}"
    );
    let posts = fixture.requests("POST", "/erp/orders");
    let body = posts.last().expect("a POST").json();
    assert_eq!(body["count"], seed.open);
    assert!(
        posts.iter().all(|p| p.json() == body),
        "every POST carries the same payload"
    );
}
