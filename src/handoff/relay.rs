//! The relay between the kernel's `/dev/fuse` and fuser, which is what makes a live connection
//! transferable.
//!
//! kvfs owns the `/dev/fuse` file itself. One thread reads whole requests from it and passes
//! them to fuser over a `SOCK_SEQPACKET` socketpair (message boundaries kept, as on the device);
//! another takes fuser's replies and writes them to the device; a third writes fuser's
//! notifications (invalidations), which can wait in the kernel on a lock held by a request
//! whose reply is behind them, so they never share a thread with replies.
//!
//! On the way, the relay keeps what a successor needs and fuser cannot give: the kernel's INIT
//! request (fuser insists on a fresh INIT, which a live connection never sends again) and the
//! set of requests not answered yet. It can stop taking requests between two messages, so
//! that once nothing is unanswered the connection holds no request kvfs has seen: the kernel
//! queues new ones on the device, which the successor reads.
//!
//! FORGET, BATCH_FORGET, INTERRUPT and NOTIFY_REPLY get no reply and are never counted.

use std::collections::HashSet;
use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, setsockopt, socketpair, sockopt::RcvBuf, sockopt::SndBuf,
};

const FUSE_FORGET: u32 = 2;
const FUSE_INIT: u32 = 26;
const FUSE_INTERRUPT: u32 = 36;
const FUSE_DESTROY: u32 = 38;
const FUSE_NOTIFY_REPLY: u32 = 41;
const FUSE_BATCH_FORGET: u32 = 42;
/// `fuse_in_header`: len, opcode, unique, nodeid, uid, gid, pid, total_extlen, padding.
const IN_HEADER: usize = 40;
/// `fuse_out_header`: len, error, unique.
const OUT_HEADER: usize = 16;

/// The largest write the kernel may send (kvfs is read-only; nothing near it ever comes). The
/// kernel refuses a read of `/dev/fuse` into a buffer smaller than this plus the headers.
pub const MAX_WRITE: u32 = 128 * 1024;
/// Socket buffers: the largest message is a read reply (at most 1 MiB, and a secret is
/// at most 25 KB) or a request of `MAX_WRITE`.
const SOCKET_BUFFER: usize = 4 << 20;

/// The kernel's INIT request and kvfs's reply to it, as the kernel saw them.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Init {
    pub request: Vec<u8>,
    pub reply: Vec<u8>,
}

impl Init {
    /// `max_write` from the reply (`fuse_init_out`, after the header: major, minor,
    /// max_readahead, flags, max_background and congestion_threshold, then max_write).
    pub fn max_write(&self) -> Option<u32> {
        read_u32(&self.reply, OUT_HEADER + 16)
    }
}

#[derive(Default)]
struct State {
    init: Init,
    /// The unique id of the INIT replayed to fuser: its reply is fuser's, not the kernel's.
    replayed_init: Option<u64>,
    unanswered: HashSet<u64>,
    /// The reader is asked to stop between two messages.
    pause: bool,
    /// The reader has stopped.
    paused: bool,
    /// The device answered ENODEV: the connection is gone.
    ended: bool,
}

/// A running relay. Dropping it does not stop its threads: they end with the connection.
pub struct Relay {
    dev: Arc<OwnedFd>,
    state: Arc<(Mutex<State>, Condvar)>,
    /// Written to wake the reader out of `poll` when it must pause.
    wake: OwnedFd,
}

/// What `pause` found.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    #[error("{0} requests were still unanswered after {1:?}")]
    Busy(usize, Duration),
    #[error("the FUSE connection has ended")]
    Ended,
}

