//! Rust client for Isoflow's API (`isoflow.v1.Isoflow`, see
//! `proto/isoflow/v1/api.proto`): deploy integrations, start runs, follow
//! them and read their outputs.
//!
//! ```no_run
//! # async fn example() -> Result<(), isoflow_client::Error> {
//! let client = isoflow_client::Client::connect("http://127.0.0.1:7700", Some("acme-token")).await?;
//! client.deploy_file("orders.yaml").await?;
//! let run = client
//!     .start_run("orders-to-erp", None, &serde_json::json!({"export_url": "http://shop/export"}))
//!     .await?;
//! let finished = client.wait(&run.run_id).await?;
//! if finished.status() == isoflow_client::v1::RunStatus::Succeeded {
//!     println!("{}", client.output(&run.run_id).await?);
//! }
//! # Ok(())
//! # }
//! ```
//!
//! A server with TLS is an `https://` address; [`Client::connect_with`]
//! takes the CA that signs its certificate:
//!
//! ```no_run
//! # async fn example() -> Result<(), isoflow_client::Error> {
//! use isoflow_client::{Client, ConnectOptions};
//!
//! let options = ConnectOptions::new()
//!     .token("acme-token")
//!     .ca_file("/etc/isoflow/ca.pem")?;
//! let client = Client::connect_with("https://isoflow.internal:7700", &options).await?;
//! # Ok(())
//! # }
//! ```
//!
//! Invariants: payloads (run inputs and outputs) travel in chunks of at most
//! [`isoflow_proto::CHUNK_BYTES`], so no message comes near
//! [`isoflow_proto::MAX_MESSAGE_BYTES`]; a server's refusal reaches the
//! caller untouched as [`Error::Status`] (code and sentence).
//!
//! [`AdminClient`] calls the admin API (`isoflow.v1.Admin`: tenants, their
//! tokens and quotas) with the node's admin token.
//!
//! Depends on `isoflow-proto` only, never on the engine: a program that only
//! calls the API must build in seconds, without V8 or RocksDB. The
//! `isoflowctl` binary (`main.rs`, feature `cli`) is a thin shell over this
//! client.

#![warn(missing_docs)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use isoflow_proto::v1::isoflow_client::IsoflowClient;
use isoflow_proto::v1::run_update::Update;
use isoflow_proto::v1::start_run_request::Part;
use isoflow_proto::{CHUNK_BYTES, MAX_MESSAGE_BYTES};
use tokio_stream::{Stream, StreamExt};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

mod admin;
mod auth;
mod error;
mod retry;

pub use admin::AdminClient;
pub use error::{Error, Problem};
pub use isoflow_proto::{prost_types, time, v1};
pub use tonic_types;

use auth::Bearer;
use retry::{Retry, retried};

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// How long opening the connection may take before `connect` gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The README's examples compile as doc tests.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

/// Items asked for per page when a call reads every page.
const PAGE: u32 = 1_000;

/// What a PEM certificate starts with.
const CERTIFICATE_PEM: &[u8] = b"-----BEGIN CERTIFICATE-----";

/// How [`Client::connect_with`] connects: the token, and for an `https://`
/// server the CA certificate to trust.
#[derive(Clone, Default)]
pub struct ConnectOptions {
    token: Option<String>,
    ca_pem: Option<Vec<u8>>,
    retry: Retry,
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("token", &self.token.as_ref().map(|_| "<token>"))
            .field("ca", &self.ca_pem.is_some())
            .field("retries", &self.retry.retries)
            .finish()
    }
}

impl ConnectOptions {
    /// No token, the Mozilla roots for `https://`, 4 retries.
    #[must_use]
    pub fn new() -> Self {
        ConnectOptions::default()
    }

    /// Every call carries `authorization: Bearer <token>`; the server
    /// serves the token's tenant.
    #[must_use]
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// The CA certificate (PEM) that signs the server's certificate: the
    /// only one trusted. Without it, an `https://` server's certificate is
    /// checked against the Mozilla roots bundled in this crate.
    #[must_use]
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pem = Some(pem.into());
        self
    }

    /// How many times a call that found the server `UNAVAILABLE` is made
    /// again (default 4), after pauses that double from 100 ms up to 2 s,
    /// with jitter. Only calls that are safe to repeat are: reads, deploys
    /// (the same definition deployed twice is one version) and starts with
    /// a `request_id` ([`Client::start_run_once`], [`Client::execute`]); a
    /// plain start, a cancel or a credential change is not retried, so that
    /// it never happens twice. 0 turns retries off.
    #[must_use]
    pub fn retries(mut self, retries: u32) -> Self {
        self.retry.retries = retries;
        self
    }

    /// [`ConnectOptions::ca_pem`] with the file at `path`.
    ///
    /// # Errors
    /// [`Error::Io`] when the file cannot be read.
    pub fn ca_file(self, path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let pem = std::fs::read(path).map_err(io_error(path))?;
        Ok(self.ca_pem(pem))
    }
}

