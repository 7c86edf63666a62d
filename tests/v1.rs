//! The MicroVM Sandbox API under `/api/v1`, through the router with real
//! storage, the real namespace runtime and SQLite (one shared service, as
//! `tests/api.rs`), plus the API authors' published Python client
//! (`py-microvm` from PyPI, in a venv this test makes) against a socket.
//! Needs root.

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use common::service::Service;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("v1", common::busybox_rootfs(), |config| {
            config.exec.max_timeout_secs = 60;
        })
    })
}

/// One `/api/v1` request with `Authorization: Bearer <token>`.
fn v1(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    env().bearer(method, path, token, body)
}

/// Register a fresh user and log in: (username, JWT).
fn user() -> (String, String) {
    let name = common::unique("user");
    let (status, body) = v1(
        "POST",
        "/auth/register",
        None,
        Some(json!({"username": name, "password": "correct-horse", "role": "user"})),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (name.clone(), login(&name, "correct-horse"))
}

fn login(name: &str, password: &str) -> String {
    let (status, body) = v1(
        "POST",
        "/auth/login",
        None,
        Some(json!({"username": name, "password": password})),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["token_type"], "bearer");
    body["access_token"].as_str().unwrap().to_owned()
}

fn create(token: &str, prefix: &str) -> String {
    let name = common::unique(prefix);
    let (status, body) = v1(
        "POST",
        "/vms",
        Some(token),
        Some(json!({"name": name, "vcpus": 1, "memory_mb": 256, "template": "linux-default"})),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    name
}

fn execute(token: &str, vm: &str, command: &str) -> Value {
    let (status, body) = v1(
        "POST",
        &format!("/vms/{vm}/execute"),
        Some(token),
        Some(json!({"command": command, "timeout_seconds": 30})),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

/// Host processes whose cgroup is the sandbox's own (`.../<name>`).
fn sandbox_processes(vm: &str) -> Vec<u32> {
    let suffix = format!("/{vm}");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|c| c.lines().any(|l| l.ends_with(&suffix)))
        })
        .collect()
}

/// The memory limit of the sandbox's cgroup (v2 `memory.max`, or v1's
/// `memory.limit_in_bytes`), read through one of its processes.
fn sandbox_memory_limit(vm: &str) -> u64 {
    let pid = sandbox_processes(vm)[0];
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let suffix = format!("/{vm}");
    let file = cgroups
        .lines()
        .filter(|l| l.ends_with(&suffix))
        .find_map(|l| {
            let mut parts = l.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            match controllers {
                "" => Some(format!("/sys/fs/cgroup{path}/memory.max")),
                c if c.split(',').any(|c| c == "memory") => {
                    Some(format!("/sys/fs/cgroup/memory{path}/memory.limit_in_bytes"))
                }
                _ => None,
            }
        })
        .unwrap_or_else(|| panic!("no memory cgroup for {vm} in {cgroups}"));
    std::fs::read_to_string(file)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

#[test]
fn v1_create_sizes_become_the_sandbox_cgroup_limits() {
    let (_, token) = user();
    let vm = create(&token, "sized");
    assert_eq!(sandbox_memory_limit(&vm), 256 * 1024 * 1024);
    execute(
        &token,
        &vm,
        "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done",
    );
    let (status, m) = v1("GET", &format!("/vms/{vm}/metrics"), Some(&token), None);
    assert_eq!(status, StatusCode::OK, "{m}");
    assert_eq!(
        (&m["cpu"]["vcpus"], &m["memory"]["allocated_mb"]),
        (&json!(1), &json!(256)),
        "{m}"
    );
    assert!(m["cpu"]["cpu_time_seconds"].as_f64().unwrap() > 0.0, "{m}");
    let used = m["memory"]["used_mb"].as_f64().unwrap();
    assert!(used > 0.0 && used < 256.0, "{m}");
    assert!(m["network"]["bytes_in"].is_u64(), "{m}");
    // The default disk limit (limits.disk_mb = 10240).
    assert_eq!(m["disk"]["allocated_gb"], json!(10.0), "{m}");
    v1("DELETE", &format!("/vms/{vm}"), Some(&token), None);
}

#[test]
fn v1_workflow_follows_the_reference_examples() {
    let (_, token) = user();
    let vm = create(&token, "flow");
    let (status, got) = v1("GET", &format!("/vms/{vm}"), Some(&token), None);
    assert_eq!(status, StatusCode::OK, "{got}");
    assert_eq!(
        (
            &got["status"],
            &got["vcpus"],
            &got["memory_mb"],
            &got["os_type"]
        ),
        (&json!("running"), &json!(1), &json!(256), &json!("linux"))
    );
    assert!(got["started_at"].as_str().unwrap().ends_with('Z'), "{got}");
    assert!(
        got["resource_usage"]["memory_used_mb"].as_f64().unwrap() > 0.0,
        "{got}"
    );

    let out = execute(&token, &vm, "echo one > /workspace/f; echo hi");
    assert_eq!(
        (out["exit_code"].as_i64(), out["stdout"].as_str()),
        (Some(0), Some("hi\n"))
    );
    assert!(
        out["snapshot"].as_str().unwrap().starts_with("cmd_"),
        "{out}"
    );

    let (status, snap) = v1(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(&token),
        Some(json!({"name": "s1", "description": "one", "include_memory": false})),
    );
    assert_eq!(status, StatusCode::CREATED, "{snap}");
    assert!(
        snap["checksum"].as_str().unwrap().starts_with("sha256:"),
        "{snap}"
    );

    execute(&token, &vm, "echo two > /workspace/f");
    let (status, body) = v1(
        "POST",
        &format!("/vms/{vm}/snapshots/s1/restore"),
        Some(&token),
        None,
    );
    assert_eq!(
        (status, &body["snapshot_name"]),
        (StatusCode::OK, &json!("s1")),
        "{body}"
    );
    assert_eq!(execute(&token, &vm, "cat /workspace/f")["stdout"], "one\n");

    let (status, list) = v1("GET", &format!("/vms/{vm}/snapshots"), Some(&token), None);
    assert_eq!(status, StatusCode::OK, "{list}");
    let s1 = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "s1")
        .unwrap();
    assert_eq!(
        (
            &s1["description"],
            &s1["metadata"]["vcpus"],
            &s1["metadata"]["memory_mb"]
        ),
        (&json!("one"), &json!(1), &json!(256))
    );

    let (status, body) = v1(
        "DELETE",
        &format!("/vms/{vm}/snapshots/s1"),
        Some(&token),
        None,
    );
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = v1("DELETE", &format!("/vms/{vm}"), Some(&token), None);
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = v1("GET", &format!("/vms/{vm}"), Some(&token), None);
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::NOT_FOUND, &json!("not_found"))
    );
}

