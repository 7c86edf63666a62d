//! File requests and ping against a real agent process.

mod common;

use common::ServedAgent;
use rewind_agent::protocol::{ErrorCode, FileKind, PROTOCOL_VERSION};

#[tokio::test]
async fn ping_reports_version_and_uptime() {
    let agent = ServedAgent::start().await;
    let pong = agent.client.ping().await.unwrap();
    assert_eq!(
        (pong.protocol, pong.agent_version.as_str()),
        (PROTOCOL_VERSION, env!("CARGO_PKG_VERSION"))
    );
}

#[tokio::test]
async fn files_write_then_read_roundtrips_bytes_and_mode() {
    let agent = ServedAgent::start().await;
    let data = vec![0u8, 1, 2, 255, b'\n'];
    agent
        .client
        .write_file("dir/sub/f.bin", data.clone(), 0o600, true)
        .await
        .unwrap();
    let (got, info, truncated) = agent.client.read_file("dir/sub/f.bin", None).await.unwrap();
    assert_eq!(
        (got, info.mode, info.size, truncated),
        (data, 0o600, 5, false)
    );
}

#[tokio::test]
async fn files_write_is_visible_to_exec() {
    let agent = ServedAgent::start().await;
    agent
        .client
        .write_file("script.sh", b"echo from-file".to_vec(), 0o755, false)
        .await
        .unwrap();
    let req = rewind_agent::protocol::ExecRequest {
        shell: Some("./script.sh".into()),
        ..Default::default()
    };
    let out = agent.client.exec_collect(req).await.unwrap();
    assert_eq!(out.stdout, b"from-file\n");
}

#[tokio::test]
async fn files_write_without_create_dirs_fails_not_found() {
    let agent = ServedAgent::start().await;
    let err = agent
        .client
        .write_file("no/such/dir/f", vec![], 0o644, false)
        .await
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn files_read_max_bytes_truncates() {
    let agent = ServedAgent::start().await;
    agent
        .client
        .write_file("big", vec![7u8; 10_000], 0o644, false)
        .await
        .unwrap();
    let (got, info, truncated) = agent.client.read_file("big", Some(100)).await.unwrap();
    assert_eq!((got.len(), info.size, truncated), (100, 10_000, true));
}

#[tokio::test]
async fn files_stat_does_not_follow_symlink() {
    let agent = ServedAgent::start().await;
    std::os::unix::fs::symlink("/etc/hostname", agent.workspace.join("link")).unwrap();
    let info = agent.client.stat("link").await.unwrap();
    assert_eq!(
        (info.kind, info.symlink_target.as_deref()),
        (FileKind::Symlink, Some("/etc/hostname"))
    );
}

#[tokio::test]
async fn files_list_recursive_and_flat() {
    let agent = ServedAgent::start().await;
    agent
        .client
        .write_file("a/b/c.txt", b"x".to_vec(), 0o644, true)
        .await
        .unwrap();
    agent
        .client
        .write_file("top.txt", b"y".to_vec(), 0o644, false)
        .await
        .unwrap();
    let ws = agent.workspace.to_str().unwrap();
    let flat: Vec<_> = agent
        .client
        .list(ws, false)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    let deep: Vec<_> = agent
        .client
        .list(ws, true)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        (flat, deep),
        (
            vec!["a".to_owned(), "top.txt".into()],
            vec!["a".to_owned(), "b".into(), "c.txt".into(), "top.txt".into()]
        )
    );
}

#[tokio::test]
async fn files_read_missing_is_not_found() {
    let agent = ServedAgent::start().await;
    let err = agent
        .client
        .read_file("/nonexistent/rewind", None)
        .await
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn reseed_accepts_entropy() {
    let agent = ServedAgent::start().await;
    agent.client.reseed(vec![42u8; 64]).await.unwrap();
}
