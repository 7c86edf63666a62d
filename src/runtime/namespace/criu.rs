//! Memory snapshots of namespace sandboxes with CRIU: `criu dump
//! --leave-running` of the sandbox's whole process tree (its PID 1, the
//! agent, and everything under it) into a snapshot's aux dir, and `criu
//! restore` of such a dump into fresh namespaces.
//!
//! What makes a sandbox dumpable (see `rewind-agent launch`): every namespace
//! is owned by the sandbox's user namespace, PID 1 is dumpable, and every
//! file the tree holds lives in the sandbox's own mounts — the agent binary
//! is bound at `/.rewind/rewind-agent`, its socket is bound from inside in a
//! host directory mounted at `/.rewind/run`. The host's agent connections
//! are closed before a dump (their accepted ends belong to the host's network
//! namespace, which CRIU cannot dump). Mounts that come from the host are
//! declared external and mapped back on restore: the workspace, the agent
//! binary, the socket directory and the device nodes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rewind_agent::sandbox::DEVICES;
use serde::{Deserialize, Serialize};
use tokio::process::Command;

/// How long one `criu dump` or `criu restore` may take.
const CRIU_TIMEOUT: Duration = Duration::from_secs(300);

/// Written next to the images: what a restore needs besides them.
pub const META_FILE: &str = "rewind-criu.json";

/// A `criu` that passed `criu check`.
#[derive(Debug, Clone)]
pub struct Criu {
    bin: PathBuf,
    pub version: String,
    /// A directory on tmpfs bound at `/run` for every `criu` ([`kdat_dir`]).
    kdat: Option<PathBuf>,
    /// The action script of every restore ([`Gate`]).
    gate_script: PathBuf,
}

/// CRIU probes the kernel at every start (~20 ms idle, over 100 ms on a
/// loaded host) unless it finds its cache, `/run/criu.kdat`, which it only
/// keeps on tmpfs. Where the host's `/run` is not tmpfs, each `criu` runs
/// in a private mount namespace with this tmpfs directory bound at `/run`.
const KDAT_DIR: &str = "/dev/shm/rewind-criu";

/// Recorded with every dump ([`META_FILE`]).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DumpMeta {
    pub criu_version: String,
    /// Host path of the agent binary the dumped PID 1 runs (mapped at restore).
    pub agent_binary: PathBuf,
    /// Total size of the image files in bytes.
    pub image_bytes: u64,
}

/// Host paths the sandbox's external mounts map to.
#[derive(Debug, Clone)]
pub struct HostMounts {
    pub workspace: PathBuf,
    pub agent_binary: PathBuf,
    pub run_dir: PathBuf,
}

/// One restore: images, the prepared root, where the pid goes.
pub struct RestoreSpec<'a> {
    pub images: &'a Path,
    pub root: &'a Path,
    pub mounts: &'a HostMounts,
    /// The sandbox's cgroup directories: `criu restore` runs in them, so
    /// the tree it forks starts there (cgroups are not in the images).
    pub cgroups: &'a [PathBuf],
    pub pidfile: &'a Path,
    pub log: &'a Path,
    /// Written by the caller once the images are verified ([`Gate`]).
    pub gate: &'a Gate,
}

/// Holds a `criu restore` before the restored processes resume until the
/// caller has given its verdict on the images, so the images can be
/// verified while CRIU restores from them: CRIU runs the gate script
/// ([`GATE_SCRIPT`]) as its action script; at `pre-resume` the tree is
/// built and every task of it is stopped under CRIU's ptrace, at the
/// `rt_sigreturn` that would resume it. The script waits for the verdict
/// file, and on anything but `ok` — or when the service that would write it
/// is gone (no process, or a zombie) — SIGKILLs every task of the restored
/// PID namespace (never its own), then CRIU. In that order: a tracer's
/// death resumes its tracees, so killing CRIU first lets the tree run user
/// code until its own SIGKILL lands; a traced task with SIGKILL pending
/// skips the syscall and exits without returning to user space. CRIU must
/// die too: it would wait for an init that waits for CRIU to reap its
/// traced zombies.
pub struct Gate {
    pub verdict: PathBuf,
}

/// The gate script, written once per service into its run directory; the
/// restore names its verdict file in `REWIND_GATE_VERDICT`.
const GATE_SCRIPT: &str = "criu-gate.sh";

