//! Files in and out of real sandboxes, reads from snapshots on the host,
//! what a command changed (Btrfs send stream), the restore alias and open
//! key creation — through the real router, storage, runtime and agent
//! (namespace runtime, busybox root filesystem). Needs root.

mod common;

use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use common::service::Service;
use rewind::api::{app, AppState};
use rewind::db::{Db, SandboxStatus};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tower::ServiceExt;

fn svc() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| Service::start("files", common::busybox_rootfs(), |_| {}))
}

/// The service's state with a changed config (same database and storage).
fn with_config(configure: impl FnOnce(&mut rewind::config::Config)) -> AppState {
    let mut sandboxes = svc().state.sandboxes.clone();
    let mut config = (*sandboxes.config).clone();
    configure(&mut config);
    sandboxes.config = Arc::new(config);
    AppState::new(sandboxes)
}

/// Any request against `state`; status, headers and raw body bytes.
fn send(state: &AppState, req: Request<Body>) -> (StatusCode, HeaderMap, Vec<u8>) {
    svc().rt.block_on(async {
        let resp = app(state.clone()).oneshot(req).await.unwrap();
        let (parts, body) = resp.into_parts();
        let bytes = axum::body::to_bytes(body, 128 * 1024 * 1024).await.unwrap();
        (parts.status, parts.headers, bytes.to_vec())
    })
}

fn json_of(bytes: &[u8]) -> Value {
    serde_json::from_slice(bytes).unwrap_or(Value::Null)
}

fn put(key: &str, vm: &str, query: &str, data: Vec<u8>) -> (StatusCode, Value) {
    let req = Request::put(format!("/vms/{vm}/files?{query}"))
        .header("x-api-key", key)
        .header("content-length", data.len())
        .body(Body::from(data))
        .unwrap();
    let (status, _, body) = send(&svc().state, req);
    (status, json_of(&body))
}

fn get(key: &str, uri: &str) -> (StatusCode, HeaderMap, Vec<u8>) {
    let req = Request::get(uri)
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap();
    send(&svc().state, req)
}

fn get_json(key: &str, uri: &str) -> (StatusCode, Value) {
    let (status, _, body) = get(key, uri);
    (status, json_of(&body))
}

fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn vm(prefix: &str) -> (String, String) {
    let key = svc().user_key();
    let vm = svc().create_vm(&key, prefix);
    (key, vm)
}

#[test]
fn files_upload_run_reads_it_download_equals_binary_and_empty() {
    let (key, vm) = vm("fbin");
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let (status, body) = put(&key, &vm, "path=bin/data.bin&mode=0750", data.clone());
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["path"], "/workspace/bin/data.bin");
    assert_eq!(body["size_bytes"], 70_000);
    let (status, _) = put(&key, &vm, "path=/workspace/empty", Vec::new());
    assert_eq!(status, StatusCode::OK);

    let out = svc().run(
        &key,
        &vm,
        "sha256sum bin/data.bin; stat -c %a bin/data.bin; wc -c < empty",
    );
    let stdout = out["stdout"].as_str().unwrap();
    assert!(stdout.starts_with(&sha(&data)), "{stdout}");
    assert!(stdout.contains("\n750\n0\n"), "{stdout}");

    let (status, headers, got) = get(&key, &format!("/vms/{vm}/files?path=bin/data.bin"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], "70000");
    assert_eq!(sha(&got), sha(&data));
    let (status, headers, got) = get(&key, &format!("/vms/{vm}/files?path=empty"));
    assert_eq!((status, got.len()), (StatusCode::OK, 0));
    assert_eq!(headers["content-length"], "0");
}

#[test]
fn files_upload_and_download_64_mib_streamed() {
    let (key, vm) = vm("fbig");
    let data: Vec<u8> = (0..64 * 1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    let (status, body) = put(&key, &vm, "path=big.bin", data.clone());
    assert_eq!(status, StatusCode::OK, "{body}");
    let out = svc().run(&key, &vm, "sha256sum big.bin");
    assert!(out["stdout"].as_str().unwrap().starts_with(&sha(&data)));
    let (status, headers, got) = get(&key, &format!("/vms/{vm}/files?path=big.bin"));
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers["content-length"], (64 * 1024 * 1024).to_string());
    assert_eq!(sha(&got), sha(&data));
    let snap = body["snapshot"].as_str().unwrap();
    let (status, _, from_snap) = get(
        &key,
        &format!("/vms/{vm}/snapshots/{snap}/files?path=big.bin"),
    );
    assert_eq!((status, sha(&from_snap)), (StatusCode::OK, sha(&data)));
}

