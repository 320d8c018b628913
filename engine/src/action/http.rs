//! The HTTP action: sends one request and turns the answer into a step
//! output, `{ "status": 200, "headers": {...}, "body": ... }`.
//!
//! - The body is parsed as JSON when the response says it is JSON
//!   (`application/json`, `application/problem+json`, any `+json`), kept as
//!   a string when it is text, and refused when it is neither (binary bodies
//!   have no place in a JSON output yet).
//! - The response size is capped (`max_response_bytes`) before it is read
//!   into memory, from `Content-Length` when the server sends one and while
//!   streaming otherwise.
//! - Failures are classified for retry policies ([`HttpError::is_retryable`]):
//!   connection failures, time-outs, 5xx and 429 may succeed later; other
//!   4xx, bad URLs and oversized or malformed responses will not.
//! - Every request that is not a GET or HEAD carries an `Idempotency-Key`
//!   when the engine gives one: a step retried after a crash repeats its
//!   request with the same key, so a server that honours the header applies
//!   it once.
//! - Every connection is checked against the [`EgressPolicy`] for the
//!   request's tenant. Redirects are followed for GET and HEAD only, at most
//!   5, and never for a request that carries a credential (the next hop
//!   would get it too).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::egress::{self, EgressPolicy, Refused, Scope};
use crate::credential::Secret;

/// Headers only the engine sets: where the request goes and how its body
/// is framed follow the URL and the body. A `Host` of the step's choosing
/// would send a credential meant for one site to another served by the
/// same server.
pub const ENGINE_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "keep-alive",
    "te",
    "trailer",
    "upgrade",
    "proxy-connection",
    "proxy-authorization",
];

/// Headers a request that carries a credential may not set: the
/// credential's own header, and those a front end routes by.
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "forwarded",
    "x-forwarded-host",
    "x-forwarded-server",
    "x-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method-override",
];

/// HTTP methods an http step may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Method {
    #[default]
    Get,
    Post,
    Put,
    Patch,
    Delete,
    Head,
}

impl Method {
    fn as_reqwest(self) -> reqwest::Method {
        match self {
            Method::Get => reqwest::Method::GET,
            Method::Post => reqwest::Method::POST,
            Method::Put => reqwest::Method::PUT,
            Method::Patch => reqwest::Method::PATCH,
            Method::Delete => reqwest::Method::DELETE,
            Method::Head => reqwest::Method::HEAD,
        }
    }

    /// GET and HEAD are safe to repeat by definition and carry no key.
    fn needs_idempotency_key(self) -> bool {
        !matches!(self, Method::Get | Method::Head)
    }
}

impl fmt::Display for Method {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_reqwest().as_str())
    }
}

/// A request body: JSON (sent as `application/json`) or text (sent as
/// `text/plain; charset=utf-8` unless the request sets `Content-Type`).
#[derive(Debug, Clone, PartialEq)]
pub enum Body {
    Json(Value),
    Text(String),
}

/// One rendered request: every template already evaluated. Its `Debug`
/// shows header and query names only: once a credential is on it, their
/// values may hold the secret.
#[derive(Clone, PartialEq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: Option<Body>,
    pub timeout: Duration,
    pub max_response_bytes: u64,
    pub idempotency_key: Option<String>,
    /// Whose allowances of the egress policy apply.
    pub tenant: String,
    /// The forms of a credential's secret the request carries, if it
    /// carries one: then no redirect is followed, and each is scrubbed from
    /// whatever comes back (an echo endpoint would hand it to the step's
    /// output).
    pub secrets: Vec<Secret>,
    /// The W3C `traceparent` to send (the step's span), when tracing is
    /// on: it replaces one the step set.
    pub traceparent: Option<String>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names = |pairs: &[(String, String)]| -> Vec<String> {
            pairs.iter().map(|(name, _)| name.clone()).collect()
        };
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &self.url)
            .field("headers", &names(&self.headers))
            .field("query", &names(&self.query))
            .field("timeout", &self.timeout)
            .field("tenant", &self.tenant)
            .finish_non_exhaustive()
    }
}

