//! Stateful REPLs (`POST /vms/:name/repl`) and the microsandbox-compatible
//! JSON-RPC endpoint (`POST /api/v1/rpc`), through the router against the
//! real service: loop-mounted Btrfs, namespace runtime, real agent, and the
//! debootstrap base image (python3 + nodejs). `#[ignore]`d for needing that
//! image: `scripts/test.sh` builds it and runs these with `--ignored`
//! (without it they fail naming it).

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use common::service::Service;

/// The shared service on the debootstrap image (panics when it is absent).
fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("repl", common::debootstrap_image(), |config| {
            config.exec.max_timeout_secs = 60;
        })
    })
}

/// Deletes its sandbox when the test ends (also on a failed assertion).
struct Vm<'a> {
    s: &'a Service,
    name: String,
}

impl Drop for Vm<'_> {
    fn drop(&mut self) {
        let path = format!("/vms/{}", self.name);
        let (status, body) = self.s.call("DELETE", &path, Some(&self.s.admin), None);
        if !matches!(status, StatusCode::OK | StatusCode::NOT_FOUND) {
            eprintln!("cleanup of {} failed: {status} {body}", self.name);
        }
    }
}

/// A new sandbox owned by `key`, deleted at the end of the test.
fn vm<'a>(s: &'a Service, key: &str, prefix: &str) -> Vm<'a> {
    Vm {
        s,
        name: s.create_vm(key, prefix),
    }
}

fn repl(s: &Service, key: &str, vm: &str, body: Value) -> (StatusCode, Value) {
    s.call("POST", &format!("/vms/{vm}/repl"), Some(key), Some(body))
}

