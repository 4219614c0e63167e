//! Certificate-backed secrets through the wire: the emulator holds a chain as Key Vault does
//! (a base64 PFX or PEM text, `contentType`, `managed`), kvfs's `KeyVaultStore` reads it with
//! the official SDK, and the certificate views render from what arrived.

mod common;

use std::sync::Arc;
use std::time::Duration;

use kvfs::auth::{AuthConfig, AuthMode, RenewableCredential};
use kvfs::emulator::{Emulator, EmulatorConfig, SampleChain};
use kvfs::secret::SecretName;
use kvfs::store::SecretStore;
use kvfs::store::keyvault::{KeyVaultConfig, KeyVaultStore};
use kvfs::views::cert::{Bundle, CertView, PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE, is_certificate};

#[test]
fn certificate_secrets_arrive_with_their_content_type_and_render() {
    common::require_loopback_only();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let emulator = rt
        .block_on(Emulator::start(EmulatorConfig::new(dir.path().join("emu"))))
        .expect("emulator starts");
    let chain = SampleChain::generate("web.example").expect("sample chain");
    let vault = emulator.vault();
    vault.set_certificate(
        "web-pfx",
        &chain.pfx_base64().expect("PFX"),
        PKCS12_CONTENT_TYPE,
    );
    vault.set_certificate("web-pem", &chain.pem(), PEM_CONTENT_TYPE);
    vault.set_secret("plain", "not a certificate");

    let transport = kvfs::transport::build(&kvfs::transport::TransportConfig {
        ca_file: Some(emulator.ca_path().to_owned()),
        imds_endpoint: Some(emulator.imds_endpoint().parse().expect("IMDS URL")),
        connect_timeout: Duration::from_secs(5),
        request_timeout: Duration::from_secs(30),
        budget: None,
    })
    .expect("transport");
    let auth = AuthConfig {
        mode: AuthMode::ManagedIdentity,
        user_assigned: None,
        federated_token_file_set: false,
    };
    let credential = Arc::new(RenewableCredential::new(&auth, &transport).expect("credential"));
    let config = KeyVaultConfig {
        vault_url: emulator.vault_url(),
        verify_challenge_resource: false,
    };
    let store = KeyVaultStore::new(&config, credential, &transport).expect("store");

    let listing = rt.block_on(store.list()).expect("list");
    let mut listed: Vec<(String, Option<String>)> = listing
        .iter()
        .map(|p| (p.name.as_str().to_owned(), p.content_type.clone()))
        .collect();
    listed.sort();
    assert_eq!(
        listed,
        [
            ("plain".to_owned(), None),
            ("web-pem".to_owned(), Some(PEM_CONTENT_TYPE.to_owned())),
            ("web-pfx".to_owned(), Some(PKCS12_CONTENT_TYPE.to_owned())),
        ]
    );

    let want_crt: Vec<u8> = chain
        .certificates()
        .iter()
        .flat_map(|der| {
            pem::encode_config(
                &pem::Pem::new("CERTIFICATE", *der),
                pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
            )
            .into_bytes()
        })
        .collect();
    for (name, content_type) in [
        ("web-pfx", PKCS12_CONTENT_TYPE),
        ("web-pem", PEM_CONTENT_TYPE),
    ] {
        let secret = rt
            .block_on(store.get(&SecretName::parse(name).expect("name")))
            .expect("GET");
        let got_type = secret.properties.content_type.as_deref();
        assert_eq!(got_type, Some(content_type), "{name}");
        assert!(is_certificate(got_type));
        let bundle = Bundle::parse(content_type, secret.value.as_bytes()).expect("bundle");
        assert_eq!(bundle.private_key_der(), chain.key_der.as_slice(), "{name}");
        let crt = bundle.render(CertView::Crt).expect(".crt");
        assert_eq!(crt.as_slice(), want_crt.as_slice(), "{name}");
    }
    let plain = rt
        .block_on(store.get(&SecretName::parse("plain").expect("name")))
        .expect("GET");
    assert!(!is_certificate(plain.properties.content_type.as_deref()));
    rt.block_on(emulator.shutdown());
}
