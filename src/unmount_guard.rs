//! The unmount guard: a small child process, forked at startup while kvfs still has one thread
//! and before any secret or token is fetched, whose only job is to detach kvfs's mount.
//!
//! Why a process of its own: the kernel refuses umount2(2) to a Landlock-restricted process,
//! and kvfs confines itself with Landlock once mounted (src/sandbox.rs). The guard is forked
//! before that, so it stays outside the Landlock domain; it keeps what the parent kept of its
//! capabilities (CAP_SYS_ADMIN), installs its own seccomp filter of a handful of calls, and
//! ignores the signals a terminal, `kill -- -PGID` or systemd's stop would send to every process
//! of the group, so that it outlives kvfs long enough to detach.
//!
//! The protocol, one byte at a time over a socketpair:
//! - `A` (armed): the mount is up. Before it, the guard never unmounts anything: the path may
//!   hold another kvfs's mount (a refused start). The guard notes which mount the path holds
//!   now (its mount id, by statx without asking kvfs anything), then answers one byte.
//! - `D` (detach): `umount2(MNT_DETACH)` now, falling back to `fusermount3 -u -z` on EPERM (a
//!   user's mount); EINVAL (nothing mounted there any more) counts as done. The guard answers
//!   with the errno as 4 bytes (0 = detached) and exits.
//! - `R` (release): exit without unmounting (a successor process takes the live mount over).
//! - End of file without `D` or `R` (kvfs died, even by SIGKILL): detach lazily if armed and
//!   the path still holds the mount noted at `A`, exit. A mount some other process put there
//!   meanwhile (a new kvfs that cleared the dead mount first) is left alone.
//!
//! The guard holds no file descriptor but its end of the socketpair and stderr (stdin and
//! stdout become /dev/null): it is forked before the mount, so never holds /dev/fuse. The
//! parent reaps it in `detach`, `release` or on drop; if kvfs dies first, it is reparented and
//! reaped by init (or the nearest subreaper).
//!
//! The child runs raw system calls only, on data prepared before the fork: no allocation, no
//! lock, nothing that could be held by a thread that does not exist in the child.

use std::ffi::{CString, c_char};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use seccompiler::{BpfProgram, SeccompAction, SeccompFilter, TargetArch};

/// The name the guard shows in `ps` and `/proc/<pid>/comm`.
pub const PROCESS_NAME: &str = "kvfs-unmount";

const ARM: u8 = b'A';
const DETACH: u8 = b'D';
const RELEASE: u8 = b'R';

/// How long `detach` waits for the guard's answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(10);

/// The guard's file descriptor for its end of the channel, after the fork.
const CHANNEL_FD: libc::c_int = 3;

/// The parent's handle on its unmount guard.
#[derive(Debug)]
pub struct UnmountGuard {
    pid: libc::pid_t,
    /// None once the guard was told to go (detach, release) and reaped.
    channel: Mutex<Option<UnixStream>>,
}

/// What the child needs, prepared before the fork.
struct ChildPlan {
    /// The process's argument strings (start, end): the child writes its name over them, so
    /// that `ps`, `/proc/<pid>/cmdline` and `pgrep -f 'kvfs mount'` do not take it for kvfs.
    args: Option<(usize, usize)>,
    mountpoint: CString,
    fusermount: Option<CString>,
    dev_null: OwnedFd,
    filter: Option<BpfProgram>,
}

impl UnmountGuard {
    /// Forks the guard for `mountpoint`. Call while the process has one thread, before the
    /// mount. With `confine`, and when kvfs holds CAP_SYS_ADMIN (so that umount2 needs no
    /// setuid helper), the guard confines itself to a seccomp list of the calls it makes.
    pub fn spawn(mountpoint: &Path, confine: bool) -> io::Result<Self> {
        let threads = thread_count();
        if threads != Some(1) {
            // Still safe (the child makes raw system calls only), but worth knowing.
            tracing::debug!(
                ?threads,
                "unmount guard forked from a multi-threaded process"
            );
        }
        let plan = ChildPlan {
            args: argument_area(),
            mountpoint: CString::new(mountpoint.as_os_str().as_bytes())?,
            fusermount: find_fusermount().and_then(|p| CString::new(p.as_os_str().as_bytes()).ok()),
            dev_null: std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/null")?
                .into(),
            filter: if confine && holds_sys_admin() {
                Some(filter().map_err(io::Error::other)?)
            } else {
                None
            },
        };
        let (ours, theirs) = UnixStream::pair()?;
        // SAFETY: the child runs `child_main`, which makes raw system calls only on `plan` and
        // the two descriptors, all prepared before the fork, and never returns.
        let pid = unsafe { libc::fork() };
        match pid {
            -1 => Err(io::Error::last_os_error()),
            0 => child_main(&plan, ours.as_raw_fd(), theirs.as_raw_fd()),
            pid => {
                drop(theirs);
                tracing::debug!(pid, "unmount guard started");
                Ok(Self {
                    pid,
                    channel: Mutex::new(Some(ours)),
                })
            }
        }
    }

