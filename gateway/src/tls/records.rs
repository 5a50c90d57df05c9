//! TLS record protection once the handshake is over, with no IO.
//!
//! rustls runs the handshake; then its record keys move here, and rustls' connection is dropped.
//! TLS 1.3 key updates are derived here from the traffic secrets (`secrets`). Between records a
//! connection holds just the raw keys, initialisation vectors, those secrets and sequence
//! numbers: the expanded AEAD key (544 bytes per direction in ring) is built per batch of records
//! and dropped with it, which is what lets an idle TLS connection fit the memory budget.
//!
//! Record formats: RFC 8446 §5 (TLS 1.3: one outer type, the real type inside, nonce = iv XOR
//! sequence, the header as additional data), RFC 5288 (TLS 1.2 AES-GCM: four-byte salt plus an
//! explicit eight-byte nonce) and RFC 7905 (TLS 1.2 ChaCha20-Poly1305: nonce = iv XOR sequence).

use ring::aead::{Aad, Algorithm, LessSafeKey, Nonce, UnboundKey, AES_128_GCM, AES_256_GCM};
use ring::aead::{CHACHA20_POLY1305, NONCE_LEN};
use rustls::{ConnectionTrafficSecrets, ExtractedSecrets, ProtocolVersion, SupportedCipherSuite};
use zeroize::Zeroize;

use super::secrets::{Caught, TrafficSecret};

const HEADER_LEN: usize = 5;
const TAG_LEN: usize = 16;
const EXPLICIT_NONCE_LEN: usize = 8;
/// Largest plaintext in one record.
pub const MAX_FRAGMENT: usize = 16 * 1024;
/// Largest protected record body each version allows (RFC 8446 §5.2, RFC 5246 §6.2.3).
const MAX_BODY_TLS13: usize = MAX_FRAGMENT + 256;
const MAX_BODY_TLS12: usize = MAX_FRAGMENT + 2048;
/// rustls refreshes or closes well before the 64-bit sequence number could wrap.
const SEQUENCE_SOFT_LIMIT: u64 = 0xffff_ffff_ffff_0000;

const CHANGE_CIPHER_SPEC: u8 = 20;
const ALERT: u8 = 21;
const HANDSHAKE: u8 = 22;
const APPLICATION_DATA: u8 = 23;

/// Type and length before each handshake message's body.
const MESSAGE_HEADER_LEN: usize = 4;
/// Longest handshake message taken in pieces over several records. TLS 1.3 allows only a
/// KeyUpdate (5 bytes) after the handshake; the rest is room for the ClientHello of a TLS 1.2
/// renegotiation, which is only refused. The pieces are kept only until the message is whole.
const MAX_SPLIT_MESSAGE: usize = 512;

const CLIENT_HELLO: u8 = 1;
const KEY_UPDATE: u8 = 24;
const UPDATE_NOT_REQUESTED: u8 = 0;
const UPDATE_REQUESTED: u8 = 1;

const WARNING: u8 = 1;
const FATAL: u8 = 2;
const CLOSE_NOTIFY: u8 = 0;
const UNEXPECTED_MESSAGE: u8 = 10;
const BAD_RECORD_MAC: u8 = 20;
const RECORD_OVERFLOW: u8 = 22;
const ILLEGAL_PARAMETER: u8 = 47;
const DECODE_ERROR: u8 = 50;
const INTERNAL_ERROR: u8 = 80;
const USER_CANCELED: u8 = 90;
const NO_RENEGOTIATION: u8 = 100;

