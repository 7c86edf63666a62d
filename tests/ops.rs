//! Operating rewind as a service: the audit log (`GET /audit-logs`),
//! Prometheus `/metrics` and JSON logs. Through the router with real storage
//! and the real namespace runtime, and (for the logs and source addresses)
//! the real binary on a socket. Needs root.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::{json, Value};

use common::service::Service;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| Service::start("ops", common::busybox_rootfs(), |_| {}))
}

fn call(method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    env().call(method, path, key, body)
}

/// A new non-admin key and its id.
fn user_key_with_id() -> (String, i64) {
    let admin = Some(env().admin.as_str());
    let (status, body) = call("POST", "/api-keys", admin, Some(json!({"name": "ops"})));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["key"].as_str().unwrap().into(),
        body["id"].as_i64().unwrap(),
    )
}

fn audit_rows(key: &str, query: &str) -> Vec<Value> {
    let (status, body) = call("GET", &format!("/audit-logs?{query}"), Some(key), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["total"].as_u64(),
        body["audit_logs"].as_array().map(|a| a.len() as u64),
        "{body}"
    );
    body["audit_logs"].as_array().unwrap().clone()
}

fn ok(status: StatusCode, body: &Value) {
    assert!(status.is_success(), "{status} {body}");
}

/// Every state-changing action of one owner, including a run whose
/// environment carries a password the command prints.
fn do_every_action(key: &str, secret: &str) -> String {
    let s = env();
    let vm = s.create_vm(key, "audit");
    s.run_with_env(
        key,
        &vm,
        "echo \"$DB_PASSWORD\"",
        json!({"DB_PASSWORD": secret}),
    );
    let p = format!("/vms/{vm}/snapshots");
    let (st, b) = call("POST", &p, Some(key), Some(json!({"name": "s1"})));
    ok(st, &b);
    let (st, b) = call("POST", &format!("{p}/s1/restore"), Some(key), None);
    ok(st, &b);
    let fork = common::unique("auditfork");
    let (st, b) = call(
        "POST",
        &format!("{p}/s1/fork"),
        Some(key),
        Some(json!({"name": fork})),
    );
    ok(st, &b);
    let (st, b) = call("POST", &format!("/vms/{vm}/wipe"), Some(key), None);
    ok(st, &b);
    let fwd = format!("/vms/{vm}/port-forwards");
    let (st, b) = call("POST", &fwd, Some(key), Some(json!({"guest_port": 8080})));
    ok(st, &b);
    let host_port = b["host_port"].as_u64().unwrap();
    let (st, b) = call("DELETE", &format!("{fwd}/{host_port}"), Some(key), None);
    ok(st, &b);
    let (st, b) = call("DELETE", &format!("{p}/s1"), Some(key), None);
    ok(st, &b);
    for name in [&fork, &vm] {
        let (st, b) = call("DELETE", &format!("/vms/{name}"), Some(key), None);
        ok(st, &b);
    }
    vm
}

/// The bytes of the database and its write-ahead log.
fn database_bytes() -> Vec<u8> {
    let db = env().state.sandboxes.config.db_path.clone();
    let wal = db.with_extension("db-wal");
    let mut bytes = std::fs::read(&db).unwrap();
    bytes.extend(std::fs::read(wal).unwrap_or_default());
    bytes
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

#[test]
fn audit_log_records_each_action_type_without_secrets() {
    let (key, key_id) = user_key_with_id();
    let secret = format!("pw-{}", common::unique("secret"));

    let vm = do_every_action(&key, &secret);
    let (st, b) = call(
        "DELETE",
        &format!("/api-keys/{key_id}"),
        Some(&env().admin),
        None,
    );
    ok(st, &b);

    let rows = audit_rows(&env().admin, &format!("user_id={key_id}&limit=1000"));
    let actions: BTreeSet<&str> = rows
        .iter()
        .map(|r| r["action_type"].as_str().unwrap())
        .collect();
    let expected = [
        "vm_create",
        "vm_run",
        "snapshot_create",
        "snapshot_restore",
        "snapshot_fork",
        "vm_wipe",
        "port_forward_create",
        "port_forward_delete",
        "snapshot_delete",
        "vm_delete",
    ];
    assert_eq!(actions, expected.into_iter().collect(), "{rows:#?}");
    let run = rows.iter().find(|r| r["action_type"] == "vm_run").unwrap();
    assert_eq!(
        (
            &run["resource_id"],
            &run["status"],
            &run["details"]["command"]
        ),
        (&json!(vm), &json!(200), &json!("echo \"$DB_PASSWORD\""))
    );
    let admin_rows = audit_rows(&env().admin, "resource_type=api_key&limit=1000");
    let key_actions: BTreeSet<&str> = admin_rows
        .iter()
        .filter(|r| r["resource_id"] == json!(key_id.to_string()))
        .map(|r| r["action_type"].as_str().unwrap())
        .collect();
    assert_eq!(
        key_actions,
        ["api_key_create", "api_key_revoke"].into_iter().collect()
    );
    let db = database_bytes();
    assert!(!contains(&db, &key), "the API key is in the database");
    assert!(!contains(&db, &secret), "the password is in the database");
}

#[test]
fn audit_log_non_admin_sees_only_its_own_rows() {
    let (a, a_id) = user_key_with_id();
    let (b, b_id) = user_key_with_id();
    env().create_vm(&a, "mine");
    let vm_b = env().create_vm(&b, "theirs");
    call("DELETE", &format!("/vms/{vm_b}"), Some(&b), None);

    let rows = audit_rows(&a, "limit=1000");
    let (status, body) = call(
        "GET",
        &format!("/audit-logs?user_id={b_id}"),
        Some(&a),
        None,
    );

    let owners: BTreeSet<i64> = rows
        .iter()
        .map(|r| r["user_id"].as_i64().unwrap())
        .collect();
    assert_eq!(owners, [a_id].into_iter().collect());
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
}

#[test]
fn audit_log_records_a_failed_request_with_its_status() {
    let (key, key_id) = user_key_with_id();
    let missing = common::unique("nosuchvm");

    let (status, _) = call(
        "POST",
        &format!("/vms/{missing}/run"),
        Some(&key),
        Some(json!({"command": "true"})),
    );

    let rows = audit_rows(&key, "action_type=vm_run");
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        (
            &rows[0]["resource_id"],
            &rows[0]["status"],
            &rows[0]["user_id"]
        ),
        (&json!(missing), &json!(404), &json!(key_id))
    );
}

