//! A tiny root file system made of busybox-static, shared by the agent's
//! tests (`agent/tests/common`) and the service's (`tests/common`, by path).

use std::path::Path;
use std::process::Command;

/// Fill `root` with the directories a sandbox needs, busybox, a link to it
/// per applet (`busybox --list-full`) and root's passwd and group entries.
pub fn populate(root: &Path) {
    for dir in [
        "bin",
        "sbin",
        "usr/bin",
        "usr/sbin",
        "etc",
        "root",
        "tmp",
        "proc",
        "sys",
        "dev",
        "workspace",
    ] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "busybox-static is not installed (scripts/install-deps.sh installs it)"
    );
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    // Ask the host's busybox: exec'ing the fresh copy races with other test
    // threads' forks, which briefly inherit its write fd (ETXTBSY).
    let out = Command::new(busybox).arg("--list-full").output().unwrap();
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let link = root.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("/bin/busybox", &link).unwrap();
        }
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
}
