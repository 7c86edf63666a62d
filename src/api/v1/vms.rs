//! `/api/v1/vms` and `/api/v1/vms/{vm_name}`: list (filters, sort,
//! pagination), create (validated, sized), get, delete.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{FieldError, V1Error, V1Result};
use super::extract::{Json as Body, Query};
use crate::api::AppState;
use crate::auth::Caller;
use crate::db::{SandboxRow, SandboxSpec, SandboxStatus};

pub const MAX_VCPUS: u32 = 16;
pub const MIN_MEMORY_MB: u64 = 128;
pub const MAX_MEMORY_MB: u64 = 1024 * 1024;
pub const MAX_DISK_GB: u64 = 16 * 1024;

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::NetworkConfig)]
pub struct NetworkConfig {
    ip: String,
    bridge: Option<String>,
    mac_address: String,
}

/// A VM as the reference shows it, plus `state`/`template`/`ip_address`
/// (py-microvm's names) and rewind's `runtime` and `status_reason`.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::VmView)]
pub struct VmView {
    name: String,
    id: String,
    status: &'static str,
    state: &'static str,
    os_type: String,
    template: String,
    vcpus: u32,
    memory_mb: u64,
    disk_size_gb: Option<u64>,
    created_at: String,
    started_at: Option<String>,
    uptime_seconds: Option<u64>,
    network_config: Option<NetworkConfig>,
    ip_address: Option<String>,
    runtime: String,
    status_reason: Option<String>,
}

impl VmView {
    pub fn new(state: &AppState, row: &SandboxRow) -> VmView {
        let limits = &state.sandboxes.config.limits;
        let network = state.sandboxes.network(&row.name).map(|n| NetworkConfig {
            ip: n.ip.to_string(),
            bridge: None,
            mac_address: n.mac_address,
        });
        let running = row.status == SandboxStatus::Running;
        VmView {
            name: row.name.clone(),
            id: row.id.to_string(),
            status: row.status.as_str(),
            state: match row.status {
                SandboxStatus::Running => "running",
                SandboxStatus::Stopped => "stopped",
                _ => "error",
            },
            os_type: row.spec.os_type.clone(),
            template: row
                .spec
                .template
                .clone()
                .unwrap_or_else(|| format!("{}-default", row.spec.os_type)),
            vcpus: row.spec.vcpus.unwrap_or(u32::from(limits.vcpus)),
            memory_mb: row.spec.memory_mb.unwrap_or(limits.memory_mb),
            disk_size_gb: row.spec.disk_gb,
            created_at: super::utc(&row.created_at),
            started_at: row
                .started_at
                .as_deref()
                .filter(|_| running)
                .map(super::utc),
            uptime_seconds: row
                .started_at
                .as_deref()
                .filter(|_| running)
                .and_then(seconds_since),
            ip_address: network.as_ref().map(|n| n.ip.clone()),
            network_config: network,
            runtime: row.runtime.clone(),
            status_reason: row.status_reason.clone(),
        }
    }
}

impl VmView {
    pub fn vcpus(&self) -> u32 {
        self.vcpus
    }

    pub fn memory_mb(&self) -> u64 {
        self.memory_mb
    }

    pub fn uptime_seconds(&self) -> Option<u64> {
        self.uptime_seconds
    }
}

fn seconds_since(stored: &str) -> Option<u64> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]");
    let then = time::PrimitiveDateTime::parse(stored, &fmt)
        .ok()?
        .assume_utc();
    let secs = (time::OffsetDateTime::now_utc() - then).whole_seconds();
    Some(secs.max(0) as u64)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `created`, `running`, `stopped` or `failed`.
    status: Option<String>,
    os_type: Option<String>,
    /// 1-100, default 50.
    limit: Option<i64>,
    /// Default 0.
    offset: Option<i64>,
    /// `name`, `created_at` or `status`.
    sort: Option<String>,
    /// `asc` or `desc`.
    order: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::VmList)]
pub struct VmList {
    vms: Vec<VmView>,
    total: usize,
    limit: usize,
    offset: usize,
}

const STATUSES: &[&str] = &["created", "running", "stopped", "failed"];
const SORTS: &[&str] = &["name", "created_at", "status"];

