//! The request limits from the libraries, on the real service (loop-mounted
//! Btrfs, namespace runtime, agent, SQLite), with `server.max_body_bytes`
//! set to 4 KiB: a JSON body over it is a 413 in our error shape naming the
//! key (native and `/api/v1`), counted in the request metrics, and nothing
//! is created; file uploads keep
//! their own cap (`files.max_upload_bytes`), so a larger upload lands. The
//! 408 of a bounded route past `server.request_timeout_secs` is proven
//! without root in `tests/handlers.rs` (an agent that never answers).
//! Needs root.

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use serde_json::json;

use common::service::Service;

const MAX_BODY: usize = 4096;

fn svc() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("middleware", common::busybox_rootfs(), |config| {
            config.server.max_body_bytes = MAX_BODY;
        })
    })
}

/// A `POST /vms` body of about twice the limit.
fn oversized_create(name: &str) -> serde_json::Value {
    json!({"name": name, "pad": "x".repeat(2 * MAX_BODY)})
}

#[test]
fn json_body_over_max_body_bytes_is_413_naming_the_key_and_creates_nothing() {
    let key = svc().user_key();
    let (native, v1) = (common::unique("big"), common::unique("bigv1"));

    let (status, body) = svc().call("POST", "/vms", Some(&key), Some(oversized_create(&native)));
    let (v1_status, v1_body) = svc().call(
        "POST",
        "/api/v1/vms",
        Some(&key),
        Some(oversized_create(&v1)),
    );

    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(
        body["error"],
        "request body over server.max_body_bytes (4096 bytes)"
    );
    assert_eq!(v1_status, StatusCode::PAYLOAD_TOO_LARGE, "{v1_body}");
    assert_eq!(
        (&v1_body["error"], &v1_body["message"]),
        (
            &json!("payload_too_large"),
            &json!("request body over server.max_body_bytes (4096 bytes)")
        )
    );
    assert_eq!(svc().vm_names(&key), Vec::<String>::new());
    let (_, metrics) = svc().get_bytes(&svc().admin, "/metrics");
    let counted = r#"rewind_http_requests_total{method="POST",route="/vms",status="413"}"#;
    assert!(
        String::from_utf8_lossy(&metrics).contains(counted),
        "no {counted} in /metrics"
    );
}

#[test]
fn uploads_over_max_body_bytes_keep_their_own_cap_and_land() {
    let key = svc().user_key();
    let vm = svc().create_vm(&key, "upload");
    let data: Vec<u8> = (0..4 * MAX_BODY as u32).map(|i| (i % 251) as u8).collect();
    let native = Request::put(format!("/vms/{vm}/files?path=native.bin"))
        .header("x-api-key", &key)
        .body(Body::from(data.clone()))
        .unwrap();
    let boundary = "middleware-boundary";
    let mut form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"path\"\r\n\r\n\
         /workspace/v1.bin\r\n--{boundary}\r\nContent-Disposition: form-data; \
         name=\"file\"; filename=\"v1.bin\"\r\n\r\n"
    )
    .into_bytes();
    form.extend_from_slice(&data);
    form.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let v1 = Request::post(format!("/api/v1/vms/{vm}/files/upload"))
        .header("x-api-key", &key)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Body::from(form))
        .unwrap();

    let (native_status, native_body) = svc().raw(native);
    let (v1_status, v1_body) = svc().raw(v1);

    assert_eq!(native_status, StatusCode::OK, "{native_body}");
    assert_eq!(v1_status, StatusCode::OK, "{v1_body}");
    assert_eq!(v1_body["size_bytes"], json!(data.len()), "{v1_body}");
    let workspace = svc().workspace(&vm);
    assert_eq!(std::fs::read(workspace.join("native.bin")).unwrap(), data);
    assert_eq!(std::fs::read(workspace.join("v1.bin")).unwrap(), data);
    svc().call("DELETE", &format!("/vms/{vm}"), Some(&key), None);
}
