//! API tests through the router (no socket), with real storage on a
//! loop-mounted Btrfs pool and the real namespace runtime (agent as PID 1 in
//! fresh namespaces, on a busybox root filesystem). Needs root.
//!
//! All tests share one service instance (one pool, one database), as a real
//! deployment does; they keep apart by sandbox names and API keys.

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::{json, Value};

use common::service::{call_app, raw, Service};

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("api", common::busybox_rootfs(), |config| {
            config.exec.max_output_bytes = 64 * 1024;
            config.exec.max_timeout_secs = 60;
            // Egress through the proxy, to the host's loopback only (test servers).
            config.network.egress_allow = vec!["127.0.0.1".into()];
        })
    })
}

fn call(method: &str, path: &str, key: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
    env().call(method, path, key, body)
}

fn admin() -> &'static str {
    &env().admin
}

/// A new non-admin key.
fn user_key() -> String {
    env().user_key()
}

fn create_vm(key: &str, prefix: &str) -> String {
    env().create_vm(key, prefix)
}

fn run(key: &str, vm: &str, command: &str) -> Value {
    env().run(key, vm, command)
}

/// `run` with the `env` extension.
fn run_with_env(key: &str, vm: &str, command: &str, env_vars: Value) -> Value {
    env().run_with_env(key, vm, command, env_vars)
}

fn snapshot_names(key: &str, vm: &str) -> Vec<String> {
    env().snapshot_names(key, vm)
}

fn vm_names(key: &str) -> Vec<String> {
    env().vm_names(key)
}

#[test]
fn health_needs_no_key() {
    let (status, body) = call("GET", "/health", None, None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "ok");
    assert!(body["timestamp"].as_str().unwrap().ends_with('Z'));
}

#[test]
fn auth_missing_key_is_401_wrong_key_is_403() {
    let missing = call("GET", "/vms", None, None);
    let wrong = call("GET", "/vms", Some(&format!("ws_{}", "0".repeat(48))), None);
    let garbage = call("GET", "/vms", Some("hello"), None);
    assert_eq!(
        (missing.0, missing.1["error"].as_str()),
        (StatusCode::UNAUTHORIZED, Some("API key required"))
    );
    assert_eq!(
        (wrong.0, wrong.1["error"].as_str()),
        (StatusCode::FORBIDDEN, Some("Invalid API key"))
    );
    assert_eq!(garbage.0, StatusCode::FORBIDDEN);
}

#[test]
fn keys_create_without_key_refused_once_keys_exist() {
    let _ = admin();
    let (status, _) = call("POST", "/api-keys", None, Some(json!({"name": "sneaky"})));
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[test]
fn keys_non_admin_cannot_create_or_list() {
    let user = user_key();
    let create = call("POST", "/api-keys", Some(&user), Some(json!({})));
    let list = call("GET", "/api-keys", Some(&user), None);
    assert_eq!(
        (create.0, list.0),
        (StatusCode::FORBIDDEN, StatusCode::FORBIDDEN)
    );
}

#[test]
fn keys_list_shows_prefixes_only() {
    let user = user_key();
    let (status, body) = call("GET", "/api-keys", Some(admin()), None);
    assert_eq!(status, StatusCode::OK);
    let shown: Vec<&str> = body["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["key"].as_str().unwrap())
        .collect();
    assert!(
        shown.iter().all(|k| k.len() == 14 && k.ends_with("...")),
        "{shown:?}"
    );
    assert!(shown.contains(&format!("{}...", &user[..11]).as_str()));
    assert!(!body.to_string().contains(&user));
}

#[test]
fn keys_revoked_key_is_403() {
    let user = user_key();
    let (_, list) = call("GET", "/api-keys", Some(admin()), None);
    let id = list["api_keys"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["key"].as_str().unwrap() == format!("{}...", &user[..11]))
        .unwrap()["id"]
        .as_i64()
        .unwrap();
    let revoke = call("DELETE", &format!("/api-keys/{id}"), Some(admin()), None);
    let again = call("DELETE", &format!("/api-keys/{id}"), Some(admin()), None);
    let used = call("GET", "/vms", Some(&user), None);
    assert_eq!(revoke.0, StatusCode::OK);
    assert_eq!(again.0, StatusCode::NOT_FOUND);
    assert_eq!(used.0, StatusCode::FORBIDDEN);
}

#[test]
fn vms_create_get_list_delete() {
    let key = user_key();
    let name = create_vm(&key, "life");
    let (status, vm) = call("GET", &format!("/vms/{name}"), Some(&key), None);
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            vm["name"].as_str(),
            vm["status"].as_str(),
            vm["agentHealthy"].as_bool()
        ),
        (Some(name.as_str()), Some("running"), Some(true))
    );
    assert_eq!(vm["base_vm"], "base");
    assert!(
        vm.get("network_config").is_some_and(|n| n.is_null()),
        "namespace sandboxes have loopback only: {vm}"
    );
    assert_eq!(vm_names(&key), vec![name.clone()]);
    assert_eq!(snapshot_names(&key, &name), vec!["initial"]);
    let (status, body) = call("DELETE", &format!("/vms/{name}"), Some(&key), None);
    assert_eq!(
        (status, body["message"].as_str().unwrap()),
        (StatusCode::OK, format!("VM \"{name}\" destroyed").as_str())
    );
    assert_eq!(
        call("GET", &format!("/vms/{name}"), Some(&key), None).0,
        StatusCode::NOT_FOUND
    );
    assert!(vm_names(&key).is_empty());
}

