//! Delivery of broadcasts to this shard's subscribers. A broadcast to at most a slice's worth of
//! them is delivered at once; a bigger one waits in a queue, and the runtime delivers it in slices
//! (`fan_out_slice`, each sized to take about `SLICE_TIME`), serving HTTP requests, handshakes and
//! reads between them, so that a publish is answered as soon as it is accepted, whatever its
//! channel's size. Every broadcast accepted after a waiting one waits too: a shard delivers in the
//! order it accepts, and so keeps publish order (see `Shard::publish`).
//!
//! Broadcasts to the same channel that wait next to each other are delivered together: each
//! recipient gets all of them at once, and its connection writes them with one system call. A
//! shard that falls behind with a busy wide channel thus does less work per event, not more.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::core::{Core, Handle};
use crate::admin::stats;
use crate::bus::Broadcast;
use crate::protocol::channel::server_to_user;
use crate::protocol::ChannelKind;

/// Most recipients a broadcast is delivered to at once, and in one slice.
pub const FANOUT_SLICE: usize = 512;
/// How long a slice, with its writes, should take: what requests, handshakes and reads on the
/// shard wait for at most, about.
pub const SLICE_TIME: Duration = Duration::from_millis(1);
/// Fewest recipients a slice serves, however long their writes take.
const MIN_SLICE: usize = 16;
/// Most waiting broadcasts delivered together (see the module's comment).
pub const FANOUT_GROUP: usize = 16;

/// Broadcasts waiting for their delivery on this shard.
pub(super) struct Fanout<H> {
    /// With the writes each added: the subscribers its channel had here when it was queued, or
    /// none when it joined the group of the broadcast before it.
    waiting: VecDeque<(Arc<Broadcast>, u64)>,
    /// The sum of those, but for the group whose recipients are taken: they count instead.
    writes: u64,
    /// How many broadcasts the last group waiting has, while later ones may still join it: not
    /// taken yet, under `FANOUT_GROUP`. None when no group may be joined.
    open_group: usize,
    /// The subscribers of the oldest waiting broadcasts' channel that have not got them yet, by
    /// session number; taken when their turn comes, so that who subscribes or leaves meanwhile
    /// does not move the others. One that has closed since is skipped.
    recipients: Vec<(u64, H)>,
    /// How many of the oldest waiting broadcasts `recipients` are for: those next to each other
    /// to the same channel, at most `FANOUT_GROUP`. None while no recipients are taken.
    group: usize,
    /// How many recipients got the group so far.
    delivered: u64,
    slice: usize,
    /// Recipients the next slice serves (at most `slice`): as many as take `SLICE_TIME`.
    budget: usize,
    /// Writes (a group's turn at one recipient) that may wait before publishes are held back
    /// (`fanout_backlog`, see `Shard::wait_for_fanout`); past twice that, client events are
    /// refused.
    backlog: u64,
}

impl<H> Fanout<H> {
    pub(super) fn new(backlog: u64) -> Fanout<H> {
        Fanout {
            waiting: VecDeque::new(),
            writes: 0,
            open_group: 0,
            recipients: Vec::new(),
            group: 0,
            delivered: 0,
            slice: FANOUT_SLICE,
            budget: FANOUT_SLICE,
            backlog,
        }
    }
}

impl<H: Handle> Core<H> {
    /// Delivers a broadcast to this shard's subscribers of its channel now, or queues it for
    /// `fan_out_slice`.
    pub(super) fn deliver(&mut self, broadcast: &Arc<Broadcast>, now: Instant) {
        let subscribers = match server_to_user(&broadcast.channel) {
            Some(_) => 1,
            None => self.registry.count(broadcast.app, &broadcast.channel),
        };
        if self.fanout.waiting.is_empty() && subscribers <= self.fanout.slice as u64 {
            self.keep_if_cached(broadcast);
            let delivered = self.deliver_all(broadcast);
            self.record_latency(broadcast, delivered, now);
        } else {
            self.queue(broadcast, subscribers);
        }
    }

