//! Exec against a real agent process on the host (serve mode, Unix socket).

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{sh, ServedAgent};
use rewind_agent::client::{AgentError, ExecEvent};
use rewind_agent::protocol::{ErrorCode, ExecRequest};

fn shell(cmd: &str) -> ExecRequest {
    ExecRequest {
        shell: Some(cmd.into()),
        ..Default::default()
    }
}

#[tokio::test]
async fn exec_exit_code_is_reported() {
    let agent = ServedAgent::start().await;
    let out = agent.client.exec_collect(shell("exit 7")).await.unwrap();
    assert_eq!(
        (
            out.status.exit_code,
            out.status.signal,
            out.status.timed_out
        ),
        (7, None, false)
    );
}

#[tokio::test]
async fn exec_argv_runs_without_shell() {
    let agent = ServedAgent::start().await;
    let req = ExecRequest {
        argv: Some(vec!["echo".into(), "a b".into()]),
        ..Default::default()
    };
    let out = agent.client.exec_collect(req).await.unwrap();
    assert_eq!(out.stdout, b"a b\n");
}

#[tokio::test]
async fn exec_stdout_stderr_are_separate() {
    let agent = ServedAgent::start().await;
    let out = agent
        .client
        .exec_collect(shell("echo out; echo err >&2"))
        .await
        .unwrap();
    assert_eq!(
        (out.stdout.as_slice(), out.stderr.as_slice()),
        (&b"out\n"[..], &b"err\n"[..])
    );
}

#[tokio::test]
async fn exec_large_output_arrives_whole() {
    let agent = ServedAgent::start().await;
    let out = agent
        .client
        .exec_collect(shell("head -c 5000000 /dev/zero"))
        .await
        .unwrap();
    assert_eq!(
        (out.stdout.len(), out.status.stdout_truncated),
        (5_000_000, false)
    );
}

#[tokio::test]
async fn exec_output_cap_truncates_each_stream() {
    let agent = ServedAgent::start().await;
    let req = ExecRequest {
        max_output_bytes: Some(1000),
        ..shell("head -c 100000 /dev/zero; head -c 10 /dev/zero >&2")
    };
    let out = agent.client.exec_collect(req).await.unwrap();
    let got = (
        out.stdout.len(),
        out.status.stdout_truncated,
        out.stderr.len(),
        out.status.stderr_truncated,
    );
    assert_eq!(got, (1000, true, 10, false));
}

#[tokio::test]
async fn exec_env_overrides_defaults() {
    let agent = ServedAgent::start().await;
    let env = BTreeMap::from([
        ("FOO".to_owned(), "bar".to_owned()),
        ("HOME".to_owned(), "/h".to_owned()),
    ]);
    let req = ExecRequest {
        env,
        ..shell("echo $FOO $HOME $LANG")
    };
    let out = agent.client.exec_collect(req).await.unwrap();
    assert_eq!(out.stdout, b"bar /h C.UTF-8\n");
}

#[tokio::test]
async fn exec_cwd_defaults_to_workspace() {
    let agent = ServedAgent::start().await;
    let out = agent.client.exec_collect(shell("pwd")).await.unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        agent.workspace.to_str().unwrap()
    );
}

#[tokio::test]
async fn exec_cwd_is_honoured() {
    let agent = ServedAgent::start().await;
    let req = ExecRequest {
        cwd: Some("/tmp".into()),
        ..shell("pwd")
    };
    let out = agent.client.exec_collect(req).await.unwrap();
    assert_eq!(out.stdout, b"/tmp\n");
}

#[tokio::test]
async fn exec_stdin_is_fed_then_closed() {
    let agent = ServedAgent::start().await;
    let req = ExecRequest {
        stdin: Some(b"hello\nworld\n".to_vec()),
        ..shell("wc -l")
    };
    let out = agent.client.exec_collect(req).await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
}

#[tokio::test]
async fn exec_without_stdin_reads_eof() {
    let agent = ServedAgent::start().await;
    let out = agent
        .client
        .exec_collect(shell("cat; echo done"))
        .await
        .unwrap();
    assert_eq!(out.stdout, b"done\n");
}