/// A connection to an Isoflow server, as one tenant (the token's).
///
/// Cheap to clone: clones share the connection. Calls take `&self` and may
/// run concurrently.
#[derive(Clone)]
pub struct Client {
    inner: IsoflowClient<InterceptedService<Channel, Bearer>>,
    server: String,
    retry: Retry,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("server", &self.server)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects to `server` (`http://host:port`; a bare `host:port` means
    /// `http://`). With a token, every call carries
    /// `authorization: Bearer <token>`, and the server serves the token's
    /// tenant. An `https://` server's certificate is checked against the
    /// Mozilla roots; for a private CA, see [`Client::connect_with`].
    ///
    /// # Errors
    /// [`Error::Address`], [`Error::InvalidToken`], or [`Error::Connect`]
    /// when no connection opens within 10 seconds.
    pub async fn connect(server: &str, token: Option<&str>) -> Result<Client> {
        let mut options = ConnectOptions::new();
        options.token = token.map(str::to_owned);
        Client::connect_with(server, &options).await
    }

    /// [`Client::connect`] with options: the token, and the CA certificate
    /// that signs an `https://` server's certificate.
    ///
    /// # Errors
    /// As [`Client::connect`]; [`Error::CaWithoutTls`] for a CA with an
    /// `http://` server; [`Error::InvalidCa`] for a CA that holds no PEM
    /// certificate; [`Error::Connect`] also when the server's certificate
    /// is not signed by the CA or does not name the server.
    pub async fn connect_with(server: &str, options: &ConnectOptions) -> Result<Client> {
        let (channel, bearer, uri) = open_channel(server, options).await?;
        let inner = IsoflowClient::with_interceptor(channel, bearer)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Client {
            inner,
            server: uri,
            retry: options.retry,
        })
    }

    /// The address this client is connected to.
    #[must_use]
    pub fn server(&self) -> &str {
        &self.server
    }

    /// Validates and stores a version of an integration. `source` is the
    /// definition (YAML or JSON); `file_name` is how error messages name it;
    /// `files` holds the code files it names (`file: ...`), by the path as
    /// written in the definition.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` with the validator's sentences (one a line);
    /// `ALREADY_EXISTS` when this version was deployed with another
    /// definition.
    pub async fn deploy(
        &self,
        source: &str,
        file_name: &str,
        files: HashMap<String, String>,
    ) -> Result<v1::Integration> {
        let request = v1::DeployIntegrationRequest {
            source: source.to_owned(),
            file_name: file_name.to_owned(),
            files,
        };
        Ok(retried!(self.deploy_integration(request))?)
    }

    /// Deploys the definition at `path`, named in error messages by `path`
    /// as given.
    ///
    /// The definition is not parsed here: with it go all `*.js` files under
    /// its folder, recursively, keyed by their path relative to that folder
    /// with `/` separators (`transform.js`, `lib/util.js`). So a code step
    /// should name its file that way: not `./transform.js`, and not a file
    /// outside the folder. Hidden entries (`.git`), `node_modules` and
    /// symbolic links to folders are skipped.
    ///
    /// # Errors
    /// [`Error::Io`] when a file cannot be read; [`Error::DeployTooLarge`]
    /// when the definition and its folder's `.js` files exceed one message;
    /// then as [`Client::deploy`].
    pub async fn deploy_file(&self, path: impl AsRef<Path>) -> Result<v1::Integration> {
        let path = path.as_ref().to_owned();
        let file_name = path.display().to_string();
        let (source, files) = tokio::task::spawn_blocking(move || read_definition(&path))
            .await
            .expect("reading a definition's files does not panic")?;
        self.deploy(&source, &file_name, files).await
    }

    /// One version of an integration, its stored definition (code inlined)
    /// in `definition_json`; `None`: the latest version.
    ///
    /// # Errors
    /// `NOT_FOUND` when there is no such integration or version.
    pub async fn integration(&self, name: &str, version: Option<u32>) -> Result<v1::Integration> {
        let request = v1::GetIntegrationRequest {
            name: name.to_owned(),
            version: version.unwrap_or(0),
        };
        Ok(retried!(self.get_integration(request))?)
    }

