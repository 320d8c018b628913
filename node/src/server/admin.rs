//! Tenant administration (`isoflow.v1.Admin`), served beside the public API
//! by the coordinator (and an `all` node) to callers with the admin token
//! (`auth.rs`, `AdminAuth`). The tenants themselves are in `tenants.rs`;
//! this turns requests into its calls and its errors into statuses.

use std::collections::BTreeSet;
use std::sync::Arc;

use isoflow_engine::store::{TenantQuotas, TenantRecord, TokenRecord};
use isoflow_proto::prost_types;
use isoflow_proto::time::from_ms;
use isoflow_proto::v1;
use isoflow_proto::v1::admin_server::Admin;
use tonic::{Request, Response, Status};

use super::coordinator::Coordinator;
use super::page;
use super::tenants::TenantError;

#[derive(Debug, Clone)]
pub struct AdminService {
    pub coordinator: Arc<Coordinator>,
    /// Tenants the configuration's `auth.tokens` name.
    pub config_tenants: BTreeSet<String>,
}

fn status(error: TenantError) -> Status {
    match error {
        TenantError::Invalid(why) => Status::invalid_argument(why),
        TenantError::NotFound(why) => Status::not_found(why),
        TenantError::AlreadyExists(why) => Status::already_exists(why),
        other => {
            tracing::error!("{other}");
            Status::internal(other.to_string())
        }
    }
}

/// Runs a tenants call off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, TenantError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(status)
}

fn quotas_from(quotas: Option<v1::TenantQuotas>) -> Result<TenantQuotas, Status> {
    let quotas = quotas.unwrap_or_default();
    let retention_seconds = match quotas.retention {
        None => None,
        Some(d) if d.seconds < 0 || d.nanos != 0 => {
            return Err(Status::invalid_argument(
                "quotas.retention is negative or not whole seconds",
            ));
        }
        Some(d) => Some(d.seconds.unsigned_abs()),
    };
    Ok(TenantQuotas {
        runs_in_flight: quotas.runs_in_flight,
        max_payload_bytes: quotas.max_payload_bytes,
        webhook_runs_per_minute: quotas.webhook_runs_per_minute,
        retention_seconds,
    })
}

fn tenant_message(record: &TenantRecord) -> v1::Tenant {
    let quotas = &record.quotas;
    v1::Tenant {
        name: record.name.clone(),
        disabled: record.disabled,
        create_time: from_ms(record.created_at_ms),
        quotas: Some(v1::TenantQuotas {
            runs_in_flight: quotas.runs_in_flight,
            max_payload_bytes: quotas.max_payload_bytes,
            webhook_runs_per_minute: quotas.webhook_runs_per_minute,
            retention: quotas
                .retention_seconds
                .map(|seconds| prost_types::Duration {
                    seconds: i64::try_from(seconds).unwrap_or(i64::MAX),
                    nanos: 0,
                }),
        }),
        from_config: false,
    }
}

fn token_message(record: &TokenRecord) -> v1::TokenInfo {
    v1::TokenInfo {
        token_id: record.token_id.clone(),
        tenant: record.tenant.clone(),
        label: record.label.clone(),
        create_time: from_ms(record.created_at_ms),
    }
}

