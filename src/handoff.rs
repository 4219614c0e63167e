//! Live handoff: a new kvfs started on a mountpoint that a live kvfs serves takes the FUSE
//! connection over, so that restarts and upgrades are invisible to the processes reading
//! secrets (no ENOTCONN, no remount, nothing to restart).
//!
//! - `relay`: kvfs owns `/dev/fuse` and relays it to fuser, keeping the INIT and the set of
//!   unanswered requests (fuser 0.18 cannot adopt a live connection by itself).
//! - `control`: the control socket and the protocol between the two processes.
//! - here: the mount kvfs makes itself (so that it holds the device), the predecessor's side
//!   (`offer_on`) and the successor's (`take_over`).

pub mod control;
pub mod relay;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use control::{Answer, Hello, Offer, Settings, Step};
use relay::Relay;

use crate::forest::Tree;

/// Mounts a FUSE filesystem on `mountpoint` with a `/dev/fuse` kvfs opens and keeps, as fuser
/// would (same options and flags), so that the device can be relayed and handed over. Needs
/// CAP_SYS_ADMIN; `Ok(None)` without it (the caller mounts through fuser and fusermount3).
pub fn mount_device(
    mountpoint: &Path,
    fsname: &str,
    allow_other: bool,
) -> io::Result<Option<OwnedFd>> {
    let dev = nix::fcntl::open(
        "/dev/fuse",
        nix::fcntl::OFlag::O_RDWR | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mode = std::fs::metadata(mountpoint)?.permissions().mode() & libc::S_IFMT;
    let mut data = format!(
        "fd={},rootmode={:o},user_id={},group_id={},default_permissions",
        dev.as_raw_fd(),
        mode,
        nix::unistd::getuid(),
        nix::unistd::getgid(),
    );
    if allow_other {
        data.push_str(",allow_other");
    }
    use nix::mount::MsFlags;
    let flags = MsFlags::MS_RDONLY
        | MsFlags::MS_NODEV
        | MsFlags::MS_NOSUID
        | MsFlags::MS_NOEXEC
        | MsFlags::MS_NOATIME;
    match nix::mount::mount(
        Some(fsname),
        mountpoint,
        Some("fuse"),
        flags,
        Some(data.as_str()),
    ) {
        Ok(()) => Ok(Some(dev)),
        Err(nix::errno::Errno::EPERM) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Where the control socket of the kvfs serving `mountpoint` is by default: root's runtime
/// directory (only root may take a mount over).
pub fn default_socket(mountpoint: &Path) -> Option<PathBuf> {
    crate::mountpoint::runtime_path(mountpoint, "control", "sock")
}

/// Set once this kvfs shuts down: its (detached) connection is no longer offered.
static WITHDRAWN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops offering this kvfs's connection, at shutdown: the mount is being detached, and a kvfs
/// started on the mountpoint now must mount afresh, not take over what is going away.
pub fn withdraw(path: &Path) {
    WITHDRAWN.store(true, std::sync::atomic::Ordering::SeqCst);
    let _ = std::fs::remove_file(path);
}

/// A successor, as the predecessor's control thread reports it.
#[derive(Debug)]
pub struct HandedOver {
    pub successor: u32,
    pub drain: Duration,
}

/// The predecessor's side: listens on `path` and hands the connection to the first successor
/// whose settings match. `handed_over` fires once the successor said it serves; the caller
/// then exits without unmounting.
pub fn offer_on(
    path: &Path,
    settings: Settings,
    fs: Arc<Tree>,
    relay: Arc<Relay>,
    drain_limit: Duration,
) -> io::Result<tokio::sync::oneshot::Receiver<HandedOver>> {
    let listener = bind(path)?;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let path = path.to_owned();
    std::thread::Builder::new()
        .name("kvfs-control".into())
        .spawn(move || {
            let mut tx = Some(tx);
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                match hand_over(stream, &settings, &fs, &relay, drain_limit) {
                    Ok(done) => {
                        tracing::info!(
                            successor = done.successor,
                            drain = ?done.drain,
                            "handed the mount over"
                        );
                        if let Some(tx) = tx.take() {
                            let _ = tx.send(done);
                        }
                        // This process exits now; take no other successor.
                        return;
                    }
                    Err(e) => tracing::warn!(
                        socket = %path.display(),
                        error = %e,
                        "takeover refused or failed; this kvfs keeps serving"
                    ),
                }
            }
        })?;
    Ok(rx)
}

fn bind(path: &Path) -> io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    // A socket left by a predecessor that has exited (it was just asked, or it died).
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

fn hand_over(
    mut stream: UnixStream,
    settings: &Settings,
    fs: &Tree,
    relay: &Relay,
    drain_limit: Duration,
) -> io::Result<HandedOver> {
    control::limit(&stream, Duration::from_secs(10))?;
    let uid = control::peer_uid(&stream)?;
    if uid != nix::unistd::geteuid().as_raw() && uid != 0 {
        return Err(io::Error::other(format!(
            "peer uid {uid} may not take over"
        )));
    }
    let hello: Hello = control::receive(&mut stream)?;
    let refuse = |stream: &mut UnixStream, why: String| {
        let _ = control::send(stream, &Answer::Refused(why.clone()));
        io::Error::other(why)
    };
    if hello.format < control::FORMAT {
        return Err(refuse(
            &mut stream,
            format!(
                "this kvfs writes state format {}, the new one reads up to {}: upgrade in two steps or restart",
                control::FORMAT,
                hello.format
            ),
        ));
    }
    if WITHDRAWN.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(refuse(&mut stream, "this kvfs is shutting down".to_owned()));
    }
    if let Some(difference) = settings.difference(&hello.settings) {
        return Err(refuse(&mut stream, difference));
    }
    tracing::info!(
        successor = hello.pid,
        unanswered = relay.unanswered(),
        "takeover asked: draining"
    );
    let drain = match relay.pause(drain_limit) {
        Ok(drain) => drain,
        Err(e) => return Err(refuse(&mut stream, format!("cannot hand over now: {e}"))),
    };
    // From here on the relay takes no request until `Go` or `resume`.
    let result = (|| {
        let offer = Offer {
            format: control::FORMAT,
            init: relay.init(),
            fs: fs.snapshot(),
            pid: std::process::id(),
            drain_micros: u64::try_from(drain.as_micros()).unwrap_or(u64::MAX),
        };
        control::send(&mut stream, &Answer::Offer(Box::new(offer)))?;
        control::send_fd(&stream, relay.device().as_raw_fd())?;
        match control::receive::<Step>(&mut stream)? {
            Step::Ready => {}
            Step::Go => return Err(io::Error::other("the successor skipped Ready")),
        }
        control::send(&mut stream, &Step::Go)
    })();
    match result {
        Ok(()) => Ok(HandedOver {
            successor: hello.pid,
            drain,
        }),
        Err(e) => {
            relay.resume();
            Err(e)
        }
    }
}

/// A predecessor's offer, accepted and not yet confirmed: from its control socket, or left in
/// systemd's file descriptor store (nothing to confirm then: the predecessor is gone).
pub struct Takeover {
    stream: Option<UnixStream>,
    pub offer: Offer,
    pub device: OwnedFd,
}

/// Connects to `path`. While the mountpoint is `mounted` (a FUSE mount), a refused connection
/// is retried for a second: a kvfs that has just taken the mount over binds its own socket
/// right after, and its predecessor's socket refuses until then.
fn connect(path: &Path, mounted: bool) -> io::Result<UnixStream> {
    let deadline = std::time::Instant::now() + Duration::from_secs(1);
    loop {
        match UnixStream::connect(path) {
            Err(e)
                if mounted
                    && e.kind() == io::ErrorKind::ConnectionRefused
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            other => return other,
        }
    }
}

/// Why a takeover did not happen.
#[derive(Debug, thiserror::Error)]
pub enum TakeoverError {
    #[error("the serving kvfs refused: {0}")]
    Refused(String),
    #[error("takeover through {socket} failed: {error}")]
    Failed { socket: PathBuf, error: io::Error },
}

/// The successor's side: asks the kvfs listening on `path` for its connection. `Ok(None)` when
/// none listens there (no kvfs, or one that exited).
pub fn take_over(
    path: &Path,
    mounted: bool,
    settings: Settings,
    wait: Duration,
) -> Result<Option<Takeover>, TakeoverError> {
    let failed = |error: io::Error| TakeoverError::Failed {
        socket: path.to_owned(),
        error,
    };
    let mut stream = match connect(path, mounted) {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None);
        }
        Err(e) => return Err(failed(e)),
    };
    control::limit(&stream, wait).map_err(failed)?;
    let hello = Hello {
        format: control::FORMAT,
        settings,
        pid: std::process::id(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    control::send(&mut stream, &hello).map_err(failed)?;
    match control::receive::<Answer>(&mut stream).map_err(failed)? {
        Answer::Refused(why) => Err(TakeoverError::Refused(why)),
        Answer::Offer(offer) if offer.format > control::FORMAT => {
            Err(TakeoverError::Refused(format!(
                "the serving kvfs sent state format {}, this one reads up to {}",
                offer.format,
                control::FORMAT
            )))
        }
        Answer::Offer(offer) => {
            let device = control::receive_fd(&stream).map_err(failed)?;
            Ok(Some(Takeover {
                stream: Some(stream),
                offer: *offer,
                device,
            }))
        }
    }
}

impl Takeover {
    /// Says this kvfs is ready to serve and waits for the predecessor to stop for good. Only
    /// then may this kvfs read the device.
    pub fn confirm(self) -> io::Result<()> {
        let Some(mut stream) = self.stream else {
            return Ok(());
        };
        control::send(&mut stream, &Step::Ready)?;
        match control::receive::<Step>(&mut stream)? {
            Step::Go => Ok(()),
            Step::Ready => Err(io::Error::other("the serving kvfs answered Ready")),
        }
    }
}

/// The names kvfs gives its descriptors in systemd's file descriptor store.
const STORED_DEVICE: &str = "kvfs-fuse";
const STORED_STATE: &str = "kvfs-state";

/// Whether systemd keeps descriptors for this service across a restart: asked for with
/// `--systemd-fd-store`, or told by systemd (254 and later), which sets `FDSTORE` to
/// `FileDescriptorStoreMax=` beside `NOTIFY_SOCKET`.
pub fn fd_store_enabled(asked: bool) -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some()
        && (asked
            || std::env::var("FDSTORE")
                .ok()
                .and_then(|n| n.parse::<u32>().ok())
                .is_some_and(|n| n >= 2))
}

