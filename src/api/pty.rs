//! `GET /vms/:name/pty`: an interactive terminal over a WebSocket.
//!
//! Query: `command` (a shell command line; default an interactive login
//! shell), `cols`, `rows` (default 80×24). Binary messages carry terminal
//! bytes both ways. Text messages from the client are JSON control
//! messages: `{"resize":{"cols":..,"rows":..}}`. The server's last message
//! is text: `{"type":"exit","exitCode":..,"signal":..,"reason":..,
//! "snapshot":..,"durationMs":..,"snapshotMs":..}` (or `{"type":"error",..}`),
//! then it closes. The session itself lives in `sandbox/pty.rs`.

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::extract::Query;
use super::{ws_upgrade, ApiError, AppResult, AppState, Auth};
use crate::sandbox::{PtyEnd, PtyInput, PtyOptions, PtySession, SandboxError};

/// Query of `GET /vms/:name/pty`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct PtyQuery {
    /// What to run (default: a login shell).
    #[serde(default)]
    command: Option<String>,
    /// Terminal width (default 80).
    #[serde(default = "default_cols")]
    #[param(default = 80)]
    cols: u16,
    /// Terminal height (default 24).
    #[serde(default = "default_rows")]
    #[param(default = 24)]
    rows: u16,
}

fn default_cols() -> u16 {
    80
}

fn default_rows() -> u16 {
    24
}

/// A JSON control message from the client.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Control {
    resize: Resize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Resize {
    cols: u16,
    rows: u16,
}

/// Messages the server sends as text.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum ServerMessage {
    #[serde(rename_all = "camelCase")]
    Exit {
        exit_code: i32,
        signal: Option<i32>,
        reason: &'static str,
        snapshot: String,
        duration_ms: u64,
        snapshot_ms: u64,
    },
    Error {
        status: u16,
        error: String,
    },
}

impl ServerMessage {
    fn error(e: ApiError) -> Self {
        Self::Error {
            status: e.status_code().as_u16(),
            error: e.public_message(),
        }
    }

    fn message(&self) -> Message {
        let json = serde_json::to_string(self).unwrap_or_else(|_| r#"{"type":"error"}"#.into());
        Message::Text(json.into())
    }
}

impl From<PtyEnd> for ServerMessage {
    fn from(end: PtyEnd) -> Self {
        Self::Exit {
            exit_code: end.exit_code,
            signal: end.signal,
            reason: end.reason.as_str(),
            snapshot: end.snapshot,
            duration_ms: end.duration_ms,
            snapshot_ms: end.snapshot_ms,
        }
    }
}

/// Opens the session before upgrading, so a bad query (400), an unknown
/// (404) or stopped/failed/busy (409) sandbox is a plain HTTP answer.
#[utoipa::path(get, path = "/vms/{name}/pty", tag = "run",
    params(("name" = String, Path, description = "sandbox name"), PtyQuery),
    responses(
        (status = 101, description = "WebSocket: binary frames are terminal bytes both ways; text frames are \
            control messages (`{\"resize\": {\"cols\", \"rows\"}}`) and, at the end, the exit message with the snapshot"),
        (status = 400, description = "not a WebSocket upgrade, or a bad query", body = super::error::ErrorBody),
        (status = 404, description = "no such sandbox (of yours)", body = super::error::ErrorBody),
        (status = 409, description = "busy, or the sandbox is not running", body = super::error::ErrorBody),
    ))]
pub async fn pty(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    Query(query): Query<PtyQuery>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> AppResult<Response> {
    let upgrade = ws_upgrade(upgrade)?;
    let opts = PtyOptions {
        command: query.command,
        cols: query.cols,
        rows: query.rows,
    };
    let session = state.sandboxes.open_pty(&caller, &name, opts).await?;
    Ok(upgrade.on_upgrade(move |socket| relay(session, socket)))
}

/// Bridges the socket and the session until the session ends, then sends
/// the final message. A client that leaves ends the session.
async fn relay(session: PtySession, socket: WebSocket) {
    let (input, input_rx) = mpsc::channel(64);
    let (output_tx, mut output) = mpsc::channel::<Vec<u8>>(64);
    let run = tokio::spawn(session.run(input_rx, output_tx));
    let (mut sink, mut stream) = socket.split();
    loop {
        tokio::select! {
            out = output.recv() => {
                let Some(data) = out else { break }; // the session ended
                if sink.send(Message::Binary(data.into())).await.is_err() {
                    break;
                }
            }
            msg = stream.next() => {
                let input_msg = match msg {
                    Some(Ok(Message::Binary(data))) => PtyInput::Data(data.to_vec()),
                    Some(Ok(Message::Text(text))) => match control(text.as_str()) {
                        Ok(input) => input,
                        Err(e) => {
                            let _ = sink.send(ServerMessage::error(e).message()).await;
                            continue;
                        }
                    },
                    Some(Ok(_)) => continue,
                    None | Some(Err(_)) => break,
                };
                if input.send(input_msg).await.is_err() {
                    break;
                }
            }
        }
    }
    // Unblock the session whichever side ended, then wait for its snapshot.
    drop((input, output));
    let last = match run.await {
        Ok(Ok(end)) => ServerMessage::from(end),
        Ok(Err(e)) => ServerMessage::error(e.into()),
        Err(e) => ServerMessage::error(SandboxError::from(e).into()),
    };
    let _ = sink.send(last.message()).await;
    let _ = sink.send(Message::Close(None)).await;
}

/// Parses a control message; a bad one is answered, not fatal.
fn control(text: &str) -> Result<PtyInput, ApiError> {
    let control: Control = serde_json::from_str(text)
        .map_err(|e| ApiError::BadRequest(format!("invalid control message: {e}")))?;
    let Resize { cols, rows } = control.resize;
    let side = 1..=crate::sandbox::MAX_TERMINAL_SIDE;
    if !side.contains(&cols) || !side.contains(&rows) {
        return Err(ApiError::BadRequest(format!(
            "resize: cols and rows must be 1-{}",
            crate::sandbox::MAX_TERMINAL_SIDE
        )));
    }
    Ok(PtyInput::Resize { cols, rows })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_resize_parses() {
        let input = control(r#"{"resize":{"cols":100,"rows":40}}"#).unwrap();
        assert_eq!(
            input,
            PtyInput::Resize {
                cols: 100,
                rows: 40
            }
        );
    }

    #[test]
    fn control_zero_size_is_rejected() {
        let err = control(r#"{"resize":{"cols":0,"rows":40}}"#).unwrap_err();
        assert!(err.to_string().contains("resize"), "{err}");
    }

    #[test]
    fn control_unknown_message_is_rejected() {
        let err = control(r#"{"paste":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("invalid control message"), "{err}");
    }
}
