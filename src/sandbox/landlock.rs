//! Landlock filesystem rules, on every thread of kvfs: read anywhere, write only where kvfs
//! writes once mounted, execute nothing.
//!
//! The rules (`rules`): files and directories beneath `/` may be read (kvfs reads `/proc`, the
//! CA file it reloads, the federated token file the kubelet rewrites, the resolver's files);
//! files may be removed from the pid file directory (kvfs removes its pid file at exit); and
//! beneath the directories registered with `sandbox::writable_beneath` (the demo's emulator
//! state) files may be written, made and removed. Nothing else: no write, no new file, no
//! rename, no device ioctl, and no execve anywhere. Files kvfs opened before (the audit log,
//! `/dev/fuse`, stderr) stay usable: Landlock checks opens, not the descriptors already held.
//!
//! Landlock binds the thread that calls landlock_restrict_self(2); from ABI 8 the TSYNC flag
//! binds every thread of the process. kvfs confines itself after the mount, when fuser's and
//! tokio's threads already run, so before ABI 8 (kernel 6.18 has 7) the ruleset is applied on
//! each thread in turn: a real-time signal is sent with tgkill(2) to every thread listed in
//! `/proc/self/task`, and its handler calls landlock_restrict_self(2) with the one ruleset
//! (async-signal-safe: raw system calls and atomics only). The listing is repeated until every
//! thread present has answered (a thread started meanwhile by a confined thread is confined
//! already, and confining it once more stacks the same rules again), within a time limit.
//!
//! Each thread then checks that the rules hold for it: opening `/dev/null` for writing, which
//! any process may do without Landlock, must fail with EACCES. kvfs reports how many threads
//! were confined and checked; a thread that did not answer or was not denied is named in a
//! warning. With TSYNC the same signal round runs the check alone.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use landlock::{
    ABI, Access, AccessFs, BitFlags, PathBeneath, PathFd, RestrictSelfAttr, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus,
};

/// Why Landlock could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("cannot build the Landlock ruleset: {0}")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("cannot open {path} for a Landlock rule: {source}")]
    Path {
        path: PathBuf,
        #[source]
        source: landlock::PathFdError,
    },
    #[error("cannot install the handler that confines each thread: {0}")]
    Signal(std::io::Error),
    #[error("another confinement round is running")]
    Busy,
}

/// What kvfs may do beneath a directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    /// Read files, list directories.
    Read,
    /// Remove files (the pid file).
    RemoveFiles,
    /// Write, make and remove files and directories (no device, socket, link or rename).
    Write,
}

/// One rule: a directory and what kvfs may do beneath it (reading is allowed beneath `/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub path: PathBuf,
    pub allowed: Allowed,
}

/// The access rights the ruleset handles: every filesystem right up to ABI 8 (execute
/// included), so that what no rule grants is denied. ABI 9's ResolveUnix is left out: systemd's
/// notify socket and the resolver's sockets are named sockets kvfs must reach.
pub fn handled() -> BitFlags<AccessFs> {
    AccessFs::from_all(ABI::V8)
}

/// The rights a rule grants.
pub fn rights(allowed: Allowed) -> BitFlags<AccessFs> {
    match allowed {
        Allowed::Read => AccessFs::ReadFile | AccessFs::ReadDir,
        Allowed::RemoveFiles => AccessFs::RemoveFile.into(),
        Allowed::Write => {
            AccessFs::WriteFile
                | AccessFs::Truncate
                | AccessFs::MakeReg
                | AccessFs::MakeDir
                | AccessFs::RemoveFile
                | AccessFs::RemoveDir
        }
    }
}

/// kvfs's rules: read beneath `/`, remove files in `pid_dir`, write beneath `writable`.
/// Directories that do not exist get no rule (Landlock attaches rules to existing inodes).
pub fn rules(pid_dir: Option<&Path>, writable: &[PathBuf]) -> Vec<Rule> {
    let mut rules = vec![Rule {
        path: PathBuf::from("/"),
        allowed: Allowed::Read,
    }];
    rules.extend(pid_dir.filter(|d| d.is_dir()).map(|d| Rule {
        path: d.to_owned(),
        allowed: Allowed::RemoveFiles,
    }));
    rules.extend(writable.iter().filter(|d| d.is_dir()).map(|d| Rule {
        path: d.clone(),
        allowed: Allowed::Write,
    }));
    rules
}

/// What `confine_every_thread` did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Landlock cannot be used: not built into the kernel (ENOSYS), not enabled at boot
    /// (EOPNOTSUPP), or refused by a seccomp filter kvfs runs under (EPERM).
    Unavailable { errno: i32 },
    /// The ruleset was applied.
    Applied(Coverage),
}