    /// Queues a broadcast behind the others, in the last group if it may join it.
    fn queue(&mut self, broadcast: &Arc<Broadcast>, subscribers: u64) {
        let fanout = &mut self.fanout;
        let joins = fanout.open_group > 0
            && fanout.open_group < FANOUT_GROUP
            && server_to_user(&broadcast.channel).is_none()
            && (fanout.waiting.back()).is_some_and(|(last, _)| same_channel(last, broadcast));
        let writes = if joins { 0 } else { subscribers };
        fanout.open_group = if joins { fanout.open_group + 1 } else { 1 };
        fanout.waiting.push_back((broadcast.clone(), writes));
        fanout.writes += writes;
        self.count_waiting();
    }

    /// Writes waiting: the recipients the group in its turn has left, and every later group's.
    fn writes_waiting(&self) -> u64 {
        self.fanout.writes + self.fanout.recipients.len() as u64
    }

    fn count_waiting(&self) {
        let writes = self.writes_waiting();
        (self.stats.fanout_waiting).store(writes, std::sync::atomic::Ordering::Relaxed);
    }

    /// A cache channel keeps the broadcast from its turn on: who subscribes before it reaches
    /// the front gets the channel's event before it, then this one, as if they had subscribed
    /// before it was published; never it twice.
    fn keep_if_cached(&mut self, broadcast: &Broadcast) {
        let channel = &broadcast.channel;
        if broadcast.cache
            && ChannelKind::of(channel).is_cache()
            && server_to_user(channel).is_none()
        {
            self.registry.set_cached(
                broadcast.app,
                channel,
                broadcast.frame.clone(),
                broadcast.published,
            );
        }
    }

    /// Whether this shard is so far behind that client events are refused (publishes through
    /// the HTTP API wait instead, see `Shard::wait_for_fanout`).
    pub(super) fn fanout_overloaded(&self) -> bool {
        self.writes_waiting() >= self.fanout.backlog.saturating_mul(2)
    }

    /// Whether broadcasts wait for `fan_out_slice`.
    pub fn fanout_waiting(&self) -> bool {
        !self.fanout.waiting.is_empty()
    }

    /// Queues the waiting broadcasts, oldest first, to up to a slice's worth of recipients;
    /// returns whether some still wait.
    pub fn fan_out_slice(&mut self, now: Instant) -> bool {
        let mut budget = self.fanout.budget.min(self.fanout.slice);
        while budget > 0 {
            let Some((broadcast, _)) = self.fanout.waiting.front().cloned() else {
                break;
            };
            if self.fanout.group == 0 {
                if server_to_user(&broadcast.channel).is_some() {
                    self.start_group(1);
                    self.keep_if_cached(&broadcast);
                    let delivered = self.deliver_all(&broadcast);
                    self.fanout.delivered = delivered;
                    self.finish_group(now);
                    budget = budget.saturating_sub(delivered.max(1) as usize);
                    continue;
                }
                self.take_group(&broadcast);
            }
            budget -= self.deliver_some(budget);
            if self.fanout.recipients.is_empty() {
                self.finish_group(now);
            }
        }
        self.count_waiting();
        self.fanout_waiting()
    }

    /// How long the last slice took, with its writes, when broadcasts still waited after it:
    /// the next one is sized to take `SLICE_TIME`. What a write costs varies, with the frames a
    /// group puts in it and with how fast its client reads.
    pub fn slice_took(&mut self, took: Duration) {
        let budget = self.fanout.budget as u128;
        let fitting = budget * SLICE_TIME.as_nanos() / took.as_nanos().max(1);
        // Halfway there, so that one odd slice does not swing the next.
        let next = (budget + fitting) / 2;
        self.fanout.budget = next.clamp(MIN_SLICE as u128, FANOUT_SLICE as u128) as usize;
    }

    /// Takes the oldest waiting broadcasts to the channel of `oldest`, and that channel's
    /// subscribers here.
    fn take_group(&mut self, oldest: &Broadcast) {
        let group = self.fanout.waiting.iter().take(FANOUT_GROUP);
        let group = group.take_while(|(b, _)| same_channel(b, oldest)).count();
        self.start_group(group);
        for index in 0..group {
            let broadcast = self.fanout.waiting[index].0.clone();
            self.keep_if_cached(&broadcast);
        }
        let subscribers = self.registry.subscribers(oldest.app, &oldest.channel);
        let recipients = subscribers.map(|(id, handle)| (id, handle.clone()));
        self.fanout.recipients.extend(recipients);
    }

