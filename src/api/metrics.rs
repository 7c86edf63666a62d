//! `GET /metrics` in the Prometheus text format (the `prometheus` crate),
//! for an admin key. Request counters and latencies are recorded per
//! matched native route (the template, never the raw path, so label
//! cardinality stays bounded, written `/vms/:name/run`, handed over by
//! [`label_route`]) by the request timer that also feeds the `/api/v1`
//! status counters; sandbox and snapshot gauges are read from the database
//! at scrape time.

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

    pub(super) fn observe(&self, route: &str, method: &str, status: u16, seconds: f64) {
        let status = status.to_string();
        self.requests
            .with_label_values(&[route, method, &status])
            .inc();
        self.latency
            .with_label_values(&[route, method])
            .observe(seconds);
    }
}

/// The matched route of a native request (the template, written
/// `/vms/:name/run`), in the response's extensions for the one request
/// timer (`request_context` in `api/mod.rs`) to label its sample with.
#[derive(Clone, Debug)]
pub struct RouteLabel(pub String);

/// Route layer of the native routes: hands the matched route to the timer.
pub async fn label_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| route_label(m.as_str()))
        .unwrap_or_else(|| "unmatched".into());
    let mut response = next.run(req).await;
    response.extensions_mut().insert(RouteLabel(route));
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
