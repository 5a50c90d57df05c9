//! Presence members and signed-in users on a shard: joining and leaving here, telling the
//! other shards and, through the Redis bridge, the other nodes (see `channels::presence` for how
//! replicas stay consistent), and telling local sockets what changed.

use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;

use super::core::{Core, Handle};
use crate::bus::ShardMessage;
use crate::channels::presence::{ChannelFull, LocalChange, RosterDelta, RosterKey, Transition};
use crate::channels::users::AlreadySignedIn;
use crate::cluster::BridgeMessage;
use crate::protocol::channel::server_to_user_channel;
use crate::protocol::member::{Member, User};
use crate::protocol::message::{self, Watch};
use crate::webhooks::{WebhookEvent, WebhookKind};
use crate::ws::frame::text_frame;

impl<H: Handle> Core<H> {
    /// A local socket joins a presence channel's members. Its user's arrival node-wide is told
    /// to the channel's other subscribers here, and to the other shards.
    pub(crate) fn join_presence(
        &mut self,
        (app, id): (usize, u64),
        channel: &str,
        member: &Member,
    ) -> Result<(), ChannelFull> {
        let joined = self.registry.presence_join(
            app,
            channel,
            id,
            (&member.user_id, &member.user_info),
            self.config.max_presence_members,
            self.me,
        )?;
        if let Some(change) = joined {
            let roster = RosterKey::Channel(channel.into());
            self.share(
                app,
                roster,
                &member.user_id,
                change,
                Some(&member.user_info),
            );
            self.member_transition(
                app,
                channel,
                &member.user_id,
                change.transition,
                Some(id),
                true,
            );
        }
        Ok(())
    }

    /// A local socket leaves a presence channel's members.
    pub(crate) fn leave_presence(&mut self, app: usize, channel: &str, socket: u64) {
        let left = self.registry.presence_leave(app, channel, socket, self.me);
        if let Some((user_id, change)) = left {
            let roster = RosterKey::Channel(channel.into());
            self.share(app, roster, &user_id, change, None);
            self.member_transition(app, channel, &user_id, change.transition, None, true);
        }
    }

    /// Signs a local socket in. Returns the frame that tells it its watchlist's current state,
    /// when it watches anyone.
    pub(crate) fn sign_in(
        &mut self,
        (app, id): (usize, u64),
        user: User,
    ) -> Result<Option<Bytes>, AlreadySignedIn> {
        let user_id = user.id.clone();
        let change = self.registry.users_mut(app).sign_in(id, user, self.me)?;
        self.share(
            app,
            RosterKey::SignedIn,
            &user_id,
            change,
            Some(&Value::Null),
        );
        if change.share {
            // The user's first socket here: other nodes' `sendToUser` must reach this shard.
            self.interest(app, &server_to_user_channel(&user_id), true);
        }
        self.online_transition(app, &user_id, change.transition);
        let (online, offline) = self.registry.users(app).watchlist_status(id);
        Ok((!online.is_empty() || !offline.is_empty()).then(|| {
            text_frame(&message::watchlist_events(&[
                (Watch::Online, online),
                (Watch::Offline, offline),
            ]))
        }))
    }

    /// Forgets a closing socket's sign-in, if it had one.
    pub(crate) fn sign_out(&mut self, app: usize, id: u64) {
        let signed_out = self.registry.users_mut(app).sign_out(id, self.me);
        if let Some((user_id, change)) = signed_out {
            self.share(app, RosterKey::SignedIn, &user_id, change, None);
            if change.share {
                self.interest(app, &server_to_user_channel(&user_id), false);
            }
            self.online_transition(app, &user_id, change.transition);
        }
    }

    /// Applies another shard's change to a roster and tells local sockets what it changed.
    pub(crate) fn apply_roster(&mut self, delta: &RosterDelta) {
        let transition = self.registry.apply(delta);
        match &delta.roster {
            RosterKey::Channel(channel) => self.member_transition(
                delta.app,
                channel,
                &delta.user_id,
                transition,
                None,
                delta.webhooks,
            ),
            RosterKey::SignedIn => self.online_transition(delta.app, &delta.user_id, transition),
        }
    }

    /// Tells the other shards (and nodes) of this shard's change to a roster, when its own source
    /// changed: `joined` is the user's info when it arrived here, `None` when it left.
    fn share(
        &mut self,
        app: usize,
        roster: RosterKey,
        user_id: &str,
        change: LocalChange,
        joined: Option<&Value>,
    ) {
        if !change.share {
            return;
        }
        let delta = Arc::new(RosterDelta {
            app,
            roster,
            user_id: user_id.into(),
            source: self.me,
            joined: joined.cloned(),
            webhooks: true,
        });
        self.tell_cluster(BridgeMessage::Roster(delta.clone()));
        // A shard whose inbox is full misses it; counted there.
        self.tell_other_shards(|| ShardMessage::Roster(delta.clone()));
    }

    /// Tells the channel's local subscribers (but `except`) that a user arrived or left; the
    /// channel's owner shard also sends the webhook, when `webhooks` says this node sends it.
    fn member_transition(
        &mut self,
        app: usize,
        channel: &str,
        user_id: &str,
        transition: Transition,
        except: Option<u64>,
        webhooks: bool,
    ) {
        let frame = match transition {
            Transition::Unchanged => return,
            Transition::Added => {
                let info = self
                    .registry
                    .presence(app, channel)
                    .and_then(|p| p.roster.info(user_id))
                    .unwrap_or(&Value::Null);
                text_frame(&message::member_added(channel, user_id, info))
            }
            Transition::Removed => text_frame(&message::member_removed(channel, user_id)),
        };
        self.fan_out(app, channel, &frame, |id| Some(id) == except);
        if !webhooks || self.owner(app, channel) != self.place.shard {
            return;
        }
        let (channel, user_id): (Box<str>, Box<str>) = (channel.into(), user_id.into());
        match transition {
            Transition::Added => self.webhook(app, WebhookKind::MemberAdded, || {
                WebhookEvent::MemberAdded { channel, user_id }
            }),
            _ => self.webhook(app, WebhookKind::MemberRemoved, || {
                WebhookEvent::MemberRemoved { channel, user_id }
            }),
        }
    }

    /// Tells this shard's watchers of a user that it came online or went offline node-wide.
    fn online_transition(&self, app: usize, user_id: &str, transition: Transition) {
        let watch = match transition {
            Transition::Unchanged => return,
            Transition::Added => Watch::Online,
            Transition::Removed => Watch::Offline,
        };
        let watchers = self.registry.users(app).watchers_of(user_id);
        if watchers.is_empty() {
            return;
        }
        let frame: Bytes = text_frame(&message::watchlist_events(&[(watch, vec![user_id])]));
        self.send_to(watchers.iter().copied(), &frame);
    }
}