    /// Gives the oldest `group` waiting broadcasts their turn: the recipients they have left
    /// count as their writes from now on.
    fn start_group(&mut self, group: usize) {
        let writes = self
            .fanout
            .waiting
            .iter()
            .take(group)
            .map(|(_, writes)| writes);
        self.fanout.writes -= writes.sum::<u64>();
        self.fanout.group = group;
        self.fanout.delivered = 0;
        if group == self.fanout.waiting.len() {
            // What comes next waits for the next turn.
            self.fanout.open_group = 0;
        }
    }

    /// Queues the group's broadcasts, but those that exclude it, to each of up to `budget` of
    /// its recipients; returns how many recipients it tried.
    fn deliver_some(&mut self, budget: usize) -> usize {
        let mut recipients = std::mem::take(&mut self.fanout.recipients);
        let start = recipients.len().saturating_sub(budget);
        let tried = recipients.len() - start;
        let me = (self.place.node, self.place.shard as u32);
        let group = || self.fanout.waiting.iter().take(self.fanout.group);
        let (mut reached, mut frames) = (0, 0);
        for (id, handle) in recipients.drain(start..) {
            if handle.is_closing() || !self.sessions.contains_key(&id) {
                continue;
            }
            let mut sent = 0;
            for (broadcast, _) in group().filter(|(b, _)| !is_excluded(b, me, id)) {
                if !self.send(&handle, broadcast.frame.clone()) {
                    break;
                }
                sent += 1;
            }
            reached += u64::from(sent > 0);
            frames += sent;
        }
        self.fanout.recipients = recipients;
        self.fanout.delivered += reached;
        stats::add(&self.stats.messages_out, frames);
        tried
    }

    /// Ends the turn of the group of oldest waiting broadcasts.
    fn finish_group(&mut self, now: Instant) {
        let group = std::mem::take(&mut self.fanout.group);
        let delivered = self.fanout.delivered;
        for _ in 0..group {
            if let Some((broadcast, _)) = self.fanout.waiting.pop_front() {
                self.record_latency(&broadcast, delivered, now);
            }
        }
        self.count_waiting();
    }

    /// Queues a broadcast to every subscriber here (or the user's sockets, for
    /// `#server-to-user-{id}`) at once; returns how many got it.
    fn deliver_all(&self, broadcast: &Broadcast) -> u64 {
        let me = (self.place.node, self.place.shard as u32);
        let excluded = |id: u64| is_excluded(broadcast, me, id);
        match server_to_user(&broadcast.channel) {
            Some(user_id) => {
                let sockets = self.registry.users(broadcast.app).sockets_of(user_id);
                let ids = sockets.iter().copied().filter(|id| !excluded(*id));
                self.send_to(ids, &broadcast.frame)
            }
            None => self.fan_out(
                broadcast.app,
                &broadcast.channel,
                &broadcast.frame,
                excluded,
            ),
        }
    }

    fn record_latency(&mut self, broadcast: &Broadcast, delivered: u64, now: Instant) {
        if delivered > 0 {
            let micros = now
                .saturating_duration_since(broadcast.published)
                .as_micros() as u64;
            self.latency.saturating_record(micros.max(1));
        }
    }

    /// Sets the slice, for tests that slice small channels.
    #[cfg(test)]
    pub fn set_fanout_slice(&mut self, slice: usize) {
        self.fanout.slice = slice.max(1);
    }

    /// Sets the backlog, for tests that fill it with few subscribers.
    #[cfg(test)]
    pub fn set_fanout_backlog(&mut self, backlog: u64) {
        self.fanout.backlog = backlog;
    }
}

fn same_channel(a: &Broadcast, b: &Broadcast) -> bool {
    a.app == b.app && a.channel == b.channel
}

/// Whether a broadcast excludes this socket of this shard (`me`: node and shard).
fn is_excluded(broadcast: &Broadcast, me: (u32, u32), id: u64) -> bool {
    broadcast
        .except
        .is_some_and(|except| except.local == id && (except.node, except.shard) == me)
}