impl Request {
    /// A GET with the defaults an http step has: 30 s, 64 MiB.
    pub fn get(url: impl Into<String>) -> Self {
        Request {
            method: Method::Get,
            url: url.into(),
            headers: Vec::new(),
            query: Vec::new(),
            body: None,
            timeout: Duration::from_secs(30),
            max_response_bytes: 64 * 1024 * 1024,
            idempotency_key: None,
            tenant: String::new(),
            secrets: Vec::new(),
            traceparent: None,
        }
    }

    /// The body's size as sent (a JSON body is measured by writing it).
    pub fn body_len(&self) -> usize {
        match &self.body {
            None => 0,
            Some(Body::Text(text)) => text.len(),
            Some(Body::Json(value)) => {
                usize::try_from(crate::run::json_size(value)).unwrap_or(usize::MAX)
            }
        }
    }
}

/// What came back, as the step's output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub status: u16,
    /// Lower-case names; repeated headers joined with ", ".
    pub headers: BTreeMap<String, String>,
    pub body: Value,
    /// The body's size as it came, for telemetry; not part of the output.
    #[serde(skip)]
    pub body_bytes: u64,
}

/// Why a request failed. Each is one sentence naming the request.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HttpError {
    #[error("invalid url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid header {name:?}: {reason}")]
    InvalidHeader { name: String, reason: String },
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("refused to connect to {url}: {reason}")]
    Refused { url: String, reason: String },
    #[error("{method} {url} got no complete response within {} ms", .timeout.as_millis())]
    Timeout {
        method: Method,
        url: String,
        timeout: Duration,
    },
    #[error("{method} {url} answered {status}{}", excerpt(.body))]
    Status {
        method: Method,
        url: String,
        status: u16,
        body: String,
        retry_after: Option<Duration>,
    },
    #[error("response of {method} {url} is over the limit of {limit} bytes")]
    TooLarge {
        method: Method,
        url: String,
        limit: u64,
    },
    #[error("response of {method} {url} says it is JSON but is not: {reason}")]
    BadJson {
        method: Method,
        url: String,
        reason: String,
    },
    #[error("response of {method} {url} is {content_type}, which is neither JSON nor text")]
    NotText {
        method: Method,
        url: String,
        content_type: String,
    },
    #[error("{method} {url} failed: {reason}")]
    Transport {
        method: Method,
        url: String,
        reason: String,
    },
}

fn excerpt(body: &str) -> String {
    const MAX: usize = 200;
    let body = body.trim();
    if body.is_empty() {
        return String::new();
    }
    let mut end = body.len().min(MAX);
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    let more = if end < body.len() { "…" } else { "" };
    format!(": {}{more}", &body[..end])
}

impl HttpError {
    /// A low-cardinality name of what went wrong (OpenTelemetry's
    /// `error.type`): never the URL or the server's words.
    pub fn kind(&self) -> &'static str {
        match self {
            HttpError::InvalidUrl { .. } => "invalid_url",
            HttpError::InvalidHeader { .. } => "invalid_header",
            HttpError::Connect { .. } => "connect",
            HttpError::Refused { .. } => "refused_by_egress_policy",
            HttpError::Timeout { .. } => "timeout",
            HttpError::Status { status, .. } => match status {
                400..=499 => "4xx",
                _ => "5xx",
            },
            HttpError::TooLarge { .. } => "too_large",
            HttpError::BadJson { .. } => "bad_json",
            HttpError::NotText { .. } => "not_text",
            HttpError::Transport { .. } => "transport",
        }
    }

    /// Whether trying the same request again may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            HttpError::Connect { .. } | HttpError::Timeout { .. } | HttpError::Transport { .. } => {
                true
            }
            HttpError::Status { status, .. } => *status == 429 || *status >= 500,
            HttpError::InvalidUrl { .. }
            | HttpError::Refused { .. }
            | HttpError::InvalidHeader { .. }
            | HttpError::TooLarge { .. }
            | HttpError::BadJson { .. }
            | HttpError::NotText { .. } => false,
        }
    }

    /// How long the server asked to wait (`Retry-After` in seconds on a 429
    /// or 5xx), for the retry policy to honour.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            HttpError::Status { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// Sends requests; one per engine, cheap to clone (connection pools).
