//! The web console (`/console` on the node's HTTP listener) in a real
//! browser: Debian's headless Chromium, driven over WebDriver (chromedriver
//! on loopback) with fantoccini. Each test starts its own `all` node (two
//! tenants, the admin token, a vault key, the HTTP listener) and its own
//! browser, signs in as a person would, clicks what a person would click,
//! and checks both what the page shows and what the node did (through the
//! API and loopback HTTP servers that count requests).
//!
//! Waits poll the page with a deadline; nothing sleeps and then asserts.
//! The pages are read through small scripts (`querySelectorAll`), so a live
//! update that replaces an element between two reads is no error.
//! Screenshots of the main pages go to `<target>/console-screenshots/`, and
//! with `ISOFLOW_BLESS=1` to `docs/console/` too.
//!
//! Chromium and chromedriver are Debian's (`deploy/scripts/setup.sh`
//! installs them); a machine without them fails these tests, saying so.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fantoccini::Locator;
use isoflow_client::Client;
use isoflow_proto::v1;
use isoflow_testkit::process::Process;
use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, free_port, poll_every};
use serde_json::{Value, json};

const LONG: Duration = Duration::from_secs(120);
/// How long a page gets to show what a test waits for.
const WAIT: Duration = Duration::from_secs(30);
const ACME: &str = "acme-token-0123456789abcdef";
const GLOBEX: &str = "globex-token-0123456789abcdef";
const ADMIN: &str = "admin-token-0123456789abcdef";
const VAULT_KEY: &str = "d2ViaG9vay10ZXN0LXZhdWx0LWtleS0wMTIzNDU2Nzg=";
const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
const SESSION_COOKIE: &str = "isoflow_session";

// ---------------------------------------------------------------------------
// The node

struct Node {
    _dir: tempfile::TempDir,
    process: Process,
    api: String,
    http: u16,
}

