//! REPL benchmark: `sandbox.repl.run` of `1+1` on a warm Python REPL
//! (JSON-RPC over loopback HTTP, end to end, including the snapshot every
//! call leaves) against `python3 -c 'print(1+1)'` through
//! `POST /vms/:name/run`, in the same run, same service, same sandbox kind.
//!
//! Reproduce (as root, after `cargo build --release --workspace`; needs the
//! debootstrap base image with python3):
//!
//! ```text
//! cargo bench --bench repl
//! ```
//!
//! Environment: `REWIND_BENCH_BASE_IMAGE` (default: the debootstrap image
//! under /var/lib/rewind), `REWIND_BENCH_ITERS` (default 100).

mod common;

use std::path::PathBuf;

use common::{row, timed, Client};
use serde_json::{json, Value};

fn base_image() -> PathBuf {
    let image = std::env::var_os("REWIND_BENCH_BASE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rewind/images/base/rootfs"));
    assert!(
        image.join("usr/bin/python3").exists(),
        "{} has no python3: build it with images/build-rootfs.sh",
        image.display()
    );
    image
}

fn rpc(method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "method": method, "params": params, "id": 1})
}

async fn repl_samples(client: &Client, iters: usize) -> (Vec<f64>, Vec<f64>) {
    let params =
        json!({"sandbox": "repl", "namespace": "bench", "language": "python", "code": "1+1"});
    let (mut total, mut first) = (vec![], vec![]);
    client
        .post(
            "/api/v1/rpc",
            rpc(
                "sandbox.start",
                json!({"sandbox": "repl", "namespace": "bench"}),
            ),
        )
        .await;
    timed(
        &mut first,
        client.post("/api/v1/rpc", rpc("sandbox.repl.run", params.clone())),
    )
    .await;
    for _ in 0..iters {
        let out = timed(
            &mut total,
            client.post("/api/v1/rpc", rpc("sandbox.repl.run", params.clone())),
        )
        .await;
        assert_eq!(out["result"]["stdout"], "2\n", "{out}");
    }
    (first, total)
}

async fn run_samples(client: &Client, iters: usize) -> Vec<f64> {
    client.post("/vms", json!({"name": "bench-py-c"})).await;
    let body = json!({"command": "python3 -c 'print(1+1)'"});
    let mut total = vec![];
    client.post("/vms/bench-py-c/run", body.clone()).await;
    for _ in 0..iters {
        let out = timed(&mut total, client.post("/vms/bench-py-c/run", body.clone())).await;
        assert_eq!(out["stdout"], "2\n", "{out}");
    }
    total
}

fn main() {
    let iters = common::iters(100);
    let rt = common::runtime();
    rt.block_on(async {
        let (client, server) = common::start(common::config("repl", base_image())).await;
        common::delete_all_vms(&client).await;
        let (first, warm) = repl_samples(&client, iters).await;
        let cold = run_samples(&client, iters).await;
        let mut lines = common::header();
        lines.push(row(
            "`sandbox.repl.run` `1+1`, first cell (starts python)",
            first,
        ));
        lines.push(row("`sandbox.repl.run` `1+1`, warm python REPL", warm));
        lines.push(row("`run` `python3 -c 'print(1+1)'`", cold));
        common::delete_all_vms(&client).await;
        println!(
            "\nrewind REPL benchmark (base image: {})\n",
            base_image().display()
        );
        println!("{}", lines.join("\n"));
        server.abort();
    });
}