#[test]
fn vms_create_duplicate_is_409() {
    let key = user_key();
    let name = create_vm(&key, "dup");
    let (status, body) = call("POST", "/vms", Some(&key), Some(json!({"name": name})));
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
}

#[test]
fn vms_create_bad_input_is_400_and_changes_nothing() {
    let key = user_key();
    let long = "a".repeat(65);
    let bad_bodies = [
        json!({"name": "a/b"}),
        json!({"name": ".."}),
        json!({"name": "x\u{0}y"}),
        json!({"name": "tab\there"}),
        json!({"name": long}),
        json!({"name": ""}),
        json!({"name": 5}),
        json!({}),
        json!({"name": "ok", "extra": true}),
    ];
    for body in bad_bodies {
        let (status, resp) = call("POST", "/vms", Some(&key), Some(body.clone()));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} -> {resp}");
        assert!(
            resp["error"].as_str().is_some_and(|e| !e.is_empty()),
            "{resp}"
        );
    }
    let malformed = Request::builder()
        .method("POST")
        .uri("/vms")
        .header("x-api-key", &key)
        .header("content-type", "application/json")
        .body(Body::from("{\"name\":"))
        .unwrap();
    let (status, resp) = env().rt.block_on(raw(&env().state, malformed));
    assert_eq!(status, StatusCode::BAD_REQUEST, "{resp}");
    assert!(vm_names(&key).is_empty());
}

#[test]
fn vms_bad_name_errors_name_the_field() {
    let key = user_key();
    let (_, resp) = call("POST", "/vms", Some(&key), Some(json!({"name": "a/b"})));
    assert!(
        resp["error"].as_str().unwrap().starts_with("name:"),
        "{resp}"
    );
    let (_, resp) = call("POST", "/vms", Some(&key), Some(json!({"nam": "x"})));
    assert!(resp["error"].as_str().unwrap().contains("nam"), "{resp}");
}

#[test]
fn vms_oversized_body_is_413_naming_the_key() {
    let key = user_key();
    let big = json!({"name": "x".repeat(2 * 1024 * 1024)});
    let (status, resp) = call("POST", "/vms", Some(&key), Some(big));
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{resp}");
    assert!(
        resp["error"]
            .as_str()
            .unwrap()
            .contains("server.max_body_bytes"),
        "{resp}"
    );
}

#[test]
fn vms_other_key_gets_404_admin_sees_all() {
    let (a, b) = (user_key(), user_key());
    let name = create_vm(&a, "iso");
    let paths = [
        ("GET", format!("/vms/{name}")),
        ("GET", format!("/vms/{name}/snapshots")),
        ("POST", format!("/vms/{name}/wipe")),
        ("DELETE", format!("/vms/{name}")),
    ];
    for (method, path) in &paths {
        assert_eq!(
            call(method, path, Some(&b), None).0,
            StatusCode::NOT_FOUND,
            "{method} {path}"
        );
    }
    let run_b = call(
        "POST",
        &format!("/vms/{name}/run"),
        Some(&b),
        Some(json!({"command": "true"})),
    );
    assert_eq!(run_b.0, StatusCode::NOT_FOUND);
    assert!(vm_names(&b).is_empty());
    assert!(vm_names(admin()).contains(&name));
    assert_eq!(
        call("GET", &format!("/vms/{name}"), Some(admin()), None).0,
        StatusCode::OK
    );
}

