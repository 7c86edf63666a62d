//! Exec latency of `true` over the Unix socket, against a real agent
//! process: `cargo bench -p rewind-agent --bench exec_latency`.
//! Compares a pooled connection with a fresh connection per call.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rewind_agent::client::{AgentClient, Transport};
use rewind_agent::protocol::ExecRequest;

const RUNS: usize = 200;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<34} p50 {:>8.3} ms   p99 {:>8.3} ms",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3
    );
}

async fn measure(socket: &std::path::Path, req: &ExecRequest, fresh: bool) -> Vec<Duration> {
    let pooled = AgentClient::new(Transport::Unix(socket.to_owned()));
    let mut samples = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let started = Instant::now();
        let status = if fresh {
            let client = AgentClient::new(Transport::Unix(socket.to_owned()));
            client.exec_collect(req.clone()).await
        } else {
            pooled.exec_collect(req.clone()).await
        };
        samples.push(started.elapsed());
        assert_eq!(status.unwrap().status.exit_code, 0);
    }
    samples
}

#[tokio::main]
async fn main() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    let mut agent = Command::new(env!("CARGO_BIN_EXE_rewind-agent"))
        .args(["serve", "--listen"])
        .arg(format!("unix:{}", socket.display()))
        .arg("--workspace")
        .arg(dir.path())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let client = AgentClient::new(Transport::Unix(socket.clone()));
    while client.ping().await.is_err() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let argv = ExecRequest {
        argv: Some(vec!["true".into()]),
        ..Default::default()
    };
    let shell = ExecRequest {
        shell: Some("true".into()),
        ..Default::default()
    };
    println!("exec latency over a Unix socket, {RUNS} runs each");
    report(
        "argv [true], pooled connection",
        measure(&socket, &argv, false).await,
    );
    report(
        "argv [true], fresh connection",
        measure(&socket, &argv, true).await,
    );
    report(
        "sh -c true, pooled connection",
        measure(&socket, &shell, false).await,
    );
    agent.kill().unwrap();
    agent.wait().unwrap();
}
