//! Per-owner rate limits (`governor`, a GCRA limiter keyed by key id):
//! `rate_limit.per_hour` requests an hour, at most `rate_limit.burst` at
//! once. Every authenticated answer carries `X-RateLimit-Limit` (the hourly
//! rate), `X-RateLimit-Remaining` (requests allowed right now) and
//! `X-RateLimit-Reset` (unix time when the burst is whole again); over the
//! limit the answer is 429 with `Retry-After` (seconds).

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use super::{ApiError, AppState};
use crate::auth::Caller;
use crate::config::RateLimitConfig;

type Keyed =
    RateLimiter<i64, DefaultKeyedStateStore<i64>, DefaultClock, StateInformationMiddleware>;

/// The limiter of every owner; `None` when rate limits are off.
#[derive(Clone)]
pub struct Limits {
    limiter: Option<Arc<Keyed>>,
    per_hour: u32,
}

impl Limits {
    pub fn new(config: &RateLimitConfig) -> Limits {
        let quota = NonZeroU32::new(config.per_hour)
            .zip(NonZeroU32::new(config.burst))
            .map(|(rate, burst)| Quota::per_hour(rate).allow_burst(burst));
        let limiter = quota.filter(|_| config.enabled).map(|q| {
            Arc::new(RateLimiter::keyed(q).with_middleware::<StateInformationMiddleware>())
        });
        Limits {
            limiter,
            per_hour: config.per_hour,
        }
    }
}

/// Middleware (inside `require_key`, so the caller is known).
pub async fn limit(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (Some(limiter), Some(caller)) = (
        state.limits.limiter.clone(),
        req.extensions().get::<Caller>().copied(),
    ) else {
        return next.run(req).await;
    };
    match limiter.check_key(&caller.key_id) {
        Ok(snapshot) => {
            let interval = snapshot.quota().replenish_interval();
            let burst = snapshot.quota().burst_size().get();
            let remaining = snapshot.remaining_burst_capacity();
            let reset = interval * (burst - remaining);
            let mut response = next.run(req).await;
            headers(
                response.headers_mut(),
                state.limits.per_hour,
                remaining,
                reset,
            );
            response
        }
        Err(not_until) => {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            too_many(state.limits.per_hour, wait)
        }
    }
}

fn too_many(per_hour: u32, wait: Duration) -> Response {
    let retry_after = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
    let mut response =
        ApiError::TooManyRequests(format!("rate limit exceeded: retry after {retry_after} s"))
            .into_response();
    let h = response.headers_mut();
    headers(h, per_hour, 0, wait);
    h.insert("retry-after", HeaderValue::from(retry_after));
    response
}

fn headers(h: &mut HeaderMap, per_hour: u32, remaining: u32, reset_in: Duration) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let reset = (now + reset_in).as_secs() + u64::from(reset_in.subsec_nanos() > 0);
    h.insert("x-ratelimit-limit", HeaderValue::from(per_hour));
    h.insert("x-ratelimit-remaining", HeaderValue::from(remaining));
    h.insert("x-ratelimit-reset", HeaderValue::from(reset));
}