    /// The latest version of each integration, definitions left out, by
    /// name (every page).
    ///
    /// # Errors
    /// A status from the server.
    pub async fn integrations(&self) -> Result<Vec<v1::Integration>> {
        all_pages(async |page_token| {
            let page = retried!(self.list_integrations(v1::ListIntegrationsRequest {
                page_size: PAGE,
                page_token,
            }))?;
            Ok((page.integrations, page.next_page_token))
        })
        .await
    }

    /// Starts a run of `integration` (`None`: its latest version) with
    /// `input`, and returns it as it started.
    ///
    /// # Errors
    /// `NOT_FOUND` for an unknown integration; `INVALID_ARGUMENT` for an
    /// input the integration does not accept; `RESOURCE_EXHAUSTED` for an
    /// input over the server's payload limit.
    pub async fn start_run(
        &self,
        integration: &str,
        version: Option<u32>,
        input: &serde_json::Value,
    ) -> Result<v1::Run> {
        let input = serde_json::to_vec(input)?;
        self.start_run_json(integration, version, input).await
    }

    /// [`Client::start_run`] with the input as JSON text, sent as it is
    /// (the server checks it): numbers keep every digit and keys their
    /// order, with no parsing on this side.
    ///
    /// # Errors
    /// As [`Client::start_run`]; `INVALID_ARGUMENT` for text that is not
    /// JSON.
    pub async fn start_run_json(
        &self,
        integration: &str,
        version: Option<u32>,
        input: Vec<u8>,
    ) -> Result<v1::Run> {
        let requests = tokio_stream::iter(start_requests(integration, version, input, ""));
        Ok(self.inner.clone().start_run(requests).await?.into_inner())
    }

    /// [`Client::start_run`] that is safe to retry: the server starts one
    /// run per `request_id` (the caller's, at most 256 bytes) and answers a
    /// repeated call with the run the first one started.
    ///
    /// # Errors
    /// As [`Client::start_run`].
    pub async fn start_run_once(
        &self,
        integration: &str,
        version: Option<u32>,
        input: &serde_json::Value,
        request_id: &str,
    ) -> Result<v1::Run> {
        let input = serde_json::to_vec(input)?;
        let calls = self.retry.call(|| {
            let mut inner = self.inner.clone();
            let requests = tokio_stream::iter(start_requests(
                integration,
                version,
                input.clone(),
                request_id,
            ));
            async move { inner.start_run(requests).await }
        });
        Ok(calls.await?)
    }

    /// Starts a run and waits for it to end, in one call: the run as it
    /// ended (with its steps), and its output if it succeeded. With a
    /// `request_id`, a retried call waits for the run the first one
    /// started. Bound the wait with a timeout around the call; the run goes
    /// on if the caller leaves.
    ///
    /// # Errors
    /// As [`Client::start_run`]; [`Error::Json`] if the output is not JSON.
    pub async fn execute(
        &self,
        integration: &str,
        version: Option<u32>,
        input: &serde_json::Value,
        request_id: &str,
    ) -> Result<(v1::Run, Option<serde_json::Value>)> {
        use v1::execute_run_response::Part;
        let input = serde_json::to_vec(input)?;
        // Only a call with a request_id starts one run however often it is
        // made.
        let retry = if request_id.is_empty() {
            Retry {
                retries: 0,
                ..self.retry
            }
        } else {
            self.retry
        };
        let mut parts = retry
            .call(|| {
                let mut inner = self.inner.clone();
                let requests = tokio_stream::iter(start_requests(
                    integration,
                    version,
                    input.clone(),
                    request_id,
                ));
                async move { inner.execute_run(requests).await }
            })
            .await?;
        let mut run = None;
        let mut output = Vec::new();
        while let Some(message) = parts.message().await? {
            match message.part {
                Some(Part::Run(ended)) => run = Some(ended),
                Some(Part::OutputChunk(chunk)) => output.extend_from_slice(&chunk),
                None => {}
            }
        }
        let run = run.ok_or_else(|| {
            Error::Status(tonic::Status::internal("ExecuteRun ended without the run"))
        })?;
        let output = if run.status() != v1::RunStatus::Succeeded {
            None
        } else if output.is_empty() {
            Some(serde_json::Value::Null)
        } else {
            Some(serde_json::from_slice(&output)?)
        };
        Ok((run, output))
    }

