//! Secrets stay secret: measured on a running `kvfs mount` over the emulator.
//!
//! - Its memory, read through `/proc/<pid>/mem` as root: after a read, exactly one copy of a
//!   value (the cache's); after rotations and eviction, no copy of a superseded value. This is
//!   what the zero-on-free allocator and the `Zeroizing` cache buffers buy; without the
//!   allocator the HTTP bodies, the SDK's `String`s and serde_json's buffers leave copies in
//!   freed memory.
//! - Its protections: memory locked (VmLck), no core file (RLIMIT_CORE 0), not dumpable (its
//!   /proc entries belong to root, not to its group).
//! - A canary value read through every path (cat, `.versions`, extended attributes, stale
//!   serving while Key Vault fails, errors and timeouts, revocation) with logging at trace:
//!   it is in no log line, no error message, not in `/proc/<pid>/environ` nor `/metrics`;
//!   and no bearer token (a JWT, `eyJ...`) is logged either.
//!
//! Values are 48 random hex characters, new in each run, so a match can only be a copy.

mod common;

use std::io::{Read, Seek, SeekFrom};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{Mount, TestEnv, eventually};
use kvfs::emulator::{Fault, FaultAction};

/// kvfs at trace, the HTTP, TLS and SDK crates at info: `logs.rs`'s highest SIGUSR1 step
/// (their debug output would print headers, and a bearer token is a header).
const TRACE: &str = "trace,azure_core=info,azure_identity=info,typespec_client_core=info,azure_security_keyvault_secrets=info,hyper=info,hyper_util=info,h2=info,rustls=info,reqwest=info";

/// 48 random hex characters: a value that exists nowhere else.
fn canary() -> String {
    let bytes: [u8; 24] = rand::random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Non-overlapping occurrences of `needle` in `haystack`.
fn occurrences(haystack: &[u8], needle: &[u8]) -> usize {
    let mut count = 0;
    let mut i = 0;
    while i + needle.len() <= haystack.len() {
        if &haystack[i..i + needle.len()] == needle {
            count += 1;
            i += needle.len();
        } else {
            i += 1;
        }
    }
    count
}

/// The copies of each needle in the memory of `pid`: every readable mapping of
/// /proc/<pid>/maps, its resident pages (per /proc/<pid>/pagemap) read through
/// /proc/<pid>/mem; needs root. Pages never touched are skipped rather than faulted in (they
/// hold nothing, and reading them would grow kvfs). Also returns the bytes read, so a scan
/// that read nothing cannot pass for a clean one.
fn copies_in_memory(pid: i32, needles: &[&str]) -> (Vec<usize>, u64) {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let mut mem = std::fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/pid/mem");
    let mut pagemap =
        std::fs::File::open(format!("/proc/{pid}/pagemap")).expect("open /proc/pid/pagemap");
    let mut counts = vec![0usize; needles.len()];
    let mut scanned = 0u64;
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        if !perms.starts_with('r') || line.ends_with("[vvar]") || line.ends_with("[vsyscall]") {
            continue;
        }
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let start = u64::from_str_radix(start, 16).expect("start");
        let end = u64::from_str_radix(end, 16).expect("end");
        for (from, to) in resident_runs(&mut pagemap, start, end) {
            let mut buf = vec![0u8; (to - from) as usize];
            if mem.seek(SeekFrom::Start(from)).is_err() || mem.read_exact(&mut buf).is_err() {
                continue; // a mapping the kernel will not read (a device)
            }
            scanned += buf.len() as u64;
            for (count, needle) in counts.iter_mut().zip(needles) {
                let found = occurrences(&buf, needle.as_bytes());
                if found > 0 && std::env::var_os("KVFS_TEST_SHOW_COPIES").is_some() {
                    show_copy(line, &buf, needle);
                }
                *count += found;
            }
        }
    }
    (counts, scanned)
}

