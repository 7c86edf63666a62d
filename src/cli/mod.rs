//! `rewind` CLI client subcommands: talk to a running server over its REST
//! API. Where to: `--url` / `REWIND_URL`, key: `--api-key` /
//! `REWIND_API_KEY`, else `url` / `api_key` in `$XDG_CONFIG_HOME/rewind/
//! client.toml` (`~/.config/rewind/client.toml`), else
//! `http://127.0.0.1:4000` and no key. Human output by default, `--json`
//! prints the server's JSON. Errors name the problem and exit 1; `run`,
//! `repl` and `shell` exit with the command's exit code.

mod client;
mod commands;
mod copy;
mod shell;
mod snapshot_archive;
mod snapshot_diff;
mod stream_run;

pub use client::{Client, ClientError, Target};
pub use commands::{execute, ClientCommand, SandboxCommand, SnapshotCommand};
