//! Node-wide subscriber counts, for the apps that need them (subscription_count events, or
//! occupied / vacated / subscription_count webhooks): each shard reports its count of a channel
//! to the channel's owner, which decides with `channels::counts`. Apps that need none of this
//! cost no messages at all.

use std::time::Instant;

use super::core::{Core, Handle, Publish};
use crate::bus::ShardMessage;
use crate::channels::counts::{owner, Change};
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

    /// On the owner: one shard's new subscriber count of a channel.
    pub(crate) fn count_subscribers(
        &mut self,
        app: usize,
        channel: &str,
        shard: usize,
        count: u64,
    ) {
        // Presence channels count users, not subscriptions: their count is not told.
        let remember = !ChannelKind::of(channel).is_presence();
        let change = self.counts.record(app, channel, shard, count, remember);
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
    pub(crate) fn flush_subscription_counts(&mut self, now: Instant) {
        for app in 0..self.config.apps.len() {
            let changed = self.counts.take_changed(app);
            for (channel, count) in changed {
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
    }
}