#[tokio::test]
async fn exec_timeout_kills_grandchildren() {
    let agent = ServedAgent::start().await;
    let nap = format!("sleep 97.{}", std::process::id());
    let req = ExecRequest {
        timeout_ms: Some(300),
        ..shell(&format!("sh -c '{nap} & {nap}' & wait"))
    };
    let out = agent.client.exec_collect(req).await.unwrap();
    let status = (out.status.exit_code, out.status.timed_out);
    assert_eq!(status, (124, true));
    // SIGKILLed processes vanish from pgrep once the kernel has torn them down.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = std::process::Command::new("pgrep")
            .arg("-f")
            .arg(&nap)
            .output()
            .unwrap();
        let left = String::from_utf8_lossy(&left.stdout).trim().to_owned();
        if left.is_empty() {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "still running: {left}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn exec_timeout_kills_background_sleepers() {
    let agent = ServedAgent::start().await;
    let req = ExecRequest {
        timeout_ms: Some(300),
        ..shell("sleep 100 & sleep 100")
    };
    let mut pid = 0;
    let status = agent
        .client
        .exec_events(req, |e| {
            if let ExecEvent::Started { pid: p, .. } = e {
                pid = p;
            }
        })
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let group = sh(&format!("pgrep -g {pid} || true"));
    assert_eq!((status.exit_code, group.trim()), (124, ""));
}

#[tokio::test]
async fn exec_killed_by_signal_is_128_plus_n() {
    let agent = ServedAgent::start().await;
    let out = agent
        .client
        .exec_collect(shell("kill -TERM $$"))
        .await
        .unwrap();
    assert_eq!((out.status.exit_code, out.status.signal), (143, Some(15)));
}

#[tokio::test]
async fn exec_background_process_survives_across_execs() {
    let agent = ServedAgent::start().await;
    let start = shell("sleep 30 > /dev/null 2>&1 & echo $!");
    let out = agent.client.exec_collect(start).await.unwrap();
    let pid = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let check = agent
        .client
        .exec_collect(shell(&format!("kill -0 {pid} && echo alive")))
        .await
        .unwrap();
    assert_eq!(check.stdout, b"alive\n");
}

#[tokio::test]
async fn exec_background_holding_pipe_does_not_hang() {
    let agent = ServedAgent::start().await;
    let started = std::time::Instant::now();
    let out = agent
        .client
        .exec_collect(shell("sleep 30 & echo hi"))
        .await
        .unwrap();
    assert_eq!(
        (
            out.stdout.as_slice(),
            started.elapsed() < Duration::from_secs(5)
        ),
        (&b"hi\n"[..], true)
    );
}

#[tokio::test]
async fn exec_missing_program_is_remote_not_found() {
    let agent = ServedAgent::start().await;
    let req = ExecRequest {
        argv: Some(vec!["/nonexistent/prog".into()]),
        ..Default::default()
    };
    let err = agent.client.exec_collect(req).await.unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotFound), "{err:?}");
}

#[tokio::test]
async fn exec_both_argv_and_shell_is_bad_request() {
    let agent = ServedAgent::start().await;
    let req = ExecRequest {
        argv: Some(vec!["true".into()]),
        ..shell("true")
    };
    let err = agent.client.exec_collect(req).await.unwrap_err();
    assert!(
        matches!(
            err,
            AgentError::Remote {
                code: ErrorCode::BadRequest,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn signal_request_kills_running_exec() {
    let agent = ServedAgent::start().await;
    let other = agent.new_client();
    let (tx, rx) = tokio::sync::oneshot::channel();
    let mut tx = Some(tx);
    let run = agent.client.exec_events(shell("sleep 100"), move |e| {
        if let ExecEvent::Started { exec_id, .. } = e {
            let _ = tx.take().map(|tx| tx.send(exec_id));
        }
    });
    let kill = async {
        let exec_id = rx.await.unwrap();
        other.signal(exec_id, libc::SIGKILL).await.unwrap();
    };
    let (status, ()) = tokio::join!(run, kill);
    assert_eq!(status.unwrap().exit_code, 137);
}

#[tokio::test]
async fn signal_unknown_exec_is_not_found() {
    let agent = ServedAgent::start().await;
    let err = agent
        .client
        .signal(999_999, libc::SIGTERM)
        .await
        .unwrap_err();
    assert_eq!(err.remote_code(), Some(ErrorCode::NotFound));
}

#[tokio::test]
async fn exec_sequential_calls_reuse_one_connection() {
    let agent = ServedAgent::start().await;
    for i in 0..20 {
        let out = agent
            .client
            .exec_collect(shell(&format!("echo {i}")))
            .await
            .unwrap();
        assert_eq!(out.stdout, format!("{i}\n").into_bytes());
    }
}

#[tokio::test]
async fn exec_client_disconnect_kills_process_group() {
    let agent = ServedAgent::start().await;
    let nap = format!("sleep 96.{}", std::process::id());
    let run = agent.client.exec_collect(shell(&format!("{nap} & {nap}")));
    let gave_up = tokio::time::timeout(Duration::from_millis(300), run)
        .await
        .is_err();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let left = std::process::Command::new("pgrep")
        .arg("-f")
        .arg(&nap)
        .output()
        .unwrap();
    assert_eq!(
        (gave_up, String::from_utf8_lossy(&left.stdout).trim()),
        (true, "")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_concurrent_calls_all_complete() {
    let agent = ServedAgent::start().await;
    let client = std::sync::Arc::new(agent.new_client());
    let mut set = tokio::task::JoinSet::new();
    for i in 0..40 {
        let client = std::sync::Arc::clone(&client);
        set.spawn(async move {
            (
                i,
                client
                    .exec_collect(shell(&format!("echo {i}")))
                    .await
                    .unwrap()
                    .stdout,
            )
        });
    }
    let mut outputs = set.join_all().await;
    outputs.sort();
    let expected: Vec<(i32, Vec<u8>)> = (0..40)
        .map(|i| (i, format!("{i}\n").into_bytes()))
        .collect();
    assert_eq!(outputs, expected);
}
