//! The seccomp filters applied (with no_new_privs) to every process a
//! sandbox runs: a deny-list of syscalls a sandbox never needs, answered with
//! EPERM, and — unless nested user namespaces are allowed — `unshare` and
//! `clone` with `CLONE_NEWUSER` (EPERM) and `clone3` (ENOSYS: its flags sit
//! in memory a filter cannot read, and on ENOSYS libc falls back to `clone`,
//! so threads and fork keep working), as Docker's default profile does.
//! The agent itself stays unfiltered (it mounts and unmounts the workspace).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

/// The compiled filters, applied in order in every exec'd child.
pub type SandboxFilters = Vec<BpfProgram>;

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp is only built for x86_64 and aarch64")]
    UnsupportedArch,
    #[error("cannot compile the seccomp filter")]
    Compile(#[from] seccompiler::BackendError),
}

type Rules = BTreeMap<i64, Vec<SeccompRule>>;

/// x32 syscalls share the x86_64 audit arch with this bit set; deny those too.
#[cfg(target_arch = "x86_64")]
const X32_BIT: i64 = 0x4000_0000;

fn denied_syscalls() -> Vec<i64> {
    let mut list = vec![
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_open_by_handle_at,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_reboot,
        libc::SYS_syslog,
        libc::SYS_acct,
        libc::SYS_userfaultfd,
        libc::SYS_quotactl,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_vhangup,
        libc::SYS_fanotify_init,
    ];
    #[cfg(target_arch = "x86_64")]
    list.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_lookup_dcookie,
    ]);
    #[cfg(target_arch = "x86_64")]
    {
        let x32: Vec<i64> = list.iter().map(|nr| nr | X32_BIT).collect();
        list.extend(x32);
    }
    list
}

fn target_arch() -> Result<TargetArch, SeccompError> {
    match std::env::consts::ARCH {
        "x86_64" => Ok(TargetArch::x86_64),
        "aarch64" => Ok(TargetArch::aarch64),
        _ => Err(SeccompError::UnsupportedArch),
    }
}

/// Compiles the sandbox filters. Build them before forking; apply each in
/// the child with [`seccompiler::apply_filter`] (which also sets
/// no_new_privs).
pub fn sandbox_filter(allow_nested_userns: bool) -> Result<SandboxFilters, SeccompError> {
    let mut rules: Rules = denied_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    if allow_nested_userns {
        return Ok(vec![compile(rules, libc::EPERM)?]);
    }
    let newuser = || {
        let flag = libc::CLONE_NEWUSER as u64;
        let cond = SeccompCondition::new(
            0,
            SeccompCmpArgLen::Qword,
            SeccompCmpOp::MaskedEq(flag),
            flag,
        )?;
        SeccompRule::new(vec![cond])
    };
    rules.insert(libc::SYS_unshare, vec![newuser()?]);
    rules.insert(libc::SYS_clone, vec![newuser()?]);
    let clone3: Rules = [(libc::SYS_clone3, Vec::new())].into_iter().collect();
    Ok(vec![
        compile(rules, libc::EPERM)?,
        compile(clone3, libc::ENOSYS)?,
    ])
}

/// One filter: the listed syscalls (when their rules match) fail with
/// `errno`, everything else is allowed.
fn compile(rules: Rules, errno: i32) -> Result<BpfProgram, SeccompError> {
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno as u32),
        target_arch()?,
    )?;
    Ok(filter.try_into()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_filter_compiles_nonempty() {
        assert!(sandbox_filter(true).unwrap().iter().all(|p| !p.is_empty()));
    }

    #[test]
    fn sandbox_filter_denying_userns_adds_the_clone3_filter() {
        assert_eq!(sandbox_filter(false).unwrap().len(), 2);
        assert_eq!(sandbox_filter(true).unwrap().len(), 1);
    }
}
