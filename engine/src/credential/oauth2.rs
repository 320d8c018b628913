//! OAuth2 credentials: what the vault keeps of one (the non-secret
//! [`OAuth2State`] and the sealed [`TokenSet`]), and the token endpoint
//! requests that fill it (RFC 6749: client credentials, refresh token and
//! authorization code grants).
//!
//! A step never sees any of it: an http step that names an OAuth2
//! credential gets `Authorization: Bearer <access token>`, renewed by the
//! vault before it expires and once after a 401 (see
//! [`super::vault::Vault::access`]). Token requests go through the engine's
//! http client, so the node's egress policy applies to the token endpoint
//! as to any step's request.

use std::time::Duration;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{MAX_SECRET_BYTES, Secret};
use crate::action::http;

/// Renew an access token this long before it expires.
pub const RENEW_BEFORE: Duration = Duration::from_secs(60);
/// A token request gets this long.
pub const TOKEN_TIMEOUT: Duration = Duration::from_secs(15);
/// The largest token endpoint answer read.
pub const MAX_TOKEN_RESPONSE_BYTES: u64 = 64 * 1024;
/// How long an authorization started with `authorize` may take.
pub const AUTHORIZATION_WINDOW: Duration = Duration::from_secs(600);
/// The most scopes a credential asks for.
pub const MAX_SCOPES: usize = 32;

/// How the client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// HTTP Basic with the URL-encoded id and secret (RFC 6749 2.3.1).
    #[default]
    Basic,
    /// `client_id` and `client_secret` in the form body.
    Post,
}

/// How the credential gets its first tokens and renews them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Grant {
    /// The client's own id and secret get each access token.
    ClientCredentials,
    /// A refresh token given when the credential is set.
    RefreshToken,
    /// A user signs in at `authorize_url`; the callback's code gets the
    /// first tokens, the refresh token the next ones.
    AuthorizationCode,
}

impl Grant {
    pub fn as_str(self) -> &'static str {
        match self {
            Grant::ClientCredentials => "client_credentials",
            Grant::RefreshToken => "refresh_token",
            Grant::AuthorizationCode => "authorization_code",
        }
    }
}

/// Why the credential cannot be used now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unhealthy {
    /// One sentence, with no secret in it.
    pub reason: String,
    pub since_ms: u64,
    /// The token endpoint refused the grant itself (a revoked refresh
    /// token, a wrong client secret): trying again cannot help until the
    /// credential is set or authorized again. Otherwise the next use tries.
    pub permanent: bool,
}

/// An authorization under way: the hash of its `state` parameter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// SHA-256 of the state, hex.
    pub state_sha256: String,
    pub redirect_uri: String,
    pub expires_ms: u64,
}

/// What the vault keeps in the clear of an OAuth2 credential (still bound
/// into the seal, so an edit on disk makes the credential unopenable).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2State {
    pub token_url: String,
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    pub grant: Grant,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorize_url: Option<String>,
    /// When the access token expires; `None` with a token: the endpoint
    /// said nothing, and the token is used until a 401.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_ms: Option<u64>,
    /// Access tokens obtained so far.
    #[serde(default)]
    pub renewals: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewed_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unhealthy: Option<Unhealthy>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<Pending>,
    /// The authorization code grant's own callback path segment (random):
    /// its redirect URI is `<callback base>/<callback_id>`, one per
    /// credential, so a provider that allows only that URI for its client
    /// sends codes for that client to this credential alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback_id: Option<String>,
}

impl OAuth2State {
    /// The redirect URI under `base` (`<public_url>/oauth/callback`), for
    /// the authorization code grant.
    pub fn redirect_uri(&self, base: &str) -> Option<String> {
        self.callback_id
            .as_ref()
            .map(|id| format!("{}/{id}", base.trim_end_matches('/')))
    }
}

/// The secret part of an OAuth2 credential, sealed as one JSON value.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSet {
    pub client_secret: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access_token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
}

impl std::fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSet")
            .field("access_token", &self.access_token.is_some())
            .field("refresh_token", &self.refresh_token.is_some())
            .finish_non_exhaustive()
    }
}

