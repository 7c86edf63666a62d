//! `rewind cp`: files both ways between this machine and a sandbox, over
//! the native file routes (`PUT`/`GET /vms/:name/files`, `GET
//! /vms/:name/files/list`). One side is `<sandbox>:<path>` (relative paths
//! are in `/workspace`), the other a local path. Directories are copied
//! whole, like `cp -r`: into `<dest>/<name>` when `<dest>` is an existing
//! local directory (or a remote path ending in `/`), else as `<dest>`.
//! The API writes files only: symlinks and special files are skipped on
//! upload (with a note), empty directories are not created in the sandbox.
//! Both directions stream; each uploaded file leaves a snapshot.

use std::fs::{self, File};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{Client, ClientError};

/// One side of the copy.
#[derive(Debug, PartialEq)]
enum Place {
    Remote { sandbox: String, path: String },
    Local(PathBuf),
}

/// `<sandbox>:<path>` when the part before the first `:` could be a
/// sandbox name (no `/`); else a local path (write `./a:b` for a local
/// file with a colon).
fn place(arg: &str) -> Place {
    match arg.split_once(':') {
        Some((sandbox, path)) if !sandbox.is_empty() && !sandbox.contains('/') => Place::Remote {
            sandbox: sandbox.to_owned(),
            path: if path.is_empty() { "/workspace" } else { path }.to_owned(),
        },
        _ => Place::Local(PathBuf::from(arg)),
    }
}

