//! Streamed runs: `POST /vms/:name/run` as server-sent events (with
//! `Accept: text/event-stream` or `?stream=true`) and `GET /vms/:name/run/ws`
//! as a WebSocket. Both carry the same JSON events, produced as the command
//! writes: `{"type":"stdout","data":".."}`, `{"type":"stderr",..}`, then
//! exactly one `{"type":"exit",..}` (or `{"type":"error","status":..,"error":..}`).
//! Output is UTF-8 text; a character split across chunks is held back until
//! it is complete, invalid bytes become U+FFFD (as in the JSON response).
//! A client that goes away kills the command (see `sandbox/run.rs`).

use std::collections::VecDeque;
use std::convert::Infallible;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::Stream as FuturesStream;
use rewind_agent::client::Stream;
use serde::Serialize;

use super::{ws_upgrade, ApiError, AppResult, AppState, Auth};
use crate::sandbox::{RunEvent, RunRequest, RunStream, RunSummary};

/// One event on the wire.
#[derive(Debug, Serialize, PartialEq)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WireEvent {
    Stdout { data: String },
    Stderr { data: String },
    Exit(ExitBody),
    Error { status: u16, error: String },
}

/// The final event: the fields of the JSON run response minus the output.
#[derive(Debug, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExitBody {
    exit_code: i32,
    snapshot: String,
    timed_out: bool,
    stdout_truncated: bool,
    stderr_truncated: bool,
    exec_ms: u64,
    snapshot_ms: u64,
}

impl WireEvent {
    fn name(&self) -> &'static str {
        match self {
            Self::Stdout { .. } => "stdout",
            Self::Stderr { .. } => "stderr",
            Self::Exit(_) => "exit",
            Self::Error { .. } => "error",
        }
    }

    fn error(e: ApiError) -> Self {
        Self::Error {
            status: e.status_code().as_u16(),
            error: e.public_message(),
        }
    }

    fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| r#"{"type":"error"}"#.into())
    }
}

impl From<RunSummary> for ExitBody {
    fn from(s: RunSummary) -> Self {
        ExitBody {
            exit_code: s.exit_code,
            snapshot: s.snapshot,
            timed_out: s.timed_out,
            stdout_truncated: s.stdout_truncated,
            stderr_truncated: s.stderr_truncated,
            exec_ms: s.exec_ms,
            snapshot_ms: s.snapshot_ms,
        }
    }
}

/// Turns run events into wire events, decoding UTF-8 across chunk edges.
pub struct WireStream {
    events: RunStream,
    stdout: Utf8Decoder,
    stderr: Utf8Decoder,
    queue: VecDeque<WireEvent>,
}

impl WireStream {
    pub fn new(events: RunStream) -> Self {
        Self {
            events,
            stdout: Utf8Decoder::default(),
            stderr: Utf8Decoder::default(),
            queue: VecDeque::new(),
        }
    }

    /// The next event; `None` after the final one.
    pub async fn next(&mut self) -> Option<WireEvent> {
        loop {
            if let Some(event) = self.queue.pop_front() {
                return Some(event);
            }
            match self.events.recv().await? {
                RunEvent::Output(Stream::Stdout, data) => {
                    let data = self.stdout.push(&data);
                    self.queue_output(WireEvent::Stdout { data });
                }
                RunEvent::Output(Stream::Stderr, data) => {
                    let data = self.stderr.push(&data);
                    self.queue_output(WireEvent::Stderr { data });
                }
                RunEvent::Finished(summary) => self.finish(WireEvent::Exit(summary.into())),
                RunEvent::Failed(e) => self.finish(WireEvent::error(e.into())),
            }
        }
    }

    fn queue_output(&mut self, event: WireEvent) {
        if !matches!(&event, WireEvent::Stdout { data } | WireEvent::Stderr { data } if data.is_empty())
        {
            self.queue.push_back(event);
        }
    }

    /// Flushes held-back bytes, then the final event.
    fn finish(&mut self, last: WireEvent) {
        let data = self.stdout.finish();
        self.queue_output(WireEvent::Stdout { data });
        let data = self.stderr.finish();
        self.queue_output(WireEvent::Stderr { data });
        self.queue.push_back(last);
    }
}

/// UTF-8 decoding of a byte stream cut at arbitrary places.
#[derive(Default)]
pub struct Utf8Decoder {
    carry: Vec<u8>,
}

impl Utf8Decoder {
    /// Text for `data`, keeping an incomplete trailing character for later.
    pub fn push(&mut self, data: &[u8]) -> String {
        self.carry.extend_from_slice(data);
        let split = complete_prefix(&self.carry);
        let rest = self.carry.split_off(split);
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry = rest;
        text
    }

    /// Whatever is held back (an incomplete character becomes U+FFFD).
    pub fn finish(&mut self) -> String {
        let text = String::from_utf8_lossy(&self.carry).into_owned();
        self.carry.clear();
        text
    }
}

/// Length of `bytes` without a trailing, incomplete UTF-8 sequence.
fn complete_prefix(bytes: &[u8]) -> usize {
    let len = bytes.len();
    for back in 1..=len.min(3) {
        let b = bytes[len - back];
        if b & 0xC0 == 0x80 {
            continue; // continuation byte: look further back
        }
        let needed = match b {
            0xC0..=0xDF => 2,
            0xE0..=0xEF => 3,
            0xF0..=0xF7 => 4,
            _ => 1,
        };
        return if back < needed { len - back } else { len };
    }
    len
}

