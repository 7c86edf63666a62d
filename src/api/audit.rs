//! The audit log at the API edge: [`record`] (native routes) and
//! [`record_v1`] (`/api/v1`) append one row for every state-changing
//! request once its response is known, and `GET /audit-logs` (and
//! `GET /api/v1/security/audit-logs`) query them (admins see all, others
//! their own rows). A failed login is `login_failed`. JSON-RPC and MCP
//! calls are audited per call through [`begin`] / [`Pending::finish`]
//! (`api/rpc/audit.rs`, `api/mcp/audit.rs`).
//!
//! Rows never hold a key, a password, an environment variable or command
//! output; the command of a run is kept, capped at [`MAX_COMMAND_CHARS`].
//!
//! The row is written BEFORE the request runs, with status 0 (pending) and
//! the owner its credentials name, then given its outcome (status, created
//! resource) after the answer. A crash in between leaves the row pending:
//! the log never misses a committed change, but a pending row may stand for
//! a change that did not happen (see README, "Audit log").

use std::net::SocketAddr;

use axum::extract::{ConnectInfo, MatchedPath, Query, Request, State};
use axum::http::{Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::{Deserialize, Serialize};

use super::{ApiError, AppResult, AppState, Auth};
use crate::auth::Caller;
use crate::db::{AuditFilter, AuditRow, Db, NewAudit, Retention};
use crate::sandbox::Sandboxes;

/// Longest command kept in a row's details (characters).
pub const MAX_COMMAND_CHARS: usize = 256;
const DEFAULT_LIMIT: u32 = 100;
const MAX_LIMIT: u32 = 1000;

/// The id of a resource a handler created (e.g. a new key's id), put in the
/// response extensions for [`record`] when the path does not name it.
#[derive(Debug, Clone)]
pub struct CreatedResource(pub String);

/// The fields of a request body worth keeping (a sandbox's name, a run's
/// command); everything else in the body is ignored.
#[derive(Debug, Default, Deserialize)]
struct BodyPeek {
    name: Option<String>,
    command: Option<String>,
    /// Login and register (the password is never read).
    username: Option<String>,
}

#[derive(Debug, Serialize)]
struct Details {
    method: String,
    path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<String>,
}

type ActionTable = fn(&Method, &str) -> Option<(&'static str, &'static str)>;

/// Middleware for native routes (a route layer, so the matched route is known).
pub async fn record(State(state): State<AppState>, req: Request, next: Next) -> Response {
    record_with(state, req, next, action_of).await
}

/// Middleware for `/api/v1` routes.
pub async fn record_v1(State(state): State<AppState>, req: Request, next: Next) -> Response {
    record_with(state, req, next, action_of_v1).await
}

async fn record_with(state: AppState, req: Request, next: Next, table: ActionTable) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let matched = req.extensions().get::<MatchedPath>();
    let template = matched.map(|m| m.as_str()).unwrap_or_default();
    let template = template
        .strip_prefix("/api/v1")
        .unwrap_or(template)
        .to_owned();
    let Some((action, resource_type)) = table(req.method(), &template) else {
        return next.run(req).await;
    };
    let source_ip = source_ip(req.extensions());
    let (method, path) = (req.method().to_string(), req.uri().path().to_owned());
    let (req, peek) = match peek_body(req, state.sandboxes.config.server.max_body_bytes).await {
        Ok(peeked) => peeked,
        // Nothing was done: no row (see `limits::error_shape` for the body).
        Err(refused) => return refused,
    };
    // Who the credentials name (the handler checks them again and refuses).
    let presented = super::v1::caller_of(&state, req.headers()).await;
    let mut row = NewAudit {
        action_type: action.into(),
        resource_type: resource_type.into(),
        resource_id: resource_of(&template, &path, peek.name.or(peek.username)),
        key_id: presented.ok().flatten().map(|c| c.key_id),
        source_ip,
        status: crate::db::AUDIT_PENDING,
        request_id: super::error::REQUEST_ID.try_with(Clone::clone).ok(),
        details: details_json(method, path, peek.command),
    };
    let pending = append(&state.sandboxes, row.clone()).await;
    let response = next.run(req).await;
    // A crash here (as `kill -9` could) leaves the row pending.
    let _ = crate::failpoint::hit(crate::failpoint::AUDIT_BEFORE_OUTCOME);
    outcome(&mut row, &response);
    match pending {
        Some(id) => finish(&state.sandboxes, id, row).await,
        None => drop(append(&state.sandboxes, row).await),
    }
    response
}

/// The client's address, when the server recorded it.
pub fn source_ip(extensions: &axum::http::Extensions) -> Option<String> {
    extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_string())
}

