//! The coordinator's side of the workers' API (`isoflow.v1.Cluster`): one
//! Work stream per connected worker.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use isoflow_engine::run::{JournalWrite, WriteKind};
use isoflow_proto::cluster::v1 as wire;
use isoflow_proto::cluster::v1::cluster_server::Cluster;
use isoflow_proto::cluster::v1::coordinator_message::Kind as Out;
use isoflow_proto::cluster::v1::worker_message::Kind as In;
use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::convert;
use super::coordinator::{ApplyError, Coordinator, Outbound};
use super::payload::{self, Assembler};

/// Credential requests of one worker being answered at once.
const MAX_CREDENTIAL_REQUESTS: usize = 64;

#[derive(Debug, Clone)]
pub struct ClusterService {
    pub coordinator: Arc<Coordinator>,
    pub heartbeat_interval: Duration,
    pub heartbeat_timeout: Duration,
    /// The listener uses TLS: a worker's id must be named by the client
    /// certificate it presented (which `auth::ClusterAuth` requires).
    pub tls: bool,
}

type OutStream = Pin<Box<dyn Stream<Item = Result<wire::CoordinatorMessage, Status>> + Send>>;

fn message(kind: Out) -> Result<wire::CoordinatorMessage, Status> {
    Ok(wire::CoordinatorMessage { kind: Some(kind) })
}

#[tonic::async_trait]
impl Cluster for ClusterService {
    type WorkStream = OutStream;