/// The runs of pages in [start, end) that are resident (or swapped): pagemap bits 63 and 62.
fn resident_runs(pagemap: &mut std::fs::File, start: u64, end: u64) -> Vec<(u64, u64)> {
    const PAGE: u64 = 4096;
    let pages = ((end - start) / PAGE) as usize;
    let mut entries = vec![0u8; pages * 8];
    if pagemap.seek(SeekFrom::Start(start / PAGE * 8)).is_err()
        || pagemap.read_exact(&mut entries).is_err()
    {
        return vec![(start, end)];
    }
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for (i, entry) in entries.chunks_exact(8).enumerate() {
        let bits = u64::from_le_bytes(entry.try_into().expect("8 bytes"));
        if bits & (0b11 << 62) == 0 {
            continue;
        }
        let page = start + i as u64 * PAGE;
        match runs.last_mut() {
            Some(run) if run.1 == page => run.1 = page + PAGE,
            _ => runs.push((page, page + PAGE)),
        }
    }
    runs
}

/// Prints where a copy sits and up to 200 bytes before it (the value itself masked): what
/// kind of buffer kept it.
fn show_copy(mapping: &str, buf: &[u8], needle: &str) {
    let at = buf
        .windows(needle.len())
        .position(|w| w == needle.as_bytes())
        .unwrap_or(0);
    let context = String::from_utf8_lossy(&buf[at.saturating_sub(200)..(at + 100).min(buf.len())])
        .replace(needle, "<VALUE>");
    eprintln!("copy in {mapping}: {context:?}");
}

fn status_field(pid: i32, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| panic!("{field} not in /proc/{pid}/status"))
}

fn kib(field_value: &str) -> u64 {
    field_value
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("kB figure")
}

/// Reads `name` until it returns `want` (a rotation reaches readers within one refresh).
fn wait_for_value(m: &Mount, name: &str, want: &str) {
    assert!(
        eventually(Duration::from_secs(15), || m
            .read(name)
            .is_ok_and(|v| v == want.as_bytes())),
        "{name} never showed its new value"
    );
}

/// Scans until `done(counts)` holds or 10 s pass (an idle HTTPS connection is closed within
/// about 2 s, and with it the TLS buffer that held the last response); returns the counts of
/// the first scan, of the last one, and how long it took.
fn scan_until(
    pid: i32,
    needles: &[&str],
    done: impl Fn(&[usize]) -> bool,
) -> (Vec<usize>, Vec<usize>, Duration) {
    let started = Instant::now();
    let (first, scanned) = copies_in_memory(pid, needles);
    assert!(
        scanned > 1 << 20,
        "the scan read kvfs's memory ({scanned} bytes)"
    );
    let mut last = first.clone();
    while !done(&last) && started.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        last = copies_in_memory(pid, needles).0;
    }
    (first, last, started.elapsed())
}

#[test]
fn memory_holds_one_copy_of_a_value_and_none_of_its_old_ones() {
    let env = TestEnv::start();
    let first = canary();
    env.vault().set_secret("canary", &first);
    for i in 0..8 {
        env.vault().set_secret(&format!("filler-{i}"), &canary());
    }
    let m = env.mount(&["--cache-ttl", "1s", "--cache-capacity", "2"]);

    assert_eq!(m.read("canary").expect("read canary"), first.as_bytes());
    let (at_once, settled, took) = scan_until(m.pid(), &[&first], |c| c[0] == 1);
    eprintln!(
        "after one read: {} copies at once, {} after {took:.1?}",
        at_once[0], settled[0]
    );
    assert_eq!(
        settled[0], 1,
        "exactly one copy of a value that was read (the cache's)"
    );

    // Five rotations, each value read so that each passed through memory.
    let mut old = vec![first];
    let mut current = String::new();
    for _ in 0..5 {
        current = canary();
        env.vault().set_secret("canary", &current);
        wait_for_value(&m, "canary", &current);
        old.push(current.clone());
    }
    old.pop();

    // Eviction: the capacity is 2; reading the fillers pushes every earlier value out.
    for i in 0..8 {
        m.read(&format!("filler-{i}")).expect("read filler");
    }
    let needles: Vec<&str> = old
        .iter()
        .map(String::as_str)
        .chain([current.as_str()])
        .collect();
    let n = old.len();
    let (at_once, settled, took) = scan_until(m.pid(), &needles, |c| {
        c[..n].iter().sum::<usize>() == 0 && c[n] <= 1
    });
    eprintln!(
        "after 5 rotations and eviction: superseded values {:?} at once, {:?} after {took:.1?}; \
         current value {} at once, {} after",
        &at_once[..n],
        &settled[..n],
        at_once[n],
        settled[n]
    );
    assert_eq!(
        settled[..n].iter().sum::<usize>(),
        0,
        "no superseded value remains: {settled:?}"
    );
    assert!(settled[n] <= 1, "the current value: at most one copy");
}

