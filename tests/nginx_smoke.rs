//! nginx serves certificate views: files rendered by `kvfs::views::cert` (written to a plain
//! directory here, not through a mount) are what nginx presents, before and after a rotation
//! and a reload. Under CI=true a missing nginx fails the test.

mod common;
// The helper lives beside the harness; with `pub mod nginx;` in common/mod.rs this becomes
// `use common::nginx`.
#[path = "common/nginx.rs"]
#[allow(dead_code)]
mod nginx;

use std::path::Path;
use std::time::Duration;

use kvfs::emulator::SampleChain;
use kvfs::views::cert::{Bundle, CertView, PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE};
use nginx::{Nginx, nginx_binary, served_certificate, wait_for_served};

/// Writes `view` of `bundle` to `path` as a rotation would: a new file renamed over the old.
fn install(bundle: &Bundle, view: CertView, path: &Path) {
    let bytes = bundle.render(view).expect("view renders");
    let tmp = path.with_extension("new");
    std::fs::write(&tmp, bytes.as_slice()).expect("write view");
    std::fs::rename(&tmp, path).expect("rename view");
}

fn pfx_bundle(chain: &SampleChain) -> Bundle {
    let value = chain.pfx_base64().expect("PFX");
    Bundle::parse(PKCS12_CONTENT_TYPE, value.as_bytes()).expect("PFX bundle")
}

fn pem_bundle(chain: &SampleChain) -> Bundle {
    Bundle::parse(PEM_CONTENT_TYPE, chain.pem().as_bytes()).expect("PEM bundle")
}

#[test]
fn nginx_serves_the_views_and_a_rotation_after_reload() {
    common::require_loopback_only();
    let Some(bin) = nginx_binary() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let (crt, key) = (dir.path().join("site.crt"), dir.path().join("site.key"));

    let one = SampleChain::generate("one.example").expect("chain");
    let bundle = pfx_bundle(&one);
    install(&bundle, CertView::Crt, &crt);
    install(&bundle, CertView::Key, &key);
    let server = Nginx::start(&bin, &crt, &key).expect("nginx starts");
    let served = served_certificate(server.addr(), "one.example").expect("handshake");
    assert_eq!(served.leaf(), one.leaf_der.as_slice(), "{}", server.logs());
    assert_eq!(served.subject, "CN=one.example");
    let sent: Vec<&[u8]> = served.chain.iter().map(Vec::as_slice).collect();
    assert_eq!(
        sent,
        one.certificates(),
        "leaf, intermediate, root, as in the .crt"
    );

    // Rotation: a new chain from a PEM secret, a new key; nginx sees it after SIGHUP.
    let two = SampleChain::generate("two.example").expect("chain");
    let bundle = pem_bundle(&two);
    install(&bundle, CertView::Crt, &crt);
    install(&bundle, CertView::Key, &key);
    let unchanged = served_certificate(server.addr(), "one.example").expect("handshake");
    assert_eq!(
        unchanged.leaf(),
        one.leaf_der.as_slice(),
        "no reload, no change"
    );
    server.reload().expect("reload");
    let rotated = wait_for_served(server.addr(), "two.example", Duration::from_secs(10), |c| {
        c.leaf() == two.leaf_der.as_slice()
    })
    .expect("the new certificate is served");
    assert_eq!(rotated.subject, "CN=two.example");
    assert_ne!(rotated.serial, served.serial);

    // A key that does not match: nginx refuses the reload and keeps serving the last good pair.
    let three = SampleChain::generate("three.example").expect("chain");
    install(&pfx_bundle(&three), CertView::Key, &key);
    let refused = server.reload();
    assert!(refused.is_err(), "a mismatched key is refused");
    let kept = served_certificate(server.addr(), "two.example").expect("handshake");
    assert_eq!(kept.leaf(), two.leaf_der.as_slice());
}

#[test]
fn nginx_takes_the_pem_view_as_certificate_and_key() {
    common::require_loopback_only();
    let Some(bin) = nginx_binary() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let pem = dir.path().join("site.pem");
    let chain = SampleChain::generate("pem.example").expect("chain");
    install(&pem_bundle(&chain), CertView::Pem, &pem);
    let server = Nginx::start(&bin, &pem, &pem).expect("nginx starts");
    let served = served_certificate(server.addr(), "pem.example").expect("handshake");
    assert_eq!(
        served.leaf(),
        chain.leaf_der.as_slice(),
        "{}",
        server.logs()
    );
    assert_eq!(served.chain.len(), 3);
}
