//! Certificate views: the files kvfs can show beside a certificate-backed secret.
//!
//! Key Vault keeps a certificate's private key and chain as a secret whose content type is
//! `application/x-pkcs12` (the value: a base64 PFX with an empty password) or
//! `application/x-pem-file` (PEM text: a private key and certificates, in any order). Servers
//! want them in other shapes: nginx a `.crt` and a `.key`, HAProxy one `.pem`, .NET or Java a
//! `.pfx`. [`Bundle::parse`] reads either form once; [`Bundle::render`] makes each view:
//!
//! | view   | content                                                              |
//! |--------|----------------------------------------------------------------------|
//! | `.pem` | the private key (PKCS#8 PEM), then the chain                         |
//! | `.crt` | the chain, PEM, leaf first                                           |
//! | `.key` | the private key, PKCS#8 PEM (`BEGIN PRIVATE KEY`)                    |
//! | `.pfx` | PKCS#12, empty password: the secret's own bytes for a PKCS#12 secret,|
//! |        | built from key and chain for a PEM secret                            |
//!
//! The leaf is the certificate whose public key is the private key's. When `ring` cannot
//! derive the public key (an algorithm it lacks, such as P-521 or RSA under 2048 bits), the
//! leaf is the first certificate that issued no other. From the leaf the chain follows names:
//! the next certificate is the one whose subject is the current one's issuer (same DER, or
//! the same text when only string types differ), up to a self-issued root; certificates that do not chain come last, in their original order. A key
//! that matches none of the certificates is an error, not a guess.
//!
//! Secrecy: a [`CertError`] names a reason, never the value or any part of it, and no type
//! here prints key bytes in `Debug`. Buffers of ours that hold key material are `Zeroizing`;
//! what the crates allocate inside (p12-keystore's decrypted bags, pem's encoder) is wiped
//! when freed by the process's zero-on-free allocator (see `hardening`).

use std::fmt;

use base64::Engine as _;
use p12_keystore::{KeyStore, KeyStoreEntry, Pkcs12Archive, PrivateKeyChain};
use pkcs8::der::Encode as _;
use pkcs8::der::asn1::{AnyRef, OctetStringRef};
use zeroize::Zeroizing;

/// Content type of a certificate kept as a base64 PFX.
pub const PKCS12_CONTENT_TYPE: &str = "application/x-pkcs12";
/// Content type of a certificate kept as PEM text.
pub const PEM_CONTENT_TYPE: &str = "application/x-pem-file";

/// PBKDF iterations of a PFX built here: OpenSSL's default (`PKCS12_DEFAULT_ITER`). The
/// password is empty, so more would only cost time at each render.
const PFX_ITERATIONS: u32 = 2048;

/// `rsaEncryption`, the algorithm a PKCS#1 key gets when wrapped in PKCS#8.
const RSA_ENCRYPTION: pkcs8::ObjectIdentifier =
    pkcs8::ObjectIdentifier::new_unwrap("1.2.840.113549.1.1.1");

/// One file derived from a certificate-backed secret.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum CertView {
    /// Private key and chain, PEM.
    Pem,
    /// The chain, PEM, leaf first.
    Crt,
    /// The private key, PKCS#8 PEM.
    Key,
    /// PKCS#12 with an empty password.
    Pfx,
}

impl CertView {
    /// Every view, in the order a listing shows them.
    pub const ALL: [CertView; 4] = [CertView::Pem, CertView::Crt, CertView::Key, CertView::Pfx];

    /// The file name suffix, dot included: `.pem`, `.crt`, `.key`, `.pfx`.
    pub fn suffix(self) -> &'static str {
        match self {
            CertView::Pem => ".pem",
            CertView::Crt => ".crt",
            CertView::Key => ".key",
            CertView::Pfx => ".pfx",
        }
    }

    /// Whether the view holds the private key (all but `.crt`).
    pub fn has_private_key(self) -> bool {
        match self {
            CertView::Pem | CertView::Key | CertView::Pfx => true,
            CertView::Crt => false,
        }
    }

    /// Splits a file name into the secret's name and the view: `web-tls.pem` is
    /// (`web-tls`, `Pem`). `None` when the name has no view suffix or nothing before it.
    /// Secret names cannot hold a dot, so a suffix is never part of a name.
    pub fn split(file_name: &str) -> Option<(&str, CertView)> {
        CertView::ALL.into_iter().find_map(|view| {
            file_name
                .strip_suffix(view.suffix())
                .filter(|base| !base.is_empty())
                .map(|base| (base, view))
        })
    }
}

