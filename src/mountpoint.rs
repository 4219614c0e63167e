//! The mountpoint before and while kvfs serves it: a mount left stale by a killed kvfs is
//! detached, a mountpoint a live kvfs serves is refused (naming its pid), a non-empty directory
//! gets a warning, and a pid file records which kvfs serves which mountpoint.
//!
//! Pid files live in `/run/kvfs/mounts/` for root and `$XDG_RUNTIME_DIR/kvfs/mounts/` for
//! other users; without either, kvfs still refuses a live mount, without naming the pid.

use std::io;
use std::path::{Path, PathBuf};

/// Why a mountpoint cannot be used, with the fix.
#[derive(Debug, thiserror::Error)]
pub enum MountpointError {
    #[error("no such directory (create it first)")]
    Missing,
    #[error(
        "already served by kvfs (pid {0}), and no control socket of it answers here; to take it over live, \
         pass the --control-socket it was started with; else stop it first (SIGTERM), or mount elsewhere"
    )]
    ServedBy(u32),
    #[error("already a mount point ({device}, type {fstype}); unmount it first (umount {path})")]
    Mounted {
        device: String,
        fstype: String,
        path: String,
    },
    #[error(
        "stale mount (Transport endpoint is not connected) and `fusermount3 -u -z` failed ({0}); run `umount -l` on it"
    )]
    Stale(String),
    #[error("{0}")]
    Io(io::Error),
}

/// `f_type` of every FUSE filesystem (linux/magic.h).
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;

/// Ok when a live FUSE filesystem answers a statfs of `path`. A dead mount fails it
/// (ENOTCONN) though its stat may still succeed from the kernel's cache; the statfs of a live
/// kvfs reaches its FUSE threads and costs no Key Vault request. Blocks while the mount does.
pub fn fuse_statfs(path: &Path) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // SAFETY: a valid NUL-terminated path and a zeroed statfs buffer that the call fills.
    let f_type = unsafe {
        let mut buf: libc::statfs = std::mem::zeroed();
        if libc::statfs(c_path.as_ptr(), &mut buf) != 0 {
            return Err(io::Error::last_os_error());
        }
        buf.f_type
    };
    // f_type is an i64 here, an i32 on some targets.
    #[allow(clippy::useless_conversion)]
    if i64::from(f_type) == FUSE_SUPER_MAGIC {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{} is not a FUSE mount (filesystem type {f_type:#x})",
            path.display()
        )))
    }
}

/// Makes `path` ready to mount on: detaches a stale kvfs mount, refuses a live one.
pub fn prepare(path: &Path) -> Result<(), MountpointError> {
    // Listing, not stat: the kernel may answer a stat of a dead mount from its attribute cache.
    let entries = match std::fs::read_dir(path) {
        Ok(entries) => entries,
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            tracing::warn!(path = %path.display(), "mountpoint left stale by an earlier kvfs; unmounting it");
            let status = std::process::Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(path)
                .status();
            return match std::fs::read_dir(path) {
                Ok(_) => Ok(()),
                Err(_) => Err(MountpointError::Stale(format!("{status:?}"))),
            };
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(MountpointError::Missing),
        Err(e) => return Err(MountpointError::Io(e)),
    };
    if let Some(mount) = mounted_at(path) {
        if mount.source.starts_with("kvfs:") {
            return Err(match read_pid(path).filter(|pid| alive(*pid)) {
                Some(pid) => MountpointError::ServedBy(pid),
                None => MountpointError::Mounted {
                    device: mount.source,
                    fstype: mount.fstype,
                    path: path.display().to_string(),
                },
            });
        }
        return Err(MountpointError::Mounted {
            device: mount.source,
            fstype: mount.fstype,
            path: path.display().to_string(),
        });
    }
    let shadowed = entries.take(3).count();
    if shadowed > 0 {
        tracing::warn!(
            path = %path.display(),
            "the mountpoint is not empty: its files are hidden while kvfs is mounted"
        );
    }
    Ok(())
}

struct MountEntry {
    source: String,
    fstype: String,
}

/// Whether a kvfs mount (FUSE, source `kvfs:...`) is on exactly `path`: read from
/// /proc/self/mountinfo, never from the mount itself (which may be between two servers).
pub fn kvfs_mounted_at(path: &Path) -> bool {
    mounted_at(path).is_some_and(|m| m.fstype.starts_with("fuse") && m.source.starts_with("kvfs:"))
}

