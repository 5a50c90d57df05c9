//! Node-wide subscriber counts, for the apps that need them (subscription_count events, or
//! occupied / vacated / subscription_count webhooks). Each channel's count is kept by one shard,
//! its owner (`Shard::owner`): every shard tells the owner how many subscribers it has whenever
//! that changes, and the owner alone decides "first subscriber on any shard" (channel_occupied),
//! "last on all shards" (channel_vacated) and the count subscribers are told. Apps that need none
//! of this cost no messages at all.

use super::Shard;
use crate::admin::stats;
use crate::bus::ShardMessage;
use crate::protocol::message;
use crate::protocol::ChannelKind;
use crate::webhooks::{WebhookEvent, WebhookKind};
use crate::ws::frame::text_frame;

/// A channel's subscribers on each shard, as last reported to its owner.
#[derive(Debug)]
pub(super) struct Totals {
    per_shard: Box<[u64]>,
}

impl Totals {
    fn sum(&self) -> u64 {
        self.per_shard.iter().sum()
    }
}

impl Shard {
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
        let (before, after) = {
            let mut counts = self.counts.borrow_mut();
            let channels = &mut counts[app];
            if !channels.contains_key(channel) && count == 0 {
                return;
            }
            let totals = channels.entry(channel.into()).or_insert_with(|| Totals {
                per_shard: vec![0; self.node.shards.len()].into(),
            });
            let before = totals.sum();
            totals.per_shard[shard] = count;
            let after = totals.sum();
            if after == 0 {
                channels.remove(channel);
            }
            (before, after)
        };
        if before == after {
            return;
        }
        if before == 0 {
            self.webhook(app, WebhookKind::ChannelOccupied, || {
                WebhookEvent::ChannelOccupied {
                    channel: channel.into(),
                }
            });
        } else if after == 0 {
            self.webhook(app, WebhookKind::ChannelVacated, || {
                WebhookEvent::ChannelVacated {
                    channel: channel.into(),
                }
            });
        }
        // Presence channels count users, not subscriptions.
        if !ChannelKind::of(channel).is_presence() {
            self.pending_counts.borrow_mut()[app].insert(channel.into());
        }
    }

    /// On the owner: sends the counts that changed since the last time, once each.
    pub(super) fn flush_subscription_counts(&self) {
        for app in 0..self.node.config.apps.len() {
            let pending = std::mem::take(&mut self.pending_counts.borrow_mut()[app]);
            for channel in pending {
                let count = self.counts.borrow()[app]
                    .get(&channel)
                    .map_or(0, Totals::sum);
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
