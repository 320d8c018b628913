//! Bearer tokens: a public API call runs as the tenant its token names; a
//! worker's call must carry the cluster token and, on a listener with TLS,
//! come over a connection with a client certificate (signed by
//! `tls.client_ca`, which the TLS layer already checked). Which worker the
//! certificate names is checked against its Hello in `cluster.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

/// The tenant a call runs as, put in the request's extensions.
#[derive(Debug, Clone)]
pub struct Tenant(pub String);

/// Compares in time independent of where the inputs differ.
pub(crate) fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn bearer<T>(request: &Request<T>) -> Option<&[u8]> {
    let value = request.metadata().get("authorization")?.as_bytes();
    value.strip_prefix(b"Bearer ")
}

/// The public API's tokens. With none configured (an `all` node for one
/// user), every call is tenant `local`.
#[derive(Clone, Default)]
pub struct ApiAuth {
    tokens: Arc<HashMap<Vec<u8>, String>>,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("tokens", &self.tokens.len())
            .finish()
    }
}

impl ApiAuth {
    pub fn new(tokens: impl IntoIterator<Item = (String, String)>) -> Self {
        ApiAuth {
            tokens: Arc::new(
                tokens
                    .into_iter()
                    .map(|(tenant, token)| (token.into_bytes(), tenant))
                    .collect(),
            ),
        }
    }
}

impl Interceptor for ApiAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if self.tokens.is_empty() {
            request.extensions_mut().insert(Tenant("local".to_owned()));
            return Ok(request);
        }
        let Some(presented) = bearer(&request) else {
            return Err(Status::unauthenticated(
                "the call carries no token: send `authorization: Bearer <token>`",
            ));
        };
        // Every token is compared, so the time taken says nothing of which
        // one came close.
        let mut tenant = None;
        for (token, name) in self.tokens.iter() {
            if same(token, presented) {
                tenant = Some(name.clone());
            }
        }
        match tenant {
            Some(tenant) => {
                request.extensions_mut().insert(Tenant(tenant));
                Ok(request)
            }
            None => Err(Status::unauthenticated("the token is not valid")),
        }
    }
}

/// The cluster token (and, with TLS, a client certificate), for the
/// workers' API.
#[derive(Clone)]
pub struct ClusterAuth {
    token: Arc<Vec<u8>>,
    require_certificate: bool,
}

impl std::fmt::Debug for ClusterAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClusterAuth")
    }
}

impl ClusterAuth {
    /// `require_certificate`: the listener uses TLS, so a worker must have
    /// presented a client certificate.
    pub fn new(token: &str, require_certificate: bool) -> Self {
        ClusterAuth {
            token: Arc::new(token.as_bytes().to_vec()),
            require_certificate,
        }
    }
}

impl Interceptor for ClusterAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        if self.require_certificate && request.peer_certs().is_none_or(|certs| certs.is_empty()) {
            return Err(Status::unauthenticated(
                "a worker must present a client certificate signed by the cluster's CA \
                 (the coordinator's tls.client_ca)",
            ));
        }
        match bearer(&request) {
            Some(presented) if same(&self.token, presented) => Ok(request),
            Some(_) => Err(Status::unauthenticated("the cluster token is not valid")),
            None => Err(Status::unauthenticated("the call carries no cluster token")),
        }
    }
}

/// Adds a bearer token to outgoing calls.
#[derive(Clone)]
pub struct AddToken(pub tonic::metadata::MetadataValue<tonic::metadata::Ascii>);

impl std::fmt::Debug for AddToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddToken")
    }
}

impl AddToken {
    pub fn new(token: &str) -> anyhow::Result<Self> {
        Ok(AddToken(format!("Bearer {token}").parse().map_err(
            |_| anyhow::anyhow!("the token holds characters a header cannot carry"),
        )?))
    }
}

impl Interceptor for AddToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        request
            .metadata_mut()
            .insert("authorization", self.0.clone());
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_tenant_and_nothing_else_passes() {
        let mut auth = ApiAuth::new([
            ("acme".to_owned(), "acme-token-0123456789".to_owned()),
            ("globex".to_owned(), "globex-token-012345678".to_owned()),
        ]);
        let mut request = Request::new(());
        request.metadata_mut().insert(
            "authorization",
            "Bearer globex-token-012345678".parse().expect("ascii"),
        );
        let passed = auth.call(request).expect("valid");
        assert_eq!(
            passed.extensions().get::<Tenant>().map(|t| t.0.as_str()),
            Some("globex")
        );

        let mut wrong = Request::new(());
        wrong.metadata_mut().insert(
            "authorization",
            "Bearer acme-token-0123456788".parse().expect("ascii"),
        );
        assert_eq!(
            auth.call(wrong).expect_err("wrong").code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            auth.call(Request::new(())).expect_err("none").code(),
            tonic::Code::Unauthenticated
        );
    }
}
