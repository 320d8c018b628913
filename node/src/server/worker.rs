//! A worker: a stateless executor. It finds the leading coordinator (in
//! etcd, or at a configured address), opens a Work stream, runs what it is
//! assigned on its engine and reports every checkpoint, starting a run's
//! next step only once the coordinator acknowledged the last one.
//!
//! When the coordinator cannot be reached (its stream breaks or falls
//! silent past the heartbeat time-out) the worker stops every run it has
//! without another word: the coordinator gives them to other workers, from
//! their last acknowledged checkpoint. It takes no work until it reaches a
//! coordinator again.
//!
//! With `[worker.tls]` it reaches the coordinator only over TLS, verifying
//! the coordinator's certificate and presenting its own; it never sends
//! the cluster token to an `http://` address.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use isoflow_engine::credential::{
    Credential, CredentialError, CredentialFuture, Credentials, Secret, oauth2,
};
use isoflow_engine::model::Integration;
use isoflow_engine::run::{
    Engine, Journal, JournalError, JournalFuture, JournalWrite, Restored, WriteKind,
};
use isoflow_proto::cluster::v1 as wire;
use isoflow_proto::cluster::v1::cluster_client::ClusterClient;
use isoflow_proto::cluster::v1::coordinator_message::Kind as In;
use isoflow_proto::cluster::v1::worker_message::Kind as Out;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use super::auth::AddToken;
use super::convert;
use super::payload::{self, Assembler};

/// Where to find the coordinator.
#[tonic::async_trait]
pub trait Discovery: Send + Sync {
    async fn coordinator(&self) -> anyhow::Result<String>;
}

/// A fixed address.
#[derive(Debug)]
pub struct Fixed(pub String);

#[tonic::async_trait]
impl Discovery for Fixed {
    async fn coordinator(&self) -> anyhow::Result<String> {
        Ok(self.0.clone())
    }
}

pub struct WorkerNode {
    pub id: String,
    /// The engine's credentials: each fetched from the coordinator over the
    /// stream of the session that holds the run.
    pub credentials: Arc<StreamCredentials>,
    pub capacity: u32,
    pub engine: Engine,
    pub token: AddToken,
    pub discovery: Box<dyn Discovery>,
    /// TLS towards the coordinator (`[worker.tls]`).
    pub tls: Option<tonic::transport::ClientTlsConfig>,
    pub max_payload_bytes: u64,
    /// How long to wait for a coordinator to answer a connection.
    pub heartbeat_timeout: Duration,
}

impl std::fmt::Debug for WorkerNode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerNode")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// One run this worker is running.
struct Active {
    tenant: String,
    run_id: String,
    journal: Arc<RemoteJournal>,
}