/// The group the kernel shows as owner of /proc/<pid>/status: the process's own group while
/// it is dumpable, root's once it is not (what also keeps a core dump from being written).
/// (The /proc/<pid> directory itself always shows the process's own.)
fn proc_owner_group(pid: u32) -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}/status"))
        .expect("/proc/<pid>/status")
        .gid()
}

#[test]
fn memory_is_locked_never_dumped_and_owned_by_root() {
    let env = TestEnv::start();
    env.vault().set_secret("canary", &canary());
    // kvfs runs as root in group 65534: a dumpable process's /proc entries would then belong
    // to group 65534, a non-dumpable one's to root's group.
    const NOGROUP: u32 = 65534;
    let path = env.mountpoint("mnt");
    // --allow-other: FUSE lets only the mounting uid and gid in otherwise.
    let mut cmd = env.command(&path, &["--allow-other"]);
    cmd.gid(NOGROUP);
    let m = Mount::start(cmd, path);
    m.read("canary").expect("read canary");
    let pid = m.pid();

    let locked = kib(&status_field(pid, "VmLck:"));
    let rss = kib(&status_field(pid, "VmRSS:"));
    eprintln!("kvfs VmLck {locked} kB (locked mappings), VmRSS {rss} kB");
    assert!(locked > 0, "mlockall: VmLck is {locked} kB");
    assert!(
        locked >= rss,
        "every resident page is locked: VmLck {locked} < VmRSS {rss}"
    );

    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core limit line");
    let figures: Vec<&str> = core.split_whitespace().skip(4).take(2).collect();
    assert_eq!(figures, ["0", "0"], "RLIMIT_CORE soft and hard: {core}");

    // The control: a process started the same way that does not harden itself.
    let mut sleeper = Command::new("sleep")
        .arg("60")
        .gid(NOGROUP)
        .stdout(Stdio::null())
        .spawn()
        .expect("sleep");
    let control = proc_owner_group(sleeper.id());
    let _ = sleeper.kill();
    let _ = sleeper.wait();
    assert_eq!(
        control, NOGROUP,
        "a dumpable process's /proc entries are its group's"
    );
    assert_eq!(
        proc_owner_group(pid as u32),
        0,
        "kvfs is not dumpable: its /proc entries belong to root"
    );
}

/// linux/capability.h (libc exports no capability numbers).
const CAP_SYS_RESOURCE: libc::c_ulong = 24;
const CAP_IPC_LOCK: libc::c_ulong = 14;

/// `cmd` as root without CAP_SYS_RESOURCE and CAP_IPC_LOCK (dropped from the bounding set
/// before exec, so the new program never has them) and with RLIMIT_MEMLOCK 64 KiB, a
/// container's default: kvfs can neither raise the limit nor lock beyond it.
fn without_memory_locking(cmd: &mut Command) {
    // SAFETY: prctl and setrlimit are async-signal-safe and touch no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let limit = libc::rlimit {
                rlim_cur: 64 << 10,
                rlim_max: 64 << 10,
            };
            if libc::prctl(libc::PR_CAPBSET_DROP, CAP_SYS_RESOURCE, 0, 0, 0) != 0
                || libc::prctl(libc::PR_CAPBSET_DROP, CAP_IPC_LOCK, 0, 0, 0) != 0
                || libc::setrlimit(libc::RLIMIT_MEMLOCK, &limit) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

