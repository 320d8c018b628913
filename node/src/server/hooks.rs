//! The node's HTTP listener (`[http] listen`, coordinator and all):
//! webhooks that start runs.
//!
//! `POST /hooks/{tenant}/{integration}/{trigger}` (HMAC) or
//! `POST /hooks/{tenant}/{integration}/{trigger}/{token}` (path token)
//! starts a run of the tenant's latest deployed version of the integration,
//! if that version has a webhook trigger of that id. The body is the run's
//! input: JSON as JSON, XML and plain text as a string, a form as an object
//! of its fields; up to the node's payload limit.
//!
//! Every answer is JSON. 404 for anything unknown (a tenant, an
//! integration, a trigger, or a token that is wrong: a caller cannot tell
//! which), and for a disabled tenant's webhooks; 401 for a missing,
//! malformed, wrong or stale signature; 413 over the tenant's payload limit
//! (its quota, else the node's); 415 for another content type; 400 for a
//! body that does not parse; 429 with `Retry-After` when the tenant has
//! started its `webhook_runs_per_minute` (a token bucket per tenant, kept
//! in memory: a restarted node starts every bucket full). `async` answers
//! 202 with the run id and a `Location`; `sync` waits up to the trigger's
//! `timeout` and answers 200 with the run's output, 500 with its error if
//! it failed, or 202 as `async` if it is still going. An
//! `Idempotency-Key` header makes a retried delivery answer with the run
//! the first one started.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use isoflow_engine::model::{Integration, Trigger, Webhook, WebhookAuth, WebhookMode};
use isoflow_engine::store::{RunStatus, RunTrigger};
use serde_json::{Value, json};

use super::auth::same;
use super::coordinator::Coordinator;

/// How far a signature's timestamp may be from the node's clock.
pub const SIGNATURE_TOLERANCE: Duration = Duration::from_secs(300);
/// The header of a sync webhook's 200 that names its run.
pub const RUN_ID_HEADER: &str = "x-isoflow-run-id";

/// The header carrying `t=<unix seconds>,v1=<hex HMAC-SHA256>`.
pub const SIGNATURE_HEADER: &str = "x-isoflow-signature";

#[derive(Debug, Clone)]
struct Hooks {
    coordinator: Arc<Coordinator>,
    /// Each tenant's bucket of webhook runs.
    buckets: Arc<std::sync::Mutex<HashMap<String, Bucket>>>,
    /// MiB of webhook bodies held in memory, node-wide.
    bodies: Arc<tokio::sync::Semaphore>,
}

const MIB: u64 = 1024 * 1024;
/// The most webhook body bytes a node holds at once (and so the largest
/// body a webhook takes).
pub const BODY_BUDGET_BYTES: u64 = 256 * MIB;

/// A token bucket: `rate` runs a minute, up to `rate` at once.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    /// Whether nothing was taken from it for `idle` before `now`.
    pub fn idle_for(&self, now: Instant, idle: Duration) -> bool {
        now.saturating_duration_since(self.at) >= idle
    }

    /// Takes one run from a bucket of `rate` a minute at `now`; when it is
    /// empty, how long until it holds one.
    pub fn take(
        bucket: Option<&mut Bucket>,
        rate: u32,
        now: Instant,
    ) -> (Bucket, Result<(), Duration>) {
        let per_second = f64::from(rate) / 60.0;
        let capacity = f64::from(rate);
        let mut current = match bucket {
            Some(b) => *b,
            None => Bucket {
                tokens: capacity,
                at: now,
            },
        };
        let elapsed = now.saturating_duration_since(current.at).as_secs_f64();
        current.tokens = (current.tokens + elapsed * per_second).min(capacity);
        current.at = now;
        if current.tokens >= 1.0 {
            current.tokens -= 1.0;
            (current, Ok(()))
        } else {
            let wait = (1.0 - current.tokens) / per_second;
            (current, Err(Duration::from_secs_f64(wait)))
        }
    }
}

/// The listener's routes.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/hooks/{tenant}/{integration}/{trigger}", post(signed))
        .route(
            "/hooks/{tenant}/{integration}/{trigger}/{token}",
            post(with_token),
        )
        .with_state(Hooks {
            coordinator,
            buckets: Arc::default(),
            bodies: Arc::new(tokio::sync::Semaphore::new(
                usize::try_from(BODY_BUDGET_BYTES / MIB).unwrap_or(usize::MAX),
            )),
        })
}