/// How a certificate-backed secret holds its value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `application/x-pkcs12`: a base64 PFX, empty password.
    Pkcs12,
    /// `application/x-pem-file`: PEM text.
    Pem,
}

impl Format {
    /// The format a content type names; `None` for anything but the two certificate types
    /// (compared without case, surrounding spaces ignored).
    pub fn from_content_type(content_type: &str) -> Option<Format> {
        let content_type = content_type.trim();
        if content_type.eq_ignore_ascii_case(PKCS12_CONTENT_TYPE) {
            Some(Format::Pkcs12)
        } else if content_type.eq_ignore_ascii_case(PEM_CONTENT_TYPE) {
            Some(Format::Pem)
        } else {
            None
        }
    }
}

/// Whether a secret with this content type is a certificate kvfs can show views of.
pub fn is_certificate(content_type: Option<&str>) -> bool {
    content_type.and_then(Format::from_content_type).is_some()
}

/// Why a secret's value gives no certificate views. Only a reason: never the value, a part
/// of it, or a message from a parser that could quote it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum CertError {
    #[error("the content type is not application/x-pkcs12 or application/x-pem-file")]
    NotACertificate,
    #[error("PKCS#12: the value is not base64")]
    NotBase64,
    #[error("PKCS#12: malformed")]
    Pkcs12Malformed,
    #[error("PKCS#12: bad MAC (a password is set?)")]
    Pkcs12BadMac,
    #[error("PKCS#12: cannot decrypt (a password is set?)")]
    Pkcs12Decrypt,
    #[error("PKCS#12: unsupported encryption or MAC algorithm")]
    Pkcs12Unsupported,
    #[error("PKCS#12: cannot build the file")]
    Pkcs12Build,
    #[error("PEM: no PEM block, or a malformed one")]
    NotPem,
    #[error("no private key")]
    NoPrivateKey,
    #[error("more than one private key")]
    SeveralPrivateKeys,
    #[error("the private key is encrypted")]
    EncryptedPrivateKey,
    #[error("unsupported private key format {0} (PKCS#8 and PKCS#1 RSA are supported)")]
    UnsupportedKeyFormat(&'static str),
    #[error("the private key is not valid PKCS#8")]
    BadPrivateKey,
    #[error("no certificate")]
    NoCertificate,
    /// The position counts from 1, in the value's order.
    #[error("certificate {0} does not parse")]
    BadCertificate(usize),
    #[error("no certificate matches the private key")]
    KeyMismatch,
}

/// A distinguished name: its DER, and its text for names that differ only in how they are
/// encoded (an issuer written as PrintableString, the CA's subject as UTF8String).
#[derive(Clone, PartialEq, Eq)]
struct Name {
    der: Vec<u8>,
    text: String,
}

impl Name {
    fn new(name: &x509_parser::x509::X509Name<'_>) -> Name {
        Name {
            der: name.as_raw().to_vec(),
            text: name.to_string(),
        }
    }

    fn same_as(&self, other: &Name) -> bool {
        self.der == other.der || self.text == other.text
    }
}

/// A parsed certificate: DER and what ordering needs.
struct Cert {
    der: Vec<u8>,
    subject: Name,
    issuer: Name,
    /// The subjectPublicKey bits: an RSAPublicKey, an EC point, 32 Ed25519 bytes.
    public_key: Vec<u8>,
}

impl Cert {
    /// `position` counts from 1 and only names the certificate in an error.
    fn parse(der: Vec<u8>, position: usize) -> Result<Cert, CertError> {
        let (subject, issuer, public_key) = {
            let (_, cert) = x509_parser::parse_x509_certificate(&der)
                .map_err(|_| CertError::BadCertificate(position))?;
            (
                Name::new(cert.subject()),
                Name::new(cert.issuer()),
                cert.public_key().subject_public_key.data.to_vec(),
            )
        };
        Ok(Cert {
            der,
            subject,
            issuer,
            public_key,
        })
    }

    fn is_self_issued(&self) -> bool {
        self.subject.same_as(&self.issuer)
    }
}

/// A certificate-backed secret, parsed once: every view renders from it.
pub struct Bundle {
    format: Format,
    /// PKCS#8 DER.
    key: Zeroizing<Vec<u8>>,
    /// DER, leaf first, then the chain by issuer, then what does not chain.
    chain: Vec<Vec<u8>>,
    /// The decoded PFX of a PKCS#12 secret (its `.pfx` view); `None` for PEM.
    pfx: Option<Zeroizing<Vec<u8>>>,
}

