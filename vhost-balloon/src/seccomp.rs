// Copyright 2026 The DMM Authors
// SPDX-License-Identifier: Apache-2.0 OR BSD-3-Clause

//! The system calls the daemon makes after set-up, as a seccomp allow-list
//! (found by running the integration tests with `--seccomp log`).

use std::collections::BTreeMap;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, SeccompRule, TargetArch};

/// What a call outside the list does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SeccompMode {
    /// Kill the process.
    Kill,
    /// Send SIGSYS (a core dump names the call).
    Trap,
    /// Allow it and log it to the kernel audit log.
    Log,
    /// No filter.
    Off,
}

/// Errors building or installing the filter.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    /// This architecture has no allow-list.
    #[error("no seccomp allow-list for architecture {0}; use --seccomp off")]
    Arch(&'static str),
    /// seccompiler rejected the filter.
    #[error("building the seccomp filter: {0}")]
    Build(#[from] seccompiler::BackendError),
    /// Installing failed.
    #[error("installing the seccomp filter: {0}")]
    Apply(#[from] seccompiler::Error),
}

/// Calls seen after set-up under strace while the integration tests ran
/// (`vhost-balloon/README.md` says how to redo it), plus
/// those of paths the tests do not reach: DMM reconnect (connect, setsockopt,
/// nanosleep), panics and aborts (tgkill, exit_group), large reallocations.
#[cfg(target_arch = "x86_64")]
const ARCH_SYSCALLS: &[libc::c_long] = &[libc::SYS_epoll_wait, libc::SYS_unlink, libc::SYS_poll];
#[cfg(not(target_arch = "x86_64"))]
const ARCH_SYSCALLS: &[libc::c_long] = &[];

const SYSCALLS: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_close,
    libc::SYS_connect,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_eventfd2,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_fallocate,
    libc::SYS_fcntl,
    libc::SYS_futex,
    libc::SYS_getrandom,
    libc::SYS_getsockopt,
    libc::SYS_gettid,
    libc::SYS_listen,
    libc::SYS_madvise,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_ppoll,
    libc::SYS_prctl,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_restart_syscall,
    libc::SYS_rseq,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_yield,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_set_robust_list,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sigaltstack,
    libc::SYS_socket,
    libc::SYS_tgkill,
    libc::SYS_timerfd_settime,
    libc::SYS_write,
    libc::SYS_writev,
];

/// Builds the filter for `mode` (`None` for `Off`).
pub fn filter(mode: SeccompMode) -> Result<Option<BpfProgram>, SeccompError> {
    let mismatch = match mode {
        SeccompMode::Off => return Ok(None),
        SeccompMode::Kill => SeccompAction::KillProcess,
        SeccompMode::Trap => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let rules: BTreeMap<i64, Vec<SeccompRule>> = SYSCALLS
        .iter()
        .chain(ARCH_SYSCALLS)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    let f = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)?;
    Ok(Some(f.try_into()?))
}

/// Installs the filter on every thread of the process.
pub fn apply(mode: SeccompMode) -> Result<(), SeccompError> {
    if let Some(prog) = filter(mode)? {
        seccompiler::apply_filter_all_threads(&prog)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_build() {
        for m in [SeccompMode::Kill, SeccompMode::Trap, SeccompMode::Log] {
            assert!(!filter(m).unwrap().unwrap().is_empty());
        }
        assert!(filter(SeccompMode::Off).unwrap().is_none());
    }

    /// A call outside the list really kills (checked in a forked child).
    #[test]
    fn kill_mode_kills_on_unlisted_call() {
        let prog = filter(SeccompMode::Kill).unwrap().unwrap();
        // SAFETY: the child only installs the filter and makes raw system calls before _exit.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            let ok = seccompiler::apply_filter(&prog).is_ok();
            // SAFETY: getppid has no arguments; it is not on the list.
            unsafe { libc::syscall(libc::SYS_getppid) };
            // SAFETY: _exit never returns and touches no Rust state.
            unsafe { libc::_exit(if ok { 0 } else { 3 }) };
        }
        let mut status = 0;
        // SAFETY: status is a valid out-pointer; pid is our child.
        assert_eq!(unsafe { libc::waitpid(pid, &mut status, 0) }, pid);
        assert!(libc::WIFSIGNALED(status), "child status {status:#x}");
        assert_eq!(libc::WTERMSIG(status), libc::SIGSYS);
    }
}