/// What the answer tells: status, owner, created resource, failed login.
fn outcome(row: &mut NewAudit, response: &Response) {
    row.status = response.status().as_u16();
    if let Some(caller) = response.extensions().get::<Caller>() {
        row.key_id = Some(caller.key_id);
    }
    if let Some(created) = response.extensions().get::<CreatedResource>() {
        row.resource_id = Some(created.0.clone());
    }
    if row.action_type == "login" && !response.status().is_success() {
        row.action_type = "login_failed".into();
    }
}

/// Buffer a small JSON body to read its name/command, then put it back.
/// The request with its JSON body read (up to `max`, `server.max_body_bytes`)
/// and what the audit row needs from it; a body over `max` is refused with
/// the plain 413 that axum's extractors give, an unreadable one with a 400.
async fn peek_body(req: Request, max: usize) -> Result<(Request, BodyPeek), Response> {
    let is_json = req
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !is_json {
        return Ok((req, BodyPeek::default()));
    }
    let (parts, body) = req.into_parts();
    let bytes =
        axum::body::to_bytes(body, max).await.map_err(|e| {
            match std::error::Error::source(&e)
                .is_some_and(|s| s.is::<http_body_util::LengthLimitError>())
            {
                true => StatusCode::PAYLOAD_TOO_LARGE.into_response(),
                false => {
                    ApiError::BadRequest(format!("cannot read request body: {e}")).into_response()
                }
            }
        })?;
    let peek = serde_json::from_slice(&bytes).unwrap_or_default();
    Ok((Request::from_parts(parts, bytes.into()), peek))
}

fn details_json(method: String, path: String, command: Option<String>) -> String {
    let command = command.map(|c| c.chars().take(MAX_COMMAND_CHARS).collect());
    let details = Details {
        method,
        path,
        command,
    };
    serde_json::to_string(&details).unwrap_or_else(|_| "{}".into())
}

async fn finish(sandboxes: &Sandboxes, id: i64, row: NewAudit) {
    let result = sandboxes
        .db
        .call(move |c| Db::finish_audit(c, id, &row))
        .await;
    if let Err(e) = result {
        tracing::error!(error = %crate::runtime::chain(&e), "cannot write the audit log");
    }
}

/// A call of the JSON-RPC or MCP endpoint (one HTTP request may carry
/// several, so these are audited per call, not by [`record`]).
#[derive(Debug, Default)]
pub struct ProtocolCall {
    /// `rpc:<method>` or `mcp:<tool>`.
    pub action_type: String,
    pub resource_type: &'static str,
    /// The sandbox's name.
    pub resource_id: Option<String>,
    pub key_id: Option<i64>,
    pub source_ip: Option<String>,
    pub request_id: Option<String>,
    pub details: ProtocolDetails,
}

/// `details` of a protocol call: never output, keys or code.
#[derive(Debug, Default, Serialize)]
pub struct ProtocolDetails {
    /// `jsonrpc` or `mcp`.
    pub protocol: &'static str,
    /// The JSON-RPC method or MCP tool.
    pub method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A file's path (`write_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
}

/// A protocol call's row, written pending before the call runs: give it
/// its outcome with [`Pending::finish`].
#[must_use = "a pending audit row needs its outcome"]
pub struct Pending {
    id: Option<i64>,
    row: NewAudit,
}

/// Append `call`'s row as pending (the same row shape as [`record`]'s).
pub async fn begin(sandboxes: &Sandboxes, call: ProtocolCall) -> Pending {
    let mut details = call.details;
    details.command = details
        .command
        .map(|c| c.chars().take(MAX_COMMAND_CHARS).collect());
    let row = NewAudit {
        action_type: call.action_type,
        resource_type: call.resource_type.into(),
        resource_id: call.resource_id,
        key_id: call.key_id,
        source_ip: call.source_ip,
        status: crate::db::AUDIT_PENDING,
        request_id: call.request_id,
        details: serde_json::to_string(&details).unwrap_or_else(|_| "{}".into()),
    };
    let id = append(sandboxes, row.clone()).await;
    Pending { id, row }
}

impl Pending {
    /// Record the outcome: `status` is the HTTP status the same failure has
    /// on the REST API (200 on success).
    pub async fn finish(mut self, sandboxes: &Sandboxes, status: u16) {
        self.row.status = status;
        match self.id {
            Some(id) => finish(sandboxes, id, self.row).await,
            None => drop(append(sandboxes, self.row).await),
        }
    }
}