impl TokenSet {
    /// Every secret in it, to scrub from whatever a token endpoint says.
    pub fn secrets(&self) -> Vec<Secret> {
        [
            Some(&self.client_secret),
            self.access_token.as_ref(),
            self.refresh_token.as_ref(),
        ]
        .into_iter()
        .flatten()
        .filter(|s| !s.is_empty())
        .map(|s| Secret::new(s.clone()))
        .collect()
    }
}

/// What a user gives to set an OAuth2 credential.
#[derive(Clone, PartialEq, Eq)]
pub struct OAuth2Setup {
    pub token_url: String,
    pub client_id: String,
    pub client_secret: Secret,
    pub scopes: Vec<String>,
    pub client_auth: ClientAuth,
    pub grant: Grant,
    /// `RefreshToken` only.
    pub refresh_token: Option<Secret>,
    /// `AuthorizationCode` only.
    pub authorize_url: Option<String>,
}

impl std::fmt::Debug for OAuth2Setup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuth2Setup")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("grant", &self.grant)
            .finish_non_exhaustive()
    }
}

impl OAuth2Setup {
    /// One sentence on what is wrong, if anything; `allow_http` admits
    /// plain-http endpoints.
    pub fn check(&self, allow_http: bool) -> Result<(), String> {
        endpoint("token_url", &self.token_url, allow_http)?;
        if self.client_id.is_empty()
            || self.client_id.len() > 256
            || self.client_id.chars().any(char::is_control)
        {
            return Err("client_id must be 1 to 256 characters without control characters".into());
        }
        token_text("the client secret", self.client_secret.expose())?;
        if self.scopes.len() > MAX_SCOPES {
            return Err(format!(
                "{} scopes; a credential asks for at most {MAX_SCOPES}",
                self.scopes.len()
            ));
        }
        for scope in &self.scopes {
            if scope.is_empty()
                || scope.len() > 256
                || scope.chars().any(|c| c.is_whitespace() || c.is_control())
            {
                return Err(format!(
                    "scope {scope:?} must be 1 to 256 characters without spaces"
                ));
            }
        }
        match (self.grant, &self.refresh_token, &self.authorize_url) {
            (Grant::ClientCredentials, None, None) => Ok(()),
            (Grant::RefreshToken, Some(token), None) => {
                token_text("the refresh token", token.expose())
            }
            (Grant::AuthorizationCode, None, Some(url)) => {
                endpoint("authorize_url", url, allow_http)
            }
            (Grant::RefreshToken, None, _) => {
                Err("the refresh_token grant needs a refresh token".into())
            }
            (Grant::AuthorizationCode, _, None) => {
                Err("the authorization_code grant needs an authorize_url".into())
            }
            (grant, _, _) => Err(format!(
                "the {} grant takes {}",
                grant.as_str(),
                match grant {
                    Grant::ClientCredentials => "neither a refresh token nor an authorize_url",
                    Grant::RefreshToken => "no authorize_url",
                    Grant::AuthorizationCode => "no refresh token: it gets one from the callback",
                }
            )),
        }
    }
}

fn endpoint(what: &str, url: &str, allow_http: bool) -> Result<(), String> {
    if url.len() > 2048 {
        return Err(format!("{what} is longer than 2048 bytes"));
    }
    let parsed = reqwest::Url::parse(url).map_err(|e| format!("{what} {url:?}: {e}"))?;
    match parsed.scheme() {
        "https" => {}
        "http" if allow_http => {}
        "http" => {
            return Err(format!(
                "{what} {url:?} is plain http, where anyone on the path reads the client secret; use https, or allow plain http explicitly"
            ));
        }
        other => return Err(format!("{what} {url:?} has scheme {other:?}, not https")),
    }
    if !parsed.username().is_empty() || parsed.password().is_some() {
        return Err(format!(
            "{what} holds a user or password; use client_secret"
        ));
    }
    if parsed.fragment().is_some() {
        return Err(format!("{what} {url:?} has a fragment"));
    }
    Ok(())
}

/// A token or secret as the vault keeps it: not empty, at most
/// [`MAX_SECRET_BYTES`], printable.
fn token_text(what: &str, value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err(format!("{what} is empty"));
    }
    if value.len() > MAX_SECRET_BYTES {
        return Err(format!(
            "{what} is {} bytes, more than the {MAX_SECRET_BYTES} a credential may hold",
            value.len()
        ));
    }
    if value.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!("{what} holds a space or a control character"));
    }
    Ok(())
}