/// `POST /vms/:name/run` as server-sent events (`event:` = the event type,
/// `data:` = its JSON).
pub async fn sse(
    state: &AppState,
    caller: &Auth,
    name: &str,
    body: RunRequest,
) -> AppResult<Response> {
    let events = state.sandboxes.run_stream(caller, name, body).await?;
    let stream = futures_util::stream::unfold(WireStream::new(events), |mut wire| async move {
        let event = wire.next().await?;
        let sse = Event::default().event(event.name()).data(event.json());
        Some((Ok::<_, Infallible>(sse), wire))
    });
    Ok(sse_response(stream))
}

fn sse_response(
    stream: impl FuturesStream<Item = Result<Event, Infallible>> + Send + 'static,
) -> Response {
    let mut response = Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response();
    // Tell buffering reverse proxies (nginx) to pass events through at once.
    response.headers_mut().insert(
        "x-accel-buffering",
        axum::http::HeaderValue::from_static("no"),
    );
    response
}

/// `GET /vms/:name/run/ws`: the first client message is the run request
/// (the JSON body of `POST /vms/:name/run`); then the events as text
/// messages; then the server closes. Closing early kills the command.
#[utoipa::path(get, path = "/vms/{name}/run/ws", tag = "run",
    params(("name" = String, Path, description = "sandbox name")),
    responses(
        (status = 101, description = "WebSocket: send the run request (the body of `POST /vms/{name}/run`) \
            as the first text message; the events follow as text messages (`stdout`, `stderr`, then `exit` or `error`)"),
        (status = 400, description = "not a WebSocket upgrade", body = super::error::ErrorBody),
        (status = 404, description = "no such sandbox (of yours)", body = super::error::ErrorBody),
        (status = 409, description = "the sandbox is not running", body = super::error::ErrorBody),
    ))]
pub async fn ws(
    State(state): State<AppState>,
    caller: Auth,
    Path(name): Path<String>,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> AppResult<Response> {
    let upgrade = ws_upgrade(upgrade)?;
    state.sandboxes.check_live(&caller, &name).await?;
    Ok(upgrade.on_upgrade(move |socket| run_socket(state, caller, name, socket)))
}

async fn run_socket(state: AppState, caller: Auth, name: String, mut socket: WebSocket) {
    let request = match first_request(&mut socket).await {
        Some(Ok(request)) => request,
        Some(Err(message)) => {
            let event = WireEvent::error(ApiError::BadRequest(message));
            return close_with(socket, event).await;
        }
        None => return,
    };
    let events = match state.sandboxes.run_stream(&caller, &name, request).await {
        Ok(events) => events,
        Err(e) => return close_with(socket, WireEvent::error(e.into())).await,
    };
    let mut wire = WireStream::new(events);
    loop {
        tokio::select! {
            event = wire.next() => {
                let Some(event) = event else { break };
                if socket.send(Message::Text(event.json().into())).await.is_err() {
                    return; // dropping `wire` kills the command
                }
            }
            msg = socket.recv() => {
                if matches!(msg, None | Some(Err(_)) | Some(Ok(Message::Close(_)))) {
                    return;
                }
            }
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}

/// The run request: the first text (or binary) message.
async fn first_request(socket: &mut WebSocket) -> Option<Result<RunRequest, String>> {
    loop {
        let bytes = match socket.recv().await? {
            Ok(Message::Text(text)) => text.as_bytes().to_vec(),
            Ok(Message::Binary(bytes)) => bytes.to_vec(),
            Ok(Message::Ping(_) | Message::Pong(_)) => continue,
            Ok(Message::Close(_)) | Err(_) => return None,
        };
        let parsed = serde_json::from_slice::<RunRequest>(&bytes);
        return Some(parsed.map_err(|e| format!("invalid run request: {e}")));
    }
}

async fn close_with(mut socket: WebSocket, event: WireEvent) {
    let _ = socket.send(Message::Text(event.json().into())).await;
    let _ = socket.send(Message::Close(None)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_decoder_push_holds_back_a_split_character() {
        let euro = "€".as_bytes();
        let mut decoder = Utf8Decoder::default();

        let first = decoder.push(&[b'a', euro[0], euro[1]]);
        let second = decoder.push(&[euro[2], b'b']);

        assert_eq!((first.as_str(), second.as_str()), ("a", "€b"));
    }

    #[test]
    fn utf8_decoder_finish_replaces_an_incomplete_tail() {
        let mut decoder = Utf8Decoder::default();

        let pushed = decoder.push(&[b'x', 0xE2, 0x82]);
        let rest = decoder.finish();

        assert_eq!((pushed.as_str(), rest.as_str()), ("x", "\u{FFFD}"));
    }

    #[test]
    fn utf8_decoder_push_replaces_invalid_bytes_at_once() {
        let mut decoder = Utf8Decoder::default();

        let text = decoder.push(&[0xFF, b'o', b'k']);

        assert_eq!(text, "\u{FFFD}ok");
    }

    #[test]
    fn wire_event_exit_serialises_camel_case_with_type() {
        let event = WireEvent::Exit(ExitBody {
            exit_code: 3,
            snapshot: "cmd_1".into(),
            timed_out: false,
            stdout_truncated: false,
            stderr_truncated: false,
            exec_ms: 5,
            snapshot_ms: 6,
        });

        let json: serde_json::Value = serde_json::from_str(&event.json()).unwrap();

        assert_eq!(
            (
                json["type"].as_str(),
                json["exitCode"].as_i64(),
                json["snapshot"].as_str()
            ),
            (Some("exit"), Some(3), Some("cmd_1"))
        );
    }
}
