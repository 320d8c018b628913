//! Credentials for http steps: what a credential is (a kind, its secret and
//! the origins it may be sent to), how the engine asks for one, and how it
//! is put on a request.
//!
//! An http step names a credential (`credential: erp-api`); the engine asks
//! its [`Credentials`] for it right before the request, checks the request's
//! URL against the credential's origins, puts the secret on the request and
//! forgets it once the response is in. JavaScript never sees it, and every
//! form of it the request carried is scrubbed from what comes back.
//!
//! Where credentials come from:
//! - [`StaticCredentials`]: a fixed map, for the local `isoflow run`
//!   (from its TOML or the environment).
//! - [`vault::Vault`]: the coordinator's (and an `all` node's) store,
//!   encrypted at rest with AES-256-GCM.
//! - a worker asks the coordinator over its authenticated stream, for the
//!   one request that needs it (`node/src/server/worker.rs`).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use crate::action::http;
use crate::action::origin::Origin;

pub mod oauth2;
pub mod vault;

/// A secret an http step sends; never logged, never given to JavaScript.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(…)")
    }
}

/// How a credential goes on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CredentialKind {
    /// `Authorization: Bearer <token>`.
    Bearer { token: Secret },
    /// `Authorization: Basic base64(<username>:<password>)`.
    Basic { username: String, password: Secret },
    /// `<header>: <value>`, e.g. `X-Api-Key`.
    Header { header: String, value: Secret },
    /// `?<param>=<value>` added to the URL's query.
    Query { param: String, value: Secret },
}

impl CredentialKind {
    /// `bearer`, `basic`, `header` or `query`.
    pub fn name(&self) -> &'static str {
        match self {
            CredentialKind::Bearer { .. } => "bearer",
            CredentialKind::Basic { .. } => "basic",
            CredentialKind::Header { .. } => "header",
            CredentialKind::Query { .. } => "query",
        }
    }

    /// The secret part: the token, password or value.
    pub fn secret(&self) -> &Secret {
        match self {
            CredentialKind::Bearer { token } => token,
            CredentialKind::Basic { password, .. } => password,
            CredentialKind::Header { value, .. } | CredentialKind::Query { value, .. } => value,
        }
    }

    /// The same kind with another secret (rotation keeps everything else).
    pub fn with_secret(&self, secret: Secret) -> CredentialKind {
        match self {
            CredentialKind::Bearer { .. } => CredentialKind::Bearer { token: secret },
            CredentialKind::Basic { username, .. } => CredentialKind::Basic {
                username: username.clone(),
                password: secret,
            },
            CredentialKind::Header { header, .. } => CredentialKind::Header {
                header: header.clone(),
                value: secret,
            },
            CredentialKind::Query { param, .. } => CredentialKind::Query {
                param: param.clone(),
                value: secret,
            },
        }
    }

    /// The non-secret part a listing shows: the username, header or
    /// parameter name.
    pub fn detail(&self) -> Option<&str> {
        match self {
            CredentialKind::Bearer { .. } => None,
            CredentialKind::Basic { username, .. } => Some(username),
            CredentialKind::Header { header, .. } => Some(header),
            CredentialKind::Query { param, .. } => Some(param),
        }
    }

    /// Whether this credential could be sent at all: one sentence on what
    /// is wrong otherwise.
    pub fn check(&self) -> Result<(), String> {
        let secret = self.secret().expose();
        if secret.is_empty() {
            return Err("the secret is empty".into());
        }
        if secret.len() > MAX_SECRET_BYTES {
            return Err(format!(
                "the secret is {} bytes, more than the {MAX_SECRET_BYTES} a credential may hold",
                secret.len()
            ));
        }
        if secret.chars().any(char::is_control) {
            return Err("the secret holds a control character or a line break".into());
        }
        match self {
            CredentialKind::Bearer { token } => {
                if token.expose().contains(char::is_whitespace) {
                    return Err("a bearer token holds no spaces".into());
                }
            }
            CredentialKind::Basic { username, .. } => {
                if username.contains(':') || username.chars().any(char::is_control) {
                    return Err(format!(
                        "username {username:?} holds a ':' or a control character, which Basic authentication cannot carry"
                    ));
                }
            }
            CredentialKind::Header { header, .. } => {
                let name = reqwest::header::HeaderName::from_bytes(header.as_bytes())
                    .map_err(|_| format!("{header:?} is not a header name"))?;
                if http::ENGINE_HEADERS.contains(&name.as_str())
                    || name.as_str() == "idempotency-key"
                    || http::CREDENTIAL_HEADERS.contains(&name.as_str())
                        && name != reqwest::header::AUTHORIZATION
                {
                    return Err(format!(
                        "header {header:?} cannot carry a credential: the engine or a front end reads it"
                    ));
                }
            }
            CredentialKind::Query { param, .. } => {
                if param.is_empty() || param.chars().any(char::is_control) {
                    return Err(format!("{param:?} is not a query parameter name"));
                }
            }
        }
        Ok(())
    }
}