/// Which threads were confined, and what each one's check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Coverage {
    /// The kernel's Landlock ABI.
    pub abi: i32,
    /// Applied with TSYNC (ABI 8 and later) rather than thread by thread.
    pub tsync: bool,
    /// Threads confined and whose write check was denied, by thread id.
    pub confirmed: BTreeSet<i32>,
    /// Threads where landlock_restrict_self(2) failed, with the errno.
    pub failed: BTreeMap<i32, i32>,
    /// Threads whose write check was not denied (0: it succeeded; else the errno).
    pub not_denied: BTreeMap<i32, i32>,
    /// Threads that did not answer within the time limit.
    pub silent: BTreeSet<i32>,
}

impl Coverage {
    /// Every thread confined and checked.
    pub fn complete(&self) -> bool {
        self.failed.is_empty() && self.not_denied.is_empty() && self.silent.is_empty()
    }
}

/// How long the threads have to answer.
const ANSWER_WITHIN: Duration = Duration::from_secs(2);

/// Builds the ruleset from `rules` and applies it to every thread of the process.
pub fn confine_every_thread(rules: &[Rule]) -> Result<Outcome, LandlockError> {
    let abi = match kernel_abi() {
        Ok(abi) => abi,
        Err(errno) => return Ok(Outcome::Unavailable { errno }),
    };
    let mut ruleset = Ruleset::default().handle_access(handled())?.create()?;
    for rule in rules {
        let fd = PathFd::new(&rule.path).map_err(|source| LandlockError::Path {
            path: rule.path.clone(),
            source,
        })?;
        ruleset = ruleset.add_rule(PathBeneath::new(fd, rights(rule.allowed)))?;
    }
    if abi >= 8 {
        let status = ruleset.all_threads(true)?.restrict_self()?;
        if status.ruleset == RulesetStatus::NotEnforced {
            return Ok(Outcome::Unavailable {
                errno: libc::EOPNOTSUPP,
            });
        }
        // Every thread is confined: the round only runs each thread's check.
        let mut coverage = each_thread(None)?;
        coverage.abi = abi;
        coverage.tsync = true;
        return Ok(Outcome::Applied(coverage));
    }
    let fd: Option<OwnedFd> = ruleset.into();
    let Some(fd) = fd else {
        return Ok(Outcome::Unavailable {
            errno: libc::EOPNOTSUPP,
        });
    };
    let mut coverage = each_thread(Some(&fd))?;
    coverage.abi = abi;
    Ok(Outcome::Applied(coverage))
}

/// The kernel's Landlock ABI version, or the errno: ENOSYS (not built in), EOPNOTSUPP (not
/// enabled at boot), EPERM (refused by a seccomp filter around kvfs, e.g. systemd's).
fn kernel_abi() -> Result<i32, i32> {
    // SAFETY: LANDLOCK_CREATE_RULESET_VERSION takes no attribute (null, size 0) and returns
    // the ABI version or -1.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<u8>(),
            0usize,
            1u32, // LANDLOCK_CREATE_RULESET_VERSION
        )
    };
    match i32::try_from(v) {
        Ok(abi) if abi >= 1 => Ok(abi),
        _ => Err(std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::ENOSYS)),
    }
}

// The state the signal handler shares with `each_thread`: atomics only, set up before the
// signals are sent. One slot per answer.
const SLOTS: usize = 1024;
static ACTIVE: AtomicBool = AtomicBool::new(false);
static RULESET_FD: AtomicI32 = AtomicI32::new(-1);
static NEXT: AtomicUsize = AtomicUsize::new(0);
static TIDS: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static RESTRICT: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static PROBE: [AtomicI32; SLOTS] = [const { AtomicI32::new(0) }; SLOTS];
static DONE: [AtomicBool; SLOTS] = [const { AtomicBool::new(false) }; SLOTS];
static ROUND: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// The signal used for the round: a real-time one nothing else in kvfs uses.
fn round_signal() -> libc::c_int {
    libc::SIGRTMIN() + 5
}