/// Why a connection's records cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("a record failed authentication")]
    BadRecordMac,
    #[error("a record is longer than TLS allows")]
    RecordOverflow,
    #[error("unexpected {0} after the handshake")]
    UnexpectedMessage(&'static str),
    #[error("a malformed post-handshake message")]
    Decode,
    #[error("a post-handshake message with a value TLS does not define: {0}")]
    IllegalParameter(&'static str),
    #[error("the peer sent fatal alert {0}")]
    PeerAlert(u8),
    #[error("too many {0} without application data between them")]
    Flood(&'static str),
    #[error("TLS 1.2 keys are used up; the connection ends with close_notify")]
    KeysExhausted,
    #[error("cipher suite {0:?} has no record protection here")]
    UnsupportedSuite(rustls::CipherSuite),
    #[error("TLS: {0}")]
    Tls(#[from] rustls::Error),
}

impl RecordError {
    /// The alert to send before closing, when the peer should hear one.
    fn alert(&self) -> Option<u8> {
        match self {
            RecordError::BadRecordMac => Some(BAD_RECORD_MAC),
            RecordError::RecordOverflow => Some(RECORD_OVERFLOW),
            RecordError::UnexpectedMessage(_) | RecordError::Flood(_) => Some(UNEXPECTED_MESSAGE),
            RecordError::Decode => Some(DECODE_ERROR),
            RecordError::IllegalParameter(_) => Some(ILLEGAL_PARAMETER),
            RecordError::PeerAlert(_) | RecordError::KeysExhausted => None,
            RecordError::UnsupportedSuite(_) | RecordError::Tls(_) => Some(INTERNAL_ERROR),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    Tls12,
    Tls13,
}

/// One direction's record key and iv, the TLS 1.3 traffic secret they come from (for the next
/// key update), and the next record's sequence number.
#[cfg_attr(any(test, feature = "fuzzing"), derive(Clone))]
struct Direction {
    algorithm: &'static Algorithm,
    /// The first `algorithm.key_len()` bytes are the key.
    key: [u8; 32],
    iv: [u8; NONCE_LEN],
    secret: Option<TrafficSecret>,
    sequence: u64,
}

impl Drop for Direction {
    fn drop(&mut self) {
        self.key.zeroize();
        self.iv.zeroize();
    }
}

impl Direction {
    /// Takes over rustls' keys for one direction.
    fn from_rustls(
        secrets: &ConnectionTrafficSecrets,
        secret: Option<TrafficSecret>,
        sequence: u64,
    ) -> Result<Direction, RecordError> {
        let (algorithm, given_key, given_iv) = match secrets {
            ConnectionTrafficSecrets::Aes128Gcm { key, iv } => (&AES_128_GCM, key, iv),
            ConnectionTrafficSecrets::Aes256Gcm { key, iv } => (&AES_256_GCM, key, iv),
            ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv } => (&CHACHA20_POLY1305, key, iv),
            _ => return Err(hand_over_error("unknown traffic secret kind")),
        };
        let given_key = given_key.as_ref();
        if given_key.len() != algorithm.key_len() {
            return Err(hand_over_error("traffic key of the wrong length"));
        }
        // Every AEAD here has a key of at most 32 bytes.
        let mut key = [0; 32];
        key[..given_key.len()].copy_from_slice(given_key);
        let iv = given_iv
            .as_ref()
            .try_into()
            .map_err(|_| hand_over_error("traffic iv of the wrong length"))?;
        let direction = Direction {
            algorithm,
            key,
            iv,
            secret,
            sequence,
        };
        // The secret caught from rustls' key log must be the one behind the keys it gave.
        if let Some(secret) = &direction.secret {
            let (derived_key, derived_iv) = secret.key_and_iv(algorithm.key_len());
            if derived_key != direction.key || derived_iv != direction.iv {
                return Err(hand_over_error("traffic secret does not match the keys"));
            }
        }
        Ok(direction)
    }

    /// The direction's keys after a TLS 1.3 key update: derived from the next traffic secret,
    /// sequence numbers from 0 again.
    fn updated(&self) -> Result<Direction, RecordError> {
        let secret = self
            .secret
            .as_ref()
            .ok_or(RecordError::UnexpectedMessage("key_update"))?
            .next();
        let (key, iv) = secret.key_and_iv(self.algorithm.key_len());
        Ok(Direction {
            algorithm: self.algorithm,
            key,
            iv,
            secret: Some(secret),
            sequence: 0,
        })
    }

    /// Expands the key for a batch of records.
    fn key(&self) -> Result<(LessSafeKey, [u8; NONCE_LEN]), RecordError> {
        let key = UnboundKey::new(self.algorithm, &self.key[..self.algorithm.key_len()])
            .map_err(|_| hand_over_error("traffic key of the wrong length"))?;
        Ok((LessSafeKey::new(key), self.iv))
    }

    fn is_gcm(&self) -> bool {
        self.algorithm != &CHACHA20_POLY1305
    }

    /// The nonce for the next record: the iv with the sequence number XORed into its tail.
    fn nonce(&self, iv: &[u8; NONCE_LEN]) -> [u8; NONCE_LEN] {
        let mut nonce = *iv;
        for (byte, seq) in nonce[4..].iter_mut().zip(self.sequence.to_be_bytes()) {
            *byte ^= seq;
        }
        nonce
    }
}

/// TLS 1.2's additional data: sequence number, type, version and plaintext length.
fn tls12_aad(sequence: u64, typ: u8, version: [u8; 2], len: usize) -> [u8; 13] {
    let mut aad = [0; 13];
    aad[..8].copy_from_slice(&sequence.to_be_bytes());
    aad[8] = typ;
    aad[9..11].copy_from_slice(&version);
    aad[11..].copy_from_slice(&(len as u16).to_be_bytes());
    aad
}

/// What a batch of received records came to.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Opened {
    /// Bytes of whole records taken from the buffer; the rest is an incomplete record.
    pub used: usize,
    /// The peer sent close_notify.
    pub peer_closed: bool,
}

/// A send key expanded for a batch of records, with its iv.
type SendKey = (LessSafeKey, [u8; NONCE_LEN]);

/// How many records without application data may come in a row before the peer is taken to be
/// flooding (each of them costs work, some an answer), as rustls counts them.
const MAX_KEY_UPDATES_IN_A_ROW: u8 = 32;
const MAX_WARNINGS_IN_A_ROW: u8 = 4;
const MAX_EMPTY_IN_A_ROW: u8 = 32;

/// Records since the last one with application data, by kind.
#[cfg_attr(any(test, feature = "fuzzing"), derive(Clone))]
#[derive(Default)]
struct SinceData {
    key_updates: u8,
    warnings: u8,
    empty: u8,
}

impl SinceData {
    fn count(counter: &mut u8, limit: u8, what: &'static str) -> Result<(), RecordError> {
        *counter += 1;
        if *counter > limit {
            return Err(RecordError::Flood(what));
        }
        Ok(())
    }
}

/// A handshake message begun in one record, waiting for the rest from the next ones
/// (RFC 8446 §5.1).
#[cfg_attr(any(test, feature = "fuzzing"), derive(Clone))]
struct SplitMessage {
    filled: usize,
    bytes: [u8; MAX_SPLIT_MESSAGE],
}

impl SplitMessage {
    /// Moves bytes from the start of `from` until the message holds `upto`; how many it took.
    fn take(&mut self, from: &[u8], upto: usize) -> usize {
        let n = upto.saturating_sub(self.filled).min(from.len());
        self.bytes[self.filled..self.filled + n].copy_from_slice(&from[..n]);
        self.filled += n;
        n
    }
}

/// A connection's record protection after the handshake.
#[cfg_attr(any(test, feature = "fuzzing"), derive(Clone))]
pub struct RecordLayer {
    version: Version,
    rx: Direction,
    tx: Direction,
    /// The send sequence number at which the key must change (TLS 1.3, leaving room for the
    /// key update record itself) or the connection end (TLS 1.2, leaving room for close_notify).
    tx_limit: u64,
    since_data: SinceData,
    /// The peer asked for new send keys; they come before the next record sent.
    key_update_requested: bool,
    /// A TLS 1.2 peer asked to renegotiate; it was refused once and may not ask again.
    renegotiation_refused: bool,
    /// The start of a handshake message whose rest is in records still to come; boxed, so that
    /// a connection pays for the room only while a message is split.
    split: Option<Box<SplitMessage>>,
}

fn hand_over_error(what: &str) -> RecordError {
    RecordError::Tls(rustls::Error::General(what.into()))
}

impl RecordLayer {
    /// Takes over from rustls at the end of the handshake, given the suite and version it
    /// negotiated and, for TLS 1.3, the traffic secrets caught from its key log.
    pub fn new(
        secrets: &ExtractedSecrets,
        suite: SupportedCipherSuite,
        version: ProtocolVersion,
        traffic: &Caught,
    ) -> Result<RecordLayer, RecordError> {
        let common = match suite {
            SupportedCipherSuite::Tls12(suite) => &suite.common,
            SupportedCipherSuite::Tls13(suite) => &suite.common,
        };
        let version = match version {
            ProtocolVersion::TLSv1_3 => Version::Tls13,
            ProtocolVersion::TLSv1_2 => Version::Tls12,
            _ => return Err(RecordError::UnsupportedSuite(common.suite)),
        };
        let (rx_secret, tx_secret) = match version {
            Version::Tls12 => (None, None),
            Version::Tls13 => {
                let missing = || hand_over_error("no TLS 1.3 traffic secret from the key log");
                (
                    Some(traffic.client.clone().ok_or_else(missing)?),
                    Some(traffic.server.clone().ok_or_else(missing)?),
                )
            }
        };
        let ExtractedSecrets {
            tx: (tx_sequence, tx),
            rx: (rx_sequence, rx),
        } = secrets;
        Ok(RecordLayer {
            version,
            rx: Direction::from_rustls(rx, rx_secret, *rx_sequence)?,
            tx: Direction::from_rustls(tx, tx_secret, *tx_sequence)?,
            tx_limit: common.confidentiality_limit.min(SEQUENCE_SOFT_LIMIT) - 1,
            since_data: SinceData::default(),
            key_update_requested: false,
            renegotiation_refused: false,
            split: None,
        })
    }

    fn max_body(&self) -> usize {
        match self.version {
            Version::Tls12 => MAX_BODY_TLS12,
            Version::Tls13 => MAX_BODY_TLS13,
        }
    }

    /// Decrypts the whole records at the start of `buf` in place, handing application data to
    /// `on_plain` and appending what the protocol answers (a refusal to renegotiate) to `out`.
    pub fn open(
        &mut self,
        buf: &mut [u8],
        out: &mut Vec<u8>,
        on_plain: &mut dyn FnMut(&[u8]),
    ) -> Result<Opened, RecordError> {
        let mut opened = Opened::default();
        let mut expanded = None;
        while let Some(header) = buf.get(opened.used..opened.used + HEADER_LEN) {
            let header: [u8; HEADER_LEN] = header.try_into().map_err(|_| RecordError::Decode)?;
            let body_len = usize::from(u16::from_be_bytes([header[3], header[4]]));
            if body_len > self.max_body() {
                return Err(RecordError::RecordOverflow);
            }
            let start = opened.used + HEADER_LEN;
            let Some(body) = buf.get_mut(start..start + body_len) else {
                break;
            };
            opened.used = start + body_len;
            let (key, iv) = match &expanded {
                Some(expanded) => expanded,
                None => expanded.insert(self.rx.key()?),
            };
            let (typ, plain) = self.decrypt(key, iv, header, body)?;
            if self.split.is_some() && typ != HANDSHAKE {
                // The records of a split handshake message come one after another (RFC 8446
                // §5.1).
                return Err(RecordError::UnexpectedMessage(
                    "record inside a split handshake message",
                ));
            }
            if plain.is_empty() {
                // Only application data may be empty, and not endlessly (RFC 8446 §5.4).
                if typ != APPLICATION_DATA {
                    return Err(RecordError::UnexpectedMessage("empty record"));
                }
                let since = &mut self.since_data;
                SinceData::count(&mut since.empty, MAX_EMPTY_IN_A_ROW, "empty records")?;
                continue;
            }
            match typ {
                APPLICATION_DATA => {
                    self.since_data = SinceData::default();
                    on_plain(plain);
                }
                ALERT => {
                    if self.peer_alert(plain)? {
                        opened.peer_closed = true;
                        return Ok(opened);
                    }
                }
                HANDSHAKE => {
                    if self.post_handshake(plain, out)? {
                        // New receive keys from the next record on.
                        expanded = None;
                    }
                }
                CHANGE_CIPHER_SPEC => {
                    return Err(RecordError::UnexpectedMessage("change_cipher_spec"))
                }
                _ => return Err(RecordError::UnexpectedMessage("record type")),
            }
        }
        Ok(opened)
    }

    /// Authenticates and decrypts one record body in place; returns its type and plaintext.
    fn decrypt<'a>(
        &mut self,
        key: &LessSafeKey,
        iv: &[u8; NONCE_LEN],
        header: [u8; HEADER_LEN],
        body: &'a mut [u8],
    ) -> Result<(u8, &'a [u8]), RecordError> {
        let sequence = self.rx.sequence;
        let (typ, plain) = match self.version {
            Version::Tls13 => {
                if header[0] != APPLICATION_DATA {
                    return Err(RecordError::UnexpectedMessage("unprotected record"));
                }
                let nonce = Nonce::assume_unique_for_key(self.rx.nonce(iv));
                let inner = key
                    .open_in_place(nonce, Aad::from(header), body)
                    .map_err(|_| RecordError::BadRecordMac)?;
                // Content, type byte and padding together (RFC 8446 §5.4).
                if inner.len() > MAX_FRAGMENT + 1 {
                    return Err(RecordError::RecordOverflow);
                }
                // The real type is the last non-zero byte; zeros after it are padding.
                let end = inner
                    .iter()
                    .rposition(|&b| b != 0)
                    .ok_or(RecordError::UnexpectedMessage("record without a type"))?;
                (inner[end], &inner[..end])
            }
            Version::Tls12 => {
                let (nonce, sealed) = if self.rx.is_gcm() {
                    if body.len() < EXPLICIT_NONCE_LEN {
                        return Err(RecordError::BadRecordMac);
                    }
                    let (explicit, sealed) = body.split_at_mut(EXPLICIT_NONCE_LEN);
                    let mut nonce = *iv;
                    nonce[4..].copy_from_slice(explicit);
                    (nonce, sealed)
                } else {
                    (self.rx.nonce(iv), body)
                };
                let plain_len = sealed
                    .len()
                    .checked_sub(TAG_LEN)
                    .ok_or(RecordError::BadRecordMac)?;
                let aad = tls12_aad(sequence, header[0], [header[1], header[2]], plain_len);
                let plain = key
                    .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), sealed)
                    .map_err(|_| RecordError::BadRecordMac)?;
                if plain.len() > MAX_FRAGMENT {
                    return Err(RecordError::RecordOverflow);
                }
                (header[0], &*plain)
            }
        };
        self.rx.sequence += 1;
        Ok((typ, plain))
    }

    /// Handles an alert; true when it is close_notify.
    fn peer_alert(&mut self, alert: &[u8]) -> Result<bool, RecordError> {
        let &[level, description] = alert else {
            return Err(RecordError::Decode);
        };
        if description == CLOSE_NOTIFY {
            return Ok(true);
        }
        // TLS 1.3 ignores the level: every alert but user_canceled is fatal (RFC 8446 §6).
        // TLS 1.2 goes by it (RFC 5246 §7.2).
        let fatal = match (self.version, level) {
            (Version::Tls13, _) => description != USER_CANCELED,
            (Version::Tls12, WARNING) => false,
            (Version::Tls12, FATAL) => true,
            (Version::Tls12, _) => return Err(RecordError::Decode),
        };
        if fatal {
            return Err(RecordError::PeerAlert(description));
        }
        let since = &mut self.since_data;
        SinceData::count(&mut since.warnings, MAX_WARNINGS_IN_A_ROW, "warning alerts")?;
        Ok(false)
    }

    /// Handles the handshake messages in a record after the handshake, putting together one
    /// split over records; true when the receive keys changed.
    fn post_handshake(
        &mut self,
        mut record: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<bool, RecordError> {
        let mut rekeyed = false;
        if let Some(mut split) = self.split.take() {
            let taken = self.continue_split(&mut split, record)?;
            record = &record[taken..];
            let Some((typ, body)) = self.whole(&split)? else {
                // Still not whole: the record held nothing else.
                self.split = Some(split);
                return Ok(false);
            };
            rekeyed = self.handshake_message(typ, body, record.is_empty(), out)?;
        }
        while let [typ, a, b, c, rest @ ..] = record {
            let len = self.body_len(*typ, [*a, *b, *c])?;
            let Some((body, after)) = rest.split_at_checked(len) else {
                break;
            };
            record = after;
            rekeyed |= self.handshake_message(*typ, body, record.is_empty(), out)?;
        }
        if !record.is_empty() {
            let mut split = Box::new(SplitMessage {
                filled: 0,
                bytes: [0; MAX_SPLIT_MESSAGE],
            });
            self.continue_split(&mut split, record)?;
            self.split = Some(split);
        }
        Ok(rekeyed)
    }

    /// Adds what `record` holds of a split message to it; returns how many bytes that was. The
    /// header comes first: it says whether the message may come now and how long it is.
    fn continue_split(
        &self,
        split: &mut SplitMessage,
        record: &[u8],
    ) -> Result<usize, RecordError> {
        let mut taken = split.take(record, MESSAGE_HEADER_LEN);
        let Some(total) = self.split_len(split)? else {
            return Ok(taken);
        };
        taken += split.take(&record[taken..], total);
        Ok(taken)
    }

    /// The whole length of a split message, once its header is in.
    fn split_len(&self, split: &SplitMessage) -> Result<Option<usize>, RecordError> {
        let &[typ, a, b, c, ..] = &split.bytes[..split.filled] else {
            return Ok(None);
        };
        let total = MESSAGE_HEADER_LEN + self.body_len(typ, [a, b, c])?;
        if total > MAX_SPLIT_MESSAGE {
            return Err(RecordError::UnexpectedMessage(
                "handshake message too long to take in pieces",
            ));
        }
        Ok(Some(total))
    }

    /// The type and body of a split message, once it is whole.
    fn whole<'a>(&self, split: &'a SplitMessage) -> Result<Option<(u8, &'a [u8])>, RecordError> {
        Ok(match self.split_len(split)? {
            Some(total) if split.filled == total => {
                Some((split.bytes[0], &split.bytes[MESSAGE_HEADER_LEN..total]))
            }
            _ => None,
        })
    }

    /// The body length a handshake message's header gives, once the header shows a message the
    /// peer may send now: checked before its body is waited for.
    fn body_len(&self, typ: u8, len: [u8; 3]) -> Result<usize, RecordError> {
        let [a, b, c] = len;
        let len = u32::from_be_bytes([0, a, b, c]) as usize;
        match (self.version, typ) {
            (Version::Tls13, KEY_UPDATE) if len == 1 => Ok(len),
            (Version::Tls13, KEY_UPDATE) => Err(RecordError::Decode),
            (Version::Tls12, CLIENT_HELLO) if !self.renegotiation_refused => Ok(len),
            _ => Err(RecordError::UnexpectedMessage("handshake message")),
        }
    }

    /// Handles one whole handshake message, `ends_record` when nothing follows it in its record;
    /// true when the receive keys changed.
    fn handshake_message(
        &mut self,
        typ: u8,
        body: &[u8],
        ends_record: bool,
        out: &mut Vec<u8>,
    ) -> Result<bool, RecordError> {
        match (self.version, typ) {
            (Version::Tls13, KEY_UPDATE) => {
                let &[request] = body else {
                    return Err(RecordError::Decode);
                };
                // Checked before the keys change (RFC 8446 §4.6.3).
                if request != UPDATE_NOT_REQUESTED && request != UPDATE_REQUESTED {
                    return Err(RecordError::IllegalParameter("key_update request"));
                }
                if !ends_record {
                    // A key change ends its record, so no message spans it (RFC 8446 §5.1).
                    return Err(RecordError::UnexpectedMessage("data after key_update"));
                }
                let since = &mut self.since_data;
                SinceData::count(
                    &mut since.key_updates,
                    MAX_KEY_UPDATES_IN_A_ROW,
                    "key updates",
                )?;
                self.rx = self.rx.updated()?;
                // Answered once before the next record we send, however many came meanwhile
                // (RFC 8446 §4.6.3).
                self.key_update_requested |= request == UPDATE_REQUESTED;
                Ok(true)
            }
            (Version::Tls12, CLIENT_HELLO) if !self.renegotiation_refused => {
                // Refused once with a warning, as rustls does; asking again ends it.
                self.renegotiation_refused = true;
                let alert = [WARNING, NO_RENEGOTIATION];
                self.seal_checked(&mut self.tx.key()?, ALERT, &alert, out)?;
                Ok(false)
            }
            _ => Err(RecordError::UnexpectedMessage("handshake message")),
        }
    }

    /// Announces new send keys under the old ones, then switches to them (TLS 1.3).
    fn update_send_keys(
        &mut self,
        key: &mut SendKey,
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let updated = self.tx.updated()?;
        let update = [KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED];
        self.seal_record(key, HANDSHAKE, &update, out)?;
        self.tx = updated;
        *key = self.tx.key()?;
        Ok(())
    }

    /// Answers at once a KeyUpdate that asked for one, rather than before the next record sent:
    /// RFC 8446 (section 4.6.3) allows either, but a peer may wait for the answer before it
    /// sends more (OpenSSL and tlsfuzzer expect it). However many asked since, one answer.
    pub fn answer_key_update(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        if !self.key_update_requested || self.version != Version::Tls13 {
            return Ok(());
        }
        self.key_update_requested = false;
        let mut key = self.tx.key()?;
        self.update_send_keys(&mut key, out)
    }

    /// A sealer for a batch of outgoing records, with the send key expanded once.
    pub fn sealer(&mut self) -> Result<Sealer<'_>, RecordError> {
        let key = self.tx.key()?;
        Ok(Sealer { layer: self, key })
    }

    /// Appends a close_notify alert to `out`.
    pub fn close_notify(&mut self, out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.sealer()?.record(ALERT, &[WARNING, CLOSE_NOTIFY], out)
    }

    /// Appends the alert that tells the peer why the connection ends, when there is one.
    pub fn fail(&mut self, error: &RecordError, out: &mut Vec<u8>) {
        if let Some(description) = error.alert() {
            let _ = self
                .sealer()
                .and_then(|mut sealer| sealer.record(ALERT, &[FATAL, description], out));
        }
    }

    /// Protects one record, changing the send key first when it has reached its limit.
    fn seal_checked(
        &mut self,
        key: &mut SendKey,
        typ: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        if self.key_update_requested || self.tx.sequence >= self.tx_limit {
            if self.version == Version::Tls12 {
                // TLS 1.2 cannot change keys: the one record the limit leaves says close_notify,
                // and nothing follows it.
                if self.tx.sequence == self.tx_limit {
                    self.seal_record(key, ALERT, &[WARNING, CLOSE_NOTIFY], out)?;
                }
                return Err(RecordError::KeysExhausted);
            }
            // The peer asked, or the key has protected all it safely may: change it.
            self.key_update_requested = false;
            self.update_send_keys(key, out)?;
        }
        self.seal_record(key, typ, payload, out)
    }

    /// Protects one record of at most `MAX_FRAGMENT` bytes, appending it to `out`.
    fn seal_record(
        &mut self,
        (key, iv): &SendKey,
        typ: u8,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let start = out.len();
        let nonce = Nonce::assume_unique_for_key(self.tx.nonce(iv));
        let sealed = match self.version {
            Version::Tls13 => {
                let body_len = payload.len() + 1 + TAG_LEN;
                let header = record_header(APPLICATION_DATA, body_len);
                out.reserve(HEADER_LEN + body_len);
                out.extend_from_slice(&header);
                out.extend_from_slice(payload);
                out.push(typ);
                key.seal_in_place_separate_tag(
                    nonce,
                    Aad::from(header),
                    &mut out[start + HEADER_LEN..],
                )
            }
            Version::Tls12 => {
                let explicit_len = if self.tx.is_gcm() {
                    EXPLICIT_NONCE_LEN
                } else {
                    0
                };
                let body_len = explicit_len + payload.len() + TAG_LEN;
                let aad = tls12_aad(self.tx.sequence, typ, [3, 3], payload.len());
                out.reserve(HEADER_LEN + body_len);
                out.extend_from_slice(&record_header(typ, body_len));
                out.extend_from_slice(&nonce.as_ref()[NONCE_LEN - explicit_len..]);
                let sealed_from = out.len();
                out.extend_from_slice(payload);
                key.seal_in_place_separate_tag(nonce, Aad::from(aad), &mut out[sealed_from..])
            }
        };
        match sealed {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                self.tx.sequence += 1;
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(rustls::Error::EncryptError.into())
            }
        }
    }
}

