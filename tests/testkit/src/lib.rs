//! Test helpers for Isoflow: [`HttpFixture`], a real HTTP/1.1 server on
//! loopback that http steps talk to in tests and benchmarks.
//!
//! The server runs on its own OS thread with its own tokio runtime, so sync
//! tests, async tests (of any runtime flavour), benchmarks and tests that
//! start the `isoflow` binary in another process all use it the same way. It
//! keeps connections alive, records every request when it arrives (before
//! it is answered), and answers from routes the test sets:
//!
//! ```no_run
//! use isoflow_testkit::{HttpFixture, Reply, Responder};
//!
//! let fixture = HttpFixture::start();
//! fixture.route("POST", "/items/*", Responder::Fixed(Reply::text(201, "ok")));
//! // ... point a run at fixture.url("/items/1") ...
//! assert!(fixture.wait_for_count("POST", "/items/*", 1, std::time::Duration::from_secs(5)));
//! ```
//!
//! Invariants: a request is recorded before its route's responder runs, so a
//! request held by a [`Gate`] is already counted; a route's [`Responder`] is
//! replaced, never merged; dropping the fixture stops the server and drops
//! the requests still held.
//!
//! Also here: [`seed_orders_xml`] (`seed.rs`), the seed integration's order
//! export, and [`process`], child processes for multi-process tests (the
//! real `isoflow` binary, killed when the test lets go of it), [`etcd`], a
//! real etcd server ([`Etcd`]) for cluster tests, with authentication and
//! optionally TLS, [`tls`], certificates made for a test, [`oauth2`], an
//! OAuth2 provider (token endpoint and protected API) on loopback, [`otlp`],
//! an OpenTelemetry trace receiver (OTLP/gRPC) that keeps what nodes send, and
//! [`smtp`], a small SMTP sink ([`SmtpSink`]) that records what a node mails.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::sync::{oneshot, watch};

pub mod etcd;
pub mod oauth2;
pub mod otlp;
pub mod process;
mod seed;
pub mod smtp;
pub mod tls;
pub mod webhook;

pub use etcd::Etcd;
pub use seed::{SEED_EXPORTED, SeedExpected, seed_orders_expected, seed_orders_xml};
pub use smtp::{Mail, SmtpSink};

/// How often the `wait_for_*` helpers look again.
const POLL: Duration = Duration::from_millis(2);

/// A loopback HTTP/1.1 server. It stops when dropped.
pub struct HttpFixture {
    addr: SocketAddr,
    shared: Arc<Shared>,
    /// Dropping it tells the server thread to stop.
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// How a route answers.
#[derive(Debug)]
pub enum Responder {
    /// Every request gets this reply.
    Fixed(Reply),
    /// The i-th request (from 0) gets the i-th reply; the last one repeats.
    Sequence(Vec<Reply>),
    /// The request waits until the gate is released, then gets the reply.
    /// It is recorded when it arrives, before it waits.
    Hold(Gate, Reply),
    /// 200 `application/json`: `{"method", "path", "query", "headers"
    /// (names in lowercase), "body" (parsed JSON, or else text)}`.
    Echo,
    /// The reply, after a delay.
    Slow(Duration, Reply),
    /// The reply a function of the request makes, after the delay it says
    /// (a stateful peer, such as [`oauth2::Provider`]).
    With(Answer),
}

/// A function that answers a request: the delay before the reply, and the
/// reply.
#[derive(Clone)]
pub struct Answer(pub Arc<AnswerFn>);

/// What an [`Answer`] calls.
pub type AnswerFn = dyn Fn(&Recorded) -> (Duration, Reply) + Send + Sync;

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Answer(…)")
    }
}

