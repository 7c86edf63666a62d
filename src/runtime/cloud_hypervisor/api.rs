//! Typed request and response bodies of the Cloud Hypervisor REST API (v1).
//!
//! Field names follow `vmm/src/api/openapi/cloud-hypervisor.yaml` of CH v53.
//! Only the fields rewind sets or reads are typed; everything else CH reports
//! back is kept in `extra` maps so nothing is silently dropped when a config
//! is read and sent again.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// `GET /vmm.ping`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmmPingResponse {
    pub version: String,
    #[serde(default)]
    pub build_version: Option<String>,
    #[serde(default)]
    pub pid: Option<i64>,
    #[serde(default)]
    pub features: Vec<String>,
}

/// `PUT /vm.create` body (and `config` of `GET /vm.info`).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VmConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<CpusConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<MemoryConfig>,
    pub payload: PayloadConfig,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks: Option<Vec<DiskConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<Vec<NetConfig>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rng: Option<RngConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<ConsoleConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<ConsoleConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockConfig>,
    /// Fields CH reports that rewind does not model.
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpusConfig {
    pub boot_vcpus: u8,
    pub max_vcpus: u8,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemoryConfig {
    /// Bytes.
    pub size: u64,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PayloadConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initramfs: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// A virtio-blk disk (`vm.create` `disks[]`, `vm.add-disk` body).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct DiskConfig {
    pub path: PathBuf,
    #[serde(default)]
    pub readonly: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_type: Option<ImageType>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImageType {
    FixedVhd,
    Qcow2,
    Raw,
    Vhdx,
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NetConfig {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RngConfig {
    pub src: PathBuf,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `ConsoleMode` of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ConsoleMode {
    Off,
    Pty,
    Tty,
    File,
    Socket,
    Null,
}

/// `SerialConfig` / `ConsoleConfig` of the spec (same shape for our needs).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleConfig {
    pub mode: ConsoleMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub socket: Option<PathBuf>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// virtio-vsock; `socket` is CH's hybrid-vsock Unix socket on the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VsockConfig {
    pub cid: u64,
    pub socket: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `VmState` of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VmState {
    Created,
    Running,
    Shutdown,
    Paused,
}

/// `GET /vm.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmInfo {
    pub config: VmConfig,
    pub state: VmState,
    #[serde(default)]
    pub memory_actual_size: Option<u64>,
    #[serde(default)]
    pub device_tree: Option<BTreeMap<String, DeviceNode>>,
}

impl VmInfo {
    /// Whether a disk with this id is in the VM's config. CH drops it from
    /// the config as soon as `vm.remove-device` is accepted.
    pub fn has_disk(&self, id: &str) -> bool {
        let disks = self.config.disks.as_deref().unwrap_or_default();
        disks.iter().any(|d| d.id.as_deref() == Some(id))
    }

    /// Whether a device with this id exists. After `vm.remove-device` it
    /// stays in the device tree (and keeps its image open and locked) until
    /// the guest has acknowledged the ACPI eject.
    pub fn has_device(&self, id: &str) -> bool {
        match &self.device_tree {
            Some(tree) => tree.contains_key(id),
            None => self.has_disk(id),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceNode {
    #[serde(default)]
    pub id: Option<String>,
    #[serde(default)]
    pub children: Vec<String>,
    #[serde(default)]
    pub pci_bdf: Option<String>,
    #[serde(flatten)]
    pub extra: BTreeMap<String, Value>,
}

/// `GET /vm.counters`: device id → counter name → value.
pub type VmCounters = BTreeMap<String, BTreeMap<String, u64>>;

/// Answer of a hot-plug (`vm.add-disk` with 200).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PciDeviceInfo {
    pub id: String,
    pub bdf: String,
}

/// `PUT /vm.resize`: new vCPU count and/or RAM size (bytes). CH refuses
/// what the VM was not booted to allow (e.g. more than `max_vcpus`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmResize {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_vcpus: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub desired_ram: Option<u64>,
}

/// `PUT /vm.remove-device`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRemoveDevice {
    pub id: String,
}

/// `PUT /vm.snapshot`; `destination_url` is `file:///dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmSnapshotConfig {
    pub destination_url: String,
}

/// `MemoryRestoreMode` of the spec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryRestoreMode {
    Copy,
    OnDemand,
}

/// `PUT /vm.restore`; `source_url` is `file:///dir`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestoreConfig {
    pub source_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefault: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_restore_mode: Option<MemoryRestoreMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<bool>,
}

/// `file://` URL of a local directory, as `vm.snapshot` / `vm.restore` take it.
pub fn file_url(dir: &std::path::Path) -> String {
    format!("file://{}", dir.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_resize_sends_only_what_changes() {
        let cpu = VmResize {
            desired_vcpus: Some(2),
            desired_ram: None,
        };
        assert_eq!(
            serde_json::to_string(&cpu).unwrap(),
            r#"{"desired_vcpus":2}"#
        );
    }

    #[test]
    fn vm_info_deserializes_ch_answer_with_unknown_fields() {
        let json = r#"{"config":{"cpus":{"boot_vcpus":1,"max_vcpus":1,"kvm_hyperv":false},
            "memory":{"size":268435456,"shared":false},
            "payload":{"kernel":"/k","cmdline":"console=ttyS0"},
            "disks":[{"path":"/ws.ext4","readonly":false,"id":"ws","serial":"ws","direct":false}],
            "vsock":{"cid":3,"socket":"/v.sock","id":"_vsock0","iommu":false},
            "iommu":false},"state":"Running","memory_actual_size":268435456}"#;

        let info: VmInfo = serde_json::from_str(json).unwrap();

        assert_eq!(info.state, VmState::Running);
        assert!(info.has_disk("ws"));
        assert!(
            info.has_device("ws"),
            "no device tree: falls back to the config"
        );
        assert_eq!(info.config.vsock.unwrap().cid, 3);
        assert_eq!(info.config.extra.get("iommu"), Some(&Value::Bool(false)));
    }

    #[test]
    fn disk_config_serializes_only_set_fields() {
        let disk = DiskConfig {
            path: "/a.ext4".into(),
            serial: Some("ws".into()),
            ..DiskConfig::default()
        };

        let json = serde_json::to_value(&disk).unwrap();

        assert_eq!(
            json,
            serde_json::json!({"path": "/a.ext4", "readonly": false, "serial": "ws"})
        );
    }

    #[test]
    fn file_url_prefixes_scheme() {
        assert_eq!(file_url("/a/b".as_ref()), "file:///a/b");
    }
}
