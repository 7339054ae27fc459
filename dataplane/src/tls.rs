//! TLS termination: a listener's certificates compiled into a rustls server
//! configuration that picks a certificate by SNI. Each plan carries its own
//! configuration, so replacing a certificate affects new handshakes only.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use keel_model::{Certificate, Listener, Protocol, TlsPolicy};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use crate::coalesce::Coalesce;

/// A client's TLS connection. Records leave through [`Coalesce`], so one
/// that rustls hands over in pieces goes out in one `send`.
pub(crate) type TlsFromClient = tokio_rustls::server::TlsStream<Coalesce<tokio::net::TcpStream>>;

/// A TLS connection to a member, written like [`TlsFromClient`].
pub(crate) type TlsToMember = tokio_rustls::client::TlsStream<Coalesce<tokio::net::TcpStream>>;

/// ALPN protocol id of HTTP/2.
pub(crate) const H2: &[u8] = b"h2";
const HTTP11: &[u8] = b"http/1.1";

/// A certificate ready to serve, with the host names it covers.
struct Loaded {
    key: Arc<CertifiedKey>,
    names: Vec<String>,
}

/// Parses `cert` into a serving key, or says what is wrong with it.
fn load(cert: &Certificate, provider: &CryptoProvider) -> Result<Loaded, String> {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| "cert_pem is not a PEM certificate chain".to_owned())?;
    let leaf = chain
        .first()
        .ok_or_else(|| "cert_pem holds no certificate".to_owned())?;
    let names = match X509Certificate::from_der(leaf) {
        Ok((_, x509)) => dns_names(&x509),
        Err(_) => return Err("the first certificate cannot be parsed".into()),
    };
    let key = PrivateKeyDer::from_pem_slice(cert.key_pem.as_bytes())
        .map_err(|_| "key_pem is not a PEM private key".to_owned())?;
    let key = CertifiedKey::from_der(chain, key, provider)
        .map_err(|e| format!("the key cannot sign for the certificate: {e}"))?;
    Ok(Loaded {
        key: Arc::new(key),
        names,
    })
}

/// The DNS names of a certificate, lower-case: subjectAltNames, or the
/// common name when it has none.
fn dns_names(x509: &X509Certificate<'_>) -> Vec<String> {
    let mut names: Vec<String> = x509
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::DNSName(d) => Some(d.to_ascii_lowercase()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            x509.subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    names
}

/// Chooses a certificate by the client's SNI: an exact name first, then a
/// wildcard one level up (`*.example.com` covers `a.example.com`), then the
/// listener's first certificate.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    fn pick(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni.map(str::to_ascii_lowercase) else {
            return self.default.clone();
        };
        if let Some(k) = self.exact.get(&name) {
            return k.clone();
        }
        name.split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
            .unwrap_or(&self.default)
            .clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.pick(hello.server_name()))
    }
}

/// The server configuration of a TLS-terminating listener.
pub(crate) fn server_config(
    listener: &Listener,
    certificates: &BTreeMap<String, Certificate>,
) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut default = None;
    for name in &listener.certificates {
        let cert = certificates
            .get(name)
            .ok_or_else(|| format!("no certificate named {name:?}"))?;
        let loaded = load(cert, &provider).map_err(|e| format!("certificate {name:?}: {e}"))?;
        // Earlier certificates win a name both cover.
        for n in &loaded.names {
            match n.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_owned()),
                None => exact.entry(n.clone()),
            }
            .or_insert_with(|| loaded.key.clone());
        }
        default.get_or_insert(loaded.key);
    }
    let default = default.ok_or_else(|| "no certificates".to_owned())?;
    let versions: &[&rustls::SupportedProtocolVersion] = match listener.tls_policy {
        TlsPolicy::Modern => &[&rustls::version::TLS13],
        TlsPolicy::Compatible => &[&rustls::version::TLS13, &rustls::version::TLS12],
    };
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(versions)
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(SniResolver {
            exact,
            wildcard,
            default,
        }));
    if listener.protocol == Protocol::Https {
        config.alpn_protocols = if listener.http2 {
            vec![H2.to_vec(), HTTP11.to_vec()]
        } else {
            vec![HTTP11.to_vec()]
        };
    }
    Ok(Arc::new(config))
}

