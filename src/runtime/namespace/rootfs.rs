//! The base rootfs as the namespace runtime needs it: owned by the uid range
//! that root inside a sandbox maps to (like an unprivileged LXC container).
//! Built once from the base image (`cp -a --reflink=auto` + a chown walk that
//! keeps setuid/setgid bits) and rebuilt when the base image changes.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "base image {path} not found; build it with images/build-rootfs.sh (scripts/run.sh does)"
    )]
    MissingBase { path: PathBuf },
    #[error("copying the base image to {dest} failed: {stderr}")]
    Copy { dest: PathBuf, stderr: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

const MARKER: &str = ".rewind-shifted";

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> RootfsError + 'a {
    move |source| RootfsError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Ensure `dest` holds `base` with every owner shifted by `uid_base`.
/// Returns `dest`. Crash-safe: built in `dest.tmp`, renamed at the end.
pub fn ensure_shifted(base: &Path, dest: &Path, uid_base: u32) -> Result<PathBuf, RootfsError> {
    // Image builds publish `rootfs` as a symlink to a versioned directory:
    // resolve it, so a rebuilt image gets a new shifted copy.
    let base = &base.canonicalize().map_err(|_| RootfsError::MissingBase {
        path: base.to_owned(),
    })?;
    if !base.join("bin").exists() && !base.join("usr/bin").exists() {
        return Err(RootfsError::MissingBase {
            path: base.to_owned(),
        });
    }
    let want = marker_text(base, uid_base);
    if fs::read_to_string(dest.join(MARKER)).ok().as_deref() == Some(want.as_str()) {
        return Ok(dest.to_owned());
    }
    tracing::info!(base = %base.display(), dest = %dest.display(), uid_base, "building uid-shifted rootfs");
    let tmp = dest.with_extension("tmp");
    for stale in [&tmp, &dest.to_path_buf()] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(io("remove", stale))?;
        }
    }
    if let Some(parent) = dest.parent() {
        fs::create_dir_all(parent).map_err(io("create", parent))?;
    }
    let out = Command::new("cp")
        .args(["-a", "--reflink=auto"])
        .arg(base)
        .arg(&tmp)
        .output()
        .map_err(io("run cp for", &tmp))?;
    if !out.status.success() {
        return Err(RootfsError::Copy {
            dest: tmp,
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    shift_tree(&tmp, uid_base)?;
    fs::write(tmp.join(MARKER), &want).map_err(io("write marker in", &tmp))?;
    fs::rename(&tmp, dest).map_err(io("rename", dest))?;
    Ok(dest.to_owned())
}

/// Identity of the base image: its path, its build marker, and the shift.
fn marker_text(base: &Path, uid_base: u32) -> String {
    let complete = fs::read_to_string(base.join(".rewind-image-complete")).unwrap_or_default();
    let mtime = fs::metadata(base).map(|m| m.mtime()).unwrap_or_default();
    format!(
        "{}\n{}\n{mtime}\n{uid_base}\n",
        base.display(),
        complete.trim()
    )
}

/// Add `uid_base` to the owner and group of every entry under `root`.
pub fn shift_tree(root: &Path, uid_base: u32) -> Result<(), RootfsError> {
    let meta = fs::symlink_metadata(root).map_err(io("stat", root))?;
    shift_one(root, &meta, uid_base)?;
    if meta.is_dir() {
        for entry in fs::read_dir(root).map_err(io("list", root))? {
            let entry = entry.map_err(io("list", root))?;
            shift_tree(&entry.path(), uid_base)?;
        }
    }
    Ok(())
}

fn shift_one(path: &Path, meta: &fs::Metadata, uid_base: u32) -> Result<(), RootfsError> {
    std::os::unix::fs::lchown(
        path,
        Some(meta.uid() + uid_base),
        Some(meta.gid() + uid_base),
    )
    .map_err(io("chown", path))?;
    // chown clears setuid/setgid; put the original mode back.
    if !meta.file_type().is_symlink() && meta.mode() & 0o6000 != 0 {
        fs::set_permissions(path, fs::Permissions::from_mode(meta.mode() & 0o7777))
            .map_err(io("chmod", path))?;
    }
    Ok(())
}
