//! The Kubernetes manifests under deploy/kubernetes: every kustomization renders offline with
//! `kubectl kustomize`, every rendered document passes `kubernetes-validate --strict` against
//! the pinned Kubernetes versions, and the properties the deployment depends on hold in what is
//! actually rendered (propagation modes, /dev/fuse, privileges, identity wiring, the mountpoint
//! below the shared volume, the grace periods, and KVFS_* variables that kvfs really reads).
//!
//! The tools come from scripts/setup (a venv at /var/cache/kvfs/k8senv, or $KVFS_K8SENV, with
//! kubectl and kubernetes-validate from PyPI); without them the test fails, never skips.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// The oldest release the manifests claim (native sidecars are on by default from 1.29) and
/// the newest the pinned kubernetes-validate knows.
const KUBERNETES_VERSIONS: [&str; 2] = ["1.30.0", "1.37.0"];

/// Every kustomization under deploy/kubernetes; each has its test below.
const KUSTOMIZATIONS: [&str; 5] = [
    "base",
    "overlays/workload-identity",
    "overlays/kubelet-identity",
    "examples/consumer",
    "examples/sidecar",
];

/// statfs(2) magic of FUSE, which the probes compare against.
const FUSE_MAGIC: &str = "65735546";

fn tool(name: &str) -> PathBuf {
    let venv = std::env::var_os("KVFS_K8SENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/kvfs/k8senv"));
    let path = venv.join("bin").join(name);
    assert!(
        path.exists(),
        "{} is missing: run scripts/setup (it installs kubectl and kubernetes-validate)",
        path.display()
    );
    path
}

fn manifests_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// `kubectl kustomize` of one kustomization, as YAML.
fn render_yaml(kustomization: &str) -> String {
    run(Command::new(tool("kubectl"))
        .arg("kustomize")
        .arg(manifests_dir().join(kustomization)))
}

/// The rendered documents as JSON values (PyYAML from the same venv does the parsing).
fn documents(yaml: &str) -> Vec<Value> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).expect("write rendered");
    let json = run(Command::new(tool("python")).arg("-c").arg(
        "import json, sys, yaml; \
         json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d is not None], sys.stdout)",
    ).arg(&file));
    match serde_json::from_str(&json).expect("JSON from PyYAML") {
        Value::Array(docs) => docs,
        other => panic!("expected a list of documents, got {other}"),
    }
}

/// `kubernetes-validate --strict` on `yaml` for every pinned version; the validator's output.
fn validate(yaml: &str) -> Result<String, String> {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("rendered.yaml");
    std::fs::write(&file, yaml).expect("write rendered");
    let mut report = String::new();
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(tool("kubernetes-validate"))
            .args(["--strict", "--kubernetes-version", version])
            .arg(&file)
            .stdin(Stdio::null())
            .output()
            .expect("run kubernetes-validate");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if !out.status.success() {
            return Err(format!("against {version}:\n{text}"));
        }
        report.push_str(&text);
    }
    Ok(report)
}

fn find<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name} rendered"))
}

fn find_kind<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let mut of_kind = docs.iter().filter(|d| d["kind"] == kind);
    let doc = of_kind
        .next()
        .unwrap_or_else(|| panic!("no {kind} rendered"));
    assert!(of_kind.next().is_none(), "more than one {kind} rendered");
    doc
}

fn list(v: &Value) -> &[Value] {
    v.as_array().map(Vec::as_slice).unwrap_or(&[])
}

fn containers<'a>(pod: &'a Value, field: &str) -> &'a [Value] {
    list(&pod[field])
}

fn container<'a>(pod: &'a Value, field: &str, name: &str) -> &'a Value {
    containers(pod, field)
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no {field} entry named {name}"))
}

fn mount<'a>(container: &'a Value, volume: &str) -> &'a Value {
    list(&container["volumeMounts"])
        .iter()
        .find(|m| m["name"] == volume)
        .unwrap_or_else(|| panic!("{} does not mount {volume}", container["name"]))
}

fn volume<'a>(pod: &'a Value, name: &str) -> &'a Value {
    list(&pod["volumes"])
        .iter()
        .find(|v| v["name"] == name)
        .unwrap_or_else(|| panic!("no volume {name}"))
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what}: expected a string, got {v}"))
}

/// Each validated document is named in the validator's report, and the report names no other.
fn assert_valid(kustomization: &str, yaml: &str, docs: &[Value]) {
    let report = validate(yaml).unwrap_or_else(|e| panic!("{kustomization} is invalid: {e}"));
    for doc in docs {
        let kind = str_of(&doc["kind"], "kind").to_lowercase();
        let name = str_of(&doc["metadata"]["name"], "name");
        let line = format!("passed for resource {kind}/{name} against version");
        assert_eq!(
            report.matches(&line).count(),
            KUBERNETES_VERSIONS.len(),
            "{kustomization}: {kind}/{name} not validated once per version:\n{report}"
        );
    }
    println!(
        "{kustomization}: {} documents valid against {KUBERNETES_VERSIONS:?}",
        docs.len()
    );
}

