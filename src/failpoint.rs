//! Fault injection for the crash and error-path tests of the service (the
//! storage crate has its own, for its steps). `REWIND_TEST_FAILPOINT=<step>`
//! aborts the process when it reaches `<step>` (a crash, as `kill -9` would
//! be); `<step>:error` makes that step fail once with [`Injected`], and
//! `<step>:error-always` every time. Unset (always, outside tests) it does
//! nothing: the variable is read once.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

/// The environment variable naming the step.
pub const FAILPOINT_ENV: &str = "REWIND_TEST_FAILPOINT";

/// Every step, in the order a restore reaches them.
pub const FAILPOINTS: &[&str] = &[
    "restore:after_unmount",
    "restore:after_swap",
    "restore:before_replace",
    "restore:before_mount",
];

/// Between a state-changing request's answer and its audit row's outcome
/// (`api/audit.rs`): the change is committed, its row says "pending".
pub const AUDIT_BEFORE_OUTCOME: &str = "audit:before_outcome";

/// Crash points of memory snapshots and memory restores, in the order they
/// are reached ([`crash`]; `:error` modes do not apply to them).
pub const MEMORY_FAILPOINTS: &[&str] = &[
    "memory_snapshot:after_storage",
    "memory_snapshot:after_dump",
    "memory_restore:after_stop",
    "memory_restore:after_storage",
    "memory_restore:after_start",
];

/// The error an armed `:error` failpoint returns.
#[derive(Debug, thiserror::Error)]
#[error("failpoint {step} injected an error")]
pub struct Injected {
    pub step: &'static str,
}

struct Armed {
    step: String,
    mode: Mode,
    fired: AtomicBool,
}

#[derive(PartialEq)]
enum Mode {
    Crash,
    ErrorOnce,
    ErrorAlways,
}

fn armed() -> Option<&'static Armed> {
    static ARMED: OnceLock<Option<Armed>> = OnceLock::new();
    ARMED
        .get_or_init(|| {
            let value = std::env::var(FAILPOINT_ENV).ok()?;
            let (step, mode) = parse(&value)?;
            Some(Armed {
                step,
                mode,
                fired: AtomicBool::new(false),
            })
        })
        .as_ref()
}

/// `restore:after_swap` → crash; `restore:after_swap:error` → error once.
fn parse(value: &str) -> Option<(String, Mode)> {
    if let Some(step) = value.strip_suffix(":error-always") {
        return Some((step.to_owned(), Mode::ErrorAlways));
    }
    if let Some(step) = value.strip_suffix(":error") {
        return Some((step.to_owned(), Mode::ErrorOnce));
    }
    Some((value.to_owned(), Mode::Crash))
}

/// Reached crash point `step`: abort when it is the armed one. For steps
/// where an injected error would only leave a state no real error can.
pub fn crash(step: &'static str) {
    debug_assert!(
        MEMORY_FAILPOINTS.contains(&step),
        "unlisted crash point {step}"
    );
    if armed().is_some_and(|a| a.step == step && a.mode == Mode::Crash) {
        eprintln!("rewind: failpoint {step} hit, aborting");
        std::process::abort();
    }
}

/// Reached `step`: crash or fail when it is the armed one.
pub fn hit(step: &'static str) -> Result<(), Injected> {
    debug_assert!(
        FAILPOINTS.contains(&step) || step == AUDIT_BEFORE_OUTCOME,
        "unlisted failpoint {step}"
    );
    let Some(armed) = armed().filter(|a| a.step == step) else {
        return Ok(());
    };
    match armed.mode {
        Mode::Crash => {
            eprintln!("rewind: failpoint {step} hit, aborting");
            std::process::abort();
        }
        Mode::ErrorOnce if armed.fired.swap(true, Ordering::SeqCst) => Ok(()),
        Mode::ErrorOnce | Mode::ErrorAlways => Err(Injected { step }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_error_suffixes() {
        assert!(parse("restore:after_swap:error").unwrap().1 == Mode::ErrorOnce);
        assert!(parse("restore:after_swap:error-always").unwrap().1 == Mode::ErrorAlways);
        assert!(parse("restore:after_swap").unwrap().1 == Mode::Crash);
        assert_eq!(
            parse("restore:after_swap:error").unwrap().0,
            "restore:after_swap"
        );
    }
}