    /// The triggers of an integration's latest version (`None`: of every
    /// integration), with each cron trigger's state.
    ///
    /// # Errors
    /// `NOT_FOUND` for an integration that is not deployed.
    pub async fn triggers(&self, integration: Option<&str>) -> Result<Vec<v1::TriggerInfo>> {
        all_pages(async |page_token| {
            let page = retried!(self.list_triggers(v1::ListTriggersRequest {
                integration: integration.unwrap_or_default().to_owned(),
                page_size: PAGE,
                page_token,
            }))?;
            Ok((page.triggers, page.next_page_token))
        })
        .await
    }

    /// Pauses or resumes a cron trigger: paused, its ticks pass without
    /// runs, and are not caught up on resuming.
    ///
    /// # Errors
    /// `NOT_FOUND`; `INVALID_ARGUMENT` for a webhook trigger.
    pub async fn set_trigger_paused(
        &self,
        integration: &str,
        trigger: &str,
        paused: bool,
    ) -> Result<v1::TriggerInfo> {
        let request = v1::SetTriggerPausedRequest {
            integration: integration.to_owned(),
            trigger: trigger.to_owned(),
            paused,
        };
        Ok(self
            .inner
            .clone()
            .set_trigger_paused(request)
            .await?
            .into_inner())
    }

    /// A run with its checkpointed steps.
    ///
    /// # Errors
    /// `NOT_FOUND` when the tenant has no such run.
    pub async fn run(&self, run_id: &str) -> Result<v1::Run> {
        let request = v1::GetRunRequest {
            run_id: run_id.to_owned(),
        };
        Ok(retried!(self.get_run(request))?)
    }

    /// The newest runs, newest first: at most `limit` (`None`: the server's
    /// default, 100; the server returns at most 1,000).
    ///
    /// # Errors
    /// A status from the server.
    pub async fn runs(&self, limit: Option<u32>) -> Result<Vec<v1::Run>> {
        let request = v1::ListRunsRequest {
            page_size: limit.unwrap_or(0),
            ..v1::ListRunsRequest::default()
        };
        Ok(retried!(self.list_runs(request))?.runs)
    }

    /// The output of a run that succeeded.
    ///
    /// # Errors
    /// `NOT_FOUND`, or `FAILED_PRECONDITION` for a run that has not
    /// succeeded; [`Error::Json`] if the joined chunks are not JSON.
    pub async fn output(&self, run_id: &str) -> Result<serde_json::Value> {
        let bytes = self.output_json(run_id).await?;
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }

    /// The input the run was started with.
    ///
    /// # Errors
    /// `NOT_FOUND`; [`Error::Json`] if the joined chunks are not JSON.
    pub async fn input(&self, run_id: &str) -> Result<serde_json::Value> {
        let request = v1::GetRunInputRequest {
            run_id: run_id.to_owned(),
        };
        let chunks = retried!(self.get_run_input(request))?;
        json_of(chunks).await
    }

    /// The output a step of the run checkpointed (`step_key` as in
    /// [`v1::Step::step_key`]): what the step after it got.
    ///
    /// # Errors
    /// `NOT_FOUND` for a run or a step not checkpointed.
    pub async fn step_output(&self, run_id: &str, step_key: &str) -> Result<serde_json::Value> {
        let request = v1::GetStepOutputRequest {
            run_id: run_id.to_owned(),
            step_key: step_key.to_owned(),
        };
        let chunks = retried!(self.get_step_output(request))?;
        json_of(chunks).await
    }

    /// The input code step `step_key` of the run was given (a failed one
    /// too), to run it again locally: `isoflow eval step.js --input
    /// @input.json`. Rendered again from the run's input and the
    /// checkpoints before the step, which is all its template reads.
    ///
    /// # Errors
    /// `NOT_FOUND` for a run or step that does not exist;
    /// `FAILED_PRECONDITION` for a step that is not a code step or a loop
    /// element the run did not reach.
    pub async fn step_input(&self, run_id: &str, step_key: &str) -> Result<serde_json::Value> {
        let request = v1::GetStepInputRequest {
            run_id: run_id.to_owned(),
            step_key: step_key.to_owned(),
        };
        let chunks = retried!(self.get_step_input(request))?;
        json_of(chunks).await
    }

    /// Every log line of the run so far, in order (all pages).
    ///
    /// # Errors
    /// `NOT_FOUND`.
    pub async fn logs(&self, run_id: &str) -> Result<Vec<v1::LogLine>> {
        let mut lines = Vec::new();
        let mut page_token = String::new();
        loop {
            let page = retried!(self.get_run_logs(v1::GetRunLogsRequest {
                run_id: run_id.to_owned(),
                page_size: 0,
                page_token,
            }))?;
            lines.extend(page.lines);
            if page.next_page_token.is_empty() {
                return Ok(lines);
            }
            page_token = page.next_page_token;
        }
    }

