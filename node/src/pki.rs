//! The cluster CA and node certificates, and the TLS configurations built
//! from them.
//!
//! - The CA is made at bootstrap and replicated in the cluster state, so any
//!   node can admit a joiner. Its fingerprint (SHA-256 of the DER) travels in
//!   join tokens; a joiner pins it before it sends the token's secret.
//! - A node certificate names the node (`n<ID>.node.keel`) and the generic
//!   `node.keel`; it is used as both server and client certificate.
//! - A joiner makes its own key and sends a CSR: private keys never cross the
//!   network.
//! - Node certificates expire (`--node-cert-validity`, 30 days by default)
//!   and are renewed over mutual TLS before they do; a [`LiveIdentity`]
//!   swaps the new one in without a restart.

use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use keel_consensus::rpc::{node_server_name, ANY_NODE};
use keel_consensus::NodeId;
use rcgen::{
    BasicConstraints, Certificate, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::ResolvesClientCert;
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

/// Why a certificate operation failed.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen could not make or sign a certificate.
    #[error("certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused a certificate, key or configuration.
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    /// A PEM block could not be read.
    #[error("pem: {0}")]
    Pem(String),
}

/// The TLS identity of a node: its certificate and key, and the CA.
#[derive(Clone)]
pub struct NodeTls {
    /// The cluster CA certificate, PEM.
    pub ca_pem: String,
    /// This node's certificate, PEM.
    pub cert_pem: String,
    /// This node's private key, PEM.
    pub key_pem: String,
}

/// A new CA: (certificate PEM, key PEM).
pub fn new_ca(cluster_id: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params
        .distinguished_name
        .push(DnType::CommonName, format!("keel cluster {cluster_id} CA"));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// A new key pair and a CSR for it: (key PEM, CSR PEM).
pub fn new_csr(name: &str) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.distinguished_name.push(DnType::CommonName, name);
    let csr = params.serialize_request(&key)?;
    Ok((key.serialize_pem(), csr.pem()?))
}

/// The CA as rcgen signs with it: its certificate and key.
fn issuer(ca_cert_pem: &str, ca_key_pem: &str) -> Result<(Certificate, KeyPair), PkiError> {
    let ca_key = KeyPair::from_pem(ca_key_pem)?;
    let ca = CertificateParams::from_ca_cert_pem(ca_cert_pem)?.self_signed(&ca_key)?;
    Ok((ca, ca_key))
}

/// Check that `csr_pem` is a well-formed, self-signed CSR (before a join
/// token's use is spent on it).
pub fn check_csr(csr_pem: &str) -> Result<(), PkiError> {
    CertificateSigningRequestParams::from_pem(csr_pem)?;
    Ok(())
}