#[test]
fn run_reports_stdout_stderr_exit_code_and_snapshot() {
    let key = user_key();
    let vm = create_vm(&key, "run");
    let out = run(&key, &vm, "echo out; echo err >&2; exit 3");
    assert_eq!(
        (
            out["stdout"].as_str(),
            out["stderr"].as_str(),
            out["exitCode"].as_i64()
        ),
        (Some("out\n"), Some("err\n"), Some(3))
    );
    let snap = out["snapshot"].as_str().unwrap();
    assert!(snap.starts_with("cmd_"), "{snap}");
    let (_, list) = call("GET", &format!("/vms/{vm}/snapshots"), Some(&key), None);
    let row = list["snapshots"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["snapshot_name"] == snap)
        .unwrap()
        .clone();
    assert_eq!(
        (
            row["command"].as_str(),
            row["exit_code"].as_i64(),
            row["vm_name"].as_str()
        ),
        (
            Some("echo out; echo err >&2; exit 3"),
            Some(3),
            Some(vm.as_str())
        )
    );
}

#[test]
fn run_snapshot_names_unique_for_fast_runs() {
    let key = user_key();
    let vm = create_vm(&key, "fast");
    let names: Vec<String> = (0..5)
        .map(|_| {
            run(&key, &vm, "true")["snapshot"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let mut dedup = names.clone();
    dedup.dedup();
    assert_eq!(names.len(), dedup.len());
    assert_eq!(snapshot_names(&key, &vm).len(), 6);
}

#[test]
fn run_restore_roundtrip_keeps_history() {
    let key = user_key();
    let vm = create_vm(&key, "restore");
    let first = run(&key, &vm, "echo hello > file.txt")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let second = run(&key, &vm, "echo more >> file.txt; mkdir d")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = call(
        "POST",
        &format!("/vms/{vm}/snapshots/initial/restore"),
        Some(&key),
        None,
    );
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::OK, Some("Restored to snapshot \"initial\""))
    );
    assert_eq!(run(&key, &vm, "ls -A")["stdout"], "");
    call(
        "POST",
        &format!("/vms/{vm}/snapshots/{first}/restore"),
        Some(&key),
        None,
    );
    assert_eq!(
        run(&key, &vm, "cat file.txt; ls -d d 2>/dev/null")["stdout"],
        "hello\n"
    );
    call(
        "POST",
        &format!("/vms/{vm}/snapshots/{second}/restore"),
        Some(&key),
        None,
    );
    assert_eq!(
        run(&key, &vm, "cat file.txt; ls -d d")["stdout"],
        "hello\nmore\nd\n"
    );
    let names = snapshot_names(&key, &vm);
    assert!(
        names.contains(&first) && names.contains(&second) && names.contains(&"initial".to_string())
    );
}

#[test]
fn run_timeout_kills_and_reports_124() {
    let key = user_key();
    let vm = create_vm(&key, "timeout");
    let (status, out) = call(
        "POST",
        &format!("/vms/{vm}/run"),
        Some(&key),
        Some(json!({"command": "sleep 30 & sleep 30; echo never", "timeout": 1})),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (out["exitCode"].as_i64(), out["timedOut"].as_bool()),
        (Some(124), Some(true))
    );
    assert!(
        out["stderr"].as_str().unwrap().contains("timed out"),
        "{out}"
    );
    assert_eq!(out["stdout"], "");
    let left = run(&key, &vm, "ps -o args | grep -c '^sleep 30$' || true");
    assert_eq!(left["stdout"], "0\n", "{left}");
}

#[test]
fn run_output_cap_sets_truncated() {
    let key = user_key();
    let vm = create_vm(&key, "cap");
    let out = run(&key, &vm, "head -c 200000 /dev/zero | tr '\\0' x");
    assert_eq!(out["stdout"].as_str().unwrap().len(), 64 * 1024);
    assert_eq!(
        (
            out["stdoutTruncated"].as_bool(),
            out["stderrTruncated"].as_bool()
        ),
        (Some(true), Some(false))
    );
}

#[test]
fn run_bad_input_is_400_and_takes_no_snapshot() {
    let key = user_key();
    let vm = create_vm(&key, "badrun");
    let bodies = [
        json!({"command": ""}),
        json!({"command": "true", "timeout": 0}),
        json!({"command": "true", "timeout": 100000}),
        json!({"command": "true", "timeout": "soon"}),
        json!({"command": "x".repeat(300 * 1024)}),
        json!({"cmd": "true"}),
        json!({"command": 1}),
    ];
    for body in bodies {
        let (status, resp) = call(
            "POST",
            &format!("/vms/{vm}/run"),
            Some(&key),
            Some(body.clone()),
        );
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{} -> {resp}",
            &body.to_string()[..body.to_string().len().min(80)]
        );
    }
    assert_eq!(snapshot_names(&key, &vm), vec!["initial"]);
}