/// The longest secret a credential holds.
pub const MAX_SECRET_BYTES: usize = 16 * 1024;

/// A credential: how it goes on a request, and the only origins it may be
/// sent to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub kind: CredentialKind,
    pub origins: Vec<Origin>,
    /// An OAuth2 access token: after a 401, [`Credentials::renewed`] may
    /// give a new one, and the request is sent once more with it.
    pub renewable: bool,
}

impl Credential {
    /// A bearer token for `origins`.
    pub fn new(secret: Secret, origins: impl IntoIterator<Item = Origin>) -> Credential {
        Credential::of(CredentialKind::Bearer { token: secret }, origins)
    }

    pub fn of(kind: CredentialKind, origins: impl IntoIterator<Item = Origin>) -> Credential {
        Credential {
            kind,
            origins: origins.into_iter().collect(),
            renewable: false,
        }
    }

    /// Whether the credential may be sent to `url`.
    pub fn admits(&self, url: &reqwest::Url) -> bool {
        self.origins.iter().any(|origin| origin.admits(url))
    }

    /// Every form in which the secret travels on a request, or may come
    /// back, to scrub from what comes back: the secret itself and as
    /// encoded on the wire (Basic's base64, a query value URL-encoded with
    /// `+` or `%20` for spaces), each also as a JSON string escapes it
    /// (with `/` escaped or not).
    pub fn wire_forms(&self) -> Vec<Secret> {
        let secret = self.kind.secret().expose().to_owned();
        let mut forms = vec![secret.clone()];
        match &self.kind {
            CredentialKind::Basic { username, password } => {
                forms.push(basic_value(username, password));
            }
            CredentialKind::Query { value, .. } => {
                let encoded = url_encoded(value.expose());
                forms.push(encoded.replace('+', "%20"));
                forms.push(encoded);
            }
            CredentialKind::Bearer { .. } | CredentialKind::Header { .. } => {}
        }
        let mut escaped = Vec::new();
        for form in &forms {
            let json = serde_json::to_string(form).expect("a string always serialises");
            let json = json[1..json.len() - 1].to_owned();
            escaped.push(json.replace('/', "\\/"));
            escaped.push(json);
        }
        forms.extend(escaped);
        let mut unique: Vec<Secret> = Vec::new();
        for form in forms {
            if !form.is_empty() && !unique.iter().any(|u| u.expose() == form) {
                unique.push(Secret::new(form));
            }
        }
        unique
    }

    /// Puts the credential on `request` (whose URL it must admit), and
    /// marks the request as credentialed.
    pub fn apply(&self, request: &mut http::Request) {
        match &self.kind {
            CredentialKind::Bearer { token } => request
                .headers
                .push(("Authorization".into(), format!("Bearer {}", token.expose()))),
            CredentialKind::Basic { username, password } => request.headers.push((
                "Authorization".into(),
                format!("Basic {}", basic_value(username, password)),
            )),
            CredentialKind::Header { header, value } => request
                .headers
                .push((header.clone(), value.expose().to_owned())),
            CredentialKind::Query { param, value } => request
                .query
                .push((param.clone(), value.expose().to_owned())),
        }
        request.secrets = self.wire_forms();
    }

    /// The header this credential sets, lowercase (none for a query key).
    pub fn header(&self) -> Option<String> {
        match &self.kind {
            CredentialKind::Bearer { .. } | CredentialKind::Basic { .. } => {
                Some("authorization".into())
            }
            CredentialKind::Header { header, .. } => Some(header.to_ascii_lowercase()),
            CredentialKind::Query { .. } => None,
        }
    }
}

fn basic_value(username: &str, password: &Secret) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{username}:{}", password.expose()))
}

fn url_encoded(value: &str) -> String {
    let mut url = reqwest::Url::parse("http://x/").expect("a constant URL");
    url.query_pairs_mut().append_pair("k", value);
    url.query()
        .and_then(|q| q.strip_prefix("k="))
        .unwrap_or(value)
        .to_owned()
}

/// Why a credential could not be fetched (not: that it does not exist).
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct CredentialError(pub String);

pub type CredentialFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Option<Credential>, CredentialError>> + Send + 'a>>;

