//! The audit trail (`--audit-log PATH|-`): one JSON line per successful open of a secret file,
//! saying who read which version, never the value.
//!
//! A line holds the time (RFC 3339, UTC), the secret's name and version, the opener's pid,
//! uid and gid as the kernel reported them in the OPEN request, its command name
//! (`/proc/<pid>/comm`) and, when its cgroup names them, the container id and Kubernetes pod
//! UID. An open the kernel refuses (EACCES from `default_permissions`) never reaches kvfs, so
//! it is not in the trail.
//!
//! The FUSE thread only gathers the facts and hands them to a bounded channel; a writer thread
//! serialises and appends them. When the channel is full (the disk stalls), lines are dropped,
//! counted, and a rate-limited warning says how many: a reader never waits on the audit file.

use std::fs::OpenOptions;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::SystemTime;

use serde::Serialize;

/// Lines that may wait for the writer; beyond, they are dropped and counted.
const QUEUE: usize = 4096;

/// Where audit lines go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuditTarget {
    Stdout,
    File(PathBuf),
}

/// `-` is standard output, anything else a file path.
pub fn parse_target(s: &str) -> Result<AuditTarget, String> {
    match s {
        "" => Err("expected a file path, or - for standard output".to_owned()),
        "-" => Ok(AuditTarget::Stdout),
        path => Ok(AuditTarget::File(PathBuf::from(path))),
    }
}

/// Who opened a file, as the kernel's request says.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caller {
    pub pid: u32,
    pub uid: u32,
    pub gid: u32,
}

/// One line of the trail.
#[derive(Debug, Serialize)]
struct Record {
    time: String,
    secret: String,
    version: Option<String>,
    pid: u32,
    uid: u32,
    gid: u32,
    comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pod_uid: Option<String>,
}

/// What an open leaves for the writer: facts that must be read while the opener still runs.
struct Pending {
    at: SystemTime,
    secret: String,
    version: Option<String>,
    caller: Caller,
    comm: Option<String>,
    cgroup: Option<String>,
}

pub struct AuditLog {
    tx: SyncSender<Pending>,
    dropped: AtomicU64,
}

impl AuditLog {
    /// Opens the target (a file append-only, created 0600) and starts the writer thread.
    pub fn start(target: &AuditTarget) -> io::Result<Self> {
        let sink: Box<dyn Write + Send> = match target {
            AuditTarget::Stdout => Box::new(io::stdout()),
            AuditTarget::File(path) => Box::new(
                OpenOptions::new()
                    .append(true)
                    .create(true)
                    .mode(0o600)
                    .open(path)?,
            ),
        };
        let (tx, rx) = sync_channel(QUEUE);
        std::thread::Builder::new()
            .name("kvfs-audit".to_owned())
            .spawn(move || write_all(rx, sink))?;
        Ok(Self {
            tx,
            dropped: AtomicU64::new(0),
        })
    }

    /// Records one open. Reads the opener's command name and cgroup now (it may exit soon
    /// after), and never blocks on the writer.
    pub fn record(&self, caller: Caller, secret: &str, version: Option<&str>) {
        let proc_file = |what: &str| std::fs::read(format!("/proc/{}/{what}", caller.pid)).ok();
        let pending = Pending {
            at: SystemTime::now(),
            secret: secret.to_owned(),
            version: version.map(str::to_owned),
            caller,
            comm: proc_file("comm").map(|c| {
                String::from_utf8_lossy(&c)
                    .trim_end_matches('\n')
                    .to_owned()
            }),
            cgroup: proc_file("cgroup").map(|c| String::from_utf8_lossy(&c).into_owned()),
        };
        match self.tx.try_send(pending) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(suppressed) = crate::log_limit::allow("audit: line dropped") {
                    tracing::warn!(
                        dropped_total = dropped,
                        suppressed,
                        "audit log writer is behind or stopped; audit lines dropped"
                    );
                }
            }
        }
    }

    /// Lines dropped so far because the writer was behind.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// The writer thread: one line per record, written whole (one `write` on an append-only file,
/// so concurrent appenders never interleave within a line).
fn write_all(rx: Receiver<Pending>, mut sink: Box<dyn Write + Send>) {
    for p in rx {
        let container = p.cgroup.as_deref().map(container_of).unwrap_or_default();
        let record = Record {
            time: rfc3339(p.at),
            secret: p.secret,
            version: p.version,
            pid: p.caller.pid,
            uid: p.caller.uid,
            gid: p.caller.gid,
            comm: p.comm,
            container_id: container.container_id,
            pod_uid: container.pod_uid,
        };
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(e) => {
                tracing::warn!(error = %e, "cannot serialise an audit line");
                continue;
            }
        };
        line.push(b'\n');
        if let Err(e) = sink.write_all(&line).and_then(|()| sink.flush())
            && let Some(suppressed) = crate::log_limit::allow("audit: write failed")
        {
            tracing::warn!(error = %e, suppressed, "cannot write the audit log");
        }
    }
}

fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The container and pod a process runs in, as its cgroup path names them.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Container {
    pub container_id: Option<String>,
    pub pod_uid: Option<String>,
}

