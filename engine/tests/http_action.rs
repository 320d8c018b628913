//! The HTTP action against a real HTTP/1.1 server on loopback: parsing of
//! JSON and text bodies, what is sent (method, query, headers, body,
//! idempotency key), the classification of failures for retries, the size
//! cap with and without Content-Length, time-outs and refused connections.

// Test helpers outside #[test] functions unwrap too: a failure is the test's.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isoflow_engine::action::egress::EgressPolicy;
use isoflow_engine::action::http::{Body, Client, HttpError, Method, Request};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the server saw it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    target: String,
    headers: BTreeMap<String, String>,
    body: String,
}

/// A minimal HTTP/1.1 server: one response per connection, chosen by path.
struct Server {
    base: String,
    seen: Arc<Mutex<Vec<Seen>>>,
}

impl Server {
    async fn start() -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let log = log.clone();
                tokio::spawn(async move {
                    let _ = serve(stream, &log).await;
                });
            }
        });
        Server { base, seen }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn serve(mut stream: TcpStream, log: &Mutex<Vec<Seen>>) -> std::io::Result<()> {
    let mut raw = Vec::new();
    let mut buf = [0u8; 4096];
    let head_end = loop {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        raw.extend_from_slice(&buf[..n]);
        if let Some(at) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut start = lines.next().unwrap_or_default().split(' ');
    let method = start.next().unwrap_or_default().to_owned();
    let target = start.next().unwrap_or_default().to_owned();
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    while raw.len() < head_end + length {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        raw.extend_from_slice(&buf[..n]);
    }
    let body = String::from_utf8_lossy(&raw[head_end..]).into_owned();
    let seen = Seen {
        method,
        target: target.clone(),
        headers,
        body,
    };
    log.lock().unwrap().push(seen.clone());

    let path = target.split('?').next().unwrap_or_default();
    let reply = |status: &str, content_type: &str, body: &[u8], extra: &str| {
        let mut out = format!(
            "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        out.extend_from_slice(body);
        out
    };
    let response = match path {
        "/json" => reply(
            "200 OK",
            "application/json",
            br#"{"ok":true,"n":[1,2]}"#,
            "",
        ),
        "/text" => reply(
            "200 OK",
            "text/plain; charset=utf-8",
            "héllo".as_bytes(),
            "",
        ),
        "/echo" => {
            let echo = json!({
                "method": seen.method,
                "target": seen.target,
                "headers": seen.headers,
                "body": seen.body,
            });
            reply(
                "200 OK",
                "application/json",
                echo.to_string().as_bytes(),
                "",
            )
        }
        "/fail/500" => reply("500 Internal Server Error", "text/plain", b"boom", ""),
        "/fail/429" => reply(
            "429 Too Many Requests",
            "text/plain",
            b"",
            "Retry-After: 7\r\n",
        ),
        "/fail/404" => reply(
            "404 Not Found",
            "application/json",
            br#"{"error":"no such order"}"#,
            "",
        ),
        "/slow" => {
            tokio::time::sleep(Duration::from_secs(5)).await;
            reply("200 OK", "text/plain", b"late", "")
        }
        "/big" => reply("200 OK", "text/plain", &[b'x'; 2048], ""),
        "/big-chunked" => {
            let mut out = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
            for _ in 0..3 {
                out.extend_from_slice(b"400\r\n");
                out.extend_from_slice(&[b'y'; 1024]);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
            out
        }
        "/bad-json" => reply("200 OK", "application/json", b"{oops", ""),
        "/binary" => reply(
            "200 OK",
            "application/octet-stream",
            &[0, 159, 146, 150],
            "",
        ),
        _ => reply("404 Not Found", "text/plain", b"", ""),
    };
    stream.write_all(&response).await?;
    stream.shutdown().await
}

/// A client that may reach this test's loopback servers.
fn client() -> Client {
    Client::new(&loopback()).unwrap()
}

fn loopback() -> EgressPolicy {
    EgressPolicy::public_only().allow(["127.0.0.1".parse().unwrap()])
}

#[tokio::test]
async fn json_and_text_bodies() {
    let server = Server::start().await;
    let json = client()
        .send(&Request::get(server.url("/json")))
        .await
        .unwrap();
    assert_eq!(json.status, 200);
    assert_eq!(json.body, json!({"ok": true, "n": [1, 2]}));
    assert_eq!(json.headers["content-type"], "application/json");
    let text = client()
        .send(&Request::get(server.url("/text")))
        .await
        .unwrap();
    assert_eq!(text.body, Value::String("héllo".into()));
}

#[tokio::test]
async fn request_carries_method_query_headers_body_and_idempotency_key() {
    let server = Server::start().await;
    let request = Request {
        method: Method::Post,
        query: vec![
            ("since".into(), "2026-11-01".into()),
            ("q".into(), "a b&c".into()),
        ],
        headers: vec![
            ("Authorization".into(), "Bearer t0ken".into()),
            ("X-Tenant".into(), "acme".into()),
        ],
        body: Some(Body::Json(json!({"orders": [{"id": "A-1", "total": 34}]}))),
        idempotency_key: Some("run-1/post".into()),
        ..Request::get(server.url("/echo"))
    };
    let response = client().send(&request).await.unwrap();
    let echo = response.body;
    assert_eq!(echo["method"], "POST");
    assert_eq!(echo["target"], "/echo?since=2026-11-01&q=a+b%26c");
    assert_eq!(echo["headers"]["authorization"], "Bearer t0ken");
    assert_eq!(echo["headers"]["x-tenant"], "acme");
    assert_eq!(echo["headers"]["content-type"], "application/json");
    assert_eq!(echo["headers"]["idempotency-key"], "run-1/post");
    let body: Value = serde_json::from_str(echo["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, json!({"orders": [{"id": "A-1", "total": 34}]}));
}

#[tokio::test]
async fn get_carries_no_idempotency_key_and_text_bodies_keep_their_type() {
    let server = Server::start().await;
    let get = Request {
        idempotency_key: Some("run-1/fetch".into()),
        ..Request::get(server.url("/echo"))
    };
    let echo = client().send(&get).await.unwrap().body;
    assert!(echo["headers"].get("idempotency-key").is_none(), "{echo}");

    let put = Request {
        method: Method::Put,
        body: Some(Body::Text("<order id=\"1\"/>".into())),
        headers: vec![("Content-Type".into(), "application/xml".into())],
        ..Request::get(server.url("/echo"))
    };
    let echo = client().send(&put).await.unwrap().body;
    assert_eq!(echo["headers"]["content-type"], "application/xml");
    assert_eq!(echo["body"], "<order id=\"1\"/>");
}

#[tokio::test]
async fn failures_are_classified_for_retries() {
    let server = Server::start().await;
    let send = |path: &str| {
        let request = Request {
            method: Method::Post,
            ..Request::get(server.url(path))
        };
        async move { client().send(&request).await.unwrap_err() }
    };

    let e = send("/fail/500").await;
    assert!(e.is_retryable(), "{e}");
    assert_eq!(
        e.to_string(),
        format!("POST {} answered 500: boom", server.url("/fail/500"))
    );

    let e = send("/fail/429").await;
    assert!(e.is_retryable(), "{e}");
    assert_eq!(e.retry_after(), Some(Duration::from_secs(7)));

    let e = send("/fail/404").await;
    assert!(!e.is_retryable(), "{e}");
    assert!(
        e.to_string()
            .ends_with("answered 404: {\"error\":\"no such order\"}"),
        "{e}"
    );

    let e = send("/bad-json").await;
    assert!(
        matches!(e, HttpError::BadJson { .. }) && !e.is_retryable(),
        "{e}"
    );

    let e = send("/binary").await;
    assert!(
        matches!(e, HttpError::NotText { .. }) && !e.is_retryable(),
        "{e}"
    );
    assert_eq!(
        server.seen().len(),
        5,
        "one request each, no hidden retries"
    );
}

#[tokio::test]
async fn responses_over_the_cap_fail_with_or_without_content_length() {
    let server = Server::start().await;
    for path in ["/big", "/big-chunked"] {
        let capped = Request {
            max_response_bytes: 1000,
            ..Request::get(server.url(path))
        };
        let e = client().send(&capped).await.unwrap_err();
        assert!(
            matches!(e, HttpError::TooLarge { limit: 1000, .. }),
            "{path}: {e}"
        );
        assert!(!e.is_retryable());
        let roomy = Request {
            max_response_bytes: 4096,
            ..Request::get(server.url(path))
        };
        let body = client().send(&roomy).await.unwrap().body;
        assert!(body.as_str().unwrap().len() >= 2048, "{path}");
    }
}

#[tokio::test]
async fn a_slow_server_is_a_retryable_timeout() {
    let server = Server::start().await;
    let request = Request {
        timeout: Duration::from_millis(200),
        ..Request::get(server.url("/slow"))
    };
    let e = client().send(&request).await.unwrap_err();
    assert!(matches!(e, HttpError::Timeout { .. }), "{e}");
    assert!(e.is_retryable());
    assert_eq!(
        e.to_string(),
        format!(
            "GET {} got no complete response within 200 ms",
            server.url("/slow")
        )
    );
}

#[tokio::test]
async fn a_refused_connection_is_retryable() {
    // A port that was just free: bind, note it, close.
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let e = client()
        .send(&Request::get(format!("http://127.0.0.1:{port}/x")))
        .await
        .unwrap_err();
    assert!(matches!(e, HttpError::Connect { .. }), "{e}");
    assert!(e.is_retryable());
    assert!(e.to_string().contains("refused"), "{e}");
}

#[tokio::test]
async fn bad_urls_and_headers_are_refused_before_sending() {
    let e = client().send(&Request::get("not a url")).await.unwrap_err();
    assert!(
        matches!(e, HttpError::InvalidUrl { .. }) && !e.is_retryable(),
        "{e}"
    );
    let e = client()
        .send(&Request::get("ftp://example.com/x"))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid url \"ftp://example.com/x\": scheme \"ftp\" is not http or https"
    );
    let server = Server::start().await;
    let request = Request {
        headers: vec![("X-Bad".into(), "a\r\nInjected: yes".into())],
        ..Request::get(server.url("/echo"))
    };
    let e = client().send(&request).await.unwrap_err();
    assert!(matches!(e, HttpError::InvalidHeader { .. }), "{e}");
    assert!(server.seen().is_empty(), "nothing was sent");
}
