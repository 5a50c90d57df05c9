use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use indexmap::IndexMap;

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
}

impl<S> Registry<S> {
    pub fn new(apps: usize) -> Registry<S> {
        Registry {
            apps: (0..apps)
                .map(|_| AppChannels {
                    subscribed: HashMap::new(),
                    cached: HashMap::new(),
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

    /// Keeps a cache channel's latest event frame.
    pub fn set_cached(&mut self, app: usize, channel: &str, frame: Bytes, now: Instant) {
        let cached = &mut self.apps[app].cached;
        match cached.get_mut(channel) {
            Some(entry) => *entry = (frame, now),
            None => {
                cached.insert(channel.into(), (frame, now));
            }
        }
    }

    /// A cache channel's latest event frame, if one was published within the TTL.
    pub fn cached(&mut self, app: usize, channel: &str, now: Instant) -> Option<Bytes> {
        let cached = &mut self.apps[app].cached;
        let (frame, stored) = cached.get(channel)?;
        if now.duration_since(*stored) <= CACHE_TTL {
            return Some(frame.clone());
        }
        cached.remove(channel);
        None
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
            registry.cached(0, "cache-a", start),
            Some(Bytes::from_static(b"2"))
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
}
