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
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};
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
    ca_named(format!("keel cluster {cluster_id} CA"))
}

/// A CA to rotate to: named apart from the one in use (by when it was
/// made), so a certificate's issuer says which of the two signed it.
pub fn next_ca(cluster_id: &str) -> Result<(String, String), PkiError> {
    ca_named(format!("keel cluster {cluster_id} CA {}", unix_now()))
}

fn ca_named(name: String) -> Result<(String, String), PkiError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.distinguished_name.push(DnType::CommonName, name);
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

/// Whether the first certificate in `cert_pem` was signed by the CA in
/// `ca_pem` (its issuer is the CA's name and the CA's key verifies it).
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> bool {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (Ok(cert), Ok(ca)) = (first_cert(cert_pem), first_cert(ca_pem)) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, ca))) = (
        X509Certificate::from_der(cert.as_ref()),
        X509Certificate::from_der(ca.as_ref()),
    ) else {
        return false;
    };
    cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok()
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

/// A server certificate (the admin API's) replaceable while the server
/// runs: presented with the CA after it, so a client can pin the CA by
/// fingerprint.
pub struct LiveCert {
    current: RwLock<(String, Arc<CertifiedKey>)>,
}

impl LiveCert {
    /// Presents `cert_pem`, signed by `ca_pem`.
    pub fn new(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Arc<Self>, PkiError> {
        let key = served_key(cert_pem, key_pem, ca_pem)?;
        Ok(Arc::new(LiveCert {
            current: RwLock::new((cert_pem.to_owned(), key)),
        }))
    }

    /// Presents `cert_pem` from the next handshake on.
    pub fn replace(&self, cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<(), PkiError> {
        let key = served_key(cert_pem, key_pem, ca_pem)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = (cert_pem.to_owned(), key);
        Ok(())
    }

    /// The certificate presented now, PEM.
    pub fn cert_pem(&self) -> String {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .clone()
    }

    /// A server configuration presenting whatever this holds.
    pub fn server_config(self: &Arc<Self>) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

impl std::fmt::Debug for LiveCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.write_str("LiveCert")
    }
}

impl ResolvesServerCert for LiveCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .1
                .clone(),
        )
    }
}

