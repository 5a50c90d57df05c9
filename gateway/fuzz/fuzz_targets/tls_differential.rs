//! TLS records after the handshake, sealed by rustls and by the gateway's record layer and
//! opened by both, one direction of a connection per input: the client's records to the
//! gateway (opened by the gateway's session, sealed by its mirror, which keeps the client's end
//! as the gateway keeps its own) or the gateway's to the client (sealed by the session, opened
//! by the mirror). rustls' record protection under the same keys, from a handshake between
//! rustls' client and server whose server end the gateway took over, is the reference.
//!
//! - Every record the gateway seals (application data, the answer to a key update or to a
//!   renegotiation, the alert that ends a connection) opens in rustls, and is byte for byte the
//!   record rustls seals with the same content at the same place: the same keys, also after
//!   key updates, which the gateway derives itself.
//! - Every record on the wire (sealed by either, then bits flipped at will) opens to the same
//!   content in both, or both refuse it, for the same reason: it failed authentication, it is
//!   too long, or its content is not what TLS allows. The gateway refuses more only as RFC 8446
//!   and 5246 say, for what it does not take after a handshake, and for a TLS 1.3 header that
//!   is not what TLS 1.3 sends (rustls ignores it; the gateway authenticates it, §5.2).
//!
//! Input: a byte that picks the cipher suite among the three of TLS 1.3 and the three of TLS
//! 1.2, a byte whose low bit picks the direction, then steps, each a byte and what it needs:
//! - 0, `typ`, `len` (two bytes, little-endian): rustls seals a record of type `typ` whose
//!   payload is the next `len` bytes, zeros where the input ends first, at most one byte longer
//!   than TLS allows;
//! - 1, `len`: the gateway seals the next `len` bytes as application data (rustls does when the
//!   gateway can no longer);
//! - 2: the gateway changes its send keys (TLS 1.3), or refuses to renegotiate (TLS 1.2),
//!   being asked to by a record rustls seals to it;
//! - 3, `request`: rustls sends a key update with that request byte and moves to its next keys
//!   (TLS 1.3); the gateway's sender, left behind, seals no more;
//! - 4, `at` (two bytes), `xor`: a byte of what is on the wire changes;
//! - 5: the receivers open the whole records on the wire;
//!
//! and at the end they open what is left.
#![no_main]

use std::sync::{LazyLock, Mutex};

use gateway::tls::peers::{self, BothEnds, TLS12, TLS13};
use gateway::tls::records::{RecordError, MAX_FRAGMENT};
use gateway::tls::session::TlsSession;
use libfuzzer_sys::fuzz_target;
use rustls::crypto::cipher::{InboundOpaqueMessage, MessageDecrypter, MessageEncrypter};
use rustls::{CipherSuite, ConnectionTrafficSecrets, Error, SupportedCipherSuite};

const HEADER_LEN: usize = 5;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;
const FATAL: u8 = 2;
/// Key updates in one direction in one input: more than the record layer takes in a row.
const KEY_UPDATES: usize = 40;
/// The longest record body each version allows (RFC 8446 §5.2, RFC 5246 §6.2.3).
const MAX_BODY_TLS13: usize = MAX_FRAGMENT + 256;
const MAX_BODY_TLS12: usize = MAX_FRAGMENT + 2048;

/// One direction's keys, the first and those after each key update, as rustls has them: at
/// the end that seals and at the end that opens.
struct Chain {
    /// The sequence number of the first record under the first keys.
    first: u64,
    seal: Vec<Box<dyn MessageEncrypter>>,
    open: Vec<Box<dyn MessageDecrypter>>,
}

/// A connection right after its handshake.
struct Connection {
    /// The gateway's side, copied for each input.
    server: TlsSession,
    tls13: bool,
    /// The client's records, then the server's.
    chains: [Chain; 2],
}

// A handshake per input would slow the fuzzer many times over: each suite's is made once.
static CONNECTIONS: LazyLock<Vec<Mutex<Connection>>> = LazyLock::new(|| {
    TLS13
        .into_iter()
        .chain(TLS12)
        .map(|suite| Mutex::new(connect(suite)))
        .collect()
});

fn connect(suite: CipherSuite) -> Connection {
    let BothEnds {
        gateway,
        client: (client_keys, mut client),
        server: (server_keys, mut server),
    } = peers::both_ends(suite);
    let tls13 = TLS13.contains(&suite);
    let negotiated = client.negotiated_cipher_suite();
    let up = chain(
        negotiated,
        client_keys.tx,
        || client.update_tx_secret().expect("next keys").1,
        server_keys.rx,
        || server.update_rx_secret().expect("next keys").1,
    );
    let down = chain(
        negotiated,
        server_keys.tx,
        || server.update_tx_secret().expect("next keys").1,
        client_keys.rx,
        || client.update_rx_secret().expect("next keys").1,
    );
    Connection {
        server: gateway,
        tls13,
        chains: [up, down],
    }
}