#[derive(Debug, Clone)]
pub struct Client {
    /// For tenants without egress allowances of their own.
    default: Arc<Clients>,
    /// For each tenant with allowances of its own.
    tenants: Arc<HashMap<String, Arc<Clients>>>,
}

/// The clients of one egress scope: one that follows redirects, one that
/// does not.
#[derive(Debug)]
struct Clients {
    scope: Scope,
    follows: reqwest::Client,
    stays: reqwest::Client,
}

impl Clients {
    fn new(scope: Scope) -> Result<Clients, HttpError> {
        let build = |redirect: reqwest::redirect::Policy| {
            reqwest::Client::builder()
                .user_agent(concat!("isoflow/", env!("CARGO_PKG_VERSION")))
                // A proxy would make the connection, out of the policy's sight.
                .no_proxy()
                .dns_resolver(Arc::new(egress::Resolver::new(scope.clone())))
                .redirect(redirect)
                .build()
                .map_err(|e| HttpError::Transport {
                    method: Method::Get,
                    url: String::new(),
                    reason: format!("cannot build the http client: {e}"),
                })
        };
        let hops = scope.clone();
        let follows = build(reqwest::redirect::Policy::custom(move |attempt| {
            if attempt.previous().len() >= 5 {
                return attempt.error("more than 5 redirects");
            }
            // Names are checked when resolved; addresses here.
            match hops.check_url(attempt.url()) {
                Ok(()) => attempt.follow(),
                Err(refused) => attempt.error(refused),
            }
        }))?;
        let stays = build(reqwest::redirect::Policy::none())?;
        Ok(Clients {
            scope,
            follows,
            stays,
        })
    }
}

impl Client {
    /// A client whose connections follow `policy`.
    pub fn new(policy: &EgressPolicy) -> Result<Client, HttpError> {
        let tenants = policy
            .tenants()
            .map(|tenant| {
                Ok((
                    tenant.to_owned(),
                    Arc::new(Clients::new(policy.scope(Some(tenant)))?),
                ))
            })
            .collect::<Result<HashMap<_, _>, HttpError>>()?;
        Ok(Client {
            default: Arc::new(Clients::new(policy.scope(None))?),
            tenants: Arc::new(tenants),
        })
    }

