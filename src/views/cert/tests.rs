use super::*;

#[test]
fn view_suffixes_and_file_names() {
    let suffixes: Vec<_> = CertView::ALL.iter().map(|v| v.suffix()).collect();
    assert_eq!(suffixes, [".pem", ".crt", ".key", ".pfx"]);
    let cases = [
        ("web-tls.pem", Some(("web-tls", CertView::Pem))),
        ("web-tls.crt", Some(("web-tls", CertView::Crt))),
        ("web-tls.key", Some(("web-tls", CertView::Key))),
        ("web-tls.pfx", Some(("web-tls", CertView::Pfx))),
        ("web-tls", None),
        (".pem", None),
        ("web-tls.PEM", None),
        ("web-tls.pem.swp", None),
    ];
    for (name, want) in cases {
        assert_eq!(CertView::split(name), want, "{name}");
    }
    let private: Vec<_> = CertView::ALL.map(CertView::has_private_key).to_vec();
    assert_eq!(private, [true, false, true, true]);
}

#[test]
fn certificate_content_types() {
    let cases = [
        (Some("application/x-pkcs12"), true),
        (Some("application/x-pem-file"), true),
        (Some(" Application/X-PKCS12 "), true),
        (Some("application/pkcs12"), false),
        (Some("text/plain"), false),
        (Some(""), false),
        (None, false),
    ];
    for (content_type, want) in cases {
        assert_eq!(is_certificate(content_type), want, "{content_type:?}");
    }
}

/// A PEM block with `label` around `body`, which need not be DER.
fn block(label: &str, body: &[u8]) -> String {
    pem::encode_config(&pem::Pem::new(label, body), pem_config())
}

#[test]
fn garbage_is_refused_with_a_reason() {
    let not_der = block("CERTIFICATE", b"not DER");
    let key_only = block("PRIVATE KEY", b"not a key either");
    let cases: Vec<(&str, Vec<u8>, CertError)> = vec![
        ("text/plain", b"x".to_vec(), CertError::NotACertificate),
        (
            PKCS12_CONTENT_TYPE,
            b"not base64!".to_vec(),
            CertError::NotBase64,
        ),
        (
            PKCS12_CONTENT_TYPE,
            b"".to_vec(),
            CertError::Pkcs12Malformed,
        ),
        (
            PKCS12_CONTENT_TYPE,
            b"aGVsbG8gd29ybGQ=".to_vec(),
            CertError::Pkcs12Malformed,
        ),
        (PEM_CONTENT_TYPE, b"hello".to_vec(), CertError::NotPem),
        (PEM_CONTENT_TYPE, b"".to_vec(), CertError::NotPem),
        (
            PEM_CONTENT_TYPE,
            b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n".to_vec(),
            CertError::NotPem,
        ),
        (
            PEM_CONTENT_TYPE,
            not_der.clone().into_bytes(),
            CertError::NoPrivateKey,
        ),
        (
            PEM_CONTENT_TYPE,
            key_only.clone().into_bytes(),
            CertError::BadPrivateKey,
        ),
        (
            PEM_CONTENT_TYPE,
            block("ENCRYPTED PRIVATE KEY", b"x").into_bytes(),
            CertError::EncryptedPrivateKey,
        ),
        (
            PEM_CONTENT_TYPE,
            block("EC PRIVATE KEY", b"x").into_bytes(),
            CertError::UnsupportedKeyFormat("EC PRIVATE KEY (SEC1)"),
        ),
        (
            PEM_CONTENT_TYPE,
            format!("{key_only}{key_only}").into_bytes(),
            CertError::SeveralPrivateKeys,
        ),
    ];
    for (content_type, value, want) in cases {
        let got = Bundle::parse(content_type, &value).err();
        assert_eq!(
            got,
            Some(want),
            "{content_type} {:?}",
            String::from_utf8_lossy(&value)
        );
        let rendered = render(CertView::Crt, content_type, &value).err();
        assert_eq!(rendered, Some(want));
    }
}

#[test]
fn encrypted_legacy_pem_key_is_refused() {
    let mut key = pem::Pem::new("RSA PRIVATE KEY", b"x".as_slice());
    assert!(key.headers_mut().add("Proc-Type", "4,ENCRYPTED").is_ok());
    assert!(key.headers_mut().add("DEK-Info", "AES-128-CBC,00").is_ok());
    let value = pem::encode(&key);
    assert_eq!(
        Bundle::from_pem(value.as_bytes()).err(),
        Some(CertError::EncryptedPrivateKey)
    );
}

/// A certificate for ordering tests: names only, no DER.
fn cert(name: &str, issuer: &str) -> Cert {
    // Names equal by text only when their DER differs: `~x` stands for `x` encoded otherwise.
    let name_of = |n: &str| Name {
        der: n.as_bytes().to_vec(),
        text: n.trim_start_matches('~').to_owned(),
    };
    Cert {
        der: name.as_bytes().to_vec(),
        subject: name_of(name),
        issuer: name_of(issuer),
        public_key: format!("{name} key").into_bytes(),
    }
}

fn names(certs: &[Cert]) -> Vec<String> {
    certs
        .iter()
        .map(|c| String::from_utf8_lossy(&c.der).into_owned())
        .collect()
}

#[test]
fn chain_order_follows_issuers_and_keeps_strangers_last() {
    // (certificates as (subject, issuer), the key's owner or None, the order wanted)
    type Case<'a> = (Vec<(&'a str, &'a str)>, Option<&'a str>, Vec<&'a str>);
    let cases: Vec<Case> = vec![
        (
            vec![("root", "root"), ("leaf", "mid"), ("mid", "root")],
            Some("leaf"),
            vec!["leaf", "mid", "root"],
        ),
        (
            vec![
                ("x", "y"),
                ("root", "root"),
                ("mid", "root"),
                ("leaf", "mid"),
                ("z", "z"),
            ],
            Some("leaf"),
            vec!["leaf", "mid", "root", "x", "z"],
        ),
        // No root in the bundle: the chain stops at the last issuer it has.
        (
            vec![("mid", "root"), ("leaf", "mid")],
            Some("leaf"),
            vec!["leaf", "mid"],
        ),
        // A self-signed leaf alone.
        (vec![("leaf", "leaf")], Some("leaf"), vec!["leaf"]),
        // Without the key's public key: the first that issued no other is the leaf.
        (
            vec![("root", "root"), ("mid", "root"), ("leaf", "mid")],
            None,
            vec!["leaf", "mid", "root"],
        ),
        // An issuer spelled with other string types than its CA's subject still chains.
        (
            vec![("root", "root"), ("leaf", "~mid"), ("mid", "~root")],
            Some("leaf"),
            vec!["leaf", "mid", "root"],
        ),
        // A loop ends when it comes back.
        (vec![("a", "b"), ("b", "a")], Some("a"), vec!["a", "b"]),
        (vec![("a", "b"), ("b", "a")], None, vec!["a", "b"]),
    ];
    for (input, owner, want) in cases {
        let certs: Vec<Cert> = input.iter().map(|(s, i)| cert(s, i)).collect();
        let public = owner.map(|o| format!("{o} key").into_bytes());
        let leaf = find_leaf(&certs, public.as_deref());
        assert!(leaf.is_ok(), "{input:?}");
        let ordered = order_chain(certs, leaf.unwrap_or_default());
        assert_eq!(names(&ordered), want, "{input:?}");
    }
    let certs = vec![cert("leaf", "mid")];
    assert_eq!(
        find_leaf(&certs, Some(b"another key")).err(),
        Some(CertError::KeyMismatch)
    );
}

#[cfg(feature = "emulator")]
mod chains;
