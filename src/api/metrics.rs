//! `GET /metrics` in the Prometheus text format (the `prometheus` crate),
//! for an admin key. Request counters and latencies are recorded by
//! [`track`] per matched route (the template, never the raw path, so label
//! cardinality stays bounded, written `/vms/:name/run`); sandbox and snapshot gauges are read from
//! the database at scrape time.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry,
};

use super::{ApiError, AppResult, AppState, Auth};
use crate::db::Db;

/// The registry and the collectors the API updates.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    sandboxes: IntGaugeVec,
    snapshots: IntGaugeVec,
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("cannot register metric")]
    Register(#[from] prometheus::Error),
}

impl Metrics {
    pub fn new() -> Result<Metrics, MetricsError> {
        let registry = Registry::new_custom(Some("rewind".into()), None)?;
        let requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::new(
                "http_request_duration_seconds",
                "HTTP request latency by route and method (runs, snapshots and restores have their own routes)",
            )
            .buckets(prometheus::exponential_buckets(0.001, 2.0, 16)?),
            &["route", "method"],
        )?;
        let sandboxes =
            IntGaugeVec::new(Opts::new("sandboxes", "Sandboxes by status"), &["status"])?;
        let snapshots = IntGaugeVec::new(
            Opts::new("snapshots", "Snapshots per sandbox"),
            &["sandbox"],
        )?;
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(sandboxes.clone()),
            Box::new(snapshots.clone()),
        ] {
            registry.register(c)?;
        }
        Ok(Metrics {
            registry,
            requests,
            latency,
            sandboxes,
            snapshots,
        })
    }

    fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.requests
            .with_label_values(&[route, method, &status])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(seconds);
    }
}

/// Middleware (a route layer): count and time every routed request.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| route_label(m.as_str()))
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    let seconds = started.elapsed().as_secs_f64();
    state
        .metrics
        .observe(&route, &method, response.status().as_u16(), seconds);
    response
}

/// `/vms/{name}/run` as `/vms/:name/run`: braces in label values trip
/// some Prometheus text parsers.
fn route_label(template: &str) -> String {
    template.replace('{', ":").replace('}', "")
}

/// `GET /metrics` (admin key).
#[utoipa::path(get, path = "/metrics", tag = "operations",
    responses(
        (status = 200, description = "Prometheus text format", content_type = "text/plain; version=0.0.4", body = String),
        (status = 403, description = "not an admin key", body = super::error::ErrorBody),
    ))]
pub async fn scrape(State(state): State<AppState>, caller: Auth) -> AppResult<Response> {
    if !caller.admin {
        return Err(ApiError::Forbidden("/metrics needs an admin key".into()));
    }
    refresh_gauges(&state).await?;
    let mut out = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&state.metrics.registry.gather(), &mut out)
        .map_err(|e| ApiError::internal_chain(&e))?;
    Ok(([(CONTENT_TYPE, prometheus::TEXT_FORMAT)], out).into_response())
}

async fn refresh_gauges(state: &AppState) -> AppResult<()> {
    let (by_status, per_sandbox) = state
        .sandboxes
        .db
        .call(|c| {
            Ok((
                Db::count_sandboxes_by_status(c)?,
                Db::count_snapshots_per_sandbox(c)?,
            ))
        })
        .await
        .map_err(|e| ApiError::internal_chain(&e))?;
    let m = &state.metrics;
    m.sandboxes.reset();
    for (status, n) in by_status {
        m.sandboxes.with_label_values(&[&status]).set(n);
    }
    m.snapshots.reset();
    for (sandbox, n) in per_sandbox {
        m.snapshots.with_label_values(&[&sandbox]).set(n);
    }
    Ok(())
}
