//! The audit row of a state-changing MCP tool call (`read_file`,
//! `list_snapshots` and `diff` leave none, as REST GETs do). Called once,
//! from `call_tool`, for every tool.

use std::cell::Cell;
use std::future::Future;

use axum::http::request::Parts;
use rmcp::model::{CallToolRequestParams, CallToolResult};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::ErrorData;
use serde::Deserialize;

use crate::api::audit::{self, Pending, ProtocolCall, ProtocolDetails};
use crate::auth::Caller;
use crate::sandbox::Sandboxes;

tokio::task_local! {
    /// The REST status of the running tool's outcome (see [`set_status`]).
    static STATUS: Cell<u16>;
}

/// The arguments worth keeping; everything else (file content, code) is
/// ignored.
#[derive(Debug, Default, Deserialize)]
struct ArgsPeek {
    sandbox: Option<String>,
    command: Option<String>,
    path: Option<String>,
    snapshot: Option<String>,
}

/// `resource_type` of a state-changing tool; `None` for read-only ones.
fn resource_type(tool: &str) -> Option<&'static str> {
    Some(match tool {
        "create_sandbox" | "delete_sandbox" | "run_command" | "run_code" => "vm",
        "write_file" => "file",
        "restore_snapshot" => "snapshot",
        _ => return None,
    })
}

/// Run `call` (the tool router) and give `pending` (from [`begin`]) the
/// outcome.
pub async fn audited<F>(
    sandboxes: &Sandboxes,
    pending: Option<Pending>,
    call: F,
) -> Result<CallToolResult, ErrorData>
where
    F: Future<Output = Result<CallToolResult, ErrorData>>,
{
    let Some(pending) = pending else {
        return call.await;
    };
    let (result, status) = STATUS
        .scope(Cell::new(200), async {
            let result = call.await;
            (result, STATUS.with(Cell::get))
        })
        .await;
    let status = match &result {
        // Arguments that do not fit the tool's schema.
        Err(_) => 400,
        Ok(r) if r.is_error == Some(true) && status == 200 => 500,
        Ok(_) => status,
    };
    pending.finish(sandboxes, status).await;
    result
}

/// Note the REST status of a failed tool (a tool error carries only text).
pub fn set_status(status: u16) {
    let _ = STATUS.try_with(|s| s.set(status));
}

/// Append the pending row of a state-changing tool call (`None` for a
/// read-only tool).
pub async fn begin(
    sandboxes: &Sandboxes,
    request: &CallToolRequestParams,
    context: &RequestContext<RoleServer>,
) -> Option<Pending> {
    let resource_type = resource_type(&request.name)?;
    let args = request.arguments.clone().unwrap_or_default();
    let peek = ArgsPeek::deserialize(serde_json::Value::Object(args)).unwrap_or_default();
    let parts = context.extensions.get::<Parts>();
    let header = |name| {
        let value = parts?.headers.get(name)?;
        value.to_str().ok().map(str::to_owned)
    };
    let call = ProtocolCall {
        action_type: format!("mcp:{}", request.name),
        resource_type,
        resource_id: peek.sandbox,
        key_id: parts
            .and_then(|p| p.extensions.get::<Caller>())
            .map(|c| c.key_id),
        source_ip: parts.and_then(|p| audit::source_ip(&p.extensions)),
        request_id: header("x-request-id"),
        details: ProtocolDetails {
            protocol: "mcp",
            method: request.name.to_string(),
            command: peek.command,
            path: peek.path,
            snapshot: peek.snapshot,
        },
    };
    Some(audit::begin(sandboxes, call).await)
}