impl Node {
    /// An `all` node with `acme` and `globex` in its configuration, the
    /// admin token, a vault key and the HTTP listener (the console's).
    fn start() -> Node {
        let dir = tempfile::tempdir().expect("a temp dir for the node");
        let (api, http) = (free_port(), free_port());
        let admin_file = dir.path().join("admin-token");
        std::fs::write(&admin_file, format!("{ADMIN}\n")).expect("the admin token is written");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&admin_file, std::fs::Permissions::from_mode(0o600))
            .expect("the admin token file is made private");
        let config = dir.path().join("all.toml");
        std::fs::write(
            &config,
            format!(
                "role = \"all\"\ndata_dir = \"{data}\"\nmax_payload_bytes = 8388608\n\
                 [api]\nlisten = \"127.0.0.1:{api}\"\n\
                 [http]\nlisten = \"127.0.0.1:{http}\"\npublic_url = \"http://127.0.0.1:{http}\"\n\
                 [egress]\nallow = [\"127.0.0.1\"]\n\
                 [vault.key]\nid = \"k1\"\nenv = \"ISOFLOW_VAULT_KEY\"\n\
                 [auth]\nadmin_token_file = \"{admin}\"\n\
                 [[auth.tokens]]\ntenant = \"acme\"\ntoken = \"{ACME}\"\n\
                 [[auth.tokens]]\ntenant = \"globex\"\ntoken = \"{GLOBEX}\"\n",
                data = dir.path().join("data").display(),
                admin = admin_file.display(),
            ),
        )
        .expect("the node's configuration is written");
        let mut process = Process::spawn(
            Command::new(env!("CARGO_BIN_EXE_isoflow"))
                .args(["serve", "--config"])
                .arg(&config)
                .env("ISOFLOW_VAULT_KEY", VAULT_KEY)
                .env("RUST_LOG", "info"),
        );
        process.wait_for_stderr_line(LONG, |l| l.contains("listening on 127.0.0.1"));
        let node = Node {
            _dir: dir,
            process,
            api: format!("http://127.0.0.1:{api}"),
            http,
        };
        // The console is on the HTTP listener: wait until it answers.
        let up = poll_every(Duration::from_millis(50), WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", http)).is_ok()
        });
        assert!(
            up,
            "the node's HTTP listener on port {http} did not accept connections within {WAIT:?}\n{}",
            node.process.stderr()
        );
        node
    }

    /// `http://127.0.0.1:PORT` of the HTTP listener, where the console is.
    fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.http)
    }

    async fn client(&self, token: &str) -> Client {
        Client::connect(&self.api, Some(token))
            .await
            .expect("the API client connects to the node")
    }

    /// Deploys `definition` as `tenant` (by its token).
    fn deploy(&self, token: &str, definition: &str) {
        block(async {
            self.client(token)
                .await
                .deploy(definition, "console-test.yaml", HashMap::new())
                .await
                .unwrap_or_else(|e| panic!("the API refused to deploy:\n{definition}\n{e}"));
        });
    }

    /// Starts a run of `integration` (its latest version) with `input`.
    fn start_run(&self, token: &str, integration: &str, input: &Value) -> String {
        block(async {
            self.client(token)
                .await
                .start_run(integration, None, input)
                .await
                .unwrap_or_else(|e| panic!("the API refused to start {integration}: {e}"))
                .run_id
        })
    }

    /// Waits for the run to end and returns it.
    fn wait(&self, token: &str, run_id: &str) -> v1::Run {
        block(async {
            self.client(token)
                .await
                .wait(run_id)
                .await
                .unwrap_or_else(|e| panic!("waiting for run {run_id} through the API: {e}"))
        })
    }

    /// The run as the API shows it now.
    fn run(&self, token: &str, run_id: &str) -> v1::Run {
        block(async {
            self.client(token)
                .await
                .run(run_id)
                .await
                .unwrap_or_else(|e| panic!("reading run {run_id} through the API: {e}"))
        })
    }

    /// The tenant's runs, newest first.
    fn runs(&self, token: &str) -> Vec<v1::Run> {
        block(async {
            self.client(token)
                .await
                .runs(Some(1000))
                .await
                .expect("the API lists the runs")
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `future` to its end on a runtime of its own.
fn block<F: std::future::Future>(future: F) -> F::Output {
    runtime().block_on(future)
}

// ---------------------------------------------------------------------------
// The browser

/// An element as a script read it: its attributes, its text (whitespace
/// collapsed) and, for links and fields, `href` (absolute) and `value`.
#[derive(Debug, Clone, Default)]
struct Seen {
    attrs: BTreeMap<String, String>,
    text: String,
    href: Option<String>,
    value: Option<String>,
}

impl Seen {
    fn attr(&self, name: &str) -> Option<&str> {
        self.attrs.get(name).map(String::as_str)
    }
}

/// Headless Chromium through chromedriver, both killed when dropped. The
/// methods block (each on the browser's own runtime), so tests read as the
/// steps a person takes.
struct Browser {
    base: String,
    client: fantoccini::Client,
    runtime: tokio::runtime::Runtime,
    _profile: tempfile::TempDir,
    _driver: Process,
}

impl Browser {
    /// A fresh browser (its own profile: no cookies) for the console at
    /// `base` (`http://127.0.0.1:PORT`).
    fn start(base: &str) -> Browser {
        for (path, what) in [(CHROMIUM, "Chromium"), (CHROMEDRIVER, "chromedriver")] {
            assert!(
                Path::new(path).exists(),
                "{what} is not installed at {path}: run deploy/scripts/setup.sh as root \
                 (it installs Debian's chromium and chromium-driver) before these tests"
            );
        }
        let port = free_port();
        let driver = Process::spawn(
            Command::new(CHROMEDRIVER)
                .arg(format!("--port={port}"))
                .env("HOME", std::env::temp_dir()),
        );
        let up = poll_every(Duration::from_millis(50), WAIT, || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(
            up,
            "chromedriver did not listen on port {port} within {WAIT:?}; it printed:\n{}\n{}",
            driver.stdout(),
            driver.stderr()
        );
        let profile = tempfile::tempdir().expect("a temp dir for Chromium's profile");
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-dev-shm-usage",
                    "--window-size=1280,900",
                    format!("--user-data-dir={}", profile.path().display()),
                ],
            }),
        );
        let runtime = runtime();
        let mut builder = fantoccini::ClientBuilder::new(
            hyper_util::client::legacy::connect::HttpConnector::new(),
        );
        builder.capabilities(capabilities);
        let client = runtime
            .block_on(builder.connect(&format!("http://127.0.0.1:{port}")))
            .unwrap_or_else(|e| {
                panic!(
                    "chromedriver could not start {CHROMIUM} ({e}); it printed:\n{}\n{}",
                    driver.stdout(),
                    driver.stderr()
                )
            });
        Browser {
            base: base.to_owned(),
            client,
            runtime,
            _profile: profile,
            _driver: driver,
        }
    }

    fn block<F: std::future::Future>(&self, future: F) -> F::Output {
        self.runtime.block_on(future)
    }

    /// Opens `path` (below the console's base, or a whole URL).
    fn goto(&self, path: &str) {
        let url = if path.contains("://") || path.starts_with("data:") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        // A page that does not load within WAIT is a failure: the console
        // once leaked a live stream per page left, and after six pages
        // the browser had no connection left to load the next one.
        match self.block(async { tokio::time::timeout(WAIT, self.client.goto(&url)).await }) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("the browser could not open {url}: {e}"),
            Err(_) => panic!("the browser did not load {url} within {WAIT:?}"),
        }
    }

    /// Waits for the page's `#error` and checks the page came with
    /// `status`; `what` says which page it is.
    fn expect_error_page(&self, status: u64, what: &str) {
        self.wait_for(&format!("an #error page: {what}"), |b| {
            b.has("#error").then_some(())
        });
        assert_eq!(self.status(), Some(status), "{what}\n{}", self.describe());
    }

    /// Reloads the page.
    fn refresh(&self) {
        self.block(self.client.refresh())
            .unwrap_or_else(|e| panic!("the browser could not reload the page: {e}"));
    }

    /// The path of the page shown, with its query (`/console/runs?x=1`).
    fn location(&self) -> String {
        let url = self
            .block(self.client.current_url())
            .unwrap_or_else(|e| panic!("the browser could not say which page it shows: {e}"));
        match url.query() {
            Some(query) => format!("{}?{query}", url.path()),
            None => url.path().to_owned(),
        }
    }

    /// The path of the page shown, without its query.
    fn path(&self) -> String {
        let location = self.location();
        match location.split_once('?') {
            Some((path, _)) => path.to_owned(),
            None => location,
        }
    }

    /// Runs `script` in the page; `arguments[i]` are `args`.
    fn execute(&self, script: &str, args: Vec<Value>) -> Result<Value, String> {
        self.block(self.client.execute(script, args))
            .map_err(|e| e.to_string())
    }

    /// The HTTP status the page shown was served with (after redirects:
    /// the last response's).
    fn status(&self) -> Option<u64> {
        self.execute(
            "const n = performance.getEntriesByType('navigation')[0];\
             return n ? n.responseStatus : null;",
            vec![],
        )
        .ok()
        .and_then(|v| v.as_u64())
    }

    /// Every element matching `css`, as a script sees them now; none while
    /// the page is between two documents.
    fn query(&self, css: &str) -> Vec<Seen> {
        let found = self.execute(
            "return Array.from(document.querySelectorAll(arguments[0])).map(e => ({\
               attrs: Object.fromEntries(Array.from(e.attributes).map(a => [a.name, a.value])),\
               text: (e.textContent || '').replace(/\\s+/g, ' ').trim(),\
               href: typeof e.href === 'string' ? e.href : null,\
               value: typeof e.value === 'string' ? e.value : null,\
             }));",
            vec![json!(css)],
        );
        let Ok(Value::Array(found)) = found else {
            return Vec::new();
        };
        found
            .into_iter()
            .map(|e| Seen {
                attrs: e["attrs"]
                    .as_object()
                    .map(|attrs| {
                        attrs
                            .iter()
                            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                            .collect()
                    })
                    .unwrap_or_default(),
                text: e["text"].as_str().unwrap_or_default().to_owned(),
                href: e["href"].as_str().map(str::to_owned),
                value: e["value"].as_str().map(str::to_owned),
            })
            .collect()
    }

    /// The first element matching `css`; the test fails, showing the page,
    /// when there is none.
    #[track_caller]
    fn one(&self, css: &str) -> Seen {
        match self.query(css).into_iter().next() {
            Some(seen) => seen,
            None => panic!("the page has no `{css}`\n{}", self.describe()),
        }
    }

    fn has(&self, css: &str) -> bool {
        !self.query(css).is_empty()
    }

    /// The text of the first element matching `css` (failing without one).
    #[track_caller]
    fn text(&self, css: &str) -> String {
        self.one(css).text
    }

    /// What the page is, for assertion messages: its address, status and
    /// the start of its visible text.
    fn describe(&self) -> String {
        let location = self
            .block(self.client.current_url())
            .map(|u| u.to_string())
            .unwrap_or_else(|e| format!("(no address: {e})"));
        let text = self
            .execute(
                "return document.body ? document.body.innerText : '';",
                vec![],
            )
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default();
        let cut: String = text.chars().take(3000).collect();
        format!(
            "--- the browser shows {location} (HTTP status {:?}):\n{cut}\n---",
            self.status()
        )
    }

    /// Polls `seen` until it gives something, for at most [`WAIT`]; the
    /// test fails saying `what` was not seen, and what the page showed.
    #[track_caller]
    fn wait_for<T>(&self, what: &str, mut seen: impl FnMut(&Browser) -> Option<T>) -> T {
        let mut found = None;
        poll_every(Duration::from_millis(100), WAIT, || {
            found = seen(self);
            found.is_some()
        });
        match found {
            Some(found) => found,
            None => panic!("{what}: not seen within {WAIT:?}\n{}", self.describe()),
        }
    }

    /// Waits until the browser shows the page at `path` (without query).
    #[track_caller]
    fn wait_for_path(&self, path: &str) {
        self.wait_for(&format!("the browser at {path}"), |b| {
            (b.path() == path).then_some(())
        });
    }

    fn element(&self, css: &str) -> fantoccini::elements::Element {
        self.block(self.client.find(Locator::Css(css)))
            .unwrap_or_else(|e| panic!("the page has no `{css}` to use ({e})\n{}", self.describe()))
    }

    /// Clicks the element matching `css`, as a person would.
    fn click(&self, css: &str) {
        let element = self.element(css);
        self.block(element.click())
            .unwrap_or_else(|e| panic!("clicking `{css}` failed ({e})\n{}", self.describe()));
    }

    /// Types `text` into the (emptied) field matching `css`.
    fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css);
        self.block(async {
            element.clear().await?;
            element.send_keys(text).await
        })
        .unwrap_or_else(|e| panic!("typing into `{css}` failed ({e})\n{}", self.describe()));
    }

    /// Picks the option of value `value` in the select matching `css`.
    fn select(&self, css: &str, value: &str) {
        let element = self.element(css);
        self.block(element.select_by_value(value))
            .unwrap_or_else(|e| {
                panic!(
                    "`{css}` has no option of value {value:?} to pick ({e})\n{}",
                    self.describe()
                )
            });
    }

    /// Submits the form matching `css` as its submit button would
    /// (`requestSubmit`: validation and submit events included).
    fn submit(&self, css: &str) {
        self.execute(
            "document.querySelector(arguments[0]).requestSubmit();",
            vec![json!(css)],
        )
        .unwrap_or_else(|e| panic!("submitting `{css}` failed ({e})\n{}", self.describe()));
    }

    /// The fields the form matching `css` would send, its method and its
    /// action (absolute).
    fn form(&self, css: &str) -> (String, String, Vec<(String, String)>) {
        let form = self
            .execute(
                "const f = document.querySelector(arguments[0]);\
                 if (!f) return null;\
                 return { method: f.method, action: f.action,\
                          fields: Array.from(new FormData(f).entries()).map(([k, v]) => [k, String(v)]) };",
                vec![json!(css)],
            )
            .unwrap_or_else(|e| panic!("reading the form `{css}` failed ({e})"));
        assert!(
            !form.is_null(),
            "the page has no form `{css}`\n{}",
            self.describe()
        );
        let fields = form["fields"]
            .as_array()
            .map(|fields| {
                fields
                    .iter()
                    .map(|f| {
                        (
                            f[0].as_str().unwrap_or_default().to_owned(),
                            f[1].as_str().unwrap_or_default().to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        (
            form["method"].as_str().unwrap_or_default().to_owned(),
            form["action"].as_str().unwrap_or_default().to_owned(),
            fields,
        )
    }

    /// Sets a value on `window` that only a reload (or another page) loses.
    fn mark_page(&self) {
        self.execute("window.__isoflowConsoleTest = 'not reloaded';", vec![])
            .unwrap_or_else(|e| panic!("marking the page failed ({e})"));
    }

    /// Whether the page marked by [`Browser::mark_page`] is still the one
    /// shown (it was not reloaded).
    fn still_marked(&self) -> bool {
        self.execute("return window.__isoflowConsoleTest || null;", vec![])
            .ok()
            .is_some_and(|v| v == json!("not reloaded"))
    }

    /// The browser's cookie `name` for the page shown.
    fn cookie(&self, name: &str) -> Option<fantoccini::cookies::Cookie<'static>> {
        self.block(self.client.get_named_cookie(name)).ok()
    }

    /// The session cookie's value; the test fails without one.
    #[track_caller]
    fn session(&self) -> String {
        match self.cookie(SESSION_COOKIE) {
            Some(cookie) => cookie.value().to_owned(),
            None => panic!(
                "the browser holds no {SESSION_COOKIE} cookie\n{}",
                self.describe()
            ),
        }
    }

    /// The page's CSRF token (`<meta name="csrf-token">`).
    #[track_caller]
    fn csrf(&self) -> String {
        let token = self
            .one("meta[name=\"csrf-token\"]")
            .attr("content")
            .unwrap_or_default()
            .to_owned();
        assert!(
            !token.is_empty(),
            "the csrf-token meta tag is empty\n{}",
            self.describe()
        );
        token
    }

    /// Signs in with `token` through the sign-in form and waits for the
    /// runs page it leads to.
    fn sign_in(&self, token: &str) {
        self.sign_in_to(token, "/console/runs");
    }

    /// Signs in and waits for the page sign-in leads to: a tenant's runs,
    /// the admin's cluster page.
    fn sign_in_to(&self, token: &str, landing: &str) {
        self.goto("/console/sign-in");
        self.type_into("form#sign-in input#token", token);
        self.click("form#sign-in button#sign-in-submit");
        self.wait_for(&format!("signing in to lead to {landing}"), |b| {
            // An error page will not turn into the landing page: say so at once.
            if b.has("#error") {
                panic!("signing in was refused\n{}", b.describe());
            }
            (b.path() == landing).then_some(())
        });
    }

    /// Signs out with the nav's form; then the console asks to sign in.
    fn sign_out(&self) {
        self.click("form#sign-out button#sign-out-submit");
        self.goto("/console/runs");
        self.wait_for_path("/console/sign-in");
    }

    /// Saves a PNG of the page as `<target>/console-screenshots/<name>.png`
    /// and, with `ISOFLOW_BLESS=1`, as `docs/console/<name>.png`.
    fn screenshot(&self, name: &str) {
        let png = self
            .block(self.client.screenshot())
            .unwrap_or_else(|e| panic!("the browser could not take a screenshot: {e}"));
        assert!(
            png.starts_with(b"\x89PNG\r\n\x1a\n") && png.len() > 1000,
            "the screenshot of {name} is no PNG image ({} bytes)",
            png.len()
        );
        let mut dirs = vec![screenshot_dir()];
        if std::env::var("ISOFLOW_BLESS").is_ok_and(|v| v == "1") {
            dirs.push(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../docs/console"
            )));
        }
        for dir in dirs {
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
            let file = dir.join(format!("{name}.png"));
            std::fs::write(&file, &png)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", file.display()));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ends the session, so chromedriver stops Chromium; the driver is
        // killed when its Process is dropped after this.
        let client = self.client.clone();
        let _ = self.runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(10), client.close()).await
        });
    }
}