impl WorkerNode {
    /// Connects, works, reconnects; returns only when `stop` fires.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            if *stop.borrow() {
                return;
            }
            let session = async {
                let address = self.discovery.coordinator().await?;
                self.session(&address, &mut stop.clone()).await
            };
            match session.await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(worker = %self.id, "not connected to a coordinator: {e:#}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// One connection to a coordinator: Ok when asked to stop, an error
    /// when the connection is lost.
    async fn session(
        &self,
        address: &str,
        stop: &mut tokio::sync::watch::Receiver<bool>,
    ) -> anyhow::Result<()> {
        let mut endpoint = tonic::transport::Endpoint::from_shared(address.to_owned())?
            .connect_timeout(self.heartbeat_timeout)
            .tcp_nodelay(true);
        match (&self.tls, address.starts_with("https://")) {
            (Some(tls), true) => endpoint = endpoint.tls_config(tls.clone())?,
            (Some(_), false) => anyhow::bail!(
                "the coordinator's address {address} is not https://, and this worker has \
                 [worker.tls]: it does not send its cluster token in the clear"
            ),
            (None, true) => anyhow::bail!(
                "the coordinator at {address} uses TLS: set [worker.tls] (ca, cert and key)"
            ),
            (None, false) => {}
        }
        let channel = endpoint.connect().await?;
        let mut client = ClusterClient::with_interceptor(channel, self.token.clone())
            .max_decoding_message_size(isoflow_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(isoflow_proto::MAX_MESSAGE_BYTES);
        let (out_tx, out_rx) = mpsc::channel::<wire::WorkerMessage>(32);
        out_tx
            .send(worker_message(Out::Hello(wire::Hello {
                worker_id: self.id.clone(),
                capacity: self.capacity,
                version: env!("CARGO_PKG_VERSION").to_owned(),
            })))
            .await?;
        let mut inbound = client
            .work(ReceiverStream::new(out_rx))
            .await
            .map_err(|status| match status.code() {
                code @ (tonic::Code::PermissionDenied
                | tonic::Code::Unauthenticated
                | tonic::Code::InvalidArgument) => anyhow::anyhow!(
                    "the coordinator at {address} refused this worker ({code:?}): {}",
                    status.message()
                ),
                // Under TLS 1.3 a server refuses a client certificate after
                // the client considers the handshake done: the worker sees
                // only a closed connection.
                code if self.tls.is_some() => anyhow::anyhow!(
                    "the connection to the coordinator at {address} closed before the Work \
                     stream opened ({code:?}: {}); if this goes on, check that this worker's \
                     certificate (worker.tls.cert) is signed by the coordinator's tls.client_ca",
                    status_text(&status)
                ),
                code => anyhow::anyhow!(
                    "the Work stream to the coordinator at {address} did not open ({code:?}): {}",
                    status_text(&status)
                ),
            })?
            .into_inner();
        let welcome = match tokio::time::timeout(self.heartbeat_timeout, inbound.message()).await {
            Ok(Ok(Some(wire::CoordinatorMessage {
                kind: Some(In::Welcome(welcome)),
            }))) => welcome,
            _ => anyhow::bail!("the coordinator at {address} did not answer Hello"),
        };
        let duration = |d: Option<isoflow_proto::prost_types::Duration>, least: Duration| {
            d.and_then(|d| Duration::try_from(d).ok())
                .unwrap_or(least)
                .max(least)
        };
        let interval = duration(welcome.heartbeat_interval, Duration::from_millis(10));
        let timeout = duration(welcome.heartbeat_timeout, Duration::from_millis(50));
        tracing::info!(worker = %self.id, coordinator = %welcome.coordinator_id, %address, "connected");

        let mut active: HashMap<u64, Active> = HashMap::new();
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
        let mut payloads = Assembler::default();
        let payload_ids = Arc::new(AtomicU64::new(1));
        let mut tick = tokio::time::interval(interval);
        let mut draining = false;
        let (drained_tx, mut drained_rx) = mpsc::unbounded_channel::<()>();
        let result = loop {
            tokio::select! {
                _ = stop.changed(), if !draining => {
                    // Graceful: in-flight steps finish and are checkpointed
                    // while this loop still carries their acknowledgements;
                    // then the runs left go back to the coordinator.
                    draining = true;
                    let engine = self.engine.clone();
                    let drained = drained_tx.clone();
                    tokio::spawn(async move {
                        engine.shutdown(Duration::from_secs(10)).await;
                        let _ = drained.send(());
                    });
                }
                Some(()) = drained_rx.recv() => {
                    for (id, _) in active.drain() {
                        let _ = out_tx.send(worker_message(Out::Released(wire::Released {
                            assignment_id: id,
                            reason: "the worker is shutting down".to_owned(),
                        }))).await;
                    }
                    break Ok(());
                }
                _ = tick.tick() => {
                    if out_tx.send(worker_message(Out::Heartbeat(wire::Heartbeat {
                        time: isoflow_proto::time::from_ms(isoflow_engine::store::now_ms()),
                    }))).await.is_err() {
                        break Err(anyhow::anyhow!("the stream to the coordinator closed"));
                    }
                }
                Some(id) = done_rx.recv() => {
                    if let Some(run) = active.remove(&id) {
                        self.credentials.release(&run.tenant, &run.run_id, id);
                    }
                }
                message = tokio::time::timeout(timeout, inbound.message()) => {
                    let message = match message {
                        Ok(Ok(Some(message))) => message,
                        Ok(Ok(None)) => break Err(anyhow::anyhow!("the coordinator closed the stream")),
                        Ok(Err(status)) => break Err(anyhow::anyhow!("the stream broke: {}", status.message())),
                        Err(_) => break Err(anyhow::anyhow!(
                            "the coordinator was silent for {}", humantime::format_duration(timeout)
                        )),
                    };
                    match message.kind {
                        Some(In::Chunk(chunk)) => {
                            if let Err(e) = payloads.add(chunk, self.max_payload_bytes.saturating_mul(4)) {
                                break Err(anyhow::anyhow!(e));
                            }
                        }
                        Some(In::Assign(assign)) => {
                            let id = assign.assignment_id;
                            match self.start(assign, &mut payloads, &out_tx, &payload_ids, &done_tx).await {
                                Ok(run) => {
                                    active.insert(id, run);
                                }
                                Err(e) => {
                                    tracing::error!(assignment = id, "cannot start the run: {e:#}");
                                    let _ = out_tx.send(worker_message(Out::Released(wire::Released {
                                        assignment_id: id,
                                        reason: format!("{e:#}"),
                                    }))).await;
                                }
                            }
                        }
                        Some(In::Ack(ack)) => {
                            if let Some(run) = active.get(&ack.assignment_id) {
                                run.journal.settle(ack.seq, Ok(()));
                            }
                        }
                        Some(In::Revoke(revoke)) => {
                            if let Some(run) = active.remove(&revoke.assignment_id) {
                                self.credentials.release(&run.tenant, &run.run_id, revoke.assignment_id);
                                tracing::info!(run_id = %run.run_id, "run taken back: {}", revoke.reason);
                                run.journal.close(&revoke.reason);
                                self.engine.abort(&run.tenant, &run.run_id);
                            }
                        }
                        Some(In::Cancel(cancel)) => {
                            if let Some(run) = active.get(&cancel.assignment_id) {
                                self.engine.cancel(&run.tenant, &run.run_id);
                            }
                        }
                        Some(In::CredentialReply(reply)) => self.credentials.answer(reply),
                        Some(In::Heartbeat(_)) | Some(In::Welcome(_)) | None => {}
                    }
                }
            }
        };
        self.credentials.forget_all();
        if result.is_err() {
            // Unacknowledged work is the coordinator's to give to another
            // worker: stop every run here now.
            for (_, run) in active.drain() {
                run.journal.close("the coordinator is unreachable");
                self.engine.abort(&run.tenant, &run.run_id);
            }
        }
        result
    }

    async fn start(
        &self,
        assign: wire::Assign,
        payloads: &mut Assembler,
        out: &mpsc::Sender<wire::WorkerMessage>,
        payload_ids: &Arc<AtomicU64>,
        done: &mpsc::UnboundedSender<u64>,
    ) -> anyhow::Result<Active> {
        let id = assign.assignment_id;
        let run = assign
            .run
            .as_ref()
            .and_then(convert::run_from)
            .ok_or_else(|| anyhow::anyhow!("the assignment has no run"))?;
        let definition = payloads
            .take(assign.definition_payload)
            .map_err(anyhow::Error::msg)?
            .ok_or_else(|| anyhow::anyhow!("the assignment has no definition"))?;
        let input = payloads
            .take(assign.input_payload)
            .map_err(anyhow::Error::msg)?
            .unwrap_or(serde_json::Value::Null);
        let integration: Integration = serde_json::from_value(definition)
            .map_err(|e| anyhow::anyhow!("the definition cannot be read: {e}"))?;
        let mut restored = HashMap::new();
        for step in &assign.restored {
            let record = step
                .record
                .as_ref()
                .and_then(convert::step_from)
                .ok_or_else(|| anyhow::anyhow!("a restored step has no record"))?;
            let output = payloads
                .take(step.output_payload)
                .map_err(anyhow::Error::msg)?;
            restored.insert(record.step_key.clone(), Restored { record, output });
        }
        let resumed = !restored.is_empty();
        let journal = Arc::new(RemoteJournal {
            assignment: id,
            out: out.clone(),
            payload_ids: payload_ids.clone(),
            seq: AtomicU64::new(0),
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
            restored,
        });
        let (tenant, run_id) = (run.tenant.clone(), run.run_id.clone());
        self.credentials.hold(&tenant, &run_id, id, out.clone());
        let mut handle = self
            .engine
            .execute(
                run,
                Arc::new(integration),
                Arc::new(input),
                journal.clone(),
                resumed,
            )
            .await
            .inspect_err(|_| self.credentials.release(&tenant, &run_id, id))?;
        let done = done.clone();
        tokio::spawn(async move {
            while handle.next_event().await.is_some() {}
            let _ = done.send(id);
        });
        Ok(Active {
            tenant,
            run_id,
            journal,
        })
    }
}

/// A worker's credentials: none kept. Each is asked of the coordinator for
/// the one request that needs it, on the stream of the session holding the
/// run, and answered only while the run's assignment is this worker's.
#[derive(Debug, Default)]
pub struct StreamCredentials {
    runs: Mutex<HashMap<(String, String), RunLink>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<wire::credential_reply::Result>>>,
    next: AtomicU64,
}

#[derive(Debug, Clone)]
struct RunLink {
    assignment: u64,
    out: mpsc::Sender<wire::WorkerMessage>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl StreamCredentials {
    fn hold(
        &self,
        tenant: &str,
        run_id: &str,
        assignment: u64,
        out: mpsc::Sender<wire::WorkerMessage>,
    ) {
        locked(&self.runs).insert(
            (tenant.to_owned(), run_id.to_owned()),
            RunLink { assignment, out },
        );
    }

    fn release(&self, tenant: &str, run_id: &str, assignment: u64) {
        let mut runs = locked(&self.runs);
        let key = (tenant.to_owned(), run_id.to_owned());
        if runs
            .get(&key)
            .is_some_and(|link| link.assignment == assignment)
        {
            runs.remove(&key);
        }
    }

    fn answer(&self, reply: wire::CredentialReply) {
        let waiter = locked(&self.pending).remove(&reply.request_id);
        if let (Some(waiter), Some(result)) = (waiter, reply.result) {
            let _ = waiter.send(result);
        }
    }

    /// The session ended: no run is held, no answer will come.
    fn forget_all(&self) {
        locked(&self.runs).clear();
        locked(&self.pending).clear();
    }
}

impl Credentials for StreamCredentials {
    fn credential<'a>(
        &'a self,
        tenant: &'a str,
        run_id: &'a str,
        name: &'a str,
    ) -> CredentialFuture<'a> {
        Box::pin(self.ask(tenant, run_id, name, String::new()))
    }

    /// Asks again naming the refused token by its hash: the coordinator
    /// renews it (once, however many workers ask) unless it already has.
    fn renewed<'a>(
        &'a self,
        tenant: &'a str,
        run_id: &'a str,
        name: &'a str,
        rejected: &'a Secret,
    ) -> CredentialFuture<'a> {
        let rejected = oauth2::sha256_hex(rejected.expose().as_bytes());
        Box::pin(self.ask(tenant, run_id, name, rejected))
    }
}