/// Sign a node certificate for `id` from a CSR, valid for `validity`. The
/// names come from us, not from the CSR.
pub fn sign_node_csr(
    csr_pem: &str,
    id: NodeId,
    validity: Duration,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<String, PkiError> {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
    csr.params = node_params(id, validity)?;
    let (ca, ca_key) = issuer(ca_cert_pem, ca_key_pem)?;
    Ok(csr.signed_by(&ca, &ca_key)?.pem())
}

/// A node certificate and key for `id`, valid for `validity`, signed
/// directly (the bootstrap node).
pub fn new_node_cert(
    id: NodeId,
    validity: Duration,
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let (ca, ca_key) = issuer(ca_cert_pem, ca_key_pem)?;
    let cert = node_params(id, validity)?.signed_by(&key, &ca, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// How long before now a certificate's validity starts, for clocks a little
/// behind this one: a tenth of its validity, at most a minute.
fn backdate(validity: Duration) -> Duration {
    (validity / 10).min(Duration::from_secs(60))
}

fn node_params(id: NodeId, validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(vec![node_server_name(id), ANY_NODE.to_owned()])?;
    let now = SystemTime::now();
    params.not_before = (now - backdate(validity)).into();
    params.not_after = (now + validity).into();
    params
        .distinguished_name
        .push(DnType::CommonName, node_server_name(id));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

/// How long an admin API certificate is valid; a node makes a new one at
/// start when less than a third is left.
pub const ADMIN_VALIDITY: Duration = Duration::from_secs(397 * 86_400);

/// A certificate for the admin API on a non-loopback address, signed by the
/// cluster CA, naming `names` (DNS names and IP addresses: the node's name,
/// `localhost` and every address it answers on): (certificate, key) PEM.
/// Clients trust it with the CA file or its fingerprint.
fn admin_params(node_name: &str, names: &[String]) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("keel admin {node_name}"));
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let now = SystemTime::now();
    params.not_before = (now - backdate(ADMIN_VALIDITY)).into();
    params.not_after = (now + ADMIN_VALIDITY).into();
    Ok(params)
}

pub fn new_admin_cert(
    node_name: &str,
    names: &[String],
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let params = admin_params(node_name, names)?;
    let (ca, ca_key) = issuer(ca_cert_pem, ca_key_pem)?;
    let cert = params.signed_by(&key, &ca, &ca_key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// An admin certificate for `names` from a CSR (a learner's, which holds no
/// CA key), as [`new_admin_cert`] makes them; the names come from the
/// caller, checked by it.
pub fn sign_admin_csr(
    csr_pem: &str,
    node_name: &str,
    names: &[String],
    ca_cert_pem: &str,
    ca_key_pem: &str,
) -> Result<String, PkiError> {
    let mut csr = CertificateSigningRequestParams::from_pem(csr_pem)?;
    csr.params = admin_params(node_name, names)?;
    let (ca, ca_key) = issuer(ca_cert_pem, ca_key_pem)?;
    Ok(csr.signed_by(&ca, &ca_key)?.pem())
}

/// Whether `key_pem` is the private key of the CA certificate `ca_pem`.
pub fn key_matches_ca(key_pem: &str, ca_pem: &str) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (Ok(key), Ok(cert)) = (KeyPair::from_pem(key_pem), first_cert(ca_pem)) else {
        return false;
    };
    X509Certificate::from_der(cert.as_ref())
        .is_ok_and(|(_, x509)| x509.public_key().raw == key.public_key_der().as_slice())
}

/// Whether a kept admin certificate will do: signed by the CA in `ca_pem`,
/// valid now with more than a third of its life left, and naming every one
/// of `names` (checked as a client would, with rustls).
pub fn admin_cert_fits(cert_pem: &str, ca_pem: &str, names: &[String]) -> bool {
    let fits = || -> Result<bool, PkiError> {
        let leaf = first_cert(cert_pem)?;
        if renew_at(validity(cert_pem)?) <= unix_now() {
            return Ok(false);
        }
        let mut roots = RootCertStore::empty();
        roots.add(first_cert(ca_pem)?)?;
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
            .build()
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        Ok(names.iter().all(|name| {
            ServerName::try_from(name.clone()).is_ok_and(|name| {
                verifier
                    .verify_server_cert(&leaf, &[], &name, &[], UnixTime::now())
                    .is_ok()
            })
        }))
    };
    fits().unwrap_or(false)
}

/// A server configuration presenting `cert_pem` (and the CA after it, so a
/// client can pin the CA by fingerprint).
pub fn server_config_for(
    cert_pem: &str,
    key_pem: &str,
    ca_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let chain = vec![first_cert(cert_pem)?, first_cert(ca_pem)?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// A server configuration presenting a configured certificate chain and
/// its key (PEM), as given.
pub fn server_config_from(
    chain_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ServerConfig>, PkiError> {
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(PkiError::Pem("no certificate in the file".into()));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    Ok(Arc::new(config))
}

/// `SHA256:<hex>` (as the console and `keel status` show a fingerprint), or
/// the bare hex, colons allowed: the 64 lower-case hex digits.
pub fn parse_fingerprint(text: &str) -> Result<String, String> {
    let text = text.trim();
    let hex: String = text
        .strip_prefix("SHA256:")
        .or_else(|| text.strip_prefix("sha256:"))
        .unwrap_or(text)
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        Ok(hex)
    } else {
        Err(format!(
            "{text:?} is not a CA fingerprint (expected SHA256: and 64 hex digits)"
        ))
    }
}

/// A client configuration trusting only the CA certificates in `ca_pem`.
pub fn client_trusting(ca_pem: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(cert.map_err(|e| PkiError::Pem(e.to_string()))?)?;
    }
    if roots.is_empty() {
        return Err(PkiError::Pem("no certificate in the CA file".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// The validity of the first certificate in `pem`: (not before, not after),
/// Unix seconds.
pub fn validity(cert_pem: &str) -> Result<(u64, u64), PkiError> {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let der = first_cert(cert_pem)?;
    let (_, x509) =
        X509Certificate::from_der(der.as_ref()).map_err(|e| PkiError::Pem(e.to_string()))?;
    let seconds = |t: x509_parser::time::ASN1Time| u64::try_from(t.timestamp()).unwrap_or(0);
    Ok((
        seconds(x509.validity().not_before),
        seconds(x509.validity().not_after),
    ))
}

/// Longest validity a node certificate is kept with: older clusters' (rcgen's
/// default, to the year 4096) are replaced at once.
const LONGEST_KEPT: u64 = 400 * 86_400;

/// When (Unix seconds) a certificate valid from `not_before` to `not_after`
/// should be renewed: with a third of its life left, or at once if it was
/// made to last for years.
pub fn renew_at((not_before, not_after): (u64, u64)) -> u64 {
    let life = not_after.saturating_sub(not_before);
    if life > LONGEST_KEPT {
        return 0;
    }
    not_after - life / 3
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// This node's certificate and key, replaceable while the node runs: the
/// cluster listener and every client present whatever it holds at the time
/// of each handshake, so a renewed certificate needs no restart.
pub struct LiveIdentity {
    roots: Arc<RootCertStore>,
    current: RwLock<(NodeTls, Arc<CertifiedKey>)>,
}

impl LiveIdentity {
    /// The identity in `tls`.
    pub fn new(tls: &NodeTls) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(LiveIdentity {
            roots: Arc::new(tls.roots()?),
            current: RwLock::new((tls.clone(), tls.certified_key()?)),
        }))
    }

    /// Present `tls`'s certificate from the next handshake on.
    pub fn replace(&self, tls: &NodeTls) -> Result<(), PkiError> {
        let key = tls.certified_key()?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (tls.clone(), key);
        Ok(())
    }

    /// The certificate, key and CA presented now.
    pub fn tls(&self) -> NodeTls {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .1
            .clone()
    }

    /// The cluster listener's TLS: presents this node's certificate; verifies
    /// a client certificate against the CA (validity included) when one is
    /// sent (joiners have none yet, and only reach the routes that allow
    /// that).
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let verifier = WebPkiClientVerifier::builder_with_provider(self.roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }

    /// TLS for calls to other nodes: trusts only the CA, presents this node's
    /// certificate.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(self.roots.clone())
            .with_client_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

impl std::fmt::Debug for LiveIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("LiveIdentity")
    }
}

impl ResolvesServerCert for LiveIdentity {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

impl ResolvesClientCert for LiveIdentity {
    fn resolve(&self, _: &[&[u8]], _: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }

    fn has_certs(&self) -> bool {
        true
    }
}

/// SHA-256 of the first certificate in `pem`, lower-case hex.
pub fn fingerprint(cert_pem: &str) -> Result<String, PkiError> {
    let der = first_cert(cert_pem)?;
    Ok(hex(&Sha256::digest(der.as_ref())))
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn first_cert(pem: &str) -> Result<CertificateDer<'static>, PkiError> {
    CertificateDer::from_pem_slice(pem.as_bytes()).map_err(|e| PkiError::Pem(e.to_string()))
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl NodeTls {
    fn roots(&self) -> Result<RootCertStore, PkiError> {
        let mut roots = RootCertStore::empty();
        roots.add(first_cert(&self.ca_pem)?)?;
        Ok(roots)
    }

    fn chain_and_key(
        &self,
    ) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), PkiError> {
        // The chain includes the CA so a joiner can pin it by fingerprint.
        let chain = vec![first_cert(&self.cert_pem)?, first_cert(&self.ca_pem)?];
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes())
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        Ok((chain, key))
    }

    fn certified_key(&self) -> Result<Arc<CertifiedKey>, PkiError> {
        let (chain, key) = self.chain_and_key()?;
        Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
    }
}

/// TLS for a joiner's first contact: it has no certificate yet and trusts
/// the server only if the server's chain contains the CA whose fingerprint
/// the token carries, and the server's certificate is signed by that CA.
pub fn pinned_client_config(ca_fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let verifier = PinnedCa {
        fingerprint: ca_fingerprint.to_ascii_lowercase(),
        provider: provider(),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(config))
}

#[derive(Debug)]
struct PinnedCa {
    fingerprint: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for PinnedCa {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ca = intermediates
            .iter()
            .find(|c| hex(&Sha256::digest(c.as_ref())) == self.fingerprint)
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not have the pinned fingerprint".into(),
                )
            })?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone().into_owned())?;
        let inner =
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        inner.verify_server_cert(end_entity, &[], server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn node_certificates_chain_to_the_ca_and_csrs_are_signed() {
        let (ca_pem, ca_key) = new_ca("test").unwrap();
        let (cert_pem, key_pem) = new_node_cert(7, DAY, &ca_pem, &ca_key).unwrap();
        let tls = NodeTls {
            ca_pem: ca_pem.clone(),
            cert_pem,
            key_pem,
        };
        let identity = LiveIdentity::new(&tls).unwrap();
        identity.server_config().unwrap();
        identity.client_config().unwrap();
        let (key, csr) = new_csr("joiner").unwrap();
        check_csr(&csr).unwrap();
        assert!(check_csr(
            "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n"
        )
        .is_err());
        assert!(check_csr(&csr.replace('A', "B")).is_err());
        let signed = sign_node_csr(&csr, 9, DAY, &ca_pem, &ca_key).unwrap();
        let joiner = NodeTls {
            ca_pem: ca_pem.clone(),
            cert_pem: signed,
            key_pem: key,
        };
        identity.replace(&joiner).unwrap();
        assert_eq!(identity.tls().cert_pem, joiner.cert_pem);
        assert_eq!(fingerprint(&ca_pem).unwrap().len(), 64);
    }

    #[test]
    fn certificates_expire_and_are_renewed_with_a_third_of_their_life_left() {
        let (ca_pem, ca_key) = new_ca("test").unwrap();
        let (cert_pem, _) = new_node_cert(7, 30 * DAY, &ca_pem, &ca_key).unwrap();
        let (not_before, not_after) = validity(&cert_pem).unwrap();
        let now = unix_now();
        assert!(
            not_before <= now - 59 && not_before >= now - 61,
            "backdated a minute"
        );
        assert!(not_after.abs_diff(now + 30 * 86_400) <= 1);
        let at = renew_at((not_before, not_after));
        assert_eq!(at, not_after - (not_after - not_before) / 3);
        // Short validities are backdated by a tenth, so renewal still waits.
        let (cert_pem, _) = new_node_cert(7, Duration::from_secs(12), &ca_pem, &ca_key).unwrap();
        let life = validity(&cert_pem).unwrap();
        assert!(renew_at(life) > unix_now() + 5, "{life:?}");
        // Certificates made to last for years (older clusters') at once.
        assert_eq!(renew_at((0, 4_000_000_000)), 0);
    }
}
