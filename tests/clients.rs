//! Real clients this project did not write, against the real service on a
//! real socket: the official MCP Python SDK (`mcp` from PyPI) on `/mcp`, and
//! microsandbox's own Python SDK (`microsandbox==0.1.8`, a release that
//! speaks `/api/v1/rpc`) on the JSON-RPC endpoint. The clients are
//! installed into a venv under the test root (created once, reused).
//!
//! `#[ignore]`d for needing the debootstrap base image (python3 + nodejs in
//! the sandbox) and PyPI: `scripts/test.sh` builds the image and runs these
//! with `--ignored`, where a missing one fails naming it.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use axum::http::StatusCode;
use serde_json::json;

use common::service::Service;

/// Pinned client versions (see the README for what was checked).
const CLIENTS: &[&str] = &["mcp>=1.10,<2", "microsandbox==0.1.8"];

struct Env {
    service: Service,
    url: String,
    python: PathBuf,
}

/// The shared service on the debootstrap image and the venv with the
/// clients; panics naming what is missing (the image, or PyPI).
fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let image = common::debootstrap_image();
        let python = common::python::venv("venv-clients", CLIENTS)
            .unwrap_or_else(|e| panic!("needs PyPI for {CLIENTS:?}: {e}"));
        let service = Service::start("clients", image, |_| {});
        let url = service.serve();
        Env {
            service,
            url,
            python,
        }
    })
}

/// Runs `tests/clients/<script>` with the venv's python; asserts success.
fn run_client(env: &Env, script: &str, key: &str, sandbox: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/clients")
        .join(script);
    let out = Command::new(&env.python)
        .arg(&path)
        .env("REWIND_URL", &env.url)
        .env("REWIND_API_KEY", key)
        .env("SANDBOX", sandbox)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{script} failed:\n{text}");
    println!("{text}");
}

#[test]
#[ignore = "needs the debootstrap base image and PyPI; scripts/test.sh runs it"]
fn mcp_official_sdk_runs_restores_and_reads_back() {
    let env = env();
    let key = env.service.user_key();
    let sandbox = common::unique("mcp");

    run_client(env, "mcp_client.py", &key, &sandbox);

    assert!(!env.service.vm_names(&key).contains(&sandbox));
}

#[test]
#[ignore = "needs the debootstrap base image and PyPI; scripts/test.sh runs it"]
fn mcp_without_key_is_401_and_wrong_key_403() {
    let env = env();
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}});

    let (missing, _) = env.service.call("POST", "/mcp", None, Some(init.clone()));
    let (wrong, _) = env
        .service
        .call("POST", "/mcp", Some("ws_nope"), Some(init));

    assert_eq!(
        (missing, wrong),
        (StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN)
    );
}

#[test]
#[ignore = "needs the debootstrap base image and PyPI; scripts/test.sh runs it"]
fn microsandbox_sdk_0_1_8_runs_repl_and_commands() {
    let env = env();
    let key = env.service.user_key();
    let sandbox = common::unique("msb");

    run_client(env, "microsandbox_client.py", &key, &sandbox);

    // The SDK's context manager stopped (deleted) both sandboxes.
    assert!(env.service.vm_names(&key).is_empty());
}
