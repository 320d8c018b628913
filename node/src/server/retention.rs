//! Retention: the serving coordinator (or `all` node) deletes finished runs
//! older than their tenant's retention (its quota, else `retention.keep`),
//! every `retention.sweep_interval`.
//!
//! A sweep deletes at most [`BATCH`] runs per store write and goes on until
//! none is left, then compacts the store so that the space comes back
//! (`Store::compact`). Unfinished runs are never deleted, however old; a
//! run counts from when it ended. What a sweep deleted is logged with the
//! store folder's size before and after.

use std::sync::Arc;
use std::time::Duration;

use isoflow_engine::store::now_ms;

use super::coordinator::Coordinator;

/// Runs deleted per store write.
const BATCH: usize = 1_000;

/// Sweeps every `every` until `stop`; does nothing while no tenant has a
/// retention and `default` is unset.
pub async fn run(
    coordinator: Arc<Coordinator>,
    default: Option<Duration>,
    every: Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let mut pass = tokio::time::interval(every);
    pass.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = pass.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let coordinator = coordinator.clone();
        match tokio::task::spawn_blocking(move || sweep(&coordinator, default, now_ms())).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::error!("retention: {e:#}"),
            Err(e) => tracing::error!("retention: {e}"),
        }
    }
}

/// One sweep at `now` (ms since 1970): deletes every finished run past its
/// tenant's retention and compacts the store if any was. Returns how many
/// runs were deleted.
pub fn sweep(
    coordinator: &Coordinator,
    default: Option<Duration>,
    now: u64,
) -> anyhow::Result<usize> {
    let tenants = &coordinator.tenants;
    let store = &coordinator.store;
    let cutoff = |tenant: &str| {
        tenants
            .retention(tenant, default)
            .map(|keep| now.saturating_sub(u64::try_from(keep.as_millis()).unwrap_or(u64::MAX)))
    };
    let before = store.disk_usage();
    let mut deleted = 0;
    loop {
        let expired = store.expired_runs(cutoff, BATCH)?;
        if expired.is_empty() {
            break;
        }
        let mut by_tenant: std::collections::BTreeMap<String, Vec<String>> =
            std::collections::BTreeMap::new();
        for (tenant, run_id) in expired {
            by_tenant.entry(tenant).or_default().push(run_id);
        }
        let mut this_pass = 0;
        for (tenant, run_ids) in &by_tenant {
            let n = store.delete_runs(tenant, run_ids)?;
            tracing::info!(tenant, runs = n, "retention: runs deleted");
            this_pass += n;
        }
        deleted += this_pass;
        if this_pass == 0 {
            break;
        }
    }
    if deleted > 0 {
        store.compact()?;
        let after = store.disk_usage();
        tracing::info!(
            runs = deleted,
            bytes_before = before,
            bytes_after = after,
            "retention: store compacted"
        );
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use isoflow_engine::store::{RunRecord, RunStatus, Store, StoreConfig, TenantQuotas};

    #[tokio::test]
    async fn a_sweep_deletes_by_each_tenants_retention_and_keeps_unfinished_runs() {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = Arc::new(Store::open(&StoreConfig::new(dir.path())).expect("store"));
        let coordinator =
            Coordinator::new("c".into(), store.clone(), None, 1 << 20, 0).expect("new");
        coordinator
            .tenants
            .create(
                "keeper",
                TenantQuotas {
                    retention_seconds: Some(0),
                    ..TenantQuotas::default()
                },
            )
            .expect("created");
        coordinator
            .tenants
            .create(
                "brief",
                TenantQuotas {
                    retention_seconds: Some(60),
                    ..TenantQuotas::default()
                },
            )
            .expect("created");
        let day = Duration::from_secs(86_400);
        let now = now_ms();
        let mut made = Vec::new();
        for (tenant, ended_ago_ms, finished) in [
            ("acme", 2 * 86_400_000, true),  // past the default day
            ("acme", 3_600_000, true),       // within it
            ("acme", 2 * 86_400_000, false), // old, but still running
            ("keeper", 2 * 86_400_000, true),
            ("brief", 120_000, true), // past its own minute
        ] {
            let mut run = RunRecord::new(tenant, "sync", 1);
            run.created_at_ms = 0;
            store
                .create_run(&run, &serde_json::json!({}), &serde_json::Value::Null)
                .expect("stored");
            if finished {
                run.status = RunStatus::Succeeded;
                run.updated_at_ms = now - ended_ago_ms;
                store.update_run(&run, None).expect("stored");
            }
            made.push(run);
        }
        assert_eq!(sweep(&coordinator, Some(day), now).expect("swept"), 2);
        let left: Vec<bool> = made
            .iter()
            .map(|r| store.run(&r.tenant, &r.run_id).expect("read").is_some())
            .collect();
        assert_eq!(left, [false, true, true, true, false]);
        assert_eq!(
            sweep(&coordinator, None, now).expect("swept"),
            0,
            "no default: acme keeps"
        );
    }
}