fn cell(s: &Service, key: &str, vm: &str, language: &str, code: &str) -> Value {
    let (status, body) = repl(s, key, vm, json!({"language": language, "code": code}));
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn repl_python_keeps_state_over_three_calls() {
    let s = env();
    let key = s.user_key();
    let guard = vm(s, &key, "repl-py");
    let vm = guard.name.as_str();

    let first = cell(s, &key, vm, "python", "x = 40");
    let second = cell(s, &key, vm, "python", "x += 1\nprint('x is', x)");
    let third = cell(s, &key, vm, "python", "x + 1");

    assert_eq!(
        (
            first["interpreterStarted"].clone(),
            second["interpreterStarted"].clone()
        ),
        (json!(true), json!(false))
    );
    assert_eq!(second["stdout"], "x is 41\n");
    assert_eq!(
        (third["stdout"].clone(), third["hasError"].clone()),
        (json!("42\n"), json!(false))
    );
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn repl_python_separates_streams_and_reports_exceptions() {
    let s = env();
    let key = s.user_key();
    let guard = vm(s, &key, "repl-err");
    let vm = guard.name.as_str();

    let out = cell(
        s,
        &key,
        vm,
        "python",
        "import sys\nprint('out')\nprint('err', file=sys.stderr)\n1/0",
    );

    assert_eq!(
        (out["stdout"].as_str(), out["hasError"].as_bool()),
        (Some("out\n"), Some(true))
    );
    let stderr = out["stderr"].as_str().unwrap();
    assert!(stderr.starts_with("err\n"), "{stderr}");
    assert!(stderr.contains("ZeroDivisionError"), "{stderr}");
    assert!(!stderr.contains("driver"), "driver frames leak: {stderr}");
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn repl_python_runaway_cell_is_interrupted_and_state_kept() {
    let s = env();
    let key = s.user_key();
    let guard = vm(s, &key, "repl-loop");
    let vm = guard.name.as_str();
    cell(s, &key, vm, "python", "kept = 'yes'");

    let (status, runaway) = repl(
        s,
        &key,
        vm,
        json!({"language": "python", "code": "while True:\n    pass", "timeout": 1}),
    );
    let after = cell(s, &key, vm, "python", "print(kept)");

    assert_eq!(status, StatusCode::OK, "{runaway}");
    let flags = ["timedOut", "hasError", "interpreterKilled"].map(|f| runaway[f].clone());
    assert_eq!(flags, [json!(true), json!(true), json!(false)], "{runaway}");
    assert!(
        runaway["stderr"]
            .as_str()
            .unwrap()
            .contains("KeyboardInterrupt"),
        "{runaway}"
    );
    assert_eq!(
        (
            after["stdout"].as_str(),
            after["interpreterStarted"].as_bool()
        ),
        (Some("yes\n"), Some(false))
    );
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn repl_python_cell_ignoring_interrupt_kills_interpreter() {
    let s = env();
    let key = s.user_key();
    let guard = vm(s, &key, "repl-stubborn");
    let vm = guard.name.as_str();
    cell(s, &key, vm, "python", "lost = 1");
    let code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass";

    let (status, stuck) = repl(
        s,
        &key,
        vm,
        json!({"language": "python", "code": code, "timeout": 1}),
    );
    let after = cell(s, &key, vm, "python", "'lost' in globals()");

    assert_eq!(status, StatusCode::OK, "{stuck}");
    assert_eq!(
        (
            stuck["timedOut"].clone(),
            stuck["interpreterKilled"].clone()
        ),
        (json!(true), json!(true))
    );
    assert_eq!(
        (
            after["stdout"].as_str(),
            after["interpreterStarted"].as_bool()
        ),
        (Some("False\n"), Some(true))
    );
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn repl_node_keeps_state_and_interrupts_runaway_cell() {
    let s = env();
    let key = s.user_key();
    let guard = vm(s, &key, "repl-js");
    let vm = guard.name.as_str();

    cell(s, &key, vm, "nodejs", "let n = 2; var m = 3;");
    let (_, runaway) = repl(
        s,
        &key,
        vm,
        json!({"language": "nodejs", "code": "while (true) {}", "timeout": 1}),
    );
    let sum = cell(s, &key, vm, "nodejs", "console.log('sum'); n * m");
    let thrown = cell(s, &key, vm, "nodejs", "throw new Error('boom')");

    assert_eq!(
        (
            runaway["timedOut"].clone(),
            runaway["interpreterKilled"].clone()
        ),
        (json!(true), json!(false)),
        "{runaway}"
    );
    assert_eq!(sum["stdout"], "sum\n6\n");
    assert_eq!(thrown["hasError"], true);
    assert!(
        thrown["stderr"].as_str().unwrap().contains("Error: boom"),
        "{thrown}"
    );
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn repl_cell_leaves_snapshot_and_restore_keeps_interpreter() {
    let s = env();
    let key = s.user_key();
    let guard = vm(s, &key, "repl-snap");
    let vm = guard.name.as_str();
    let before = cell(
        s,
        &key,
        vm,
        "python",
        "counter = 1\nopen('f.txt', 'w').write('one')",
    );
    cell(
        s,
        &key,
        vm,
        "python",
        "counter = 2\nopen('f.txt', 'w').write('two')",
    );

    let snap = before["snapshot"].as_str().unwrap();
    let (status, body) = s.call(
        "POST",
        &format!("/vms/{vm}/snapshots/{snap}/restore"),
        Some(&key),
        None,
    );
    let after = cell(
        s,
        &key,
        vm,
        "python",
        "print(counter, open('f.txt').read())",
    );

    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(s.snapshot_names(&key, vm).contains(&snap.to_owned()));
    // The workspace went back; the interpreter's memory did not.
    assert_eq!(
        (
            after["stdout"].as_str(),
            after["interpreterStarted"].as_bool()
        ),
        (Some("2 one\n"), Some(false))
    );
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn repl_bad_input_is_400_naming_the_field() {
    let s = env();
    let key = s.user_key();
    let guard = vm(s, &key, "repl-bad");
    let vm = guard.name.as_str();
    let snapshots = s.snapshot_names(&key, vm);

    let cases = [
        (json!({"language": "ruby", "code": "1"}), "language"),
        (
            json!({"language": "python", "code": "1", "timeout": 0}),
            "timeout",
        ),
        (json!({"language": "python", "code": "a\u{0}b"}), "code"),
        (json!({"language": "python"}), "code"),
    ];

    for (body, field) in cases {
        let (status, answer) = repl(s, &key, vm, body);
        assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
        assert!(
            answer["error"].as_str().unwrap().contains(field),
            "{answer}"
        );
    }
    assert_eq!(s.snapshot_names(&key, vm), snapshots);
}

// ---- JSON-RPC ----

fn rpc_raw(s: &Service, key: Option<&str>, body: &str) -> Value {
    let mut req = Request::builder()
        .method("POST")
        .uri("/api/v1/rpc")
        .header("content-type", "application/json");
    if let Some(key) = key {
        req = req.header("authorization", format!("Bearer {key}"));
    }
    let (status, answer) = s.raw(req.body(Body::from(body.to_owned())).unwrap());
    assert_eq!(status, StatusCode::OK, "{answer}");
    answer
}

fn rpc(s: &Service, key: &str, method: &str, params: Value) -> Value {
    let body = json!({"jsonrpc": "2.0", "method": method, "params": params, "id": "t"});
    rpc_raw(s, Some(key), &body.to_string())
}

fn result(answer: Value) -> Value {
    assert!(answer.get("error").is_none(), "{answer}");
    answer["result"].clone()
}

/// A new non-admin key and its id.
fn key_with_id(s: &Service) -> (String, i64) {
    let body = json!({"name": "rpc"});
    let (status, body) = s.call("POST", "/api-keys", Some(&s.admin), Some(body));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    (
        body["key"].as_str().unwrap().to_owned(),
        body["id"].as_i64().unwrap(),
    )
}

fn error_code(answer: &Value) -> i64 {
    answer["error"]["code"]
        .as_i64()
        .unwrap_or_else(|| panic!("no error: {answer}"))
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn rpc_start_repl_command_metrics_stop() {
    let s = env();
    let (key, key_id) = key_with_id(s);
    let ns = common::unique("team");
    let sb = json!({"sandbox": "env1", "namespace": ns});
    let _guard = Vm {
        s,
        name: format!("k{key_id}.{ns}.env1"),
    };
    let with = |extra: Value| {
        let mut p = sb.clone();
        p.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        p
    };

    let started = result(rpc(
        s,
        &key,
        "sandbox.start",
        with(json!({"config": {"image": "microsandbox/python", "memory": 512, "cpus": 1}})),
    ));
    let r1 = result(rpc(
        s,
        &key,
        "sandbox.repl.run",
        with(json!({"language": "python", "code": "v = 'kept'"})),
    ));
    let r2 = result(rpc(
        s,
        &key,
        "sandbox.repl.run",
        with(json!({"language": "python", "code": "print(v)"})),
    ));
    let cmd = result(rpc(
        s,
        &key,
        "sandbox.command.run",
        with(json!({"command": "sh", "args": ["-c", "echo $0; exit 3", "it's"]})),
    ));
    let metrics = result(rpc(
        s,
        &key,
        "sandbox.metrics.get",
        json!({"namespace": "*"}),
    ));
    let stopped = result(rpc(s, &key, "sandbox.stop", sb.clone()));

    assert_eq!(started, "Sandbox env1 started successfully");
    assert_eq!(r1["status"], "success");
    assert_eq!(r2["output"], json!([{"stream": "stdout", "text": "kept"}]));
    let name = metrics["sandboxes"][0]["rewind_name"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(s.vm_names(&key).is_empty());
    assert!(name.ends_with(&format!(".{ns}.env1")), "{name}");
    assert_eq!(metrics["sandboxes"][0]["running"], true);
    let cmd_fields = [
        cmd["exit_code"].clone(),
        cmd["success"].clone(),
        cmd["output"].clone(),
    ];
    assert_eq!(
        cmd_fields,
        [
            json!(3),
            json!(false),
            json!([{"stream": "stdout", "text": "it's"}])
        ]
    );
    assert!(r2["snapshot"].as_str().unwrap().starts_with("cmd_"), "{r2}");
    assert_eq!(stopped, "Sandbox env1 stopped successfully");
}

#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn rpc_every_error_code() {
    let s = env();
    let (key, key_id) = key_with_id(s);
    let other = s.user_key();
    let ns = common::unique("ns");
    let sb = json!({"sandbox": "errs", "namespace": ns});
    result(rpc(s, &key, "sandbox.start", sb.clone()));
    let _errs = Vm {
        s,
        name: format!("k{key_id}.{ns}.errs"),
    };
    // Another key already holds the rewind name this key's "taken" maps to.
    let taken = format!("k{key_id}.{ns}.taken");
    let (status, body) = s.call("POST", "/vms", Some(&other), Some(json!({"name": taken})));
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let _taken = Vm { s, name: taken };

    let cases: Vec<(i64, Value)> = vec![
        (-32700, rpc_raw(s, Some(&key), "{not json")),
        (
            -32600,
            rpc_raw(
                s,
                Some(&key),
                r#"{"jsonrpc": "1.0", "method": "sandbox.stop", "id": 1}"#,
            ),
        ),
        (
            -32600,
            rpc_raw(
                s,
                Some(&key),
                r#"[{"jsonrpc": "2.0", "method": "sandbox.stop", "id": 1}]"#,
            ),
        ),
        (-32601, rpc(s, &key, "sandbox.teleport", json!({}))),
        (
            -32602,
            rpc(s, &key, "sandbox.stop", json!({"sandbox": "errs"})),
        ),
        (
            -32602,
            rpc(
                s,
                &key,
                "sandbox.stop",
                json!({"sandbox": "errs", "namespace": ""}),
            ),
        ),
        (
            -32001,
            rpc(
                s,
                &key,
                "sandbox.start",
                json!({"sandbox": "x", "namespace": "a.b"}),
            ),
        ),
        (
            -32001,
            rpc(
                s,
                &key,
                "sandbox.start",
                json!({"sandbox": "x", "namespace": "d", "config": {"image": "ubuntu"}}),
            ),
        ),
        (
            -32001,
            rpc(
                s,
                &key,
                "sandbox.start",
                json!({"sandbox": "x", "namespace": "d", "config": {"volumes": ["/a:/b"]}}),
            ),
        ),
        (
            -32001,
            rpc(
                s,
                &key,
                "sandbox.repl.run",
                json!({"sandbox": "errs", "namespace": ns, "language": "cobol", "code": "1"}),
            ),
        ),
        (
            -32002,
            rpc_raw(
                s,
                None,
                r#"{"jsonrpc": "2.0", "method": "sandbox.stop", "params": {}, "id": 1}"#,
            ),
        ),
        (
            -32002,
            rpc(
                s,
                "ws_000000000000000000000000000000000000000000000000",
                "sandbox.stop",
                sb.clone(),
            ),
        ),
        (-32003, rpc(s, &other, "sandbox.stop", sb.clone())),
        (
            -32003,
            rpc(
                s,
                &key,
                "sandbox.command.run",
                json!({"sandbox": "nope", "namespace": ns, "command": "true"}),
            ),
        ),
    ];

    let got: Vec<i64> = cases.iter().map(|(_, answer)| error_code(answer)).collect();
    let want: Vec<i64> = cases.iter().map(|(code, _)| *code).collect();
    assert_eq!(got, want, "{cases:#?}");
    assert_eq!(cases[0].1["id"], Value::Null);
    assert_eq!(cases[3].1["id"], "t");
    result(rpc(s, &key, "sandbox.stop", sb));
}

/// -32603 for a failure inside rewind, provoked honestly: a command
/// unmounts its own `/workspace`, so the agent refuses the next exec
/// (`WorkspaceUnavailable`, a 503 on the native API). The answer carries
/// the reason; nothing is snapshotted for the refused call.
#[test]
#[ignore = "needs the debootstrap base image; scripts/test.sh runs it"]
fn rpc_internal_error_when_the_agent_refuses_to_run() {
    let s = env();
    let (key, key_id) = key_with_id(s);
    let ns = common::unique("ns");
    let sb = |extra: Value| {
        let mut params = json!({"sandbox": "broken", "namespace": ns});
        params
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        params
    };
    result(rpc(s, &key, "sandbox.start", sb(json!({}))));
    let name = format!("k{key_id}.{ns}.broken");
    let _vm = Vm {
        s,
        name: name.clone(),
    };
    let unmount = json!({"command": "sh", "args": ["-c", "umount -l /workspace"]});
    result(rpc(s, &key, "sandbox.command.run", sb(unmount)));
    let before = s.snapshot_names(&key, &name);

    let answer = rpc(
        s,
        &key,
        "sandbox.command.run",
        sb(json!({"command": "true"})),
    );

    assert_eq!(error_code(&answer), -32603, "{answer}");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(message.contains("WorkspaceUnavailable"), "{answer}");
    assert_eq!(s.snapshot_names(&key, &name), before);
}
