//! Client TLS for `wss://` and `https://` targets: trust the CAs of a PEM file (`--ca`), or
//! nothing at all (`--insecure`, for self-signed test servers).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion,
};
use tokio_rustls::TlsConnector;

#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read certificates from {path}: {source}")]
    ReadCa {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{0} holds no certificate")]
    NoCertificates(PathBuf),
    #[error("certificate in {path} is not usable as a trust anchor: {source}")]
    BadCertificate {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("TLS targets need --ca FILE or --insecure")]
    NoTrust,
    #[error("`{0}` is not a valid TLS server name")]
    ServerName(String),
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The connector and name used for every TLS connection to one host.
#[derive(Clone)]
pub struct TlsTarget {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl TlsTarget {
    pub fn new(host: &str, ca: Option<&Path>, insecure: bool) -> Result<Self, TlsSetupError> {
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsSetupError::ServerName(host.into()))?;
        Ok(TlsTarget {
            connector: TlsConnector::from(client_config(ca, insecure)?),
            server_name,
        })
    }
}

/// The provider is named rather than taken from the process default, so the choice does not
/// depend on which rustls features other crates of the build happen to enable.
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

pub fn client_config(
    ca: Option<&Path>,
    insecure: bool,
) -> Result<Arc<ClientConfig>, TlsSetupError> {
    client_config_offering(ca, insecure, rustls::DEFAULT_VERSIONS).map(Arc::new)
}

/// A client configuration that offers only `versions`, for callers that adjust it further.
pub fn client_config_offering(
    ca: Option<&Path>,
    insecure: bool,
    versions: &[&'static SupportedProtocolVersion],
) -> Result<ClientConfig, TlsSetupError> {
    let provider = provider();
    let builder =
        ClientConfig::builder_with_provider(provider.clone()).with_protocol_versions(versions)?;
    let config = match (ca, insecure) {
        (_, true) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth(),
        (Some(path), false) => builder
            .with_root_certificates(load_roots(path)?)
            .with_no_client_auth(),
        (None, false) => return Err(TlsSetupError::NoTrust),
    };
    Ok(config)
}

fn load_roots(path: &Path) -> Result<RootCertStore, TlsSetupError> {
    let read_error = |source| TlsSetupError::ReadCa {
        path: path.to_path_buf(),
        source,
    };
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_file_iter(path).map_err(read_error)? {
        roots
            .add(certificate.map_err(read_error)?)
            .map_err(|source| TlsSetupError::BadCertificate {
                path: path.to_path_buf(),
                source,
            })?;
    }
    if roots.is_empty() {
        return Err(TlsSetupError::NoCertificates(path.to_path_buf()));
    }
    Ok(roots)
}

/// `--insecure`: any certificate is accepted, but handshake signatures are still checked so
/// that the session itself is a real TLS session.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, certificate, signature, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        certificate: &CertificateDer<'_>,
        signature: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, certificate, signature, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_must_be_chosen() {
        assert!(matches!(
            client_config(None, false),
            Err(TlsSetupError::NoTrust)
        ));
        assert!(client_config(None, true).is_ok());
    }

    #[test]
    fn ca_files_without_certificates_are_refused() {
        let file = tempfile::NamedTempFile::new().expect("temporary file");
        std::fs::write(file.path(), "not a certificate\n").expect("writes");
        assert!(matches!(
            client_config(Some(file.path()), false),
            Err(TlsSetupError::NoCertificates(_))
        ));
        assert!(matches!(
            client_config(Some(Path::new("/nonexistent/ca.pem")), false),
            Err(TlsSetupError::ReadCa { .. })
        ));
    }
}
