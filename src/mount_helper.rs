//! `mount.kvfs`: the helper that mount(8) runs for `mount -t kvfs` and fstab lines of type
//! `kvfs`, as `mount.kvfs SPEC DIR [-sfnv] [-o OPTIONS]`. It is the `kvfs` binary itself, run
//! under that name (a symlink `/sbin/mount.kvfs -> kvfs`), so the options are parsed in Rust,
//! table-tested, and no shell script or second binary has to be shipped.
//!
//! Each option `name=value` becomes `--name-with-dashes value`, a bare `name` becomes
//! `--name`; kvfs's own flag parser then checks them. Options that belong to mount(8), fstab
//! or systemd (`defaults`, `_netdev`, `nofail`, `x-systemd.*`, ...) are dropped; the ones kvfs
//! always applies (`ro`, `nodev`, `nosuid`, `noexec`, `noatime`) are too. SPEC is the vault
//! URL, or anything (`none`) when a `vault_url=` option names it.
//!
//! kvfs stays a foreground daemon: the helper starts `kvfs mount` in a new session with its
//! output appended to a log file, listens on a private notify socket (the protocol a systemd
//! unit uses, see `notify`), and returns 0 once kvfs says READY, i.e. once the mount answers,
//! or 32 with the end of kvfs's log if kvfs exits first.

use std::ffi::{OsStr, OsString};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

/// The name mount(8) runs this binary under.
pub const HELPER_NAME: &str = "mount.kvfs";

/// mount(8)'s exit codes (see its EXIT STATUS section).
const EXIT_USAGE: u8 = 1;
const EXIT_MOUNT_FAILURE: u8 = 32;

/// Where kvfs's log goes without `log_file=`: one file per mountpoint.
const LOG_DIR: &str = "/var/log/kvfs";

/// Options of mount(8), fstab and systemd that are not kvfs's business, and options kvfs
/// applies to every mount anyway (read-only, no devices, setuid or exec, no atime).
const IGNORED: &[&str] = &[
    "defaults",
    "auto",
    "noauto",
    "nofail",
    "_netdev",
    "user",
    "users",
    "nouser",
    "owner",
    "group",
    "ro",
    "rw",
    "sync",
    "async",
    "dev",
    "nodev",
    "suid",
    "nosuid",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "loud",
    "silent",
];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum HelperError {
    #[error("usage: mount.kvfs VAULT_URL|none MOUNTPOINT [-sfnv] [-o OPTIONS]")]
    Usage,
    #[error("-N (mount namespace) is not supported")]
    Namespace,
    #[error("unknown flag {0}")]
    Flag(String),
    #[error(
        "no vault: give the vault URL as the device (https://NAME.vault.azure.net) or as -o vault_url=URL"
    )]
    NoVault,
    #[error("option {0:?}: expected NAME or NAME=VALUE with NAME in a-z, 0-9 and _")]
    Option(String),
}

/// What mount(8) asked for.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub spec: OsString,
    pub mountpoint: PathBuf,
    pub options: Vec<String>,
    /// `-f`: do everything but the mount.
    pub fake: bool,
    pub verbose: bool,
}

/// The binary was started as `mount.kvfs` (a symlink, or a copy, under that name).
pub fn invoked_as_helper(argv0: &OsStr) -> bool {
    Path::new(argv0)
        .file_name()
        .is_some_and(|name| name == HELPER_NAME)
}