fn record_header(typ: u8, body_len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (body_len as u16).to_be_bytes();
    [typ, 3, 3, hi, lo]
}

/// Protects a batch of outgoing records with one expansion of the send key.
pub struct Sealer<'a> {
    layer: &'a mut RecordLayer,
    key: SendKey,
}

impl Sealer<'_> {
    /// Appends `data` to `out` as application-data records.
    pub fn seal(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        for fragment in data.chunks(MAX_FRAGMENT) {
            self.record(APPLICATION_DATA, fragment, out)?;
        }
        Ok(())
    }

    fn record(&mut self, typ: u8, payload: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
        self.layer.seal_checked(&mut self.key, typ, payload, out)
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl RecordLayer {
    /// The other end of the connection, as this record layer would keep it: it opens what this
    /// one seals and seals what this one opens, from the same sequence numbers on.
    pub(crate) fn mirrored(&self) -> RecordLayer {
        RecordLayer {
            rx: self.tx.clone(),
            tx: self.rx.clone(),
            since_data: SinceData::default(),
            key_update_requested: false,
            renegotiation_refused: false,
            split: None,
            ..self.clone()
        }
    }
}

#[cfg(test)]
impl RecordLayer {
    /// Lowers the number of records one send key may protect, to reach it in a test.
    pub(crate) fn limit_records_per_send_key(&mut self, limit: u64) {
        self.tx_limit = limit;
    }
}

#[cfg(test)]
mod tests {
    use rustls::CipherSuite;

    use super::*;
    use crate::tls::peers::{Peers, TLS12, TLS13};

    #[test]
    fn alerts_follow_each_versions_rules() {
        let mut peers = Peers::connect(TLS13[0]);
        let records = peers.records();
        assert!(records.peer_alert(&[WARNING, CLOSE_NOTIFY]).expect("close"));
        assert!(!records
            .peer_alert(&[FATAL, USER_CANCELED])
            .expect("level ignored"));
        let error = records
            .peer_alert(&[WARNING, 40])
            .expect_err("fatal in TLS 1.3");
        assert!(matches!(error, RecordError::PeerAlert(40)), "{error}");
        assert!(records.peer_alert(&[WARNING]).is_err(), "malformed");

        let mut peers = Peers::connect(TLS12[0]);
        let records = peers.records();
        let error = records
            .peer_alert(&[FATAL, USER_CANCELED])
            .expect_err("fatal level");
        assert!(
            matches!(error, RecordError::PeerAlert(USER_CANCELED)),
            "{error}"
        );
        let error = records.peer_alert(&[3, 40]).expect_err("no such level");
        assert!(matches!(error, RecordError::Decode), "{error}");
        for _ in 0..MAX_WARNINGS_IN_A_ROW {
            assert!(!records.peer_alert(&[WARNING, 40]).expect("a warning"));
        }
        let error = records.peer_alert(&[WARNING, 40]).expect_err("too many");
        assert!(matches!(error, RecordError::Flood(_)), "{error}");
    }

    /// Seals one record with the client's keys, as a client that breaks the rules would, and
    /// has the server's record layer open it.
    fn client_record(typ: u8, payload: &[u8]) -> (Result<Opened, RecordError>, Vec<u8>) {
        let Peers {
            client, mut server, ..
        } = Peers::connect(TLS13[0]);
        let (sequence, secrets) = client.dangerous_extract_secrets().expect("secrets").tx;
        let records = server.records().expect("handed over");
        let mut as_client = Direction::from_rustls(&secrets, None, sequence).expect("keys");
        std::mem::swap(&mut records.tx, &mut as_client);
        let mut wire = Vec::new();
        let key = records.tx.key().expect("client key");
        records
            .seal_record(&key, typ, payload, &mut wire)
            .expect("sealed");
        std::mem::swap(&mut records.tx, &mut as_client);
        let mut answer = Vec::new();
        let opened = records.open(&mut wire, &mut answer, &mut |_| {});
        if let Err(error) = &opened {
            records.fail(error, &mut answer);
        }
        (opened, answer)
    }

    #[test]
    fn post_handshake_records_are_checked_as_rfc_8446_says() {
        let (opened, _) = client_record(HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED]);
        assert!(opened.is_ok(), "a well-formed key update: {opened:?}");

        let cases: [(u8, &[u8], u8); 3] = [
            (HANDSHAKE, &[], UNEXPECTED_MESSAGE),
            (ALERT, &[], UNEXPECTED_MESSAGE),
            (HANDSHAKE, &[KEY_UPDATE, 0, 0, 1, 2], ILLEGAL_PARAMETER),
        ];
        for (typ, payload, alert) in cases {
            let (opened, answer) = client_record(typ, payload);
            let error = opened.expect_err("refused");
            assert_eq!(error.alert(), Some(alert), "{typ} {payload:?}: {error}");
            assert!(!answer.is_empty(), "the alert goes out");
        }
    }

    /// Seals records as the client does, with a copy of the keys the server expects them under
    /// (and, in TLS 1.3, of the secret the client's next key comes from).
    struct AsClient(Direction);

    impl AsClient {
        fn of(records: &RecordLayer) -> AsClient {
            let rx = &records.rx;
            AsClient(Direction {
                algorithm: rx.algorithm,
                key: rx.key,
                iv: rx.iv,
                secret: rx.secret.clone(),
                sequence: rx.sequence,
            })
        }

        fn seal(&mut self, records: &mut RecordLayer, typ: u8, payload: &[u8]) -> Vec<u8> {
            std::mem::swap(&mut records.tx, &mut self.0);
            let key = records.tx.key().expect("client key");
            let mut wire = Vec::new();
            let sealed = records.seal_record(&key, typ, payload, &mut wire);
            std::mem::swap(&mut records.tx, &mut self.0);
            sealed.expect("sealed");
            wire
        }

        /// Moves to the key after a key update.
        fn update(&mut self) {
            self.0 = self.0.updated().expect("next key");
        }
    }

    /// Has the server open `wire` as one read; returns the outcome, the application data and
    /// what the server answers (the alert, after an error).
    fn server_opens(
        records: &mut RecordLayer,
        mut wire: Vec<u8>,
    ) -> (Result<Opened, RecordError>, Vec<u8>, Vec<u8>) {
        let (mut plain, mut answer) = (Vec::new(), Vec::new());
        let opened = records.open(&mut wire, &mut answer, &mut |data| {
            plain.extend_from_slice(data)
        });
        if let Err(error) = &opened {
            records.fail(error, &mut answer);
        }
        (opened, plain, answer)
    }

    /// `message` cut at `cuts`.
    fn pieces<'a>(message: &'a [u8], cuts: &[usize]) -> Vec<&'a [u8]> {
        let mut pieces = Vec::new();
        let mut start = 0;
        for &cut in cuts.iter().chain([&message.len()]) {
            pieces.push(&message[start..cut]);
            start = cut;
        }
        pieces
    }

    #[test]
    fn a_key_update_split_over_records_is_put_together() {
        let key_update = [KEY_UPDATE, 0, 0, 1, UPDATE_REQUESTED];
        // Two records, and four (the header itself cut in two), read at once or one by one.
        for cuts in [&[2][..], &[3], &[1, 2, 4]] {
            for one_read in [true, false] {
                let case = format!("cut at {cuts:?}, one read: {one_read}");
                let mut peers = Peers::connect(TLS13[0]);
                let records = peers.records();
                let mut client = AsClient::of(records);
                let mut wire: Vec<Vec<u8>> = pieces(&key_update, cuts)
                    .into_iter()
                    .map(|piece| client.seal(records, HANDSHAKE, piece))
                    .collect();
                assert_eq!(wire.len(), cuts.len() + 1);
                client.update();
                wire.push(client.seal(records, APPLICATION_DATA, b"after"));
                let reads = if one_read { vec![wire.concat()] } else { wire };
                let mut received = Vec::new();
                for read in reads {
                    let (opened, plain, _) = server_opens(records, read);
                    opened.unwrap_or_else(|e| panic!("{case}: {e}"));
                    received.extend(plain);
                }
                assert_eq!(received, b"after", "{case}: the receive key changed");
                assert!(records.split.is_none(), "{case}: no buffer kept");
                assert!(records.key_update_requested, "{case}");
                peers.server_sends(b"reply").expect("the client follows");
                assert_eq!(peers.client_reads(), b"reply", "{case}");
            }
        }
    }

    /// Opens `records` one by one as the client seals them; all but the last must be accepted,
    /// and the last refused with unexpected_message.
    fn refused_at_last(version: CipherSuite, records_sent: &[(u8, &[u8])]) -> RecordError {
        let mut peers = Peers::connect(version);
        let records = peers.records();
        let mut client = AsClient::of(records);
        let (last, first) = records_sent.split_last().expect("records");
        for (typ, payload) in first {
            let wire = client.seal(records, *typ, payload);
            let (opened, _, _) = server_opens(records, wire);
            opened.unwrap_or_else(|e| panic!("{records_sent:?}: {e}"));
        }
        let wire = client.seal(records, last.0, last.1);
        let (opened, _, answer) = server_opens(records, wire);
        let error = opened.expect_err("refused");
        assert!(!answer.is_empty(), "{records_sent:?}: the alert goes out");
        error
    }

    #[test]
    fn a_split_handshake_message_is_not_interrupted() {
        let interruptions: [(u8, &[u8]); 3] = [
            (APPLICATION_DATA, b"data"),
            (APPLICATION_DATA, b""),
            (ALERT, &[WARNING, CLOSE_NOTIFY]),
        ];
        for cut in 1..5 {
            for interruption in interruptions {
                let key_update = [KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED];
                let (start, rest) = key_update.split_at(cut);
                let sent = [(HANDSHAKE, start), interruption, (HANDSHAKE, rest)];
                let error = refused_at_last(TLS13[0], &sent[..2]);
                assert_eq!(error.alert(), Some(UNEXPECTED_MESSAGE), "{sent:?}: {error}");
            }
        }
    }

    #[test]
    fn a_key_update_ends_its_record_even_when_split() {
        let key_update = [KEY_UPDATE, 0, 0, 1, UPDATE_NOT_REQUESTED];
        let followed: [&[u8]; 3] = [
            &[0, 1, UPDATE_NOT_REQUESTED, KEY_UPDATE],
            &[0, 1, UPDATE_NOT_REQUESTED, KEY_UPDATE, 0, 0, 1, 0],
            &[0, 1, UPDATE_NOT_REQUESTED, 0],
        ];
        for rest in followed {
            let sent = [(HANDSHAKE, &key_update[..2]), (HANDSHAKE, rest)];
            let error = refused_at_last(TLS13[0], &sent);
            assert!(
                matches!(
                    error,
                    RecordError::UnexpectedMessage("data after key_update")
                ),
                "{rest:?}: {error}"
            );
        }
        let whole_and_more = [&key_update[..], &[KEY_UPDATE]].concat();
        let error = refused_at_last(TLS13[0], &[(HANDSHAKE, &whole_and_more)]);
        assert_eq!(error.alert(), Some(UNEXPECTED_MESSAGE), "{error}");

        // The rest of a key update under the key it announces: the server cannot read it.
        let mut peers = Peers::connect(TLS13[0]);
        let records = peers.records();
        let mut client = AsClient::of(records);
        let mut wire = client.seal(records, HANDSHAKE, &key_update[..1]);
        client.update();
        wire.extend(client.seal(records, HANDSHAKE, &key_update[1..]));
        let (opened, _, _) = server_opens(records, wire);
        let error = opened.expect_err("refused");
        assert!(matches!(error, RecordError::BadRecordMac), "{error}");
    }

    #[test]
    fn split_handshake_messages_are_bounded() {
        // TLS 1.3 allows only a key update, and only of its one length: the header decides.
        let cases: [(&[u8], u8); 2] = [
            (&[KEY_UPDATE, 0, 0, 2, 0], DECODE_ERROR),
            (&[4, 0, 1, 0, 0], UNEXPECTED_MESSAGE),
        ];
        for (start, alert) in cases {
            let (header, body) = start.split_at(2);
            let sent = [(HANDSHAKE, header), (HANDSHAKE, body)];
            let error = refused_at_last(TLS13[0], &sent);
            assert_eq!(error.alert(), Some(alert), "{start:?}: {error}");
        }

        // A TLS 1.2 renegotiation request split over records is refused with a warning, up to the
        // longest message taken in pieces.
        let client_hello = |total: usize| {
            let len = (total - MESSAGE_HEADER_LEN) as u32;
            let mut message = vec![CLIENT_HELLO];
            message.extend_from_slice(&len.to_be_bytes()[1..]);
            message.resize(total, 0x5a);
            message
        };
        let longest = client_hello(MAX_SPLIT_MESSAGE);
        let mut peers = Peers::connect(TLS12[0]);
        let records = peers.records();
        let mut client = AsClient::of(records);
        let mut answers = Vec::new();
        for piece in pieces(&longest, &[3, 100, 300]) {
            let wire = client.seal(records, HANDSHAKE, piece);
            let (opened, _, answer) = server_opens(records, wire);
            opened.expect("a split renegotiation request");
            answers.push(answer);
        }
        assert!(answers[..3].iter().all(Vec::is_empty), "refused when whole");
        assert_eq!(answers[3].first(), Some(&ALERT), "with a warning");
        assert!(records.split.is_none(), "no buffer kept");
        peers
            .deliver(&answers[3])
            .expect("the client reads the warning");

        let too_long = client_hello(MAX_SPLIT_MESSAGE + 1);
        let error = refused_at_last(TLS12[0], &[(HANDSHAKE, &too_long[..100])]);
        assert_eq!(error.alert(), Some(UNEXPECTED_MESSAGE), "{error}");
    }

    #[test]
    fn renegotiation_is_refused_once_then_fatal() {
        let client_hello = [CLIENT_HELLO, 0, 0, 0];
        let mut peers = Peers::connect(TLS12[0]);
        let mut out = Vec::new();
        let rekeyed = peers.records().post_handshake(&client_hello, &mut out);
        assert!(!rekeyed.expect("refused with a warning"));
        assert_eq!(out.first(), Some(&ALERT));
        peers.deliver(&out).expect("the client reads the warning");
        peers.server_sends(b"still open").expect("client reads");
        assert_eq!(peers.client_reads(), b"still open");

        let error = peers
            .records()
            .post_handshake(&client_hello, &mut Vec::new())
            .expect_err("asking again ends it");
        assert!(
            matches!(error, RecordError::UnexpectedMessage(_)),
            "{error}"
        );
    }
}
