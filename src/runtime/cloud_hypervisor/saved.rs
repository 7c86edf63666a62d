//! Saved VM state on disk: what `vm.snapshot` writes plus the guest's
//! `state` disk, and how a saved state is prepared for `vm.restore` into a
//! (possibly different) sandbox.
//!
//! A saved-state directory holds CH's `config.json`, `state.json`,
//! `memory-ranges`, and rewind's copy of `state.ext4` (the root overlay's
//! upper layer, copied while the VM is paused so it matches memory). The
//! workspace disk is not in it: it lives in the Btrfs snapshot of the
//! workspace subvolume taken during the same pause.
//!
//! `manifest.json`, written last, lists every other file with its size and
//! SHA-256; [`verify`] checks them before a restore or fork touches
//! anything, so a corrupt or truncated memory file is refused by name
//! instead of resuming a guest with damaged memory.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::layout::{Layout, STATE_DISK, WORKSPACE_DISK};
use crate::runtime::manifest::{self, MANIFEST_FILE};

/// CH's file names (vmm/src/migration/mod.rs, memory_manager.rs).
const CONFIG_FILE: &str = "config.json";
/// rewind's copy of the guest state disk.
const STATE_DISK_FILE: &str = "state.ext4";

#[derive(Debug, thiserror::Error)]
pub enum SavedError {
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("saved VM config {path} is not what cloud-hypervisor writes")]
    Config {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("saved VM config {path} has no {field}")]
    MissingField { path: PathBuf, field: &'static str },
    #[error(
        "the saved state has a network device but networking is off ([network] enabled = false)"
    )]
    NetworkOff,
    #[error(transparent)]
    Manifest(#[from] manifest::ManifestError),
}

/// Record size and SHA-256 of every file in `dir` in `manifest.json`.
pub fn write_manifest(dir: &Path) -> Result<(), SavedError> {
    Ok(manifest::write(dir, Vec::new())?)
}

/// Check every file listed in `dir`'s manifest: present, same size, same
/// SHA-256 ([`manifest::verify`]).
pub fn verify(dir: &Path) -> Result<(), SavedError> {
    Ok(manifest::verify(dir)?)
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SavedError {
    let path = path.to_path_buf();
    move |source| SavedError::Io { what, path, source }
}

/// Create `dir` for `vm.snapshot`; it must not hold anything yet.
pub fn create_target(dir: &Path) -> Result<(), SavedError> {
    std::fs::create_dir_all(dir).map_err(io("cannot create snapshot dir", dir))?;
    let mut entries = std::fs::read_dir(dir).map_err(io("cannot read snapshot dir", dir))?;
    if entries.next().is_some() {
        return Err(SavedError::Io {
            what: "snapshot dir is not empty:",
            path: dir.to_path_buf(),
            source: std::io::Error::from(std::io::ErrorKind::AlreadyExists),
        });
    }
    Ok(())
}

/// Delete whatever a failed save left in `dir` (and `dir` itself).
pub fn discard(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            tracing::warn!(dir = %dir.display(), error = %e, "cannot delete partial VM state");
        }
    }
}

/// Copy the guest state disk into the saved state (reflink where possible).
pub fn save_state_disk(layout: &Layout, dir: &Path) -> Result<(), SavedError> {
    let to = dir.join(STATE_DISK_FILE);
    std::fs::copy(&layout.state_disk, &to)
        .map(drop)
        .map_err(io("cannot copy the guest state disk to", &to))
}

/// Build `layout.restore_dir` from the saved state in `saved`: CH's files
/// symlinked (CH only reads them; `vm.restore` copies memory in), `config.json` rewritten to this sandbox's
/// disk, vsock and serial paths; the state disk put back in place.
pub fn prepare_restore(layout: &Layout, saved: &Path) -> Result<PathBuf, SavedError> {
    // First the config: it may refuse the restore, before anything changes.
    let config = read_config(&saved.join(CONFIG_FILE))?;
    let config = rewrite_config(config, layout, &saved.join(CONFIG_FILE))?;
    let target = &layout.restore_dir;
    discard(target);
    std::fs::create_dir_all(target).map_err(io("cannot create", target))?;
    let entries = std::fs::read_dir(saved).map_err(io("cannot read saved state", saved))?;
    for entry in entries {
        let entry = entry.map_err(io("cannot read saved state", saved))?;
        let name = entry.file_name();
        if name == CONFIG_FILE || name == STATE_DISK_FILE || name == MANIFEST_FILE {
            continue;
        }
        let to = target.join(&name);
        std::os::unix::fs::symlink(entry.path(), &to)
            .map_err(io("cannot link saved state to", &to))?;
    }
    let out = target.join(CONFIG_FILE);
    let text = serde_json::to_vec_pretty(&config).expect("a JSON value serializes");
    std::fs::write(&out, text).map_err(io("cannot write", &out))?;
    let disk = saved.join(STATE_DISK_FILE);
    std::fs::copy(&disk, &layout.state_disk)
        .map_err(io("cannot restore state disk from", &disk))?;
    Ok(target.clone())
}

fn read_config(path: &Path) -> Result<Value, SavedError> {
    let text = std::fs::read(path).map_err(io("cannot read", path))?;
    serde_json::from_slice(&text).map_err(|source| SavedError::Config {
        path: path.to_path_buf(),
        source,
    })
}

