//! Certificates are checked when they are submitted (the model only checks
//! their shape, since "expired" depends on the clock): the chain parses, the
//! key parses and matches the leaf, the leaf is valid now and names a host.

use std::time::{SystemTime, UNIX_EPOCH};

use keel_model::CertificateDoc;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

/// Every problem with `doc`, as (field, message). `doc.key_pem` must be set.
pub(crate) fn problems(doc: &CertificateDoc) -> Vec<(&'static str, String)> {
    let mut out = Vec::new();
    let certs: Result<Vec<CertificateDer<'static>>, _> =
        CertificateDer::pem_slice_iter(doc.cert_pem.as_bytes()).collect();
    let certs = match certs {
        Ok(c) if !c.is_empty() => c,
        _ => {
            out.push(("cert_pem", "is not a PEM certificate chain".to_owned()));
            return out;
        }
    };
    match X509Certificate::from_der(&certs[0]) {
        Ok((_, leaf)) => {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            let validity = leaf.validity();
            if validity.not_after.timestamp() <= now {
                out.push(("cert_pem", format!("expired on {}", validity.not_after)));
            } else if validity.not_before.timestamp() > now {
                out.push((
                    "cert_pem",
                    format!("not valid until {}", validity.not_before),
                ));
            }
            let names = leaf
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|san| {
                    san.value
                        .general_names
                        .iter()
                        .filter(|n| {
                            matches!(n, GeneralName::DNSName(_) | GeneralName::IPAddress(_))
                        })
                        .count()
                })
                .unwrap_or(0);
            if names == 0 {
                out.push((
                    "cert_pem",
                    "names no host (no DNS or IP subjectAltName)".to_owned(),
                ));
            }
        }
        Err(_) => {
            out.push((
                "cert_pem",
                "the first certificate cannot be parsed".to_owned(),
            ));
            return out;
        }
    }
    let key_pem = doc.key_pem.as_deref().unwrap_or_default();
    let key = match PrivateKeyDer::from_pem_slice(key_pem.as_bytes()) {
        Ok(k) => k,
        Err(_) => {
            out.push(("key_pem", "is not a PEM private key".to_owned()));
            return out;
        }
    };
    match rustls::crypto::ring::sign::any_supported_type(&key) {
        Ok(signing_key) => {
            if CertifiedKey::new(certs, signing_key).keys_match().is_err() {
                out.push(("key_pem", "does not match the certificate".to_owned()));
            }
        }
        Err(_) => out.push((
            "key_pem",
            "is not a supported key type (RSA, ECDSA P-256/P-384, Ed25519)".to_owned(),
        )),
    }
    out
}