    /// The guard's process id.
    pub fn pid(&self) -> u32 {
        self.pid.unsigned_abs()
    }

    /// Tells the guard that the mount is up: from now on, kvfs's death detaches it. Returns
    /// once the guard noted which mount it guards.
    pub fn arm(&self) -> io::Result<()> {
        let mut channel = self.lock();
        let stream = channel.as_mut().ok_or_else(gone)?;
        send(stream, ARM)?;
        stream.set_read_timeout(Some(ANSWER_WITHIN))?;
        let mut noted = [0u8; 1];
        stream
            .read_exact(&mut noted)
            .map_err(|e| io::Error::new(e.kind(), format!("the unmount guard did not answer: {e}")))
    }

    /// Detaches the mount now (lazily: holders of open files keep being answered) and waits
    /// for the guard to exit.
    pub fn detach(&self) -> io::Result<()> {
        let mut channel = self.lock();
        let mut stream = channel.take().ok_or_else(gone)?;
        send(&mut stream, DETACH)?;
        stream.set_read_timeout(Some(ANSWER_WITHIN))?;
        let mut answer = [0u8; 4];
        let read = stream.read_exact(&mut answer);
        drop(stream);
        self.reap();
        read.map_err(|e| {
            io::Error::new(e.kind(), format!("the unmount guard did not answer: {e}"))
        })?;
        match i32::from_le_bytes(answer) {
            0 => Ok(()),
            errno => Err(io::Error::from_raw_os_error(errno)),
        }
    }

    /// Lets the guard go without unmounting (the mount outlives this process).
    pub fn release(self) {
        let mut channel = self.lock();
        if let Some(mut stream) = channel.take() {
            let _ = send(&mut stream, RELEASE);
            drop(stream);
            self.reap();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<UnixStream>> {
        self.channel.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn reap(&self) {
        loop {
            // SAFETY: waits for our own child; a null status pointer is allowed.
            let rc = unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
            if rc != -1 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                return;
            }
        }
    }
}

impl Drop for UnmountGuard {
    /// Closing the channel is end of file for the guard: armed, it detaches; it then exits
    /// and is reaped here.
    fn drop(&mut self) {
        if self.lock().take().is_some() {
            self.reap();
        }
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::BrokenPipe,
        "the unmount guard has already exited",
    )
}

fn send(stream: &mut UnixStream, command: u8) -> io::Result<()> {
    stream
        .write_all(&[command])
        .map_err(|e| io::Error::new(e.kind(), format!("cannot reach the unmount guard: {e}")))
}

/// Threads of this process, from /proc/self/status.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

fn holds_sys_admin() -> bool {
    caps::has_cap(
        None,
        caps::CapSet::Effective,
        caps::Capability::CAP_SYS_ADMIN,
    )
    .unwrap_or(false)
}

/// Where this process's argument strings are (arg_start, arg_end of /proc/self/stat).
fn argument_area() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which may hold spaces: field 3 is the first.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let start = fields.get(48 - 3)?.parse().ok()?;
    let end = fields.get(49 - 3)?.parse().ok()?;
    (start < end).then_some((start, end))
}

/// `fusermount3` on the PATH, resolved now: the child must not search for it.
fn find_fusermount() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/bin:/bin".into());
    std::env::split_paths(&path)
        .map(|dir| dir.join("fusermount3"))
        .find(|p| p.is_file())
}

/// The system calls the guard makes once confined: wait, answer, unmount, exit.
fn guard_syscalls() -> Vec<i64> {
    vec![
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_close,
        libc::SYS_umount2,
        libc::SYS_statx,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_rt_sigreturn,
        libc::SYS_restart_syscall,
    ]
}

fn filter() -> Result<BpfProgram, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let rules = guard_syscalls()
        .into_iter()
        .map(|nr| (nr, Vec::new()))
        .collect();
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

