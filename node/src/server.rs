//! `isoflow serve`: a node of a cluster, or the whole of one.
//!
//! - `all`: one process, no etcd. The coordinator's API with this process's
//!   own engine as its only worker.
//! - `coordinator`: registers in etcd and campaigns; once it leads, opens
//!   the run store, serves the public API and the workers' API, queues and
//!   assigns runs, and stores every checkpoint workers report. A standby
//!   waits in the election and opens the store only when it leads.
//! - `worker`: registers in etcd, finds the leader, takes runs.
//!
//! With `[tls]` the listener speaks only TLS; a coordinator's workers then
//! connect with mutual TLS (`[worker.tls]`), each known by its certificate.
//! etcd may be reached over TLS, with a user and password.
//!
//! Where to look next: `server/coordinator.rs` (assignments, checkpoints),
//! `server/scheduler.rs` (which run goes where and when: queues, turns
//! between tenants, worker slots),
//! `server/cluster.rs` (the coordinator's side of a worker's stream),
//! `server/worker.rs` (the worker's side), `server/api.rs` (the public API),
//! `server/admin.rs` and `server/tenants.rs` (tenants, their tokens and
//! quotas), `server/retention.rs` (deleting old runs),
//! `server/etcd.rs` (membership and election), `server/tls.rs` (certificates).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use isoflow_engine::credential::vault::Vault;
use isoflow_engine::credential::{Credentials, StaticCredentials};
use isoflow_engine::run::{Engine, EngineConfig};
use isoflow_engine::store::{Store, StoreConfig};
use isoflow_proto::MAX_MESSAGE_BYTES;
use isoflow_proto::cluster::v1::cluster_server::ClusterServer;
use isoflow_proto::v1::admin_server::AdminServer;
use isoflow_proto::v1::isoflow_server::IsoflowServer;
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;

use crate::config::{Config, Role};

pub mod admin;
pub mod alerts;
pub mod api;
pub mod auth;
pub mod cluster;
pub mod convert;
pub mod coordinator;
pub mod cron;
pub mod etcd;
pub mod hooks;
mod oauth;
pub mod observe;
pub mod page;
pub mod payload;
pub mod retention;
pub mod scheduler;
pub mod tenants;
pub mod tls;
pub mod worker;

use coordinator::Coordinator;

/// `text`, then each cause in `source`'s chain that it does not already
/// say: where the useful part of a transport or TLS error is.
pub(crate) fn with_causes(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// How long in-flight steps get to finish when a node is asked to stop.
const GRACE: Duration = Duration::from_secs(10);

fn engine_config(
    config: &Config,
    data_dir: &std::path::Path,
    credentials: Arc<dyn Credentials>,
) -> anyhow::Result<EngineConfig> {
    let mut engine = EngineConfig::new(data_dir);
    engine.egress = config.egress.policy()?;
    engine.credentials = credentials;
    engine.max_payload_bytes = config.max_payload_bytes;
    engine.sandbox = config.sandbox.engine_config();
    engine.telemetry = Arc::new(crate::telemetry::NodeTelemetry);
    Ok(engine)
}

/// The vault over `store`, when a key is configured; opening it reseals
/// what previous keys sealed.
fn open_vault(config: &Config, store: &Arc<Store>) -> anyhow::Result<Option<Arc<Vault>>> {
    let Some(keyring) = &config.keyring else {
        return Ok(None);
    };
    let vault = Vault::open(store.clone(), keyring.clone())?;
    vault.observe_renewals(|ok| crate::telemetry::metrics::get().credential_refresh(ok));
    // OAuth2 token endpoints are reached as any step's request would be.
    vault.renew_with(
        isoflow_engine::action::http::Client::new(&config.egress.policy()?)
            .map_err(|e| anyhow::anyhow!("cannot make the token endpoints' http client: {e}"))?,
    );
    Ok(Some(Arc::new(vault)))
}

fn data_dir(config: &Config, home: Option<&std::path::Path>) -> anyhow::Result<std::path::PathBuf> {
    match (&config.data_dir, home) {
        (Some(dir), _) => Ok(dir.clone()),
        (None, Some(home)) => Ok(home.join(".local/share/isoflow")),
        (None, None) => {
            anyhow::bail!("neither data_dir, --data-dir, ISOFLOW_DATA_DIR nor HOME is set")
        }
    }
}

/// Serves until `stop` turns true.
pub async fn serve(
    config: Config,
    home: Option<std::path::PathBuf>,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let id = config.node_id();
    let metrics = crate::telemetry::metrics::get();
    // The HTTP listener serves health and metrics from the start, webhooks
    // once this node has a coordinator (`late`).
    let health = observe::Health::new("starting");
    let late: Option<observe::Late> = match config.role {
        Role::Worker => None,
        Role::All | Role::Coordinator => Some(observe::Late::default()),
    };
    let coordinating: Arc<std::sync::OnceLock<Arc<Coordinator>>> = Arc::default();
    let refresh: Option<Arc<dyn Fn() + Send + Sync>> = match config.role {
        Role::Worker => None,
        Role::All | Role::Coordinator => {
            let coordinating = coordinating.clone();
            Some(Arc::new(move || {
                if let Some(coordinator) = coordinating.get() {
                    coordinator.observe_gauges();
                }
            }))
        }
    };
    let exposition = crate::telemetry::metrics::Exposition::new(
        metrics.registry(config.role != Role::Worker),
        refresh,
    );
    let http = match config.http.listen {
        Some(address) => {
            let listener = tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address} (http.listen)"))?;
            eprintln!(
                "isoflow: http listener on {}: /metrics, /healthz, /readyz",
                listener.local_addr()?
            );
            let router = observe::router(
                health.clone(),
                exposition,
                config.http.metrics_token.clone(),
                late.clone(),
            );
            Some(tokio::spawn(observe::serve(listener, router, stop.clone())))
        }
        None => None,
    };
    let served = serve_role(config, home, stop, id, health, late, coordinating).await;
    if let Some(http) = http {
        http.await??;
    }
    served
}