#[test]
fn audit_log_bad_query_is_400_naming_the_field() {
    let admin = Some(env().admin.as_str());
    for (query, field) in [
        ("limit=0", "limit"),
        ("start_time=yesterday", "start_time"),
        ("end_time=2026-13-01T00:00:00", "end_time"),
        ("bogus=1", "bogus"),
    ] {
        let (status, body) = call("GET", &format!("/audit-logs?{query}"), admin, None);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}: {body}");
        assert!(body.to_string().contains(field), "{query}: {body}");
    }
}

fn scrape() -> prometheus_parse::Scrape {
    let (status, body) = call("GET", "/metrics", Some(&env().admin), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    let text = body.as_str().unwrap().to_owned();
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).unwrap()
}

fn counter(scrape: &prometheus_parse::Scrape, name: &str, labels: &[(&str, &str)]) -> f64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == name)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum()
}

#[test]
fn metrics_parse_and_count_the_requests_made() {
    let (key, _) = user_key_with_id();
    let vm = env().create_vm(&key, "metrics");
    let snapshots = format!("/vms/{vm}/snapshots");
    let labels = [
        ("route", "/vms/:name/snapshots"),
        ("method", "GET"),
        ("status", "200"),
    ];
    let before = scrape();

    for _ in 0..3 {
        let (status, body) = call("GET", &snapshots, Some(&key), None);
        ok(status, &body);
    }

    let after = scrape();
    let (status, _) = call("GET", "/metrics", Some(&key), None);
    let made = counter(&after, "rewind_http_requests_total", &labels)
        - counter(&before, "rewind_http_requests_total", &labels);
    assert_eq!(made, 3.0);
    let mine = after
        .samples
        .iter()
        .find(|s| s.metric == "rewind_snapshots" && s.labels.get("sandbox") == Some(vm.as_str()));
    assert!(mine.is_some(), "no snapshot gauge for {vm}");
    assert_eq!(status, StatusCode::FORBIDDEN);
    call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

/// The real binary, killed on drop.
struct Server {
    child: Child,
    port: u16,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(data_dir: &Path, log: &Path) -> Server {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_rewind"))
        .env("REWIND_DATA_DIR", data_dir)
        .env("REWIND_RUNTIME", "namespace")
        .env("REWIND_BASE_IMAGE", common::busybox_rootfs())
        .env("REWIND_AGENT_BINARY", common::agent_binary())
        .env("REWIND_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .env("PORT", port.to_string())
        .env_remove("REWIND_CONFIG")
        .env_remove("DB_PATH")
        .arg("serve")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .unwrap();
    let server = Server { child, port };
    let deadline = Instant::now() + Duration::from_secs(120);
    while reqwest::blocking::get(format!("http://127.0.0.1:{port}/health")).is_err() {
        assert!(Instant::now() < deadline, "server never became healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    server
}

#[test]
fn json_logs_carry_the_request_id_and_audit_rows_the_source_ip() {
    let data_dir = common::data_dir("ops-json");
    let log = data_dir.join("server.log");
    let server = start_server(&data_dir, &log);
    let client = reqwest::blocking::Client::new();
    let base = format!("http://127.0.0.1:{}", server.port);

    let created = client.post(format!("{base}/api-keys")).send().unwrap();
    let request_id = created.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let key = created.json::<Value>().unwrap()["key"]
        .as_str()
        .unwrap()
        .to_owned();
    let rows: Value = client
        .get(format!("{base}/audit-logs?action_type=api_key_create"))
        .header("x-api-key", &key)
        .send()
        .unwrap()
        .json()
        .unwrap();
    drop(server);

    assert_eq!(rows["audit_logs"][0]["source_ip"], "127.0.0.1", "{rows}");
    let text = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let created_line = lines
        .iter()
        .find(|l| l["message"] == "api key created")
        .unwrap_or_else(|| panic!("no `api key created` line in:\n{text}"));
    assert_eq!(
        created_line["spans"][0]["request_id"],
        json!(request_id),
        "{created_line}"
    );
}