impl fmt::Debug for Bundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bundle")
            .field("format", &self.format)
            .field("certificates", &self.chain.len())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl Bundle {
    /// Parses a secret's value as its content type says. `NotACertificate` for any other
    /// content type.
    pub fn parse(content_type: &str, value: &[u8]) -> Result<Bundle, CertError> {
        match Format::from_content_type(content_type) {
            Some(Format::Pkcs12) => Self::from_pkcs12_base64(value),
            Some(Format::Pem) => Self::from_pem(value),
            None => Err(CertError::NotACertificate),
        }
    }

    /// A base64 PFX with an empty password, as Key Vault returns `application/x-pkcs12`
    /// secrets. Whitespace in the base64 text is ignored.
    pub fn from_pkcs12_base64(value: &[u8]) -> Result<Bundle, CertError> {
        let text: Zeroizing<Vec<u8>> = Zeroizing::new(
            value
                .iter()
                .copied()
                .filter(|b| !b.is_ascii_whitespace())
                .collect(),
        );
        let engine = base64::engine::general_purpose::STANDARD;
        // Room for all of it up front: a Vec that grows leaves unwiped copies behind.
        let mut pfx = Zeroizing::new(Vec::with_capacity(base64::decoded_len_estimate(text.len())));
        engine
            .decode_vec(text.as_slice(), &mut pfx)
            .map_err(|_| CertError::NotBase64)?;
        Self::from_pkcs12(pfx)
    }

    /// A PFX (DER) with an empty password.
    pub fn from_pkcs12(pfx: Zeroizing<Vec<u8>>) -> Result<Bundle, CertError> {
        let archive = Pkcs12Archive::from_pkcs12(&pfx, "").map_err(pkcs12_error)?;
        let mut keys = archive.keys.into_iter();
        let key = keys.next().ok_or(CertError::NoPrivateKey)?;
        if keys.next().is_some() {
            return Err(CertError::SeveralPrivateKeys);
        }
        let key = Zeroizing::new(key.key.as_der().to_vec());
        let certs = archive
            .certs
            .into_iter()
            .map(|bag| bag.cert.as_der().to_vec());
        let chain = chain_for_key(&key, certs)?;
        Ok(Bundle {
            format: Format::Pkcs12,
            key,
            chain,
            pfx: Some(pfx),
        })
    }

    /// PEM text holding one private key (PKCS#8, or PKCS#1 RSA) and certificates, in any
    /// order. Other blocks (`EC PARAMETERS`, a CRL) and text between blocks are ignored.
    pub fn from_pem(value: &[u8]) -> Result<Bundle, CertError> {
        let blocks = pem::parse_many(value).map_err(|_| CertError::NotPem)?;
        if blocks.is_empty() {
            return Err(CertError::NotPem);
        }
        let mut key: Option<Zeroizing<Vec<u8>>> = None;
        let mut certs = Vec::new();
        for block in blocks {
            let encrypted = block
                .headers()
                .get("Proc-Type")
                .is_some_and(|v| v.contains("ENCRYPTED"));
            let found = match block.tag() {
                "CERTIFICATE" => {
                    certs.push(block.into_contents());
                    continue;
                }
                "PRIVATE KEY" if !encrypted => Zeroizing::new(block.into_contents()),
                "RSA PRIVATE KEY" if !encrypted => {
                    pkcs1_to_pkcs8(&Zeroizing::new(block.into_contents()))?
                }
                "ENCRYPTED PRIVATE KEY" | "PRIVATE KEY" | "RSA PRIVATE KEY" => {
                    return Err(CertError::EncryptedPrivateKey);
                }
                "EC PRIVATE KEY" => {
                    return Err(CertError::UnsupportedKeyFormat("EC PRIVATE KEY (SEC1)"));
                }
                "DSA PRIVATE KEY" => return Err(CertError::UnsupportedKeyFormat("DSA")),
                "OPENSSH PRIVATE KEY" => return Err(CertError::UnsupportedKeyFormat("OpenSSH")),
                _ => continue,
            };
            if key.replace(found).is_some() {
                return Err(CertError::SeveralPrivateKeys);
            }
        }
        let key = key.ok_or(CertError::NoPrivateKey)?;
        if p12_keystore::PrivateKey::from_der(&key).is_err() {
            return Err(CertError::BadPrivateKey);
        }
        let chain = chain_for_key(&key, certs)?;
        Ok(Bundle {
            format: Format::Pem,
            key,
            chain,
            pfx: None,
        })
    }

    /// How the secret held its value.
    pub fn format(&self) -> Format {
        self.format
    }

    /// The certificates, DER, in the views' order: leaf, chain by issuer, the rest.
    pub fn certificates(&self) -> &[Vec<u8>] {
        &self.chain
    }

    /// The leaf certificate, DER.
    pub fn leaf(&self) -> &[u8] {
        self.chain.first().map(Vec::as_slice).unwrap_or_default()
    }

    /// The private key, PKCS#8 DER.
    pub fn private_key_der(&self) -> &[u8] {
        &self.key
    }

    /// One view's bytes. A `.pfx` built from a PEM secret gets fresh salts at each call
    /// (same size, other bytes): render it once and keep the result.
    pub fn render(&self, view: CertView) -> Result<Zeroizing<Vec<u8>>, CertError> {
        match view {
            CertView::Key => Ok(self.key_pem()),
            CertView::Crt => Ok(self.chain_pem()),
            CertView::Pem => {
                let (key, chain) = (self.key_pem(), self.chain_pem());
                // Sized once: a Vec that grows leaves copies of the key behind.
                let mut out = Zeroizing::new(Vec::with_capacity(key.len() + chain.len()));
                out.extend_from_slice(&key);
                out.extend_from_slice(&chain);
                Ok(out)
            }
            CertView::Pfx => match &self.pfx {
                Some(pfx) => Ok(pfx.clone()),
                None => self.build_pfx(),
            },
        }
    }

    fn key_pem(&self) -> Zeroizing<Vec<u8>> {
        let block = pem::Pem::new("PRIVATE KEY", self.key.as_slice());
        Zeroizing::new(pem::encode_config(&block, pem_config()).into_bytes())
    }

    /// Blocks one after the other, no blank line between (pem's `encode_many` puts one).
    fn chain_pem(&self) -> Zeroizing<Vec<u8>> {
        let text: String = self
            .chain
            .iter()
            .map(|der| {
                pem::encode_config(&pem::Pem::new("CERTIFICATE", der.as_slice()), pem_config())
            })
            .collect();
        Zeroizing::new(text.into_bytes())
    }

    /// PKCS#12 with an empty password: OpenSSL 3's defaults (AES-256-CBC with PBKDF2-SHA256
    /// for key and certificates, an HMAC-SHA256 MAC), the leaf's SHA-1 as local key id, as
    /// `openssl pkcs12 -export` sets it.
    fn build_pfx(&self) -> Result<Zeroizing<Vec<u8>>, CertError> {
        let key =
            p12_keystore::PrivateKey::from_der(&self.key).map_err(|_| CertError::BadPrivateKey)?;
        let certs = self
            .chain
            .iter()
            .map(|der| p12_keystore::Certificate::from_der(der))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| CertError::Pkcs12Build)?;
        let alias = certs
            .first()
            .map(|c| c.subject().to_owned())
            .ok_or(CertError::NoCertificate)?;
        let key_id = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, self.leaf())
            .as_ref()
            .to_vec();
        let mut store = KeyStore::new();
        store.add_entry(
            &alias,
            KeyStoreEntry::PrivateKeyChain(PrivateKeyChain::new(key_id, key, certs)),
        );
        let der = store
            .writer("")
            .encryption_iterations(PFX_ITERATIONS)
            .mac_iterations(PFX_ITERATIONS)
            .write()
            .map_err(|_| CertError::Pkcs12Build)?;
        Ok(Zeroizing::new(der))
    }
}