impl AdminService {
    /// Sets a tenant's disabled flag.
    async fn set_disabled(&self, name: String, disabled: bool) -> Result<v1::Tenant, Status> {
        let tenants = self.coordinator.tenants.clone();
        let record = blocking(move || tenants.update(&name, |r| r.disabled = disabled)).await?;
        tracing::info!(tenant = %record.name, disabled, "tenant changed");
        Ok(tenant_message(&record))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_tenant(
        &self,
        request: Request<v1::CreateTenantRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let request = request.into_inner();
        let quotas = quotas_from(request.quotas)?;
        let tenants = self.coordinator.tenants.clone();
        let name = request.name;
        let record = blocking(move || tenants.create(&name, quotas)).await?;
        self.coordinator
            .set_tenant_runs_in_flight(&record.name, record.quotas.runs_in_flight);
        tracing::info!(tenant = %record.name, "tenant created");
        Ok(Response::new(tenant_message(&record)))
    }

    async fn list_tenants(
        &self,
        request: Request<v1::ListTenantsRequest>,
    ) -> Result<Response<v1::ListTenantsResponse>, Status> {
        let mut tenants: Vec<v1::Tenant> = self
            .coordinator
            .tenants
            .records()
            .iter()
            .map(tenant_message)
            .collect();
        for name in &self.config_tenants {
            if !tenants.iter().any(|t| t.name == *name) {
                tenants.push(v1::Tenant {
                    name: name.clone(),
                    quotas: Some(v1::TenantQuotas::default()),
                    from_config: true,
                    ..v1::Tenant::default()
                });
            }
        }
        let request = request.into_inner();
        let (tenants, next_page_token) = page::cut(
            tenants,
            |t| t.name.clone(),
            request.page_size,
            &request.page_token,
            "ListTenants",
        )?;
        Ok(Response::new(v1::ListTenantsResponse {
            tenants,
            next_page_token,
        }))
    }

    async fn disable_tenant(
        &self,
        request: Request<v1::TenantName>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.set_disabled(name, true).await?))
    }

    async fn enable_tenant(
        &self,
        request: Request<v1::TenantName>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let name = request.into_inner().name;
        Ok(Response::new(self.set_disabled(name, false).await?))
    }

    async fn set_tenant_quotas(
        &self,
        request: Request<v1::SetTenantQuotasRequest>,
    ) -> Result<Response<v1::Tenant>, Status> {
        let request = request.into_inner();
        let quotas = quotas_from(request.quotas)?;
        let tenants = self.coordinator.tenants.clone();
        let name = request.name;
        let record = blocking(move || tenants.update(&name, |r| r.quotas = quotas)).await?;
        self.coordinator
            .set_tenant_runs_in_flight(&record.name, record.quotas.runs_in_flight);
        tracing::info!(tenant = %record.name, quotas = ?record.quotas, "tenant quotas set");
        Ok(Response::new(tenant_message(&record)))
    }

    async fn issue_token(
        &self,
        request: Request<v1::IssueTokenRequest>,
    ) -> Result<Response<v1::IssuedToken>, Status> {
        let request = request.into_inner();
        let tenants = self.coordinator.tenants.clone();
        let (token, record) =
            blocking(move || tenants.issue_token(&request.tenant, &request.label)).await?;
        tracing::info!(tenant = %record.tenant, token_id = %record.token_id, "token issued");
        Ok(Response::new(v1::IssuedToken {
            info: Some(token_message(&record)),
            token,
        }))
    }

    async fn list_tokens(
        &self,
        request: Request<v1::ListTokensRequest>,
    ) -> Result<Response<v1::ListTokensResponse>, Status> {
        let request = request.into_inner();
        let tenant = Some(request.tenant).filter(|t| !t.is_empty());
        let tenants = self.coordinator.tenants.clone();
        let records = blocking(move || tenants.tokens(tenant.as_deref())).await?;
        let (records, next_page_token) = page::cut(
            records,
            |r| r.token_id.clone(),
            request.page_size,
            &request.page_token,
            "ListTokens",
        )?;
        Ok(Response::new(v1::ListTokensResponse {
            tokens: records.iter().map(token_message).collect(),
            next_page_token,
        }))
    }

    async fn revoke_token(
        &self,
        request: Request<v1::RevokeTokenRequest>,
    ) -> Result<Response<v1::TokenInfo>, Status> {
        let token_id = request.into_inner().token_id;
        let tenants = self.coordinator.tenants.clone();
        let record = blocking(move || tenants.revoke_token(&token_id)).await?;
        tracing::info!(tenant = %record.tenant, token_id = %record.token_id, "token revoked");
        Ok(Response::new(token_message(&record)))
    }
}
