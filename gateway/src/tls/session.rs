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
use super::secrets::{self, Caught};

/// One TLS connection's state.
pub struct TlsSession {
    state: TlsState,
    /// Ciphertext of a record that straddles reads.
    incoming: Vec<u8>,
    /// Ciphertext the socket has not taken yet.
    outgoing: Vec<u8>,
    peer_closed: bool,
}

// The record layer is where a connection spends its life, so it lives inline: boxing it would
// cost every connection a pointer and an allocation for the sake of the brief handshake.
#[allow(clippy::large_enum_variant)]
enum TlsState {
    /// rustls runs the handshake; boxed, as it is several times the size of what follows.
    Handshake(Box<Handshake>),
    /// Records are protected here, and rustls is gone.
    Traffic(RecordLayer),
    /// The connection broke the protocol, the hand-over from rustls failed, or close_notify
    /// went out: nothing more is read or sealed, and what ends it waits in `outgoing`.
    Ended,
}

/// rustls running the handshake.
struct Handshake {
    conn: UnbufferedServerConnection,
    /// The TLS 1.3 traffic secrets, once rustls has made them.
    traffic: Caught,
    /// Where the whole records offered to rustls end, counted from the first byte it has not
    /// discarded: rustls has read that far and goes on from there, even where it has not
    /// discarded (a handshake message split over records).
    offered: usize,
}

