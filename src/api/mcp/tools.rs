//! MCP tools and prompts. Every tool that changes a workspace answers with
//! the snapshot it left, so an agent can undo the step with
//! `restore_snapshot`. Sandbox errors come back as tool errors (the agent
//! reads the message), not as protocol errors.

use axum::http::request::Parts;
use rmcp::handler::server::router::prompt::PromptRouter;
use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::tool::{Extension, ToolCallContext};
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{
    CallToolRequestParams, CallToolResult, Content, GetPromptRequestParams, GetPromptResult,
    ListPromptsResult, ListToolsResult, PaginatedRequestParams, PromptMessage, PromptMessageRole,
    ServerCapabilities, ServerInfo,
};
use rmcp::service::{RequestContext, RoleServer};
use rmcp::{prompt, prompt_handler, prompt_router, tool, tool_router};
use rmcp::{ErrorData, ServerHandler};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::Caller;
use crate::sandbox::{ReplRequest, RunRequest, SandboxError, Sandboxes};

/// One MCP session's handler.
#[derive(Clone)]
pub struct Rewind {
    sandboxes: Sandboxes,
    tool_router: ToolRouter<Self>,
    prompt_router: PromptRouter<Self>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct SandboxArg {
    /// Sandbox name.
    pub sandbox: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RunArgs {
    pub sandbox: String,
    /// Shell command line, run with /bin/sh -c in /workspace.
    pub command: String,
    /// Seconds (default from the service config).
    pub timeout: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct CodeArgs {
    pub sandbox: String,
    /// "python" or "nodejs".
    pub language: String,
    /// Code for the sandbox's stateful interpreter (state persists between calls).
    pub code: String,
    pub timeout: Option<f64>,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct FileArgs {
    pub sandbox: String,
    /// Path; relative paths are inside /workspace.
    pub path: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct WriteArgs {
    pub sandbox: String,
    pub path: String,
    /// UTF-8 text to write.
    pub content: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct RestoreArgs {
    pub sandbox: String,
    /// Snapshot name, as returned by other tools or list_snapshots.
    pub snapshot: String,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct DiffArgs {
    pub sandbox: String,
    /// The later snapshot.
    pub snapshot: String,
    /// The earlier snapshot (default: the one just before `snapshot`, i.e.
    /// what the step that made `snapshot` changed).
    pub from: Option<String>,
    /// Also return unified diffs of small text files.
    #[serde(default)]
    pub content: bool,
}

#[derive(Debug, Deserialize, JsonSchema)]
pub struct PromptArgs {
    /// Name for the new sandbox.
    pub name: Option<String>,
}

#[derive(Debug, Serialize)]
struct RunReply {
    stdout: String,
    stderr: String,
    exit_code: i32,
    timed_out: bool,
    snapshot: String,
}

#[derive(Debug, Serialize)]
struct SnapshotReply {
    name: String,
    kind: String,
    command: Option<String>,
    exit_code: Option<i32>,
    created_at: String,
}

type ToolResult = Result<CallToolResult, ErrorData>;

fn caller(parts: &Parts) -> Result<Caller, ErrorData> {
    parts
        .extensions
        .get::<Caller>()
        .cloned()
        .ok_or_else(|| ErrorData::invalid_request("no API key on this request", None))
}

fn reply(result: Result<impl Serialize, SandboxError>) -> ToolResult {
    Ok(match result {
        Ok(value) => {
            let text = serde_json::to_string_pretty(&value).unwrap_or_default();
            CallToolResult::success(vec![Content::text(text)])
        }
        Err(e) => {
            let error = super::super::ApiError::from(e);
            super::audit::set_status(error.status_code().as_u16());
            CallToolResult::error(vec![Content::text(error.to_string())])
        }
    })
}

#[tool_router]
impl Rewind {
    pub fn new(sandboxes: Sandboxes) -> Self {
        Self {
            sandboxes,
            tool_router: Self::tool_router(),
            prompt_router: Self::prompt_router(),
        }
    }

    #[tool(
        description = "Create a sandbox (a Debian workspace with python3 and nodejs). Its first snapshot is 'initial'."
    )]
    async fn create_sandbox(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxArg>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let created = self.sandboxes.create(&caller, &a.sandbox).await;
        reply(created.map(|row| serde_json::json!({"sandbox": row.name, "snapshot": "initial"})))
    }

    #[tool(
        description = "Run a shell command in the sandbox's /workspace. Returns stdout, stderr, exit_code and the snapshot taken after it (restore it to undo later steps)."
    )]
    async fn run_command(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<RunArgs>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let req = RunRequest {
            command: a.command,
            timeout: a.timeout,
            env: Default::default(),
            cwd: None,
            ..Default::default()
        };
        let out = self.sandboxes.run(&caller, &a.sandbox, req).await;
        reply(out.map(|o| RunReply {
            stdout: o.stdout,
            stderr: o.stderr,
            exit_code: o.exit_code,
            timed_out: o.timed_out,
            snapshot: o.snapshot,
        }))
    }

    #[tool(
        description = "Run code in the sandbox's stateful REPL (python or nodejs): variables persist between calls. Returns stdout, stderr, has_error and the snapshot taken after it."
    )]
    async fn run_code(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<CodeArgs>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let req = ReplRequest {
            language: a.language,
            code: a.code,
            timeout: a.timeout,
        };
        let out = self.sandboxes.repl(&caller, &a.sandbox, req).await;
        reply(out.map(|o| {
            serde_json::json!({
                "stdout": o.stdout, "stderr": o.stderr, "has_error": o.has_error,
                "timed_out": o.timed_out, "snapshot": o.snapshot,
            })
        }))
    }

    #[tool(description = "Read a file from the sandbox (up to 1 MiB, as UTF-8 text).")]
    async fn read_file(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<FileArgs>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let read = self
            .sandboxes
            .read_small_file(&caller, &a.sandbox, &a.path)
            .await;
        reply(read.map(|(data, truncated)| {
            serde_json::json!({
                "content": String::from_utf8_lossy(&data), "truncated": truncated,
            })
        }))
    }

    #[tool(
        description = "Write a UTF-8 text file in the sandbox (parents are created). Returns the snapshot taken after it."
    )]
    async fn write_file(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<WriteArgs>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let written = self
            .sandboxes
            .write_small_file(&caller, &a.sandbox, &a.path, a.content.into_bytes())
            .await;
        reply(written.map(|snapshot| serde_json::json!({"snapshot": snapshot})))
    }

    #[tool(description = "List the sandbox's snapshots, oldest first.")]
    async fn list_snapshots(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxArg>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let listed = self.sandboxes.list_snapshots(&caller, &a.sandbox).await;
        reply(listed.map(|views| {
            views
                .into_iter()
                .map(|v| SnapshotReply {
                    name: v.row.name,
                    kind: v.row.kind,
                    command: v.row.command,
                    exit_code: v.row.exit_code,
                    created_at: v.row.created_at,
                })
                .collect::<Vec<_>>()
        }))
    }

    #[tool(
        description = "Restore the sandbox's workspace to a snapshot (undo). Later snapshots stay listed. Interpreter memory of run_code is not restored."
    )]
    async fn restore_snapshot(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<RestoreArgs>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let restored = self
            .sandboxes
            .restore(&caller, &a.sandbox, &a.snapshot)
            .await;
        reply(restored.map(|tier| serde_json::json!({"restored": a.snapshot, "tier": tier})))
    }

    #[tool(
        description = "What changed between two snapshots: the paths added, modified and deleted (from defaults to the snapshot just before, i.e. what that step did). content=true adds unified diffs of small text files."
    )]
    async fn diff(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<DiffArgs>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let from = a.from.as_deref();
        let diff = self
            .sandboxes
            .diff(&caller, &a.sandbox, &a.snapshot, from, a.content)
            .await;
        reply(diff)
    }

    #[tool(description = "Delete the sandbox and all its snapshots.")]
    async fn delete_sandbox(
        &self,
        Extension(parts): Extension<Parts>,
        Parameters(a): Parameters<SandboxArg>,
    ) -> ToolResult {
        let caller = caller(&parts)?;
        let deleted = self.sandboxes.delete(&caller, &a.sandbox).await;
        reply(deleted.map(|()| serde_json::json!({"deleted": a.sandbox})))
    }
}

