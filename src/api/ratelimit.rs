//! Rate limits (`governor`, GCRA limiters):
//! - per owner (key or user id), on every authenticated route of both APIs:
//!   `rate_limit.per_hour` requests an hour, at most `rate_limit.burst` at
//!   once. Every authenticated answer carries `X-RateLimit-Limit` (the
//!   hourly rate), `X-RateLimit-Remaining` (requests allowed right now) and
//!   `X-RateLimit-Reset` (unix time when the burst is whole again); over
//!   the limit the answer is 429 with `Retry-After` (seconds) and, under
//!   `/api/v1`, the reference body `{"error": "rate_limit_exceeded",
//!   "message", "retry_after_seconds"}`.
//! - per source IP, on the routes that need no credentials (`/health`,
//!   `/api/v1/health`, login, register, `POST /api-keys` without a key):
//!   `rate_limit.per_ip_per_minute`. Without a socket address (the router
//!   driven in-process) every request counts as `0.0.0.0`.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::v1::error::V1Error;
use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::config::RateLimitConfig;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock, StateInformationMiddleware>;

/// The limiters; `None` when that kind of limit is off.
#[derive(Clone)]
pub struct Limits {
    limiter: Option<Arc<Keyed<i64>>>,
    per_hour: u32,
    per_ip: Option<Arc<Keyed<IpAddr>>>,
    per_ip_per_minute: u32,
}

impl Limits {
    pub fn new(config: &RateLimitConfig) -> Limits {
        let quota = NonZeroU32::new(config.per_hour)
            .zip(NonZeroU32::new(config.burst))
            .map(|(rate, burst)| Quota::per_hour(rate).allow_burst(burst));
        let per_ip = NonZeroU32::new(config.per_ip_per_minute).map(Quota::per_minute);
        Limits {
            limiter: quota.filter(|_| config.enabled).map(keyed),
            per_hour: config.per_hour,
            per_ip: per_ip.filter(|_| config.enabled).map(keyed),
            per_ip_per_minute: config.per_ip_per_minute,
        }
    }
}

fn keyed<K: std::hash::Hash + Eq + Clone>(quota: Quota) -> Arc<Keyed<K>> {
    Arc::new(RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>())
}

/// Allowed now (remaining burst, time until the burst is whole), or how
/// long to wait.
type Verdict = Result<(u32, Duration), Duration>;

fn check<K: std::hash::Hash + Eq + Clone>(limiter: &Keyed<K>, key: &K) -> Verdict {
    match limiter.check_key(key) {
        Ok(snapshot) => {
            let interval = snapshot.quota().replenish_interval();
            let burst = snapshot.quota().burst_size().get();
            let remaining = snapshot.remaining_burst_capacity();
            Ok((remaining, interval * (burst - remaining)))
        }
        Err(not_until) => Err(not_until.wait_time_from(DefaultClock::default().now())),
    }
}

/// Middleware for native routes (inside `require_key`, so the caller is
/// known).
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    limit_owner(state, req, next, |retry_after| {
        ApiError::TooManyRequests(format!("rate limit exceeded: retry after {retry_after} s"))
            .into_response()
    })
    .await
}

/// Middleware for `/api/v1` routes: the same limit, the reference's body.
pub async fn limit_v1(State(state): State<AppState>, req: Request, next: Next) -> Response {
    limit_owner(state, req, next, |retry_after_seconds| {
        V1Error::RateLimited {
            retry_after_seconds,
        }
        .into_response()
    })
    .await
}

async fn limit_owner(
    state: AppState,
    req: Request,
    next: Next,
    refuse: impl FnOnce(u64) -> Response,
) -> Response {
    let (Some(limiter), Some(caller)) = (
        state.limits.limiter.clone(),
        req.extensions().get::<Caller>().copied(),
    ) else {
        return next.run(req).await;
    };
    answer(
        check(&limiter, &caller.key_id),
        state.limits.per_hour,
        req,
        next,
        refuse,
    )
    .await
}

/// Per-IP middleware for native routes without credentials. `POST
/// /api-keys` with a key is an authenticated request and is not counted.
pub async fn limit_ip(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if req.headers().contains_key("x-api-key") {
        return next.run(req).await;
    }
    limit_by_ip(state, req, next, |retry_after| {
        ApiError::TooManyRequests(format!(
            "too many requests from this address: retry after {retry_after} s"
        ))
        .into_response()
    })
    .await
}

/// Per-IP middleware for `/api/v1` routes without credentials.
pub async fn limit_ip_v1(State(state): State<AppState>, req: Request, next: Next) -> Response {
    limit_by_ip(state, req, next, |retry_after_seconds| {
        V1Error::RateLimited {
            retry_after_seconds,
        }
        .into_response()
    })
    .await
}

async fn limit_by_ip(
    state: AppState,
    req: Request,
    next: Next,
    refuse: impl FnOnce(u64) -> Response,
) -> Response {
    let Some(limiter) = state.limits.per_ip.clone() else {
        return next.run(req).await;
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
    let verdict = check(&limiter, &ip);
    answer(verdict, state.limits.per_ip_per_minute, req, next, refuse).await
}

/// Run the request when allowed (and add the headers), else refuse it.
async fn answer(
    verdict: Verdict,
    limit: u32,
    req: Request,
    next: Next,
    refuse: impl FnOnce(u64) -> Response,
) -> Response {
    match verdict {
        Ok((remaining, reset)) => {
            let mut response = next.run(req).await;
            headers(response.headers_mut(), limit, remaining, reset);
            response
        }
        Err(wait) => {
            let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            let mut response = refuse(retry_after);
            let h = response.headers_mut();
            headers(h, limit, 0, wait);
            h.insert("retry-after", HeaderValue::from(retry_after));
            response
        }
    }
}

fn headers(h: &mut HeaderMap, limit: u32, remaining: u32, reset_in: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let reset = (now + reset_in).as_secs() + u64::from(reset_in.subsec_nanos() > 0);
    h.insert("x-ratelimit-limit", HeaderValue::from(limit));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
}
