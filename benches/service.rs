//! Service benchmark: a real HTTP client over loopback against the real
//! service (namespace runtime, loop-mounted Btrfs pool).
//!
//! Reproduce (as root, after `cargo build --release --workspace`):
//!
//! ```text
//! cargo bench --bench service
//! ```
//!
//! Prints markdown tables:
//! 1. `POST /vms/:name/run` of `true`: end-to-end p50/p99, split into exec
//!    time and snapshot time (from the response's `execMs`/`snapshotMs`), at
//!    concurrency 1 (one sandbox) and 16 (16 sandboxes, one client each).
//! 2. Namespace runtime: sandbox create → first command finished; restore of
//!    a running sandbox.
//!
//! Environment: `REWIND_BENCH_BASE_IMAGE` (default: the debootstrap image
//! under /var/lib/rewind, else a busybox rootfs), `REWIND_BENCH_ITERS`.

mod common;

use std::time::Duration;

use common::{row, timed, Client};
use serde_json::json;

async fn start() -> (Client, tokio::task::JoinHandle<()>) {
    common::start(common::config("service", common::base_image_or_busybox())).await
}

async fn run_samples(client: &Client, vm: &str, iters: usize) -> (Vec<f64>, Vec<f64>, Vec<f64>) {
    let (mut total, mut exec, mut snap) = (vec![], vec![], vec![]);
    for _ in 0..iters {
        let out = timed(
            &mut total,
            client.post(&format!("/vms/{vm}/run"), json!({"command": "true"})),
        )
        .await;
        exec.push(out["execMs"].as_f64().unwrap());
        snap.push(out["snapshotMs"].as_f64().unwrap());
    }
    (total, exec, snap)
}

async fn bench_runs(client: &std::sync::Arc<Client>, iters: usize) -> Vec<String> {
    let mut lines = vec![];
    client.post("/vms", json!({"name": "bench-c1"})).await;
    run_samples(client, "bench-c1", 5).await;
    let (t, e, s) = run_samples(client, "bench-c1", iters).await;
    lines.push(row("run `true`, concurrency 1: end to end", t));
    lines.push(row("run `true`, concurrency 1: exec", e));
    lines.push(row("run `true`, concurrency 1: snapshot", s));
    for i in 0..16 {
        client
            .post("/vms", json!({"name": format!("bench-c16-{i}")}))
            .await;
    }
    let tasks: Vec<_> = (0..16)
        .map(|i| {
            let c = client.clone();
            tokio::spawn(async move { run_samples(&c, &format!("bench-c16-{i}"), iters / 4).await })
        })
        .collect();
    let (mut t, mut e, mut s) = (vec![], vec![], vec![]);
    for task in tasks {
        let (a, b, c) = task.await.unwrap();
        t.extend(a);
        e.extend(b);
        s.extend(c);
    }
    lines.push(row(
        "run `true`, concurrency 16 (16 sandboxes): end to end",
        t,
    ));
    lines.push(row("run `true`, concurrency 16: exec", e));
    lines.push(row("run `true`, concurrency 16: snapshot", s));
    lines
}

async fn bench_lifecycle(client: &Client, iters: usize) -> Vec<String> {
    let mut create = vec![];
    for i in 0..iters {
        let name = format!("bench-life-{i}");
        timed(&mut create, async {
            client.post("/vms", json!({"name": name})).await;
            client
                .post(&format!("/vms/{name}/run"), json!({"command": "true"}))
                .await;
        })
        .await;
    }
    client.post("/vms/bench-life-0/run", json!({"command": "cd /tmp && (sleep 600 >/dev/null 2>&1 &); seq 1 1000 | xargs -n 100 touch"})).await;
    let mut restore = vec![];
    for _ in 0..iters * 2 {
        timed(
            &mut restore,
            client.post("/vms/bench-life-0/snapshots/initial/restore", json!({})),
        )
        .await;
    }
    vec![
        row("create sandbox → first command finished", create),
        row("restore of a running sandbox (HTTP end to end)", restore),
    ]
}

fn main() {
    let iters = common::iters(200);
    let rt = common::runtime();
    rt.block_on(async {
        let (client, server) = start().await;
        let client = std::sync::Arc::new(client);
        common::delete_all_vms(&client).await;
        let mut lines = common::header();
        lines.extend(bench_runs(&client, iters).await);
        lines.extend(bench_lifecycle(&client, (iters / 10).max(5)).await);
        common::delete_all_vms(&client).await;
        println!(
            "\nrewind service benchmark (base image: {})\n",
            common::base_image_or_busybox().display()
        );
        println!("{}", lines.join("\n"));
        server.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}