    /// [`Client::output`] as the JSON text the server stored, chunks
    /// joined, not parsed.
    ///
    /// # Errors
    /// As [`Client::output`].
    pub async fn output_json(&self, run_id: &str) -> Result<Vec<u8>> {
        let request = v1::GetRunOutputRequest {
            run_id: run_id.to_owned(),
        };
        let mut chunks = retried!(self.get_run_output(request))?;
        let mut bytes = Vec::new();
        while let Some(chunk) = chunks.message().await? {
            bytes.extend_from_slice(&chunk.data);
        }
        Ok(bytes)
    }

    /// The run's updates: the steps that finished so far, then each as it
    /// finishes (with log lines when `logs`), and last the run as it ended
    /// ([`v1::run_update::Update::Finished`]), after which the stream ends.
    ///
    /// # Errors
    /// `NOT_FOUND` when the tenant has no such run; the stream's items
    /// carry the errors of a connection lost on the way.
    pub async fn watch(
        &self,
        run_id: &str,
        logs: bool,
    ) -> Result<impl Stream<Item = Result<v1::RunUpdate>> + Send + Unpin + 'static> {
        let request = v1::WatchRunRequest {
            run_id: run_id.to_owned(),
            logs,
        };
        let updates = retried!(self.watch_run(request))?;
        Ok(updates.map(|update| update.map_err(Error::from)))
    }

    /// Waits for the run to end and returns it as it ended, steps included.
    ///
    /// # Errors
    /// As [`Client::watch`]; [`Error::WatchEnded`] if the updates stop
    /// before the run ends.
    pub async fn wait(&self, run_id: &str) -> Result<v1::Run> {
        let mut updates = self.watch(run_id, false).await?;
        while let Some(update) = updates.next().await {
            if let Some(Update::Finished(run)) = update?.update {
                return Ok(run);
            }
        }
        Err(Error::WatchEnded {
            run_id: run_id.to_owned(),
        })
    }

    /// Cancels a run: the steps in flight finish, no others start. Returns
    /// the run as the server has it after the request.
    ///
    /// # Errors
    /// `NOT_FOUND`; `FAILED_PRECONDITION` for a run that already ended.
    pub async fn cancel(&self, run_id: &str) -> Result<v1::Run> {
        let request = v1::CancelRunRequest {
            run_id: run_id.to_owned(),
        };
        Ok(self.inner.clone().cancel_run(request).await?.into_inner())
    }

    /// Runs a failed run again from the step it failed in: a new run of
    /// the same version with the same input, whose earlier steps are the
    /// old run's checkpoints (not run again). Returns the new run, pending
    /// (`rerun_of` and `from_step` say where it comes from).
    ///
    /// # Errors
    /// `NOT_FOUND`; `FAILED_PRECONDITION` for a run that did not fail.
    pub async fn rerun(&self, run_id: &str) -> Result<v1::Run> {
        self.rerun_with(run_id, None).await
    }

    /// [`Client::rerun`] with another `version` of the run's integration
    /// from the failed step on: deploy the fixed step as a new version,
    /// then resume the failed run with it. The steps before the failed one
    /// keep the old run's outputs; `from_version` of the new run says which
    /// version it moved from.
    ///
    /// # Errors
    /// As [`Client::rerun`]; `NOT_FOUND` for a version that is not
    /// deployed, `FAILED_PRECONDITION` for one whose steps up to the failed
    /// one differ from the run's (by id, in order).
    pub async fn rerun_with(&self, run_id: &str, version: Option<u32>) -> Result<v1::Run> {
        let request = v1::RerunRunRequest {
            run_id: run_id.to_owned(),
            version,
        };
        Ok(self.inner.clone().rerun_run(request).await?.into_inner())
    }

    /// One page of runs, newest first, and the token of the next (older)
    /// page: empty on the last. Pass `""` for the first page.
    ///
    /// # Errors
    /// A status from the server (`INVALID_ARGUMENT` for a token it did not
    /// give).
    pub async fn runs_page(
        &self,
        limit: Option<u32>,
        page_token: &str,
    ) -> Result<(Vec<v1::Run>, String)> {
        let request = v1::ListRunsRequest {
            page_size: limit.unwrap_or(0),
            page_token: page_token.to_owned(),
            ..v1::ListRunsRequest::default()
        };
        let page = retried!(self.list_runs(request))?;
        Ok((page.runs, page.next_page_token))
    }

    /// One page of runs that match the request's filters (integration,
    /// version, status, creation time), newest first. A page may hold fewer
    /// runs than asked (even none) and still have a `next_page_token`: the
    /// server reads a bounded number of runs per call. Go on until the
    /// token is empty.
    ///
    /// # Errors
    /// A status from the server (`INVALID_ARGUMENT` for a token it did not
    /// give, or a time range that is empty).
    pub async fn list_runs(&self, request: v1::ListRunsRequest) -> Result<v1::ListRunsResponse> {
        Ok(retried!(self.list_runs(request))?)
    }

    /// Stores a credential for this tenant's http steps, or replaces the
    /// one of the same name.
    ///
    /// # Errors
    /// `INVALID_ARGUMENT` with the reason (a name, origin or secret that is
    /// wrong, a plain-http origin not allowed explicitly),
    /// `FAILED_PRECONDITION` when the server has no vault key.
    pub async fn set_credential(
        &self,
        request: v1::SetCredentialRequest,
    ) -> Result<v1::CredentialInfo> {
        Ok(self
            .inner
            .clone()
            .set_credential(request)
            .await?
            .into_inner())
    }

    /// This tenant's credentials, by name, without their secrets (every
    /// page).
    ///
    /// # Errors
    /// A status from the server.
    pub async fn credentials(&self) -> Result<Vec<v1::CredentialInfo>> {
        all_pages(async |page_token| {
            let page = retried!(self.list_credentials(v1::ListCredentialsRequest {
                page_size: PAGE,
                page_token,
            }))?;
            Ok((page.credentials, page.next_page_token))
        })
        .await
    }

    /// Replaces a credential's secret (token, password or value), keeping
    /// its kind and origins.
    ///
    /// # Errors
    /// `NOT_FOUND`, or `INVALID_ARGUMENT` for a secret that cannot be sent.
    pub async fn rotate_credential(&self, name: &str, secret: &str) -> Result<v1::CredentialInfo> {
        let request = v1::RotateCredentialRequest {
            name: name.to_owned(),
            secret: secret.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .rotate_credential(request)
            .await?
            .into_inner())
    }

    /// Starts the authorization-code flow of an OAuth2 credential: the URL
    /// a user opens to sign in at the provider, which sends the browser back
    /// to the node's `/oauth/callback`.
    ///
    /// # Errors
    /// `NOT_FOUND`, `INVALID_ARGUMENT` for a credential of another grant,
    /// `FAILED_PRECONDITION` when the node has no `http.public_url`.
    pub async fn authorize_credential(
        &self,
        name: &str,
    ) -> Result<v1::AuthorizeCredentialResponse> {
        let request = v1::AuthorizeCredentialRequest {
            name: name.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .authorize_credential(request)
            .await?
            .into_inner())
    }

    /// Deletes a credential; whether there was one.
    ///
    /// # Errors
    /// A status from the server.
    pub async fn delete_credential(&self, name: &str) -> Result<bool> {
        let request = v1::DeleteCredentialRequest {
            name: name.to_owned(),
        };
        Ok(self
            .inner
            .clone()
            .delete_credential(request)
            .await?
            .into_inner()
            .deleted)
    }
}