impl StreamCredentials {
    async fn ask(
        &self,
        tenant: &str,
        run_id: &str,
        name: &str,
        rejected_sha256: String,
    ) -> Result<Option<Credential>, CredentialError> {
        {
            use wire::credential_reply::Result as Reply;
            let link = locked(&self.runs)
                .get(&(tenant.to_owned(), run_id.to_owned()))
                .cloned()
                .ok_or_else(|| CredentialError("this worker no longer holds the run".into()))?;
            let request_id = self.next.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            locked(&self.pending).insert(request_id, tx);
            let asked = link
                .out
                .send(worker_message(Out::CredentialRequest(
                    wire::CredentialRequest {
                        request_id,
                        assignment_id: link.assignment,
                        name: name.to_owned(),
                        rejected_sha256,
                    },
                )))
                .await;
            let unreachable = || CredentialError("the coordinator is unreachable".into());
            if asked.is_err() {
                locked(&self.pending).remove(&request_id);
                return Err(unreachable());
            }
            match rx.await.map_err(|_| unreachable())? {
                Reply::Credential(message) => convert::credential_from_worker(message)
                    .map(Some)
                    .map_err(|why| {
                        CredentialError(format!(
                            "the coordinator sent an unreadable credential: {why}"
                        ))
                    }),
                Reply::NotFound(_) => Ok(None),
                Reply::Error(why) => Err(CredentialError(why)),
            }
        }
    }
}