/// Validated list parameters: (limit, offset, sort key, descending).
fn list_params(q: &ListQuery) -> V1Result<(usize, usize, &str, bool)> {
    let mut details = Vec::new();
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        details.push(FieldError::new("limit", "must be between 1 and 100"));
    }
    let offset = q.offset.unwrap_or(0);
    if offset < 0 {
        details.push(FieldError::new("offset", "must be at least 0"));
    }
    if q.status.as_deref().is_some_and(|s| !STATUSES.contains(&s)) {
        details.push(FieldError::new(
            "status",
            "must be created, running, stopped or failed",
        ));
    }
    if q.os_type
        .as_deref()
        .is_some_and(|s| s != "linux" && s != "windows")
    {
        details.push(FieldError::new("os_type", "must be linux or windows"));
    }
    let sort = q.sort.as_deref().unwrap_or("created_at");
    if !SORTS.contains(&sort) {
        details.push(FieldError::new(
            "sort",
            "must be name, created_at or status",
        ));
    }
    let desc = match q.order.as_deref() {
        None | Some("asc") => false,
        Some("desc") => true,
        Some(_) => {
            details.push(FieldError::new("order", "must be asc or desc"));
            false
        }
    };
    if !details.is_empty() {
        return Err(V1Error::Validation(details));
    }
    Ok((limit as usize, offset as usize, sort, desc))
}

#[utoipa::path(get, path = "/vms", tag = "v1 vms",
    params(ListQuery),
    responses(
        (status = 200, description = "a page of VMs", body = VmList),
        (status = 422, description = "bad filter, sort or page; details[] names each", body = super::error::Body),
    ))]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Query(q): Query<ListQuery>,
) -> V1Result<Json<VmList>> {
    let (limit, offset, sort, desc) = list_params(&q)?;
    let mut rows: Vec<SandboxRow> = state
        .sandboxes
        .list(&caller)
        .await?
        .into_iter()
        .filter(|r| {
            matches!(
                r.status,
                SandboxStatus::Running | SandboxStatus::Stopped | SandboxStatus::Failed
            )
        })
        .filter(|r| q.status.as_deref().is_none_or(|s| r.status.as_str() == s))
        .filter(|r| q.os_type.as_deref().is_none_or(|o| r.spec.os_type == o))
        .collect();
    rows.sort_by(|a, b| {
        let by = match sort {
            "name" => a.name.cmp(&b.name),
            "status" => a.status.as_str().cmp(b.status.as_str()),
            _ => (&a.created_at, a.id).cmp(&(&b.created_at, b.id)),
        };
        if desc {
            by.reverse()
        } else {
            by
        }
    });
    let total = rows.len();
    let vms = rows
        .iter()
        .skip(offset)
        .take(limit)
        .map(|r| VmView::new(&state, r))
        .collect();
    Ok(Json(VmList {
        vms,
        total,
        limit,
        offset,
    }))
}

#[derive(Deserialize, Default, utoipa::ToSchema)]
#[schema(as = v1::StorageConfig)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    disk_size_gb: Option<i64>,
    disk_type: Option<String>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = v1::CreateVm)]
#[serde(deny_unknown_fields)]
pub struct CreateVm {
    name: Option<String>,
    os_type: Option<String>,
    vcpus: Option<i64>,
    memory_mb: Option<i64>,
    template: Option<String>,
    /// Accepted and ignored (rewind assigns the network).
    #[schema(value_type = Option<Object>)]
    network_config: Option<serde::de::IgnoredAny>,
    storage_config: Option<StorageConfig>,
}

const TEMPLATES: &[&str] = &["linux-default", "windows-default"];

