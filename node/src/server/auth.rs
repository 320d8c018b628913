//! Bearer tokens: a public API call runs as the tenant its token names (a
//! token from the configuration, or one issued through the admin API,
//! found by its SHA-256 hash), unless that tenant is disabled; an admin
//! call must carry the node's admin token; a worker's call must carry the cluster token and, on a listener with TLS,
//! come over a connection with a client certificate (signed by
//! `tls.client_ca`, which the TLS layer already checked). Which worker the
//! certificate names is checked against its Hello in `cluster.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use tonic::service::Interceptor;
use tonic::{Request, Status};

use super::tenants::Tenants;

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

/// The public API's tokens. With none configured and no admin token (an
/// `all` node for one user), every call is tenant `local`.
#[derive(Clone, Default)]
pub struct ApiAuth {
    tokens: Arc<HashMap<Vec<u8>, String>>,
    /// Issued tokens and which tenants are disabled.
    tenants: Option<Arc<Tenants>>,
    /// Whether callers need a token at all.
    closed: bool,
}

impl std::fmt::Debug for ApiAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiAuth")
            .field("tokens", &self.tokens.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl ApiAuth {
    pub fn new(tokens: impl IntoIterator<Item = (String, String)>) -> Self {
        let tokens: HashMap<Vec<u8>, String> = tokens
            .into_iter()
            .map(|(tenant, token)| (token.into_bytes(), tenant))
            .collect();
        ApiAuth {
            closed: !tokens.is_empty(),
            tokens: Arc::new(tokens),
            tenants: None,
        }
    }

    /// Also takes the tokens issued through the admin API and refuses
    /// disabled tenants. `admin`: an admin token is configured, so tokens
    /// may be issued and every caller needs one, even with no token in the
    /// configuration.
    pub fn with_tenants(mut self, tenants: Arc<Tenants>, admin: bool) -> Self {
        self.tenants = Some(tenants);
        self.closed |= admin;
        self
    }

    /// The tenant `presented` names, if it is a valid token (disabled
    /// tenants included).
    pub fn tenant_of(&self, presented: &[u8]) -> Option<String> {
        // Every configured token is compared, so the time taken says
        // nothing of which one came close. An issued token is found by its
        // hash, which says nothing of the token either.
        let mut tenant = None;
        for (token, name) in self.tokens.iter() {
            if same(token, presented) {
                tenant = Some(name.clone());
            }
        }
        tenant.or_else(|| self.tenants.as_ref()?.tenant_of_token(presented))
    }
}

impl ApiAuth {
    /// The tenant a caller presenting `presented` (a bearer token, if any)
    /// acts as: refused without a valid token when tokens are needed, and
    /// for a disabled tenant. The gRPC API and the console both ask here.
    pub fn authenticate(&self, presented: Option<&[u8]>) -> Result<String, Status> {
        let tenant = if self.closed {
            let Some(presented) = presented else {
                return Err(Status::unauthenticated(
                    "the call carries no token: send `authorization: Bearer <token>`",
                ));
            };
            self.tenant_of(presented)
                .ok_or_else(|| Status::unauthenticated("the token is not valid"))?
        } else {
            "local".to_owned()
        };
        if self
            .tenants
            .as_ref()
            .is_some_and(|tenants| tenants.is_disabled(&tenant))
        {
            return Err(Status::permission_denied(format!(
                "tenant {tenant:?} is disabled: its tokens are refused until an admin enables it"
            )));
        }
        Ok(tenant)
    }

    /// Whether every caller is tenant `local`, with no token (an `all`
    /// node for one user).
    pub fn is_open(&self) -> bool {
        !self.closed
    }
}

impl Interceptor for ApiAuth {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let tenant = self.authenticate(bearer(&request))?;
        request.extensions_mut().insert(Tenant(tenant));
        Ok(request)
    }
}

/// The admin token, for `isoflow.v1.Admin`. Without one configured every
/// admin call is refused.
#[derive(Clone)]
pub struct AdminAuth {
    token: Option<Arc<Vec<u8>>>,
    /// To tell a tenant's token (PERMISSION_DENIED) from a wrong one.
    api: ApiAuth,
}

impl std::fmt::Debug for AdminAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminAuth")
            .field("configured", &self.token.is_some())
            .finish()
    }
}

impl AdminAuth {
    pub fn new(token: Option<&str>, api: ApiAuth) -> Self {
        AdminAuth {
            token: token.map(|t| Arc::new(t.as_bytes().to_vec())),
            api,
        }
    }
}

impl AdminAuth {
    /// Whether `presented` is the node's admin token.
    pub fn is_admin(&self, presented: &[u8]) -> bool {
        self.token
            .as_ref()
            .is_some_and(|token| same(token, presented))
    }
}

impl Interceptor for AdminAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Err(Status::permission_denied(
                "this node has no admin token (auth.admin_token_file or ISOFLOW_ADMIN_TOKEN): \
                 admin calls are refused",
            ));
        };
        match bearer(&request) {
            Some(presented) if same(token, presented) => Ok(request),
            Some(presented) if self.api.tenant_of(presented).is_some() => {
                Err(Status::permission_denied(
                    "a tenant's token cannot call the admin API: use the node's admin token",
                ))
            }
            Some(_) => Err(Status::unauthenticated("the admin token is not valid")),
            None => Err(Status::unauthenticated(
                "the call carries no admin token: send `authorization: Bearer <admin token>`",
            )),
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

    fn with_token(token: &str) -> Request<()> {
        let mut request = Request::new(());
        request.metadata_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("ascii"),
        );
        request
    }

    #[test]
    fn issued_tokens_pass_disabled_tenants_do_not_and_only_the_admin_token_administers() {
        use isoflow_engine::store::{Store, StoreConfig, TenantQuotas};
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("store"));
        let tenants = Tenants::load(store, 1 << 20).expect("load");
        tenants
            .create("globex", TenantQuotas::default())
            .expect("created");
        let (issued, _) = tenants.issue_token("globex", "").expect("issued");
        let mut api = ApiAuth::new([("acme".to_owned(), "acme-token-0123456789".to_owned())])
            .with_tenants(tenants.clone(), true);
        let passed = api.call(with_token(&issued)).expect("issued token");
        assert_eq!(
            passed.extensions().get::<Tenant>().map(|t| t.0.as_str()),
            Some("globex")
        );
        api.call(with_token("acme-token-0123456789"))
            .expect("configured token");
        tenants
            .update("globex", |r| r.disabled = true)
            .expect("disabled");
        let refused = api.call(with_token(&issued)).expect_err("disabled");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);

        // With an admin token and no configured token, nobody is "local".
        let mut closed = ApiAuth::new([]).with_tenants(tenants.clone(), true);
        assert_eq!(
            closed.call(Request::new(())).expect_err("no token").code(),
            tonic::Code::Unauthenticated
        );

        let mut admin = AdminAuth::new(Some("admin-token-0123456789"), api.clone());
        admin
            .call(with_token("admin-token-0123456789"))
            .expect("the admin token");
        let code = |r: Result<Request<()>, Status>| r.expect_err("refused").code();
        assert_eq!(
            code(admin.call(with_token("acme-token-0123456789"))),
            tonic::Code::PermissionDenied
        );
        assert_eq!(
            code(admin.call(with_token("admin-token-0123456780"))),
            tonic::Code::Unauthenticated
        );
        let mut none = AdminAuth::new(None, api);
        assert_eq!(
            code(none.call(with_token("admin-token-0123456789"))),
            tonic::Code::PermissionDenied
        );
    }

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
