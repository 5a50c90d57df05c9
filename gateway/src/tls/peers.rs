//! A rustls client and the gateway's TLS session joined by byte buffers, for tests.

use std::io::{ErrorKind, Read};
use std::sync::Arc;

use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::{CipherSuite, ClientConfig, ClientConnection, RootCertStore, ServerConfig};

use super::records::{RecordError, RecordLayer};
use super::session::TlsSession;

pub(crate) const TLS13: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];
pub(crate) const TLS12: [CipherSuite; 3] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// A rustls client and the gateway's session, joined by byte buffers.
pub(crate) struct Peers {
    pub client: ClientConnection,
    pub server: TlsSession,
    /// Application data the server has received.
    pub received: Vec<u8>,
    /// Application data the client has received.
    pub client_received: Vec<u8>,
}

impl Peers {
    /// A client that offers only `suite` and a server, before the handshake.
    pub fn start(suite: CipherSuite) -> Peers {
        Peers::start_with(suite, |_| {})
    }

    /// As `start`, with the server's configuration changed by `adjust`.
    pub fn start_with(suite: CipherSuite, adjust: impl FnOnce(&mut ServerConfig)) -> Peers {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("certificate");
        let cert = certified.cert.der().clone();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], key)
            .expect("server config");
        server.enable_secret_extraction = true;
        server.key_log = Arc::new(super::secrets::SecretCatcher);
        adjust(&mut server);

        let mut offered = rustls::crypto::ring::default_provider();
        offered.cipher_suites.retain(|s| s.suite() == suite);
        let mut roots = RootCertStore::empty();
        roots.add(cert).expect("root");
        let mut client = ClientConfig::builder_with_provider(Arc::new(offered))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        // So that a test can seal records as the client, with its keys.
        client.enable_secret_extraction = true;
        let name = ServerName::try_from("localhost").expect("name");
        Peers {
            client: ClientConnection::new(Arc::new(client), name).expect("client"),
            server: TlsSession::new(Arc::new(server)).expect("server"),
            received: Vec::new(),
            client_received: Vec::new(),
        }
    }

    /// Completes a handshake that offers only `suite`.
    pub fn connect(suite: CipherSuite) -> Peers {
        let mut peers = Peers::start(suite);
        for _ in 0..8 {
            peers.exchange().expect("handshake");
            if !peers.client.is_handshaking() && !peers.server.is_handshaking() {
                break;
            }
        }
        assert!(
            !peers.server.is_handshaking(),
            "handed over to the record layer"
        );
        assert_eq!(
            peers.client.negotiated_cipher_suite().map(|s| s.suite()),
            Some(suite)
        );
        peers
    }

    /// Moves what the client has written to the server, and the server's answers back.
    pub fn exchange(&mut self) -> Result<(), RecordError> {
        let wire = self.client_wire();
        let result = self.server_reads(&wire);
        self.server_to_client().expect("client reads");
        result
    }

    /// Everything the client has to send now, as it would go on the wire.
    pub fn client_wire(&mut self) -> Vec<u8> {
        let mut wire = Vec::new();
        while self.client.wants_write() {
            self.client.write_tls(&mut wire).expect("client writes");
        }
        wire
    }

    /// Gives the server `bytes` as one read: after what an earlier read left of a record, and
    /// keeping what is left of one now. What it decrypts goes to `received`.
    pub fn server_reads(&mut self, bytes: &[u8]) -> Result<(), RecordError> {
        let mut buf = self.server.take_incoming();
        buf.extend_from_slice(bytes);
        let received = &mut self.received;
        let used = self
            .server
            .absorb(&mut buf, &mut |plain| received.extend_from_slice(plain))?;
        if used < buf.len() {
            self.server.keep_incoming(&buf[used..]);
        }
        Ok(())
    }

    pub fn server_to_client(&mut self) -> Result<(), rustls::Error> {
        let wire = self.server.outgoing().to_vec();
        self.server.sent(wire.len());
        self.deliver(&wire)
    }

    pub fn deliver(&mut self, wire: &[u8]) -> Result<(), rustls::Error> {
        let mut unread = wire;
        let mut chunk = [0; 4096];
        while !unread.is_empty() {
            self.client.read_tls(&mut unread).expect("buffer");
            self.client.process_new_packets()?;
            loop {
                match self.client.reader().read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => self.client_received.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client read: {e}"),
                }
            }
        }
        Ok(())
    }

    /// Seals `data` on the server and hands the records to the client.
    pub fn server_sends(&mut self, data: &[u8]) -> Result<(), rustls::Error> {
        let mut wire = Vec::new();
        let mut sealer = self.server.sealer().expect("sealer");
        sealer.seal(data, &mut wire).expect("seal");
        self.deliver(&wire)
    }

    pub fn client_reads(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.client_received)
    }

    pub fn records(&mut self) -> &mut RecordLayer {
        self.server.records().expect("handed over")
    }
}
