//! Sample certificates for tests and demos: a root CA, an intermediate CA and a leaf, in the
//! forms Key Vault keeps a certificate's secret (a base64 PFX with an empty password, or PEM
//! text), to store with [`Vault::set_certificate`](super::Vault::set_certificate).
//!
//! Each chain is new (fresh keys, random serials). The PFX uses what Windows-made PFX files
//! use, 3DES with SHA-1 PBKDF and an HMAC-SHA1 MAC, so readers meet the legacy path too.

use std::fmt;

use base64::Engine as _;
use p12_keystore::{
    Certificate, EncryptionAlgorithm, KeyStore, KeyStoreEntry, MacAlgorithm, PrivateKey,
    PrivateKeyChain,
};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType, SerialNumber, SignatureAlgorithm,
};
use zeroize::Zeroizing;

/// The leaf's key algorithm (the CAs use ECDSA P-384 and P-256).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LeafKey {
    #[default]
    EcdsaP256,
    EcdsaP384,
    Ed25519,
}

impl LeafKey {
    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            LeafKey::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            LeafKey::EcdsaP384 => &rcgen::PKCS_ECDSA_P384_SHA384,
            LeafKey::Ed25519 => &rcgen::PKCS_ED25519,
        }
    }
}

/// A root -> intermediate -> leaf chain and the leaf's private key.
pub struct SampleChain {
    /// The leaf's subject common name (also its DNS SAN).
    pub common_name: String,
    pub root_der: Vec<u8>,
    pub intermediate_der: Vec<u8>,
    pub leaf_der: Vec<u8>,
    /// The leaf's private key, PKCS#8 DER.
    pub key_der: Zeroizing<Vec<u8>>,
}

impl fmt::Debug for SampleChain {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SampleChain")
            .field("common_name", &self.common_name)
            .field("key_der", &"<redacted>")
            .finish_non_exhaustive()
    }
}

fn err(what: &str, e: &dyn fmt::Display) -> String {
    format!("{what}: {e}")
}

