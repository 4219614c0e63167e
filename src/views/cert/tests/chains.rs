//! Views of real chains (rcgen, through the emulator's `SampleChain`), and what OpenSSL
//! makes of them.

use std::path::Path;
use std::process::Command;

use p12_keystore::EncryptionAlgorithm;

use super::*;
use crate::emulator::{LeafKey, SampleChain};

fn chain(cn: &str) -> SampleChain {
    SampleChain::generate(cn).expect("sample chain")
}

fn cert_pem(der: &[u8]) -> String {
    block("CERTIFICATE", der)
}

fn key_pem(der: &[u8]) -> String {
    block("PRIVATE KEY", der)
}

fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("PEM is text")
}

/// Every view of `bundle`, checked against `chain`: order, key, `.pem` = `.key` + `.crt`.
fn assert_views(bundle: &Bundle, chain: &SampleChain) {
    let want: Vec<&[u8]> = chain.certificates().to_vec();
    let got: Vec<&[u8]> = bundle.certificates().iter().map(Vec::as_slice).collect();
    assert_eq!(got, want, "leaf, intermediate, root");
    assert_eq!(bundle.leaf(), chain.leaf_der.as_slice());
    assert_eq!(bundle.private_key_der(), chain.key_der.as_slice());

    let crt = bundle.render(CertView::Crt).expect(".crt");
    let want_crt: String = want.iter().map(|der| cert_pem(der)).collect();
    assert_eq!(text(&crt), want_crt);
    let key = bundle.render(CertView::Key).expect(".key");
    assert!(text(&key).starts_with("-----BEGIN PRIVATE KEY-----\n"));
    let parsed = pem::parse(key.as_slice()).expect("one PEM block");
    assert_eq!(parsed.contents(), chain.key_der.as_slice());
    let pem_view = bundle.render(CertView::Pem).expect(".pem");
    assert_eq!(
        pem_view.as_slice(),
        [key.as_slice(), crt.as_slice()].concat()
    );
}

#[test]
fn a_pem_secret_in_any_order_gives_leaf_intermediate_root() {
    let chain = chain("web.example");
    let parts = [
        key_pem(&chain.key_der),
        cert_pem(&chain.leaf_der),
        cert_pem(&chain.intermediate_der),
        cert_pem(&chain.root_der),
    ];
    // Every order of the four blocks, with text between them as `openssl` leaves it.
    let mut orders = vec![vec![0usize, 1, 2, 3]];
    for n in 0..4 {
        let mut next = Vec::new();
        for order in &orders {
            for i in 0..4 {
                let mut o = order.clone();
                o.swap(n, i);
                if !next.contains(&o) {
                    next.push(o);
                }
            }
        }
        orders = next;
    }
    assert_eq!(orders.len(), 24);
    for order in orders {
        let value: String = order
            .iter()
            .map(|&i| format!("Bag Attributes: {i}\n{}", parts[i]))
            .collect();
        let bundle = Bundle::parse(PEM_CONTENT_TYPE, value.as_bytes());
        assert!(bundle.is_ok(), "{order:?}: {:?}", bundle.err());
        if let Ok(bundle) = bundle {
            assert_eq!(bundle.format(), Format::Pem);
            assert_views(&bundle, &chain);
        }
    }
}

#[test]
fn certificates_that_do_not_chain_come_last_in_their_order() {
    let chain = chain("web.example");
    let other = SampleChain::generate("other.example").expect("sample chain");
    let value = [
        cert_pem(&other.leaf_der),
        cert_pem(&chain.root_der),
        cert_pem(&other.root_der),
        cert_pem(&chain.leaf_der),
        key_pem(&chain.key_der),
        cert_pem(&chain.intermediate_der),
        cert_pem(&chain.leaf_der),
    ]
    .concat();
    let bundle = Bundle::from_pem(value.as_bytes()).expect("bundle");
    let got: Vec<&[u8]> = bundle.certificates().iter().map(Vec::as_slice).collect();
    let want: Vec<&[u8]> = vec![
        &chain.leaf_der,
        &chain.intermediate_der,
        &chain.root_der,
        &other.leaf_der,
        &other.root_der,
    ];
    assert_eq!(got, want, "duplicates dropped, strangers last");
}