impl Relay {
    /// Starts relaying `dev`. Returns the relay and the socket end to give fuser
    /// (`Session::from_fd`). With `init` (a successor), that INIT is handed to fuser first and
    /// fuser's reply to it is dropped: the kernel got its reply from the first kvfs.
    /// `fuser_threads` is how many of fuser's threads read the socket. With `paused`, no
    /// request is read from the device until `resume`.
    pub fn start(
        dev: OwnedFd,
        init: Option<Init>,
        fuser_threads: usize,
        paused: bool,
    ) -> io::Result<(Self, OwnedFd)> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )?;
        for fd in [&ours, &theirs] {
            // Best effort: the defaults (~200 KB) already fit every message kvfs exchanges.
            let _ = setsockopt(fd, SndBuf, &SOCKET_BUFFER);
            let _ = setsockopt(fd, RcvBuf, &SOCKET_BUFFER);
        }
        let max_write = init
            .as_ref()
            .and_then(Init::max_write)
            .unwrap_or(MAX_WRITE)
            .max(MAX_WRITE);
        let mut state = State {
            pause: paused,
            ..State::default()
        };
        if let Some(init) = init {
            let unique = read_u64(&init.request, 8)
                .ok_or_else(|| io::Error::other("the saved INIT request is too short"))?;
            nix::sys::socket::send(
                ours.as_raw_fd(),
                &init.request,
                nix::sys::socket::MsgFlags::empty(),
            )?;
            state.replayed_init = Some(unique);
            state.init = init;
        }
        let (wake_read, wake) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
        let relay = Self {
            dev: Arc::new(dev),
            state: Arc::new((Mutex::new(state), Condvar::new())),
            wake,
        };
        let ours = Arc::new(ours);
        let (notes, notes_rx) = mpsc::channel::<Vec<u8>>();
        let dev = relay.dev.clone();
        thread::Builder::new()
            .name("kvfs-notify".into())
            .spawn(move || {
                for note in notes_rx {
                    // ENOENT: the kernel does not hold that inode or name; not a failure.
                    let _ = nix::unistd::write(dev.as_fd(), &note);
                }
            })?;
        let (dev, state, socket) = (relay.dev.clone(), relay.state.clone(), ours.clone());
        thread::Builder::new()
            .name("kvfs-replies".into())
            .spawn(move || replies(&dev, &state, &socket, &notes))?;
        let (dev, state, socket) = (relay.dev.clone(), relay.state.clone(), ours);
        let buffer = max_write as usize + 4096 + IN_HEADER;
        thread::Builder::new()
            .name("kvfs-requests".into())
            .spawn(move || {
                requests(&dev, &state, &socket, &wake_read, buffer);
                // The connection ended: tell each fuser thread to stop, as the kernel would.
                for n in 0..fuser_threads {
                    let _ = nix::sys::socket::send(
                        socket.as_raw_fd(),
                        &destroy(u64::MAX - n as u64),
                        nix::sys::socket::MsgFlags::empty(),
                    );
                }
            })?;
        Ok((relay, theirs))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The connection's INIT, once the kernel sent it and kvfs answered.
    pub fn init(&self) -> Init {
        self.lock().init.clone()
    }

    /// The kernel's device: what a successor needs to serve the connection.
    pub fn device(&self) -> &OwnedFd {
        &self.dev
    }

    /// How many requests kvfs has read and not answered yet.
    pub fn unanswered(&self) -> usize {
        self.lock().unanswered.len()
    }

    /// Stops taking requests and waits until every request taken is answered. On `Busy` or
    /// `Ended` the relay takes requests again (`resume` is not needed).
    pub fn pause(&self, limit: Duration) -> Result<Duration, PauseError> {
        let started = Instant::now();
        let (lock, changed) = &*self.state;
        let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
        state.pause = true;
        let _ = nix::unistd::write(&self.wake, b"p");
        loop {
            if state.ended {
                state.pause = false;
                return Err(PauseError::Ended);
            }
            if state.paused && state.unanswered.is_empty() {
                return Ok(started.elapsed());
            }
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                let busy = state.unanswered.len();
                drop(state);
                self.resume();
                return Err(PauseError::Busy(busy, limit));
            }
            state = changed
                .wait_timeout(state, left.min(Duration::from_millis(50)))
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }

    /// Lets go of the connection for good, once a successor serves it: the device's descriptor
    /// number now refers to /dev/null, so that this process no longer keeps the connection
    /// alive (should the successor die, its readers get ENOTCONN rather than wait on a process
    /// that will never answer). The relay must be paused.
    pub fn abandon(&self) -> io::Result<()> {
        // Read-only: Landlock lets kvfs open nothing for writing.
        let null = nix::fcntl::open(
            "/dev/null",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )?;
        // SAFETY: dup3 onto a descriptor this relay owns; no thread uses it while paused, and
        // the number stays valid (now /dev/null) for the OwnedFd that closes it.
        if unsafe { libc::dup3(null.as_raw_fd(), self.dev.as_raw_fd(), libc::O_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Takes requests again after `pause`.
    pub fn resume(&self) {
        let mut state = self.lock();
        state.pause = false;
        self.state.1.notify_all();
        drop(state);
        let _ = nix::unistd::write(&self.wake, b"r");
    }
}

/// Kernel to fuser: one whole request per read, passed on as one message.
fn requests(
    dev: &OwnedFd,
    state: &(Mutex<State>, Condvar),
    socket: &OwnedFd,
    wake: &OwnedFd,
    buffer: usize,
) {
    let (lock, changed) = state;
    let mut buf = vec![0u8; buffer];
    let mut drained = [0u8; 64];
    loop {
        {
            let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
            while s.pause {
                s.paused = true;
                changed.notify_all();
                s = changed.wait(s).unwrap_or_else(PoisonError::into_inner);
            }
            s.paused = false;
        }
        let mut fds = [
            PollFd::new(dev.as_fd(), PollFlags::POLLIN),
            PollFd::new(wake.as_fd(), PollFlags::POLLIN),
        ];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
        if fds[1].any().unwrap_or(false) {
            let _ = nix::unistd::read(wake, &mut drained);
            continue;
        }
        let n = match nix::unistd::read(dev, &mut buf) {
            Ok(n) => n,
            // Interrupted, or a request the kernel withdrew, or another holder took it.
            Err(
                nix::errno::Errno::EINTR | nix::errno::Errno::ENOENT | nix::errno::Errno::EAGAIN,
            ) => {
                continue;
            }
            Err(_) => break,
        };
        let Some(message) = buf.get(..n) else { break };
        let (Some(opcode), Some(unique)) = (read_u32(message, 4), read_u64(message, 8)) else {
            continue;
        };
        {
            let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if opcode == FUSE_INIT {
                s.init.request = message.to_vec();
            }
            if !matches!(
                opcode,
                FUSE_FORGET | FUSE_BATCH_FORGET | FUSE_INTERRUPT | FUSE_NOTIFY_REPLY
            ) {
                s.unanswered.insert(unique);
            }
        }
        if nix::sys::socket::send(
            socket.as_raw_fd(),
            message,
            nix::sys::socket::MsgFlags::empty(),
        )
        .is_err()
        {
            break;
        }
    }
    let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
    s.ended = true;
    changed.notify_all();
}

/// fuser to kernel: replies (by unique id) and notifications (unique 0).
fn replies(
    dev: &OwnedFd,
    state: &(Mutex<State>, Condvar),
    socket: &OwnedFd,
    notes: &mpsc::Sender<Vec<u8>>,
) {
    let mut buf = vec![0u8; SOCKET_BUFFER];
    loop {
        let n = match nix::sys::socket::recv(
            socket.as_raw_fd(),
            &mut buf,
            nix::sys::socket::MsgFlags::empty(),
        ) {
            Ok(0) => return,
            Ok(n) => n,
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
        };
        let Some(message) = buf.get(..n) else { return };
        relay_reply(dev, state, message, notes);
        // A read reply carries a secret's bytes: none may stay behind in this buffer.
        zeroize::Zeroize::zeroize(&mut buf[..n]);
    }
}

/// One message from fuser: a reply goes to the kernel unless the relay made its request up; a
/// notification goes to the notification thread.
fn relay_reply(
    dev: &OwnedFd,
    state: &(Mutex<State>, Condvar),
    message: &[u8],
    notes: &mpsc::Sender<Vec<u8>>,
) {
    let (lock, changed) = state;
    {
        let Some(unique) = read_u64(message, 8) else {
            return;
        };
        if unique == 0 {
            let _ = notes.send(message.to_vec());
            return;
        }
        let forward = {
            let mut s = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if s.replayed_init == Some(unique) {
                // fuser's answer to the replayed INIT: the kernel has its answer already.
                s.replayed_init = None;
                false
            } else if s.unanswered.remove(&unique) {
                if read_u64(&s.init.request, 8) == Some(unique) && s.init.reply.is_empty() {
                    s.init.reply = message.to_vec();
                }
                true
            } else {
                // A reply to a destroy the relay made up at the end of the connection.
                false
            }
        };
        if forward {
            // ENOENT: the request was interrupted and withdrawn meanwhile; nothing to do.
            let _ = nix::unistd::write(dev.as_fd(), message);
            let s = lock.lock().unwrap_or_else(PoisonError::into_inner);
            if s.unanswered.is_empty() {
                changed.notify_all();
            }
        }
    }
}

/// A DESTROY request as the kernel would send it at the end of a connection.
fn destroy(unique: u64) -> Vec<u8> {
    let mut m = Vec::with_capacity(IN_HEADER);
    m.extend_from_slice(&(IN_HEADER as u32).to_ne_bytes());
    m.extend_from_slice(&FUSE_DESTROY.to_ne_bytes());
    m.extend_from_slice(&unique.to_ne_bytes());
    m.resize(IN_HEADER, 0);
    m
}

fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_u64(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destroy_is_a_well_formed_request() {
        let m = destroy(7);
        assert_eq!(m.len(), IN_HEADER);
        assert_eq!(read_u32(&m, 0), Some(IN_HEADER as u32));
        assert_eq!(read_u32(&m, 4), Some(FUSE_DESTROY));
        assert_eq!(read_u64(&m, 8), Some(7));
    }

    #[test]
    fn max_write_is_read_from_the_init_reply() {
        let mut reply = vec![0u8; OUT_HEADER + 24];
        reply[OUT_HEADER + 16..OUT_HEADER + 20].copy_from_slice(&65536u32.to_ne_bytes());
        let init = Init {
            request: Vec::new(),
            reply,
        };
        assert_eq!(init.max_write(), Some(65536));
        assert_eq!(Init::default().max_write(), None);
    }

    #[test]
    fn short_messages_read_as_none() {
        assert_eq!(read_u64(&[1, 2, 3], 0), None);
        assert_eq!(read_u32(&[0; 8], 6), None);
    }
}