async fn serve_role(
    config: Config,
    home: Option<std::path::PathBuf>,
    stop: watch::Receiver<bool>,
    id: String,
    health: observe::Health,
    late: Option<observe::Late>,
    coordinating: Arc<std::sync::OnceLock<Arc<Coordinator>>>,
) -> anyhow::Result<()> {
    match config.role {
        Role::All => {
            let tls = tls::server(&config.tls)?;
            let dir = data_dir(&config, home.as_deref())?;
            let store = Arc::new(Store::open(&StoreConfig::new(&dir))?);
            let vault = open_vault(&config, &store)?;
            let credentials: Arc<dyn Credentials> = match &vault {
                Some(vault) => vault.clone(),
                None => Arc::new(StaticCredentials::default()),
            };
            let coordinator = Coordinator::new(
                id,
                store.clone(),
                vault,
                config.max_payload_bytes,
                config.cluster.tenant_runs_in_flight,
            )?;
            let engine =
                Engine::with_store(engine_config(&config, &dir, credentials)?, Some(store)).await?;
            coordinator.add_local(config.worker.capacity, engine.clone());
            let _ = coordinating.set(coordinator.clone());
            health.set(true, "the run store is open");
            let served = serve_grpc(&config, tls, coordinator, None, stop, &health, late).await;
            engine.shutdown(GRACE).await;
            served
        }
        Role::Coordinator => {
            // Read now, not once leading: a standby with a wrong file says
            // so at start.
            let tls = tls::server(&config.tls)?;
            if tls.is_none() {
                tracing::warn!(
                    "serving without TLS: API tokens, the cluster token and every payload \
                     cross the network in the clear; set [tls] in production"
                );
            }
            // Until it leads, a coordinator waits (for etcd, then for the
            // leader to go): a stop request ends the wait.
            let mut waiting = stop.clone();
            let Some(etcd) = unless_stopped(&mut waiting, etcd::Etcd::connect(&config.etcd)).await
            else {
                return Ok(());
            };
            let etcd = etcd?;
            let address = config.advertise();
            let mut lease = etcd.register(etcd.coordinator_key(&id), address.clone());
            let granted = unless_stopped(&mut waiting, async {
                loop {
                    if let Some(lease) = *lease.borrow_and_update() {
                        break Ok::<_, anyhow::Error>(lease);
                    }
                    lease.changed().await.context("etcd registration stopped")?;
                }
            });
            let Some(granted) = granted.await else {
                return Ok(());
            };
            let granted: i64 = granted?;
            tracing::info!(node = %id, "waiting to lead");
            health.set(
                false,
                "standby: waiting in the election; another coordinator leads, or none was elected yet",
            );
            // A standby answers health checks on its gRPC listener (NOT_SERVING)
            // and nothing else; the listener is free again once it leads.
            let (standby_stop, standby_stopped) = tokio::sync::oneshot::channel::<()>();
            let standby = serve_health_only(&config, tls.clone(), &health, standby_stopped).await?;
            // A stop request ends the wait.
            let campaigned = unless_stopped(&mut waiting, etcd.campaign(&address, granted)).await;
            let _ = standby_stop.send(());
            standby.await??;
            let Some(campaigned) = campaigned else {
                return Ok(());
            };
            campaigned?;
            tracing::info!(node = %id, %address, "leading: opening the run store");
            let dir = data_dir(&config, home.as_deref())?;
            let store = Arc::new(Store::open(&StoreConfig::new(&dir))?);
            let vault = open_vault(&config, &store)?;
            let coordinator = Coordinator::new(
                id.clone(),
                store,
                vault,
                config.max_payload_bytes,
                config.cluster.tenant_runs_in_flight,
            )?;
            etcd.watch_workers(coordinator.clone());
            let _ = coordinating.set(coordinator.clone());
            health.set(true, "leading; the run store is open");
            let cluster_token = config.auth.cluster_token.clone().unwrap_or_default();
            let lost = async move {
                // Leadership lasts as long as the lease it was won with.
                loop {
                    if lease.changed().await.is_err() {
                        return;
                    }
                    if *lease.borrow() != Some(granted) {
                        return;
                    }
                }
            };
            tokio::select! {
                served = serve_grpc(&config, tls, coordinator, Some(cluster_token), stop, &health, late) => served,
                () = lost => {
                    health.set(false, "lost leadership: its etcd lease expired");
                    anyhow::bail!("lost leadership: the etcd lease it was won with expired; stopping so that a restart campaigns again")
                }
            }
        }
        Role::Worker => {
            // A worker has no store: `with_store(.., None)` ignores the path.
            let dir = std::env::temp_dir();
            let credentials = Arc::new(worker::StreamCredentials::default());
            let engine =
                Engine::with_store(engine_config(&config, &dir, credentials.clone())?, None)
                    .await?;
            let tls = tls::worker(&config.worker.tls)?;
            let discovery: Box<dyn worker::Discovery> = match &config.worker.coordinator {
                Some(address) => Box::new(worker::Fixed(address.clone())),
                None => {
                    let mut waiting = stop.clone();
                    let Some(etcd) =
                        unless_stopped(&mut waiting, etcd::Etcd::connect(&config.etcd)).await
                    else {
                        engine.shutdown(GRACE).await;
                        return Ok(());
                    };
                    let etcd = etcd?;
                    let _registered = etcd.register(
                        etcd.worker_key(&id),
                        format!("{{\"capacity\":{}}}", config.worker.capacity),
                    );
                    Box::new(EtcdDiscovery(etcd))
                }
            };
            let node = worker::WorkerNode {
                id,
                credentials,
                capacity: config.worker.capacity,
                engine,
                token: auth::AddToken::new(
                    config.auth.cluster_token.as_deref().unwrap_or_default(),
                )?,
                discovery,
                tls,
                max_payload_bytes: config.max_payload_bytes,
                heartbeat_timeout: config.cluster.heartbeat_timeout,
                health,
            };
            node.run(stop).await;
            Ok(())
        }
    }
}

