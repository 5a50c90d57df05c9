use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::Value;

use super::presence::Transition;
use super::presence::{ChannelFull, LocalChange, PresenceChannel, RosterDelta, RosterKey, Source};
use super::users::Users;

/// How long a cache channel keeps its last event, as Pusher does.
pub const CACHE_TTL: Duration = Duration::from_secs(30 * 60);

/// One shard's view of its apps' channels. `S` is the handle used to reach a subscriber; the
/// key beside it is the subscriber's connection number, so removal is O(1) and iteration is
/// over a dense array.
#[derive(Debug)]
pub struct Registry<S> {
    /// Indexed by app number.
    apps: Vec<AppChannels<S>>,
}

#[derive(Debug)]
struct AppChannels<S> {
    subscribed: HashMap<Box<str>, IndexMap<u64, S>>,
    /// Last event frame of each cache channel, kept whether or not anyone here is subscribed,
    /// so that the first subscriber on this shard gets it too.
    cached: HashMap<Box<str>, (Bytes, Instant)>,
    /// Presence channels with members anywhere on the node.
    presence: HashMap<Box<str>, PresenceChannel>,
    users: Users,
}

impl<S> Registry<S> {
    pub fn new(apps: usize) -> Registry<S> {
        Registry {
            apps: (0..apps)
                .map(|_| AppChannels {
                    subscribed: HashMap::new(),
                    cached: HashMap::new(),
                    presence: HashMap::new(),
                    users: Users::default(),
                })
                .collect(),
        }
    }

    /// Adds a subscriber; false if it was already there (a repeated subscribe).
    pub fn subscribe(&mut self, app: usize, channel: &str, id: u64, handle: S) -> bool {
        let channels = &mut self.apps[app].subscribed;
        let subscribers = match channels.get_mut(channel) {
            Some(subscribers) => subscribers,
            None => channels.entry(channel.into()).or_default(),
        };
        if subscribers.contains_key(&id) {
            return false;
        }
        subscribers.insert(id, handle);
        true
    }

    /// Removes a subscriber; false if it was not subscribed. Empty channels are dropped.
    pub fn unsubscribe(&mut self, app: usize, channel: &str, id: u64) -> bool {
        let channels = &mut self.apps[app].subscribed;
        let Some(subscribers) = channels.get_mut(channel) else {
            return false;
        };
        let removed = subscribers.swap_remove(&id).is_some();
        if subscribers.is_empty() {
            channels.remove(channel);
        }
        removed
    }

    /// The channel's subscribers on this shard.
    pub fn subscribers(&self, app: usize, channel: &str) -> impl Iterator<Item = (u64, &S)> {
        self.apps[app]
            .subscribed
            .get(channel)
            .into_iter()
            .flat_map(|subscribers| subscribers.iter().map(|(&id, s)| (id, s)))
    }

    /// Subscribers of one channel on this shard.
    pub fn count(&self, app: usize, channel: &str) -> u64 {
        self.apps[app]
            .subscribed
            .get(channel)
            .map_or(0, |s| s.len() as u64)
    }

    /// Every occupied channel of the app with its subscriber count on this shard.
    pub fn counts(&self, app: usize) -> impl Iterator<Item = (&str, u64)> {
        self.apps[app]
            .subscribed
            .iter()
            .map(|(name, subscribers)| (&**name, subscribers.len() as u64))
    }

    /// Keeps a cache channel's latest event frame, published `now`.
    pub fn set_cached(&mut self, app: usize, channel: &str, frame: Bytes, now: Instant) {
        let cached = &mut self.apps[app].cached;
        match cached.get_mut(channel) {
            Some(entry) => *entry = (frame, now),
            None => {
                cached.insert(channel.into(), (frame, now));
            }
        }
    }

    /// Keeps a cache channel's latest event frame, learnt from elsewhere, until `expires` (unless
    /// one published here since is newer).
    pub fn set_cached_until(&mut self, app: usize, channel: &str, frame: Bytes, expires: Instant) {
        let Some(stored) = expires.checked_sub(CACHE_TTL) else {
            return;
        };
        let newer_here = self.apps[app]
            .cached
            .get(channel)
            .is_some_and(|(_, at)| *at >= stored);
        if !newer_here {
            self.set_cached(app, channel, frame, stored);
        }
    }

    /// A cache channel's latest event frame and how long it stays, if one was published within
    /// the TTL.
    pub fn cached(&mut self, app: usize, channel: &str, now: Instant) -> Option<(Bytes, Duration)> {
        let cached = &mut self.apps[app].cached;
        let (frame, stored) = cached.get(channel)?;
        let age = now.duration_since(*stored);
        if age <= CACHE_TTL {
            return Some((frame.clone(), CACHE_TTL - age));
        }
        cached.remove(channel);
        None
    }

    /// A local socket joins a presence channel as `user_id`; see `PresenceChannel::join`.
    pub fn presence_join(
        &mut self,
        app: usize,
        channel: &str,
        socket: u64,
        (user_id, info): (&str, &Value),
        max_members: usize,
        me: Source,
    ) -> Result<Option<LocalChange>, ChannelFull> {
        let channels = &mut self.apps[app].presence;
        let presence = match channels.get_mut(channel) {
            Some(presence) => presence,
            None => channels.entry(channel.into()).or_default(),
        };
        let joined = presence.join(socket, user_id, info, max_members, me);
        if presence.is_unused() {
            channels.remove(channel);
        }
        joined
    }