    pub async fn send(&self, request: &Request) -> Result<Response, HttpError> {
        // OpenTelemetry's HTTP client conventions; the URL without its
        // query (a credential may be a query parameter) or user, no header
        // value, no body.
        let url = reqwest::Url::parse(&request.url).ok();
        let span = tracing::debug_span!(
            target: crate::telemetry::TARGET,
            "http.client",
            otel.name = request.method.as_reqwest().as_str(),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = request.method.as_reqwest().as_str(),
            url.full = url.as_ref().map(span_url).unwrap_or_default(),
            server.address = url.as_ref().and_then(|u| u.host_str().map(str::to_owned)).unwrap_or_default(),
            server.port = url.as_ref().and_then(reqwest::Url::port_or_known_default).unwrap_or(0),
            http.response.status_code = tracing::field::Empty,
            http.response.body.size = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        let result =
            tracing::Instrument::instrument(self.send_unobserved(request), span.clone()).await;
        match &result {
            Ok(response) => {
                span.record("http.response.status_code", response.status);
                span.record("http.response.body.size", response.body_bytes);
            }
            Err(error) => {
                if let HttpError::Status { status, .. } = error {
                    span.record("http.response.status_code", *status);
                }
                span.record("error.type", error.kind());
                span.record("otel.status_code", "ERROR");
            }
        }
        result
    }

    async fn send_unobserved(&self, request: &Request) -> Result<Response, HttpError> {
        let Request {
            method,
            url: url_text,
            ..
        } = request;
        let method = *method;
        let mut url = reqwest::Url::parse(url_text).map_err(|e| HttpError::InvalidUrl {
            url: url_text.clone(),
            reason: e.to_string(),
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidUrl {
                url: url_text.clone(),
                reason: format!("scheme {:?} is not http or https", url.scheme()),
            });
        }
        if !request.query.is_empty() {
            url.query_pairs_mut().extend_pairs(&request.query);
        }
        let url_shown = redact(&url);
        let clients = self.tenants.get(&request.tenant).unwrap_or(&self.default);
        clients
            .scope
            .check_url(&url)
            .map_err(|refused| HttpError::Refused {
                url: url_shown.clone(),
                reason: refused.to_string(),
            })?;
        let client = if matches!(method, Method::Get | Method::Head) && request.secrets.is_empty() {
            &clients.follows
        } else {
            &clients.stays
        };

        let mut headers = reqwest::header::HeaderMap::new();
        for (name, value) in &request.headers {
            let invalid = |reason: String| HttpError::InvalidHeader {
                name: name.clone(),
                reason,
            };
            let header_name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|e| invalid(e.to_string()))?;
            if ENGINE_HEADERS.contains(&header_name.as_str()) {
                return Err(invalid(
                    "the engine sets it, from the url and the body".into(),
                ));
            }
            let header_value = reqwest::header::HeaderValue::from_str(value)
                .map_err(|_| invalid("value has a line break or a control character".into()))?;
            headers.append(header_name, header_value);
        }
        if let Some(key) = request
            .idempotency_key
            .as_deref()
            .filter(|_| method.needs_idempotency_key())
        {
            let value = reqwest::header::HeaderValue::from_str(key).map_err(|_| {
                HttpError::InvalidHeader {
                    name: "Idempotency-Key".into(),
                    reason: "value has a line break or a control character".into(),
                }
            })?;
            headers.insert("idempotency-key", value);
        }
        if let Some(value) = request
            .traceparent
            .as_deref()
            .and_then(|t| reqwest::header::HeaderValue::from_str(t).ok())
        {
            headers.insert("traceparent", value);
        }

        let mut builder = client
            .request(method.as_reqwest(), url)
            .timeout(request.timeout);
        match &request.body {
            Some(Body::Json(value)) => {
                if !headers.contains_key(reqwest::header::CONTENT_TYPE) {
                    headers.insert(
                        reqwest::header::CONTENT_TYPE,
                        reqwest::header::HeaderValue::from_static("application/json"),
                    );
                }
                builder = builder.body(value.to_string());
            }
            Some(Body::Text(text)) => {
                if !headers.contains_key(reqwest::header::CONTENT_TYPE) {
                    headers.insert(
                        reqwest::header::CONTENT_TYPE,
                        reqwest::header::HeaderValue::from_static("text/plain; charset=utf-8"),
                    );
                }
                builder = builder.body(text.clone());
            }
            None => {}
        }
        let failed = |e: reqwest::Error| classify(e, method, &url_shown, request.timeout);
        let mut response = builder.headers(headers).send().await.map_err(failed)?;

        let limit = request.max_response_bytes;
        let too_large = || HttpError::TooLarge {
            method,
            url: url_shown.clone(),
            limit,
        };
        if response.content_length().is_some_and(|n| n > limit) {
            return Err(too_large());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(failed)? {
            if bytes.len() as u64 + chunk.len() as u64 > limit {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes_len = bytes.len() as u64;

        let status = response.status().as_u16();
        let mut headers = header_map(response.headers());
        // A header that echoes the credential is dropped whole.
        headers.retain(|name, value| {
            !request.secrets.iter().any(|secret| {
                let secret = secret.expose();
                !secret.is_empty() && (name.contains(secret) || value.contains(secret))
            })
        });
        if !response.status().is_success() {
            let retry_after = headers
                .get("retry-after")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs);
            // Scrubbed whole, before any excerpt: a cut could leave all but
            // the end of a secret, which no longer matches it.
            return Err(HttpError::Status {
                method,
                url: url_shown,
                status,
                body: scrub_all(
                    String::from_utf8_lossy(&bytes).into_owned(),
                    &request.secrets,
                ),
                retry_after,
            });
        }
        let content_type = headers.get("content-type").cloned().unwrap_or_default();
        let body = body_value(&content_type, bytes).map_err(|failure| match failure {
            BodyFailure::Json(reason) => HttpError::BadJson {
                method,
                url: url_shown.clone(),
                reason,
            },
            BodyFailure::NotText => HttpError::NotText {
                method,
                url: url_shown.clone(),
                content_type: content_type.clone(),
            },
        })?;
        let mut body = body;
        for secret in &request.secrets {
            scrub_value(&mut body, secret);
        }
        Ok(Response {
            status,
            headers,
            body,
            body_bytes: bytes_len,
        })
    }
}

/// What a credential's secret becomes wherever it would be stored.
pub const SCRUBBED: &str = "[credential]";

/// `text` with every occurrence of `secret` replaced by [`SCRUBBED`].
pub fn scrub<'t>(text: &'t str, secret: &Secret) -> std::borrow::Cow<'t, str> {
    let secret = secret.expose();
    if secret.is_empty() || !text.contains(secret) {
        return std::borrow::Cow::Borrowed(text);
    }
    std::borrow::Cow::Owned(text.replace(secret, SCRUBBED))
}