#[test]
fn run_env_and_cwd_extensions() {
    let key = user_key();
    let vm = create_vm(&key, "envcwd");
    let (status, out) = call(
        "POST",
        &format!("/vms/{vm}/run"),
        Some(&key),
        Some(json!({"command": "echo $GREETING; pwd", "env": {"GREETING": "hi"}, "cwd": "/tmp"})),
    );
    assert_eq!(status, StatusCode::OK);
    assert_eq!(out["stdout"], "hi\n/tmp\n");
    assert_eq!(run(&key, &vm, "pwd")["stdout"], "/workspace\n");
}

#[test]
fn wipe_empties_workspace_and_can_be_undone() {
    let key = user_key();
    let vm = create_vm(&key, "wipe");
    let before = run(&key, &vm, "echo keep > a; mkdir -p b/c")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, body) = call("POST", &format!("/vms/{vm}/wipe"), Some(&key), None);
    assert_eq!(
        (status, body["message"].as_str()),
        (StatusCode::OK, Some("Workspace wiped"))
    );
    assert!(body["snapshot"].as_str().unwrap().starts_with("wipe_"));
    assert_eq!(
        run(&key, &vm, "ls -A; touch new && echo writable")["stdout"],
        "writable\n"
    );
    call(
        "POST",
        &format!("/vms/{vm}/snapshots/{before}/restore"),
        Some(&key),
        None,
    );
    assert_eq!(run(&key, &vm, "cat a; ls b")["stdout"], "keep\nc\n");
}

#[test]
fn restore_unknown_is_404_and_bad_name_400() {
    let key = user_key();
    let vm = create_vm(&key, "r404");
    assert_eq!(
        call(
            "POST",
            &format!("/vms/{vm}/snapshots/nope/restore"),
            Some(&key),
            None
        )
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            "POST",
            "/vms/nobody/snapshots/initial/restore",
            Some(&key),
            None
        )
        .0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(
            "POST",
            &format!("/vms/{vm}/snapshots/..%2Fx/restore"),
            Some(&key),
            None
        )
        .0,
        StatusCode::BAD_REQUEST
    );
}

#[test]
fn restore_while_command_runs_is_409() {
    let key = user_key();
    let vm = create_vm(&key, "busy");
    let e = env();
    let workspace = e.workspace(&vm);
    let state = e.state.clone();
    let (k, v) = (key.clone(), vm.clone());
    // The command runs until the test writes to the FIFO it made.
    let running = e.rt.spawn(async move {
        call_app(
            &state,
            "POST",
            &format!("/vms/{v}/run"),
            Some(&k),
            Some(json!({"command": "mkfifo go && touch started && cat go"})),
        )
        .await
    });
    common::wait_until("the command started", || workspace.join("started").exists());
    let (status, body) = call(
        "POST",
        &format!("/vms/{vm}/snapshots/initial/restore"),
        Some(&key),
        None,
    );
    std::fs::write(workspace.join("go"), "go\n").unwrap();
    let (run_status, out) = e.rt.block_on(running).unwrap();
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(
        (run_status, &out["stdout"]),
        (StatusCode::OK, &json!("go\n"))
    );
}

#[test]
fn restore_keeps_background_process_outside_workspace_alive() {
    let key = user_key();
    let vm = create_vm(&key, "bg");
    run(
        &key,
        &vm,
        "cd /tmp && (sleep 300 > /dev/null 2>&1 &) ; echo started",
    );
    run(
        &key,
        &vm,
        "cd /workspace && (sleep 301 > /dev/null 2>&1 &) ; echo x > f",
    );
    call(
        "POST",
        &format!("/vms/{vm}/snapshots/initial/restore"),
        Some(&key),
        None,
    );
    let ps = run(&key, &vm, "ps -o args | grep '^sleep 30[01]$'")["stdout"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        ps, "sleep 300\n",
        "the holder of /workspace is killed, the other survives"
    );
}