#[test]
fn every_leaf_key_type_finds_its_certificate() {
    for kind in [LeafKey::EcdsaP256, LeafKey::EcdsaP384, LeafKey::Ed25519] {
        let chain = SampleChain::generate_with("k.example", kind).expect("sample chain");
        let public = public_key_of(&chain.key_der);
        assert!(public.is_some(), "{kind:?}");
        // The leaf last and the root first: only the key can tell.
        let value = [
            cert_pem(&chain.root_der),
            cert_pem(&chain.intermediate_der),
            cert_pem(&chain.leaf_der),
            key_pem(&chain.key_der),
        ]
        .concat();
        let bundle = Bundle::from_pem(value.as_bytes()).expect("bundle");
        assert_views(&bundle, &chain);
    }
}

#[test]
fn a_key_of_another_certificate_is_refused() {
    let chain = chain("web.example");
    let other = chain_other();
    let value = [key_pem(&other.key_der), cert_pem(&chain.leaf_der)].concat();
    assert_eq!(
        Bundle::from_pem(value.as_bytes()).err(),
        Some(CertError::KeyMismatch)
    );
    let no_key = cert_pem(&chain.leaf_der);
    assert_eq!(
        Bundle::from_pem(no_key.as_bytes()).err(),
        Some(CertError::NoPrivateKey)
    );
    let no_cert = key_pem(&chain.key_der);
    assert_eq!(
        Bundle::from_pem(no_cert.as_bytes()).err(),
        Some(CertError::NoCertificate)
    );
    let bad_second = [
        key_pem(&chain.key_der),
        cert_pem(&chain.leaf_der),
        cert_pem(b"not DER"),
    ]
    .concat();
    assert_eq!(
        Bundle::from_pem(bad_second.as_bytes()).err(),
        Some(CertError::BadCertificate(2))
    );
}

fn chain_other() -> SampleChain {
    SampleChain::generate("other.example").expect("sample chain")
}

#[test]
fn a_pkcs12_secret_gives_the_same_views_and_its_own_bytes() {
    let chain = chain("web.example");
    for algorithm in [
        EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
        EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
        EncryptionAlgorithm::PbeWithShaAnd40BitRc4Cbc,
    ] {
        let pfx = chain.pfx_with("", algorithm).expect("PFX");
        let encoded = base64::engine::general_purpose::STANDARD.encode(&pfx);
        // Key Vault sends one line; a value pasted by hand may be wrapped.
        let wrapped: String = encoded
            .as_bytes()
            .chunks(64)
            .map(|line| format!("{}\r\n", text(line)))
            .collect();
        for value in [&encoded, &wrapped] {
            let bundle = Bundle::parse(PKCS12_CONTENT_TYPE, value.as_bytes());
            assert!(bundle.is_ok(), "{algorithm:?}: {:?}", bundle.err());
            let Ok(bundle) = bundle else { continue };
            assert_eq!(bundle.format(), Format::Pkcs12);
            assert_views(&bundle, &chain);
            let own = bundle.render(CertView::Pfx).expect(".pfx");
            assert_eq!(own.as_slice(), pfx.as_slice(), "the secret's own PFX");
        }
    }
}

