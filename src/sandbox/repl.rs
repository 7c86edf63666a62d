//! Run one cell in a sandbox's stateful REPL, then snapshot the workspace
//! like a run does: agent REPL cell → quiesce → Btrfs snapshot → thaw →
//! snapshot row. The interpreter lives in the agent (one per language) and
//! keeps its state between cells; a restore keeps the interpreter (and so
//! its in-memory state — memory is not part of a workspace snapshot).

use std::time::Instant;

use rewind_agent::client::AgentError;
use rewind_agent::protocol::{ErrorCode, ReplLanguage, ReplRequest as AgentRepl};
use serde::Deserialize;

use super::{SandboxError, Sandboxes};
use crate::auth::Caller;

/// Body of `POST /vms/:name/repl`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplRequest {
    /// `python` or `nodejs` (`node` is accepted too).
    pub language: String,
    pub code: String,
    /// Seconds; default and maximum come from `exec` in the config.
    #[serde(default)]
    pub timeout: Option<f64>,
}

/// What a cell produced, and the snapshot taken after it.
#[derive(Debug, Clone)]
pub struct ReplResult {
    pub language: &'static str,
    pub stdout: String,
    pub stderr: String,
    pub has_error: bool,
    pub timed_out: bool,
    /// The interpreter was killed (it ignored the interrupt, or died).
    pub killed: bool,
    /// A fresh interpreter ran this cell (no state from earlier cells).
    pub started: bool,
    pub snapshot: String,
    pub exec_ms: u64,
    pub snapshot_ms: u64,
}

impl Sandboxes {
    pub async fn repl(
        &self,
        caller: &Caller,
        name: &str,
        req: ReplRequest,
    ) -> Result<ReplResult, SandboxError> {
        let mut agent_req = self.repl_request(&req)?;
        let (row, entry) = self.find_live(caller, name).await?;
        agent_req.env = self.egress_env(&row.name);
        let mut live = entry.lock().await;
        let started = Instant::now();
        let out = live
            .agent
            .repl(agent_req.clone())
            .await
            .map_err(|e| interpreter_error(agent_req.language, e))?;
        let exec_ms = started.elapsed().as_millis() as u64;
        let snap_started = Instant::now();
        let label = format!("repl {}: {}", agent_req.language.as_str(), req.code);
        let snapshot = self
            .snapshot_after(&mut live, &label, i32::from(out.has_error))
            .await?;
        Ok(ReplResult {
            language: agent_req.language.as_str(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            has_error: out.has_error,
            timed_out: out.timed_out,
            killed: out.killed,
            started: out.started,
            snapshot,
            exec_ms,
            snapshot_ms: snap_started.elapsed().as_millis() as u64,
        })
    }

    /// Validate a REPL request against the config.
    fn repl_request(&self, req: &ReplRequest) -> Result<AgentRepl, SandboxError> {
        let e = &self.config.exec;
        let invalid = |field, message: String| Err(SandboxError::Invalid { field, message });
        let language = match parse_language(&req.language) {
            Some(language) => language,
            None => return invalid("language", "must be \"python\" or \"nodejs\"".into()),
        };
        if req.code.len() > e.max_command_bytes {
            let max = e.max_command_bytes;
            return invalid("code", format!("is longer than {max} bytes"));
        }
        if req.code.contains('\0') {
            return invalid("code", "must not contain NUL".into());
        }
        let timeout = req.timeout.unwrap_or(e.default_timeout_secs as f64);
        if !timeout.is_finite() || timeout <= 0.0 || timeout > e.max_timeout_secs as f64 {
            let max = e.max_timeout_secs;
            return invalid("timeout", format!("must be > 0 and <= {max} seconds"));
        }
        Ok(AgentRepl {
            language,
            code: req.code.clone(),
            timeout_ms: Some((timeout * 1000.0) as u64),
            max_output_bytes: Some(e.max_output_bytes),
            env: Default::default(),
        })
    }
}

/// `python` / `nodejs` (and `node`), as microsandbox spells them.
pub fn parse_language(language: &str) -> Option<ReplLanguage> {
    match language {
        "python" => Some(ReplLanguage::Python),
        "nodejs" | "node" => Some(ReplLanguage::Nodejs),
        _ => None,
    }
}

/// An interpreter missing from the image is the caller's problem (400),
/// not a dead sandbox.
fn interpreter_error(language: ReplLanguage, e: AgentError) -> SandboxError {
    match e {
        AgentError::Remote {
            code: ErrorCode::NotFound,
            ..
        } => SandboxError::Invalid {
            field: "language",
            message: format!(
                "no {} interpreter in this sandbox's image",
                language.as_str()
            ),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_language_accepts_microsandbox_names() {
        let got = ["python", "nodejs", "node", "ruby"].map(parse_language);

        assert_eq!(
            got,
            [
                Some(ReplLanguage::Python),
                Some(ReplLanguage::Nodejs),
                Some(ReplLanguage::Nodejs),
                None
            ]
        );
    }
}