/// Runs the handler on every thread: confines it when `fd` is given, then checks it.
fn each_thread(fd: Option<&OwnedFd>) -> Result<Coverage, LandlockError> {
    let _round = ROUND.try_lock().map_err(|_| LandlockError::Busy)?;
    NEXT.store(0, Ordering::SeqCst);
    for slot in &DONE {
        slot.store(false, Ordering::SeqCst);
    }
    RULESET_FD.store(fd.map_or(-1, |f| f.as_raw_fd()), Ordering::SeqCst);
    ACTIVE.store(true, Ordering::SeqCst);
    let signal = round_signal();
    set_handler(signal, on_signal as *const () as libc::sighandler_t)?;
    // SAFETY: getpid cannot fail.
    let pid = unsafe { libc::getpid() };
    let mut signalled = BTreeSet::new();
    let deadline = Instant::now() + ANSWER_WITHIN;
    let (answers, present) = loop {
        let present = thread_ids();
        for &tid in present.difference(&signalled.clone()) {
            // SAFETY: tgkill sends a signal whose handler is installed above; ESRCH (the
            // thread ended meanwhile) is harmless.
            if unsafe { libc::syscall(libc::SYS_tgkill, pid, tid, signal) } == 0 {
                signalled.insert(tid);
            }
        }
        let answers = collect();
        let waiting = present.iter().any(|tid| !answers.contains_key(tid));
        if !waiting || Instant::now() > deadline {
            break (answers, present);
        }
        std::thread::sleep(Duration::from_millis(1));
    };
    ACTIVE.store(false, Ordering::SeqCst);
    RULESET_FD.store(-1, Ordering::SeqCst);
    // A signal still pending on a thread that never answered is dropped, not fatal.
    let _ = set_handler(signal, libc::SIG_IGN);
    let mut coverage = Coverage {
        abi: 0,
        tsync: false,
        confirmed: BTreeSet::new(),
        failed: BTreeMap::new(),
        not_denied: BTreeMap::new(),
        silent: BTreeSet::new(),
    };
    for tid in present {
        match answers.get(&tid) {
            None => {
                coverage.silent.insert(tid);
            }
            Some(&(restrict, _)) if restrict != 0 => {
                coverage.failed.insert(tid, restrict);
            }
            Some(&(_, libc::EACCES)) => {
                coverage.confirmed.insert(tid);
            }
            Some(&(_, probe)) => {
                coverage.not_denied.insert(tid, probe);
            }
        }
    }
    Ok(coverage)
}

/// The answers so far: thread id -> (restrict errno, probe errno).
fn collect() -> BTreeMap<i32, (i32, i32)> {
    let filled = NEXT.load(Ordering::SeqCst).min(SLOTS);
    (0..filled)
        .filter(|&i| DONE[i].load(Ordering::Acquire))
        .map(|i| {
            (
                TIDS[i].load(Ordering::Relaxed),
                (
                    RESTRICT[i].load(Ordering::Relaxed),
                    PROBE[i].load(Ordering::Relaxed),
                ),
            )
        })
        .collect()
}