/// Invariants for every pod template in every kustomization.
fn assert_pod_rules(kustomization: &str, pod: &Value) {
    for field in ["initContainers", "containers"] {
        for c in containers(pod, field) {
            let name = &c["name"];
            for m in list(&c["volumeMounts"]) {
                // The API server refuses Bidirectional outside privileged containers; the schema
                // cannot say so.
                if m["mountPropagation"] == "Bidirectional" {
                    assert_eq!(
                        c["securityContext"]["privileged"], true,
                        "{kustomization}: {name} uses Bidirectional without privileged"
                    );
                }
                // A subPath binds one mount: a kvfs restart would leave it dead.
                assert!(
                    m.get("subPath").is_none(),
                    "{kustomization}: {name} uses a subPath"
                );
            }
            let resources = &c["resources"];
            assert!(
                resources["requests"]["memory"].is_string()
                    && resources["limits"]["memory"].is_string(),
                "{kustomization}: {name} lacks memory requests/limits"
            );
        }
    }
}

fn pod_spec(doc: &Value) -> &Value {
    if doc["kind"] == "Pod" {
        &doc["spec"]
    } else {
        &doc["spec"]["template"]["spec"]
    }
}

fn pod_labels(doc: &Value) -> &Value {
    if doc["kind"] == "Pod" {
        &doc["metadata"]["labels"]
    } else {
        &doc["spec"]["template"]["metadata"]["labels"]
    }
}

/// The variable names `kvfs mount --help` lists (`[env: NAME=]`).
fn kvfs_env_names() -> BTreeSet<String> {
    let help = run(Command::new(env!("CARGO_BIN_EXE_kvfs")).args(["mount", "--help"]));
    let names: BTreeSet<String> = help
        .split("[env: ")
        .skip(1)
        .filter_map(|rest| rest.split('=').next().map(str::to_owned))
        .collect();
    assert!(names.contains("KVFS_VAULT_URL"), "help lists: {names:?}");
    names
}

/// Every KVFS_* variable the manifests set is one kvfs reads: a misspelt one would be ignored.
fn assert_known_env(kustomization: &str, docs: &[Value], known: &BTreeSet<String>) {
    let mut set = Vec::new();
    for doc in docs {
        if let (true, Some(data)) = (doc["kind"] == "ConfigMap", doc["data"].as_object()) {
            set.extend(data.keys().cloned());
        }
        if doc["spec"].is_object() && doc["kind"] != "Namespace" {
            let pod = pod_spec(doc);
            for field in ["initContainers", "containers"] {
                for c in containers(pod, field) {
                    set.extend(
                        list(&c["env"])
                            .iter()
                            .filter_map(|e| e["name"].as_str().map(str::to_owned)),
                    );
                }
            }
        }
    }
    for name in set.iter().filter(|n| n.starts_with("KVFS_")) {
        assert!(
            known.contains(name),
            "{kustomization} sets {name}, which kvfs does not read"
        );
    }
}

fn seconds(duration: &str) -> u64 {
    let n = duration
        .strip_suffix('s')
        .unwrap_or_else(|| panic!("{duration}: expected whole seconds like 5s"));
    n.parse().expect("seconds")
}

fn configmap_data<'a>(docs: &'a [Value], key: &str) -> Option<&'a str> {
    docs.iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .find_map(|d| d["data"][key].as_str())
}

