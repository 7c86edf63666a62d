//! The requests, one method each.

use super::dial::unexpected;
use super::*;

/// What an exec reports while it runs.
#[derive(Debug, PartialEq, Eq)]
pub enum ExecEvent<'a> {
    /// The process started; `exec_id` is what [`AgentClient::signal`] takes.
    Started {
        exec_id: u64,
        pid: i32,
    },
    Output(Stream, &'a [u8]),
}

impl AgentClient {
    /// One request/response call on a pooled connection, retried once on a
    /// fresh connection when the pooled one turns out to be dead.
    async fn call(&self, op: &'static str, req: &Request) -> Result<Response, AgentError> {
        self.call_within(op, req, self.timeouts.request).await
    }

    /// [`Self::call`] with its own time limit.
    async fn call_within(
        &self,
        op: &'static str,
        req: &Request,
        after: Duration,
    ) -> Result<Response, AgentError> {
        let (conn, pooled) = self.checkout().await?;
        match self.call_on(conn, op, req, after).await {
            Err(err) if pooled && err.is_stale_connection() => {
                self.reset();
                self.call_on(self.dial().await?, op, req, after).await
            }
            result => result,
        }
    }

    async fn call_on(
        &self,
        mut conn: Connection,
        op: &'static str,
        req: &Request,
        after: Duration,
    ) -> Result<Response, AgentError> {
        let result = tokio::time::timeout(after, conn.roundtrip(op, req))
            .await
            .map_err(|_| AgentError::Timeout { op, after })?;
        if matches!(result, Ok(_) | Err(AgentError::Remote { .. })) {
            self.checkin(conn);
        }
        result
    }

    async fn call_ok(&self, op: &'static str, req: Request) -> Result<(), AgentError> {
        match self.call(op, &req).await? {
            Response::Ok => Ok(()),
            other => Err(unexpected(op, other)),
        }
    }

    /// Liveness + version.
    pub async fn ping(&self) -> Result<PongInfo, AgentError> {
        match self.call("ping", &Request::Ping).await? {
            Response::Pong {
                protocol,
                agent_version,
                uptime_ms,
            } => Ok(PongInfo {
                protocol,
                agent_version,
                uptime_ms,
            }),
            other => Err(unexpected("ping", other)),
        }
    }

    /// Runs a process, passing output chunks to `on_output` as they come.
    pub async fn exec(
        &self,
        req: ExecRequest,
        mut on_output: impl FnMut(Stream, &[u8]),
    ) -> Result<ExitStatus, AgentError> {
        self.exec_events(req, |event| {
            if let ExecEvent::Output(stream, data) = event {
                on_output(stream, data);
            }
        })
        .await
    }

    /// Runs a process and collects all of its output.
    pub async fn exec_collect(&self, req: ExecRequest) -> Result<ExecOutput, AgentError> {
        let (mut stdout, mut stderr) = (Vec::new(), Vec::new());
        let status = self
            .exec(req, |stream, data| match stream {
                Stream::Stdout => stdout.extend_from_slice(data),
                Stream::Stderr => stderr.extend_from_slice(data),
            })
            .await?;
        Ok(ExecOutput {
            status,
            stdout,
            stderr,
        })
    }