/// Looks up a tenant's credential by the name an http step gives, for one
/// request of one run. `Ok(None)`: the tenant has no credential by that
/// name. An error is transient (the step may retry).
pub trait Credentials: Send + Sync + 'static {
    fn credential<'a>(
        &'a self,
        tenant: &'a str,
        run_id: &'a str,
        name: &'a str,
    ) -> CredentialFuture<'a>;

    /// The credential again after the server refused `rejected` (what
    /// [`Credentials::credential`] gave) with a 401: a renewed one if it
    /// can be renewed. The default renews nothing and gives `rejected`'s
    /// credential back unchanged, so the request is not sent again.
    fn renewed<'a>(
        &'a self,
        tenant: &'a str,
        run_id: &'a str,
        name: &'a str,
        rejected: &'a Secret,
    ) -> CredentialFuture<'a> {
        let _ = rejected;
        self.credential(tenant, run_id, name)
    }
}

/// Credentials from a fixed map (tenant, name) → credential, filled by
/// whoever starts the engine (the local `isoflow run` reads them from its
/// configuration or environment).
#[derive(Debug, Clone, Default)]
pub struct StaticCredentials(pub HashMap<(String, String), Credential>);

impl StaticCredentials {
    pub fn insert(&mut self, tenant: &str, name: &str, credential: Credential) {
        self.0
            .insert((tenant.to_owned(), name.to_owned()), credential);
    }
}

impl Credentials for StaticCredentials {
    fn credential<'a>(
        &'a self,
        tenant: &'a str,
        _run_id: &'a str,
        name: &'a str,
    ) -> CredentialFuture<'a> {
        let found = self.0.get(&(tenant.to_owned(), name.to_owned())).cloned();
        Box::pin(std::future::ready(Ok(found)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin() -> Origin {
        "https://erp.example.com".parse().expect("an origin")
    }

    #[test]
    fn each_kind_goes_where_it_belongs_and_every_wire_form_is_scrubbed() {
        let mut request = http::Request::get("https://erp.example.com/orders");
        Credential::of(
            CredentialKind::Basic {
                username: "svc".into(),
                password: Secret::new("pa55"),
            },
            [origin()],
        )
        .apply(&mut request);
        assert_eq!(
            request.headers,
            vec![("Authorization".to_owned(), "Basic c3ZjOnBhNTU=".to_owned())]
        );
        let forms: Vec<&str> = request.secrets.iter().map(Secret::expose).collect();
        assert_eq!(forms, ["pa55", "c3ZjOnBhNTU="]);

        // Base64 holds '/' and '+': a JSON body may escape them.
        let slashed = Credential::of(
            CredentialKind::Bearer {
                token: Secret::new("ab/cd+ef"),
            },
            [origin()],
        );
        let forms: Vec<String> = slashed
            .wire_forms()
            .iter()
            .map(|s| s.expose().to_owned())
            .collect();
        assert_eq!(forms, ["ab/cd+ef", "ab\\/cd+ef"]);

        let mut request = http::Request::get("https://erp.example.com/orders");
        Credential::of(
            CredentialKind::Query {
                param: "api_key".into(),
                value: Secret::new("a b&c"),
            },
            [origin()],
        )
        .apply(&mut request);
        assert_eq!(
            request.query,
            vec![("api_key".to_owned(), "a b&c".to_owned())]
        );
        let forms: Vec<&str> = request.secrets.iter().map(Secret::expose).collect();
        assert_eq!(forms, ["a b&c", "a%20b%26c", "a+b%26c"]);

        let mut request = http::Request::get("https://erp.example.com/orders");
        Credential::of(
            CredentialKind::Header {
                header: "X-Api-Key".into(),
                value: Secret::new("k3y"),
            },
            [origin()],
        )
        .apply(&mut request);
        assert_eq!(
            request.headers,
            vec![("X-Api-Key".to_owned(), "k3y".to_owned())]
        );
    }

    #[test]
    fn unsendable_credentials_are_refused_with_the_reason() {
        let check = |kind: CredentialKind| kind.check().expect_err("refused");
        assert_eq!(
            check(CredentialKind::Bearer {
                token: Secret::new("")
            }),
            "the secret is empty"
        );
        assert_eq!(
            check(CredentialKind::Bearer {
                token: Secret::new("a\r\nX-Evil: 1")
            }),
            "the secret holds a control character or a line break"
        );
        assert_eq!(
            check(CredentialKind::Header {
                header: "Host".into(),
                value: Secret::new("x")
            }),
            "header \"Host\" cannot carry a credential: the engine or a front end reads it"
        );
        assert!(
            check(CredentialKind::Basic {
                username: "a:b".into(),
                password: Secret::new("x")
            })
            .contains("':'")
        );
        assert!(
            CredentialKind::Header {
                header: "Authorization".into(),
                value: Secret::new("Token abc")
            }
            .check()
            .is_ok()
        );
    }
}
