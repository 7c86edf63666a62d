//! Memory snapshots of namespace sandboxes (CRIU), end to end over HTTP:
//! `POST /vms/:name/snapshots` with `include_memory: true` and its restore,
//! for an idle sandbox, a python process holding ~100 MiB and ~1 GiB of
//! objects, and a node HTTP server; the workspace-only snapshot of the same
//! sandbox in the same run as the baseline; the image size per memory
//! snapshot against the sandbox's resident memory; and, for the large
//! images, seconds per GiB of image next to the floors measured in the same
//! run: a buffered write of as many bytes into the same Btrfs pool (a dump
//! writes its image there), and a read of the snapshot's page images into
//! freshly mapped anonymous memory (what `criu restore` does with them).
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
use rewind::runtime::namespace::is_page_image;
use rewind_storage::Storage;
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
    /// ms to write `image_bytes` into the pool, after each restore.
    pool_write: Vec<f64>,
    /// ms to read each snapshot's page images into fresh memory, after its
    /// restore.
    fresh_read: Vec<f64>,
}

/// ms to write `bytes` (not zeros) into a new file in the pool with 1 MiB
/// buffered writes, as CRIU writes an image; the file is then removed.
fn time_pool_write(pool: &std::path::Path, bytes: u64) -> f64 {
    use std::io::Write;
    let path = pool.join("bench-floor.tmp");
    let chunk: Vec<u8> = (0..1u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    let t = std::time::Instant::now();
    let mut file = std::fs::File::create(&path).unwrap();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        file.write_all(&chunk[..n]).unwrap();
        left -= n as u64;
    }
    drop(file);
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    std::fs::remove_file(&path).unwrap();
    ms
}

/// ms to read the page images in `images` (in the page cache, as the
/// restore just left them) into freshly mapped anonymous memory, as `criu
/// restore` reads them into the restored processes.
fn time_fresh_read(images: &std::path::Path) -> f64 {
    use std::io::Read;
    let pages: Vec<(PathBuf, usize)> = std::fs::read_dir(images)
        .unwrap()
        .flatten()
        .filter(|e| is_page_image(&e.file_name().to_string_lossy()))
        .map(|e| (e.path(), e.metadata().unwrap().len() as usize))
        .collect();
    let total = pages.iter().map(|(_, len)| len).sum::<usize>();
    let t = std::time::Instant::now();
    let mut memory = memmap2::MmapMut::map_anon(total).unwrap();
    let mut at = 0;
    for (path, len) in pages {
        let mut file = std::fs::File::open(path).unwrap();
        file.read_exact(&mut memory[at..at + len]).unwrap();
        at += len;
    }
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    drop(memory);
    ms
}

/// Resident memory of every process in the sandbox, in bytes.
async fn resident(client: &Client, vm: &str) -> f64 {
    let sum = "ps -eo rss= | awk '{s += $1} END {print s * 1024}'";
    let out = client
        .post(&format!("/vms/{vm}/run"), json!({"command": sum}))
        .await;
    out["stdout"].as_str().unwrap().trim().parse().unwrap()
}

async fn measure(
    client: &Client,
    storage: &Storage,
    vm: &str,
    case: &Case,
    iters: usize,
) -> Measured {
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
    let pool = storage.pool_path().to_path_buf();
    for i in 0..iters {
        let files = json!({"name": format!("f{i}")});
        timed(&mut m.files, client.post(&path, files)).await;
        let mem = json!({"name": format!("m{i}"), "include_memory": true});
        let created: Value = timed(&mut m.snapshot, client.post(&path, mem)).await;
        m.image_bytes
            .push(created["memory_image_bytes"].as_f64().unwrap());
        let restore = format!("{path}/m{i}/restore");
        timed(&mut m.restore, client.post(&restore, json!(null))).await;
        let image = *m.image_bytes.last().unwrap() as u64;
        if image > BIG_IMAGE {
            let snap = format!("m{i}").parse().unwrap();
            let aux = storage.snapshot_aux_path(&vm.parse().unwrap(), &snap);
            let images = aux.join(rewind::sandbox::VM_STATE_DIR);
            let read = tokio::task::spawn_blocking(move || time_fresh_read(&images));
            m.fresh_read.push(read.await.unwrap());
            let pool = pool.clone();
            let write = tokio::task::spawn_blocking(move || time_pool_write(&pool, image));
            m.pool_write.push(write.await.unwrap());
        }
        for snap in [format!("f{i}"), format!("m{i}")] {
            client.delete(&format!("{path}/{snap}")).await;
        }
    }
    client.delete(&format!("/vms/{vm}")).await;
    m
}

/// Images above this size get the per-GiB table.
const BIG_IMAGE: u64 = 64 << 20;

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
        let (client, server, service) = common::start_service(config).await;
        common::delete_all_vms(&client).await;
        let mut lines = common::header();
        let mut sizes = vec![
            "| workload | resident MiB | image MiB (p50) | image ÷ resident |".to_string(),
            "|---|---|---|---|".to_string(),
        ];
        let mut per_gib = vec![
            "| workload | memory snapshot s/GiB | floor: pool write s/GiB | snapshot ÷ floor | memory restore s/GiB | floor: read into fresh memory s/GiB | restore ÷ floor |".to_string(),
            "|---|---|---|---|---|---|---|".to_string(),
        ];
        for (i, case) in CASES.iter().enumerate() {
            let picked = only.as_deref().is_none_or(|o| case.label.contains(o));
            if (skip_gib && case.divisor > 1) || !picked {
                continue;
            }
            let n = (iters / case.divisor).max(2);
            let vm = format!("bench-mem-{i}");
            let m = measure(&client, &service.storage, &vm, case, n).await;
            let mut images = m.image_bytes.clone();
            images.sort_by(|a, b| a.partial_cmp(b).unwrap());
            let image = common::percentile(&images, 0.5);
            lines.push(row(&format!("{}: workspace-only snapshot", case.label), m.files));
            lines.push(row(&format!("{}: memory snapshot", case.label), m.snapshot.clone()));
            lines.push(row(&format!("{}: memory restore", case.label), m.restore.clone()));
            if !m.pool_write.is_empty() {
                let gib = image / (1u64 << 30) as f64;
                let p50 = |v: &[f64]| {
                    let mut v = v.to_vec();
                    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
                    common::percentile(&v, 0.5) / 1000.0 / gib
                };
                let (snap, write) = (p50(&m.snapshot), p50(&m.pool_write));
                let (restore, read) = (p50(&m.restore), p50(&m.fresh_read));
                per_gib.push(format!(
                    "| {} | {snap:.2} | {write:.2} | {:.2} | {restore:.2} | {read:.2} | {:.2} |",
                    case.label,
                    snap / write,
                    restore / read
                ));
            }
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
        if per_gib.len() > 2 {
            println!("\n{}", per_gib.join("\n"));
        }
        println!("\nreproduce: cargo build --release -p rewind-agent && cargo bench -p rewind --bench memory (a debug build: cargo build -p rewind-agent && cargo bench --profile dev -p rewind --bench memory)");
        server.abort();
    });
}