    async fn work(
        &self,
        request: Request<Streaming<wire::WorkerMessage>>,
    ) -> Result<Response<OutStream>, Status> {
        let certificate = if self.tls {
            let chain = request.peer_certs().unwrap_or_default();
            let Some(first) = chain.first() else {
                // The interceptor (auth::ClusterAuth) refuses this first.
                return Err(Status::unauthenticated(
                    "a worker must present a client certificate signed by the cluster's CA \
                     (the coordinator's tls.client_ca)",
                ));
            };
            Some(first.to_vec())
        } else {
            None
        };
        let mut inbound = request.into_inner();
        let hello = match tokio::time::timeout(self.heartbeat_timeout, inbound.message()).await {
            Ok(Ok(Some(wire::WorkerMessage {
                kind: Some(In::Hello(hello)),
            }))) => hello,
            _ => {
                return Err(Status::invalid_argument(
                    "a Work stream must start with Hello",
                ));
            }
        };
        if hello.worker_id.is_empty() || hello.capacity == 0 {
            return Err(Status::invalid_argument(
                "Hello needs a worker_id and a capacity of at least 1",
            ));
        }
        if let Some(certificate) = &certificate
            && let Err(refused) = super::tls::check_worker_id(&hello.worker_id, certificate)
        {
            tracing::warn!(worker = %hello.worker_id, "worker refused: {}", refused.message());
            return Err(refused);
        }
        let coordinator = self.coordinator.clone();
        let (out_tx, out_rx) = mpsc::channel(32);
        let (link_tx, link_rx) = mpsc::unbounded_channel();
        let worker = hello.worker_id.clone();
        let connection = coordinator.add_worker(&worker, hello.capacity, link_tx.clone());
        let _ = out_tx
            .send(message(Out::Welcome(wire::Welcome {
                coordinator_id: coordinator.id.clone(),
                heartbeat_interval: self.heartbeat_interval.try_into().ok(),
                heartbeat_timeout: self.heartbeat_timeout.try_into().ok(),
            })))
            .await;
        tokio::spawn(write_loop(
            coordinator.clone(),
            link_rx,
            out_tx,
            self.heartbeat_interval,
        ));
        let timeout = self.heartbeat_timeout;
        tokio::spawn(async move {
            let why = read_loop(&coordinator, &worker, &mut inbound, link_tx, timeout).await;
            coordinator.remove_worker(&worker, Some(connection), &why);
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// Sends what the coordinator has for this worker, and heartbeats. Ends
/// when the worker's slot is gone (its link dropped) or the stream closed.
async fn write_loop(
    coordinator: Arc<Coordinator>,
    mut link: mpsc::UnboundedReceiver<Outbound>,
    out: mpsc::Sender<Result<wire::CoordinatorMessage, Status>>,
    heartbeat: Duration,
) {
    let mut tick = tokio::time::interval(heartbeat);
    loop {
        let next = tokio::select! {
            next = link.recv() => next,
            _ = tick.tick() => Some(Outbound::Message(Box::new(Out::Heartbeat(wire::Heartbeat {
                time: isoflow_proto::time::from_ms(isoflow_engine::store::now_ms()),
            })))),
        };
        let Some(next) = next else {
            return;
        };
        match next {
            Outbound::Close => return,
            Outbound::Message(kind) => {
                if out.send(message(*kind)).await.is_err() {
                    return;
                }
            }
            Outbound::Assign(id, key) => {
                let loader = coordinator.clone();
                let loaded = tokio::task::spawn_blocking(move || {
                    Ok::<_, anyhow::Error>((loader.load_run(&key)?, loader.restored_steps(&key)?))
                })
                .await;
                let (loaded, restored_steps) = match loaded {
                    Ok(Ok(loaded)) => loaded,
                    Ok(Err(e)) => {
                        tracing::error!(assignment = id, "cannot load the run: {e:#}");
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(assignment = id, "cannot load the run: {e}");
                        continue;
                    }
                };
                let mut messages = Vec::new();
                let definition = coordinator.next_id();
                messages.extend(payload::chunks(definition, &loaded.definition).map(Out::Chunk));
                let input = coordinator.next_id();
                messages.extend(payload::chunks(input, &loaded.input).map(Out::Chunk));
                let mut restored = Vec::new();
                for (record, output) in &restored_steps {
                    let output_payload = match output {
                        Some(output) => {
                            let id = coordinator.next_id();
                            messages.extend(payload::chunks(id, output).map(Out::Chunk));
                            id
                        }
                        None => 0,
                    };
                    restored.push(wire::StepCheckpoint {
                        record: Some(convert::step(record)),
                        output_payload,
                    });
                }
                messages.push(Out::Assign(wire::Assign {
                    assignment_id: id,
                    run: Some(convert::run(&loaded.run, &[])),
                    definition_payload: definition,
                    input_payload: input,
                    restored,
                }));
                for kind in messages {
                    if out.send(message(kind)).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

/// Reads the worker's messages until its stream ends or it falls silent.
/// Returns why it stopped.
async fn read_loop(
    coordinator: &Arc<Coordinator>,
    worker: &str,
    inbound: &mut Streaming<wire::WorkerMessage>,
    link: mpsc::UnboundedSender<Outbound>,
    timeout: Duration,
) -> String {
    let mut payloads = Assembler::default();
    let credential_requests = Arc::new(tokio::sync::Semaphore::new(MAX_CREDENTIAL_REQUESTS));
    loop {
        let message = match tokio::time::timeout(timeout, inbound.message()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Ok(None)) => return "it closed its stream".to_owned(),
            Ok(Err(status)) => return format!("its stream broke: {}", status.message()),
            Err(_) => return format!("it was silent for {}", humantime::format_duration(timeout)),
        };
        match message.kind {
            Some(In::Heartbeat(_)) | Some(In::Hello(_)) | None => {}
            Some(In::Chunk(chunk)) => {
                if let Err(e) = payloads.add(chunk, coordinator.max_payload_bytes) {
                    return e;
                }
            }
            Some(In::Released(released)) => {
                coordinator.released(worker, released.assignment_id);
            }
            Some(In::CredentialRequest(request)) => {
                use wire::credential_reply::Result as Reply;
                // A worker that asks faster than the vault answers is told
                // so, not queued without bound.
                let Ok(permit) = credential_requests.clone().try_acquire_owned() else {
                    let _ = link.send(Outbound::Message(Box::new(Out::CredentialReply(
                        wire::CredentialReply {
                            request_id: request.request_id,
                            result: Some(Reply::Error(
                                "too many credential requests at once".into(),
                            )),
                        },
                    ))));
                    continue;
                };
                let coordinator = coordinator.clone();
                let link = link.clone();
                let worker = worker.to_owned();
                tokio::spawn(async move {
                    let _permit = permit;
                    let id = request.assignment_id;
                    let rejected = Some(request.rejected_sha256.as_str()).filter(|r| !r.is_empty());
                    let result = match coordinator
                        .credential_for(&worker, id, &request.name, rejected)
                        .await
                    {
                        Ok(Some(credential)) => {
                            Reply::Credential(convert::worker_credential(&credential))
                        }
                        Ok(None) => Reply::NotFound(true),
                        Err(why) => {
                            let name: String = request.name.chars().take(64).collect();
                            tracing::warn!(%worker, assignment = id, credential = %name, "credential refused: {why}");
                            Reply::Error(why)
                        }
                    };
                    let _ = link.send(Outbound::Message(Box::new(Out::CredentialReply(
                        wire::CredentialReply {
                            request_id: request.request_id,
                            result: Some(result),
                        },
                    ))));
                });
            }
            Some(In::Checkpoint(checkpoint)) => {
                let id = checkpoint.assignment_id;
                let seq = checkpoint.seq;
                let write = match journal_write(checkpoint, &mut payloads) {
                    Ok(write) => write,
                    Err(e) => return format!("it sent a checkpoint that cannot be read: {e}"),
                };
                // Checkpoints of different runs are stored concurrently; a
                // run sends its next one only after this one's Ack.
                let coordinator = coordinator.clone();
                let link = link.clone();
                let worker = worker.to_owned();
                tokio::spawn(async move {
                    let reply = match coordinator.apply(&worker, id, seq, write).await {
                        Ok(()) => Out::Ack(wire::Ack {
                            assignment_id: id,
                            seq,
                        }),
                        Err(e @ ApplyError::Stale(_)) => Out::Revoke(wire::Revoke {
                            assignment_id: id,
                            reason: e.to_string(),
                        }),
                        Err(e) => {
                            tracing::error!(assignment = id, "{e}");
                            Out::Revoke(wire::Revoke {
                                assignment_id: id,
                                reason: e.to_string(),
                            })
                        }
                    };
                    let _ = link.send(Outbound::Message(Box::new(reply)));
                });
            }
        }
    }
}

fn journal_write(
    checkpoint: wire::Checkpoint,
    payloads: &mut Assembler,
) -> Result<JournalWrite, String> {
    let run = checkpoint
        .run
        .as_ref()
        .and_then(convert::run_from)
        .ok_or("the run is missing or has no status")?;
    let mut steps = Vec::new();
    for step in &checkpoint.steps {
        let record = step
            .record
            .as_ref()
            .and_then(convert::step_from)
            .ok_or("a step is missing its record or status")?;
        let output = payloads.take(step.output_payload)?.map(Arc::new);
        steps.push((record, output));
    }
    let logs = checkpoint.logs.iter().map(convert::log_from).collect();
    let kind = match wire::CheckpointKind::try_from(checkpoint.kind) {
        Ok(wire::CheckpointKind::Steps) => WriteKind::Checkpoint,
        Ok(wire::CheckpointKind::Logs) => WriteKind::Logs,
        Ok(wire::CheckpointKind::Finish) => WriteKind::Finish {
            output: payloads.take(checkpoint.output_payload)?.map(Arc::new),
        },
        _ => return Err("its kind is not known".to_owned()),
    };
    Ok(JournalWrite {
        run,
        steps,
        logs,
        kind,
    })
}
