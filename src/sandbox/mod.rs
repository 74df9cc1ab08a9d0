//! The worker's confinement, entered in the forked child before any worker code runs: become
//! the worker user with no capabilities and no way back (`privilege_drop`), re-lock the key page
//! (locks are not inherited across fork), install the seccomp allow-list (`syscall_filter`),
//! then unblock the signals the supervisor blocked. Nothing here parses client input.
//!
//! Uses: `crate::contract` (the key page to re-lock) and `crate::cli` (the package user's
//! name). The supervisor resolves the user before fork (it also hands the state directory to
//! it); `main.rs` calls [`Sandbox::enter`] in the child.

pub(crate) mod privilege_drop;
pub(crate) mod syscall_filter;

use crate::contract::{Handover, KeySource};
use nix::sys::signal::SigSet;
pub(crate) use privilege_drop::WorkerUser;

/// How the child confines itself, decided by root before fork.
pub(crate) struct Sandbox {
    pub(crate) user: Option<WorkerUser>,
    /// The signals the supervisor blocked (for its signalfd), unblocked in the worker.
    pub(crate) signals: SigSet,
    pub(crate) syscall_filter: bool,
}

impl Sandbox {
    /// The worker user's name, for log lines.
    pub(crate) fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|u| u.name.as_str())
    }

    /// Confines the calling (forked, single-threaded) process; on error the worker must not run.
    pub(crate) fn enter(&self, handover: &Handover) -> Result<(), String> {
        privilege_drop::drop_privileges(self.user.as_ref())
            .map_err(|e| format!("worker: cannot drop privileges: {e}"))?;
        if let KeySource::Key(header) = &handover.key {
            header.lock_in_memory().map_err(|e| {
                format!("worker: cannot lock the key in memory: {e}; raise LimitMEMLOCK=")
            })?;
        }
        if let Some(header) = &handover.github_oidc_request {
            header.lock_in_memory().map_err(|e| {
                format!("worker: cannot lock the GitHub OIDC request token in memory: {e}; raise LimitMEMLOCK=")
            })?;
        }
        if self.syscall_filter {
            syscall_filter::install().map_err(|e| {
                format!("worker: cannot install the seccomp filter: {e}; --no-syscall-filter disables it")
            })?;
        }
        self.signals
            .thread_unblock()
            .map_err(|e| format!("worker: cannot unblock signals: {e}"))
    }
}
