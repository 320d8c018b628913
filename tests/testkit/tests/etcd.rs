//! The etcd helper against the real server: healthy after start, a key
//! written through the v3 JSON gateway, gone after a kill, and the key
//! still there after a restart on the same ports and data dir.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use isoflow_testkit::Etcd;
use serde_json::{Value, json};

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

fn b64_encode(bytes: &[u8]) -> String {
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | u32::from(b) << (16 - 8 * i));
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn b64_decode(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut n, mut bits) = (0u32, 0);
    for c in s.bytes().take_while(|&c| c != b'=') {
        let v = B64
            .iter()
            .position(|&b| b == c)
            .unwrap_or_else(|| panic!("{c:?} is not base64"));
        n = n << 6 | v as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((n >> bits) as u8);
        }
    }
    out
}

#[track_caller]
fn post(etcd: &Etcd, path: &str, body: &Value) -> Value {
    let (status, text) = etcd
        .request("POST", path, body.to_string().as_bytes())
        .unwrap_or_else(|e| panic!("POST {path}: {e}"));
    assert_eq!(status, 200, "POST {path}: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("POST {path}: not JSON ({e}): {text}"))
}

#[track_caller]
fn get_key(etcd: &Etcd, key: &str) -> Option<String> {
    let range = post(
        etcd,
        "/v3/kv/range",
        &json!({ "key": b64_encode(key.as_bytes()) }),
    );
    let value = range["kvs"].get(0)?["value"].as_str()?.to_owned();
    Some(String::from_utf8(b64_decode(&value)).expect("the value is UTF-8"))
}

#[test]
fn base64_round_trips() {
    for s in ["", "f", "fo", "foo", "foob", "fooba", "foobar"] {
        assert_eq!(b64_decode(&b64_encode(s.as_bytes())), s.as_bytes());
    }
    assert_eq!(b64_encode(b"foobar"), "Zm9vYmFy");
    assert_eq!(b64_encode(b"fooba"), "Zm9vYmE=");
    assert_eq!(b64_encode(b"foob"), "Zm9vYg==");
}

#[test]
fn start_put_kill_restart_get() {
    let began = Instant::now();
    let mut etcd = Etcd::start().expect("starting etcd");
    let port = etcd.client_port();
    assert_eq!(etcd.endpoint(), format!("http://127.0.0.1:{port}"));
    assert_ne!(port, etcd.peer_port());

    let (status, body) = etcd.request("GET", "/health", b"").expect("GET /health");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"health\":\"true\""), "{body}");

    post(
        &etcd,
        "/v3/kv/put",
        &json!({
            "key": b64_encode(b"isoflow/test/key"),
            "value": b64_encode(b"hello etcd"),
        }),
    );
    assert_eq!(
        get_key(&etcd, "isoflow/test/key").as_deref(),
        Some("hello etcd")
    );
    assert_eq!(get_key(&etcd, "isoflow/test/absent"), None);

    etcd.kill();
    assert!(!etcd.is_running());
    let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "port {port} still answers after the kill"
    );
    assert!(etcd.request("GET", "/health", b"").is_err());

    etcd.restart().expect("restarting etcd");
    assert!(etcd.is_running());
    assert_eq!(etcd.client_port(), port);
    assert_eq!(
        get_key(&etcd, "isoflow/test/key").as_deref(),
        Some("hello etcd"),
        "the key survives a restart on the same data dir"
    );

    let dir = etcd.data_dir();
    assert!(dir.join("member").is_dir(), "{}", dir.display());
    drop(etcd);
    assert!(!dir.exists(), "dropping Etcd removes its directory");
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_err(),
        "port {port} still answers after the drop"
    );
    assert!(
        began.elapsed() < Duration::from_secs(10),
        "took {:?}",
        began.elapsed()
    );
}