/// A response: status, headers and body.
#[derive(Clone, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    /// `v` as `application/json`.
    pub fn json(status: u16, v: &Value) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: serde_json::to_vec(v).expect("a serde_json::Value always serializes"),
        }
    }

    /// `s` as `text/plain`.
    pub fn text(status: u16, s: &str) -> Reply {
        Reply {
            status,
            headers: vec![("Content-Type".into(), "text/plain; charset=utf-8".into())],
            body: s.as_bytes().to_vec(),
        }
    }

    /// 200 with `s` as `application/xml`.
    pub fn xml(s: &str) -> Reply {
        Reply {
            status: 200,
            headers: vec![("Content-Type".into(), "application/xml".into())],
            body: s.as_bytes().to_vec(),
        }
    }

    /// Adds a header; a header of the same name (in any case) is replaced.
    pub fn with_header(mut self, k: &str, v: &str) -> Reply {
        self.headers
            .retain(|(name, _)| !name.eq_ignore_ascii_case(k));
        self.headers.push((k.to_owned(), v.to_owned()));
        self
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Bodies can be 100 MB: show their size, not their bytes.
        f.debug_struct("Reply")
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body", &format_args!("<{} bytes>", self.body.len()))
            .finish()
    }
}

/// Holds requests (see [`Responder::Hold`]) until released. Once released
/// it stays open: later requests pass at once. Clones share the gate.
#[derive(Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

struct GateInner {
    released: watch::Sender<bool>,
    waiting: AtomicUsize,
}

impl Gate {
    pub fn new() -> Gate {
        Gate {
            inner: Arc::new(GateInner {
                released: watch::Sender::new(false),
                waiting: AtomicUsize::new(0),
            }),
        }
    }

    /// Lets every held request through, and every later one.
    pub fn release(&self) {
        self.inner.released.send_replace(true);
    }

    /// How many requests are held right now. A held request whose client
    /// has gone away (a killed process) may still be counted.
    pub fn waiting(&self) -> usize {
        self.inner.waiting.load(Ordering::SeqCst)
    }

    /// Waits until at least `n` requests are held; false after `timeout`.
    pub fn wait_for_waiting(&self, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, || self.waiting() >= n)
    }

    async fn pass(&self) {
        let mut released = self.inner.released.subscribe();
        if *released.borrow_and_update() {
            return;
        }
        self.inner.waiting.fetch_add(1, Ordering::SeqCst);
        // Counted down however the wait ends, including when the server
        // drops the request.
        let _waiting = Waiting(&self.inner.waiting);
        // Err only when the sender is gone, and the gate owns it.
        let _ = released.wait_for(|&open| open).await;
    }
}

impl Default for Gate {
    fn default() -> Gate {
        Gate::new()
    }
}

impl std::fmt::Debug for Gate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gate")
            .field("released", &*self.inner.released.borrow())
            .field("waiting", &self.waiting())
            .finish()
    }
}

struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A request as it arrived.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// The query string without its `?`; empty when there is none.
    pub query: String,
    /// Header names in lowercase; repeated headers joined with `", "`.
    pub headers: BTreeMap<String, String>,
    pub body: Vec<u8>,
}

impl Recorded {
    /// The body as JSON. Panics (failing the test) when it is not JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "{} {}: request body is not JSON ({e}): {:.200}",
                self.method,
                self.path,
                self.text()
            )
        })
    }

    /// The body as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value; `name` in any case.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(&name.to_ascii_lowercase())
            .map(String::as_str)
    }
}

impl HttpFixture {
    /// Starts a server on `127.0.0.1:0`. It accepts connections as soon as
    /// this returns.
    pub fn start() -> HttpFixture {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("binding a loopback port");
        listener
            .set_nonblocking(true)
            .expect("a fresh listener can be made non-blocking");
        let addr = listener
            .local_addr()
            .expect("a bound listener has an address");
        let shared = Arc::new(Shared::default());
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("http-fixture")
            .enable_all()
            .build()
            .expect("building the fixture's tokio runtime");
        let (stop, stopped) = oneshot::channel();
        let server = shared.clone();
        let thread = std::thread::Builder::new()
            .name("http-fixture".into())
            .spawn(move || {
                runtime.block_on(serve(listener, server, stopped));
                // Drops the connections, held requests included.
                runtime.shutdown_timeout(Duration::from_secs(1));
            })
            .expect("spawning the fixture's thread");
        HttpFixture {
            addr,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// `http://127.0.0.1:PORT{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Answers `method path` with `responder`, replacing the route's
    /// responder if it had one. A path ending in `/*` matches any path
    /// below it (`/items/*` matches `/items/7`); an exact route wins over
    /// such a prefix, and a longer prefix over a shorter one.
    pub fn route(&self, method: &str, path: &str, responder: Responder) {
        self.shared
            .set_route(method, path, Handler::Respond(responder));
    }

    /// The requests that match `method` and `path` (matched as routes are),
    /// in arrival order.
    pub fn requests(&self, method: &str, path: &str) -> Vec<Recorded> {
        let pattern = Pattern::parse(path);
        lock(&self.shared.recorded)
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && pattern.matches(&r.path))
            .cloned()
            .collect()
    }

    pub fn count(&self, method: &str, path: &str) -> usize {
        let pattern = Pattern::parse(path);
        lock(&self.shared.recorded)
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && pattern.matches(&r.path))
            .count()
    }