#[test]
fn v1_stop_leaves_no_process_and_start_brings_the_workspace_back() {
    let (_, token) = user();
    let vm = create(&token, "stop");
    execute(
        &token,
        &vm,
        "echo kept > /workspace/f; sleep 300 > /dev/null 2>&1 &",
    );
    assert!(
        !sandbox_processes(&vm).is_empty(),
        "no process in the sandbox's cgroup before stop"
    );

    let (status, body) = v1(
        "POST",
        &format!("/vms/{vm}/stop"),
        Some(&token),
        Some(json!({"force": false, "timeout_seconds": 30})),
    );
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("stopped")),
        "{body}"
    );
    assert_eq!(sandbox_processes(&vm), Vec::<u32>::new());
    let (status, body) = v1(
        "POST",
        &format!("/vms/{vm}/execute"),
        Some(&token),
        Some(json!({"command": "true"})),
    );
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::CONFLICT, &json!("conflict")),
        "{body}"
    );
    let (_, got) = v1("GET", &format!("/vms/{vm}"), Some(&token), None);
    assert_eq!(
        (&got["status"], &got["state"], &got["uptime_seconds"]),
        (&json!("stopped"), &json!("stopped"), &Value::Null)
    );

    let (status, body) = v1("POST", &format!("/vms/{vm}/start"), Some(&token), None);
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("running")),
        "{body}"
    );
    assert_eq!(execute(&token, &vm, "cat /workspace/f")["stdout"], "kept\n");

    let (status, body) = v1("POST", &format!("/vms/{vm}/restart"), Some(&token), None);
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("running")),
        "{body}"
    );
    assert_eq!(execute(&token, &vm, "cat /workspace/f")["stdout"], "kept\n");
    v1("DELETE", &format!("/vms/{vm}"), Some(&token), None);
}

