//! The audit row of a state-changing JSON-RPC call (read-only methods,
//! `sandbox.metrics.get`, leave none, as REST GETs do).

use serde::Deserialize;
use serde_json::Value;

use super::names::rewind_name;
use super::RpcError;
use crate::api::audit::{self, Pending, ProtocolCall, ProtocolDetails};
use crate::api::AppState;
use crate::auth::Caller;

/// The fields of `params` worth keeping; everything else is ignored.
#[derive(Debug, Default, Deserialize)]
struct ParamsPeek {
    sandbox: Option<String>,
    namespace: Option<String>,
    command: Option<String>,
}

/// Whether `method` changes state (and so is audited).
fn audited(method: &str) -> bool {
    matches!(
        method,
        "sandbox.start" | "sandbox.stop" | "sandbox.command.run" | "sandbox.repl.run"
    )
}

/// Append the pending row of `method` (`None` for a read-only or unknown
/// method). `caller` is `None` when the credentials were refused.
pub async fn begin(
    state: &AppState,
    extensions: &axum::http::Extensions,
    method: &str,
    params: &Value,
    caller: Option<&Caller>,
) -> Option<Pending> {
    if !audited(method) {
        return None;
    }
    let peek = ParamsPeek::deserialize(params).unwrap_or_default();
    let resource_id = match (caller, &peek.namespace, &peek.sandbox) {
        (Some(caller), Some(ns), Some(sandbox)) => rewind_name(caller, ns, sandbox).ok(),
        _ => None,
    };
    let call = ProtocolCall {
        action_type: format!("rpc:{method}"),
        resource_type: "vm",
        resource_id,
        key_id: caller.map(|c| c.key_id),
        source_ip: audit::source_ip(extensions),
        request_id: crate::api::error::REQUEST_ID.try_with(Clone::clone).ok(),
        details: ProtocolDetails {
            protocol: "jsonrpc",
            method: method.to_owned(),
            command: peek.command,
            ..Default::default()
        },
    };
    Some(audit::begin(&state.sandboxes, call).await)
}

/// The HTTP status the same outcome has on the REST API.
pub fn status_of<T>(result: &Result<T, RpcError>) -> u16 {
    let Err(err) = result else { return 200 };
    match err {
        RpcError::Parse(_)
        | RpcError::InvalidRequest(_)
        | RpcError::InvalidParams(_)
        | RpcError::Validation(_) => 400,
        RpcError::Auth(_) => 401,
        RpcError::MethodNotFound(_) | RpcError::NotFound(_) => 404,
        RpcError::Server(_) => 409,
        RpcError::Internal(_) => 500,
    }
}