#[test]
fn files_multipart_upload_with_permissions() {
    let (key, vm) = vm("fmulti");
    let boundary = "XbOuNdArY";
    let mut body = Vec::new();
    for (name, value) in [("path", "/workspace/tool.sh"), ("permissions", "0755")] {
        body.extend_from_slice(
            format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                .as_bytes(),
        );
    }
    // Over 2 MiB: past the 1 MiB JSON body limit, which file routes lift.
    let script = format!("echo multipart-ok\n#{}\n", "x".repeat(2 << 20));
    body.extend_from_slice(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.sh\"\r\nContent-Type: application/octet-stream\r\n\r\n{script}\r\n--{boundary}--\r\n")
            .as_bytes(),
    );
    let req = Request::post(format!("/vms/{vm}/files"))
        .header("x-api-key", &key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(body))
        .unwrap();
    let (status, _, answer) = send(&svc().state, req);
    let answer = json_of(&answer);
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["size_bytes"], script.len());
    let out = svc().run(&key, &vm, "./tool.sh");
    assert_eq!(out["stdout"], "multipart-ok\n");
}

#[test]
fn files_list_shows_entries_recursively() {
    let (key, vm) = vm("flist");
    svc().run(
        &key,
        &vm,
        "mkdir -p d/e && printf 12345 > d/e/f && ln -s d top",
    );
    let (status, body) = get_json(&key, &format!("/vms/{vm}/files/list?recursive=true"));
    assert_eq!(status, StatusCode::OK, "{body}");
    let files = body["files"].as_array().unwrap();
    let paths: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    assert_eq!(
        paths,
        [
            "/workspace/d",
            "/workspace/d/e",
            "/workspace/d/e/f",
            "/workspace/top"
        ]
    );
    let f = &files[2];
    assert_eq!(
        (&f["name"], &f["size_bytes"], &f["is_directory"]),
        (&json!("f"), &json!(5), &json!(false))
    );
    assert!(f["permissions"].as_str().unwrap().starts_with('0'));
    assert!(f["modified_at"].as_str().unwrap().ends_with('Z'));
    let (_, flat) = get_json(&key, &format!("/vms/{vm}/files/list?path=d"));
    assert_eq!(flat["files"].as_array().unwrap().len(), 1);
}

