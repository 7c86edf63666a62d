//! Security scans (`POST /api/v1/security/scan`): checks of the REAL state
//! of this service and its sandboxes, never a canned list.
//!
//! - `configuration`: [`checks`] — bind address / TLS, API keys (expiry,
//!   unused, how many admins), sandboxes' networking and egress
//!   allow-lists, their isolation as the kernel reports it in `/proc`,
//!   unset limits; [`image`] — base image age and pending Debian security
//!   updates computed offline from the image's cached apt lists.
//! - `vulnerability`: only the image part (no CVE database is available
//!   offline; the result says so).
//! - `compliance`: the configuration checks; findings are not mapped to
//!   frameworks (the result says so for every framework asked for).
//!
//! `risk_score` = min(100, 25 × high + 10 × medium + 2 × low), so 0 means
//! no finding and one high finding alone is 25.

pub mod checks;
pub mod image;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::sandbox::Sandboxes;

/// Most scans kept (the oldest are forgotten first). Scans live in memory.
const MAX_SCANS: usize = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ScanType {
    Configuration,
    Compliance,
    Vulnerability,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Low,
    Medium,
    High,
}

/// One weakness found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// Stable id of the check (e.g. `api_plain_http`), for filtering.
    pub check: &'static str,
    pub severity: Severity,
    pub category: &'static str,
    pub description: String,
    pub recommendation: String,
    pub affected_resource: String,
}

/// What a scan found, in the reference's shape plus `notes` (what could
/// not be checked, and why) and `environment` (versions seen).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanResults {
    pub total_checks: u32,
    pub passed: u32,
    pub failed: u32,
    pub warnings: u32,
    pub risk_score: u32,
    pub findings: Vec<Finding>,
    pub notes: Vec<String>,
    pub environment: HashMap<String, String>,
}

/// Collects check outcomes while a scan runs.
#[derive(Debug, Default)]
pub struct Report {
    checks: u32,
    findings: Vec<Finding>,
    notes: Vec<String>,
    environment: HashMap<String, String>,
}

impl Report {
    /// One check ran; `finding` when it failed.
    pub fn check(&mut self, finding: Option<Finding>) {
        self.checks += 1;
        self.findings.extend(finding);
    }

    /// Something that could not be checked, and why.
    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn merge(&mut self, other: Report) {
        self.checks += other.checks;
        self.findings.extend(other.findings);
        self.notes.extend(other.notes);
        self.environment.extend(other.environment);
    }

    pub fn environment(&mut self, key: &str, value: impl Into<String>) {
        self.environment.insert(key.to_owned(), value.into());
    }

    pub fn finish(self) -> ScanResults {
        let count = |s| self.findings.iter().filter(|f| f.severity == s).count() as u32;
        let (high, medium, low) = (
            count(Severity::High),
            count(Severity::Medium),
            count(Severity::Low),
        );
        ScanResults {
            total_checks: self.checks,
            passed: self.checks.saturating_sub(high + medium + low),
            failed: high + medium,
            warnings: low,
            risk_score: risk_score(high, medium, low),
            findings: self.findings,
            notes: self.notes,
            environment: self.environment,
        }
    }
}

/// `min(100, 25 × high + 10 × medium + 2 × low)`.
pub fn risk_score(high: u32, medium: u32, low: u32) -> u32 {
    (25 * high + 10 * medium + 2 * low).min(100)
}

/// A requested scan.
#[derive(Debug, Clone, Serialize)]
pub struct ScanRequest {
    pub scan_type: ScanType,
    /// `all` or one sandbox's name.
    pub target: String,
    pub frameworks: Vec<String>,
}

/// A scan as `GET /api/v1/security/scans/{id}` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Scan {
    pub scan_id: String,
    pub status: &'static str,
    pub scan_type: ScanType,
    pub target: String,
    pub frameworks: Vec<String>,
    pub started_at: String,
    pub completed_at: Option<String>,
    pub results: Option<ScanResults>,
    #[serde(skip)]
    pub owner: i64,
}