#[test]
fn without_an_unlimited_memlock_kvfs_warns_once_or_with_require_mlock_refuses() {
    let env = TestEnv::start();
    let value = canary();
    env.vault().set_secret("canary", &value);

    let path = env.mountpoint("mnt");
    let mut cmd = env.command(&path, &[]);
    without_memory_locking(&mut cmd);
    let m = Mount::start(cmd, path);
    assert_eq!(m.read("canary").expect("read"), value.as_bytes());
    assert_eq!(kib(&status_field(m.pid(), "VmLck:")), 0, "nothing locked");
    let log = std::fs::read_to_string(&m.log_path).expect("log");
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("memory not locked:"))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {log}");
    assert!(warnings[0].contains("LimitMEMLOCK") && warnings[0].contains("RLIMIT_MEMLOCK"));
    drop(m);

    let before = env.counters();
    let path = env.mountpoint("refused");
    let mut cmd = env.command(&path, &["--require-mlock"]);
    without_memory_locking(&mut cmd);
    let out = cmd.stdin(Stdio::null()).output().expect("kvfs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "--require-mlock without the right must fail: {stderr}"
    );
    assert!(
        stderr.contains("--require-mlock") && stderr.contains("RLIMIT_MEMLOCK"),
        "{stderr}"
    );
    assert!(!common::is_mounted(&path), "nothing mounted");
    let after = env.counters();
    assert_eq!(
        (after.total, after.imds_tokens),
        (before.total, before.imds_tokens),
        "the refused kvfs asked for nothing, not even a token"
    );
}

/// Runs a command and keeps its output for the leak check.
fn run(outputs: &mut Vec<(String, Output)>, program: &str, args: &[&Path]) -> Output {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"));
    outputs.push((format!("{program} {args:?}"), output.clone()));
    output
}

/// Whether `path` has the extended attribute `name`.
fn has_xattr(path: &Path, name: &str) -> bool {
    let p = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("path");
    let n = std::ffi::CString::new(name).expect("name");
    // SAFETY: valid NUL-terminated strings; a null buffer of size 0 asks only for the length.
    let len = unsafe { libc::getxattr(p.as_ptr(), n.as_ptr(), std::ptr::null_mut(), 0) };
    len >= 0
}

/// A free port on 127.0.0.1 (bound, then released for kvfs to take).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn http_get(port: u16, path: &str) -> String {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect metrics");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .expect("request");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("response");
    body
}