/// Every route of the listener that needs the coordinator: webhooks and
/// the OAuth2 callback.
pub fn routes(coordinator: Arc<Coordinator>) -> Router {
    router(coordinator.clone()).merge(super::oauth::router(coordinator))
}

/// A refusal: its status, and one sentence, answered as
/// `{"error": sentence}`; with a `Retry-After` (seconds) when it says when
/// to try again.
#[derive(Debug)]
struct Refusal(StatusCode, String, Option<u64>);

impl Refusal {
    fn limited(sentence: String, retry_after: u64) -> Refusal {
        Refusal(StatusCode::TOO_MANY_REQUESTS, sentence, Some(retry_after))
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        match self.2 {
            Some(seconds) => (
                self.0,
                [(header::RETRY_AFTER, seconds.to_string())],
                axum::Json(json!({ "error": self.1, "retry_after_seconds": seconds })),
            )
                .into_response(),
            None => (self.0, axum::Json(json!({ "error": self.1 }))).into_response(),
        }
    }
}

fn error(status: StatusCode, sentence: impl Into<String>) -> Refusal {
    Refusal(status, sentence.into(), None)
}

fn not_found() -> Refusal {
    error(
        StatusCode::NOT_FOUND,
        "there is no such webhook, or its token is wrong",
    )
}