    /// Waits until at least `n` matching requests arrived; false after
    /// `timeout`.
    pub fn wait_for_count(&self, method: &str, path: &str, n: usize, timeout: Duration) -> bool {
        poll_until(timeout, || self.count(method, path) >= n)
    }

    /// The seed integration's two endpoints: `GET /orders.xml` answers
    /// [`seed_orders_xml`]`(100)`; `POST /erp/orders` answers 401 unless
    /// the request carries `Authorization: Bearer {token}`, else 201
    /// `{"accepted": <body.count>, "total": <body.total>}`.
    pub fn serve_seed(&self, token: &str) {
        self.route(
            "GET",
            "/orders.xml",
            Responder::Fixed(Reply::xml(&seed_orders_xml(100))),
        );
        self.shared.set_route(
            "POST",
            "/erp/orders",
            Handler::Seed {
                token: token.to_owned(),
            },
        );
    }
}

impl Drop for HttpFixture {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for HttpFixture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpFixture")
            .field("addr", &self.addr)
            .field("requests", &lock(&self.shared.recorded).len())
            .finish_non_exhaustive()
    }
}

/// A port that was free a moment ago (the listener that found it is
/// closed again), for a process that must bind it itself.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

fn poll_until(timeout: Duration, done: impl FnMut() -> bool) -> bool {
    poll_every(POLL, timeout, done)
}

/// Asks `done` every `every` until it says yes (`true`) or `timeout` has
/// passed (`false`, after one last look).
pub fn poll_every(every: Duration, timeout: Duration, mut done: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// A poisoned lock only means another test thread panicked; the data is
/// still whole (every critical section is one push or one read).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct Shared {
    routes: Mutex<Vec<Arc<Route>>>,
    recorded: Mutex<Vec<Recorded>>,
}

struct Route {
    method: String,
    pattern: Pattern,
    handler: Handler,
    /// Requests answered so far, for [`Responder::Sequence`].
    hits: AtomicUsize,
}

enum Handler {
    Respond(Responder),
    Seed { token: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Exact(String),
    /// Everything starting with this, which ends in `/`.
    Prefix(String),
}

impl Pattern {
    fn parse(path: &str) -> Pattern {
        match path.strip_suffix('*') {
            Some(prefix) if prefix.ends_with('/') => Pattern::Prefix(prefix.to_owned()),
            _ => Pattern::Exact(path.to_owned()),
        }
    }

    fn matches(&self, path: &str) -> bool {
        match self {
            Pattern::Exact(p) => p == path,
            Pattern::Prefix(p) => path.starts_with(p.as_str()),
        }
    }

    /// Higher wins: exact routes, then longer prefixes.
    fn rank(&self) -> (bool, usize) {
        match self {
            Pattern::Exact(p) => (true, p.len()),
            Pattern::Prefix(p) => (false, p.len()),
        }
    }
}

impl Shared {
    fn set_route(&self, method: &str, path: &str, handler: Handler) {
        let route = Route {
            method: method.to_ascii_uppercase(),
            pattern: Pattern::parse(path),
            handler,
            hits: AtomicUsize::new(0),
        };
        let mut routes = lock(&self.routes);
        routes.retain(|r| !(r.method == route.method && r.pattern == route.pattern));
        routes.push(Arc::new(route));
    }

