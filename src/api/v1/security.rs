//! `GET /api/v1/security/audit-logs`: the audit log (see
//! [`crate::api::audit`]) in the reference's shape: `{"logs": [...],
//! "total", "limit", "offset"}`; times are ISO 8601 UTC (`...Z`), `user_id`
//! a string as elsewhere in `/api/v1`. Admins see every row (and may filter
//! by `user_id`), others only their own.

use axum::extract::State;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{V1Error, V1Result};
use super::extract::Query;
use crate::api::audit::{self, AuditQuery};
use crate::api::{ApiError, AppState};
use crate::auth::Caller;
use crate::db::{AuditRow, Db};

#[derive(Debug, Default, Deserialize)]
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

#[derive(Serialize)]
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
    details: serde_json::Value,
}

#[derive(Serialize)]
pub struct LogsPage {
    logs: Vec<LogView>,
    total: i64,
    limit: u32,
    offset: u32,
}

pub async fn audit_logs(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<LogsQuery>,
) -> V1Result<Json<LogsPage>> {
    let filter = audit::filter_of(native_query(q)?, &caller).map_err(v1_error)?;
    let (limit, offset) = (filter.limit, filter.offset);
    let (rows, total) = state
        .sandboxes
        .db
        .call(move |c| Db::query_audit(c, &filter))
        .await
        .map_err(|e| ApiError::internal_chain(&e))?;
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
