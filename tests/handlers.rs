//! Handler tests that need no root: the real router, database and
//! sandbox layer over an in-memory [`FakeRuntime`] and a storage on a plain
//! directory (`Storage::open_plain_dir`, no Btrfs). They check what the API
//! layer decides by itself — authentication, validation naming the field,
//! ownership 404s, 409 while a command holds the sandbox, 409 on a failed
//! sandbox, 503 when the agent is gone, a runtime failure's 500 — fast, as
//! any user: `cargo test --test handlers`. The fakes prove no feature: the
//! service tests (tests/api.rs and the others) run the real thing as root.

mod common;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::http::StatusCode;
use rewind::api::{app, AppState};
use rewind::config::{Config, Overrides};
use rewind::db::{Db, SandboxStatus};
use rewind::runtime::namespace::CgroupError;
use rewind::runtime::{
    Attached, Cause, Runtime, RuntimeError, RuntimeKind, RuntimeState, SandboxContext,
};
use rewind::sandbox::Sandboxes;
use rewind_agent::client::Transport;
use rewind_storage::{PoolConfig, Storage};
use serde_json::{json, Value};
use tower::ServiceExt;

/// A runtime that starts nothing: it records what it was asked, answers
/// `start` as told, and points every sandbox's agent at `agent` (a socket
/// nobody listens on, unless a test does).
struct FakeRuntime {
    agent: PathBuf,
    fail_start: bool,
    calls: Mutex<Vec<String>>,
}

impl FakeRuntime {
    fn record(&self, call: &str, sb: &SandboxContext) {
        self.calls
            .lock()
            .unwrap()
            .push(format!("{call} {}", sb.name));
    }
}

#[async_trait]
impl Runtime for FakeRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Namespace
    }

    async fn start(&self, sb: &SandboxContext) -> Result<RuntimeState, RuntimeError> {
        self.record("start", sb);
        if !self.fail_start {
            return Ok(json!({}));
        }
        let denied = std::io::Error::from_raw_os_error(libc::EACCES);
        Err(RuntimeError::Start {
            sandbox: sb.name.clone(),
            source: Cause::Cgroup(CgroupError::Io {
                op: "create",
                path: format!("/sys/fs/cgroup/rewind-host-secret/{}", sb.name).into(),
                source: denied,
            }),
        })
    }

    async fn attach(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<Attached, RuntimeError> {
        self.record("attach", sb);
        Ok(Attached::Reattached(state.clone()))
    }

    fn transport(&self, _sb: &SandboxContext, _state: &RuntimeState) -> Transport {
        Transport::Unix(self.agent.clone())
    }

    async fn replace_workspace(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<RuntimeState, RuntimeError> {
        self.record("replace_workspace", sb);
        Ok(state.clone())
    }

    async fn stop(&self, sb: &SandboxContext, _state: &RuntimeState) -> Result<(), RuntimeError> {
        self.record("stop", sb);
        Ok(())
    }
}

/// One service on a temp dir, with an admin key and a user key.
struct Env {
    _dir: tempfile::TempDir,
    state: AppState,
    runtime: Arc<FakeRuntime>,
    admin: String,
    user: String,
    user_id: i64,
}

impl Env {
    async fn new(fail_start: bool, configure: impl FnOnce(&mut Config)) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let overrides = Overrides {
            data_dir: Some(dir.path().to_owned()),
            ..Default::default()
        };
        let mut config = Config::load(None, &overrides).unwrap();
        config.rate_limit.enabled = false;
        configure(&mut config);
        let db = Db::open(&config.db_path).unwrap();
        let storage = Storage::open_plain_dir(PoolConfig::new(dir.path().join("pool"))).unwrap();
        let runtime = Arc::new(FakeRuntime {
            agent: dir.path().join("agent.sock"),
            fail_start,
            calls: Mutex::new(Vec::new()),
        });
        let sandboxes = Sandboxes::new(Arc::new(config), db, storage, runtime.clone());
        let state = AppState::new(sandboxes);
        let (_, admin) = call(
            &state,
            "POST",
            "/api-keys",
            None,
            Some(json!({"name": "a"})),
        )
        .await;
        let admin = admin["key"].as_str().unwrap().to_owned();
        let body = Some(json!({"name": "u"}));
        let (_, user) = call(&state, "POST", "/api-keys", Some(&admin), body).await;
        Env {
            _dir: dir,
            state,
            runtime,
            admin,
            user: user["key"].as_str().unwrap().to_owned(),
            user_id: user["id"].as_i64().unwrap(),
        }
    }

    async fn call(&self, method: &str, path: &str, key: &str, body: Option<Value>) -> Reply {
        call(&self.state, method, path, Some(key), body).await
    }

    /// A sandbox of the user's in `status`, as startup recovery finds it
    /// (its row and its directory), attached through the fake runtime.
    async fn sandbox(&self, name: &str, status: SandboxStatus) {
        let pool = self.state.sandboxes.storage.pool_path();
        std::fs::create_dir_all(pool.join("sandboxes").join(name).join("snaps")).unwrap();
        let (name, owner) = (name.to_owned(), self.user_id);
        let db = &self.state.sandboxes.db;
        db.call(move |c| {
            let row = Db::insert_sandbox(c, &name, owner, "namespace")?;
            Db::set_sandbox_status(c, row.id, status, Some("made by the test"))
        })
        .await
        .unwrap();
        self.state.sandboxes.recover().await.unwrap();
    }

    fn calls(&self) -> Vec<String> {
        self.runtime.calls.lock().unwrap().clone()
    }
}