    fn find(&self, method: &str, path: &str) -> Option<Arc<Route>> {
        lock(&self.routes)
            .iter()
            .filter(|r| r.method.eq_ignore_ascii_case(method) && r.pattern.matches(path))
            .max_by_key(|r| r.pattern.rank())
            .cloned()
    }
}

/// What to do with a request, decided when it arrives.
enum Plan {
    Now(Reply),
    After(Duration, Reply),
    Hold(Gate, Reply),
}

impl Route {
    fn plan(&self, request: &Recorded) -> Plan {
        let hit = self.hits.fetch_add(1, Ordering::SeqCst);
        match &self.handler {
            Handler::Respond(Responder::Fixed(reply)) => Plan::Now(reply.clone()),
            Handler::Respond(Responder::Sequence(replies)) => {
                match replies.get(hit).or(replies.last()) {
                    Some(reply) => Plan::Now(reply.clone()),
                    None => Plan::Now(Reply::text(500, "the route's Sequence has no replies")),
                }
            }
            Handler::Respond(Responder::Hold(gate, reply)) => {
                Plan::Hold(gate.clone(), reply.clone())
            }
            Handler::Respond(Responder::Slow(delay, reply)) => Plan::After(*delay, reply.clone()),
            Handler::Respond(Responder::Echo) => Plan::Now(echo(request)),
            Handler::Respond(Responder::With(answer)) => {
                let (delay, reply) = (answer.0)(request);
                Plan::After(delay, reply)
            }
            Handler::Seed { token } => Plan::Now(seed_post(token, request)),
        }
    }
}

fn echo(request: &Recorded) -> Reply {
    let body =
        serde_json::from_slice(&request.body).unwrap_or_else(|_| Value::String(request.text()));
    Reply::json(
        200,
        &json!({
            "method": request.method,
            "path": request.path,
            "query": request.query,
            "headers": request.headers,
            "body": body,
        }),
    )
}

fn seed_post(token: &str, request: &Recorded) -> Reply {
    let expected = format!("Bearer {token}");
    if request.header("authorization") != Some(expected.as_str()) {
        return Reply::json(401, &json!({ "error": "missing or wrong bearer token" }));
    }
    match serde_json::from_slice::<Value>(&request.body) {
        Ok(body) => Reply::json(
            201,
            &json!({ "accepted": body["count"], "total": body["total"] }),
        ),
        Err(e) => Reply::json(400, &json!({ "error": format!("body is not JSON: {e}") })),
    }
}

async fn serve(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener =
        tokio::net::TcpListener::from_std(listener).expect("registering the listener with tokio");
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    // Out of file descriptors and the like: let it pass.
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| handle(shared.clone(), request));
                    // A client that goes away mid-request is no error of ours.
                    let _ = http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        }
    }
}

async fn handle(
    shared: Arc<Shared>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes().to_vec(),
        Err(e) => {
            return Ok(response(Reply::text(
                400,
                &format!("cannot read the body: {e}"),
            )));
        }
    };
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in &parts.headers {
        let value = String::from_utf8_lossy(value.as_bytes());
        headers
            .entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert_with(|| value.into_owned());
    }
    let recorded = Recorded {
        method: parts.method.as_str().to_owned(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers,
        body,
    };
    let plan = match shared.find(&recorded.method, &recorded.path) {
        Some(route) => route.plan(&recorded),
        None => Plan::Now(Reply::text(
            404,
            &format!("no route for {} {}", recorded.method, recorded.path),
        )),
    };
    lock(&shared.recorded).push(recorded);
    let reply = match plan {
        Plan::Now(reply) => reply,
        Plan::After(delay, reply) => {
            tokio::time::sleep(delay).await;
            reply
        }
        Plan::Hold(gate, reply) => {
            gate.pass().await;
            reply
        }
    };
    Ok(response(reply))
}

fn response(reply: Reply) -> Response<Full<Bytes>> {
    let mut builder = Response::builder().status(reply.status);
    for (name, value) in &reply.headers {
        builder = builder.header(name.as_str(), value.as_str());
    }
    builder
        .body(Full::new(Bytes::from(reply.body)))
        .unwrap_or_else(|e| {
            let mut r = Response::new(Full::new(Bytes::from(format!(
                "invalid fixture reply: {e}"
            ))));
            *r.status_mut() = hyper::StatusCode::INTERNAL_SERVER_ERROR;
            r
        })
}
