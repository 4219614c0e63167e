//! The Kubernetes DaemonSet topology (deploy/kubernetes) without a cluster, in Linux mount
//! namespaces: a "node" namespace where a tmpfs at node/ is a shared mount (what Bidirectional
//! propagation gives the kvfs container and the host) and the real kvfs mounts node/kv; a "pod"
//! namespace copied from it with slave propagation (what HostToContainer gives a consumer that
//! binds the parent directory). The pod reads the secret through the node's mount; kvfs stops
//! (SIGTERM) and starts again on the node side, and the pod reads through the new mount without
//! mounting anything itself.
//!
//! Each namespace is held by a `sleep` started with `unshare`; commands run in it through
//! `nsenter -m`. kvfs is started through nsenter too (nsenter execs it, so its pid is kvfs's).
//! When the guard drops, kvfs gets SIGTERM and the sleeps are killed: the namespaces, and every
//! mount in them, go away with their last process. Nothing is ever mounted in the test's own
//! namespace. Creating namespaces needs root; if it fails, the test fails.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::TestEnv;

const FUSE_MAGIC: &str = "65735546";

/// A process holding a mount namespace open.
struct Namespace {
    holder: Child,
}

impl Namespace {
    /// `unshare --mount --propagation MODE sleep`, itself run inside `parent` when given.
    fn create(parent: Option<&Namespace>, propagation: &str) -> Namespace {
        let mut cmd = match parent {
            Some(p) => p.command("unshare"),
            None => Command::new("unshare"),
        };
        cmd.args([
            "--mount",
            "--propagation",
            propagation,
            "--",
            "sleep",
            "600",
        ]);
        let holder = cmd
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("unshare: {e}"));
        let ns = Namespace { holder };
        // The namespace exists once the holder is no longer in its parent's mount namespace.
        let parent_ns = match parent {
            Some(p) => std::fs::read_link(format!("/proc/{}/ns/mnt", p.pid())),
            None => std::fs::read_link("/proc/self/ns/mnt"),
        }
        .expect("parent's mount namespace");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let own = std::fs::read_link(format!("/proc/{}/ns/mnt", ns.pid()));
            if own.as_ref().is_ok_and(|own| *own != parent_ns) {
                let comm = std::fs::read_to_string(format!("/proc/{}/comm", ns.pid()));
                if comm.is_ok_and(|c| c.trim() == "sleep") {
                    return ns;
                }
            }
            assert!(
                Instant::now() < deadline,
                "unshare --mount --propagation {propagation} did not create a namespace \
                 (this test needs root)"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn pid(&self) -> u32 {
        self.holder.id()
    }

    /// `program` to be run inside this mount namespace.
    fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "--", program]);
        cmd
    }

    fn output(&self, program: &str, args: &[&str]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("nsenter {program}: {e}"))
    }

    fn run(&self, program: &str, args: &[&str]) -> String {
        let out = self.output(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in namespace {} failed: {}",
            self.pid(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Whether `path`, seen from this namespace, is an answering FUSE mount.
    fn fuse_at(&self, path: &Path) -> bool {
        let out = self.output("stat", &["-f", "-c", "%t", &path.display().to_string()]);
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == FUSE_MAGIC
    }

    /// This namespace's /proc/PID/mountinfo line for `path`, if something is mounted there.
    fn mountinfo(&self, path: &Path) -> Option<String> {
        let info =
            std::fs::read_to_string(format!("/proc/{}/mountinfo", self.pid())).expect("mountinfo");
        let p = path.display().to_string();
        // The last line wins: a later mount on the same path covers the earlier ones.
        info.lines()
            .rfind(|l| l.split(' ').nth(4) == Some(p.as_str()))
            .map(str::to_owned)
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = self.holder.kill();
        let _ = self.holder.wait();
    }
}

/// kvfs running in the node namespace; stopped (SIGTERM) on drop.
struct NodeKvfs {
    child: Option<Child>,
    log: PathBuf,
}

impl NodeKvfs {
    fn start(env: &TestEnv, node: &Namespace, mountpoint: &Path, log: PathBuf) -> NodeKvfs {
        let mut cmd = node.command(env!("CARGO_BIN_EXE_kvfs"));
        kvfs::testing::scrub_env(&mut cmd);
        cmd.arg("mount")
            .arg(mountpoint)
            .args(env.kvfs_args())
            .args(["--allow-other", "--shutdown-grace", "1s"])
            .env("KVFS_LOG", "info");
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn kvfs");
        let mut kvfs = NodeKvfs {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !node.fuse_at(mountpoint) {
            if let Some(Ok(Some(status))) = kvfs.child.as_mut().map(Child::try_wait) {
                panic!(
                    "kvfs exited before mounting ({status}): {}",
                    kvfs.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "kvfs did not mount within 30 s: {}",
                kvfs.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        kvfs
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        kvfs::testing::terminate(&mut child, Duration::from_secs(10))
            .expect("kvfs exits within 10 s of SIGTERM")
    }
}

impl Drop for NodeKvfs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- kvfs log ---\n{}", self.log_text());
        }
        if let Some(mut child) = self.child.take() {
            kvfs::testing::terminate(&mut child, Duration::from_secs(10));
        }
    }
}

/// The pod reads through the node's mount, and through the restarted kvfs's new mount, with no
/// mount of its own; between the two it sees the empty directory underneath.
#[test]
fn a_pod_namespace_sees_the_node_mount_and_its_restart() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "first value");

    // The node: a shared tmpfs (in Kubernetes, the hostPath that Bidirectional makes rshared).
    let node_dir = env.dir.path().join("node");
    std::fs::create_dir_all(&node_dir).expect("node dir");
    let node = Namespace::create(None, "private");
    let node_path = node_dir.display().to_string();
    node.run(
        "mount",
        &["-t", "tmpfs", "-o", "size=1m", "kvfs-node", &node_path],
    );
    node.run("mount", &["--make-shared", &node_path]);
    node.run("mkdir", &[&format!("{node_path}/kv")]);
    let kv = node_dir.join("kv");
    let secret = kv.join("db-password").display().to_string();

    // The pod: a copy of the node's mounts, each a slave of the node's (HostToContainer).
    let pod = Namespace::create(Some(&node), "slave");
    let tmpfs_in_pod = pod
        .mountinfo(&node_dir)
        .expect("the pod has the node's tmpfs");
    assert!(
        tmpfs_in_pod.contains(" master:"),
        "the pod's copy is not a slave: {tmpfs_in_pod}"
    );
    assert!(pod.mountinfo(&kv).is_none(), "nothing is mounted yet");

    let mut kvfs = NodeKvfs::start(&env, &node, &kv, env.dir.path().join("kvfs-1.log"));
    assert!(
        env.dir
            .path()
            .join("node")
            .read_dir()
            .is_ok_and(|mut d| d.next().is_none()),
        "the test's own namespace saw a node mount"
    );
    let kv_in_pod = pod
        .mountinfo(&kv)
        .expect("the node's kvfs mount propagated to the pod");
    assert!(kv_in_pod.contains(" - fuse "), "{kv_in_pod}");
    assert!(kv_in_pod.contains(" master:"), "{kv_in_pod}");
    assert_eq!(pod.run("cat", &[&secret]), "first value");
    let gets_first = env.counters().get_secret;

    // kvfs stops: the mount leaves the node and, by propagation, the pod.
    let status = kvfs.stop();
    assert!(status.success(), "kvfs exited with {status}");
    assert!(!node.fuse_at(&kv) && !pod.fuse_at(&kv));
    assert!(pod.mountinfo(&kv).is_none(), "the pod kept the old mount");
    let gap = pod.output("cat", &[&secret]);
    assert!(!gap.status.success(), "a read during the gap succeeded");
    assert!(
        String::from_utf8_lossy(&gap.stderr).contains("No such file or directory"),
        "{}",
        String::from_utf8_lossy(&gap.stderr)
    );

    // The rotated value, through a new kvfs on the node: the pod reads it as it is.
    env.vault().set_secret("db-password", "second value");
    let started = Instant::now();
    let _kvfs = NodeKvfs::start(&env, &node, &kv, env.dir.path().join("kvfs-2.log"));
    let restart = started.elapsed();
    assert!(pod.fuse_at(&kv), "the new mount did not reach the pod");
    assert_eq!(pod.run("cat", &[&secret]), "second value");
    assert_eq!(
        pod.mountinfo(&kv).map(|l| l.contains(" - fuse ")),
        Some(true)
    );
    assert!(
        env.counters().get_secret > gets_first,
        "the second read did not come from the new kvfs"
    );
    println!(
        "pod read through the node mount; after a restart ({} ms to mount again) it read the new \
         mount's value with no mount of its own",
        restart.as_millis()
    );
}

/// The DaemonSet's rolling update (maxSurge: 1, control socket on a host path) without a
/// cluster: two "pods" on one "node", each a mount namespace sharing the node's hostPath both
/// ways (Bidirectional), and a consumer namespace (HostToContainer) reading throughout. The new
/// pod's kvfs takes the mount over from the old pod's; the old one lingers until its pod is
/// deleted (SIGTERM, then its namespace goes), and exits without unmounting. The consumer sees
/// no error at any point.
#[test]
fn a_rolling_update_between_two_pods_is_invisible_to_a_consumer_pod() {
    let env = TestEnv::start();
    env.vault().set_secret("db-password", "first value");
    let node_dir = env.dir.path().join("node");
    std::fs::create_dir_all(&node_dir).expect("node dir");
    let node = Namespace::create(None, "private");
    let node_path = node_dir.display().to_string();
    node.run(
        "mount",
        &["-t", "tmpfs", "-o", "size=1m", "kvfs-node", &node_path],
    );
    node.run("mount", &["--make-shared", &node_path]);
    node.run("mkdir", &[&format!("{node_path}/kv")]);
    let kv = node_dir.join("kv");
    // /run/kvfs on the host: a plain directory every namespace sees.
    let socket = env.dir.path().join("run-kvfs").join("control.sock");
    let socket_arg = socket.display().to_string();
    let consumer = Namespace::create(Some(&node), "slave");
    let old_pod = Namespace::create(Some(&node), "shared");
    let new_pod = Namespace::create(Some(&node), "shared");
    let extra = [
        "--control-socket",
        socket_arg.as_str(),
        "--linger-after-handoff",
    ];

    let mut old = PodKvfs::start(&env, &old_pod, &kv, &extra, env.dir.path().join("old.log"));
    assert!(
        consumer.fuse_at(&kv),
        "the old pod's mount reached the consumer"
    );
    let secret = kv.join("db-password").display().to_string();
    let out = env.dir.path().join("consumer.out");
    let mut reader = consumer
        .command("sh")
        .args([
            "-c",
            // One dot per read, appended: a count file rewritten each time could be caught
            // empty by the kill.
            &format!("while :; do cat {secret} > /dev/null || echo ERR; printf .; done"),
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&out).expect("out"))
        .spawn()
        .expect("consumer loop");
    std::thread::sleep(Duration::from_millis(300));

    // The rollout: the new pod starts beside the old one and takes the mount over.
    env.vault().set_secret("db-password", "second value");
    let started = Instant::now();
    let new = PodKvfs::start(&env, &new_pod, &kv, &extra, env.dir.path().join("new.log"));
    assert!(
        common::eventually(Duration::from_secs(30), || new
            .log_text()
            .contains("took the mount over")),
        "the new pod did not take over: {}",
        new.log_text()
    );
    let takeover = started.elapsed();
    assert!(
        old.log_text().contains("serving nothing until SIGTERM"),
        "the old pod lingers: {}",
        old.log_text()
    );
    std::thread::sleep(Duration::from_millis(300));
    // The old pod is deleted: SIGTERM, exit 0, no unmount; then its namespace goes.
    let status = old.stop();
    assert!(status.success(), "old kvfs: {status}");
    drop(old_pod);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        node.fuse_at(&kv) && consumer.fuse_at(&kv),
        "the mount stayed"
    );
    assert!(
        consumer.run("cat", &[&secret]) == "second value"
            || consumer.run("cat", &[&secret]) == "first value"
    );
    let _ = reader.kill();
    let _ = reader.wait();
    let output = std::fs::read_to_string(&out).unwrap_or_default();
    let reads = output.matches('.').count();
    let errors = output.matches("ERR").count();
    println!(
        "HANDOFF two pods: takeover in {} ms; the consumer pod made {reads} reads, {errors} errors",
        takeover.as_millis()
    );
    assert_eq!(errors, 0, "the consumer saw errors");
    assert!(reads > 10, "the consumer kept reading ({reads})");
    drop(new);
    assert!(
        !consumer.fuse_at(&kv),
        "the last kvfs's stop unmounted everywhere"
    );
}

