//! `PUT /api/v1/vms/{vm_name}/resources`: new vCPUs / memory / disk limit
//! ([`crate::sandbox`]'s `resize.rs`). The answer says which took effect on
//! the running VM now and which only at its next start, and why.

use axum::extract::{Path, State};
use axum::{Extension, Json};
use serde::{Deserialize, Serialize};

use super::error::{FieldError, V1Error, V1Result};
use super::extract::Json as Body;
use super::vms::{MAX_DISK_GB, MAX_MEMORY_MB, MAX_VCPUS, MIN_MEMORY_MB};
use crate::api::AppState;
use crate::auth::Caller;
use crate::runtime::Applied;
use crate::sandbox::Resize;

/// The reference's body plus `disk_size_gb`. `cpu_limit_percent` and
/// `memory_limit_percent` are refused (422): rewind's limits are whole
/// vCPUs and megabytes.
#[derive(Deserialize, utoipa::ToSchema)]
#[schema(as = v1::ResourcesBody)]
#[serde(deny_unknown_fields)]
pub struct ResourcesBody {
    vcpus: Option<i64>,
    memory_mb: Option<i64>,
    disk_size_gb: Option<i64>,
    /// Refused (422): limits are whole vCPUs.
    #[schema(value_type = Option<f64>)]
    cpu_limit_percent: Option<serde::de::IgnoredAny>,
    /// Refused (422): limits are megabytes.
    #[schema(value_type = Option<f64>)]
    memory_limit_percent: Option<serde::de::IgnoredAny>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::NewResources)]
pub struct NewResources {
    vcpus: u32,
    memory_mb: u64,
    disk_size_gb: Option<u64>,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::Later)]
pub struct Later {
    field: &'static str,
    reason: String,
}

#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = v1::ResourcesView)]
pub struct ResourcesView {
    message: &'static str,
    vm_name: String,
    updated_at: String,
    new_resources: NewResources,
    /// Fields the running VM has now.
    applied_now: Vec<&'static str>,
    /// Fields recorded for the next start, with the reason.
    applies_after_restart: Vec<Later>,
}

/// Every problem of the body at once, or the change it asks for.
fn validate(body: &ResourcesBody) -> Result<Resize, Vec<FieldError>> {
    let mut details = Vec::new();
    let mut check = |field: &str, value: Option<i64>, range: std::ops::RangeInclusive<i64>| {
        if value.is_some_and(|v| !range.contains(&v)) {
            let (lo, hi) = range.into_inner();
            details.push(FieldError::new(
                field,
                format!("must be between {lo} and {hi}"),
            ));
        }
    };
    check("vcpus", body.vcpus, 1..=i64::from(MAX_VCPUS));
    check(
        "memory_mb",
        body.memory_mb,
        MIN_MEMORY_MB as i64..=MAX_MEMORY_MB as i64,
    );
    check("disk_size_gb", body.disk_size_gb, 1..=MAX_DISK_GB as i64);
    for (field, set) in [
        ("cpu_limit_percent", body.cpu_limit_percent.is_some()),
        ("memory_limit_percent", body.memory_limit_percent.is_some()),
    ] {
        if set {
            details.push(FieldError::new(
                field,
                "is not supported: set vcpus (whole cores) or memory_mb",
            ));
        }
    }
    let none = body.vcpus.is_none() && body.memory_mb.is_none() && body.disk_size_gb.is_none();
    if none && details.is_empty() {
        details.push(FieldError::new(
            "body",
            "give at least one of vcpus, memory_mb, disk_size_gb",
        ));
    }
    if !details.is_empty() {
        return Err(details);
    }
    Ok(Resize {
        vcpus: body.vcpus.map(|v| v as u32),
        memory_mb: body.memory_mb.map(|m| m as u64),
        disk_gb: body.disk_size_gb.map(|d| d as u64),
    })
}

#[utoipa::path(put, path = "/vms/{vm_name}/resources", tag = "v1 vms",
    params(("vm_name" = String, Path, description = "VM (sandbox) name")),
    request_body = ResourcesBody,
    responses(
        (status = 200, description = "what applies now and what after a restart", body = ResourcesView),
        (status = 404, description = "no such VM (of yours)", body = super::error::Body),
        (status = 409, description = "busy, or the running VM holds more than the new limit", body = super::error::Body),
        (status = 422, description = "validation_error with details[]", body = super::error::Body),
    ))]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    Path(name): Path<String>,
    Body(body): Body<ResourcesBody>,
) -> V1Result<Json<ResourcesView>> {
    let req = validate(&body).map_err(V1Error::Validation)?;
    let out = state.sandboxes.resize(&caller, &name, req).await?;
    let vm = super::vms::VmView::new(&state, &out.row);
    let (mut now, mut later) = (Vec::new(), Vec::new());
    for (field, applied) in [
        ("vcpus", out.vcpus),
        ("memory_mb", out.memory_mb),
        ("disk_size_gb", out.disk_gb),
    ] {
        match applied {
            Some(Applied::Now) => now.push(field),
            Some(Applied::AfterRestart { reason }) => later.push(Later { field, reason }),
            None => {}
        }
    }
    Ok(Json(ResourcesView {
        message: "Resources updated successfully",
        vm_name: out.row.name.clone(),
        updated_at: super::utc(&out.row.updated_at),
        new_resources: NewResources {
            vcpus: vm.vcpus(),
            memory_mb: vm.memory_mb(),
            disk_size_gb: out.row.spec.disk_gb,
        },
        applied_now: now,
        applies_after_restart: later,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(json: &str) -> ResourcesBody {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn validate_keeps_only_the_given_sizes() {
        let req = validate(&body(r#"{"memory_mb": 512}"#)).unwrap();
        assert_eq!(
            req,
            Resize {
                vcpus: None,
                memory_mb: Some(512),
                disk_gb: None
            }
        );
    }

    #[test]
    fn validate_names_every_bad_field() {
        let err = validate(&body(
            r#"{"vcpus": 0, "memory_mb": 1, "cpu_limit_percent": 50}"#,
        ))
        .unwrap_err();
        let fields: Vec<&str> = err.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["vcpus", "memory_mb", "cpu_limit_percent"]);
    }

    #[test]
    fn validate_of_an_empty_body_asks_for_a_size() {
        let err = validate(&body("{}")).unwrap_err();
        assert_eq!(err[0].field, "body");
    }
}