/// A token endpoint's answer to a grant.
#[derive(Clone, PartialEq, Eq)]
pub struct Tokens {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub expires_in: Option<Duration>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("refresh_token", &self.refresh_token.is_some())
            .field("expires_in", &self.expires_in)
            .finish_non_exhaustive()
    }
}

/// Why a grant got no tokens: one sentence without secrets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{reason}")]
pub struct GrantError {
    pub reason: String,
    /// The endpoint refused the grant (RFC 6749 5.2: `invalid_grant`,
    /// `invalid_client`, ...): asking again the same way cannot succeed.
    pub permanent: bool,
}

/// What to ask the token endpoint for.
#[derive(Clone, Copy)]
pub enum Ask<'a> {
    ClientCredentials,
    Refresh(&'a str),
    Code {
        code: &'a str,
        redirect_uri: &'a str,
    },
}

impl std::fmt::Debug for Ask<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Ask::ClientCredentials => "Ask::ClientCredentials",
            Ask::Refresh(_) => "Ask::Refresh(…)",
            Ask::Code { .. } => "Ask::Code(…)",
        })
    }
}

/// Asks the token endpoint of `state` for tokens, as `tenant` (whose
/// egress allowances apply).
pub async fn request_tokens(
    client: &http::Client,
    tenant: &str,
    state: &OAuth2State,
    client_secret: &str,
    ask: Ask<'_>,
) -> Result<Tokens, GrantError> {
    let request = token_request(tenant, state, client_secret, ask);
    // What the endpoint says goes into errors: never with a secret of ours,
    // in any form the request carried it (raw, form-encoded, in Basic).
    let mut raw = vec![client_secret];
    match ask {
        Ask::Refresh(token) => raw.push(token),
        Ask::Code { code, .. } => raw.push(code),
        Ask::ClientCredentials => {}
    }
    let mut ours: Vec<Secret> = raw
        .iter()
        .flat_map(|text| [text.to_string(), form_encoded(text)])
        .map(Secret::new)
        .collect();
    ours.push(Secret::new(
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            form_encoded(&state.client_id),
            form_encoded(client_secret)
        )),
    ));
    let at = shown_endpoint(&state.token_url);
    match client.send(&request).await {
        Ok(response) => tokens(&response.body).map_err(|reason| GrantError {
            reason: format!("the token endpoint {at} answered {reason}"),
            permanent: false,
        }),
        Err(http::HttpError::Status { status, body, .. }) => {
            let body = http::scrub_all(body, &ours);
            let (code, description) = oauth_error(&body);
            let permanent = (400..500).contains(&status)
                && status != 429
                && code.as_deref().is_some_and(|c| {
                    matches!(
                        c,
                        "invalid_grant"
                            | "invalid_client"
                            | "unauthorized_client"
                            | "unsupported_grant_type"
                            | "invalid_scope"
                            | "invalid_request"
                    )
                });
            let said = match (code, description) {
                (Some(code), Some(text)) => format!(" {code}: {text}"),
                (Some(code), None) => format!(" {code}"),
                _ => String::new(),
            };
            Err(GrantError {
                reason: format!("the token endpoint {at} answered {status}{said}"),
                permanent,
            })
        }
        Err(other) => Err(GrantError {
            reason: http::scrub_all(other.to_string(), &ours),
            permanent: false,
        }),
    }
}

