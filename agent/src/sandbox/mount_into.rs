//! `rewind-agent mount-into`: clone a host directory as a detached mount
//! (`open_tree`), enter the sandbox's mount namespace and attach it there
//! (`move_mount`). Host root keeps its init-userns capabilities, and the
//! mount is not locked, so the agent can unmount it again later.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::sched::{setns, CloneFlags};

use super::{io, sys, SandboxError};

/// From `<linux/mount.h>`.
const OPEN_TREE_CLONE: libc::c_uint = 1;
const OPEN_TREE_CLOEXEC: libc::c_uint = libc::O_CLOEXEC as libc::c_uint;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// Places `source` (a host path) at `target` inside the mount namespace of
/// host process `pid`. Must run in a single-threaded process.
pub fn mount_into(pid: i32, source: &Path, target: &Path) -> Result<(), SandboxError> {
    let tree = open_tree_clone(source)?;
    let proc_dir = Path::new("/proc").join(pid.to_string());
    let root = File::open(proc_dir.join("root")).map_err(io("open", &proc_dir.join("root")))?;
    let ns = File::open(proc_dir.join("ns/mnt")).map_err(io("open", &proc_dir.join("ns/mnt")))?;
    setns(ns.as_fd(), CloneFlags::CLONE_NEWNS).map_err(sys("setns into the sandbox mount ns"))?;
    nix::unistd::fchdir(&root).map_err(sys("fchdir to the sandbox root"))?;
    nix::unistd::chroot(".").map_err(sys("chroot to the sandbox root"))?;
    move_mount(&tree, target)
}

fn c_path(path: &Path) -> Result<CString, SandboxError> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Init(format!("{path:?} has a NUL")))
}

fn open_tree_clone(source: &Path) -> Result<OwnedFd, SandboxError> {
    let path = c_path(source)?;
    let flags = OPEN_TREE_CLONE | OPEN_TREE_CLOEXEC;
    // SAFETY: open_tree(2) with a valid NUL-terminated path and plain flags;
    // it returns a new fd or -1.
    let fd = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, path.as_ptr(), flags) };
    if fd < 0 {
        return Err(io("open_tree", source)(std::io::Error::last_os_error()));
    }
    // SAFETY: the syscall just returned this fd; we are its only owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn move_mount(tree: &OwnedFd, target: &Path) -> Result<(), SandboxError> {
    let to = c_path(target)?;
    let empty = c"";
    // SAFETY: move_mount(2) with a detached-mount fd we own, an empty path
    // (MOVE_MOUNT_F_EMPTY_PATH) and a valid NUL-terminated target path.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io("move_mount onto", target)(
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}