/// What one copied file became.
#[derive(Debug, Serialize)]
struct Copied {
    from: String,
    to: String,
    size_bytes: u64,
    /// The snapshot an upload left.
    #[serde(skip_serializing_if = "Option::is_none")]
    snapshot: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Written {
    snapshot: String,
}

#[derive(Debug, Deserialize)]
struct Listing {
    path: String,
    files: Vec<Entry>,
}

#[derive(Debug, Deserialize)]
struct Entry {
    path: String,
    #[serde(rename = "type")]
    kind: String,
    permissions: String,
    symlink_target: Option<String>,
}

/// Copies `src` to `dst`; prints one line per file (or the JSON list).
pub fn copy(client: &Client, src: &str, dst: &str, json_out: bool) -> Result<i32, ClientError> {
    let copied = match (place(src), place(dst)) {
        (Place::Local(local), Place::Remote { sandbox, path }) => {
            upload(client, &local, &sandbox, &path)?
        }
        (Place::Remote { sandbox, path }, Place::Local(local)) => {
            download(client, &sandbox, &path, &local)?
        }
        _ => {
            return Err(ClientError::Usage(
                "cp: one side must be <sandbox>:<path> and the other a local path".into(),
            ))
        }
    };
    if json_out {
        println!("{}", serde_json::to_string(&copied).unwrap_or_default());
        return Ok(0);
    }
    for c in &copied {
        let snapshot = c.snapshot.as_deref().unwrap_or("-");
        println!("{}\t{}\t{} bytes\t{snapshot}", c.from, c.to, c.size_bytes);
    }
    Ok(0)
}

fn local_error(what: String) -> impl FnOnce(io::Error) -> ClientError {
    move |source| ClientError::Io { what, source }
}

fn base_name(path: &str) -> &str {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or(path)
}

// ------------------------------------------------------------------ upload

fn upload(
    client: &Client,
    local: &Path,
    sandbox: &str,
    path: &str,
) -> Result<Vec<Copied>, ClientError> {
    let meta = fs::metadata(local).map_err(local_error(format!("{}", local.display())))?;
    let name = local.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let target = match path.ends_with('/') {
        true => format!("{path}{name}"),
        false => path.to_owned(),
    };
    if !meta.is_dir() {
        return Ok(vec![put(client, local, sandbox, &target)?]);
    }
    let mut files = Vec::new();
    walk(local, &mut files)?;
    files
        .iter()
        .map(|file| {
            let rel = file.strip_prefix(local).unwrap_or(file).to_string_lossy();
            put(client, file, sandbox, &format!("{target}/{rel}"))
        })
        .collect()
}

/// The regular files under `dir`, sorted; notes what it skips.
fn walk(dir: &Path, files: &mut Vec<PathBuf>) -> Result<(), ClientError> {
    let read = fs::read_dir(dir).map_err(local_error(format!("{}", dir.display())))?;
    let mut entries: Vec<PathBuf> = read.filter_map(|e| e.ok().map(|e| e.path())).collect();
    entries.sort();
    for path in entries {
        let meta =
            fs::symlink_metadata(&path).map_err(local_error(format!("{}", path.display())))?;
        if meta.is_dir() {
            walk(&path, files)?;
        } else if meta.is_file() {
            files.push(path);
        } else {
            eprintln!("rewind: skipped {} (not a regular file)", path.display());
        }
    }
    Ok(())
}

/// Streams local file `file` to `path`, keeping its permission bits.
fn put(client: &Client, file: &Path, sandbox: &str, path: &str) -> Result<Copied, ClientError> {
    let open = File::open(file).map_err(local_error(format!("{}", file.display())))?;
    let meta = open
        .metadata()
        .map_err(local_error(format!("{}", file.display())))?;
    let mode = format!("{:04o}", meta.permissions().mode() & 0o7777);
    let req = client
        .request(reqwest::Method::PUT, &format!("/vms/{sandbox}/files"))
        .query(&[("path", path), ("mode", mode.as_str())])
        .body(reqwest::blocking::Body::from(open));
    let written: Written = client.send(req)?.json().map_err(|e| ClientError::Io {
        what: format!("unexpected answer to the upload of {}", file.display()),
        source: io::Error::other(e),
    })?;
    Ok(Copied {
        from: file.display().to_string(),
        to: format!("{sandbox}:{path}"),
        size_bytes: meta.len(),
        snapshot: Some(written.snapshot),
    })
}

// ---------------------------------------------------------------- download

fn download(
    client: &Client,
    sandbox: &str,
    path: &str,
    local: &Path,
) -> Result<Vec<Copied>, ClientError> {
    let into = match local.is_dir() {
        true => local.join(base_name(path)),
        false => local.to_owned(),
    };
    match list(client, sandbox, path) {
        Ok(listing) => download_dir(client, sandbox, &listing, &into),
        // 400 "not a directory": a file (a missing path is a 404 here).
        Err(ClientError::Server { status: 400, .. }) => {
            Ok(vec![get(client, sandbox, path, &into)?])
        }
        Err(e) => Err(e),
    }
}

fn list(client: &Client, sandbox: &str, path: &str) -> Result<Listing, ClientError> {
    let req = client
        .request(reqwest::Method::GET, &format!("/vms/{sandbox}/files/list"))
        .query(&[("path", path), ("recursive", "true")]);
    client.send(req)?.json().map_err(|e| ClientError::Io {
        what: format!("unexpected listing of {sandbox}:{path}"),
        source: io::Error::other(e),
    })
}

fn download_dir(
    client: &Client,
    sandbox: &str,
    listing: &Listing,
    into: &Path,
) -> Result<Vec<Copied>, ClientError> {
    let mkdir = |dir: &Path| {
        fs::create_dir_all(dir).map_err(local_error(format!("cannot create {}", dir.display())))
    };
    mkdir(into)?;
    let mut copied = Vec::new();
    let prefix = format!("{}/", listing.path.trim_end_matches('/'));
    for entry in &listing.files {
        let rel = entry.path.strip_prefix(&prefix).unwrap_or(&entry.path);
        let dest = into.join(rel);
        match (entry.kind.as_str(), &entry.symlink_target) {
            ("directory", _) => mkdir(&dest)?,
            ("file", _) => {
                copied.push(get(client, sandbox, &entry.path, &dest)?);
                let mode = u32::from_str_radix(&entry.permissions, 8).unwrap_or(0o644);
                fs::set_permissions(&dest, fs::Permissions::from_mode(mode))
                    .map_err(local_error(format!("chmod {}", dest.display())))?;
            }
            ("symlink", Some(target)) => std::os::unix::fs::symlink(target, &dest)
                .map_err(local_error(format!("cannot create {}", dest.display())))?,
            _ => eprintln!("rewind: skipped {sandbox}:{} ({})", entry.path, entry.kind),
        }
    }
    Ok(copied)
}

/// Streams file `path` of the sandbox into local file `dest`.
fn get(client: &Client, sandbox: &str, path: &str, dest: &Path) -> Result<Copied, ClientError> {
    let req = client
        .request(reqwest::Method::GET, &format!("/vms/{sandbox}/files"))
        .query(&[("path", path)]);
    let mut resp = client.send(req)?;
    let mut out =
        File::create(dest).map_err(local_error(format!("cannot create {}", dest.display())))?;
    let size = resp.copy_to(&mut out).map_err(|e| ClientError::Io {
        what: format!("the download of {sandbox}:{path} broke off"),
        source: io::Error::other(e),
    })?;
    Ok(Copied {
        from: format!("{sandbox}:{path}"),
        to: dest.display().to_string(),
        size_bytes: size,
        snapshot: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn place_sandbox_colon_path_is_remote() {
        assert_eq!(
            place("box:src/a.txt"),
            Place::Remote {
                sandbox: "box".into(),
                path: "src/a.txt".into()
            }
        );
    }

    #[test]
    fn place_with_a_slash_before_the_colon_is_local() {
        assert_eq!(place("./a:b"), Place::Local(PathBuf::from("./a:b")));
    }

    #[test]
    fn place_sandbox_colon_nothing_is_the_workspace() {
        assert_eq!(
            place("box:"),
            Place::Remote {
                sandbox: "box".into(),
                path: "/workspace".into()
            }
        );
    }
}