/// A status's message with its causes: a TLS alert from the coordinator
/// (a refused certificate) is in a source, behind "transport error".
fn status_text(status: &tonic::Status) -> String {
    super::with_causes(
        status.message().to_owned(),
        std::error::Error::source(status),
    )
}

fn worker_message(kind: Out) -> wire::WorkerMessage {
    wire::WorkerMessage { kind: Some(kind) }
}

/// A run's journal on a worker: each write travels to the coordinator and
/// is durable once it is acknowledged.
struct RemoteJournal {
    assignment: u64,
    out: mpsc::Sender<wire::WorkerMessage>,
    payload_ids: Arc<AtomicU64>,
    seq: AtomicU64,
    pending: Mutex<HashMap<u64, oneshot::Sender<Result<(), String>>>>,
    closed: AtomicBool,
    restored: HashMap<String, Restored>,
}

impl RemoteJournal {
    fn settle(&self, seq: u64, result: Result<(), String>) {
        let waiter = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&seq);
        if let Some(waiter) = waiter {
            let _ = waiter.send(result);
        }
    }

    /// No more writes: the run is no longer this worker's.
    fn close(&self, why: &str) {
        self.closed.store(true, Ordering::Release);
        let waiters: Vec<_> = self
            .pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain()
            .collect();
        for (_, waiter) in waiters {
            let _ = waiter.send(Err(why.to_owned()));
        }
    }
}

