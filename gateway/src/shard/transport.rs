//! How a connection's bytes travel: as they are, or through TLS driven by rustls' unbuffered
//! API. Ciphertext is read into and encrypted from buffers the shard owns; a connection keeps
//! ciphertext only for a record split across reads or bytes its socket has not taken yet, so an
//! idle TLS connection holds its TLS state and nothing else.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;

use monoio::net::TcpStream;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    AppDataRecord, ConnectionState, EncodeError, EncryptError, UnbufferedStatus,
};
use rustls::ServerConfig;

use super::io as socket;

/// Largest TLS record on the wire (16 KiB of payload plus header and expansion).
pub const MAX_RECORD: usize = 16 * 1024 + 256;

/// A connection's transport.
pub enum Transport {
    Plain,
    Tls(Box<TlsSession>),
}

/// One TLS connection's state.
pub struct TlsSession {
    conn: UnbufferedServerConnection,
    /// Ciphertext of a record that straddles reads.
    incoming: Vec<u8>,
    /// Ciphertext the socket has not taken yet.
    outgoing: Vec<u8>,
    peer_closed: bool,
}

/// How a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("plain HTTP sent to the TLS port")]
    PlainHttp,
    #[error("TLS protocol error: {0}")]
    Protocol(rustls::Error),
    #[error("connection closed during the handshake")]
    Closed,
}

