//! Cross-thread messaging: one bounded crossbeam-channel inbox per shard (and one for the Redis
//! bridge), plus a wake-up of the receiving runtime. Senders never block and never lock: a full
//! inbox drops the message and counts it.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::Bytes;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures_channel::oneshot;
use futures_util::task::AtomicWaker;
use hdrhistogram::Histogram;

use crate::channels::counts::Decision;
use crate::channels::presence::RosterDelta;
use crate::protocol::SocketId;

/// An event on its way to a channel's subscribers, encoded once and shared by every shard.
#[derive(Debug)]
pub struct Broadcast {
    pub app: usize,
    pub channel: Box<str>,
    /// The WebSocket text frame, ready to write.
    pub frame: Bytes,
    /// The socket that must not receive it.
    pub except: Option<SocketId>,
    /// Whether a cache channel keeps it for later subscribers (not client events nor the
    /// gateway's own `pusher_internal:` events).
    pub cache: bool,
    /// When it was published, for the fanout latency histogram.
    pub published: Instant,
}

/// One shard's subscription counts: each channel's name and its subscribers there.
pub type ShardCounts = Vec<(Box<str>, u64)>;

/// What one shard asks of another.
#[derive(Debug)]
pub enum ShardMessage {
    Broadcast(Arc<Broadcast>),
    /// Another shard's (or, through a cluster layer, another node's) change to who is present.
    Roster(Arc<RosterDelta>),
    /// To the shard that keeps a channel's node-wide count: how many subscribers the sending
    /// shard has now.
    Subscribers {
        app: usize,
        channel: Box<str>,
        shard: usize,
        count: u64,
    },
    /// From the node that decides about the channel across the cluster, to the channel's owner
    /// shard: send what the decision says.
    Decided {
        app: usize,
        channel: Box<str>,
        decision: Decision,
    },
    /// Close every socket signed in as this user, with 4009.
    TerminateUser {
        app: usize,
        user_id: Arc<str>,
    },
    /// Subscription counts of the app's occupied channels, or of the named ones.
    ChannelCounts {
        app: usize,
        channels: Option<Vec<Box<str>>>,
        reply: oneshot::Sender<ShardCounts>,
    },
    /// The cluster's answer about a cache channel this shard asked for. Boxed: every slot of a
    /// shard's inbox is as large as its largest message, and inboxes are allocated whole.
    Cached(Box<CacheAnswer>),
    /// A copy of the shard's fanout latency histogram (microseconds).
    Latency {
        reply: oneshot::Sender<Histogram<u64>>,
    },
}

// Inboxes hold 65,536 messages each by default, allocated whole: 8 more bytes here are 0.5 MiB
// more per shard.
const _: () = assert!(std::mem::size_of::<ShardMessage>() <= 48);

/// A cache channel's last event as the cluster keeps it, and the time it has left, if any.
#[derive(Debug)]
pub struct CacheAnswer {
    pub app: usize,
    pub channel: Box<str>,
    pub cached: Option<(Bytes, Duration)>,
}

/// The sending side of an inbox, shared by every thread.
#[derive(Debug)]
pub struct InboxSender<T = ShardMessage> {
    sender: Sender<T>,
    waker: Arc<AtomicWaker>,
}

/// The receiving side, owned by the thread it wakes.
#[derive(Debug)]
pub struct Inbox<T = ShardMessage> {
    receiver: Receiver<T>,
    waker: Arc<AtomicWaker>,
}

/// An inbox was full; the message was not delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("inbox full")]
pub struct InboxFull;

/// A bounded inbox. The receiver may run any async runtime: the wake-up is a plain `Waker`.
pub fn inbox<T>(capacity: usize) -> (InboxSender<T>, Inbox<T>) {
    let (sender, receiver) = crossbeam_channel::bounded(capacity);
    let waker = Arc::new(AtomicWaker::new());
    (
        InboxSender {
            sender,
            waker: waker.clone(),
        },
        Inbox { receiver, waker },
    )
}

impl<T> InboxSender<T> {
    /// Queues a message and wakes the receiver. Never blocks.
    pub fn send(&self, message: T) -> Result<(), InboxFull> {
        self.offer(message).map_err(|_| InboxFull)
    }

    /// Like `send`, but a full inbox hands the message back, for senders that keep it and try
    /// again later.
    pub fn offer(&self, message: T) -> Result<(), T> {
        match self.sender.try_send(message) {
            Ok(()) => {
                self.waker.wake();
                Ok(())
            }
            Err(TrySendError::Full(message)) => Err(message),
            // The receiver has stopped (the node is shutting down): nobody is left to deliver to.
            Err(TrySendError::Disconnected(_)) => Ok(()),
        }
    }

    /// Wakes the receiver without a message, so that it looks at node-wide state (a drain).
    pub fn wake(&self) {
        self.waker.wake();
    }
}

impl<T> Inbox<T> {
    /// Waits until a message is queued or the receiver is woken, then returns what is queued.
    pub async fn next_batch(&self, batch: &mut Vec<T>) {
        let mut registered = false;
        poll_fn(|cx| {
            // Polled again after registering: woken by a message or by `wake`.
            if registered || !self.receiver.is_empty() {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            registered = true;
            // A message sent between the check above and the registration found no waker.
            if self.receiver.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await;
        batch.extend(self.receiver.try_iter());
    }

    /// The oldest queued message, if any, without waiting.
    pub fn try_next(&self) -> Option<T> {
        self.receiver.try_recv().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn latency_request() -> (ShardMessage, oneshot::Receiver<Histogram<u64>>) {
        let (reply, receiver) = oneshot::channel();
        (ShardMessage::Latency { reply }, receiver)
    }

    #[test]
    fn full_inbox_refuses_and_batches_drain_in_order() {
        let (sender, inbox) = inbox(2);
        let mut receivers = Vec::new();
        for _ in 0..2 {
            let (message, receiver) = latency_request();
            sender.send(message).unwrap();
            receivers.push(receiver);
        }
        assert_eq!(sender.send(latency_request().0), Err(InboxFull));
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .build()
            .unwrap();
        let mut batch = Vec::new();
        runtime.block_on(inbox.next_batch(&mut batch));
        assert_eq!(batch.len(), 2);
    }

    #[test]
    fn a_send_from_another_thread_wakes_a_waiting_shard() {
        let (sender, inbox) = inbox(8);
        let thread = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(50));
            sender.send(latency_request().0).unwrap();
        });
        let mut runtime = monoio::RuntimeBuilder::<monoio::FusionDriver>::new()
            .build()
            .unwrap();
        let mut batch = Vec::new();
        runtime.block_on(inbox.next_batch(&mut batch));
        assert_eq!(batch.len(), 1);
        thread.join().unwrap();
    }
}
