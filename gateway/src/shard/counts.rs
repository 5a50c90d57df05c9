//! Node-wide subscriber counts, for the apps that need them (subscription_count events, or
//! occupied / vacated / subscription_count webhooks): each shard reports its count of a channel
//! to the channel's owner, which decides with `channels::counts`. Apps that need none of this
//! cost no messages at all.

use super::Shard;
use crate::admin::stats;
use crate::bus::ShardMessage;
use crate::channels::counts::{owner, Change};
use crate::protocol::message;
use crate::protocol::ChannelKind;
use crate::webhooks::{WebhookEvent, WebhookKind};
use crate::ws::frame::text_frame;

impl Shard {
    /// The shard that decides node-wide things about a channel.
    pub(super) fn owner(&self, app: usize, channel: &str) -> usize {
        owner(app, channel, self.node.shards.len())
    }

    /// Reports this shard's subscriber count of a channel to the channel's owner, for apps that
    /// keep node-wide counts.
    pub(super) fn subscribers_changed(&self, app: usize, channel: &str) {
        if !self.node.config.apps[app].counts_subscriptions() {
            return;
        }
        let count = self.registry.borrow().count(app, channel);
        let owner = self.owner(app, channel);
        if owner == self.index {
            return self.count_subscribers(app, channel, self.index, count);
        }
        let link = &self.node.shards[owner];
        let message = ShardMessage::Subscribers {
            app,
            channel: channel.into(),
            shard: self.index,
            count,
        };
        if link.inbox.send(message).is_err() {
            stats::add(&link.stats.inbox_drops, 1);
        }
    }

    /// On the owner: one shard's new subscriber count of a channel.
    pub(super) fn count_subscribers(&self, app: usize, channel: &str, shard: usize, count: u64) {
        // Presence channels count users, not subscriptions: their count is not told.
        let remember = !ChannelKind::of(channel).is_presence();
        let change = self
            .counts
            .borrow_mut()
            .record(app, channel, shard, count, remember);
        let channel = || channel.into();
        match change {
            Change::Occupied => self.webhook(app, WebhookKind::ChannelOccupied, || {
                WebhookEvent::ChannelOccupied { channel: channel() }
            }),
            Change::Vacated => self.webhook(app, WebhookKind::ChannelVacated, || {
                WebhookEvent::ChannelVacated { channel: channel() }
            }),
            Change::Counted | Change::Unchanged => {}
        }
    }

    /// On the owner: sends the counts that changed since the last time, once each.
    pub(super) fn flush_subscription_counts(&self) {
        for app in 0..self.node.config.apps.len() {
            let changed = self.counts.borrow_mut().take_changed(app);
            for (channel, count) in changed {
                if self.node.config.apps[app].subscription_count_events && count > 0 {
                    let frame = text_frame(&message::subscription_count(&channel, count));
                    self.publish(app, &channel, frame, None, false);
                }
                self.webhook(app, WebhookKind::SubscriptionCount, || {
                    WebhookEvent::SubscriptionCount { channel, count }
                });
            }
        }
    }
}
