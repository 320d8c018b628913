//! The egress policy, through whole runs: an http step may not connect to
//! loopback, private, link-local (cloud metadata), carrier-grade NAT or
//! other special addresses in any spelling, directly, by name, or through a
//! redirect, unless the operator allowed them, for every tenant or for one.
//! A refused request fails its step at once (no retry), and the refused
//! server never sees a connection.
//!
//! Every check runs inside a network namespace of its own that has only
//! loopback (`unshare -n`, created here): if the policy broke, a request to
//! 169.254.169.254 or 10.0.0.1 would find no route, never a real host.

use std::net::TcpListener;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use isoflow_engine::action::egress::EgressPolicy;
use isoflow_engine::model;
use isoflow_engine::run::{
    Credential, Engine, EngineConfig, RunOutcome, Secret, StaticCredentials,
};
use isoflow_engine::store::RunStatus;
use isoflow_testkit::{HttpFixture, Reply, Responder};
use serde_json::{Value, json};

const INSIDE: &str = "ISOFLOW_TEST_EGRESS_NAMESPACE";

#[test]
fn egress_is_checked_inside_a_namespace_with_only_loopback() {
    let status = Command::new("unshare")
        .args(["--net", "--"])
        .arg(std::env::current_exe().expect("this test binary"))
        .args(["--exact", "egress_checks", "--ignored", "--nocapture"])
        .env(INSIDE, "1")
        .status()
        .expect("unshare runs (util-linux)");
    assert!(
        status.success(),
        "the checks inside the namespace failed: {status}"
    );
}

/// Not a test on its own: what [`egress_is_checked_inside_a_namespace_with_only_loopback`]
/// runs inside its namespace.
#[test]
#[ignore = "run by egress_is_checked_inside_a_namespace_with_only_loopback"]
fn egress_checks() {
    if std::env::var_os(INSIDE).is_none() {
        return;
    }
    only_loopback();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        special_addresses_are_refused_in_every_spelling().await;
        allowances_apply_to_their_tenant_and_redirects_stay_in_bounds().await;
    });
}

/// Brings loopback up in this fresh namespace, and checks that nothing
/// else is there.
fn only_loopback() {
    // /proc/self/net is this namespace's (sysfs would show the mounter's).
    let interfaces: Vec<String> = std::fs::read_to_string("/proc/self/net/dev")
        .expect("/proc/self/net/dev")
        .lines()
        .skip(2)
        .filter_map(|l| Some(l.split_once(':')?.0.trim().to_owned()))
        .collect();
    assert_eq!(
        interfaces,
        ["lo"],
        "a namespace with loopback only: {interfaces:?}"
    );
    // SAFETY: an ioctl on a socket of our own with an ifreq we own, named
    // "lo" (NUL-terminated within its 16 bytes).
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0);
        assert!(fd >= 0, "a socket for the ioctl");
        let mut request: libc::ifreq = std::mem::zeroed();
        for (i, b) in b"lo\0".iter().enumerate() {
            request.ifr_name[i] = *b as libc::c_char;
        }
        assert_eq!(libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut request), 0);
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        assert_eq!(libc::ioctl(fd, libc::SIOCSIFFLAGS, &request), 0, "lo up");
        libc::close(fd);
    }
}

/// An engine under `egress`, where acme's `erp-api` credential may be sent
/// to `erp`.
async fn engine(dir: &tempfile::TempDir, egress: EgressPolicy, erp: Option<&str>) -> Engine {
    let mut config = EngineConfig::new(dir.path());
    config.egress = egress;
    let mut credentials = StaticCredentials::default();
    credentials.insert(
        "acme",
        "erp-api",
        Credential::new(
            Secret::new("erp-secret-token"),
            erp.map(|o| o.parse().expect("an origin")),
        ),
    );
    config.credentials = Arc::new(credentials);
    Engine::start(config).await.expect("the engine starts")
}

async fn get(engine: &Engine, tenant: &str, url: &str, extra: &str) -> RunOutcome {
    get_run(engine, tenant, url, extra).await.0
}

/// The run's outcome and id.
async fn get_run(engine: &Engine, tenant: &str, url: &str, extra: &str) -> (RunOutcome, String) {
    let yaml = format!(
        r#"
apiVersion: isoflow.dev/v1
name: egress
version: 1
steps:
  - id: fetch
    type: http
    url: "{url}"
    timeout: 5s
    retry: {{ max_attempts: 3, backoff: {{ initial: 10ms, max: 20ms }} }}
{extra}"#
    );
    let integration = model::load("egress.yaml", &yaml).unwrap_or_else(|e| panic!("{e}"));
    let handle = engine
        .start_run(tenant, &integration, Value::Null)
        .await
        .expect("the run starts");
    let run_id = handle.run_id.clone();
    let outcome = tokio::time::timeout(Duration::from_secs(60), handle.wait())
        .await
        .expect("the run ends within a minute")
        .expect("the run ends");
    (outcome, run_id)
}