/// A direction's keys from the end that seals and the end that opens, and (TLS 1.3) those
/// they move to at each key update.
fn chain(
    suite: SupportedCipherSuite,
    (first, sealing): (u64, ConnectionTrafficSecrets),
    mut seal_next: impl FnMut() -> ConnectionTrafficSecrets,
    (opened_from, opening): (u64, ConnectionTrafficSecrets),
    mut open_next: impl FnMut() -> ConnectionTrafficSecrets,
) -> Chain {
    assert_eq!(first, opened_from, "both ends at the same record");
    let mut chain = Chain {
        first,
        seal: vec![peers::encrypter(suite, sealing)],
        open: vec![peers::decrypter(suite, opening)],
    };
    if matches!(suite, SupportedCipherSuite::Tls13(_)) {
        for _ in 0..KEY_UPDATES {
            chain.seal.push(peers::encrypter(suite, seal_next()));
            chain.open.push(peers::decrypter(suite, open_next()));
        }
    }
    chain
}

/// Where a party is in a chain: which keys, and the sequence number of the next record.
#[derive(Clone, Copy, Debug)]
struct Place {
    keys: usize,
    sequence: u64,
}

impl Place {
    fn start(chain: &Chain) -> Place {
        Place {
            keys: 0,
            sequence: chain.first,
        }
    }

    fn next_keys(&mut self) {
        self.keys += 1;
        self.sequence = 0;
    }
}

/// The input, taken from the front.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn byte(&mut self) -> Option<u8> {
        let (&byte, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(byte)
    }

    fn len(&mut self) -> Option<usize> {
        Some(usize::from(u16::from_le_bytes([
            self.byte()?,
            self.byte()?,
        ])))
    }

    /// The next `n` bytes, zeros where the input ends first.
    fn payload(&mut self, n: usize) -> Vec<u8> {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        let mut payload = taken.to_vec();
        payload.resize(n, 0);
        payload
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(suite), Some(direction)) = (input.byte(), input.byte()) else {
        return;
    };
    let connections = &*CONNECTIONS;
    let mut connection = connections[usize::from(suite) % connections.len()]
        .lock()
        .expect("no input panicked before");
    let server = connection.server.copy_after_handshake().expect("records");
    let mirror = connection.server.mirrored().expect("records");
    let tls13 = connection.tls13;
    let [up, down] = &mut connection.chains;
    // The sender seals with `forward`'s keys and opens with `back`'s; the receiver the other
    // way round.
    let (sender, receiver, forward, back) = if direction % 2 == 0 {
        (mirror, server, up, down)
    } else {
        (server, mirror, down, up)
    };
    let mut run = Run {
        tls13,
        sender: Some(sender),
        sent: Place::start(forward),
        to_sender: Place::start(back),
        receiver: Some(receiver),
        received: Place::start(forward),
        answered: Place::start(back),
        handshake: Vec::new(),
        wire: Vec::new(),
        forward,
        back,
    };
    run.steps(input);
});

/// One direction of a connection.
struct Run<'a> {
    tls13: bool,
    /// The gateway's sender, while it keeps up with the records sent.
    sender: Option<TlsSession>,
    /// Where the records sent are in `forward`.
    sent: Place,
    /// Where the records sealed to the gateway's sender are in `back`.
    to_sender: Place,
    /// The gateway's receiver, until it refuses something or the connection closes.
    receiver: Option<TlsSession>,
    /// Where rustls opens the records received, in `forward`.
    received: Place,
    /// Where the receiver's answers are in `back`.
    answered: Place,
    /// Handshake messages received not yet whole (TLS 1.3: key updates split over records).
    handshake: Vec<u8>,
    /// Records sent, not yet received.
    wire: Vec<u8>,
    forward: &'a mut Chain,
    back: &'a mut Chain,
}