/// Append a row; its id, or `None` (logged) when the database refused it:
/// the request still runs (the audit log fails open).
async fn append(sandboxes: &Sandboxes, row: NewAudit) -> Option<i64> {
    let audit = &sandboxes.config.audit;
    let retention = Retention {
        days: audit.retention_days,
        rows: audit.retention_rows,
    };
    let result = sandboxes
        .db
        .call(move |c| Db::insert_audit(c, &row, retention))
        .await;
    match result {
        Ok(id) => Some(id),
        Err(e) => {
            tracing::error!(error = %crate::runtime::chain(&e), "cannot write the audit log");
            None
        }
    }
}

/// `(action_type, resource_type)` of a state-changing route.
fn action_of(method: &Method, template: &str) -> Option<(&'static str, &'static str)> {
    let post = *method == Method::POST;
    let delete = *method == Method::DELETE;
    Some(match template {
        "/api-keys" if post => ("api_key_create", "api_key"),
        "/api-keys/{id}" if delete => ("api_key_revoke", "api_key"),
        "/vms" if post => ("vm_create", "vm"),
        "/vms/{name}" if delete => ("vm_delete", "vm"),
        "/vms/{name}/run" if post => ("vm_run", "vm"),
        "/vms/{name}/wipe" if post => ("vm_wipe", "vm"),
        "/vms/{name}/snapshots" if post => ("snapshot_create", "snapshot"),
        "/vms/{name}/snapshots/{snapshot}" if delete => ("snapshot_delete", "snapshot"),
        "/vms/{name}/snapshots/{snapshot}/fork" if post => ("snapshot_fork", "snapshot"),
        "/vms/{name}/snapshots/{snapshot}/restore" if post => ("snapshot_restore", "snapshot"),
        "/vms/{name}/port-forwards" if post => ("port_forward_create", "port_forward"),
        "/vms/{name}/port-forwards/{host_port}" if delete => {
            ("port_forward_delete", "port_forward")
        }
        "/vms/{name}/stop" if post => ("vm_stop", "vm"),
        "/vms/{name}/start" if post => ("vm_start", "vm"),
        "/vms/{name}/repl" if post => ("vm_repl", "vm"),
        "/vms/{name}/restore" if post => ("snapshot_restore", "snapshot"),
        "/vms/{name}/files" if post || *method == Method::PUT => ("file_write", "file"),
        "/vms/{name}/files" if delete => ("file_delete", "file"),
        "/vms/import" if post => ("vm_import", "vm"),
        _ => return None,
    })
}

/// `(action_type, resource_type)` of a state-changing `/api/v1` route
/// (templates without the `/api/v1` prefix).
fn action_of_v1(method: &Method, template: &str) -> Option<(&'static str, &'static str)> {
    let post = *method == Method::POST;
    let delete = *method == Method::DELETE;
    Some(match template {
        "/auth/register" if post => ("user_register", "user"),
        "/auth/login" if post => ("login", "user"),
        "/vms" if post => ("vm_create", "vm"),
        "/vms/{vm_name}" if delete => ("vm_delete", "vm"),
        "/vms/{vm_name}/start" if post => ("vm_start", "vm"),
        "/vms/{vm_name}/stop" if post => ("vm_stop", "vm"),
        "/vms/{vm_name}/restart" if post => ("vm_restart", "vm"),
        "/vms/{vm_name}/execute" | "/vms/{vm_name}/guest/command" if post => ("vm_run", "vm"),
        "/vms/{vm_name}/snapshots" if post => ("snapshot_create", "snapshot"),
        "/vms/{vm_name}/snapshots/{snapshot_name}" if delete => ("snapshot_delete", "snapshot"),
        "/vms/{vm_name}/snapshots/{snapshot_name}/restore" if post => {
            ("snapshot_restore", "snapshot")
        }
        "/vms/{vm_name}/files/upload" | "/vms/{vm_name}/guest/upload" if post => {
            ("file_write", "file")
        }
        "/vms/{vm_name}/resources" if *method == Method::PUT => ("vm_resources_update", "vm"),
        "/vms/{vm_name}/network/port-forward" if post => ("port_forward_create", "port_forward"),
        "/security/scan" if post => ("security_scan", "scan"),
        _ => return None,
    })
}

/// The resource named by the path's parameters (`box`, `box/snap`), or the
/// `name` of the body when the path has none (`POST /vms`).
fn resource_of(template: &str, path: &str, body_name: Option<String>) -> Option<String> {
    let params: Vec<&str> = template
        .split('/')
        .zip(path.split('/'))
        .filter(|(t, _)| t.starts_with('{'))
        .map(|(_, p)| p)
        .collect();
    if params.is_empty() {
        return body_name;
    }
    Some(params.join("/"))
}

