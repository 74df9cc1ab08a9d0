//! The worker's seccomp filter, installed after the privilege drop and before the runtime
//! starts (so every worker thread inherits it): an allow-list of the system calls a network
//! service needs. Anything else — exec, ptrace, mount, namespace and credential changes, module
//! and BPF loading, reading other processes' memory — fails with EPERM. It adds to, and does not
//! replace, the systemd unit's own `SystemCallFilter=`.
//!
//! Uses: nothing else of the crate and libc, seccompiler.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Calls allowed with any arguments.
const ALLOWED: &[libc::c_long] = &[
    // memory
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_madvise,
    libc::SYS_mlock,
    libc::SYS_mlock2,
    libc::SYS_munlock,
    libc::SYS_membarrier,
    // threads, time, signals
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_set_tid_address,
    libc::SYS_rseq,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_gettid,
    libc::SYS_getpid,
    libc::SYS_getppid,
    libc::SYS_tgkill,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_getrandom,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getresuid,
    libc::SYS_getresgid,
    libc::SYS_getgroups,
    libc::SYS_capget,
    libc::SYS_prlimit64,
    libc::SYS_uname,
    libc::SYS_sysinfo,
    // descriptors and files (configuration reads, the token file in the state directory)
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_pread64,
    libc::SYS_write,
    libc::SYS_writev,
    libc::SYS_pwrite64,
    libc::SYS_close,
    libc::SYS_close_range,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_fcntl,
    libc::SYS_ioctl,
    libc::SYS_lseek,
    libc::SYS_openat,
    libc::SYS_newfstatat,
    libc::SYS_fstat,
    libc::SYS_statx,
    libc::SYS_fstatfs,
    libc::SYS_statfs,
    libc::SYS_readlinkat,
    libc::SYS_getdents64,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_getcwd,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_ftruncate,
    libc::SYS_fchmod,
    libc::SYS_mkdirat,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_pipe2,
    libc::SYS_eventfd2,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    libc::SYS_pselect6,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
    libc::SYS_timerfd_gettime,
    // sockets (which families may be opened is checked below)
    libc::SYS_accept4,
    libc::SYS_bind,
    libc::SYS_connect,
    libc::SYS_listen,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_shutdown,
    libc::SYS_sendto,
    libc::SYS_sendmsg,
    libc::SYS_sendmmsg,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_recvmmsg,
    libc::SYS_socketpair,
];

/// Older x86_64-only variants that glibc or tokio still use there.
#[cfg(target_arch = "x86_64")]
const ALLOWED_X86_64: &[libc::c_long] = &[
    libc::SYS_arch_prctl,
    libc::SYS_open,
    libc::SYS_stat,
    libc::SYS_lstat,
    libc::SYS_access,
    libc::SYS_readlink,
    libc::SYS_poll,
    libc::SYS_select,
    libc::SYS_epoll_wait,
    libc::SYS_epoll_create,
    libc::SYS_pipe,
    libc::SYS_dup2,
    libc::SYS_rename,
    libc::SYS_mkdir,
    libc::SYS_unlink,
    libc::SYS_eventfd,
    libc::SYS_time,
];
#[cfg(not(target_arch = "x86_64"))]
const ALLOWED_X86_64: &[libc::c_long] = &[];

/// Socket families the worker may open: IPv4, IPv6 (upstreams), unix (journald, name
/// services), netlink (address configuration for name resolution, socket diagnostics).
const SOCKET_FAMILIES: &[i32] = &[
    libc::AF_UNIX,
    libc::AF_INET,
    libc::AF_INET6,
    libc::AF_NETLINK,
];

/// `prctl` options threads may use (naming threads, reading their own state).
const PRCTL_OPTIONS: &[i32] = &[
    libc::PR_SET_NAME,
    libc::PR_GET_NAME,
    libc::PR_GET_DUMPABLE,
    libc::PR_CAPBSET_READ,
    libc::PR_GET_NO_NEW_PRIVS,
    libc::PR_GET_SECCOMP,
];

fn arg_is(index: u8, value: i32) -> Result<SeccompRule, seccompiler::BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value as u64,
    )?])
}

/// Compiles the filter for this machine's architecture.
pub(crate) fn program() -> Result<BpfProgram, String> {
    let arch = if cfg!(target_arch = "x86_64") {
        TargetArch::x86_64
    } else if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        return Err("no seccomp filter for this architecture".into());
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for call in ALLOWED.iter().chain(ALLOWED_X86_64) {
        rules.insert(*call, vec![]);
    }
    let conditional = |values: &[i32], index: u8| -> Result<Vec<SeccompRule>, String> {
        values
            .iter()
            .map(|v| arg_is(index, *v).map_err(|e| e.to_string()))
            .collect()
    };
    rules.insert(libc::SYS_socket, conditional(SOCKET_FAMILIES, 0)?);
    rules.insert(libc::SYS_prctl, conditional(PRCTL_OPTIONS, 0)?);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )
    .map_err(|e| e.to_string())?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// Installs the filter on the calling thread (threads created later inherit it).
/// Needs no_new_privs (set by the privilege drop) when not root.
pub(crate) fn install() -> Result<(), String> {
    let program = program()?;
    seccompiler::apply_filter(&program).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `probe` in a forked child under the filter; returns its exit code.
    fn in_filtered_child(probe: fn() -> i32) -> i32 {
        // SAFETY: the child only makes raw system calls and exits.
        match unsafe { libc::fork() } {
            0 => unsafe {
                libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
                if install().is_err() {
                    libc::_exit(100);
                }
                libc::_exit(probe());
            },
            child => {
                let mut status = 0;
                unsafe { libc::waitpid(child, &mut status, 0) };
                libc::WEXITSTATUS(status)
            }
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    #[test]
    fn forbidden_calls_fail_with_eperm() {
        // execve
        assert_eq!(
            in_filtered_child(|| unsafe {
                let path = c"/bin/true".as_ptr();
                let argv = [path, std::ptr::null()];
                libc::execv(path, argv.as_ptr());
                errno()
            }),
            libc::EPERM
        );
        // ptrace, setuid, unshare, mount, a raw packet socket, prctl(PR_SET_DUMPABLE)
        assert_eq!(
            in_filtered_child(|| unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
                errno()
            }),
            libc::EPERM
        );
        assert_eq!(
            in_filtered_child(|| unsafe {
                libc::setuid(0);
                errno()
            }),
            libc::EPERM
        );
        assert_eq!(
            in_filtered_child(|| unsafe {
                libc::unshare(libc::CLONE_NEWUSER);
                errno()
            }),
            libc::EPERM
        );
        assert_eq!(
            in_filtered_child(|| unsafe {
                libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
                errno()
            }),
            libc::EPERM
        );
        assert_eq!(
            in_filtered_child(|| unsafe {
                libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0);
                errno()
            }),
            libc::EPERM
        );
    }

    #[test]
    fn what_a_network_service_needs_still_works() {
        assert_eq!(
            in_filtered_child(|| unsafe {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                let name = c"worker";
                let named = libc::prctl(libc::PR_SET_NAME, name.as_ptr());
                let file = libc::open(c"/etc/hosts".as_ptr(), libc::O_RDONLY);
                i32::from(fd < 0 || named != 0 || file < 0)
            }),
            0
        );
    }
}