/// What `work` gives, or `None` when `stop` turns true first: a node that
/// waits (for etcd to answer, for leadership) still stops when asked.
async fn unless_stopped<T>(
    stop: &mut watch::Receiver<bool>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    if *stop.borrow() {
        return None;
    }
    tokio::select! {
        done = work => Some(done),
        _ = stop.wait_for(|stopped| *stopped) => None,
    }
}

struct EtcdDiscovery(etcd::Etcd);

#[tonic::async_trait]
impl worker::Discovery for EtcdDiscovery {
    async fn coordinator(&self) -> anyhow::Result<String> {
        self.0.leader().await
    }
}

/// A standby coordinator's gRPC listener: the health service alone, until
/// `stopped`.
async fn serve_health_only(
    config: &Config,
    tls: Option<tonic::transport::ServerTlsConfig>,
    health: &observe::Health,
    stopped: tokio::sync::oneshot::Receiver<()>,
) -> anyhow::Result<tokio::task::JoinHandle<anyhow::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.listen))?;
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server
            .tls_config(tls)
            .context("the certificate and key in [tls] cannot be used")?;
    }
    let router = server.add_service(health.grpc());
    Ok(tokio::spawn(async move {
        router
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stopped.await;
                },
            )
            .await?;
        Ok(())
    }))
}

