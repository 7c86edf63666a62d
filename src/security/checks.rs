//! Configuration checks of a scan, each reading real state: the loaded
//! config, the key and audit tables, the live sandboxes (egress proxies,
//! network interfaces) and, for namespace sandboxes, `/proc` of their
//! processes.

use std::net::IpAddr;
use std::path::Path;

use super::{Finding, Report, ScanRequest, Severity};
use crate::auth::Caller;
use crate::db::{Db, SandboxRow, SandboxStatus};
use crate::sandbox::Sandboxes;

/// Keys with no state-changing request for this long are "unused".
pub const UNUSED_KEY_DAYS: i64 = 90;

fn finding(
    check: &'static str,
    severity: Severity,
    resource: impl Into<String>,
    description: String,
    recommendation: &str,
) -> Option<Finding> {
    Some(Finding {
        check,
        severity,
        category: "configuration",
        description,
        recommendation: recommendation.to_owned(),
        affected_resource: resource.into(),
    })
}

pub async fn run(sandboxes: &Sandboxes, req: &ScanRequest, report: &mut Report) {
    if req.target == "all" {
        service(sandboxes, report);
        if let Err(e) = keys(sandboxes, report).await {
            report.note(format!(
                "API keys not checked: {}",
                crate::runtime::chain(&e)
            ));
        }
    }
    let admin = Caller {
        key_id: 0,
        admin: true,
    };
    let rows = match sandboxes.list(&admin).await {
        Ok(rows) => rows,
        Err(e) => {
            report.note(format!(
                "sandboxes not checked: {}",
                crate::runtime::chain(&e)
            ));
            return;
        }
    };
    let target = req.target.clone();
    let running: Vec<SandboxRow> = rows
        .into_iter()
        .filter(|r| r.status == SandboxStatus::Running)
        .filter(|r| target == "all" || r.name == target)
        .collect();
    let sb = sandboxes.clone();
    // Reads /proc of every sandbox process: off the async threads.
    let checked = tokio::task::spawn_blocking(move || {
        let mut part = Report::default();
        for row in &running {
            sandbox(&sb, row, &mut part);
        }
        part
    })
    .await;
    match checked {
        Ok(part) => report.merge(part),
        Err(e) => report.note(format!("sandboxes not checked: {e}")),
    }
}

/// Bind address / TLS, limits left unset, nested user namespaces.
fn service(sandboxes: &Sandboxes, report: &mut Report) {
    let c = &sandboxes.config;
    let loopback = c.bind.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
    report.check(
        (!loopback)
            .then(|| {
                finding(
                    "api_plain_http",
                    Severity::High,
                    format!("{}:{}", c.bind, c.port),
                    format!(
            "the API listens on {}:{} over plain HTTP (rewind does not terminate TLS): keys, \
             tokens and passwords cross the network in clear unless a TLS proxy is in front, \
             which this scan cannot see",
            c.bind, c.port
        ),
                    "bind = \"127.0.0.1\" and put a TLS-terminating reverse proxy in front",
                )
            })
            .flatten(),
    );
    let l = &c.limits;
    let unset = [
        ("limits.memory_mb", l.memory_mb == 0),
        ("limits.cpu_millis", l.cpu_millis == 0),
        ("limits.pids", l.pids == 0),
        ("limits.disk_mb", l.disk_mb == 0),
        ("rate_limit.enabled", !c.rate_limit.enabled),
        (
            "limits.max_sandboxes_per_owner",
            l.max_sandboxes_per_owner == 0,
        ),
        ("limits.max_runs_per_owner", l.max_runs_per_owner == 0),
    ];
    for (key, off) in unset {
        report.check(
            off.then(|| {
                finding(
                    "limit_unset",
                    Severity::Medium,
                    key,
                    format!("{key} is off: one sandbox or owner can exhaust what it bounds"),
                    "set it (config/rewind.toml documents each default)",
                )
            })
            .flatten(),
        );
    }
    report.check(
        l.allow_nested_userns
            .then(|| {
                finding(
                    "nested_userns_allowed",
                    Severity::Medium,
                    "limits.allow_nested_userns",
                    "sandbox commands may create user namespaces (more kernel attack surface)"
                        .into(),
                    "set limits.allow_nested_userns = false unless a workload needs it",
                )
            })
            .flatten(),
    );
}

