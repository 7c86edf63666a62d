//! Shared by the service benchmarks: an HTTP client with an API key against
//! the real service started in-process, and the table rows.

use std::path::PathBuf;
use std::time::Duration;

use rewind::api::{app, AppState};
use rewind::config::Config;
use serde_json::{json, Value};

pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl Client {
    /// `http://127.0.0.1:<port>`.
    #[allow(dead_code)] // benches/stream.rs only
    pub fn base(&self) -> &str {
        &self.base
    }

    #[allow(dead_code)] // benches/stream.rs only
    pub fn key(&self) -> &str {
        &self.key
    }

    #[allow(dead_code)] // benches/stream.rs only
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .post(format!("{}{}", self.base, path))
            .header("x-api-key", &self.key)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = resp.status();
        let value: Value = resp.json().await.expect("json");
        assert!(status.is_success(), "{path}: {status} {value}");
        value
    }

    pub async fn get(&self, path: &str) -> Value {
        let resp = self.request(reqwest::Method::GET, path).await;
        resp.json().await.expect("json")
    }

    /// `GET path`, the raw body (asserts success).
    #[allow(dead_code)] // used by some bench binaries only
    pub async fn get_bytes(&self, path: &str) -> Vec<u8> {
        let resp = self.request(reqwest::Method::GET, path).await;
        assert!(resp.status().is_success(), "{path}: {}", resp.status());
        resp.bytes().await.expect("body").to_vec()
    }

    /// `DELETE path`; the status (callers decide whether failure matters).
    pub async fn delete(&self, path: &str) -> reqwest::StatusCode {
        self.request(reqwest::Method::DELETE, path).await.status()
    }

    async fn request(&self, method: reqwest::Method, path: &str) -> reqwest::Response {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("x-api-key", &self.key)
            .send()
            .await
            .expect("request")
    }
}

/// Awaits `f`, adding its wall time in ms to `samples`.
pub async fn timed<F: std::future::Future>(samples: &mut Vec<f64>, f: F) -> F::Output {
    let t = std::time::Instant::now();
    let out = f.await;
    samples.push(t.elapsed().as_secs_f64() * 1000.0);
    out
}

/// The table's header lines, for [`row`].
pub fn header() -> Vec<String> {
    vec![
        "| measurement | n | p50 ms | p99 ms |".to_string(),
        "|---|---|---|---|".to_string(),
    ]
}

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

pub fn row(label: &str, mut samples: Vec<f64>) -> String {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    format!(
        "| {label} | {} | {:.2} | {:.2} |",
        samples.len(),
        percentile(&samples, 0.5),
        percentile(&samples, 0.99)
    )
}

/// Start the service on a loopback port with `config` and create an admin key.
#[allow(dead_code)] // used by some bench binaries only
pub async fn start(config: Config) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, server, _) = start_service(config).await;
    (client, server)
}

/// [`start`], also handing back the service's [`Sandboxes`] (its storage,
/// for a bench that reads what the service wrote).
///
/// [`Sandboxes`]: rewind::sandbox::Sandboxes
pub async fn start_service(
    config: Config,
) -> (
    Client,
    tokio::task::JoinHandle<()>,
    rewind::sandbox::Sandboxes,
) {
    let sandboxes = rewind::server::build(config).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let listener = axum::serve::ListenerExt::tap_io(listener, rewind::server::no_delay);
    let router = app(AppState::new(sandboxes.clone()));
    let server = tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(600))
        .build()
        .unwrap();
    let created: Value = http
        .post(format!("{base}/api-keys"))
        .json(&json!({"name": "bench"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let key = created["key"].as_str().unwrap().to_owned();
    (Client { http, base, key }, server, sandboxes)
}

/// Where the bench `name` keeps its data.
#[allow(dead_code)] // used by some bench binaries only
pub fn data_dir_path(name: &str) -> PathBuf {
    PathBuf::from("/var/tmp/rewind-bench").join(name)
}

/// A fresh data dir for a bench (its database removed; the pool is reused).
pub fn data_dir(name: &str) -> PathBuf {
    let dir = data_dir_path(name);
    std::fs::create_dir_all(&dir).unwrap();
    let _ = std::fs::remove_file(dir.join("rewind.db"));
    dir
}

pub async fn delete_all_vms(client: &Client) {
    let vms = client.get("/vms").await;
    for vm in vms["vms"].as_array().unwrap() {
        let name = vm["name"].as_str().unwrap();
        let _ = client.delete(&format!("/vms/{name}")).await;
    }
}

/// The agent next to this bench's target dir (release preferred).
#[allow(dead_code)] // used by some bench binaries only
pub fn agent_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let target = exe.parent().unwrap().parent().unwrap().parent().unwrap();
    ["release", "debug"]
        .iter()
        .map(|profile| target.join(profile).join("rewind-agent"))
        .find(|p| p.exists())
        .expect("build the agent first: cargo build --release -p rewind-agent")
}

/// `$REWIND_BENCH_BASE_IMAGE`, else the debootstrap base image, else the
/// tests' busybox rootfs.
#[allow(dead_code)] // used by some bench binaries only
pub fn base_image_or_busybox() -> PathBuf {
    if let Some(p) = std::env::var_os("REWIND_BENCH_BASE_IMAGE") {
        return p.into();
    }
    let real = PathBuf::from("/var/lib/rewind/images/base/rootfs");
    if real.join(".rewind-image-complete").exists() {
        return real;
    }
    let root = std::env::var_os("REWIND_TEST_ROOT").unwrap_or("/var/tmp/rewind-test".into());
    let busybox = PathBuf::from(root).join("busybox-rootfs");
    assert!(
        busybox.exists(),
        "no base image: run images/build-rootfs.sh or the test suite first"
    );
    busybox
}

/// The service config of bench `name`: its data dir, the namespace runtime,
/// `base_image` and the agent next to the bench.
#[allow(dead_code)] // used by some bench binaries only
pub fn config(name: &str, base_image: PathBuf) -> Config {
    let overrides = rewind::config::Overrides {
        data_dir: Some(data_dir(name)),
        runtime: Some("namespace".into()),
        base_image: Some(base_image),
        agent_binary: Some(agent_binary()),
        ..Default::default()
    };
    Config::load(None, &overrides).unwrap()
}

/// `$REWIND_BENCH_ITERS`, else `default`.
#[allow(dead_code)] // used by some bench binaries only
pub fn iters(default: usize) -> usize {
    std::env::var("REWIND_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// A multi-threaded runtime for a bench's `main`.
#[allow(dead_code)] // used by some bench binaries only
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}
