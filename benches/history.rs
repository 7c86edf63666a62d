//! History benchmark: per-command snapshot cost over thousands of commands
//! on a large workspace, with the default history thinning.
//!
//! One sandbox, a workspace of DIRS × 1000 empty files + 1000 small data
//! files (default DIRS = 20: 21k files), then RUNS commands that each append
//! one line to one file. Prints `snapshotMs` and end-to-end p50/p90 per block
//! of 100 runs, the ratio of the last block's snapshot p50 to the first's
//! (goal ≤ 1.5), and how many snapshots the sandbox holds at the end.
//!
//! Reproduce (as root):
//!
//! ```text
//! cargo build -p rewind-agent && cargo bench -p rewind --bench history
//! REWIND_BENCH_HISTORY_RUNS=500 cargo bench -p rewind --bench history   # shorter
//! ```
//!
//! Environment: `REWIND_BENCH_HISTORY_RUNS` (default 2000),
//! `REWIND_BENCH_HISTORY_DIRS` (default 20), `REWIND_BENCH_BASE_IMAGE`,
//! `REWIND_BENCH_DIR` (data dir, default /var/tmp/rewind-bench/history).

mod common;

use std::path::PathBuf;

use common::{header, percentile, row, timed, Client};
use rewind::config::{Config, Overrides};
use serde_json::json;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn data_dir() -> PathBuf {
    match std::env::var_os("REWIND_BENCH_DIR") {
        Some(dir) => {
            let dir = PathBuf::from(dir);
            std::fs::create_dir_all(&dir).unwrap();
            let _ = std::fs::remove_file(dir.join("rewind.db"));
            dir
        }
        None => common::data_dir("history"),
    }
}

async fn start() -> (Client, tokio::task::JoinHandle<()>) {
    let overrides = Overrides {
        data_dir: Some(data_dir()),
        runtime: Some("namespace".into()),
        base_image: Some(common::base_image_or_busybox()),
        agent_binary: Some(common::agent_binary()),
        ..Default::default()
    };
    common::start(Config::load(None, &overrides).unwrap()).await
}

/// DIRS × 1000 empty files under t/, 1000 small files under data/.
async fn populate(client: &Client, vm: &str, dirs: usize) {
    let command = format!(
        "mkdir -p t data && cd t && for d in $(seq {dirs}); do mkdir $d; \
         (cd $d && seq 1000 | xargs touch); done && cd ../data && \
         for i in $(seq 1000); do echo line $i > $i; done"
    );
    let out = client
        .post(
            &format!("/vms/{vm}/run"),
            json!({"command": command, "timeout": 600}),
        )
        .await;
    assert_eq!(out["exitCode"], json!(0), "{out}");
}

fn block_row(first: usize, snap: &mut [f64], total: &mut [f64]) -> String {
    snap.sort_by(|a, b| a.partial_cmp(b).unwrap());
    total.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "| {}–{} | {:.1} | {:.1} | {:.1} | {:.1} |",
        first + 1,
        first + snap.len(),
        percentile(snap, 0.5),
        percentile(snap, 0.9),
        percentile(total, 0.5),
        percentile(total, 0.9),
    )
}

fn p50(samples: &[f64]) -> f64 {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    percentile(&s, 0.5)
}

#[tokio::main]
async fn main() {
    let runs = env_usize("REWIND_BENCH_HISTORY_RUNS", 2000);
    let dirs = env_usize("REWIND_BENCH_HISTORY_DIRS", 20);
    let (client, server) = start().await;
    common::delete_all_vms(&client).await;
    client.post("/vms", json!({"name": "history"})).await;
    populate(&client, "history", dirs).await;
    let (mut snap, mut total) = (Vec::new(), Vec::new());
    for i in 1..=runs {
        let body = json!({"command": format!("echo {i} >> t/1/1")});
        let out = timed(&mut total, client.post("/vms/history/run", body)).await;
        snap.push(out["snapshotMs"].as_f64().unwrap());
    }
    let listed = client.get("/vms/history/snapshots").await;
    let held = listed["snapshots"].as_array().unwrap().len();
    println!("\n{dirs}k + 1k files, {runs} runs of a 1-line append, default thinning\n");
    println!("| runs | snapshotMs p50 | p90 | end to end p50 ms | p90 |");
    println!("|---|---|---|---|---|");
    for first in (0..runs).step_by(100) {
        let end = (first + 100).min(runs);
        println!(
            "{}",
            block_row(
                first,
                &mut snap[first..end].to_vec(),
                &mut total[first..end].to_vec()
            )
        );
    }
    let last = runs.saturating_sub(100);
    let ratio = p50(&snap[last..]) / p50(&snap[..runs.min(100)]);
    println!("\nsnapshotMs p50, last 100 runs / first 100 runs: {ratio:.2}");
    println!("snapshots held at the end (incl. initial): {held}\n");
    let all_runs = [
        row("all runs: snapshotMs", snap.clone()),
        row("all runs: end to end", total.clone()),
    ];
    println!(
        "{}",
        header()
            .into_iter()
            .chain(all_runs)
            .collect::<Vec<_>>()
            .join("\n")
    );
    common::delete_all_vms(&client).await;
    server.abort();
}
