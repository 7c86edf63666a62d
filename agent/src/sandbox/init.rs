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
pub const DEVICES: [&str; 6] = ["null", "zero", "full", "random", "urandom", "tty"];

/// Runs PID 1: set up, report, serve. `listener` is the agent socket bound
/// by `launch` on the host, or `None` when PID 1 binds it inside (see
/// [`bind_inside`]). Returns the process exit code.
pub fn run(spec: &LaunchSpec, listener: Option<RawFd>, mut status: File) -> i32 {
    close_other_fds(&[listener.unwrap_or(-1), status.as_raw_fd()]);
    let setup = nix::unistd::setsid()
        .map_err(sys("setsid"))
        .and_then(|_| setup_root(spec))
        .and_then(|()| loopback_up())
        .and_then(|()| listener.map_or_else(|| bind_inside(spec), Ok));
    let listener = match setup {
        Ok(fd) => fd,
        Err(err) => {
            super::report(&mut status, &format!("err {}", chain(&err)));
            return 1;
        }
    };
    super::report(&mut status, "ok");
    drop(status);
    match spec.agent_binary {
        Some(_) => exec_agent(listener, spec.allow_nested_userns),
        None => serve(listener, spec.allow_nested_userns),
    }
}

/// Binds the agent socket from inside the sandbox, in the directory of
/// `spec.socket` bound at [`AGENT_RUN`]: the socket then belongs to the
/// sandbox's network namespace and has a name inside it (CRIU dumps and
/// re-binds it), while the host reaches the same inode at `spec.socket`.
fn bind_inside(spec: &LaunchSpec) -> Result<RawFd, SandboxError> {
    let name = spec
        .socket
        .file_name()
        .ok_or_else(|| SandboxError::Init("agent socket path has no file name".into()))?;
    let path = Path::new(AGENT_RUN).join(name);
    let _ = fs::remove_file(&path);
    let listener =
        std::os::unix::net::UnixListener::bind(&path).map_err(io("bind agent socket", &path))?;
    Ok(std::os::fd::IntoRawFd::into_raw_fd(listener))
}

/// Where the agent binary is bound inside the sandbox, and its log there.
pub const AGENT_DIR: &str = "/.rewind";
const AGENT_BIN: &str = "/.rewind/rewind-agent";
const AGENT_LOG: &str = "/.rewind/agent.log";
/// The host directory of the agent socket, bound inside.
const AGENT_RUN: &str = "/.rewind/run";

/// Replace this process with the agent binary bound inside the sandbox, its
/// stdio opened inside too: then every file PID 1 holds (its executable,
/// its mappings, its stdio) lives in the sandbox's own mounts and its memory
/// belongs to the sandbox's user namespace, which is what CRIU needs to
/// checkpoint the sandbox. Returns only on failure.
///
/// When the binary cannot run in this root (e.g. a busybox image without
/// the C library it links), PID 1 serves from its own image instead: the
/// sandbox works, but a memory snapshot of it is refused (CRIU cannot reach
/// that image from inside).
fn exec_agent(listener: RawFd, allow_nested_userns: bool) -> i32 {
    let err = match exec_serve(listener, allow_nested_userns) {
        Ok(never) => match never {},
        Err(err) => err,
    };
    tracing::warn!(error = %chain(&err), "cannot exec the in-sandbox agent; serving from the launcher's image");
    serve(listener, allow_nested_userns)
}

fn reopen_stdio() -> Result<(), SandboxError> {
    use nix::fcntl::{open, OFlag};
    use nix::sys::stat::Mode;
    let null = open("/dev/null", OFlag::O_RDWR, Mode::empty()).map_err(sys("open /dev/null"))?;
    let flags = OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_APPEND;
    let log =
        open(AGENT_LOG, flags, Mode::from_bits_truncate(0o600)).map_err(sys("open agent log"))?;
    for (from, to) in [(&null, 0), (&log, 1), (&log, 2)] {
        // SAFETY: dup2 onto a standard fd from an fd we own; both are open.
        if unsafe { libc::dup2(from.as_raw_fd(), to) } < 0 {
            return Err(sys("dup2")(nix::errno::Errno::last()));
        }
    }
    Ok(())
}

fn exec_serve(
    listener: RawFd,
    allow_nested_userns: bool,
) -> Result<std::convert::Infallible, SandboxError> {
    use nix::fcntl::{fcntl, FcntlArg, FdFlag};
    use std::ffi::CString;
    let runnable = std::process::Command::new(AGENT_BIN)
        .arg("--version")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runnable {
        return Err(SandboxError::Init(format!(
            "{AGENT_BIN} does not run in this root"
        )));
    }
    reopen_stdio()?;
    // SAFETY: `listener` is the open socket fd this process owns (kept by
    // `close_other_fds`); it is only borrowed for the fcntl.
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(listener) };
    fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty())).map_err(sys("clear FD_CLOEXEC"))?;
    let arg = |s: String| CString::new(s).map_err(|_| SandboxError::Init("NUL in argument".into()));
    let mut argv = vec![
        arg("rewind-agent".into())?,
        arg("serve".into())?,
        arg("--seccomp".into())?,
        arg("--listen".into())?,
        arg(format!("fd:{listener}"))?,
    ];
    if allow_nested_userns {
        argv.push(arg("--allow-nested-userns".into())?);
    }
    let env = [arg(
        "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
    )?];
    nix::unistd::execve(&arg(AGENT_BIN.into())?, &argv, &env).map_err(sys("execve agent"))
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
    if let Some(agent) = &spec.agent_binary {
        bind_agent(agent, &spec.socket, root)?;
    }
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

/// The agent binary (host file owned by host root: read-only inside) at
/// [`AGENT_BIN`], and the host directory of the agent socket at [`AGENT_RUN`].
fn bind_agent(agent: &Path, socket: &Path, root: &Path) -> Result<(), SandboxError> {
    let dir = root.join(AGENT_DIR.trim_start_matches('/'));
    fs::create_dir_all(&dir).map_err(io("create", &dir))?;
    let target = root.join(AGENT_BIN.trim_start_matches('/'));
    File::create(&target).map_err(io("create", &target))?;
    let none = None::<&str>;
    mount(Some(agent), &target, none, MsFlags::MS_BIND, none)
        .map_err(|e| io("bind agent binary at", &target)(e.into()))?;
    let Some(run) = socket.parent() else {
        return Ok(());
    };
    let target = root.join(AGENT_RUN.trim_start_matches('/'));
    fs::create_dir_all(&target).map_err(io("create", &target))?;
    mount(Some(run), &target, none, MsFlags::MS_BIND, none)
        .map_err(|e| io("bind agent socket dir at", &target)(e.into()))
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