/// Runs the helper with the arguments after argv[0]; the result is mount(8)'s exit status.
pub fn main(args: Vec<OsString>) -> ExitCode {
    let mut request = match parse_argv(&args) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{HELPER_NAME}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    // kvfs runs in `/`: a relative mountpoint (the helper run by hand) is made absolute first.
    if let Ok(absolute) = std::path::absolute(&request.mountpoint) {
        request.mountpoint = absolute;
    }
    let plan = match plan(&request) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{HELPER_NAME}: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if request.verbose {
        let line: Vec<_> = plan.args.iter().map(|a| a.to_string_lossy()).collect();
        eprintln!(
            "{HELPER_NAME}: kvfs {} (log: {})",
            line.join(" "),
            plan.log_file.display()
        );
    }
    if request.fake {
        return ExitCode::SUCCESS;
    }
    // `mount -a` cannot tell that a kvfs mount is its fstab line (the kernel shows type `fuse`
    // and source `kvfs:HOST`): the mountpoint check refuses a live kvfs (naming its pid) rather
    // than stack a second one, before anything is started.
    if let Err(e) = crate::mountpoint::prepare(&request.mountpoint) {
        eprintln!("{HELPER_NAME}: {}: {e}", request.mountpoint.display());
        return ExitCode::from(EXIT_MOUNT_FAILURE);
    }
    match start(&plan) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{HELPER_NAME}: {message}");
            ExitCode::from(EXIT_MOUNT_FAILURE)
        }
    }
}

/// Parses `SPEC DIR [-sfnvh] [-o OPTIONS] [-t TYPE] [-N NS]`, flags before or after the two.
pub fn parse_argv(args: &[OsString]) -> Result<Request, HelperError> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let (mut fake, mut verbose) = (false, false);
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let bytes = arg.as_bytes();
        if bytes.first() != Some(&b'-') || bytes.len() == 1 {
            positional.push(arg.clone());
            continue;
        }
        let text = arg.to_string_lossy();
        match text.as_ref() {
            "-o" => {
                let list = args.next().ok_or(HelperError::Usage)?;
                options.extend(split_options(&list.to_string_lossy()));
            }
            "-t" => {
                args.next().ok_or(HelperError::Usage)?;
            }
            "-N" => return Err(HelperError::Namespace),
            flags => {
                for flag in flags.chars().skip(1) {
                    match flag {
                        'f' => fake = true,
                        'v' => verbose = true,
                        // Sloppy (unknown options are kvfs's to reject) and no-mtab: nothing to do.
                        's' | 'n' => {}
                        other => return Err(HelperError::Flag(format!("-{other}"))),
                    }
                }
            }
        }
    }
    let [spec, mountpoint]: [OsString; 2] =
        positional.try_into().map_err(|_| HelperError::Usage)?;
    Ok(Request {
        spec,
        mountpoint: PathBuf::from(mountpoint),
        options,
        fake,
        verbose,
    })
}

fn split_options(list: &str) -> impl Iterator<Item = String> + '_ {
    list.split(',').filter(|o| !o.is_empty()).map(str::to_owned)
}

/// A `kvfs` command line and where its log goes.
#[derive(Debug, PartialEq, Eq)]
pub struct Plan {
    pub args: Vec<OsString>,
    pub log_file: PathBuf,
    /// How long kvfs may take to say READY: its startup check and the first answer are each
    /// bounded by the request timeout.
    pub ready_within: Duration,
}

/// Maps the request to `kvfs mount DIR --flag value ...`.
pub fn plan(request: &Request) -> Result<Plan, HelperError> {
    let mut args: Vec<OsString> = vec!["mount".into(), request.mountpoint.clone().into()];
    let mut vault = None;
    let mut log_file = None;
    let mut request_timeout = Duration::from_secs(10);
    for option in &request.options {
        let (name, value) = match option.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (option.as_str(), None),
        };
        if IGNORED.contains(&name) || name.starts_with("x-") || name == "comment" {
            continue;
        }
        if name.is_empty()
            || !name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(HelperError::Option(option.clone()));
        }
        match (name, value) {
            ("vault_url", Some(v)) => vault = Some(v.to_owned()),
            ("log_file", Some(v)) => log_file = Some(PathBuf::from(v)),
            (_, value) => {
                if let ("request_timeout", Some(v)) = (name, value) {
                    // kvfs validates it; an unparsable one fails there, before READY matters.
                    request_timeout = humantime::parse_duration(v).unwrap_or(request_timeout);
                }
                args.push(format!("--{}", name.replace('_', "-")).into());
                args.extend(value.map(OsString::from));
            }
        }
    }
    let spec = request.spec.to_string_lossy();
    let vault = match vault {
        Some(v) => v,
        None if spec.starts_with("https://") => spec.into_owned(),
        None => return Err(HelperError::NoVault),
    };
    args.push("--vault-url".into());
    args.push(vault.into());
    Ok(Plan {
        args,
        log_file: log_file
            .unwrap_or_else(|| Path::new(LOG_DIR).join(log_name(&request.mountpoint))),
        ready_within: request_timeout * 3 + Duration::from_secs(5),
    })
}

