//! A rustls client and the gateway's TLS session joined by byte buffers, or rustls at both ends
//! with the gateway's record layer taking over the server's, for tests and the fuzz targets
//! (`gateway/fuzz`).

use std::io::{ErrorKind, Read};
use std::sync::Arc;

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::crypto::cipher::{
    AeadKey, Iv, MessageDecrypter, MessageEncrypter, OutboundChunks, OutboundPlainMessage,
};
use rustls::kernel::KernelConnection;
use rustls::pki_types::{PrivateKeyDer, ServerName};
use rustls::server::{ServerConnectionData, UnbufferedServerConnection};
use rustls::unbuffered::{ConnectionState, UnbufferedStatus};
use rustls::{
    CipherSuite, ClientConfig, ClientConnection, ConnectionTrafficSecrets, ContentType,
    ExtractedSecrets, ProtocolVersion, RootCertStore, ServerConfig, SupportedCipherSuite,
};

use super::records::{RecordError, RecordLayer};
use super::secrets::{self, Caught};
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

/// Runs one end's handshake over what it received as far as it goes, appending what it sends
/// to `outgoing`; true once it is done and has read everything. A macro, as rustls'
/// `process_tls_records` is not generic over the two ends.
macro_rules! step {
    ($end:expr, $incoming:expr, $outgoing:expr) => {
        loop {
            let left = $incoming.len();
            let status = $end.process_tls_records(&mut $incoming);
            let (discard, stopped) = answer(status, left, &mut $outgoing);
            $incoming.drain(..discard);
            if let Some(ready) = stopped {
                break ready && !$end.is_handshaking();
            }
        }
    };
}

/// Does what one end's state asks: how much of its input it is done with, and, when it waits
/// for the other end, whether it has read all of `left` bytes and may send data.
fn answer<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    left: usize,
    outgoing: &mut Vec<u8>,
) -> (usize, Option<bool>) {
    let UnbufferedStatus { discard, state } = status;
    let stopped = match state.expect("handshake") {
        ConnectionState::EncodeTlsData(mut encoder) => {
            encode_into(outgoing, |out| encoder.encode(out)).expect("encodes");
            None
        }
        ConnectionState::TransmitTlsData(transmit) => {
            transmit.done();
            None
        }
        ConnectionState::BlockedHandshake => Some(false),
        ConnectionState::WriteTraffic(_) => Some(discard == left),
        state => panic!("handshake: {state:?}"),
    };
    (discard, stopped)
}

/// rustls at both ends of a connection after its handshake, each having handed its keys over,
/// and the gateway's record layer taking over the server's end as after its own handshakes.
/// rustls then holds each direction's keys twice (at the client and at the server), so that a
/// test both seals and opens with rustls what the gateway opens and seals.
pub struct BothEnds {
    /// The gateway's session, with the keys of rustls' server.
    pub gateway: TlsSession,
    /// The keys rustls' client seals and opens with, and what makes its next ones.
    pub client: (ExtractedSecrets, KernelConnection<ClientConnectionData>),
    /// The same for rustls' server.
    pub server: (ExtractedSecrets, KernelConnection<ServerConnectionData>),
}

/// Completes a handshake between rustls' client and rustls' server that offers only `suite`.
pub fn both_ends(suite: CipherSuite) -> BothEnds {
    let (server, client) = configs(suite, |_| {});
    let mut server = UnbufferedServerConnection::new(server).expect("server");
    let mut client = UnbufferedClientConnection::new(client, server_name()).expect("client");
    let (mut to_client, mut to_server) = (Vec::new(), Vec::new());
    // The traffic secrets, for the gateway's record layer to follow key updates.
    secrets::clear_caught();
    loop {
        let client_ready = step!(client, to_client, to_server);
        let server_ready = step!(server, to_server, to_client);
        if client_ready && server_ready && to_client.is_empty() && to_server.is_empty() {
            break;
        }
    }
    let mut traffic = Caught::default();
    secrets::take_caught(&mut traffic);
    let (keys, kernel) = server
        .dangerous_into_kernel_connection()
        .expect("the server hands over");
    let (suite, version) = (kernel.negotiated_cipher_suite(), kernel.protocol_version());
    let records = RecordLayer::new(&keys, suite, version, &traffic).expect("record layer");
    BothEnds {
        gateway: TlsSession::after_handshake(records),
        client: client
            .dangerous_into_kernel_connection()
            .expect("the client hands over"),
        server: (keys, kernel),
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

/// The AEAD key and iv of traffic secrets, whatever the cipher.
fn key_and_iv(keys: ConnectionTrafficSecrets) -> (AeadKey, Iv) {
    match keys {
        ConnectionTrafficSecrets::Aes128Gcm { key, iv }
        | ConnectionTrafficSecrets::Aes256Gcm { key, iv }
        | ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (key, iv),
        _ => panic!("keys of an unknown kind"),
    }
}

/// rustls' record protection under `keys` of `suite`: what its client seals records with.
pub fn encrypter(
    suite: SupportedCipherSuite,
    keys: ConnectionTrafficSecrets,
) -> Box<dyn MessageEncrypter> {
    let (key, iv) = key_and_iv(keys);
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

/// rustls' record protection under `keys` of `suite`, opening.
pub fn decrypter(
    suite: SupportedCipherSuite,
    keys: ConnectionTrafficSecrets,
) -> Box<dyn MessageDecrypter> {
    let (key, iv) = key_and_iv(keys);
    match suite {
        SupportedCipherSuite::Tls13(suite) => suite.aead_alg.decrypter(key, iv),
        SupportedCipherSuite::Tls12(suite) => {
            // Only the fixed part: the explicit nonce comes with each record.
            let fixed = suite.aead_alg.key_block_shape().fixed_iv_len;
            suite.aead_alg.decrypter(key, &iv.as_ref()[..fixed])
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