/// The connection `connect_with` opens, the bearer its calls carry and the
/// server's address.
async fn open_channel(server: &str, options: &ConnectOptions) -> Result<(Channel, Bearer, String)> {
    let bearer = Bearer::new(options.token.as_deref())?;
    let uri = server_uri(server);
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(|error| Error::Address {
            server: server.to_owned(),
            error,
        })?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT);
    if uri.starts_with("https://") {
        let tls = match &options.ca_pem {
            Some(pem) => {
                if !pem
                    .windows(CERTIFICATE_PEM.len())
                    .any(|w| w == CERTIFICATE_PEM)
                {
                    return Err(Error::InvalidCa);
                }
                ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem))
            }
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        endpoint = endpoint.tls_config(tls).map_err(|error| Error::Connect {
            server: uri.clone(),
            error,
        })?;
    } else if options.ca_pem.is_some() {
        return Err(Error::CaWithoutTls { server: uri });
    }
    let channel = endpoint.connect().await.map_err(|error| Error::Connect {
        server: uri.clone(),
        error,
    })?;
    Ok((channel, bearer, uri))
}

/// Every item of a list, page after page: `page` is called with each
/// page's token (empty first) and gives the page's items and the next
/// token (empty after the last page).
async fn all_pages<T>(
    mut page: impl AsyncFnMut(String) -> Result<(Vec<T>, String)>,
) -> Result<Vec<T>> {
    let mut items = Vec::new();
    let mut token = String::new();
    loop {
        let (mut got, next) = page(token).await?;
        items.append(&mut got);
        if next.is_empty() {
            return Ok(items);
        }
        token = next;
    }
}