/// `/mnt/kv` -> `mnt-kv.log`, as systemd names a mount unit after its path.
fn log_name(mountpoint: &Path) -> String {
    let name: Vec<_> = mountpoint
        .to_string_lossy()
        .split('/')
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    if name.is_empty() {
        "root.log".to_owned()
    } else {
        format!("{}.log", name.join("-"))
    }
}

/// Starts kvfs detached and waits for READY=1 on a private notify socket, or for kvfs to exit.
fn start(plan: &Plan) -> Result<(), String> {
    let log = open_log(&plan.log_file).map_err(|e| {
        format!(
            "cannot open the log file {}: {e} (set log_file=PATH)",
            plan.log_file.display()
        )
    })?;
    let log_start = log.metadata().map(|m| m.len()).unwrap_or(0);
    let socket_dir =
        SocketDir::create().map_err(|e| format!("cannot create a notify socket: {e}"))?;
    let socket_path = socket_dir.0.join("notify");
    let socket = UnixDatagram::bind(&socket_path)
        .map_err(|e| format!("cannot create a notify socket: {e}"))?;
    let exe = std::env::current_exe().map_err(|e| format!("cannot find the kvfs binary: {e}"))?;
    let err_log = log.try_clone().map_err(|e| e.to_string())?;
    let mut command = Command::new(exe);
    command
        .arg0("kvfs")
        .args(&plan.args)
        // Not the caller's directory: a daemon must not keep it busy.
        .current_dir("/")
        .env("NOTIFY_SOCKET", &socket_path)
        .env_remove("WATCHDOG_USEC")
        .env_remove("WATCHDOG_PID")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log);
    // SAFETY: setsid is async-signal-safe and touches no memory of this process. In a session of
    // its own, kvfs outlives the helper and is not hung up with the terminal that ran mount.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() == -1 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(|e| format!("cannot start kvfs: {e}"))?;
    socket
        .set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + plan.ready_within;
    let mut buf = [0u8; 4096];
    loop {
        if let Ok(n) = socket.recv(&mut buf)
            && buf[..n.min(buf.len())]
                .split(|b| *b == b'\n')
                .any(|line| line == b"READY=1")
        {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "kvfs exited before the mount was ready ({status}); the end of {}:\n{}",
                plan.log_file.display(),
                log_tail(&plan.log_file, log_start)
            ));
        }
        if Instant::now() > deadline {
            if let Ok(pid) = i32::try_from(child.id()) {
                // SAFETY: kill(2) on our own child, not yet reaped.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            return Err(format!(
                "kvfs did not mount within {:?}; stopped it. The end of {}:\n{}",
                plan.ready_within,
                plan.log_file.display(),
                log_tail(&plan.log_file, log_start)
            ));
        }
    }
}

fn open_log(path: &Path) -> io::Result<File> {
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o750)
            .create(dir)?;
    }
    OpenOptions::new().create(true).append(true).open(path)
}