/// The node DaemonSet as the base and both identity overlays render it.
fn assert_daemonset(kustomization: &str, docs: &[Value]) {
    let ds = find(docs, "DaemonSet", "kvfs");
    let strategy = &ds["spec"]["updateStrategy"];
    assert_eq!(strategy["type"], "RollingUpdate");
    // The new pod starts beside the old one and takes its mount over (tests/handoff.rs).
    assert_eq!(strategy["rollingUpdate"]["maxSurge"], 1);
    assert_eq!(strategy["rollingUpdate"]["maxUnavailable"], 0);
    let pod = pod_spec(ds);
    assert_pod_rules(kustomization, pod);
    let kvfs = container(pod, "containers", "kvfs");
    assert_eq!(kvfs["image"], "ghcr.io/OWNER/kvfs:0.1.0");
    // The control socket on a host path both pods of a node see; the old pod lingers.
    assert_eq!(volume(pod, "kvfs-run")["hostPath"]["path"], "/run/kvfs");
    assert!(
        kvfs["volumeMounts"]
            .as_array()
            .expect("volumeMounts")
            .iter()
            .any(|m| m["name"] == "kvfs-run" && m["mountPath"] == "/run/kvfs"),
        "{kvfs}"
    );
    assert!(
        kvfs["env"]
            .as_array()
            .expect("env")
            .iter()
            .any(|e| e["name"] == "KVFS_LINGER_AFTER_HANDOFF" && e["value"] == "true"),
        "{kvfs}"
    );

    // /dev/fuse from the host, as a character device.
    assert_eq!(mount(kvfs, "fuse")["mountPath"], "/dev/fuse");
    assert_eq!(volume(pod, "fuse")["hostPath"]["path"], "/dev/fuse");
    assert_eq!(volume(pod, "fuse")["hostPath"]["type"], "CharDevice");

    // The host directory, shared both ways, and kvfs mounting strictly below it.
    let root = mount(kvfs, "kvfs-root");
    assert_eq!(root["mountPropagation"], "Bidirectional");
    assert_eq!(
        volume(pod, "kvfs-root")["hostPath"]["type"],
        "DirectoryOrCreate"
    );
    let root_path = str_of(&root["mountPath"], "mountPath");
    let args = list(&kvfs["args"]);
    assert_eq!(args.first(), Some(&Value::from("mount")), "args: {args:?}");
    let mountpoint = str_of(&args[1], "mountpoint");
    assert!(
        Path::new(mountpoint).parent() == Some(Path::new(root_path)),
        "kvfs mounts {mountpoint}, not a directory right below the shared {root_path}"
    );
    let mkdir = container(pod, "initContainers", "mountpoint");
    assert!(
        list(&mkdir["command"]).contains(&Value::from(mountpoint)),
        "the init container does not create {mountpoint}"
    );

    // Probes on the mount, by statfs.
    for probe in ["startupProbe", "readinessProbe", "livenessProbe"] {
        let command = list(&kvfs[probe]["exec"]["command"])
            .iter()
            .map(|v| str_of(v, probe))
            .collect::<Vec<_>>()
            .join(" ");
        assert!(
            command.contains(&format!("stat -f -c %t {mountpoint}"))
                && command.contains(FUSE_MAGIC),
            "{probe} does not statfs the mount: {command}"
        );
    }

    // kvfs exits by itself (after --shutdown-grace) before the kubelet would SIGKILL it.
    let grace = configmap_data(docs, "KVFS_SHUTDOWN_GRACE").expect("KVFS_SHUTDOWN_GRACE set");
    let termination = pod["terminationGracePeriodSeconds"]
        .as_u64()
        .expect("terminationGracePeriodSeconds");
    assert!(
        termination > seconds(grace),
        "terminationGracePeriodSeconds {termination} <= --shutdown-grace {grace}"
    );
    assert_eq!(configmap_data(docs, "KVFS_ALLOW_OTHER"), Some("true"));
    let sa = find(docs, "ServiceAccount", "kvfs");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    let ns = find_kind(docs, "Namespace");
    assert_eq!(
        ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
        "privileged"
    );
    assert_eq!(ds["metadata"]["namespace"], ns["metadata"]["name"]);
}

fn rendered(kustomization: &str) -> (String, Vec<Value>) {
    let yaml = render_yaml(kustomization);
    let docs = documents(&yaml);
    assert!(!docs.is_empty(), "{kustomization} rendered nothing");
    assert_valid(kustomization, &yaml, &docs);
    assert_known_env(kustomization, &docs, &kvfs_env_names());
    (yaml, docs)
}

#[test]
fn the_validator_rejects_an_unknown_field() {
    // The control: strict validation must catch a misspelt field, or a pass means nothing.
    let yaml = render_yaml("base").replace("mountPropagation:", "mountPropogation:");
    let err = validate(&yaml).expect_err("a misspelt field passed strict validation");
    assert!(err.contains("mountPropogation"), "{err}");
}

#[test]
fn base_daemonset() {
    let (_, docs) = rendered("base");
    assert_daemonset("base", &docs);
    assert_eq!(
        configmap_data(&docs, "KVFS_AUTH"),
        None,
        "the base signs in with auto"
    );
}

#[test]
fn workload_identity_overlay() {
    let (_, docs) = rendered("overlays/workload-identity");
    assert_daemonset("overlays/workload-identity", &docs);
    let sa = find(&docs, "ServiceAccount", "kvfs");
    assert!(
        sa["metadata"]["annotations"]["azure.workload.identity/client-id"].is_string(),
        "no client-id annotation: {sa}"
    );
    let ds = find(&docs, "DaemonSet", "kvfs");
    assert_eq!(pod_labels(ds)["azure.workload.identity/use"], "true");
    assert_eq!(
        configmap_data(&docs, "KVFS_AUTH"),
        Some("workload-identity")
    );
}

