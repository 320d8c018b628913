//! An OAuth2 provider on loopback, as a SaaS API that customers' stored
//! credentials are for: a token endpoint (`POST /token`: client
//! credentials, refresh token and authorization code grants, RFC 6749) and
//! a protected API (`/api/*`) that answers 200 to a live access token
//! (`{"ok": true, "issued": N}` for token `at-N`) and 401 to anything else.
//!
//! Tokens are counted (`at-1`, `at-2`, ... and `rt-1`, ...), refresh tokens
//! rotate on each use (the old one is refused after), and a test can expire,
//! revoke and slow things down to exercise renewal.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::json;

use crate::{Answer, HttpFixture, Recorded, Reply, Responder};

pub const CLIENT_ID: &str = "isoflow-client";
pub const CLIENT_SECRET: &str = "client-s3cret-0123";

/// The provider. It stops when dropped.
pub struct Provider {
    fixture: HttpFixture,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("url", &self.fixture.url("/"))
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    issued: u64,
    /// Access token → when it stops working.
    access: HashMap<String, Instant>,
    /// Refresh tokens that work.
    refresh: HashSet<String>,
    /// Authorization code → the redirect URI it was issued for.
    codes: HashMap<String, String>,
    /// Each token request's grant type, in order.
    grants: Vec<String>,
    /// Seconds each new access token lives (`expires_in`).
    lifetime: u64,
    /// Whether answers carry a new refresh token (rotation).
    rotate: bool,
    /// How long the token endpoint takes to answer.
    delay: Duration,
}

fn lock(state: &Mutex<State>) -> MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl Provider {
    /// A provider whose access tokens live `lifetime_secs` and whose refresh
    /// tokens rotate.
    pub fn start(lifetime_secs: u64) -> Provider {
        let fixture = HttpFixture::start();
        let state = Arc::new(Mutex::new(State {
            lifetime: lifetime_secs,
            rotate: true,
            ..State::default()
        }));
        let token_state = state.clone();
        fixture.route(
            "POST",
            "/token",
            Responder::With(Answer(Arc::new(move |request| {
                token(&token_state, request)
            }))),
        );
        for method in ["GET", "POST"] {
            let api_state = state.clone();
            fixture.route(
                method,
                "/api/*",
                Responder::With(Answer(Arc::new(move |request| {
                    (Duration::ZERO, api(&api_state, request))
                }))),
            );
        }
        Provider { fixture, state }
    }

    /// `http://127.0.0.1:<port><path>`.
    pub fn url(&self, path: &str) -> String {
        self.fixture.url(path)
    }

    pub fn fixture(&self) -> &HttpFixture {
        &self.fixture
    }

    /// A refresh token that works, as one issued before the test.
    pub fn add_refresh_token(&self, token: &str) {
        lock(&self.state).refresh.insert(token.to_owned());
    }

    /// An authorization code for `redirect_uri`, as the provider's sign-in
    /// page would hand the browser.
    pub fn issue_code(&self, redirect_uri: &str) -> String {
        let mut state = lock(&self.state);
        state.issued += 1;
        let code = format!("code-{}", state.issued);
        state.codes.insert(code.clone(), redirect_uri.to_owned());
        code
    }

    /// Every refresh token stops working (a user revoked the app).
    pub fn revoke_refresh_tokens(&self) {
        lock(&self.state).refresh.clear();
    }

    /// Every access token stops working before its expiry.
    pub fn revoke_access_tokens(&self) {
        lock(&self.state).access.clear();
    }

    /// New access tokens live this long.
    pub fn set_lifetime(&self, secs: u64) {
        lock(&self.state).lifetime = secs;
    }

    /// The token endpoint answers after this long.
    pub fn set_delay(&self, delay: Duration) {
        lock(&self.state).delay = delay;
    }

    /// Each token request's `grant_type`, in order.
    pub fn grants(&self) -> Vec<String> {
        lock(&self.state).grants.clone()
    }

    /// Requests the API got, and how many it answered 401.
    pub fn api_requests(&self) -> Vec<Recorded> {
        let mut all = self.fixture.requests("GET", "/api/*");
        all.extend(self.fixture.requests("POST", "/api/*"));
        all
    }
}