/// Appends what rustls encodes, growing the buffer when it asks for more room.
pub(super) fn encode_into(
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
            state: TlsState::Handshake(Box::new(Handshake {
                conn: UnbufferedServerConnection::new(config)?,
                traffic: Caught::default(),
                offered: 0,
            })),
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
        if self.peer_closed {
            // Nothing after close_notify counts (RFC 8446 §6.1).
            return Ok(buf.len());
        }
        let absorbed = self.absorb_records(buf, on_plain);
        if absorbed.is_err() {
            // After the alert that says why, nothing else goes out (RFC 8446 §6.2).
            self.state = TlsState::Ended;
        }
        absorbed
    }

    fn absorb_records(
        &mut self,
        buf: &mut [u8],
        on_plain: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, RecordError> {
        let mut used = 0;
        if let TlsState::Handshake(handshake) = &mut self.state {
            // What rustls' key log gets during this step is this connection's.
            secrets::clear_caught();
            let step = handshake_step(
                handshake,
                buf,
                &mut self.outgoing,
                &mut self.peer_closed,
                on_plain,
            );
            secrets::take_caught(&mut handshake.traffic);
            let (handshaken, finished) = step?;
            used = handshaken;
            if finished {
                self.hand_over()?;
            }
        }
        let records = match &mut self.state {
            TlsState::Traffic(records) => records,
            TlsState::Handshake(_) => return Ok(used),
            // Every call after the end fails too: the connection can only close.
            TlsState::Ended => {
                return Err(rustls::Error::General("the TLS connection has ended".into()).into())
            }
        };
        let opened = records
            .open(&mut buf[used..], &mut self.outgoing, on_plain)
            .and_then(|opened| {
                // Only when nothing waits for the socket: a client that asks and never reads
                // must not pile answers up here. Otherwise the next record sent answers it.
                if self.outgoing.is_empty() {
                    records.answer_key_update(&mut self.outgoing)?;
                }
                Ok(opened)
            });
        match opened {
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
        let TlsState::Handshake(handshake) = std::mem::replace(&mut self.state, TlsState::Ended)
        else {
            return Ok(());
        };
        // Only rustls' connection moves out; the secrets stay in the box, which wipes them.
        let conn = handshake.conn;
        let (keys, kernel) = conn.dangerous_into_kernel_connection()?;
        let (suite, version) = (kernel.negotiated_cipher_suite(), kernel.protocol_version());
        self.state =
            TlsState::Traffic(RecordLayer::new(&keys, suite, version, &handshake.traffic)?);
        Ok(())
    }

    /// A sealer for a batch of application data; fails before the handshake is over.
    pub fn sealer(&mut self) -> Result<Sealer<'_>, RecordError> {
        match &mut self.state {
            TlsState::Traffic(records) => records.sealer(),
            _ => Err(rustls::Error::HandshakeNotComplete.into()),
        }
    }

    /// Queues `last` as application data, then close_notify, after which nothing is sent.
    /// Queues nothing during the handshake or after the end: a failed connection's last word is
    /// the alert that says why.
    pub fn close(&mut self, last: &[u8]) {
        let TlsState::Traffic(records) = &mut self.state else {
            return;
        };
        // Sealing fails only when nothing more can be sent: a TLS 1.2 key used up (its last
        // record is close_notify already) or a broken AEAD.
        let _ = records
            .sealer()
            .and_then(|mut sealer| sealer.seal(last, &mut self.outgoing))
            .and_then(|()| records.close_notify(&mut self.outgoing));
        self.state = TlsState::Ended;
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Whether the connection ends with an alert the peer should hear: close_notify in answer
    /// to its own (RFC 8446 §6.1), or the alert that says why it failed.
    pub fn ends_with_alert(&self) -> bool {
        self.peer_closed || matches!(self.state, TlsState::Ended)
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

    /// Bytes of memory held for an incomplete record.
    pub fn incoming_held(&self) -> usize {
        self.incoming.capacity()
    }

    /// Keeps the bytes of an incomplete record until more arrive.
    pub fn keep_incoming(&mut self, partial: &[u8]) {
        self.incoming = partial.to_vec();
    }
}

/// Runs rustls over `buf` during the handshake. Returns the bytes it used and whether the
/// handshake is over with nothing left for rustls to send, ready for the hand-over.
fn handshake_step(
    handshake: &mut Handshake,
    buf: &mut [u8],
    outgoing: &mut Vec<u8>,
    peer_closed: &mut bool,
    on_plain: &mut dyn FnMut(&[u8]),
) -> Result<(usize, bool), RecordError> {
    let conn = &mut handshake.conn;
    let mut used = 0;
    // rustls is offered one more whole record each time round, so that it stops where the
    // handshake ends and every record after that goes to the record layer, not into rustls'
    // state. An incomplete record is offered too, for rustls to check its header.
    let mut whole = handshake.offered.min(buf.len());
    let mut offered = offer_next(buf, &mut whole);
    let finished = loop {
        let UnbufferedStatus { mut discard, state } =
            conn.process_tls_records(&mut buf[used..offered]);
        let state = match state {
            Ok(state) => state,
            Err(error) => {
                // rustls wants the rest of the same buffer again, to hand out its alert.
                queue_alert(conn, &mut buf[used + discard..offered], outgoing);
                return Err(error.into());
            }
        };
        let stopped = match state {
            ConnectionState::ReadTraffic(mut records) => {
                while let Some(record) = records.next_record() {
                    let AppDataRecord {
                        discard: more,
                        payload,
                    } = record?;
                    discard += more;
                    on_plain(payload);
                }
                false
            }
            ConnectionState::EncodeTlsData(mut encoder) => {
                encode_into(outgoing, |out| encoder.encode(out))?;
                false
            }
            ConnectionState::TransmitTlsData(transmit) => {
                // The bytes wait in `outgoing`; the caller sends them before anything else.
                transmit.done();
                false
            }
            ConnectionState::PeerClosed | ConnectionState::Closed => {
                *peer_closed = true;
                true
            }
            // BlockedHandshake, and WriteTraffic, which a TLS 1.3 server reaches before the
            // client's Finished. (Early data stays off: max_early_data_size is left at 0.)
            _ => true,
        };
        used += discard;
        if stopped {
            if *peer_closed {
                break false;
            }
            if !conn.is_handshaking() {
                break true;
            }
            if offered == buf.len() {
                break false;
            }
            offered = offer_next(buf, &mut whole);
        }
    };
    handshake.offered = whole.saturating_sub(used);
    Ok((used, finished))
}

/// Where to offer rustls up to next: the end of the record that starts at `whole`, which moves
/// there when the record is complete, or the end of `buf` when it is not.
fn offer_next(buf: &[u8], whole: &mut usize) -> usize {
    if let Some(&[_, _, _, hi, lo]) = buf.get(*whole..*whole + 5) {
        let end = *whole + 5 + usize::from(u16::from_be_bytes([hi, lo]));
        if end <= buf.len() {
            *whole = end;
            return end;
        }
    }
    buf.len()
}

/// Encodes what rustls queued when the handshake failed, ending with the fatal alert, so the
/// client hears why.
fn queue_alert(conn: &mut UnbufferedServerConnection, rest: &mut [u8], outgoing: &mut Vec<u8>) {
    // Queued records come out before rustls looks at `rest` again, so it stays valid.
    while let Ok(ConnectionState::EncodeTlsData(mut encoder)) = conn.process_tls_records(rest).state
    {
        if encode_into(outgoing, |out| encoder.encode(out)).is_err() {
            return;
        }
    }
}

#[cfg(any(test, feature = "fuzzing"))]
impl TlsSession {
    /// The record layer, once the handshake has handed over to it.
    pub(crate) fn records(&mut self) -> Option<&mut RecordLayer> {
        match &mut self.state {
            TlsState::Traffic(records) => Some(records),
            _ => None,
        }
    }

    /// A copy of a session past its handshake, so that a fuzz target starts every input from the
    /// same connection for the price of one handshake. `None` during the handshake: rustls'
    /// state cannot be copied.
    pub fn copy_after_handshake(&self) -> Option<TlsSession> {
        let state = match &self.state {
            TlsState::Handshake(_) => return None,
            TlsState::Traffic(records) => TlsState::Traffic(records.clone()),
            TlsState::Ended => TlsState::Ended,
        };
        Some(TlsSession {
            state,
            incoming: self.incoming.clone(),
            outgoing: self.outgoing.clone(),
            peer_closed: self.peer_closed,
        })
    }

    /// A session whose handshake `records` took over from.
    pub(crate) fn after_handshake(records: RecordLayer) -> TlsSession {
        TlsSession {
            state: TlsState::Traffic(records),
            incoming: Vec::new(),
            outgoing: Vec::new(),
            peer_closed: false,
        }
    }

    /// The client's end of a session past its handshake, kept by the gateway's record layer:
    /// it opens what this session seals, and seals what this one opens, so that a fuzz target
    /// has records sealed by the gateway to open both ways. `None` unless records flow.
    pub fn mirrored(&self) -> Option<TlsSession> {
        let TlsState::Traffic(records) = &self.state else {
            return None;
        };
        Some(TlsSession::after_handshake(records.mirrored()))
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use rustls::crypto::cipher::InboundOpaqueMessage;
    use rustls::pki_types::PrivateKeyDer;
    use rustls::CipherSuite;

    use super::*;
    use crate::tls::peers::{self, HandedOver, Peers, TLS12, TLS13};

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

    /// Feeds `wire` to the server in pieces of random size up to `max_piece`; what it decrypts
    /// goes to `peers.received`. Returns the first error.
    fn deliver_in_pieces(
        peers: &mut Peers,
        wire: &[u8],
        max_piece: usize,
        rng: &mut fastrand::Rng,
    ) -> Result<(), RecordError> {
        let mut rest = wire;
        while !rest.is_empty() {
            let (piece, after) = rest.split_at(rng.usize(1..=rest.len().min(max_piece)));
            rest = after;
            peers.server_reads(piece)?;
        }
        Ok(())
    }

    #[test]
    fn records_cut_anywhere_come_out_whole_and_in_order() {
        let mut rng = fastrand::Rng::with_seed(7);
        for suite in [TLS13[0], TLS12[2]] {
            let mut peers = Peers::connect(suite);
            peers.client.set_buffer_limit(None);
            let mut sent = Vec::new();
            for i in 0..20 {
                let len = if i % 5 == 0 {
                    40_000
                } else {
                    rng.usize(1..2_000)
                };
                let message: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
                peers.client.writer().write_all(&message).expect("write");
                sent.extend_from_slice(&message);
            }
            let wire = peers.client_wire();
            deliver_in_pieces(&mut peers, &wire, 3_000, &mut rng).expect("absorb");
            assert!(peers.received == sent, "{suite:?}: every byte, in order");
        }
    }

    #[test]
    fn mangled_and_forged_records_are_refused_and_never_yield_plaintext() {
        let mut rng = fastrand::Rng::with_seed(11);
        let mut refused = 0;
        for round in 0..600 {
            let suite = [TLS13, TLS12].concat()[round % 6];
            let mut peers = Peers::connect(suite);
            peers.client.set_buffer_limit(None);
            let mut sent = Vec::new();
            for _ in 0..12 {
                let mut wire = Vec::new();
                let message: Vec<u8> = (0..rng.usize(0..20_000)).map(|_| rng.u8(..)).collect();
                peers.client.writer().write_all(&message).expect("write");
                sent.extend_from_slice(&message);
                if round % 6 < 3 && rng.u8(..4) == 0 {
                    peers.client.refresh_traffic_keys().expect("key update");
                }
                wire.extend(peers.client_wire());
                match rng.u8(..6) {
                    // A flipped bit anywhere: header or body.
                    0 if !wire.is_empty() => {
                        let at = rng.usize(..wire.len());
                        wire[at] ^= 1 << rng.u8(..8);
                    }
                    // A record of some type and length with a body no key made.
                    1 => {
                        let len = rng.usize(0..300);
                        let typ = [20, 21, 22, 23, rng.u8(..)][rng.usize(..5)];
                        wire.extend_from_slice(&[typ, 3, 3]);
                        wire.extend_from_slice(&(len as u16).to_be_bytes());
                        wire.extend((0..len).map(|_| rng.u8(..)));
                    }
                    // Plain garbage.
                    2 => wire.extend((0..rng.usize(1..40)).map(|_| rng.u8(..))),
                    _ => {}
                }
                if deliver_in_pieces(&mut peers, &wire, 20_000, &mut rng).is_err() {
                    assert!(
                        !peers.server.outgoing().is_empty() || peers.server.peer_closed(),
                        "{suite:?}: a refused record is answered with an alert"
                    );
                    refused += 1;
                    break;
                }
            }
            assert!(
                sent.starts_with(&peers.received),
                "{suite:?}: only what the client sent comes out, in order"
            );
        }
        assert!(
            refused > 400,
            "most rounds meet a bad record ({refused} did)"
        );
    }

    #[test]
    fn records_after_the_clients_finished_go_to_the_record_layer() {
        let mut peers = Peers::start(TLS13[0]);
        peers.exchange().expect("client hello, server flight");
        assert!(
            !peers.client.is_handshaking(),
            "the client only has to send Finished"
        );
        // Finished, data and a key update asking for one back, in one read: rustls must stop at
        // Finished, or the answer it would queue is lost in the hand-over.
        peers.client.writer().write_all(b"first").expect("write");
        peers.client.refresh_traffic_keys().expect("key update");
        peers.client.writer().write_all(b"second").expect("write");
        peers.exchange().expect("one read");
        assert!(!peers.server.is_handshaking());
        assert_eq!(peers.received, b"firstsecond");
        peers
            .server_sends(b"reply")
            .expect("the client follows the answering key update");
        assert_eq!(peers.client_reads(), b"reply");
    }

    #[test]
    fn key_updates_without_data_between_are_limited() {
        let mut peers = Peers::connect(TLS13[0]);
        for round in [&b"x"[..], b"y"] {
            for _ in 0..32 {
                peers.client.refresh_traffic_keys().expect("key update");
            }
            peers.client.writer().write_all(round).expect("write");
            peers.exchange().expect("32 in a row, then data, are fine");
        }
        assert_eq!(peers.received, b"xy");
        for _ in 0..33 {
            peers.client.refresh_traffic_keys().expect("key update");
        }
        let mut wire = peers.client_wire();
        let error = peers
            .server
            .absorb(&mut wire, &mut |_| {})
            .expect_err("a flood of key updates");
        assert!(matches!(error, RecordError::Flood(_)), "{error}");
    }

    #[test]
    fn nothing_after_close_notify_counts() {
        let mut peers = Peers::connect(TLS13[0]);
        peers.client.send_close_notify();
        peers.exchange().expect("close_notify");
        assert!(peers.server.peer_closed());
        let mut after = vec![23, 3, 3, 0, 20];
        after.resize(25, 0x5a);
        let used = peers
            .server
            .absorb(&mut after, &mut |_| {
                panic!("nothing is read after close_notify")
            })
            .expect("ignored, not an error");
        assert_eq!(used, after.len());
    }

    #[test]
    fn a_failed_handshake_tells_the_client_why() {
        let mut peers = Peers::start(TLS13[0]);
        let mut not_a_hello = [22, 3, 1, 0, 5, 1, 0, 0, 1, 0];
        peers
            .server
            .absorb(&mut not_a_hello, &mut |_| {})
            .expect_err("a malformed ClientHello");
        let alert = peers.server.outgoing();
        assert_eq!(alert.first(), Some(&21), "an alert record: {alert:?}");
        assert_eq!(alert.get(5), Some(&2), "fatal");

        // A handshake message longer than its record: an error (rustls has no alert for it),
        // and asking rustls for its alert must not upset its view of the buffer.
        let mut peers = Peers::start(TLS13[0]);
        let mut too_long = [22, 3, 1, 0, 5, 1, 2, 3, 4, 5];
        peers
            .server
            .absorb(&mut too_long, &mut |_| {})
            .expect_err("a handshake message longer than allowed");
    }

    #[test]
    fn a_client_hello_split_over_records_and_reads_is_put_together() {
        // The ClientHello cut into three handshake records; the reads end after the second
        // record, and inside the third.
        for cut_into_third in [0, 7] {
            let mut peers = Peers::start(TLS13[0]);
            let mut hello = Vec::new();
            peers.client.write_tls(&mut hello).expect("client hello");
            let message = &hello[5..];
            let thirds = [
                &message[..10],
                &message[10..message.len() / 2],
                &message[message.len() / 2..],
            ];
            let mut wire = Vec::new();
            for third in thirds {
                wire.extend_from_slice(&[22, 3, 1]);
                wire.extend_from_slice(&(third.len() as u16).to_be_bytes());
                wire.extend_from_slice(third);
            }
            let first_read = 5 + 10 + 5 + thirds[1].len() + cut_into_third;
            for read in [&wire[..first_read], &wire[first_read..]] {
                peers.server_reads(read).expect("a split hello is fine");
            }
            peers
                .server_to_client()
                .expect("the client reads the server's flight");
            for _ in 0..4 {
                peers.exchange().expect("handshake");
            }
            assert!(!peers.server.is_handshaking(), "cut {cut_into_third}");
            peers.server_sends(b"joined").expect("client reads");
            assert_eq!(peers.client_reads(), b"joined");
        }
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
    fn a_requested_key_update_is_answered_before_any_data() {
        for suite in TLS13 {
            let mut peers = Peers::connect(suite);
            peers.client.refresh_traffic_keys().expect("key update");
            let wire = peers.client_wire();
            peers
                .server_reads(&wire)
                .expect("server reads the key update");
            assert!(
                peers.server.has_outgoing(),
                "{suite:?}: the answer waits for no data of ours"
            );
            peers
                .server_to_client()
                .expect("the client takes the answer");
            peers.server_sends(b"reply").expect("client follows");
            assert_eq!(peers.client_reads(), b"reply", "{suite:?}");
        }
    }

    #[test]
    fn answers_to_key_updates_do_not_pile_up_while_the_client_reads_nothing() {
        let mut peers = Peers::connect(TLS13[0]);
        // Something of ours waits for the socket, as when the client stops reading.
        peers.server.keep_outgoing(b"waiting");
        for _ in 0..100 {
            peers.client.refresh_traffic_keys().expect("key update");
            peers.client.writer().write_all(b"x").expect("write");
            let wire = peers.client_wire();
            peers.server_reads(&wire).expect("server follows");
        }
        assert_eq!(peers.server.outgoing(), b"waiting", "no answer piled up");
        // Once the socket took it, the next record sent answers first.
        peers.server.sent(b"waiting".len());
        peers.server_sends(b"reply").expect("client follows");
        assert_eq!(peers.client_reads(), b"reply");
    }

    #[test]
    fn interleaved_handshakes_each_keep_their_own_traffic_secrets() {
        // Two connections' handshakes step by step in turn on one thread, as a shard runs them.
        let mut first = Peers::start(TLS13[0]);
        let mut second = Peers::start(TLS13[1]);
        for _ in 0..4 {
            first.exchange().expect("first handshake");
            second.exchange().expect("second handshake");
        }
        for peers in [&mut first, &mut second] {
            assert!(!peers.server.is_handshaking(), "handed over");
            // Key updates both ways follow each connection's own secrets.
            peers.client.refresh_traffic_keys().expect("key update");
            peers.client.writer().write_all(b"after").expect("write");
            peers
                .exchange()
                .expect("the server follows the client's new key");
            assert_eq!(peers.received, b"after");
            peers
                .server_sends(b"reply")
                .expect("the client follows the server's");
            assert_eq!(peers.client_reads(), b"reply");
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
        peers.records().limit_records_per_send_key(4);
        let mut delivered = 0;
        let error = loop {
            let mut wire = Vec::new();
            let sealed = peers.server.sealer().expect("sealer").seal(b"m", &mut wire);
            peers.deliver(&wire).expect("client reads");
            match sealed {
                Ok(()) => delivered += 1,
                Err(error) => break error,
            }
            assert!(delivered < 4, "the limit is reached");
        };
        assert!(matches!(error, RecordError::KeysExhausted), "{error}");
        assert_eq!(peers.client_reads(), vec![b'm'; delivered]);
        let mut rest = [0; 8];
        assert_eq!(
            peers.client.reader().read(&mut rest).expect("clean end"),
            0,
            "the last record the key may protect is close_notify"
        );
        let mut wire = Vec::new();
        let after = peers.server.sealer().expect("sealer").seal(b"m", &mut wire);
        assert!(matches!(after, Err(RecordError::KeysExhausted)));
        assert!(wire.is_empty(), "nothing follows close_notify");
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
            assert!(peers.server.ends_with_alert(), "{suite:?}: answered");
            peers.server.close(&[]);
            peers.server_to_client().expect("client reads close_notify");
            let mut rest = [0; 8];
            assert_eq!(peers.client.reader().read(&mut rest).expect("clean end"), 0);

            let mut peers = Peers::connect(suite);
            peers.server.close(b"last");
            peers.server_to_client().expect("client reads close_notify");
            assert_eq!(peers.client_reads(), b"last");
            let mut rest = [0; 8];
            assert_eq!(peers.client.reader().read(&mut rest).expect("clean end"), 0);
            peers.server.close(b"more");
            assert!(!peers.server.has_outgoing(), "nothing after close_notify");
        }
    }

    #[test]
    fn a_failed_hand_over_ends_the_connection_for_good() {
        // Without secret extraction rustls cannot hand the keys over.
        let mut peers = Peers::start_with(TLS13[0], |config| {
            config.enable_secret_extraction = false;
        });
        let error = (0..8)
            .find_map(|_| peers.exchange().err())
            .expect("the hand-over fails");
        assert!(matches!(error, RecordError::Tls(_)), "{error}");
        assert!(!peers.server.is_handshaking());
        let mut more = vec![23, 3, 3, 0, 1, 0];
        assert!(
            peers.server.absorb(&mut more, &mut |_| {}).is_err(),
            "and it stays failed"
        );
    }

    #[test]
    fn rustls_and_the_mirror_open_what_the_session_seals_and_seal_what_it_opens() {
        for suite in TLS13.into_iter().chain(TLS12) {
            let peers::BothEnds {
                mut gateway,
                client: (client, kernel),
                server: (server, _),
            } = peers::both_ends(suite);
            let negotiated = kernel.negotiated_cipher_suite();
            let mut mirror = gateway.mirrored().expect("past the handshake");

            let mut down = Vec::new();
            let mut sealer = gateway.sealer().expect("sealer");
            sealer.seal(b"down", &mut down).expect("sealed");
            let (sequence, keys) = server.tx;
            let sealed = peers::seal(
                &mut *peers::encrypter(negotiated, keys),
                sequence,
                23,
                b"down",
            );
            assert_eq!(down, sealed, "{suite:?}: sealed as rustls seals");
            let (sequence, keys) = client.rx;
            let mut record = down.clone();
            let (header, body) = record.split_at_mut(5);
            let version = u16::from_be_bytes([header[1], header[2]]).into();
            let message = InboundOpaqueMessage::new(header[0].into(), version, body);
            let mut decrypter = peers::decrypter(negotiated, keys);
            let opened = decrypter
                .decrypt(message, sequence)
                .expect("rustls opens it");
            assert_eq!(opened.payload, b"down", "{suite:?}");
            assert_eq!(
                read_all(&mut mirror, down),
                b"down",
                "{suite:?}: the mirror"
            );

            let mut up = Vec::new();
            let mut sealer = mirror.sealer().expect("sealer");
            sealer.seal(b"up", &mut up).expect("sealed");
            let (sequence, keys) = client.tx;
            let sealed = peers::seal(
                &mut *peers::encrypter(negotiated, keys),
                sequence,
                23,
                b"up",
            );
            assert_eq!(up, sealed, "{suite:?}: sealed as rustls' client seals");
            assert_eq!(read_all(&mut gateway, up), b"up", "{suite:?}");
        }
    }

    /// Has `session` read `wire` in one go; returns the application data.
    fn read_all(session: &mut TlsSession, mut wire: Vec<u8>) -> Vec<u8> {
        let mut received = Vec::new();
        let used = session
            .absorb(&mut wire, &mut |plain| received.extend_from_slice(plain))
            .expect("read");
        assert_eq!(used, wire.len());
        received
    }

    #[test]
    fn a_copy_after_the_handshake_reads_on_its_own() {
        assert!(Peers::start(TLS13[0])
            .server
            .copy_after_handshake()
            .is_none());
        for suite in TLS13.into_iter().chain(TLS12) {
            let HandedOver {
                mut server,
                mut client,
                client_keys: (sequence, keys),
            } = peers::hand_over(suite);
            let negotiated = client.negotiated_cipher_suite();
            let mut encrypter = peers::encrypter(negotiated, keys);
            let mut copy = server.copy_after_handshake().expect("past the handshake");
            let hello = peers::seal(&mut *encrypter, sequence, 23, b"hello");
            assert_eq!(read_all(&mut server, hello.clone()), b"hello", "{suite:?}");
            assert_eq!(read_all(&mut copy, hello), b"hello", "{suite:?}: the copy");
            if suite == TLS13[0] {
                // The copy follows a key update the original never sees, and their keys part.
                let update = peers::seal(&mut *encrypter, sequence + 1, 22, &[24, 0, 0, 1, 0]);
                let (_, keys) = client.update_tx_secret().expect("next keys");
                let mut encrypter = peers::encrypter(negotiated, keys);
                let after = peers::seal(&mut *encrypter, 0, 23, b"after");
                assert_eq!(read_all(&mut copy, [update, after].concat()), b"after");
                let mut again = peers::seal(&mut *encrypter, 1, 23, b"again");
                let refused = server.absorb(&mut again, &mut |_| panic!("not its key"));
                assert!(matches!(refused, Err(RecordError::BadRecordMac)));
            }
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
