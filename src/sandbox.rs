//! Least privilege: kvfs needs root's power only to mount, so it gives up the rest as early as
//! it can.
//!
//! Three steps, all skipped with `--no-sandbox`:
//! - `drop_capabilities`, while the process still has one thread: every capability but
//!   CAP_SYS_ADMIN leaves the effective, permitted, inheritable, ambient and bounding sets.
//!   Capabilities are per thread (capset(2)), so dropping them before the runtime, fuser and
//!   any helper thread exist is what makes every thread inherit the smaller sets. CAP_SYS_ADMIN
//!   stays: mount(2) needs it, and so does the unmount guard's umount2(2) at shutdown.
//! - The unmount guard (src/unmount_guard.rs), forked next, before the mount: the one process
//!   of kvfs outside the Landlock domain, since the kernel refuses umount2(2) to a
//!   Landlock-restricted process. It detaches the mount at shutdown, or when kvfs dies.
//! - `confine`, once the mount is up, in this order:
//!   - Landlock filesystem rules (`landlock`): read anywhere, remove files only in the pid
//!     file directory, write nowhere else, execute nothing; on every thread, thread by thread
//!     before Landlock ABI 8 (see there), with TSYNC from ABI 8.
//!   - PR_SET_NO_NEW_PRIVS and a seccomp allow-list of the system calls kvfs makes while
//!     serving (measured with `strace -f` through reads, listings, refresh, kernel
//!     invalidation, token renewal, CA reload and shutdown), applied with TSYNC so the fuser
//!     and tokio threads already running are covered too (TSYNC also sets their
//!     no_new_privs). Anything else fails with EPERM rather than killing kvfs: a call missed on
//!     some libc path fails one operation, where a kill would take every mounted secret away.
//!     umount2 and execve are not on the list: the guard unmounts, and kvfs runs nothing.
//!
//! A kernel without Landlock or seccomp leaves that step out, with a warning. A kvfs without
//! CAP_SYS_ADMIN (started by a user, mounting through the setuid fusermount3) is not confined:
//! no_new_privs would stop fusermount3 from unmounting.

use std::collections::{BTreeMap, BTreeSet};

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use caps::{CapSet, Capability};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

pub mod landlock;

