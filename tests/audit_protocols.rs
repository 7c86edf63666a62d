//! The audit log of the JSON-RPC (`POST /api/v1/rpc`) and MCP (`/mcp`)
//! endpoints: every state-changing call leaves one row with its owner,
//! address, request id and outcome; read-only calls leave none. Over a real
//! socket (reqwest), with real storage and the namespace runtime. Needs root.

mod common;

use std::sync::OnceLock;

use axum::http::StatusCode;
use reqwest::blocking::{Client, Response};
use serde_json::{json, Value};

use common::service::Service;

struct Env {
    service: Service,
    url: String,
    http: Client,
}

fn env() -> &'static Env {
    static ENV: OnceLock<Env> = OnceLock::new();
    ENV.get_or_init(|| {
        let service = Service::start("audit-protocols", common::busybox_rootfs(), |_| {});
        let url = service.serve();
        Env {
            service,
            url,
            http: Client::new(),
        }
    })
}

/// A new non-admin key and its id.
fn user_key_with_id() -> (String, i64) {
    let s = &env().service;
    let body = json!({"name": "audit-protocols"});
    let (status, body) = s.call("POST", "/api-keys", Some(&s.admin), Some(body));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["key"].as_str().unwrap().into(),
        body["id"].as_i64().unwrap(),
    )
}

/// `key`'s audit rows whose action starts with `prefix`, oldest first.
fn rows(key: &str, prefix: &str) -> Vec<Value> {
    let s = &env().service;
    let (status, body) = s.call("GET", "/audit-logs?limit=1000", Some(key), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    let mut rows: Vec<Value> = body["audit_logs"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action_type"].as_str().unwrap().starts_with(prefix))
        .cloned()
        .collect();
    rows.reverse();
    rows
}

fn actions_and_status(rows: &[Value]) -> Vec<(String, u64)> {
    rows.iter()
        .map(|r| {
            let action = r["action_type"].as_str().unwrap().to_owned();
            (action, r["status"].as_u64().unwrap())
        })
        .collect()
}

/// What every protocol row has, whatever the call: its owner, the test's
/// address, a request id, and nothing of the call's output.
fn assert_common(rows: &[Value], key_id: i64, protocol: &str, output: &str) {
    for row in rows {
        assert_eq!(row["user_id"].as_i64(), Some(key_id), "{row}");
        assert_eq!(row["source_ip"], "127.0.0.1", "{row}");
        assert!(
            row["request_id"].as_str().unwrap().starts_with("req_"),
            "{row}"
        );
        assert_eq!(row["details"]["protocol"], protocol, "{row}");
        assert!(!row.to_string().contains(output), "output in {row}");
    }
}

fn rpc(key: &str, method: &str, params: Value) -> Value {
    let e = env();
    let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
    let response = e
        .http
        .post(format!("{}/api/v1/rpc", e.url))
        .bearer_auth(key)
        .json(&body)
        .send()
        .unwrap();
    assert_eq!(response.status(), reqwest::StatusCode::OK);
    response.json().unwrap()
}

#[test]
fn rpc_state_changing_calls_leave_one_row_each_and_reads_none() {
    let (key, id) = user_key_with_id();
    let sandbox = common::unique("rpc");
    let target = json!({"namespace": "aud", "sandbox": sandbox});
    let started = rpc(&key, "sandbox.start", target.clone());
    assert!(started["error"].is_null(), "{started}");
    let run = json!({"namespace": "aud", "sandbox": sandbox,
                     "command": "sh", "args": ["-c", "echo out-$((6*7))"]});
    let ran = rpc(&key, "sandbox.command.run", run);
    assert!(ran.to_string().contains("out-42"), "{ran}");
    let metrics = rpc(&key, "sandbox.metrics.get", target.clone());
    assert!(metrics["error"].is_null(), "{metrics}");
    let stopped = rpc(&key, "sandbox.stop", target);
    assert!(stopped["error"].is_null(), "{stopped}");
    let missing = json!({"namespace": "aud", "sandbox": "nope", "command": "true"});
    let failed = rpc(&key, "sandbox.command.run", missing);
    assert_eq!(failed["error"]["code"], -32003, "{failed}");

    let rows = rows(&key, "rpc:");
    let expected = [
        ("rpc:sandbox.start", 200),
        ("rpc:sandbox.command.run", 200),
        ("rpc:sandbox.stop", 200),
        ("rpc:sandbox.command.run", 404),
    ];
    let expected: Vec<(String, u64)> = expected.iter().map(|(a, s)| (a.to_string(), *s)).collect();
    assert_eq!(actions_and_status(&rows), expected, "{rows:#?}");
    assert_common(&rows, id, "jsonrpc", "out-42");
    let name = format!("k{id}.aud.{sandbox}");
    for row in &rows[..3] {
        assert_eq!(row["resource_type"], "vm", "{row}");
        assert_eq!(row["resource_id"], name.as_str(), "{row}");
    }
    assert_eq!(rows[1]["details"]["method"], "sandbox.command.run");
    assert_eq!(rows[1]["details"]["command"], "sh");
    assert_eq!(rows[3]["resource_id"], format!("k{id}.aud.nope"));
}

/// One MCP session over Streamable HTTP (plain JSON-RPC messages; the
/// answers come as server-sent events).
struct Mcp {
    key: String,
    session: String,
}

impl Mcp {
    fn open(key: &str) -> Self {
        let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
            "protocolVersion": "2025-03-26", "capabilities": {},
            "clientInfo": {"name": "audit-protocols", "version": "0"}}});
        let response = post_mcp(key, None, &init);
        let session = response.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_owned();
        assert!(event_data(response)["result"].is_object());
        let ready = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let status = post_mcp(key, Some(&session), &ready).status();
        assert_eq!(status, reqwest::StatusCode::ACCEPTED);
        Mcp {
            key: key.into(),
            session,
        }
    }

    /// Call `tool`; its result (`isError`, and the text it answered).
    fn call(&self, tool: &str, arguments: Value) -> (bool, String) {
        let call = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call",
                          "params": {"name": tool, "arguments": arguments}});
        let reply = event_data(post_mcp(&self.key, Some(&self.session), &call));
        let result = &reply["result"];
        assert!(result.is_object(), "{reply}");
        let text = result["content"][0]["text"].as_str().unwrap().to_owned();
        (result["isError"] == true, text)
    }
}

