//! The namespace runtime's side of memory snapshots ([`super::criu`]):
//! pause = close out host connections, then freeze the sandbox's cgroup;
//! save = `criu dump --leave-running` of the frozen tree; resume = thaw;
//! start from state = fresh cgroups, the overlay root mounted on the host,
//! `criu restore` into new namespaces, then the agent must answer.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rewind_agent::client::Transport;

use super::criu::{self, Criu, DumpMeta, Gate, HostMounts, RestoreSpec};
use super::{proc_starttime, wait_ready, NamespaceRuntime, NsState, UID_BASE};
use crate::runtime::manifest;
use crate::runtime::{RuntimeError, RuntimeState, SandboxContext};

/// How long the agent has to close the host's connections before a dump.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Old mount namespaces of stopped sandboxes, by sandbox name
/// ([`NamespaceRuntime::stop_unmounting_later`]).
pub(super) type Unmounting = Arc<Mutex<HashMap<String, Vec<OldMounts>>>>;

/// A stopped sandbox's old mount namespace.
pub(super) enum OldMounts {
    /// Held open (an nsfs fd): its mounts stay until it is dropped.
    Held(#[allow(dead_code)] std::fs::File),
    /// Dropped on this thread, which returns once they are unmounted.
    Releasing(JoinHandle<()>),
}

impl NamespaceRuntime {
    pub(super) fn criu(&self) -> Result<&Criu, RuntimeError> {
        self.criu
            .as_ref()
            .map_err(|reason| RuntimeError::Unavailable {
                reason: format!("memory snapshots need CRIU: {reason}"),
            })
    }

