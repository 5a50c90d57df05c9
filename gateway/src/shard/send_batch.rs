//! Writes to many sockets with one system call: one io_uring submission of `sendmsg`s.
//!
//! Every send is non-blocking (`MSG_DONTWAIT`), which io_uring honours by completing it during
//! the submission (written, or `WouldBlock`) instead of waiting for the socket; a ring is used
//! only once a probe has shown that its kernel does so. `send` returns only once every send it
//! submitted has completed, so the buffers it borrowed are free again.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use io_uring::{opcode, types, IoUring};

use crate::shard::io as socket;

/// Sends in flight at once: the ring's size.
const RING_ENTRIES: u32 = 256;
/// Most buffers handed to one send; what is left goes with a later one.
pub const MAX_IOVECS: usize = 64;

/// A shard's ring for batched sends, with room kept for the messages it describes.
pub struct SendBatch {
    ring: IoUring,
    fds: Vec<RawFd>,
    /// Where each send's buffers start in `iovecs`, and how many there are.
    spans: Vec<(usize, usize)>,
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::msghdr>,
    results: Vec<io::Result<usize>>,
}

impl SendBatch {
    pub fn new() -> io::Result<SendBatch> {
        let mut ring = IoUring::new(RING_ENTRIES)?;
        if !sends_complete_at_once(&mut ring)? {
            return Err(io::Error::other(
                "io_uring waits for the socket on MSG_DONTWAIT sends",
            ));
        }
        Ok(SendBatch {
            ring,
            fds: Vec::new(),
            spans: Vec::new(),
            iovecs: Vec::new(),
            headers: Vec::new(),
            results: Vec::new(),
        })
    }

    /// Sends each socket's buffers, at most `MAX_IOVECS` of them, as one `sendmsg` each; what
    /// each send achieved, in the order given. The sockets must differ from each other.
    ///
    /// Alongside, the error of the ring itself if it failed: it must not be used again (the
    /// `SendBatch` is dropped then). Sends it did not make are reported as `Interrupted`; the
    /// others, made before it failed, as they went.
    pub fn send<'a, B>(
        &mut self,
        messages: impl Iterator<Item = (RawFd, B)>,
    ) -> (&[io::Result<usize>], Option<io::Error>)
    where
        B: Iterator<Item = &'a [u8]>,
    {
        self.describe(messages);
        self.results.clear();
        self.results.extend(
            self.fds
                .iter()
                .map(|_| Err(io::ErrorKind::Interrupted.into())),
        );
        let mut next = 0;
        while next < self.fds.len() {
            let end = (next + RING_ENTRIES as usize).min(self.fds.len());
            if let Err(failure) = self.submit(next..end) {
                return (&self.results, Some(failure));
            }
            next = end;
        }
        (&self.results, None)
    }

    /// Lays the messages out as `msghdr`s over `iovecs`, once every iovec is in place (so that
    /// none moves after a header points at it).
    fn describe<'a, B>(&mut self, messages: impl Iterator<Item = (RawFd, B)>)
    where
        B: Iterator<Item = &'a [u8]>,
    {
        self.fds.clear();
        self.spans.clear();
        self.iovecs.clear();
        for (fd, buffers) in messages {
            let start = self.iovecs.len();
            self.iovecs.extend(buffers.take(MAX_IOVECS).map(|buffer| {
                let slice = IoSlice::new(buffer);
                libc::iovec {
                    iov_base: slice.as_ptr() as *mut libc::c_void,
                    iov_len: slice.len(),
                }
            }));
            self.fds.push(fd);
            self.spans.push((start, self.iovecs.len() - start));
        }
        self.headers.clear();
        let iovecs = self.iovecs.as_mut_ptr();
        self.headers
            .extend(self.spans.iter().map(|&(start, count)| {
                // SAFETY: an all-zero msghdr is valid (no name, no control data).
                let mut header: libc::msghdr = unsafe { std::mem::zeroed() };
                // SAFETY: `start` is within `iovecs` (or at its end, with `count` 0).
                header.msg_iov = unsafe { iovecs.add(start) };
                header.msg_iovlen = count as _;
                header
            }));
    }

    /// Submits the sends `range` and waits for all of them.
    fn submit(&mut self, range: std::ops::Range<usize>) -> io::Result<()> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        {
            let mut queue = self.ring.submission();
            for index in range.clone() {
                let entry = opcode::SendMsg::new(types::Fd(self.fds[index]), &self.headers[index])
                    .flags(flags as u32)
                    .build()
                    .user_data(index as u64);
                // SAFETY: the header, its iovecs and the buffers they point at are borrowed
                // until `send` returns. `send` returns once this entry has completed, or when
                // the ring failed: then the ring is dropped, so an entry still queued is never
                // submitted, and one submitted has completed within its submission (the probe
                // in `new` showed that this kernel completes MSG_DONTWAIT sends so).
                // The queue has room: it holds RING_ENTRIES and was empty.
                if unsafe { queue.push(&entry) }.is_err() {
                    return Err(io::ErrorKind::OutOfMemory.into());
                }
            }
        }
        let mut left = range.len();
        while left > 0 {
            let submitted = match self.ring.submit_and_wait(left) {
                Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
                _ => Ok(()),
            };
            for completion in self.ring.completion() {
                let index = completion.user_data() as usize;
                let result = completion.result();
                self.results[index] = if result < 0 {
                    Err(io::Error::from_raw_os_error(-result))
                } else {
                    Ok(result as usize)
                };
                left -= 1;
            }
            submitted?;
        }
        Ok(())
    }
}