fn post_mcp(key: &str, session: Option<&str>, body: &Value) -> Response {
    let e = env();
    let mut request = e
        .http
        .post(format!("{}/mcp", e.url))
        .bearer_auth(key)
        .header("accept", "application/json, text/event-stream")
        .json(body);
    if let Some(session) = session {
        request = request.header("mcp-session-id", session);
    }
    let response = request.send().unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    response
}

/// The JSON-RPC message of an SSE answer (the one `data:` line with JSON).
fn event_data(response: Response) -> Value {
    let text = response.text().unwrap();
    text.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str::<Value>(d.trim()).ok())
        .find(|v| v.get("id").is_some())
        .unwrap_or_else(|| panic!("no JSON-RPC answer in {text:?}"))
}

#[test]
fn mcp_state_changing_tools_leave_one_row_each_and_reads_none() {
    let (key, id) = user_key_with_id();
    let sandbox = common::unique("mcp");
    let mcp = Mcp::open(&key);
    let at = |extra: Value| {
        let mut args = json!({"sandbox": sandbox});
        args.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        args
    };
    let ok = |(error, text): (bool, String)| {
        assert!(!error, "{text}");
        text
    };
    ok(mcp.call("create_sandbox", at(json!({}))));
    let command = "echo kept > f.txt; echo out-$((6*7))";
    let ran = ok(mcp.call("run_command", at(json!({"command": command}))));
    assert!(ran.contains("out-42"), "{ran}");
    ok(mcp.call("list_snapshots", at(json!({}))));
    ok(mcp.call("read_file", at(json!({"path": "f.txt"}))));
    ok(mcp.call("restore_snapshot", at(json!({"snapshot": "initial"}))));
    let (error, text) = mcp.call("run_command", json!({"sandbox": "nope", "command": "true"}));
    assert!(error, "{text}");
    ok(mcp.call("delete_sandbox", at(json!({}))));

    let rows = rows(&key, "mcp:");
    let expected = [
        ("mcp:create_sandbox", 200),
        ("mcp:run_command", 200),
        ("mcp:restore_snapshot", 200),
        ("mcp:run_command", 404),
        ("mcp:delete_sandbox", 200),
    ];
    let expected: Vec<(String, u64)> = expected.iter().map(|(a, s)| (a.to_string(), *s)).collect();
    assert_eq!(actions_and_status(&rows), expected, "{rows:#?}");
    assert_common(&rows, id, "mcp", "out-42");
    for row in [&rows[0], &rows[1], &rows[2], &rows[4]] {
        assert_eq!(row["resource_id"], sandbox.as_str(), "{row}");
    }
    assert_eq!(rows[1]["details"]["command"], command);
    assert_eq!(rows[2]["resource_type"], "snapshot");
    assert_eq!(rows[2]["details"]["snapshot"], "initial");
    assert_eq!(rows[3]["resource_id"], "nope");
}