fn served_key(cert_pem: &str, key_pem: &str, ca_pem: &str) -> Result<Arc<CertifiedKey>, PkiError> {
    let chain = vec![first_cert(cert_pem)?, first_cert(ca_pem)?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    Ok(Arc::new(CertifiedKey::from_der(chain, key, &provider())?))
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

/// This node's certificate and key, and the CAs it trusts, replaceable
/// while the node runs: the cluster listener and every client present and
/// verify with whatever it holds at the time of each handshake, so a
/// renewed certificate or a CA rotation needs no restart.
pub struct LiveIdentity {
    trust: Arc<LiveTrust>,
    current: RwLock<(NodeTls, Arc<CertifiedKey>)>,
}

impl LiveIdentity {
    /// The identity in `tls`, trusting its CA.
    pub fn new(tls: &NodeTls) -> Result<Arc<Self>, PkiError> {
        Ok(Arc::new(LiveIdentity {
            trust: Arc::new(LiveTrust {
                current: RwLock::new(Trust::of(&[tls.ca_pem.as_str()])?),
            }),
            current: RwLock::new((tls.clone(), tls.certified_key()?)),
        }))
    }

    /// Trust the CA certificates in `ca_pems` (and no other) from the next
    /// handshake on.
    pub fn trust(&self, ca_pems: &[&str]) -> Result<(), PkiError> {
        let same = {
            let now = self
                .trust
                .current
                .read()
                .unwrap_or_else(PoisonError::into_inner);
            now.pems
                .iter()
                .map(String::as_str)
                .eq(ca_pems.iter().copied())
        };
        if !same {
            let next = Trust::of(ca_pems)?;
            *self
                .trust
                .current
                .write()
                .unwrap_or_else(PoisonError::into_inner) = next;
        }
        Ok(())
    }

    /// The fingerprints of the CAs trusted now.
    pub fn trusted(&self) -> Vec<String> {
        let now = self
            .trust
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        now.pems
            .iter()
            .filter_map(|pem| fingerprint(pem).ok())
            .collect()
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
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(self.trust.clone())
            .with_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }

    /// TLS for calls to other nodes: trusts only the cluster's CAs,
    /// presents this node's certificate.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>, PkiError> {
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .dangerous()
            .with_custom_certificate_verifier(self.trust.clone())
            .with_client_cert_resolver(self.clone());
        Ok(Arc::new(config))
    }
}

/// The CAs a node trusts, as rustls verifiers of both sides, replaced
/// whole when the set changes.
struct Trust {
    pems: Vec<String>,
    client: Arc<dyn ClientCertVerifier>,
    server: Arc<WebPkiServerVerifier>,
}

impl Trust {
    fn of(ca_pems: &[&str]) -> Result<Self, PkiError> {
        let mut roots = RootCertStore::empty();
        for pem in ca_pems {
            roots.add(first_cert(pem)?)?;
        }
        let roots = Arc::new(roots);
        let bad = |e: rustls::server::VerifierBuilderError| PkiError::Pem(e.to_string());
        let client = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
            .allow_unauthenticated()
            .build()
            .map_err(bad)?;
        let server = WebPkiServerVerifier::builder_with_provider(roots, provider())
            .build()
            .map_err(|e| PkiError::Pem(e.to_string()))?;
        Ok(Trust {
            pems: ca_pems.iter().map(|p| (*p).to_owned()).collect(),
            client,
            server,
        })
    }
}

/// The verifiers of a [`LiveIdentity`]: whatever [`Trust`] it holds at the
/// time of a handshake. A client certificate is verified when one is sent
/// (joiners have none yet, and only reach the routes that allow that).
struct LiveTrust {
    current: RwLock<Trust>,
}

impl LiveTrust {
    fn client(&self) -> Arc<dyn ClientCertVerifier> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .client
            .clone()
    }

    fn server(&self) -> Arc<WebPkiServerVerifier> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .server
            .clone()
    }
}

impl std::fmt::Debug for LiveTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LiveTrust")
    }
}

impl ClientCertVerifier for LiveTrust {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        false
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints would have to outlive a change of trust; a node presents
        // its one certificate whatever they say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.client()
            .verify_client_cert(end_entity, intermediates, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
    }
}

impl ServerCertVerifier for LiveTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.server()
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
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
    static RING: std::sync::LazyLock<Arc<CryptoProvider>> =
        std::sync::LazyLock::new(|| Arc::new(rustls::crypto::ring::default_provider()));
    RING.clone()
}

// A handshake's signature is checked the same way whichever CAs are
// trusted: every verifier here does it with these.

fn tls12(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algorithms = provider().signature_verification_algorithms;
    rustls::crypto::verify_tls12_signature(message, cert, dss, &algorithms)
}

fn tls13(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    let algorithms = provider().signature_verification_algorithms;
    rustls::crypto::verify_tls13_signature(message, cert, dss, &algorithms)
}

fn schemes() -> Vec<SignatureScheme> {
    provider()
        .signature_verification_algorithms
        .supported_schemes()
}

impl NodeTls {
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

/// TLS for a joiner's first contact (and a CLI that pinned the CA): it has
/// no certificate and trusts the server only if the server's chain
/// contains a CA with one of `ca_fingerprints` (the token's; a CLI's
/// during a CA rotation, two), and the server's certificate is signed by
/// that CA.
pub fn pinned_client_config(
    ca_fingerprints: &[String],
) -> Result<Arc<rustls::ClientConfig>, PkiError> {
    let verifier = PinnedCa {
        fingerprints: ca_fingerprints
            .iter()
            .map(|f| f.to_ascii_lowercase())
            .collect(),
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
    fingerprints: Vec<String>,
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
            .find(|c| {
                self.fingerprints
                    .contains(&hex(&Sha256::digest(c.as_ref())))
            })
            .ok_or_else(|| {
                rustls::Error::General(
                    "the server's CA does not have the pinned fingerprint (after a CA \
                     rotation, pin the new CA: a new join token, or keel login \
                     --ca-fingerprint)"
                        .into(),
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
        tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes()
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