/// kvfs in a pod's namespace, given `extra` flags; stopped (SIGTERM) on drop.
struct PodKvfs(NodeKvfs);

impl PodKvfs {
    fn start(
        env: &TestEnv,
        pod: &Namespace,
        mountpoint: &Path,
        extra: &[&str],
        log: PathBuf,
    ) -> PodKvfs {
        let mut cmd = pod.command(env!("CARGO_BIN_EXE_kvfs"));
        kvfs::testing::scrub_env(&mut cmd);
        cmd.arg("mount")
            .arg(mountpoint)
            .args(env.kvfs_args())
            .args(["--allow-other", "--shutdown-grace", "1s"])
            .args(extra)
            .env("KVFS_LOG", "info");
        let file = std::fs::File::create(&log).expect("log file");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(file)
            .spawn()
            .expect("spawn kvfs");
        let kvfs = NodeKvfs {
            child: Some(child),
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !pod.fuse_at(mountpoint) {
            assert!(
                Instant::now() < deadline,
                "kvfs did not mount within 30 s: {}",
                kvfs.log_text()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        PodKvfs(kvfs)
    }

    fn log_text(&self) -> String {
        self.0.log_text()
    }

    fn stop(&mut self) -> std::process::ExitStatus {
        self.0.stop()
    }
}
