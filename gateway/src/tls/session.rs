//! One TLS connection, with no IO. rustls' unbuffered API runs the handshake over buffers the
//! caller owns; then the traffic secrets move to the gateway's record layer (`records`), which
//! keeps only keys between records. Ciphertext stays here only for a record split across reads
//! or bytes the socket has not taken yet, so an idle TLS connection holds its keys and nothing
//! else.

use std::sync::Arc;

use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{AppDataRecord, ConnectionState, EncodeError, UnbufferedStatus};
use rustls::ServerConfig;

use super::records::{RecordError, RecordLayer, Sealer};

/// One TLS connection's state.
pub struct TlsSession {
    state: TlsState,
    /// Ciphertext of a record that straddles reads.
    incoming: Vec<u8>,
    /// Ciphertext the socket has not taken yet.
    outgoing: Vec<u8>,
    peer_closed: bool,
}

enum TlsState {
    /// rustls runs the handshake; boxed, as it is over ten times the size of what follows.
    Handshake(Box<UnbufferedServerConnection>),
    /// Records are protected here; rustls keeps only what key updates need.
    Traffic(RecordLayer),
    /// The hand-over from rustls failed; the connection can only close.
    Failed,
}

/// Appends what rustls encodes, growing the buffer when it asks for more room.
fn encode_into(
    out: &mut Vec<u8>,
    mut encode: impl FnMut(&mut [u8]) -> Result<usize, EncodeError>,
) -> Result<(), RecordError> {
    let start = out.len();
    let mut room = 4096;
    loop {
        out.resize(start + room, 0);
        match encode(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(size)) if size.required_size > room => {
                room = size.required_size;
            }
            Err(error) => {
                out.truncate(start);
                return Err(rustls::Error::General(error.to_string()).into());
            }
        }
    }
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            state: TlsState::Handshake(Box::new(UnbufferedServerConnection::new(config)?)),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            peer_closed: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        matches!(self.state, TlsState::Handshake(_))
    }

    /// Processes the ciphertext in `buf`, handing each plaintext payload to `on_plain` and
    /// queuing what the protocol answers (handshake, tickets, key updates, alerts) in
    /// `outgoing`. Returns how many bytes it used; the rest is an incomplete record. On a
    /// protocol error the alert that explains it waits in `outgoing`.
    pub fn absorb(
        &mut self,
        buf: &mut [u8],
        on_plain: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RecordError> {
        let mut used = 0;
        if let TlsState::Handshake(conn) = &mut self.state {
            let (handshaken, finished) = handshake_step(
                conn,
                buf,
                &mut self.outgoing,
                &mut self.peer_closed,
                on_plain,
            )?;
            used = handshaken;
            if finished {
                self.hand_over()?;
            }
        }
        let TlsState::Traffic(records) = &mut self.state else {
            return Ok(used);
        };
        match records.open(&mut buf[used..], &mut self.outgoing, on_plain) {
            Ok(opened) => {
                self.peer_closed |= opened.peer_closed;
                Ok(used + opened.used)
            }
            Err(error) => {
                records.fail(&error, &mut self.outgoing);
                Err(error)
            }
        }
    }

    /// Moves the connection from rustls' handshake to the gateway's record layer.
    fn hand_over(&mut self) -> Result<(), RecordError> {
        let TlsState::Handshake(conn) = std::mem::replace(&mut self.state, TlsState::Failed) else {
            return Ok(());
        };
        let (secrets, kernel) = conn.dangerous_into_kernel_connection()?;
        self.state = TlsState::Traffic(RecordLayer::new(secrets, kernel)?);
        Ok(())
    }

    /// A sealer for a batch of application data; fails before the handshake is over.
    pub fn sealer(&mut self) -> Result<Sealer<'_>, RecordError> {
        match &mut self.state {
            TlsState::Traffic(records) => records.sealer(),
            _ => Err(rustls::Error::HandshakeNotComplete.into()),
        }
    }

    /// Appends a close_notify alert to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) {
        if let TlsState::Traffic(records) = &mut self.state {
            let _ = records.close_notify(out);
        }
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Ciphertext waiting for the socket.
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Ciphertext waiting for the socket.
    pub fn outgoing(&self) -> &[u8] {
        &self.outgoing
    }

    /// Drops the first `n` bytes of `outgoing`, which the socket took.
    pub fn sent(&mut self, n: usize) {
        self.outgoing.drain(..n);
        if self.outgoing.is_empty() {
            // An idle connection keeps no buffer.
            self.outgoing = Vec::new();
        }
    }

    /// Keeps ciphertext the socket did not take, to go out before anything else.
    pub fn keep_outgoing(&mut self, unsent: &[u8]) {
        self.outgoing.extend_from_slice(unsent);
    }

    /// Takes the bytes of a record split across reads (the caller puts them first).
    pub fn take_incoming(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.incoming)
    }

    /// Keeps the bytes of an incomplete record until more arrive.
    pub fn keep_incoming(&mut self, partial: &[u8]) {
        self.incoming = partial.to_vec();
    }
}