impl Gate {
    /// A gate whose verdict goes to `verdict` (a stale one is removed).
    pub fn new(verdict: PathBuf) -> Gate {
        let _ = std::fs::remove_file(&verdict);
        Gate { verdict }
    }

    /// Let the restore resume (`Ok`) or kill the restored tree (`Err`).
    pub fn open(&self, verified: bool) {
        let verdict = if verified { "ok" } else { "damaged" };
        let tmp = self.verdict.with_extension("tmp");
        let written =
            std::fs::write(&tmp, verdict).and_then(|()| std::fs::rename(&tmp, &self.verdict));
        if let Err(e) = written {
            tracing::error!(path = %self.verdict.display(), error = %e, "cannot give a memory restore its verdict");
        }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.verdict);
    }
}

/// Write [`GATE_SCRIPT`] into `dir`, naming this service's pid.
fn write_gate_script(dir: &Path) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(GATE_SCRIPT);
    let text = format!(
        "#!/bin/sh\n\
         # rewind: resume a memory restore only once its images are verified\n\
         [ \"$CRTOOLS_SCRIPT_ACTION\" = pre-resume ] || exit 0\n\
         v=\"$REWIND_GATE_VERDICT\"\n\
         alive() {{ s=$(sed 's/.*) //' /proc/{}/stat 2>/dev/null) && [ \"${{s%% *}}\" != Z ]; }}\n\
         while [ ! -s \"$v\" ] && alive; do sleep 0.005; done\n\
         [ \"$(cat \"$v\" 2>/dev/null)\" = ok ] && exit 0\n\
         # the restored tree, while CRIU still holds it; then CRIU\n\
         n=$(stat -L -c %i /proc/\"$CRTOOLS_INIT_PID\"/ns/pid 2>/dev/null)\n\
         [ -n \"$n\" ] && [ \"$n\" != \"$(stat -L -c %i /proc/self/ns/pid)\" ] &&\n\
           kill -KILL $(stat -L -c '%i %n' /proc/[0-9]*/ns/pid 2>/dev/null |\n\
             awk -v n=\"$n\" '$1 == n {{ split($2, p, \"/\"); print p[3] }}') 2>/dev/null\n\
         kill -KILL $PPID\n\
         exit 1\n",
        std::process::id()
    );
    let tmp = script.with_extension("tmp");
    std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o700)))
        .and_then(|()| std::fs::rename(&tmp, &script))
        .map_err(|e| format!("write {}: {e}", script.display()))?;
    Ok(script)
}

impl Criu {
    /// Finds `criu` on PATH and runs `criu check`, and writes the gate
    /// script into `run_dir`; the error is the reason memory snapshots are
    /// unavailable.
    pub fn detect(run_dir: &Path) -> Result<Criu, String> {
        let bin = super::which(Path::new("criu")).ok_or_else(|| {
            "criu is not installed (scripts/install-deps.sh builds it)".to_owned()
        })?;
        let kdat = kdat_dir();
        // `criu check` fills the cache the later runs read.
        let check = command(&bin, kdat.as_deref(), &[])
            .arg("check")
            .output()
            .map_err(|e| format!("cannot run {}: {e}", bin.display()))?;
        let said = String::from_utf8_lossy(&check.stdout).into_owned()
            + &String::from_utf8_lossy(&check.stderr);
        if !said.contains("Looks good") {
            return Err(format!(
                "`criu check` fails on this host: {}",
                last_lines(&said, 3)
            ));
        }
        let version = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default();
        let version = version
            .lines()
            .find_map(|l| l.strip_prefix("Version: "))
            .unwrap_or("unknown")
            .trim()
            .to_owned();
        let gate_script = write_gate_script(run_dir)?;
        Ok(Criu {
            bin,
            version,
            kdat,
            gate_script,
        })
    }

    /// `criu dump --leave-running` of the tree under `pid` into the
    /// existing directory `images`. The cgroup `freezer` is frozen by the caller; CRIU
    /// finds it frozen and leaves it frozen. The error carries CRIU's errors.
    pub async fn dump(
        &self,
        pid: i32,
        freezer: &Path,
        images: &Path,
        log: &Path,
    ) -> Result<(), String> {
        let mut args: Vec<OsString> = vec!["dump".into(), "-t".into(), pid.to_string().into()];
        args.extend(common_args(images, log));
        args.extend([
            "--leave-running".into(),
            "--freeze-cgroup".into(),
            freezer.into(),
        ]);
        args.extend(["--network-lock".into(), "nftables".into()]);
        for (inside, key) in external_mounts() {
            args.push("--external".into());
            args.push(format!("mnt[{inside}]:{key}").into());
        }
        self.run(&args, log, &[], &[]).await
    }