#[test]
fn a_pfx_built_from_pem_round_trips() {
    let chain = chain("web.example");
    let bundle = Bundle::parse(PEM_CONTENT_TYPE, chain.pem().as_bytes()).expect("bundle");
    let pfx = bundle.render(CertView::Pfx).expect(".pfx");
    let again = bundle.render(CertView::Pfx).expect(".pfx");
    assert_eq!(
        pfx.len(),
        again.len(),
        "the size does not change between renders"
    );

    let archive = Pkcs12Archive::from_pkcs12(&pfx, "").expect("empty password");
    let keys: Vec<&[u8]> = archive.keys.iter().map(|k| k.key.as_der()).collect();
    assert_eq!(keys, [chain.key_der.as_slice()]);
    let certs: Vec<&[u8]> = archive.certs.iter().map(|c| c.cert.as_der()).collect();
    assert_eq!(certs, chain.certificates());

    let back = Bundle::from_pkcs12(pfx).expect("our PFX parses");
    assert_views(&back, &chain);
}

#[test]
fn a_password_protected_pfx_is_refused() {
    let chain = chain("web.example");
    for algorithm in [
        EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc,
        EncryptionAlgorithm::PbeWithHmacSha256AndAes256,
    ] {
        let pfx = chain.pfx_with("hunter2", algorithm).expect("PFX");
        let value = base64::engine::general_purpose::STANDARD.encode(&pfx);
        let err = Bundle::parse(PKCS12_CONTENT_TYPE, value.as_bytes()).err();
        assert_eq!(err, Some(CertError::Pkcs12BadMac), "{algorithm:?}");
        let message = err.map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(message, "PKCS#12: bad MAC (a password is set?)");
    }
    // Cut short: the MAC no longer covers what is there.
    let pfx = chain.pfx("").expect("PFX");
    let cut = base64::engine::general_purpose::STANDARD.encode(&pfx[..pfx.len() / 2]);
    assert_eq!(
        Bundle::parse(PKCS12_CONTENT_TYPE, cut.as_bytes()).err(),
        Some(CertError::Pkcs12Malformed)
    );
}

#[test]
fn debug_hides_the_key() {
    let chain = chain("web.example");
    let bundle = Bundle::from_pem(chain.pem().as_bytes()).expect("bundle");
    let debug = format!("{bundle:?}");
    assert!(debug.contains("<redacted>"), "{debug}");
    assert!(debug.contains("certificates: 3"), "{debug}");
}

/// `openssl`, or `None` where it is missing (a failure under CI=true).
fn openssl() -> Option<&'static str> {
    let found = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("openssl");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "openssl is missing: install Debian's openssl package"
    );
    eprintln!("skipping: the openssl command is missing");
    None
}

/// Runs openssl; its stdout, or a panic with its stderr.
fn run(openssl: &str, args: &[&str], dir: &Path) -> String {
    let out = Command::new(openssl)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Writes every view of `bundle` as `name.pem` and so on.
fn write_views(bundle: &Bundle, dir: &Path, name: &str) {
    for view in CertView::ALL {
        let bytes = bundle.render(view).expect("view");
        std::fs::write(
            dir.join(format!("{name}{}", view.suffix())),
            bytes.as_slice(),
        )
        .expect("write view");
    }
}

#[test]
fn openssl_accepts_every_view() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    let chain = chain("web.example");
    let from_pem = Bundle::from_pem(chain.pem().as_bytes()).expect("PEM bundle");
    let value = chain.pfx_base64().expect("PFX");
    let from_pfx = Bundle::parse(PKCS12_CONTENT_TYPE, value.as_bytes()).expect("PFX bundle");
    for (name, bundle) in [("frompem", &from_pem), ("frompfx", &from_pfx)] {
        write_views(bundle, d, name);
        let crt = format!("{name}.crt");
        let key = format!("{name}.key");
        let pfx = format!("{name}.pfx");
        let subject = run(openssl, &["x509", "-noout", "-subject", "-in", &crt], d);
        assert!(subject.contains("web.example"), "{subject}");
        run(openssl, &["pkey", "-noout", "-in", &key], d);
        run(
            openssl,
            &["pkey", "-noout", "-in", &format!("{name}.pem")],
            d,
        );
        let cert_key = run(openssl, &["x509", "-noout", "-pubkey", "-in", &crt], d);
        let key_pub = run(openssl, &["pkey", "-pubout", "-in", &key], d);
        assert_eq!(cert_key, key_pub, "{name}: the key is the leaf's");
        let info = Command::new(openssl)
            .args([
                "pkcs12", "-info", "-passin", "pass:", "-nokeys", "-in", &pfx,
            ])
            .current_dir(d)
            .output()
            .expect("openssl runs");
        let listing = String::from_utf8_lossy(&info.stdout);
        assert!(
            info.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&info.stderr)
        );
        assert_eq!(listing.matches("BEGIN CERTIFICATE").count(), 3, "{listing}");
        // The chain verifies in the order given: root as trust anchor, intermediate untrusted.
        std::fs::write(d.join("root.pem"), cert_pem(&chain.root_der)).expect("write");
        std::fs::write(d.join("mid.pem"), cert_pem(&chain.intermediate_der)).expect("write");
        run(
            openssl,
            &[
                "verify",
                "-CAfile",
                "root.pem",
                "-untrusted",
                "mid.pem",
                &crt,
            ],
            d,
        );
    }
}

