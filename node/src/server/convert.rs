//! Between the engine's records and the API's messages.

use isoflow_engine::action::origin::Origin;
use isoflow_engine::credential::oauth2::{ClientAuth, Grant, OAuth2Setup};
use isoflow_engine::credential::vault::CredentialInfo;
use isoflow_engine::credential::{Credential, CredentialKind, Secret};
use isoflow_engine::store::{LogRecord, RunRecord, RunStatus, StepRecord, StepStatus};
use isoflow_proto::cluster::v1 as wire;
use isoflow_proto::time::{from_ms, to_ms};
use isoflow_proto::v1;

pub fn run_status(status: RunStatus) -> v1::RunStatus {
    match status {
        RunStatus::Pending => v1::RunStatus::Pending,
        RunStatus::Running => v1::RunStatus::Running,
        RunStatus::Succeeded => v1::RunStatus::Succeeded,
        RunStatus::Failed => v1::RunStatus::Failed,
        RunStatus::Cancelled => v1::RunStatus::Cancelled,
    }
}

pub fn run_status_from(status: i32) -> Option<RunStatus> {
    Some(match v1::RunStatus::try_from(status).ok()? {
        v1::RunStatus::Pending => RunStatus::Pending,
        v1::RunStatus::Running => RunStatus::Running,
        v1::RunStatus::Succeeded => RunStatus::Succeeded,
        v1::RunStatus::Failed => RunStatus::Failed,
        v1::RunStatus::Cancelled => RunStatus::Cancelled,
        v1::RunStatus::Unspecified => return None,
    })
}

pub fn run(record: &RunRecord, steps: &[StepRecord]) -> v1::Run {
    v1::Run {
        run_id: record.run_id.clone(),
        tenant: record.tenant.clone(),
        integration: record.integration.clone(),
        version: record.version,
        status: run_status(record.status) as i32,
        create_time: from_ms(record.created_at_ms),
        update_time: from_ms(record.updated_at_ms),
        error: record.error.clone().unwrap_or_default(),
        steps: steps.iter().map(step).collect(),
        trigger: record
            .trigger
            .as_ref()
            .map(ToString::to_string)
            .unwrap_or_default(),
        rerun_of: record.rerun_of.clone().unwrap_or_default(),
        from_step: record.from_step.clone().unwrap_or_default(),
        from_version: record.from_version.unwrap_or_default(),
    }
}

pub fn run_from(run: &v1::Run) -> Option<RunRecord> {
    Some(RunRecord {
        tenant: run.tenant.clone(),
        run_id: run.run_id.clone(),
        integration: run.integration.clone(),
        version: run.version,
        status: run_status_from(run.status)?,
        created_at_ms: to_ms(run.create_time.as_ref()),
        updated_at_ms: to_ms(run.update_time.as_ref()),
        error: (!run.error.is_empty()).then(|| run.error.clone()),
        // A trigger this version does not know (a newer node's) reads as
        // none rather than making the run unreadable.
        trigger: run.trigger.parse().ok(),
        rerun_of: (!run.rerun_of.is_empty()).then(|| run.rerun_of.clone()),
        from_step: (!run.from_step.is_empty()).then(|| run.from_step.clone()),
        from_version: (run.from_version != 0).then_some(run.from_version),
        // Not in the API's message: a worker gets the run's trace with its
        // assignment, and the coordinator keeps what it stored.
        traceparent: None,
        trace_caller: None,
    })
}

pub fn step(record: &StepRecord) -> v1::Step {
    v1::Step {
        step_key: record.step_key.clone(),
        status: match record.status {
            StepStatus::Succeeded => v1::StepStatus::Succeeded,
            StepStatus::Failed => v1::StepStatus::Failed,
            StepStatus::Skipped => v1::StepStatus::Skipped,
        } as i32,
        attempts: record.attempts,
        start_time: from_ms(record.started_at_ms),
        end_time: from_ms(record.finished_at_ms),
        output_bytes: record.output_bytes,
        error: record.error.clone().unwrap_or_default(),
        node: record.node.clone().unwrap_or_default(),
    }
}

