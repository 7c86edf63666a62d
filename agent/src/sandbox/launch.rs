//! `rewind-agent launch`: bind the agent socket, join the cgroups, and
//! double-fork the sandbox's PID 1 so it is reparented away from the service.
//!
//! ```text
//! launch ──fork──> A: unshare(USER) … launch writes uid/gid maps …
//!                     setresuid(0), unshare(NS|PID|UTS|IPC|NET|CGROUP)
//!                     ──fork──> B = PID 1: mounts, pivot_root, lo up, serve
//!                     A reports B's host pid and exits
//! ```
//! B reports `ok` (or its error) over a pipe; `launch` returns only then.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::path::Path;

use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::waitpid;
use nix::unistd::{fork, pipe2, ForkResult, Gid, Pid, Uid};

use super::{chain, init, io, sys, LaunchSpec, SandboxError};

/// Starts the sandbox; returns the host PID of its PID 1 once it serves.
pub fn launch(spec: &LaunchSpec) -> Result<i32, SandboxError> {
    prepare_host_dirs(spec)?;
    // With an agent binary, PID 1 binds the socket itself, inside (init.rs).
    let listener = match spec.agent_binary {
        None => Some(bind_socket(&spec.socket)?),
        Some(_) => None,
    };
    join_cgroups(spec)?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&spec.log)
        .map_err(io("open log", &spec.log))?;
    let pipes = Pipes::new()?;
    // SAFETY: `launch` runs in a single-threaded process (the CLI starts no
    // runtime before it), so the child may allocate and run normal code.
    match unsafe { fork() }.map_err(sys("fork"))? {
        ForkResult::Child => {
            let code = intermediate(spec, listener, log, pipes.child());
            // SAFETY: _exit ends the forked child without running the
            // parent's atexit handlers or flushing its stdio twice.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => supervise(spec, child, pipes.parent()),
    }
}

/// The three pipes between launch (parent) and A (child).
struct Pipes {
    /// A → launch: "userns ready".
    ready: (OwnedFd, OwnedFd),
    /// launch → A: "maps written".
    go: (OwnedFd, OwnedFd),
    /// A and B → launch: "pid N" / "ok" / "err …" lines.
    status: (OwnedFd, OwnedFd),
}

struct ParentEnds {
    ready: File,
    go: File,
    status: File,
}

pub(super) struct ChildEnds {
    ready: File,
    go: File,
    pub(super) status: File,
}

impl Pipes {
    fn new() -> Result<Self, SandboxError> {
        let pipe = || pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(sys("pipe2"));
        Ok(Self {
            ready: pipe()?,
            go: pipe()?,
            status: pipe()?,
        })
    }

    fn parent(self) -> ParentEnds {
        ParentEnds {
            ready: self.ready.0.into(),
            go: self.go.1.into(),
            status: self.status.0.into(),
        }
    }

    fn child(self) -> ChildEnds {
        ChildEnds {
            ready: self.ready.1.into(),
            go: self.go.0.into(),
            status: self.status.1.into(),
        }
    }
}

fn prepare_host_dirs(spec: &LaunchSpec) -> Result<(), SandboxError> {
    let owner = (
        Some(Uid::from_raw(spec.uid_base)),
        Some(Gid::from_raw(spec.uid_base)),
    );
    for dir in [&spec.upper_dir, &spec.work_dir] {
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        nix::unistd::chown(dir, owner.0, owner.1).map_err(|e| io("chown", dir)(e.into()))?;
    }
    std::fs::create_dir_all(&spec.merged_dir).map_err(io("create", &spec.merged_dir))?;
    if let (Some(_), Some(run)) = (&spec.agent_binary, spec.socket.parent()) {
        // PID 1 binds the socket in here, from inside (init.rs).
        std::fs::create_dir_all(run).map_err(io("create", run))?;
        nix::unistd::chown(run, owner.0, owner.1).map_err(|e| io("chown", run)(e.into()))?;
        let _ = std::fs::remove_file(&spec.socket);
    }
    Ok(())
}

fn bind_socket(path: &Path) -> Result<UnixListener, SandboxError> {
    let _ = std::fs::remove_file(path);
    UnixListener::bind(path).map_err(io("bind agent socket", path))
}

fn join_cgroups(spec: &LaunchSpec) -> Result<(), SandboxError> {
    let me = std::process::id().to_string();
    for dir in &spec.cgroups {
        let procs = dir.join("cgroup.procs");
        std::fs::write(&procs, &me).map_err(io("join cgroup", &procs))?;
    }
    Ok(())
}

/// launch's side: write the id maps when A asks, then wait for the verdict.
fn supervise(spec: &LaunchSpec, child: Pid, mut ends: ParentEnds) -> Result<i32, SandboxError> {
    let mut byte = [0u8; 1];
    let mapped = match std::io::Read::read(&mut ends.ready, &mut byte) {
        Ok(1) => write_id_maps(child, spec).and_then(|()| {
            ends.go
                .write_all(b"g")
                .map_err(io("signal child", Path::new("pipe")))
        }),
        _ => Ok(()), // A failed before unsharing; its error is on the status pipe.
    };
    drop(ends.go);
    let verdict = read_verdict(ends.status);
    let _ = waitpid(child, None);
    mapped?;
    verdict
}

