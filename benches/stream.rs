//! Streaming benchmark: what a client waits for before it sees output, over
//! a real loopback socket against the real service (namespace runtime,
//! loop-mounted Btrfs pool, real agent).
//!
//! Reproduce (as root, after `cargo build --release --workspace`):
//!
//! ```text
//! cargo bench --bench stream
//! ```
//!
//! Prints a markdown table:
//! 1. `echo hi` as a JSON run (end to end) vs as server-sent events (time to
//!    the first `stdout` event, and to the `exit` event).
//! 2. `echo hi; sleep 1` the same way: the JSON response waits for the end,
//!    the stream delivers the line at once.
//! 3. A terminal session (`GET /vms/:name/pty?command=cat`): WebSocket
//!    handshake to the 101, and one keystroke's echo round trip.
//!
//! Environment: `REWIND_BENCH_BASE_IMAGE` (default: the debootstrap image
//! under /var/lib/rewind, else a busybox rootfs), `REWIND_BENCH_ITERS`.

mod common;

use std::time::{Duration, Instant};

use common::{row, timed, Client};
use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// Milliseconds to the first `stdout` event and to the end of the stream.
async fn sse_run(client: &Client, vm: &str, command: &str) -> (f64, f64) {
    let started = Instant::now();
    let mut resp = client
        .http()
        .post(format!("{}/vms/{vm}/run", client.base()))
        .header("x-api-key", client.key())
        .header("accept", "text/event-stream")
        .json(&json!({ "command": command }))
        .send()
        .await
        .unwrap();
    let (mut first, mut seen) = (None, String::new());
    while let Some(chunk) = resp.chunk().await.unwrap() {
        seen.push_str(&String::from_utf8_lossy(&chunk));
        if first.is_none() && seen.contains("event: stdout") {
            first = Some(started.elapsed());
        }
    }
    assert!(seen.contains("event: exit"), "{seen}");
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    (ms(first.expect("a stdout event")), ms(started.elapsed()))
}

async fn bench_runs(client: &Client, vm: &str, iters: usize) -> Vec<String> {
    let mut lines = vec![];
    for (label, command, n) in [
        ("echo hi", "echo hi", iters),
        ("echo hi; sleep 1", "echo hi; sleep 1", (iters / 20).max(3)),
    ] {
        let (mut json_total, mut first, mut total) = (vec![], vec![], vec![]);
        for _ in 0..n {
            let body = json!({ "command": command });
            timed(
                &mut json_total,
                client.post(&format!("/vms/{vm}/run"), body),
            )
            .await;
            let (f, t) = sse_run(client, vm, command).await;
            first.push(f);
            total.push(t);
        }
        lines.push(row(&format!("`{label}` JSON run: response"), json_total));
        lines.push(row(
            &format!("`{label}` SSE run: first stdout event"),
            first,
        ));
        lines.push(row(&format!("`{label}` SSE run: exit event"), total));
    }
    lines
}

async fn bench_pty(client: &Client, vm: &str, iters: usize) -> Vec<String> {
    let url = format!("{}/vms/{vm}/pty?command=cat", client.base()).replace("http", "ws");
    let mut req = url.into_client_request().unwrap();
    req.headers_mut()
        .insert("x-api-key", client.key().parse().unwrap());
    let (mut open, mut echo) = (vec![], vec![]);
    for _ in 0..(iters / 10).max(3) {
        let (mut ws, _) = timed(&mut open, tokio_tungstenite::connect_async(req.clone()))
            .await
            .unwrap();
        for i in 0..10 {
            let key = format!("{}", i % 10);
            let t = Instant::now();
            ws.send(Message::Binary(key.clone().into_bytes().into()))
                .await
                .unwrap();
            loop {
                match ws.next().await.unwrap().unwrap() {
                    Message::Binary(data) if data.as_ref().contains(&key.as_bytes()[0]) => break,
                    _ => {}
                }
            }
            echo.push(t.elapsed().as_secs_f64() * 1000.0);
        }
        ws.send(Message::Binary(b"\n\x04".to_vec().into()))
            .await
            .unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    }
    vec![
        row("terminal session: WebSocket handshake (101)", open),
        row("terminal session: keystroke echo round trip", echo),
    ]
}

fn main() {
    let iters = common::iters(100);
    let rt = common::runtime();
    rt.block_on(async {
        let (client, server) =
            common::start(common::config("stream", common::base_image_or_busybox())).await;
        common::delete_all_vms(&client).await;
        let vm = format!("bench-stream-{}", std::process::id());
        client.post("/vms", json!({"name": vm})).await;
        let mut lines = common::header();
        lines.extend(bench_runs(&client, &vm, iters).await);
        lines.extend(bench_pty(&client, &vm, iters).await);
        common::delete_all_vms(&client).await;
        println!(
            "\nrewind streaming benchmark (base image: {})\n",
            common::base_image_or_busybox().display()
        );
        println!("{}", lines.join("\n"));
        server.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
    });
}
