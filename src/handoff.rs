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

use crate::fs::SecretFs;

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
    fs: Arc<SecretFs>,
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
    fs: &SecretFs,
    relay: &Relay,
    drain_limit: Duration,
) -> io::Result<HandedOver> {
    control::limit(&stream, Duration::from_secs(10))?;
    let uid = control::peer_uid(&stream)?;
    if uid != nix::unistd::geteuid().as_raw() && uid != 0 {
        return Err(io::Error::other(format!("peer uid {uid} may not take over")));
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
    if let Some(difference) = settings.difference(&hello.settings) {
        return Err(refuse(&mut stream, difference));
    }
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

/// A predecessor's offer, accepted and not yet confirmed.
pub struct Takeover {
    stream: UnixStream,
    pub offer: Offer,
    pub device: OwnedFd,
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
    settings: Settings,
    wait: Duration,
) -> Result<Option<Takeover>, TakeoverError> {
    let failed = |error: io::Error| TakeoverError::Failed {
        socket: path.to_owned(),
        error,
    };
    let mut stream = match UnixStream::connect(path) {
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
                stream,
                offer: *offer,
                device,
            }))
        }
    }
}

impl Takeover {
    /// Says this kvfs is ready to serve and waits for the predecessor to stop for good. Only
    /// then may this kvfs read the device.
    pub fn confirm(mut self) -> io::Result<()> {
        control::send(&mut self.stream, &Step::Ready)?;
        match control::receive::<Step>(&mut self.stream)? {
            Step::Go => Ok(()),
            Step::Ready => Err(io::Error::other("the serving kvfs answered Ready")),
        }
    }
}