fn form(body: &[u8]) -> HashMap<String, String> {
    form_urlencoded::parse(body)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

fn error(status: u16, code: &str, description: &str) -> Reply {
    Reply::json(
        status,
        &json!({ "error": code, "error_description": description }),
    )
}

/// The client's id and secret, from HTTP Basic or the body.
fn client(request: &Recorded, form: &HashMap<String, String>) -> Option<(String, String)> {
    if let Some(basic) = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Basic "))
    {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(basic)
            .ok()?;
        let text = String::from_utf8(decoded).ok()?;
        let (id, secret) = text.split_once(':')?;
        let unescape = |s: &str| {
            form_urlencoded::parse(format!("x={s}").as_bytes())
                .next()
                .map(|(_, v)| v.into_owned())
        };
        return Some((unescape(id)?, unescape(secret)?));
    }
    Some((
        form.get("client_id")?.clone(),
        form.get("client_secret")?.clone(),
    ))
}

fn token(state: &Mutex<State>, request: &Recorded) -> (Duration, Reply) {
    let form = form(&request.body);
    let mut state = lock(state);
    let delay = state.delay;
    let grant = form.get("grant_type").cloned().unwrap_or_default();
    state.grants.push(grant.clone());
    if client(request, &form) != Some((CLIENT_ID.to_owned(), CLIENT_SECRET.to_owned())) {
        return (delay, error(401, "invalid_client", "unknown client"));
    }
    let refresh = match grant.as_str() {
        "client_credentials" => false,
        "refresh_token" => {
            let given = form.get("refresh_token").cloned().unwrap_or_default();
            if !state.refresh.contains(&given) {
                return (
                    delay,
                    error(400, "invalid_grant", "refresh token revoked or unknown"),
                );
            }
            if state.rotate {
                state.refresh.remove(&given);
            }
            true
        }
        "authorization_code" => {
            let code = form.get("code").cloned().unwrap_or_default();
            let redirect = form.get("redirect_uri").cloned().unwrap_or_default();
            match state.codes.remove(&code) {
                Some(expected) if expected == redirect => true,
                _ => {
                    return (
                        delay,
                        error(
                            400,
                            "invalid_grant",
                            "code unknown, used, or for another redirect_uri",
                        ),
                    );
                }
            }
        }
        _ => return (delay, error(400, "unsupported_grant_type", "unknown grant")),
    };
    state.issued += 1;
    let n = state.issued;
    let access = format!("at-{n}");
    let lifetime = state.lifetime;
    state.access.insert(
        access.clone(),
        Instant::now() + Duration::from_secs(lifetime),
    );
    let mut body = json!({
        "access_token": access,
        "token_type": "Bearer",
        "expires_in": lifetime,
    });
    if refresh && state.rotate || grant == "authorization_code" {
        let token = format!("rt-{n}");
        state.refresh.insert(token.clone());
        body["refresh_token"] = json!(token);
    }
    (delay, Reply::json(200, &body))
}

fn api(state: &Mutex<State>, request: &Recorded) -> Reply {
    let state = lock(state);
    let live = request
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .filter(|token| {
            state
                .access
                .get(*token)
                .is_some_and(|until| *until > Instant::now())
        });
    match live {
        // Which token it was, by number: a client scrubs the token itself
        // from what it reads.
        Some(token) => Reply::json(
            200,
            &json!({ "ok": true, "issued": token.trim_start_matches("at-").parse::<u64>().ok() }),
        ),
        None => error(
            401,
            "invalid_token",
            "the access token is expired or revoked",
        ),
    }
}
