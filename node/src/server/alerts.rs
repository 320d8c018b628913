//! Alerts: when a run ends failed, or slower than a threshold, the
//! integration's `alerts:` are posted as signed JSON (HMAC-SHA256 in
//! `X-Isoflow-Signature`, as webhooks are signed) by the serving
//! coordinator, through the node's egress policy.
//!
//! One alert per integration and cause per [`THROTTLE`]: the ones held
//! back in that window are counted in the next (`suppressed`). A post that
//! fails or answers 5xx is tried again ([`ATTEMPTS`] in all).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isoflow_engine::action::http;
use isoflow_engine::model::{Alert, AlertOn, Integration};
use isoflow_engine::store::{RunRecord, RunStatus};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::coordinator::{Coordinator, UpdateKind};

/// The shortest time between two alerts of one integration and cause.
pub const THROTTLE: Duration = Duration::from_secs(60);
/// Posts of one alert, the first included.
pub const ATTEMPTS: u32 = 3;

/// Each (tenant, integration, cause)'s throttle window.
type Windows = Mutex<HashMap<(String, String, AlertOn), Window>>;

#[derive(Default)]
struct Window {
    sent: Option<Instant>,
    suppressed: u64,
}

/// Watches runs end and sends their alerts until `stop`.
pub async fn run(
    coordinator: Arc<Coordinator>,
    client: http::Client,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let client = Arc::new(client);
    let windows: Arc<Windows> = Arc::default();
    let mut updates = coordinator.subscribe();
    loop {
        let update = tokio::select! {
            update = updates.recv() => update,
            _ = stop.wait_for(|stop| *stop) => return,
        };
        let update = match update {
            Ok(update) => update,
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(
                    missed,
                    "alerts: run updates were missed; their alerts are not sent"
                );
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        if !matches!(update.kind, UpdateKind::Finished) {
            continue;
        }
        let (coordinator, client, windows) = (coordinator.clone(), client.clone(), windows.clone());
        tokio::spawn(async move {
            if let Err(e) = on_finished(
                &coordinator,
                &client,
                &windows,
                &update.tenant,
                &update.run_id,
            )
            .await
            {
                tracing::error!(run_id = %update.run_id, "alerts: {e:#}");
            }
        });
    }
}

async fn on_finished(
    coordinator: &Coordinator,
    client: &http::Client,
    windows: &Windows,
    tenant: &str,
    run_id: &str,
) -> anyhow::Result<()> {
    let store = coordinator.store.clone();
    let (t, r) = (tenant.to_owned(), run_id.to_owned());
    let found = tokio::task::spawn_blocking(move || {
        Ok::<_, anyhow::Error>((store.run(&t, &r)?, store.run_definition(&t, &r)?))
    })
    .await??;
    let (Some(run), Some(definition)) = found else {
        return Ok(());
    };
    let Ok(definition) = serde_json::from_value::<Integration>(definition) else {
        return Ok(());
    };
    for alert in &definition.alerts {
        if !applies(alert, &run) {
            continue;
        }
        let suppressed = {
            let mut windows = windows
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let window = windows
                .entry((tenant.to_owned(), run.integration.clone(), alert.on))
                .or_default();
            if window.sent.is_some_and(|sent| sent.elapsed() < THROTTLE) {
                window.suppressed += 1;
                continue;
            }
            window.sent = Some(Instant::now());
            std::mem::take(&mut window.suppressed)
        };
        send(coordinator, client, alert, &run, suppressed).await;
    }
    Ok(())
}

/// Whether `alert` is for how `run` ended.
fn applies(alert: &Alert, run: &RunRecord) -> bool {
    match alert.on {
        AlertOn::Failed => run.status == RunStatus::Failed,
        AlertOn::Slow => alert.threshold.is_some_and(|t| {
            run.updated_at_ms.saturating_sub(run.created_at_ms)
                > u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
        }),
    }
}

async fn send(
    coordinator: &Coordinator,
    client: &http::Client,
    alert: &Alert,
    run: &RunRecord,
    suppressed: u64,
) {
    let cause = match alert.on {
        AlertOn::Failed => "failed",
        AlertOn::Slow => "slow",
    };
    let secret = match coordinator
        .tenant_secret(&run.tenant, alert.secret.as_str())
        .await
    {
        Ok(Some(secret)) => secret,
        _ => {
            tracing::warn!(tenant = %run.tenant, secret = alert.secret.as_str(), "alert not sent: its signing credential is missing");
            return;
        }
    };
    let body = json!({
        "cause": cause,
        "tenant": run.tenant,
        "integration": run.integration,
        "version": run.version,
        "run_id": run.run_id,
        "status": run.status.as_str(),
        "error": run.error,
        "duration_ms": run.updated_at_ms.saturating_sub(run.created_at_ms),
        "suppressed": suppressed,
    });
    let text = body.to_string();
    let time = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let mut request = http::Request::get(alert.webhook.clone());
    request.method = http::Method::Post;
    request.headers = vec![
        ("Content-Type".into(), "application/json".into()),
        (
            "X-Isoflow-Signature".into(),
            super::hooks::sign(secret.expose().as_bytes(), time, text.as_bytes()),
        ),
    ];
    request.body = Some(http::Body::Text(text));
    request.timeout = Duration::from_secs(10);
    request.max_response_bytes = 64 * 1024;
    request.tenant = run.tenant.clone();
    request.idempotency_key = Some(format!("alert/{}/{cause}", run.run_id));
    for attempt in 1..=ATTEMPTS {
        match client.send(&request).await {
            Ok(_) => {
                tracing::info!(run_id = %run.run_id, cause, "alert sent");
                return;
            }
            Err(e) if attempt < ATTEMPTS && e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::warn!(run_id = %run.run_id, cause, "alert not sent: {e}");
                return;
            }
        }
    }
}
