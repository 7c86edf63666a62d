//! The base image and the hypervisor: the image's age (when it was
//! finished), whether Debian security updates are pending in it — computed
//! offline by `apt-get -s upgrade` against the image's own dpkg status and
//! cached apt lists (nothing is downloaded or written), said to be stale
//! when the lists are older than [`STALE_LIST_DAYS`] — and the Cloud
//! Hypervisor version.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, SystemTime};

use super::{Finding, Report, Severity};
use crate::config::Config;

pub const OLD_IMAGE_DAYS: u64 = 30;
pub const STALE_LIST_DAYS: u64 = 7;
const DAY: u64 = 86_400;

pub async fn run(config: &Config, report: &mut Report) {
    let (image, ch) = (config.base_image.clone(), config.ch_binary.clone());
    let part = tokio::task::spawn_blocking(move || {
        let mut part = Report::default();
        base_image(&image, &mut part);
        hypervisor(&ch, &mut part);
        part
    })
    .await;
    match part {
        Ok(part) => report.merge(part),
        Err(e) => report.note(format!("base image not checked: {e}")),
    }
}

fn age_days(path: &Path) -> Option<u64> {
    let modified = std::fs::metadata(path).ok()?.modified().ok()?;
    let age = SystemTime::now()
        .duration_since(modified)
        .unwrap_or(Duration::ZERO);
    Some(age.as_secs() / DAY)
}

fn base_image(rootfs: &Path, report: &mut Report) {
    let marker = rootfs.join(".rewind-image-complete");
    let Some(days) = age_days(&marker).or_else(|| age_days(rootfs)) else {
        report.note(format!(
            "base image {} not found: not checked",
            rootfs.display()
        ));
        return;
    };
    report.environment("base_image_age_days", days.to_string());
    report.check((days > OLD_IMAGE_DAYS).then(|| Finding {
        check: "base_image_old",
        severity: Severity::Medium,
        category: "image",
        description: format!("the base image was built {days} days ago"),
        recommendation: "rebuild it (scripts/build-image.sh) to pick up updates".into(),
        affected_resource: rootfs.display().to_string(),
    }));
    pending_updates(rootfs, report);
}

/// Newest `*Release` file of the image's apt lists, in days.
fn lists_age_days(rootfs: &Path) -> Option<u64> {
    let dir = std::fs::read_dir(rootfs.join("var/lib/apt/lists")).ok()?;
    dir.filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with("Release"))
        .filter_map(|e| age_days(&e.path()))
        .min()
}

fn pending_updates(rootfs: &Path, report: &mut Report) {
    let Some(lists_days) = lists_age_days(rootfs) else {
        report.note(
            "the base image has no cached apt lists (var/lib/apt/lists is empty): pending \
             Debian security updates cannot be computed offline",
        );
        return;
    };
    if lists_days > STALE_LIST_DAYS {
        report.note(format!(
            "the image's apt lists are {lists_days} days old (stale): pending updates are as \
             of then; newer security updates are not seen"
        ));
    }
    let upgrades = match simulate_upgrade(rootfs) {
        Ok(out) => security_upgrades(&out),
        Err(why) => {
            report.note(format!("pending updates not computed: {why}"));
            return;
        }
    };
    report.environment(
        "base_image_pending_security_updates",
        upgrades.len().to_string(),
    );
    report.check((!upgrades.is_empty()).then(|| Finding {
        check: "base_image_security_updates",
        severity: Severity::High,
        category: "image",
        description: format!(
            "{} Debian security updates are pending in the base image: {}",
            upgrades.len(),
            upgrades.iter().take(20).cloned().collect::<Vec<_>>().join(", ")
        ),
        recommendation: "rebuild the base image".into(),
        affected_resource: rootfs.display().to_string(),
    }));
}

/// `apt-get -s upgrade` on the image's state, with no cache files written.
fn simulate_upgrade(rootfs: &Path) -> Result<String, String> {
    let dir = |p: &str| format!("{}", rootfs.join(p).display());
    let out = Command::new("apt-get")
        .args(["-s", "-q", "upgrade"])
        .arg(format!("-oDir={}", rootfs.display()))
        .arg(format!(
            "-oDir::State::status={}",
            dir("var/lib/dpkg/status")
        ))
        .args([
            "-oDir::Cache::pkgcache=",
            "-oDir::Cache::srcpkgcache=",
            "-oDebug::NoLocking=1",
        ])
        .output()
        .map_err(|e| format!("cannot run apt-get: {e}"))?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).trim().to_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Package names of `Inst` lines from a `-security` suite.
fn security_upgrades(simulated: &str) -> Vec<String> {
    simulated
        .lines()
        .filter_map(|l| l.strip_prefix("Inst "))
        .filter(|l| l.contains("-security") || l.contains("Debian-Security"))
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

fn hypervisor(ch: &PathBuf, report: &mut Report) {
    let version = Command::new(ch)
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned());
    let shown = version.unwrap_or_else(|| format!("not available at {}", ch.display()));
    report.environment("cloud_hypervisor", shown);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_upgrades_picks_security_suites_only() {
        let out = "Inst libssl3 [3.0.11-1~deb12u1] (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])\n\
                   Inst tzdata [2024a-0+deb12u1] (2024b-0+deb12u1 Debian:12.7/stable [all])\n\
                   Conf libssl3 (3.0.13-1~deb12u1 Debian-Security:12/stable-security [amd64])\n";

        assert_eq!(security_upgrades(out), ["libssl3"]);
    }
}