/// The mount on exactly `path`, if any (this process's mount namespace).
fn mounted_at(path: &Path) -> Option<MountEntry> {
    let wanted = std::fs::canonicalize(path).ok()?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mounts.lines().rev().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
        let mut fields = line.split(' ');
        let mountpoint = fields.nth(4)?;
        if Path::new(&unescape(mountpoint)) != wanted {
            return None;
        }
        let mut rest = line.split(" - ").nth(1)?.split(' ');
        Some(MountEntry {
            fstype: rest.next()?.to_owned(),
            source: unescape(rest.next()?),
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(field: &str) -> String {
    let mut out = Vec::new();
    let bytes = field.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\'
            && let Some(code) = field
                .get(i + 1..i + 4)
                .and_then(|o| u8::from_str_radix(o, 8).ok())
        {
            out.push(code);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The directory of the pid files (kvfs removes its own there at exit).
pub fn pid_dir() -> Option<PathBuf> {
    if is_root() {
        Some(PathBuf::from("/run/kvfs/mounts"))
    } else {
        Some(PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?).join("kvfs/mounts"))
    }
}

/// Where the pid file of a kvfs serving `mountpoint` is.
fn pid_path(mountpoint: &Path) -> Option<PathBuf> {
    runtime_path(mountpoint, "mounts", "pid")
}

/// A per-mountpoint file in kvfs's runtime directory (`/run/kvfs/<kind>/` for root, else
/// under `XDG_RUNTIME_DIR`), named after the canonical mountpoint.
pub fn runtime_path(mountpoint: &Path, kind: &str, extension: &str) -> Option<PathBuf> {
    let dir = if is_root() {
        PathBuf::from("/run/kvfs").join(kind)
    } else {
        PathBuf::from(std::env::var_os("XDG_RUNTIME_DIR")?)
            .join("kvfs")
            .join(kind)
    };
    let canonical = std::fs::canonicalize(mountpoint).ok()?;
    let name: String = canonical
        .to_string_lossy()
        .chars()
        .map(|c| if c == '/' { '-' } else { c })
        .collect();
    Some(dir.join(format!("{name}.{extension}")))
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}

fn read_pid(mountpoint: &Path) -> Option<u32> {
    std::fs::read_to_string(pid_path(mountpoint)?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The pid file of this kvfs for a mountpoint, removed on drop if it is still ours (a
/// successor may have written its own meanwhile).
pub struct PidFile(Option<PathBuf>);

impl PidFile {
    /// Best effort: a pid file that cannot be written only costs the pid in a later refusal.
    pub fn write(mountpoint: &Path) -> Self {
        let Some(path) = pid_path(mountpoint) else {
            return Self(None);
        };
        let written = path
            .parent()
            .map_or(Ok(()), std::fs::create_dir_all)
            .and_then(|()| std::fs::write(&path, format!("{}\n", std::process::id())));
        match written {
            Ok(()) => Self(Some(path)),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "cannot write the pid file");
                Self(None)
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        if let Some(path) = &self.0
            && std::fs::read_to_string(path)
                .is_ok_and(|pid| pid.trim() == std::process::id().to_string())
        {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_an_answering_mount() {
        let dir = std::env::temp_dir();
        let err = fuse_statfs(&dir).unwrap_err();
        assert!(err.to_string().contains("not a FUSE mount"), "{err}");
        let missing = fuse_statfs(Path::new("/nonexistent/kvfs")).unwrap_err();
        assert_eq!(missing.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/mnt/with\040space"), "/mnt/with space");
        assert_eq!(unescape(r"/a\134b"), r"/a\b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape(r"/bad\9"), r"/bad\9");
    }

    #[test]
    fn a_missing_directory_is_named() {
        let err = prepare(Path::new("/nonexistent/kvfs-test")).unwrap_err();
        assert!(err.to_string().contains("create it first"), "{err}");
    }

    #[test]
    fn another_filesystem_mounted_there_is_refused() {
        // /proc is a mount point everywhere.
        let err = prepare(Path::new("/proc")).unwrap_err();
        assert!(matches!(err, MountpointError::Mounted { .. }), "{err}");
        assert!(err.to_string().contains("umount /proc"), "{err}");
    }
}
