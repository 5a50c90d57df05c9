//! What a client sends after a TLS handshake, read as a shard reads it (`read_tls`). Either
//! - bytes from a client without the keys: the session never yields plaintext (no key sealed
//!   them) and refuses with the alert that says why; or
//! - records of any type and content that the client seals with its keys through rustls' record
//!   protection, so that inputs reach past decryption (record types, alerts, key updates,
//!   handshake messages split over records): the session yields only the application data the
//!   client sealed, in order, and all of it unless something went wrong.
//!
//! Either way it never panics, keeps at most one incomplete record between reads, and queues no
//! more than a few answers for a client that reads nothing.
//!
//! Input: a byte that picks the variant (even: bytes, odd: records), a byte that picks the
//! cipher suite among the three of TLS 1.3 and the three of TLS 1.2, then
//! - bytes: a byte that sets the size of every read (1 to 256 bytes), then the bytes;
//! - records: steps, each a byte and what it needs:
//!   - 0, `typ`, `len` (two bytes, little-endian): the client seals a record of type `typ` whose
//!     payload is the next `len` bytes, zeros where the input ends first, at most one byte
//!     longer than TLS allows;
//!   - 1: the client moves to its next keys, as after it sent a key update (TLS 1.3);
//!   - 2, `cut` (two bytes): the session reads the first `cut` bytes the client sent, or all;
//!   - 3: the socket takes what the session queued;
//!   - 4, `n`: the next `n` bytes go on the wire as they are, sealed by no key;
//!   - 5, `request`: the client sends a key update with that request byte and moves to its next
//!     keys (TLS 1.3), as rustls' client does;
//!
//!   and at the end the session reads whatever is left.
#![no_main]

use std::sync::{LazyLock, Mutex};

use gateway::tls::peers::{self, HandedOver, TLS12, TLS13};
use gateway::tls::records::{RecordError, MAX_FRAGMENT};
use gateway::tls::session::TlsSession;
use libfuzzer_sys::fuzz_target;
use rustls::crypto::cipher::MessageEncrypter;
use rustls::CipherSuite;

const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;
const KEY_UPDATE: u8 = 24;
/// Key updates the client can make in one input: more than the record layer takes in a row.
const KEY_UPDATES: usize = 40;
/// The most ciphertext a session keeps between reads: one incomplete record, that is a header
/// and at most the longest body TLS 1.2 allows (RFC 5246 §6.2.3).
const MAX_KEPT: usize = 5 + MAX_FRAGMENT + 2048;
/// The most a session queues for a client that reads nothing: a few answers (a key update, a
/// refusal to renegotiate, the alert that ends it), never one per record received.
const MAX_QUEUED: usize = 256;

/// A connection right after its handshake.
struct Connection {
    /// The gateway's side, copied for each input.
    server: TlsSession,
    /// TLS 1.3, whose records carry their real type inside.
    tls13: bool,
    /// The sequence number of the client's first record.
    sequence: u64,
    /// rustls' record protection under the client's keys: the first, then (TLS 1.3) those of
    /// each key update in turn.
    client_keys: Vec<Box<dyn MessageEncrypter>>,
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
    let HandedOver {
        server,
        mut client,
        client_keys: (sequence, keys),
    } = peers::hand_over(suite);
    let negotiated = client.negotiated_cipher_suite();
    let tls13 = TLS13.contains(&suite);
    let mut client_keys = vec![peers::encrypter(negotiated, keys)];
    if tls13 {
        for _ in 0..KEY_UPDATES {
            let (_, keys) = client.update_tx_secret().expect("next keys");
            client_keys.push(peers::encrypter(negotiated, keys));
        }
    }
    Connection {
        server,
        tls13,
        sequence,
        client_keys,
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

    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let (Some(variant), Some(suite)) = (input.byte(), input.byte()) else {
        return;
    };
    let connections = &*CONNECTIONS;
    let mut connection = connections[usize::from(suite) % connections.len()]
        .lock()
        .expect("no input panicked before");
    let session = connection
        .server
        .copy_after_handshake()
        .expect("past the handshake");
    if variant % 2 == 0 {
        bytes(session, input);
    } else {
        records(&mut connection, session, input);
    }
});