/// The scans of this process; each one's state is a `watch` channel so a
/// reader can wait for it to complete.
#[derive(Clone, Default)]
pub struct Scans(Arc<Mutex<Vec<ScanEntry>>>);

/// A scan's id and its state as it changes.
type ScanEntry = (String, watch::Receiver<Scan>);

impl Scans {
    /// Record and start a scan; returns it as started.
    pub fn start(&self, sandboxes: &Sandboxes, owner: i64, req: ScanRequest) -> Scan {
        let scan = Scan {
            scan_id: format!("scan_{:016x}", rand::random::<u64>()),
            status: "running",
            scan_type: req.scan_type,
            target: req.target.clone(),
            frameworks: req.frameworks.clone(),
            started_at: now(),
            completed_at: None,
            results: None,
            owner,
        };
        let (tx, rx) = watch::channel(scan.clone());
        {
            let mut all = self.0.lock().unwrap_or_else(|p| p.into_inner());
            if all.len() >= MAX_SCANS {
                all.remove(0);
            }
            all.push((scan.scan_id.clone(), rx));
        }
        let sandboxes = sandboxes.clone();
        tokio::spawn(async move {
            let results = run(&sandboxes, &req).await;
            tx.send_modify(|s| {
                s.status = "completed";
                s.completed_at = Some(now());
                s.results = Some(results);
            });
        });
        scan
    }

    /// The scan `id`, waiting up to `wait` for it to complete.
    pub async fn get(&self, id: &str, wait: std::time::Duration) -> Option<Scan> {
        let mut rx = {
            let all = self.0.lock().unwrap_or_else(|p| p.into_inner());
            all.iter()
                .find(|(i, _)| i == id)
                .map(|(_, rx)| rx.clone())?
        };
        let done = rx.wait_for(|s| s.results.is_some());
        let _ = tokio::time::timeout(wait, done).await;
        let scan = rx.borrow().clone();
        Some(scan)
    }
}

async fn run(sandboxes: &Sandboxes, req: &ScanRequest) -> ScanResults {
    let mut report = Report::default();
    let all = req.target == "all";
    match req.scan_type {
        ScanType::Configuration | ScanType::Compliance => {
            checks::run(sandboxes, req, &mut report).await;
            if all {
                image::run(&sandboxes.config, &mut report).await;
            }
        }
        ScanType::Vulnerability => {
            report.note(
                "no vulnerability database (CVE feed) is available offline on this host: \
                 only pending Debian security updates of the base image were checked",
            );
            image::run(&sandboxes.config, &mut report).await;
        }
    }
    if req.scan_type == ScanType::Compliance {
        for framework in &req.frameworks {
            report.note(format!(
                "{framework}: not evaluated — rewind has no mapping of its checks to this \
                 framework; the findings are the configuration checks"
            ));
        }
    }
    report.finish()
}

fn now() -> String {
    format!("{}Z", crate::db::now().0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn risk_score_weights_and_caps() {
        assert_eq!(risk_score(0, 0, 0), 0);
        assert_eq!(risk_score(1, 1, 1), 37);
        assert_eq!(risk_score(5, 0, 0), 100);
    }

    #[test]
    fn report_counts_failed_warnings_and_passed() {
        let mut r = Report::default();
        let finding = |severity| Finding {
            check: "x",
            severity,
            category: "configuration",
            description: String::new(),
            recommendation: String::new(),
            affected_resource: String::new(),
        };
        r.check(None);
        r.check(Some(finding(Severity::High)));
        r.check(Some(finding(Severity::Low)));

        let done = r.finish();

        let counts = (done.total_checks, done.passed, done.failed, done.warnings);
        assert_eq!(counts, (3, 1, 1, 1));
        assert_eq!(done.risk_score, 27);
    }
}
