//! Crash injection for tests: with the `failpoints` feature, the process
//! aborts when it reaches the step named by `REWIND_STORAGE_FAILPOINT`.
//! Without the feature, [`hit`] compiles to nothing.

/// Every step at which an operation can be interrupted, in execution order
/// per operation. Crash tests iterate over these.
pub const FAILPOINTS: &[&str] = &[
    "create:after_mkdir",
    "create:after_live",
    "create:after_layout",
    "create:after_rename",
    "snapshot:after_marker",
    "snapshot:after_state",
    "snapshot:after_snapshot",
    "restore:after_live_new",
    "restore:after_state_new",
    "restore:after_intent",
    "restore:after_state_exchange",
    "restore:after_live_exchange",
    "restore:after_trash",
    "wipe:after_live_new",
    "wipe:after_chown",
    "wipe:after_exchange",
    "wipe:after_trash",
    "delete:after_rename",
    "delete_snapshot:after_snapshot",
    "delete_snapshot:after_state",
    "trash:after_first_delete",
    "import:after_mkdir",
    "import:while_receiving",
    "import:after_verify",
    "import:after_receive",
    "import:before_discard",
    "cold:after_stream",
    "cold:after_commit",
    "cold_restore:after_receive",
];

/// The environment variable naming the step to abort at.
pub const FAILPOINT_ENV: &str = "REWIND_STORAGE_FAILPOINT";

#[cfg(feature = "failpoints")]
pub(crate) fn hit(step: &'static str) {
    use std::sync::OnceLock;
    static ARMED: OnceLock<Option<String>> = OnceLock::new();
    debug_assert!(FAILPOINTS.contains(&step), "unlisted failpoint {step}");
    let armed = ARMED.get_or_init(|| std::env::var(FAILPOINT_ENV).ok());
    if armed.as_deref() == Some(step) {
        eprintln!("rewind-storage: failpoint {step} hit, aborting");
        std::process::abort();
    }
}

#[cfg(not(feature = "failpoints"))]
#[inline(always)]
pub(crate) fn hit(_step: &'static str) {}