/// Has `session` read `bytes` as a shard does: after what the last read left of a record,
/// keeping what is left of one now.
fn read(
    session: &mut TlsSession,
    bytes: &[u8],
    on_plain: &mut dyn FnMut(&[u8]),
) -> Result<(), RecordError> {
    let mut buf = session.take_incoming();
    buf.extend_from_slice(bytes);
    let absorbed = session.absorb(&mut buf, on_plain);
    let queued = session.outgoing().len();
    assert!(queued <= MAX_QUEUED, "{queued} bytes queued for the client");
    let used = absorbed?;
    if session.peer_closed() {
        // The shard closes the connection: what came after close_notify is dropped.
        return Ok(());
    }
    let kept = &buf[used..];
    assert!(
        kept.len() <= MAX_KEPT,
        "{} bytes kept between reads",
        kept.len()
    );
    if !kept.is_empty() {
        session.keep_incoming(kept);
    }
    Ok(())
}

/// Bytes from a client without the keys.
fn bytes(mut session: TlsSession, mut input: Input) {
    let Some(read_size) = input.byte() else {
        return;
    };
    for bytes in input.0.chunks(usize::from(read_size) + 1) {
        let read = read(&mut session, bytes, &mut |plain| {
            panic!("{} bytes of plaintext that no key sealed", plain.len())
        });
        if read.is_err() {
            assert!(session.has_outgoing(), "a refusal comes with an alert");
            return;
        }
        assert!(!session.peer_closed(), "close_notify without the key");
    }
}

/// The client's side of the records variant.
struct Client<'a> {
    connection: &'a mut Connection,
    /// Which of the client's keys it seals with, and the sequence number of its next record.
    key: usize,
    sequence: u64,
    /// Sent but not read by the session yet.
    wire: Vec<u8>,
    /// The application data sent, in order.
    sealed: Vec<u8>,
}

impl Client<'_> {
    fn seal(&mut self, typ: u8, payload: &[u8]) {
        let encrypter = &mut *self.connection.client_keys[self.key];
        self.wire
            .extend(peers::seal(encrypter, self.sequence, typ, payload));
        self.sequence += 1;
        let data = application_data(self.connection.tls13, typ, payload);
        self.sealed.extend_from_slice(data);
    }

    fn next_key(&mut self) {
        if self.key + 1 < self.connection.client_keys.len() {
            self.key += 1;
            self.sequence = 0;
        }
    }
}

/// Records the client seals.
fn records(connection: &mut Connection, mut session: TlsSession, mut input: Input) {
    let mut client = Client {
        sequence: connection.sequence,
        connection,
        key: 0,
        wire: Vec::new(),
        sealed: Vec::new(),
    };
    let mut received = Vec::new();
    let mut forged = false;
    // Until the session refuses something or the client closed the connection.
    let mut open = true;
    while let Some(step) = input.byte() {
        match step % 6 {
            0 => {
                let (Some(typ), Some(len)) = (input.byte(), input.len()) else {
                    break;
                };
                let len = len.min(MAX_FRAGMENT + 1);
                let mut payload = input.bytes(len).to_vec();
                payload.resize(len, 0);
                client.seal(typ, &payload);
            }
            1 => client.next_key(),
            2 => {
                let Some(cut) = input.len() else {
                    break;
                };
                let rest = client.wire.split_off(cut.min(client.wire.len()));
                let bytes = std::mem::replace(&mut client.wire, rest);
                let read = read(&mut session, &bytes, &mut |plain| {
                    received.extend_from_slice(plain)
                });
                open = read.is_ok() && !session.peer_closed();
                if !open {
                    break;
                }
            }
            3 => session.sent(session.outgoing().len()),
            4 => {
                let Some(n) = input.byte() else {
                    break;
                };
                client.wire.extend_from_slice(input.bytes(usize::from(n)));
                forged = true;
            }
            _ => {
                let Some(request) = input.byte() else {
                    break;
                };
                client.seal(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, request]);
                client.next_key();
            }
        }
    }
    if open {
        let read = read(&mut session, &client.wire, &mut |plain| {
            received.extend_from_slice(plain)
        });
        open = read.is_ok() && !session.peer_closed();
    }
    assert!(
        client.sealed.starts_with(&received),
        "only what the client sealed, in order"
    );
    if open && !forged {
        assert_eq!(
            received.len(),
            client.sealed.len(),
            "all that the client sealed"
        );
    }
}

/// The application data in a record the client sealed. TLS 1.3 takes a type of zero for
/// padding: the real type is then the payload's last byte that is not zero (RFC 8446 §5.4).
fn application_data(tls13: bool, typ: u8, payload: &[u8]) -> &[u8] {
    let (typ, content) = match payload.iter().rposition(|&byte| byte != 0) {
        Some(end) if tls13 && typ == 0 => (payload[end], &payload[..end]),
        _ => (typ, payload),
    };
    if typ == APPLICATION_DATA {
        content
    } else {
        &[]
    }
}
