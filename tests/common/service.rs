//! One real service per test binary, driven through the router without a
//! socket (`app(state).oneshot(req)`): real storage on a loop-mounted Btrfs
//! pool, the real namespace runtime and agent, a real SQLite file. Needs root.
//!
//! A test binary keeps one [`Service`] in a `static OnceLock` (as a real
//! deployment shares one service), and its tests keep apart by sandbox names
//! and API keys. Its sandboxes and mounts are released when the binary
//! exits, or when a [`Service`] that is not in a static is dropped.

use std::path::PathBuf;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use rewind::api::{app, AppState};
use rewind::config::{Config, Overrides};
use serde_json::{json, Value};
use tower::ServiceExt;

pub struct Service {
    pub rt: tokio::runtime::Runtime,
    pub state: AppState,
    /// The first (admin) API key.
    pub admin: String,
    pub data_dir: PathBuf,
}

impl Drop for Service {
    fn drop(&mut self) {
        let left = super::cleanup::release(&self.data_dir).mounts;
        assert!(
            left.is_empty() || std::thread::panicking(),
            "still mounted: {left:?}"
        );
    }
}

impl Service {
    /// Start a service on data dir `name` (under the test root) with root
    /// filesystem `base_image`; `configure` adjusts the config first.
    pub fn start(name: &str, base_image: PathBuf, configure: impl FnOnce(&mut Config)) -> Self {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let data_dir = super::data_dir(name);
        let overrides = Overrides {
            data_dir: Some(data_dir.clone()),
            runtime: Some("namespace".into()),
            base_image: Some(base_image),
            agent_binary: Some(super::agent_binary()),
            ..Default::default()
        };
        let mut config = Config::load(None, &overrides).unwrap();
        config.storage.pool_size_gb = 4;
        // Tests make far more requests per key than a client would; the
        // rate-limit test turns the limiter back on.
        config.rate_limit.enabled = false;
        configure(&mut config);
        let sandboxes = rt.block_on(rewind::server::build(config)).unwrap();
        let state = AppState::new(sandboxes);
        let (status, body) = rt.block_on(call_app(
            &state,
            "POST",
            "/api-keys",
            None,
            Some(json!({"name": "admin"})),
        ));
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let admin = body["key"].as_str().unwrap().to_owned();
        Service {
            rt,
            state,
            admin,
            data_dir,
        }
    }

    /// Serves the API on a real socket (127.0.0.1, a free port) for clients
    /// that are separate programs; its URL.
    pub fn serve(&self) -> String {
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        // With the client's address, as `rewind::server` serves it.
        let app =
            app(self.state.clone()).into_make_service_with_connect_info::<std::net::SocketAddr>();
        self.rt
            .spawn(async move { axum::serve(listener, app).await });
        url
    }

    /// Serves the router as the in-process tests call it (no client
    /// address) on 127.0.0.1, a free port; the port and the server's task.
    pub fn listen(&self) -> (u16, tokio::task::JoinHandle<std::io::Result<()>>) {
        let listener = self
            .rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let port = listener.local_addr().unwrap().port();
        let router = app(self.state.clone());
        let server = self
            .rt
            .spawn(async move { axum::serve(listener, router).await });
        (port, server)
    }

