//! Memory snapshots of namespace sandboxes (CRIU), end to end over HTTP:
//! `POST /vms/:name/snapshots` with `include_memory: true` and its restore,
//! for an idle sandbox, a python process holding ~100 MiB and ~1 GiB of
//! objects, and a node HTTP server; the workspace-only snapshot of the same
//! sandbox in the same run as the baseline; the image size per memory
//! snapshot against the sandbox's resident memory.
//!
//! Reproduce (as root, with CRIU installed by `scripts/install-deps.sh` and
//! the debootstrap base image):
//!
//! ```text
//! cargo build --release -p rewind-agent && cargo bench -p rewind --bench memory
//! ```
//!
//! Environment: `REWIND_BENCH_BASE_IMAGE` (default: the debootstrap image
//! under /var/lib/rewind), `REWIND_BENCH_ITERS` (default 10; the 1 GiB case
//! runs a third of them, at least 2), `REWIND_BENCH_SKIP_GIB=1` skips it,
//! `REWIND_BENCH_ONLY=<text>` runs only the workloads whose label contains
//! it; `RUST_LOG=rewind=debug` prints the service's phase logs.

mod common;

use std::path::PathBuf;

use common::{row, timed, Client};
use rewind::config::{Config, Overrides};
use serde_json::{json, Value};

fn base_image() -> PathBuf {
    let image = std::env::var_os("REWIND_BENCH_BASE_IMAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/rewind/images/base/rootfs"));
    assert!(
        image.join("usr/bin/python3").exists() && image.join("usr/bin/node").exists(),
        "{} has no python3/node: build it with images/build-rootfs.sh",
        image.display()
    );
    image
}

fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap();
    ["release", "debug"]
        .iter()
        .map(|profile| target.parent().unwrap().join(profile).join("rewind-agent"))
        .find(|p| p.exists())
        .expect("build the agent first: cargo build --release -p rewind-agent")
}

/// One workload: a command started in the background in a fresh sandbox,
/// which has finished setting up when `/tmp/ready` exists.
struct Case {
    label: &'static str,
    start: &'static str,
    /// Iterations relative to `REWIND_BENCH_ITERS` (1 GiB: a third).
    divisor: usize,
}

const CASES: &[Case] = &[
    Case {
        label: "idle sandbox",
        start: "touch /tmp/ready",
        divisor: 1,
    },
    Case {
        label: "python holding ~100 MiB of objects",
        start: "nohup python3 -c 'import time; d = [(\"%08d\" % i) * 8 for i in range(900000)]; open(\"/tmp/ready\", \"w\").close(); time.sleep(10**6)' >/dev/null 2>&1 &",
        divisor: 1,
    },
    Case {
        label: "python holding ~1 GiB of objects",
        start: "nohup python3 -c 'import time; d = [(\"%08d\" % i) * 8 for i in range(9000000)]; open(\"/tmp/ready\", \"w\").close(); time.sleep(10**6)' >/dev/null 2>&1 &",
        divisor: 3,
    },
    Case {
        label: "node HTTP server",
        start: "nohup node -e 'require(\"http\").createServer((q, s) => s.end(\"ok\")).listen(8080, \"127.0.0.1\", () => require(\"fs\").writeFileSync(\"/tmp/ready\", \"\"))' >/dev/null 2>&1 &",
        divisor: 1,
    },
];

/// Samples of one case.
#[derive(Default)]
struct Measured {
    files: Vec<f64>,
    snapshot: Vec<f64>,
    restore: Vec<f64>,
    image_bytes: Vec<f64>,
    resident_bytes: f64,
}

/// Resident memory of every process in the sandbox, in bytes.
async fn resident(client: &Client, vm: &str) -> f64 {
    let sum = "ps -eo rss= | awk '{s += $1} END {print s * 1024}'";
    let out = client
        .post(&format!("/vms/{vm}/run"), json!({"command": sum}))
        .await;
    out["stdout"].as_str().unwrap().trim().parse().unwrap()
}

async fn measure(client: &Client, vm: &str, case: &Case, iters: usize) -> Measured {
    client.post("/vms", json!({"name": vm})).await;
    let wait = format!(
        "{}\nwhile [ ! -e /tmp/ready ]; do sleep 0.05; done",
        case.start
    );
    client
        .post(&format!("/vms/{vm}/run"), json!({"command": wait}))
        .await;
    let mut m = Measured {
        resident_bytes: resident(client, vm).await,
        ..Default::default()
    };
    let path = format!("/vms/{vm}/snapshots");
    for i in 0..iters {
        let files = json!({"name": format!("f{i}")});
        timed(&mut m.files, client.post(&path, files)).await;
        let mem = json!({"name": format!("m{i}"), "include_memory": true});
        let created: Value = timed(&mut m.snapshot, client.post(&path, mem)).await;
        m.image_bytes
            .push(created["memory_image_bytes"].as_f64().unwrap());
        let restore = format!("{path}/m{i}/restore");
        timed(&mut m.restore, client.post(&restore, json!(null))).await;
        for snap in [format!("f{i}"), format!("m{i}")] {
            client.delete(&format!("{path}/{snap}")).await;
        }
    }
    client.delete(&format!("/vms/{vm}")).await;
    m
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / (1 << 20) as f64)
}

fn main() {
    let iters: usize = std::env::var("REWIND_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let skip_gib = std::env::var_os("REWIND_BENCH_SKIP_GIB").is_some();
    let only = std::env::var("REWIND_BENCH_ONLY").ok();
    if std::env::var_os("RUST_LOG").is_some() {
        // The service's phase logs (`RUST_LOG=rewind=debug`) on stderr.
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let overrides = Overrides {
            data_dir: Some(common::data_dir("memory")),
            runtime: Some("namespace".into()),
            base_image: Some(base_image()),
            agent_binary: Some(agent_binary()),
            ..Default::default()
        };
        let mut config = Config::load(None, &overrides).unwrap();
        config.rate_limit.enabled = false;
        let (client, server) = common::start(config).await;
        common::delete_all_vms(&client).await;
        let mut lines = common::header();
        let mut sizes = vec![
            "| workload | resident MiB | image MiB (p50) | image ÷ resident |".to_string(),
            "|---|---|---|---|".to_string(),
        ];
        for (i, case) in CASES.iter().enumerate() {
            let picked = only.as_deref().is_none_or(|o| case.label.contains(o));
            if (skip_gib && case.divisor > 1) || !picked {
                continue;
            }
            let n = (iters / case.divisor).max(2);
            let m = measure(&client, &format!("bench-mem-{i}"), case, n).await;
            let mut images = m.image_bytes.clone();
            images.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let image = common::percentile(&images, 0.5);
            lines.push(row(&format!("{}: workspace-only snapshot", case.label), m.files));
            lines.push(row(&format!("{}: memory snapshot", case.label), m.snapshot));
            lines.push(row(&format!("{}: memory restore", case.label), m.restore));
            sizes.push(format!(
                "| {} | {} | {} | {:.2} |",
                case.label,
                mib(m.resident_bytes),
                mib(image),
                image / m.resident_bytes
            ));
        }
        common::delete_all_vms(&client).await;
        println!("\nrewind memory snapshot benchmark (CRIU; base image {})\n", base_image().display());
        println!("{}\n\n{}", lines.join("\n"), sizes.join("\n"));
        println!("\nreproduce: cargo build --release -p rewind-agent && cargo bench -p rewind --bench memory (a debug build: cargo build -p rewind-agent && cargo bench --profile dev -p rewind --bench memory)");
        server.abort();
    });
}
