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
use isoflow_engine::credential::vault::Unrenewable;
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
    let mut unrenewable = coordinator.vault.as_ref().map(|vault| vault.unrenewable());
    loop {
        let update = tokio::select! {
            update = updates.recv() => update,
            Some(event) = next_unrenewable(&mut unrenewable) => {
                let (coordinator, channels, windows) =
                    (coordinator.clone(), channels.clone(), windows.clone());
                tokio::spawn(async move {
                    if let Err(e) = on_unrenewable(&coordinator, &channels, &windows, &event).await {
                        tracing::error!(credential = %event.name, "alerts: {e:#}");
                    }
                });
                continue;
            }
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
        let Some(suppressed) = admit(windows, tenant, &run.integration, cause) else {
            continue;
        };
        let word = cause_word(cause);
        let message = Message {
            tenant: run.tenant.clone(),
            about: run.run_id.clone(),
            body: json!({
                "cause": word,
                "tenant": run.tenant,
                "integration": run.integration,
                "version": run.version,
                "run_id": run.run_id,
                "status": run.status.as_str(),
                "error": run.error,
                "duration_ms": run.updated_at_ms.saturating_sub(run.created_at_ms),
                "suppressed": suppressed,
            }),
            idempotency_key: format!("alert/{}/{word}", run.run_id),
            subject: email::subject(None, &run, word),
            text: email::body(&run, word, suppressed),
        };
        send(coordinator, channels, alerts, message);
    }
    Ok(())
}

/// The next OAuth2 credential that went unhealthy, if this node has a
/// vault; pending forever otherwise.
async fn next_unrenewable(
    events: &mut Option<tokio::sync::broadcast::Receiver<Unrenewable>>,
) -> Option<Unrenewable> {
    let Some(receiver) = events else {
        return std::future::pending().await;
    };
    loop {
        match receiver.recv().await {
            Ok(event) => return Some(event),
            Err(RecvError::Lagged(missed)) => {
                tracing::warn!(missed, "alerts: credential events were missed");
            }
            Err(RecvError::Closed) => {
                *events = None;
                return std::future::pending().await;
            }
        }
    }
}

/// An OAuth2 credential went unhealthy: every integration of its tenant
/// whose http steps send it, and which has `on: credential` alerts, sends
/// them (one per integration per window).
async fn on_unrenewable(
    coordinator: &Arc<Coordinator>,
    channels: &Arc<Channels>,
    windows: &Windows,
    event: &Unrenewable,
) -> anyhow::Result<()> {
    let store = coordinator.store.clone();
    let tenant = event.tenant.clone();
    let records = tokio::task::spawn_blocking(move || store.integrations(&tenant)).await??;
    for record in records {
        let Ok(definition) = serde_json::from_value::<Integration>(record.definition) else {
            continue;
        };
        if !super::coordinator::names_credential(&definition.steps, &event.name) {
            continue;
        }
        let alerts: Vec<Alert> = definition
            .alerts
            .iter()
            .filter(|alert| alert.on == AlertOn::Credential)
            .cloned()
            .collect();
        if alerts.is_empty() {
            continue;
        }
        let Some(suppressed) = admit(windows, &event.tenant, &record.name, AlertOn::Credential)
        else {
            continue;
        };
        let (name, version) = (record.name.clone(), record.version);
        let message = Message {
            tenant: event.tenant.clone(),
            about: format!("credential {}", event.name),
            body: json!({
                "cause": "credential",
                "tenant": event.tenant,
                "integration": name,
                "version": version,
                "credential": event.name,
                "error": event.reason,
                "suppressed": suppressed,
            }),
            idempotency_key: format!(
                "alert/{}/{}/credential/{}",
                event.tenant,
                name,
                isoflow_engine::store::now_ms()
            ),
            subject: email::credential_subject(&event.tenant, &name, version, &event.name),
            text: email::credential_body(
                &event.tenant,
                &name,
                version,
                &event.name,
                &event.reason,
                suppressed,
            ),
        };
        send(coordinator, channels, alerts, message);
    }
    Ok(())
}

