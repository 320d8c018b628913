//! The OAuth2 authorization code callback on the node's HTTP listener:
//! `GET /oauth/callback/<credential's callback id>?code=…&state=…`, where a
//! provider sends the user's browser after sign-in. Each credential has its
//! own callback path, so a provider that allows only that redirect URI for
//! its client sends codes to that credential alone. The state names the
//! credential and is good for one callback (see `Vault::authorize`); the
//! code is exchanged for tokens at once, and the page says whether the
//! credential is connected.

use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use isoflow_engine::credential::vault::VaultError;

use super::coordinator::Coordinator;

/// The callback's route.
pub fn router(coordinator: Arc<Coordinator>) -> Router {
    Router::new()
        .route("/oauth/callback/{callback_id}", get(callback))
        .with_state(coordinator)
}

#[derive(Debug, Default)]
struct Callback {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
    error_description: Option<String>,
}

impl Callback {
    /// The parameters of a query string; the first of each name counts.
    fn parse(query: &str) -> Callback {
        let mut callback = Callback::default();
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match name.as_ref() {
                "code" => &mut callback.code,
                "state" => &mut callback.state,
                "error" => &mut callback.error,
                "error_description" => &mut callback.error_description,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        callback
    }
}

async fn callback(
    State(coordinator): State<Arc<Coordinator>>,
    Path(callback_id): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let callback = Callback::parse(query.as_deref().unwrap_or_default());
    let Some(vault) = coordinator.vault.clone() else {
        return page(StatusCode::NOT_FOUND, "This node keeps no credentials.");
    };
    let Some(state) = callback.state.filter(|s| s.len() <= 1024) else {
        return page(
            StatusCode::BAD_REQUEST,
            "The provider sent no state (or an overlong one): start the authorization again.",
        );
    };
    if let Some(error) = callback.error {
        // The provider says the user declined or something failed there;
        // its words are shown cut short, as text.
        let said: String = callback
            .error_description
            .unwrap_or(error)
            .chars()
            .filter(|c| !c.is_control())
            .take(200)
            .collect();
        return page(
            StatusCode::BAD_REQUEST,
            &format!("The provider did not authorize: {said}"),
        );
    }
    let Some(code) = callback.code else {
        return page(StatusCode::BAD_REQUEST, "The provider sent no code.");
    };
    match vault
        .complete_authorization(&callback_id, &state, &code)
        .await
    {
        Ok((tenant, name)) => {
            tracing::info!(%tenant, credential = %name, "OAuth2 credential authorized");
            page(
                StatusCode::OK,
                &format!("Credential {name:?} is connected. You can close this page."),
            )
        }
        Err(VaultError::Invalid(why)) => page(StatusCode::BAD_REQUEST, &why),
        Err(VaultError::Unusable { reason, .. }) => page(
            StatusCode::BAD_GATEWAY,
            &format!("The credential could not be connected: {reason}"),
        ),
        Err(other) => {
            tracing::error!("OAuth2 callback: {other}");
            page(
                StatusCode::INTERNAL_SERVER_ERROR,
                "The credential could not be stored; the node's log says why.",
            )
        }
    }
}

/// A small HTML page with one sentence, escaped.
fn page(status: StatusCode, sentence: &str) -> Response {
    let escaped = sentence
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;");
    (
        status,
        [("cache-control", "no-store")],
        Html(format!(
            "<!doctype html><meta charset=utf-8><title>Isoflow</title><p>{escaped}</p>\n"
        )),
    )
        .into_response()
}
