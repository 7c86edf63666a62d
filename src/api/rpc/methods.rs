//! The five microsandbox methods, each decoding its params struct and
//! calling one `sandbox::` operation.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::names::{check_namespace_filter, rewind_name, split};
use super::RpcError;
use crate::api::AppState;
use crate::auth::Caller;
use crate::db::SandboxStatus;
use crate::sandbox::{ReplRequest, RunRequest, SandboxError};

/// Images that map onto rewind's base image (it has python3 and nodejs).
const IMAGES: &[&str] = &["microsandbox/python", "microsandbox/node", "base"];

pub async fn call(
    state: &AppState,
    caller: &Caller,
    method: &str,
    params: Value,
) -> Result<Value, RpcError> {
    let value = match method {
        "sandbox.start" => to_value(start(state, caller, decode(params)?).await?),
        "sandbox.stop" => to_value(stop(state, caller, decode(params)?).await?),
        "sandbox.metrics.get" => to_value(metrics(state, caller, decode(params)?).await?),
        "sandbox.repl.run" => to_value(repl(state, caller, decode(params)?).await?),
        "sandbox.command.run" => to_value(command(state, caller, decode(params)?).await?),
        other => return Err(RpcError::MethodNotFound(other.to_owned())),
    };
    Ok(value)
}

fn decode<T: DeserializeOwned>(params: Value) -> Result<T, RpcError> {
    serde_json::from_value(params).map_err(|e| RpcError::InvalidParams(e.to_string()))
}

fn to_value(value: impl Serialize) -> Value {
    serde_json::to_value(value).unwrap_or(Value::Null)
}

#[derive(Debug, Deserialize)]
struct Target {
    sandbox: String,
    namespace: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartParams {
    sandbox: String,
    namespace: String,
    #[serde(default)]
    config: StartConfig,
}

/// `config` of `sandbox.start`. `memory` and `cpus` are accepted and not
/// applied (the service-wide `limits` hold); fields rewind cannot honour
/// are refused when set, naming the field.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartConfig {
    image: Option<String>,
    memory: Option<u64>,
    cpus: Option<f64>,
    #[serde(default)]
    volumes: Vec<String>,
    #[serde(default)]
    ports: Vec<String>,
    #[serde(default)]
    envs: Vec<String>,
    #[serde(default)]
    depends_on: Vec<String>,
    workdir: Option<String>,
    shell: Option<String>,
    #[serde(default)]
    scripts: std::collections::BTreeMap<String, String>,
    exec: Option<String>,
}

impl StartConfig {
    fn check(&self) -> Result<(), RpcError> {
        let image = self.image.as_deref().unwrap_or("base");
        let known = IMAGES
            .iter()
            .any(|i| image == *i || image.starts_with(&format!("{i}:")));
        if !known {
            return Err(RpcError::Validation(format!(
                "config.image {image:?} is not available; use one of {IMAGES:?}"
            )));
        }
        let unsupported = [
            ("volumes", !self.volumes.is_empty()),
            ("ports", !self.ports.is_empty()),
            ("envs", !self.envs.is_empty()),
            ("depends_on", !self.depends_on.is_empty()),
            (
                "workdir",
                self.workdir.as_deref().is_some_and(|w| w != "/workspace"),
            ),
            ("shell", self.shell.is_some()),
            ("scripts", !self.scripts.is_empty()),
        ];
        match unsupported.iter().find(|(_, set)| *set) {
            Some((field, _)) => Err(RpcError::Validation(format!(
                "config.{field} is not supported by rewind"
            ))),
            None => Ok(()),
        }
    }
}

/// Creates the sandbox (or finds it running), then runs `config.exec`.
async fn start(state: &AppState, caller: &Caller, p: StartParams) -> Result<String, RpcError> {
    let name = rewind_name(caller, &p.namespace, &p.sandbox)?;
    p.config.check()?;
    let _ = (p.config.memory, p.config.cpus);
    match state.sandboxes.find(caller, &name).await {
        Ok(_) => {}
        Err(SandboxError::NotFound(_)) => {
            state.sandboxes.create(caller, &name).await?;
        }
        Err(e) => return Err(e.into()),
    }
    if let Some(exec) = p.config.exec {
        let req = RunRequest {
            command: exec,
            timeout: None,
            env: Default::default(),
            cwd: None,
            ..Default::default()
        };
        state.sandboxes.run(caller, &name, req).await?;
    }
    Ok(format!("Sandbox {} started successfully", p.sandbox))
}

async fn stop(state: &AppState, caller: &Caller, p: Target) -> Result<String, RpcError> {
    let name = rewind_name(caller, &p.namespace, &p.sandbox)?;
    state.sandboxes.delete(caller, &name).await?;
    Ok(format!("Sandbox {} stopped successfully", p.sandbox))
}

#[derive(Debug, Deserialize)]
struct MetricsParams {
    namespace: String,
    #[serde(default)]
    sandbox: Option<String>,
}

#[derive(Debug, Serialize)]
struct Metrics {
    sandboxes: Vec<SandboxMetrics>,
}