#[prompt_router]
impl Rewind {
    #[prompt(
        name = "create_python_sandbox",
        description = "Set up a Python sandbox and work in it step by step"
    )]
    async fn create_python_sandbox(
        &self,
        Parameters(a): Parameters<PromptArgs>,
    ) -> Vec<PromptMessage> {
        vec![setup_message(
            "python",
            &a.name.unwrap_or_else(|| "python-sandbox".into()),
        )]
    }

    #[prompt(
        name = "create_node_sandbox",
        description = "Set up a Node.js sandbox and work in it step by step"
    )]
    async fn create_node_sandbox(
        &self,
        Parameters(a): Parameters<PromptArgs>,
    ) -> Vec<PromptMessage> {
        vec![setup_message(
            "nodejs",
            &a.name.unwrap_or_else(|| "node-sandbox".into()),
        )]
    }
}

fn setup_message(language: &str, name: &str) -> PromptMessage {
    PromptMessage::new_text(
        PromptMessageRole::User,
        format!(
            "Create a sandbox named {name:?} with create_sandbox, then run {language} code in it \
             with run_code (language {language:?}; state persists between calls) and shell \
             commands with run_command. Every step returns a snapshot name: if a step goes \
             wrong, call restore_snapshot with the snapshot of the last good step."
        ),
    )
}

/// `call_tool`, `list_tools` and `get_tool` as `#[tool_handler]` writes
/// them, with every call audited (one place for all tools).
#[prompt_handler]
impl ServerHandler for Rewind {
    async fn call_tool(
        &self,
        request: CallToolRequestParams,
        context: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let pending = super::audit::begin(&self.sandboxes, &request, &context).await;
        let call = self
            .tool_router
            .call(ToolCallContext::new(self, request, context));
        super::audit::audited(&self.sandboxes, pending, call).await
    }

    async fn list_tools(
        &self,
        _request: Option<PaginatedRequestParams>,
        _context: RequestContext<RoleServer>,
    ) -> Result<ListToolsResult, ErrorData> {
        Ok(ListToolsResult {
            tools: self.tool_router.list_all(),
            meta: None,
            next_cursor: None,
        })
    }

    fn get_tool(&self, name: &str) -> Option<rmcp::model::Tool> {
        self.tool_router.get(name).cloned()
    }

    fn get_info(&self) -> ServerInfo {
        ServerInfo {
            instructions: Some(
                "rewind: sandboxes whose every step leaves a snapshot you can restore".into(),
            ),
            capabilities: ServerCapabilities::builder()
                .enable_tools()
                .enable_prompts()
                .build(),
            ..Default::default()
        }
    }
}