/// A payload's chunks, joined and parsed.
async fn json_of(mut chunks: tonic::Streaming<v1::PayloadChunk>) -> Result<serde_json::Value> {
    let mut bytes = Vec::new();
    while let Some(chunk) = chunks.message().await? {
        bytes.extend_from_slice(&chunk.data);
    }
    if bytes.is_empty() {
        return Ok(serde_json::Value::Null);
    }
    Ok(serde_json::from_slice(&bytes)?)
}

/// `host:port` means `http://host:port`; anything with a scheme is kept.
fn server_uri(server: &str) -> String {
    if server.contains("://") {
        server.to_owned()
    } else {
        format!("http://{server}")
    }
}

/// A `StartRun` call's messages: the target, then the input in chunks of at
/// most [`CHUNK_BYTES`], made one at a time as the call sends them.
fn start_requests(
    integration: &str,
    version: Option<u32>,
    input: Vec<u8>,
    request_id: &str,
) -> impl Iterator<Item = v1::StartRunRequest> + Send + 'static {
    let target = Part::Target(v1::RunTarget {
        integration: integration.to_owned(),
        version: version.unwrap_or(0),
        request_id: request_id.to_owned(),
    });
    let chunks = input.len().div_ceil(CHUNK_BYTES);
    let parts = (0..chunks).map(move |i| {
        let start = i * CHUNK_BYTES;
        let end = input.len().min(start + CHUNK_BYTES);
        Part::InputChunk(input[start..end].to_vec())
    });
    std::iter::once(target)
        .chain(parts)
        .map(|part| v1::StartRunRequest { part: Some(part) })
}

/// The definition at `path` and the `*.js` files under its folder (see
/// [`Client::deploy_file`]).
fn read_definition(path: &Path) -> Result<(String, HashMap<String, String>)> {
    let source = std::fs::read_to_string(path).map_err(io_error(path))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let budget = MAX_MESSAGE_BYTES.saturating_sub(source.len());
    let files = code_files(dir, budget)?;
    Ok((source, files))
}