/// Usage numbers are `null`: rewind does not measure them per sandbox.
#[derive(Debug, Serialize)]
struct SandboxMetrics {
    namespace: String,
    name: String,
    running: bool,
    cpu_usage: Option<f64>,
    memory_usage: Option<f64>,
    disk_usage: Option<u64>,
    /// Extension: the rewind sandbox name, for the REST API.
    rewind_name: String,
}

async fn metrics(state: &AppState, caller: &Caller, p: MetricsParams) -> Result<Metrics, RpcError> {
    check_namespace_filter(&p.namespace)?;
    let rows = state.sandboxes.list(caller).await?;
    let sandboxes = rows
        .into_iter()
        .filter_map(|row| {
            let (ns, name) = split(caller, &row.name)?;
            let wanted = (p.namespace == "*" || p.namespace == ns)
                && p.sandbox.as_deref().is_none_or(|s| s == name);
            wanted.then(|| SandboxMetrics {
                namespace: ns.to_owned(),
                name: name.to_owned(),
                running: row.status == SandboxStatus::Running,
                cpu_usage: None,
                memory_usage: None,
                disk_usage: None,
                rewind_name: row.name.clone(),
            })
        })
        .collect();
    Ok(Metrics { sandboxes })
}

#[derive(Debug, Deserialize)]
struct ReplParams {
    sandbox: String,
    namespace: String,
    language: String,
    code: String,
    #[serde(default)]
    timeout: Option<f64>,
}

/// One line of output as the microsandbox SDK reads it.
#[derive(Debug, Serialize)]
struct Line {
    stream: &'static str,
    text: String,
}

fn lines(stdout: &str, stderr: &str) -> Vec<Line> {
    let tag = |stream| {
        move |text: &str| Line {
            stream,
            text: text.to_owned(),
        }
    };
    let out = stdout.lines().map(tag("stdout"));
    out.chain(stderr.lines().map(tag("stderr"))).collect()
}

#[derive(Debug, Serialize)]
struct ReplReply {
    status: &'static str,
    language: &'static str,
    output: Vec<Line>,
    /// The document's fields, next to the SDK's `output` list.
    stdout: String,
    error: String,
    has_error: bool,
    timed_out: bool,
    /// The rewind snapshot taken after the cell.
    snapshot: String,
}

async fn repl(state: &AppState, caller: &Caller, p: ReplParams) -> Result<ReplReply, RpcError> {
    let name = rewind_name(caller, &p.namespace, &p.sandbox)?;
    let req = ReplRequest {
        language: p.language,
        code: p.code,
        timeout: p.timeout,
    };
    let out = state.sandboxes.repl(caller, &name, req).await?;
    Ok(ReplReply {
        status: if out.has_error { "error" } else { "success" },
        language: out.language,
        output: lines(&out.stdout, &out.stderr),
        has_error: out.has_error,
        timed_out: out.timed_out,
        snapshot: out.snapshot,
        stdout: out.stdout,
        error: out.stderr,
    })
}

#[derive(Debug, Deserialize)]
struct CommandParams {
    sandbox: String,
    namespace: String,
    command: String,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    timeout: Option<f64>,
}

#[derive(Debug, Serialize)]
struct CommandReply {
    command: String,
    args: Vec<String>,
    exit_code: i32,
    success: bool,
    output: Vec<Line>,
    stdout: String,
    error: String,
    timed_out: bool,
    snapshot: String,
}

/// `command` + `args` run without a shell: each word is single-quoted.
async fn command(
    state: &AppState,
    caller: &Caller,
    p: CommandParams,
) -> Result<CommandReply, RpcError> {
    let name = rewind_name(caller, &p.namespace, &p.sandbox)?;
    if p.command.is_empty() {
        return Err(RpcError::InvalidParams("command cannot be empty".into()));
    }
    let words = std::iter::once(&p.command).chain(&p.args);
    let line = words.map(|w| quote(w)).collect::<Vec<_>>().join(" ");
    let req = RunRequest {
        command: format!("exec {line}"),
        timeout: p.timeout,
        env: Default::default(),
        cwd: None,
        ..Default::default()
    };
    let out = state.sandboxes.run(caller, &name, req).await?;
    Ok(CommandReply {
        command: p.command,
        args: p.args,
        exit_code: out.exit_code,
        success: out.exit_code == 0,
        output: lines(&out.stdout, &out.stderr),
        timed_out: out.timed_out,
        snapshot: out.snapshot,
        stdout: out.stdout,
        error: out.stderr,
    })
}

/// One shell word, taken literally.
fn quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quote_single_quote_is_escaped() {
        assert_eq!(quote("it's $HOME"), r"'it'\''s $HOME'");
    }

    #[test]
    fn lines_tags_each_line_with_its_stream() {
        let got = lines("a\nb\n", "e\n");

        let tagged: Vec<_> = got.iter().map(|l| (l.stream, l.text.as_str())).collect();
        assert_eq!(tagged, [("stdout", "a"), ("stdout", "b"), ("stderr", "e")]);
    }
}