/// The form POST a grant sends (RFC 6749 4.1.3, 4.4.2, 6).
fn token_request(
    tenant: &str,
    state: &OAuth2State,
    client_secret: &str,
    ask: Ask<'_>,
) -> http::Request {
    let mut form = form_urlencoded::Serializer::new(String::new());
    match ask {
        Ask::ClientCredentials => {
            form.append_pair("grant_type", "client_credentials");
            if !state.scopes.is_empty() {
                form.append_pair("scope", &state.scopes.join(" "));
            }
        }
        Ask::Refresh(token) => {
            form.append_pair("grant_type", "refresh_token");
            form.append_pair("refresh_token", token);
        }
        Ask::Code { code, redirect_uri } => {
            form.append_pair("grant_type", "authorization_code");
            form.append_pair("code", code);
            form.append_pair("redirect_uri", redirect_uri);
        }
    }
    let mut request = http::Request::get(state.token_url.clone());
    request.method = http::Method::Post;
    request.timeout = TOKEN_TIMEOUT;
    request.max_response_bytes = MAX_TOKEN_RESPONSE_BYTES;
    request.tenant = tenant.to_owned();
    match state.client_auth {
        ClientAuth::Basic => {
            let pair = format!(
                "{}:{}",
                form_encoded(&state.client_id),
                form_encoded(client_secret)
            );
            request.headers.push((
                "Authorization".into(),
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(pair)
                ),
            ));
        }
        ClientAuth::Post => {
            form.append_pair("client_id", &state.client_id);
            form.append_pair("client_secret", client_secret);
        }
    }
    request.headers.push((
        "Content-Type".into(),
        "application/x-www-form-urlencoded".into(),
    ));
    request
        .headers
        .push(("Accept".into(), "application/json".into()));
    request.body = Some(http::Body::Text(form.finish()));
    request
}

/// The token endpoint's URL as errors show it: without its query.
fn shown_endpoint(url: &str) -> String {
    reqwest::Url::parse(url).map_or_else(
        |_| "(unparsable)".to_owned(),
        |mut u| {
            u.set_query(None);
            u.to_string()
        },
    )
}