    /// `criu restore --restore-detached` of `spec.images` onto `spec.root`;
    /// returns the host pid of the restored PID 1 (the service, a child
    /// subreaper, adopts it when CRIU exits).
    pub async fn restore(&self, spec: &RestoreSpec<'_>) -> Result<i32, String> {
        let _ = std::fs::remove_file(spec.pidfile);
        let mut args: Vec<OsString> = vec!["restore".into()];
        args.extend(common_args(spec.images, spec.log));
        args.extend([
            "--restore-detached".into(),
            "--root".into(),
            spec.root.into(),
        ]);
        args.extend(["--pidfile".into(), spec.pidfile.into()]);
        args.extend(["--action-script".into(), self.gate_script.clone().into()]);
        for (inside, key) in external_mounts() {
            let host = host_path(spec.mounts, &inside);
            args.push("--external".into());
            let mut arg = OsString::from(format!("mnt[{key}]:"));
            arg.push(host);
            args.push(arg);
        }
        let verdict = [("REWIND_GATE_VERDICT", spec.gate.verdict.as_os_str())];
        self.run(&args, spec.log, spec.cgroups, &verdict).await?;
        let text = std::fs::read_to_string(spec.pidfile)
            .map_err(|e| format!("read {}: {e}", spec.pidfile.display()))?;
        text.trim()
            .parse()
            .map_err(|_| format!("bad pid file {:?}", text.trim()))
    }