/// The guard's life. Raw system calls only.
fn child_main(plan: &ChildPlan, parents_end: libc::c_int, ours: libc::c_int) -> ! {
    // SAFETY: every call below is a plain system call on descriptors and buffers prepared
    // before the fork, which stay valid until `_exit`; the only memory written besides locals
    // is this process's own argument strings, within the bounds the kernel reported.
    unsafe {
        libc::close(parents_end);
        if let Some((start, end)) = plan.args {
            // The child's own copy of the argument strings (copy on write): the name, then
            // NULs to the end, which /proc/<pid>/cmdline then shows.
            let area = start as *mut u8;
            std::ptr::write_bytes(area, 0, end - start);
            let name = PROCESS_NAME.as_bytes();
            if name.len() < end - start {
                std::ptr::copy_nonoverlapping(name.as_ptr(), area, name.len());
            }
        }
        libc::prctl(libc::PR_SET_NAME, c"kvfs-unmount".as_ptr(), 0, 0, 0);
        // Signals sent to the whole group (Ctrl-C, systemd's stop) must not take the guard
        // away before kvfs asks it to detach; end of file tells it when to go.
        for sig in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGQUIT,
            libc::SIGPIPE,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::signal(sig, libc::SIG_IGN);
        }
        let dev_null = plan.dev_null.as_raw_fd();
        libc::dup2(dev_null, 0);
        libc::dup2(dev_null, 1);
        if ours != CHANNEL_FD {
            libc::dup2(ours, CHANNEL_FD);
        }
        // Everything else goes: the parent's log files, sockets, whatever it inherited.
        if libc::syscall(libc::SYS_close_range, CHANNEL_FD + 1, libc::c_uint::MAX, 0) != 0 {
            for fd in CHANNEL_FD + 1..4096 {
                libc::close(fd);
            }
        }
        if let Some(program) = &plan.filter
            && seccompiler::apply_filter(program).is_err()
        {
            // Unconfined but working: the guard makes the same calls either way.
        }
        // The mount noted at `A`: None before, Some(None) when statx could not say.
        let mut armed: Option<Option<MountId>> = None;
        loop {
            let mut byte = 0u8;
            let n = libc::read(CHANNEL_FD, (&raw mut byte).cast(), 1);
            if n == -1 && errno() == libc::EINTR {
                continue;
            }
            match (n, byte) {
                (1, ARM) => {
                    armed = Some(mount_id(&plan.mountpoint));
                    libc::write(CHANNEL_FD, (&raw const byte).cast(), 1);
                }
                (1, DETACH) => {
                    let answer = detach(plan).to_le_bytes();
                    libc::write(CHANNEL_FD, answer.as_ptr().cast(), answer.len());
                    libc::_exit(0);
                }
                (1, RELEASE) => libc::_exit(0),
                (1, _) => {}
                // End of file (or a broken channel): kvfs is gone.
                _ => {
                    match armed {
                        Some(Some(noted)) if mount_id(&plan.mountpoint) != Some(noted) => {}
                        Some(_) => {
                            detach(plan);
                        }
                        None => {}
                    }
                    libc::_exit(0);
                }
            }
        }
    }
}

/// Which mount a path holds: (the kind of id, the id). Mount ids are unique for the system's
/// life where the kernel has `STATX_MNT_ID_UNIQUE` (6.8), else the older id, which a later
/// mount may reuse once this one is gone.
type MountId = (u32, u64);

/// The mount id of the filesystem at `path`, without a request to that filesystem
/// (`AT_STATX_DONT_SYNC`: a dead or hung FUSE mount answers from the kernel's cache). Raw
/// system calls only.
fn mount_id(path: &CString) -> Option<MountId> {
    // SAFETY: all-zero is a valid `statx` (plain integers), filled by the call.
    let mut buf: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a writable buffer of the right type.
    let rc = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            path.as_ptr(),
            libc::AT_STATX_DONT_SYNC | libc::AT_NO_AUTOMOUNT,
            libc::STATX_MNT_ID_UNIQUE | libc::STATX_MNT_ID,
            &mut buf,
        )
    };
    let kind = buf.stx_mask & (libc::STATX_MNT_ID_UNIQUE | libc::STATX_MNT_ID);
    (rc == 0 && kind != 0).then_some((kind, buf.stx_mnt_id))
}

/// Detaches the mountpoint; 0 or the errno. Raw system calls only.
fn detach(plan: &ChildPlan) -> i32 {
    // SAFETY: a valid NUL-terminated path; umount2 reads it only.
    if unsafe { libc::umount2(plan.mountpoint.as_ptr(), libc::MNT_DETACH) } == 0 {
        return 0;
    }
    match errno() {
        // Nothing mounted there any more: unmounted from outside meanwhile.
        libc::EINVAL => 0,
        // A user's mount: the setuid fusermount3 detaches mounts its user made.
        libc::EPERM => plan
            .fusermount
            .as_ref()
            .map_or(libc::EPERM, |exe| fusermount(exe, &plan.mountpoint)),
        e => e,
    }
}

