//! The seccomp filter applied (with no_new_privs) to every process a sandbox
//! runs: a deny-list of syscalls a sandbox never needs, answered with EPERM.
//! The agent itself stays unfiltered (it mounts and unmounts the workspace).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// Why the filter could not be built.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp is only built for x86_64 and aarch64")]
    UnsupportedArch,
    #[error("cannot compile the seccomp filter")]
    Compile(#[from] seccompiler::BackendError),
}

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

/// Compiles the sandbox filter. Build it before forking; apply it in the
/// child with [`seccompiler::apply_filter`] (which also sets no_new_privs).
pub fn sandbox_filter() -> Result<BpfProgram, SeccompError> {
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = denied_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        target_arch()?,
    )?;
    Ok(filter.try_into()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_filter_compiles_nonempty() {
        assert!(!sandbox_filter().unwrap().is_empty());
    }
}