impl Run<'_> {
    fn steps(&mut self, mut input: Input) {
        while let Some(step) = input.byte() {
            match step % 6 {
                0 => {
                    let (Some(typ), Some(len)) = (input.byte(), input.len()) else {
                        break;
                    };
                    let payload = input.payload(len.min(MAX_FRAGMENT + 1));
                    self.rustls_seals(typ, &payload);
                }
                1 => {
                    let Some(len) = input.len() else {
                        break;
                    };
                    let payload = input.payload(len);
                    self.gateway_seals(&payload);
                }
                2 => self.gateway_asked(),
                3 => {
                    let Some(request) = input.byte() else {
                        break;
                    };
                    if self.tls13 && self.sent.keys + 1 < self.forward.seal.len() {
                        self.rustls_seals(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, request]);
                        self.sent.next_keys();
                        self.sender = None;
                    }
                }
                4 => {
                    let (Some(at), Some(xor)) = (input.len(), input.byte()) else {
                        break;
                    };
                    if !self.wire.is_empty() {
                        let at = at % self.wire.len();
                        self.wire[at] ^= xor;
                    }
                }
                _ => self.deliver(),
            }
        }
        self.deliver();
    }

    /// rustls seals a record as the sender; the gateway's sender seals one that goes nowhere,
    /// so that its sequence number keeps up.
    fn rustls_seals(&mut self, typ: u8, payload: &[u8]) {
        let Place { keys, sequence } = self.sent;
        let record = peers::seal(&mut *self.forward.seal[keys], sequence, typ, payload);
        self.wire.extend(record);
        self.sent.sequence += 1;
        if let Some(sender) = &mut self.sender {
            let mut nowhere = Vec::new();
            let sealed = sender.sealer().and_then(|mut s| s.seal(&[0], &mut nowhere));
            assert!(sealed.is_ok(), "the sender seals");
        }
    }

    /// The gateway's sender seals application data, as rustls would.
    fn gateway_seals(&mut self, data: &[u8]) {
        let Some(sender) = &mut self.sender else {
            for fragment in data.chunks(MAX_FRAGMENT) {
                self.rustls_seals(APPLICATION_DATA, fragment);
            }
            return;
        };
        let mut records = Vec::new();
        let sealed = sender.sealer().and_then(|mut s| s.seal(data, &mut records));
        assert!(sealed.is_ok(), "the sender seals");
        let opened = sealed_as_rustls_seals(self.tls13, self.forward, &mut self.sent, &records);
        assert!(opened.iter().all(|(typ, _)| *typ == APPLICATION_DATA));
        let content: Vec<u8> = opened.into_iter().flat_map(|(_, plain)| plain).collect();
        assert_eq!(content, data, "the application data sealed");
        self.wire.extend(records);
    }

    /// A record that rustls seals to the gateway's sender asks it to change its send keys
    /// (TLS 1.3) or to renegotiate (TLS 1.2); it answers on the wire.
    fn gateway_asked(&mut self) {
        let Some(sender) = &mut self.sender else {
            return;
        };
        let (asked, answer): (&[u8], &[u8]) = if self.tls13 {
            (&[KEY_UPDATE, 0, 0, 1, 1], &[KEY_UPDATE, 0, 0, 1, 0])
        } else {
            (&[CLIENT_HELLO, 0, 0, 0], &[1, 100])
        };
        let (keys, sequence) = (self.to_sender.keys, self.to_sender.sequence);
        if keys + 1 >= self.back.seal.len() {
            return;
        }
        let mut record = peers::seal(&mut *self.back.seal[keys], sequence, HANDSHAKE, asked);
        let read = sender.absorb(&mut record, &mut |plain| {
            panic!(
                "{} bytes of application data from a handshake record",
                plain.len()
            )
        });
        let records = sender.outgoing().to_vec();
        sender.sent(records.len());
        let opened = sealed_as_rustls_seals(self.tls13, self.forward, &mut self.sent, &records);
        match read {
            Ok(_) => {
                self.to_sender.sequence += 1;
                if self.tls13 {
                    self.to_sender.next_keys();
                    assert_eq!(opened, [(HANDSHAKE, answer.to_vec())]);
                } else {
                    assert_eq!(opened, [(ALERT, answer.to_vec())]);
                }
            }
            Err(_) => {
                // Asked too often: the sender ends with its alert.
                assert!(matches!(&opened[..], [(ALERT, alert)] if alert[0] == FATAL));
                self.sender = None;
            }
        }
        self.wire.extend(records);
    }

    /// The receivers open the whole records on the wire, one at a time.
    fn deliver(&mut self) {
        loop {
            let Some(&[_, _, _, hi, lo]) = self.wire.get(..HEADER_LEN) else {
                return;
            };
            let end = HEADER_LEN + usize::from(u16::from_be_bytes([hi, lo]));
            if end > self.wire.len() {
                return;
            }
            let record: Vec<u8> = self.wire.drain(..end).collect();
            if self.receiver.is_none() || self.received.keys >= self.forward.open.len() {
                return;
            }
            self.receive(record);
        }
    }

    /// Opens one record in rustls and in the gateway's receiver, which must agree.
    fn receive(&mut self, mut record: Vec<u8>) {
        let Some(receiver) = &mut self.receiver else {
            return;
        };
        let mut plain = Vec::new();
        let read = receiver.absorb(&mut record.clone(), &mut |data| {
            plain.extend_from_slice(data)
        });
        let closed = receiver.peer_closed();
        let answers = receiver.outgoing().to_vec();
        receiver.sent(answers.len());
        let sent = sealed_as_rustls_seals(self.tls13, self.back, &mut self.answered, &answers);
        assert!(
            sent.iter().all(|(typ, _)| *typ != APPLICATION_DATA),
            "answers only"
        );

        let body_len = record.len() - HEADER_LEN;
        let max_body = if self.tls13 {
            MAX_BODY_TLS13
        } else {
            MAX_BODY_TLS12
        };
        if body_len > max_body {
            assert!(matches!(read, Err(RecordError::RecordOverflow)), "{read:?}");
            self.receiver = None;
            return;
        }
        if self.tls13 && record[..3] != [APPLICATION_DATA, 3, 3] {
            assert!(
                read.is_err() && plain.is_empty(),
                "TLS 1.3 header {:?}",
                &record[..3]
            );
            self.receiver = None;
            return;
        }
        let opened = open(
            &mut *self.forward.open[self.received.keys],
            self.received.sequence,
            &mut record,
        );
        let (typ, content) = match opened {
            Ok(opened) => opened,
            Err(refused) => {
                assert!(plain.is_empty());
                match read {
                    Err(RecordError::BadRecordMac) => assert_eq!(refused, Error::DecryptError),
                    Err(RecordError::RecordOverflow) => {
                        assert_eq!(refused, Error::PeerSentOversizedRecord)
                    }
                    Err(RecordError::UnexpectedMessage(_)) => {
                        assert!(matches!(refused, Error::PeerMisbehaved(_)), "{refused:?}")
                    }
                    other => panic!("rustls refused with {refused:?}, the gateway: {other:?}"),
                }
                self.receiver = None;
                return;
            }
        };
        self.received.sequence += 1;
        match read {
            Ok(_) if typ == APPLICATION_DATA => assert_eq!(plain, content, "the same data"),
            Ok(_) => assert!(plain.is_empty(), "data from a record of type {typ}"),
            Err(refused) => {
                assert!(plain.is_empty());
                // What it opened, the gateway may not take: but not for a reason rustls would
                // have refused it for.
                assert!(
                    !matches!(
                        refused,
                        RecordError::BadRecordMac
                            | RecordError::RecordOverflow
                            | RecordError::UnexpectedMessage("record without a type")
                    ),
                    "rustls opened a record of type {typ} that the gateway refused: {refused:?}"
                );
                self.receiver = None;
                return;
            }
        }
        if closed {
            assert!(typ == ALERT && content.get(1) == Some(&0), "close_notify");
            self.receiver = None;
        } else if self.tls13 && typ == HANDSHAKE {
            // The receiver took it: key updates, whole or in pieces, each moving to the next
            // keys once whole.
            self.handshake.extend_from_slice(&content);
            while self.handshake.len() >= HEADER_LEN {
                assert_eq!(self.handshake[..4], [KEY_UPDATE, 0, 0, 1]);
                self.handshake.drain(..HEADER_LEN);
                self.received.next_keys();
            }
        }
    }
}