/// Reads the container id (64 hex digits, as containerd, CRI-O, Docker and Podman name their
/// cgroups) and the Kubernetes pod UID (`pod<uid>` under `kubepods`, with `_` for `-` under the
/// systemd driver) from the contents of `/proc/<pid>/cgroup`. The innermost match wins.
pub fn container_of(cgroup: &str) -> Container {
    let mut found = Container::default();
    for line in cgroup.lines() {
        // hierarchy-id:controllers:path
        let Some(path) = line.splitn(3, ':').nth(2) else {
            continue;
        };
        let kube = path.contains("kubepods");
        for segment in path.split('/') {
            let segment = segment
                .strip_suffix(".scope")
                .or_else(|| segment.strip_suffix(".slice"))
                .unwrap_or(segment);
            if let Some(id) = container_id(segment) {
                found.container_id = Some(id.to_owned());
            }
            if kube && let Some(uid) = pod_uid(segment) {
                found.pod_uid = Some(uid);
            }
        }
        if found.container_id.is_some() || found.pod_uid.is_some() {
            break;
        }
    }
    found
}

fn container_id(segment: &str) -> Option<&str> {
    // conmon (CRI-O's and Podman's monitor) runs beside the container, not in it.
    if segment.contains("conmon") {
        return None;
    }
    let id = [
        "cri-containerd-",
        "containerd-",
        "crio-",
        "docker-",
        "libpod-",
    ]
    .iter()
    .find_map(|prefix| segment.strip_prefix(prefix))
    .unwrap_or(segment);
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then_some(id)
}

fn pod_uid(segment: &str) -> Option<String> {
    let at = segment.rfind("pod")?;
    let uid = segment.get(at + 3..)?.replace('_', "-");
    let uuid_shape = uid.len() == 36
        && uid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    uuid_shape.then_some(uid)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
    const POD: &str = "1a2b3c4d-0000-4e5f-8a9b-0c1d2e3f4a5b";

    #[test]
    fn containers_and_pods_from_cgroups() {
        let pod_sd = POD.replace('-', "_");
        let cases: Vec<(String, Option<&str>, Option<&str>)> = vec![
            // containerd, systemd driver (cgroup v2).
            (
                format!(
                    "0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{pod_sd}.slice/cri-containerd-{ID}.scope\n"
                ),
                Some(ID),
                Some(POD),
            ),
            // CRI-O, systemd driver, besteffort.
            (
                format!(
                    "0::/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{pod_sd}.slice/crio-{ID}.scope\n"
                ),
                Some(ID),
                Some(POD),
            ),
            // cgroupfs driver (cgroup v1 lines), guaranteed QoS.
            (
                format!(
                    "12:pids:/kubepods/pod{POD}/{ID}\n11:cpu,cpuacct:/kubepods/pod{POD}/{ID}\n"
                ),
                Some(ID),
                Some(POD),
            ),
            // Docker, both drivers; Podman.
            (
                format!("0::/system.slice/docker-{ID}.scope\n"),
                Some(ID),
                None,
            ),
            (format!("13:memory:/docker/{ID}\n"), Some(ID), None),
            (
                format!("0::/machine.slice/libpod-{ID}.scope/container\n"),
                Some(ID),
                None,
            ),
            // CRI-O's monitor is not the container.
            (
                format!("0::/machine.slice/crio-conmon-{ID}.scope\n"),
                None,
                None,
            ),
            // A pod-level process (no container segment yet).
            (
                format!("0::/kubepods/burstable/pod{POD}\n"),
                None,
                Some(POD),
            ),
            // Plain hosts and sessions: nothing.
            (
                "0::/user.slice/user-1000.slice/session-3.scope\n".into(),
                None,
                None,
            ),
            ("0::/\n".into(), None, None),
            ("".into(), None, None),
            // "pod" outside kubepods is no pod; a short hex id is no container.
            (format!("0::/system.slice/pod{POD}.scope\n"), None, None),
            ("0::/docker/0123abcd\n".into(), None, None),
        ];
        for (cgroup, id, pod) in cases {
            let got = container_of(&cgroup);
            assert_eq!(got.container_id.as_deref(), id, "{cgroup}");
            assert_eq!(got.pod_uid.as_deref(), pod, "{cgroup}");
        }
    }

    #[test]
    fn targets() {
        assert_eq!(parse_target("-").unwrap(), AuditTarget::Stdout);
        assert_eq!(
            parse_target("/var/log/kvfs.jsonl").unwrap(),
            AuditTarget::File("/var/log/kvfs.jsonl".into())
        );
        assert!(parse_target("").is_err());
    }

    #[test]
    fn lines_are_appended_to_a_0600_file_and_name_the_opener() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, "earlier\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let log = AuditLog::start(&AuditTarget::File(path.clone())).unwrap();
        let me = Caller {
            pid: std::process::id(),
            uid: 1,
            gid: 2,
        };
        log.record(me, "db", Some("v1"));
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let text = loop {
            let text = std::fs::read_to_string(&path).unwrap();
            if text.lines().count() == 2 || std::time::Instant::now() > deadline {
                break text;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("earlier"));
        let line: serde_json::Value = serde_json::from_str(lines.next().unwrap()).unwrap();
        assert_eq!(line["secret"], "db");
        assert_eq!(line["version"], "v1");
        assert_eq!(line["pid"], std::process::id());
        assert_eq!(
            (line["uid"].as_u64(), line["gid"].as_u64()),
            (Some(1), Some(2))
        );
        let comm = std::fs::read_to_string("/proc/self/comm").unwrap();
        assert_eq!(line["comm"], comm.trim_end());
        assert!(line["time"].as_str().unwrap().ends_with('Z'), "{line}");
        assert_eq!(log.dropped(), 0);

        let fresh = dir.path().join("new.jsonl");
        let _log = AuditLog::start(&AuditTarget::File(fresh.clone())).unwrap();
        let mode = std::fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
