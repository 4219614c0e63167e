//! Process-wide memory protections, applied by `kvfs mount` and `kvfs demo` before any secret
//! or token is fetched:
//!
//! - not dumpable (`PR_SET_DUMPABLE` 0): no core dump, and only root may ptrace the process or
//!   read its `/proc/<pid>/mem`, `environ` and friends;
//! - `RLIMIT_CORE` 0: no core file even if something makes the process dumpable again (a
//!   setuid exec, a later prctl);
//! - `mlockall(MCL_CURRENT | MCL_FUTURE | MCL_ONFAULT)`: no page of the process is ever written
//!   to swap. `MCL_ONFAULT` locks each page when it is first touched instead of populating
//!   every mapping at once, so reserved but unused memory (thread stacks, allocator arenas)
//!   costs nothing; every page that could hold a value is still locked before it holds one.
//!   Under an unlimited `RLIMIT_MEMLOCK` (raised here with CAP_SYS_RESOURCE when kvfs has it),
//!   or else with CAP_IPC_LOCK, which the sandbox then keeps: without either, every locked
//!   mapping would count against a finite limit. Best effort: otherwise kvfs warns once and
//!   goes on, unless `--require-mlock` makes that fatal.
//!
//! With them, `ZeroOnFree` (the binary's global allocator) wipes every heap block when it is
//! freed: the HTTP bodies, the SDK's `String`s and serde_json's buffers that held a value or
//! a bearer token, which kvfs's own `Zeroizing` types never see. A growing `Vec` is moved by
//! alloc + copy + wiping free, never by the C library's `realloc`, which would free the old
//! block unwiped.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

/// The global allocator of the `kvfs` binary: the system allocator, each block zeroed as it
/// is freed (1Password's `zeroizing-alloc`; its `realloc` is the trait's default, alloc + copy
/// + this zeroing `dealloc`).
pub type ZeroOnFree = zeroizing_alloc::ZeroAlloc<std::alloc::System>;

/// The allocator value for `#[global_allocator]`.
pub const ZERO_ON_FREE: ZeroOnFree = zeroizing_alloc::ZeroAlloc(std::alloc::System);

/// What a failed `mlockall` tells the operator to change.
const MLOCK_FIX: &str = "run kvfs with CAP_IPC_LOCK (Kubernetes: capabilities.add IPC_LOCK) or an \
    unlimited RLIMIT_MEMLOCK (systemd: LimitMEMLOCK=infinity; a shell: ulimit -l unlimited)";

#[derive(Debug, thiserror::Error)]
pub enum HardeningError {
    #[error("cannot make the process non-dumpable (prctl PR_SET_DUMPABLE): {0}")]
    Dumpable(#[source] io::Error),
    #[error("cannot turn core dumps off (setrlimit RLIMIT_CORE 0): {0}")]
    CoreLimit(#[source] io::Error),
    #[error(
        "cannot lock memory (mlockall: {0}) and --require-mlock is set: secrets could be written to swap; {MLOCK_FIX}"
    )]
    Mlock(#[source] io::Error),
}

/// Whether memory ended up locked (false only when `mlockall` failed and was not required).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Protections {
    pub memory_locked: bool,
}

/// Applies every protection to this process. Call once, before any secret or token is
/// fetched and after logging is set up (a failed `mlockall` is reported as a warning).
pub fn protect(require_mlock: bool) -> Result<Protections, HardeningError> {
    set_not_dumpable().map_err(HardeningError::Dumpable)?;
    disable_core_files().map_err(HardeningError::CoreLimit)?;
    match lock_memory() {
        Ok(()) => Ok(Protections {
            memory_locked: true,
        }),
        Err(e) if require_mlock => Err(HardeningError::Mlock(e)),
        Err(e) => {
            tracing::warn!(
                error = %e,
                "memory not locked: secret values could reach swap; {MLOCK_FIX}, \
                 or pass --require-mlock to refuse to run unlocked"
            );
            Ok(Protections {
                memory_locked: false,
            })
        }
    }
}

fn set_not_dumpable() -> io::Result<()> {
    // SAFETY: PR_SET_DUMPABLE takes one integer argument and touches no memory of ours.
    let rc = unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0 as libc::c_ulong, 0, 0, 0) };
    check(rc)
}

fn disable_core_files() -> io::Result<()> {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that outlives the call, which only reads it.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
    check(rc)
}

/// Set when memory was locked on the strength of CAP_IPC_LOCK under a finite RLIMIT_MEMLOCK:
/// the sandbox must then keep CAP_IPC_LOCK, or every later mapping would fail.
static LOCKED_BY_CAPABILITY: AtomicBool = AtomicBool::new(false);

/// Whether the locked memory depends on CAP_IPC_LOCK (the sandbox keeps it then).
pub fn locked_by_capability() -> bool {
    LOCKED_BY_CAPABILITY.load(Ordering::Relaxed)
}

