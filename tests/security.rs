//! Security scans (`POST /api/v1/security/scan`, `GET .../scans/{id}`) on a
//! deliberately weak service and on a strong one, each a real service
//! (real storage, namespace runtime, agent, SQLite) driven through the
//! router. Needs root.

mod common;

use std::collections::BTreeSet;
use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::service::Service;

/// Bound to every address without TLS, rate limits off, egress open.
fn weak() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("security-weak", common::busybox_rootfs(), |config| {
            config.bind = "0.0.0.0".into();
            config.network.egress_allow = vec!["127.0.0.1:9".into()];
        })
    })
}

/// Loopback only, rate limits on (budgets no test reaches), no egress.
fn strong() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("security-strong", common::busybox_rootfs(), |config| {
            config.rate_limit.enabled = true;
            config.rate_limit.per_hour = 1_000_000;
            config.rate_limit.burst = 100_000;
            config.rate_limit.per_ip_per_minute = 100_000;
        })
    })
}

/// Start a scan and wait for its result.
fn scan(s: &Service, body: Value) -> Value {
    let (status, started) = s.call("POST", "/api/v1/security/scan", Some(&s.admin), Some(body));
    assert_eq!(status, StatusCode::ACCEPTED, "{started}");
    assert_eq!(started["status"], "started");
    let id = started["scan_id"].as_str().unwrap();
    let path = format!("/api/v1/security/scans/{id}?wait_seconds=60");
    let (status, done) = s.call("GET", &path, Some(&s.admin), None);
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["status"], "completed", "{done}");
    done
}

fn findings(done: &Value) -> Vec<Value> {
    done["results"]["findings"].as_array().unwrap().clone()
}

/// `(check, affected_resource)` of the configuration findings of at least
/// medium severity.
fn serious(done: &Value) -> BTreeSet<(String, String)> {
    findings(done)
        .iter()
        .filter(|f| f["category"] == "configuration" && f["severity"] != "low")
        .map(|f| {
            let text = |k: &str| f[k].as_str().unwrap().to_owned();
            (text("check"), text("affected_resource"))
        })
        .collect()
}

#[test]
fn configuration_scan_finds_exactly_the_weaknesses_of_a_weak_service() {
    let s = weak();
    let user = s.user_key();
    let vm = s.create_vm(&user, "weak");
    let (status, body) = s.call(
        "POST",
        "/api-keys",
        Some(&s.admin),
        Some(json!({"name": "second admin", "admin": true})),
    );
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let done = scan(s, json!({"scan_type": "configuration", "target": "all"}));

    let port = s.state.sandboxes.config.port;
    let expected: BTreeSet<(String, String)> = [
        ("api_plain_http", format!("0.0.0.0:{port}")),
        ("admin_keys", "api_keys".into()),
        ("sandbox_egress", vm.clone()),
        ("limit_unset", "rate_limit.enabled".into()),
    ]
    .into_iter()
    .map(|(c, r)| (c.to_owned(), r))
    .collect();
    assert_eq!(serious(&done), expected, "{done:#}");
    let egress = findings(&done)
        .into_iter()
        .find(|f| f["check"] == "sandbox_egress")
        .unwrap();
    assert!(egress["description"]
        .as_str()
        .unwrap()
        .contains("127.0.0.1:9"));
    let results = &done["results"];
    let score = results["risk_score"].as_u64().unwrap();
    assert!(score >= 25 + 3 * 10, "{results}");
    assert_eq!(
        results["failed"].as_u64().unwrap(),
        expected.len() as u64,
        "{results}"
    );
}

#[test]
fn configuration_scan_of_a_strong_service_finds_no_serious_weakness() {
    let s = strong();
    let user = s.user_key();
    s.create_vm(&user, "strong");

    let done = scan(s, json!({"scan_type": "configuration"}));

    assert_eq!(serious(&done), BTreeSet::new(), "{done:#}");
    let results = &done["results"];
    // Left: the admin key cannot expire (rewind has no key expiry), low.
    let lows = findings(&done).len() as u64;
    assert!(findings(&done).iter().all(|f| f["severity"] == "low"));
    assert_eq!(results["risk_score"].as_u64(), Some(2 * lows), "{results}");
    assert!(results["total_checks"].as_u64().unwrap() > results["warnings"].as_u64().unwrap());
}

#[test]
fn scan_reads_seccomp_and_no_new_privs_of_a_running_command() {
    let s = strong();
    let user = s.user_key();
    let vm = s.create_vm(&user, "strongrun");
    let req = Request::post(format!("/vms/{vm}/run"))
        .header("x-api-key", &user)
        .header("content-type", "application/json")
        .header("accept", "text/event-stream")
        .body(Body::from(
            json!({"command": "echo up; sleep 60"}).to_string(),
        ))
        .unwrap();
    let resp =
        s.rt.block_on(rewind::api::app(s.state.clone()).oneshot(req))
            .unwrap();
    let mut body = resp.into_body();
    let mut seen = String::new();
    while !seen.contains("up") {
        let frame = s.rt.block_on(body.frame()).expect("stream ended").unwrap();
        if let Some(data) = frame.data_ref() {
            seen.push_str(&String::from_utf8_lossy(data));
        }
    }

    let done = scan(s, json!({"scan_type": "configuration", "target": vm}));
    drop(body);

    let results = &done["results"];
    assert_eq!(findings(&done), Vec::<Value>::new(), "{done:#}");
    let notes = results["notes"].to_string();
    assert!(!notes.contains("could not be observed"), "{notes}");
    // userns, egress, and seccomp + no_new_privs of the command's process
    // (busybox `sh -c` execs its last command: one process, `sleep`).
    assert!(results["total_checks"].as_u64().unwrap() >= 4, "{results}");
}

#[test]
fn vulnerability_and_compliance_scans_say_what_they_cannot_do() {
    let s = strong();

    let vulnerability = scan(s, json!({"scan_type": "vulnerability"}));
    let compliance = scan(
        s,
        json!({"scan_type": "compliance", "frameworks": ["SOC2", "HIPAA"]}),
    );

    let notes = vulnerability["results"]["notes"].to_string();
    assert!(notes.contains("no vulnerability database"), "{notes}");
    assert!(findings(&vulnerability)
        .iter()
        .all(|f| f["category"] == "image"));
    let notes = compliance["results"]["notes"].to_string();
    assert!(notes.contains("SOC2: not evaluated"), "{notes}");
    assert!(notes.contains("HIPAA: not evaluated"), "{notes}");
}

#[test]
fn scan_requests_are_validated_and_admin_only() {
    let s = strong();
    let user = s.user_key();
    let post =
        |key: &str, body: Value| s.call("POST", "/api/v1/security/scan", Some(key), Some(body));

    let (st, body) = post(&user, json!({"scan_type": "configuration"}));
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    let (st, body) = post(&s.admin, json!({"scan_type": "bogus"}));
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (st, body) = post(
        &s.admin,
        json!({"scan_type": "configuration", "target": "no-such-vm"}),
    );
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    let (st, body) = s.call(
        "GET",
        "/api/v1/security/scans/scan_nope",
        Some(&s.admin),
        None,
    );
    assert_eq!(st, StatusCode::NOT_FOUND, "{body}");
    let (st, body) = s.call(
        "GET",
        "/api/v1/security/scans/scan_nope?wait_seconds=61",
        Some(&s.admin),
        None,
    );
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
}
