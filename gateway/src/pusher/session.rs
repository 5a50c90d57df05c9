//! What a session's client says, carried out on the core: subscriptions, sign-ins, client
//! events and pings. `requests` decides whether a request may go ahead; this applies it.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::core::{Core, Handle, Publish, Transmit};
use super::requests::{self, Answer, Refusal, Subscription};
use crate::admin::stats::{self, Rejection};
use crate::protocol::member::{self, Member};
use crate::protocol::message::{self, ClientMessage};
use crate::protocol::{codes, ChannelKind};
use crate::webhooks::{WebhookEvent, WebhookKind};
use crate::ws::frame::text_frame;

/// Seconds a shard waits for the cluster's answer about a cache channel before it answers with
/// a miss: the bridge answers within its request timeout, or at once while Redis is away.
const CACHE_ASK_TIMEOUT: u32 = 5;

impl<H: Handle> Core<H> {
    /// A text message from a session's client.
    pub fn client_message(&mut self, id: u64, text: &str, now: Instant) {
        let Some(app) = self.app_of(id) else {
            return;
        };
        stats::add(&self.stats.messages_in, 1);
        match ClientMessage::parse(text) {
            Err(error) => {
                self.reject(Rejection::BadMessage);
                self.send_error(id, None, &error.to_string());
            }
            Ok(ClientMessage::Ping) => self.send_to_session(id, self.pong()),
            Ok(ClientMessage::Pong) => {}
            Ok(ClientMessage::Subscribe {
                channel,
                auth,
                channel_data,
            }) => self.subscribe(
                (app, id),
                &channel,
                (auth.as_deref(), channel_data.as_deref()),
                now,
            ),
            Ok(ClientMessage::Unsubscribe { channel }) => self.unsubscribe(id, &channel),
            Ok(ClientMessage::Signin { auth, user_data }) => {
                self.signin((app, id), &auth, &user_data)
            }
            Ok(ClientMessage::ClientEvent {
                event,
                channel,
                data,
            }) => self.client_event((app, id), (&event, &channel), &data, now),
            Ok(ClientMessage::Unsupported { event }) => {
                self.reject(Rejection::UnsupportedEvent);
                self.send_error(id, None, &format!("unsupported event {event}"));
            }
        }
    }

    fn send_error(&self, id: u64, code: Option<u16>, text: &str) {
        self.send_to_session(id, text_frame(&message::error(code, text)));
    }

    /// Tells the client why its request was refused, and counts it.
    fn refuse(&self, id: u64, channel: &str, refusal: &Refusal) {
        self.reject(refusal.rejection);
        match refusal.answer {
            Answer::SubscriptionError { kind, status } => {
                let error = message::subscription_error(channel, kind, &refusal.reason, status);
                self.send_to_session(id, text_frame(&error));
                self.send_error(id, Some(codes::UNAUTHORIZED), &refusal.reason);
            }
            Answer::Error(code) => self.send_error(id, code, &refusal.reason),
            Answer::ChannelError(code) => {
                let error = message::channel_error(channel, code, &refusal.reason);
                self.send_to_session(id, text_frame(&error));
            }
        }
    }

    /// The user a session signed in as, as a presence member.
    fn signed_in_member(&self, (app, id): (usize, u64)) -> Option<Member> {
        let user = self.registry.users(app).signed_in(id)?;
        Some(Member {
            user_id: user.user_id.to_string(),
            user_info: user.user_info.clone(),
        })
    }

    fn subscribe(
        &mut self,
        (app, id): (usize, u64),
        name: &str,
        credentials: (Option<&str>, Option<&str>),
        now: Instant,
    ) {
        if let Err(refusal) = self.within_caps(id, name) {
            return self.refuse(id, name, &refusal);
        }
        let socket_id = self.socket_id(id).to_string();
        let signed_in = self.signed_in_member((app, id));
        let settings = &self.config.apps[app];
        let subscription =
            requests::subscription(settings, &socket_id, name, credentials, signed_in);
        let presence = match subscription {
            Err(refusal) => return self.refuse(id, name, &refusal),
            Ok(Subscription::OwnUserChannel) => {
                let succeeded = message::subscription_succeeded(name);
                return self.send_to_session(id, text_frame(&succeeded));
            }
            Ok(Subscription::Channel) => false,
            Ok(Subscription::Presence(member)) => {
                if let Err(full) = self.join_presence((app, id), name, &member) {
                    return self.refuse(id, name, &requests::presence_full(name, &full));
                }
                true
            }
        };
        self.add_subscriber(id, name);
        let succeeded = if presence {
            let members = self
                .registry
                .presence(app, name)
                .map(|p| p.roster.members());
            message::presence_subscription_succeeded(name, members.into_iter().flatten())
        } else {
            message::subscription_succeeded(name)
        };
        self.send_to_session(id, text_frame(&succeeded));
        if ChannelKind::of(name).is_cache() {
            self.replay_cached((app, id), name, now);
        }
    }

    /// Sends a cache channel's last event to a new subscriber, or tells it there is none. A
    /// clustered node that keeps none asks the cluster first: the event may have been published
    /// on another node while no one here was subscribed.
    fn replay_cached(&mut self, (app, id): (usize, u64), name: &str, now: Instant) {
        if let Some((frame, _)) = self.registry.cached(app, name, now) {
            return self.send_to_session(id, frame);
        }
        if !self.place.clustered {
            return self.cache_miss((app, id), name);
        }
        let second = self.second(now);
        let (_, waiting) = (self.awaiting_cache)
            .entry((app, name.into()))
            .or_insert((second, Vec::new()));
        waiting.push(id);
        if waiting.len() == 1 {
            let channel = name.into();
            self.transmits
                .push_back(Transmit::AskCache { app, channel });
        }
    }