#[test]
fn kubelet_identity_overlay() {
    let (_, docs) = rendered("overlays/kubelet-identity");
    assert_daemonset("overlays/kubelet-identity", &docs);
    assert_eq!(configmap_data(&docs, "KVFS_AUTH"), Some("managed-identity"));
    assert!(configmap_data(&docs, "KVFS_CLIENT_ID").is_some());
    let ds = find(&docs, "DaemonSet", "kvfs");
    assert!(pod_labels(ds).get("azure.workload.identity/use").is_none());
}

#[test]
fn consumer_example() {
    let (_, docs) = rendered("examples/consumer");
    let node = documents(&render_yaml("base"));
    let ds_pod = pod_spec(find(&node, "DaemonSet", "kvfs"));
    let host_root = &volume(ds_pod, "kvfs-root")["hostPath"]["path"];

    let pod = pod_spec(find_kind(&docs, "Pod"));
    assert_pod_rules("examples/consumer", pod);
    // The consumer binds the node's shared directory (the mount's parent), not the mount.
    let vol = volume(pod, "kvfs");
    assert_eq!(&vol["hostPath"]["path"], host_root);
    assert_eq!(vol["hostPath"]["type"], "Directory");
    for field in ["initContainers", "containers"] {
        for c in containers(pod, field) {
            let m = mount(c, "kvfs");
            assert_eq!(m["mountPropagation"], "HostToContainer", "{}", c["name"]);
            assert_eq!(m["readOnly"], true);
            assert!(c["securityContext"].get("privileged").is_none());
        }
    }
    // It can read the files: it carries the group kvfs gives them.
    let gid: u64 = configmap_data(&node, "KVFS_GID")
        .expect("KVFS_GID")
        .parse()
        .expect("numeric gid");
    assert!(
        list(&pod["securityContext"]["supplementalGroups"]).contains(&Value::from(gid)),
        "the consumer lacks group {gid}"
    );
}

#[test]
fn sidecar_example() {
    let (_, docs) = rendered("examples/sidecar");
    let deploy = find_kind(&docs, "Deployment");
    let pod = pod_spec(deploy);
    assert_pod_rules("examples/sidecar", pod);
    // A native sidecar: started before the app, stopped after it.
    let kvfs = container(pod, "initContainers", "kvfs");
    assert_eq!(kvfs["restartPolicy"], "Always");
    assert_eq!(kvfs["securityContext"]["privileged"], true);
    assert_eq!(mount(kvfs, "fuse")["mountPath"], "/dev/fuse");
    assert_eq!(volume(pod, "fuse")["hostPath"]["type"], "CharDevice");
    let shared = mount(kvfs, "kvfs");
    assert_eq!(shared["mountPropagation"], "Bidirectional");
    assert!(volume(pod, "kvfs")["emptyDir"].is_object());
    let mountpoint = str_of(&list(&kvfs["args"])[1], "mountpoint");
    assert_eq!(
        Path::new(mountpoint).parent(),
        Some(Path::new(str_of(&shared["mountPath"], "mountPath")))
    );
    assert!(kvfs["startupProbe"]["exec"].is_object());

    let app = container(pod, "containers", "app");
    let m = mount(app, "kvfs");
    assert_eq!(m["mountPropagation"], "HostToContainer");
    assert_eq!(m["readOnly"], true);
    assert_eq!(app["securityContext"]["allowPrivilegeEscalation"], false);

    let sa = find_kind(&docs, "ServiceAccount");
    assert_eq!(pod["serviceAccountName"], sa["metadata"]["name"]);
    assert!(sa["metadata"]["annotations"]["azure.workload.identity/client-id"].is_string());
    assert_eq!(pod_labels(deploy)["azure.workload.identity/use"], "true");
}

#[test]
fn every_kustomization_is_tested() {
    fn walk(dir: &Path, root: &Path, found: &mut BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).expect("read_dir").flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, root, found);
            } else if path.file_name() == Some("kustomization.yaml".as_ref()) {
                let rel = path.parent().and_then(|p| p.strip_prefix(root).ok());
                found.insert(rel.expect("below root").display().to_string());
            }
        }
    }
    let mut found = BTreeSet::new();
    walk(&manifests_dir(), &manifests_dir(), &mut found);
    let tested: BTreeSet<String> = KUSTOMIZATIONS.iter().map(|s| s.to_string()).collect();
    assert_eq!(found, tested, "a kustomization without its test here");
}