type Reply = (StatusCode, Value);

async fn call(
    state: &AppState,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let req = common::service::request(method, path, key, body);
    let resp = app(state.clone()).oneshot(req).await.unwrap();
    let status = resp.status();
    let request_id = resp.headers().get("x-request-id").cloned();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let mut body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    if let (Some(id), Value::Object(map)) = (request_id, &mut body) {
        map.insert("x-request-id".into(), json!(id.to_str().unwrap()));
    }
    (status, body)
}

#[tokio::test]
async fn keys_missing_is_401_wrong_is_403() {
    let env = Env::new(false, |_| {}).await;

    let (missing, _) = call(&env.state, "GET", "/vms", None, None).await;
    let (wrong, _) = env.call("GET", "/vms", "ws_not_a_key", None).await;

    assert_eq!(
        (missing, wrong),
        (StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN)
    );
}

#[tokio::test]
async fn create_with_bad_input_is_400_naming_the_field_and_starts_nothing() {
    let env = Env::new(false, |_| {}).await;
    let cases = [
        (json!({"name": "Not A Name!"}), "name"),
        (json!({"name": "ok", "bogus": 1}), "bogus"),
        (json!({"name": "ok", "disk_mb": -1}), "disk_mb"),
    ];

    for (body, field) in cases {
        let (status, out) = env
            .call("POST", "/vms", &env.user, Some(body.clone()))
            .await;

        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {out}");
        let message = out["error"].as_str().unwrap();
        assert!(message.contains(field), "{body} → {out}");
    }
    let (_, list) = env.call("GET", "/vms", &env.admin, None).await;
    assert_eq!((list["vms"].clone(), env.calls()), (json!([]), vec![]));
}

#[tokio::test]
async fn another_keys_sandbox_is_404_and_the_admin_sees_it() {
    let env = Env::new(false, |_| {}).await;
    env.sandbox("mine", SandboxStatus::Running).await;
    let (_, other) = env
        .call("POST", "/api-keys", &env.admin, Some(json!({"name": "o"})))
        .await;
    let other = other["key"].as_str().unwrap();

    let (as_other, _) = env.call("GET", "/vms/mine", other, None).await;
    let (run_as_other, _) = env
        .call(
            "POST",
            "/vms/mine/run",
            other,
            Some(json!({"command": "true"})),
        )
        .await;
    let (as_admin, _) = env.call("GET", "/vms/mine", &env.admin, None).await;

    assert_eq!(
        (as_other, run_as_other, as_admin),
        (StatusCode::NOT_FOUND, StatusCode::NOT_FOUND, StatusCode::OK)
    );
}

#[tokio::test]
async fn run_when_the_agent_is_gone_is_503() {
    let env = Env::new(false, |_| {}).await;
    env.sandbox("gone", SandboxStatus::Running).await;

    let (status, out) = env
        .call(
            "POST",
            "/vms/gone/run",
            &env.user,
            Some(json!({"command": "true"})),
        )
        .await;

    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("did not answer"),
        "{out}"
    );
}

