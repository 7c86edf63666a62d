//! Where a VM sandbox's files live and the CH `VmConfig` built from them.
//!
//! Per sandbox, in `<state_dir>/ch/`: the API socket, the hybrid-vsock
//! socket, CH's log and stdout/stderr, the guest serial log and the guest's
//! `state` disk (the root overlay's upper layer). The workspace disk is
//! `<workspace subvolume>/workspace.ext4`, so every Btrfs snapshot of the
//! workspace captures it.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::api::{
    ConsoleConfig, ConsoleMode, CpusConfig, DiskConfig, ImageType, MemoryConfig, NetConfig,
    PayloadConfig, RngConfig, VmConfig, VsockConfig,
};
use sha2::{Digest, Sha256};

use super::process::ProcessPaths;
use super::CloudHypervisorConfig;
use crate::runtime::{network, SandboxContext};

/// Disk ids (and virtio serials) the guest init and agent look for.
pub const ROOT_DISK: &str = "rootfs";
pub const STATE_DISK: &str = "state";
pub const WORKSPACE_DISK: &str = "ws";
/// Device id of the VM's NIC.
pub const NET_DEVICE: &str = "net0";
/// Guest CID. Hybrid vsock is per-VM (no host vhost-vsock), so all VMs may
/// use the same one.
pub const GUEST_CID: u64 = 3;
/// Longest path a Unix socket address takes (sun_path minus NUL).
const MAX_SOCKET_PATH: usize = 107;
/// Hybrid vsock appends `_<port>` for guest-initiated connections.
const VSOCK_SUFFIX_ROOM: usize = 6;

#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    #[error("guest image file {path} is missing (build it with images/build-guest.sh)")]
    GuestFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("socket path {path} is longer than {MAX_SOCKET_PATH} bytes; use a shorter data dir")]
    SocketPath { path: PathBuf },
    #[error("cannot create {path}")]
    Create {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("mkfs.ext4 for {path} failed: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
}

/// The guest built by `images/build-guest.sh`.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestImage {
    pub kernel: PathBuf,
    /// `None` for a kernel that needs none (a PVH payload such as the tests'
    /// `tests/payload/pvh-counter.S`).
    pub initramfs: Option<PathBuf>,
    pub rootfs: PathBuf,
    pub cmdline: String,
}

impl GuestImage {
    /// Load `vmlinuz`, `initrd.img` (optional), `rootfs.ext4` and `cmdline`
    /// from `dir`.
    pub fn load(dir: &Path) -> Result<GuestImage, LayoutError> {
        let file = |name: &str| {
            let path = dir.join(name);
            std::fs::metadata(&path)
                .map(|_| path.clone())
                .map_err(|source| LayoutError::GuestFile { path, source })
        };
        let cmdline_path = dir.join("cmdline");
        let cmdline =
            std::fs::read_to_string(&cmdline_path).map_err(|source| LayoutError::GuestFile {
                path: cmdline_path,
                source,
            })?;
        Ok(GuestImage {
            kernel: file("vmlinuz")?,
            initramfs: Some(dir.join("initrd.img")).filter(|p| p.exists()),
            rootfs: file("rootfs.ext4")?,
            cmdline: cmdline.trim().to_string(),
        })
    }
}

/// Paths of one sandbox's VM files.
#[derive(Debug, Clone, PartialEq)]
pub struct Layout {
    pub sandbox: String,
    pub dir: PathBuf,
    pub api_socket: PathBuf,
    pub vsock_socket: PathBuf,
    pub log_file: PathBuf,
    pub stderr_file: PathBuf,
    pub serial_log: PathBuf,
    pub state_disk: PathBuf,
    pub workspace_disk: PathBuf,
    /// Scratch copy of a saved state being restored (config rewritten).
    pub restore_dir: PathBuf,
    /// Networking on: CH runs in the sandbox's network namespace and the VM
    /// gets a virtio-net device on its TAP ([`crate::runtime::network`]).
    pub network: bool,
}

impl Layout {
    pub fn new(sb: &SandboxContext) -> Layout {
        let dir = sb.state_dir.join("ch");
        Layout {
            api_socket: dir.join("api.sock"),
            vsock_socket: dir.join("vsock.sock"),
            log_file: dir.join("ch.log"),
            stderr_file: dir.join("ch.stderr"),
            serial_log: dir.join("serial.log"),
            state_disk: dir.join("state.ext4"),
            restore_dir: dir.join("restore"),
            workspace_disk: sb.workspace.join("workspace.ext4"),
            sandbox: sb.name.clone(),
            network: sb.network,
            dir,
        }
    }

    pub fn process_paths(&self, cfg: &CloudHypervisorConfig) -> ProcessPaths {
        ProcessPaths {
            sandbox: self.sandbox.clone(),
            owner: cfg.owner.clone(),
            binary: cfg.binary.clone(),
            api_socket: self.api_socket.clone(),
            log_file: self.log_file.clone(),
            stderr_file: self.stderr_file.clone(),
            netns: self
                .network
                .then(|| network::netns_path(&cfg.owner, &self.sandbox)),
        }
    }