/// Whether the ring completes a `MSG_DONTWAIT` send to a full socket within its submission, with
/// `WouldBlock`, as `SendBatch::send` needs: it must not wait for a client that does not read.
fn sends_complete_at_once(ring: &mut IoUring) -> io::Result<bool> {
    let (full, _peer) = UnixStream::pair()?;
    full.set_nonblocking(true)?;
    let chunk = [0u8; 16 * 1024];
    while socket::send_some(full.as_raw_fd(), &chunk)? > 0 {}
    static PROBE: &[u8] = b"?";
    let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
    let entry = opcode::Send::new(types::Fd(full.as_raw_fd()), PROBE.as_ptr(), 1)
        .flags(flags)
        .build();
    // SAFETY: the buffer is static; a send still waiting holds its own reference to the socket
    // until the ring, which the caller then drops, cancels it.
    unsafe { ring.submission().push(&entry) }.map_err(|_| io::ErrorKind::OutOfMemory)?;
    ring.submit()?;
    let completed = ring.completion().next();
    Ok(completed.is_some_and(|completion| completion.result() == -libc::EAGAIN))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::fd::AsRawFd;
    use std::os::unix::net::UnixStream;

    #[test]
    fn each_socket_gets_its_own_buffers_in_order() {
        let pairs: Vec<_> = (0..300).map(|_| UnixStream::pair().unwrap()).collect();
        let frames: Vec<Vec<Vec<u8>>> = (0..300)
            .map(|i| vec![format!("a{i}").into_bytes(), format!("-b{i}").into_bytes()])
            .collect();
        let mut batch = SendBatch::new().unwrap();
        let results = batch
            .send(pairs.iter().zip(&frames).map(|((sender, _), frames)| {
                (sender.as_raw_fd(), frames.iter().map(|f| f.as_slice()))
            }))
            .0
            .iter()
            .map(|result| *result.as_ref().unwrap())
            .collect::<Vec<_>>();
        for (i, ((_, receiver), written)) in pairs.iter().zip(results).enumerate() {
            let expected = format!("a{i}-b{i}");
            assert_eq!(written, expected.len());
            let mut got = vec![0; expected.len()];
            (&*receiver).read_exact(&mut got).unwrap();
            assert_eq!(got, expected.as_bytes());
        }
    }

    #[test]
    fn a_full_socket_answers_would_block_at_once_and_a_closed_one_fails() {
        let (full, _full_peer) = UnixStream::pair().unwrap();
        full.set_nonblocking(true).unwrap();
        let chunk = vec![0u8; 64 * 1024];
        while (&full).write_nonblocking(&chunk) {}
        let (closed, closed_peer) = UnixStream::pair().unwrap();
        drop(closed_peer);
        let mut batch = SendBatch::new().unwrap();
        let results = batch
            .send(
                [full.as_raw_fd(), closed.as_raw_fd()]
                    .into_iter()
                    .map(|fd| (fd, std::iter::once(&b"more"[..]))),
            )
            .0;
        assert_eq!(
            results[0].as_ref().unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert_eq!(
            results[1].as_ref().unwrap_err().kind(),
            io::ErrorKind::BrokenPipe
        );
    }

    trait WriteNonblocking {
        fn write_nonblocking(self, bytes: &[u8]) -> bool;
    }

    impl WriteNonblocking for &UnixStream {
        /// Whether the socket took any of `bytes`.
        fn write_nonblocking(mut self, bytes: &[u8]) -> bool {
            std::io::Write::write(&mut self, bytes).is_ok_and(|n| n > 0)
        }
    }
}