/// Parses `value` and renders one view: [`Bundle::parse`] then [`Bundle::render`]. To show
/// several views of one secret, parse once and render each from the bundle.
pub fn render(
    view: CertView,
    content_type: &str,
    value: &[u8],
) -> Result<Zeroizing<Vec<u8>>, CertError> {
    Bundle::parse(content_type, value)?.render(view)
}

fn pem_config() -> pem::EncodeConfig {
    pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF)
}

/// p12-keystore's error, reduced to a reason (its messages are not ours to vouch for).
fn pkcs12_error(e: p12_keystore::error::Error) -> CertError {
    use p12_keystore::error::Error;
    match e {
        Error::MacError(_) => CertError::Pkcs12BadMac,
        Error::UnpadError | Error::Pkcs5Error(_) => CertError::Pkcs12Decrypt,
        Error::UnsupportedEncryptionScheme
        | Error::UnsupportedMacAlgorithm
        | Error::UnsupportedContentType
        | Error::UnsupportedCertificateType => CertError::Pkcs12Unsupported,
        Error::InvalidPrivateKey => CertError::BadPrivateKey,
        Error::IoError(_)
        | Error::DerError(_)
        | Error::InvalidVersion
        | Error::X509Error(_)
        | Error::InvalidLength
        | Error::InvalidParameters
        | Error::InvalidData => CertError::Pkcs12Malformed,
    }
}