    pub(super) async fn freeze(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<(), RuntimeError> {
        self.criu()?;
        let s = ns_state(sb, state)?;
        let (cgroups, name) = (self.cgroups.clone(), sb.name.clone());
        let err = |message: String| RuntimeError::Checkpoint {
            sandbox: sb.name.clone(),
            message,
        };
        tokio::task::spawn_blocking(move || {
            let t = Instant::now();
            refuse_unsupported_fds(&cgroups, &name, s.pid)?;
            wait_host_sockets_closed(&cgroups, &name, s.pid)?;
            let drained = t.elapsed();
            cgroups.set_frozen(&name, true).map_err(|e| e.to_string())?;
            tracing::debug!(sandbox = %name, drain_ms = drained.as_millis() as u64, freeze_ms = (t.elapsed() - drained).as_millis() as u64, "memory snapshot: frozen");
            Ok(())
        })
        .await
        .map_err(|e| err(e.to_string()))?
        .map_err(err)
    }

    pub(super) async fn thaw(&self, sb: &SandboxContext) -> Result<(), RuntimeError> {
        let (cgroups, name) = (self.cgroups.clone(), sb.name.clone());
        let thawed = tokio::task::spawn_blocking(move || cgroups.set_frozen(&name, false))
            .await
            .map_err(|e| RuntimeError::Checkpoint {
                sandbox: sb.name.clone(),
                message: format!("thaw: {e}"),
            })?;
        thawed.map_err(|e| RuntimeError::Stop {
            sandbox: sb.name.clone(),
            source: e.into(),
        })
    }

    /// A memory snapshot cut off by a crash of the service leaves the
    /// sandbox frozen: thaw it (at re-attach), so it runs on unchanged.
    pub(super) async fn thaw_if_frozen(&self, sb: &SandboxContext) {
        let (cgroups, name) = (self.cgroups.clone(), sb.name.clone());
        let thawed = tokio::task::spawn_blocking(move || match cgroups.is_frozen(&name) {
            true => cgroups.set_frozen(&name, false).map(|()| true),
            false => Ok(false),
        })
        .await;
        match thawed {
            Ok(Ok(true)) => {
                tracing::warn!(sandbox = %sb.name, "sandbox was left frozen (a memory snapshot was cut off); thawed it")
            }
            Ok(Ok(false)) => {}
            Ok(Err(e)) => tracing::warn!(sandbox = %sb.name, error = %e, "cannot thaw the sandbox"),
            Err(e) => tracing::warn!(sandbox = %sb.name, error = %e, "cannot thaw the sandbox"),
        }
    }

    /// Dump the frozen tree into `dir`; on failure nothing is left there.
    pub(super) async fn dump(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
        dir: &Path,
    ) -> Result<(), RuntimeError> {
        let criu = self.criu()?;
        let s = ns_state(sb, state)?;
        let freezer = self
            .cgroups
            .freezer(&sb.name)
            .ok_or_else(|| RuntimeError::Unavailable {
                reason: "memory snapshots need a cgroup freezer".into(),
            })?;
        let log = self.criu_log(&sb.name, "dump");
        let t = Instant::now();
        std::fs::create_dir_all(dir).map_err(|e| RuntimeError::Checkpoint {
            sandbox: sb.name.clone(),
            message: format!("create {}: {e}", dir.display()),
        })?;
        // The page images are hashed as CRIU writes them, on another core.
        let follower = manifest::Follower::start(dir, criu::is_page_image);
        let dumped = criu.dump(s.pid, &freezer, dir, &log).await;
        let dumped_ms = t.elapsed().as_millis() as u64;
        let followed = follower.finish();
        let dumped = dumped.and_then(|()| {
            let meta = DumpMeta {
                criu_version: criu.version.clone(),
                agent_binary: self.agent_image.clone(),
                image_bytes: criu::image_bytes(dir),
            };
            write_meta(dir, &meta)?;
            manifest::write(dir, followed).map_err(|e| e.to_string())
        });
        tracing::debug!(sandbox = %sb.name, criu_ms = dumped_ms, manifest_ms = t.elapsed().as_millis() as u64 - dumped_ms, "memory snapshot: criu dump");
        dumped.map_err(|message| {
            let _ = std::fs::remove_dir_all(dir);
            let message = match criu::failed_pid(&log) {
                Some(pid) => format!("{}: {message}", describe_process(pid)),
                None => message,
            };
            RuntimeError::Checkpoint {
                sandbox: sb.name.clone(),
                message,
            }
        })
    }

    /// Restore the tree dumped in `dir` as sandbox `sb` (stopped; its
    /// storage already holds the matching workspace and state).
    pub(super) async fn restore_tree(
        &self,
        sb: &SandboxContext,
        dir: &Path,
    ) -> Result<RuntimeState, RuntimeError> {
        let criu = self.criu()?;
        let meta = read_meta(dir).map_err(|m| start_err(sb, m))?;
        let cgroups = self
            .cgroups
            .create(&sb.name, &sb.limits)
            .map_err(|e| start_err(sb, format!("cgroups: {e}")))?;
        let spec = self.launch_spec(sb, cgroups)?;
        let run_dir = prepare_run_dir(&spec.socket).map_err(|m| start_err(sb, m))?;
        mount_root(&spec).map_err(|m| start_err(sb, m))?;
        let mounts = HostMounts {
            workspace: sb.workspace.clone(),
            agent_binary: meta.agent_binary,
            run_dir,
        };
        let (pidfile, log) = (
            self.criu_log(&sb.name, "pid"),
            self.criu_log(&sb.name, "restore"),
        );
        let gate = Gate::new(self.criu_log(&sb.name, "verdict"));
        let t = Instant::now();
        // The images' content is verified while CRIU restores from them; the
        // restored tree resumes only once they are found intact ([`Gate`]).
        let images = dir.to_path_buf();
        let verifying = tokio::task::spawn_blocking(move || manifest::verify_content(&images));

        let restore = RestoreSpec {
            images: dir,
            root: &spec.merged_dir,
            mounts: &mounts,
            cgroups: &spec.cgroups,
            pidfile: &pidfile,
            log: &log,
            gate: &gate,
        };
        let restoring = criu.restore(&restore);
        let verified = async {
            let verified = verifying.await;
            gate.open(matches!(verified, Ok(Ok(()))));
            tracing::debug!(sandbox = %sb.name, verify_ms = t.elapsed().as_millis() as u64, "memory restore: images verified");
            verified
        };
        let (restored, verified) = tokio::join!(restoring, verified);
        tracing::debug!(sandbox = %sb.name, criu_ms = t.elapsed().as_millis() as u64, "memory restore: criu restore");
        let restored = match verified {
            Ok(Ok(())) => restored,
            Ok(Err(e)) => Err(format!("the memory image is damaged: {e}")),
            Err(e) => Err(format!("cannot verify the memory image: {e}")),
        };
        // The restored mount namespace holds its own reference to the root.
        let _ = nix::mount::umount2(&spec.merged_dir, nix::mount::MntFlags::MNT_DETACH);
        let started = match restored {
            Ok(pid) => self.adopt(sb, pid, spec.socket).await,
            Err(message) => Err(start_err(sb, message)),
        };
        if started.is_err() {
            let _ = self.teardown(&sb.name, None).await;
        }
        self.unmount_later(&sb.name);
        started
    }

    async fn adopt(
        &self,
        sb: &SandboxContext,
        pid: i32,
        socket: PathBuf,
    ) -> Result<RuntimeState, RuntimeError> {
        let starttime = proc_starttime(pid)
            .ok_or_else(|| start_err(sb, format!("restored PID {pid} exited at once")))?;
        wait_ready(Transport::Unix(socket.clone())).await?;
        // The restored agent remembers the workspace mount it had at the
        // dump; the one now at /workspace is the restored subvolume: tell it.
        rewind_agent::client::AgentClient::new(Transport::Unix(socket.clone()))
            .mount_workspace()
            .await?;
        tracing::info!(sandbox = %sb.name, pid, "namespace sandbox restored from memory");
        let state = NsState {
            pid,
            starttime,
            socket,
        };
        serde_json::to_value(&state).map_err(|e| start_err(sb, e.to_string()))
    }

    /// Stop for a memory restore: [`Runtime::stop`], except that the old
    /// mount namespace is kept until the restored tree runs, then released
    /// on a background thread. Its last reference unmounts the sandbox's
    /// overlay, and overlayfs syncs its whole upper filesystem — the pool —
    /// on unmount: right after a memory snapshot, that is the writeback of
    /// the whole image (about 1.7 s per GiB here), which the restore does
    /// not need. The processes are gone when this returns (PID 1 reaped,
    /// cgroups removed); the restored tree mounts the restored state
    /// subvolume, not the held one; a fresh [`NamespaceRuntime::launch`]
    /// (which may mount the same upper dir) first waits for the release
    /// ([`NamespaceRuntime::wait_unmounted`]).
    ///
    /// [`Runtime::stop`]: crate::runtime::Runtime::stop
    pub(super) async fn stop_unmounting_later(
        &self,
        sb: &SandboxContext,
        state: &RuntimeState,
    ) -> Result<(), RuntimeError> {
        let known: Option<NsState> = serde_json::from_value(state.clone()).ok();
        if let Some(ns) = known.as_ref().and_then(hold_mount_ns) {
            let mut pending = self.lock_unmounting();
            pending
                .entry(sb.name.clone())
                .or_default()
                .push(OldMounts::Held(ns));
        }
        self.teardown(&sb.name, known.as_ref()).await
    }

    /// Release the mount namespaces held for `name` on a background thread.
    fn unmount_later(&self, name: &str) {
        let mut pending = self.lock_unmounting();
        let Some(list) = pending.get_mut(name) else {
            return;
        };
        let (held, mut rest): (Vec<_>, Vec<_>) = std::mem::take(list)
            .into_iter()
            .partition(|m| matches!(m, OldMounts::Held(_)));
        rest.retain(|m| !matches!(m, OldMounts::Releasing(h) if h.is_finished()));
        if held.is_empty() {
            *list = rest;
            return;
        }
        let release = std::thread::Builder::new()
            .name("rewind-unmount".into())
            .spawn(move || drop(held));
        match release {
            Ok(handle) => rest.push(OldMounts::Releasing(handle)),
            Err(e) => {
                tracing::warn!(sandbox = %name, error = %e, "cannot start the unmount thread")
            }
        }
        *list = rest;
    }

    /// Wait until the mount namespaces held or being released for `name`
    /// are gone (its old overlay unmounted).
    pub(super) async fn wait_unmounted(&self, name: &str) {
        let pending = self.lock_unmounting().remove(name).unwrap_or_default();
        if pending.is_empty() {
            return;
        }
        let joined = tokio::task::spawn_blocking(move || {
            for old in pending {
                if let OldMounts::Releasing(handle) = old {
                    let _ = handle.join();
                }
            }
        });
        if let Err(e) = joined.await {
            tracing::warn!(sandbox = %name, error = %e, "cannot wait for the old mounts to go");
        }
    }

    fn lock_unmounting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<OldMounts>>> {
        self.unmounting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Host-side CRIU files of a sandbox (logs, pid file), next to its socket
    /// directory — never in the state dir, which memory snapshots capture.
    fn criu_log(&self, name: &str, what: &str) -> PathBuf {
        let socket = self.socket_path(name);
        let dir = socket.parent().unwrap_or(&self.sock_dir);
        dir.with_extension(format!("criu-{what}.log"))
    }
}

fn ns_state(sb: &SandboxContext, state: &RuntimeState) -> Result<NsState, RuntimeError> {
    let s: NsState =
        serde_json::from_value(state.clone()).map_err(|e| RuntimeError::Checkpoint {
            sandbox: sb.name.clone(),
            message: e.to_string(),
        })?;
    match proc_starttime(s.pid) == Some(s.starttime) {
        true => Ok(s),
        false => Err(RuntimeError::Checkpoint {
            sandbox: sb.name.clone(),
            message: format!("its PID 1 ({}) is gone", s.pid),
        }),
    }
}

/// A reference to the mount namespace of the sandbox's PID 1 (if it is
/// still the recorded one), which keeps its mounts after the tree is gone.
fn hold_mount_ns(s: &NsState) -> Option<std::fs::File> {
    if proc_starttime(s.pid) != Some(s.starttime) {
        return None;
    }
    std::fs::File::open(format!("/proc/{}/ns/mnt", s.pid)).ok()
}

fn start_err(sb: &SandboxContext, message: String) -> RuntimeError {
    RuntimeError::Start {
        sandbox: sb.name.clone(),
        source: super::LaunchError::Restore { message }.into(),
    }
}

/// The accepted ends of the host's agent connections live in the host's
/// network namespace, which CRIU cannot dump: the service dropped its
/// connections, so wait until the agent has closed its ends.
fn wait_host_sockets_closed(cgroups: &super::Cgroups, name: &str, pid: i32) -> Result<(), String> {
    let deadline = Instant::now() + DRAIN_TIMEOUT;
    loop {
        let host = unix_inodes(Path::new("/proc/self/net/unix"));
        let held = held_sockets(cgroups, name, pid);
        let Some((holder, ino)) = held.into_iter().find(|(_, ino)| host.contains(ino)) else {
            return Ok(());
        };
        if Instant::now() > deadline {
            return Err(format!(
                "process {holder} holds a Unix socket (inode {ino}) of the host's network namespace"
            ));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One open file of a sandbox process.
struct HeldFd {
    /// Host pid of the holder.
    pid: i32,
    fd: String,
    /// What `/proc/<pid>/fd/<fd>` links to.
    target: String,
}

/// Every fd held by the sandbox's processes (its cgroup's, else PID 1's).
fn held_fds(cgroups: &super::Cgroups, name: &str, pid: i32) -> Vec<HeldFd> {
    let procs = cgroups
        .freezer(name)
        .and_then(|d| std::fs::read_to_string(d.join("cgroup.procs")).ok())
        .unwrap_or_else(|| pid.to_string());
    let mut held = Vec::new();
    for p in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
        let fds = std::fs::read_dir(format!("/proc/{p}/fd"))
            .into_iter()
            .flatten()
            .flatten();
        held.extend(fds.map(|fd| {
            HeldFd {
                pid: p,
                fd: fd.file_name().to_string_lossy().into_owned(),
                target: std::fs::read_link(fd.path())
                    .unwrap_or_default()
                    .to_string_lossy()
                    .into_owned(),
            }
        }));
    }
    held
}

/// (pid, socket inode) of every socket fd held by the sandbox's processes.
fn held_sockets(cgroups: &super::Cgroups, name: &str, pid: i32) -> Vec<(i32, u64)> {
    held_fds(cgroups, name, pid)
        .into_iter()
        .filter_map(|h| {
            let ino = h
                .target
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((h.pid, ino))
        })
        .collect()
}

/// Kinds of open files CRIU 4.1 cannot checkpoint (checked on this host:
/// an io_uring fd fails the dump in `send_fds` with EINVAL), by the
/// `anon_inode:` name the kernel gives them.
const UNSUPPORTED_FDS: &[(&str, &str)] = &[("anon_inode:[io_uring]", "an io_uring instance")];

/// Refuse before anything is frozen or snapshotted when a process holds a
/// file CRIU cannot checkpoint; the message names the process (its pid
/// inside the sandbox and its command) and the file.
fn refuse_unsupported_fds(cgroups: &super::Cgroups, name: &str, pid: i32) -> Result<(), String> {
    let held = held_fds(cgroups, name, pid);
    let found = held.iter().find_map(|h| {
        let (_, what) = UNSUPPORTED_FDS.iter().find(|(t, _)| *t == h.target)?;
        Some((h, what))
    });
    match found {
        None => Ok(()),
        Some((h, what)) => Err(format!(
            "{} holds {what} (fd {}), which CRIU cannot checkpoint; close it and retry",
            describe_process(h.pid),
            h.fd
        )),
    }
}

/// "process 12 (python3)": a host pid as the sandbox sees it (its last
/// `NSpid`) with its command name.
pub(super) fn describe_process(host_pid: i32) -> String {
    let status = std::fs::read_to_string(format!("/proc/{host_pid}/status")).unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .map(|v| v.trim().to_owned())
    };
    let inside = field("NSpid:")
        .and_then(|v| v.split_whitespace().last().map(str::to_owned))
        .unwrap_or_else(|| host_pid.to_string());
    let comm = field("Name:").unwrap_or_else(|| "?".into());
    format!("process {inside} ({comm})")
}

/// Inodes listed in a `/proc/.../net/unix` table.
fn unix_inodes(table: &Path) -> HashSet<u64> {
    let text = std::fs::read_to_string(table).unwrap_or_default();
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(6)?.parse().ok())
        .collect()
}

/// The size and CRIU version recorded with a dump.
pub(super) fn saved_state_info(dir: &Path) -> Option<crate::runtime::SavedStateInfo> {
    let meta = read_meta(dir).ok()?;
    Some(crate::runtime::SavedStateInfo {
        image_bytes: meta.image_bytes,
        criu_version: Some(meta.criu_version),
    })
}

fn write_meta(dir: &Path, meta: &DumpMeta) -> Result<(), String> {
    let text = serde_json::to_vec_pretty(meta).map_err(|e| e.to_string())?;
    let path = dir.join(criu::META_FILE);
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))
}

fn read_meta(dir: &Path) -> Result<DumpMeta, String> {
    let path = dir.join(criu::META_FILE);
    let text = std::fs::read(&path).map_err(|e| format!("read {}: {e}", path.display()))?;
    serde_json::from_slice(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// The socket directory, owned by the sandbox's root, without a stale socket
/// (CRIU binds the restored listener there).
fn prepare_run_dir(socket: &Path) -> Result<PathBuf, String> {
    let dir = socket
        .parent()
        .ok_or("socket path has no directory")?
        .to_owned();
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    std::os::unix::fs::chown(&dir, Some(UID_BASE), Some(UID_BASE))
        .map_err(|e| format!("chown {}: {e}", dir.display()))?;
    let _ = std::fs::remove_file(socket);
    Ok(dir)
}

/// The sandbox's overlay root, mounted on the host at its merged dir for
/// `criu restore --root` (the same options PID 1 mounts it with).
fn mount_root(spec: &rewind_agent::sandbox::LaunchSpec) -> Result<(), String> {
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        spec.rootfs_lower.display(),
        spec.upper_dir.display(),
        spec.work_dir.display()
    );
    let _ = nix::mount::umount2(&spec.merged_dir, nix::mount::MntFlags::MNT_DETACH);
    nix::mount::mount(
        Some("overlay"),
        &spec.merged_dir,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| format!("mount overlay on {}: {e}", spec.merged_dir.display()))
}
