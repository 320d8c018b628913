//! The admin API (`isoflow.v1.Admin`): tenants, their API tokens and
//! quotas, called with the node's admin token.

use isoflow_proto::v1;
use isoflow_proto::v1::admin_client::AdminClient as Generated;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::auth::Bearer;
use crate::retry::{Retry, retried};
use crate::{ConnectOptions, Result, open_channel};

/// A connection to a node's admin API. `ConnectOptions::token` is the
/// admin token. Reads are retried on `UNAVAILABLE` as the
/// [`crate::Client`]'s are; changes are not.
#[derive(Clone)]
pub struct AdminClient {
    inner: Generated<InterceptedService<Channel, Bearer>>,
    retry: Retry,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient").finish_non_exhaustive()
    }
}

impl AdminClient {
    /// Connects as [`crate::Client::connect_with`] does.
    ///
    /// # Errors
    /// As [`crate::Client::connect_with`].
    pub async fn connect_with(server: &str, options: &ConnectOptions) -> Result<AdminClient> {
        let (channel, bearer, _) = open_channel(server, options).await?;
        Ok(AdminClient {
            inner: Generated::with_interceptor(channel, bearer),
            retry: options.retry,
        })
    }

    /// Creates a tenant with its quotas (unset ones take the node's
    /// defaults).
    ///
    /// # Errors
    /// `ALREADY_EXISTS`, or `INVALID_ARGUMENT` for a name that is not one.
    pub async fn create_tenant(&self, name: &str, quotas: v1::TenantQuotas) -> Result<v1::Tenant> {
        let request = v1::CreateTenantRequest {
            name: name.to_owned(),
            quotas: Some(quotas),
        };
        Ok(self
            .inner
            .clone()
            .create_tenant(request)
            .await?
            .into_inner())
    }

    /// Every tenant, created or named by the node's configuration.
    ///
    /// # Errors
    /// A status from the server.
    pub async fn tenants(&self) -> Result<Vec<v1::Tenant>> {
        crate::all_pages(async |page_token| {
            let page = retried!(self.list_tenants(v1::ListTenantsRequest {
                page_size: crate::PAGE,
                page_token,
            }))?;
            Ok((page.tenants, page.next_page_token))
        })
        .await
    }

    /// Disables (`true`) or enables a tenant.
    ///
    /// # Errors
    /// `NOT_FOUND` for a tenant never created.
    pub async fn set_disabled(&self, name: &str, disabled: bool) -> Result<v1::Tenant> {
        let request = v1::TenantName {
            name: name.to_owned(),
        };
        let mut inner = self.inner.clone();
        let tenant = if disabled {
            inner.disable_tenant(request).await?
        } else {
            inner.enable_tenant(request).await?
        };
        Ok(tenant.into_inner())
    }

    /// Replaces a tenant's quotas.
    ///
    /// # Errors
    /// `NOT_FOUND` for a tenant never created.
    pub async fn set_quotas(&self, name: &str, quotas: v1::TenantQuotas) -> Result<v1::Tenant> {
        let request = v1::SetTenantQuotasRequest {
            name: name.to_owned(),
            quotas: Some(quotas),
        };
        Ok(self
            .inner
            .clone()
            .set_tenant_quotas(request)
            .await?
            .into_inner())
    }

    /// A new token for the tenant: the only time it is shown.
    ///
    /// # Errors
    /// `NOT_FOUND` for a tenant never created.
    pub async fn issue_token(&self, tenant: &str, label: &str) -> Result<v1::IssuedToken> {
        let request = v1::IssueTokenRequest {
            tenant: tenant.to_owned(),
            label: label.to_owned(),
        };
        Ok(self.inner.clone().issue_token(request).await?.into_inner())
    }

    /// Issued tokens (of one tenant, or all), without secrets.
    ///
    /// # Errors
    /// A status from the server.
    pub async fn tokens(&self, tenant: Option<&str>) -> Result<Vec<v1::TokenInfo>> {
        crate::all_pages(async |page_token| {
            let page = retried!(self.list_tokens(v1::ListTokensRequest {
                tenant: tenant.unwrap_or_default().to_owned(),
                page_size: crate::PAGE,
                page_token,
            }))?;
            Ok((page.tokens, page.next_page_token))
        })
        .await
    }

    /// Revokes a token by its id.
    ///
    /// # Errors
    /// `NOT_FOUND` when no token has that id.
    pub async fn revoke_token(&self, token_id: &str) -> Result<v1::TokenInfo> {
        let request = v1::RevokeTokenRequest {
            token_id: token_id.to_owned(),
        };
        Ok(self.inner.clone().revoke_token(request).await?.into_inner())
    }
}
