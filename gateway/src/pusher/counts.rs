//! Node-wide subscriber counts, for the apps that need them (subscription_count events, or
//! occupied / vacated / subscription_count webhooks): each shard reports its count of a channel
//! to the channel's owner, which decides with `channels::counts`. In a cluster the owner tells
//! the bridge the node's count instead, and acts on what the channel's deciding node says (see
//! `cluster::occupancy`). Apps that need none of this cost no messages at all.

use std::time::Instant;

use super::core::{Core, Handle, Publish};
use crate::bus::ShardMessage;
use crate::channels::counts::{owner, Change, Decision};
use crate::cluster::BridgeMessage;
use crate::protocol::message;
use crate::protocol::ChannelKind;
use crate::webhooks::{WebhookEvent, WebhookKind};
use crate::ws::frame::text_frame;

impl<H: Handle> Core<H> {
    /// The shard that decides node-wide things about a channel.
    pub(crate) fn owner(&self, app: usize, channel: &str) -> usize {
        owner(app, channel, self.place.shards)
    }

    /// Reports this shard's subscriber count of a channel to the channel's owner, for apps that
    /// keep node-wide counts.
    pub(crate) fn subscribers_changed(&mut self, app: usize, channel: &str) {
        if !self.config.apps[app].counts_subscriptions() {
            return;
        }
        let count = self.registry.count(app, channel);
        let (owner, me) = (self.owner(app, channel), self.place.shard);
        if owner == me {
            return self.count_subscribers(app, channel, me, count);
        }
        let message = ShardMessage::Subscribers {
            app,
            channel: channel.into(),
            shard: me,
            count,
        };
        self.tell_shard(owner, message);
    }

    /// On the owner: one shard's new subscriber count of a channel. In a cluster the node's
    /// count goes to the bridge, and the node that decides about the channel says what to send
    /// (`decided`); alone, the node decides.
    pub(crate) fn count_subscribers(
        &mut self,
        app: usize,
        channel: &str,
        shard: usize,
        count: u64,
    ) {
        let clustered = self.place.clustered;
        // Presence channels count users, not subscriptions: their count is not told.
        let remember = !clustered && !ChannelKind::of(channel).is_presence();
        let change = self.counts.record(app, channel, shard, count, remember);
        if clustered {
            if change != Change::Unchanged {
                let count = self.counts.total(app, channel);
                let channel = channel.into();
                self.tell_cluster(BridgeMessage::Count {
                    app,
                    channel,
                    count,
                });
            }
            return;
        }
        match change {
            Change::Occupied => self.occupied(app, channel, true),
            Change::Vacated => self.occupied(app, channel, false),
            Change::Counted | Change::Unchanged => {}
        }
    }

    /// On the owner: what the node deciding about the channel across the cluster decided.
    pub(crate) fn decided(&mut self, app: usize, channel: &str, decision: Decision, now: Instant) {
        if app >= self.config.apps.len() {
            return;
        }
        match decision {
            Decision::Occupied => self.occupied(app, channel, true),
            Decision::Vacated => self.occupied(app, channel, false),
            Decision::Count(count) => self.tell_count(app, channel.into(), count, now),
        }
    }

    fn occupied(&mut self, app: usize, channel: &str, occupied: bool) {
        let channel = channel.into();
        match occupied {
            true => self.webhook(app, WebhookKind::ChannelOccupied, || {
                WebhookEvent::ChannelOccupied { channel }
            }),
            false => self.webhook(app, WebhookKind::ChannelVacated, || {
                WebhookEvent::ChannelVacated { channel }
            }),
        }
    }

    /// On the owner: sends the counts that changed since the last time, once each.
    pub(crate) fn flush_subscription_counts(&mut self, now: Instant) {
        for app in 0..self.config.apps.len() {
            let changed = self.counts.take_changed(app);
            for (channel, count) in changed {
                self.tell_count(app, channel, count, now);
            }
        }
    }

    /// Tells a channel's subscribers (if the app wants it) and the app's webhooks its count.
    fn tell_count(&mut self, app: usize, channel: Box<str>, count: u64, now: Instant) {
        if self.config.apps[app].subscription_count_events && count > 0 {
            let frame = text_frame(&message::subscription_count(&channel, count));
            let publish = Publish {
                app,
                channel: &channel,
                frame,
                except: None,
                cache: false,
            };
            self.publish(publish, now);
        }
        self.webhook(app, WebhookKind::SubscriptionCount, || {
            WebhookEvent::SubscriptionCount { channel, count }
        });
    }
}