/// Why a step of the sandbox could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error("cannot drop capabilities: {0}")]
    Capabilities(#[from] caps::errors::CapsError),
    #[error("cannot build the seccomp filter: {0}")]
    Filter(#[from] seccompiler::BackendError),
    #[error("seccomp is not available for this architecture ({0})")]
    Arch(String),
    #[error("cannot install the seccomp filter: {0}")]
    Install(#[from] seccompiler::Error),
    #[error("{0}")]
    Landlock(#[from] landlock::LandlockError),
}

/// The one capability kvfs keeps: mount(2), and the unmount guard's umount2(2), need it.
pub const KEPT: Capability = Capability::CAP_SYS_ADMIN;

/// Drops every capability but CAP_SYS_ADMIN from this thread, and from every thread it will
/// start: call it while the process has one thread. Without CAP_SETPCAP (not root) the
/// bounding set stays as it is: such a process holds no capability to lose anyway.
pub fn drop_capabilities() -> Result<(), SandboxError> {
    let mut keep: caps::CapsHashSet = [KEPT].into_iter().collect();
    // Memory locked under a finite RLIMIT_MEMLOCK stays locked only with CAP_IPC_LOCK: without
    // it, every later mapping would count against the limit and fail.
    if crate::hardening::locked_by_capability() {
        keep.insert(Capability::CAP_IPC_LOCK);
    }
    caps::clear(None, CapSet::Ambient)?;
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::set(None, CapSet::Inheritable, &caps::CapsHashSet::new())?;
    let permitted = caps::read(None, CapSet::Permitted)?;
    let kept: caps::CapsHashSet = permitted.intersection(&keep).copied().collect();
    // Effective first: it must stay a subset of permitted at every step.
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)?;
    Ok(())
}

/// What `confine` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confinement {
    /// Landlock (where the kernel has it), no_new_privs and the seccomp filter are on for
    /// every thread.
    Confined {
        landlock: landlock::Outcome,
        syscalls: usize,
    },
    /// No CAP_SYS_ADMIN: unmounting needs the setuid fusermount3, which no_new_privs disarms.
    SkippedUnprivileged,
}

/// Directories beneath which kvfs writes once mounted, besides the pid file's.
static WRITABLE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Lets kvfs write beneath `dir` once confined (the demo's emulator state, removed at exit).
pub fn writable_beneath(dir: &Path) {
    WRITABLE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.to_owned());
}

/// Directories in which kvfs removes files once mounted, besides the pid file's.
static REMOVABLE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// Lets kvfs remove files in `dir` once confined (its control socket, at shutdown).
pub fn removable_in(dir: &Path) {
    REMOVABLE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(dir.to_owned());
}

/// The Landlock rules for this kvfs.
fn landlock_rules() -> Vec<landlock::Rule> {
    let writable = WRITABLE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let mut rules = landlock::rules(crate::mountpoint::pid_dir().as_deref(), &writable);
    let removable = REMOVABLE.lock().unwrap_or_else(|p| p.into_inner()).clone();
    rules.extend(
        removable
            .into_iter()
            .filter(|d| d.is_dir())
            .map(|path| landlock::Rule {
                path,
                allowed: landlock::Allowed::RemoveFiles,
            }),
    );
    rules
}

/// Applies the Landlock rules, then sets no_new_privs and installs the seccomp allow-list, on
/// every thread of the process. Landlock comes first: its system calls are not on the list.
pub fn confine() -> Result<Confinement, SandboxError> {
    if !caps::has_cap(None, CapSet::Effective, KEPT)? {
        return Ok(Confinement::SkippedUnprivileged);
    }
    let landlock = landlock::confine_every_thread(&landlock_rules())?;
    let program = filter()?;
    // Sets PR_SET_NO_NEW_PRIVS first; TSYNC carries it and the filter to all threads.
    seccompiler::apply_filter_all_threads(&program)?;
    Ok(Confinement::Confined {
        landlock,
        syscalls: allowed_syscalls().len(),
    })
}

/// Confines kvfs once its mount is up, unless `--no-sandbox`; says once what it did. A kernel
/// without Landlock or seccomp leaves kvfs unconfined by it, with a warning, not stopped. With
/// `--auth azure-cli` (`execs_az`) Landlock and the filter stay off: they would bind the Azure
/// CLI (a Python program kvfs runs for every token) to kvfs's own rules and system calls.
pub fn after_mount(disabled: bool, execs_az: bool) {
    if disabled {
        tracing::warn!("--no-sandbox: kvfs keeps its capabilities and makes any system call");
        return;
    }
    if execs_az {
        tracing::warn!(
            "sandbox: capabilities dropped, Landlock and seccomp off: --auth azure-cli runs `az` for tokens"
        );
        return;
    }
    match confine() {
        Ok(Confinement::Confined { landlock, syscalls }) => {
            report_landlock(&landlock);
            tracing::info!(
                capabilities = "CAP_SYS_ADMIN",
                no_new_privs = true,
                syscalls,
                landlock = matches!(landlock, landlock::Outcome::Applied(_)),
                "sandbox on: seccomp allow-list on every thread"
            );
        }
        Ok(Confinement::SkippedUnprivileged) => tracing::warn!(
            "sandbox off: without CAP_SYS_ADMIN kvfs unmounts through the setuid fusermount3, \
             which no_new_privs would disarm"
        ),
        Err(e) => tracing::warn!(error = %e, "sandbox off: kvfs runs unconfined"),
    }
}

fn report_landlock(outcome: &landlock::Outcome) {
    let coverage = match outcome {
        landlock::Outcome::Unavailable { errno } => {
            let cause = std::io::Error::from_raw_os_error(*errno);
            tracing::warn!(
                error = %cause,
                "landlock: unavailable (not in this kernel, not enabled at boot, or refused by a \
                 seccomp filter such as systemd's SystemCallFilter=); filesystem rules off"
            );
            return;
        }
        landlock::Outcome::Applied(coverage) => coverage,
    };
    let tids: Vec<String> = coverage.confirmed.iter().map(i32::to_string).collect();
    let how = if coverage.tsync {
        "TSYNC"
    } else {
        "thread by thread"
    };
    if coverage.complete() {
        tracing::info!(
            abi = coverage.abi,
            tids = tids.join(","),
            "landlock: {} threads confined ({how}), writes outside the allowed paths denied",
            coverage.confirmed.len()
        );
    } else {
        tracing::warn!(
            abi = coverage.abi,
            tids = tids.join(","),
            failed = ?coverage.failed,
            not_denied = ?coverage.not_denied,
            silent = ?coverage.silent,
            "landlock: only {} threads confined ({how})",
            coverage.confirmed.len()
        );
    }
}

/// The compiled allow-list for this architecture.
fn filter() -> Result<BpfProgram, SandboxError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SandboxError::Arch(std::env::consts::ARCH.to_owned()))?;
    let rules: BTreeMap<i64, Vec<seccompiler::SeccompRule>> = allowed_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(libc::EPERM as u32),
        SeccompAction::Allow,
        arch,
    )?;
    Ok(filter.try_into()?)
}

