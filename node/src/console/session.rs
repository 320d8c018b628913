//! Console sessions: a token exchanged once for a random session id in an
//! `HttpOnly; SameSite=Strict` cookie, and a CSRF token every action must
//! carry.
//!
//! Sessions live in the node's memory, found by the SHA-256 of their id
//! (the id itself is kept nowhere), and end after [`SESSION_LIFETIME`], at
//! sign-out, or when the node restarts. A session keeps the token it was
//! opened with and asks the API's authentication again on every request,
//! so a revoked token or a disabled tenant ends its sessions at once.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, header};
use ring::digest::{SHA256, digest};
use ring::rand::{SecureRandom, SystemRandom};

use crate::server::auth::same;
use crate::server::coordinator::lock;

/// The session cookie's name.
pub const COOKIE: &str = "isoflow_session";
/// How long a session lasts from sign-in.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// The most sessions a node keeps; the oldest goes first past it.
pub const MAX_SESSIONS: usize = 10_000;
/// The most sessions one tenant (or the admin) holds at once.
pub const SESSIONS_PER_PRINCIPAL: usize = 32;

/// Who a session acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Who {
    /// A tenant, with the API token it signed in with (empty on an open
    /// node, where every caller is tenant `local`).
    Tenant { tenant: String, token: String },
    /// The node's admin: the cluster page, no tenant's runs.
    Admin { token: String },
}

