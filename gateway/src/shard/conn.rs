//! One WebSocket session's state as the rest of its shard sees it: the outbound queue that
//! fanout fills, the close request, activity. It is the core's `Handle` of the session.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::task::Waker;

use bytes::{Buf, Bytes};
use monoio::net::TcpStream;

use crate::admin::stats::Disconnect;
use crate::budget::InputBudget;
use crate::pusher::{Handle, QueueFull, Sent, SessionState};
use crate::shard::io as socket;
use crate::shard::send_batch::MAX_IOVECS;
use crate::shard::transport::{self, TlsSession};
use crate::shard::OpenSocket;
use crate::tls::records::RecordError;
use crate::ws::incoming::Incoming;

/// Ciphertext gathered before one send on a TLS connection.
const TLS_BATCH_BYTES: usize = 64 * 1024;
/// What a queued frame costs its connection besides the frame (shared with every other
/// subscriber): its handle in the queue. Counted against `outbound_queue_bytes`, so that a queue
/// of many small frames is bounded in memory too.
const QUEUED_FRAME_COST: usize = std::mem::size_of::<Bytes>();

/// A queued frame's share of `outbound_queue_bytes`.
fn queue_cost(frame: &Bytes) -> usize {
    frame.len() + QUEUED_FRAME_COST
}

/// What a flush achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flush {
    /// Everything queued was written.
    Drained,
    /// The socket's buffer is full; wait until it is writable.
    Blocked,
}

// An `Rc<Conn>` (16 bytes of counts, then the `Conn`) must fit the allocator's 256-byte size
// class: at 248 bytes of `Conn` it took the next class, and every idle connection cost 55 B more
// (10,000 connections, interleaved runs).
const _: () = assert!(std::mem::size_of::<Conn>() + 16 <= 256);

/// A session on its shard. Shared (`Rc`) between the session's task and the channels it is
/// subscribed to; the queue holds handles to shared frames and is empty when idle.
pub struct Conn {
    pub id: u64,
    /// What the Pusher core keeps of this session.
    pusher: SessionState,
    /// The socket, owned here so that it closes only once nothing can write to it: every
    /// writer (the session task, fanout through the registry) holds this `Conn`.
    stream: TcpStream,
    /// Counts the socket against the node's limit for exactly as long as it is open.
    _open: OpenSocket,
    /// Frames go out encrypted, by the session task only.
    tls: bool,
    outbound: RefCell<VecDeque<Bytes>>,
    queued_bytes: Cell<usize>,
    /// Whether the first queued frame is partly written, so it must be finished before anything
    /// else (such as a close frame) goes out.
    front_started: Cell<bool>,
    /// The session task, parked while it waits for the socket or for frames.
    waker: Cell<Option<Waker>>,
    close: Cell<Option<(u16, Disconnect)>>,
    /// Shard clock second of the last frame received.
    last_seen: Cell<u32>,
    /// What the client sent that is not complete yet; none when nothing is.
    reader: Cell<Option<Box<Reader>>>,
}

/// Input not complete yet, and its share of the node's input budget. Its own allocation, made
/// only while there is such input, so that an idle connection carries one pointer for it.
#[derive(Default)]
struct Reader {
    /// A WebSocket message in progress (see `ws::incoming`); taken while frames are handled.
    input: Option<Box<Incoming>>,
    /// Bytes of the node's input budget held: the message's and, on TLS, a record's.
    reserved: usize,
    /// Shard clock second at which the input began.
    since: u32,
}

impl Conn {
    pub fn new(
        id: u64,
        app: usize,
        stream: TcpStream,
        open: OpenSocket,
        tls: bool,
        now: u32,
    ) -> Conn {
        Conn {
            id,
            pusher: SessionState::new(app),
            stream,
            _open: open,
            tls,
            outbound: RefCell::new(VecDeque::new()),
            queued_bytes: Cell::new(0),
            front_started: Cell::new(false),
            waker: Cell::new(None),
            close: Cell::new(None),
            last_seen: Cell::new(now),
            reader: Cell::new(None),
        }
    }

    /// Queues a frame, waking the session's task if `wake`. Returns false, queuing nothing,
    /// when the queue would grow past `limit` bytes: the caller closes the connection as a slow
    /// consumer.
    fn enqueue(&self, frame: Bytes, limit: usize, wake: bool) -> bool {
        let queued = self.queued_bytes.get() + queue_cost(&frame);
        if queued > limit {
            return false;
        }
        self.queued_bytes.set(queued);
        self.outbound.borrow_mut().push_back(frame);
        if wake {
            self.wake();
        }
        true
    }