/// The threads of this process.
fn thread_ids() -> BTreeSet<i32> {
    std::fs::read_dir("/proc/self/task")
        .map(|dir| {
            dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

fn set_handler(signal: libc::c_int, handler: libc::sighandler_t) -> Result<(), LandlockError> {
    // SAFETY: a zeroed sigaction is valid (empty mask); the handler is an extern "C" fn that
    // makes only async-signal-safe calls, or SIG_IGN.
    let rc = unsafe {
        let mut action: libc::sigaction = std::mem::zeroed();
        action.sa_sigaction = handler;
        // Restart what the signal interrupts: fuser's read of /dev/fuse, a socket write.
        action.sa_flags = libc::SA_RESTART;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(signal, &action, std::ptr::null_mut())
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(LandlockError::Signal(std::io::Error::last_os_error()))
    }
}

/// The handler: raw system calls and atomics only; errno is left as it was found.
extern "C" fn on_signal(_signal: libc::c_int) {
    if !ACTIVE.load(Ordering::Acquire) {
        return;
    }
    // SAFETY: __errno_location returns this thread's errno, valid for the thread's life.
    let errno = unsafe { libc::__errno_location() };
    // SAFETY: as above.
    let saved = unsafe { *errno };
    // SAFETY: gettid cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
    let fd = RULESET_FD.load(Ordering::Acquire);
    let restrict = if fd >= 0 {
        // SAFETY: plain system calls on integers; `fd` is the ruleset, open until the round
        // ends.
        unsafe {
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
            if libc::syscall(libc::SYS_landlock_restrict_self, fd, 0u32) == 0 {
                0
            } else {
                *errno
            }
        }
    } else {
        0
    };
    let probe = probe_write();
    let slot = NEXT.fetch_add(1, Ordering::AcqRel);
    if slot < SLOTS {
        TIDS[slot].store(tid, Ordering::Relaxed);
        RESTRICT[slot].store(restrict, Ordering::Relaxed);
        PROBE[slot].store(probe, Ordering::Relaxed);
        DONE[slot].store(true, Ordering::Release);
    }
    // SAFETY: as above.
    unsafe { *errno = saved };
}

/// Opens `/dev/null` for writing: allowed to any process, denied (EACCES) by kvfs's rules.
/// Returns 0 when the open succeeded, else the errno. Async-signal-safe.
fn probe_write() -> i32 {
    // SAFETY: a constant NUL-terminated path; the descriptor, if any, is closed at once.
    unsafe {
        let fd = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd >= 0 {
            libc::close(fd);
            0
        } else {
            *libc::__errno_location()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reading_is_allowed_everywhere_writing_only_where_kvfs_writes_executing_nowhere() {
        let pid_dir = tempfile::tempdir().expect("tempdir");
        let state = tempfile::tempdir().expect("tempdir");
        let kvfs = rules(
            Some(pid_dir.path()),
            &[state.path().to_owned(), PathBuf::from("/nonexistent/kvfs")],
        );
        assert_eq!(
            kvfs,
            vec![
                Rule {
                    path: "/".into(),
                    allowed: Allowed::Read
                },
                Rule {
                    path: pid_dir.path().to_owned(),
                    allowed: Allowed::RemoveFiles
                },
                Rule {
                    path: state.path().to_owned(),
                    allowed: Allowed::Write
                },
            ],
            "a missing directory gets no rule"
        );
        for rule in &kvfs {
            let granted = rights(rule.allowed);
            assert!(
                handled().contains(granted),
                "{rule:?} grants unhandled rights"
            );
            for never in [
                AccessFs::Execute,
                AccessFs::MakeChar,
                AccessFs::MakeBlock,
                AccessFs::MakeSock,
                AccessFs::MakeFifo,
                AccessFs::MakeSym,
                AccessFs::Refer,
                AccessFs::IoctlDev,
            ] {
                assert!(!granted.contains(never), "{rule:?} grants {never:?}");
            }
        }
        assert!(!rights(Allowed::Read).contains(AccessFs::WriteFile));
        assert_eq!(rights(Allowed::RemoveFiles), AccessFs::RemoveFile);
        assert!(handled().contains(AccessFs::Execute | AccessFs::WriteFile | AccessFs::IoctlDev));
        assert!(
            rules(None, &[]).len() == 1,
            "no pid directory, no rule for it"
        );
    }

    /// The env variable that makes `confined_child` do its work: a directory it may write.
    const CHILD_ENV: &str = "KVFS_TEST_LANDLOCK_CHILD";

    /// Runs `confined_child` in a new process (Landlock cannot be undone): its threads, started
    /// before the ruleset, are confined, may write beneath the allowed directory and nowhere
    /// else.
    #[test]
    fn every_thread_started_before_the_ruleset_is_confined() {
        if kernel_abi().is_err() {
            eprintln!("no Landlock in this kernel: nothing to check");
            return;
        }
        let allowed = tempfile::tempdir().expect("tempdir");
        let outside = tempfile::tempdir().expect("tempdir");
        let out = std::process::Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "sandbox::landlock::tests::confined_child",
                "--exact",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, allowed.path())
            .env("KVFS_TEST_LANDLOCK_OUTSIDE", outside.path())
            .output()
            .expect("child runs");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{stdout}\n{stderr}");
        assert!(
            stderr.contains("child: 5 threads confined"),
            "{stdout}\n{stderr}"
        );
        // The threads wrote only where they may.
        assert_eq!(std::fs::read_dir(allowed.path()).expect("dir").count(), 5);
        assert_eq!(std::fs::read_dir(outside.path()).expect("dir").count(), 0);
    }

    #[test]
    fn confined_child() {
        let Some(allowed) = std::env::var_os(CHILD_ENV).map(PathBuf::from) else {
            return;
        };
        let outside = PathBuf::from(std::env::var_os("KVFS_TEST_LANDLOCK_OUTSIDE").expect("set"));
        let rules = rules(None, std::slice::from_ref(&allowed));
        let write_both = move |i: usize| {
            let inside = std::fs::write(allowed.join(format!("t{i}")), "x");
            let denied = std::fs::write(outside.join(format!("t{i}")), "x");
            (inside.is_ok(), denied.err().and_then(|e| e.raw_os_error()))
        };
        // Four threads started before the ruleset, blocked in a system call when the signal
        // comes (as fuser's threads are), then writing from their own thread.
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let go_rx = std::sync::Arc::new(std::sync::Mutex::new(go_rx));
        let workers: Vec<_> = (1..5)
            .map(|i| {
                let (go_rx, write_both) = (go_rx.clone(), write_both.clone());
                std::thread::spawn(move || {
                    let _ = go_rx.lock().expect("lock").recv();
                    write_both(i)
                })
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
        let Outcome::Applied(coverage) = confine_every_thread(&rules).expect("confine") else {
            panic!("Landlock unsupported");
        };
        assert!(coverage.complete(), "{coverage:?}");
        assert!(coverage.confirmed.len() >= 5, "{coverage:?}");
        for _ in 0..4 {
            go_tx.send(()).expect("go");
        }
        let mut results = vec![write_both(0)];
        results.extend(workers.into_iter().map(|w| w.join().expect("worker")));
        assert_eq!(results, vec![(true, Some(libc::EACCES)); 5]);
        eprintln!("child: 5 threads confined");
    }
}
