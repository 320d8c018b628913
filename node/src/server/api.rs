//! The public API (`isoflow.v1.Isoflow`), served by the coordinator (and by
//! an `all` node). Every call runs as the tenant its token names.

use std::collections::HashSet;
use std::io::Read;
use std::pin::Pin;
use std::sync::Arc;

use isoflow_engine::credential::Secret;
use isoflow_engine::credential::oauth2;
use isoflow_engine::credential::vault::{Vault, VaultError};
use isoflow_engine::model;
use isoflow_engine::run::inline_code;
use isoflow_engine::run::{ReplayError, RerunError, step_replay};
use isoflow_engine::store::{
    Deployed, IntegrationRecord, RunFilter, RunRecord, RunStatus, RunTrigger, now_ms,
};
use isoflow_proto::prost_types;
use isoflow_proto::time::{from_ms, to_ms};
use isoflow_proto::v1::isoflow_server::Isoflow;
use isoflow_proto::{CHUNK_BYTES, v1};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status, Streaming};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};

use super::auth::Tenant;
use super::convert;
use super::coordinator::{CancelOutcome, Coordinator, UpdateKind};
use super::cron;
use super::page;

#[derive(Debug, Clone)]
pub struct Api {
    pub coordinator: Arc<Coordinator>,
    /// What a deployed definition may set.
    pub limits: model::Limits,
    /// Where OAuth2 providers send users back (`http.public_url` +
    /// `/oauth/callback`); none without a public URL.
    pub oauth_callback: Option<String>,
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::PayloadChunk, Status>> + Send>>;
type UpdateStream = Pin<Box<dyn Stream<Item = Result<v1::RunUpdate, Status>> + Send>>;
type ExecuteStream = Pin<Box<dyn Stream<Item = Result<v1::ExecuteRunResponse, Status>> + Send>>;

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

async fn blocking_status<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
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
        deploy_time: from_ms(record.deployed_at_ms),
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

    /// Reads a StartRun stream (target, then input chunks up to the payload
    /// limit) and starts the run, or returns the run an earlier call with
    /// the same request_id started (then `false`).
    async fn start(
        &self,
        tenant: &str,
        mut stream: Streaming<v1::StartRunRequest>,
    ) -> Result<(RunRecord, bool), Status> {
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
        let limit = self.coordinator.tenants.payload_limit(tenant);
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
        self.coordinator
            .start_run(
                tenant,
                &target.integration,
                version,
                input,
                request,
                RunTrigger::Api,
            )
            .await
            .map_err(internal)?
            .ok_or_else(|| integration_not_found(&target.integration, version))
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
            .map_err(|errors| invalid_definition(&errors))?;
        let files = request.files;
        inline_code(&mut integration, |path| {
            let name = path.to_string_lossy();
            files
                .get(name.as_ref())
                .or_else(|| files.get(name.trim_start_matches("./")))
                .cloned()
                .ok_or_else(|| format!("code file {name:?} was not sent with the definition"))
        })
        .map_err(|e| {
            Status::with_error_details(
                tonic::Code::InvalidArgument,
                format!("{file_name}: {e}"),
                ErrorDetails::with_bad_request_violation(file_name.clone(), e),
            )
        })?;
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
        let request = request.into_inner();
        let store = self.coordinator.store.clone();
        let records = blocking(move || Ok(store.integrations(&tenant)?)).await?;
        let (records, next_page_token) = page::cut(
            records,
            |r| r.name.clone(),
            request.page_size,
            &request.page_token,
            "ListIntegrations",
        )?;
        Ok(Response::new(v1::ListIntegrationsResponse {
            integrations: records
                .iter()
                .map(|r| integration_message(r, false, false))
                .collect(),
            next_page_token,
        }))
    }

    async fn start_run(
        &self,
        request: Request<Streaming<v1::StartRunRequest>>,
    ) -> Result<Response<v1::Run>, Status> {
        let tenant = tenant(&request)?;
        let span = rpc_span("StartRun", &request);
        let (run, _) =
            tracing::Instrument::instrument(self.start(&tenant, request.into_inner()), span)
                .await?;
        Ok(Response::new(convert::run(&run, &[])))
    }

    type ExecuteRunStream = ExecuteStream;