fn form_encoded(text: &str) -> String {
    form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The tokens in a successful answer (RFC 6749 5.1), or what is wrong.
fn tokens(body: &Value) -> Result<Tokens, String> {
    let parsed;
    let body = match body {
        Value::String(text) => {
            parsed = serde_json::from_str::<Value>(text)
                .map_err(|_| "a body that is not JSON".to_owned())?;
            &parsed
        }
        other => other,
    };
    let text = |key: &str| body.get(key).and_then(Value::as_str);
    let access_token = text("access_token").ok_or("no access_token")?.to_owned();
    token_text("its access_token", &access_token)?;
    match text("token_type") {
        Some(kind) if kind.eq_ignore_ascii_case("bearer") => {}
        Some(kind) => {
            let mut kind = kind.to_owned();
            kind.truncate(40);
            return Err(format!("token_type {kind:?}, not Bearer"));
        }
        None => return Err("no token_type".into()),
    }
    let refresh_token = text("refresh_token").map(str::to_owned);
    if let Some(token) = &refresh_token {
        token_text("its refresh_token", token)?;
    }
    let expires_in = match body.get("expires_in") {
        None | Some(Value::Null) => None,
        Some(value) => {
            // Some endpoints send the number as a string.
            let seconds = value
                .as_u64()
                .or_else(|| value.as_str().and_then(|s| s.trim().parse().ok()))
                .ok_or("an expires_in that is not a whole number of seconds")?;
            Some(Duration::from_secs(seconds.min(10 * 365 * 24 * 3600)))
        }
    };
    Ok(Tokens {
        access_token,
        refresh_token,
        expires_in,
    })
}

/// `error` and `error_description` of an error answer (RFC 6749 5.2), each
/// cut short and printable.
fn oauth_error(body: &str) -> (Option<String>, Option<String>) {
    let Ok(value) = serde_json::from_str::<Value>(body) else {
        return (None, None);
    };
    let field = |key: &str, max: usize| {
        value.get(key).and_then(Value::as_str).map(|s| {
            let mut shown: String = s.chars().filter(|c| !c.is_control()).take(max).collect();
            if s.chars().count() > max {
                shown.push('…');
            }
            shown
        })
    };
    (field("error", 64), field("error_description", 200))
}

/// A fresh `state` parameter: 32 random bytes, base64url.
pub fn new_state(random: &dyn ring::rand::SecureRandom) -> Result<String, String> {
    random_text(random, 32)
}

/// `n` random bytes, base64url without padding.
pub fn random_text(random: &dyn ring::rand::SecureRandom, n: usize) -> Result<String, String> {
    let mut bytes = vec![0u8; n];
    random
        .fill(&mut bytes)
        .map_err(|_| "the system has no randomness".to_owned())?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// SHA-256 of `text`, hex.
pub fn sha256_hex(text: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, text);
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// The URL a user opens to authorize: `authorize_url` with the standard
/// parameters added.
pub fn authorization_url(
    state: &OAuth2State,
    redirect_uri: &str,
    state_param: &str,
) -> Result<String, String> {
    let base = state
        .authorize_url
        .as_deref()
        .ok_or("the credential has no authorize_url")?;
    let mut url = reqwest::Url::parse(base).map_err(|e| format!("authorize_url: {e}"))?;
    {
        let mut query = url.query_pairs_mut();
        query
            .append_pair("response_type", "code")
            .append_pair("client_id", &state.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("state", state_param);
        if !state.scopes.is_empty() {
            query.append_pair("scope", &state.scopes.join(" "));
        }
    }
    Ok(url.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn setup(grant: Grant) -> OAuth2Setup {
        OAuth2Setup {
            token_url: "https://auth.example.com/token".into(),
            client_id: "client".into(),
            client_secret: Secret::new("s3cret"),
            scopes: vec!["orders.read".into()],
            client_auth: ClientAuth::Basic,
            grant,
            refresh_token: None,
            authorize_url: None,
        }
    }

    #[test]
    fn a_setup_is_checked_before_anything_is_stored() {
        assert!(setup(Grant::ClientCredentials).check(false).is_ok());
        let mut plain = setup(Grant::ClientCredentials);
        plain.token_url = "http://auth.example.com/token".into();
        assert!(
            plain
                .check(false)
                .expect_err("plain")
                .contains("plain http")
        );
        assert!(plain.check(true).is_ok());
        assert_eq!(
            setup(Grant::RefreshToken)
                .check(false)
                .expect_err("no token"),
            "the refresh_token grant needs a refresh token"
        );
        let mut code = setup(Grant::AuthorizationCode);
        code.refresh_token = Some(Secret::new("r"));
        code.authorize_url = Some("https://auth.example.com/authorize".into());
        assert!(
            code.check(false)
                .expect_err("both")
                .contains("no refresh token")
        );
        let mut scoped = setup(Grant::ClientCredentials);
        scoped.scopes = vec!["a b".into()];
        assert!(
            scoped
                .check(false)
                .expect_err("space")
                .contains("without spaces")
        );
        let mut userinfo = setup(Grant::ClientCredentials);
        userinfo.token_url = "https://u:p@auth.example.com/token".into();
        assert!(userinfo.check(false).is_err());
    }

    #[test]
    fn a_token_answer_is_read_as_rfc_6749_says() {
        let tokens = tokens(&json!({
            "access_token": "at", "token_type": "bearer", "expires_in": "3600", "refresh_token": "rt"
        }))
        .expect("tokens");
        assert_eq!(tokens.access_token, "at");
        assert_eq!(tokens.refresh_token.as_deref(), Some("rt"));
        assert_eq!(tokens.expires_in, Some(Duration::from_secs(3600)));
        assert_eq!(
            super::tokens(&json!({"access_token": "at", "token_type": "mac"})).expect_err("mac"),
            "token_type \"mac\", not Bearer"
        );
        assert_eq!(
            super::tokens(&json!({"token_type": "Bearer"})).expect_err("none"),
            "no access_token"
        );
        assert!(
            super::tokens(&json!("{\"access_token\":\"a\",\"token_type\":\"Bearer\"}")).is_ok()
        );
        assert_eq!(
            oauth_error(r#"{"error":"invalid_grant","error_description":"revoked\n"}"#),
            (Some("invalid_grant".into()), Some("revoked".into()))
        );
    }

    #[test]
    fn the_authorization_url_carries_client_redirect_state_and_scopes() {
        let state = OAuth2State {
            token_url: "https://auth.example.com/token".into(),
            client_id: "client 1".into(),
            scopes: vec!["a".into(), "b".into()],
            client_auth: ClientAuth::Basic,
            grant: Grant::AuthorizationCode,
            authorize_url: Some("https://auth.example.com/authorize?prompt=consent".into()),
            expires_ms: None,
            renewals: 0,
            renewed_ms: None,
            unhealthy: None,
            pending: None,
            callback_id: None,
        };
        let url = authorization_url(&state, "https://isoflow.example.com/oauth/callback", "xyz")
            .expect("a url");
        assert_eq!(
            url,
            "https://auth.example.com/authorize?prompt=consent&response_type=code&client_id=client+1\
             &redirect_uri=https%3A%2F%2Fisoflow.example.com%2Foauth%2Fcallback&state=xyz&scope=a+b"
        );
    }
}