/// The last lines kvfs wrote in this run (kvfs never logs a secret value).
fn log_tail(path: &Path, from: u64) -> String {
    let mut text = String::new();
    if let Ok(mut file) = File::open(path)
        && file.seek(SeekFrom::Start(from)).is_ok()
    {
        let _ = file.take(1 << 20).read_to_string(&mut text);
    }
    let lines: Vec<_> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// A directory only this user can enter, for the notify socket; removed on drop.
struct SocketDir(PathBuf);

impl SocketDir {
    fn create() -> io::Result<Self> {
        let path = std::env::temp_dir().join(format!(
            "kvfs-mount-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        // Fails if the path exists: nobody can have prepared it for us.
        std::fs::DirBuilder::new().mode(0o700).create(&path)?;
        Ok(Self(path))
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn kvfs_args(args: &[&str]) -> Result<Vec<String>, HelperError> {
        let plan = plan(&parse_argv(&argv(args))?)?;
        Ok(plan
            .args
            .iter()
            .map(|a| a.to_string_lossy().into_owned())
            .collect())
    }

    #[test]
    fn options_map_to_flags() {
        let cases: &[(&[&str], &[&str])] = &[
            (
                &[
                    "none",
                    "/mnt/kv",
                    "-o",
                    "vault_url=https://v.vault.azure.net,cache_ttl=5m",
                ],
                &[
                    "mount",
                    "/mnt/kv",
                    "--cache-ttl",
                    "5m",
                    "--vault-url",
                    "https://v.vault.azure.net",
                ],
            ),
            (
                &[
                    "https://v.vault.azure.net",
                    "/mnt/kv",
                    "-o",
                    "ca_file=/etc/kvfs/ca.pem,allow_other",
                ],
                &[
                    "mount",
                    "/mnt/kv",
                    "--ca-file",
                    "/etc/kvfs/ca.pem",
                    "--allow-other",
                    "--vault-url",
                    "https://v.vault.azure.net",
                ],
            ),
            (
                &[
                    "-o",
                    "rw,defaults,_netdev,nofail,noauto,user,x-systemd.automount,x-systemd.requires=a.service,comment=x,noexec,nosuid,nodev,ro",
                    "https://v",
                    "/k",
                ],
                &["mount", "/k", "--vault-url", "https://v"],
            ),
            (
                &[
                    "none",
                    "/k",
                    "-sn",
                    "-o",
                    "uid=1000,file_mode=0440",
                    "-t",
                    "kvfs",
                    "-o",
                    "vault_url=https://v",
                ],
                &[
                    "mount",
                    "/k",
                    "--uid",
                    "1000",
                    "--file-mode",
                    "0440",
                    "--vault-url",
                    "https://v",
                ],
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(kvfs_args(input).unwrap(), *expected, "{input:?}");
        }
    }

    #[test]
    fn rejected_invocations() {
        let cases: &[(&[&str], HelperError)] = &[
            (&["none"], HelperError::Usage),
            (&["none", "/k", "extra"], HelperError::Usage),
            (&["none", "/k", "-o"], HelperError::Usage),
            (
                &["none", "/k", "-N", "/proc/1/ns/mnt"],
                HelperError::Namespace,
            ),
            (&["none", "/k", "-x"], HelperError::Flag("-x".into())),
            (&["none", "/k", "-o", "cache_ttl=5m"], HelperError::NoVault),
            (
                &["none", "/k", "-o", "vault_url=https://v,--evil"],
                HelperError::Option("--evil".into()),
            ),
            (
                &["none", "/k", "-o", "vault_url=https://v,Cache=1"],
                HelperError::Option("Cache=1".into()),
            ),
            (
                &["none", "/k", "-o", "vault_url=https://v,=x"],
                HelperError::Option("=x".into()),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(kvfs_args(input).unwrap_err(), *expected, "{input:?}");
        }
    }

    #[test]
    fn flags_log_file_and_ready_time() {
        let request = parse_argv(&argv(&["-fv", "https://v", "/mnt/kv"])).unwrap();
        assert!(request.fake && request.verbose);
        let p = plan(&request).unwrap();
        assert_eq!(p.log_file, Path::new("/var/log/kvfs/mnt-kv.log"));
        assert_eq!(p.ready_within, Duration::from_secs(35));
        let request = parse_argv(&argv(&[
            "https://v",
            "/k",
            "-o",
            "log_file=/tmp/k.log,request_timeout=2s",
        ]))
        .unwrap();
        let p = plan(&request).unwrap();
        assert_eq!(p.log_file, Path::new("/tmp/k.log"));
        assert_eq!(p.ready_within, Duration::from_secs(11));
        assert!(!p.args.contains(&OsString::from("--log-file")));
        assert_eq!(log_name(Path::new("/")), "root.log");
        assert!(invoked_as_helper(OsStr::new("/sbin/mount.kvfs")));
        assert!(!invoked_as_helper(OsStr::new("/usr/local/bin/kvfs")));
    }
}