fn tls_error(error: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

/// Appends what `write` puts into a buffer, growing it when rustls asks for more room.
fn append<E>(
    out: &mut Vec<u8>,
    first_guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
    needs: impl Fn(&E) -> Option<usize>,
) -> Result<(), E> {
    let start = out.len();
    let mut room = first_guess;
    loop {
        out.resize(start + room, 0);
        match write(&mut out[start..]) {
            Ok(n) => {
                out.truncate(start + n);
                return Ok(());
            }
            Err(error) => match needs(&error) {
                Some(required) if required > room => room = required,
                _ => {
                    out.truncate(start);
                    return Err(error);
                }
            },
        }
    }
}

fn encode_room(error: &EncodeError) -> Option<usize> {
    match error {
        EncodeError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

fn encrypt_room(error: &EncryptError) -> Option<usize> {
    match error {
        EncryptError::InsufficientSize(size) => Some(size.required_size),
        _ => None,
    }
}

impl TlsSession {
    pub fn new(config: Arc<ServerConfig>) -> Result<TlsSession, rustls::Error> {
        Ok(TlsSession {
            conn: UnbufferedServerConnection::new(config)?,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            peer_closed: false,
        })
    }

    pub fn is_handshaking(&self) -> bool {
        self.conn.is_handshaking()
    }

    /// Processes the ciphertext in `buf`, handing each plaintext payload to `on_plain` and
    /// queuing what the protocol answers (handshake, tickets, alerts) in `outgoing`. Returns how
    /// many bytes it used; the rest is an incomplete record.
    pub fn absorb(
        &mut self,
        buf: &mut [u8],
        on_plain: &mut dyn FnMut(&[u8]),
    ) -> Result<usize, rustls::Error> {
        let mut used = 0;
        loop {
            let UnbufferedStatus { mut discard, state } =
                self.conn.process_tls_records(&mut buf[used..]);
            let done = match state? {
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
                    append(
                        &mut self.outgoing,
                        4096,
                        |out| encoder.encode(out),
                        encode_room,
                    )
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                    false
                }
                ConnectionState::TransmitTlsData(transmit) => {
                    // The bytes wait in `outgoing`; the caller sends them before anything else.
                    transmit.done();
                    false
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    self.peer_closed = true;
                    true
                }
                // BlockedHandshake and WriteTraffic: nothing more to read until more arrives.
                // (Early data stays off: ServerConfig::max_early_data_size is left at 0.)
                _ => true,
            };
            used += discard;
            if done {
                return Ok(used);
            }
        }
    }

    /// Encrypts application data, appending the records to `out`.
    pub fn encrypt(&mut self, data: &[u8], out: &mut Vec<u8>) -> Result<(), rustls::Error> {
        loop {
            let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
            match state? {
                ConnectionState::WriteTraffic(mut writer) => {
                    let guess = data.len() + 64 * (1 + data.len() / (16 * 1024));
                    return append(out, guess, |buf| writer.encrypt(data, buf), encrypt_room)
                        .map_err(|e| rustls::Error::General(e.to_string()));
                }
                ConnectionState::EncodeTlsData(mut encoder) => {
                    append(out, 4096, |buf| encoder.encode(buf), encode_room)
                        .map_err(|e| rustls::Error::General(e.to_string()))?;
                }
                ConnectionState::TransmitTlsData(transmit) => transmit.done(),
                _ => return Err(rustls::Error::General("TLS connection cannot send".into())),
            }
        }
    }

    /// Appends a close_notify alert to `out`.
    fn close_notify(&mut self, out: &mut Vec<u8>) {
        let UnbufferedStatus { state, .. } = self.conn.process_tls_records(&mut []);
        if let Ok(ConnectionState::WriteTraffic(mut writer)) = state {
            let _ = append(out, 64, |buf| writer.queue_close_notify(buf), encrypt_room);
        }
    }

    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// Ciphertext waiting for the socket.
    pub fn has_outgoing(&self) -> bool {
        !self.outgoing.is_empty()
    }

    /// Sends waiting ciphertext without blocking; false when the socket took only part of it.
    pub fn send_outgoing(&mut self, fd: RawFd) -> io::Result<bool> {
        while !self.outgoing.is_empty() {
            match socket::send_vectored(fd, &[std::io::IoSlice::new(&self.outgoing)]) {
                Ok(n) => {
                    self.outgoing.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // An idle connection keeps no buffer.
        self.outgoing = Vec::new();
        Ok(true)
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

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Completes the TLS handshake; nothing to do on a plain connection. Returns application
    /// data that arrived with the handshake's last flight (a client may send its request
    /// together with its Finished message).
    pub async fn handshake(&mut self, stream: &TcpStream) -> Result<Vec<u8>, HandshakeFailure> {
        let mut early = Vec::new();
        let Transport::Tls(tls) = self else {
            return Ok(early);
        };
        let fd = stream.as_raw_fd();
        let mut buf = Vec::new();
        while tls.is_handshaking() {
            let n = socket::recv_into(stream, fd, &mut buf, MAX_RECORD)
                .await
                .map_err(|_| HandshakeFailure::Closed)?;
            if n == 0 {
                return Err(HandshakeFailure::Closed);
            }
            if looks_like_http(&buf) {
                return Err(HandshakeFailure::PlainHttp);
            }
            let used = tls
                .absorb(&mut buf, &mut |plain| early.extend_from_slice(plain))
                .map_err(HandshakeFailure::Protocol)?;
            buf.drain(..used);
            send_all_outgoing(stream, tls)
                .await
                .map_err(|_| HandshakeFailure::Closed)?;
        }
        if !buf.is_empty() {
            tls.keep_incoming(&buf);
        }
        Ok(early)
    }

    /// Reads some plaintext, appending it to `buf`; 0 means the peer closed.
    pub async fn read_some(
        &mut self,
        stream: &TcpStream,
        buf: &mut Vec<u8>,
        max: usize,
    ) -> io::Result<usize> {
        let fd = stream.as_raw_fd();
        let tls = match self {
            Transport::Plain => return socket::recv_into(stream, fd, buf, max).await,
            Transport::Tls(tls) => tls,
        };
        let start = buf.len();
        let mut cipher = tls.take_incoming();
        loop {
            if !cipher.is_empty() {
                let used = tls
                    .absorb(&mut cipher, &mut |plain| buf.extend_from_slice(plain))
                    .map_err(tls_error)?;
                cipher.drain(..used);
                send_all_outgoing(stream, tls).await?;
            }
            if buf.len() > start || tls.peer_closed() {
                if !cipher.is_empty() {
                    tls.keep_incoming(&cipher);
                }
                return Ok(buf.len() - start);
            }
            if socket::recv_into(stream, fd, &mut cipher, MAX_RECORD).await? == 0 {
                return Ok(0);
            }
        }
    }

    /// Writes all of `bytes`, waiting for the socket when it is full.
    pub async fn write_all(&mut self, stream: &TcpStream, bytes: &[u8]) -> io::Result<()> {
        let fd = stream.as_raw_fd();
        match self {
            Transport::Plain => socket::send_all(stream, fd, bytes).await,
            Transport::Tls(tls) => {
                let mut cipher = Vec::new();
                tls.encrypt(bytes, &mut cipher).map_err(tls_error)?;
                tls.keep_outgoing(&cipher);
                send_all_outgoing(stream, tls).await
            }
        }
    }

    /// Ends the sending side: a close_notify on TLS, then a FIN.
    pub async fn shutdown(&mut self, stream: &TcpStream) {
        if let Transport::Tls(tls) = self {
            let mut alert = Vec::new();
            tls.close_notify(&mut alert);
            tls.keep_outgoing(&alert);
            let _ = send_all_outgoing(stream, tls).await;
        }
        socket::shutdown_write(stream.as_raw_fd());
    }
}

/// Sends all waiting ciphertext, waiting for the socket as needed.
pub async fn send_all_outgoing(stream: &TcpStream, tls: &mut TlsSession) -> io::Result<()> {
    while !tls.send_outgoing(stream.as_raw_fd())? {
        stream.writable(false).await?;
    }
    Ok(())
}

/// Whether the first bytes on a TLS port are a plain HTTP request instead of a ClientHello.
fn looks_like_http(buf: &[u8]) -> bool {
    const METHODS: [&[u8]; 5] = [b"GET ", b"POST", b"PUT ", b"HEAD", b"OPTI"];
    buf.len() >= 4 && METHODS.iter().any(|m| buf.starts_with(m))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_on_the_tls_port_is_recognised() {
        assert!(looks_like_http(b"GET / HTTP/1.1\r\n"));
        assert!(looks_like_http(b"POST /apps"));
        assert!(!looks_like_http(&[0x16, 0x03, 0x01, 0x00, 0x10]));
        assert!(!looks_like_http(b"GE"));
    }

    #[test]
    fn append_grows_the_buffer_to_what_the_writer_needs() {
        let mut out = b"ab".to_vec();
        let result: Result<(), usize> = append(
            &mut out,
            1,
            |buf| {
                if buf.len() < 3 {
                    Err(3)
                } else {
                    buf[..3].copy_from_slice(b"xyz");
                    Ok(3)
                }
            },
            |needed| Some(*needed),
        );
        assert_eq!(result, Ok(()));
        assert_eq!(out, b"abxyz");
        let failed: Result<(), usize> = append(&mut out, 1, |_| Err(0), |_| None);
        assert_eq!(failed, Err(0));
        assert_eq!(out, b"abxyz", "a failed write leaves the buffer as it was");
    }
}
