//! A rustls client and the gateway's TLS session joined by byte buffers, for tests and the fuzz
//! targets (`gateway/fuzz`).

use std::io::{ErrorKind, Read};
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::crypto::cipher::{MessageEncrypter, OutboundChunks, OutboundPlainMessage};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ConnectionTrafficSecrets, ContentType,
    ProtocolVersion, RootCertStore, ServerConfig, SupportedCipherSuite,
};

use super::records::{RecordError, RecordLayer};
use super::session::{encode_into, TlsSession};

const HOST: &str = "localhost";

pub const TLS13: [CipherSuite; 3] = [
    CipherSuite::TLS13_AES_128_GCM_SHA256,
    CipherSuite::TLS13_AES_256_GCM_SHA384,
    CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
];
pub const TLS12: [CipherSuite; 3] = [
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// A rustls client and the gateway's session, joined by byte buffers.
pub struct Peers {
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
        let (server, client) = configs(suite, adjust);
        Peers {
            client: ClientConnection::new(client, server_name()).expect("client"),
            server: TlsSession::new(server).expect("server"),
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

/// A server with a new self-signed certificate, changed by `adjust`, and a client that trusts
/// it and offers only `suite`.
fn configs(
    suite: CipherSuite,
    adjust: impl FnOnce(&mut ServerConfig),
) -> (Arc<ServerConfig>, Arc<ClientConfig>) {
    let certified = rcgen::generate_simple_self_signed(vec![HOST.into()]).expect("certificate");
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
    (Arc::new(server), Arc::new(client))
}

fn server_name() -> ServerName<'static> {
    ServerName::try_from(HOST).expect("name")
}

/// The server after its handshake with rustls' unbuffered client, and what that client handed
/// over at the end of it, as a kTLS client does.
pub struct HandedOver {
    pub server: TlsSession,
    /// What makes the client's next keys on a key update.
    pub client: KernelConnection<ClientConnectionData>,
    /// The sequence number of the client's next record and the keys it is sealed with.
    pub client_keys: (u64, ConnectionTrafficSecrets),
}

/// Completes a handshake that offers only `suite`, after which the client gives its keys to the
/// caller: with them a test seals records of any type and content (`encrypter`, `seal`), which
/// rustls' own client never sends.
pub fn hand_over(suite: CipherSuite) -> HandedOver {
    let (server, client) = configs(suite, |_| {});
    let mut server = TlsSession::new(server).expect("server");
    let mut client = UnbufferedClientConnection::new(client, server_name()).expect("client");
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    loop {
        let UnbufferedStatus { discard, state } = client.process_tls_records(&mut to_client);
        let blocked = match state.expect("client handshake") {
            ConnectionState::EncodeTlsData(mut encoder) => {
                encode_into(&mut to_server, |out| encoder.encode(out)).expect("client encodes");
                false
            }
            ConnectionState::TransmitTlsData(transmit) => {
                transmit.done();
                false
            }
            ConnectionState::BlockedHandshake => true,
            ConnectionState::WriteTraffic(_) => break,
            state => panic!("client handshake: {state:?}"),
        };
        to_client.drain(..discard);
        if blocked {
            server_reads_all(&mut server, &mut to_server);
            let answer = server.outgoing();
            to_client.extend_from_slice(answer);
            server.sent(answer.len());
        }
    }
    // The client's last flight (its Finished) ends the server's handshake too.
    server_reads_all(&mut server, &mut to_server);
    assert!(!server.is_handshaking(), "handed over to the record layer");
    // Session tickets: the client has no use for them, and the socket took them.
    server.sent(server.outgoing().len());
    let (keys, client) = client
        .dangerous_into_kernel_connection()
        .expect("the client hands over");
    HandedOver {
        server,
        client,
        client_keys: keys.tx,
    }
}

/// Has the server read all of `wire`, and empties it.
fn server_reads_all(server: &mut TlsSession, wire: &mut Vec<u8>) {
    let used = server
        .absorb(wire, &mut |_| panic!("no data during the handshake"))
        .expect("server handshake");
    assert_eq!(used, wire.len(), "whole records");
    wire.clear();
}

/// rustls' record protection under `keys` of `suite`: what its client seals records with.
pub fn encrypter(
    suite: SupportedCipherSuite,
    keys: ConnectionTrafficSecrets,
) -> Box<dyn MessageEncrypter> {
    let (key, iv) = match keys {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => panic!("keys of an unknown kind"),
    };
    match suite {
        SupportedCipherSuite::Tls13(suite) => suite.aead_alg.encrypter(key, iv),
        SupportedCipherSuite::Tls12(suite) => {
            // The iv handed over is the fixed part and the first explicit nonce together.
            let fixed = suite.aead_alg.key_block_shape().fixed_iv_len;
            let (fixed_iv, explicit) = iv.as_ref().split_at(fixed);
            suite.aead_alg.encrypter(key, fixed_iv, explicit)
        }
    }
}

/// One record of type `typ` holding `payload`, sealed as record number `sequence`.
pub fn seal(
    encrypter: &mut dyn MessageEncrypter,
    sequence: u64,
    typ: u8,
    payload: &[u8],
) -> Vec<u8> {
    let message = OutboundPlainMessage {
        typ: ContentType::from(typ),
        version: ProtocolVersion::TLSv1_2,
        payload: OutboundChunks::Single(payload),
    };
    encrypter
        .encrypt(message, sequence)
        .expect("sealed")
        .encode()
}
