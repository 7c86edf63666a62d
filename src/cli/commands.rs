//! The client subcommands and what each prints.

use clap::Subcommand;
use serde_json::{json, Value};

use super::stream_run::RunBody;
use super::{Client, ClientError};

#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Create, list, show and delete sandboxes.
    Sandbox {
        #[command(subcommand)]
        command: SandboxCommand,
    },
    /// Run a shell command in a sandbox, printing its output as it comes
    /// (`--json`: one JSON answer at the end); exits with its exit code.
    Run {
        sandbox: String,
        /// Seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// The command (words are joined with spaces and run by /bin/sh -c).
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Run code in the sandbox's stateful REPL; exits 1 when it raised.
    Repl {
        sandbox: String,
        #[arg(long, default_value = "python")]
        language: String,
        #[arg(long)]
        timeout: Option<f64>,
        code: String,
    },
    /// List, restore, fork, diff, export and import snapshots.
    Snapshot {
        #[command(subcommand)]
        command: SnapshotCommand,
    },
    /// An interactive terminal in the sandbox (raw mode when stdin is a
    /// terminal; piped stdin otherwise, its end sent as Ctrl-D); exits
    /// with the session's exit code.
    Shell {
        sandbox: String,
        /// Run this command line instead of a login shell.
        #[arg(long)]
        command: Option<String>,
    },
    /// Copy files or directories: `cp <local> <sandbox>:<path>` or
    /// `cp <sandbox>:<path> <local>`.
    Cp { source: String, dest: String },
}

#[derive(Debug, Subcommand)]
pub enum SandboxCommand {
    Create { name: String },
    List,
    Show { name: String },
    Delete { name: String },
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    List {
        sandbox: String,
    },
    Restore {
        sandbox: String,
        snapshot: String,
    },
    /// New sandbox `new` starting from the snapshot.
    Fork {
        sandbox: String,
        snapshot: String,
        new: String,
    },
    /// Write the snapshot as an archive (zstd `btrfs send` stream with a
    /// SHA-256 trailer) to `--output` or standard output.
    Export {
        sandbox: String,
        snapshot: String,
        #[arg(short, long)]
        output: Option<std::path::PathBuf>,
    },
    /// What changed from snapshot `a` to `b` (or in the step that made `a`).
    Diff {
        sandbox: String,
        a: String,
        b: Option<String>,
        /// Include unified diffs of small text files.
        #[arg(long)]
        content: bool,
    },
    /// Create sandbox `name` from an archive (a file, or standard input);
    /// its `initial` snapshot is the archived state.
    Import {
        name: String,
        file: Option<std::path::PathBuf>,
    },
}

/// Runs one subcommand; returns the process exit code.
pub fn execute(
    client: &Client,
    command: ClientCommand,
    json_out: bool,
) -> Result<i32, ClientError> {
    match command {
        ClientCommand::Sandbox { command } => sandbox(client, command, json_out),
        ClientCommand::Snapshot { command } => snapshot(client, command, json_out),
        ClientCommand::Shell { sandbox, command } => {
            super::shell::shell(client, &sandbox, command.as_deref(), json_out)
        }
        ClientCommand::Cp { source, dest } => super::copy::copy(client, &source, &dest, json_out),
        ClientCommand::Run {
            sandbox,
            timeout,
            command,
        } if !json_out => {
            let body = RunBody {
                command: command.join(" "),
                timeout,
            };
            super::stream_run::run(client, &sandbox, &body)
        }
        ClientCommand::Run {
            sandbox,
            timeout,
            command,
        } => {
            let body = json!({"command": command.join(" "), "timeout": timeout});
            let out = client.call("POST", &format!("/vms/{sandbox}/run"), Some(body))?;
            print_output(&out, json_out);
            Ok(out["exitCode"].as_i64().unwrap_or(1) as i32)
        }
        ClientCommand::Repl {
            sandbox,
            language,
            timeout,
            code,
        } => {
            let body = json!({"language": language, "code": code, "timeout": timeout});
            let out = client.call("POST", &format!("/vms/{sandbox}/repl"), Some(body))?;
            print_output(&out, json_out);
            Ok(i32::from(out["hasError"].as_bool().unwrap_or(true)))
        }
    }
}

fn sandbox(client: &Client, command: SandboxCommand, json_out: bool) -> Result<i32, ClientError> {
    let out = match command {
        SandboxCommand::Create { name } => {
            client.call("POST", "/vms", Some(json!({"name": name})))?
        }
        SandboxCommand::List => client.call("GET", "/vms", None)?,
        SandboxCommand::Show { name } => client.call("GET", &format!("/vms/{name}"), None)?,
        SandboxCommand::Delete { name } => client.call("DELETE", &format!("/vms/{name}"), None)?,
    };
    if json_out {
        println!("{out}");
    } else if let Some(vms) = out["vms"].as_array() {
        println!("NAME\tSTATUS\tCREATED");
        for vm in vms {
            println!(
                "{}\t{}\t{}",
                text(&vm["name"]),
                text(&vm["status"]),
                text(&vm["created_at"])
            );
        }
    } else if let Some(message) = out["message"].as_str() {
        println!("{message}");
    } else {
        println!("{}\t{}", text(&out["name"]), text(&out["status"]));
    }
    Ok(0)
}

fn snapshot(client: &Client, command: SnapshotCommand, json_out: bool) -> Result<i32, ClientError> {
    let out = match command {
        SnapshotCommand::List { sandbox } => {
            client.call("GET", &format!("/vms/{sandbox}/snapshots"), None)?
        }
        SnapshotCommand::Restore { sandbox, snapshot } => client.call(
            "POST",
            &format!("/vms/{sandbox}/snapshots/{snapshot}/restore"),
            None,
        )?,
        SnapshotCommand::Fork {
            sandbox,
            snapshot,
            new,
        } => client.call(
            "POST",
            &format!("/vms/{sandbox}/snapshots/{snapshot}/fork"),
            Some(json!({"name": new})),
        )?,
        SnapshotCommand::Export {
            sandbox,
            snapshot,
            output,
        } => return super::snapshot_archive::export(client, &sandbox, &snapshot, output),
        SnapshotCommand::Diff {
            sandbox,
            a,
            b,
            content,
        } => {
            let pair = (a.as_str(), b.as_deref());
            return super::snapshot_diff::diff(client, &sandbox, pair, content, json_out);
        }
        SnapshotCommand::Import { name, file } => {
            super::snapshot_archive::import(client, &name, file)?
        }
    };
    if json_out {
        println!("{out}");
    } else if let Some(snaps) = out["snapshots"].as_array() {
        println!("SNAPSHOT\tKIND\tEXIT\tCOMMAND");
        for s in snaps {
            let fields = [
                &s["snapshot_name"],
                &s["kind"],
                &s["exit_code"],
                &s["command"],
            ];
            println!("{}", fields.map(text).join("\t"));
        }
    } else if let Some(message) = out["message"].as_str() {
        println!("{message}");
    } else {
        println!("{}\t{}", text(&out["name"]), text(&out["status"]));
    }
    Ok(0)
}

/// stdout to stdout, stderr to stderr (or the JSON), then the snapshot.
fn print_output(out: &Value, json_out: bool) {
    if json_out {
        println!("{out}");
        return;
    }
    print!("{}", text(&out["stdout"]));
    eprint!("{}", text(&out["stderr"]));
    eprintln!("[rewind] snapshot {}", text(&out["snapshot"]));
}

fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}