/// Admin keys (how many, expiry) and keys unused for [`UNUSED_KEY_DAYS`].
async fn keys(sandboxes: &Sandboxes, report: &mut Report) -> Result<(), crate::db::DbError> {
    let cutoff = crate::db::format_time(
        time::OffsetDateTime::now_utc() - time::Duration::days(UNUSED_KEY_DAYS),
    );
    let (rows, unused) = sandboxes
        .db
        .call(move |c| Ok((Db::list_keys(c)?, Db::keys_unused_since(c, &cutoff)?)))
        .await?;
    let admins: Vec<_> = rows
        .iter()
        .filter(|k| k.admin && k.revoked_at.is_none())
        .collect();
    report.check(
        (admins.len() > 1)
            .then(|| {
                finding(
        "admin_keys",
        Severity::Medium,
        "api_keys",
        format!("{} admin API keys are active; each one controls every sandbox", admins.len()),
        "keep one admin key; give clients non-admin keys; revoke the rest (DELETE /api-keys/{id})",
    )
            })
            .flatten(),
    );
    for key in admins {
        report.check(finding(
            "admin_key_no_expiry",
            Severity::Low,
            format!("api_key:{}", key.id),
            format!(
                "admin API key #{} ({}) never expires: rewind keys have no expiry",
                key.id,
                key.name.as_deref().unwrap_or("unnamed")
            ),
            "rotate admin keys regularly: create a new one, then revoke the old one",
        ));
    }
    for id in unused {
        report.check(finding(
            "api_key_unused",
            Severity::Medium,
            format!("api_key:{id}"),
            format!(
                "API key #{id} made no state-changing request in {UNUSED_KEY_DAYS} days \
                 (per the audit log)"
            ),
            "revoke keys nobody uses",
        ));
    }
    Ok(())
}

/// One running sandbox: egress, network, isolation.
fn sandbox(sandboxes: &Sandboxes, row: &SandboxRow, report: &mut Report) {
    let allow = &sandboxes.config.network.egress_allow;
    report.check(
        sandboxes
            .egress_open(&row.name)
            .then(|| {
                finding(
                    "sandbox_egress",
                    Severity::Medium,
                    row.name.clone(),
                    format!(
                        "sandbox {} can open connections out through the egress proxy to: {}",
                        row.name,
                        allow.join(", ")
                    ),
                    "narrow network.egress_allow to the hosts sandboxes need, or empty it",
                )
            })
            .flatten(),
    );
    if let Some(net) = sandboxes.network(&row.name) {
        report.check(finding(
            "sandbox_network",
            Severity::Low,
            row.name.clone(),
            format!("sandbox {} has a network interface ({})", row.name, net.ip),
            "set network.enabled = false unless sandboxes need a NIC",
        ));
    }
    match row.runtime_state.get("pid").and_then(|p| p.as_i64()) {
        Some(pid) => isolation(&row.name, pid, report),
        None => report.note(format!(
            "{}: a VM sandbox; its isolation is the hypervisor's and is not read from /proc",
            row.name
        )),
    }
}

/// User namespace of PID 1, seccomp and no_new_privs of its commands.
fn isolation(name: &str, pid1: i64, report: &mut Report) {
    let uid_map = std::fs::read_to_string(format!("/proc/{pid1}/uid_map")).unwrap_or_default();
    let host_root = uid_map.split_whitespace().take(2).eq(["0", "0"]);
    report.check(
        host_root
            .then(|| {
                finding(
                    "sandbox_host_userns",
                    Severity::High,
                    name,
                    format!(
                        "root in sandbox {name} is root on the host (uid_map {})",
                        uid_map.trim()
                    ),
                    "run sandboxes in their own user namespace (the namespace runtime does)",
                )
            })
            .flatten(),
    );
    let commands = processes_beside(pid1);
    if commands.is_empty() {
        report.note(format!(
            "{name}: no command was running, so the seccomp filter and no_new_privs the agent \
             puts on every command could not be observed (PID 1, the agent, is unfiltered by \
             design)"
        ));
    }
    for (pid, status) in commands {
        let field = |key: &str| status_field(&status, key);
        report.check(
            (field("Seccomp") != Some("2"))
                .then(|| {
                    finding(
                        "sandbox_no_seccomp",
                        Severity::High,
                        name,
                        format!("process {pid} of sandbox {name} runs without a seccomp filter"),
                        "run commands through the agent, which filters them",
                    )
                })
                .flatten(),
        );
        report.check(
            (field("NoNewPrivs") != Some("1"))
                .then(|| {
                    finding(
            "sandbox_new_privs",
            Severity::Medium,
            name,
            format!("process {pid} of sandbox {name} may gain privileges (no_new_privs unset)"),
            "run commands through the agent, which sets no_new_privs",
        )
                })
                .flatten(),
        );
    }
}

/// `/proc/<pid>/status` of every process in PID 1's PID namespace but it.
fn processes_beside(pid1: i64) -> Vec<(i64, String)> {
    let ns_of = |pid: &str| std::fs::read_link(Path::new("/proc").join(pid).join("ns/pid")).ok();
    let Some(ns) = ns_of(&pid1.to_string()) else {
        return Vec::new();
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<i64>().ok())
        .filter(|pid| *pid != pid1 && ns_of(&pid.to_string()).as_ref() == Some(&ns))
        .filter_map(|pid| {
            Some((
                pid,
                std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
            ))
        })
        .collect()
}

fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_field_reads_the_value() {
        let status = "Name:\tsh\nNoNewPrivs:\t1\nSeccomp:\t2\nSeccomp_filters:\t3\n";

        let values = (
            status_field(status, "Seccomp"),
            status_field(status, "NoNewPrivs"),
        );

        assert_eq!(values, (Some("2"), Some("1")));
    }
}
