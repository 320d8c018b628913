//! The public API (`isoflow.v1.Isoflow`), served by the coordinator (and by
//! an `all` node). Every call runs as the tenant its token names.

use std::collections::HashSet;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use isoflow_engine::credential::Secret;
use isoflow_engine::credential::vault::{Vault, VaultError};
use isoflow_engine::model;
use isoflow_engine::run::RerunError;
use isoflow_engine::run::inline_code;
use isoflow_engine::store::{
    Deployed, IntegrationRecord, RunRecord, RunStatus, RunTrigger, now_ms,
};
use isoflow_proto::v1::isoflow_server::Isoflow;
use isoflow_proto::{CHUNK_BYTES, v1};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::auth::Tenant;
use super::convert;
use super::coordinator::{CancelOutcome, Coordinator, UpdateKind};

#[derive(Debug, Clone)]
pub struct Api {
    pub coordinator: Arc<Coordinator>,
    /// What a deployed definition may set.
    pub limits: model::Limits,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::PayloadChunk, Status>> + Send>>;
type UpdateStream = Pin<Box<dyn Stream<Item = Result<v1::RunUpdate, Status>> + Send>>;

fn tenant<T>(request: &Request<T>) -> Result<String, Status> {
    request
        .extensions()
        .get::<Tenant>()
        .map(|t| t.0.clone())
        .ok_or_else(|| Status::unauthenticated("the call carries no valid token"))
}

fn internal(e: impl std::fmt::Display) -> Status {
    tracing::error!("{e}");
    Status::internal(e.to_string())
}

/// Runs store calls off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(internal)
}

fn check_run_id(run_id: &str) -> Result<(), Status> {
    if run_id.is_empty() {
        return Err(Status::invalid_argument("run_id is empty"));
    }
    if run_id.contains('\0') {
        return Err(Status::invalid_argument("run_id contains a NUL character"));
    }
    Ok(())
}

fn integration_not_found(name: &str, version: Option<u32>) -> Status {
    Status::not_found(match version {
        Some(v) => format!("integration {name:?} has no version {v}"),
        None => format!("integration {name:?} is not deployed"),
    })
}

fn integration_message(
    record: &IntegrationRecord,
    with_definition: bool,
    created: bool,
) -> v1::Integration {
    v1::Integration {
        name: record.name.clone(),
        version: record.version,
        deployed_at_ms: record.deployed_at_ms,
        definition_json: if with_definition {
            record.definition.to_string()
        } else {
            String::new()
        },
        created,
    }
}

impl Api {
    fn vault(&self) -> Result<Arc<Vault>, Status> {
        self.coordinator.vault.clone().ok_or_else(|| {
            Status::failed_precondition(
                "this node keeps no credentials: its configuration has no vault.key",
            )
        })
    }

    fn run_or_not_found(&self, tenant: &str, run_id: &str) -> Result<RunRecord, Status> {
        self.coordinator
            .store
            .run(tenant, run_id)
            .map_err(internal)?
            .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))
    }
}

