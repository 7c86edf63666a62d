//! Live events over WebSockets (see [`crate::events`]):
//! - `GET /api/v1/vms/{vm_name}/events`: one VM's events (404 unless the
//!   caller may see the VM);
//! - `GET /api/v1/system/events`: every event the caller may see (an admin
//!   all, others their own sandboxes').
//!
//! Authenticated on the upgrade request, like every v1 route
//! (`Authorization: Bearer`, `x-api-key`), or with a `token` query
//! parameter (a JWT or an API key) for browsers, which cannot set headers
//! on a WebSocket. The subscription starts before the `101`, so an event
//! caused after the handshake is never missed.
//!
//! A subscriber that falls more than `events.buffer` events behind, or
//! whose socket takes longer than `events.send_timeout_secs` to take one
//! event, is dropped: a close frame with code 1013 ("try again later")
//! and the reason, then the connection ends. Publishers never wait.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::Response;
use serde::Deserialize;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::Receiver;

use super::error::{V1Error, V1Result};
use super::extract::Query;
use crate::api::AppState;
use crate::auth::Caller;
use crate::events::Event;

/// Close code for a dropped slow consumer (RFC 6455 "Try Again Later").
pub const CLOSE_TOO_SLOW: u16 = 1013;

type Upgrade = Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>;

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct TokenQuery {
    /// The JWT or API key, for clients that cannot set headers on a
    /// WebSocket upgrade.
    token: Option<String>,
}

/// Which events one subscriber gets.
struct Filter {
    caller: Caller,
    vm: Option<String>,
}

impl Filter {
    fn wants(&self, event: &Event) -> bool {
        event.visible_to(&self.caller) && self.vm.as_ref().is_none_or(|vm| *vm == event.vm_name)
    }
}

#[utoipa::path(get, path = "/vms/{vm_name}/events", tag = "v1 events",
    params(("vm_name" = String, Path, description = "VM (sandbox) name"), TokenQuery),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 101, description = "WebSocket: one JSON text message per event of this VM"),
        (status = 400, description = "not a WebSocket upgrade", body = super::error::Body),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
    ))]
pub async fn vm_events(
    State(state): State<AppState>,
    Path(vm_name): Path<String>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    upgrade: Upgrade,
) -> V1Result<Response> {
    let caller = authenticate(&state, &headers, q.token).await?;
    let row = state.sandboxes.find(&caller, &vm_name).await?;
    let filter = Filter {
        caller,
        vm: Some(row.name),
    };
    subscribe(&state, filter, upgrade)
}

#[utoipa::path(get, path = "/system/events", tag = "v1 events",
    params(TokenQuery),
    security(("bearer" = []), ("api_key" = [])),
    responses(
        (status = 101, description = "WebSocket: one JSON text message per event the caller may see"),
        (status = 400, description = "not a WebSocket upgrade", body = super::error::Body),
    ))]
pub async fn system_events(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(q): Query<TokenQuery>,
    upgrade: Upgrade,
) -> V1Result<Response> {
    let caller = authenticate(&state, &headers, q.token).await?;
    subscribe(&state, Filter { caller, vm: None }, upgrade)
}

/// The header credentials, else the `token` query parameter; 401 without.
async fn authenticate(
    state: &AppState,
    headers: &HeaderMap,
    token: Option<String>,
) -> V1Result<Caller> {
    let presented = super::presented(headers).or(token.filter(|t| !t.is_empty()));
    super::caller_of_token(state, presented)
        .await?
        .ok_or_else(|| V1Error::Unauthorized("Authentication required".into()))
}

fn subscribe(state: &AppState, filter: Filter, upgrade: Upgrade) -> V1Result<Response> {
    let upgrade = crate::api::ws_upgrade(upgrade)?;
    let rx = state.sandboxes.events.subscribe();
    let timeout = Duration::from_secs(state.sandboxes.config.events.send_timeout_secs);
    Ok(upgrade.on_upgrade(move |socket| forward(socket, rx, filter, timeout)))
}

/// Send every wanted event until the client leaves or falls behind.
async fn forward(
    mut socket: WebSocket,
    mut rx: Receiver<Arc<Event>>,
    filter: Filter,
    timeout: Duration,
) {
    loop {
        tokio::select! {
            event = rx.recv() => match event {
                Ok(event) if filter.wants(&event) => {
                    if let Err(reason) = send(&mut socket, &event, timeout).await {
                        return close(socket, reason).await;
                    }
                }
                Ok(_) => {}
                Err(RecvError::Lagged(n)) => {
                    let reason = format!("too slow: {n} events were missed; reconnect");
                    return close(socket, Some(reason)).await;
                }
                Err(RecvError::Closed) => return close(socket, None).await,
            },
            incoming = socket.recv() => {
                if matches!(incoming, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    return;
                }
            }
        }
    }
}

/// One event; `Err(Some(reason))` when the client is too slow, `Err(None)`
/// when it is gone.
async fn send(
    socket: &mut WebSocket,
    event: &Event,
    timeout: Duration,
) -> Result<(), Option<String>> {
    let Ok(json) = serde_json::to_string(event) else {
        return Ok(());
    };
    match tokio::time::timeout(timeout, socket.send(Message::Text(json.into()))).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(None),
        Err(_) => Err(Some(format!(
            "too slow: one event took more than {} s to send",
            timeout.as_secs()
        ))),
    }
}

/// A close frame (1013 with `reason` for a slow consumer), best effort.
async fn close(mut socket: WebSocket, reason: Option<String>) {
    let frame = reason.map(|reason| {
        tracing::warn!(reason = %reason, "event subscriber dropped");
        CloseFrame {
            code: CLOSE_TOO_SLOW,
            reason: reason.into(),
        }
    });
    let _ = tokio::time::timeout(Duration::from_secs(1), socket.send(Message::Close(frame))).await;
}
