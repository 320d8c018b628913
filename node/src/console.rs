//! The web console, served under `/console` on the HTTP listener of an
//! `all` node or the leading coordinator (`http.console`, on by default).
//!
//! Server-rendered HTML (maud templates: every value escaped), one
//! stylesheet and one small script embedded in the binary, no build step.
//! The pages read and act through the public API's own implementation
//! ([`Api`]), called in process as the session's tenant: what a page shows
//! and does is exactly what that tenant's token may do over gRPC, and the
//! API's checks (a run of another tenant is NOT_FOUND) are the console's.
//!
//! - Sign-in exchanges a tenant's API token (or the admin token, for the
//!   cluster page) for a session cookie (`HttpOnly; SameSite=Strict`); see
//!   `session.rs`. Every POST must carry the session's CSRF token and,
//!   when the browser says where it comes from, come from this host.
//! - Every answer carries a strict Content-Security-Policy (scripts and
//!   styles from the console only, no inline code), `nosniff`,
//!   `Referrer-Policy: same-origin` (another site is never told a console URL), `frame-ancestors 'none'` and `no-store`.
//! - Live pages follow server-sent events fed by the coordinator's run
//!   updates (`live.rs`); the script fetches the page again and swaps the
//!   live region.
//!
//! `pages.rs` holds the handlers, `view.rs` the HTML, `bundle.rs` the
//! downloadable step bundle.

mod bundle;
mod live;
mod pages;
mod session;
mod view;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRef, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use tokio::sync::Semaphore;

use crate::server::api::Api;
use crate::server::auth::{AdminAuth, ApiAuth, Tenant};
use crate::server::coordinator::lock;
use crate::server::hooks::Bucket;
use session::{Session, Sessions, Who};

/// Live event streams a node serves at once, all sessions together.
pub const MAX_LIVE_STREAMS: usize = 256;
/// Live event streams one tenant holds at once.
pub const TENANT_LIVE_STREAMS: usize = 16;
/// Pages of one tenant the node renders at once (each reads through the
/// API); more wait up to [`PAGE_WAIT`], then get 429.
pub const TENANT_PAGES: usize = 2;
/// Sign-in attempts one address may make a minute (a burst of as many,
/// then one every few seconds); past it, 429 with `Retry-After`.
pub const SIGN_INS_PER_MINUTE: u32 = 20;
/// The most addresses whose sign-in attempts are counted at once.
const COUNTED_ADDRESSES: usize = 10_000;
/// How long a page waits for its tenant's turn.
pub const PAGE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

/// What the console's handlers share.
#[derive(Debug, Clone)]
pub struct Console {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    api: Api,
    auth: ApiAuth,
    admin: AdminAuth,
    sessions: Sessions,
    /// `http.public_url`'s origin: where browsers say they come from.
    public_origin: Option<String>,
    streams: Arc<Semaphore>,
    /// Each tenant's live streams.
    tenant_streams: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    /// Each tenant's page renders.
    tenant_pages: std::sync::Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Each address's sign-in attempts.
    sign_ins: std::sync::Mutex<HashMap<std::net::IpAddr, Bucket>>,
}

/// One of a tenant's live streams; gives its place back when dropped.
#[derive(Debug)]
pub struct StreamShare {
    counts: Arc<std::sync::Mutex<HashMap<String, usize>>>,
    tenant: String,
    _global: tokio::sync::OwnedSemaphorePermit,
}

impl Drop for StreamShare {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        if let Some(n) = counts.get_mut(&self.tenant) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

impl Console {
    /// `public_url`: `http.public_url`, where users reach the console.
    pub fn new(api: Api, auth: ApiAuth, admin: AdminAuth, public_url: Option<&str>) -> Console {
        Console {
            inner: Arc::new(Inner {
                api,
                auth,
                admin,
                sessions: Sessions::default(),
                public_origin: public_url.and_then(session::origin_of),
                streams: Arc::new(Semaphore::new(MAX_LIVE_STREAMS)),
                tenant_streams: Arc::default(),
                tenant_pages: std::sync::Mutex::default(),
                sign_ins: std::sync::Mutex::default(),
            }),
        }
    }