#[tokio::test]
async fn run_on_a_failed_sandbox_is_409_with_the_reason() {
    let env = Env::new(false, |_| {}).await;
    env.sandbox("broken", SandboxStatus::Running).await;
    let db = &env.state.sandboxes.db;
    db.call(|c| {
        let id = Db::sandbox_by_name(c, "broken")?.unwrap().id;
        Db::set_sandbox_status(c, id, SandboxStatus::Failed, Some("the VMM exited"))
    })
    .await
    .unwrap();

    let (status, out) = env
        .call(
            "POST",
            "/vms/broken/run",
            &env.user,
            Some(json!({"command": "true"})),
        )
        .await;

    assert_eq!(status, StatusCode::CONFLICT, "{out}");
    assert!(
        out["error"].as_str().unwrap().contains("the VMM exited"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn restore_while_a_command_holds_the_sandbox_is_409() {
    let env = Env::new(false, |_| {}).await;
    env.sandbox("busy", SandboxStatus::Running).await;
    // An agent that accepts the command and never answers: the run holds
    // the sandbox's lock until the connection closes.
    let agent = tokio::net::UnixListener::bind(&env.runtime.agent).unwrap();
    let (state, user) = (env.state.clone(), env.user.clone());
    let run = tokio::spawn(async move {
        let body = Some(json!({"command": "sleep 1"}));
        call(&state, "POST", "/vms/busy/run", Some(&user), body).await
    });
    let (held, _) = agent.accept().await.unwrap();

    let (status, out) = env
        .call(
            "POST",
            "/vms/busy/snapshots/initial/restore",
            &env.user,
            None,
        )
        .await;
    drop((held, agent));

    assert_eq!(status, StatusCode::CONFLICT, "{out}");
    assert!(out["error"].as_str().unwrap().contains("busy"), "{out}");
    let (run_status, run_out) = run.await.unwrap();
    assert_eq!(run_status, StatusCode::SERVICE_UNAVAILABLE, "{run_out}");
}

#[tokio::test]
async fn runtime_failure_is_500_with_the_first_link_and_the_request_id() {
    let env = Env::new(true, |_| {}).await;
    env.sandbox("cold", SandboxStatus::Stopped).await;

    let (status, out) = env.call("POST", "/vms/cold/start", &env.user, None).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
    assert_eq!(out["error"], "failed to start sandbox cold", "{out}");
    assert_eq!(out["request_id"], out["x-request-id"], "{out}");
    assert_eq!(env.calls(), vec!["start cold"]);
}

#[tokio::test]
async fn runtime_failure_with_expose_error_chain_gives_the_whole_chain() {
    let env = Env::new(true, |c| c.server.expose_error_chain = true).await;
    env.sandbox("cold", SandboxStatus::Stopped).await;

    let (status, out) = env.call("POST", "/vms/cold/start", &env.user, None).await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
    let message = out["error"].as_str().unwrap();
    assert!(
        message.starts_with("failed to start sandbox cold: cgroups: cannot create /sys/fs/cgroup/"),
        "{out}"
    );
}

/// The storage here is a plain directory: what needs a subvolume fails,
/// and says so with a 500 that names nothing of the host.
#[tokio::test]
async fn storage_failure_is_a_generic_500_with_the_request_id() {
    let env = Env::new(false, |_| {}).await;

    let (status, out) = env
        .call("POST", "/vms", &env.user, Some(json!({"name": "nobtrfs"})))
        .await;

    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{out}");
    assert_eq!(out["error"], "Internal server error", "{out}");
    assert_eq!(out["request_id"], out["x-request-id"], "{out}");
    let pool = env.state.sandboxes.storage.pool_path();
    assert!(!pool.join("sandboxes/nobtrfs/live").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn bounded_route_without_an_answer_is_408_naming_the_key_in_each_shape() {
    let env = Env::new(false, |c| c.server.request_timeout_secs = 1).await;
    env.sandbox("slow", SandboxStatus::Running).await;
    // An agent that accepts every connection and never answers.
    let agent = tokio::net::UnixListener::bind(&env.runtime.agent).unwrap();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = agent.accept().await {
            held.push(conn);
        }
    });

    let native = env
        .call("GET", "/vms/slow/files/list?path=.", &env.user, None)
        .await;
    let v1 = env
        .call("GET", "/api/v1/vms/slow/files?path=.", &env.user, None)
        .await;
    hold.abort();

    assert_eq!(native.0, StatusCode::REQUEST_TIMEOUT, "{}", native.1);
    assert_eq!(
        native.1["error"],
        "no answer within server.request_timeout_secs (1 s)"
    );
    assert_eq!(v1.0, StatusCode::REQUEST_TIMEOUT, "{}", v1.1);
    assert_eq!(
        (&v1.1["error"], &v1.1["message"]),
        (
            &json!("request_timeout"),
            &json!("no answer within server.request_timeout_secs (1 s)")
        )
    );
}