    /// The cluster's answer about a cache channel: its last event and the time it has left, if
    /// any. The subscribers that asked and are still subscribed get it, or a cache miss.
    pub(super) fn cache_answer(
        &mut self,
        app: usize,
        name: &str,
        cached: Option<(Bytes, Duration)>,
        now: Instant,
    ) {
        let Some((_, waiting)) = self.awaiting_cache.remove(&(app, name.into())) else {
            return;
        };
        if let Some((frame, left)) = &cached {
            self.registry
                .set_cached_until(app, name, frame.clone(), now + *left);
        }
        let still: Vec<u64> = (waiting.into_iter())
            .filter(|&id| self.is_subscribed(id, name))
            .collect();
        for id in still {
            match &cached {
                Some((frame, _)) => self.send_to_session(id, frame.clone()),
                None => self.cache_miss((app, id), name),
            }
        }
    }

    /// Answers, as misses, the asks the cluster has not answered within `CACHE_ASK_TIMEOUT`
    /// seconds (the answer was lost: this shard's inbox was full), so that the channel is asked
    /// about again by its next subscriber.
    pub(super) fn expire_cache_asks(&mut self, now: Instant) {
        let second = self.second(now);
        let expired: Vec<(usize, Box<str>)> = (self.awaiting_cache.iter())
            .filter(|(_, (asked, _))| second.saturating_sub(*asked) > CACHE_ASK_TIMEOUT)
            .map(|(key, _)| key.clone())
            .collect();
        for (app, name) in expired {
            self.cache_answer(app, &name, None, now);
        }
    }

    fn cache_miss(&mut self, (app, id): (usize, u64), name: &str) {
        self.send_to_session(id, text_frame(&message::cache_miss(name)));
        self.webhook(app, WebhookKind::CacheMiss, || WebhookEvent::CacheMiss {
            channel: name.into(),
        });
    }

    fn signin(&mut self, (app, id): (usize, u64), auth: &str, user_data: &str) {
        let socket_id = self.socket_id(id).to_string();
        let user = match requests::signin(&self.config.apps[app], &socket_id, auth, user_data) {
            Ok(user) => user,
            Err(refusal) => return self.refuse(id, "", &refusal),
        };
        let truncated = user.watchlist_truncated;
        let watchlist = match self.sign_in((app, id), user) {
            Ok(watchlist) => watchlist,
            Err(error) => {
                self.reject(Rejection::AlreadySignedIn);
                return self.send_error(id, Some(codes::UNAUTHORIZED), &error.to_string());
            }
        };
        self.send_to_session(id, text_frame(&message::signin_success(user_data)));
        if truncated {
            self.reject(Rejection::WatchlistTooLong);
            let reason = format!(
                "the watchlist holds more than {} user ids; only the first {} are watched",
                member::MAX_WATCHLIST,
                member::MAX_WATCHLIST
            );
            self.send_error(id, Some(codes::WATCHLIST_TOO_LONG), &reason);
        }
        if let Some(frame) = watchlist {
            self.send_to_session(id, frame);
        }
    }

    fn client_event(
        &mut self,
        (app, id): (usize, u64),
        (event, name): (&str, &str),
        data: &serde_json::Value,
        now: Instant,
    ) {
        let data_text = message::event_data_text(data);
        let settings = &self.config.apps[app];
        let request = requests::ClientEvent {
            event,
            channel: name,
            data_len: data_text.len(),
        };
        let max_data = self.config.max_event_data_bytes;
        let subscribed = self.is_subscribed(id, name);
        if let Err(refusal) = requests::client_event(settings, request, max_data, subscribed) {
            return self.refuse(id, name, &refusal);
        }
        let rate = settings
            .client_event_rate
            .unwrap_or(self.config.client_event_rate);
        if !self.allow_client_event(id, self.second(now), rate) {
            self.reject(Rejection::ClientEventRate);
            let reason = format!("more than {rate} client events per second");
            let error = message::channel_error(name, codes::CLIENT_EVENT_REJECTED, &reason);
            return self.send_to_session(id, text_frame(&error));
        }
        // Each is a broadcast to every subscriber: a shard that cannot keep up refuses them,
        // rather than hold them without bound.
        if self.fanout_overloaded() {
            self.reject(Rejection::FanoutBacklog);
            let reason = "the server is busy delivering; try again";
            let error = message::channel_error(name, codes::CLIENT_EVENT_REJECTED, reason);
            return self.send_to_session(id, text_frame(&error));
        }
        // On presence channels the others learn who sent it.
        let user_id: Option<Box<str>> = ChannelKind::of(name)
            .is_presence()
            .then(|| {
                let presence = self.registry.presence(app, name);
                presence.and_then(|p| p.user_of(id)).map(Into::into)
            })
            .flatten();
        let frame = message::channel_event(event, name, data, user_id.as_deref());
        let socket_id = self.socket_id(id);
        let publish = Publish {
            app,
            channel: name,
            frame: text_frame(&frame),
            except: Some(socket_id),
            cache: false,
        };
        self.publish(publish, now);
        self.webhook(app, WebhookKind::ClientEvent, || {
            WebhookEvent::ClientEvent {
                channel: name.into(),
                event: event.into(),
                data: data_text.into_owned(),
                socket_id: socket_id.to_string(),
                user_id,
            }
        });
    }
}
