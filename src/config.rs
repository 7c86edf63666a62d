//! Configuration: one [`Config`] struct, read from `config/rewind.toml`,
//! overridden by environment variables and then by command-line flags.
//! [`Config::validate`] names the bad key on any error.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Which runtime the service should use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RuntimeChoice {
    Auto,
    Namespace,
    CloudHypervisor,
}

impl std::str::FromStr for RuntimeChoice {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "namespace" => Ok(Self::Namespace),
            "cloud-hypervisor" => Ok(Self::CloudHypervisor),
            other => Err(ConfigError::Invalid {
                key: "runtime",
                message: format!("`{other}` is not one of auto, namespace, cloud-hypervisor"),
            }),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub pool_size_gb: u64,
    pub max_auto_snapshots: usize,
    pub keep_recent_snapshots: usize,
    pub quotas: bool,
    /// Archive thinned snapshots to the cold tier instead of deleting them.
    pub cold_history: bool,
    /// Cap on the body of `POST /vms/import` (MiB); 0 = no cap.
    pub max_import_mb: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecConfig {
    pub default_timeout_secs: u64,
    pub max_timeout_secs: u64,
    pub max_output_bytes: u64,
    pub max_command_bytes: usize,
    /// Cap on the `stdin` bytes of one run request.
    pub max_stdin_bytes: usize,
    /// A terminal session with no input or output for this long is ended.
    pub pty_idle_timeout_secs: u64,
    /// A terminal session is ended after this long whatever it does.
    pub pty_max_duration_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    pub memory_mb: u64,
    pub cpu_millis: u64,
    pub pids: u64,
    pub vcpus: u8,
    /// Let sandbox commands create user namespaces (`unshare -U`); a
    /// seccomp rule denies it by default, as Docker's default profile does.
    pub allow_nested_userns: bool,
    /// Default and maximum disk limit per sandbox (MiB); 0 = no limits.
    pub disk_mb: u64,
    /// Sandboxes one (non-admin) owner may have at once; 0 = no cap.
    pub max_sandboxes_per_owner: u64,
    /// Runs one (non-admin) owner may have going at once; 0 = no cap.
    pub max_runs_per_owner: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    pub max_body_bytes: usize,
    /// How long a bounded route (reads and bookkeeping: lists, gets, keys,
    /// forwards, metrics; not runs, streams, snapshots, files or archives)
    /// may take before it answers 408.
    pub request_timeout_secs: u64,
    pub shutdown_grace_secs: u64,
    /// Give clients the whole error chain of a runtime failure (host paths
    /// included) instead of its first link; for development. The log line
    /// always has the chain, with the request id.
    pub expose_error_chain: bool,
}

/// File transfer and diff caps; see `sandbox/files.rs` and `sandbox/diff.rs`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesConfig {
    /// Largest file one upload may write (bigger: 413, nothing written).
    pub max_upload_bytes: u64,
    /// Most entries one listing returns (more: 413).
    pub max_list_entries: usize,
    /// Largest file (either side) a diff shows content changes of.
    pub max_diff_content_bytes: u64,
    /// Most paths a run's `changes` summary names (counts are always given).
    pub max_change_paths: usize,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            max_upload_bytes: 256 * 1024 * 1024,
            max_list_entries: 100_000,
            max_diff_content_bytes: 64 * 1024,
            max_change_paths: 100,
        }
    }
}

/// Sandbox networking; see [`crate::runtime::network`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetworkConfig {
    /// Give each VM sandbox a NIC on a TAP in its own network namespace.
    pub enabled: bool,
    /// Address the host side of port forwards listens on.
    pub forward_bind: IpAddr,
    /// Hosts sandboxes may reach through rewind's egress proxy (`host`,
    /// `*.domain`, IP, each with an optional `:port`); empty: no egress.
    pub egress_allow: Vec<String>,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            forward_bind: IpAddr::from([127, 0, 0, 1]),
            egress_allow: Vec::new(),
        }
    }
}

/// API keys, and the users and tokens of the MicroVM Sandbox API (`/api/v1`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// `POST /api-keys` without a key always creates a (non-admin) key, as
    /// the original OpenSandbox service does. Off by default; a warning is
    /// logged at start-up when on.
    pub open_key_creation: bool,
    /// Lifetime of a JWT from `POST /api/v1/auth/login` (seconds).
    pub jwt_expiry_secs: u64,
    /// Failed logins per username+IP before backoff starts.
    pub login_failures_free: u32,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            open_key_creation: false,
            jwt_expiry_secs: 3600,
            login_failures_free: 5,
        }
    }
}

