//! Certificate views on a real mount (docs/SEMANTICS.md, "Views"): a certificate-backed secret
//! also appears as NAME.pem, .crt, .key and .pfx; a real nginx serves the .crt and .key read
//! through kvfs, before and after a rotation of the secret and a reload. Under CI=true a
//! missing nginx fails the test.

mod common;
#[path = "common/nginx.rs"]
#[allow(dead_code)]
mod nginx;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{TestEnv, errno_of, eventually};
use kvfs::emulator::SampleChain;
use kvfs::views::cert::{PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE};
use nginx::{Nginx, nginx_binary, served_certificate, wait_for_served};

fn version_of(path: &Path) -> String {
    let p = CString::new(path.as_os_str().as_bytes()).expect("path");
    let mut buf = vec![0u8; 64];
    // SAFETY: valid C strings and a buffer of the length given.
    let n = unsafe {
        libc::getxattr(
            p.as_ptr(),
            c"user.kvfs.version".as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    assert!(n > 0, "no version xattr on {}", path.display());
    String::from_utf8_lossy(&buf[..n as usize]).into_owned()
}

#[test]
fn nginx_serves_the_certificate_read_through_kvfs_before_and_after_a_rotation() {
    let env = TestEnv::start();
    let Some(bin) = nginx_binary() else { return };
    let one = SampleChain::generate("one.example").expect("chain");
    let v1 = env.vault().set_certificate(
        "web-tls",
        &one.pfx_base64().expect("pfx"),
        PKCS12_CONTENT_TYPE,
    );
    env.vault().set_secret("plain", "not a certificate");
    let m = env.mount(&["--cache-ttl", "1s"]);

    env.vault().reset_counters();
    let names: Vec<String> = std::fs::read_dir(&m.path)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    for view in ["web-tls.pem", "web-tls.crt", "web-tls.key", "web-tls.pfx"] {
        assert!(names.contains(&view.to_owned()), "{view} in {names:?}");
    }
    assert!(!names.iter().any(|n| n.starts_with("plain.")), "{names:?}");
    assert_eq!(errno_of(m.read("plain.pem")), libc::ENOENT);
    let key = std::fs::read_to_string(m.file("web-tls.key")).expect(".key");
    assert!(key.starts_with("-----BEGIN PRIVATE KEY-----"), "PKCS#8 PEM");
    let crt = std::fs::read_to_string(m.file("web-tls.crt")).expect(".crt");
    assert_eq!(
        crt.matches("BEGIN CERTIFICATE").count(),
        3,
        "leaf and chain"
    );
    let pem = std::fs::read_to_string(m.file("web-tls.pem")).expect(".pem");
    assert_eq!(pem, format!("{key}{crt}"), "key, then leaf and chain");
    let pfx = m.read("web-tls.pfx").expect(".pfx");
    assert_eq!(
        std::fs::metadata(m.file("web-tls.pfx"))
            .expect("stat")
            .len(),
        pfx.len() as u64
    );
    assert_eq!(version_of(&m.file("web-tls.crt")), v1);
    let gets = env
        .counters()
        .get_by_name
        .get("web-tls")
        .copied()
        .unwrap_or(0);
    assert!(
        gets <= 1,
        "four views of one secret cost at most its one GET: {:?}",
        env.counters()
    );
    keytool_lists(&m.file("web-tls.pfx"));

    let server = Nginx::start(&bin, &m.file("web-tls.crt"), &m.file("web-tls.key"))
        .expect("nginx starts on the views");
    let served = served_certificate(server.addr(), "one.example").expect("handshake");
    assert_eq!(served.leaf(), one.leaf_der.as_slice(), "{}", server.logs());
    let sent: Vec<&[u8]> = served.chain.iter().map(Vec::as_slice).collect();
    assert_eq!(sent, one.certificates(), "leaf, intermediate, root");

    // Rotation: the secret becomes a PEM chain with a new key. kvfs shows it within the
    // refresh; nginx serves it after a reload.
    let two = SampleChain::generate("two.example").expect("chain");
    let v2 = env
        .vault()
        .set_certificate("web-tls", &two.pem(), PEM_CONTENT_TYPE);
    assert!(
        eventually(Duration::from_secs(10), || {
            version_of(&m.file("web-tls.crt")) == v2 && version_of(&m.file("web-tls.key")) == v2
        }),
        "the views follow the rotation"
    );
    server.reload().expect("reload");
    let rotated = wait_for_served(server.addr(), "two.example", Duration::from_secs(10), |c| {
        c.leaf() == two.leaf_der.as_slice()
    })
    .expect("the new certificate is served");
    assert_eq!(rotated.subject, "CN=two.example");
}

#[test]
fn certificate_views_follow_owner_rules_and_revocation() {
    let env = TestEnv::start();
    let chain = SampleChain::generate("owned.example").expect("chain");
    env.vault()
        .set_certificate("app-tls", &chain.pem(), PEM_CONTENT_TYPE);
    let m = env.mount(&["--cache-ttl", "1s", "--owner", "app-*=1234:2345:0440"]);
    for view in ["app-tls.key", "app-tls.crt", "app-tls.pfx", "app-tls.pem"] {
        let meta = std::fs::metadata(m.file(view)).expect("stat");
        assert_eq!(
            (meta.uid(), meta.gid(), meta.mode() & 0o777),
            (1234, 2345, 0o440),
            "{view}"
        );
    }
    let held = std::fs::File::open(m.file("app-tls.key")).expect("open");
    env.vault().set_enabled("app-tls", false);
    assert!(
        eventually(Duration::from_secs(10), || {
            std::fs::read(m.file("app-tls.key"))
                .err()
                .and_then(|e| e.raw_os_error())
                == Some(libc::EACCES)
        }),
        "a disabled certificate's views are refused"
    );
    let mut buf = Vec::new();
    let read = std::io::Read::read_to_end(&mut &held, &mut buf);
    assert_eq!(
        read.err().and_then(|e| e.raw_os_error()),
        Some(libc::EACCES),
        "even through a descriptor opened before"
    );
}

/// `keytool -list` reads a `.pfx` as a PKCS#12 keystore with an empty password: Java can load
/// it. Skipped (with a line) without a JDK.
fn keytool_lists(pfx: &Path) {
    let Ok(keytool) = which("keytool") else {
        eprintln!("keytool (a JDK) is missing: the Java keystore check is skipped");
        return;
    };
    let out = Command::new(keytool)
        .args(["-list", "-storetype", "PKCS12", "-storepass", ""])
        .arg("-keystore")
        .arg(pfx)
        .output()
        .expect("keytool");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn which(bin: &str) -> Result<std::path::PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(bin))
        .find(|p| p.is_file())
        .ok_or(())
}

/// A `.pfx` built from a PEM secret gets fresh salts at each rendering: kvfs renders it once
/// per inode, so reads in small pieces (direct I/O in place, no page cache) make one file.
#[test]
fn a_pfx_built_from_pem_reads_the_same_in_pieces() {
    let env = TestEnv::start();
    let chain = SampleChain::generate("pieces.example").expect("chain");
    env.vault()
        .set_certificate("pem-tls", &chain.pem(), PEM_CONTENT_TYPE);
    let m = env.mount(&["--rotation", "in-place"]);
    let whole = m.read("pem-tls.pfx").expect(".pfx");
    let mut pieces = Vec::new();
    let file = std::fs::File::open(m.file("pem-tls.pfx")).expect("open");
    let mut buf = [0u8; 64];
    loop {
        let n = std::os::unix::fs::FileExt::read_at(&file, &mut buf, pieces.len() as u64)
            .expect("read");
        if n == 0 {
            break;
        }
        pieces.extend_from_slice(&buf[..n]);
    }
    assert_eq!(pieces, whole, "one file, however it is read");
    keytool_lists(&m.file("pem-tls.pfx"));
}
