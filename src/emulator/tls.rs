//! TLS material for the emulator: a throwaway CA and a server certificate it signs.
//!
//! The CA and the server certificate must differ: rustls (reqwest's TLS) refuses a server
//! certificate marked CA:TRUE (`CaUsedAsEndEntity`). Clients trust the CA (written to
//! `ca.pem`); the server presents the leaf (CA:FALSE, serverAuth, SAN 127.0.0.1 + localhost).
//! The rustls config names the ring provider explicitly, so nothing is installed process-wide.

use std::net::IpAddr;
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::ServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// The generated CA (as PEM, for clients) and the server's rustls config.
pub struct TlsMaterial {
    pub ca_pem: String,
    pub server_config: Arc<ServerConfig>,
}

/// Certificates are valid from a day ago (clock skew) for this many days.
const VALIDITY_DAYS: i64 = 365;

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(VALIDITY_DAYS);
}

/// Generates a CA and a leaf for `extra_ip` (besides 127.0.0.1 and localhost).
pub fn generate(extra_ip: Option<IpAddr>) -> Result<TlsMaterial, String> {
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");

    let mut ca_params =
        CertificateParams::new(Vec::<String>::new()).map_err(|e| err("CA parameters", &e))?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "kvfs emulator CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    validity(&mut ca_params);
    let ca_key = KeyPair::generate().map_err(|e| err("CA key", &e))?;
    let ca_cert = ca_params
        .self_signed(&ca_key)
        .map_err(|e| err("CA certificate", &e))?;
    let issuer = Issuer::new(ca_params, ca_key);

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
    validity(&mut leaf_params);
    let leaf_key = KeyPair::generate().map_err(|e| err("server key", &e))?;
    let leaf_cert = leaf_params
        .signed_by(&leaf_key, &issuer)
        .map_err(|e| err("server certificate", &e))?;

    let chain: Vec<CertificateDer<'static>> = vec![leaf_cert.der().clone(), ca_cert.der().clone()];
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| err("TLS versions", &e))?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| err("TLS certificate", &e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsMaterial {
        ca_pem: ca_cert.pem(),
        server_config: Arc::new(config),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_distinct_ca_and_leaf() {
        let material = generate(None);
        assert!(material.is_ok(), "{:?}", material.err());
        if let Ok(m) = material {
            assert!(m.ca_pem.starts_with("-----BEGIN CERTIFICATE-----"));
            assert_eq!(m.server_config.alpn_protocols, vec![b"http/1.1".to_vec()]);
        }
    }
}