/// The audit log (`GET /audit-logs`); see [`crate::api::audit`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// Delete rows older than this many days (0 = keep forever).
    pub retention_days: u64,
    /// Keep at most this many rows, the newest (0 = no cap).
    pub retention_rows: u64,
}

impl Default for AuditConfig {
    fn default() -> Self {
        Self {
            retention_days: 90,
            retention_rows: 1_000_000,
        }
    }
}

/// Per-owner rate limits; see [`crate::api::ratelimit`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// Requests an owner may make per hour (sustained rate).
    pub per_hour: u32,
    /// Requests an owner may make at once.
    pub burst: u32,
    /// Requests one IP address may make per minute to the routes that need
    /// no credentials (health, login, register, key bootstrap); 0 = off.
    pub per_ip_per_minute: u32,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            per_hour: 1000,
            burst: 100,
            per_ip_per_minute: 600,
        }
    }
}

/// Live events (WebSockets under `/api/v1`); see [`crate::events`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EventsConfig {
    /// Events kept for a subscriber that falls behind; one that falls
    /// further behind is dropped with a close frame.
    pub buffer: usize,
    /// A subscriber whose socket takes longer than this to accept one
    /// event is dropped.
    pub send_timeout_secs: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        Self {
            buffer: 256,
            send_timeout_secs: 10,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
        }
    }
}

/// `GET /metrics` (Prometheus text format).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// Serve `/metrics` to an admin key on the API port.
    pub enabled: bool,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// The whole configuration. Field docs live in `config/rewind.toml`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub bind: String,
    pub port: u16,
    pub data_dir: PathBuf,
    pub db_path: PathBuf,
    pub runtime: RuntimeChoice,
    pub base_image: PathBuf,
    pub agent_binary: PathBuf,
    pub ch_binary: PathBuf,
    pub storage: StorageConfig,
    pub exec: ExecConfig,
    pub limits: LimitsConfig,
    pub server: ServerConfig,
    pub network: NetworkConfig,
    pub files: FilesConfig,
    pub auth: AuthConfig,
    pub audit: AuditConfig,
    pub log: LogConfig,
    pub metrics: MetricsConfig,
    pub rate_limit: RateLimitConfig,
    pub events: EventsConfig,
}

impl Default for StorageConfig {
    fn default() -> Self {
        Self {
            pool_size_gb: 20,
            max_auto_snapshots: 1000,
            keep_recent_snapshots: rewind_storage::DEFAULT_KEEP_RECENT,
            quotas: false,
            cold_history: false,
            max_import_mb: 10 * 1024,
        }
    }
}

impl Default for ExecConfig {
    fn default() -> Self {
        Self {
            default_timeout_secs: 30,
            max_timeout_secs: 3600,
            max_output_bytes: 10 * 1024 * 1024,
            max_command_bytes: 256 * 1024,
            max_stdin_bytes: 1024 * 1024,
            pty_idle_timeout_secs: 900,
            pty_max_duration_secs: 4 * 3600,
        }
    }
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            memory_mb: 2048,
            cpu_millis: 2000,
            pids: 2048,
            vcpus: 2,
            allow_nested_userns: false,
            disk_mb: 10240,
            max_sandboxes_per_owner: 100,
            max_runs_per_owner: 16,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            request_timeout_secs: 30,
            shutdown_grace_secs: 30,
            expose_error_chain: false,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bind: "127.0.0.1".into(),
            port: 4000,
            data_dir: PathBuf::from("/var/lib/rewind"),
            db_path: PathBuf::new(),
            runtime: RuntimeChoice::Auto,
            base_image: PathBuf::new(),
            agent_binary: PathBuf::new(),
            ch_binary: PathBuf::new(),
            storage: StorageConfig::default(),
            exec: ExecConfig::default(),
            limits: LimitsConfig::default(),
            server: ServerConfig::default(),
            network: NetworkConfig::default(),
            files: FilesConfig::default(),
            auth: AuthConfig::default(),
            audit: AuditConfig::default(),
            log: LogConfig::default(),
            metrics: MetricsConfig::default(),
            rate_limit: RateLimitConfig::default(),
            events: EventsConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

/// Overrides from the environment or flags; `None` = keep the file's value.
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub bind: Option<String>,
    pub port: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub db_path: Option<PathBuf>,
    pub runtime: Option<String>,
    pub base_image: Option<PathBuf>,
    pub agent_binary: Option<PathBuf>,
    pub ch_binary: Option<PathBuf>,
}