    /// One JSON request; the status and the body (JSON, or a JSON string of
    /// a non-JSON body, or null when empty).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        self.rt
            .block_on(call_app(&self.state, method, path, key, body))
    }

    /// Any request, answered as [`Service::call`] does.
    pub fn raw(&self, req: Request<Body>) -> (StatusCode, Value) {
        self.rt.block_on(raw(&self.state, req))
    }

    /// One JSON request to `/api/v1<path>` with `Authorization: Bearer
    /// <token>` (a JWT or an API key), or no credentials.
    pub fn bearer(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/api/v1{path}"));
        if let Some(t) = token {
            req = req.header("authorization", format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header("content-type", "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        };
        self.raw(req.unwrap())
    }

    /// `GET uri` with `x-api-key`: the status and the raw body bytes
    /// (archives, downloads).
    pub fn get_bytes(&self, key: &str, uri: &str) -> (StatusCode, Vec<u8>) {
        let req = Request::get(uri)
            .header("x-api-key", key)
            .body(Body::empty())
            .unwrap();
        self.rt.block_on(async {
            let resp = app(self.state.clone()).oneshot(req).await.unwrap();
            let status = resp.status();
            let bytes = axum::body::to_bytes(resp.into_body(), 1 << 30)
                .await
                .unwrap();
            (status, bytes.to_vec())
        })
    }

    /// `POST /vms/import?name=<name>` with `archive` as the raw body.
    pub fn import(&self, key: &str, name: &str, archive: Vec<u8>) -> (StatusCode, Value) {
        let req = Request::builder()
            .method("POST")
            .uri(format!("/vms/import?name={name}"))
            .header("x-api-key", key)
            .header("content-type", "application/octet-stream")
            .body(Body::from(archive))
            .unwrap();
        self.raw(req)
    }

    /// The import staging dirs left in the pool (after background work).
    pub fn import_staging_dirs(&self) -> Vec<String> {
        let storage = &self.state.sandboxes.storage;
        storage.flush_background();
        std::fs::read_dir(storage.pool_path().join("sandboxes"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".import"))
            .collect()
    }

    /// A new non-admin key.
    pub fn user_key(&self) -> String {
        let (status, body) = self.call(
            "POST",
            "/api-keys",
            Some(&self.admin),
            Some(json!({"name": "user"})),
        );
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["key"].as_str().unwrap().to_owned()
    }

    /// A new sandbox owned by `key`, named `<prefix>-<unique>`.
    pub fn create_vm(&self, key: &str, prefix: &str) -> String {
        let name = super::unique(prefix);
        let (status, body) = self.call("POST", "/vms", Some(key), Some(json!({"name": name})));
        assert_eq!(status, StatusCode::CREATED, "{body}");
        name
    }

    /// `POST /vms/:vm/run` with `env`; asserts 200.
    pub fn run_with_env(&self, key: &str, vm: &str, command: &str, env: Value) -> Value {
        let (status, body) = self.call(
            "POST",
            &format!("/vms/{vm}/run"),
            Some(key),
            Some(json!({"command": command, "env": env})),
        );
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }

    pub fn run(&self, key: &str, vm: &str, command: &str) -> Value {
        self.run_with_env(key, vm, command, json!({}))
    }

    /// `n` runs of `echo <i> >> log` (i = 1..=n), then the background
    /// thinning flushed; the runs' snapshot names, oldest first.
    pub fn append_runs(&self, key: &str, vm: &str, n: usize) -> Vec<String> {
        let names = (1..=n)
            .map(|i| {
                let out = self.run(key, vm, &format!("echo {i} >> log"));
                out["snapshot"].as_str().unwrap().to_owned()
            })
            .collect();
        self.state.sandboxes.storage.flush_background();
        names
    }

    /// The entries of `GET /vms/:vm/snapshots`.
    pub fn snapshots(&self, key: &str, vm: &str) -> Vec<Value> {
        let (status, body) = self.call("GET", &format!("/vms/{vm}/snapshots"), Some(key), None);
        assert_eq!(status, StatusCode::OK, "{body}");
        body["snapshots"].as_array().unwrap().clone()
    }

    pub fn snapshot_names(&self, key: &str, vm: &str) -> Vec<String> {
        self.snapshots(key, vm)
            .iter()
            .map(|s| s["snapshot_name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// The host path of sandbox `vm`'s live workspace.
    pub fn workspace(&self, vm: &str) -> PathBuf {
        self.state
            .sandboxes
            .storage
            .workspace_path(&vm.parse().unwrap())
    }

    pub fn vm_names(&self, key: &str) -> Vec<String> {
        let (status, body) = self.call("GET", "/vms", Some(key), None);
        assert_eq!(status, StatusCode::OK, "{body}");
        body["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// One JSON request against `state`'s router.
pub async fn call_app(
    state: &AppState,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (StatusCode, Value) {
    raw(state, request(method, path, key, body)).await
}

/// A request with `x-api-key: key` and a JSON `body`, if given.
pub fn request(method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> Request<Body> {
    let mut req = Request::builder().method(method).uri(path);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string())),
        None => req.body(Body::empty()),
    }
    .unwrap()
}

pub async fn raw(state: &AppState, req: Request<Body>) -> (StatusCode, Value) {
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let bytes = axum::body::to_bytes(resp.into_body(), 64 * 1024 * 1024)
        .await
        .unwrap();
    let value = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()))
    };
    (status, value)
}