    /// A local socket leaves a presence channel; returns its user and what leaving did.
    pub fn presence_leave(
        &mut self,
        app: usize,
        channel: &str,
        socket: u64,
        me: Source,
    ) -> Option<(Box<str>, LocalChange)> {
        let channels = &mut self.apps[app].presence;
        let presence = channels.get_mut(channel)?;
        let left = presence.leave(socket, me);
        if presence.is_unused() {
            channels.remove(channel);
        }
        left
    }

    /// A presence channel's node-wide members and local sockets, if it has any.
    pub fn presence(&self, app: usize, channel: &str) -> Option<&PresenceChannel> {
        self.apps[app].presence.get(channel)
    }

    /// Applies another source's change to a roster.
    pub fn apply(&mut self, delta: &RosterDelta) -> Transition {
        let app = &mut self.apps[delta.app];
        match &delta.roster {
            RosterKey::SignedIn => {
                app.users
                    .apply(&delta.user_id, delta.source, delta.joined.is_some())
            }
            RosterKey::Channel(channel) => {
                let channels = &mut app.presence;
                let presence = match channels.get_mut(&**channel) {
                    Some(presence) => presence,
                    None => channels.entry(channel.clone()).or_default(),
                };
                let transition =
                    presence
                        .roster
                        .apply(&delta.user_id, delta.source, delta.joined.as_ref());
                if presence.is_unused() {
                    channels.remove(&**channel);
                }
                transition
            }
        }
    }

    pub fn users(&self, app: usize) -> &Users {
        &self.apps[app].users
    }

    pub fn users_mut(&mut self, app: usize) -> &mut Users {
        &mut self.apps[app].users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_unsubscribe_and_counts() {
        let mut registry = Registry::new(2);
        assert!(registry.subscribe(0, "a", 1, "one"));
        assert!(!registry.subscribe(0, "a", 1, "one"));
        assert!(registry.subscribe(0, "a", 2, "two"));
        assert!(registry.subscribe(1, "a", 3, "other app"));
        assert_eq!(registry.count(0, "a"), 2);
        let ids: Vec<u64> = registry.subscribers(0, "a").map(|(id, _)| id).collect();
        assert_eq!(ids, vec![1, 2]);
        assert!(registry.unsubscribe(0, "a", 1));
        assert!(!registry.unsubscribe(0, "a", 1));
        assert!(!registry.unsubscribe(0, "missing", 1));
        assert!(registry.unsubscribe(0, "a", 2));
        assert_eq!(registry.counts(0).count(), 0, "empty channels are dropped");
        assert_eq!(registry.counts(1).collect::<Vec<_>>(), vec![("a", 1)]);
    }

    #[test]
    fn cache_keeps_the_latest_frame_within_its_ttl() {
        let mut registry: Registry<()> = Registry::new(1);
        let start = Instant::now();
        assert_eq!(registry.cached(0, "cache-a", start), None);
        registry.set_cached(0, "cache-a", Bytes::from_static(b"1"), start);
        registry.set_cached(0, "cache-a", Bytes::from_static(b"2"), start);
        assert_eq!(
            registry.cached(0, "cache-a", start + Duration::from_secs(60)),
            Some((
                Bytes::from_static(b"2"),
                CACHE_TTL - Duration::from_secs(60)
            ))
        );
        assert_eq!(
            registry.cached(0, "cache-a", start + CACHE_TTL + Duration::from_secs(1)),
            None
        );
        assert_eq!(
            registry.cached(0, "cache-a", start),
            None,
            "expired entries are dropped"
        );
    }

    #[test]
    fn presence_channels_live_while_someone_is_present() {
        let mut registry: Registry<()> = Registry::new(1);
        let me = Source { node: 1, shard: 0 };
        let other = Source { node: 1, shard: 1 };
        let member = ("u1", &Value::Null);
        let joined = registry.presence_join(0, "presence-a", 7, member, 100, me);
        assert_eq!(
            joined.map(|c| c.map(|c| c.transition)),
            Ok(Some(Transition::Added))
        );
        assert_eq!(
            registry
                .presence(0, "presence-a")
                .and_then(|p| p.user_of(7)),
            Some("u1")
        );
        let delta = RosterDelta {
            app: 0,
            roster: RosterKey::Channel("presence-a".into()),
            user_id: "u2".into(),
            source: other,
            joined: Some(Value::Null),
            webhooks: true,
        };
        assert_eq!(registry.apply(&delta), Transition::Added);
        assert_eq!(
            registry.presence(0, "presence-a").map(|p| p.roster.len()),
            Some(2)
        );
        let (user, change) = registry.presence_leave(0, "presence-a", 7, me).unwrap();
        assert_eq!((&*user, change.transition), ("u1", Transition::Removed));
        let left = RosterDelta {
            joined: None,
            ..delta
        };
        assert_eq!(registry.apply(&left), Transition::Removed);
        assert!(
            registry.presence(0, "presence-a").is_none(),
            "dropped when empty"
        );
        let refused = registry.presence_join(0, "presence-b", 8, member, 0, me);
        assert_eq!(refused, Err(ChannelFull(0)));
        assert!(
            registry.presence(0, "presence-b").is_none(),
            "no empty channel left behind"
        );
    }
}