impl Config {
    /// Read `path` if given (a missing default file is fine), apply overrides,
    /// fill derived defaults and validate.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Config, ConfigError> {
        let mut config = match path {
            Some(p) => Self::from_file(p)?,
            None => Config::default(),
        };
        config.apply(overrides)?;
        config.fill_defaults();
        config.validate()?;
        Ok(config)
    }

    /// The agent binary: configured, else next to our own executable, else
    /// `rewind-agent` (looked up on PATH).
    pub fn agent_binary_path(&self) -> PathBuf {
        if !self.agent_binary.as_os_str().is_empty() {
            return self.agent_binary.clone();
        }
        let beside = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|d| d.join("rewind-agent")));
        match beside {
            Some(p) if p.exists() => p,
            _ => PathBuf::from("rewind-agent"),
        }
    }

    fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        toml::from_str(&text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string(),
        })
    }

    fn apply(&mut self, o: &Overrides) -> Result<(), ConfigError> {
        if let Some(v) = &o.bind {
            self.bind = v.clone();
        }
        if let Some(v) = &o.port {
            self.port = v.parse().map_err(|_| ConfigError::Invalid {
                key: "port",
                message: format!("`{v}` is not a port number (1-65535)"),
            })?;
        }
        if let Some(v) = &o.runtime {
            self.runtime = v.parse()?;
        }
        let paths = [
            (&o.data_dir, &mut self.data_dir),
            (&o.db_path, &mut self.db_path),
            (&o.base_image, &mut self.base_image),
            (&o.agent_binary, &mut self.agent_binary),
            (&o.ch_binary, &mut self.ch_binary),
        ];
        for (over, field) in paths {
            if let Some(v) = over {
                *field = v.clone();
            }
        }
        Ok(())
    }

    fn fill_defaults(&mut self) {
        if self.db_path.as_os_str().is_empty() {
            self.db_path = self.data_dir.join("rewind.db");
        }
        if self.base_image.as_os_str().is_empty() {
            self.base_image = self.data_dir.join("images/base/rootfs");
        }
    }

    /// Check every value; the error names the offending key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_owned(),
            })
        };
        if self.bind.parse::<IpAddr>().is_err() {
            return invalid("bind", "must be an IP address such as 127.0.0.1");
        }
        if self.port == 0 {
            return invalid("port", "must be 1-65535");
        }
        if !self.data_dir.is_absolute() {
            return invalid("data_dir", "must be an absolute path");
        }
        if self.storage.pool_size_gb == 0 {
            return invalid("storage.pool_size_gb", "must be at least 1");
        }
        if self.storage.max_auto_snapshots == 0 {
            return invalid("storage.max_auto_snapshots", "must be at least 1");
        }
        let recent = self.storage.keep_recent_snapshots;
        if recent == 0 || recent > self.storage.max_auto_snapshots {
            return invalid(
                "storage.keep_recent_snapshots",
                "must be between 1 and storage.max_auto_snapshots",
            );
        }
        if let Err(message) = crate::runtime::egress::AllowList::parse(&self.network.egress_allow) {
            return invalid("network.egress_allow", &message);
        }
        if !(1..=65_536).contains(&self.events.buffer) {
            return invalid("events.buffer", "must be 1-65536");
        }
        if self.events.send_timeout_secs == 0 {
            return invalid("events.send_timeout_secs", "must be at least 1");
        }
        if self.auth.jwt_expiry_secs == 0 || self.auth.jwt_expiry_secs > 30 * 86_400 {
            return invalid("auth.jwt_expiry_secs", "must be 1-2592000");
        }
        if self.files.max_upload_bytes == 0 || self.files.max_list_entries == 0 {
            return invalid(
                "files.max_upload_bytes",
                "upload and listing caps must be positive",
            );
        }
        let r = &self.rate_limit;
        if r.enabled && r.per_hour == 0 {
            return invalid(
                "rate_limit.per_hour",
                "must be at least 1 (or set enabled = false)",
            );
        }
        if r.enabled && r.burst == 0 {
            return invalid(
                "rate_limit.burst",
                "must be at least 1 (or set enabled = false)",
            );
        }
        self.validate_exec()?;
        self.validate_limits()
    }

    fn validate_exec(&self) -> Result<(), ConfigError> {
        let e = &self.exec;
        if e.max_timeout_secs == 0 || e.max_timeout_secs > 86_400 {
            return Err(ConfigError::Invalid {
                key: "exec.max_timeout_secs",
                message: "must be 1-86400".into(),
            });
        }
        if e.default_timeout_secs == 0 || e.default_timeout_secs > e.max_timeout_secs {
            return Err(ConfigError::Invalid {
                key: "exec.default_timeout_secs",
                message: "must be at least 1 and at most exec.max_timeout_secs".into(),
            });
        }
        if e.pty_idle_timeout_secs == 0 || e.pty_idle_timeout_secs > e.pty_max_duration_secs {
            return Err(ConfigError::Invalid {
                key: "exec.pty_idle_timeout_secs",
                message: "must be at least 1 and at most exec.pty_max_duration_secs".into(),
            });
        }
        if e.pty_max_duration_secs > 7 * 86_400 {
            return Err(ConfigError::Invalid {
                key: "exec.pty_max_duration_secs",
                message: "must be at most 604800 (a week)".into(),
            });
        }
        if e.max_output_bytes == 0 || e.max_command_bytes == 0 {
            return Err(ConfigError::Invalid {
                key: "exec.max_output_bytes",
                message: "output and command caps must be positive".into(),
            });
        }
        Ok(())
    }

    fn validate_limits(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        if l.memory_mb < 64 {
            return Err(ConfigError::Invalid {
                key: "limits.memory_mb",
                message: "must be at least 64".into(),
            });
        }
        if l.cpu_millis < 10 || l.pids < 16 || l.vcpus == 0 {
            return Err(ConfigError::Invalid {
                key: "limits",
                message: "cpu_millis >= 10, pids >= 16, vcpus >= 1".into(),
            });
        }
        if self.server.max_body_bytes < 1024 {
            return Err(ConfigError::Invalid {
                key: "server.max_body_bytes",
                message: "must be at least 1024".into(),
            });
        }
        if self.server.request_timeout_secs == 0 {
            return Err(ConfigError::Invalid {
                key: "server.request_timeout_secs",
                message: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_default_file_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/rewind.toml");
        let config = Config::load(Some(&path), &Overrides::default()).unwrap();
        assert_eq!(config.port, 4000);
        assert_eq!(config.db_path, PathBuf::from("/var/lib/rewind/rewind.db"));
    }

    #[test]
    fn load_bad_port_names_key() {
        let o = Overrides {
            port: Some("eighty".into()),
            ..Default::default()
        };
        let err = Config::load(None, &o).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { key: "port", .. }),
            "{err}"
        );
    }

    #[test]
    fn load_bad_runtime_names_key() {
        let o = Overrides {
            runtime: Some("docker".into()),
            ..Default::default()
        };
        let err = Config::load(None, &o).unwrap_err();
        assert!(
            matches!(err, ConfigError::Invalid { key: "runtime", .. }),
            "{err}"
        );
    }

    #[test]
    fn validate_relative_data_dir_names_key() {
        let o = Overrides {
            data_dir: Some("relative/dir".into()),
            ..Default::default()
        };
        let err = Config::load(None, &o).unwrap_err();
        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "data_dir",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn validate_keep_recent_above_max_auto_names_key() {
        let mut config = Config::default();
        config.storage.max_auto_snapshots = 10;
        config.storage.keep_recent_snapshots = 11;

        let err = config.validate().unwrap_err();

        assert!(
            matches!(
                err,
                ConfigError::Invalid {
                    key: "storage.keep_recent_snapshots",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn from_file_unknown_key_is_parse_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "prot = 1\n").unwrap();
        let err = Config::load(Some(&path), &Overrides::default()).unwrap_err();
        assert!(err.to_string().contains("prot"), "{err}");
    }
}
