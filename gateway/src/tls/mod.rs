//! TLS terminated in the gateway: certificates from PEM files, the rustls server configuration,
//! hot reload, and a development certificate maker. The per-connection TLS state machine lives
//! with the connection (`shard::transport`), driving rustls' unbuffered API over shard buffers.

mod certs;
mod devcert;
#[cfg(any(test, feature = "fuzzing"))]
pub mod peers;
pub mod records;
mod secrets;
pub mod session;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use rustls::server::{ClientHello, NoServerSessionStorage, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;

pub use certs::{load_certified_key, TlsError};
pub use devcert::{write_development_certificates, DevCertError, DevCertificates};

/// The certificate in service, swapped whole on reload so that handshakes in flight keep the one
/// they started with and open connections are untouched.
#[derive(Debug)]
pub struct CertStore {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: ArcSwap<CertifiedKey>,
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
}

impl CertStore {
    /// Loads the certificate chain and key; fails with an error naming the file.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<CertStore, TlsError> {
        let key = load_certified_key(cert_path, key_path)?;
        Ok(CertStore {
            cert_path: cert_path.to_owned(),
            key_path: key_path.to_owned(),
            current: ArcSwap::from_pointee(key),
            reloads: AtomicU64::new(0),
            reload_failures: AtomicU64::new(0),
        })
    }

    /// Loads the files again. A broken file is refused and the certificate in service stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(key) => {
                self.current.store(Arc::new(key));
                self.reloads.fetch_add(1, Ordering::Relaxed);
                tracing::info!(cert = %self.cert_path.display(), "TLS certificate reloaded");
                Ok(())
            }
            Err(error) => {
                self.reload_failures.fetch_add(1, Ordering::Relaxed);
                tracing::error!(%error, "TLS certificate reload refused; the previous certificate stays in service");
                Err(error)
            }
        }
    }

    /// When each file last changed (following symlinks), to notice new files on disk; `None`
    /// while either is missing.
    pub fn files_changed_at(&self) -> FileStamps {
        let modified = |path: &Path| std::fs::metadata(path).and_then(|m| m.modified()).ok();
        Some((modified(&self.cert_path)?, modified(&self.key_path)?))
    }
}

/// The modification times of the certificate and key files.
pub type FileStamps = Option<(SystemTime, SystemTime)>;

/// Decides, from one reading of the files' times per poll, when changed files are ready to load:
/// once they read the same on two polls in a row. Renewals write the chain and the key one after
/// the other, and loading between the two would refuse a good pair as mismatched.
#[derive(Debug)]
pub struct SettledChange {
    loaded: FileStamps,
    pending: FileStamps,
}

impl SettledChange {
    /// Starts from the times of the files in service.
    pub fn new(loaded: FileStamps) -> SettledChange {
        SettledChange {
            loaded,
            pending: None,
        }
    }

    /// Takes this poll's reading; true when the files should be loaded now.
    pub fn poll(&mut self, now: FileStamps) -> bool {
        if now.is_none() || now == self.loaded {
            self.pending = None;
            return false;
        }
        if now == self.pending {
            self.loaded = now;
            self.pending = None;
            return true;
        }
        self.pending = now;
        false
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.load_full())
    }
}

/// TLS 1.3 and 1.2 with rustls' safe defaults, ALPN http/1.1, and stateless session tickets
/// whose key every shard shares, so a client resumes on whichever shard it lands.
pub fn server_config(store: Arc<CertStore>) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(store);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.ticketer = rustls::crypto::ring::Ticketer::new().map_err(TlsError::Config)?;
    // Tickets carry the session; a shared server-side cache would need a lock.
    config.session_storage = Arc::new(NoServerSessionStorage {});
    config.send_tls13_tickets = 1;
    // After the handshake the gateway protects records itself (`records`), keeping only keys
    // per connection; rustls hands the record keys over only when this is set, and the TLS 1.3
    // traffic secrets that key updates start from only to a key log.
    config.enable_secret_extraction = true;
    config.key_log = Arc::new(secrets::SecretCatcher);
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn stamps(cert: u64, key: u64) -> FileStamps {
        let at = |secs| SystemTime::UNIX_EPOCH + Duration::from_secs(secs);
        Some((at(cert), at(key)))
    }

    #[test]
    fn changed_files_load_once_they_hold_still() {
        let mut change = SettledChange::new(stamps(1, 1));
        assert!(!change.poll(stamps(1, 1)), "nothing changed");
        assert!(
            !change.poll(stamps(5, 1)),
            "the chain is new, the key not yet"
        );
        assert!(
            !change.poll(stamps(5, 6)),
            "the key arrived: wait one more poll"
        );
        assert!(change.poll(stamps(5, 6)), "both held still: load");
        assert!(!change.poll(stamps(5, 6)), "loaded once");
    }

    #[test]
    fn missing_files_are_waited_for() {
        let mut change = SettledChange::new(stamps(1, 1));
        assert!(!change.poll(stamps(2, 2)));
        assert!(!change.poll(None), "replaced by delete and create");
        assert!(!change.poll(None));
        assert!(!change.poll(stamps(3, 3)));
        assert!(change.poll(stamps(3, 3)));
    }

    #[test]
    fn files_put_back_as_they_were_are_not_loaded_again() {
        let mut change = SettledChange::new(stamps(1, 1));
        assert!(!change.poll(stamps(2, 1)));
        assert!(!change.poll(stamps(1, 1)));
        assert!(!change.poll(stamps(1, 1)));
    }
}
