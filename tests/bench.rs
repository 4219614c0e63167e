//! The benchmark's quick mode as a test: every row runs with small counts, and its correctness
//! checks (bytes kvfs == tmpfs, one GET for 1,000 concurrent cold readers, steady-state
//! requests within bound, ...) must pass. Timing is not judged here.
//!
//! Like the other mount tests, it needs root, /dev/fuse and a loopback-only network namespace:
//! `scripts/loopback-only cargo test --test bench`.

use std::process::Command;

/// Every row the JSON result must hold.
const ROWS: &[&str] = &[
    "read_hot_1t",
    "read_hot_2t",
    "read_rr_1t",
    "read_rr_2t",
    "stat",
    "readdir_1000",
    "readdir_10000",
    "cat",
    "startup",
    "cold_read",
    "cold_herd",
    "pods_hour",
    "rss_1k",
    "rss_25k",
];

#[test]
fn quick_run_has_every_row_and_passes_its_checks() {
    let out = tempfile::tempdir().expect("tempdir");
    let run = Command::new(env!("CARGO_BIN_EXE_kvfs-bench"))
        .arg("--quick")
        .arg("--out")
        .arg(out.path())
        .arg("--kvfs")
        .arg(env!("CARGO_BIN_EXE_kvfs"))
        .output()
        .expect("run kvfs-bench");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        run.status.success(),
        "kvfs-bench --quick failed ({}):\n{stdout}\n{stderr}",
        run.status
    );

    let text = std::fs::read_to_string(out.path().join("results.json")).expect("results.json");
    let json: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(json["mode"], "quick");
    assert_eq!(json["ok"], true, "{stdout}");
    for row in ROWS {
        let r = &json["rows"][*row];
        assert!(r.is_object(), "row {row} missing from results.json");
        assert!(
            r["figures"].as_object().is_some_and(|f| !f.is_empty()),
            "row {row} has no figures"
        );
    }
    let checks = json["checks"].as_array().expect("checks");
    assert!(!checks.is_empty());
    for check in checks {
        assert_eq!(check["ok"], true, "check failed: {check}");
    }
    assert_eq!(json["rows"]["cold_herd"]["figures"]["kv_gets"]["kvfs"], 1.0);
    assert!(json["machine"]["nproc"].as_u64().is_some_and(|n| n > 0));

    let svg = std::fs::read_to_string(out.path().join("latency.svg")).expect("latency.svg");
    assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
    assert!(stdout.contains("RATIO") && stdout.contains("nproc"));
}