    /// Create the directory and check the socket paths fit in `sun_path`.
    pub fn prepare(&self) -> Result<(), LayoutError> {
        let too_long = |p: &Path, room: usize| p.as_os_str().len() + room > MAX_SOCKET_PATH;
        if too_long(&self.api_socket, 0) || too_long(&self.vsock_socket, VSOCK_SUFFIX_ROOM) {
            return Err(LayoutError::SocketPath {
                path: self.vsock_socket.clone(),
            });
        }
        std::fs::create_dir_all(&self.dir).map_err(|source| LayoutError::Create {
            path: self.dir.clone(),
            source,
        })
    }

    /// Remove the vsock socket and the `_<port>` sockets CH leaves next to it.
    pub fn remove_vsock_sockets(&self) {
        super::process::remove_if_exists(&self.vsock_socket);
        let Some(name) = self.vsock_socket.file_name().and_then(|n| n.to_str()) else {
            return;
        };
        let prefix = format!("{name}_");
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                super::process::remove_if_exists(&entry.path());
            }
        }
    }

    pub fn workspace_disk_config(&self) -> DiskConfig {
        disk(&self.workspace_disk, WORKSPACE_DISK, false)
    }

    /// The `vm.create` body for this sandbox.
    pub fn vm_config(&self, guest: &GuestImage, sb: &SandboxContext) -> VmConfig {
        let vcpus = sb.limits.vcpus.max(1);
        VmConfig {
            cpus: Some(CpusConfig {
                boot_vcpus: vcpus,
                max_vcpus: vcpus,
                extra: Default::default(),
            }),
            memory: Some(MemoryConfig {
                size: guest_memory(sb.limits.memory_bytes),
                extra: Default::default(),
            }),
            payload: PayloadConfig {
                kernel: Some(guest.kernel.clone()),
                initramfs: guest.initramfs.clone(),
                cmdline: Some(self.cmdline(guest)),
                extra: Default::default(),
            },
            net: self.network.then(|| vec![self.net_config()]),
            disks: Some(vec![
                disk(&guest.rootfs, ROOT_DISK, true),
                disk(&self.state_disk, STATE_DISK, false),
                self.workspace_disk_config(),
            ]),
            rng: Some(RngConfig {
                src: "/dev/urandom".into(),
                extra: Default::default(),
            }),
            serial: Some(console(ConsoleMode::File, Some(self.serial_log.clone()))),
            console: Some(console(ConsoleMode::Off, None)),
            vsock: Some(VsockConfig {
                cid: GUEST_CID,
                socket: self.vsock_socket.clone(),
                id: None,
                extra: Default::default(),
            }),
            ..VmConfig::default()
        }
    }

    fn cmdline(&self, guest: &GuestImage) -> String {
        match self.network {
            true => format!("{} {}", guest.cmdline, network::guest_cmdline()),
            false => guest.cmdline.clone(),
        }
    }

    /// The VM's NIC: the sandbox namespace's TAP and [`Layout::mac`].
    pub fn net_config(&self) -> NetConfig {
        NetConfig {
            tap: Some(network::TAP.into()),
            mac: Some(self.mac()),
            id: Some(NET_DEVICE.into()),
            extra: Default::default(),
        }
    }

    /// The guest MAC: derived from the sandbox name, so it survives reboots
    /// and restores, and a fork (another name) gets its own.
    pub fn mac(&self) -> String {
        stable_mac(&self.sandbox)
    }
}

/// A locally administered unicast MAC derived from `seed`.
fn stable_mac(seed: &str) -> String {
    let hash = Sha256::digest(seed.as_bytes());
    let mut b = [0u8; 6];
    b.copy_from_slice(&hash[..6]);
    b[0] = (b[0] & 0xfe) | 0x02;
    b.map(|x| format!("{x:02x}")).join(":")
}

/// Guest RAM: at least 128 MiB, rounded down to whole MiB.
fn guest_memory(limit: u64) -> u64 {
    const MIB: u64 = 1 << 20;
    (limit / MIB).max(128) * MIB
}

fn disk(path: &Path, id: &str, readonly: bool) -> DiskConfig {
    DiskConfig {
        path: path.to_path_buf(),
        readonly,
        id: Some(id.into()),
        serial: Some(id.into()),
        image_type: Some(ImageType::Raw),
        extra: Default::default(),
    }
}

fn console(mode: ConsoleMode, file: Option<PathBuf>) -> ConsoleConfig {
    ConsoleConfig {
        mode,
        file,
        socket: None,
        extra: Default::default(),
    }
}