#[test]
fn runs_on_one_sandbox_are_serialized() {
    let key = user_key();
    let vm = create_vm(&key, "serial");
    let e = env();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let (state, k, v) = (e.state.clone(), key.clone(), vm.clone());
            e.rt.spawn(async move { call_app(&state, "POST", &format!("/vms/{v}/run"), Some(&k), Some(json!({"command": format!("n=$(cat count 2>/dev/null || echo 0); sleep 0.2; echo $((n+1)) > count; echo {i}")}))).await })
        })
        .collect();
    for h in handles {
        assert_eq!(e.rt.block_on(h).unwrap().0, StatusCode::OK);
    }
    assert_eq!(run(&key, &vm, "cat count")["stdout"], "4\n");
}

#[test]
fn named_snapshot_create_list_delete() {
    let key = user_key();
    let vm = create_vm(&key, "named");
    run(&key, &vm, "echo data > f");
    let (status, snap) = call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(&key),
        Some(json!({"name": "before-upgrade", "description": "pre", "include_memory": false})),
    );
    assert_eq!(status, StatusCode::CREATED, "{snap}");
    assert_eq!(
        (
            snap["name"].as_str(),
            snap["vm_name"].as_str(),
            snap["description"].as_str()
        ),
        (Some("before-upgrade"), Some(vm.as_str()), Some("pre"))
    );
    assert!(snap["checksum"].as_str().unwrap().starts_with("sha256:"));
    let dup = call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(&key),
        Some(json!({"name": "before-upgrade"})),
    );
    assert_eq!(dup.0, StatusCode::CONFLICT);
    assert!(snapshot_names(&key, &vm).contains(&"before-upgrade".to_string()));
    assert_eq!(
        call(
            "DELETE",
            &format!("/vms/{vm}/snapshots/before-upgrade"),
            Some(&key),
            None
        )
        .0,
        StatusCode::NO_CONTENT
    );
    assert!(!snapshot_names(&key, &vm).contains(&"before-upgrade".to_string()));
    assert_eq!(
        call(
            "DELETE",
            &format!("/vms/{vm}/snapshots/before-upgrade"),
            Some(&key),
            None
        )
        .0,
        StatusCode::NOT_FOUND
    );
}

#[test]
fn named_snapshot_with_memory_on_busybox_root_is_refused_and_leaves_nothing() {
    // In the busybox root the agent binary cannot run, so PID 1 serves from
    // the host's image and CRIU refuses the dump (409); without CRIU: 501.
    // Memory snapshots themselves are tested in tests/memory.rs.
    let key = user_key();
    let vm = create_vm(&key, "mem");
    let (status, body) = call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(&key),
        Some(json!({"name": "m", "include_memory": true})),
    );
    assert!(
        [StatusCode::CONFLICT, StatusCode::NOT_IMPLEMENTED].contains(&status),
        "{status}: {body}"
    );
    assert!(!snapshot_names(&key, &vm).contains(&"m".to_string()));
    assert_eq!(run(&key, &vm, "echo alive")["stdout"], "alive\n");
}

#[test]
fn unknown_route_is_404_with_error_shape() {
    let (status, body) = call("GET", "/nope", Some(admin()), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(body["error"].is_string());
}

#[test]
fn sandboxes_are_isolated_from_each_other() {
    let key = user_key();
    let (a, b) = (create_vm(&key, "isoa"), create_vm(&key, "isob"));
    run(
        &key,
        &a,
        "echo secret > /workspace/s; echo secret > /tmp/s; (sleep 200 &)",
    );
    let seen = run(
        &key,
        &b,
        "cat /workspace/s /tmp/s 2>&1; ps -o args | grep -c '^sleep 200' ; true",
    );
    assert!(seen["stdout"].as_str().unwrap().ends_with("0\n"), "{seen}");
    assert!(
        !seen["stdout"].as_str().unwrap().contains("secret"),
        "{seen}"
    );
}

#[test]
fn reading_a_file_in_the_sandbox_does_not_change_it() {
    let key = user_key();
    let vm = create_vm(&key, "noatime");
    // An access time older than the modification time: a `relatime` mount
    // would update it on the next read (and copy the inode into the next
    // snapshot).
    let written = run(&key, &vm, "echo x > f && touch -a -d @1000 f")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let reads_leave_it_alone = |when: &str| {
        let out = run(
            &key,
            &vm,
            "stat -c %X f; cat f >/dev/null; stat -c %X f; grep ' /workspace ' /proc/self/mountinfo",
        );
        let stdout = out["stdout"].as_str().unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines[..2], ["1000", "1000"], "{when}: {out}");
        assert!(lines[2].contains("noatime"), "{when}: {out}");
    };

    reads_leave_it_alone("first mount");

    // Restoring mounts a new workspace into the running sandbox: same rule.
    let (status, _) = call(
        "POST",
        &format!("/vms/{vm}/snapshots/{written}/restore"),
        Some(&key),
        None,
    );
    assert_eq!(status, StatusCode::OK);
    reads_leave_it_alone("after a restore");
}