#[test]
fn native_stop_and_start_keep_the_workspace() {
    let key = env().user_key();
    let vm = env().create_vm(&key, "nstop");
    env().run(&key, &vm, "echo native > /workspace/f");
    let (status, body) = env().call("POST", &format!("/vms/{vm}/stop"), Some(&key), None);
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("stopped")),
        "{body}"
    );
    assert_eq!(sandbox_processes(&vm), Vec::<u32>::new());
    let (status, _) = env().call("POST", &format!("/vms/{vm}/stop"), Some(&key), None);
    assert_eq!(status, StatusCode::CONFLICT);
    let (status, body) = env().call("POST", &format!("/vms/{vm}/start"), Some(&key), None);
    assert_eq!(
        (status, &body["status"]),
        (StatusCode::OK, &json!("running")),
        "{body}"
    );
    assert_eq!(
        env().run(&key, &vm, "cat /workspace/f")["stdout"],
        "native\n"
    );
    env().call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

#[test]
fn v1_and_native_see_one_sandbox_with_the_same_owner_rules() {
    let key = env().user_key();
    let native = env().create_vm(&key, "both");
    let (status, body) = v1("GET", &format!("/vms/{native}"), Some(&key), None);
    assert_eq!(
        (status, &body["name"]),
        (StatusCode::OK, &json!(native)),
        "{body}"
    );
    let (status, _) = v1("GET", &format!("/vms/{native}"), Some(&user().1), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = env().call("GET", &format!("/vms/{native}"), Some(&env().admin), None);
    assert_eq!(status, StatusCode::OK);
    env().call("DELETE", &format!("/vms/{native}"), Some(&key), None);
}

fn details(body: &Value) -> Vec<String> {
    let mut fields: Vec<String> = body["details"]
        .as_array()
        .unwrap_or_else(|| panic!("no details in {body}"))
        .iter()
        .map(|d| d["field"].as_str().unwrap().to_owned())
        .collect();
    fields.sort();
    fields
}

#[test]
fn v1_create_validation_errors_name_every_field_and_change_nothing() {
    let (_, token) = user();
    let bad = json!({
        "name": "bad name!", "os_type": "beos", "vcpus": 0, "memory_mb": 64,
        "template": "x", "network_config": {"ip": "10.0.0.9"},
        "storage_config": {"disk_size_gb": 0, "disk_type": "tape"}
    });
    let (status, body) = v1("POST", "/vms", Some(&token), Some(bad));
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNPROCESSABLE_ENTITY, &json!("validation_error"))
    );
    assert_eq!(
        details(&body),
        [
            "memory_mb",
            "name",
            "network_config",
            "os_type",
            "storage_config.disk_size_gb",
            "storage_config.disk_type",
            "template",
            "vcpus"
        ]
    );
    let cases = [
        (json!({"vcpus": 2}), "name"),
        (json!({"name": "a", "vcpus": 17}), "vcpus"),
        (json!({"name": "a", "vcpus": "two"}), "vcpus"),
        (json!({"name": "a", "memory_mb": 127}), "memory_mb"),
        (json!({"name": "a", "colour": "red"}), "colour"),
    ];
    for (body, field) in cases {
        let (status, answer) = v1("POST", "/vms", Some(&token), Some(body.clone()));
        assert_eq!(
            (status, details(&answer)),
            (StatusCode::UNPROCESSABLE_ENTITY, vec![field.to_owned()]),
            "{body}"
        );
    }
    let (status, body) = v1(
        "POST",
        "/vms",
        Some(&token),
        Some(json!({"name": "win", "os_type": "windows"})),
    );
    assert_eq!(status, StatusCode::NOT_IMPLEMENTED, "{body}");
    assert!(body["message"].as_str().unwrap().contains("UEFI"), "{body}");
    let req = Request::builder()
        .method("POST")
        .uri("/api/v1/vms")
        .header("authorization", format!("Bearer {token}"))
        .header("content-type", "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let (status, body) = env().raw(req);
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::BAD_REQUEST, &json!("bad_request"))
    );
    let (_, list) = v1("GET", "/vms", Some(&token), None);
    assert_eq!(list["total"], 0, "{list}");
}

