//! The sandbox's PID 1 (child B of `launch`): build the root file system in
//! its own mount namespace, pivot into it, bring `lo` up, report to
//! `launch`, then serve the agent protocol on the inherited socket.

use std::fs::{self, File};
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use super::{chain, io, sys, LaunchSpec, SandboxError};
use crate::server::{ListenSpec, ServerConfig};

/// Device nodes bound from the host into the sandbox's `/dev`.
const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Runs PID 1: set up, report, serve. Returns the process exit code.
pub fn run(spec: &LaunchSpec, listener: RawFd, mut status: File) -> i32 {
    close_other_fds(&[listener, status.as_raw_fd()]);
    let setup = nix::unistd::setsid()
        .map_err(sys("setsid"))
        .and_then(|_| setup_root(spec))
        .and_then(|()| loopback_up());
    if let Err(err) = setup {
        super::report(&mut status, &format!("err {}", chain(&err)));
        return 1;
    }
    super::report(&mut status, "ok");
    drop(status);
    serve(listener, spec.allow_nested_userns)
}

/// Closes every fd above stderr except `keep`: PID 1 must not hold the
/// launcher's pipe ends (launch waits for EOF) nor anything the service or
/// its test harness leaked (jobserver pipes, …).
fn close_other_fds(keep: &[RawFd]) {
    let Ok(entries) = fs::read_dir("/proc/self/fd") else {
        return;
    };
    let fds: Vec<RawFd> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2 && !keep.contains(fd))
        .collect();
    for fd in fds {
        // SAFETY: this process (forked, single-threaded) never returns to
        // the frames that own these fds (it ends with _exit), so nothing
        // uses or closes them after this; the read_dir fd is already closed.
        unsafe { libc::close(fd) };
    }
}

fn serve(listener: RawFd, allow_nested_userns: bool) -> i32 {
    let config = ServerConfig {
        seccomp: true,
        allow_nested_userns,
        ..ServerConfig::default()
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = match runtime {
        Ok(rt) => rt.block_on(crate::server::serve(config, &ListenSpec::Fd(listener))),
        Err(err) => {
            tracing::error!(error = %err, "cannot start the runtime");
            return 1;
        }
    };
    if let Err(err) = result {
        tracing::error!(error = %chain(&err), "agent stopped");
    }
    1
}

fn setup_root(spec: &LaunchSpec) -> Result<(), SandboxError> {
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)
        .map_err(sys("make / rprivate"))?;
    nix::unistd::sethostname(&spec.name).map_err(sys("sethostname"))?;
    mount_overlay(spec)?;
    let root = &spec.merged_dir;
    bind_workspace(&spec.workspace, root)?;
    mount_dev(root)?;
    mount_fs(
        root,
        "proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        "",
    )?;
    mount_fs(
        root,
        "tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777",
    )?;
    let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    if let Err(err) = mount_fs(root, "sys", "sysfs", ro, "") {
        tracing::warn!(error = %chain(&err), "no /sys in the sandbox");
    }
    pivot(root)
}

fn mount_overlay(spec: &LaunchSpec) -> Result<(), SandboxError> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.rootfs_lower.display(),
        spec.upper_dir.display(),
        spec.work_dir.display()
    );
    let attempt = |opts: &str| {
        mount(
            Some("overlay"),
            &spec.merged_dir,
            Some("overlay"),
            MsFlags::empty(),
            Some(opts),
        )
    };
    attempt(&options)
        .or_else(|_| attempt(&format!("{options},userxattr")))
        .map_err(|e| io("mount overlay on", &spec.merged_dir)(e.into()))
}

fn bind_workspace(workspace: &Path, root: &Path) -> Result<(), SandboxError> {
    let target = root.join("workspace");
    fs::create_dir_all(&target).map_err(io("create", &target))?;
    let none = None::<&str>;
    mount(Some(workspace), &target, none, MsFlags::MS_BIND, none)
        .map_err(|e| io("bind workspace at", &target)(e.into()))
}

/// Mounts a fresh `fstype` at `root/dir`.
fn mount_fs(
    root: &Path,
    dir: &str,
    fstype: &str,
    flags: MsFlags,
    data: &str,
) -> Result<(), SandboxError> {
    let target = root.join(dir);
    fs::create_dir_all(&target).map_err(io("create", &target))?;
    mount(Some(fstype), &target, Some(fstype), flags, Some(data))
        .map_err(|e| io("mount", &target)(e.into()))
}

/// A minimal `/dev`: tmpfs, host device nodes bound in, a private devpts,
/// `/dev/shm` and the usual symlinks.
fn mount_dev(root: &Path) -> Result<(), SandboxError> {
    let dev = root.join("dev");
    mount_fs(
        root,
        "dev",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_STRICTATIME,
        "mode=755,size=65536k",
    )?;
    for name in DEVICES {
        bind_device(&dev, name)?;
    }
    let pts_flags = MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC;
    mount_fs(
        &dev,
        "pts",
        "devpts",
        pts_flags,
        "newinstance,ptmxmode=0666,mode=0620,gid=5",
    )
    .or_else(|_| {
        mount_fs(
            &dev,
            "pts",
            "devpts",
            pts_flags,
            "newinstance,ptmxmode=0666",
        )
    })?;
    mount_fs(
        &dev,
        "shm",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        "mode=1777",
    )?;
    let links = [
        ("ptmx", "pts/ptmx"),
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
    ];
    for (name, target) in links {
        let link = dev.join(name);
        std::os::unix::fs::symlink(target, &link).map_err(io("symlink", &link))?;
    }
    Ok(())
}

fn bind_device(dev: &Path, name: &str) -> Result<(), SandboxError> {
    let target = dev.join(name);
    File::create(&target).map_err(io("create", &target))?;
    let source = PathBuf::from("/dev").join(name);
    let none = None::<&str>;
    mount(Some(&source), &target, none, MsFlags::MS_BIND, none)
        .map_err(|e| io("bind device", &source)(e.into()))
}

/// `pivot_root(".", ".")` then detach the old root stacked underneath.
fn pivot(root: &Path) -> Result<(), SandboxError> {
    nix::unistd::chdir(root).map_err(sys("chdir to new root"))?;
    nix::unistd::pivot_root(".", ".").map_err(sys("pivot_root"))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach old root"))?;
    nix::unistd::chdir("/").map_err(sys("chdir /"))
}

/// Brings the loopback interface of the new network namespace up.
fn loopback_up() -> Result<(), SandboxError> {
    use nix::sys::socket::{socket, AddressFamily, SockFlag, SockType};
    use std::os::fd::AsRawFd;
    let sock = socket(
        AddressFamily::Inet,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(sys("socket for lo"))?;
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own,
    // which lives across both calls; the flags union member is the one used.
    unsafe {
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) < 0 {
            return Err(sys("SIOCGIFFLAGS lo")(nix::errno::Errno::last()));
        }
        req.ifr_ifru.ifru_flags |= (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
        if libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) < 0 {
            return Err(sys("SIOCSIFFLAGS lo")(nix::errno::Errno::last()));
        }
    }
    Ok(())
}
