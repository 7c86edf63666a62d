//! The host client against a real agent: reconnects, hybrid vsock preamble,
//! handshake refusal.

mod common;

use std::process::{Command, Stdio};

use common::{ServedAgent, AGENT};
use rewind_agent::client::{AgentClient, AgentError, Transport};
use rewind_agent::frame::{read_frame, write_frame};
use rewind_agent::protocol::{ErrorCode, ExecRequest, Request, Response};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

fn spawn_agent(socket: &std::path::Path, workspace: &std::path::Path) -> std::process::Child {
    Command::new(AGENT)
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--workspace")
        .arg(workspace)
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

#[tokio::test]
async fn client_reconnects_after_agent_restart() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("a.sock");
    let mut first = spawn_agent(&socket, dir.path());
    let client = AgentClient::new(Transport::Unix(socket.clone()));
    common::wait_ready(&client).await;
    first.kill().unwrap();
    first.wait().unwrap();
    let mut second = spawn_agent(&socket, dir.path());
    // The same client, polled until the new agent listens.
    common::wait_ready(&client).await;
    let pong = client.ping().await;
    second.kill().unwrap();
    second.wait().unwrap();
    assert!(pong.unwrap().uptime_ms < 5_000);
}

#[tokio::test]
async fn client_missing_socket_is_connect_error() {
    let client = AgentClient::new(Transport::Unix("/nonexistent/rewind.sock".into()));
    let err = client.ping().await.unwrap_err();
    assert!(matches!(err, AgentError::Connect { .. }), "{err:?}");
}

/// A stand-in for Cloud Hypervisor's hybrid vsock socket: reads the
/// `CONNECT` line, answers `reply`, then (on OK) splices to the agent.
async fn fake_hybrid_vsock(
    listener: UnixListener,
    agent: std::path::PathBuf,
    reply: &'static str,
) -> String {
    let (stream, _) = listener.accept().await.unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).await.unwrap();
    reader.get_mut().write_all(reply.as_bytes()).await.unwrap();
    if reply.starts_with("OK") {
        let mut upstream = UnixStream::connect(agent).await.unwrap();
        let mut stream = reader.into_inner();
        tokio::spawn(async move {
            let _ = tokio::io::copy_bidirectional(&mut stream, &mut upstream).await;
        });
    }
    line
}

#[tokio::test]
async fn client_hybrid_vsock_sends_connect_then_speaks_protocol() {
    let agent = ServedAgent::start().await;
    let hv = agent.workspace.join("hv.sock");
    let listener = UnixListener::bind(&hv).unwrap();
    let fake = tokio::spawn(fake_hybrid_vsock(
        listener,
        agent.socket.clone(),
        "OK 1073741824\n",
    ));
    let client = AgentClient::new(Transport::HybridVsock {
        socket: hv,
        port: 1024,
    });
    let req = ExecRequest {
        shell: Some("echo via-vsock".into()),
        ..Default::default()
    };
    let out = client.exec_collect(req).await.unwrap();
    assert_eq!(
        (fake.await.unwrap(), out.stdout),
        ("CONNECT 1024\n".to_owned(), b"via-vsock\n".to_vec())
    );
}

#[tokio::test]
async fn client_hybrid_vsock_refusal_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let hv = dir.path().join("hv.sock");
    let listener = UnixListener::bind(&hv).unwrap();
    let fake = tokio::spawn(fake_hybrid_vsock(
        listener,
        dir.path().join("none"),
        "ERR\n",
    ));
    let client = AgentClient::new(Transport::HybridVsock {
        socket: hv,
        port: 1024,
    });
    let err = client.ping().await.unwrap_err();
    fake.await.unwrap();
    assert!(
        matches!(err, AgentError::VsockRefused { ref reply, .. } if reply == "ERR\n"),
        "{err:?}"
    );
}

#[tokio::test]
async fn handshake_wrong_version_is_refused() {
    let agent = ServedAgent::start().await;
    let mut stream = UnixStream::connect(&agent.socket).await.unwrap();
    write_frame(&mut stream, &Request::Hello { protocol: 99 })
        .await
        .unwrap();
    let reply: Option<Response> = read_frame(&mut stream).await.unwrap();
    assert!(
        matches!(
            reply,
            Some(Response::Error {
                code: ErrorCode::VersionMismatch,
                ..
            })
        ),
        "{reply:?}"
    );
}

#[tokio::test]
async fn handshake_unknown_op_after_hello_is_bad_request() {
    let agent = ServedAgent::start().await;
    let mut stream = UnixStream::connect(&agent.socket).await.unwrap();
    write_frame(&mut stream, &Request::Hello { protocol: 1 })
        .await
        .unwrap();
    let _: Option<Response> = read_frame(&mut stream).await.unwrap();
    let raw = br#"{"op":"teleport"}"#;
    stream
        .write_all(&(raw.len() as u32).to_be_bytes())
        .await
        .unwrap();
    stream.write_all(raw).await.unwrap();
    let reply: Option<Response> = read_frame(&mut stream).await.unwrap();
    assert!(
        matches!(
            reply,
            Some(Response::Error {
                code: ErrorCode::BadRequest,
                ..
            })
        ),
        "{reply:?}"
    );
}
