//! Live pages: server-sent events fed by the coordinator's run updates.
//!
//! `/console/events` tells a runs page that one of its tenant's runs was
//! queued, moved a step or ended; `/console/runs/{id}/events` tells a run
//! page that its run changed (a step, a log line, the end). An event
//! names the run and what happened, nothing of its data: the page fetches
//! itself again through the API. A stream re-checks its session every
//! [`RECHECK`] and ends when it no longer stands; a node serves at most
//! [`super::MAX_LIVE_STREAMS`] streams at once (503 past that), a tenant
//! at most [`super::TENANT_LIVE_STREAMS`] (429 past that).

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::{Console, Problem, Signed};
use crate::server::coordinator::UpdateKind;

/// How often a live stream checks its session is still valid.
pub const RECHECK: Duration = Duration::from_secs(15);

pub async fn tenant_events(
    State(console): State<Console>,
    signed: Signed,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    let tenant = signed.tenant()?.to_owned();
    stream(console, signed, headers, tenant, None)
}

pub async fn run_events(
    State(console): State<Console>,
    signed: Signed,
    headers: HeaderMap,
    Path(run_id): Path<String>,
) -> Result<Response, Problem> {
    let tenant = signed.tenant()?.to_owned();
    // Another tenant's run is as absent here as on its page.
    super::pages::get_run(&console, &tenant, &run_id).await?;
    stream(console, signed, headers, tenant, Some(run_id))
}

fn stream(
    console: Console,
    signed: Signed,
    headers: HeaderMap,
    tenant: String,
    run_id: Option<String>,
) -> Result<Response, Problem> {
    let permit = console.stream_share(&tenant)?;
    let mut updates = console.api().coordinator.subscribe();
    let (tx, rx) = mpsc::channel::<Result<Event, Infallible>>(16);
    tokio::spawn(async move {
        let _permit = permit;
        let mut recheck = tokio::time::interval(RECHECK);
        recheck.tick().await;
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                _ = recheck.tick() => {
                    let current = console.inner.sessions.of(&headers);
                    if current.is_none_or(|s| s.csrf != signed.session.csrf || !console.still_valid(&s)) {
                        let _ = tx.send(Ok(Event::default().event("ended").data("signed out"))).await;
                        return;
                    }
                    continue;
                }
                update = updates.recv() => match update {
                    Ok(update) => {
                        if update.tenant != tenant
                            || run_id.as_ref().is_some_and(|id| *id != update.run_id)
                        {
                            continue;
                        }
                        let kind = match &update.kind {
                            UpdateKind::Queued => "queued",
                            UpdateKind::Step(_) => "step",
                            // A runs page shows no logs.
                            UpdateKind::Log(_) if run_id.is_none() => continue,
                            UpdateKind::Log(_) => "log",
                            UpdateKind::Finished => "finished",
                        };
                        Event::default().event("update").data(format!("{} {kind}", update.run_id))
                    }
                    // Missed some: the page fetches itself anyway.
                    Err(RecvError::Lagged(_)) => Event::default().event("update").data("lagged"),
                    Err(RecvError::Closed) => return,
                },
            };
            if tx.send(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    Ok(Sse::new(ReceiverStream::new(rx))
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}