    /// `criu` with `args` and `env`, run inside `cgroups` (directories)
    /// when given.
    async fn run(
        &self,
        args: &[OsString],
        log: &Path,
        cgroups: &[PathBuf],
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Result<(), String> {
        let run = Command::from(command(&self.bin, self.kdat.as_deref(), cgroups))
            .args(args)
            .envs(env.iter().copied())
            .kill_on_drop(true)
            .output();
        let out = tokio::time::timeout(CRIU_TIMEOUT, run)
            .await
            .map_err(|_| format!("criu did not finish within {}s", CRIU_TIMEOUT.as_secs()))?
            .map_err(|e| format!("cannot run {}: {e}", self.bin.display()))?;
        if out.status.success() {
            return Ok(());
        }
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let errors: Vec<&str> = text
            .lines()
            .filter(|l| l.contains("Error (") && !l.contains("RLIMIT_NOFILE"))
            .collect();
        Err(format!(
            "criu {}: {}",
            out.status,
            last_lines(&errors.join("\n"), 4)
        ))
    }
}

/// [`KDAT_DIR`] (created, without a stale half-written cache) when the
/// host's `/run` is not tmpfs and `/dev/shm` is; `None` otherwise.
fn kdat_dir() -> Option<PathBuf> {
    use nix::sys::statfs::{statfs, TMPFS_MAGIC};
    let tmpfs = |p: &Path| statfs(p).is_ok_and(|s| s.filesystem_type() == TMPFS_MAGIC);
    let dir = PathBuf::from(KDAT_DIR);
    if tmpfs(Path::new("/run")) || !tmpfs(dir.parent()?) {
        return None;
    }
    std::fs::create_dir_all(&dir).ok()?;
    // A `criu` killed while saving leaves this behind, and then never
    // saves the cache again (it creates it with O_EXCL).
    let _ = std::fs::remove_file(dir.join("criu.kdat.tmp"));
    Some(dir)
}

/// `criu`, in a private mount namespace with `kdat` bound at `/run` when
/// given (nothing else of the host's mounts changes for it), and moved into
/// `cgroups` (directories) before it starts.
fn command(bin: &Path, kdat: Option<&Path>, cgroups: &[PathBuf]) -> std::process::Command {
    use std::ffi::CString;
    use std::os::unix::process::CommandExt;
    let mut cmd = std::process::Command::new(bin);
    let cstring = |p: &Path| CString::new(p.as_os_str().as_encoded_bytes()).ok();
    let dir = kdat.and_then(cstring);
    let procs: Vec<CString> = cgroups
        .iter()
        .filter_map(|d| cstring(&d.join("cgroup.procs")))
        .collect();
    if dir.is_none() && procs.is_empty() {
        return cmd;
    }
    let prepare = move || -> std::io::Result<()> {
        use nix::fcntl::{open, OFlag};
        use nix::mount::{mount, MsFlags};
        // "0": the writing process, in cgroup v1 and v2 alike.
        for file in &procs {
            let fd = open(
                file.as_c_str(),
                OFlag::O_WRONLY,
                nix::sys::stat::Mode::empty(),
            )?;
            nix::unistd::write(&fd, b"0")?;
        }
        if let Some(dir) = &dir {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
            let none: Option<&std::ffi::CStr> = None;
            mount(none, c"/", none, MsFlags::MS_REC | MsFlags::MS_SLAVE, none)?;
            mount(Some(dir.as_c_str()), c"/run", none, MsFlags::MS_BIND, none)?;
        }
        Ok(())
    };
    // SAFETY: runs in the forked child before exec; it only makes the open,
    // write, close, unshare and mount system calls, on strings allocated
    // before the fork (no allocation, no locks: async-signal-safe).
    unsafe {
        cmd.pre_exec(prepare);
    }
    cmd
}

fn common_args(images: &Path, log: &Path) -> Vec<OsString> {
    vec![
        "-D".into(),
        images.into(),
        "-o".into(),
        log.into(),
        "-v2".into(),
        "--tcp-established".into(),
        // Collecting the tree's cgroups is a fifth of an idle dump; a
        // restore runs in the sandbox's fresh cgroups instead.
        "--manage-cgroups=ignore".into(),
    ]
}

/// (mount point inside the sandbox, CRIU key) of every host mount.
fn external_mounts() -> Vec<(String, String)> {
    let agent = rewind_agent::sandbox::AGENT_DIR;
    let mut mounts = vec![
        (
            rewind_agent::protocol::WORKSPACE_DIR.to_owned(),
            "workspace".to_owned(),
        ),
        (format!("{agent}/rewind-agent"), "agent".to_owned()),
        (format!("{agent}/run"), "run".to_owned()),
    ];
    mounts.extend(
        DEVICES
            .iter()
            .map(|d| (format!("/dev/{d}"), format!("dev-{d}"))),
    );
    mounts
}

fn host_path(mounts: &HostMounts, inside: &str) -> PathBuf {
    let agent = rewind_agent::sandbox::AGENT_DIR;
    match inside {
        p if p == rewind_agent::protocol::WORKSPACE_DIR => mounts.workspace.clone(),
        p if p == format!("{agent}/rewind-agent") => mounts.agent_binary.clone(),
        p if p == format!("{agent}/run") => mounts.run_dir.clone(),
        dev => PathBuf::from(dev),
    }
}

/// The host pid an error line of CRIU's log names (`... (pid: 5479) failed`).
pub fn failed_pid(log: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .filter(|l| l.contains("Error ("))
        .find_map(|l| l.split("(pid: ").nth(1)?.split(')').next()?.parse().ok())
}

/// CRIU's page images: the bulk of a dump, each written once, in order.
pub fn is_page_image(name: &str) -> bool {
    name.starts_with("pages-") && name.ends_with(".img")
}

/// Total size of the files directly in `dir`.
pub fn image_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_pid_reads_the_pid_criu_names_in_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("dump.log");
        let text = "Warn  (x.c:1): pid 7 is fine (pid: 7)\n\
            Error (criu/parasite-syscall.c:280): Can't retrieve FDs from socket\n\
            Error (criu/cr-dump.c:1681): Dump files (pid: 5479) failed with -1\n";
        std::fs::write(&log, text).unwrap();

        let pid = failed_pid(&log);

        assert_eq!(pid, Some(5479));
    }

    #[test]
    fn external_mounts_map_back_to_host_paths() {
        let mounts = HostMounts {
            workspace: "/pool/ws".into(),
            agent_binary: "/img/agent".into(),
            run_dir: "/run/x".into(),
        };
        let mapped: Vec<PathBuf> = external_mounts()
            .iter()
            .map(|(inside, _)| host_path(&mounts, inside))
            .collect();
        assert_eq!(
            mapped[..3],
            [
                PathBuf::from("/pool/ws"),
                "/img/agent".into(),
                "/run/x".into()
            ]
        );
        assert_eq!(mapped[3], PathBuf::from("/dev/null"));
    }
}