/// [`scrub`] for each of `secrets`.
pub fn scrub_all(text: String, secrets: &[Secret]) -> String {
    secrets
        .iter()
        .fold(text, |text, secret| match scrub(&text, secret) {
            std::borrow::Cow::Borrowed(_) => text,
            std::borrow::Cow::Owned(clean) => clean,
        })
}

/// [`scrub`] on every string of a JSON value, object keys included, and a
/// number that spells the secret.
fn scrub_value(value: &mut Value, secret: &Secret) {
    match value {
        Value::Number(n) if n.to_string() == secret.expose() => {
            *value = Value::String(SCRUBBED.to_owned());
        }
        Value::String(text) => {
            if let std::borrow::Cow::Owned(clean) = scrub(text, secret) {
                *text = clean;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| scrub_value(v, secret)),
        Value::Object(map) => {
            let dirty: Vec<String> = map
                .keys()
                .filter(|k| matches!(scrub(k, secret), std::borrow::Cow::Owned(_)))
                .cloned()
                .collect();
            for key in dirty {
                if let Some(v) = map.remove(&key) {
                    map.insert(scrub(&key, secret).into_owned(), v);
                }
            }
            map.values_mut().for_each(|v| scrub_value(v, secret));
        }
        _ => {}
    }
}

/// The URL as it may appear in errors and logs: without user and password.
/// A URL as a span shows it: scheme, host, port and path.
fn span_url(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_query(None);
    shown.set_fragment(None);
    shown.to_string()
}

pub(crate) fn redact(url: &reqwest::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.to_string()
}

fn classify(e: reqwest::Error, method: Method, url: &str, timeout: Duration) -> HttpError {
    if let Some(refused) = find::<Refused>(&e) {
        HttpError::Refused {
            url: url.to_owned(),
            reason: refused.to_string(),
        }
    } else if e.is_timeout() {
        HttpError::Timeout {
            method,
            url: url.to_owned(),
            timeout,
        }
    } else if e.is_connect() {
        HttpError::Connect {
            url: url.to_owned(),
            reason: root_cause(&e),
        }
    } else {
        HttpError::Transport {
            method,
            url: url.to_owned(),
            reason: root_cause(&e),
        }
    }
}

/// The first error of type `T` in `e`'s source chain.
fn find<'e, T: std::error::Error + 'static>(
    e: &'e (dyn std::error::Error + 'static),
) -> Option<&'e T> {
    let mut cause = Some(e);
    while let Some(error) = cause {
        if let Some(found) = error.downcast_ref::<T>() {
            return Some(found);
        }
        cause = error.source();
    }
    None
}

/// reqwest's own message is "error sending request"; the useful part
/// ("Connection refused") is at the bottom of the source chain.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = e;
    while let Some(next) = cause.source() {
        cause = next;
    }
    cause.to_string()
}

/// Response headers that never reach a step's output: credentials and
/// session cookies a server hands back.
pub const HIDDEN_RESPONSE_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "set-cookie",
    "set-cookie2",
];

