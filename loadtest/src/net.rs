//! TCP connections from a chosen source address, optionally wrapped in TLS.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;

use crate::cause::FailureCause;
use crate::tls::TlsTarget;

/// A plaintext or TLS client connection.
pub enum ClientStream {
    Plain(TcpStream),
    /// Boxed so that plaintext connections do not carry the size of a TLS session.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl ClientStream {
    /// Connects from `source` when one is given, within `step_timeout`.
    pub async fn connect_tcp(
        address: SocketAddr,
        source: Option<IpAddr>,
        step_timeout: Duration,
    ) -> Result<TcpStream, FailureCause> {
        let socket = match address {
            SocketAddr::V4(_) => TcpSocket::new_v4(),
            SocketAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(|error| FailureCause::from_io(&error))?;
        if let Some(source) = source {
            defer_port_choice_to_connect(&socket);
            socket
                .bind(SocketAddr::new(source, 0))
                .map_err(|error| FailureCause::from_io(&error))?;
        }
        let stream = timeout(step_timeout, socket.connect(address))
            .await
            .map_err(|_| FailureCause::Timeout)?
            .map_err(|error| FailureCause::from_io(&error))?;
        stream
            .set_nodelay(true)
            .map_err(|error| FailureCause::from_io(&error))?;
        Ok(stream)
    }

    /// Runs the TLS handshake when the target uses TLS; the caller bounds its time.
    pub async fn wrap(stream: TcpStream, tls: Option<&TlsTarget>) -> Result<Self, FailureCause> {
        match tls {
            None => Ok(ClientStream::Plain(stream)),
            Some(tls) => tls
                .connector
                .connect(tls.server_name.clone(), stream)
                .await
                .map(|stream| ClientStream::Tls(Box::new(stream)))
                .map_err(|error| FailureCause::from_io(&error)),
        }
    }
}

/// With IP_BIND_ADDRESS_NO_PORT the kernel picks the local port at connect() time, when it
/// knows the destination, so a source address's ports are shared across destinations instead
/// of being reserved by bind(). Failing to set it only costs port range, so errors are ignored.
fn defer_port_choice_to_connect(socket: &TcpSocket) {
    let enable: libc::c_int = 1;
    // SAFETY: the descriptor is owned by `socket` and open; the option value is a live c_int
    // whose size is passed alongside it.
    unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

impl AsyncRead for ClientStream {
    fn poll_read(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_read(context, buffer),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_read(context, buffer),
        }
    }
}

impl AsyncWrite for ClientStream {
    fn poll_write(
        self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_write(context, bytes),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_write(context, bytes),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_flush(context),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_flush(context),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(stream) => Pin::new(stream).poll_shutdown(context),
            ClientStream::Tls(stream) => Pin::new(stream.as_mut()).poll_shutdown(context),
        }
    }
}
