//! Per-owner rate limits through the router, on a service configured with a
//! tiny budget (burst 3, 1 request an hour). Needs root (real storage).

mod common;

use std::sync::OnceLock;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;

use common::service::Service;

const BURST: u32 = 3;

fn env() -> &'static Service {
    static ENV: OnceLock<Service> = OnceLock::new();
    ENV.get_or_init(|| {
        Service::start("ratelimit", common::busybox_rootfs(), |config| {
            config.rate_limit.enabled = true;
            config.rate_limit.burst = BURST;
            config.rate_limit.per_hour = 1;
        })
    })
}

/// `GET /vms` with `key`: status and the rate-limit headers.
fn list(key: &str) -> (StatusCode, [Option<u64>; 4]) {
    let s = env();
    let req = Request::get("/vms")
        .header("x-api-key", key)
        .body(Body::empty())
        .unwrap();
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
    (resp.status(), headers)
}

#[test]
fn rate_limit_answers_429_after_the_burst_with_headers() {
    let key = env().user_key();
    let other = env().user_key();

    let answers: Vec<_> = (0..=BURST).map(|_| list(&key)).collect();
    let (other_status, _) = list(&other);

    let statuses: Vec<StatusCode> = answers.iter().map(|a| a.0).collect();
    let remaining: Vec<Option<u64>> = answers.iter().map(|a| a.1[1]).collect();
    assert_eq!(
        statuses,
        [
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::OK,
            StatusCode::TOO_MANY_REQUESTS
        ]
    );
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
