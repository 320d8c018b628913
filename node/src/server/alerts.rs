//! Alerts: when a run ends failed, or slower than a threshold, the
//! integration's `alerts:` go out from the serving coordinator: a webhook
//! alert is posted as signed JSON (HMAC-SHA256 in `X-Isoflow-Signature`,
//! as webhooks are signed) through the node's egress policy; an email alert
//! is mailed through the node's `[smtp]` server ([`email`]).
//!
//! One window per (tenant, integration, cause) of [`THROTTLE`]: the first
//! run that ends that way in a window sends every alert of that cause (each
//! webhook and each email), the ones after it in the window send nothing
//! and are counted in the next (`suppressed`). A post that fails or answers
//! 5xx is tried again ([`ATTEMPTS`] in all), an email likewise unless the
//! server refuses it for good. A channel that cannot be reached is a warning
//! in the log; the run it is about has ended and is not touched.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use isoflow_engine::action::http;
use isoflow_engine::model::{Alert, AlertOn, EmailAlert, Integration};
use isoflow_engine::store::{RunRecord, RunStatus};
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::coordinator::{Coordinator, UpdateKind};

pub mod email;

pub use email::Mailer;

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

/// Where alerts go out: the egress-checked http client for webhooks, the
/// SMTP server (if `[smtp]` is set) for emails.
#[derive(Debug)]
pub struct Channels {
    pub http: http::Client,
    pub mailer: Option<Mailer>,
}

/// Watches runs end and sends their alerts until `stop`.
pub async fn run(
    coordinator: Arc<Coordinator>,
    channels: Channels,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let channels = Arc::new(channels);
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
        let (coordinator, channels, windows) =
            (coordinator.clone(), channels.clone(), windows.clone());
        tokio::spawn(async move {
            if let Err(e) = on_finished(
                &coordinator,
                &channels,
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
    coordinator: &Arc<Coordinator>,
    channels: &Arc<Channels>,
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
    let run = Arc::new(run);
    for cause in [AlertOn::Failed, AlertOn::Slow] {
        let alerts: Vec<Alert> = definition
            .alerts
            .iter()
            .filter(|alert| alert.on == cause && applies(alert, &run))
            .cloned()
            .collect();
        if alerts.is_empty() {
            continue;
        }
        let suppressed = {
            let mut windows = windows
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let window = windows
                .entry((tenant.to_owned(), run.integration.clone(), cause))
                .or_default();
            if window.sent.is_some_and(|sent| sent.elapsed() < THROTTLE) {
                window.suppressed += 1;
                continue;
            }
            window.sent = Some(Instant::now());
            std::mem::take(&mut window.suppressed)
        };
        // Each channel on its own: a slow webhook does not hold an email.
        for alert in alerts {
            if let (Some(webhook), Some(secret)) = (&alert.webhook, &alert.secret) {
                let (coordinator, channels, run) =
                    (coordinator.clone(), channels.clone(), run.clone());
                let (webhook, secret) = (webhook.clone(), secret.as_str().to_owned());
                tokio::spawn(async move {
                    send_webhook(
                        &coordinator,
                        &channels.http,
                        &webhook,
                        &secret,
                        cause,
                        &run,
                        suppressed,
                    )
                    .await;
                });
            }
            if let Some(email) = alert.email {
                let (channels, run) = (channels.clone(), run.clone());
                tokio::spawn(async move {
                    send_email(channels.mailer.as_ref(), &email, cause, &run, suppressed).await;
                });
            }
        }
    }
    Ok(())
}

fn cause_word(cause: AlertOn) -> &'static str {
    match cause {
        AlertOn::Failed => "failed",
        AlertOn::Slow => "slow",
    }
}

async fn send_email(
    mailer: Option<&Mailer>,
    alert: &EmailAlert,
    cause: AlertOn,
    run: &RunRecord,
    suppressed: u64,
) {
    let cause = cause_word(cause);
    let Some(mailer) = mailer else {
        tracing::warn!(run_id = %run.run_id, cause, "alert email not sent: this node has no [smtp] server");
        return;
    };
    let subject = email::subject(alert.subject.as_deref(), run, cause);
    let body = email::body(run, cause, suppressed);
    match mailer.send(&alert.to, &subject, &body).await {
        Ok(()) => {
            tracing::info!(run_id = %run.run_id, cause, recipients = alert.to.len(), "alert email sent");
        }
        Err(e) => tracing::warn!(run_id = %run.run_id, cause, "alert email not sent: {e}"),
    }
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

async fn send_webhook(
    coordinator: &Coordinator,
    client: &http::Client,
    webhook: &str,
    secret_name: &str,
    cause: AlertOn,
    run: &RunRecord,
    suppressed: u64,
) {
    let cause = cause_word(cause);
    let secret = match coordinator.tenant_secret(&run.tenant, secret_name).await {
        Ok(Some(secret)) => secret,
        _ => {
            tracing::warn!(tenant = %run.tenant, secret = secret_name, "alert not sent: its signing credential is missing");
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
    let mut request = http::Request::get(webhook.to_owned());
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
