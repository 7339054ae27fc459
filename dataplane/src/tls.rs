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