fn header_map(headers: &reqwest::header::HeaderMap) -> BTreeMap<String, String> {
    let mut map: BTreeMap<String, String> = BTreeMap::new();
    for (name, value) in headers {
        if HIDDEN_RESPONSE_HEADERS.contains(&name.as_str()) {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        map.entry(name.as_str().to_owned())
            .and_modify(|v| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    map
}

enum BodyFailure {
    Json(String),
    NotText,
}

/// JSON when the content type says so, text when it is text (or absent and
/// the bytes are UTF-8), an error otherwise.
fn body_value(content_type: &str, bytes: Vec<u8>) -> Result<Value, BodyFailure> {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let is_json = essence == "application/json" || essence.ends_with("+json");
    if is_json {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Value::Null);
        }
        return serde_json::from_slice(&bytes).map_err(|e| BodyFailure::Json(e.to_string()));
    }
    let textual = essence.is_empty()
        || essence.starts_with("text/")
        || essence.ends_with("+xml")
        || matches!(
            essence.as_str(),
            "application/xml" | "application/javascript" | "application/x-www-form-urlencoded"
        );
    match String::from_utf8(bytes) {
        Ok(text) if textual => Ok(Value::String(text)),
        _ => Err(BodyFailure::NotText),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_echoed_as_a_number_or_a_key_is_scrubbed() {
        let secret = Secret::new("123456");
        let mut value = serde_json::json!({ "pin": 123456, "123456": "k", "n": 1234567 });
        scrub_value(&mut value, &secret);
        assert_eq!(
            value,
            serde_json::json!({ "pin": "[credential]", "[credential]": "k", "n": 1234567 })
        );
    }

    #[test]
    fn body_is_json_only_when_the_content_type_says_so() {
        let json = |ct: &str, body: &str| body_value(ct, body.as_bytes().to_vec());
        assert!(matches!(json("application/json", "{\"a\":1}"), Ok(v) if v["a"] == 1));
        assert!(
            matches!(json("application/problem+json; charset=utf-8", "[1]"), Ok(v) if v[0] == 1)
        );
        assert!(matches!(json("application/json", " "), Ok(Value::Null)));
        assert!(matches!(
            json("application/json", "{"),
            Err(BodyFailure::Json(_))
        ));
        assert!(
            matches!(json("text/plain", "{\"a\":1}"), Ok(Value::String(s)) if s == "{\"a\":1}")
        );
        assert!(matches!(
            json("application/xml", "<a/>"),
            Ok(Value::String(_))
        ));
        assert!(matches!(json("", "plain"), Ok(Value::String(_))));
        assert!(matches!(
            body_value("application/octet-stream", vec![0, 159, 146]),
            Err(BodyFailure::NotText)
        ));
        assert!(matches!(
            body_value("text/plain", vec![0xff, 0xfe]),
            Err(BodyFailure::NotText)
        ));
    }

    #[test]
    fn retry_classification() {
        let status = |status| HttpError::Status {
            method: Method::Post,
            url: "http://x/".into(),
            status,
            body: String::new(),
            retry_after: None,
        };
        assert!(status(500).is_retryable());
        assert!(status(503).is_retryable());
        assert!(status(429).is_retryable());
        assert!(!status(404).is_retryable());
        assert!(!status(400).is_retryable());
    }

    #[test]
    fn status_errors_quote_a_short_excerpt() {
        let error = HttpError::Status {
            method: Method::Post,
            url: "http://api/orders".into(),
            status: 422,
            body: format!("{{\"error\":\"{}\"}}", "x".repeat(500)),
            retry_after: None,
        };
        let text = error.to_string();
        assert!(text.starts_with("POST http://api/orders answered 422: {\"error\":\"xxx"));
        assert!(text.ends_with('…') && text.len() < 260, "{text}");
    }

    #[test]
    fn urls_in_errors_hide_credentials() {
        let url = reqwest::Url::parse("https://user:secret@api.example.com/x?a=1").unwrap();
        assert_eq!(redact(&url), "https://api.example.com/x?a=1");
    }
}