#[test]
fn snapshot_after_run_holds_exactly_what_the_command_wrote() {
    let key = user_key();
    let vm = create_vm(&key, "exact");
    let out = run(
        &key,
        &vm,
        "echo a > x; mkdir d; printf b > d/y; ln -s x link; echo c > gone; rm gone",
    );
    let snap = out["snapshot"].as_str().unwrap();
    let storage = &env().state.sandboxes.storage;
    let dir = storage.snapshot_path(&vm.parse().unwrap(), &snap.parse().unwrap());
    let mut seen: Vec<String> = walk(&dir, &dir);
    seen.sort();
    assert_eq!(seen, vec!["d/", "d/y=b", "link->x", "x=a\n"]);
    let later = run(&key, &vm, "echo changed > x")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(
        std::fs::read_to_string(dir.join("x")).unwrap(),
        "a\n",
        "snapshots are read-only history"
    );
    let later_dir = storage.snapshot_path(&vm.parse().unwrap(), &later.parse().unwrap());
    assert_eq!(
        std::fs::read_to_string(later_dir.join("x")).unwrap(),
        "changed\n"
    );
}

fn walk(root: &std::path::Path, dir: &std::path::Path) -> Vec<String> {
    let mut out = vec![];
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        if meta.file_type().is_symlink() {
            out.push(format!(
                "{rel}->{}",
                std::fs::read_link(&path).unwrap().display()
            ));
        } else if meta.is_dir() {
            out.push(format!("{rel}/"));
            out.extend(walk(root, &path));
        } else {
            out.push(format!("{rel}={}", std::fs::read_to_string(&path).unwrap()));
        }
    }
    out
}

