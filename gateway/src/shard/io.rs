//! Non-blocking socket calls on a connection's descriptor. Readiness comes from the runtime
//! (`readable` / `writable`, a poll on io_uring); data moves with these calls into and out of
//! buffers the shard owns, so an idle connection parks no buffer in a pending read.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use monoio::net::TcpStream;

fn result(n: isize) -> io::Result<usize> {
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Reads what is there without waiting; `WouldBlock` when nothing is.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a valid, writable region of `buf.len()` bytes for the whole call, and
    // recv writes at most that many bytes into it.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    result(n)
}

/// Appends what is there (at most `max` bytes) to `buf` without waiting; `WouldBlock` when
/// nothing is. The room is not zeroed first: a read costs what it reads, not `max`.
pub fn recv_appending(fd: RawFd, buf: &mut Vec<u8>, max: usize) -> io::Result<usize> {
    buf.reserve(max);
    let room = &mut buf.spare_capacity_mut()[..max];
    // SAFETY: `room` is a valid, writable region of `max` bytes for the whole call, and recv
    // writes at most that many bytes into it.
    let n = result(unsafe { libc::recv(fd, room.as_mut_ptr().cast(), max, libc::MSG_DONTWAIT) })?;
    // SAFETY: recv initialised the first `n` bytes (at most `max`, all within the capacity
    // reserved above) of the room right after the vector's bytes.
    unsafe { buf.set_len(buf.len() + n) };
    Ok(n)
}

/// Writes as much of `bufs` as the socket takes without waiting; `WouldBlock` when it takes
/// nothing. One system call for many queued frames.
pub fn send_vectored(fd: RawFd, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    // SAFETY: an all-zero msghdr is valid (no name, no control data); the iovec array is the
    // caller's slice of IoSlice, which is ABI-compatible with `struct iovec`, and it outlives the
    // call. sendmsg only reads from those buffers.
    let n = unsafe {
        let mut header: libc::msghdr = std::mem::zeroed();
        header.msg_iov = bufs.as_ptr() as *mut libc::iovec;
        header.msg_iovlen = bufs.len() as _;
        libc::sendmsg(fd, &header, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL)
    };
    result(n)
}

/// Writes as much of `bytes` as the socket takes without waiting; how much that was.
pub fn send_some(fd: RawFd, mut bytes: &[u8]) -> io::Result<usize> {
    let total = bytes.len();
    while !bytes.is_empty() {
        match send_vectored(fd, &[IoSlice::new(bytes)]) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(total - bytes.len())
}

/// Caps the kernel's send buffer of a socket at `bytes` (the kernel doubles it, and clamps it
/// to `net.core.wmem_max`), which turns off its autotuning for that socket.
pub fn set_send_buffer(fd: RawFd, bytes: usize) -> io::Result<()> {
    let value = libc::c_int::try_from(bytes).unwrap_or(libc::c_int::MAX);
    // SAFETY: setsockopt only reads `size_of::<c_int>()` bytes from the pointer, which points at
    // `value` on this stack for the whole call.
    let status = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_SNDBUF,
            (&raw const value).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    result(status as isize).map(drop)
}

/// Stops sending (a FIN after what is queued) while still reading the peer's close.
pub fn shutdown_write(fd: RawFd) {
    // SAFETY: shutdown takes no pointers; on a closed or bad descriptor it only returns an error,
    // which is of no use here because the connection is ending either way.
    unsafe {
        libc::shutdown(fd, libc::SHUT_WR);
    }
}

/// Reads and throws away what arrives until the peer closes, `max` bytes have come or reading
/// fails: a socket closed with unread bytes makes the kernel answer with a reset, which can
/// destroy what was sent before it and has not been read yet.
pub async fn discard_until_closed(stream: &TcpStream, fd: RawFd, max: usize) {
    let mut sink = [0u8; 2048];
    let mut left = max;
    while left > 0 {
        match recv(fd, &mut sink[..left.min(2048)]) {
            Ok(0) => return,
            Ok(n) => left -= n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if stream.readable(false).await.is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

/// Takes a listening socket out of LISTEN at once, freeing its port for the next gateway.
/// Closing the descriptor is not enough under io_uring: a pending accept keeps the socket
/// listening until the ring cancels it, which at exit happens after the process is gone.
pub fn stop_listening(fd: RawFd) {
    // SAFETY: shutdown takes no pointers, and the caller holds the listener, so the descriptor
    // is still its own. An error would change nothing: the listener is going away either way.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Writes all of `bytes`, waiting for the socket when its buffer is full.
pub async fn send_all(stream: &TcpStream, fd: RawFd, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        match send_vectored(fd, &[IoSlice::new(bytes)]) {
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => stream.writable(false).await?,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Waits for bytes and appends what is there (at most `max` bytes) to `buf`. Returns how many
/// were read; 0 means the peer closed. An empty buffer is handed back before waiting and its room
/// taken again when bytes are there, so a connection waiting with nothing unread holds no buffer.
pub async fn recv_into(
    stream: &TcpStream,
    fd: RawFd,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<usize> {
    loop {
        match recv_appending(fd, buf, max) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                // An empty buffer goes back while waiting; one holding part of a request or record
                // keeps its room, rather than be copied out and back on every wait.
                if buf.is_empty() {
                    *buf = Vec::new();
                }
                stream.readable(false).await?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn vectored_send_and_recv_move_bytes_without_waiting() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = [0u8; 16];
        let err = recv(b.as_raw_fd(), &mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let sent =
            send_vectored(a.as_raw_fd(), &[IoSlice::new(b"ab"), IoSlice::new(b"cd")]).unwrap();
        assert_eq!(sent, 4);
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"abcd");
        shutdown_write(a.as_raw_fd());
        assert_eq!(recv(b.as_raw_fd(), &mut buf).unwrap(), 0);
    }

    #[test]
    fn received_bytes_are_appended_after_what_the_buffer_held() {
        let (a, b) = UnixStream::pair().unwrap();
        let mut buf = b"kept".to_vec();
        let err = recv_appending(b.as_raw_fd(), &mut buf, 8).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(buf, b"kept", "nothing read, nothing added");
        send_some(a.as_raw_fd(), b"0123456789").unwrap();
        assert_eq!(recv_appending(b.as_raw_fd(), &mut buf, 8).unwrap(), 8);
        assert_eq!(buf, b"kept01234567", "at most `max` bytes");
        assert_eq!(recv_appending(b.as_raw_fd(), &mut buf, 8).unwrap(), 2);
        assert_eq!(buf, b"kept0123456789");
    }

    #[test]
    fn full_socket_reports_would_block() {
        let (a, _b) = UnixStream::pair().unwrap();
        let chunk = vec![0u8; 64 * 1024];
        let outcome = (0..10_000)
            .map(|_| send_vectored(a.as_raw_fd(), &[IoSlice::new(&chunk)]))
            .find(Result::is_err)
            .expect("a socket buffer fills up");
        assert_eq!(outcome.unwrap_err().kind(), io::ErrorKind::WouldBlock);
    }
}