fn ca_params(name: &str, path_len: u8) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(|e| err(name, &e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(path_len));
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Valid from a day ago (clock skew) for a year, with a random positive serial.
fn finish(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(365);
    let mut serial = rand::random::<[u8; 16]>();
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
}

impl SampleChain {
    /// A new chain whose leaf is `common_name` (ECDSA P-256).
    pub fn generate(common_name: &str) -> Result<SampleChain, String> {
        Self::generate_with(common_name, LeafKey::default())
    }

    /// A new chain whose leaf has a `leaf_key` key.
    pub fn generate_with(common_name: &str, leaf_key: LeafKey) -> Result<SampleChain, String> {
        let root_name = format!("{common_name} root CA");
        let mut root_params = ca_params(&root_name, 1)?;
        finish(&mut root_params);
        let root_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384)
            .map_err(|e| err("root key", &e))?;
        let root = root_params
            .self_signed(&root_key)
            .map_err(|e| err("root certificate", &e))?;
        let root_issuer = Issuer::new(root_params, root_key);

        let mut mid_params = ca_params(&format!("{common_name} intermediate CA"), 0)?;
        mid_params.use_authority_key_identifier_extension = true;
        finish(&mut mid_params);
        let mid_key = KeyPair::generate().map_err(|e| err("intermediate key", &e))?;
        let mid = mid_params
            .signed_by(&mid_key, &root_issuer)
            .map_err(|e| err("intermediate certificate", &e))?;
        let mid_issuer = Issuer::new(mid_params, mid_key);

        let mut leaf_params = CertificateParams::new(vec![common_name.to_owned()])
            .map_err(|e| err("leaf parameters", &e))?;
        leaf_params
            .subject_alt_names
            .push(SanType::IpAddress([127, 0, 0, 1].into()));
        leaf_params.is_ca = IsCa::ExplicitNoCa;
        leaf_params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        leaf_params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        leaf_params.use_authority_key_identifier_extension = true;
        finish(&mut leaf_params);
        let leaf_key =
            KeyPair::generate_for(leaf_key.algorithm()).map_err(|e| err("leaf key", &e))?;
        let leaf = leaf_params
            .signed_by(&leaf_key, &mid_issuer)
            .map_err(|e| err("leaf certificate", &e))?;

        Ok(SampleChain {
            common_name: common_name.to_owned(),
            root_der: root.der().to_vec(),
            intermediate_der: mid.der().to_vec(),
            leaf_der: leaf.der().to_vec(),
            key_der: Zeroizing::new(leaf_key.serialize_der()),
        })
    }

    /// Leaf, intermediate, root (DER).
    pub fn certificates(&self) -> [&[u8]; 3] {
        [&self.leaf_der, &self.intermediate_der, &self.root_der]
    }

    /// An `application/x-pem-file` value: the key (PKCS#8), then leaf, intermediate, root.
    pub fn pem(&self) -> String {
        let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
        let key = pem::Pem::new("PRIVATE KEY", self.key_der.as_slice());
        let mut text = pem::encode_config(&key, config);
        for der in self.certificates() {
            text.push_str(&pem::encode_config(
                &pem::Pem::new("CERTIFICATE", der),
                config,
            ));
        }
        text
    }

    /// A PFX with `password` (empty for Key Vault's): key and chain, 3DES, HMAC-SHA1 MAC.
    pub fn pfx(&self, password: &str) -> Result<Vec<u8>, String> {
        self.pfx_with(password, EncryptionAlgorithm::PbeWithShaAnd3KeyTripleDesCbc)
    }

    /// A PFX with `password`, key and certificates encrypted with `algorithm`.
    pub fn pfx_with(
        &self,
        password: &str,
        algorithm: EncryptionAlgorithm,
    ) -> Result<Vec<u8>, String> {
        let key = PrivateKey::from_der(&self.key_der).map_err(|e| err("PKCS#8 key", &e))?;
        let certs = self
            .certificates()
            .into_iter()
            .map(Certificate::from_der)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| err("certificate", &e))?;
        let mut store = KeyStore::new();
        store.add_entry(
            &self.common_name,
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(
                self.common_name.as_str(),
                key,
                certs,
            )),
        );
        store
            .writer(password)
            .encryption_algorithm(algorithm)
            .encryption_iterations(2000)
            .mac_algorithm(MacAlgorithm::HmacSha1)
            .mac_iterations(2000)
            .write()
            .map_err(|e| err("PKCS#12", &e))
    }

    /// An `application/x-pkcs12` value: the base64 of [`SampleChain::pfx`] with an empty
    /// password.
    pub fn pfx_base64(&self) -> Result<String, String> {
        let pfx = self.pfx("")?;
        Ok(base64::engine::general_purpose::STANDARD.encode(pfx))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::Vault;
    use crate::views::cert::{PEM_CONTENT_TYPE, PKCS12_CONTENT_TYPE};

    #[test]
    fn a_sample_chain_in_both_forms_is_stored_as_a_managed_certificate() {
        let chain = SampleChain::generate("web.example");
        assert!(chain.is_ok(), "{:?}", chain.err());
        let Ok(chain) = chain else { return };
        assert!(chain.pem().starts_with("-----BEGIN PRIVATE KEY-----\n"));
        assert_eq!(chain.pem().matches("BEGIN CERTIFICATE").count(), 3);
        let pfx = chain.pfx_base64();
        assert!(pfx.is_ok(), "{:?}", pfx.err());
        let vault = Vault::new();
        vault.set_certificate("web-pfx", &pfx.unwrap_or_default(), PKCS12_CONTENT_TYPE);
        vault.set_certificate("web-pem", &chain.pem(), PEM_CONTENT_TYPE);
        for (name, content_type) in [
            ("web-pfx", PKCS12_CONTENT_TYPE),
            ("web-pem", PEM_CONTENT_TYPE),
        ] {
            let (versions, _) = vault.versions_page(name, 0, 25);
            let latest = versions.last().map(|i| i.version.clone());
            assert_eq!(
                latest.map(|v| (v.content_type, v.managed)),
                Some((Some(content_type.to_owned()), true)),
                "{name}"
            );
        }
        assert!(!format!("{chain:?}").contains("BEGIN"));
    }
}