/// Wraps a PKCS#1 RSAPrivateKey in PKCS#8 (`rsaEncryption`, NULL parameters).
fn pkcs1_to_pkcs8(pkcs1: &[u8]) -> Result<Zeroizing<Vec<u8>>, CertError> {
    let algorithm = pkcs8::AlgorithmIdentifierRef {
        oid: RSA_ENCRYPTION,
        parameters: Some(AnyRef::NULL),
    };
    let private_key = OctetStringRef::new(pkcs1).map_err(|_| CertError::BadPrivateKey)?;
    let info = pkcs8::PrivateKeyInfoRef::new(algorithm, private_key);
    let len = info
        .encoded_len()
        .ok()
        .and_then(|len| usize::try_from(u32::from(len)).ok())
        .ok_or(CertError::BadPrivateKey)?;
    let mut out = Zeroizing::new(vec![0; len]);
    info.encode_to_slice(&mut out)
        .map_err(|_| CertError::BadPrivateKey)?;
    Ok(out)
}

/// The public key a PKCS#8 private key belongs to, in the form a certificate's
/// subjectPublicKey holds it; `None` for an algorithm (or a key) ring does not take.
fn public_key_of(pkcs8: &[u8]) -> Option<Vec<u8>> {
    use ring::signature::{self, KeyPair as _};
    if let Ok(key) = signature::RsaKeyPair::from_pkcs8(pkcs8) {
        return Some(key.public_key().as_ref().to_vec());
    }
    let rng = ring::rand::SystemRandom::new();
    for alg in [
        &signature::ECDSA_P256_SHA256_ASN1_SIGNING,
        &signature::ECDSA_P384_SHA384_ASN1_SIGNING,
    ] {
        if let Ok(key) = signature::EcdsaKeyPair::from_pkcs8(alg, pkcs8, &rng) {
            return Some(key.public_key().as_ref().to_vec());
        }
    }
    signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(pkcs8)
        .ok()
        .map(|key| key.public_key().as_ref().to_vec())
}

/// Parses the certificates (duplicates dropped) and orders them for `key`.
fn chain_for_key(
    key: &[u8],
    ders: impl IntoIterator<Item = Vec<u8>>,
) -> Result<Vec<Vec<u8>>, CertError> {
    let mut certs: Vec<Cert> = Vec::new();
    for (i, der) in ders.into_iter().enumerate() {
        if certs.iter().any(|c| c.der == der) {
            continue;
        }
        certs.push(Cert::parse(der, i + 1)?);
    }
    if certs.is_empty() {
        return Err(CertError::NoCertificate);
    }
    let leaf = find_leaf(&certs, public_key_of(key).as_deref())?;
    Ok(order_chain(certs, leaf)
        .into_iter()
        .map(|c| c.der)
        .collect())
}

/// The leaf's index: the certificate of `key_public` when known, else the first certificate
/// that issued no other one.
fn find_leaf(certs: &[Cert], key_public: Option<&[u8]>) -> Result<usize, CertError> {
    if let Some(public) = key_public {
        return certs
            .iter()
            .position(|c| c.public_key == public)
            .ok_or(CertError::KeyMismatch);
    }
    let issued_another = |i: usize, issuer: &Cert| {
        certs
            .iter()
            .enumerate()
            .any(|(j, c)| j != i && c.issuer.same_as(&issuer.subject))
    };
    Ok(certs
        .iter()
        .enumerate()
        .position(|(i, c)| !issued_another(i, c))
        .unwrap_or(0))
}

/// Leaf first; then, while the last one placed is not self-issued, the first remaining
/// certificate whose subject is its issuer; then the rest in their original order.
fn order_chain(certs: Vec<Cert>, leaf: usize) -> Vec<Cert> {
    let mut rest: Vec<Option<Cert>> = certs.into_iter().map(Some).collect();
    let mut ordered: Vec<Cert> = Vec::with_capacity(rest.len());
    let mut next = Some(leaf);
    while let Some(i) = next {
        let Some(cert) = rest.get_mut(i).and_then(Option::take) else {
            break;
        };
        next = if cert.is_self_issued() {
            None
        } else {
            rest.iter()
                .position(|c| c.as_ref().is_some_and(|c| c.subject.same_as(&cert.issuer)))
        };
        ordered.push(cert);
    }
    ordered.extend(rest.into_iter().flatten());
    ordered
}

#[cfg(test)]
mod tests;