fn lock_memory() -> io::Result<()> {
    // With MCL_FUTURE every later mapping is locked too (reserved thread stacks and allocator
    // arenas are hundreds of MiB of address space) and counts against RLIMIT_MEMLOCK unless
    // the process has CAP_IPC_LOCK; a finite limit would then make a later mmap fail (a thread
    // that cannot start, an allocation that aborts). So the limit is raised to unlimited while
    // kvfs still may (CAP_SYS_RESOURCE); failing that, memory is locked only with
    // CAP_IPC_LOCK, which the sandbox then keeps.
    if memlock_limit()? != libc::RLIM_INFINITY {
        let unlimited = libc::rlimit {
            rlim_cur: libc::RLIM_INFINITY,
            rlim_max: libc::RLIM_INFINITY,
        };
        // SAFETY: `unlimited` is a valid rlimit that outlives the call, which only reads it.
        let raised = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } == 0;
        if !raised {
            let has_ipc_lock = caps::has_cap(
                None,
                caps::CapSet::Effective,
                caps::Capability::CAP_IPC_LOCK,
            )
            .unwrap_or(false);
            if !has_ipc_lock {
                let limit = memlock_limit()?;
                return Err(io::Error::other(format!(
                    "no CAP_IPC_LOCK, and RLIMIT_MEMLOCK is {limit} bytes and cannot be raised to \
                     unlimited: locking every future mapping would make later allocations fail"
                )));
            }
            LOCKED_BY_CAPABILITY.store(true, Ordering::Relaxed);
        }
    }
    // SAFETY: mlockall takes flags only; it changes how pages are kept, not their contents.
    let rc = unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) };
    if rc != 0 {
        LOCKED_BY_CAPABILITY.store(false, Ordering::Relaxed);
    }
    check(rc)
}

fn memlock_limit() -> io::Result<libc::rlim_t> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `limit` is a valid rlimit that the call fills.
    let rc = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) };
    check(rc).map(|()| limit.rlim_cur)
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::sync::Mutex;

    use super::*;

    /// An allocator that records, at each `dealloc`, whether the block it is handed is all
    /// zeros: it looks at the block while it is still allocated, so the test reads no freed
    /// memory.
    struct Recording {
        freed_all_zero: Mutex<Vec<bool>>,
    }

    // SAFETY: forwards every call to `System` with the same arguments; `dealloc` only reads
    // the `layout.size()` bytes of the block before handing it back.
    unsafe impl GlobalAlloc for Recording {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract for `alloc` is passed on unchanged.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: `ptr` is a live block of `layout.size()` bytes until System.dealloc.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            let zero = bytes.iter().all(|&b| b == 0);
            self.freed_all_zero
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(zero);
            // SAFETY: the caller's contract for `dealloc` is passed on unchanged.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn zeroing() -> zeroizing_alloc::ZeroAlloc<Recording> {
        zeroizing_alloc::ZeroAlloc(Recording {
            freed_all_zero: Mutex::new(Vec::new()),
        })
    }

    fn freed(a: &zeroizing_alloc::ZeroAlloc<Recording>) -> Vec<bool> {
        a.0.freed_all_zero
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    #[test]
    fn a_freed_block_is_zero_before_the_system_allocator_gets_it() {
        let a = zeroing();
        for size in [1usize, 7, 48, 4096, 100_000] {
            let layout = Layout::from_size_align(size, 8).expect("layout");
            // SAFETY: a non-zero-sized layout; the block is written within its size, then
            // freed once with the same layout.
            unsafe {
                let p = a.alloc(layout);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 0xA5, size);
                a.dealloc(p, layout);
            }
        }
        assert_eq!(freed(&a), vec![true; 5]);
    }

    #[test]
    fn realloc_wipes_the_block_it_leaves_and_keeps_the_contents() {
        let a = zeroing();
        let old = Layout::from_size_align(64, 8).expect("layout");
        for new_size in [1_000_000usize, 16] {
            // SAFETY: blocks are used within their sizes and freed once with their layouts;
            // realloc gets the layout the block was allocated with.
            unsafe {
                let p = a.alloc(old);
                assert!(!p.is_null());
                std::ptr::write_bytes(p, 0x5A, old.size());
                let q = a.realloc(p, old, new_size);
                assert!(!q.is_null());
                let kept = std::slice::from_raw_parts(q, new_size.min(old.size()));
                assert!(kept.iter().all(|&b| b == 0x5A), "contents kept");
                a.dealloc(q, Layout::from_size_align(new_size, 8).expect("layout"));
            }
        }
        // Each realloc freed the old block (wiped), then the test freed the new one (wiped).
        assert_eq!(freed(&a), vec![true; 4]);
    }

    #[test]
    fn a_string_grown_and_dropped_leaves_no_byte_unwiped() {
        let a = zeroing();
        let canary = "not-a-secret-but-it-must-go";
        // SAFETY: the block is allocated, grown with realloc, and freed with its final layout.
        unsafe {
            let mut layout = Layout::from_size_align(4, 1).expect("layout");
            let mut p = a.alloc(layout);
            let mut len = 0usize;
            for &b in canary.as_bytes() {
                if len == layout.size() {
                    let grown = layout.size() * 2;
                    p = a.realloc(p, layout, grown);
                    assert!(!p.is_null());
                    layout = Layout::from_size_align(grown, 1).expect("layout");
                }
                *p.add(len) = b;
                len += 1;
            }
            assert_eq!(std::slice::from_raw_parts(p, len), canary.as_bytes());
            a.dealloc(p, layout);
        }
        let freed = freed(&a);
        assert_eq!(freed.len(), 4, "three moves and the final free");
        assert!(freed.iter().all(|&z| z));
    }

    #[test]
    fn the_error_for_a_required_lock_names_the_fix() {
        let e = HardeningError::Mlock(io::Error::from_raw_os_error(libc::EPERM));
        let text = e.to_string();
        assert!(text.contains("--require-mlock"), "{text}");
        assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
        assert!(text.contains("LimitMEMLOCK"), "{text}");
        assert!(text.contains("RLIMIT_MEMLOCK"), "{text}");
    }
}
