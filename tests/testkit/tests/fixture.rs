//! The fixture over real sockets: reqwest for requests, a raw `TcpStream`
//! where the test is about the connection itself.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use isoflow_testkit::{Gate, HttpFixture, Reply, Responder, free_port, seed_orders_xml};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test]
async fn records_requests_and_answers_from_routes() {
    let fixture = HttpFixture::start();
    fixture.route("POST", "/echo", Responder::Echo);
    fixture.route(
        "GET",
        "/fixed",
        Responder::Fixed(Reply::json(200, &json!({"ok": true})).with_header("X-Test", "yes")),
    );
    let client = reqwest::Client::new();

    let echoed = client
        .post(fixture.url("/echo?a=1&b=two"))
        .header("X-Request-Id", "r-1")
        .body(r#"{"n": 5}"#)
        .send()
        .await
        .expect("POST /echo");
    assert_eq!(echoed.status(), 200);
    let echoed: serde_json::Value =
        serde_json::from_slice(&echoed.bytes().await.expect("echo body")).expect("echo is JSON");
    assert_eq!(echoed["method"], "POST");
    assert_eq!(echoed["path"], "/echo");
    assert_eq!(echoed["query"], "a=1&b=two");
    assert_eq!(echoed["headers"]["x-request-id"], "r-1");
    assert_eq!(echoed["body"], json!({"n": 5}));

    let fixed = client
        .get(fixture.url("/fixed"))
        .send()
        .await
        .expect("GET /fixed");
    assert_eq!(fixed.status(), 200);
    assert_eq!(fixed.headers()["x-test"], "yes");
    assert_eq!(fixed.headers()["content-type"], "application/json");
    assert_eq!(fixed.text().await.expect("body"), r#"{"ok":true}"#);

    let missing = client
        .get(fixture.url("/nowhere"))
        .send()
        .await
        .expect("GET /nowhere");
    assert_eq!(missing.status(), 404);

    let posts = fixture.requests("POST", "/echo");
    assert_eq!(posts.len(), 1);
    assert_eq!(posts[0].json(), json!({"n": 5}));
    assert_eq!(posts[0].header("X-Request-ID"), Some("r-1"));
    assert_eq!(posts[0].query, "a=1&b=two");
    assert_eq!(fixture.count("GET", "/fixed"), 1);
    assert_eq!(
        fixture.count("get", "/nowhere"),
        1,
        "unknown routes are recorded too"
    );
    assert_eq!(fixture.count("GET", "/echo"), 0, "methods are told apart");
}

#[tokio::test]
async fn sequences_prefixes_and_replaced_routes() {
    let fixture = HttpFixture::start();
    fixture.route(
        "PUT",
        "/items/*",
        Responder::Sequence(vec![Reply::text(503, "busy"), Reply::text(200, "fine")]),
    );
    fixture.route(
        "PUT",
        "/items/special",
        Responder::Fixed(Reply::text(202, "exact")),
    );
    let client = reqwest::Client::new();
    let mut statuses = Vec::new();
    for i in 0..3 {
        let r = client
            .put(fixture.url(&format!("/items/{i}")))
            .send()
            .await
            .expect("PUT");
        statuses.push(r.status().as_u16());
    }
    assert_eq!(statuses, [503, 200, 200], "the last reply repeats");
    let r = client
        .put(fixture.url("/items/special"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 202, "an exact route wins over a prefix");

    fixture.route("PUT", "/items/*", Responder::Fixed(Reply::text(204, "")));
    let r = client
        .put(fixture.url("/items/9"))
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status(), 204, "the route was replaced");

    let paths: Vec<String> = fixture
        .requests("PUT", "/items/*")
        .into_iter()
        .map(|r| r.path)
        .collect();
    assert_eq!(
        paths,
        [
            "/items/0",
            "/items/1",
            "/items/2",
            "/items/special",
            "/items/9"
        ]
    );
    assert_eq!(fixture.count("PUT", "/items/1"), 1);
}

#[test]
fn a_held_request_is_recorded_when_it_arrives_and_answered_on_release() {
    let fixture = HttpFixture::start();
    let gate = Gate::new();
    fixture.route(
        "POST",
        "/held",
        Responder::Hold(gate.clone(), Reply::text(200, "released")),
    );
    let url = fixture.url("/held");
    let client = std::thread::spawn(move || {
        let mut stream = connect(&url);
        write!(
            stream,
            "POST /held HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
        )
        .expect("write");
        read_response(&mut BufReader::new(stream))
    });
    assert!(gate.wait_for_waiting(1, WAIT), "the request is held");
    assert!(
        fixture.wait_for_count("POST", "/held", 1, WAIT),
        "and already recorded"
    );
    assert!(!client.is_finished());
    gate.release();
    let (status, body) = client.join().expect("client thread");
    assert_eq!((status, body.as_str()), (200, "released"));
    assert_eq!(gate.waiting(), 0);
    assert_eq!(fixture.requests("POST", "/held")[0].text(), "hi");
}

#[test]
fn keeps_connections_alive() {
    let fixture = HttpFixture::start();
    fixture.route("GET", "/a", Responder::Fixed(Reply::text(200, "first")));
    fixture.route(
        "GET",
        "/b",
        Responder::Slow(Duration::from_millis(1), Reply::text(200, "second")),
    );
    let stream = connect(&fixture.url("/"));
    let mut reader = BufReader::new(stream.try_clone().expect("clone the stream"));
    let mut writer = stream;
    write!(writer, "GET /a HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
    assert_eq!(read_response(&mut reader), (200, "first".to_owned()));
    write!(writer, "GET /b HTTP/1.1\r\nHost: x\r\n\r\n").expect("write on the same connection");
    assert_eq!(read_response(&mut reader), (200, "second".to_owned()));
}

#[tokio::test]
async fn serves_the_seed_endpoints() {
    let fixture = HttpFixture::start();
    fixture.serve_seed("s3cret");
    let client = reqwest::Client::new();
    let xml = client
        .get(fixture.url("/orders.xml"))
        .send()
        .await
        .expect("GET");
    assert_eq!(xml.headers()["content-type"], "application/xml");
    assert_eq!(xml.text().await.expect("xml"), seed_orders_xml(100));

    let body = r#"{"count": 80, "total": 12.5, "orders": []}"#;
    let denied = client
        .post(fixture.url("/erp/orders"))
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(denied.status(), 401);
    let accepted = client
        .post(fixture.url("/erp/orders"))
        .bearer_auth("s3cret")
        .body(body)
        .send()
        .await
        .expect("POST");
    assert_eq!(accepted.status(), 201);
    let accepted: serde_json::Value =
        serde_json::from_slice(&accepted.bytes().await.expect("body")).expect("JSON");
    assert_eq!(accepted, json!({"accepted": 80, "total": 12.5}));
    assert_eq!(fixture.count("POST", "/erp/orders"), 2);
}

#[tokio::test]
async fn serves_a_100_mb_body() {
    let fixture = HttpFixture::start();
    let size = 100 << 20;
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let last = body[size - 1];
    fixture.route(
        "GET",
        "/big",
        Responder::Fixed(Reply {
            status: 200,
            headers: Vec::new(),
            body,
        }),
    );
    let got = reqwest::get(fixture.url("/big"))
        .await
        .expect("GET")
        .bytes()
        .await
        .expect("body");
    assert_eq!(got.len(), size);
    assert_eq!(got[size - 1], last);
}

#[test]
fn free_port_is_bindable() {
    let port = free_port();
    assert!(std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
}

fn connect(url: &str) -> TcpStream {
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .expect("host:port");
    let stream = TcpStream::connect(addr).expect("connect to the fixture");
    stream.set_read_timeout(Some(WAIT)).expect("read timeout");
    stream
}

/// Status and body of one response with a Content-Length.
fn read_response(reader: &mut impl BufRead) -> (u16, String) {
    let mut status_line = String::new();
    reader.read_line(&mut status_line).expect("status line");
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status");
    let mut length = 0;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().expect("a length");
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    (status, String::from_utf8(body).expect("UTF-8 body"))
}

/// `examples/seed/endpoints.py` (what the README's first command starts)
/// serves the same export as the fixture.
#[test]
fn the_python_endpoints_serve_the_same_export() {
    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed/endpoints.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg("--print-xml")
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8(out.stdout).expect("UTF-8") == seed_orders_xml(100),
        "endpoints.py and seed.rs generate different exports"
    );
}