#[test]
fn v1_list_paginates_filters_and_sorts() {
    let (_, token) = user();
    let mut names: Vec<String> = (0..3).map(|_| create(&token, "page")).collect();
    names.sort();
    v1(
        "POST",
        &format!("/vms/{}/stop", names[1]),
        Some(&token),
        None,
    );
    let listed = |query: &str| {
        let (status, body) = v1("GET", &format!("/vms{query}"), Some(&token), None);
        assert_eq!(status, StatusCode::OK, "{body}");
        let vms: Vec<String> = body["vms"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v["name"].as_str().unwrap().to_owned())
            .collect();
        (
            vms,
            body["total"].as_u64().unwrap(),
            body["limit"].as_u64().unwrap(),
        )
    };
    assert_eq!(listed("?sort=name&limit=2"), (names[..2].to_vec(), 3, 2));
    assert_eq!(
        listed("?sort=name&limit=2&offset=2"),
        (names[2..].to_vec(), 3, 2)
    );
    let desc: Vec<String> = names.iter().rev().cloned().collect();
    assert_eq!(listed("?sort=name&order=desc"), (desc, 3, 50));
    assert_eq!(listed("?status=stopped"), (vec![names[1].clone()], 1, 50));
    assert_eq!(listed("?os_type=windows").1, 0);
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("offset=-1", "offset"),
        ("order=sideways", "order"),
        ("sort=size", "sort"),
        ("status=paused", "status"),
        ("limit=x", "limit"),
    ] {
        let (status, body) = v1("GET", &format!("/vms?{query}"), Some(&token), None);
        assert_eq!(
            (status, details(&body)),
            (StatusCode::UNPROCESSABLE_ENTITY, vec![field.to_owned()]),
            "{query}"
        );
    }
    for vm in names {
        // One of them is stopped: deleting it works the same.
        let (status, body) = v1("DELETE", &format!("/vms/{vm}"), Some(&token), None);
        assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    }
}

/// The service's JWT signer (same secret file).
fn tokens() -> rewind::auth::jwt::Tokens {
    rewind::auth::jwt::Tokens::load_or_create(&env().state.sandboxes.config.data_dir).unwrap()
}

#[test]
fn v1_auth_rejects_missing_expired_forged_and_others_tokens() {
    let (name, token) = user();
    let (status, body) = v1("GET", "/vms", None, None);
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::UNAUTHORIZED, &json!("unauthorized"))
    );
    let claims = tokens().verify(&token).unwrap();
    let expired = tokens()
        .sign(&rewind::auth::jwt::Claims {
            exp: claims.iat - 10,
            iat: claims.iat - 20,
            ..claims.clone()
        })
        .unwrap();
    let (status, body) = v1("GET", "/vms", Some(&expired), None);
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("Token expired"))
    );
    let forged = rewind::auth::jwt::Tokens::from_secret(&[9u8; 32])
        .sign(&claims)
        .unwrap();
    let (status, _) = v1("GET", "/vms", Some(&forged), None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = v1("GET", "/vms", Some("ws_not-a-key"), None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    let vm = create(&token, "mine");
    let (_, other) = user();
    let (status, _) = v1("GET", &format!("/vms/{vm}"), Some(&other), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = v1("DELETE", &format!("/vms/{vm}"), Some(&other), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = v1("GET", &format!("/vms/{vm}"), Some(&env().admin), None);
    assert_eq!(
        status,
        StatusCode::OK,
        "an admin API key as bearer sees every VM"
    );

    let again = json!({"username": name, "password": "correct-horse"});
    let (status, _) = v1("POST", "/auth/register", None, Some(again));
    assert_eq!(status, StatusCode::CONFLICT);
    let admin =
        json!({"username": common::unique("adm"), "password": "correct-horse", "role": "admin"});
    let (status, body) = v1("POST", "/auth/register", Some(&token), Some(admin.clone()));
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::FORBIDDEN, &json!("forbidden"))
    );
    let (status, body) = v1("POST", "/auth/register", Some(&env().admin), Some(admin));
    assert_eq!(
        (status, &body["role"]),
        (StatusCode::CREATED, &json!("admin")),
        "{body}"
    );
    let (status, _) = v1(
        "POST",
        "/auth/login",
        None,
        Some(json!({"username": name, "password": "wrong-horse"})),
    );
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, body) = v1(
        "POST",
        "/auth/register",
        None,
        Some(json!({"username": "", "password": "short"})),
    );
    assert_eq!(
        (status, details(&body)),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            vec!["password".to_owned(), "username".to_owned()]
        )
    );
    v1("DELETE", &format!("/vms/{vm}"), Some(&token), None);
}

