//! The control socket and the takeover protocol between a serving kvfs (the predecessor) and a
//! new one started on the same mountpoint (the successor).
//!
//! Frames are a 4-byte little-endian length and a JSON document; the `/dev/fuse` descriptor
//! travels as SCM_RIGHTS on a one-byte message of its own. The exchange:
//!
//! 1. successor: `Hello` (state format, settings the kernel keeps for the connection's life);
//! 2. predecessor: `Refused` (a setting differs, or requests stayed unanswered), or it stops
//!    taking requests, waits until every request taken is answered, and sends the device and
//!    `Offer` (the INIT, the inode and handle table);
//! 3. successor: builds its session on them, replays the INIT, and says `Ready`;
//! 4. predecessor: says `Go` and exits without unmounting; the successor starts reading the
//!    device only on `Go`. Until `Go` the predecessor can take requests again, and if anything
//!    fails before it (the successor died, a timeout), it does: one process reads the device
//!    at any time.
//!
//! The socket is root's alone (mode 0600 in a 0700 directory) and the predecessor checks the
//! peer's uid besides.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use nix::sys::socket::{ControlMessage, ControlMessageOwned, MsgFlags, recvmsg, sendmsg};

use super::relay::Init;
use crate::fs::FsState;

/// The state format this kvfs writes. A successor reads every format up to its own.
pub const FORMAT: u32 = 2;
/// The largest frame accepted (an inode table of a few hundred thousand nodes).
const MAX_FRAME: usize = 256 << 20;

/// What a successor says first.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Hello {
    /// The newest state format the successor reads.
    pub format: u32,
    pub settings: Settings,
    pub pid: u32,
    pub version: String,
}

/// The settings the kernel remembers for a connection's life, or that the inode table's
/// meaning depends on: a successor must have the same.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Settings {
    pub vault: String,
    pub rotation: String,
    /// owner, root-and-owner or all (allow_other is a mount option).
    pub access: String,
    /// Opens reach kvfs (audit log, allow_root): the kernel remembers an ENOSYS to OPEN.
    pub every_open: bool,
    pub uid: u32,
    pub gid: u32,
    pub file_mode: u16,
    pub dir_mode: u16,
    pub owner_rules: Vec<String>,
    pub include: Vec<String>,
    pub exclude: Vec<String>,
    /// --decode, --json-keys, --alias, --name-map, --env-file (format 2).
    #[serde(default)]
    pub views: Vec<String>,
}

impl Settings {
    /// The first setting that differs, named as its flag, with both values.
    pub fn difference(&self, successor: &Self) -> Option<String> {
        let pairs = [
            ("--vault-url", self.vault.clone(), successor.vault.clone()),
            (
                "--rotation",
                self.rotation.clone(),
                successor.rotation.clone(),
            ),
            (
                "--allow-other/--allow-root",
                self.access.clone(),
                successor.access.clone(),
            ),
            (
                "--audit-log/--allow-root (every open reaches kvfs)",
                self.every_open.to_string(),
                successor.every_open.to_string(),
            ),
            ("--uid", self.uid.to_string(), successor.uid.to_string()),
            ("--gid", self.gid.to_string(), successor.gid.to_string()),
            (
                "--file-mode",
                format!("{:o}", self.file_mode),
                format!("{:o}", successor.file_mode),
            ),
            (
                "--dir-mode",
                format!("{:o}", self.dir_mode),
                format!("{:o}", successor.dir_mode),
            ),
            (
                "--owner",
                self.owner_rules.join(" "),
                successor.owner_rules.join(" "),
            ),
            (
                "--include",
                self.include.join(" "),
                successor.include.join(" "),
            ),
            (
                "--exclude",
                self.exclude.join(" "),
                successor.exclude.join(" "),
            ),
            (
                "the view flags (--decode, --json-keys, --alias, --name-map, --env-file)",
                self.views.join(" "),
                successor.views.join(" "),
            ),
        ];
        pairs
            .into_iter()
            .find(|(_, a, b)| a != b)
            .map(|(flag, serving, asked)| {
                format!("{flag} differs: the serving kvfs has {serving:?}, this one {asked:?}")
            })
    }
}

/// The predecessor's answer to `Hello`.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Answer {
    Refused(String),
    Offer(Box<Offer>),
}

/// Everything but the device, which travels beside it.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct Offer {
    pub format: u32,
    pub init: Init,
    pub fs: FsState,
    pub pid: u32,
    /// How long the predecessor waited for its unanswered requests.
    pub drain_micros: u64,
}