/// Opens the (tenant, integration, cause) window if it is closed: the
/// number of alerts held back since the last one sent. `None`: held back.
fn admit(windows: &Windows, tenant: &str, integration: &str, cause: AlertOn) -> Option<u64> {
    let mut windows = windows
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let window = windows
        .entry((tenant.to_owned(), integration.to_owned(), cause))
        .or_default();
    if window.sent.is_some_and(|sent| sent.elapsed() < THROTTLE) {
        window.suppressed += 1;
        return None;
    }
    window.sent = Some(Instant::now());
    Some(std::mem::take(&mut window.suppressed))
}

fn cause_word(cause: AlertOn) -> &'static str {
    match cause {
        AlertOn::Failed => "failed",
        AlertOn::Slow => "slow",
        AlertOn::Credential => "credential",
    }
}

/// One alert's content, for every channel.
struct Message {
    tenant: String,
    /// What it is about, for the log: a run id, a credential.
    about: String,
    /// The webhook's JSON.
    body: serde_json::Value,
    idempotency_key: String,
    /// The email's subject, before an alert's own prefix.
    subject: String,
    /// The email's text.
    text: String,
}

/// Sends `message` by every channel of each of `alerts`, each channel on
/// its own task: a slow webhook does not hold an email.
fn send(
    coordinator: &Arc<Coordinator>,
    channels: &Arc<Channels>,
    alerts: Vec<Alert>,
    message: Message,
) {
    let message = Arc::new(message);
    for alert in alerts {
        if let (Some(webhook), Some(secret)) = (&alert.webhook, &alert.secret) {
            let (coordinator, channels, message) =
                (coordinator.clone(), channels.clone(), message.clone());
            let (webhook, secret) = (webhook.clone(), secret.as_str().to_owned());
            tokio::spawn(async move {
                send_webhook(&coordinator, &channels.http, &webhook, &secret, &message).await;
            });
        }
        if let Some(email) = alert.email {
            let (channels, message) = (channels.clone(), message.clone());
            tokio::spawn(async move {
                send_email(channels.mailer.as_ref(), &email, &message).await;
            });
        }
    }
}

async fn send_email(mailer: Option<&Mailer>, alert: &EmailAlert, message: &Message) {
    let about = message.about.as_str();
    let Some(mailer) = mailer else {
        tracing::warn!(
            about,
            "alert email not sent: this node has no [smtp] server"
        );
        return;
    };
    let subject = match alert.subject.as_deref().filter(|p| !p.is_empty()) {
        Some(prefix) => format!("{prefix} {}", message.subject),
        None => message.subject.clone(),
    };
    match mailer.send(&alert.to, &subject, &message.text).await {
        Ok(()) => {
            tracing::info!(about, recipients = alert.to.len(), "alert email sent");
        }
        Err(e) => tracing::warn!(about, "alert email not sent: {e}"),
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
        AlertOn::Credential => false,
    }
}

async fn send_webhook(
    coordinator: &Coordinator,
    client: &http::Client,
    webhook: &str,
    secret_name: &str,
    message: &Message,
) {
    let about = message.about.as_str();
    let secret = match coordinator
        .tenant_secret(&message.tenant, secret_name)
        .await
    {
        Ok(Some(secret)) => secret,
        _ => {
            tracing::warn!(tenant = %message.tenant, secret = secret_name, "alert not sent: its signing credential is missing");
            return;
        }
    };
    let text = message.body.to_string();
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
    request.tenant = message.tenant.clone();
    request.idempotency_key = Some(message.idempotency_key.clone());
    for attempt in 1..=ATTEMPTS {
        match client.send(&request).await {
            Ok(_) => {
                tracing::info!(about, "alert sent");
                return;
            }
            Err(e) if attempt < ATTEMPTS && e.is_retryable() => {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::warn!(about, "alert not sent: {e}");
                return;
            }
        }
    }
}