#[tonic::async_trait]
impl Isoflow for Api {
    async fn deploy_integration(
        &self,
        request: Request<v1::DeployIntegrationRequest>,
    ) -> Result<Response<v1::Integration>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let file_name = if request.file_name.is_empty() {
            "definition".to_owned()
        } else {
            request.file_name
        };
        let mut integration = model::load_with(&file_name, &request.source, &self.limits)
            .map_err(|errors| Status::invalid_argument(errors.to_string()))?;
        let files = request.files;
        inline_code(&mut integration, |path| {
            let name = path.to_string_lossy();
            files
                .get(name.as_ref())
                .or_else(|| files.get(name.trim_start_matches("./")))
                .cloned()
                .ok_or_else(|| format!("code file {name:?} was not sent with the definition"))
        })
        .map_err(|e| Status::invalid_argument(format!("{file_name}: {e}")))?;
        let record = IntegrationRecord {
            name: integration.name.as_str().to_owned(),
            version: integration.version.get(),
            deployed_at_ms: now_ms(),
            definition: serde_json::to_value(&integration).map_err(internal)?,
        };
        let store = self.coordinator.store.clone();
        let tenant2 = tenant.clone();
        let deployed = blocking(move || Ok(store.put_integration(&tenant2, record)?)).await?;
        match deployed {
            Deployed::Created(record) => {
                tracing::info!(%tenant, name = %record.name, version = record.version, "integration deployed");
                Ok(Response::new(integration_message(&record, true, true)))
            }
            Deployed::Unchanged(record) => {
                Ok(Response::new(integration_message(&record, true, false)))
            }
            Deployed::Conflict(record) => Err(Status::already_exists(format!(
                "integration {:?} version {} is already deployed with another definition: give the new definition a higher version",
                record.name, record.version
            ))),
        }
    }

    async fn get_integration(
        &self,
        request: Request<v1::GetIntegrationRequest>,
    ) -> Result<Response<v1::Integration>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        if request.name.is_empty() || request.name.contains('\0') {
            return Err(Status::invalid_argument(
                "name is empty or holds a NUL character",
            ));
        }
        let version = (request.version != 0).then_some(request.version);
        let store = self.coordinator.store.clone();
        let name = request.name.clone();
        let found = blocking(move || Ok(store.integration(&tenant, &name, version)?)).await?;
        match found {
            Some(record) => Ok(Response::new(integration_message(&record, true, false))),
            None => Err(integration_not_found(&request.name, version)),
        }
    }

    async fn list_integrations(
        &self,
        request: Request<v1::ListIntegrationsRequest>,
    ) -> Result<Response<v1::ListIntegrationsResponse>, Status> {
        let tenant = tenant(&request)?;
        let store = self.coordinator.store.clone();
        let records = blocking(move || Ok(store.integrations(&tenant)?)).await?;
        Ok(Response::new(v1::ListIntegrationsResponse {
            integrations: records
                .iter()
                .map(|r| integration_message(r, false, false))
                .collect(),
        }))
    }

    async fn start_run(
        &self,
        request: Request<Streaming<v1::StartRunRequest>>,
    ) -> Result<Response<v1::Run>, Status> {
        let tenant = tenant(&request)?;
        let mut stream = request.into_inner();
        let target = match stream.message().await? {
            Some(v1::StartRunRequest {
                part: Some(v1::start_run_request::Part::Target(target)),
            }) => target,
            _ => {
                return Err(Status::invalid_argument(
                    "the first message of StartRun must name the integration (target)",
                ));
            }
        };
        let limit = self.coordinator.max_payload_bytes;
        let mut input = Vec::new();
        while let Some(message) = stream.message().await? {
            match message.part {
                Some(v1::start_run_request::Part::InputChunk(chunk)) => {
                    if (input.len() + chunk.len()) as u64 > limit {
                        return Err(Status::resource_exhausted(format!(
                            "the run's input is over the payload limit of {limit} bytes"
                        )));
                    }
                    input.extend_from_slice(&chunk);
                }
                _ => {
                    return Err(Status::invalid_argument(
                        "after the target, StartRun takes only input chunks",
                    ));
                }
            }
        }
        let input: serde_json::Value = if input.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_slice(&input).map_err(|e| {
                Status::invalid_argument(format!("the run's input is not JSON: {e}"))
            })?
        };
        if target.integration.is_empty() || target.integration.contains('\0') {
            return Err(Status::invalid_argument(
                "target.integration is empty or holds a NUL character",
            ));
        }
        let version = (target.version != 0).then_some(target.version);
        let request = if target.request_id.is_empty() {
            None
        } else if target.request_id.len() > 256 || target.request_id.contains('\0') {
            return Err(Status::invalid_argument(
                "target.request_id is longer than 256 bytes or holds a NUL character",
            ));
        } else {
            Some(("api".to_owned(), target.request_id.clone()))
        };
        let started = self
            .coordinator
            .start_run(
                &tenant,
                &target.integration,
                version,
                input,
                request,
                RunTrigger::Api,
            )
            .await
            .map_err(internal)?;
        let Some((run, _)) = started else {
            return Err(integration_not_found(&target.integration, version));
        };
        Ok(Response::new(convert::run(&run, &[])))
    }

    async fn get_run(
        &self,
        request: Request<v1::GetRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let tenant = tenant(&request)?;
        let run_id = request.into_inner().run_id;
        check_run_id(&run_id)?;
        let run = self.run_or_not_found(&tenant, &run_id)?;
        let steps = self
            .coordinator
            .store
            .steps(&tenant, &run_id)
            .map_err(internal)?;
        Ok(Response::new(convert::run(&run, &steps)))
    }

    async fn list_runs(
        &self,
        request: Request<v1::ListRunsRequest>,
    ) -> Result<Response<v1::ListRunsResponse>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let limit = list_limit(request.limit);
        // The token is the last run id of the previous page: run ids order
        // a tenant's runs, and the key it names is under the caller's tenant.
        let before = Some(request.page_token).filter(|t| !t.is_empty());
        if let Some(token) = &before {
            check_run_id(token)
                .map_err(|_| Status::invalid_argument("page_token is not one ListRuns gave"))?;
        }
        let store = self.coordinator.store.clone();
        let mut runs =
            blocking(move || Ok(store.runs_before(&tenant, before.as_deref(), limit + 1)?)).await?;
        let next_page_token = if runs.len() > limit {
            runs.truncate(limit);
            runs.last().map(|r| r.run_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(v1::ListRunsResponse {
            runs: runs.iter().map(|r| convert::run(r, &[])).collect(),
            next_page_token,
        }))
    }

    type GetRunOutputStream = ChunkStream;

    async fn get_run_output(
        &self,
        request: Request<v1::GetRunOutputRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let tenant = tenant(&request)?;
        let run_id = request.into_inner().run_id;
        check_run_id(&run_id)?;
        let run = self.run_or_not_found(&tenant, &run_id)?;
        if run.status != RunStatus::Succeeded {
            return Err(Status::failed_precondition(format!(
                "run {run_id} has no output: its status is {}",
                run.status.as_str()
            )));
        }
        let store = self.coordinator.store.clone();
        let reader = blocking(move || Ok(store.run_output_reader(&tenant, &run_id)?)).await?;
        Ok(Response::new(chunks(reader, "the run's output")))
    }

    type GetRunInputStream = ChunkStream;

    async fn get_run_input(
        &self,
        request: Request<v1::GetRunInputRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let tenant = tenant(&request)?;
        let run_id = request.into_inner().run_id;
        check_run_id(&run_id)?;
        self.run_or_not_found(&tenant, &run_id)?;
        let store = self.coordinator.store.clone();
        let reader = blocking(move || Ok(store.run_input_reader(&tenant, &run_id)?)).await?;
        Ok(Response::new(chunks(reader, "the run's input")))
    }

    type GetStepOutputStream = ChunkStream;

    async fn get_step_output(
        &self,
        request: Request<v1::GetStepOutputRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        check_run_id(&request.run_id)?;
        if request.step_key.is_empty() || request.step_key.contains('\0') {
            return Err(Status::invalid_argument(
                "step_key is empty or holds a NUL character",
            ));
        }
        self.run_or_not_found(&tenant, &request.run_id)?;
        let store = self.coordinator.store.clone();
        let (run_id, step_key) = (request.run_id, request.step_key);
        let reader = blocking(move || {
            if store.step(&tenant, &run_id, &step_key)?.is_none() {
                return Ok(Err(step_key));
            }
            Ok(Ok(store.step_output_reader(&tenant, &run_id, &step_key)?))
        })
        .await?
        .map_err(|step| Status::not_found(format!("the run has no checkpointed step {step:?}")))?;
        Ok(Response::new(chunks(reader, "the step's output")))
    }

    async fn get_run_logs(
        &self,
        request: Request<v1::GetRunLogsRequest>,
    ) -> Result<Response<v1::GetRunLogsResponse>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        check_run_id(&request.run_id)?;
        self.run_or_not_found(&tenant, &request.run_id)?;
        let limit = match request.limit {
            0 => 1000,
            n => usize::try_from(n).unwrap_or(MAX_LOG_PAGE).min(MAX_LOG_PAGE),
        };
        let skip: usize = if request.page_token.is_empty() {
            0
        } else {
            request
                .page_token
                .parse()
                .map_err(|_| Status::invalid_argument("page_token is not one GetRunLogs gave"))?
        };
        let store = self.coordinator.store.clone();
        let run_id = request.run_id;
        let (lines, more) = blocking(move || {
            let logs = store.logs(&tenant, &run_id)?;
            let more = logs.len() > skip.saturating_add(limit);
            let page: Vec<_> = logs
                .iter()
                .skip(skip)
                .take(limit)
                .map(convert::log)
                .collect();
            Ok((page, more))
        })
        .await?;
        Ok(Response::new(v1::GetRunLogsResponse {
            next_page_token: if more {
                (skip + lines.len()).to_string()
            } else {
                String::new()
            },
            lines,
        }))
    }

    type WatchRunStream = UpdateStream;

    async fn watch_run(
        &self,
        request: Request<v1::WatchRunRequest>,
    ) -> Result<Response<UpdateStream>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let run_id = request.run_id;
        check_run_id(&run_id)?;
        // Subscribe before reading what is stored, so nothing falls between.
        let mut updates = self.coordinator.subscribe();
        self.run_or_not_found(&tenant, &run_id)?;
        let (tx, rx) = mpsc::channel(64);
        let coordinator = self.coordinator.clone();
        let with_logs = request.logs;
        tokio::spawn(async move {
            let mut sent = HashSet::new();
            // What is stored so far (with the stored log lines the first
            // time; later ones arrive as updates); again after falling behind.
            let catch_up = |sent: &mut HashSet<String>,
                            stored_logs: bool|
             -> Result<(Vec<v1::RunUpdate>, bool), Status> {
                let store = &coordinator.store;
                let run = store
                    .run(&tenant, &run_id)
                    .map_err(internal)?
                    .ok_or_else(|| Status::not_found(format!("run {run_id} does not exist")))?;
                let steps = store.steps(&tenant, &run_id).map_err(internal)?;
                let mut out = Vec::new();
                for step in &steps {
                    if sent.insert(step.step_key.clone()) {
                        out.push(v1::RunUpdate {
                            update: Some(v1::run_update::Update::Step(convert::step(step))),
                        });
                    }
                }
                if with_logs && stored_logs {
                    for line in store.logs(&tenant, &run_id).map_err(internal)? {
                        out.push(v1::RunUpdate {
                            update: Some(v1::run_update::Update::Log(convert::log(&line))),
                        });
                    }
                }
                let finished = run.status.is_finished();
                if finished {
                    out.push(v1::RunUpdate {
                        update: Some(v1::run_update::Update::Finished(convert::run(&run, &steps))),
                    });
                }
                Ok((out, finished))
            };
            let mut catch = catch_up(&mut sent, true);
            loop {
                match catch {
                    Ok((out, finished)) => {
                        for update in out {
                            if tx.send(Ok(update)).await.is_err() {
                                return;
                            }
                        }
                        if finished {
                            return;
                        }
                    }
                    Err(status) => {
                        let _ = tx.send(Err(status)).await;
                        return;
                    }
                }
                catch = loop {
                    match updates.recv().await {
                        Ok(update) => {
                            if update.tenant != tenant || update.run_id != run_id {
                                continue;
                            }
                            let message = match &update.kind {
                                UpdateKind::Step(step) => {
                                    if !sent.insert(step.step_key.clone()) {
                                        continue;
                                    }
                                    v1::run_update::Update::Step(step.clone())
                                }
                                UpdateKind::Log(line) if with_logs => {
                                    v1::run_update::Update::Log(line.clone())
                                }
                                UpdateKind::Log(_) => continue,
                                // The end, with every step, as stored.
                                UpdateKind::Finished => break catch_up(&mut sent, false),
                            };
                            if tx
                                .send(Ok(v1::RunUpdate {
                                    update: Some(message),
                                }))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                        Err(RecvError::Lagged(_)) => break catch_up(&mut sent, false),
                        Err(RecvError::Closed) => return,
                    }
                };
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn cancel_run(
        &self,
        request: Request<v1::CancelRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let tenant = tenant(&request)?;
        let run_id = request.into_inner().run_id;
        check_run_id(&run_id)?;
        match self
            .coordinator
            .cancel(&(tenant, run_id.clone()))
            .map_err(internal)?
        {
            CancelOutcome::NotFound => {
                Err(Status::not_found(format!("run {run_id} does not exist")))
            }
            CancelOutcome::AlreadyEnded(run) => Err(Status::failed_precondition(format!(
                "run {run_id} already ended: its status is {}",
                run.status.as_str()
            ))),
            CancelOutcome::Cancelling(run) => Ok(Response::new(convert::run(&run, &[]))),
        }
    }

    async fn rerun_run(
        &self,
        request: Request<v1::RerunRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let tenant = tenant(&request)?;
        let run_id = request.into_inner().run_id;
        check_run_id(&run_id)?;
        let run = self
            .coordinator
            .rerun(&tenant, &run_id)
            .await
            .map_err(|e| match e.downcast_ref::<RerunError>() {
                // Another tenant's run is as absent as one that never was.
                Some(RerunError::NotFound(_)) => Status::not_found(e.to_string()),
                Some(
                    RerunError::NotFailed { .. }
                    | RerunError::NothingToRun(_)
                    | RerunError::Definition { .. },
                ) => Status::failed_precondition(e.to_string()),
                Some(RerunError::Store(_)) | None => internal(e),
            })?;
        Ok(Response::new(convert::run(&run, &[])))
    }

    async fn set_credential(
        &self,
        request: Request<v1::SetCredentialRequest>,
    ) -> Result<Response<v1::CredentialInfo>, Status> {
        let tenant = tenant(&request)?;
        let vault = self.vault()?;
        let request = request.into_inner();
        let kind = request.kind.map(convert::credential_kind).ok_or_else(|| {
            Status::invalid_argument(format!(
                "credential {:?} has no kind: give bearer, basic, header or query",
                request.name
            ))
        })?;
        let info = blocking_vault(move || {
            vault.set(
                &tenant,
                &request.name,
                &kind,
                &request.origins,
                request.allow_plain_http,
            )
        })
        .await?;
        tracing::info!(credential = %info.name, kind = %info.kind, version = info.version, "credential set");
        Ok(Response::new(convert::credential_info(&info)))
    }

    async fn list_credentials(
        &self,
        request: Request<v1::ListCredentialsRequest>,
    ) -> Result<Response<v1::ListCredentialsResponse>, Status> {
        let tenant = tenant(&request)?;
        let vault = self.vault()?;
        let infos = blocking_vault(move || vault.list(&tenant)).await?;
        Ok(Response::new(v1::ListCredentialsResponse {
            credentials: infos.iter().map(convert::credential_info).collect(),
        }))
    }

    async fn rotate_credential(
        &self,
        request: Request<v1::RotateCredentialRequest>,
    ) -> Result<Response<v1::CredentialInfo>, Status> {
        let tenant = tenant(&request)?;
        let vault = self.vault()?;
        let request = request.into_inner();
        let info = blocking_vault(move || {
            vault.rotate(&tenant, &request.name, Secret::new(request.secret))
        })
        .await?;
        tracing::info!(credential = %info.name, version = info.version, "credential rotated");
        Ok(Response::new(convert::credential_info(&info)))
    }

    async fn delete_credential(
        &self,
        request: Request<v1::DeleteCredentialRequest>,
    ) -> Result<Response<v1::DeleteCredentialResponse>, Status> {
        let tenant = tenant(&request)?;
        let vault = self.vault()?;
        let name = request.into_inner().name;
        let deleted = blocking_vault(move || vault.delete(&tenant, &name)).await?;
        Ok(Response::new(v1::DeleteCredentialResponse { deleted }))
    }
}

/// Runs listed when a call asks for none in particular, and the most one
/// call returns: a caller cannot have the node read and send every run a
/// tenant ever had in one answer.
const DEFAULT_LIST: usize = 100;
const MAX_LIST: usize = 1_000;

/// The number of runs a `ListRuns` asking for `requested` gets.
/// The most log lines one GetRunLogs page holds.
const MAX_LOG_PAGE: usize = 10_000;

/// A stored payload as a stream of chunks, read a chunk at a time as the
/// client takes them: a 1 GB payload is never held whole, parsed or copied
/// here. No payload reads as `null`.
fn chunks(reader: Option<Box<dyn Read + Send>>, what: &'static str) -> ChunkStream {
    let (tx, rx) = mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let Some(mut reader) = reader else {
            let _ = tx.blocking_send(Ok(v1::PayloadChunk {
                data: b"null".to_vec(),
            }));
            return;
        };
        loop {
            let mut data = vec![0u8; CHUNK_BYTES];
            let mut filled = 0;
            while filled < data.len() {
                match reader.read(&mut data[filled..]) {
                    Ok(0) => break,
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        let _ = tx.blocking_send(Err(Status::internal(format!(
                            "cannot read {what}: {e}"
                        ))));
                        return;
                    }
                }
            }
            data.truncate(filled);
            if filled == 0 || tx.blocking_send(Ok(v1::PayloadChunk { data })).is_err() {
                return;
            }
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Runs a vault call off the async threads; its errors as statuses.
async fn blocking_vault<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, VaultError> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(internal)?
        .map_err(|e| match e {
            VaultError::Invalid(why) => Status::invalid_argument(why),
            VaultError::NotFound { name, .. } => {
                Status::not_found(format!("there is no credential {name:?}"))
            }
            other => internal(other),
        })
}

fn list_limit(requested: u32) -> usize {
    match requested {
        0 => DEFAULT_LIST,
        n => usize::try_from(n).unwrap_or(MAX_LIST).min(MAX_LIST),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_gets_the_default_or_what_it_asks_up_to_the_maximum() {
        assert_eq!(list_limit(0), DEFAULT_LIST);
        assert_eq!(list_limit(7), 7);
        assert_eq!(list_limit(1_000), 1_000);
        assert_eq!(list_limit(1_001), MAX_LIST);
        assert_eq!(list_limit(u32::MAX), MAX_LIST);
    }
}
