//! `gateway cert`: a development CA and a certificate for localhost signed by it, so that TLS
//! works on a fresh machine. Never for production: the CA key sits next to the certificate.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// Where the files went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DevCertificates {
    /// The CA certificate, for clients to trust.
    pub ca: PathBuf,
    /// The server's chain: its certificate, then the CA's.
    pub chain: PathBuf,
    /// The server's private key (PKCS#8, ECDSA P-256).
    pub key: PathBuf,
}

/// Why the certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes `ca.pem`, `chain.pem` and `key.pem` into `dir` for the given host names and addresses.
pub fn write_development_certificates(
    dir: &Path,
    names: &[String],
) -> Result<DevCertificates, DevCertError> {
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gateway development CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;

    let mut leaf_params = CertificateParams::new(names.to_vec())?;
    leaf_params.distinguished_name.push(
        DnType::CommonName,
        names.first().map_or("localhost", String::as_str),
    );
    let leaf_key = KeyPair::generate()?;
    let leaf = leaf_params.signed_by(&leaf_key, &ca)?;

    let write = |name: &str, contents: String| {
        let path = dir.join(name);
        std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&path, contents))
            .map_err(|source| DevCertError::Write {
                path: path.clone(),
                source,
            })?;
        Ok::<_, DevCertError>(path)
    };
    Ok(DevCertificates {
        ca: write("ca.pem", ca.pem())?,
        chain: write("chain.pem", format!("{}{}", leaf.pem(), ca.pem()))?,
        key: write("key.pem", leaf_key.serialize_pem())?,
    })
}
