//! `rewind-agent serve | launch | mount-into`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use rewind_agent::server::{self, ListenSpec, ServerConfig};

#[derive(Parser)]
#[command(name = "rewind-agent", version, about = "The rewind sandbox agent")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the agent protocol (as PID 1 of a sandbox, or for tests).
    Serve {
        /// unix:<path>, tcp:<addr>, vsock:<port> or fd:<n>.
        #[arg(long)]
        listen: ListenSpec,
        /// Where the workspace is mounted.
        #[arg(long, default_value = rewind_agent::protocol::WORKSPACE_DIR)]
        workspace: PathBuf,
        /// ext4 block device holding the workspace (freeze/mount mode).
        #[arg(long)]
        workspace_device: Option<PathBuf>,
        /// Apply no_new_privs + the sandbox seccomp filter to every exec.
        #[arg(long)]
        seccomp: bool,
        /// Let commands create user namespaces (the seccomp filter denies it
        /// otherwise).
        #[arg(long)]
        allow_nested_userns: bool,
    },
    /// Start a namespace sandbox from a JSON LaunchSpec (host side, as root).
    Launch {
        #[arg(long)]
        spec: PathBuf,
    },
    /// Move a host directory onto a path inside a sandbox's mount namespace.
    MountInto {
        /// Host PID of a process in the sandbox (its PID 1).
        #[arg(long)]
        pid: i32,
        #[arg(long)]
        source: PathBuf,
        #[arg(long, default_value = rewind_agent::protocol::WORKSPACE_DIR)]
        target: PathBuf,
    },
}

/// A log writer that drops what it cannot write. The agent's stderr is a
/// file in the sandbox's state dir on the pool: when the pool is full (or
/// the sandbox is at its disk limit) a write fails with ENOSPC/EDQUOT, and
/// tracing's fallback `eprintln!` to the same stderr then panics, killing
/// the request's task so the host never gets its answer. Losing a log line
/// is better.
struct Lossy<W>(W);

impl<W: std::io::Write> std::io::Write for Lossy<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(self.0.write(buf).unwrap_or(buf.len()))
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.0.flush();
        Ok(())
    }
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_writer(|| Lossy(std::io::stderr()))
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REWIND_AGENT_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .init();
    match Cli::parse().command {
        Command::Serve {
            listen,
            workspace,
            workspace_device,
            seccomp,
            allow_nested_userns,
        } => {
            let config = ServerConfig {
                workspace,
                workspace_device,
                seccomp,
                allow_nested_userns,
            };
            run_server(config, &listen)
        }
        Command::Launch { spec } => {
            let spec = rewind_agent::sandbox::LaunchSpec::load(&spec)?;
            let pid = rewind_agent::sandbox::launch(&spec).context("launch sandbox")?;
            println!("{}", serde_json::json!({ "pid": pid }));
            Ok(())
        }
        Command::MountInto {
            pid,
            source,
            target,
        } => rewind_agent::sandbox::mount_into(pid, &source, &target).context("mount-into"),
    }
}

fn run_server(config: ServerConfig, listen: &ListenSpec) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("build tokio runtime")?;
    runtime.block_on(server::serve(config, listen))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::io::{self, Write};

    use super::Lossy;

    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from_raw_os_error(libc::ENOSPC))
        }
    }

    #[test]
    fn lossy_write_on_a_full_disk_drops_the_line() {
        let mut w = Lossy(Full);

        let written = w.write(b"a log line\n").unwrap();

        assert_eq!(written, 11);
        w.flush().unwrap();
    }
}