/// Runs rustls over `buf` during the handshake. Returns the bytes it used and whether the
/// handshake is over with nothing left for rustls to send, ready for the hand-over.
fn handshake_step(
    conn: &mut UnbufferedServerConnection,
    buf: &mut [u8],
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
    on_plain: &mut dyn FnMut(&[u8]),
) -> Result<(usize, bool), RecordError> {
    let mut used = 0;
    loop {
        let UnbufferedStatus { mut discard, state } = conn.process_tls_records(&mut buf[used..]);
        let stop = match state? {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let AppDataRecord {
                        discard: more,
                        payload,
                    } = record?;
                    discard += more;
                    on_plain(payload);
                }
                None
            }
            ConnectionState::EncodeTlsData(mut encoder) => {
                encode_into(outgoing, |out| encoder.encode(out))?;
                None
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // The bytes wait in `outgoing`; the caller sends them before anything else.
                transmit.done();
                None
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                *peer_closed = true;
                Some(false)
            }
            // A TLS 1.3 server may write before the client's Finished; only a finished
            // handshake is handed over.
            ConnectionState::WriteTraffic(_) => Some(true),
            // BlockedHandshake: nothing more to do until more arrives. (Early data stays off:
            // ServerConfig::max_early_data_size is left at 0.)
            _ => Some(false),
        };
        used += discard;
        if let Some(write_traffic) = stop {
            return Ok((used, write_traffic && !conn.is_handshaking()));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{ErrorKind, Read, Write};

    use rustls::pki_types::{PrivateKeyDer, ServerName};
    use rustls::{CipherSuite, ClientConfig, ClientConnection, RootCertStore};

    use super::*;

    const TLS13: [CipherSuite; 3] = [
        CipherSuite::TLS13_AES_128_GCM_SHA256,
        CipherSuite::TLS13_AES_256_GCM_SHA384,
        CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    const TLS12: [CipherSuite; 3] = [
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    ];

    /// A rustls client and the gateway's session, joined by byte buffers.
    struct Peers {
        client: ClientConnection,
        server: TlsSession,
        /// Application data the server has received.
        received: Vec<u8>,
        /// Application data the client has received.
        client_received: Vec<u8>,
    }

    impl Peers {
        /// Completes a handshake that offers only `suite`.
        fn connect(suite: CipherSuite) -> Peers {
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

            let mut offered = rustls::crypto::ring::default_provider();
            offered.cipher_suites.retain(|s| s.suite() == suite);
            let mut roots = RootCertStore::empty();
            roots.add(cert).expect("root");
            let client = ClientConfig::builder_with_provider(Arc::new(offered))
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_root_certificates(roots)
                .with_no_client_auth();
            let name = ServerName::try_from("localhost").expect("name");
            let mut peers = Peers {
                client: ClientConnection::new(Arc::new(client), name).expect("client"),
                server: TlsSession::new(Arc::new(server)).expect("server"),
                received: Vec::new(),
                client_received: Vec::new(),
            };
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
        fn exchange(&mut self) -> Result<(), RecordError> {
            let mut wire = self.server.take_incoming();
            while self.client.wants_write() {
                self.client.write_tls(&mut wire).expect("client writes");
            }
            let received = &mut self.received;
            let result = self
                .server
                .absorb(&mut wire, &mut |plain| received.extend_from_slice(plain));
            if let Ok(used) = result {
                if used < wire.len() {
                    self.server.keep_incoming(&wire[used..]);
                }
            }
            self.server_to_client().expect("client reads");
            result.map(|_| ())
        }

        fn server_to_client(&mut self) -> Result<(), rustls::Error> {
            let wire = self.server.outgoing().to_vec();
            self.server.sent(wire.len());
            self.deliver(&wire)
        }

        fn deliver(&mut self, wire: &[u8]) -> Result<(), rustls::Error> {
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
        fn server_sends(&mut self, data: &[u8]) -> Result<(), rustls::Error> {
            let mut wire = Vec::new();
            let mut sealer = self.server.sealer().expect("sealer");
            sealer.seal(data, &mut wire).expect("seal");
            self.deliver(&wire)
        }

        fn client_reads(&mut self) -> Vec<u8> {
            std::mem::take(&mut self.client_received)
        }

        fn records(&mut self) -> &mut RecordLayer {
            match &mut self.server.state {
                TlsState::Traffic(records) => records,
                _ => panic!("not handed over"),
            }
        }
    }

    fn big_message() -> Vec<u8> {
        (0..40_000u32).map(|i| (i % 251) as u8).collect()
    }

    #[test]
    fn every_suite_carries_data_both_ways_after_the_hand_over() {
        for suite in TLS13.into_iter().chain(TLS12) {
            let mut peers = Peers::connect(suite);
            peers.client.writer().write_all(b"ping").expect("write");
            peers.exchange().expect("server reads");
            assert_eq!(peers.received, b"ping", "{suite:?}");

            peers.server_sends(b"pong").expect("client reads pong");
            assert_eq!(peers.client_reads(), b"pong", "{suite:?}");
            let big = big_message();
            peers.server_sends(&big).expect("client reads big");
            assert_eq!(peers.client_reads(), big, "{suite:?}: split over records");

            peers.received.clear();
            peers.client.writer().write_all(&big).expect("write");
            peers.exchange().expect("server reads big");
            assert_eq!(peers.received, big, "{suite:?}");
        }
    }

    #[test]
    fn a_record_split_across_reads_waits_for_the_rest() {
        let mut peers = Peers::connect(TLS13[0]);
        peers.client.writer().write_all(b"hello").expect("write");
        let mut wire = Vec::new();
        peers.client.write_tls(&mut wire).expect("client writes");
        let mut noop = |_: &[u8]| panic!("no plaintext from part of a record");
        for cut in [0, 3, 5, wire.len() - 1] {
            let mut part = wire[..cut].to_vec();
            assert_eq!(
                peers.server.absorb(&mut part, &mut noop).expect("partial"),
                0
            );
        }
        let received = &mut peers.received;
        let used = peers
            .server
            .absorb(&mut wire, &mut |plain| received.extend_from_slice(plain))
            .expect("whole");
        assert_eq!(
            (used, peers.received.as_slice()),
            (wire.len(), &b"hello"[..])
        );
    }

    #[test]
    fn key_updates_from_the_client_are_followed_both_ways() {
        for suite in TLS13 {
            let mut peers = Peers::connect(suite);
            for round in 0..3 {
                // rustls asks for an update back, so both directions change keys.
                peers.client.refresh_traffic_keys().expect("key update");
                peers.client.writer().write_all(b"after").expect("write");
                peers.received.clear();
                peers.exchange().expect("server follows the new key");
                assert_eq!(peers.received, b"after", "{suite:?} round {round}");
                peers.server_sends(b"reply").expect("client follows");
                assert_eq!(peers.client_reads(), b"reply", "{suite:?} round {round}");
            }
        }
    }

    #[test]
    fn the_send_key_changes_before_it_wears_out() {
        for suite in TLS13 {
            let mut peers = Peers::connect(suite);
            peers.records().limit_records_per_send_key(3);
            let mut expected = Vec::new();
            for i in 0..10u8 {
                // The key changes every third record; the client must follow each announcement.
                let message = [b'm', i];
                peers
                    .server_sends(&message)
                    .expect("client follows the key update");
                expected.extend_from_slice(&message);
            }
            assert_eq!(peers.client_reads(), expected, "{suite:?}");
        }
    }

    #[test]
    fn tls12_ends_the_connection_when_its_keys_wear_out() {
        let mut peers = Peers::connect(CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256);
        peers.server_sends(b"first").expect("client reads");
        peers.records().limit_records_per_send_key(1);
        let mut wire = Vec::new();
        let error = peers
            .server
            .sealer()
            .expect("sealer")
            .seal(b"one too many", &mut wire)
            .expect_err("TLS 1.2 cannot change keys");
        assert!(matches!(error, RecordError::KeysExhausted), "{error}");
        assert!(wire.is_empty());
    }

    #[test]
    fn a_tampered_record_is_refused_with_an_alert() {
        for suite in [TLS13[0], TLS12[0], TLS12[2]] {
            let mut peers = Peers::connect(suite);
            peers.client.writer().write_all(b"hello").expect("write");
            let mut wire = Vec::new();
            peers.client.write_tls(&mut wire).expect("client writes");
            let last = wire.len() - 1;
            wire[last] ^= 1;
            let error = peers
                .server
                .absorb(&mut wire, &mut |_| {
                    panic!("no plaintext from a forged record")
                })
                .expect_err("forged record");
            assert!(
                matches!(error, RecordError::BadRecordMac),
                "{suite:?}: {error}"
            );
            let alert = peers.server_to_client().expect_err("the client hears why");
            assert_eq!(
                alert,
                rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac),
                "{suite:?}"
            );
        }
    }

    #[test]
    fn records_that_break_the_protocol_are_refused() {
        type Expected = fn(&RecordError) -> bool;
        let cases: [(&[u8], Expected); 3] = [
            // An unprotected change_cipher_spec after the handshake.
            (&[20, 3, 3, 0, 1, 1], |e| {
                matches!(e, RecordError::UnexpectedMessage(_))
            }),
            // A body longer than TLS 1.3 allows, refused from its header.
            (&[23, 3, 3, 0x41, 0x01], |e| {
                matches!(e, RecordError::RecordOverflow)
            }),
            // Too short to hold a tag.
            (&[23, 3, 3, 0, 2, 0, 0], |e| {
                matches!(e, RecordError::BadRecordMac)
            }),
        ];
        for (record, expected) in cases {
            let mut peers = Peers::connect(TLS13[0]);
            let mut wire = record.to_vec();
            let error = peers
                .server
                .absorb(&mut wire, &mut |_| panic!("no plaintext"))
                .expect_err("refused");
            assert!(expected(&error), "{record:?}: {error}");
        }
    }

    #[test]
    fn close_notify_goes_both_ways() {
        for suite in [TLS13[0], TLS12[0]] {
            let mut peers = Peers::connect(suite);
            peers.client.send_close_notify();
            peers.exchange().expect("close_notify");
            assert!(peers.server.peer_closed(), "{suite:?}");

            let mut peers = Peers::connect(suite);
            let mut wire = Vec::new();
            peers.server.close_notify(&mut wire);
            peers.deliver(&wire).expect("client reads close_notify");
            let mut rest = [0; 8];
            assert_eq!(peers.client.reader().read(&mut rest).expect("clean end"), 0);
        }
    }

    #[test]
    fn data_before_the_hand_over_is_refused() {
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(certified.signing_key.serialize_der().into());
        let config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![certified.cert.der().clone()], key)
                .unwrap();
        let mut session = TlsSession::new(Arc::new(config)).expect("session");
        assert!(session.sealer().is_err());
    }
}