/// Puts the FUSE device in systemd's store, so that the connection outlives this process on
/// `systemctl restart`.
pub fn store_device(relay: &Relay) -> io::Result<()> {
    use std::os::fd::AsFd;
    sd_notify::notify_with_fds(
        &[
            sd_notify::NotifyState::FdStore,
            sd_notify::NotifyState::FdName(STORED_DEVICE),
        ],
        &[relay.device().as_fd()],
    )
}

/// On SIGTERM under a fd store: drains, writes the offer a successor needs to a memfd and
/// stores it beside the device. Afterwards the caller exits without unmounting; the next
/// instance finds both in `LISTEN_FDS`. On error the relay takes requests again.
pub fn store_state(fs: &Tree, relay: &Relay, drain_limit: Duration) -> io::Result<Duration> {
    use std::os::fd::AsFd;
    let drain = relay.pause(drain_limit).map_err(io::Error::other)?;
    let stored = (|| {
        let offer = Offer {
            format: control::FORMAT,
            init: relay.init(),
            fs: fs.snapshot(),
            pid: std::process::id(),
            drain_micros: u64::try_from(drain.as_micros()).unwrap_or(u64::MAX),
        };
        let memfd =
            nix::sys::memfd::memfd_create(c"kvfs-state", nix::sys::memfd::MFdFlags::MFD_CLOEXEC)?;
        let mut file = std::fs::File::from(memfd);
        serde_json::to_writer(&mut file, &offer).map_err(io::Error::other)?;
        sd_notify::notify_with_fds(
            &[
                sd_notify::NotifyState::FdStore,
                sd_notify::NotifyState::FdName(STORED_STATE),
            ],
            &[file.as_fd()],
        )
    })();
    match stored {
        Ok(()) => Ok(drain),
        Err(e) => {
            relay.resume();
            Err(e)
        }
    }
}

