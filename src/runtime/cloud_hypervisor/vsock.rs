//! Host side of CH's hybrid vsock: `CONNECT <port>\n` → `OK <host port>\n`.
//!
//! Used only to notice that the guest agent listens (boot / restore
//! readiness); the agent protocol itself is `rewind_agent::client`'s.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    #[error("cannot connect to the vsock socket {socket}")]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("hybrid vsock handshake for port {port} failed: {answer:?}")]
    Handshake { port: u32, answer: String },
    #[error("hybrid vsock handshake for port {port} timed out")]
    Timeout { port: u32 },
}

/// One handshake attempt: `Ok` when something in the guest accepted `port`.
pub async fn probe(socket: &Path, port: u32) -> Result<(), VsockError> {
    let attempt = async {
        let mut stream =
            UnixStream::connect(socket)
                .await
                .map_err(|source| VsockError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })?;
        let hello = format!("CONNECT {port}\n");
        let io = |source| VsockError::Connect {
            socket: socket.to_path_buf(),
            source,
        };
        stream.write_all(hello.as_bytes()).await.map_err(io)?;
        let mut answer = String::new();
        BufReader::new(&mut stream)
            .read_line(&mut answer)
            .await
            .map_err(io)?;
        check_answer(port, answer)
    };
    tokio::time::timeout(Duration::from_secs(2), attempt)
        .await
        .map_err(|_| VsockError::Timeout { port })?
}

fn check_answer(port: u32, answer: String) -> Result<(), VsockError> {
    if answer.starts_with("OK ") && answer.ends_with('\n') {
        Ok(())
    } else {
        Err(VsockError::Handshake { port, answer })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_answer_accepts_ok_line() {
        check_answer(1024, "OK 1073741824\n".into()).unwrap();
    }

    #[test]
    fn check_answer_rejects_closed_connection() {
        let err = check_answer(1024, String::new()).unwrap_err();

        assert!(matches!(err, VsockError::Handshake { port: 1024, .. }));
    }

    #[tokio::test]
    async fn probe_talks_hybrid_vsock_protocol() {
        let dir = tempfile::tempdir().unwrap();
        let sock = dir.path().join("v.sock");
        let listener = tokio::net::UnixListener::bind(&sock).unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut line = String::new();
            BufReader::new(&mut s).read_line(&mut line).await.unwrap();
            assert_eq!(line, "CONNECT 1024\n");
            s.write_all(b"OK 77\n").await.unwrap();
        });

        probe(&sock, 1024).await.unwrap();
    }
}