/// What a connection to a member asks for by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alpn {
    /// A byte stream (L4): no ALPN.
    None,
    Http1,
    Http2,
}

/// A pool's TLS towards its members, compiled once per plan.
pub(crate) struct MemberTlsPlan {
    stream: Arc<rustls::ClientConfig>,
    http1: Arc<rustls::ClientConfig>,
    http2: Arc<rustls::ClientConfig>,
    /// SNI and the name checked; `None`: the member's IP address.
    server_name: Option<rustls::pki_types::ServerName<'static>>,
}

impl MemberTlsPlan {
    /// Compiles a pool's `tls`, or says why its CA bundle cannot be used.
    pub fn new(tls: &keel_model::MemberTls) -> Result<Self, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?;
        let base = if tls.verify {
            let mut roots = rustls::RootCertStore::empty();
            for der in
                CertificateDer::pem_slice_iter(tls.ca_pem.as_deref().unwrap_or("").as_bytes())
            {
                let der = der.map_err(|_| "ca is not a PEM certificate bundle".to_owned())?;
                roots
                    .add(der)
                    .map_err(|e| format!("ca holds an unusable certificate: {e}"))?;
            }
            if roots.is_empty() {
                return Err("ca holds no certificate".into());
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth()
        };
        let with_alpn = |alpn: &[&[u8]]| {
            let mut c = base.clone();
            c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        let server_name = match &tls.server_name {
            None => None,
            Some(n) => Some(
                rustls::pki_types::ServerName::try_from(n.clone())
                    .map_err(|e| format!("server_name {n:?}: {e}"))?,
            ),
        };
        Ok(MemberTlsPlan {
            stream: with_alpn(&[]),
            http1: with_alpn(&[HTTP11]),
            http2: with_alpn(&[H2]),
            server_name,
        })
    }

    /// Runs the TLS handshake with a member over `stream`.
    pub async fn connect(
        &self,
        stream: tokio::net::TcpStream,
        member: std::net::SocketAddr,
        alpn: Alpn,
    ) -> std::io::Result<TlsToMember> {
        let config = match alpn {
            Alpn::None => &self.stream,
            Alpn::Http1 => &self.http1,
            Alpn::Http2 => &self.http2,
        };
        let name = self
            .server_name
            .clone()
            .unwrap_or_else(|| rustls::pki_types::ServerName::IpAddress(member.ip().into()));
        tokio_rustls::TlsConnector::from(config.clone())
            .connect(name, Coalesce::new(stream))
            .await
    }
}

/// Accepts any certificate: a pool with `verify: false` asked for this.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    // Signatures are still checked: the peer must hold the key of the
    // certificate it sent, whatever that certificate is.
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn key() -> Arc<CertifiedKey> {
        let provider = rustls::crypto::ring::default_provider();
        let c = rcgen::generate_simple_self_signed(vec!["x.test".into()]).unwrap();
        let der = PrivateKeyDer::try_from(c.key_pair.serialize_der()).unwrap();
        Arc::new(CertifiedKey::from_der(vec![c.cert.der().clone()], der, &provider).unwrap())
    }

    #[test]
    fn sni_prefers_exact_then_wildcard_then_default() {
        let (a, w, d) = (key(), key(), key());
        let r = SniResolver {
            exact: HashMap::from([("a.example.com".to_owned(), a.clone())]),
            wildcard: HashMap::from([("example.com".to_owned(), w.clone())]),
            default: d.clone(),
        };
        let is = |sni, k: &Arc<CertifiedKey>| Arc::ptr_eq(&r.pick(sni), k);
        assert!(is(Some("a.example.com"), &a));
        assert!(is(Some("A.Example.COM"), &a));
        assert!(is(Some("b.example.com"), &w));
        // A wildcard covers one label only, and not the parent itself.
        assert!(is(Some("x.b.example.com"), &d));
        assert!(is(Some("example.com"), &d));
        assert!(is(None, &d));
    }
}