/// The successor's and the predecessor's last words.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Step {
    Ready,
    Go,
}

pub fn send<T: serde::Serialize>(stream: &mut UnixStream, message: &T) -> io::Result<()> {
    let body = serde_json::to_vec(message).map_err(io::Error::other)?;
    let len = u32::try_from(body.len()).map_err(|_| io::Error::other("frame too large"))?;
    stream.write_all(&len.to_le_bytes())?;
    stream.write_all(&body)?;
    stream.flush()
}

pub fn receive<T: serde::de::DeserializeOwned>(stream: &mut UnixStream) -> io::Result<T> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::other(format!("frame of {len} bytes refused")));
    }
    let mut body = vec![0u8; len];
    stream.read_exact(&mut body)?;
    serde_json::from_slice(&body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Sends `fd` (SCM_RIGHTS) on a one-byte message.
pub fn send_fd(stream: &UnixStream, fd: RawFd) -> io::Result<()> {
    let fds = [fd];
    let payload = [io::IoSlice::new(b"F")];
    sendmsg::<()>(
        stream.as_raw_fd(),
        &payload,
        &[ControlMessage::ScmRights(&fds)],
        MsgFlags::empty(),
        None,
    )?;
    Ok(())
}

/// Receives the descriptor `send_fd` sent.
pub fn receive_fd(stream: &UnixStream) -> io::Result<OwnedFd> {
    let mut byte = [0u8; 1];
    let mut iov = [io::IoSliceMut::new(&mut byte)];
    let mut space = nix::cmsg_space!([RawFd; 1]);
    let msg = recvmsg::<()>(
        stream.as_raw_fd(),
        &mut iov,
        Some(&mut space),
        MsgFlags::MSG_CMSG_CLOEXEC,
    )?;
    for cmsg in msg.cmsgs()? {
        if let ControlMessageOwned::ScmRights(fds) = cmsg
            && let Some(&fd) = fds.first()
        {
            // SAFETY: the kernel just installed this descriptor in our table for us alone.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
    }
    Err(io::Error::other("the serving kvfs sent no FUSE descriptor"))
}

/// The uid of the process at the other end.
pub fn peer_uid(stream: &UnixStream) -> io::Result<u32> {
    let creds = nix::sys::socket::getsockopt(stream, nix::sys::socket::sockopt::PeerCredentials)?;
    Ok(creds.uid())
}

/// Bounds every read and write on `stream`.
pub fn limit(stream: &UnixStream, timeout: Duration) -> io::Result<()> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Settings {
        Settings {
            vault: "https://v.vault.azure.net/".into(),
            rotation: "new-inode".into(),
            access: "owner".into(),
            every_open: false,
            uid: 0,
            gid: 0,
            file_mode: 0o400,
            dir_mode: 0o500,
            owner_rules: vec![],
            include: vec![],
            exclude: vec![],
            views: vec![],
        }
    }

    #[test]
    fn equal_settings_have_no_difference() {
        assert_eq!(settings().difference(&settings()), None);
    }

    #[test]
    fn a_difference_names_the_flag_and_both_values() {
        let other = Settings {
            rotation: "in-place".into(),
            ..settings()
        };
        let d = settings().difference(&other).unwrap();
        assert!(d.contains("--rotation"), "{d}");
        assert!(d.contains("new-inode") && d.contains("in-place"), "{d}");
        let other = Settings {
            file_mode: 0o440,
            ..settings()
        };
        assert!(settings().difference(&other).unwrap().contains("440"));
        let other = Settings {
            views: vec!["--decode blob=Base64".into()],
            ..settings()
        };
        let d = settings().difference(&other).unwrap();
        assert!(d.contains("--decode") && d.contains("blob=Base64"), "{d}");
    }

    #[test]
    fn frames_and_descriptors_cross_a_socket() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        send(&mut a, &Step::Ready).unwrap();
        assert_eq!(receive::<Step>(&mut b).unwrap(), Step::Ready);
        let file = std::fs::File::open("/dev/null").unwrap();
        send_fd(&a, file.as_raw_fd()).unwrap();
        let fd = receive_fd(&b).unwrap();
        assert_ne!(fd.as_raw_fd(), file.as_raw_fd());
        assert_eq!(peer_uid(&a).unwrap(), nix::unistd::geteuid().as_raw());
    }

    #[test]
    fn an_oversized_frame_is_refused() {
        let (mut a, mut b) = UnixStream::pair().unwrap();
        a.write_all(&u32::MAX.to_le_bytes()).unwrap();
        assert!(receive::<Step>(&mut b).is_err());
    }
}
