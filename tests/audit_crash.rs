//! The audit log cannot miss a committed change: the service crashes (the
//! `audit:before_outcome` failpoint aborts it, as `kill -9` would) after a
//! request committed its change and before its audit row got the outcome;
//! after a restart the change is there and so is its row, pending (status
//! 0) with the owner and resource. Starts the real service as a process
//! (`rewind serve`). Needs root.

mod common;

use common::process::ServerProcess as Server;
use serde_json::{json, Value};

fn start(dir: &std::path::Path, failpoint: Option<&str>) -> Server {
    Server::start(dir, &common::busybox_rootfs(), failpoint)
}

/// The body of a 2xx answer.
fn ok(server: &Server, method: &str, path: &str, key: &str, body: Option<Value>) -> Value {
    let (status, body) = server.req(method, path, key, body);
    assert!(
        (200..300).contains(&status),
        "{method} {path}: {status} {body}"
    );
    body
}

#[test]
fn a_crash_after_a_committed_change_leaves_its_audit_row_pending() {
    let dir = common::data_dir("audit-crash");
    let server = start(&dir, None);
    let admin = ok(
        &server,
        "POST",
        "/api-keys",
        "",
        Some(json!({"name": "admin"})),
    );
    let admin = admin["key"].as_str().unwrap().to_owned();
    let user = ok(
        &server,
        "POST",
        "/api-keys",
        &admin,
        Some(json!({"name": "u"})),
    );
    let (key, key_id) = (user["key"].as_str().unwrap().to_owned(), user["id"].clone());
    drop(server);

    let armed = start(&dir, Some(rewind::failpoint::AUDIT_BEFORE_OUTCOME));
    let vm = common::unique("crashaudit");
    let answer = armed.try_req("POST", "/vms", &key, Some(json!({"name": vm})));
    assert!(
        answer.is_none(),
        "answered despite the failpoint: {answer:?}"
    );
    armed.wait_crashed();

    let server = start(&dir, None);
    let got = ok(&server, "GET", &format!("/vms/{vm}"), &key, None);
    assert_eq!(got["name"], vm.as_str(), "the create was committed");
    let logs = ok(
        &server,
        "GET",
        "/audit-logs?action_type=vm_create",
        &key,
        None,
    );
    let rows = logs["audit_logs"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| r["resource_id"] == vm.as_str())
        .unwrap_or_else(|| panic!("no audit row for the committed create: {logs}"));
    assert_eq!(row["status"], 0, "pending: {row}");
    assert_eq!(row["user_id"], key_id, "{row}");
    ok(&server, "DELETE", &format!("/vms/{vm}"), &key, None);
}