pub fn step_from(step: &v1::Step) -> Option<StepRecord> {
    Some(StepRecord {
        step_key: step.step_key.clone(),
        status: match v1::StepStatus::try_from(step.status).ok()? {
            v1::StepStatus::Succeeded => StepStatus::Succeeded,
            v1::StepStatus::Failed => StepStatus::Failed,
            v1::StepStatus::Skipped => StepStatus::Skipped,
            v1::StepStatus::Unspecified => return None,
        },
        attempts: step.attempts,
        started_at_ms: to_ms(step.start_time.as_ref()),
        finished_at_ms: to_ms(step.end_time.as_ref()),
        output_bytes: step.output_bytes,
        error: (!step.error.is_empty()).then(|| step.error.clone()),
        node: None,
    })
}

pub fn log(record: &LogRecord) -> v1::LogLine {
    v1::LogLine {
        step_key: record.step_key.clone(),
        attempt: record.attempt,
        level: log_level(&record.level) as i32,
        message: record.message.clone(),
        time: from_ms(record.time_ms),
    }
}

/// The engine writes a line's level as `debug`, `info`, `warn` or `error`.
fn log_level(level: &str) -> v1::LogLevel {
    match level {
        "debug" => v1::LogLevel::Debug,
        "info" => v1::LogLevel::Info,
        "warn" => v1::LogLevel::Warn,
        "error" => v1::LogLevel::Error,
        _ => v1::LogLevel::Unspecified,
    }
}

pub fn log_from(line: &v1::LogLine) -> LogRecord {
    LogRecord {
        step_key: line.step_key.clone(),
        attempt: line.attempt,
        level: match line.level() {
            v1::LogLevel::Debug => "debug",
            v1::LogLevel::Info | v1::LogLevel::Unspecified => "info",
            v1::LogLevel::Warn => "warn",
            v1::LogLevel::Error => "error",
        }
        .to_owned(),
        message: line.message.clone(),
        time_ms: to_ms(line.time.as_ref()),
    }
}

/// A credential's kind as `SetCredential` gives it; `None` for OAuth2,
/// which is set up with [`oauth2_setup`].
pub fn credential_kind(kind: v1::set_credential_request::Kind) -> Option<CredentialKind> {
    use v1::set_credential_request::Kind;
    Some(match kind {
        Kind::Bearer(b) => CredentialKind::Bearer {
            token: Secret::new(b.token),
        },
        Kind::Basic(b) => CredentialKind::Basic {
            username: b.username,
            password: Secret::new(b.password),
        },
        Kind::Header(h) => CredentialKind::Header {
            header: h.header,
            value: Secret::new(h.value),
        },
        Kind::Query(q) => CredentialKind::Query {
            param: q.param,
            value: Secret::new(q.value),
        },
        Kind::Oauth2(_) => return None,
    })
}

/// An OAuth2 credential as `SetCredential` gives it.
pub fn oauth2_setup(message: v1::OAuth2Credential) -> Result<OAuth2Setup, String> {
    let grant = match message.grant() {
        v1::Oauth2Grant::ClientCredentials => Grant::ClientCredentials,
        v1::Oauth2Grant::RefreshToken => Grant::RefreshToken,
        v1::Oauth2Grant::AuthorizationCode => Grant::AuthorizationCode,
        v1::Oauth2Grant::Unspecified => {
            return Err(
                "an OAuth2 credential names its grant: client_credentials, refresh_token or authorization_code"
                    .into(),
            );
        }
    };
    let given = |text: String| (!text.is_empty()).then_some(text);
    Ok(OAuth2Setup {
        token_url: message.token_url,
        client_id: message.client_id,
        client_secret: Secret::new(message.client_secret),
        scopes: message.scopes,
        client_auth: if message.client_secret_in_body {
            ClientAuth::Post
        } else {
            ClientAuth::Basic
        },
        grant,
        refresh_token: given(message.refresh_token).map(Secret::new),
        authorize_url: given(message.authorize_url),
    })
}

