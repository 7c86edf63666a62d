//! Terminal sessions ([`Request::Pty`]): one dedicated connection each,
//! split into a writer (input, resize, hangup) and a reader (output, exit)
//! so both directions can be driven at once.

use tokio::io::{ReadHalf, WriteHalf};

use super::dial::unexpected;
use super::*;
use crate::protocol::PtyRequest;

/// What a terminal session reports.
#[derive(Debug, PartialEq)]
pub enum PtyEvent {
    /// Bytes the terminal printed.
    Output(Vec<u8>),
    /// The process ended; the session is over.
    Exited(ExitStatus),
}

/// The sending half of a terminal session.
pub struct PtyWriter {
    stream: WriteHalf<Box<dyn Io>>,
}

/// The receiving half of a terminal session.
pub struct PtyReader {
    stream: ReadHalf<Box<dyn Io>>,
}

impl AgentClient {
    /// Starts a terminal session on a fresh connection (never pooled).
    /// Dropping both halves hangs up: the agent kills the process group.
    pub async fn pty(&self, req: PtyRequest) -> Result<(PtyWriter, PtyReader, i32), AgentError> {
        const OP: &str = "pty";
        let mut conn = self.dial().await?;
        let after = self.timeouts.request;
        let reply = tokio::time::timeout(after, conn.roundtrip(OP, &Request::Pty(req)))
            .await
            .map_err(|_| AgentError::Timeout { op: OP, after })??;
        let Response::PtyStarted { pid } = reply else {
            return Err(unexpected(OP, reply));
        };
        let (reader, writer) = tokio::io::split(conn.stream);
        Ok((
            PtyWriter { stream: writer },
            PtyReader { stream: reader },
            pid,
        ))
    }
}

impl PtyWriter {
    /// Types `data` into the terminal.
    pub async fn input(&mut self, data: Vec<u8>) -> Result<(), AgentError> {
        self.send("pty_input", &Request::PtyInput { data }).await
    }

    /// Resizes the terminal (the process gets SIGWINCH).
    pub async fn resize(&mut self, cols: u16, rows: u16) -> Result<(), AgentError> {
        self.send("pty_resize", &Request::PtyResize { cols, rows })
            .await
    }

    /// Kills the session's process group; [`PtyEvent::Exited`] follows.
    pub async fn hangup(&mut self) -> Result<(), AgentError> {
        self.send("pty_hangup", &Request::PtyHangup).await
    }

    async fn send(&mut self, op: &'static str, req: &Request) -> Result<(), AgentError> {
        write_frame(&mut self.stream, req)
            .await
            .map_err(|source| AgentError::Connection { op, source })
    }
}

impl PtyReader {
    /// The next output chunk, or the exit that ends the session.
    pub async fn next(&mut self) -> Result<PtyEvent, AgentError> {
        const OP: &str = "pty";
        let response = match read_frame(&mut self.stream).await {
            Ok(Some(response)) => response,
            Ok(None) => return Err(AgentError::Closed { op: OP }),
            Err(source) => return Err(AgentError::Connection { op: OP, source }),
        };
        match response {
            Response::Stdout { data } => Ok(PtyEvent::Output(data)),
            Response::Exited(status) => Ok(PtyEvent::Exited(status)),
            Response::Error { code, message } => Err(AgentError::Remote {
                op: OP,
                code,
                message,
            }),
            other => Err(unexpected(OP, other)),
        }
    }
}
