//! What every node serves on its HTTP listener for operators: `GET
//! /healthz` (the process is alive), `GET /readyz` (it can do its job:
//! 200, or 503 with why not) and `GET /metrics` (Prometheus), beside the
//! webhooks of a coordinator or `all` node; the same readiness on the gRPC
//! listener as the standard `grpc.health.v1.Health` service.
//!
//! Ready means: a coordinator that leads with its store open; an `all`
//! node with its store open; a worker connected to a coordinator. A
//! standby coordinator is alive but not ready; a worker that lost its
//! coordinator turns not ready until it is connected again.
//!
//! `/metrics` names tenants and integrations, and the listener also
//! serves public webhooks: with `http.metrics_token_file` it answers only
//! `Authorization: Bearer <token>` (docs/security.md).

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use tokio::sync::watch;

use crate::config::Password;
use crate::telemetry::metrics::Exposition;

/// Whether the node is ready, and why (not).
#[derive(Debug, Clone)]
pub struct Health {
    state: Arc<watch::Sender<(bool, String)>>,
}

impl Health {
    pub fn new(why: &str) -> Health {
        Health {
            state: Arc::new(watch::channel((false, why.to_owned())).0),
        }
    }

    pub fn set(&self, ready: bool, why: &str) {
        self.state.send_if_modified(|state| {
            let changed = state.0 != ready || state.1 != why;
            *state = (ready, why.to_owned());
            changed
        });
    }

    pub fn get(&self) -> (bool, String) {
        self.state.borrow().clone()
    }

    /// The gRPC health service, following this readiness: `""` (the
    /// server) and `isoflow.v1.Isoflow` are SERVING exactly while ready.
    pub fn grpc(
        &self,
    ) -> tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>
    {
        let (reporter, service) = tonic_health::server::health_reporter();
        let mut state = self.state.subscribe();
        tokio::spawn(async move {
            loop {
                let ready = state.borrow_and_update().0;
                let status = if ready {
                    tonic_health::ServingStatus::Serving
                } else {
                    tonic_health::ServingStatus::NotServing
                };
                for name in ["", "isoflow.v1.Isoflow"] {
                    reporter.set_service_status(name, status).await;
                }
                if state.changed().await.is_err() {
                    return;
                }
            }
        });
        service
    }
}

/// The routes a later stage adds (the webhooks, once a coordinator
/// leads); until then their paths answer 503.
pub type Late = Arc<OnceLock<Router>>;

#[derive(Clone)]
struct Observe {
    health: Health,
    metrics: Arc<Exposition>,
    token: Option<Arc<Password>>,
    late: Option<Late>,
}

/// The listener's routes: health, metrics, and `late`'s when set.
pub fn router(
    health: Health,
    metrics: Exposition,
    token: Option<Password>,
    late: Option<Late>,
) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .fallback(fallback)
        .with_state(Observe {
            health,
            metrics: Arc::new(metrics),
            token: token.map(Arc::new),
            late,
        })
}

/// Serves `router` on `listener` until `stop`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    // The peer's address reaches handlers (the console's sign-in limit).
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    })
    .await?;
    Ok(())
}

async fn healthz() -> Response {
    axum::Json(json!({ "status": "alive" })).into_response()
}

async fn readyz(State(observe): State<Observe>) -> Response {
    let (ready, why) = observe.health.get();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(json!({ "ready": ready, "reason": why }))).into_response()
}

async fn metrics_text(State(observe): State<Observe>, headers: HeaderMap) -> Response {
    if let Some(token) = &observe.token {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !super::auth::same(given.as_bytes(), token.0.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                axum::Json(json!({ "error": "/metrics needs the metrics token (http.metrics_token_file) as a bearer token" })),
            )
                .into_response();
        }
    }
    let metrics = observe.metrics.clone();
    let text = tokio::task::spawn_blocking(move || metrics.render())
        .await
        .unwrap_or_default();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

async fn fallback(State(observe): State<Observe>, request: Request) -> Response {
    use tower::ServiceExt;
    match observe.late.as_ref().and_then(|late| late.get()) {
        Some(router) => match router.clone().oneshot(request).await {
            Ok(response) => response,
            Err(never) => match never {},
        },
        None if observe.late.is_some() => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(
                json!({ "error": "this coordinator is not leading: another one serves webhooks" }),
            ),
        )
            .into_response(),
        None => (
            StatusCode::NOT_FOUND,
            axum::Json(json!({ "error": "a worker serves only /metrics, /healthz and /readyz" })),
        )
            .into_response(),
    }
}
