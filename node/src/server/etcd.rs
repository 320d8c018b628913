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

use std::time::Duration;

use anyhow::Context;
use etcd_client::{Client, ConnectOptions, EventType, PutOptions, WatchOptions};
use tokio::sync::watch;

use super::coordinator::Coordinator;

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
    /// Connects, retrying until etcd answers (a node may start before it).
    pub async fn connect(endpoints: &[String], prefix: &str, ttl: Duration) -> Etcd {
        // No per-call time-out: a campaign waits for as long as another
        // coordinator leads. A dead connection is found by HTTP/2 pings.
        let options = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2));
        let mut logged = false;
        loop {
            match Client::connect(endpoints, Some(options.clone())).await {
                Ok(client) => {
                    return Etcd {
                        client,
                        prefix: prefix.trim_end_matches('/').to_owned(),
                        ttl,
                    };
                }
                Err(e) => {
                    if !logged {
                        tracing::warn!(?endpoints, "cannot reach etcd yet, retrying: {e}");
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