/// Create a sparse raw ext4 image unless `path` exists. Built under a
/// temporary name and renamed, so a crash never leaves a half-made image.
pub fn ensure_ext4_image(path: &Path, size: u64, label: &str) -> Result<(), LayoutError> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension("ext4.tmp");
    let create = |source| LayoutError::Create {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::create(&tmp).map_err(create)?;
    file.set_len(size).map_err(create)?;
    drop(file);
    let out = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-L", label, "-m", "0", "-E"])
        .arg("root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1")
        .arg(&tmp)
        .output()
        .map_err(create)?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(LayoutError::Mkfs {
            path: path.to_path_buf(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    std::fs::rename(&tmp, path).map_err(create)
}

/// Last `n` lines of the guest serial log, for error messages.
pub fn serial_tail(layout: &Layout, n: usize) -> String {
    let text = std::fs::read_to_string(&layout.serial_log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::Limits;

    fn sandbox(state: &Path) -> SandboxContext {
        SandboxContext {
            name: "a".into(),
            workspace: state.join("ws"),
            state_dir: state.to_path_buf(),
            limits: Limits {
                memory_bytes: 512 << 20,
                cpu_millis: 1000,
                pids: 100,
                vcpus: 2,
            },
            network: false,
        }
    }

    #[test]
    fn vm_config_sets_disk_serials_and_vsock() {
        let sb = sandbox(Path::new("/s"));

        let cfg = Layout::new(&sb).vm_config(&guest(), &sb);

        let serials: Vec<_> = cfg.disks.unwrap().into_iter().map(|d| d.serial).collect();
        assert_eq!(
            serials,
            [
                Some("rootfs".into()),
                Some("state".into()),
                Some("ws".into())
            ]
        );
        assert_eq!(cfg.vsock.unwrap().socket, PathBuf::from("/s/ch/vsock.sock"));
        assert_eq!(cfg.memory.unwrap().size, 512 << 20);
        assert_eq!(cfg.cpus.unwrap().boot_vcpus, 2);
    }

    fn guest() -> GuestImage {
        GuestImage {
            kernel: "/g/vmlinuz".into(),
            initramfs: Some("/g/initrd.img".into()),
            rootfs: "/g/rootfs.ext4".into(),
            cmdline: "console=ttyS0".into(),
        }
    }

    #[test]
    fn vm_config_without_network_has_no_nic() {
        let sb = sandbox(Path::new("/s"));

        let cfg = Layout::new(&sb).vm_config(&guest(), &sb);

        assert_eq!(cfg.net, None);
        assert_eq!(cfg.payload.cmdline.as_deref(), Some("console=ttyS0"));
    }

    #[test]
    fn vm_config_with_network_adds_tap_nic_and_guest_address() {
        let mut sb = sandbox(Path::new("/s"));
        sb.network = true;

        let cfg = Layout::new(&sb).vm_config(&guest(), &sb);

        let nets = cfg.net.unwrap();
        assert_eq!(nets.len(), 1);
        assert_eq!(nets[0].tap.as_deref(), Some("tap0"));
        assert_eq!(nets[0].id.as_deref(), Some(NET_DEVICE));
        assert_eq!(
            cfg.payload.cmdline.as_deref(),
            Some("console=ttyS0 rewind.ip=10.0.2.15/24 rewind.gw=10.0.2.2")
        );
    }

    #[test]
    fn process_paths_enter_the_sandbox_namespace_only_with_network() {
        let mut sb = sandbox(Path::new("/s"));
        let cfg = CloudHypervisorConfig::new("/ch".into(), "/g".into());
        assert_eq!(Layout::new(&sb).process_paths(&cfg).netns, None);
        sb.network = true;

        let netns = Layout::new(&sb).process_paths(&cfg).netns;

        assert_eq!(netns, Some(network::netns_path("/g", "a")));
    }

    #[test]
    fn stable_mac_is_local_unicast_and_per_seed() {
        let a = stable_mac("a");

        assert_eq!(a, stable_mac("a"));
        assert_ne!(a, stable_mac("b"));
        let first = u8::from_str_radix(&a[..2], 16).unwrap();
        assert_eq!(first & 0x03, 0x02, "{a}");
    }

    #[test]
    fn guest_memory_has_floor_of_128_mib() {
        assert_eq!(guest_memory(1), 128 << 20);
    }

    #[test]
    fn prepare_rejects_long_socket_path() {
        let long = PathBuf::from("/").join("x".repeat(100));
        let layout = Layout::new(&sandbox(&long));

        let err = layout.prepare().unwrap_err();

        assert!(matches!(err, LayoutError::SocketPath { .. }));
    }

    #[test]
    fn ensure_ext4_image_creates_sparse_ext4() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("ws.ext4");

        ensure_ext4_image(&img, 64 << 20, "t").unwrap();

        let mut blkid = Command::new("blkid");
        blkid.args(["-o", "value", "-s", "TYPE"]);
        let typ = out_text(blkid, &img);
        assert_eq!(typ, "ext4");
        assert_eq!(std::fs::metadata(&img).unwrap().len(), 64 << 20);
    }

    fn out_text(mut cmd: Command, path: &Path) -> String {
        let out = cmd.arg(path).output().unwrap();
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    #[test]
    fn guest_image_load_names_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cmdline"), "x\n").unwrap();

        let err = GuestImage::load(dir.path()).unwrap_err();

        assert!(err.to_string().contains("vmlinuz"), "{err}");
    }
}
