//! Tells a service manager how the mount is doing, in systemd's notify protocol (a unit with
//! `Type=notify`, see deploy/systemd/kvfs.service; `kvfs`'s fstab helper listens the same way):
//! `READY=1` once the mount answers, `STOPPING=1` when shutdown starts, `WATCHDOG=1` while it
//! keeps answering. Without `NOTIFY_SOCKET` every message is a no-op.
//!
//! "Answers" means a statfs of the mountpoint came back from a FUSE filesystem: the session
//! threads are reading /dev/fuse and the kernel finished INIT, so an application started after
//! READY never sees an empty directory or blocks on a mount that is not served yet. kvfs answers
//! statfs itself (no Key Vault request), so the probe costs nothing remote.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use sd_notify::NotifyState;

/// The mount is announced: call `stopping` when shutdown starts.
pub struct Readiness {
    stopping: Arc<AtomicBool>,
}

/// Waits (up to `limit`) until the mount at `mountpoint` answers, then sends READY=1 with a
/// status line, and starts the watchdog if the service manager asked for one (WATCHDOG_USEC).
/// An error means the mount never answered: the caller should give up on it.
pub fn announce_ready(
    runtime: &tokio::runtime::Runtime,
    mountpoint: &Path,
    status: &str,
    limit: Duration,
) -> io::Result<Readiness> {
    // The probe is a statfs of kvfs's own mount from kvfs's own process: should kvfs be killed
    // while it waits, that thread waits on an answer only the dying process could give, and the
    // process (and its mount) cannot finish dying. So it runs only for a service manager that
    // asked for readiness.
    if std::env::var_os("NOTIFY_SOCKET").is_none() {
        return Ok(Readiness {
            stopping: Arc::new(AtomicBool::new(false)),
        });
    }
    runtime.block_on(async {
        match tokio::time::timeout(limit, probe(mountpoint.to_owned())).await {
            Ok(answered) => answered,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("the mount did not answer a statfs within {limit:?}"),
            )),
        }
    })?;
    send(&[NotifyState::Ready, NotifyState::Status(status)], "READY");
    let stopping = Arc::new(AtomicBool::new(false));
    if let Some(timeout) = sd_notify::watchdog_enabled() {
        runtime.spawn(watchdog(mountpoint.to_owned(), timeout, stopping.clone()));
    }
    Ok(Readiness { stopping })
}

impl Readiness {
    /// Sends STOPPING=1. The watchdog keeps pinging without probing from here on: the mount is
    /// being detached, and the shutdown grace, not the probe, bounds what is left.
    pub fn stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
        send(
            &[
                NotifyState::Stopping,
                NotifyState::Status("stopping: mount detached, serving open files"),
            ],
            "STOPPING",
        );
    }
}

/// Pings at half the watchdog timeout, each time only after a statfs of the mount came back, so
/// that a session whose threads are stuck gets restarted by the service manager.
async fn watchdog(mountpoint: PathBuf, timeout: Duration, stopping: Arc<AtomicBool>) {
    let period = (timeout / 2).max(Duration::from_millis(10));
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        if !stopping.load(Ordering::Relaxed) {
            match tokio::time::timeout(period, probe(mountpoint.clone())).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "watchdog: the mount does not answer; not pinging");
                    continue;
                }
                Err(_) => {
                    tracing::warn!(
                        ?period,
                        "watchdog: the mount did not answer in time; not pinging"
                    );
                    continue;
                }
            }
        }
        send(&[NotifyState::Watchdog], "WATCHDOG");
    }
}

/// statfs of `path`, on a blocking thread (it waits for the FUSE session): Ok when a FUSE
/// filesystem answered.
async fn probe(path: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || crate::mountpoint::fuse_statfs(&path))
        .await
        .map_err(io::Error::other)?
}

/// A failed message is logged, never fatal: the service manager may be gone, or (the fstab
/// helper) may have stopped listening once the mount was up.
fn send(states: &[NotifyState], what: &str) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::debug!(error = %e, "cannot send {what} to NOTIFY_SOCKET");
    }
}
