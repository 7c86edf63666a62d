//! Operating rewind through `/api/v1`: the audit log of v1 actions and
//! `GET /api/v1/security/audit-logs`, and the per-owner caps on sandboxes
//! and concurrent runs. Through the router with real storage, the real
//! namespace runtime and SQLite. Needs root.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::service::Service;

const MAX_SANDBOXES: u64 = 2;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("ops_v1", common::busybox_rootfs(), |config| {
            config.limits.max_sandboxes_per_owner = MAX_SANDBOXES;
            config.limits.max_runs_per_owner = 1;
        })
    })
}

/// One `/api/v1` request with `Authorization: Bearer <token>`.
fn v1(method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    env().bearer(method, path, token, body)
}

fn ok(status: StatusCode, body: &Value) {
    assert!(status.is_success(), "{status} {body}");
}

fn logs(token: &str, query: &str) -> (StatusCode, Value) {
    v1(
        "GET",
        &format!("/security/audit-logs?{query}"),
        Some(token),
        None,
    )
}

fn actions(page: &Value) -> BTreeSet<String> {
    page["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["action_type"].as_str().unwrap().to_owned())
        .collect()
}

/// The bytes of the database and its write-ahead log.
fn database_bytes() -> Vec<u8> {
    let db = env().state.sandboxes.config.db_path.clone();
    let mut bytes = std::fs::read(&db).unwrap();
    bytes.extend(std::fs::read(db.with_extension("db-wal")).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Register, log in (once wrong), and do every v1 action on one sandbox.
fn v1_session(username: &str, password: &str) -> (String, String) {
    let (st, body) = v1(
        "POST",
        "/auth/register",
        None,
        Some(json!({"username": username, "password": password})),
    );
    ok(st, &body);
    let (st, _) = v1(
        "POST",
        "/auth/login",
        None,
        Some(json!({"username": username, "password": "wrong-password"})),
    );
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, body) = v1(
        "POST",
        "/auth/login",
        None,
        Some(json!({"username": username, "password": password})),
    );
    ok(st, &body);
    let token = body["access_token"].as_str().unwrap().to_owned();
    let vm = common::unique("auditv1");
    let t = Some(token.as_str());
    let (st, b) = v1(
        "POST",
        "/vms",
        t,
        Some(json!({"name": vm, "vcpus": 1, "memory_mb": 256})),
    );
    ok(st, &b);
    let base = format!("/vms/{vm}");
    let steps: [(&str, String, Option<Value>); 7] = [
        (
            "POST",
            format!("{base}/execute"),
            Some(json!({"command": "echo hi"})),
        ),
        (
            "POST",
            format!("{base}/snapshots"),
            Some(json!({"name": "s1"})),
        ),
        ("POST", format!("{base}/snapshots/s1/restore"), None),
        ("POST", format!("{base}/stop"), None),
        ("POST", format!("{base}/start"), None),
        ("DELETE", format!("{base}/snapshots/s1"), None),
        ("DELETE", base.clone(), None),
    ];
    for (method, path, body) in steps {
        let (st, b) = v1(method, &path, t, body);
        ok(st, &b);
    }
    (token, vm)
}

#[test]
fn v1_actions_are_audited_and_listed_under_security_audit_logs() {
    let username = common::unique("auditor");
    let password = "Tr0ub4dor-and-3";
    let (token, vm) = v1_session(&username, password);

    let (st, mine) = logs(&token, "limit=100");
    ok(st, &mine);
    let expected: BTreeSet<String> = [
        "vm_create",
        "vm_run",
        "snapshot_create",
        "snapshot_restore",
        "vm_stop",
        "vm_start",
        "snapshot_delete",
        "vm_delete",
    ]
    .map(String::from)
    .into();
    assert_eq!(actions(&mine), expected, "{mine}");
    let rows = mine["logs"].as_array().unwrap();
    assert_eq!(mine["total"].as_u64(), Some(rows.len() as u64));
    let owner = rows[0]["user_id"].clone();
    assert!(rows.iter().all(|r| r["user_id"] == owner), "{mine}");
    assert!(rows
        .iter()
        .all(|r| r["timestamp"].as_str().unwrap().ends_with('Z')));
    let run = rows.iter().find(|r| r["action_type"] == "vm_run").unwrap();
    assert_eq!(run["resource_id"], vm.as_str());
    assert_eq!(run["details"]["command"], "echo hi");

    // Logins are not owned by a caller: the admin sees them, by username.
    let admin = env().admin.as_str();
    for (action, status) in [("login", 200), ("login_failed", 401)] {
        let (st, page) = logs(admin, &format!("action_type={action}&limit=1000"));
        ok(st, &page);
        let row = page["logs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["resource_id"] == username.as_str())
            .unwrap_or_else(|| panic!("no {action} row for {username}: {page}"))
            .clone();
        assert_eq!(row["status"], status, "{row}");
    }
    let (st, page) = logs(admin, "action_type=user_register&limit=1000");
    ok(st, &page);
    assert!(!page["logs"].as_array().unwrap().is_empty(), "{page}");

    assert!(
        !contains(&database_bytes(), password),
        "the password is in the database"
    );
}

#[test]
fn security_audit_logs_filters_and_refuses_bad_input() {
    let s = env();
    let key = s.user_key();
    let vm = s.create_vm(&key, "auditflt");
    s.run(&key, &vm, "true");

    let (st, page) = logs(&key, "action_type=vm_run&start_time=2000-01-01T00:00:00Z");
    ok(st, &page);
    assert_eq!(actions(&page), BTreeSet::from(["vm_run".to_owned()]));
    let (st, page) = logs(&key, "end_time=2000-01-01T00:00:00Z");
    ok(st, &page);
    assert_eq!(page["total"], 0, "{page}");
    let (st, page) = logs(&key, "limit=1");
    ok(st, &page);
    assert_eq!(page["logs"].as_array().unwrap().len(), 1);
    assert!(page["total"].as_u64().unwrap() >= 2, "{page}");

    let (st, body) = logs(&key, "start_time=yesterday");
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["details"][0]["field"], "start_time", "{body}");
    let (st, body) = logs(&key, "user_id=1");
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let (st, body) = logs(&key, "limit=0");
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (st, body) = v1("GET", "/security/audit-logs", None, None);
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
}

#[test]
fn sandbox_cap_answers_429_and_creates_nothing() {
    let s = env();
    let key = s.user_key();
    for _ in 0..MAX_SANDBOXES {
        s.create_vm(&key, "cap");
    }
    let extra = common::unique("cap");

    let (native, body) = s.call("POST", "/vms", Some(&key), Some(json!({"name": extra})));
    let (v1_status, v1_body) = v1("POST", "/vms", Some(&key), Some(json!({"name": extra})));

    assert_eq!(native, StatusCode::TOO_MANY_REQUESTS, "{body}");
    let message = body["error"].as_str().unwrap();
    assert!(message.contains("limits.max_sandboxes_per_owner"), "{body}");
    assert_eq!(v1_status, StatusCode::TOO_MANY_REQUESTS, "{v1_body}");
    assert_eq!(v1_body["error"], "rate_limit_exceeded", "{v1_body}");
    assert!(v1_body["message"]
        .as_str()
        .unwrap()
        .contains("limits.max_sandboxes_per_owner"));
    assert_eq!(s.vm_names(&key).len() as u64, MAX_SANDBOXES);
    // Admins are not capped.
    let admin_vms: Vec<String> = (0..=MAX_SANDBOXES)
        .map(|_| s.create_vm(&s.admin, "capadm"))
        .collect();
    for vm in admin_vms {
        let (st, b) = s.call("DELETE", &format!("/vms/{vm}"), Some(&s.admin), None);
        ok(st, &b);
    }
}

#[test]
fn run_cap_answers_429_while_a_run_of_the_same_owner_is_going() {
    let s = env();
    let key = s.user_key();
    let (vm1, vm2) = (s.create_vm(&key, "runcap"), s.create_vm(&key, "runcap"));
    let other = s.user_key();
    let other_vm = s.create_vm(&other, "runcapo");
    // A streamed run: the answer starts while the command still runs.
    let req = Request::post(format!("/vms/{vm1}/run"))
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Body::from(
            json!({"command": "sleep 2; echo done"}).to_string(),
        ))
        .unwrap();
    let streaming =
        s.rt.block_on(rewind::api::app(s.state.clone()).oneshot(req))
            .unwrap();
    assert_eq!(streaming.status(), StatusCode::OK);

    let (refused, body) = s.call(
        "POST",
        &format!("/vms/{vm2}/run"),
        Some(&key),
        Some(json!({"command": "true"})),
    );
    let others_run = s.run(&other, &other_vm, "echo other");
    let events =
        s.rt.block_on(streaming.into_body().collect())
            .unwrap()
            .to_bytes();

    assert_eq!(refused, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("limits.max_runs_per_owner"),
        "{body}"
    );
    assert_eq!(
        others_run["stdout"], "other\n",
        "another owner is not capped"
    );
    assert!(String::from_utf8_lossy(&events).contains("done"));
    // The run is over: the next one is allowed.
    s.run(&key, &vm2, "true");
}
