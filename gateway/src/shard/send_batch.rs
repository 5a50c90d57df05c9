//! Writes to many sockets with one system call: one io_uring submission of `sendmsg`s.
//!
//! Every send is non-blocking (`MSG_DONTWAIT`), which io_uring honours by completing it during
//! the submission (written, or `WouldBlock`) instead of waiting for the socket. `send` returns
//! only once every send it submitted has completed, so the buffers it borrowed are free again.

use std::io::{self, IoSlice};
use std::os::fd::RawFd;

use io_uring::{opcode, types, IoUring};

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
        Ok(SendBatch {
            ring: IoUring::new(RING_ENTRIES)?,
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
    /// An error means the ring itself failed: it must not be used again (`SendBatch` is then
    /// dropped), and sends it did not take are reported as that error's kind.
    pub fn send<'a, B>(
        &mut self,
        messages: impl Iterator<Item = (RawFd, B)>,
    ) -> io::Result<&[io::Result<usize>]>
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
            self.submit(next..end)?;
            next = end;
        }
        Ok(&self.results)
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
                // until `send` returns, and `send` returns only after this entry completed or
                // the ring failed (then it is dropped, and the entry is never submitted).
                // The queue has room: it holds RING_ENTRIES and was empty.
                if unsafe { queue.push(&entry) }.is_err() {
                    return Err(io::ErrorKind::OutOfMemory.into());
                }
            }
        }
        let mut left = range.len();
        while left > 0 {
            match self.ring.submit_and_wait(left) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
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
        }
        Ok(())
    }
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
            .unwrap()
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
            .unwrap();
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
