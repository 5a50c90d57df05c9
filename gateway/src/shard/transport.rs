//! How a connection's bytes travel: as they are, or through TLS (`tls::session`, which has no
//! IO). Ciphertext is read into and encrypted from buffers the shard owns.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::time::Duration;

use monoio::net::TcpStream;

use super::io as socket;
use crate::tls::records::RecordError;
pub use crate::tls::session::TlsSession;

/// Largest TLS record on the wire (16 KiB of payload plus header and expansion).
pub const MAX_RECORD: usize = 16 * 1024 + 256;
/// How long a closing connection waits for the peer to close once its last bytes are sent.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and thrown away while a connection closes.
const LINGER_BYTES: usize = 256 * 1024;

/// A connection's transport.
pub enum Transport {
    Plain,
    Tls(Box<TlsSession>),
}

/// How a TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeFailure {
    #[error("plain HTTP sent to the TLS port")]
    PlainHttp,
    #[error("TLS protocol error: {0}")]
    Protocol(RecordError),
    #[error("connection closed during the handshake")]
    Closed,
}

fn tls_error(error: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Completes the TLS handshake; nothing to do on a plain connection. `first` holds bytes
    /// already read (after a PROXY header). Returns application data that arrived with the
    /// handshake's last flight (a client may send its request together with its Finished message).
    pub async fn handshake(
        &mut self,
        stream: &TcpStream,
        first: Vec<u8>,
    ) -> Result<Vec<u8>, HandshakeFailure> {
        let mut early = Vec::new();
        let Transport::Tls(tls) = self else {
            return Ok(early);
        };
        let fd = stream.as_raw_fd();
        let mut buf = first;
        // What was read already goes in before anything else is waited for.
        let mut unread = !buf.is_empty();
        while tls.is_handshaking() {
            if !std::mem::take(&mut unread) {
                let n = socket::recv_into(stream, fd, &mut buf, MAX_RECORD)
                    .await
                    .map_err(|_| HandshakeFailure::Closed)?;
                if n == 0 {
                    return Err(HandshakeFailure::Closed);
                }
            }
            if looks_like_http(&buf) {
                return Err(HandshakeFailure::PlainHttp);
            }
            let used = tls
                .absorb(&mut buf, &mut |plain| early.extend_from_slice(plain))
                .map_err(|error| HandshakeFailure::Protocol(refuse(fd, tls, error)))?;
            buf.drain(..used);
            // Sent even when the client's close_notify came with its Finished: the session
            // tickets are in it, and a client may read on after closing its side.
            send_all_outgoing(stream, tls)
                .await
                .map_err(|_| HandshakeFailure::Closed)?;
            if tls.peer_closed() && tls.is_handshaking() {
                return Err(HandshakeFailure::Closed);
            }
        }
        if !buf.is_empty() {
            tls.keep_incoming(&buf);
        }
        Ok(early)
    }

    /// Reads some plaintext, appending it to `buf`; 0 means the peer closed. A TLS record that
    /// breaks the protocol is an `InvalidData` error.
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
                    .map_err(|error| tls_error(refuse(fd, tls, error)))?;
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
                tls.sealer()
                    .and_then(|mut sealer| sealer.seal(bytes, &mut cipher))
                    .map_err(tls_error)?;
                tls.keep_outgoing(&cipher);
                send_all_outgoing(stream, tls).await
            }
        }
    }

    /// Whether the connection must end with an alert the peer should hear (`linger_close`
    /// sends it): the answer to its close_notify, or the alert that says why it failed.
    pub fn ends_with_alert(&self) -> bool {
        matches!(self, Transport::Tls(tls) if tls.ends_with_alert())
    }

    /// Ends the connection so that its last bytes reach a peer that may still be sending:
    /// writes `last` (on TLS followed by close_notify, or only the alert a failure left) within
    /// `within`, sends a FIN, then reads and throws away what comes until the peer
    /// closes, `LINGER_BYTES` have come or `LINGER` has passed. The caller closes the socket
    /// afterwards. Returns how writing the last bytes went (`TimedOut` past the limit).
    pub async fn linger_close(
        &mut self,
        stream: &TcpStream,
        last: &[u8],
        within: Duration,
    ) -> io::Result<()> {
        let fd = stream.as_raw_fd();
        // Boxed: rarely run, and its buffer would otherwise grow the task of every caller.
        let close = Box::pin(async move {
            let write = async {
                match self {
                    Transport::Plain => socket::send_all(stream, fd, last).await,
                    Transport::Tls(tls) => {
                        tls.close(last);
                        send_all_outgoing(stream, tls).await
                    }
                }
            };
            let written = monoio::time::timeout(within, write)
                .await
                .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()));
            if written.is_ok() {
                socket::shutdown_write(fd);
                let discard = socket::discard_until_closed(stream, fd, LINGER_BYTES);
                let _ = monoio::time::timeout(LINGER, discard).await;
            }
            written
        });
        close.await
    }

    /// Writes a whole response on a connection that stays open, within `within`: a client that
    /// asks and never reads must not hold its socket for ever.
    pub async fn write_within(
        &mut self,
        stream: &TcpStream,
        bytes: &[u8],
        within: Duration,
    ) -> io::Result<()> {
        monoio::time::timeout(within, self.write_all(stream, bytes))
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }
}

/// Sends waiting ciphertext without blocking; false when the socket took only part of it.
pub fn send_outgoing(fd: RawFd, tls: &mut TlsSession) -> io::Result<bool> {
    while tls.has_outgoing() {
        match socket::send_vectored(fd, &[io::IoSlice::new(tls.outgoing())]) {
            Ok(n) => tls.sent(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// Sends the alert that says why a TLS connection ends, if the socket takes it now.
pub fn refuse(fd: RawFd, tls: &mut TlsSession, error: RecordError) -> RecordError {
    let _ = send_outgoing(fd, tls);
    error
}

/// Sends all waiting ciphertext, waiting for the socket as needed.
pub async fn send_all_outgoing(stream: &TcpStream, tls: &mut TlsSession) -> io::Result<()> {
    while !send_outgoing(stream.as_raw_fd(), tls)? {
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
}
