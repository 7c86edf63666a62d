//! `/api/v1/security/*`:
//! - `GET audit-logs`: the audit log (see [`crate::api::audit`]) in the
//!   reference's shape: `{"logs": [...], "total", "limit", "offset"}`;
//!   times are ISO 8601 UTC (`...Z`), `user_id` a string as elsewhere in
//!   `/api/v1`. Admins see every row (and may filter by `user_id`), others
//!   only their own.
//! - `POST scan` (admin: a scan reads the host's configuration) → 202 with
//!   `scan_id`; `GET scans/{scan_id}` (`?wait_seconds=` up to 60 waits for
//!   it to complete). What a scan checks: [`crate::security`].

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{V1Error, V1Result};
use super::extract::{Json as Body, Query};
use crate::api::audit::{self, AuditQuery};
use crate::api::{ApiError, AppState};
use crate::auth::Caller;
use crate::db::AuditRow;
use crate::security::{Scan, ScanRequest, ScanType};

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct LogsQuery {
    start_time: Option<String>,
    end_time: Option<String>,
    action_type: Option<String>,
    resource_type: Option<String>,
    user_id: Option<String>,
    limit: Option<u32>,
    offset: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::AuditLog)]
pub struct LogView {
    id: i64,
    timestamp: String,
    action_type: String,
    resource_type: String,
    resource_id: Option<String>,
    user_id: Option<String>,
    source_ip: Option<String>,
    status: u16,
    request_id: Option<String>,
    #[schema(value_type = Object)]
    details: serde_json::Value,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::AuditLogs)]
pub struct LogsPage {
    logs: Vec<LogView>,
    total: i64,
    limit: u32,
    offset: u32,
}

#[utoipa::path(get, path = "/security/audit-logs", tag = "v1 security",
    params(LogsQuery),
    responses(
        (status = 200, description = "audit rows, newest first; admins see all, others their own", body = LogsPage),
        (status = 403, description = "`user_id` of another owner needs an admin", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn audit_logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<LogsQuery>,
) -> V1Result<Json<LogsPage>> {
    let filter = audit::filter_of(native_query(q)?, &caller).map_err(v1_error)?;
    let (limit, offset) = (filter.limit, filter.offset);
    let (rows, total) = audit::page(&state, filter).await?;
    Ok(Json(LogsPage {
        logs: rows.into_iter().map(view).collect(),
        total,
        limit,
        offset,
    }))
}

/// ISO 8601 with a `Z` (or without) → the stored form; `user_id` → a number.
fn native_query(q: LogsQuery) -> V1Result<AuditQuery> {
    let user_id = match q.user_id {
        Some(u) => Some(
            u.parse()
                .map_err(|_| V1Error::invalid("user_id", "must be a user or key id (a number)"))?,
        ),
        None => None,
    };
    let stored = |t: Option<String>| t.map(|t| t.trim_end_matches('Z').to_owned());
    Ok(AuditQuery {
        start_time: stored(q.start_time),
        end_time: stored(q.end_time),
        action_type: q.action_type,
        resource_type: q.resource_type,
        user_id,
        limit: q.limit,
        offset: q.offset,
    })
}

/// `field: message` (400) → 422 naming the field; 403 stays 403.
fn v1_error(e: ApiError) -> V1Error {
    match e {
        ApiError::BadRequest(m) => match m.split_once(": ") {
            Some((field, message)) => V1Error::invalid(field, message),
            None => V1Error::BadRequest(m),
        },
        ApiError::Forbidden(m) => V1Error::Forbidden(m),
        other => other.into(),
    }
}

fn view(r: AuditRow) -> LogView {
    LogView {
        id: r.id,
        timestamp: super::utc(&r.timestamp),
        action_type: r.action_type,
        resource_type: r.resource_type,
        resource_id: r.resource_id,
        user_id: r.user_id.map(|u| u.to_string()),
        source_ip: r.source_ip,
        status: r.status,
        request_id: r.request_id,
        details: r.details,
    }
}

const MAX_FRAMEWORKS: usize = 16;
const MAX_WAIT_SECONDS: u64 = 60;

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[schema(as = v1::ScanBody)]
#[serde(deny_unknown_fields)]
pub struct ScanBody {
    /// `configuration`, `compliance` or `vulnerability`.
    #[schema(value_type = String)]
    scan_type: ScanType,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    frameworks: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::ScanStarted)]
pub struct Started {
    scan_id: String,
    status: &'static str,
    started_at: String,
    /// Not estimated: scans take seconds; poll or use `?wait_seconds=`.
    estimated_completion: Option<String>,
}

#[utoipa::path(post, path = "/security/scan", tag = "v1 security",
    request_body = ScanBody,
    responses(
        (status = 202, description = "started; poll `GET /api/v1/security/scans/{scan_id}`", body = Started),
        (status = 403, description = "admin only", body = super::error::Body),
        (status = 404, description = "no such target VM", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn scan(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<ScanBody>,
) -> V1Result<(StatusCode, Json<Started>)> {
    if !caller.admin {
        return Err(V1Error::Forbidden(
            "security scans read the host's configuration: admin only".into(),
        ));
    }
    let target = body.target.unwrap_or_else(|| "all".into());
    if target != "all" {
        state.sandboxes.find(&caller, &target).await?;
    }
    if body.frameworks.len() > MAX_FRAMEWORKS
        || body.frameworks.iter().any(|f| f.is_empty() || f.len() > 64)
    {
        return Err(V1Error::invalid(
            "frameworks",
            format!("at most {MAX_FRAMEWORKS} names of 1-64 characters"),
        ));
    }
    let req = ScanRequest {
        scan_type: body.scan_type,
        target,
        frameworks: body.frameworks,
    };
    let scan = state.v1.scans.start(&state.sandboxes, caller.key_id, req);
    Ok((
        StatusCode::ACCEPTED,
        Json(Started {
            scan_id: scan.scan_id,
            status: "started",
            started_at: scan.started_at,
            estimated_completion: None,
        }),
    ))
}

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    wait_seconds: Option<u64>,
}

#[utoipa::path(get, path = "/security/scans/{scan_id}", tag = "v1 security",
    params(("scan_id" = String, Path, description = "id from POST /api/v1/security/scan"), WaitQuery),
    responses(
        (status = 200, description = "the scan; `results` once `status` is `completed`", body = Object),
        (status = 404, description = "no such scan (of yours)", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn scan_result(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(scan_id): Path<String>,
    Query(q): Query<WaitQuery>,
) -> V1Result<Json<Scan>> {
    let wait = q.wait_seconds.unwrap_or(0);
    if wait > MAX_WAIT_SECONDS {
        return Err(V1Error::invalid(
            "wait_seconds",
            format!("must be at most {MAX_WAIT_SECONDS}"),
        ));
    }
    let scan = state
        .v1
        .scans
        .get(&scan_id, std::time::Duration::from_secs(wait))
        .await
        .filter(|s| caller.can_see(s.owner))
        .ok_or_else(|| V1Error::NotFound(format!("scan '{scan_id}' not found")))?;
    Ok(Json(scan))
}