fn assert_refused(outcome: &RunOutcome, url: &str, what: &str) {
    assert_eq!(outcome.status, RunStatus::Failed, "{url}: {outcome:?}");
    let error = outcome.error.clone().unwrap_or_default();
    assert!(
        error.contains("refused to connect") && error.contains("egress policy"),
        "{url}: {error}"
    );
    assert!(error.contains(what), "{url}: says {what:?}: {error}");
}

/// A listener that only counts the connections it gets.
struct Counter {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl Counter {
    fn start(ip: &str) -> Counter {
        let listener = TcpListener::bind((ip, 0)).expect("a loopback listener");
        let port = listener.local_addr().expect("its address").port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                count.fetch_add(1, Ordering::SeqCst);
                drop(stream);
            }
        });
        Counter { port, accepted }
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

async fn special_addresses_are_refused_in_every_spelling() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let engine = engine(&dir, EgressPolicy::public_only(), None).await;
    let target = Counter::start("127.0.0.1");
    let p = target.port;
    for (url, what) in [
        (format!("http://127.0.0.1:{p}/"), "a loopback address"),
        (
            format!("http://localhost:{p}/"),
            "localhost resolves to 127.0.0.1, a loopback address",
        ),
        (
            format!("http://[::ffff:127.0.0.1]:{p}/"),
            "a loopback address",
        ),
        (format!("http://2130706433:{p}/"), "127.0.0.1 is a loopback"),
        (format!("http://0x7f.1:{p}/"), "127.0.0.1 is a loopback"),
        (format!("http://0.0.0.0:{p}/"), "an unspecified address"),
        (format!("http://[::1]:{p}/"), "a loopback address"),
        (
            "http://169.254.169.254/latest/meta-data/".to_owned(),
            "a link-local address",
        ),
        (
            "http://[fd00:ec2::254]/latest/meta-data/".to_owned(),
            "a private (unique local) address",
        ),
        ("http://10.0.0.1/".to_owned(), "a private address"),
        ("http://192.168.1.1/".to_owned(), "a private address"),
        (
            "http://100.64.0.1/".to_owned(),
            "a carrier-grade NAT address",
        ),
        ("http://[fe80::1]/".to_owned(), "a link-local address"),
    ] {
        let (outcome, run_id) = get_run(&engine, "acme", &url, "").await;
        assert_refused(&outcome, &url, what);
        let step = engine
            .store()
            .expect("a local engine has a store")
            .step("acme", &run_id, "fetch")
            .expect("the store reads")
            .expect("the step's record");
        assert_eq!(step.attempts, 1, "{url}: a refusal is not retried");
    }
    assert_eq!(target.accepted(), 0, "no connection reached loopback");
    engine.shutdown(Duration::from_secs(5)).await;
}

async fn allowances_apply_to_their_tenant_and_redirects_stay_in_bounds() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let policy = EgressPolicy::public_only()
        .allow_tenant("acme", ["127.0.0.1".parse().expect("an address")]);
    let fixture = HttpFixture::start();
    let engine = engine(&dir, policy, Some(&fixture.url(""))).await;
    fixture.route(
        "GET",
        "/ok",
        Responder::Fixed(Reply::json(200, &json!({"ok": true}))),
    );
    // 127.0.0.2 is loopback too, and not allowed.
    let private = Counter::start("127.0.0.2");
    let elsewhere = format!("http://127.0.0.2:{}/secret", private.port);
    for method in ["GET", "POST"] {
        fixture.route(
            method,
            "/hop",
            Responder::Fixed(Reply::text(302, "").with_header("Location", &elsewhere)),
        );
    }
    fixture.route(
        "GET",
        "/same",
        Responder::Fixed(Reply::text(302, "").with_header("Location", "/ok")),
    );

    let ok = fixture.url("/ok");
    let allowed = get(&engine, "acme", &ok, "").await;
    assert_eq!(allowed.status, RunStatus::Succeeded, "{allowed:?}");
    let other = get(&engine, "other", &ok, "").await;
    assert_refused(&other, &ok, "a loopback address");
    assert_eq!(
        fixture.count("GET", "/ok"),
        1,
        "only acme's request arrived"
    );

    // A redirect within what is allowed is followed, for GET.
    let same = get(&engine, "acme", &fixture.url("/same"), "").await;
    assert_eq!(same.status, RunStatus::Succeeded, "{same:?}");
    assert_eq!(fixture.count("GET", "/ok"), 2);

    // A redirect out of it is refused.
    let hop = fixture.url("/hop");
    let refused = get(&engine, "acme", &hop, "").await;
    assert_refused(&refused, &hop, "127.0.0.2 is a loopback address");

    // A POST, or a request carrying a credential, follows no redirect.
    let posted = get(&engine, "acme", &hop, "    method: POST\n    body: {}\n").await;
    let credentialed = get(&engine, "acme", &hop, "    credential: erp-api\n").await;
    for (what, outcome) in [("POST", posted), ("with a credential", credentialed)] {
        assert_eq!(outcome.status, RunStatus::Failed, "{what}: {outcome:?}");
        let error = outcome.error.unwrap_or_default();
        assert!(
            error.contains("answered 302"),
            "{what}: not followed: {error}"
        );
    }
    assert_eq!(private.accepted(), 0, "no connection reached 127.0.0.2");
    engine.shutdown(Duration::from_secs(5)).await;
}