    async fn execute_run(
        &self,
        request: Request<Streaming<v1::StartRunRequest>>,
    ) -> Result<Response<ExecuteStream>, Status> {
        let tenant = tenant(&request)?;
        // Subscribed before the run starts: its end cannot be missed.
        let updates = self.coordinator.subscribe();
        let span = rpc_span("ExecuteRun", &request);
        let (run, _) =
            tracing::Instrument::instrument(self.start(&tenant, request.into_inner()), span)
                .await?;
        let run_id = run.run_id.clone();
        let coordinator = self.coordinator.clone();
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            use v1::execute_run_response::Part;
            // A caller that left stops the wait; the run goes on.
            let ended = tokio::select! {
                ended = coordinator.wait_for_end(updates, &tenant, &run_id, None) => ended,
                () = tx.closed() => return,
            };
            let answer = async {
                let run = ended
                    .map_err(internal)?
                    .ok_or_else(|| Status::unavailable("the node is stopping; the run goes on"))?;
                let steps = coordinator
                    .store
                    .steps(&tenant, &run_id)
                    .map_err(internal)?;
                let output = if run.status == RunStatus::Succeeded {
                    let store = coordinator.store.clone();
                    let (tenant, run_id) = (tenant.clone(), run_id.clone());
                    blocking(move || Ok(store.run_output_reader(&tenant, &run_id)?)).await?
                } else {
                    None
                };
                Ok::<_, Status>((convert::run(&run, &steps), output))
            }
            .await;
            let (run, output) = match answer {
                Ok(answer) => answer,
                Err(status) => {
                    let _ = tx.send(Err(status)).await;
                    return;
                }
            };
            let first = v1::ExecuteRunResponse {
                part: Some(Part::Run(run)),
            };
            if tx.send(Ok(first)).await.is_err() {
                return;
            }
            let mut chunks = chunks(output, "the run's output");
            while let Some(chunk) = chunks.next().await {
                let message = chunk.map(|c| v1::ExecuteRunResponse {
                    part: Some(Part::OutputChunk(c.data)),
                });
                if tx.send(message).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn get_run(
        &self,
        request: Request<v1::GetRunRequest>,
    ) -> Result<Response<v1::Run>, Status> {
        let tenant = tenant(&request)?;
        let run_id = request.into_inner().run_id;
        check_run_id(&run_id)?;
        let mut run = self.run_or_not_found(&tenant, &run_id)?;
        self.coordinator.shown_status(&mut run);
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
        let limit = page::size(request.page_size);
        // The token is the last run id the previous page examined: run ids
        // order a tenant's runs, and the key it names is under the
        // caller's tenant.
        let before = Some(request.page_token.clone()).filter(|t| !t.is_empty());
        if let Some(token) = &before {
            check_run_id(token)
                .map_err(|_| Status::invalid_argument("page_token is not one ListRuns gave"))?;
        }
        let filter = run_filter(&request)?;
        let store = self.coordinator.store.clone();
        let mut page = blocking(move || {
            Ok(store.runs_page(&tenant, &filter, before.as_deref(), limit, MAX_SCAN)?)
        })
        .await?;
        for run in &mut page.runs {
            self.coordinator.shown_status(run);
        }
        Ok(Response::new(v1::ListRunsResponse {
            runs: page.runs.iter().map(|r| convert::run(r, &[])).collect(),
            next_page_token: page.next.unwrap_or_default(),
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
    type GetStepInputStream = ChunkStream;

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

    async fn get_step_input(
        &self,
        request: Request<v1::GetStepInputRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        let tenant = tenant(&request)?;
        let v1::GetStepInputRequest { run_id, step_key } = request.into_inner();
        check_run_id(&run_id)?;
        if step_key.is_empty() || step_key.contains('\0') {
            return Err(Status::invalid_argument(
                "step_key is empty or holds a NUL character",
            ));
        }
        let store = self.coordinator.store.clone();
        let replay = blocking(move || Ok(step_replay(&store, &tenant, &run_id, &step_key))).await?;
        let input = replay.map_err(|e| match e {
            // Another tenant's run is as absent as one that never was.
            ReplayError::NotFound(_) | ReplayError::NoSuchStep { .. } => {
                Status::not_found(e.to_string())
            }
            ReplayError::NotCode { .. }
            | ReplayError::NotReached { .. }
            | ReplayError::Stored { .. } => Status::failed_precondition(e.to_string()),
            ReplayError::Store(_) => internal(e),
        })?;
        let json = serde_json::to_vec(&input.input).map_err(internal)?;
        let reader: Box<dyn Read + Send> = Box::new(std::io::Cursor::new(json));
        Ok(Response::new(chunks(Some(reader), "the step's input")))
    }

    async fn get_run_logs(
        &self,
        request: Request<v1::GetRunLogsRequest>,
    ) -> Result<Response<v1::GetRunLogsResponse>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        check_run_id(&request.run_id)?;
        self.run_or_not_found(&tenant, &request.run_id)?;
        let limit = match request.page_size {
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
            // The attempts (step, attempt) whose log lines were sent. An
            // attempt's lines are stored and published in one write, so a
            // line stored after the subscription, which also arrives as an
            // update, is known by its attempt; and after falling behind,
            // the store's lines of attempts not sent yet are sent.
            let mut logged: HashSet<(String, u32)> = HashSet::new();
            // Those whose lines came from the store.
            let mut from_store: HashSet<(String, u32)> = HashSet::new();
            // What is stored so far (with the stored log lines the first
            // time; later ones arrive as updates); again after falling behind.
            let catch_up = |sent: &mut HashSet<String>,
                            logged: &mut HashSet<(String, u32)>,
                            from_store: &mut HashSet<(String, u32)>,
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
                    let already = logged.clone();
                    for line in store.logs(&tenant, &run_id).map_err(internal)? {
                        let attempt = (line.step_key.clone(), line.attempt);
                        if already.contains(&attempt) {
                            continue;
                        }
                        logged.insert(attempt.clone());
                        from_store.insert(attempt);
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
            let mut catch = catch_up(&mut sent, &mut logged, &mut from_store, true);
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
                                    // Its lines came from the store, or
                                    // this is the next line of an attempt
                                    // sent live.
                                    let attempt = (line.step_key.clone(), line.attempt);
                                    if from_store.contains(&attempt) {
                                        continue;
                                    }
                                    logged.insert(attempt);
                                    v1::run_update::Update::Log(line.clone())
                                }
                                UpdateKind::Log(_) | UpdateKind::Queued => continue,
                                // The end, with every step, as stored.
                                UpdateKind::Finished => {
                                    break catch_up(&mut sent, &mut logged, &mut from_store, false);
                                }
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
                        Err(RecvError::Lagged(_)) => {
                            break catch_up(&mut sent, &mut logged, &mut from_store, true);
                        }
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
        let v1::RerunRunRequest { run_id, version } = request.into_inner();
        check_run_id(&run_id)?;
        let run = self
            .coordinator
            .rerun(&tenant, &run_id, version)
            .await
            .map_err(|e| match e.downcast_ref::<RerunError>() {
                // Another tenant's run is as absent as one that never was.
                Some(RerunError::NotFound(_) | RerunError::NoSuchVersion { .. }) => {
                    Status::not_found(e.to_string())
                }
                Some(
                    RerunError::NotFailed { .. }
                    | RerunError::NothingToRun(_)
                    | RerunError::Definition { .. }
                    | RerunError::Incompatible { .. },
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
        let Some(kind) = request.kind else {
            return Err(Status::invalid_argument(format!(
                "credential {:?} has no kind: give bearer, basic, header, query or oauth2",
                request.name
            )));
        };
        let info = match kind {
            v1::set_credential_request::Kind::Oauth2(oauth2) => {
                let setup = convert::oauth2_setup(oauth2).map_err(|why| {
                    Status::invalid_argument(format!("credential {:?}: {why}", request.name))
                })?;
                blocking_vault(move || {
                    vault.set_oauth2(
                        &tenant,
                        &request.name,
                        &setup,
                        &request.origins,
                        request.allow_plain_http,
                    )
                })
                .await?
            }
            other => {
                let kind = convert::credential_kind(other).expect("not OAuth2");
                blocking_vault(move || {
                    vault.set(
                        &tenant,
                        &request.name,
                        &kind,
                        &request.origins,
                        request.allow_plain_http,
                    )
                })
                .await?
            }
        };
        tracing::info!(credential = %info.name, kind = %info.kind, version = info.version, "credential set");
        Ok(Response::new(convert::credential_info(
            &info,
            self.oauth_callback.as_deref(),
        )))
    }

    async fn list_credentials(
        &self,
        request: Request<v1::ListCredentialsRequest>,
    ) -> Result<Response<v1::ListCredentialsResponse>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let vault = self.vault()?;
        let infos = blocking_vault(move || vault.list(&tenant)).await?;
        let (infos, next_page_token) = page::cut(
            infos,
            |info| info.name.clone(),
            request.page_size,
            &request.page_token,
            "ListCredentials",
        )?;
        Ok(Response::new(v1::ListCredentialsResponse {
            credentials: infos
                .iter()
                .map(|info| convert::credential_info(info, self.oauth_callback.as_deref()))
                .collect(),
            next_page_token,
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
        Ok(Response::new(convert::credential_info(
            &info,
            self.oauth_callback.as_deref(),
        )))
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

    async fn list_triggers(
        &self,
        request: Request<v1::ListTriggersRequest>,
    ) -> Result<Response<v1::ListTriggersResponse>, Status> {
        let tenant = tenant(&request)?;
        let v1::ListTriggersRequest {
            integration,
            page_size,
            page_token,
        } = request.into_inner();
        let coordinator = self.coordinator.clone();
        let triggers = blocking_status(move || {
            let records = if integration.is_empty() {
                coordinator.store.integrations(&tenant).map_err(internal)?
            } else {
                let record = coordinator
                    .store
                    .integration(&tenant, &integration, None)
                    .map_err(internal)?
                    .ok_or_else(|| integration_not_found(&integration, None))?;
                vec![record]
            };
            let mut triggers = Vec::new();
            for record in records {
                let definition: model::Integration =
                    serde_json::from_value(record.definition.clone()).map_err(internal)?;
                for trigger in &definition.triggers {
                    triggers.push(trigger_info(&coordinator, &tenant, &record.name, trigger)?);
                }
            }
            Ok(triggers)
        })
        .await?;
        let (triggers, next_page_token) = page::cut(
            triggers,
            |t| format!("{}\0{}", t.integration, t.trigger),
            page_size,
            &page_token,
            "ListTriggers",
        )?;
        Ok(Response::new(v1::ListTriggersResponse {
            triggers,
            next_page_token,
        }))
    }

    async fn set_trigger_paused(
        &self,
        request: Request<v1::SetTriggerPausedRequest>,
    ) -> Result<Response<v1::TriggerInfo>, Status> {
        let tenant = tenant(&request)?;
        let request = request.into_inner();
        let coordinator = self.coordinator.clone();
        let info = blocking_status(move || {
            let record = coordinator
                .store
                .integration(&tenant, &request.integration, None)
                .map_err(internal)?
                .ok_or_else(|| integration_not_found(&request.integration, None))?;
            let definition: model::Integration =
                serde_json::from_value(record.definition).map_err(internal)?;
            let trigger = definition
                .triggers
                .iter()
                .find(|t| t.id().as_str() == request.trigger)
                .ok_or_else(|| {
                    Status::not_found(format!(
                        "integration {:?} has no trigger {:?}",
                        request.integration, request.trigger
                    ))
                })?;
            if !matches!(trigger, model::Trigger::Cron(_)) {
                return Err(Status::invalid_argument(format!(
                    "trigger {:?} is a webhook: only cron triggers pause",
                    request.trigger
                )));
            }
            let scope = cron::scope(&request.integration, &request.trigger);
            coordinator
                .store
                .set_paused(&tenant, &scope, request.paused)
                .map_err(internal)?;
            tracing::info!(
                integration = %request.integration,
                trigger = %request.trigger,
                paused = request.paused,
                "cron trigger paused or resumed"
            );
            trigger_info(&coordinator, &tenant, &request.integration, trigger)
        })
        .await?;
        Ok(Response::new(info))
    }

    async fn authorize_credential(
        &self,
        request: Request<v1::AuthorizeCredentialRequest>,
    ) -> Result<Response<v1::AuthorizeCredentialResponse>, Status> {
        let tenant = tenant(&request)?;
        let vault = self.vault()?;
        let Some(callback) = self.oauth_callback.clone() else {
            return Err(Status::failed_precondition(
                "this node has no http.public_url, the address browsers reach its HTTP listener at, so an OAuth2 provider cannot send the user back to it",
            ));
        };
        let name = request.into_inner().name;
        let expire_time = from_ms(isoflow_engine::store::now_ms().saturating_add(
            u64::try_from(oauth2::AUTHORIZATION_WINDOW.as_millis()).unwrap_or(u64::MAX),
        ));
        let authorize_url =
            blocking_vault(move || vault.authorize(&tenant, &name, &callback)).await?;
        Ok(Response::new(v1::AuthorizeCredentialResponse {
            authorize_url,
            expire_time,
        }))
    }
}

/// The most stored runs one `ListRuns` reads: a filter that matches few
/// runs answers a page short (with a token to go on) instead of reading a
/// tenant's whole history in one call.
const MAX_SCAN: usize = 10_000;

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
            unusable @ VaultError::Unusable { .. } => {
                Status::failed_precondition(unusable.to_string())
            }
            other => internal(other),
        })
}

/// A trigger as `ListTriggers` shows it, with a cron trigger's state.
fn trigger_info(
    coordinator: &Coordinator,
    tenant: &str,
    integration: &str,
    trigger: &model::Trigger,
) -> Result<v1::TriggerInfo, Status> {
    let mut info = v1::TriggerInfo {
        integration: integration.to_owned(),
        trigger: trigger.id().as_str().to_owned(),
        ..Default::default()
    };
    let time = |t: chrono::DateTime<chrono::Utc>| prost_types::Timestamp {
        seconds: t.timestamp(),
        nanos: i32::try_from(t.timestamp_subsec_nanos()).unwrap_or(0),
    };
    match trigger {
        model::Trigger::Webhook(_) => info.r#type = "webhook".into(),
        model::Trigger::Cron(cron_trigger) => {
            let state = cron::state(
                &coordinator.store,
                tenant,
                integration,
                cron_trigger,
                chrono::Utc::now(),
            )
            .map_err(internal)?;
            info.r#type = "cron".into();
            info.schedule = cron_trigger.schedule.clone();
            info.timezone = cron_trigger.timezone.clone();
            info.paused = state.paused;
            info.last_tick_time = state.last_tick.map(time);
            info.next_tick_time = state.next_tick.map(time);
        }
    }
    Ok(info)
}

/// INVALID_ARGUMENT for a definition that is wrong: the validator's
/// sentences (one a line) as the message, and as details a
/// `google.rpc.BadRequest` with one violation per problem (`file:line`, the
/// rest of its sentence) and a `google.rpc.ErrorInfo` naming the first
/// problem's file, line and step (proto/isoflow/v1/api.proto).
fn invalid_definition(errors: &model::LoadErrors) -> Status {
    let problems = errors.errors();
    let violations: Vec<FieldViolation> = problems
        .iter()
        .map(|e| {
            let description = match &e.step {
                Some(step) => format!("{step}: {}", e.message),
                None => e.message.clone(),
            };
            FieldViolation::new(format!("{}:{}", e.file, e.line), description)
        })
        .collect();
    let mut details = ErrorDetails::with_bad_request(violations);
    if let Some(first) = problems.first() {
        let mut metadata = std::collections::HashMap::from([
            ("file".to_owned(), first.file.clone()),
            ("line".to_owned(), first.line.to_string()),
            ("problems".to_owned(), problems.len().to_string()),
        ]);
        // `step "post"` (or `step #2` for a step without a usable id).
        if let Some(step) = &first.step {
            let id = step.strip_prefix("step ").unwrap_or(step).trim_matches('"');
            metadata.insert("step".to_owned(), id.to_owned());
        }
        details.set_error_info("INVALID_DEFINITION", "isoflow", metadata);
    }
    Status::with_error_details(tonic::Code::InvalidArgument, errors.to_string(), details)
}

/// A `ListRuns` request's filters, checked.
fn run_filter(request: &v1::ListRunsRequest) -> Result<RunFilter, Status> {
    if request.integration.contains('\0') {
        return Err(Status::invalid_argument(
            "integration holds a NUL character",
        ));
    }
    if request.trigger.len() > 200 || request.trigger.contains('\0') {
        return Err(Status::invalid_argument(
            "trigger is longer than 200 bytes or holds a NUL character",
        ));
    }
    let status =
        match request.status {
            0 => None,
            n => Some(convert::run_status_from(n).ok_or_else(|| {
                Status::invalid_argument(format!("status {n} is not a run status"))
            })?),
        };
    let created_from_ms = request.create_time_from.as_ref().map(|t| to_ms(Some(t)));
    let created_to_ms = request.create_time_to.as_ref().map(|t| to_ms(Some(t)));
    if let (Some(from), Some(to)) = (created_from_ms, created_to_ms)
        && from >= to
    {
        return Err(Status::invalid_argument(
            "create_time_from is not before create_time_to: no run can match",
        ));
    }
    Ok(RunFilter {
        integration: Some(request.integration.clone()).filter(|i| !i.is_empty()),
        version: (request.version != 0).then_some(request.version),
        status,
        created_from_ms,
        created_to_ms,
        trigger: Some(request.trigger.clone()).filter(|t| !t.is_empty()),
    })
}

/// A server span of an `isoflow.v1.Isoflow` call that starts a run
/// (OpenTelemetry's RPC conventions), continuing the caller's trace when
/// its metadata carries a `traceparent`.
fn rpc_span<T>(method: &'static str, request: &Request<T>) -> tracing::Span {
    let span = tracing::debug_span!(
        target: crate::telemetry::TARGET,
        "rpc.server",
        otel.name = format!("isoflow.v1.Isoflow/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = "isoflow.v1.Isoflow",
        rpc.method = method,
    );
    crate::telemetry::continue_caller(
        &span,
        request
            .metadata()
            .get("traceparent")
            .and_then(|v| v.to_str().ok()),
    );
    span
}