async fn serve_grpc(
    config: &Config,
    tls: Option<tonic::transport::ServerTlsConfig>,
    coordinator: Arc<Coordinator>,
    cluster_token: Option<String>,
    mut stop: watch::Receiver<bool>,
    health: &observe::Health,
    late: Option<observe::Late>,
) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.api.listen))?;
    let address = listener.local_addr()?;
    // Cron triggers fire where the store is: here, while this node serves.
    let schedules = tokio::spawn(cron::run(coordinator.clone(), stop.clone()));
    // Alert webhooks go out through the same egress policy as http steps;
    // alert emails through the operator's SMTP server.
    let channels = alerts::Channels {
        http: isoflow_engine::action::http::Client::new(&config.egress.policy()?)
            .map_err(|e| anyhow::anyhow!("cannot make the alerts' http client: {e}"))?,
        mailer: alerts::Mailer::new(&config.smtp)?,
    };
    let alerts = tokio::spawn(alerts::run(coordinator.clone(), channels, stop.clone()));
    // Old runs are deleted where the store is, too.
    let retention = tokio::spawn(retention::run(
        coordinator.clone(),
        config.retention.keep,
        config.retention.sweep_interval,
        stop.clone(),
    ));
    let tokens = config
        .auth
        .tokens
        .iter()
        .map(|t| (t.tenant.clone(), t.token.clone()));
    let api_auth = auth::ApiAuth::new(tokens).with_tenants(
        coordinator.tenants.clone(),
        config.auth.admin_token.is_some(),
    );
    let admin_auth = auth::AdminAuth::new(
        config.auth.admin_token.as_ref().map(|t| t.0.as_str()),
        api_auth.clone(),
    );
    let public_api = api::Api {
        coordinator: coordinator.clone(),
        limits: config.limits.model(),
        oauth_callback: config.http.oauth_callback(),
    };
    if let (Some(http), Some(late)) = (config.http.listen, late) {
        let mut routes = hooks::routes(coordinator.clone());
        if config.http.console {
            routes = routes.merge(crate::console::router(crate::console::Console::new(
                public_api.clone(),
                api_auth.clone(),
                admin_auth.clone(),
                config.http.public_url.as_deref(),
            )));
            eprintln!("isoflow: console on http://{http}/console");
        }
        let _ = late.set(routes);
        eprintln!("isoflow: webhooks listening on {http}");
    }
    let api = InterceptedService::new(
        IsoflowServer::new(public_api)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
        api_auth.clone(),
    );
    let admin = InterceptedService::new(
        AdminServer::new(admin::AdminService {
            coordinator: coordinator.clone(),
            config_tenants: config
                .auth
                .tokens
                .iter()
                .map(|t| t.tenant.clone())
                .collect(),
        }),
        admin_auth,
    );
    let cluster = cluster_token.map(|token| {
        InterceptedService::new(
            ClusterServer::new(cluster::ClusterService {
                coordinator: coordinator.clone(),
                heartbeat_interval: config.cluster.heartbeat_interval,
                heartbeat_timeout: config.cluster.heartbeat_timeout,
                tls: tls.is_some(),
            })
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES),
            auth::ClusterAuth::new(&token, tls.is_some()),
        )
    });
    let mut server = tonic::transport::Server::builder();
    let scheme = match tls {
        Some(tls) => {
            server = server
                .tls_config(tls)
                .context("the certificate and key in [tls] cannot be used")?;
            "https"
        }
        None => "http",
    };
    // The line scripts and tests wait for.
    eprintln!(
        "isoflow: {} {} listening on {scheme}://{address}",
        config.role_name(),
        coordinator.id
    );
    server
        .add_service(api)
        .add_service(admin)
        .add_optional_service(cluster)
        .add_service(health.grpc())
        // Nagle off on every accepted connection: small messages (an Ack,
        // a step update) must not wait for the peer's delayed ACK.
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            async move {
                let _ = stop.wait_for(|stop| *stop).await;
            },
        )
        .await?;
    schedules.await?;
    alerts.await?;
    retention.await?;
    Ok(())
}