async fn signed(
    State(hooks): State<Hooks>,
    Path((tenant, integration, trigger)): Path<(String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    hooks
        .deliver(&tenant, &integration, &trigger, None, &headers, body)
        .await
}

async fn with_token(
    State(hooks): State<Hooks>,
    Path((tenant, integration, trigger, token)): Path<(String, String, String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    hooks
        .deliver(
            &tenant,
            &integration,
            &trigger,
            Some(&token),
            &headers,
            body,
        )
        .await
}

impl Hooks {
    async fn deliver(
        &self,
        tenant: &str,
        integration: &str,
        trigger: &str,
        token: Option<&str>,
        headers: &HeaderMap,
        body: Body,
    ) -> Response {
        // OpenTelemetry's HTTP server conventions: the route, not the path
        // (a token webhook's path holds its token); no header value.
        let route = if token.is_some() {
            "/hooks/{tenant}/{integration}/{trigger}/{token}"
        } else {
            "/hooks/{tenant}/{integration}/{trigger}"
        };
        let span = tracing::debug_span!(
            target: crate::telemetry::TARGET,
            "http.server",
            otel.name = format!("POST {route}"),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = "POST",
            http.route = route,
            url.scheme = "http",
            tenant,
            integration,
            trigger,
            http.response.status_code = tracing::field::Empty,
        );
        crate::telemetry::continue_caller(
            &span,
            headers.get("traceparent").and_then(|v| v.to_str().ok()),
        );
        let delivered = tracing::Instrument::instrument(
            self.try_deliver(tenant, integration, trigger, token, headers, body),
            span.clone(),
        )
        .await;
        let response = match delivered {
            Ok(response) => response,
            Err(refusal) => refusal.into_response(),
        };
        span.record("http.response.status_code", response.status().as_u16());
        if response.status().is_server_error() {
            span.record("otel.status_code", "ERROR");
        }
        response
    }

    async fn try_deliver(
        &self,
        tenant: &str,
        integration: &str,
        trigger: &str,
        token: Option<&str>,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<Response, Refusal> {
        if self.coordinator.tenants.is_disabled(tenant) {
            return Err(not_found());
        }
        let webhook = self.webhook(tenant, integration, trigger).await?;
        let secret = self.secret(tenant, &webhook).await?;
        match (webhook.auth, token) {
            (WebhookAuth::Token, Some(token)) => {
                if !same(token.as_bytes(), secret.as_bytes()) {
                    return Err(not_found());
                }
            }
            // A request that cannot be signed right is refused before its
            // body is read.
            (WebhookAuth::Hmac, None) => {
                signature_header(headers, now_secs())
                    .map_err(|why| error(StatusCode::UNAUTHORIZED, why))?;
            }
            _ => return Err(not_found()),
        }
        let limit = self.coordinator.tenants.payload_limit(tenant);
        let declared = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let over = |limit: u64| {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is over the limit of {limit} bytes"),
            )
        };
        if declared.is_some_and(|n| n > limit) {
            return Err(over(limit));
        }
        // Bodies are held whole until the run is stored: what all webhooks
        // hold at once is bounded node-wide, whoever sends them.
        let want = declared.unwrap_or(limit).min(limit).min(BODY_BUDGET_BYTES);
        let mib = u32::try_from(want.div_ceil(MIB).max(1)).unwrap_or(u32::MAX);
        let _held = self
            .bodies
            .clone()
            .try_acquire_many_owned(mib)
            .map_err(|_| {
                Refusal::limited(
                    "this node is taking in as many webhook bodies as it holds at once; try again"
                        .to_owned(),
                    1,
                )
            })?;
        let cap = limit.min(u64::from(mib) * MIB);
        let bytes = axum::body::to_bytes(body, usize::try_from(cap).unwrap_or(usize::MAX))
            .await
            .map_err(|_| over(cap))?;
        if webhook.auth == WebhookAuth::Hmac {
            verify_signature(headers, &bytes, secret.as_bytes(), now_secs())
                .map_err(|why| error(StatusCode::UNAUTHORIZED, why))?;
        }
        let input = input(headers, bytes)?;
        let request = match headers.get("idempotency-key") {
            None => None,
            Some(key) => {
                let key = key
                    .to_str()
                    .ok()
                    .filter(|k| !k.is_empty() && k.len() <= 256)
                    .ok_or_else(|| {
                        error(
                            StatusCode::BAD_REQUEST,
                            "Idempotency-Key must be 1 to 256 visible characters",
                        )
                    })?;
                Some((
                    format!("hook\u{1}{integration}\u{1}{trigger}"),
                    key.to_owned(),
                ))
            }
        };
        self.admit(tenant)?;
        let updates = self.coordinator.subscribe();
        let (run, created) = self
            .coordinator
            .start_run(
                tenant,
                integration,
                None,
                input,
                request,
                RunTrigger::Webhook(trigger.to_owned()),
            )
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?
            .ok_or_else(not_found)?;
        tracing::info!(
            tenant,
            integration,
            trigger,
            run_id = %run.run_id,
            created,
            "webhook delivered"
        );
        if webhook.mode == WebhookMode::Sync && !run.status.is_finished() {
            let deadline = tokio::time::Instant::now() + webhook.timeout;
            self.coordinator
                .wait_for_end(updates, tenant, &run.run_id, Some(deadline))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?;
        }
        if webhook.mode == WebhookMode::Sync {
            return Ok(self.outcome(tenant, &run.run_id).await);
        }
        Ok(accepted(&run.run_id))
    }

    /// Takes a run from the tenant's bucket, or refuses with 429 and when
    /// to try again.
    fn admit(&self, tenant: &str) -> Result<(), Refusal> {
        let Some(rate) = self.coordinator.tenants.webhook_runs_per_minute(tenant) else {
            return Ok(());
        };
        let mut buckets = self
            .buckets
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (bucket, taken) = Bucket::take(buckets.get_mut(tenant), rate, Instant::now());
        buckets.insert(tenant.to_owned(), bucket);
        taken.map_err(|wait| {
            let seconds = wait.as_secs() + 1;
            Refusal::limited(
                format!(
                    "tenant {tenant:?} has started its {rate} webhook runs this minute: \
                     try again in {seconds} s"
                ),
                seconds,
            )
        })
    }

    /// The latest version's webhook trigger `trigger`, or 404.
    async fn webhook(
        &self,
        tenant: &str,
        integration: &str,
        trigger: &str,
    ) -> Result<Webhook, Refusal> {
        if [tenant, integration, trigger]
            .iter()
            .any(|p| p.is_empty() || p.contains('\0'))
        {
            return Err(not_found());
        }
        let store = self.coordinator.store.clone();
        let (tenant, integration) = (tenant.to_owned(), integration.to_owned());
        let record =
            tokio::task::spawn_blocking(move || store.integration(&tenant, &integration, None))
                .await
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?
                .ok_or_else(not_found)?;
        let definition: Integration = serde_json::from_value(record.definition)
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        definition
            .triggers
            .into_iter()
            .find_map(|t| match t {
                Trigger::Webhook(w) if w.id.as_str() == trigger => Some(w),
                Trigger::Webhook(_) | Trigger::Cron(_) => None,
            })
            .ok_or_else(not_found)
    }

    /// The webhook's secret from the tenant's vault. Without one (or
    /// without a vault) the webhook does not exist for callers.
    async fn secret(&self, tenant: &str, webhook: &Webhook) -> Result<String, Refusal> {
        self.coordinator
            .tenant_secret(tenant, webhook.secret.as_str())
            .await
            .map_err(|e| error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")))?
            .map(|secret| secret.expose().to_owned())
            .ok_or_else(not_found)
    }

    /// A sync webhook's answer: the output, the error, or 202.
    async fn outcome(&self, tenant: &str, run_id: &str) -> Response {
        let store = self.coordinator.store.clone();
        let (tenant, id) = (tenant.to_owned(), run_id.to_owned());
        let found = tokio::task::spawn_blocking(move || {
            let run = store.run(&tenant, &id)?;
            let output = match &run {
                Some(run) if run.status == RunStatus::Succeeded => {
                    store.run_output(&tenant, &id)?
                }
                _ => None,
            };
            Ok::<_, anyhow::Error>((run, output))
        })
        .await;
        match found {
            Ok(Ok((Some(run), output))) => match run.status {
                RunStatus::Succeeded => (
                    StatusCode::OK,
                    [(RUN_ID_HEADER, run.run_id.clone())],
                    axum::Json(output.unwrap_or(Value::Null)),
                )
                    .into_response(),
                RunStatus::Failed | RunStatus::Cancelled => (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    axum::Json(json!({
                        "run_id": run.run_id,
                        "status": run.status.as_str(),
                        "error": run.error.unwrap_or_default(),
                    })),
                )
                    .into_response(),
                RunStatus::Pending | RunStatus::Running => accepted(run_id),
            },
            Ok(Ok((None, _))) => accepted(run_id),
            Ok(Err(e)) => {
                error(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")).into_response()
            }
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        }
    }
}

/// 202 with the run id; `Location` names the run in the API.
fn accepted(run_id: &str) -> Response {
    (
        StatusCode::ACCEPTED,
        [(
            header::LOCATION,
            format!("/isoflow.v1.Isoflow/GetRun/{run_id}"),
        )],
        axum::Json(json!({ "run_id": run_id })),
    )
        .into_response()
}

/// The run's input from the body, by its content type.
fn input(headers: &HeaderMap, bytes: Bytes) -> Result<Value, Refusal> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/json");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let text = || {
        String::from_utf8(bytes.to_vec())
            .map_err(|_| error(StatusCode::BAD_REQUEST, "the body is not UTF-8 text"))
    };
    match essence.as_str() {
        "application/json" => {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            serde_json::from_slice(&bytes).map_err(|e| {
                error(
                    StatusCode::BAD_REQUEST,
                    format!("the body is not JSON: {e}"),
                )
            })
        }
        "application/xml" | "text/xml" | "text/plain" => text().map(Value::String),
        "application/x-www-form-urlencoded" => {
            let mut fields = serde_json::Map::new();
            for (name, value) in form_urlencoded::parse(&bytes) {
                fields.insert(name.into_owned(), Value::String(value.into_owned()));
            }
            Ok(Value::Object(fields))
        }
        other => Err(error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "content type {other:?} is not one a webhook takes: application/json, \
                 application/xml, text/xml, text/plain or application/x-www-form-urlencoded"
            ),
        )),
    }
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Checks `X-Isoflow-Signature: t=<unix seconds>,v1=<hex>` against
/// HMAC-SHA256(`secret`, `"<t>.<body>"`), `t` within
/// [`SIGNATURE_TOLERANCE`] of `now`.
pub fn verify_signature(
    headers: &HeaderMap,
    body: &[u8],
    secret: &[u8],
    now: u64,
) -> Result<(), String> {
    let (time, signatures) = signature_header(headers, now)?;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut signed = format!("{time}.").into_bytes();
    signed.extend_from_slice(body);
    let valid = signatures.iter().any(|hex| {
        decode_hex(hex).is_some_and(|tag| ring::hmac::verify(&key, &signed, &tag).is_ok())
    });
    if valid {
        Ok(())
    } else {
        Err("the signature does not match the body".to_owned())
    }
}

/// The time and signatures of `X-Isoflow-Signature`, checked for form and
/// for the time window: what can be refused before the body is read.
fn signature_header(headers: &HeaderMap, now: u64) -> Result<(u64, Vec<String>), String> {
    let header = headers
        .get(SIGNATURE_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or("the request carries no X-Isoflow-Signature header")?;
    let mut time = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => time = t.parse::<u64>().ok(),
            Some(("v1", v)) if signatures.len() < 8 => signatures.push(v.to_owned()),
            _ => {}
        }
    }
    let time = time.ok_or("X-Isoflow-Signature has no t=<unix seconds>")?;
    if time.abs_diff(now) > SIGNATURE_TOLERANCE.as_secs() {
        return Err(format!(
            "the signature's time is more than {} s from this node's clock: \
             a replayed delivery, or a clock that is off",
            SIGNATURE_TOLERANCE.as_secs()
        ));
    }
    if signatures.is_empty() {
        return Err("X-Isoflow-Signature has no v1=<hex HMAC-SHA256>".to_owned());
    }
    Ok((time, signatures))
}

