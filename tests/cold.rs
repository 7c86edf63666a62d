//! Cold history and incremental archives through the real service
//! (namespace runtime, busybox rootfs, loop-mounted Btrfs pool): with
//! `storage.cold_history` on, thinned snapshots stay listed with
//! `tier: "cold"` and restore (the response says `tier: "cold"`);
//! `GET .../export?parent=` makes an incremental archive that imports where
//! the parent exists and is a 400 naming the missing parent elsewhere; an
//! import body over `storage.max_import_mb` is a 413 naming the limit and
//! leaves nothing. Needs root.

mod common;

use std::sync::{Mutex, OnceLock};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use common::service::Service;
use serde_json::{json, Value};

/// Imports one at a time: the tests check that no staging dir is left.
static SERIAL: Mutex<()> = Mutex::new(());

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("cold", common::busybox_rootfs(), |config| {
            config.storage.keep_recent_snapshots = 1;
            config.storage.cold_history = true;
            config.storage.max_import_mb = 1;
        })
    })
}

/// `(snapshot_name, tier, retained_because)` of every listed snapshot.
fn listing(key: &str, vm: &str) -> Vec<(String, Value, Value)> {
    env()
        .snapshots(key, vm)
        .iter()
        .map(|s| {
            let name = s["snapshot_name"].as_str().unwrap().to_owned();
            (name, s["tier"].clone(), s["retained_because"].clone())
        })
        .collect()
}

#[test]
fn cold_snapshots_stay_listed_and_restore_saying_cold() {
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "cold");
    let cmds = svc.append_runs(&key, &vm, 6);

    let listed = listing(&key, &vm);

    let names: Vec<String> = listed.iter().map(|(n, _, _)| n.clone()).collect();
    let mut expected = vec!["initial".to_owned()];
    expected.extend(cmds.iter().cloned());
    assert_eq!(names, expected, "the list stays complete");
    let cold: Vec<&(String, Value, Value)> = listed
        .iter()
        .filter(|(_, t, _)| *t == json!("cold"))
        .collect();
    assert!(cold.len() >= 3, "{listed:?}");
    assert!(cold.iter().all(|(_, _, why)| *why == json!("cold")));
    let (name, _, _) = cold[0];
    let i = cmds.iter().position(|c| c == name).unwrap() + 1;
    let path = format!("/vms/{vm}/snapshots/{name}/restore");
    let (status, body) = svc.call("POST", &path, Some(&key), None);
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["tier"], json!("cold"));
    let want: String = (1..=i).map(|n| format!("{n}\n")).collect();
    assert_eq!(svc.run(&key, &vm, "cat log")["stdout"], json!(want));
    let path = format!("/vms/{vm}/snapshots/initial/restore");
    let (_, body) = svc.call("POST", &path, Some(&key), None);
    assert_eq!(body["tier"], json!("hot"));
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}

fn export(key: &str, uri: &str) -> (StatusCode, Vec<u8>) {
    env().get_bytes(key, uri)
}

fn import(key: &str, name: &str, archive: Vec<u8>) -> (StatusCode, Value) {
    env().import(key, name, archive)
}

fn staging_dirs() -> Vec<String> {
    env().import_staging_dirs()
}

#[test]
fn incremental_export_imports_where_the_parent_exists_and_names_it_where_not() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "incr");
    let base = r#"{"name": "base"}"#;
    svc.run(&key, &vm, "mkdir d && echo one > d/f && ln -s d/f link");
    let (status, body) = svc.call(
        "POST",
        &format!("/vms/{vm}/snapshots"),
        Some(&key),
        Some(serde_json::from_str(base).unwrap()),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let snap = svc.run(&key, &vm, "echo two >> d/f && chmod 600 d/f")["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let uri = format!("/vms/{vm}/snapshots/{snap}/export?parent=base");
    let (status, incremental) = export(&key, &uri);
    assert_eq!(status, StatusCode::OK);
    let (_, full) = export(&key, &format!("/vms/{vm}/snapshots/{snap}/export"));
    let (unknown, _) = export(
        &key,
        &format!("/vms/{vm}/snapshots/{snap}/export?parent=nope"),
    );
    let copy = common::unique("incr-imp");

    let (created, body) = import(&key, &copy, incremental.clone());

    assert!(
        incremental.len() < full.len(),
        "{} vs {}",
        incremental.len(),
        full.len()
    );
    assert_eq!(unknown, StatusCode::NOT_FOUND);
    assert_eq!(created, StatusCode::CREATED, "{body}");
    let out = svc.run(&key, &copy, "cat link; stat -c %a d/f");
    assert_eq!(out["stdout"], json!("one\ntwo\n600\n"));
    // Without the parent on this host the import is refused, naming it.
    let path = format!("/vms/{vm}/snapshots/base");
    let (deleted, _) = svc.call("DELETE", &path, Some(&key), None);
    assert_eq!(deleted, StatusCode::NO_CONTENT);
    let orphan = common::unique("incr-orphan");
    let (refused, body) = import(&key, &orphan, incremental);
    assert_eq!(refused, StatusCode::BAD_REQUEST, "{body}");
    let named = format!("parent snapshot {vm}/base");
    assert!(body.to_string().contains(&named), "{body}");
    let (gone, _) = svc.call("GET", &format!("/vms/{orphan}"), Some(&key), None);
    assert_eq!(gone, StatusCode::NOT_FOUND);
    assert_eq!(staging_dirs(), Vec::<String>::new());
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
    svc.call("DELETE", &format!("/vms/{copy}"), Some(&key), None);
}

#[test]
fn import_over_the_size_cap_is_413_naming_the_limit_and_leaves_nothing() {
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let svc = env();
    let key = svc.user_key();
    let vm = svc.create_vm(&key, "cap");
    let snap = svc.run(
        &key,
        &vm,
        "dd if=/dev/urandom of=big bs=64k count=40 2>/dev/null",
    )["snapshot"]
        .as_str()
        .unwrap()
        .to_owned();
    let (status, archive) = export(&key, &format!("/vms/{vm}/snapshots/{snap}/export"));
    assert_eq!(status, StatusCode::OK);
    assert!(archive.len() > 1 << 20, "{}", archive.len());
    let copy = common::unique("cap-imp");

    let req = Request::builder()
        .method("POST")
        .uri(format!("/vms/import?name={copy}"))
        .header("x-api-key", &key)
        .header("content-length", archive.len())
        .body(Body::from(archive.clone()))
        .unwrap();
    let (declared, body) = svc.raw(req);
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        archive.chunks(256 << 10).map(|c| Ok(c.to_vec())).collect();
    let streamed = Body::from_stream(futures_util::stream::iter(chunks));
    let req = Request::builder()
        .method("POST")
        .uri(format!("/vms/import?name={copy}"))
        .header("x-api-key", &key)
        .body(streamed)
        .unwrap();
    let (undeclared, undeclared_body) = svc.raw(req);

    assert_eq!(declared, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        body.to_string().contains("storage.max_import_mb (1 MiB)"),
        "{body}"
    );
    assert_eq!(
        undeclared,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{undeclared_body}"
    );
    let (gone, _) = svc.call("GET", &format!("/vms/{copy}"), Some(&key), None);
    assert_eq!(gone, StatusCode::NOT_FOUND);
    assert_eq!(staging_dirs(), Vec::<String>::new());
    svc.call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}