fn screenshot_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("CARGO_TARGET_TMPDIR is a folder inside the target folder")
        .join("console-screenshots")
}

// ---------------------------------------------------------------------------
// Plain HTTP, for what a browser does not show (statuses, headers, bytes)
// or would not send (forged forms)

#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> String {
        self.headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Whether the HTML has an element of id `id`.
    fn has_id(&self, id: &str) -> bool {
        let text = self.text();
        [
            format!("id=\"{id}\""),
            format!("id='{id}'"),
            format!("id={id}>"),
            format!("id={id} "),
        ]
        .iter()
        .any(|form| text.contains(form.as_str()))
    }
}

/// One request with the session cookie `session` (when given), redirects
/// not followed. `form` is sent as `application/x-www-form-urlencoded`.
/// With `head_only` the body is not read (an event stream never ends).
fn http(
    method: &str,
    url: &str,
    session: Option<&str>,
    headers: &[(&str, &str)],
    form: Option<&[(String, String)]>,
    head_only: bool,
) -> Answer {
    block(async {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(LONG)
            .build()
            .expect("a reqwest client");
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = client.request(method.clone(), url);
        if let Some(session) = session {
            request = request.header("Cookie", format!("{SESSION_COOKIE}={session}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(form) = form {
            let body = form_urlencoded::Serializer::new(String::new())
                .extend_pairs(form.iter())
                .finish();
            request = request
                .header("Content-Type", "application/x-www-form-urlencoded")
                .body(body);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {url} got no answer: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = if head_only {
            Vec::new()
        } else {
            response
                .bytes()
                .await
                .unwrap_or_else(|e| panic!("{method} {url}: the body could not be read: {e}"))
                .to_vec()
        };
        Answer {
            status,
            headers,
            body,
        }
    })
}

/// `fields` with `name` set to `value` (replaced, or added).
fn with_field(fields: &[(String, String)], name: &str, value: &str) -> Vec<(String, String)> {
    let mut fields: Vec<(String, String)> =
        fields.iter().filter(|(k, _)| k != name).cloned().collect();
    fields.push((name.to_owned(), value.to_owned()));
    fields
}

/// `fields` without `name`.
fn without_field(fields: &[(String, String)], name: &str) -> Vec<(String, String)> {
    fields.iter().filter(|(k, _)| k != name).cloned().collect()
}

// ---------------------------------------------------------------------------
// Integrations the tests run

/// `orders`: fetch (GET `<shop>/orders/<input.batch>`) → count (code: logs
/// a line, returns the batch and how many orders it had) → confirm (POST
/// the count to `<shop>/confirm/<input.batch>`). A run is "running" once a
/// step has finished (before, the API calls it pending, "queued"), so runs
/// are held at their last step, confirm.
fn orders_definition(shop: &HttpFixture) -> String {
    r#"
apiVersion: isoflow.dev/v1
name: orders
version: 1
steps:
  - id: fetch
    type: http
    url: "@SHOP@/orders/{{ input.batch }}"
  - id: count
    type: code
    source: |
      export default (input, ctx) => {
        ctx.log("counted", input.orders.length, "orders in batch", input.batch);
        return { batch: input.batch, count: input.orders.length, ids: input.orders };
      };
    input: { orders: "{{ steps.fetch.output.body.orders }}", batch: "{{ input.batch }}" }
  - id: confirm
    type: http
    method: POST
    url: "@SHOP@/confirm/{{ input.batch }}"
    body: "{{ steps.count.output }}"
    timeout: 5m
"#
    .replace("@SHOP@", &shop.url(""))
}

/// A shop whose `GET /orders/<batch>` answers three orders and whose
/// `POST /confirm/<batch>` answers 201; the confirmations of `held`
/// batches wait for their gate first.
fn shop(held: &[(&str, &Gate)]) -> HttpFixture {
    let shop = HttpFixture::start();
    let orders = Reply::json(200, &json!({ "orders": [101, 102, 103] }));
    let confirmed = Reply::json(201, &json!({ "confirmed": true }));
    shop.route("GET", "/orders/*", Responder::Fixed(orders));
    shop.route("POST", "/confirm/*", Responder::Fixed(confirmed.clone()));
    for (batch, gate) in held {
        shop.route(
            "POST",
            &format!("/confirm/{batch}"),
            Responder::Hold((*gate).clone(), confirmed.clone()),
        );
    }
    shop
}

/// The line of `repair`'s code step that throws in version 1.
const BROKEN_LINE: &str =
    "const total = input.reduce((sum, order) => sum + order.amount.value, 0);";
const FIXED_LINE: &str = "const total = input.reduce((sum, order) => sum + order, 0);";

/// Version `version` of `repair`: fetch (GET `/orders`, counted) → shape
/// (code; `line` computes the total, on the source's third line) → post
/// (POST `/erp`, counted).
fn repair_definition(fixture: &HttpFixture, version: u32, line: &str) -> String {
    r#"
apiVersion: isoflow.dev/v1
name: repair
version: @VERSION@
steps:
  - id: fetch
    type: http
    url: "@FETCH@"
  - id: shape
    type: code
    source: |
      export default (input, ctx) => {
        ctx.log("summing", input.length, "orders");
        @LINE@
        return { total, version: @VERSION@ };
      };
    input: "{{ steps.fetch.output.body.orders }}"
  - id: post
    type: http
    method: POST
    url: "@POST@"
    body: "{{ steps.shape.output }}"
"#
    .replace("@VERSION@", &version.to_string())
    .replace("@FETCH@", &fixture.url("/orders"))
    .replace("@POST@", &fixture.url("/erp"))
    .replace("@LINE@", line)
}

/// A shop (`GET /orders`: three numbers) and an ERP (`POST /erp`: 201).
fn shop_and_erp() -> HttpFixture {
    let fixture = HttpFixture::start();
    fixture.route(
        "GET",
        "/orders",
        Responder::Fixed(Reply::json(200, &json!({ "orders": [1, 2, 3] }))),
    );
    fixture.route(
        "POST",
        "/erp",
        Responder::Fixed(Reply::json(201, &json!({ "ok": true }))),
    );
    fixture
}

/// The data-run-id of every row of `table#runs`.
fn listed_runs(browser: &Browser) -> Vec<String> {
    browser
        .query("table#runs tbody tr.run")
        .into_iter()
        .filter_map(|row| row.attr("data-run-id").map(str::to_owned))
        .collect()
}

/// The data-status of the row of `run_id` in `table#runs`, if listed.
fn listed_status(browser: &Browser, run_id: &str) -> Option<String> {
    browser
        .query(&format!(
            "table#runs tbody tr.run[data-run-id=\"{run_id}\"]"
        ))
        .into_iter()
        .next()
        .and_then(|row| row.attr("data-status").map(str::to_owned))
}

/// The data-status of `#run` on a run page.
fn shown_status(browser: &Browser) -> Option<String> {
    browser
        .query("#run")
        .into_iter()
        .next()
        .and_then(|run| run.attr("data-status").map(str::to_owned))
}

// ---------------------------------------------------------------------------
// The tests

/// The harness itself: chromedriver starts Chromium, which renders a page
/// and takes a screenshot (no node involved), so a failure of the console
/// tests is not a broken browser.
#[test]
fn chromium_renders_a_page_and_takes_a_screenshot_through_chromedriver() {
    let browser = Browser::start("http://127.0.0.1:9");
    browser.goto("data:text/html,<title>harness</title><h1 id=hello data-x=1>Hello, console</h1>");
    let hello = browser.one("h1#hello");
    assert_eq!(
        (hello.text.as_str(), hello.attr("data-x")),
        ("Hello, console", Some("1")),
        "the page the browser shows: {hello:?}"
    );
    let png = browser
        .block(browser.client.screenshot())
        .expect("the browser takes a screenshot");
    assert!(
        png.starts_with(b"\x89PNG"),
        "a screenshot is a PNG image; got {} bytes starting {:?}",
        png.len(),
        &png[..png.len().min(8)]
    );
}

#[test]
fn a_tenant_signs_in_sees_a_run_appear_live_and_reads_its_steps_logs_and_output() {
    let node = Node::start();
    let (first_gate, second_gate) = (Gate::new(), Gate::new());
    let shop = shop(&[("held-1", &first_gate), ("held-2", &second_gate)]);
    node.deploy(ACME, &orders_definition(&shop));
    let browser = Browser::start(&node.base());

    // Without a session every console page asks to sign in.
    for page in ["/console", "/console/runs", "/console/integrations"] {
        browser.goto(page);
        browser.wait_for_path("/console/sign-in");
    }
    for part in [
        "form#sign-in",
        "form#sign-in input#token[name=\"token\"]",
        "form#sign-in button#sign-in-submit",
    ] {
        browser.one(part);
    }
    browser.screenshot("sign-in");

    // A wrong token: 401, a sentence, no session.
    browser.type_into("input#token", "not-a-token-0123456789abcdef");
    browser.click("button#sign-in-submit");
    let error = browser.wait_for("the sign-in page's #error for a wrong token", |b| {
        b.query("#error")
            .into_iter()
            .next()
            .filter(|e| !e.text.is_empty())
    });
    assert_eq!(
        browser.status(),
        Some(401),
        "a wrong token is answered 401; the page said {:?}",
        error.text
    );
    assert!(
        error.text.split_whitespace().count() >= 3,
        "#error is a sentence, not a code: {:?}",
        error.text
    );
    assert!(
        browser.cookie(SESSION_COOKIE).is_none(),
        "a wrong token got a session cookie"
    );

    // What signing in answers, over plain HTTP: 303 to the runs, and the
    // session cookie with its attributes.
    browser.goto("/console/sign-in");
    let (method, action, fields) = browser.form("form#sign-in");
    assert_eq!(
        method, "post",
        "the sign-in form posts (its token is no query parameter)"
    );
    let answer = http(
        "POST",
        &action,
        None,
        &[("Origin", node.base().as_str())],
        Some(&with_field(&fields, "token", ACME)),
        false,
    );
    assert!(
        answer.status == 303 && answer.header("location").ends_with("/console/runs"),
        "signing in answers 303 to /console/runs; got {} {:?}: {}",
        answer.status,
        answer.headers,
        answer.text()
    );
    let set_cookie = answer.header("set-cookie");
    let session_line = set_cookie
        .lines()
        .find(|l| l.starts_with(&format!("{SESSION_COOKIE}=")))
        .unwrap_or_else(|| panic!("no {SESSION_COOKIE} cookie is set: {set_cookie:?}"));
    let attributes: BTreeSet<String> = session_line
        .split(';')
        .skip(1)
        .map(|a| a.trim().to_ascii_lowercase())
        .collect();
    for expected in ["httponly", "samesite=strict", "path=/console"] {
        assert!(
            attributes.contains(expected),
            "the session cookie lacks {expected}: {session_line:?}"
        );
    }

    // Signing in in the browser.
    browser.sign_in(ACME);
    let cookie = browser
        .cookie(SESSION_COOKIE)
        .unwrap_or_else(|| panic!("signed in without a session cookie\n{}", browser.describe()));
    assert_eq!(
        (
            cookie.http_only(),
            format!("{:?}", cookie.same_site()),
            cookie.path()
        ),
        (Some(true), "Some(Strict)".to_owned(), Some("/console")),
        "the session cookie as the browser holds it: {cookie:?}"
    );
    assert!(
        browser
            .execute("return document.cookie;", vec![])
            .is_ok_and(|c| !c.as_str().unwrap_or_default().contains(SESSION_COOKIE)),
        "scripts can read the session cookie (it is not HttpOnly)"
    );

    // Every signed-in page's frame.
    assert_eq!(
        browser.one("body").attr("data-tenant"),
        Some("acme"),
        "body[data-tenant] names the tenant\n{}",
        browser.describe()
    );
    for part in [
        "nav a#nav-runs",
        "nav a#nav-integrations",
        "form#sign-out button#sign-out-submit",
        "button#theme",
    ] {
        browser.one(part);
    }
    assert!(
        !browser.has("a#nav-cluster"),
        "a tenant's session shows the cluster link\n{}",
        browser.describe()
    );
    browser.csrf();
    // The theme toggle switches the page between light and dark.
    let background = |b: &Browser| {
        b.execute(
            "return getComputedStyle(document.body).backgroundColor;",
            vec![],
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
    };
    let before = background(&browser);
    browser.click("button#theme");
    let toggled = browser.wait_for("the background to change with the theme toggle", |b| {
        let now = background(b);
        (now != before).then_some(now)
    });
    browser.click("button#theme");
    browser.wait_for("the background to change back with the theme toggle", |b| {
        (background(b) == before).then_some(())
    });
    assert_ne!(before, toggled, "light and dark have one background");

    // The runs page's filters.
    let (method, _, _) = browser.form("form#filters");
    assert_eq!(method, "get", "the filters are a GET form");
    for field in [
        "select[name=\"integration\"]",
        "input[name=\"version\"]",
        "select[name=\"status\"]",
        "input[name=\"trigger\"]",
        "input[name=\"from\"]",
        "input[name=\"to\"]",
    ] {
        browser.one(&format!("form#filters {field}"));
    }
    let statuses: BTreeSet<String> = browser
        .query("form#filters select[name=\"status\"] option")
        .into_iter()
        .filter_map(|o| o.value)
        .collect();
    let expected: BTreeSet<String> = ["", "queued", "running", "succeeded", "failed", "cancelled"]
        .into_iter()
        .map(str::to_owned)
        .collect();
    assert_eq!(statuses, expected, "the status filter's option values");
    assert!(
        browser
            .query("form#filters select[name=\"integration\"] option")
            .iter()
            .any(|o| o.value.as_deref() == Some("orders")),
        "the integration filter offers `orders`\n{}",
        browser.describe()
    );
    assert!(
        listed_runs(&browser).is_empty(),
        "no run yet, yet the table lists {:?}",
        listed_runs(&browser)
    );

    // A run started through the API appears without a reload, running
    // while its fetch is held, then succeeded.
    browser.mark_page();
    let first = node.start_run(ACME, "orders", &json!({ "batch": "held-1" }));
    assert!(
        first_gate.wait_for_waiting(1, WAIT),
        "the run's fetch never reached the shop\n{}",
        node.process.stderr()
    );
    browser.wait_for(&format!("run {first} listed as running"), |b| {
        (listed_status(b, &first).as_deref() == Some("running")).then_some(())
    });
    first_gate.release();
    browser.wait_for(&format!("run {first} listed as succeeded"), |b| {
        (listed_status(b, &first).as_deref() == Some("succeeded")).then_some(())
    });
    assert!(
        browser.still_marked(),
        "the runs page was reloaded to show the run; it should have been pushed"
    );
    assert_eq!(
        node.wait(ACME, &first).status(),
        v1::RunStatus::Succeeded,
        "the API agrees the run succeeded"
    );

    // A second run, opened while it runs: its page follows it live.
    let second = node.start_run(ACME, "orders", &json!({ "batch": "held-2" }));
    assert!(
        second_gate.wait_for_waiting(1, WAIT),
        "the second run's fetch never reached the shop"
    );
    browser.wait_for(&format!("run {second} listed as running"), |b| {
        (listed_status(b, &second).as_deref() == Some("running")).then_some(())
    });
    let link = browser.one(&format!(
        "table#runs tbody tr.run[data-run-id=\"{second}\"] a.run-link"
    ));
    assert_eq!(
        link.attr("href"),
        Some(format!("/console/runs/{second}").as_str()),
        "the row's link: {link:?}"
    );
    browser.click(&format!(
        "table#runs tbody tr.run[data-run-id=\"{second}\"] a.run-link"
    ));
    browser.wait_for_path(&format!("/console/runs/{second}"));
    let run = browser.one("#run");
    assert_eq!(
        (run.attr("data-run-id"), run.attr("data-status")),
        (Some(second.as_str()), Some("running")),
        "#run while the fetch is held: {run:?}"
    );
    assert_eq!(browser.text("#run-status"), "running");
    browser.mark_page();
    second_gate.release();
    browser.wait_for("#run's data-status to become succeeded", |b| {
        (shown_status(b).as_deref() == Some("succeeded")).then_some(())
    });
    browser.wait_for("#run-status to say succeeded", |b| {
        b.query("#run-status")
            .first()
            .filter(|s| s.text == "succeeded")
            .map(|_| ())
    });
    assert!(
        browser.still_marked(),
        "the run page was reloaded to show the end of the run; it should have been pushed"
    );

    // Its steps: the timeline, the code step's logs, input and output.
    browser.refresh();
    browser.wait_for("the run page after a reload", |b| {
        (shown_status(b).as_deref() == Some("succeeded")).then_some(())
    });
    let bars: BTreeSet<String> = browser
        .query("svg#timeline g.bar")
        .into_iter()
        .filter_map(|g| g.attr("data-step-key").map(str::to_owned))
        .collect();
    assert_eq!(
        bars,
        BTreeSet::from(["confirm".to_owned(), "count".to_owned(), "fetch".to_owned()]),
        "the timeline's bars"
    );
    for key in ["fetch", "count", "confirm"] {
        let section = browser.one(&format!("section.step[data-step-key=\"{key}\"]"));
        assert_eq!(
            section.attr("data-status"),
            Some("succeeded"),
            "step {key}'s section: {:?}",
            section.attrs
        );
    }
    let count = "section.step[data-step-key=\"count\"]";
    let logs: Vec<String> = browser
        .query(&format!("{count} ul.step-logs li.log"))
        .into_iter()
        .map(|l| l.text)
        .collect();
    assert!(
        logs.iter()
            .any(|l| l.contains("counted 3 orders in batch held-2")),
        "the count step's log lines: {logs:?}"
    );
    let output = browser.text(&format!("{count} .step-output"));
    for part in ["held-2", "count", "3", "101", "103"] {
        assert!(
            output.contains(part),
            "the count step's output lacks {part:?}: {output:?}"
        );
    }
    let fetched = browser.text("section.step[data-step-key=\"fetch\"] .step-output");
    assert!(
        fetched.contains("101"),
        "the fetch step's output (the shop's answer): {fetched:?}"
    );
    // A step that did not fail shows its input on its own page.
    browser.click(&format!("{count} .step-input-link a"));
    browser.wait_for("the count step's own page", |b| {
        b.has(&format!("{count} .step-input")).then_some(())
    });
    let input = browser.text(&format!("{count} .step-input"));
    assert!(
        input.contains("102") && input.contains("held-2"),
        "the code step's input: {input:?}"
    );
    browser.one(&format!("{count} a.download-input"));

    // Paging and filtering the list.
    let third = node.start_run(ACME, "orders", &json!({ "batch": "b3" }));
    node.wait(ACME, &third);
    browser.goto("/console/runs?page_size=2");
    let page_one = browser.wait_for("two runs on the first page", |b| {
        let ids = listed_runs(b);
        (ids.len() == 2).then_some(ids)
    });
    browser.click("a#next-page");
    let page_two = browser.wait_for("the next page's runs", |b| {
        let ids = listed_runs(b);
        (!ids.is_empty() && ids.iter().all(|id| !page_one.contains(id))).then_some(ids)
    });
    let all: BTreeSet<String> = page_one.iter().chain(&page_two).cloned().collect();
    assert_eq!(
        all,
        BTreeSet::from([first.clone(), second.clone(), third.clone()]),
        "the two pages list the three runs once each: {page_one:?} then {page_two:?}"
    );
    browser.goto("/console/runs");
    browser.select("form#filters select[name=\"status\"]", "failed");
    browser.submit("form#filters");
    browser.wait_for("the list filtered by status=failed", |b| {
        (b.location().contains("status=failed") && b.has("table#runs")).then_some(())
    });
    assert!(
        listed_runs(&browser).is_empty(),
        "no run failed, yet status=failed lists {:?}",
        listed_runs(&browser)
    );
    browser.select("form#filters select[name=\"status\"]", "succeeded");
    browser.select("form#filters select[name=\"integration\"]", "orders");
    browser.submit("form#filters");
    let succeeded = browser.wait_for("the list filtered by status=succeeded", |b| {
        let ids = listed_runs(b);
        (b.location().contains("status=succeeded") && ids.len() == 3).then_some(ids)
    });
    assert!(
        browser
            .query("table#runs tbody tr.run")
            .iter()
            .all(|r| r.attr("data-status") == Some("succeeded")),
        "status=succeeded lists {succeeded:?}\n{}",
        browser.describe()
    );
    browser.goto("/console/runs?version=2");
    browser.wait_for("the list filtered by version=2", |b| {
        b.has("table#runs").then_some(())
    });
    assert!(
        listed_runs(&browser).is_empty(),
        "no run of version 2, yet version=2 lists {:?}",
        listed_runs(&browser)
    );
    browser.goto("/console/runs?trigger=api");
    browser.wait_for("the list filtered by trigger=api", |b| {
        (listed_runs(b).len() == 3).then_some(())
    });
    browser.goto("/console/runs");
    browser.wait_for("the three runs listed", |b| {
        (listed_runs(b).len() == 3).then_some(())
    });
    browser.screenshot("runs");
}

#[test]
fn a_running_run_is_cancelled_from_its_page() {
    let node = Node::start();
    let gate = Gate::new();
    let shop = shop(&[("held", &gate)]);
    node.deploy(ACME, &orders_definition(&shop));
    let run_id = node.start_run(ACME, "orders", &json!({ "batch": "held" }));
    assert!(
        gate.wait_for_waiting(1, WAIT),
        "the run's fetch never reached the shop\n{}",
        node.process.stderr()
    );
    let browser = Browser::start(&node.base());
    browser.sign_in(ACME);
    browser.goto(&format!("/console/runs/{run_id}"));
    browser.wait_for("the run shown as running", |b| {
        (shown_status(b).as_deref() == Some("running")).then_some(())
    });
    assert!(
        !browser.has("form#rerun"),
        "a running run offers a rerun\n{}",
        browser.describe()
    );
    let (method, action, fields) = browser.form("form#cancel");
    assert_eq!(
        (method.as_str(), action.as_str()),
        (
            "post",
            format!("{}/console/runs/{run_id}/cancel", node.base()).as_str()
        ),
        "the cancel form"
    );
    let csrf = browser.csrf();
    assert!(
        fields.contains(&("csrf".to_owned(), csrf.clone())),
        "the cancel form carries the page's csrf token {csrf:?} in a field `csrf`: {fields:?}"
    );

    browser.click("form#cancel button#cancel-run");
    browser.wait_for("#run-status to say cancelled", |b| {
        (b.path() == format!("/console/runs/{run_id}")
            && b.query("#run-status")
                .first()
                .is_some_and(|s| s.text == "cancelled"))
        .then_some(())
    });
    assert_eq!(
        shown_status(&browser).as_deref(),
        Some("cancelled"),
        "#run's data-status after cancelling\n{}",
        browser.describe()
    );
    assert_eq!(
        node.run(ACME, &run_id).status(),
        v1::RunStatus::Cancelled,
        "the API says the run is cancelled"
    );
    browser.refresh();
    browser.wait_for("the cancelled run after a reload", |b| {
        (shown_status(b).as_deref() == Some("cancelled")).then_some(())
    });
    assert!(
        !browser.has("form#cancel"),
        "a cancelled run still offers to cancel it\n{}",
        browser.describe()
    );
    // Let the held fetch go: the run stays cancelled.
    gate.release();
    assert_eq!(
        node.wait(ACME, &run_id).status(),
        v1::RunStatus::Cancelled,
        "the run, once its held fetch answered"
    );
}

#[test]
fn a_failed_run_is_fixed_and_resumed_with_the_new_version_from_its_page() {
    let node = Node::start();
    let fixture = shop_and_erp();
    node.deploy(ACME, &repair_definition(&fixture, 1, BROKEN_LINE));
    let failed_id = node.start_run(ACME, "repair", &json!({}));
    let failed = node.wait(ACME, &failed_id);
    assert_eq!(failed.status(), v1::RunStatus::Failed, "{failed:?}");
    assert_eq!(
        (
            fixture.count("GET", "/orders"),
            fixture.count("POST", "/erp")
        ),
        (1, 0),
        "v1 fetched once and failed before posting"
    );

    let browser = Browser::start(&node.base());
    browser.sign_in(ACME);
    browser.wait_for(&format!("run {failed_id} listed as failed"), |b| {
        (listed_status(b, &failed_id).as_deref() == Some("failed")).then_some(())
    });
    browser.click(&format!(
        "table#runs tbody tr.run[data-run-id=\"{failed_id}\"] a.run-link"
    ));
    browser.wait_for_path(&format!("/console/runs/{failed_id}"));
    assert_eq!(browser.text("#run-status"), "failed");
    let run_error = browser.text("#run-error");
    let said = failed
        .error
        .split_once("uncaught ")
        .map_or(failed.error.as_str(), |(_, e)| e);
    let said = said
        .lines()
        .next()
        .and_then(|l| l.split(" at ").next())
        .unwrap_or_default()
        .to_owned();
    assert!(
        !said.is_empty() && run_error.contains(&said),
        "#run-error {run_error:?} does not say what the run's error says ({:?})",
        failed.error
    );
    let shape = "section.step[data-step-key=\"shape\"]";
    assert_eq!(
        browser.one(shape).attr("data-status"),
        Some("failed"),
        "the shape step's section"
    );
    browser.one(&format!("{shape} .step-error"));
    let error_line = browser.text(&format!("{shape} .step-error ol.source li.error-line"));
    assert!(
        error_line.contains("order.amount.value"),
        "the highlighted source line is not the one that threw ({BROKEN_LINE:?}): {error_line:?}"
    );
    let input = browser.text(&format!("{shape} .step-input"));
    assert!(
        input.contains('1') && input.contains('3'),
        "the failed code step's input ([1, 2, 3]): {input:?}"
    );
    browser.one(&format!("{shape} a.download-input"));
    browser.one("form#rerun button#rerun-run");
    browser
        .execute(
            "document.querySelector(arguments[0]).scrollIntoView({ block: 'center' });",
            vec![json!(format!("{shape} .step-error"))],
        )
        .expect("the step's error is scrolled into view");
    browser.screenshot("run-failed");

    // The bundle, over plain HTTP: `isoflow eval` fails as the run did.
    let bundle = browser.one(&format!("{shape} a.download-bundle"));
    let bundle_url = bundle
        .href
        .clone()
        .unwrap_or_else(|| panic!("a.download-bundle has no href: {bundle:?}"));
    let answer = http(
        "GET",
        &bundle_url,
        Some(&browser.session()),
        &[],
        None,
        false,
    );
    assert_eq!(
        answer.status,
        200,
        "GET {bundle_url}: {}",
        answer.text().chars().take(500).collect::<String>()
    );
    let dir = tempfile::tempdir().expect("a temp dir for the bundle");
    let tar = dir.path().join("bundle.tar");
    std::fs::write(&tar, &answer.body).expect("the bundle is saved");
    let untar = Command::new("tar")
        .arg("-xf")
        .arg(&tar)
        .current_dir(dir.path())
        .output()
        .expect("tar runs");
    assert!(
        untar.status.success(),
        "the bundle is no tar archive ({} bytes, content-disposition {:?}): {}",
        answer.body.len(),
        answer.header("content-disposition"),
        String::from_utf8_lossy(&untar.stderr)
    );
    for file in ["shape.js", "input.json", "README.txt"] {
        assert!(
            dir.path().join(file).is_file(),
            "the bundle has no {file}; tar -tf lists:\n{}",
            String::from_utf8_lossy(
                &Command::new("tar")
                    .arg("-tf")
                    .arg(&tar)
                    .output()
                    .expect("tar runs")
                    .stdout
            )
        );
    }
    let eval = Command::new(env!("CARGO_BIN_EXE_isoflow"))
        .args(["eval", "shape.js", "--input", "@input.json"])
        .current_dir(dir.path())
        .env_remove("ISOFLOW_DATA_DIR")
        .output()
        .expect("isoflow eval runs");
    let eval_said = String::from_utf8_lossy(&eval.stderr);
    assert!(
        !eval.status.success() && eval_said.contains(&said),
        "isoflow eval on the bundle should fail as the run did ({said:?}); it exited {:?}:\n{eval_said}\n{}",
        eval.status,
        String::from_utf8_lossy(&eval.stdout)
    );

    // The fix, deployed through the API, and the resume from the page.
    node.deploy(ACME, &repair_definition(&fixture, 2, FIXED_LINE));
    browser.refresh();
    let versions: Vec<String> = browser.wait_for("version 2 offered to resume with", |b| {
        let versions: Vec<String> = b
            .query("form#resume select#resume-version[name=\"version\"] option")
            .into_iter()
            .filter_map(|o| o.value)
            .collect();
        versions.iter().any(|v| v == "2").then_some(versions)
    });
    assert!(
        !versions.iter().any(|v| v == "1"),
        "the resume form offers the run's own version: {versions:?}"
    );
    browser.select("form#resume select#resume-version", "2");
    browser.click("form#resume button#resume-run");
    let resumed_id = browser.wait_for("the resumed run's page", |b| {
        let path = b.path();
        let id = path.strip_prefix("/console/runs/")?.to_owned();
        (id != failed_id && !id.is_empty() && !id.contains('/')).then_some(id)
    });
    browser.wait_for("the resumed run to succeed", |b| {
        (shown_status(b).as_deref() == Some("succeeded")).then_some(())
    });
    let resumed = node.wait(ACME, &resumed_id);
    assert_eq!(
        (
            resumed.status(),
            resumed.version,
            resumed.from_version,
            resumed.rerun_of.as_str()
        ),
        (v1::RunStatus::Succeeded, 2, 1, failed_id.as_str()),
        "the resumed run as the API shows it: {resumed:?}"
    );
    assert_eq!(
        fixture.count("GET", "/orders"),
        1,
        "fetch ran once in all (the resumed run reused its output)"
    );
    assert_eq!(
        fixture
            .requests("POST", "/erp")
            .iter()
            .map(|r| r.json())
            .collect::<Vec<_>>(),
        [json!({ "total": 6, "version": 2 })],
        "the ERP got version 2's total once"
    );
    let moved = browser.text("#moved");
    assert!(
        moved.contains("moved from version 1 to version 2"),
        "#moved: {moved:?}"
    );
    let rerun_of = browser.one("#rerun-of");
    assert!(
        rerun_of
            .href
            .as_deref()
            .or(rerun_of.attr("href"))
            .is_some_and(|h| h.ends_with(&format!("/console/runs/{failed_id}"))),
        "#rerun-of links to the failed run {failed_id}: {rerun_of:?}"
    );

    // The integration's pages.
    browser.click("nav a#nav-integrations");
    browser.wait_for_path("/console/integrations");
    browser.one("table#integrations tr.integration[data-name=\"repair\"]");
    browser.goto("/console/integrations/repair");
    let nodes: BTreeSet<String> = browser
        .wait_for("the integration's graph", |b| {
            let nodes: BTreeSet<String> = b
                .query("svg#graph g.node")
                .into_iter()
                .filter_map(|n| n.attr("data-step-id").map(str::to_owned))
                .collect();
            (!nodes.is_empty()).then_some(nodes)
        })
        .into_iter()
        .collect();
    assert_eq!(
        nodes,
        BTreeSet::from(["fetch".to_owned(), "post".to_owned(), "shape".to_owned()]),
        "the graph's nodes"
    );
    let v1 = browser.text("table#versions tr.version[data-version=\"1\"]");
    let v2 = browser.text("table#versions tr.version[data-version=\"2\"]");
    assert!(
        v1.contains("100"),
        "version 1 ran once and failed: its row should show a 100% failure rate: {v1:?}"
    );
    assert!(
        v2.contains('0') && !v2.contains("100"),
        "version 2 ran once and succeeded: its row should show a 0% failure rate: {v2:?}"
    );
    browser.one("table#triggers");
    browser.screenshot("integration");
}

#[test]
fn a_tenant_cannot_open_another_tenants_run_by_its_address() {
    let node = Node::start();
    let secret = "globex-ledger-7731";
    node.deploy(
        GLOBEX,
        r#"
apiVersion: isoflow.dev/v1
name: globex-ledger
version: 1
steps:
  - id: book
    type: code
    source: |
      export default (input, ctx) => {
        ctx.log("booking", input.secret);
        return { secret: input.secret, pad: "x".repeat(1048576) };
      };
    input: "{{ input }}"
"#,
    );
    let theirs = node.start_run(GLOBEX, "globex-ledger", &json!({ "secret": secret }));
    assert_eq!(
        node.wait(GLOBEX, &theirs).status(),
        v1::RunStatus::Succeeded,
        "globex's run"
    );
    let shop = shop(&[]);
    node.deploy(ACME, &orders_definition(&shop));
    let ours = node.start_run(ACME, "orders", &json!({ "batch": "b1" }));
    node.wait(ACME, &ours);

    // Globex's own session sees its run, and the addresses of its
    // downloads (these must work for globex).
    let browser = Browser::start(&node.base());
    browser.sign_in(GLOBEX);
    browser.goto(&format!("/console/runs/{theirs}"));
    browser.wait_for("globex's run page", |b| {
        (shown_status(b).as_deref() == Some("succeeded")).then_some(())
    });
    let book = "section.step[data-step-key=\"book\"]";
    // Its input and bundle are on the step's own page.
    browser.goto(&format!("/console/runs/{theirs}/steps/book"));
    browser.wait_for("globex's step page", |b| {
        b.has(&format!("{book} a.download-bundle")).then_some(())
    });
    let downloads: Vec<String> = [
        format!("{book} a.download-output"),
        format!("{book} a.download-input"),
        format!("{book} a.download-bundle"),
    ]
    .iter()
    .map(|css| {
        let link = browser.one(css);
        link.href
            .clone()
            .unwrap_or_else(|| panic!("{css} has no href: {link:?}"))
    })
    .collect();
    let events = format!("{}/console/runs/{theirs}/events", node.base());
    let globex_session = browser.session();
    for url in &downloads {
        let answer = http("GET", url, Some(&globex_session), &[], None, false);
        assert_eq!(answer.status, 200, "globex downloads its own {url}");
    }
    let answer = http("GET", &events, Some(&globex_session), &[], None, true);
    assert!(
        answer.status == 200
            && answer
                .header("content-type")
                .starts_with("text/event-stream"),
        "the run's events (assumed at {events}, the contract names no address) for its own \
         tenant: {} {:?}",
        answer.status,
        answer.headers
    );
    browser.sign_out();

    // Acme's session: the same addresses are 404s that say nothing of it.
    browser.sign_in(ACME);
    assert!(
        !listed_runs(&browser).contains(&theirs),
        "acme's runs list globex's run"
    );
    browser.goto(&format!("/console/runs/{theirs}"));
    browser.expect_error_page(404, "another tenant's run page");
    let source = browser
        .block(browser.client.source())
        .expect("the page's source");
    for leak in [secret, "globex-ledger", "booking"] {
        assert!(
            !source.contains(leak),
            "the 404 page shows {leak:?} of globex's run:\n{source}"
        );
    }
    let acme_session = browser.session();
    for url in downloads.iter().chain([&events]) {
        let answer = http("GET", url, Some(&acme_session), &[], None, false);
        assert_eq!(
            answer.status,
            404,
            "acme's session asked for globex's {url}: {}",
            answer.text().chars().take(300).collect::<String>()
        );
        assert!(
            answer.has_id("error") && !answer.text().contains(secret),
            "the 404 for {url} should be an #error page without globex's data: {}",
            answer.text().chars().take(500).collect::<String>()
        );
    }
    browser.goto("/console/integrations");
    browser.wait_for("acme's integrations", |b| {
        b.has("table#integrations tr.integration[data-name=\"orders\"]")
            .then_some(())
    });
    assert!(
        !browser.has("tr.integration[data-name=\"globex-ledger\"]"),
        "acme sees globex's integration\n{}",
        browser.describe()
    );
    browser.goto("/console/integrations/globex-ledger");
    browser.expect_error_page(404, "another tenant's integration page");
}

#[test]
fn a_post_without_the_csrf_token_is_refused_and_does_nothing() {
    let node = Node::start();
    let gate = Gate::new();
    let shop = shop(&[("held", &gate)]);
    node.deploy(ACME, &orders_definition(&shop));
    let fixture = shop_and_erp();
    node.deploy(ACME, &repair_definition(&fixture, 1, BROKEN_LINE));
    let failed = node.start_run(ACME, "repair", &json!({}));
    assert_eq!(node.wait(ACME, &failed).status(), v1::RunStatus::Failed);
    let running = node.start_run(ACME, "orders", &json!({ "batch": "held" }));
    assert!(
        gate.wait_for_waiting(1, WAIT),
        "the run's fetch never reached the shop"
    );
    let still_running = |why: &str| {
        assert_eq!(
            node.run(ACME, &running).status(),
            v1::RunStatus::Running,
            "the running run after {why}"
        );
    };

    let browser = Browser::start(&node.base());
    browser.sign_in(ACME);
    let session = browser.session();

    // In the browser: the cancel form without its hidden field.
    browser.goto(&format!("/console/runs/{running}"));
    browser.wait_for("the running run's page", |b| {
        (shown_status(b).as_deref() == Some("running")).then_some(())
    });
    let (_, cancel_url, cancel_fields) = browser.form("form#cancel");
    // Removed and posted in one script: the live page may swap its region
    // (the form with it) at any moment.
    browser
        .execute(
            "const form = document.querySelector('form#cancel');\n\
             form.querySelectorAll('input[name=csrf]').forEach(e => e.remove());\n\
             form.submit();",
            vec![],
        )
        .expect("the form is posted without its csrf field");
    let error = browser.wait_for("an #error page for a form without its csrf token", |b| {
        b.query("#error").into_iter().next()
    });
    assert_eq!(
        browser.status(),
        Some(403),
        "a cancel without the csrf field; the page said {:?}",
        error.text
    );
    let lower = error.text.to_lowercase();
    assert!(
        lower.contains("csrf") || lower.contains("token") || lower.contains("form"),
        "#error should say the form's token was missing: {:?}",
        error.text
    );
    still_running("a cancel without the csrf field");

    // Over plain HTTP with the session: no field, a wrong one, or the
    // right one from another site.
    for (why, fields, origin) in [
        ("no csrf field", without_field(&cancel_fields, "csrf"), None),
        (
            "a wrong csrf field",
            with_field(&cancel_fields, "csrf", "not-the-token"),
            None,
        ),
        (
            "the right csrf field sent from another site",
            cancel_fields.clone(),
            Some("http://evil.example"),
        ),
    ] {
        let headers: Vec<(&str, &str)> = origin.map(|o| ("Origin", o)).into_iter().collect();
        let answer = http(
            "POST",
            &cancel_url,
            Some(&session),
            &headers,
            Some(&fields),
            false,
        );
        assert_eq!(
            answer.status,
            403,
            "a cancel with {why}: {}",
            answer.text().chars().take(300).collect::<String>()
        );
        assert!(
            answer.has_id("error"),
            "the 403 for a cancel with {why} is an #error page: {}",
            answer.text().chars().take(500).collect::<String>()
        );
        still_running(&format!("a cancel with {why}"));
    }

    // The rerun form: the same.
    let runs_before = node.runs(ACME).len();
    browser.goto(&format!("/console/runs/{failed}"));
    browser.wait_for("the failed run's page", |b| {
        (shown_status(b).as_deref() == Some("failed")).then_some(())
    });
    let (_, rerun_url, rerun_fields) = browser.form("form#rerun");
    assert!(
        rerun_url.ends_with(&format!("/console/runs/{failed}/rerun")),
        "the rerun form's action: {rerun_url}"
    );
    browser
        .execute(
            "const form = document.querySelector('form#rerun');\n\
             form.querySelectorAll('input[name=csrf]').forEach(e => e.remove());\n\
             form.submit();",
            vec![],
        )
        .expect("the form is posted without its csrf field");
    browser.expect_error_page(403, "a rerun without the csrf field");
    let answer = http(
        "POST",
        &rerun_url,
        Some(&session),
        &[],
        Some(&with_field(&rerun_fields, "csrf", "not-the-token")),
        false,
    );
    assert_eq!(answer.status, 403, "a rerun with a wrong csrf field");
    assert_eq!(
        node.runs(ACME).len(),
        runs_before,
        "a refused rerun started a run"
    );

    // The right token from the console's own page does what it says.
    let answer = http(
        "POST",
        &cancel_url,
        Some(&session),
        &[("Origin", node.base().as_str())],
        Some(&cancel_fields),
        false,
    );
    assert!(
        (300..400).contains(&answer.status)
            && answer
                .header("location")
                .ends_with(&format!("/console/runs/{running}")),
        "a cancel with the right token: {} {:?}",
        answer.status,
        answer.headers
    );
    // A cancel is asked of the engine running the run: it ends shortly.
    let cancelled = poll_every(Duration::from_millis(50), WAIT, || {
        node.run(ACME, &running).status() == v1::RunStatus::Cancelled
    });
    assert!(
        cancelled,
        "the run after a cancel with the right token: {:?}",
        node.run(ACME, &running).status()
    );
    browser.goto(&format!("/console/runs/{failed}"));
    browser.click("form#rerun button#rerun-run");
    let rerun = browser.wait_for("the rerun's page", |b| {
        let path = b.path();
        let id = path.strip_prefix("/console/runs/")?.to_owned();
        (id != failed && !id.is_empty() && !id.contains('/')).then_some(id)
    });
    assert_eq!(
        node.run(ACME, &rerun).rerun_of,
        failed,
        "the rerun started from the page reruns the failed run"
    );
    gate.release();
}

#[test]
fn the_admin_sees_the_cluster_page_and_a_tenant_is_refused_it() {
    let node = Node::start();
    let browser = Browser::start(&node.base());
    // The admin lands on the cluster page; the admin has no tenant, so no
    // runs or integrations, and the runs page says so.
    browser.sign_in_to(ADMIN, "/console/cluster");
    assert!(
        browser.has("nav a#nav-cluster") && !browser.has("a#nav-runs"),
        "the admin's navigation\n{}",
        browser.describe()
    );
    let leader = browser.text("#leader");
    assert!(
        !leader.is_empty(),
        "#leader is empty\n{}",
        browser.describe()
    );
    let depth = browser.text("#queue-depth");
    assert!(
        depth.parse::<u64>().is_ok(),
        "#queue-depth is a number: {depth:?}"
    );
    let nodes = browser.query("table#nodes tr.node");
    assert!(
        !nodes.is_empty(),
        "table#nodes lists no node (this node is one)\n{}",
        browser.describe()
    );
    browser.screenshot("cluster");
    browser.goto("/console/runs");
    browser.expect_error_page(403, "the admin on a tenant's runs page");
    browser.goto("/console/cluster");
    browser.sign_out();

    browser.sign_in(ACME);
    assert!(
        !browser.has("a#nav-cluster"),
        "a tenant's session shows the cluster link"
    );
    browser.goto("/console/cluster");
    browser.expect_error_page(403, "a tenant's session on the cluster page");
    assert!(
        !browser.has("table#nodes") && !browser.has("#leader"),
        "the 403 page shows the cluster\n{}",
        browser.describe()
    );
    let answer = http(
        "GET",
        &format!("{}/console/cluster", node.base()),
        Some(&browser.session()),
        &[],
        None,
        false,
    );
    assert_eq!(
        answer.status, 403,
        "the cluster page over HTTP for a tenant"
    );
}

/// GET `path` of the console with `session`'s cookie.
fn get(node: &Node, path: &str, session: &str) -> Answer {
    http(
        "GET",
        &format!("{}{path}", node.base()),
        Some(session),
        &[],
        None,
        false,
    )
}

/// Signs in over plain HTTP: the session cookie's value.
fn http_session(node: &Node, token: &str) -> String {
    let answer = http(
        "POST",
        &format!("{}/console/sign-in", node.base()),
        None,
        &[],
        Some(&[("token".to_owned(), token.to_owned())]),
        false,
    );
    assert_eq!(
        answer.status,
        303,
        "signing in over HTTP: {}",
        answer.text()
    );
    let set_cookie = answer.header("set-cookie");
    set_cookie
        .split(';')
        .next()
        .and_then(|c| c.strip_prefix(&format!("{SESSION_COOKIE}=")))
        .unwrap_or_else(|| panic!("no session cookie in {set_cookie:?}"))
        .to_owned()
}

/// What one tenant can hold of the console is its own share: its live
/// streams and its sign-ins do not shut another tenant out (each was a
/// way for one tenant to lock the others out of the console); and one
/// address's sign-in attempts are counted, so tokens cannot be guessed
/// at full speed.
#[test]
fn one_tenant_cannot_take_the_consoles_live_streams_or_sessions_from_another() {
    let node = Node::start();
    let acme = http_session(&node, ACME);
    let globex = http_session(&node, GLOBEX);
    block(async {
        let client = reqwest::Client::builder()
            .timeout(LONG)
            .build()
            .expect("a reqwest client");
        let events = format!("{}/console/events", node.base());
        let open = |session: &str| {
            client
                .get(&events)
                .header("Cookie", format!("{SESSION_COOKIE}={session}"))
                .send()
        };
        // globex holds as many live streams as a tenant may.
        let mut held = Vec::new();
        loop {
            let response = open(&globex).await.expect("the events answer");
            match response.status().as_u16() {
                200 => held.push(response),
                429 => break,
                other => panic!("globex's live stream {} got {other}", held.len() + 1),
            }
            assert!(held.len() <= 64, "a tenant got {} live streams", held.len());
        }
        assert_eq!(held.len(), 16, "a tenant's live streams");
        // acme still gets its own.
        let response = open(&acme).await.expect("the events answer");
        assert_eq!(response.status().as_u16(), 200, "acme's live stream");
        assert_eq!(
            response
                .headers()
                .get("content-type")
                .map(|v| v.to_str().unwrap_or_default().to_owned()),
            Some("text/event-stream".to_owned())
        );
    });
    // globex signs in again and again, as often as one address may: acme's
    // session stands (how many sessions one tenant keeps, and that its
    // own oldest goes first, is the sessions' unit test).
    for _ in 2..20 {
        http_session(&node, GLOBEX);
    }
    let answer = get(&node, "/console/runs", &acme);
    assert_eq!(answer.status, 200, "acme's session after globex's sign-ins");
    // The next attempt from this address waits its turn, whatever its token.
    let sign_in = |token: &str| {
        http(
            "POST",
            &format!("{}/console/sign-in", node.base()),
            None,
            &[],
            Some(&[("token".to_owned(), token.to_owned())]),
            false,
        )
    };
    for token in ["not-a-token", ACME] {
        let answer = sign_in(token);
        assert_eq!(answer.status, 429, "sign-in 21 and 22: {}", answer.text());
        let wait: u64 = answer
            .header("retry-after")
            .parse()
            .unwrap_or_else(|_| panic!("a Retry-After in seconds: {:?}", answer.headers));
        assert!((1..=60).contains(&wait), "Retry-After {wait}");
    }
    // Sessions opened before are untouched, and the API does not care.
    let answer = get(&node, "/console/runs", &acme);
    assert_eq!(answer.status, 200, "acme's session while sign-ins wait");
    assert!(node.runs(ACME).is_empty());
}

/// A run page renders the input of its failed code step only (rendering
/// an input again reads every output before it, so doing it for each of
/// a run's steps on every view cost a tenant's many-stepped run N² reads);
/// the other steps link to their own page, which renders theirs.
#[test]
fn a_run_page_renders_only_the_failed_steps_input_and_a_step_page_its_own() {
    let node = Node::start();
    node.deploy(
        ACME,
        r#"
apiVersion: isoflow.dev/v1
name: chain
version: 1
steps:
  - id: one
    type: code
    source: "export default (input) => ({ n: input.n + 1 })"
  - id: two
    type: code
    input: "{{ steps.one.output }}"
    source: "export default (input) => ({ n: input.n * 10 })"
  - id: three
    type: code
    input: "{{ steps.two.output }}"
    source: |
      export default (input) => {
        throw new Error("three got " + input.n);
      }
"#,
    );
    let run_id = node.start_run(ACME, "chain", &json!({ "n": 1 }));
    let run = node.wait(ACME, &run_id);
    assert_eq!(run.status(), v1::RunStatus::Failed, "{run:?}");
    let session = http_session(&node, ACME);
    let page_of = |path: &str| {
        let answer = get(&node, path, &session);
        assert_eq!(answer.status, 200, "GET {path}: {}", answer.text());
        answer.text()
    };
    let page = page_of(&format!("/console/runs/{run_id}"));
    assert_eq!(
        page.matches("class=\"step-input\"").count(),
        1,
        "one rendered input on the run page:\n{page}"
    );
    let three = page
        .split("<section class=\"step\" id=\"step-three\"")
        .nth(1)
        .expect("the failed step's section");
    assert!(three.contains("class=\"step-input\""), "{page}");
    assert!(
        three.contains("<span class=\"j-key\">n</span>: <span class=\"j-num\">20</span>"),
        "{page}"
    );
    assert_eq!(
        page.matches("class=\"step-input-link\"").count(),
        2,
        "{page}"
    );
    // Steps in the order they ran, not by name.
    let at = |id: &str| {
        page.find(&format!("id=\"step-{id}\""))
            .unwrap_or_else(|| panic!("no section of {id}"))
    };
    assert!(at("one") < at("two") && at("two") < at("three"), "{page}");
    let one = page_of(&format!("/console/runs/{run_id}/steps/two"));
    assert!(one.contains("class=\"step-input\""), "{one}");
    assert!(one.contains("<span class=\"j-num\">2</span>"), "{one}");
    assert!(one.contains("class=\"download-bundle\""), "{one}");
}

/// A run whose first step is in flight is running, not queued: a worker
/// has it, though the store records it with its first checkpoint (a
/// support engineer saw a long first call as a run stuck in the queue).
#[test]
fn a_run_is_running_while_its_first_step_is_in_flight() {
    let node = Node::start();
    let gate = Gate::new();
    let shop = HttpFixture::start();
    shop.route(
        "GET",
        "/slow",
        Responder::Hold(gate.clone(), Reply::json(200, &json!({ "ok": true }))),
    );
    node.deploy(
        ACME,
        &r#"
apiVersion: isoflow.dev/v1
name: slow-first
version: 1
steps:
  - id: call
    type: http
    url: "@SHOP@/slow"
    timeout: 5m
"#
        .replace("@SHOP@", &shop.url("")),
    );
    let run_id = node.start_run(ACME, "slow-first", &json!({}));
    assert!(
        gate.wait_for_waiting(1, WAIT),
        "the first step never called"
    );
    assert_eq!(node.run(ACME, &run_id).status(), v1::RunStatus::Running);
    let listed = node.runs(ACME);
    let row = listed
        .iter()
        .find(|r| r.run_id == run_id)
        .expect("the run is listed");
    assert_eq!(row.status(), v1::RunStatus::Running, "as listed");
    let session = http_session(&node, ACME);
    let page = get(&node, &format!("/console/runs/{run_id}"), &session);
    assert!(
        page.text().contains("data-status=\"running\""),
        "{}",
        page.text()
    );
    gate.release();
    assert_eq!(node.wait(ACME, &run_id).status(), v1::RunStatus::Succeeded);
}