/// Point the saved config at this sandbox's files. Network devices get this
/// sandbox's MAC (a fork gets its own, a restore keeps its own); their TAP
/// name stays (every sandbox namespace has the same). A config with a
/// network device is refused while networking is off: CH would create its
/// TAP in the service's own namespace.
fn rewrite_config(mut cfg: Value, layout: &Layout, path: &Path) -> Result<Value, SavedError> {
    if !layout.network && cfg["net"].as_array().is_some_and(|n| !n.is_empty()) {
        return Err(SavedError::NetworkOff);
    }
    let missing = |field| SavedError::MissingField {
        path: path.to_path_buf(),
        field,
    };
    let disks = cfg["disks"]
        .as_array_mut()
        .ok_or_else(|| missing("disks"))?;
    for disk in disks.iter_mut() {
        match disk["id"].as_str() {
            Some(WORKSPACE_DISK) => disk["path"] = path_value(&layout.workspace_disk),
            Some(STATE_DISK) => disk["path"] = path_value(&layout.state_disk),
            _ => {}
        }
    }
    let vsock = cfg.get_mut("vsock").filter(|v| v.is_object());
    let vsock = vsock.ok_or_else(|| missing("vsock"))?;
    vsock["socket"] = path_value(&layout.vsock_socket);
    if cfg["serial"]["mode"] == "File" {
        cfg["serial"]["file"] = path_value(&layout.serial_log);
    }
    if let Some(nets) = cfg["net"].as_array_mut() {
        for net in nets {
            net["mac"] = Value::String(layout.mac());
        }
    }
    Ok(cfg)
}

fn path_value(p: &Path) -> Value {
    Value::String(p.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Limits, SandboxContext};

    fn layout(root: &Path) -> Layout {
        Layout::new(&SandboxContext {
            name: "fork".into(),
            workspace: root.join("ws"),
            state_dir: root.join("state"),
            limits: Limits {
                memory_bytes: 256 << 20,
                cpu_millis: 1000,
                pids: 64,
                vcpus: 1,
            },
            // The saved configs below have a NIC, which only restores with
            // networking on.
            network: true,
        })
    }

    fn saved_config() -> Value {
        serde_json::json!({
            "disks": [
                {"path": "/old/rootfs.ext4", "id": "rootfs", "readonly": true},
                {"path": "/old/ch/state.ext4", "id": "state"},
                {"path": "/old/ws/workspace.ext4", "id": "ws"}
            ],
            "vsock": {"cid": 3, "socket": "/old/ch/vsock.sock"},
            "serial": {"mode": "File", "file": "/old/ch/serial.log"},
            "net": [{"mac": "02:00:00:00:00:01", "tap": "t0"}]
        })
    }

    #[test]
    fn rewrite_config_points_at_new_sandbox() {
        let l = layout(Path::new("/new"));

        let cfg = rewrite_config(saved_config(), &l, Path::new("c.json")).unwrap();

        assert_eq!(cfg["disks"][0]["path"], "/old/rootfs.ext4");
        assert_eq!(cfg["disks"][1]["path"], "/new/state/ch/state.ext4");
        assert_eq!(cfg["disks"][2]["path"], "/new/ws/workspace.ext4");
        assert_eq!(cfg["vsock"]["socket"], "/new/state/ch/vsock.sock");
        assert_eq!(cfg["serial"]["file"], "/new/state/ch/serial.log");
        assert_eq!(cfg["net"][0]["mac"], l.mac().as_str());
        assert_ne!(cfg["net"][0]["mac"], "02:00:00:00:00:01");
    }

    #[test]
    fn rewrite_config_without_vsock_is_error() {
        let l = layout(Path::new("/new"));
        let cfg = serde_json::json!({"disks": []});

        let err = rewrite_config(cfg, &l, Path::new("c.json")).unwrap_err();

        assert!(matches!(
            err,
            SavedError::MissingField { field: "vsock", .. }
        ));
    }

    #[test]
    fn rewrite_config_refuses_a_network_device_while_networking_is_off() {
        let mut l = layout(Path::new("/new"));
        l.network = false;
        let with_nic = serde_json::json!({"disks": [], "vsock": {}, "net": [{"tap": "tap0"}]});
        let without = serde_json::json!({"disks": [], "vsock": {}, "net": null});

        let err = rewrite_config(with_nic, &l, Path::new("c.json")).unwrap_err();

        assert!(matches!(err, SavedError::NetworkOff));
        assert!(rewrite_config(without, &l, Path::new("c.json")).is_ok());
    }

    #[test]
    fn prepare_restore_copies_and_rewrites() {
        let root = tempfile::tempdir().unwrap();
        let l = layout(root.path());
        std::fs::create_dir_all(&l.dir).unwrap();
        let saved = root.path().join("saved");
        std::fs::create_dir_all(&saved).unwrap();
        std::fs::write(saved.join("memory-ranges"), b"mem").unwrap();
        std::fs::write(saved.join("state.json"), b"{}").unwrap();
        std::fs::write(saved.join("state.ext4"), b"disk").unwrap();
        std::fs::write(saved.join("config.json"), saved_config().to_string()).unwrap();

        let dir = prepare_restore(&l, &saved).unwrap();

        assert_eq!(std::fs::read(dir.join("memory-ranges")).unwrap(), b"mem");
        assert_eq!(std::fs::read(&l.state_disk).unwrap(), b"disk");
        let cfg = read_config(&dir.join("config.json")).unwrap();
        assert_eq!(cfg["vsock"]["socket"], path_value(&l.vsock_socket));
        assert!(!dir.join("state.ext4").exists());
    }

    #[test]
    fn create_target_refuses_non_empty_dir() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("x"), b"").unwrap();

        let err = create_target(root.path()).unwrap_err();

        assert!(matches!(err, SavedError::Io { .. }));
    }
}