#[test]
fn a_canary_read_every_way_reaches_no_log_error_environ_or_metric() {
    let env = TestEnv::start();
    let value = canary();
    let hung_value = canary();
    let version = env.vault().set_secret("canary", &value);
    env.vault().set_secret("hangs", &hung_value);

    let help = Command::new(env!("CARGO_BIN_EXE_kvfs"))
        .args(["mount", "--help"])
        .output()
        .expect("kvfs mount --help");
    let metrics_port = String::from_utf8_lossy(&help.stdout)
        .contains("--metrics-addr")
        .then(free_port);
    let path = env.mountpoint("mnt");
    let mut extra = vec![
        "--cache-ttl".to_owned(),
        "1s".to_owned(),
        "--request-timeout".to_owned(),
        "2s".to_owned(),
        "--max-stale".to_owned(),
        "1h".to_owned(),
    ];
    if let Some(port) = metrics_port {
        extra.extend(["--metrics-addr".to_owned(), format!("127.0.0.1:{port}")]);
    }
    // Every open is audited too: the audit trail must name the canary, never show its value.
    let audit_path = env.dir.path().join("audit.jsonl");
    extra.extend(["--audit-log".to_owned(), audit_path.display().to_string()]);
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let mut cmd = env.command(&path, &extra);
    cmd.env("KVFS_LOG", TRACE);
    let m = Mount::start(cmd, path);
    let file = m.file("canary");
    let mut outputs = Vec::new();

    // cat, and the exact version.
    let cat = run(&mut outputs, "cat", &[&file]);
    assert_eq!(cat.stdout, value.as_bytes());
    let exact = m.path.join(".versions").join("canary").join(&version);
    assert_eq!(run(&mut outputs, "cat", &[&exact]).stdout, value.as_bytes());

    // Every extended attribute, by getfattr (names and values dumped).
    let xattrs = run(
        &mut outputs,
        "getfattr",
        &[Path::new("-d"), Path::new("-m"), Path::new("-"), &file],
    );
    assert!(xattrs.status.success(), "getfattr: {xattrs:?}");
    let listed = String::from_utf8_lossy(&xattrs.stdout).into_owned();
    assert!(listed.contains("user.kvfs.version"), "{listed}");

    // Key Vault fails on every request: the value is served stale, and marked so.
    env.vault().add_fault(Fault {
        kind: None,
        name: None,
        action: FaultAction::Status {
            status: 503,
            retry_after: None,
        },
        times: None,
    });
    assert!(
        eventually(Duration::from_secs(20), || {
            has_xattr(&file, "user.kvfs.stale")
        }),
        "the value was never marked stale"
    );
    assert_eq!(run(&mut outputs, "cat", &[&file]).stdout, value.as_bytes());
    run(
        &mut outputs,
        "getfattr",
        &[Path::new("-d"), Path::new("-m"), Path::new("-"), &file],
    );
    env.vault().clear_faults();

    // Errors: a name whose GET never answers (times out), a name that does not exist.
    env.vault().add_fault(Fault {
        kind: None,
        name: Some("hangs".into()),
        action: FaultAction::Hang,
        times: None,
    });
    let hung = run(&mut outputs, "cat", &[&m.file("hangs")]);
    assert!(!hung.status.success(), "a hanging GET ends in an error");
    let absent = run(&mut outputs, "cat", &[&m.file("absent")]);
    assert!(!absent.status.success());

    // Revocation: disabled, every read answers EACCES.
    env.vault().set_enabled("canary", false);
    assert!(
        eventually(Duration::from_secs(15), || {
            std::fs::read(&file).err().and_then(|e| e.raw_os_error()) == Some(libc::EACCES)
        }),
        "the disabled secret was never revoked"
    );
    let revoked = run(&mut outputs, "cat", &[&file]);
    assert!(String::from_utf8_lossy(&revoked.stderr).contains("Permission denied"));
    run(&mut outputs, "cat", &[&exact]);

    let metrics = metrics_port.map(|port| http_get(port, "/metrics"));
    let environ = std::fs::read(format!("/proc/{}/environ", m.pid())).expect("environ");
    let log = std::fs::read_to_string(&m.log_path).expect("kvfs log");
    let audit = std::fs::read_to_string(&audit_path).expect("audit log");
    assert!(
        audit.contains("\"canary\""),
        "the opens were audited: {audit}"
    );

    // The log is at its most verbose and covers these paths, so an absent canary means
    // something (kvfs logs nothing at trace that it does not log at debug).
    assert!(log.contains(" DEBUG "), "debug logging is on");
    assert!(log.contains("stale"), "stale serving was logged");
    assert!(
        log.contains("canary") && log.contains("hangs"),
        "the reads were logged"
    );
    for secret in [value.as_str(), hung_value.as_str()] {
        assert!(!log.contains(secret), "a value reached kvfs's log");
        assert!(!audit.contains(secret), "a value reached the audit log");
        assert!(
            occurrences(&environ, secret.as_bytes()) == 0,
            "a value in /proc/<pid>/environ"
        );
        for (what, out) in &outputs {
            assert!(
                !String::from_utf8_lossy(&out.stderr).contains(secret),
                "a value in the error output of {what}"
            );
        }
        if let Some(metrics) = &metrics {
            assert!(!metrics.contains(secret), "a value in /metrics");
        }
    }
    assert!(
        !log.contains("eyJ"),
        "a bearer token (JWT) reached kvfs's log"
    );
    let xattr_text: String = outputs
        .iter()
        .filter(|(what, _)| what.starts_with("getfattr"))
        .map(|(_, o)| String::from_utf8_lossy(&o.stdout).into_owned())
        .collect();
    assert!(
        !xattr_text.contains(&value),
        "a value in an extended attribute"
    );
    eprintln!(
        "checked {} commands, {} log lines ({} KiB), environ, metrics {}",
        outputs.len(),
        log.lines().count(),
        log.len() >> 10,
        if metrics.is_some() {
            "checked"
        } else {
            "(no --metrics-addr in this build)"
        }
    );
}