#[test]
fn v1_failed_logins_back_off_with_429() {
    let (name, _) = user();
    let wrong = json!({"username": name, "password": "wrong-horse"});
    let statuses: Vec<StatusCode> = (0..7)
        .map(|_| v1("POST", "/auth/login", None, Some(wrong.clone())).0)
        .collect();
    assert_eq!(&statuses[..5], [StatusCode::UNAUTHORIZED; 5]);
    let (status, body) = v1("POST", "/auth/login", None, Some(wrong));
    assert_eq!(
        (status, &body["error"]),
        (StatusCode::TOO_MANY_REQUESTS, &json!("rate_limit_exceeded"))
    );
    assert!(body["retry_after_seconds"].as_u64().unwrap() >= 1, "{body}");
}

const CLIENT_SCRIPT: &str = r#"
import asyncio, sys
from microvm_client import MicroVMClient

async def main(url, token, name):
    async with MicroVMClient(url, api_token=token) as client:
        vm = await client.start_vm("linux-default", {"name": name, "vcpus": 1, "memory_mb": 256})
        assert vm.name == name and vm.state.value == "running", vm
        assert name in [v.name for v in await client.list_vms()]
        assert (await client.get_vm(name)).memory_mb == 256
        result = await client.exec_command(name, "echo hello")
        assert result.success and result.stdout == "hello\n", result
        await client.destroy_vm(name)
    print("client ok")

asyncio.run(main(*sys.argv[1:]))
"#;

#[test]
fn published_py_microvm_client_works_unchanged() {
    let python = common::py_microvm::python();
    let (_, token) = user();
    let (port, server) = env().listen();
    let name = common::unique("pyclient");
    let out = std::process::Command::new(python)
        .args([
            "-c",
            CLIENT_SCRIPT,
            &format!("http://127.0.0.1:{port}"),
            &token,
            &name,
        ])
        .output()
        .unwrap();
    server.abort();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "client failed:\n{stdout}\n{stderr}");
    assert_eq!(stdout.trim(), "client ok");
}

#[test]
fn v1_health_probes_components_and_status_counts_requests() {
    let (status, health) = v1("GET", "/health", None, None);
    assert_eq!(status, StatusCode::OK, "{health}");
    assert_eq!(
        health["components"],
        json!({"api": "healthy", "database": "healthy", "storage": "healthy", "runtime": "healthy"})
    );
    let (status, _) = v1("GET", "/status", None, None);
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (_, token) = user();
    let vm = create(&token, "status");
    let (status, body) = v1("GET", "/status", Some(&token), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    let stats = &body["statistics"];
    assert!(stats["total_vms"].as_u64().unwrap() >= 1, "{body}");
    assert!(stats["running_vms"].as_u64().unwrap() >= 1, "{body}");
    assert!(stats["total_snapshots"].as_u64().unwrap() >= 1, "{body}");
    assert!(stats["api_requests_today"].as_u64().unwrap() >= 3, "{body}");
    assert!(
        stats["average_response_time_ms"].as_f64().unwrap() > 0.0,
        "{body}"
    );
    v1("DELETE", &format!("/vms/{vm}"), Some(&token), None);
}
