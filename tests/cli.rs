//! Every rejected argument names the flag and the accepted form; nothing is mounted.

mod common;

fn rejected(args: &[&str]) -> String {
    let out = common::kvfs_command().args(args).output().unwrap();
    assert!(!out.status.success(), "{args:?} should be rejected");
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's usage error code for {args:?}"
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const URL: &str = "https://v.vault.azure.net";

#[test]
fn bad_values_name_the_flag_and_the_form() {
    let rows: &[(&[&str], &[&str])] = &[
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--cache-ttl", "five"],
            &["--cache-ttl", "30s"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--negative-ttl=-1s"],
            &["--negative-ttl"],
        ),
        (
            &[
                "mount",
                "/tmp/x",
                "--vault-url",
                URL,
                "--list-ttl",
                "1 fortnight",
            ],
            &["--list-ttl"],
        ),
        (
            &[
                "mount",
                "/tmp/x",
                "--vault-url",
                URL,
                "--request-timeout",
                "1ms",
            ],
            &["--request-timeout", "100ms"],
        ),
        (
            &[
                "mount",
                "/tmp/x",
                "--vault-url",
                URL,
                "--cache-capacity",
                "0",
            ],
            &["--cache-capacity", "at least 1"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--file-mode", "rw"],
            &["--file-mode", "octal"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--auth", "password"],
            &["--auth", "managed-identity"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--threads", "0"],
            &["--threads"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", "http://v.vault.azure.net"],
            &["--vault-url", "https"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", "not a url"],
            &["--vault-url"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", "v.vault.azure.net"],
            &["--vault-url", "no scheme", "https://v.vault.azure.net"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--uid", "root"],
            &["--uid", "a number such as 1000"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--gid", "wheel"],
            &["--gid", "a number such as 1000"],
        ),
        (
            &[
                "mount",
                "/tmp/x",
                "--vault-url",
                URL,
                "--max-request-rate",
                "0",
            ],
            &["--max-request-rate", "at least 1"],
        ),
        (
            &[
                "mount",
                "/tmp/x",
                "--vault-url",
                URL,
                "--cache-max-bytes",
                "1KiB",
            ],
            &["--cache-max-bytes", "at least 64KiB"],
        ),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--log-format", "xml"],
            &["--log-format", "json"],
        ),
        (
            &[
                "mount",
                "/tmp/x",
                "--vault-url",
                URL,
                "--imds-endpoint",
                "nowhere",
            ],
            &["--imds-endpoint"],
        ),
        (&["mount", "/tmp/x"], &["--vault-url"]),
        (&["mount", "--vault-url", URL], &["MOUNTPOINT"]),
        (
            &["mount", "/tmp/x", "--vault-url", URL, "--bogus"],
            &["--bogus"],
        ),
        // The demo sets its own network: it takes none of these rather than ignore them.
        (
            &["demo", "/tmp/x", "--ca-file", "/etc/ssl/x.pem"],
            &["--ca-file"],
        ),
        (
            &["demo", "/tmp/x", "--imds-endpoint", "http://127.0.0.1:1"],
            &["--imds-endpoint"],
        ),
    ];
    for (args, needles) in rows {
        let stderr = rejected(args);
        for needle in *needles {
            assert!(
                stderr.contains(needle),
                "{args:?}: {needle:?} not in: {stderr}"
            );
        }
    }
}

#[test]
fn env_vars_are_read_and_checked_like_flags() {
    let out = common::kvfs_command()
        .args(["mount", "/tmp/x"])
        .env("KVFS_VAULT_URL", URL)
        .env("KVFS_CACHE_TTL", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--cache-ttl") && stderr.contains("soon"),
        "{stderr}"
    );
}

#[test]
fn missing_mountpoint_directory_is_named() {
    // --no-startup-check: no network at all; the mountpoint check fails first.
    let out = common::kvfs_command()
        .args([
            "mount",
            "/nonexistent/kvfs-mnt",
            "--vault-url",
            URL,
            "--no-startup-check",
        ])
        .args(["--imds-endpoint", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("/nonexistent/kvfs-mnt"), "{stderr}");
}
