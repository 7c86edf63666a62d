//! Per-owner rate limits through the router, on a service configured with a
//! tiny budget (burst 3, 1 request an hour). Needs root (real storage).

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tower::ServiceExt;

use common::service::Service;

const BURST: u32 = 3;
const PER_IP: u32 = 3;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("ratelimit", common::busybox_rootfs(), |config| {
            config.rate_limit.enabled = true;
            config.rate_limit.burst = BURST;
            config.rate_limit.per_hour = 1;
            config.rate_limit.per_ip_per_minute = PER_IP;
        })
    })
}

/// `GET /vms` with `key`: status and the rate-limit headers.
fn list(key: &str) -> (StatusCode, [Option<u64>; 4]) {
    let (status, headers, _) = get("/vms", Some(key));
    (status, headers)
}

/// `GET path` (with `key` as `x-api-key`): status, the rate-limit headers
/// (limit, remaining, reset, retry-after) and the JSON body.
fn get(path: &str, key: Option<&str>) -> (StatusCode, [Option<u64>; 4], Value) {
    let s = env();
    let mut req = Request::get(path);
    if let Some(k) = key {
        req = req.header("x-api-key", k);
    }
    let req = req.body(Body::empty()).unwrap();
    let resp =
        s.rt.block_on(rewind::api::app(s.state.clone()).oneshot(req))
            .unwrap();
    let header = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    let headers = [
        header("x-ratelimit-limit"),
        header("x-ratelimit-remaining"),
        header("x-ratelimit-reset"),
        header("retry-after"),
    ];
    let status = resp.status();
    let body =
        s.rt.block_on(resp.into_body().collect())
            .unwrap()
            .to_bytes();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

/// The burst's requests were answered 200, the one after it 429.
fn assert_burst_then_429(statuses: impl Iterator<Item = StatusCode>) {
    let statuses: Vec<StatusCode> = statuses.collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
}

#[test]
fn rate_limit_answers_429_after_the_burst_with_headers() {
    let key = env().user_key();
    let other = env().user_key();

    let answers: Vec<_> = (0..=BURST).map(|_| list(&key)).collect();
    let (other_status, _) = list(&other);

    let remaining: Vec<Option<u64>> = answers.iter().map(|a| a.1[1]).collect();
    assert_burst_then_429(answers.iter().map(|a| a.0));
    assert_eq!(remaining, [Some(2), Some(1), Some(0), Some(0)]);
    let [limit, _, reset, retry_after] = answers[BURST as usize].1;
    assert_eq!(limit, Some(1));
    assert!(reset.is_some(), "no X-RateLimit-Reset on the 429");
    assert!(
        retry_after.is_some_and(|s| s > 0 && s <= 3600),
        "{retry_after:?}"
    );
    assert_eq!(
        other_status,
        StatusCode::OK,
        "another owner has its own budget"
    );
}

#[test]
fn v1_rate_limit_answers_429_with_the_reference_body() {
    let key = env().user_key();

    let answers: Vec<_> = (0..=BURST)
        .map(|_| get("/api/v1/status", Some(&key)))
        .collect();

    assert_burst_then_429(answers.iter().map(|a| a.0));
    assert_eq!(
        answers[0].1[1],
        Some(u64::from(BURST) - 1),
        "X-RateLimit-Remaining"
    );
    let (_, [limit, remaining, reset, retry_after], body) = &answers[BURST as usize];
    assert_eq!((*limit, *remaining), (Some(1), Some(0)));
    assert!(reset.is_some(), "no X-RateLimit-Reset on the 429");
    assert_eq!(body["error"], "rate_limit_exceeded", "{body}");
    assert!(body["message"].is_string(), "{body}");
    assert_eq!(body["retry_after_seconds"].as_u64(), *retry_after, "{body}");
    assert!(retry_after.is_some_and(|s| s > 0), "{retry_after:?}");
}

#[test]
fn routes_without_credentials_are_limited_per_address() {
    let mut health = Vec::new();
    // The service's own bootstrap key request already spent one.
    for _ in 0..=PER_IP {
        let (status, headers, _) = get("/health", None);
        health.push(status);
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert!(headers[3].is_some_and(|s| s > 0), "no Retry-After");
            break;
        }
    }
    let (v1_status, _, v1_body) = get("/api/v1/health", None);
    let s = env();
    let login = Request::post("/api/v1/auth/login")
        .header("content-type", "application/json")
        .body(Body::from(
            json!({"username": "nobody", "password": "whatever-1"}).to_string(),
        ))
        .unwrap();
    let (login_status, _) = s.raw(login);

    assert_eq!(
        health.last(),
        Some(&StatusCode::TOO_MANY_REQUESTS),
        "{health:?}"
    );
    assert!(health.len() as u32 <= PER_IP, "{health:?}");
    assert_eq!(v1_status, StatusCode::TOO_MANY_REQUESTS, "{v1_body}");
    assert_eq!(v1_body["error"], "rate_limit_exceeded", "{v1_body}");
    assert!(
        v1_body["retry_after_seconds"].as_u64().is_some(),
        "{v1_body}"
    );
    assert_eq!(login_status, StatusCode::TOO_MANY_REQUESTS);
    // A request with a key is not counted against the address.
    s.user_key();
}