/// The system calls kvfs makes once mounted. Grouped by who needs them; an entry names the
/// path that needs it where that is not obvious.
fn allowed_syscalls() -> BTreeSet<i64> {
    let mut calls = vec![
        // Memory, threads, time: the allocator, std, tokio's and fuser's threads.
        libc::SYS_brk,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mremap,
        libc::SYS_mprotect,
        libc::SYS_madvise,
        libc::SYS_futex,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_set_robust_list,
        libc::SYS_rseq,
        libc::SYS_set_tid_address,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_gettid,
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getrandom,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_prctl,
        libc::SYS_prlimit64,
        libc::SYS_uname,
        libc::SYS_sysinfo,
        // Signals: tokio's handlers (SIGTERM, SIGINT, SIGUSR1/2), std's stack guard.
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_tgkill,
        libc::SYS_kill,
        // File descriptors: /dev/fuse, sockets, the CA and token files, logs.
        libc::SYS_read,
        libc::SYS_readv,
        libc::SYS_pread64,
        libc::SYS_write,
        libc::SYS_writev,
        libc::SYS_pwrite64,
        libc::SYS_close,
        libc::SYS_openat,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_fcntl,
        libc::SYS_ioctl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_eventfd2,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_ppoll,
        libc::SYS_getdents64,
        libc::SYS_readlinkat,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_getcwd,
        // The watchdog pings systemd only after a statfs of the mountpoint answered.
        libc::SYS_statfs,
        libc::SYS_fstatfs,
        // The pid file under /run/kvfs/mounts is removed at exit.
        libc::SYS_unlinkat,
        // HTTPS, DNS (glibc's resolver, netlink for getaddrinfo's address check), systemd's
        // notify socket.
        libc::SYS_socket,
        libc::SYS_socketpair,
        libc::SYS_connect,
        libc::SYS_bind,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
        libc::SYS_sendto,
        libc::SYS_recvfrom,
        libc::SYS_sendmsg,
        libc::SYS_recvmsg,
        libc::SYS_sendmmsg,
        libc::SYS_shutdown,
        // The metrics server (--metrics-addr) accepts scrapes.
        libc::SYS_listen,
        libc::SYS_accept4,
        // Live handoff: the state for systemd's fd store travels in a memfd.
        libc::SYS_memfd_create,
        // Shutdown: the unmount guard is reaped. (It unmounts; kvfs runs no program once
        // mounted: `az` for --auth azure-cli runs without the filter.)
        libc::SYS_wait4,
        libc::SYS_waitid,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
        libc::SYS_unlink,
        libc::SYS_poll,
        libc::SYS_epoll_wait,
        libc::SYS_pipe,
        libc::SYS_arch_prctl,
        libc::SYS_accept,
    ]);
    calls.into_iter().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filter_compiles_for_this_architecture() {
        let program = filter().expect("filter builds");
        assert!(program.len() > allowed_syscalls().len());
    }

    #[test]
    fn mount_and_ptrace_are_not_allowed() {
        let allowed = allowed_syscalls();
        for denied in [
            libc::SYS_mount,
            libc::SYS_ptrace,
            libc::SYS_setuid,
            libc::SYS_capset,
            libc::SYS_bpf,
            libc::SYS_init_module,
            libc::SYS_process_vm_writev,
            libc::SYS_unshare,
            libc::SYS_setns,
            libc::SYS_pivot_root,
            // The unmount guard unmounts; kvfs runs no program once mounted.
            libc::SYS_umount2,
            libc::SYS_execve,
            libc::SYS_execveat,
            // Landlock is applied before the filter, never after.
            libc::SYS_landlock_restrict_self,
        ] {
            assert!(!allowed.contains(&denied), "syscall {denied} is allowed");
        }
        assert!(allowed.contains(&libc::SYS_wait4), "the guard is reaped");
    }
}