impl Journal for RemoteJournal {
    fn restored(&self, step_key: &str) -> Result<Option<Restored>, JournalError> {
        Ok(self.restored.get(step_key).cloned())
    }

    fn write(&self, write: JournalWrite) -> JournalFuture {
        if self.closed.load(Ordering::Acquire) {
            return Box::pin(async {
                Err(JournalError::Unavailable(
                    "the run is no longer this worker's".to_owned(),
                ))
            });
        }
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(seq, tx);
        let out = self.out.clone();
        let ids = self.payload_ids.clone();
        let assignment = self.assignment;
        Box::pin(async move {
            let mut messages = Vec::new();
            // Chunks of `output` ahead of the checkpoint; its payload id (0: none).
            let mut attach = |output: &Option<Arc<serde_json::Value>>| match output {
                Some(output) => {
                    let id = ids.fetch_add(1, Ordering::Relaxed);
                    messages.extend(payload::chunks(id, output).map(Out::Chunk));
                    id
                }
                None => 0,
            };
            let steps: Vec<_> = write
                .steps
                .iter()
                .map(|(record, output)| wire::StepCheckpoint {
                    record: Some(convert::step(record)),
                    output_payload: attach(output),
                })
                .collect();
            let (kind, output_payload) = match &write.kind {
                WriteKind::Checkpoint => (wire::CheckpointKind::Steps, 0),
                WriteKind::Logs => (wire::CheckpointKind::Logs, 0),
                WriteKind::Finish { output } => (wire::CheckpointKind::Finish, attach(output)),
            };
            messages.push(Out::Checkpoint(wire::Checkpoint {
                assignment_id: assignment,
                seq,
                kind: kind as i32,
                run: Some(convert::run(&write.run, &[])),
                steps,
                logs: write.logs.iter().map(convert::log).collect(),
                output_payload,
            }));
            for kind in messages {
                if out.send(worker_message(kind)).await.is_err() {
                    return Err(JournalError::Unavailable(
                        "the coordinator is unreachable".to_owned(),
                    ));
                }
            }
            match rx.await {
                Ok(Ok(())) => Ok(()),
                Ok(Err(why)) => Err(JournalError::Unavailable(why)),
                Err(_) => Err(JournalError::Unavailable(
                    "the coordinator is unreachable".to_owned(),
                )),
            }
        })
    }
}
