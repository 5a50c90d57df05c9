//! Certificates and keys from PEM files, checked before they go into service.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// Why a certificate or key cannot be used, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS certificate file {path}: {reason}")]
    Certificate { path: PathBuf, reason: String },
    #[error("TLS key file {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("TLS key {key} does not match certificate {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
}

fn certificate_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Certificate {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

fn key_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::Key {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads a full chain (leaf first) and its private key (PKCS#8, PKCS#1 or SEC1; ECDSA, RSA or
/// Ed25519), and checks that they belong together. An expired leaf is warned about, not refused:
/// an operator replacing it by hand must not be locked out.
pub fn load_certified_key(cert_path: &Path, key_path: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .map_err(|e| certificate_error(cert_path, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| certificate_error(cert_path, e))?;
    let Some(leaf) = chain.first() else {
        return Err(certificate_error(cert_path, "no CERTIFICATE block found"));
    };
    warn_if_expired(cert_path, leaf)?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => {
            key_error(key_path, "no PRIVATE KEY block found (PKCS#8, RSA or EC)")
        }
        other => key_error(key_path, other),
    })?;
    let signer =
        rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| key_error(key_path, e))?;
    let certified = CertifiedKey::new(chain, signer);
    certified.keys_match().map_err(|_| TlsError::Mismatch {
        cert: cert_path.to_owned(),
        key: key_path.to_owned(),
    })?;
    Ok(certified)
}

fn warn_if_expired(path: &Path, leaf: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| certificate_error(path, format!("not a valid X.509 certificate: {e}")))?;
    if !parsed.validity().is_valid() {
        tracing::warn!(
            cert = %path.display(),
            not_before = %parsed.validity().not_before,
            not_after = %parsed.validity().not_after,
            "TLS certificate is outside its validity period: clients will refuse it"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::write_development_certificates;

    fn scratch_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gateway-certs-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn loads_a_chain_and_names_each_fault() {
        let dir = scratch_dir("faults");
        let made = write_development_certificates(&dir, &["localhost".into()]).unwrap();
        let key = load_certified_key(&made.chain, &made.key).unwrap();
        assert_eq!(key.cert.len(), 2, "leaf and CA");

        let other = scratch_dir("other");
        let other_made = write_development_certificates(&other, &["localhost".into()]).unwrap();
        let mismatch = load_certified_key(&made.chain, &other_made.key).unwrap_err();
        assert!(matches!(mismatch, TlsError::Mismatch { .. }), "{mismatch}");

        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "nothing here\n").unwrap();
        let error = load_certified_key(&empty, &made.key)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("empty.pem") && error.contains("no CERTIFICATE"),
            "{error}"
        );
        let error = load_certified_key(&made.chain, &empty)
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("empty.pem") && error.contains("no PRIVATE KEY"),
            "{error}"
        );
        let error = load_certified_key(&dir.join("missing.pem"), &made.key)
            .unwrap_err()
            .to_string();
        assert!(error.contains("missing.pem"), "{error}");
        std::fs::remove_dir_all(dir).unwrap();
        std::fs::remove_dir_all(other).unwrap();
    }

    #[test]
    fn an_expired_certificate_loads_with_a_warning() {
        let dir = scratch_dir("expired");
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        assert!(load_certified_key(&dir.join("cert.pem"), &dir.join("key.pem")).is_ok());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