#[test]
fn fork_starts_a_new_sandbox_from_any_snapshot() {
    let key = user_key();
    let vm = create_vm(&key, "forksrc");
    let snap = run(&key, &vm, "echo v1 > f")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    run(&key, &vm, "echo v2 > f");
    let child = common::unique("forked");
    let (status, body) = call(
        "POST",
        &format!("/vms/{vm}/snapshots/{snap}/fork"),
        Some(&key),
        Some(json!({"name": child})),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(
        (
            body["name"].as_str(),
            body["forked_from"]["snapshot"].as_str()
        ),
        (Some(child.as_str()), Some(snap.as_str()))
    );
    assert_eq!(run(&key, &child, "cat f; echo fork > g")["stdout"], "v1\n");
    assert_eq!(
        run(&key, &vm, "cat f; ls g 2>&1 >/dev/null | wc -l")["stdout"],
        "v2\n1\n",
        "source unaffected"
    );
    assert_eq!(snapshot_names(&key, &child)[0], "initial");
    let other = user_key();
    let (status, _) = call(
        "POST",
        &format!("/vms/{vm}/snapshots/{snap}/fork"),
        Some(&other),
        Some(json!({"name": common::unique("x")})),
    );
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another key cannot fork what it cannot see"
    );
    let (status, _) = call(
        "POST",
        &format!("/vms/{vm}/snapshots/nope/fork"),
        Some(&key),
        Some(json!({"name": common::unique("y")})),
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = call(
        "POST",
        &format!("/vms/{vm}/snapshots/{snap}/fork"),
        Some(&key),
        Some(json!({"name": vm})),
    );
    assert_eq!(status, StatusCode::CONFLICT);
}

#[test]
fn vms_concurrent_creates_all_start() {
    let key = user_key();
    let e = env();
    let names: Vec<String> = (0..12).map(|_| common::unique("burst")).collect();
    let handles: Vec<_> = names
        .iter()
        .map(|n| {
            let (state, k, body) = (e.state.clone(), key.clone(), json!({"name": n}));
            e.rt.spawn(async move { call_app(&state, "POST", "/vms", Some(&k), Some(body)).await })
        })
        .collect();
    for h in handles {
        let (status, body) = e.rt.block_on(h).unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    for n in &names {
        assert_eq!(run(&key, n, "echo up")["stdout"], "up\n");
    }
}

#[test]
fn port_forward_reaches_a_server_inside_the_sandbox_until_removed() {
    let key = user_key();
    let vm = create_vm(&key, "fwd");
    run(
        &key,
        &vm,
        "mkdir -p /tmp/www && echo hello-from-sandbox > /tmp/www/index.html && httpd -p 127.0.0.1:8080 -h /tmp/www",
    );
    let path = format!("/vms/{vm}/port-forwards");

    let (status, fwd) = call(
        "POST",
        &path,
        Some(&key),
        Some(json!({"guest_port": 8080, "description": "web"})),
    );

    assert_eq!(status, StatusCode::CREATED, "{fwd}");
    assert_eq!(
        (fwd["guest_port"].as_u64(), fwd["protocol"].as_str()),
        (Some(8080), Some("tcp"))
    );
    assert_eq!(fwd["host_address"], "127.0.0.1");
    let host_port = fwd["host_port"].as_u64().unwrap() as u16;
    let page = common::http_get(host_port).unwrap();
    assert!(
        page.starts_with("HTTP/1.1 200 OK") && page.ends_with("hello-from-sandbox\n"),
        "{page}"
    );
    let (_, list) = call("GET", &path, Some(&key), None);
    assert_eq!(
        list["port_forwards"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert_eq!(list["port_forwards"][0]["description"], "web");
    let (status, body) = call(
        "POST",
        &path,
        Some(&key),
        Some(json!({"guest_port": 81, "host_port": host_port})),
    );
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains(&format!("host port {host_port} is in use")),
        "{body}"
    );

    let (status, body) = call("DELETE", &format!("{path}/{host_port}"), Some(&key), None);

    assert_eq!(status, StatusCode::OK, "{body}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while common::http_get(host_port).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "host port {host_port} still forwards"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let (status, _) = call("DELETE", &format!("{path}/{host_port}"), Some(&key), None);
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (_, list) = call("GET", &path, Some(&key), None);
    assert_eq!(list["port_forwards"], json!([]));
}

#[test]
fn port_forward_bad_input_is_400_naming_the_field_and_changes_nothing() {
    let key = user_key();
    let vm = create_vm(&key, "fwdbad");
    let path = format!("/vms/{vm}/port-forwards");
    let cases = [
        (json!({"guest_port": 0}), "guest_port"),
        (
            json!({"guest_port": 80, "protocol": "udp"}),
            "udp is not supported",
        ),
        (json!({"guest_port": 70000}), "guest_port"),
        (json!({"guest_port": 80, "bogus": 1}), "bogus"),
    ];
    for (body, needle) in cases {
        let (status, out) = call("POST", &path, Some(&key), Some(body.clone()));
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body} → {out}");
        assert!(
            out["error"].as_str().unwrap().contains(needle),
            "{body} → {out}"
        );
    }
    let (status, out) = call("DELETE", &format!("{path}/http"), Some(&key), None);
    assert_eq!(status, StatusCode::BAD_REQUEST, "{out}");
    let (_, list) = call("GET", &path, Some(&key), None);
    assert_eq!(list["port_forwards"], json!([]));
    let other = user_key();
    let (status, _) = call("POST", &path, Some(&other), Some(json!({"guest_port": 80})));
    assert_eq!(
        status,
        StatusCode::NOT_FOUND,
        "another key's sandbox is invisible"
    );
}

#[test]
fn port_forward_closes_with_its_sandbox() {
    let key = user_key();
    let vm = create_vm(&key, "fwddel");
    let (status, fwd) = call(
        "POST",
        &format!("/vms/{vm}/port-forwards"),
        Some(&key),
        Some(json!({"guest_port": 9})),
    );
    assert_eq!(status, StatusCode::CREATED, "{fwd}");
    let host_port = fwd["host_port"].as_u64().unwrap() as u16;

    let (status, _) = call("DELETE", &format!("/vms/{vm}"), Some(&key), None);

    assert_eq!(status, StatusCode::OK);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while std::net::TcpStream::connect(("127.0.0.1", host_port)).is_ok() {
        assert!(
            std::time::Instant::now() < deadline,
            "host port {host_port} outlived its sandbox"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn vms_create_over_storage_unknown_to_the_database_is_409_and_keeps_it() {
    let key = user_key();
    let name = common::unique("orphan");
    let sb: rewind_storage::SandboxName = name.parse().unwrap();
    let storage = &env().state.sandboxes.storage;
    storage
        .create_workspace(&sb, &rewind_storage::CreateOptions::default())
        .unwrap();

    let (status, body) = call("POST", "/vms", Some(&key), Some(json!({"name": name})));

    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("does not know"),
        "{body}"
    );
    assert!(
        storage.sandbox_exists(&sb),
        "the create's rollback deleted storage it did not make"
    );
    assert!(!vm_names(&key).contains(&name));
    storage.delete_sandbox(&sb).unwrap();
}

#[test]
fn egress_proxy_reaches_allowed_hosts_only() {
    let key = user_key();
    let vm = create_vm(&key, "egress");
    let port = common::host_http_server("from-the-host");
    let run_env = |command: String| run_with_env(&key, &vm, &command, json!({"no_proxy": ""}));

    let proxy = run_env("echo $http_proxy $HTTPS_PROXY".into());
    let plain = run_env(format!("wget -q -O- http://127.0.0.1:{port}/"));
    let tunnel = run_env(format!(
        "printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\nGET / HTTP/1.0\\r\\n\\r\\n' | nc 127.0.0.1 3128"
    ));
    let unlisted = run_env("wget -q -O- http://example.invalid/ 2>&1; echo exit=$?".into());
    let private =
        run_env("printf 'CONNECT 10.9.9.9:443 HTTP/1.1\\r\\n\\r\\n' | nc 127.0.0.1 3128".into());

    assert_eq!(
        proxy["stdout"],
        "http://127.0.0.1:3128 http://127.0.0.1:3128\n"
    );
    assert_eq!(plain["stdout"], "from-the-host", "{plain}");
    let tunnel = tunnel["stdout"].as_str().unwrap();
    assert!(
        tunnel.starts_with("HTTP/1.1 200 Connection established\r\n\r\nHTTP/1.0 200 OK"),
        "{tunnel:?}"
    );
    assert!(tunnel.ends_with("from-the-host"), "{tunnel:?}");
    let unlisted = unlisted["stdout"].as_str().unwrap();
    assert!(
        unlisted.contains("403") && !unlisted.contains("exit=0"),
        "{unlisted}"
    );
    let private = private["stdout"].as_str().unwrap();
    assert!(private.starts_with("HTTP/1.1 403 Forbidden"), "{private:?}");
    assert!(
        private.contains("egress to 10.9.9.9:443 is not allowed"),
        "{private:?}"
    );
}

#[test]
fn egress_env_yields_to_the_callers_env() {
    let key = user_key();
    let vm = create_vm(&key, "egressenv");
    let out = run_with_env(
        &key,
        &vm,
        "echo $https_proxy",
        json!({"https_proxy": "http://mine:1"}),
    );
    assert_eq!(out["stdout"], "http://mine:1\n");
}

#[test]
fn egress_plain_http_sends_one_request_with_the_uri_host_only() {
    let key = user_key();
    let vm = create_vm(&key, "egresspipe");
    let upstream = common::host_http_server_logged("one");
    let port = upstream.port;
    let two_requests = format!(
        "printf 'GET http://127.0.0.1:{port}/a HTTP/1.1\\r\\nHost: evil.example\\r\\n\\r\\nGET http://127.0.0.1:{port}/b HTTP/1.1\\r\\nHost: evil.example\\r\\n\\r\\n' | nc 127.0.0.1 3128"
    );

    let out = run(&key, &vm, &two_requests);

    assert!(out["stdout"].as_str().unwrap().ends_with("one"), "{out}");
    upstream
        .done
        .recv_timeout(std::time::Duration::from_secs(30))
        .expect("the upstream connection ends");
    let seen = upstream.seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        1,
        "exactly one request, nothing after it: {seen:?}"
    );
    assert!(
        seen[0].starts_with("GET /a HTTP/1.1\r\nHost: 127.0.0.1:"),
        "{seen:?}"
    );
    assert!(!seen[0].contains("evil"), "{seen:?}");
}