    /// Runs a process, reporting its start (with the exec id) and output.
    /// Gives up (and drops the connection, which makes the agent kill the
    /// process group) after the exec's own timeout plus the client's slack.
    pub async fn exec_events(
        &self,
        req: ExecRequest,
        mut on_event: impl FnMut(ExecEvent<'_>),
    ) -> Result<ExitStatus, AgentError> {
        let limit = req
            .timeout_ms
            .map(|ms| Duration::from_millis(ms) + self.timeouts.exec_slack);
        let request = Request::Exec(req);
        let run = self.exec_with_retry(&request, &mut on_event);
        match limit {
            Some(after) => tokio::time::timeout(after, run)
                .await
                .map_err(|_| AgentError::Timeout { op: "exec", after })?,
            None => run.await,
        }
    }

    async fn exec_with_retry(
        &self,
        request: &Request,
        on_event: &mut impl FnMut(ExecEvent<'_>),
    ) -> Result<ExitStatus, AgentError> {
        let (conn, pooled) = self.checkout().await?;
        match self.exec_on(conn, request, on_event).await {
            Err((err, false)) if pooled && err.is_stale_connection() => {
                self.reset();
                let conn = self.dial().await?;
                self.exec_on(conn, request, on_event)
                    .await
                    .map_err(|(e, _)| e)
            }
            result => result.map_err(|(e, _)| e),
        }
    }

    /// Streams one exec. On error, also says whether the agent had answered.
    async fn exec_on(
        &self,
        mut conn: Connection,
        request: &Request,
        on_event: &mut impl FnMut(ExecEvent<'_>),
    ) -> Result<ExitStatus, (AgentError, bool)> {
        const OP: &str = "exec";
        conn.send(OP, request).await.map_err(|e| (e, false))?;
        let mut answered = false;
        loop {
            let response = conn.recv(OP).await.map_err(|e| (e, answered))?;
            answered = true;
            match response {
                Response::ExecStarted { exec_id, pid } => {
                    on_event(ExecEvent::Started { exec_id, pid })
                }
                Response::Stdout { data } => on_event(ExecEvent::Output(Stream::Stdout, &data)),
                Response::Stderr { data } => on_event(ExecEvent::Output(Stream::Stderr, &data)),
                Response::Exited(status) => {
                    self.checkin(conn);
                    return Ok(status);
                }
                Response::Error { code, message } => {
                    self.checkin(conn);
                    return Err((
                        AgentError::Remote {
                            op: OP,
                            code,
                            message,
                        },
                        true,
                    ));
                }
                other => return Err((unexpected(OP, other), true)),
            }
        }
    }

    /// Sends `signal` to the process group of a running exec.
    pub async fn signal(&self, exec_id: u64, signal: i32) -> Result<(), AgentError> {
        self.call_ok("signal", Request::Signal { exec_id, signal })
            .await
    }

    /// Writes a file (mode e.g. `0o644`), creating parents when asked.
    pub async fn write_file(
        &self,
        path: &str,
        data: Vec<u8>,
        mode: u32,
        create_dirs: bool,
    ) -> Result<(), AgentError> {
        let path = path.to_owned();
        self.call_ok(
            "write_file",
            Request::WriteFile {
                path,
                data,
                mode,
                create_dirs,
                append: false,
            },
        )
        .await
    }

    /// Appends `data` to an existing file.
    pub async fn append_file(&self, path: &str, data: Vec<u8>) -> Result<(), AgentError> {
        let req = Request::WriteFile {
            path: path.to_owned(),
            data,
            mode: 0,
            create_dirs: false,
            append: true,
        };
        self.call_ok("append_file", req).await
    }

    /// Reads up to `max_bytes` of a file from byte `offset`: (data, info,
    /// truncated), where `truncated` means bytes follow the returned ones.
    pub async fn read_file_at(
        &self,
        path: &str,
        offset: u64,
        max_bytes: u64,
    ) -> Result<(Vec<u8>, FileInfo, bool), AgentError> {
        let req = Request::ReadFile {
            path: path.to_owned(),
            max_bytes: Some(max_bytes),
            offset,
        };
        match self.call("read_file", &req).await? {
            Response::File {
                data,
                info,
                truncated,
            } => Ok((data, info, truncated)),
            other => Err(unexpected("read_file", other)),
        }
    }

    /// Removes a path (a directory tree when `recursive`).
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), AgentError> {
        let req = Request::Remove {
            path: path.to_owned(),
            recursive,
        };
        self.call_ok("remove", req).await
    }

    /// Renames `from` to `to`, replacing `to`.
    pub async fn rename(&self, from: &str, to: &str) -> Result<(), AgentError> {
        let req = Request::Rename {
            from: from.to_owned(),
            to: to.to_owned(),
        };
        self.call_ok("rename", req).await
    }

    /// Reads up to `max_bytes` of a file: (data, info, truncated).
    pub async fn read_file(
        &self,
        path: &str,
        max_bytes: Option<u64>,
    ) -> Result<(Vec<u8>, FileInfo, bool), AgentError> {
        let req = Request::ReadFile {
            path: path.to_owned(),
            max_bytes,
            offset: 0,
        };
        match self.call("read_file", &req).await? {
            Response::File {
                data,
                info,
                truncated,
            } => Ok((data, info, truncated)),
            other => Err(unexpected("read_file", other)),
        }
    }

    /// `lstat` of one path.
    pub async fn stat(&self, path: &str) -> Result<FileInfo, AgentError> {
        match self
            .call(
                "stat",
                &Request::Stat {
                    path: path.to_owned(),
                },
            )
            .await?
        {
            Response::Stat { info } => Ok(info),
            other => Err(unexpected("stat", other)),
        }
    }

    /// Lists a directory (sorted; depth-first when `recursive`).
    pub async fn list(&self, path: &str, recursive: bool) -> Result<Vec<FileInfo>, AgentError> {
        let req = Request::List {
            path: path.to_owned(),
            recursive,
        };
        match self.call("list", &req).await? {
            Response::Entries { entries } => Ok(entries),
            other => Err(unexpected("list", other)),
        }
    }

    /// Syncs (and for a block device, freezes) the workspace. Returns
    /// whether it was frozen. The agent thaws by itself after `watchdog`.
    pub async fn quiesce(&self, watchdog: Duration) -> Result<bool, AgentError> {
        let req = Request::Quiesce {
            watchdog_ms: watchdog.as_millis() as u64,
        };
        match self.call("quiesce", &req).await? {
            Response::Quiesced { frozen } => Ok(frozen),
            other => Err(unexpected("quiesce", other)),
        }
    }

    /// Undoes [`Self::quiesce`]; fine when not frozen.
    pub async fn thaw(&self) -> Result<(), AgentError> {
        self.call_ok("thaw", Request::Thaw).await
    }

    /// Unmounts the workspace, killing its holders first when asked.
    /// Returns the PIDs (agent's view) that were killed.
    pub async fn unmount_workspace(&self, kill_holders: bool) -> Result<Vec<i32>, AgentError> {
        let req = Request::UnmountWorkspace { kill_holders };
        match self.call("unmount_workspace", &req).await? {
            Response::Unmounted { killed } => Ok(killed),
            other => Err(unexpected("unmount_workspace", other)),
        }
    }

    /// Mounts the workspace again (or checks the host placed it).
    pub async fn mount_workspace(&self) -> Result<(), AgentError> {
        self.call_ok("mount_workspace", Request::MountWorkspace)
            .await
    }

    /// Runs one cell in the sandbox's REPL for its language. The call may
    /// take the cell's timeout plus the interrupt grace plus the client's
    /// exec slack.
    pub async fn repl(&self, req: ReplRequest) -> Result<ReplOutput, AgentError> {
        const OP: &str = "repl";
        let grace = REPL_INTERRUPT_GRACE + self.timeouts.exec_slack;
        let after = req
            .timeout_ms
            .map_or(Duration::from_secs(86400 * 365), Duration::from_millis)
            + grace;
        match self.call_within(OP, &Request::Repl(req), after).await? {
            Response::ReplResult(output) => Ok(output),
            other => Err(unexpected(OP, other)),
        }
    }

    /// Mixes host entropy into the guest kernel RNG.
    /// Which mount is at the workspace path now and which one the agent
    /// was given ([`crate::protocol::Request::WorkspaceId`]).
    pub async fn workspace_id(&self) -> Result<WorkspaceInfo, AgentError> {
        match self.call("workspace_id", &Request::WorkspaceId).await? {
            Response::WorkspaceId {
                mounted,
                dev,
                given,
            } => Ok(WorkspaceInfo {
                mounted,
                dev,
                given,
            }),
            other => Err(unexpected("workspace_id", other)),
        }
    }

    pub async fn reseed(&self, entropy: Vec<u8>) -> Result<(), AgentError> {
        self.call_ok("reseed", Request::Reseed { entropy }).await
    }
}
