//! Membership and leadership in etcd. Nothing here is on a run's path: a
//! node writes to etcd when it joins (and again if it lost its lease), the
//! coordinator campaigns once and watches the workers' keys.
//!
//! Keys, under the configured prefix (default `/isoflow`):
//!
//! | key | value | lease |
//! | --- | --- | --- |
//! | `<prefix>/workers/<node id>` | the worker's capacity, JSON | the worker's |
//! | `<prefix>/coordinators/<node id>` | the coordinator's address | its own |
//! | `<prefix>/election` (etcd election) | the leader's address | the leader's |
//!
//! etcd may be reached over TLS (`etcd.ca`, and a client certificate with
//! `etcd.cert`/`etcd.key`) and with a user (`etcd.user`, whose role needs
//! read and write on the prefix). The client authenticates when it
//! connects and again whenever etcd says its token expired (a restarted
//! etcd forgets every token). Refused credentials stop the node at start,
//! with etcd's sentence; an unreachable etcd is waited for.

use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, ConnectOptions, EventType, GetOptions, PutOptions, WatchOptions};
use tokio::sync::watch;

use super::coordinator::Coordinator;
use crate::config;

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
    ttl: Duration,
}

impl std::fmt::Debug for Etcd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Etcd")
            .field("prefix", &self.prefix)
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Etcd {
    /// Connects, retrying until etcd answers (a node may start before it),
    /// and reads the prefix once, so that credentials etcd refuses (a wrong
    /// password, no user where etcd wants one, a role without the prefix)
    /// are an error now, not a node that silently never registers.
    pub async fn connect(config: &config::Etcd) -> anyhow::Result<Etcd> {
        let endpoints = &config.endpoints;
        let prefix = config.prefix.trim_end_matches('/').to_owned();
        // No per-call time-out: a campaign waits for as long as another
        // coordinator leads. A dead connection is found by HTTP/2 pings.
        let mut options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        if let Some(tls) = super::tls::etcd(config)? {
            options = options.with_tls(tls);
        }
        let credentials = config.credentials()?;
        let user = credentials.as_ref().map(|(user, _)| user.clone());
        if let Some((user, password)) = credentials {
            // etcd's simple tokens expire after 5 idle minutes and die with
            // the etcd process: authenticate again when one is refused.
            options = options
                .with_user(user, password.0)
                .with_auto_token_refresh(true);
        }
        let mut logged = false;
        loop {
            let attempt = async {
                let mut client = Client::connect(endpoints, Some(options.clone())).await?;
                client
                    .get(
                        format!("{prefix}/"),
                        Some(GetOptions::new().with_prefix().with_count_only()),
                    )
                    .await?;
                Ok::<_, etcd_client::Error>(client)
            };
            match attempt.await {
                Ok(client) => {
                    return Ok(Etcd {
                        client,
                        prefix,
                        ttl: config.lease_ttl,
                    });
                }
                Err(etcd_client::Error::GRpcStatus(status)) if refusal(&status) => {
                    let who = match &user {
                        Some(user) => format!("as user {user:?}"),
                        None => "without a user (etcd.user)".to_owned(),
                    };
                    anyhow::bail!(
                        "etcd at {} refused access to the keys under {prefix}/ {who}: {}",
                        endpoints.join(", "),
                        status.message()
                    );
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!(
                            ?endpoints,
                            "cannot reach etcd yet, retrying: {}",
                            describe(&e)
                        );
                        logged = true;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
            }
        }
    }

    fn election(&self) -> String {
        format!("{}/election", self.prefix)
    }

    pub fn worker_key(&self, id: &str) -> String {
        format!("{}/workers/{id}", self.prefix)
    }

    pub fn coordinator_key(&self, id: &str) -> String {
        format!("{}/coordinators/{id}", self.prefix)
    }

    /// Keeps `key = value` registered under a lease, in the background,
    /// registering again whenever the lease was lost (etcd was away for
    /// longer than the lease's time to live). The receiver sees each lease
    /// as it is granted, and `None` while there is none.
    pub fn register(&self, key: String, value: String) -> watch::Receiver<Option<i64>> {
        let (tx, rx) = watch::channel(None);
        let mut client = self.client.clone();
        let ttl = self.ttl;
        tokio::spawn(async move {
            let ttl_secs = i64::try_from(ttl.as_secs()).unwrap_or(i64::MAX).max(2);
            loop {
                let lease = match client.lease_grant(ttl_secs, None).await {
                    Ok(lease) => lease.id(),
                    Err(_) => {
                        tokio::time::sleep(Duration::from_millis(300)).await;
                        continue;
                    }
                };
                let put = client
                    .put(
                        key.as_str(),
                        value.as_str(),
                        Some(PutOptions::new().with_lease(lease)),
                    )
                    .await;
                if put.is_err() {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                }
                tracing::info!(%key, lease, "registered in etcd");
                // Kept up for the life of the process, watched or not.
                tx.send_replace(Some(lease));
                keep_alive(&mut client, lease, ttl).await;
                tracing::warn!(%key, lease, "etcd lease lost; registering again");
                tx.send_replace(None);
            }
        });
        rx
    }

    /// Waits until this node leads the election (under `lease`), with
    /// `address` as the leader's value for workers to find.
    /// Retries while etcd is unreachable.
    pub async fn campaign(&self, address: &str, lease: i64) -> anyhow::Result<()> {
        let mut client = self.client.clone();
        loop {
            match client.campaign(self.election(), address, lease).await {
                Ok(_) => return Ok(()),
                Err(etcd_client::Error::GRpcStatus(status))
                    if status.code() == tonic::Code::NotFound =>
                {
                    // The lease expired while waiting: it cannot lead.
                    anyhow::bail!("etcd election campaign: {}", status.message());
                }
                Err(e) => {
                    tracing::warn!("etcd election campaign: {e}; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    /// The leading coordinator's address.
    pub async fn leader(&self) -> anyhow::Result<String> {
        let mut client = self.client.clone();
        let response = client
            .leader(self.election())
            .await
            .context("no coordinator leads the election in etcd")?;
        let kv = response
            .kv()
            .context("no coordinator leads the election in etcd")?;
        Ok(kv.value_str()?.to_owned())
    }

    /// Removes from `coordinator` every worker whose key disappears (its
    /// lease expired). Runs until the process ends.
    pub fn watch_workers(&self, coordinator: std::sync::Arc<Coordinator>) {
        let mut client = self.client.clone();
        let prefix = format!("{}/workers/", self.prefix);
        tokio::spawn(async move {
            loop {
                let stream = client
                    .watch(prefix.as_str(), Some(WatchOptions::new().with_prefix()))
                    .await;
                let Ok(mut stream) = stream else {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    continue;
                };
                while let Ok(Some(response)) = stream.message().await {
                    for event in response.events() {
                        if event.event_type() != EventType::Delete {
                            continue;
                        }
                        let Some(key) = event.kv().and_then(|kv| kv.key_str().ok()) else {
                            continue;
                        };
                        if let Some(worker) = key.strip_prefix(&prefix) {
                            coordinator.remove_worker(worker, None, "its etcd lease expired");
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        });
    }
}

/// etcd said no to who is asking (as opposed to: not reachable, no leader).
fn refusal(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::InvalidArgument
            | tonic::Code::PermissionDenied
            | tonic::Code::Unauthenticated
            | tonic::Code::FailedPrecondition
    )
}

/// An etcd client error with its causes (a TLS failure is in a source).
fn describe(error: &etcd_client::Error) -> String {
    match error {
        etcd_client::Error::GRpcStatus(status) => super::with_causes(
            status.message().to_owned(),
            std::error::Error::source(status),
        ),
        etcd_client::Error::TransportError(e) => {
            super::with_causes(e.to_string(), std::error::Error::source(e))
        }
        other => other.to_string(),
    }
}

/// Keeps `lease` alive; returns once etcd says it is gone.
async fn keep_alive(client: &mut Client, lease: i64, ttl: Duration) {
    let every = ttl / 3;
    loop {
        let Ok((mut keeper, mut stream)) = client.lease_keep_alive(lease).await else {
            tokio::time::sleep(Duration::from_millis(300)).await;
            continue;
        };
        loop {
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(every.max(Duration::from_millis(500)), stream.message())
                .await
            {
                Ok(Ok(Some(response))) if response.ttl() > 0 => {}
                Ok(Ok(Some(_))) => return,
                // etcd unreachable: keep trying with the same lease; when
                // etcd is back it either still has it or says it expired.
                _ => break,
            }
            tokio::time::sleep(every).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
