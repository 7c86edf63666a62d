//! Clean-up after the tests: every data dir a test binary used is released
//! when the binary exits, whatever its tests did (a panic included): the
//! sandboxes of the dir are killed through their cgroups (the runtime's own
//! teardown), any process naming the dir on its command line is killed, and
//! every mount below the dir is unmounted, which releases the pool's loop
//! device. `scripts/check-leftovers.sh` checks that nothing is left.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rewind::runtime::namespace::Cgroups;
use rewind_storage::leftovers::{self, Leftovers};

/// Release `dir` when this test binary exits.
pub fn release_at_exit(dir: &Path) {
    leftovers::release_at_exit(dir, release);
}

/// Kill every sandbox and process of data dir `dir` and unmount what is
/// mounted below it (lazily: the pool's loop device is released once the
/// last file of the pool is closed); returns what is still there.
pub fn release(dir: &Path) -> Leftovers {
    let cgroups = Cgroups::for_data_dir(dir);
    for name in cgroups.list() {
        if let Err(e) = cgroups.remove(&name) {
            eprintln!("cannot remove the cgroups of sandbox {name}: {e}");
        }
    }
    kill_processes_naming(dir);
    leftovers::release(dir)
}

/// SIGKILL every process (but this one) whose command line names `dir`,
/// reaping those that are our children.
fn kill_processes_naming(dir: &Path) {
    let me = std::process::id() as i32;
    for pid in processes_naming(dir).into_iter().filter(|p| *p != me) {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WNOHANG));
    }
}

/// Live (non-zombie) processes with an argument that is `dir` or a path
/// below it.
pub fn processes_naming(dir: &Path) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(") ")
                .is_some_and(|(_, s)| s.starts_with('Z'));
            let names_dir = cmdline
                .split(|b| *b == 0)
                .any(|arg| Path::new(std::ffi::OsStr::from_bytes(arg)).starts_with(dir));
            !zombie && names_dir
        })
        .collect()
}