/// The device and the offer a predecessor left in systemd's store (`LISTEN_FDS`, named by
/// `LISTEN_FDNAMES`), if it left both; the state is then dropped from the store.
pub fn from_store() -> io::Result<Option<Takeover>> {
    use std::io::{Read, Seek};
    use std::os::fd::FromRawFd;
    let Ok(fds) = sd_notify::listen_fds_with_names() else {
        return Ok(None);
    };
    let (mut device, mut state) = (None, None);
    for (fd, name) in fds {
        // SAFETY: systemd passed these descriptors to this process alone (LISTEN_PID).
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        match name.as_str() {
            STORED_DEVICE => device = Some(owned),
            STORED_STATE => state = Some(owned),
            _ => {}
        }
    }
    let (Some(device), Some(state)) = (device, state) else {
        // The device alone (a crash, or a stop that left no state): its requests were never
        // drained, so this kvfs mounts afresh (the stale-mount cleanup removes the old one).
        return Ok(None);
    };
    let mut file = std::fs::File::from(state);
    file.rewind()?;
    let mut body = Vec::new();
    file.read_to_end(&mut body)?;
    let offer: Offer =
        serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    if offer.format > control::FORMAT {
        return Err(io::Error::other(format!(
            "the stored state has format {}, this kvfs reads up to {}",
            offer.format,
            control::FORMAT
        )));
    }
    let _ = sd_notify::notify(&[
        sd_notify::NotifyState::FdStoreRemove,
        sd_notify::NotifyState::FdName(STORED_STATE),
    ]);
    Ok(Some(Takeover {
        stream: None,
        offer,
        device,
    }))
}