/// `X-Isoflow-Signature`'s value for `body` at `time`: what a sender
/// computes, and what alerts carry.
pub fn sign(secret: &[u8], time: u64, body: &[u8]) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut signed = format!("{time}.").into_bytes();
    signed.extend_from_slice(body);
    let tag = ring::hmac::sign(&key, &signed);
    let hex: String = tag.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    format!("t={time},v1={hex}")
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_signature(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(SIGNATURE_HEADER, value.parse().expect("a header value"));
        headers
    }

    #[test]
    fn a_signature_holds_for_its_body_its_key_and_its_time_only() {
        let body = br#"{"order": 7}"#;
        let now = 1_800_000_000;
        let good = sign(b"k3y", now, body);
        assert_eq!(
            verify_signature(&with_signature(&good), body, b"k3y", now),
            Ok(())
        );
        assert_eq!(
            verify_signature(&with_signature(&good), body, b"k3y", now + 299),
            Ok(())
        );
        let stale = verify_signature(&with_signature(&good), body, b"k3y", now + 301)
            .expect_err("replayed later");
        assert!(stale.contains("replayed"), "{stale}");
        let other_body = verify_signature(&with_signature(&good), b"{}", b"k3y", now);
        assert_eq!(
            other_body,
            Err("the signature does not match the body".into())
        );
        let other_key = verify_signature(&with_signature(&good), body, b"other", now);
        assert!(other_key.is_err());
        // The time is part of what is signed: moving it breaks the tag.
        let moved = good.replace(&format!("t={now}"), &format!("t={}", now + 1));
        assert!(verify_signature(&with_signature(&moved), body, b"k3y", now).is_err());
        assert!(verify_signature(&HeaderMap::new(), body, b"k3y", now).is_err());
        assert!(verify_signature(&with_signature("v1=zz"), body, b"k3y", now).is_err());
    }

    #[test]
    fn a_bucket_gives_its_rate_at_once_then_one_run_per_share_of_a_minute() {
        let start = Instant::now();
        let mut bucket = None;
        let mut take = |at: Duration| {
            let (next, taken) = Bucket::take(bucket.as_mut(), 6, start + at);
            bucket = Some(next);
            taken
        };
        for _ in 0..6 {
            assert_eq!(take(Duration::ZERO), Ok(()));
        }
        let wait = take(Duration::ZERO).expect_err("empty");
        assert!(
            (9.9..=10.1).contains(&wait.as_secs_f64()),
            "6 a minute: one every 10 s, {wait:?}"
        );
        assert!(take(Duration::from_secs(5)).is_err(), "half a run");
        assert_eq!(take(Duration::from_secs(10)), Ok(()));
        assert!(take(Duration::from_secs(10)).is_err());
        // A long pause fills it up to its rate, no more.
        for _ in 0..6 {
            assert_eq!(take(Duration::from_secs(3600)), Ok(()));
        }
        assert!(take(Duration::from_secs(3600)).is_err());
    }

    #[test]
    fn bodies_become_inputs_by_their_content_type() {
        let typed = |ct: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, ct.parse().expect("a header value"));
            headers
        };
        assert_eq!(
            input(
                &typed("application/json; charset=utf-8"),
                Bytes::from(r#"{"a":1}"#)
            )
            .expect("json"),
            json!({ "a": 1 })
        );
        assert_eq!(
            input(&typed("application/xml"), Bytes::from("<a>1</a>")).expect("xml"),
            json!("<a>1</a>")
        );
        assert_eq!(
            input(
                &typed("application/x-www-form-urlencoded"),
                Bytes::from("a=1&b=x+y")
            )
            .expect("form"),
            json!({ "a": "1", "b": "x y" })
        );
        let status = |r: Result<Value, Refusal>| r.expect_err("refused").0;
        assert_eq!(
            status(input(&typed("image/png"), Bytes::from("x"))),
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        );
        assert_eq!(
            status(input(&typed("application/json"), Bytes::from("{"))),
            StatusCode::BAD_REQUEST
        );
    }
}