/// Runs `fusermount3 -u -z PATH` and waits for it; 0 or an errno. Raw system calls only.
fn fusermount(exe: &CString, path: &CString) -> i32 {
    let argv: [*const c_char; 5] = [
        exe.as_ptr(),
        c"-u".as_ptr(),
        c"-z".as_ptr(),
        path.as_ptr(),
        std::ptr::null(),
    ];
    let envp: [*const c_char; 1] = [std::ptr::null()];
    // SAFETY: the guard has one thread; the child only execs (with arrays that outlive the
    // call) or exits.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => errno(),
        0 => unsafe {
            // SAFETY: as above.
            libc::execve(exe.as_ptr(), argv.as_ptr(), envp.as_ptr());
            libc::_exit(127)
        },
        pid => {
            let mut status = 0;
            loop {
                // SAFETY: waits for our own child into a local.
                let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
                if rc == pid {
                    break;
                }
                if errno() != libc::EINTR {
                    return errno();
                }
            }
            if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
                0
            } else {
                libc::EPERM
            }
        }
    }
}

fn errno() -> i32 {
    io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guards_filter_compiles_and_allows_no_exec_or_mount() {
        let program = filter().expect("filter builds");
        assert!(program.len() > guard_syscalls().len());
        let allowed = guard_syscalls();
        for denied in [
            libc::SYS_execve,
            libc::SYS_mount,
            libc::SYS_openat,
            libc::SYS_socket,
            libc::SYS_ptrace,
        ] {
            assert!(!allowed.contains(&denied), "syscall {denied} is allowed");
        }
        assert!(allowed.contains(&libc::SYS_umount2));
    }

    #[test]
    fn a_guard_released_or_dropped_unarmed_exits_without_unmounting() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard = UnmountGuard::spawn(dir.path(), false).expect("spawn");
        let pid = guard.pid();
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        // The name is set by the child itself: wait for it.
        let named = (0..200).any(|_| {
            std::thread::sleep(Duration::from_millis(5));
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|c| c.trim() == PROCESS_NAME)
        });
        assert!(named, "comm {comm:?}");
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).expect("cmdline");
        assert_eq!(
            cmdline.split(|&b| b == 0).next(),
            Some(PROCESS_NAME.as_bytes()),
            "{:?}",
            String::from_utf8_lossy(&cmdline)
        );
        guard.release();
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");

        let guard = UnmountGuard::spawn(dir.path(), false).expect("spawn");
        let pid = guard.pid();
        drop(guard);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "reaped");
    }

    #[test]
    fn detach_of_a_path_with_nothing_mounted_is_done() {
        let dir = tempfile::tempdir().expect("tempdir");
        let guard = UnmountGuard::spawn(dir.path(), true).expect("spawn");
        guard.arm().expect("arm");
        // EINVAL (not a mount point) counts as detached; a user without CAP_SYS_ADMIN goes
        // through fusermount3, which refuses a path that is not mounted.
        let result = guard.detach();
        if holds_sys_admin() {
            result.expect("nothing to detach is done");
        }
        assert!(guard.detach().is_err(), "the guard is gone after detach");
        assert!(!Path::new(&format!("/proc/{}", guard.pid())).exists());
    }

    fn mount_tmpfs(path: &Path) {
        let target = CString::new(path.as_os_str().as_bytes()).expect("path");
        // SAFETY: valid NUL-terminated strings; no data argument.
        let rc = unsafe {
            libc::mount(
                c"kvfs-guard-test".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", io::Error::last_os_error());
    }

    fn mounts_on(path: &Path) -> usize {
        let p = path.display().to_string();
        std::fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter(|l| l.split(' ').nth(4) == Some(p.as_str()))
            .count()
    }

    /// kvfs died, and before its guard ran, another mount replaced the dead one (a new kvfs
    /// that cleared it): the guard leaves that mount alone. Its own mount it detaches.
    #[test]
    fn end_of_file_detaches_only_the_mount_noted_at_arm() {
        if !holds_sys_admin() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI runs as root: this test must run"
            );
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path();

        let guard = UnmountGuard::spawn(path, true).expect("spawn");
        mount_tmpfs(path);
        guard.arm().expect("arm");
        // SAFETY: a valid path; our own test mount.
        let rc = unsafe {
            libc::umount2(
                CString::new(path.as_os_str().as_bytes()).unwrap().as_ptr(),
                libc::MNT_DETACH,
            )
        };
        assert_eq!(rc, 0);
        mount_tmpfs(path);
        drop(guard);
        assert_eq!(
            mounts_on(path),
            1,
            "the guard detached a mount it was not armed for"
        );

        let guard = UnmountGuard::spawn(path, true).expect("spawn");
        guard.arm().expect("arm");
        drop(guard);
        assert_eq!(mounts_on(path), 0, "the guard left its own mount");
    }
}