/// Query parameters of `GET /audit-logs`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// `YYYY-MM-DDTHH:MM:SS`, UTC.
    pub start_time: Option<String>,
    /// `YYYY-MM-DDTHH:MM:SS`, UTC.
    pub end_time: Option<String>,
    pub action_type: Option<String>,
    pub resource_type: Option<String>,
    /// Key id (admin only).
    pub user_id: Option<i64>,
    /// 1-1000, default 100.
    pub limit: Option<u32>,
    pub offset: Option<u32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AuditPage {
    audit_logs: Vec<AuditRow>,
    total: i64,
    limit: u32,
    offset: u32,
}

/// `GET /audit-logs`: admins see every row (and may filter by `user_id`),
/// others only their own.
#[utoipa::path(get, path = "/audit-logs", tag = "operations",
    params(AuditQuery),
    responses(
        (status = 200, description = "audit rows, newest first", body = AuditPage),
        (status = 400, description = "bad query; the message names the field", body = super::error::ErrorBody),
        (status = 403, description = "`user_id` of another owner needs an admin key", body = super::error::ErrorBody),
    ))]
pub async fn list(
    State(state): State<AppState>,
    caller: Auth,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> AppResult<Json<AuditPage>> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let filter = filter_of(q, &caller)?;
    let (limit, offset) = (filter.limit, filter.offset);
    let (rows, total) = page(&state, filter).await?;
    Ok(Json(AuditPage {
        audit_logs: rows,
        total,
        limit,
        offset,
    }))
}

/// The rows `filter` selects (one page) and how many match in all; a
/// database failure is a 500. Shared with `/api/v1/security/audit-logs`.
pub async fn page(state: &AppState, filter: AuditFilter) -> AppResult<(Vec<AuditRow>, i64)> {
    state
        .sandboxes
        .db
        .call(move |c| Db::query_audit(c, &filter))
        .await
        .map_err(|e| ApiError::internal_chain(&e))
}

/// The database filter of a query by `caller` (400 naming a bad field, 403
/// for another owner's rows without admin).
pub fn filter_of(q: AuditQuery, caller: &Caller) -> AppResult<AuditFilter> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if limit == 0 || limit > MAX_LIMIT {
        return Err(ApiError::BadRequest(format!(
            "limit: must be between 1 and {MAX_LIMIT}"
        )));
    }
    for (field, value) in [("start_time", &q.start_time), ("end_time", &q.end_time)] {
        if value.as_deref().is_some_and(|v| !is_time(v)) {
            return Err(ApiError::BadRequest(format!(
                "{field}: expected YYYY-MM-DDTHH:MM:SS (UTC)"
            )));
        }
    }
    if !caller.admin && q.user_id.is_some_and(|u| u != caller.key_id) {
        return Err(ApiError::Forbidden(
            "user_id: only an admin key may read another owner's audit log".into(),
        ));
    }
    Ok(AuditFilter {
        start_time: q.start_time,
        end_time: q.end_time,
        action_type: q.action_type,
        resource_type: q.resource_type,
        key_id: if caller.admin {
            q.user_id
        } else {
            Some(caller.key_id)
        },
        limit,
        offset: q.offset.unwrap_or(0),
    })
}

fn is_time(v: &str) -> bool {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    time::PrimitiveDateTime::parse(v, &fmt).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resource_of_joins_path_parameters() {
        let id = resource_of(
            "/vms/{name}/snapshots/{snapshot}/fork",
            "/vms/box/snapshots/cmd-1/fork",
            None,
        );
        assert_eq!(id.as_deref(), Some("box/cmd-1"));
    }

    #[test]
    fn resource_of_without_parameters_uses_the_body_name() {
        let id = resource_of("/vms", "/vms", Some("box".into()));
        assert_eq!(id.as_deref(), Some("box"));
    }

    #[test]
    fn details_json_caps_the_command() {
        let long = "x".repeat(MAX_COMMAND_CHARS + 10);
        let json = details_json("POST".into(), "/vms/a/run".into(), Some(long));
        assert!(json.contains(&"x".repeat(MAX_COMMAND_CHARS)));
        assert!(!json.contains(&"x".repeat(MAX_COMMAND_CHARS + 1)));
    }

    #[test]
    fn filter_of_pins_a_non_admin_to_its_own_rows() {
        let caller = Caller {
            key_id: 7,
            admin: false,
        };
        let filter = filter_of(AuditQuery::default(), &caller).unwrap();
        assert_eq!(filter.key_id, Some(7));
    }

    #[test]
    fn filter_of_rejects_a_bad_start_time() {
        let q = AuditQuery {
            start_time: Some("yesterday".into()),
            ..Default::default()
        };
        let caller = Caller {
            key_id: 1,
            admin: true,
        };
        let err = filter_of(q, &caller).unwrap_err();
        assert!(err.to_string().contains("start_time"), "{err}");
    }
}