/// Every `*.js` file under `dir`, keyed by its `/`-separated path relative
/// to `dir`; [`Error::DeployTooLarge`] once they add up to more than
/// `budget` bytes.
fn code_files(dir: &Path, budget: usize) -> Result<HashMap<String, String>> {
    let mut files = HashMap::new();
    let mut total = 0usize;
    // Folders still to read, by their key prefix ("" for `dir` itself).
    let mut pending = vec![String::new()];
    while let Some(prefix) = pending.pop() {
        let folder = dir.join(&prefix);
        let entries = std::fs::read_dir(&folder).map_err(io_error(&folder))?;
        for entry in entries {
            let entry = entry.map_err(io_error(&folder))?;
            let path = entry.path();
            // A definition is UTF-8, so it cannot name a file whose name
            // is not.
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                continue;
            };
            if name.starts_with('.') || name == "node_modules" {
                continue;
            }
            let key = if prefix.is_empty() {
                name
            } else {
                format!("{prefix}/{name}")
            };
            let file_type = entry.file_type().map_err(io_error(&path))?;
            if file_type.is_dir() {
                pending.push(key);
                continue;
            }
            // A link to a file counts as the file; links to folders are
            // not followed (they can loop).
            if !key.ends_with(".js") || !(file_type.is_file() || path.is_file()) {
                continue;
            }
            let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
            total += key.len() + text.len();
            if total > budget {
                return Err(Error::DeployTooLarge {
                    dir: dir.to_owned(),
                });
            }
            files.insert(key, text);
        }
    }
    Ok(files)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |error| Error::Io {
        path: PathBuf::from(path),
        error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(requests: impl Iterator<Item = v1::StartRunRequest>) -> Vec<Part> {
        requests
            .map(|r| r.part.expect("every message has a part"))
            .collect()
    }

    #[test]
    fn the_target_goes_first_then_the_input_in_bounded_chunks() {
        // Two and a half chunks, each byte telling where it was.
        let input: Vec<u8> = (0..CHUNK_BYTES * 5 / 2).map(|i| (i % 251) as u8).collect();
        let parts = parts(start_requests("orders", Some(3), input.clone(), ""));
        assert_eq!(
            parts[0],
            Part::Target(v1::RunTarget {
                integration: "orders".to_owned(),
                version: 3,
                request_id: String::new(),
            })
        );
        let chunks: Vec<&[u8]> = parts[1..]
            .iter()
            .map(|part| match part {
                Part::InputChunk(chunk) => chunk.as_slice(),
                Part::Target(_) => panic!("a second target"),
            })
            .collect();
        assert_eq!(chunks.len(), 3);
        assert!(
            chunks
                .iter()
                .all(|c| !c.is_empty() && c.len() <= CHUNK_BYTES)
        );
        assert_eq!(chunks.concat(), input);
    }

    #[test]
    fn an_input_of_exactly_one_chunk_is_one_chunk() {
        let parts = parts(start_requests("orders", None, vec![b' '; CHUNK_BYTES], ""));
        assert_eq!(parts.len(), 2);
        assert!(matches!(&parts[0], Part::Target(t) if t.version == 0));
        assert!(matches!(&parts[1], Part::InputChunk(c) if c.len() == CHUNK_BYTES));
    }

    #[test]
    fn no_input_bytes_is_the_target_alone() {
        let parts = parts(start_requests("orders", None, Vec::new(), ""));
        assert_eq!(parts.len(), 1);
    }

    #[test]
    fn a_bare_host_and_port_means_http() {
        assert_eq!(server_uri("127.0.0.1:7700"), "http://127.0.0.1:7700");
        assert_eq!(server_uri("http://node-1:7700"), "http://node-1:7700");
        assert_eq!(
            server_uri("https://isoflow.example"),
            "https://isoflow.example"
        );
    }

    #[tokio::test]
    async fn a_ca_is_for_https_and_must_hold_a_certificate() {
        // Refused before any connection is tried: nothing listens here.
        let options = ConnectOptions::new().ca_pem("-----BEGIN CERTIFICATE-----\n");
        let error = Client::connect_with("127.0.0.1:1", &options)
            .await
            .expect_err("http with a CA");
        assert!(
            matches!(&error, Error::CaWithoutTls { server } if server == "http://127.0.0.1:1"),
            "{error}"
        );
        let options = ConnectOptions::new().ca_pem("not a certificate");
        let error = Client::connect_with("https://127.0.0.1:1", &options)
            .await
            .expect_err("no certificate in it");
        assert!(matches!(error, Error::InvalidCa), "{error}");
        let missing = ConnectOptions::new()
            .ca_file("/nonexistent/ca.pem")
            .expect_err("no such file");
        assert!(
            missing.to_string().contains("/nonexistent/ca.pem"),
            "{missing}"
        );
        assert!(!format!("{:?}", ConnectOptions::new().token("secret-token")).contains("secret"));
    }

    #[test]
    fn deploy_file_sends_the_js_files_under_the_definitions_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let write = |rel: &str, text: &str| {
            let path = root.join(rel);
            std::fs::create_dir_all(path.parent().expect("has a parent")).expect("mkdir");
            std::fs::write(path, text).expect("write");
        };
        write("orders.yaml", "name: orders\n");
        write("transform.js", "export default () => 1;");
        write("lib/deep/util.js", "export const x = 2;");
        write("notes.txt", "not code");
        write("lib/data.json", "{}");
        write(".git/hooks/pre-commit.js", "hidden");
        write("node_modules/left-pad/index.js", "vendored");

        let (source, files) = read_definition(&root.join("orders.yaml")).expect("readable");
        assert_eq!(source, "name: orders\n");
        let mut keys: Vec<&str> = files.keys().map(String::as_str).collect();
        keys.sort_unstable();
        assert_eq!(keys, ["lib/deep/util.js", "transform.js"]);
        assert_eq!(files["lib/deep/util.js"], "export const x = 2;");
    }

    #[test]
    fn code_files_over_one_message_are_refused_before_sending() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("big.js"), "x".repeat(100)).expect("write");
        assert!(matches!(
            code_files(dir.path(), 50),
            Err(Error::DeployTooLarge { .. })
        ));
        assert_eq!(code_files(dir.path(), 200).expect("fits").len(), 1);
    }

    #[test]
    fn a_missing_definition_names_its_path() {
        let dir = tempfile::tempdir().expect("temp dir");
        let missing = dir.path().join("nope.yaml");
        let error = read_definition(&missing).expect_err("missing");
        assert!(matches!(&error, Error::Io { path, .. } if *path == missing));
        assert!(error.to_string().contains("nope.yaml"), "{error}");
    }
}