fn grant_message(grant: Grant) -> v1::Oauth2Grant {
    match grant {
        Grant::ClientCredentials => v1::Oauth2Grant::ClientCredentials,
        Grant::RefreshToken => v1::Oauth2Grant::RefreshToken,
        Grant::AuthorizationCode => v1::Oauth2Grant::AuthorizationCode,
    }
}

/// A credential as the API lists it; `callback_base` (the node's OAuth2
/// callback URL) makes an authorization code credential's redirect URI.
pub fn credential_info(info: &CredentialInfo, callback_base: Option<&str>) -> v1::CredentialInfo {
    v1::CredentialInfo {
        name: info.name.clone(),
        kind: info.kind.clone(),
        detail: info.detail.clone().unwrap_or_default(),
        origins: info.origins.clone(),
        version: info.version,
        key_id: info.key_id.clone(),
        create_time: from_ms(info.created_ms),
        update_time: from_ms(info.updated_ms),
        oauth2: info.oauth2.as_ref().map(|state| v1::OAuth2Status {
            grant: grant_message(state.grant).into(),
            token_url: state.token_url.clone(),
            client_id: state.client_id.clone(),
            scopes: state.scopes.clone(),
            expire_time: state.expires_ms.and_then(from_ms),
            renewals: state.renewals,
            renew_time: state.renewed_ms.and_then(from_ms),
            unhealthy: state
                .unhealthy
                .as_ref()
                .map(|u| u.reason.clone())
                .unwrap_or_default(),
            needs_attention: state.unhealthy.as_ref().is_some_and(|u| u.permanent),
            awaiting_authorization: state.pending.is_some(),
            redirect_uri: callback_base
                .and_then(|base| state.redirect_uri(base))
                .unwrap_or_default(),
        }),
    }
}

/// A credential for a worker's one request.
pub fn worker_credential(credential: &Credential) -> wire::WorkerCredential {
    use wire::worker_credential::Kind;
    let kind = match &credential.kind {
        CredentialKind::Bearer { token } => Kind::Bearer(v1::BearerCredential {
            token: token.expose().to_owned(),
        }),
        CredentialKind::Basic { username, password } => Kind::Basic(v1::BasicCredential {
            username: username.clone(),
            password: password.expose().to_owned(),
        }),
        CredentialKind::Header { header, value } => Kind::Header(v1::HeaderCredential {
            header: header.clone(),
            value: value.expose().to_owned(),
        }),
        CredentialKind::Query { param, value } => Kind::Query(v1::QueryCredential {
            param: param.clone(),
            value: value.expose().to_owned(),
        }),
    };
    wire::WorkerCredential {
        kind: Some(kind),
        origins: credential.origins.iter().map(ToString::to_string).collect(),
        renewable: credential.renewable,
    }
}

/// What the coordinator sent, back into a credential.
pub fn credential_from_worker(message: wire::WorkerCredential) -> Result<Credential, String> {
    use wire::worker_credential::Kind;
    let kind = match message.kind.ok_or("the credential has no kind")? {
        Kind::Bearer(b) => v1::set_credential_request::Kind::Bearer(b),
        Kind::Basic(b) => v1::set_credential_request::Kind::Basic(b),
        Kind::Header(h) => v1::set_credential_request::Kind::Header(h),
        Kind::Query(q) => v1::set_credential_request::Kind::Query(q),
    };
    let origins = message
        .origins
        .iter()
        .map(|o| o.parse::<Origin>())
        .collect::<Result<Vec<_>, _>>()?;
    let kind = credential_kind(kind).ok_or("the credential has no kind")?;
    let mut credential = Credential::of(kind, origins);
    credential.renewable = message.renewable;
    Ok(credential)
}
