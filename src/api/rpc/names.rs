//! microsandbox (namespace, sandbox) ↔ rewind sandbox name:
//! `k<key id>.<namespace>.<sandbox>`.

use super::RpcError;
use crate::auth::Caller;

/// Longest rewind sandbox name (see `rewind_storage::SandboxName`).
const MAX_NAME: usize = 64;

/// The rewind name of `sandbox` in `namespace` for this caller.
pub fn rewind_name(caller: &Caller, namespace: &str, sandbox: &str) -> Result<String, RpcError> {
    check("namespace", namespace)?;
    check("sandbox", sandbox)?;
    let name = format!("{}{namespace}.{sandbox}", prefix(caller));
    if name.len() > MAX_NAME {
        return Err(RpcError::Validation(format!(
            "namespace + sandbox name are too long (at most {} characters together)",
            MAX_NAME - prefix(caller).len() - 1
        )));
    }
    Ok(name)
}

/// (namespace, sandbox) of a rewind name this caller made over JSON-RPC.
pub fn split<'a>(caller: &Caller, name: &'a str) -> Option<(&'a str, &'a str)> {
    let rest = name.strip_prefix(&prefix(caller))?;
    rest.split_once('.')
}

/// A namespace filter: `*` matches all.
pub fn check_namespace_filter(namespace: &str) -> Result<(), RpcError> {
    match namespace {
        "*" => Ok(()),
        other => check("namespace", other),
    }
}

fn prefix(caller: &Caller) -> String {
    format!("k{}.", caller.key_id)
}

fn check(field: &str, value: &str) -> Result<(), RpcError> {
    if value.is_empty() {
        let mut field = field.to_owned();
        field[..1].make_ascii_uppercase();
        return Err(RpcError::InvalidParams(format!("{field} cannot be empty")));
    }
    let ok = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if !ok || value.starts_with('-') {
        return Err(RpcError::Validation(format!(
            "{field} {value:?}: use letters, digits, '_' and '-' (not first)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: Caller = Caller {
        key_id: 7,
        admin: false,
    };

    #[test]
    fn rewind_name_roundtrips_through_split() {
        let name = rewind_name(&CALLER, "default", "my-env").unwrap();

        assert_eq!(
            (name.as_str(), split(&CALLER, &name)),
            ("k7.default.my-env", Some(("default", "my-env")))
        );
    }

    #[test]
    fn rewind_name_dot_in_namespace_is_refused() {
        let err = rewind_name(&CALLER, "a.b", "x").unwrap_err();

        assert_eq!(err.code(), -32001);
    }

    #[test]
    fn rewind_name_empty_namespace_is_invalid_params() {
        let err = rewind_name(&CALLER, "", "x").unwrap_err();

        assert_eq!(err.to_string(), "Invalid params: Namespace cannot be empty");
    }
}
