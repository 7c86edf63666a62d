//! `rewind` — parse configuration, set up tracing, then serve or run a CLI
//! subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use rewind::cli::{Client, ClientCommand, Target};
use rewind::config::{Config, LogFormat, Overrides};
use rewind::db::Db;

#[derive(Parser)]
#[command(name = "rewind", version, about = "Snapshot-first sandbox service")]
struct Cli {
    /// Config file (default: config/rewind.toml if present).
    #[arg(long, env = "REWIND_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(flatten)]
    overrides: OverrideArgs,
    /// Server of the client subcommands (sandbox, run, repl, shell, cp, snapshot).
    #[arg(long, env = "REWIND_URL", global = true)]
    url: Option<String>,
    /// API key of the client subcommands.
    #[arg(long, env = "REWIND_API_KEY", global = true, hide_env_values = true)]
    api_key: Option<String>,
    /// Client subcommands: print the server's JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Args)]
struct OverrideArgs {
    #[arg(long, env = "REWIND_BIND", global = true)]
    bind: Option<String>,
    #[arg(long, env = "PORT", global = true)]
    port: Option<String>,
    #[arg(long, env = "REWIND_DATA_DIR", global = true)]
    data_dir: Option<PathBuf>,
    #[arg(long, env = "DB_PATH", global = true)]
    db_path: Option<PathBuf>,
    #[arg(long, env = "REWIND_RUNTIME", global = true)]
    runtime: Option<String>,
    #[arg(long, env = "REWIND_BASE_IMAGE", global = true)]
    base_image: Option<PathBuf>,
    #[arg(long, env = "REWIND_AGENT_BINARY", global = true)]
    agent_binary: Option<PathBuf>,
    #[arg(long, env = "REWIND_CH_BINARY", global = true)]
    ch_binary: Option<PathBuf>,
    /// `text` or `json` (overrides `log.format`).
    #[arg(long, env = "REWIND_LOG_FORMAT", global = true)]
    log_format: Option<String>,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Manage API keys directly in the database (works with the server stopped).
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    #[command(flatten)]
    Client(ClientCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print it once.
    Create {
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        admin: bool,
    },
    /// List keys (prefixes only).
    List,
    /// Revoke a key by id.
    Revoke { id: i64 },
}

fn main() -> anyhow::Result<()> {
    let mut cli = Cli::parse();
    let command = cli.command.take().unwrap_or(Command::Serve);
    if let Command::Client(command) = command {
        init_tracing(LogFormat::Text);
        let flags = Target {
            url: cli.url,
            api_key: cli.api_key,
        };
        return client(flags, command, cli.json);
    }
    let config = load_config(&cli)?;
    init_tracing(config.log.format);
    match command {
        Command::Serve => tokio::runtime::Runtime::new()?.block_on(rewind::server::serve(config)),
        Command::Keys { command } => keys(&config, command),
        Command::Client(_) => unreachable!("handled above"),
    }
}

/// A client subcommand: errors go to stderr with exit 1; `run`/`repl`
/// exit with the command's own code.
fn client(flags: Target, command: ClientCommand, json: bool) -> anyhow::Result<()> {
    let result = Target::resolve(flags)
        .and_then(|target| rewind::cli::execute(&Client::new(target), command, json));
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("rewind: {}", error_chain(&e));
            std::process::exit(1)
        }
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Text lines for a terminal, or one JSON object per line (`log.format =
/// "json"`) carrying the fields of the enclosing spans — the request id
/// of every line logged while serving a request.
fn init_tracing(format: LogFormat) {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(false)
            .with_span_list(true)
            .flatten_event(true)
            .init(),
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<Config> {
    let default = PathBuf::from("config/rewind.toml");
    let path = cli
        .config
        .clone()
        .or_else(|| default.exists().then_some(default));
    let o = &cli.overrides;
    let overrides = Overrides {
        bind: o.bind.clone(),
        port: o.port.clone(),
        data_dir: o.data_dir.clone(),
        db_path: o.db_path.clone(),
        runtime: o.runtime.clone(),
        base_image: o.base_image.clone(),
        agent_binary: o.agent_binary.clone(),
        ch_binary: o.ch_binary.clone(),
    };
    let mut config = Config::load(path.as_deref(), &overrides)?;
    if let Some(format) = &o.log_format {
        config.log.format = match format.as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => anyhow::bail!("invalid value for `log.format`: `{other}` is not json or text"),
        };
    }
    Ok(config)
}

fn keys(config: &Config, command: KeysCommand) -> anyhow::Result<()> {
    let db = Db::open(&config.db_path).context("opening the database")?;
    match command {
        KeysCommand::Create { name, admin } => {
            let key = rewind::auth::generate()?;
            let row = db
                .call_sync(|c| {
                    Db::insert_key(c, name.as_deref(), &key.prefix, &key.hash, admin, false)
                })?
                .context("key was not created")?;
            println!("{}", key.secret);
            eprintln!(
                "created key id {} (admin: {}); it won't be shown again",
                row.id, row.admin
            );
        }
        KeysCommand::List => {
            for row in db.call_sync(Db::list_keys)? {
                let state = if row.revoked_at.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                let name = row.name.as_deref().unwrap_or("-");
                println!(
                    "{}\t{}...\t{}\tadmin={}\t{}\t{}",
                    row.id, row.prefix, name, row.admin, row.created_at, state
                );
            }
        }
        KeysCommand::Revoke { id } => {
            if !db.call_sync(|c| Db::revoke_key(c, id))? {
                anyhow::bail!("no active key with id {id}");
            }
            eprintln!("revoked key {id}");
        }
    }
    Ok(())
}