    fn api(&self) -> &Api {
        &self.inner.api
    }

    /// Counts a sign-in attempt from `address`: `Err(wait)` when it has
    /// made [`SIGN_INS_PER_MINUTE`] already. Guessing tokens from one
    /// address is slowed to that pace; the gRPC API has no sign-in to
    /// limit (each call carries its token).
    fn sign_in_attempt(&self, address: std::net::IpAddr) -> Result<(), std::time::Duration> {
        let now = std::time::Instant::now();
        let mut buckets = lock(&self.inner.sign_ins);
        if buckets.len() >= COUNTED_ADDRESSES && !buckets.contains_key(&address) {
            // Addresses idle for a minute have a full bucket again.
            buckets.retain(|_, b| !b.idle_for(now, std::time::Duration::from_secs(60)));
            if buckets.len() >= COUNTED_ADDRESSES {
                return Err(std::time::Duration::from_secs(60));
            }
        }
        let (bucket, taken) = Bucket::take(buckets.get_mut(&address), SIGN_INS_PER_MINUTE, now);
        buckets.insert(address, bucket);
        taken
    }

    /// Whether cookies are `Secure`: users reach the console over HTTPS
    /// (`http.public_url` says so).
    fn secure(&self) -> bool {
        self.public_origin()
            .is_some_and(|origin| origin.starts_with("https://"))
    }

    fn public_origin(&self) -> Option<&str> {
        self.inner.public_origin.as_deref()
    }

    /// A place for one more live stream of `tenant`, if the node and the
    /// tenant have one.
    fn stream_share(&self, tenant: &str) -> Result<StreamShare, Problem> {
        let busy = || {
            Problem::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "this node serves as many live pages as it can: the page stays as it is until reloaded",
            )
        };
        let global = self
            .inner
            .streams
            .clone()
            .try_acquire_owned()
            .map_err(|_| busy())?;
        let mut counts = lock(&self.inner.tenant_streams);
        let n = counts.entry(tenant.to_owned()).or_default();
        if *n >= TENANT_LIVE_STREAMS {
            return Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "this tenant has {TENANT_LIVE_STREAMS} live pages open: close some, or reload this one later"
                ),
            ));
        }
        *n += 1;
        Ok(StreamShare {
            counts: self.inner.tenant_streams.clone(),
            tenant: tenant.to_owned(),
            _global: global,
        })
    }

    /// Waits for `tenant`'s turn to have a page rendered: at most
    /// [`TENANT_PAGES`] at once, so one tenant's heavy pages cannot take
    /// the node from the others.
    async fn page_turn(&self, tenant: &str) -> Result<tokio::sync::OwnedSemaphorePermit, Problem> {
        let semaphore = lock(&self.inner.tenant_pages)
            .entry(tenant.to_owned())
            .or_insert_with(|| Arc::new(Semaphore::new(TENANT_PAGES)))
            .clone();
        match tokio::time::timeout(PAGE_WAIT, semaphore.acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(Problem::new(
                StatusCode::TOO_MANY_REQUESTS,
                "this tenant's console pages are busy: try again in a moment",
            )),
        }
    }

    /// A request to the API as `tenant`.
    fn request<T>(tenant: &str, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.extensions_mut().insert(Tenant(tenant.to_owned()));
        request
    }

    /// Whether `session` still stands: its token is still valid (not
    /// revoked, its tenant not disabled) and names the same principal.
    fn still_valid(&self, session: &Session) -> bool {
        match &session.who {
            Who::Tenant { tenant, token } => {
                let presented = (!token.is_empty()).then_some(token.as_bytes());
                self.inner
                    .auth
                    .authenticate(presented)
                    .is_ok_and(|t| &t == tenant)
            }
            Who::Admin { token } => self.inner.admin.is_admin(token.as_bytes()),
        }
    }
}

