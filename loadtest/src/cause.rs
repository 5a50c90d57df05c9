//! Why a connection attempt, a subscription or an open connection failed, reduced to the short
//! keys that the reports count (`refused`, `timeout`, `http_503`, `close_4004`, ...).

use std::io;

use tokio_tungstenite::tungstenite;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailureCause {
    /// ECONNREFUSED: nothing listens on the port.
    Refused,
    /// A step took longer than `--timeout`, or ETIMEDOUT.
    Timeout,
    /// ECONNRESET, EPIPE or ECONNABORTED.
    Reset,
    /// EMFILE: this process is out of file descriptors.
    ProcessOutOfFiles,
    /// ENFILE: the whole system is out of file descriptors.
    SystemOutOfFiles,
    /// EADDRNOTAVAIL: no free local port for the source address.
    AddressNotAvailable,
    /// The peer closed the TCP connection without a WebSocket close frame.
    EndOfStream,
    /// The upgrade was answered with this HTTP status instead of 101.
    HttpStatus(u16),
    /// The server closed the WebSocket with this close code.
    CloseCode(u16),
    /// The server sent a close frame without a code.
    CloseWithoutCode,
    /// The TLS handshake or record layer failed.
    Tls,
    /// The server broke the WebSocket protocol.
    Protocol,
    /// A `pusher:error` arrived where a reply was expected, with its code if it had one.
    PusherError(Option<u16>),
    /// A `pusher:subscription_error` arrived, with its HTTP-like status if it had one.
    SubscriptionError(Option<u16>),
    /// Something other than the awaited Pusher event arrived, or it was not valid JSON.
    UnexpectedMessage,
    /// Any other operating system error, by errno.
    Errno(i32),
    /// Any other IO error without an errno.
    Io(io::ErrorKind),
}

impl FailureCause {
    /// The key this cause is counted under in reports.
    pub fn key(&self) -> String {
        match self {
            FailureCause::Refused => "refused".into(),
            FailureCause::Timeout => "timeout".into(),
            FailureCause::Reset => "reset".into(),
            FailureCause::ProcessOutOfFiles => "emfile".into(),
            FailureCause::SystemOutOfFiles => "enfile".into(),
            FailureCause::AddressNotAvailable => "eaddrnotavail".into(),
            FailureCause::EndOfStream => "eof".into(),
            FailureCause::HttpStatus(status) => format!("http_{status}"),
            FailureCause::CloseCode(code) => format!("close_{code}"),
            FailureCause::CloseWithoutCode => "close_without_code".into(),
            FailureCause::Tls => "tls".into(),
            FailureCause::Protocol => "protocol".into(),
            FailureCause::PusherError(Some(code)) => format!("pusher_error_{code}"),
            FailureCause::PusherError(None) => "pusher_error".into(),
            FailureCause::SubscriptionError(Some(status)) => format!("subscription_error_{status}"),
            FailureCause::SubscriptionError(None) => "subscription_error".into(),
            FailureCause::UnexpectedMessage => "unexpected_message".into(),
            FailureCause::Errno(errno) => format!("errno_{errno}"),
            FailureCause::Io(kind) => format!("io_{kind:?}").to_ascii_lowercase(),
        }
    }

    pub fn from_io(error: &io::Error) -> Self {
        if error
            .get_ref()
            .is_some_and(|inner| inner.is::<rustls::Error>())
        {
            return FailureCause::Tls;
        }
        match error.raw_os_error() {
            Some(libc::ECONNREFUSED) => FailureCause::Refused,
            Some(libc::ECONNRESET | libc::EPIPE | libc::ECONNABORTED) => FailureCause::Reset,
            Some(libc::EMFILE) => FailureCause::ProcessOutOfFiles,
            Some(libc::ENFILE) => FailureCause::SystemOutOfFiles,
            Some(libc::EADDRNOTAVAIL) => FailureCause::AddressNotAvailable,
            Some(libc::ETIMEDOUT) => FailureCause::Timeout,
            Some(errno) => FailureCause::Errno(errno),
            None => match error.kind() {
                io::ErrorKind::UnexpectedEof => FailureCause::EndOfStream,
                io::ErrorKind::TimedOut => FailureCause::Timeout,
                io::ErrorKind::ConnectionReset
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::ConnectionAborted => FailureCause::Reset,
                io::ErrorKind::ConnectionRefused => FailureCause::Refused,
                kind => FailureCause::Io(kind),
            },
        }
    }

    pub fn from_websocket(error: &tungstenite::Error) -> Self {
        use tungstenite::error::ProtocolError;
        match error {
            tungstenite::Error::Io(io_error) => FailureCause::from_io(io_error),
            tungstenite::Error::Http(response) => {
                FailureCause::HttpStatus(response.status().as_u16())
            }
            tungstenite::Error::Tls(_) => FailureCause::Tls,
            tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
                FailureCause::EndOfStream
            }
            tungstenite::Error::Protocol(ProtocolError::ResetWithoutClosingHandshake)
            | tungstenite::Error::Protocol(ProtocolError::HandshakeIncomplete) => {
                FailureCause::EndOfStream
            }
            _ => FailureCause::Protocol,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operating_system_errors_map_to_their_causes() {
        let cases = [
            (libc::ECONNREFUSED, "refused"),
            (libc::ECONNRESET, "reset"),
            (libc::EMFILE, "emfile"),
            (libc::EADDRNOTAVAIL, "eaddrnotavail"),
            (libc::ETIMEDOUT, "timeout"),
            (libc::EHOSTUNREACH, &format!("errno_{}", libc::EHOSTUNREACH)),
        ];
        for (errno, key) in cases {
            let error = io::Error::from_raw_os_error(errno);
            assert_eq!(FailureCause::from_io(&error).key(), key);
        }
    }

    #[test]
    fn websocket_closes_and_statuses_are_keyed_by_number() {
        assert_eq!(FailureCause::CloseCode(4004).key(), "close_4004");
        assert_eq!(FailureCause::HttpStatus(503).key(), "http_503");
        assert_eq!(
            FailureCause::PusherError(Some(4301)).key(),
            "pusher_error_4301"
        );
    }
}
