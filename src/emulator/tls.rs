//! TLS material for the emulator: a CA (kept in the state directory) and a server certificate
//! it signs at each start.
//!
//! The CA and the server certificate must differ: rustls (reqwest's TLS) refuses a server
//! certificate marked CA:TRUE (`CaUsedAsEndEntity`). Clients trust the CA (`ca.pem`); the server
//! presents the leaf (CA:FALSE, serverAuth, SAN 127.0.0.1 + localhost). The leaf's issuer is
//! rebuilt from the CA's fixed distinguished name and its stored key, which is all a client
//! holding the old `ca.pem` checks (issuer name, and the signature by the CA's key). The rustls
//! config names the ring provider explicitly, so nothing is installed process-wide.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A CA: its certificate (PEM, for clients) and private key (PEM, secret).
pub struct CaMaterial {
    pub cert_pem: String,
    pub key_pem: String,
}

impl std::fmt::Debug for CaMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CaMaterial { key_pem: <redacted>, .. }")
    }
}

/// The CA lives this many days: a state directory is reused across many starts.
const CA_VALIDITY_DAYS: i64 = 10 * 365;
/// Each start signs a fresh leaf valid for this many days.
const LEAF_VALIDITY_DAYS: i64 = 365;

fn err(what: &str, e: &dyn std::fmt::Display) -> String {
    format!("{what}: {e}")
}

/// Valid from a day ago (clock skew) for `days`.
fn validity(params: &mut CertificateParams, days: i64) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(days);
}

/// The CA's parameters; the distinguished name must stay fixed, leaves name it as issuer.
fn ca_params() -> Result<CertificateParams, String> {
    let mut params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA parameters", &e))?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, "kvfs emulator CA");
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    Ok(params)
}

/// A new self-signed CA.
pub fn generate_ca() -> Result<CaMaterial, String> {
    let mut params = ca_params()?;
    validity(&mut params, CA_VALIDITY_DAYS);
    let key = KeyPair::generate().map_err(|e| err("CA key", &e))?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| err("CA certificate", &e))?;
    Ok(CaMaterial {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A rustls server config presenting a new leaf for `extra_ip` (besides 127.0.0.1 and
/// localhost), signed by `ca`.
pub fn server_config(
    ca: &CaMaterial,
    extra_ip: Option<IpAddr>,
) -> Result<Arc<ServerConfig>, String> {
    let ca_key = KeyPair::from_pem(&ca.key_pem).map_err(|e| err("CA key", &e))?;
    let ca_der = CertificateDer::from_pem_slice(ca.cert_pem.as_bytes())
        .map_err(|e| err("CA certificate", &e))?;
    let issuer = Issuer::new(ca_params()?, ca_key);

    let mut leaf_params = CertificateParams::new(vec!["localhost".to_owned()])
        .map_err(|e| err("server parameters", &e))?;
    let mut ips = vec![IpAddr::from([127, 0, 0, 1])];
    ips.extend(extra_ip.filter(|ip| !ips.contains(ip)));
    leaf_params
        .subject_alt_names
        .extend(ips.into_iter().map(SanType::IpAddress));
    leaf_params.is_ca = IsCa::ExplicitNoCa;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    leaf_params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf_params.use_authority_key_identifier_extension = true;
    validity(&mut leaf_params, LEAF_VALIDITY_DAYS);
    let leaf_key = KeyPair::generate().map_err(|e| err("server key", &e))?;
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| err("server certificate", &e))?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone(), ca_der];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| err("TLS certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_ca_that_signs_a_leaf() {
        let ca = generate_ca();
        assert!(ca.is_ok(), "{:?}", ca.err());
        let Ok(ca) = ca else { return };
        assert!(ca.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(ca.key_pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        let config = server_config(&ca, None);
        assert!(config.is_ok(), "{:?}", config.err());
        if let Ok(config) = config {
            assert_eq!(config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        }
    }

    #[test]
    fn refuses_a_garbled_ca() {
        let garbled = CaMaterial {
            cert_pem: "not a certificate".into(),
            key_pem: "not a key".into(),
        };
        assert!(server_config(&garbled, None).is_err());
    }
}