fn write_id_maps(child: Pid, spec: &LaunchSpec) -> Result<(), SandboxError> {
    let line = format!("0 {} {}\n", spec.uid_base, spec.uid_count);
    for map in ["uid_map", "gid_map"] {
        let path = Path::new("/proc")
            .join(child.as_raw().to_string())
            .join(map);
        std::fs::write(&path, &line).map_err(io("write", &path))?;
    }
    Ok(())
}

/// Collects "pid N" (from A) and "ok"/"err …" (from B or A) until EOF.
fn read_verdict(status: File) -> Result<i32, SandboxError> {
    let (mut pid, mut outcome) = (None, None);
    for line in BufReader::new(status).lines().map_while(Result::ok) {
        match line.split_once(' ') {
            Some(("pid", n)) => pid = n.trim().parse::<i32>().ok(),
            Some(("err", text)) => outcome = Some(Err(SandboxError::Init(text.to_owned()))),
            _ if line == "ok" => outcome = Some(Ok(())),
            _ => {}
        }
    }
    match (outcome, pid) {
        (Some(Ok(())), Some(pid)) => Ok(pid),
        (Some(Err(err)), _) => Err(err),
        _ => Err(SandboxError::Init(
            "sandbox init exited without reporting".into(),
        )),
    }
}

/// Child A: become root of a new user namespace, unshare the rest, fork PID 1.
fn intermediate(
    spec: &LaunchSpec,
    listener: Option<UnixListener>,
    log: File,
    mut ends: ChildEnds,
) -> i32 {
    match intermediate_steps(spec, listener, log, &mut ends) {
        Ok(pid) => {
            super::report(&mut ends.status, &format!("pid {pid}"));
            0
        }
        Err(err) => {
            super::report(&mut ends.status, &format!("err {}", chain(&err)));
            1
        }
    }
}

fn intermediate_steps(
    spec: &LaunchSpec,
    listener: Option<UnixListener>,
    log: File,
    ends: &mut ChildEnds,
) -> Result<i32, SandboxError> {
    redirect_stdio(&log)?;
    unshare(CloneFlags::CLONE_NEWUSER).map_err(sys("unshare(CLONE_NEWUSER)"))?;
    ends.ready
        .write_all(b"r")
        .map_err(io("signal parent", Path::new("pipe")))?;
    let mut byte = [0u8; 1];
    if !matches!(std::io::Read::read(&mut ends.go, &mut byte), Ok(1)) {
        return Err(SandboxError::Init(
            "launch did not write the id maps".into(),
        ));
    }
    become_root()?;
    let namespaces = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET
        | CloneFlags::CLONE_NEWCGROUP;
    unshare(namespaces).map_err(sys("unshare(namespaces)"))?;
    // SAFETY: still single-threaded (see `launch`).
    match unsafe { fork() }.map_err(sys("fork PID 1"))? {
        ForkResult::Child => {
            let status = ends
                .status
                .try_clone()
                .map_err(io("dup", Path::new("pipe")))?;
            let code = init::run(spec, listener.map(IntoRawFd::into_raw_fd), status);
            // SAFETY: as in `launch`: leave without the parent's exit handlers.
            unsafe { libc::_exit(code) }
        }
        ForkResult::Parent { child } => Ok(child.as_raw()),
    }
}

fn become_root() -> Result<(), SandboxError> {
    let root_u = Uid::from_raw(0);
    let root_g = Gid::from_raw(0);
    nix::unistd::setgroups(&[]).map_err(sys("setgroups"))?;
    nix::unistd::setresgid(root_g, root_g, root_g).map_err(sys("setresgid(0)"))?;
    nix::unistd::setresuid(root_u, root_u, root_u).map_err(sys("setresuid(0)"))?;
    // The uid change cleared the dumpable flag, and our mm still belongs to
    // the host's user namespace: without this, nothing inside the sandbox's
    // user namespace may open /proc/<pid 1>/ns/* — which CRIU's dump does
    // from inside it to check that every namespace is owned by it.
    nix::sys::prctl::set_dumpable(true).map_err(sys("prctl(PR_SET_DUMPABLE)"))
}

/// stdin ← /dev/null; stdout, stderr → the log. The service reads launch's
/// stdout until EOF, so the sandbox must not keep it open.
fn redirect_stdio(log: &File) -> Result<(), SandboxError> {
    let null = File::open("/dev/null").map_err(io("open", Path::new("/dev/null")))?;
    let dup = |from: &File, to: i32| {
        // SAFETY: dup2 onto the standard fds; both fds are open.
        let rc = unsafe { libc::dup2(from.as_raw_fd(), to) };
        match rc {
            -1 => Err(sys("dup2")(nix::errno::Errno::last())),
            _ => Ok(()),
        }
    };
    dup(&null, 0)?;
    dup(log, 1)?;
    dup(log, 2)
}
