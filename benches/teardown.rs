//! Teardown benchmark: does deleting busy sandboxes stall the service's
//! async workers? One client runs `true` in its own sandbox over and over
//! while 8 other sandboxes, each with 300 processes, are deleted at once. Compares that client's
//! p50 with the same client on an idle service (goal: within 2×).
//!
//! Reproduce (as root):
//!
//! ```text
//! cargo build -p rewind-agent && cargo bench -p rewind --bench teardown
//! ```
//!
//! Environment: `REWIND_BENCH_BASE_IMAGE` (default: the debootstrap image
//! under /var/lib/rewind, else the busybox test rootfs),
//! `REWIND_BENCH_ROUNDS` (rounds of 8 deletes, default 5). Data dir:
//! /var/tmp/rewind-bench/teardown.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::{row, timed, Client};
use serde_json::json;

const DELETES: usize = 8;
/// Per busy sandbox: 300 sleeping processes (no CPU spinners: on a 2-core
/// host they would slow the probe by themselves, whatever the teardown does).
const BUSY: &str = "for i in $(seq 300); do sleep 600 >/dev/null 2>&1 & done; true";

async fn start() -> (Client, tokio::task::JoinHandle<()>) {
    common::start(common::config("teardown", common::base_image_or_busybox())).await
}

async fn run_true(client: &Client, probe: &mut Probe) {
    let out = timed(
        &mut probe.run,
        client.post("/vms/bench-probe/run", json!({"command": "true"})),
    )
    .await;
    assert_eq!(out["exitCode"], 0, "{out}");
    probe.exec.push(out["execMs"].as_f64().unwrap());
    probe.snapshot.push(out["snapshotMs"].as_f64().unwrap());
}

/// `GET /health`: no storage, no agent — pure async work of the service.
async fn health(client: &Client, samples: &mut Vec<f64>) {
    timed(samples, client.get("/health")).await;
}

#[derive(Default)]
struct Probe {
    run: Vec<f64>,
    /// The run's `execMs` and `snapshotMs`.
    exec: Vec<f64>,
    snapshot: Vec<f64>,
    health: Vec<f64>,
}

/// `run true` and `GET /health` in a loop until `stop`.
async fn probe_until(client: Arc<Client>, stop: Arc<AtomicBool>) -> Probe {
    let mut probe = Probe::default();
    while !stop.load(Ordering::SeqCst) {
        run_true(&client, &mut probe).await;
        health(&client, &mut probe.health).await;
    }
    probe
}

/// One round: 8 busy sandboxes, deleted at once while the probe runs.
async fn round(client: &Arc<Client>, r: usize, probe: &mut Probe, deletes: &mut Vec<f64>) {
    let names: Vec<String> = (0..DELETES)
        .map(|i| format!("bench-busy-{r}-{i}"))
        .collect();
    for name in &names {
        client.post("/vms", json!({"name": name})).await;
        client
            .post(&format!("/vms/{name}/run"), json!({"command": BUSY}))
            .await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe_until(client.clone(), stop.clone()));
    let tasks: Vec<_> = names
        .into_iter()
        .map(|name| {
            let c = client.clone();
            tokio::spawn(async move {
                let started = std::time::Instant::now();
                let status = c.delete(&format!("/vms/{name}")).await;
                assert!(status.is_success(), "delete {name}: {status}");
                started.elapsed().as_secs_f64() * 1000.0
            })
        })
        .collect();
    for task in tasks {
        deletes.push(task.await.unwrap());
    }
    stop.store(true, Ordering::SeqCst);
    let samples = prober.await.unwrap();
    probe.run.extend(samples.run);
    probe.exec.extend(samples.exec);
    probe.snapshot.extend(samples.snapshot);
    probe.health.extend(samples.health);
}

fn main() {
    let rounds: usize = std::env::var("REWIND_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let rt = common::runtime();
    rt.block_on(async {
        let (client, server) = start().await;
        let client = Arc::new(client);
        common::delete_all_vms(&client).await;
        client.post("/vms", json!({"name": "bench-probe"})).await;
        let mut idle = Probe::default();
        for _ in 0..100 {
            run_true(&client, &mut idle).await;
            health(&client, &mut idle.health).await;
        }
        let (mut busy, mut deletes) = (Probe::default(), vec![]);
        for r in 0..rounds {
            round(&client, r, &mut busy, &mut deletes).await;
        }
        common::delete_all_vms(&client).await;
        let ratio = median(&busy.run) / median(&idle.run);
        let health_ratio = median(&busy.health) / median(&idle.health);
        let mut lines = common::header();
        lines.push(row("run `true`, idle service", idle.run));
        lines.push(row(
            "run `true` while 8 busy sandboxes are deleted at once",
            busy.run,
        ));
        lines.push(row("… of which exec (`execMs`), idle", idle.exec));
        lines.push(row("… of which exec, during deletes", busy.exec));
        lines.push(row("… of which snapshot (`snapshotMs`), idle", idle.snapshot));
        lines.push(row("… of which snapshot, during deletes", busy.snapshot));
        lines.push(row("GET /health, idle service", idle.health));
        lines.push(row(
            "GET /health while 8 busy sandboxes are deleted at once",
            busy.health,
        ));
        lines.push(row("delete of a busy sandbox (8 at once)", deletes));
        println!(
            "\nrewind teardown benchmark (base image: {})\n",
            common::base_image_or_busybox().display()
        );
        println!("{}", lines.join("\n"));
        println!("\np50 during deletes / p50 idle: run `true` {ratio:.2} (goal ≤ 2), GET /health {health_ratio:.2}");
        server.abort();
    });
}

fn median(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    common::percentile(&s, 0.5)
}