    /// Asks the session to close with `code`. Queued frames are dropped for a slow consumer
    /// (they are what it cannot take) and kept otherwise. The first request wins.
    pub fn request_close(&self, code: u16, reason: Disconnect) {
        if self.close.get().is_some() {
            return;
        }
        if reason == Disconnect::SlowConsumer {
            let mut outbound = self.outbound.borrow_mut();
            let keep = usize::from(self.front_started.get());
            outbound.truncate(keep);
            self.queued_bytes.set(outbound.iter().map(queue_cost).sum());
        }
        self.close.set(Some((code, reason)));
        self.wake();
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn close_requested(&self) -> Option<(u16, Disconnect)> {
        self.close.get()
    }

    pub fn has_outbound(&self) -> bool {
        !self.outbound.borrow().is_empty()
    }

    /// Parks the session task until a frame or a close request arrives.
    pub fn park(&self, waker: &Waker) {
        match self.waker.take() {
            Some(old) if old.will_wake(waker) => self.waker.set(Some(old)),
            _ => self.waker.set(Some(waker.clone())),
        }
    }

    /// Writes what is queued from outside the session's task, which is woken only to wait for
    /// the socket (full) or to end the session (failed).
    pub fn write_queued(&self) -> usize {
        match self.flush() {
            Ok((Flush::Drained, written)) => written,
            Ok((Flush::Blocked, written)) => {
                self.wake();
                written
            }
            Err(_) => {
                self.wake();
                0
            }
        }
    }

    fn wake(&self) {
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }

    /// Takes the message earlier reads left incomplete, to carry on with it.
    pub fn take_input(&self) -> Option<Box<Incoming>> {
        let mut reader = self.reader.take();
        let input = reader.as_mut().and_then(|reader| reader.input.take());
        self.reader.set(reader);
        input
    }

    /// Keeps the message a read left incomplete, until `hold_input` accounts for it.
    pub fn keep_input(&self, input: Option<Box<Incoming>>) {
        let mut reader = self.reader.take();
        if input.is_some() {
            let reader = reader.get_or_insert_with(|| Box::new(Reader::default()));
            reader.input = input;
        }
        self.reader.set(reader);
    }

    /// Holds the kept message, plus `extra` bytes kept elsewhere for this client (a TLS record
    /// cut by a read), against the node's budget. `restarted` says a message completed since,
    /// so what is kept began now. False, dropping what was kept, when the budget cannot take it.
    pub fn hold_input(
        &self,
        extra: usize,
        now: u32,
        restarted: bool,
        budget: &InputBudget,
    ) -> bool {
        let reader = self.reader.take();
        let input = reader.as_ref().and_then(|reader| reader.input.as_ref());
        let held = input.map_or(0, |input| input.held()) + extra;
        let reserved = reader.as_ref().map_or(0, |reader| reader.reserved);
        if !budget.resize(reserved, held) {
            budget.release(reserved);
            return false;
        }
        if held == 0 {
            return true;
        }
        let mut reader = reader.unwrap_or_default();
        if reserved == 0 || restarted {
            reader.since = now;
        }
        reader.reserved = held;
        self.reader.set(Some(reader));
        true
    }

    pub fn touch(&self, now: u32) {
        self.last_seen.set(now);
    }

    /// Writes queued frames until the queue is empty or the socket is full. Returns bytes
    /// written alongside.
    pub fn flush(&self) -> io::Result<(Flush, usize)> {
        let mut written = 0;
        loop {
            let sent = {
                let outbound = self.outbound.borrow();
                if outbound.is_empty() {
                    break;
                }
                let mut slices = [IoSlice::new(&[]); MAX_IOVECS];
                let mut count = 0;
                for (slot, frame) in slices.iter_mut().zip(outbound.iter()) {
                    *slot = IoSlice::new(frame);
                    count += 1;
                }
                socket::send_vectored(self.fd(), &slices[..count])
            };
            match sent {
                Ok(n) => {
                    written += n;
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flush::Blocked, written))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Self::release_burst(&mut self.outbound.borrow_mut());
        Ok((Flush::Drained, written))
    }

    /// The queued frames, for a send that writes many connections at once (`SendBatch`).
    pub fn queued(&self) -> std::cell::Ref<'_, VecDeque<Bytes>> {
        self.outbound.borrow()
    }

    /// Takes what a send of `queued` frames achieved into account, and carries on as
    /// `write_queued` does. Bytes written.
    pub fn sent(&self, result: &io::Result<usize>) -> usize {
        match result {
            Ok(n) => {
                self.consume(*n);
                n + self.write_queued()
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => self.write_queued(),
            Err(_) => {
                // Full: the task waits for room. Failed: the task ends the session.
                self.wake();
                0
            }
        }
    }

    /// Drops the `n` bytes a send took from the front of the queue.
    fn consume(&self, n: usize) {
        let mut outbound = self.outbound.borrow_mut();
        self.queued_bytes.set(self.queued_bytes.get() - n);
        let mut left = n;
        while left > 0 {
            let front = outbound
                .front_mut()
                .expect("sendmsg wrote no more than was queued");
            if front.len() <= left {
                left -= front.len();
                outbound.pop_front();
                self.queued_bytes
                    .set(self.queued_bytes.get() - QUEUED_FRAME_COST);
                self.front_started.set(false);
            } else {
                front.advance(left);
                self.front_started.set(true);
                left = 0;
            }
        }
    }

    /// Encrypts queued frames for this connection, batching records into the shard's buffer so
    /// that one system call carries many of them. Ciphertext the socket does not take stays with
    /// the TLS session and goes first next time.
    pub fn flush_tls(
        &self,
        tls: &mut TlsSession,
        cipher: &mut Vec<u8>,
    ) -> io::Result<(Flush, usize)> {
        if !transport::send_outgoing(self.fd(), tls)? {
            return Ok((Flush::Blocked, 0));
        }
        let mut written = 0;
        loop {
            cipher.clear();
            let mut sealed = Ok(());
            {
                let mut outbound = self.outbound.borrow_mut();
                if outbound.is_empty() {
                    Self::release_burst(&mut outbound);
                    return Ok((Flush::Drained, written));
                }
                // One expansion of the send key for the whole batch.
                let mut sealer = tls.sealer().map_err(invalid_data)?;
                while sealed.is_ok() && cipher.len() < TLS_BATCH_BYTES {
                    let Some(frame) = outbound.pop_front() else {
                        break;
                    };
                    self.queued_bytes
                        .set(self.queued_bytes.get() - queue_cost(&frame));
                    sealed = sealer.seal(&frame, cipher);
                }
            }
            let sent = socket::send_some(self.fd(), cipher)?;
            written += sent;
            if let Err(error) = sealed {
                // The records sealed before the failure, and the alert that ends them, go out
                // as far as the socket takes them; the connection ends here.
                tracing::debug!(%error, written, "TLS connection cannot send more");
                return Err(invalid_data(error));
            }
            if sent < cipher.len() {
                tls.keep_outgoing(&cipher[sent..]);
                return Ok((Flush::Blocked, written));
            }
        }
    }

    fn release_burst(outbound: &mut VecDeque<Bytes>) {
        if outbound.capacity() > 64 {
            // A burst grew the queue; give the memory back now that it is idle.
            *outbound = VecDeque::new();
        }
    }
}

impl Handle for Rc<Conn> {
    fn state(&self) -> &SessionState {
        &self.pusher
    }

    fn send(&self, frame: Bytes, limit: usize) -> Result<Sent, QueueFull> {
        // TLS connections are written by their own task, which holds their TLS state; a
        // plaintext one whose queue was empty is written by its shard once the input at hand is
        // handled, without waking its task.
        let to_write = !self.tls && !self.has_outbound();
        if self.enqueue(frame.clone(), limit, !to_write) {
            return Ok(Sent {
                written: 0,
                to_write,
            });
        }
        if self.tls {
            return Err(QueueFull);
        }
        match self.flush() {
            Ok((_, written)) if self.enqueue(frame, limit, true) => Ok(Sent {
                written,
                to_write: false,
            }),
            _ => Err(QueueFull),
        }
    }

    fn close(&self, code: u16, reason: Disconnect) {
        self.request_close(code, reason);
    }

    fn is_closing(&self) -> bool {
        self.close.get().is_some()
    }

    fn last_active(&self) -> u32 {
        self.last_seen.get()
    }

    fn incomplete_since(&self) -> Option<u32> {
        let reader = self.reader.take();
        let since = reader.as_ref().map(|reader| reader.since);
        self.reader.set(reader);
        since
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(reader) = self.reader.get_mut() {
            self._open.0.input_budget.release(reader.reserved);
        }
    }
}

fn invalid_data(error: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, error)
}