/// Every problem of a create body at once, or the spec it asks for.
fn validate_create(body: &CreateVm) -> Result<SandboxSpec, Vec<FieldError>> {
    let mut details = Vec::new();
    match body.name.as_deref() {
        None => details.push(FieldError::new("name", "is required")),
        Some(n) => {
            if let Err(e) = crate::sandbox::parse_sandbox_name(n) {
                details.push(FieldError::new(
                    "name",
                    e.to_string().trim_start_matches("name: "),
                ));
            }
        }
    }
    let os_from_template = body
        .template
        .as_deref()
        .and_then(|t| t.strip_suffix("-default"));
    let os_type = body
        .os_type
        .as_deref()
        .or(os_from_template)
        .unwrap_or("linux");
    if os_type != "linux" && os_type != "windows" {
        details.push(FieldError::new("os_type", "must be linux or windows"));
    }
    if body
        .template
        .as_deref()
        .is_some_and(|t| !TEMPLATES.contains(&t))
    {
        details.push(FieldError::new(
            "template",
            "must be linux-default or windows-default",
        ));
    }
    if body
        .vcpus
        .is_some_and(|v| !(1..=MAX_VCPUS as i64).contains(&v))
    {
        details.push(FieldError::new(
            "vcpus",
            format!("must be between 1 and {MAX_VCPUS}"),
        ));
    }
    if body.memory_mb.is_some_and(|m| m < MIN_MEMORY_MB as i64) {
        details.push(FieldError::new(
            "memory_mb",
            format!("must be at least {MIN_MEMORY_MB}"),
        ));
    } else if body.memory_mb.is_some_and(|m| m > MAX_MEMORY_MB as i64) {
        details.push(FieldError::new(
            "memory_mb",
            format!("must be at most {MAX_MEMORY_MB}"),
        ));
    }
    if body.network_config.is_some() {
        details.push(FieldError::new(
            "network_config",
            "is assigned by rewind (one network namespace per sandbox); omit it",
        ));
    }
    let storage = body.storage_config.as_ref();
    let disk = storage.and_then(|s| s.disk_size_gb);
    if disk.is_some_and(|d| !(1..=MAX_DISK_GB as i64).contains(&d)) {
        details.push(FieldError::new(
            "storage_config.disk_size_gb",
            format!("must be between 1 and {MAX_DISK_GB}"),
        ));
    }
    if storage
        .and_then(|s| s.disk_type.as_deref())
        .is_some_and(|t| t != "ssd")
    {
        details.push(FieldError::new("storage_config.disk_type", "must be ssd"));
    }
    if !details.is_empty() {
        return Err(details);
    }
    Ok(SandboxSpec {
        os_type: os_type.to_owned(),
        template: body.template.clone(),
        vcpus: body.vcpus.map(|v| v as u32),
        memory_mb: body.memory_mb.map(|m| m as u64),
        disk_gb: disk.map(|d| d as u64),
    })
}

#[utoipa::path(post, path = "/vms", tag = "v1 vms",
    request_body = CreateVm,
    responses(
        (status = 201, description = "created", body = VmView),
        (status = 409, description = "the name is taken", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
        (status = 501, description = "os_type windows needs the Cloud Hypervisor runtime with UEFI firmware (not built yet)", body = super::error::Body),
    ))]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(body): Body<CreateVm>,
) -> V1Result<(StatusCode, Json<VmView>)> {
    let spec = validate_create(&body).map_err(V1Error::Validation)?;
    if spec.os_type == "windows" {
        return Err(V1Error::NotImplemented(
            "os_type windows needs the Cloud Hypervisor runtime with UEFI firmware, \
             which rewind does not have yet; only linux sandboxes can be created"
                .into(),
        ));
    }
    let name = body.name.unwrap_or_default();
    let row = state.sandboxes.create_sized(&caller, &name, spec).await?;
    Ok((StatusCode::CREATED, Json(VmView::new(&state, &row))))
}

/// `resource_usage` of one VM: the cgroup's CPU time over uptime × vCPUs,
/// memory, and what counts against its disk limit (`null` without one).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::ResourceUsage)]
pub struct ResourceUsage {
    cpu_usage_percent: Option<f64>,
    memory_used_mb: Option<f64>,
    disk_usage_gb: Option<f64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::VmDetail)]
pub struct VmDetail {
    #[serde(flatten)]
    vm: VmView,
    resource_usage: ResourceUsage,
}

#[utoipa::path(get, path = "/vms/{vm_name}", tag = "v1 vms",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    responses(
        (status = 200, description = "the VM with its resource usage", body = VmDetail),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
    ))]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<Json<VmDetail>> {
    let m = state.sandboxes.metrics(&caller, &name).await?;
    let vm = VmView::new(&state, &m.row);
    let uptime = vm.uptime_seconds.filter(|&s| s > 0);
    let round2 = |x: f64| (x * 100.0).round() / 100.0;
    let resource_usage = ResourceUsage {
        cpu_usage_percent: m
            .usage
            .cpu_seconds
            .zip(uptime)
            .map(|(t, up)| round2(t / (up as f64 * f64::from(vm.vcpus)) * 100.0)),
        memory_used_mb: m
            .usage
            .memory_bytes
            .map(|b| round2(b as f64 / (1024.0 * 1024.0))),
        disk_usage_gb: state
            .sandboxes
            .disk(&m.row.name)
            .await?
            .map(|d| round2(d.used_bytes as f64 / (1024.0 * 1024.0 * 1024.0))),
    };
    Ok(Json(VmDetail { vm, resource_usage }))
}

#[utoipa::path(delete, path = "/vms/{vm_name}", tag = "v1 vms",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    responses(
        (status = 204, description = "deleted"),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
    ))]
pub async fn destroy(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
) -> V1Result<StatusCode> {
    state.sandboxes.delete(&caller, &name).await?;
    Ok(StatusCode::NO_CONTENT)
}
