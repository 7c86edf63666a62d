//! One host connection: handshake, then requests one at a time.

use std::sync::Arc;

use tokio::io::{AsyncWrite, WriteHalf};
use tokio::sync::mpsc;

use super::listen::Conn;
use super::{entropy, exec, files, pty, quiesce, repl, workspace, Agent, OpError};
use crate::frame::{read_frame, write_frame, FrameError};
use crate::protocol::{ErrorCode, Request, Response, PROTOCOL_VERSION};

/// Requests as they arrive; `None` from the channel = the host hung up.
pub(crate) type Requests = mpsc::Receiver<Result<Request, FrameError>>;
pub(crate) type Writer = WriteHalf<Box<dyn Conn>>;

/// Serves one connection until the host closes it or a frame is bad.
pub async fn handle(agent: Arc<Agent>, stream: Box<dyn Conn>) {
    let (mut reader, mut writer) = tokio::io::split(stream);
    let (tx, mut requests) = mpsc::channel(4);
    let reader_task = tokio::spawn(async move {
        loop {
            let frame = read_frame::<_, Request>(&mut reader).await;
            let stop = !matches!(frame, Ok(Some(_)));
            let Some(item) = frame.transpose() else { break };
            if tx.send(item).await.is_err() || stop {
                break;
            }
        }
    });
    if let Err(err) = serve_requests(&agent, &mut writer, &mut requests).await {
        tracing::debug!(error = %err, "connection ended");
    }
    reader_task.abort();
}

async fn serve_requests(
    agent: &Arc<Agent>,
    writer: &mut Writer,
    requests: &mut Requests,
) -> Result<(), FrameError> {
    if !handshake(writer, requests).await? {
        return Ok(());
    }
    while let Some(request) = requests.recv().await {
        let request = request?;
        let response = match request {
            Request::Exec(req) => exec::run(agent, req, writer, requests).await?,
            Request::Pty(req) => pty::run(agent, req, writer, requests).await?,
            other => dispatch(agent, other).await,
        };
        if let Some(response) = response_or_error(response) {
            write_frame(writer, &response).await?;
        }
    }
    Ok(())
}

/// Expects `Hello` with our major version. Returns false when refused.
async fn handshake(writer: &mut Writer, requests: &mut Requests) -> Result<bool, FrameError> {
    let refuse = |message: String| Response::Error {
        code: ErrorCode::VersionMismatch,
        message,
    };
    let reply = match requests.recv().await.transpose()? {
        None => return Ok(false),
        Some(Request::Hello { protocol }) if protocol == PROTOCOL_VERSION => Response::Hello {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        Some(Request::Hello { protocol }) => refuse(format!(
            "agent speaks protocol {PROTOCOL_VERSION}, host sent {protocol}"
        )),
        Some(other) => refuse(format!("expected hello first, got {other:?}")),
    };
    let accepted = matches!(reply, Response::Hello { .. });
    write_frame(writer, &reply).await?;
    Ok(accepted)
}

fn response_or_error(result: Result<Option<Response>, OpError>) -> Option<Response> {
    match result {
        Ok(response) => response,
        Err(err) => {
            tracing::warn!(error = %err.message(), "request failed");
            Some(Response::Error {
                code: err.code(),
                message: err.message(),
            })
        }
    }
}

/// Every request except `Exec`, which streams.
async fn dispatch(agent: &Arc<Agent>, request: Request) -> Result<Option<Response>, OpError> {
    let response = match request {
        Request::Ping => Response::Pong {
            protocol: PROTOCOL_VERSION,
            agent_version: env!("CARGO_PKG_VERSION").to_owned(),
            uptime_ms: agent.started.elapsed().as_millis() as u64,
        },
        Request::Signal { exec_id, signal } => exec::signal(agent, exec_id, signal)?,
        Request::Quiesce { watchdog_ms } => quiesce::quiesce(agent, watchdog_ms).await?,
        Request::Thaw => quiesce::thaw(agent).await?,
        Request::UnmountWorkspace { kill_holders } => {
            workspace::unmount(agent, kill_holders).await?
        }
        Request::MountWorkspace => workspace::mount(agent).await?,
        Request::WorkspaceId => workspace::id(agent)?,
        Request::Reseed { entropy } => entropy::reseed(entropy).await?,
        Request::Repl(req) => repl::run(agent, req).await?,
        Request::Hello { .. } => return Err(OpError::BadRequest("hello sent twice".into())),
        Request::Unknown => return Err(OpError::BadRequest("unknown op".into())),
        Request::Exec(_) => return Err(OpError::BadRequest("exec must be streamed".into())),
        Request::Pty(_) => return Err(OpError::BadRequest("pty must be streamed".into())),
        Request::PtyInput { .. } | Request::PtyResize { .. } | Request::PtyHangup => {
            return Err(OpError::BadRequest(
                "no terminal session on this connection".into(),
            ))
        }
        file_request => files::handle(agent, file_request).await?,
    };
    Ok(Some(response))
}

/// Writes a response frame; used by streaming handlers.
pub(crate) async fn send<W: AsyncWrite + Unpin>(
    writer: &mut W,
    response: &Response,
) -> Result<(), FrameError> {
    write_frame(writer, response).await
}
