//! Quiesce/thaw/watchdog and unmount/mount on a real loop-mounted ext4
//! workspace, with the agent serving on the host over a Unix socket.

mod common;

use std::time::Duration;

use common::{LoopExt4, ServedAgent};
use rewind_agent::protocol::ExecRequest;

/// An agent serving the loop file system; drop it before `fs`.
async fn agent_on(fs: &LoopExt4) -> ServedAgent {
    let dir = tempfile::tempdir().unwrap();
    ServedAgent::start_with(dir, fs.mountpoint.clone(), Some(&fs.device)).await
}

fn shell(cmd: &str) -> ExecRequest {
    ExecRequest {
        shell: Some(cmd.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn quiesce_directory_workspace_syncs_without_freezing() {
    let agent = ServedAgent::start().await;
    let frozen = agent.client.quiesce(Duration::from_secs(5)).await.unwrap();
    agent.client.thaw().await.unwrap();
    assert!(!frozen);
}

#[tokio::test]
async fn quiesce_block_device_freezes_until_thaw() {
    let fs = LoopExt4::create();
    let agent = agent_on(&fs).await;
    let frozen = agent.client.quiesce(Duration::from_secs(30)).await.unwrap();
    let during = fs.is_frozen();
    agent.client.thaw().await.unwrap();
    assert_eq!((frozen, during, fs.is_frozen()), (true, true, false));
    drop(agent);
}

#[tokio::test]
async fn quiesce_block_device_makes_written_data_durable() {
    let fs = LoopExt4::create();
    let agent = agent_on(&fs).await;
    agent
        .client
        .exec_collect(shell("echo data > f"))
        .await
        .unwrap();
    agent.client.quiesce(Duration::from_secs(30)).await.unwrap();
    let content = std::fs::read(fs.mountpoint.join("f")).unwrap();
    agent.client.thaw().await.unwrap();
    assert_eq!(content, b"data\n");
}

#[tokio::test]
async fn quiesce_watchdog_thaws_after_connection_drops() {
    let fs = LoopExt4::create();
    let agent = agent_on(&fs).await;
    let client = agent.new_client();
    client.quiesce(Duration::from_millis(500)).await.unwrap();
    drop(client);
    let frozen_before = fs.is_frozen();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!((frozen_before, fs.is_frozen()), (true, false));
}

#[tokio::test]
async fn thaw_when_not_frozen_is_ok() {
    let fs = LoopExt4::create();
    let agent = agent_on(&fs).await;
    agent.client.thaw().await.unwrap();
}

#[tokio::test]
async fn unmount_workspace_kills_holder_then_mount_restores() {
    let fs = LoopExt4::create();
    std::fs::write(fs.mountpoint.join("keep"), b"kept").unwrap();
    let agent = agent_on(&fs).await;
    let bg = agent
        .client
        .exec_collect(shell("sleep 60 >/dev/null 2>&1 & echo $!"))
        .await
        .unwrap();
    let holder: i32 = String::from_utf8_lossy(&bg.stdout).trim().parse().unwrap();
    let killed = agent.client.unmount_workspace(true).await.unwrap();
    let mounted_after_unmount =
        common::sh("cat /proc/self/mountinfo").contains(fs.mountpoint.to_str().unwrap());
    agent.client.mount_workspace().await.unwrap();
    let (data, _, _) = agent.client.read_file("keep", None).await.unwrap();
    assert_eq!(
        (killed, mounted_after_unmount, data),
        (vec![holder], false, b"kept".to_vec())
    );
}

#[tokio::test]
async fn unmount_workspace_without_kill_is_busy() {
    let fs = LoopExt4::create();
    let agent = agent_on(&fs).await;
    agent
        .client
        .exec_collect(shell("sleep 60 >/dev/null 2>&1 &"))
        .await
        .unwrap();
    let err = agent.client.unmount_workspace(false).await.unwrap_err();
    agent.client.unmount_workspace(true).await.unwrap();
    assert_eq!(
        err.remote_code(),
        Some(rewind_agent::protocol::ErrorCode::Busy)
    );
}

#[tokio::test]
async fn unmount_workspace_while_frozen_thaws_first() {
    let fs = LoopExt4::create();
    let agent = agent_on(&fs).await;
    agent.client.quiesce(Duration::from_secs(30)).await.unwrap();
    let killed = agent.client.unmount_workspace(true).await.unwrap();
    agent.client.mount_workspace().await.unwrap();
    assert_eq!(killed, Vec::<i32>::new());
}

#[tokio::test]
async fn quiesce_block_device_unmounted_is_refused() {
    let fs = LoopExt4::create();
    let agent = agent_on(&fs).await;
    agent.client.unmount_workspace(true).await.unwrap();
    let err = agent
        .client
        .quiesce(Duration::from_secs(5))
        .await
        .unwrap_err();
    agent.client.mount_workspace().await.unwrap();
    assert_eq!(
        err.remote_code(),
        Some(rewind_agent::protocol::ErrorCode::NotFound)
    );
}
