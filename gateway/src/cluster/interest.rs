//! Which of this node's shards hold subscribers of which channels, as the shards report it. The
//! bridge subscribes to a channel's Redis channel while at least one shard holds it, and hands
//! remote broadcasts only to those shards. No IO lives here.

use std::collections::HashMap;

/// What the Redis subscription of a channel must do after a shard's report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The first shard took the channel: subscribe.
    Subscribe,
    /// The last shard let it go: unsubscribe.
    Unsubscribe,
}

/// Per app number: channel name to the shards holding subscribers of it.
#[derive(Debug)]
pub struct Interest {
    apps: Vec<HashMap<Box<str>, Vec<u16>>>,
}

impl Interest {
    pub fn new(apps: usize) -> Interest {
        Interest {
            apps: (0..apps).map(|_| HashMap::new()).collect(),
        }
    }

    /// Records whether `shard` holds subscribers of the channel now. Reports are states, not
    /// deltas, so a repeated report changes nothing.
    pub fn set(&mut self, shard: u16, app: usize, channel: &str, occupied: bool) -> Option<Change> {
        let channels = self.apps.get_mut(app)?;
        if occupied {
            match channels.get_mut(channel) {
                Some(shards) if !shards.contains(&shard) => shards.push(shard),
                Some(_) => {}
                None => {
                    channels.insert(channel.into(), vec![shard]);
                    return Some(Change::Subscribe);
                }
            }
            return None;
        }
        let shards = channels.get_mut(channel)?;
        shards.retain(|&s| s != shard);
        if shards.is_empty() {
            channels.remove(channel);
            return Some(Change::Unsubscribe);
        }
        None
    }

    /// The shards holding subscribers of a channel.
    pub fn shards(&self, app: usize, channel: &str) -> &[u16] {
        self.apps
            .get(app)
            .and_then(|channels| channels.get(channel))
            .map_or(&[], Vec::as_slice)
    }

    /// Every channel some shard holds, for subscribing again after a reconnect.
    pub fn channels(&self) -> impl Iterator<Item = (usize, &str)> {
        self.apps
            .iter()
            .enumerate()
            .flat_map(|(app, channels)| channels.keys().map(move |name| (app, &**name)))
    }

    /// Channels some shard holds.
    pub fn len(&self) -> usize {
        self.apps.iter().map(HashMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribes_on_the_first_shard_and_unsubscribes_after_the_last() {
        let mut interest = Interest::new(2);
        assert_eq!(interest.set(0, 0, "a", true), Some(Change::Subscribe));
        assert_eq!(interest.set(1, 0, "a", true), None);
        assert_eq!(interest.set(1, 0, "a", true), None, "repeated report");
        assert_eq!(interest.shards(0, "a"), &[0, 1]);
        assert_eq!(interest.set(1, 1, "a", true), Some(Change::Subscribe));
        assert_eq!(interest.len(), 2, "apps are apart");
        assert_eq!(interest.set(0, 0, "a", false), None);
        assert_eq!(interest.set(0, 0, "a", false), None, "repeated report");
        assert_eq!(interest.shards(0, "a"), &[1]);
        assert_eq!(interest.set(1, 0, "a", false), Some(Change::Unsubscribe));
        assert_eq!(interest.shards(0, "a"), &[] as &[u16]);
        assert_eq!(interest.set(1, 0, "a", false), None, "already gone");
        let held: Vec<_> = interest.channels().collect();
        assert_eq!(held, vec![(1, "a")]);
    }

    #[test]
    fn unknown_apps_and_channels_change_nothing() {
        let mut interest = Interest::new(1);
        assert_eq!(interest.set(0, 5, "a", true), None);
        assert_eq!(interest.set(0, 0, "never", false), None);
        assert!(interest.is_empty());
        assert_eq!(interest.shards(5, "a"), &[] as &[u16]);
    }
}