#[test]
fn files_write_and_delete_take_snapshots_and_are_undoable() {
    let (key, vm) = vm("fundo");
    let (_, body) = put(&key, &vm, "path=note.txt", b"v1".to_vec());
    let first = body["snapshot"].as_str().unwrap().to_owned();
    assert!(first.starts_with("file_"), "{first}");
    let (status, body) = svc().call(
        "DELETE",
        &format!("/vms/{vm}/files?path=note.txt"),
        Some(&key),
        None,
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let names = svc().snapshot_names(&key, &vm);
    assert_eq!(names.len(), 3, "{names:?}");
    let (status, _) = svc().call(
        "POST",
        &format!("/vms/{vm}/restore"),
        Some(&key),
        Some(json!({"snapshot": first})),
    );
    assert_eq!(status, StatusCode::OK);
    let (status, _, got) = get(&key, &format!("/vms/{vm}/files?path=note.txt"));
    assert_eq!((status, got), (StatusCode::OK, b"v1".to_vec()));
}

#[test]
fn files_read_from_an_old_snapshot_after_the_live_one_changed() {
    let (key, vm) = vm("fsnap");
    let old = svc().run(&key, &vm, "mkdir sub && echo old > sub/a.txt")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    svc().run(&key, &vm, "echo new > sub/a.txt && echo more > sub/b.txt");
    let (status, _, got) = get(
        &key,
        &format!("/vms/{vm}/snapshots/{old}/files?path=sub/a.txt"),
    );
    assert_eq!((status, got), (StatusCode::OK, b"old\n".to_vec()));
    let (_, _, live) = get(&key, &format!("/vms/{vm}/files?path=sub/a.txt"));
    assert_eq!(live, b"new\n");
    let (status, body) = get_json(
        &key,
        &format!("/vms/{vm}/snapshots/{old}/files/list?path=sub&recursive=true"),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let names: Vec<&str> = body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.txt"]);
}

#[test]
fn files_symlink_to_host_shadow_does_not_escape() {
    let (key, vm) = vm("fesc");
    let snap = svc().run(
        &key,
        &vm,
        "ln -s /etc/shadow abs && ln -s ../../../../../../etc/shadow rel",
    )["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let host_shadow = std::fs::read("/etc/shadow").unwrap();
    for link in ["abs", "rel"] {
        let (status, _, body) = get(&key, &format!("/vms/{vm}/files?path={link}"));
        assert!(
            status != StatusCode::OK || body != host_shadow,
            "live read of {link} returned the host's /etc/shadow"
        );
        let (status, _, body) = get(
            &key,
            &format!("/vms/{vm}/snapshots/{snap}/files?path={link}"),
        );
        assert_eq!(
            status,
            StatusCode::NOT_FOUND,
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
}

#[test]
fn files_bad_input_is_refused_and_changes_nothing() {
    let (key, vm) = vm("fbad");
    svc().run(&key, &vm, "mkdir adir");
    let before = svc().snapshot_names(&key, &vm);
    let long = "a".repeat(5000);
    let cases = [
        ("path=a%00b", StatusCode::BAD_REQUEST, "path"),
        (
            "path=/workspace/../../etc/passwd",
            StatusCode::BAD_REQUEST,
            "path",
        ),
        (&*format!("path={long}"), StatusCode::BAD_REQUEST, "path"),
        ("path=adir", StatusCode::BAD_REQUEST, "path"),
        ("path=x&mode=999", StatusCode::BAD_REQUEST, "mode"),
    ];
    for (query, want, field) in cases {
        let (status, body) = put(&key, &vm, query, b"data".to_vec());
        assert_eq!(status, want, "{query}: {body}");
        assert!(body["error"].as_str().unwrap().starts_with(field), "{body}");
    }
    let (status, _) = get_json(&key, &format!("/vms/{vm}/files?path=adir"));
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = get_json(&key, &format!("/vms/{vm}/files?path=nope"));
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(&key, &format!("/vms/{vm}/snapshots/nosuch/files?path=a"));
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = get_json(
        &key,
        &format!("/vms/{vm}/snapshots/initial/diff?from=nosuch"),
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let other = svc().user_key();
    let (status, _) = get_json(&other, &format!("/vms/{vm}/files/list"));
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(svc().snapshot_names(&key, &vm), before);
}

#[test]
fn files_oversized_upload_is_413_with_nothing_written() {
    let (key, vm) = vm("f413");
    let small = with_config(|c| c.files.max_upload_bytes = 1024);
    let before = svc().snapshot_names(&key, &vm);
    let declared = Request::put(format!("/vms/{vm}/files?path=new/dir/big"))
        .header("x-api-key", &key)
        .header("content-length", 2048)
        .body(Body::from(vec![1u8; 2048]))
        .unwrap();
    let (status, _, body) = send(&small, declared);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", json_of(&body));
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..3).map(|_| Ok(vec![1u8; 1000])).collect();
    let streamed = Request::put(format!("/vms/{vm}/files?path=new/dir/big"))
        .header("x-api-key", &key)
        .body(Body::from_stream(futures_util::stream::iter(chunks)))
        .unwrap();
    let (status, _, body) = send(&small, streamed);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", json_of(&body));
    assert_eq!(svc().snapshot_names(&key, &vm), before);
    let out = svc().run(&key, &vm, "ls -A /workspace | wc -l");
    assert_eq!(out["stdout"], "0\n");
}

#[test]
fn diff_lists_exactly_the_files_a_command_touched() {
    let (key, vm) = vm("fdiff");
    svc().run(
        &key,
        &vm,
        "mkdir -p keep d && echo a > keep/a && echo b > b && echo same > keep/same && touch d/x",
    );
    let (status, body) = svc().call(
        "POST",
        &format!("/vms/{vm}/run"),
        Some(&key),
        Some(json!({
            "command": "echo more >> keep/a; rm b; mkdir -p n/m; echo z > n/m/z; rm -r d; echo new > t && mv t keep/same",
            "changes": true
        })),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    let changes = &body["changes"];
    assert_eq!(
        (&changes["added"], &changes["modified"], &changes["deleted"]),
        (&json!(3), &json!(2), &json!(3)),
        "{changes}"
    );
    let snap = body["snapshot"].as_str().unwrap();
    let (status, diff) = get_json(
        &key,
        &format!("/vms/{vm}/snapshots/{snap}/diff?content=true"),
    );
    assert_eq!(status, StatusCode::OK, "{diff}");
    let listed: Vec<(String, String)> = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["path"].as_str().unwrap().to_owned(),
                c["change"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let want = [
        ("/workspace/b", "deleted"),
        ("/workspace/d", "deleted"),
        ("/workspace/d/x", "deleted"),
        ("/workspace/keep/a", "modified"),
        ("/workspace/keep/same", "modified"),
        ("/workspace/n", "added"),
        ("/workspace/n/m", "added"),
        ("/workspace/n/m/z", "added"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(p, c)| (p.to_string(), c.to_string()))
        .collect();
    assert_eq!(listed, want);
    let a = diff["changes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["path"] == "/workspace/keep/a")
        .unwrap();
    assert_eq!(
        (&a["size_before"], &a["size_after"]),
        (&json!(2), &json!(7))
    );
    assert!(a["diff"].as_str().unwrap().contains("+more"), "{a}");

    let (status, _) = svc().call(
        "POST",
        &format!("/vms/{vm}/restore"),
        Some(&key),
        Some(json!({"snapshot": diff["from"]})),
    );
    assert_eq!(status, StatusCode::OK);
    let (_, after_restore) = svc().call(
        "POST",
        &format!("/vms/{vm}/run"),
        Some(&key),
        Some(json!({"command": "echo q > q", "changes": true})),
    );
    let changes = &after_restore["changes"];
    assert_eq!(
        (&changes["added"], &changes["modified"], &changes["deleted"]),
        (&json!(1), &json!(0), &json!(0)),
        "changes are measured from the restored snapshot: {changes}"
    );
    assert_eq!(changes["paths"][0]["path"], "/workspace/q");
}

#[test]
fn restore_alias_matches_the_snapshot_route() {
    let (key, vm) = vm("falias");
    svc().run(&key, &vm, "echo x > f");
    let (status, body) = svc().call(
        "POST",
        &format!("/vms/{vm}/restore"),
        Some(&key),
        Some(json!({"snapshot": "initial"})),
    );
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["message"], "Restored to snapshot \"initial\"");
    assert_eq!(svc().run(&key, &vm, "ls")["stdout"], "");
    let (status, _) = svc().call(
        "POST",
        &format!("/vms/{vm}/restore"),
        Some(&key),
        Some(json!({"snapshot": "nosuch"})),
    );
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, body) = svc().call(
        "POST",
        &format!("/vms/{vm}/restore"),
        Some(&key),
        Some(json!({})),
    );
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

#[test]
fn open_key_creation_off_by_default_and_plain_keys_when_on() {
    let keyless = || {
        Request::post("/api-keys")
            .header("content-type", "application/json")
            .body(Body::from(r#"{"name":"anon"}"#))
            .unwrap()
    };
    let (status, _, _) = send(&svc().state, keyless());
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let open = with_config(|c| c.auth.open_key_creation = true);
    let (status, _, body) = send(&open, keyless());
    let body = json_of(&body);
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["admin"], false);
    let admin = Request::post("/api-keys")
        .header("content-type", "application/json")
        .body(Body::from(r#"{"admin":true}"#))
        .unwrap();
    let (status, _, _) = send(&open, admin);
    assert_eq!(status, StatusCode::FORBIDDEN);
}

/// Set a sandbox's recorded status (as the service does when its runtime dies).
fn set_status(vm: &str, status: SandboxStatus) {
    let db = svc().state.sandboxes.db.clone();
    let vm = vm.to_owned();
    svc()
        .rt
        .block_on(db.call(move |c| {
            let row = Db::sandbox_by_name(c, &vm)?.expect("sandbox row");
            Db::set_sandbox_status(c, row.id, status, Some("marked failed by the test"))
        }))
        .unwrap();
}

#[test]
fn files_of_a_failed_sandbox_are_409_but_its_snapshots_stay_readable() {
    let (key, vm) = vm("ffail");
    let snap = svc().run(&key, &vm, "echo kept > k")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    set_status(&vm, SandboxStatus::Failed);
    let (status, body) = put(&key, &vm, "path=x", b"x".to_vec());
    let (live, _) = get_json(&key, &format!("/vms/{vm}/files?path=k"));
    let (old, _, bytes) = get(&key, &format!("/vms/{vm}/snapshots/{snap}/files?path=k"));
    set_status(&vm, SandboxStatus::Running);
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(live, StatusCode::CONFLICT);
    assert_eq!((old, bytes), (StatusCode::OK, b"kept\n".to_vec()));
}