#[test]
fn what_openssl_makes_is_read() {
    let Some(openssl) = openssl() else { return };
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    // RSA, which ring cannot generate: OpenSSL makes the key and a self-signed certificate.
    run(
        openssl,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "k8.pem",
            "-out",
            "c.pem",
            "-subj",
            "/CN=rsa.example",
            "-days",
            "2",
        ],
        d,
    );
    run(
        openssl,
        &["rsa", "-in", "k8.pem", "-traditional", "-out", "k1.pem"],
        d,
    );
    let read = |f: &str| std::fs::read(d.join(f)).expect("read");
    let pkcs8 = pem::parse(read("k8.pem")).expect("PEM");
    assert_eq!(pkcs8.tag(), "PRIVATE KEY");
    let cert = read("c.pem");
    for key_file in ["k8.pem", "k1.pem"] {
        let value = [read(key_file), cert.clone()].concat();
        let bundle = Bundle::from_pem(&value);
        assert!(bundle.is_ok(), "{key_file}: {:?}", bundle.err());
        let Ok(bundle) = bundle else { continue };
        assert_eq!(
            bundle.private_key_der(),
            pkcs8.contents(),
            "{key_file}: PKCS#8, as OpenSSL writes it"
        );
        write_views(&bundle, d, "rsa");
        run(openssl, &["pkey", "-noout", "-in", "rsa.key"], d);
        run(
            openssl,
            &[
                "pkcs12", "-info", "-passin", "pass:", "-nokeys", "-in", "rsa.pfx",
            ],
            d,
        );
    }

    // PFX files as OpenSSL exports them: its defaults (AES), unencrypted, and legacy.
    let mut exports = vec![
        ("aes.pfx", vec![]),
        ("plain.pfx", vec!["-keypbe", "NONE", "-certpbe", "NONE"]),
    ];
    let legacy = Command::new(openssl)
        .args(["list", "-providers", "-provider", "legacy"])
        .output()
        .is_ok_and(|o| o.status.success());
    if legacy {
        exports.push(("legacy.pfx", vec!["-legacy"]));
    }
    for (file, extra) in exports {
        let mut args = vec![
            "pkcs12", "-export", "-inkey", "k8.pem", "-in", "c.pem", "-passout", "pass:", "-out",
            file,
        ];
        args.extend(extra);
        run(openssl, &args, d);
        let value = base64::engine::general_purpose::STANDARD.encode(read(file));
        let bundle = Bundle::parse(PKCS12_CONTENT_TYPE, value.as_bytes());
        assert!(bundle.is_ok(), "{file}: {:?}", bundle.err());
        if let Ok(bundle) = bundle {
            assert_eq!(bundle.private_key_der(), pkcs8.contents(), "{file}");
            assert_eq!(bundle.certificates().len(), 1, "{file}");
        }
    }
}
