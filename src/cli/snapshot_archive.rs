//! `rewind snapshot export|import`: move a snapshot between hosts as an
//! archive (`GET /vms/:name/snapshots/:snapshot/export`,
//! `POST /vms/import?name=`). Both stream; neither holds the archive in
//! memory.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::{Args, Subcommand};

/// Where the service is and who is asking.
#[derive(Args, Debug, Clone)]
pub struct Server {
    /// Base URL of the rewind service.
    #[arg(long, env = "REWIND_URL", default_value = "http://127.0.0.1:4000")]
    pub url: String,
    /// API key (x-api-key).
    #[arg(long, env = "REWIND_API_KEY", hide_env_values = true)]
    pub api_key: String,
}

/// Archive subcommands of `rewind snapshot`.
#[derive(Subcommand, Debug)]
pub enum ArchiveCommand {
    /// Write snapshot SNAPSHOT of sandbox VM as an archive (zstd btrfs send
    /// stream with a SHA-256 trailer).
    Export {
        #[command(flatten)]
        server: Server,
        vm: String,
        snapshot: String,
        /// Output file (default: standard output).
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Create sandbox NAME from an archive; its `initial` snapshot is the
    /// archived state.
    Import {
        #[command(flatten)]
        server: Server,
        name: String,
        /// Archive file (default: standard input).
        file: Option<PathBuf>,
    },
}

/// Runs one archive subcommand.
pub fn run(command: ArchiveCommand) -> anyhow::Result<()> {
    let http = reqwest::blocking::Client::builder()
        .timeout(None)
        .build()
        .context("building the HTTP client")?;
    match command {
        ArchiveCommand::Export {
            server,
            vm,
            snapshot,
            output,
        } => export(&http, &server, &vm, &snapshot, output),
        ArchiveCommand::Import { server, name, file } => import(&http, &server, &name, file),
    }
}

fn export(
    http: &reqwest::blocking::Client,
    server: &Server,
    vm: &str,
    snapshot: &str,
    output: Option<PathBuf>,
) -> anyhow::Result<()> {
    let url = format!("{}/vms/{vm}/snapshots/{snapshot}/export", server.url);
    let mut resp = http
        .get(&url)
        .header("x-api-key", &server.api_key)
        .send()
        .with_context(|| format!("GET {url}"))?;
    if !resp.status().is_success() {
        bail!(
            "export failed: {} {}",
            resp.status(),
            resp.text().unwrap_or_default()
        );
    }
    let mut out: Box<dyn Write> = match &output {
        Some(path) => {
            Box::new(File::create(path).with_context(|| format!("creating {}", path.display()))?)
        }
        None => Box::new(io::stdout().lock()),
    };
    let bytes = resp
        .copy_to(&mut out)
        .context("the export stream broke off (the archive is incomplete)")?;
    out.flush().context("writing the archive")?;
    eprintln!("exported {vm}/{snapshot}: {bytes} bytes");
    Ok(())
}

fn import(
    http: &reqwest::blocking::Client,
    server: &Server,
    name: &str,
    file: Option<PathBuf>,
) -> anyhow::Result<()> {
    let body = match &file {
        Some(path) => reqwest::blocking::Body::from(
            File::open(path).with_context(|| format!("opening {}", path.display()))?,
        ),
        None => reqwest::blocking::Body::new(io::stdin()),
    };
    let url = format!("{}/vms/import", server.url);
    let resp = http
        .post(&url)
        .query(&[("name", name)])
        .header("x-api-key", &server.api_key)
        .header("content-type", "application/vnd.rewind.snapshot-archive")
        .body(body)
        .send()
        .with_context(|| format!("POST {url}"))?;
    let status = resp.status();
    let text = resp.text().unwrap_or_default();
    if !status.is_success() {
        bail!("import failed: {status} {text}");
    }
    println!("{text}");
    Ok(())
}