/// The console's routes, under `/console`.
pub fn router(console: Console) -> Router {
    Router::new()
        .route("/console", get(|| async { Redirect::to("/console/runs") }))
        .route("/console/", get(|| async { Redirect::to("/console/runs") }))
        .route(
            "/console/sign-in",
            get(pages::sign_in_page).post(pages::sign_in),
        )
        .route("/console/sign-out", post(pages::sign_out))
        .route("/console/runs", get(pages::runs))
        .route("/console/events", get(live::tenant_events))
        .route("/console/runs/{run_id}", get(pages::run))
        .route("/console/runs/{run_id}/events", get(live::run_events))
        .route("/console/runs/{run_id}/cancel", post(pages::cancel))
        .route("/console/runs/{run_id}/rerun", post(pages::rerun))
        .route("/console/runs/{run_id}/input", get(pages::run_input))
        .route("/console/runs/{run_id}/output", get(pages::run_output))
        .route(
            "/console/runs/{run_id}/steps/{*rest}",
            get(pages::step_resource),
        )
        .route("/console/integrations", get(pages::integrations))
        .route("/console/integrations/{name}", get(pages::integration))
        .route("/console/cluster", get(pages::cluster))
        .route("/console/assets/console.css", get(css))
        .route("/console/assets/console.js", get(js))
        .fallback(|| async { Problem::not_found("there is no such console page") })
        .layer(axum::middleware::map_response(secure_headers))
        .with_state(console)
}

/// The headers every console answer carries.
async fn secure_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let set = |headers: &mut axum::http::HeaderMap, name: &'static str, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(
        headers,
        "content-security-policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
         connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    );
    set(headers, "x-content-type-options", "nosniff");
    // Not `no-referrer`: under it Chromium sends `Origin: null` on the
    // console's own form posts, which the origin check must refuse.
    set(headers, "referrer-policy", "same-origin");
    set(headers, "x-frame-options", "DENY");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, "cache-control", "no-store");
    }
    response
}

const CSS: &str = include_str!("console/assets/console.css");
const JS: &str = include_str!("console/assets/console.js");

async fn css() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/css; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        CSS,
    )
        .into_response()
}

async fn js() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        JS,
    )
        .into_response()
}

/// A signed-in request: its session, still valid.
#[derive(Debug, Clone)]
pub struct Signed {
    session: Session,
}

impl Signed {
    /// The tenant the session acts as, or 403 for an admin session.
    fn tenant(&self) -> Result<&str, Problem> {
        self.session.who.principal().ok_or_else(|| {
            Problem::new(
                StatusCode::FORBIDDEN,
                "this page shows a tenant's runs: sign in with that tenant's API token \
                 (the admin token opens the cluster page)",
            )
        })
    }

    fn is_admin(&self) -> bool {
        self.session.who.principal().is_none()
    }
}

impl<S> FromRequestParts<S> for Signed
where
    Console: FromRef<S>,
    S: Send + Sync,
{
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let console = Console::from_ref(state);
        let session = console.inner.sessions.of(&parts.headers);
        match session {
            Some(session) if console.still_valid(&session) => Ok(Signed { session }),
            Some(_) => {
                console.inner.sessions.close(&parts.headers);
                Err(Redirect::to("/console/sign-in?ended=1").into_response())
            }
            None => Err(Redirect::to("/console/sign-in").into_response()),
        }
    }
}

/// A page that cannot be shown or an action refused: its status and one
/// sentence, as a page with `#error`.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    sentence: String,
}

impl Problem {
    fn new(status: StatusCode, sentence: impl Into<String>) -> Problem {
        Problem {
            status,
            sentence: sentence.into(),
        }
    }

    fn not_found(sentence: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, sentence)
    }
}

impl From<tonic::Status> for Problem {
    fn from(status: tonic::Status) -> Problem {
        use tonic::Code;
        let code = match status.code() {
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
            Code::FailedPrecondition | Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        Problem::new(code, status.message())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        (self.status, view::problem(self.status, &self.sentence)).into_response()
    }
}