/// rustls opens `record` (header and body) as the record number `sequence` under `open`'s
/// keys: its type and content, or why not.
fn open(
    open: &mut dyn MessageDecrypter,
    sequence: u64,
    record: &mut [u8],
) -> Result<(u8, Vec<u8>), Error> {
    let (header, body) = record.split_at_mut(HEADER_LEN);
    let version = u16::from_be_bytes([header[1], header[2]]);
    let message = InboundOpaqueMessage::new(header[0].into(), version.into(), body);
    let plain = open.decrypt(message, sequence)?;
    Ok((plain.typ.into(), plain.payload.to_vec()))
}

/// Checks records the gateway sealed, from `place` in `chain` on: each opens in rustls, and is
/// what rustls seals with the same content there. Moves `place` past them; returns their types
/// and contents.
fn sealed_as_rustls_seals(
    tls13: bool,
    chain: &mut Chain,
    place: &mut Place,
    mut records: &[u8],
) -> Vec<(u8, Vec<u8>)> {
    let mut opened = Vec::new();
    while !records.is_empty() {
        let len = usize::from(u16::from_be_bytes([records[3], records[4]]));
        let (record, rest) = records.split_at(HEADER_LEN + len);
        records = rest;
        let keys = place.keys;
        if keys >= chain.open.len() {
            // Past the key updates made for an input.
            break;
        }
        let (typ, content) = open(&mut *chain.open[keys], place.sequence, &mut record.to_vec())
            .expect("rustls opens what the gateway seals");
        let resealed = peers::seal(&mut *chain.seal[keys], place.sequence, typ, &content);
        assert_eq!(record, resealed, "sealed as rustls seals");
        place.sequence += 1;
        if tls13 && typ == HANDSHAKE && content.first() == Some(&KEY_UPDATE) {
            place.next_keys();
        }
        opened.push((typ, content));
    }
    opened
}
