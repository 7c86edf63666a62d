//! `rewind snapshot export|import`: move a snapshot between hosts as an
//! archive (`GET /vms/:name/snapshots/:snapshot/export`,
//! `POST /vms/import?name=`). Both stream; neither holds the archive in
//! memory.

use std::fs::File;
use std::io::{self, Write};
use std::path::PathBuf;

use super::{Client, ClientError};

fn io_error(what: String) -> impl FnOnce(io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

/// Write snapshot `snapshot` of `vm` to `output` (default: stdout).
pub fn export(
    client: &Client,
    vm: &str,
    snapshot: &str,
    output: Option<PathBuf>,
) -> Result<i32, ClientError> {
    let path = format!("/vms/{vm}/snapshots/{snapshot}/export");
    let mut resp = client.send(client.request(reqwest::Method::GET, &path))?;
    let mut out: Box<dyn Write> = match &output {
        Some(path) => Box::new(
            File::create(path).map_err(io_error(format!("cannot create {}", path.display())))?,
        ),
        None => Box::new(io::stdout().lock()),
    };
    let broke = || "the export stream broke off (the archive is incomplete)".to_string();
    let bytes = resp
        .copy_to(&mut out)
        .map_err(|e| io_error(broke())(io::Error::other(e)))?;
    out.flush()
        .map_err(io_error("cannot write the archive".into()))?;
    eprintln!("exported {vm}/{snapshot}: {bytes} bytes");
    Ok(0)
}

/// Create sandbox `name` from the archive in `file` (default: stdin).
pub fn import(
    client: &Client,
    name: &str,
    file: Option<PathBuf>,
) -> Result<serde_json::Value, ClientError> {
    let body = match &file {
        Some(path) => reqwest::blocking::Body::from(
            File::open(path).map_err(io_error(format!("cannot open {}", path.display())))?,
        ),
        None => reqwest::blocking::Body::new(io::stdin()),
    };
    let req = client
        .request(reqwest::Method::POST, "/vms/import")
        .query(&[("name", name)])
        .header("content-type", "application/vnd.rewind.snapshot-archive")
        .body(body);
    let text = client
        .send(req)?
        .text()
        .map_err(|e| io_error("cannot read the answer".into())(io::Error::other(e)))?;
    Ok(serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)))
}