impl Who {
    /// Who this is, whatever token it used: a tenant's name, or none for
    /// the admin.
    pub fn principal(&self) -> Option<&str> {
        match self {
            Who::Tenant { tenant, .. } => Some(tenant),
            Who::Admin { .. } => None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub who: Who,
    /// The token every action must carry (a form's `csrf` field).
    pub csrf: String,
    opened: Instant,
}

impl Session {
    /// Whether `presented` is this session's CSRF token.
    pub fn csrf_ok(&self, presented: &str) -> bool {
        same(self.csrf.as_bytes(), presented.as_bytes())
    }
}

#[derive(Debug, Default)]
pub struct Sessions {
    by_hash: Mutex<HashMap<Vec<u8>, Session>>,
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system's random source works");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn hash(id: &str) -> Vec<u8> {
    digest(&SHA256, id.as_bytes()).as_ref().to_vec()
}

impl Sessions {
    /// Opens a session for `who`: its id, for the cookie. A principal (a
    /// tenant, the admin) holds at most [`SESSIONS_PER_PRINCIPAL`]: its
    /// oldest ends first, so signing in again and again ends no one
    /// else's session.
    pub fn open(&self, who: Who) -> String {
        let id = random_hex();
        let now = Instant::now();
        let mut sessions = lock(&self.by_hash);
        sessions.retain(|_, s| now.duration_since(s.opened) < SESSION_LIFETIME);
        let principal = who.principal();
        let oldest_of = |sessions: &HashMap<Vec<u8>, Session>, same: bool| {
            sessions
                .iter()
                .filter(|(_, s)| !same || s.who.principal() == principal)
                .min_by_key(|(_, s)| s.opened)
                .map(|(k, _)| k.clone())
        };
        let own = sessions
            .values()
            .filter(|s| s.who.principal() == principal)
            .count();
        if own >= SESSIONS_PER_PRINCIPAL
            && let Some(oldest) = oldest_of(&sessions, true)
        {
            sessions.remove(&oldest);
        } else if sessions.len() >= MAX_SESSIONS
            && let Some(oldest) = oldest_of(&sessions, false)
        {
            sessions.remove(&oldest);
        }
        sessions.insert(
            hash(&id),
            Session {
                who,
                csrf: random_hex(),
                opened: now,
            },
        );
        id
    }

    /// The live session the request's cookie names.
    pub fn of(&self, headers: &HeaderMap) -> Option<Session> {
        let id = cookie(headers, COOKIE)?;
        let key = hash(&id);
        let mut sessions = lock(&self.by_hash);
        match sessions.get(&key) {
            Some(s) if s.opened.elapsed() < SESSION_LIFETIME => Some(s.clone()),
            Some(_) => {
                sessions.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Ends the session the request's cookie names.
    pub fn close(&self, headers: &HeaderMap) {
        if let Some(id) = cookie(headers, COOKIE) {
            lock(&self.by_hash).remove(&hash(&id));
        }
    }
}

/// The value of cookie `name` in the request's `Cookie` headers; none when
/// it is there twice (a cookie planted beside the real one, e.g. by a
/// sibling host, is not taken for it).
pub fn cookie(headers: &HeaderMap, name: &str) -> Option<String> {
    let mut found = headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .filter(|(k, _)| *k == name)
        .map(|(_, v)| v.to_owned());
    let first = found.next()?;
    found.next().is_none().then_some(first)
}

/// The `Set-Cookie` value that carries session `id` (`Secure` when the
/// console is reached over HTTPS).
pub fn set_cookie(id: &str, secure: bool) -> String {
    format!(
        "{COOKIE}={id}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_LIFETIME.as_secs(),
        if secure { "; Secure" } else { "" }
    )
}

/// The `Set-Cookie` value that removes the session cookie.
pub fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// The origin (`scheme://host[:port]`, lowercase) of a URL, or `None` for
/// anything that is not an http(s) URL (`null` among them).
pub fn origin_of(url: &str) -> Option<String> {
    let lower = url.to_ascii_lowercase();
    let (scheme, rest) = lower.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

/// Whether a state-changing request comes from the console's own pages:
/// its `Origin` (or, without one, its `Referer`), when the browser sends
/// one, is the console's public origin (`public`, from `http.public_url`,
/// which a proxy in front keeps even when it rewrites `Host`) or names
/// the host the request was sent to. Browsers send `Origin` on every
/// cross-site POST; a request that carries neither is left to the CSRF
/// token.
pub fn same_origin(headers: &HeaderMap, public: Option<&str>) -> bool {
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .map(|v| v.to_str().ok());
    let source = match source {
        None => return true,
        Some(None) => return false,
        Some(Some(source)) => source,
    };
    let Some(origin) = origin_of(source) else {
        return false;
    };
    if public.is_some_and(|public| public == origin) {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .map(str::to_ascii_lowercase);
    host.is_some_and(|host| origin.split_once("://").is_some_and(|(_, a)| a == host))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn headers(pairs: &[(header::HeaderName, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(k.clone(), HeaderValue::from_str(v).expect("a header value"));
        }
        h
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_ends_at_close() {
        let sessions = Sessions::default();
        let id = sessions.open(Who::Tenant {
            tenant: "acme".into(),
            token: "t".into(),
        });
        let request = headers(&[(header::COOKIE, &format!("theme=dark; {COOKIE}={id}"))]);
        let session = sessions.of(&request).expect("the session");
        assert!(session.csrf_ok(&session.csrf.clone()));
        assert!(!session.csrf_ok(""));
        assert!(!session.csrf_ok(&format!("{}0", session.csrf)));
        let wrong = headers(&[(header::COOKIE, &format!("{COOKIE}={id}0"))]);
        assert!(sessions.of(&wrong).is_none());
        sessions.close(&request);
        assert!(sessions.of(&request).is_none());
    }

    #[test]
    fn a_tenant_signing_in_again_and_again_ends_only_its_own_sessions() {
        let sessions = Sessions::default();
        let cookie_of = |id: &str| headers(&[(header::COOKIE, &format!("{COOKIE}={id}"))]);
        let acme = sessions.open(Who::Tenant {
            tenant: "acme".into(),
            token: "a".into(),
        });
        let admin = sessions.open(Who::Admin { token: "x".into() });
        let first_globex = sessions.open(Who::Tenant {
            tenant: "globex".into(),
            token: "g".into(),
        });
        for _ in 0..SESSIONS_PER_PRINCIPAL * 3 {
            sessions.open(Who::Tenant {
                tenant: "globex".into(),
                token: "g".into(),
            });
        }
        assert!(
            sessions.of(&cookie_of(&acme)).is_some(),
            "acme's session ended"
        );
        assert!(
            sessions.of(&cookie_of(&admin)).is_some(),
            "the admin's session ended"
        );
        assert!(sessions.of(&cookie_of(&first_globex)).is_none());
        assert_eq!(lock(&sessions.by_hash).len(), SESSIONS_PER_PRINCIPAL + 2);
    }

    #[test]
    fn a_cookie_sent_twice_names_no_session() {
        let sessions = Sessions::default();
        let id = sessions.open(Who::Admin { token: "a".into() });
        let twice = headers(&[(header::COOKIE, &format!("{COOKIE}={id}; {COOKIE}=planted"))]);
        assert!(sessions.of(&twice).is_none());
        let split = headers(&[
            (header::COOKIE, &format!("{COOKIE}=planted")),
            (header::COOKIE, &format!("{COOKIE}={id}")),
        ]);
        assert!(sessions.of(&split).is_none());
    }

    #[test]
    fn two_sessions_have_different_ids_and_csrf_tokens() {
        let sessions = Sessions::default();
        let who = Who::Admin { token: "a".into() };
        let (a, b) = (sessions.open(who.clone()), sessions.open(who));
        assert_ne!(a, b);
        assert_eq!(a.len(), 64);
        let csrf = |id: &str| {
            sessions
                .of(&headers(&[(header::COOKIE, &format!("{COOKIE}={id}"))]))
                .expect("open")
                .csrf
        };
        assert_ne!(csrf(&a), csrf(&b));
    }

    #[test]
    fn a_post_from_another_origin_is_told_apart() {
        let host = (header::HOST, "127.0.0.1:7701");
        let same = |pairs: &[(header::HeaderName, &str)]| same_origin(&headers(pairs), None);
        assert!(same(std::slice::from_ref(&host)));
        assert!(same(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:7701")
        ]));
        assert!(!same(&[
            host.clone(),
            (header::ORIGIN, "http://evil.example")
        ]));
        assert!(!same(&[
            host.clone(),
            (header::ORIGIN, "http://127.0.0.1:7701.evil.example")
        ]));
        assert!(!same(&[host.clone(), (header::ORIGIN, "null")]));
        assert!(same(&[
            host.clone(),
            (header::REFERER, "http://127.0.0.1:7701/console/runs")
        ]));
        assert!(!same(&[(header::ORIGIN, "http://127.0.0.1:7701")]));
    }

    #[test]
    fn behind_a_proxy_the_public_origin_is_the_consoles() {
        let public = origin_of("https://Isoflow.example.com/");
        assert_eq!(public.as_deref(), Some("https://isoflow.example.com"));
        let public = public.as_deref();
        // The proxy rewrote Host; the browser's Origin is the public one.
        let proxied = headers(&[
            (header::HOST, "isoflow-coordinator:7701"),
            (header::ORIGIN, "https://isoflow.example.com"),
        ]);
        assert!(same_origin(&proxied, public));
        assert!(!same_origin(&proxied, None));
        // Another site, even on the public host's scheme or port, is not.
        for other in [
            "http://isoflow.example.com",
            "https://isoflow.example.com:8443",
            "https://isoflow.example.com.evil.example",
            "null",
        ] {
            let forged = headers(&[
                (header::HOST, "isoflow-coordinator:7701"),
                (header::ORIGIN, other),
            ]);
            assert!(!same_origin(&forged, public), "{other}");
        }
        assert_eq!(origin_of("javascript:alert(1)"), None);
        assert_eq!(
            origin_of("https://a.example/x?y#z"),
            Some("https://a.example".to_owned())
        );
    }
}
