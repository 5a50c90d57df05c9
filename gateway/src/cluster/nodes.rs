//! The other nodes of the cluster as this node knows them: who sent a heartbeat, when, and the
//! sessions of each app with a quota it reported. A node silent for longer than the timeout is
//! dropped, and with it its share of every answer and of every app's sessions. No IO lives here.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use crate::config::App;

/// What a heartbeat told us.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heard {
    /// Our own heartbeat, echoed by Redis: both our connections work.
    Own,
    /// A node we did not know.
    Joined,
    /// A node we knew.
    Alive,
    /// Another process announces our node id. Socket ids and the origin check rely on ids
    /// being unique; with 2^32 ids this is improbable, and it is reported when it happens.
    Collision,
}

/// What this node knows of another.
#[derive(Debug)]
struct Peer {
    last_seen: Instant,
    /// When it joined (as its heartbeats say, or when first heard): a node that has just joined
    /// may not have the others' snapshots yet, and decides nothing until it has settled.
    since: Instant,
    /// Its sessions by app index, as its last heartbeat reported them (see `reported`).
    connections: Box<[u64]>,
}

/// Other nodes, by id.
#[derive(Debug)]
pub struct NodeTable {
    own: u32,
    own_nonce: u64,
    timeout: Duration,
    peers: HashMap<u32, Peer>,
}

impl NodeTable {
    pub fn new(own: u32, own_nonce: u64, timeout: Duration) -> NodeTable {
        NodeTable {
            own,
            own_nonce,
            timeout,
            peers: HashMap::new(),
        }
    }

    /// Records a heartbeat heard at `now`, with the sessions it reports by app index; they
    /// replace what the node reported before.
    pub fn heartbeat(
        &mut self,
        node: u32,
        nonce: u64,
        connections: Box<[u64]>,
        now: Instant,
    ) -> Heard {
        if node == self.own {
            return if nonce == self.own_nonce {
                Heard::Own
            } else {
                Heard::Collision
            };
        }
        match self.peers.get_mut(&node) {
            Some(peer) => {
                peer.last_seen = now;
                peer.connections = connections;
                Heard::Alive
            }
            None => {
                let peer = Peer {
                    last_seen: now,
                    since: now,
                    connections,
                };
                self.peers.insert(node, peer);
                Heard::Joined
            }
        }
    }

    /// A node's heartbeat said how long it has been connected to Redis: it joined then, as
    /// every node reckons it (not when this one first heard it).
    pub fn online_for(&mut self, node: u32, online: Duration, now: Instant) {
        if let Some(peer) = self.peers.get_mut(&node) {
            peer.since = now.checked_sub(online).unwrap_or(now);
        }
    }

    /// The nodes that may decide about channels, this one included (it joined at `own_since`):
    /// those heard from within `recent` that joined at least `settle` ago. When none has settled
    /// (the whole cluster has just started), every node heard from within `recent`. Sorted.
    pub fn deciders(
        &self,
        now: Instant,
        recent: Duration,
        settle: Duration,
        own_since: Instant,
    ) -> Vec<u32> {
        let settled = |since: Instant| now.saturating_duration_since(since) >= settle;
        let mut live: Vec<(u32, Instant)> = self
            .peers
            .iter()
            .filter(|(_, peer)| now.saturating_duration_since(peer.last_seen) <= recent)
            .map(|(&node, peer)| (node, peer.since))
            .collect();
        live.push((self.own, own_since));
        let any_settled = live.iter().any(|&(_, since)| settled(since));
        let mut nodes: Vec<u32> = live
            .into_iter()
            .filter(|&(_, since)| !any_settled || settled(since))
            .map(|(node, _)| node)
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// The sessions the other nodes reported, summed by app index, for `apps` apps: what counts
    /// against an app's quota beside this node's own.
    pub fn connections(&self, apps: usize) -> Vec<u64> {
        let mut totals = vec![0u64; apps];
        for peer in self.peers.values() {
            for (total, count) in totals.iter_mut().zip(peer.connections.iter()) {
                *total = total.saturating_add(*count);
            }
        }
        totals
    }

    /// Drops the nodes not heard from within the timeout; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let timeout = self.timeout;
        let mut gone = Vec::new();
        self.peers.retain(|&node, peer| {
            let alive = now.saturating_duration_since(peer.last_seen) <= timeout;
            if !alive {
                gone.push(node);
            }
            alive
        });
        gone.sort_unstable();
        gone
    }

    /// The nodes heard from within `within`: those worth waiting for when asking a question.
    /// A node that has just died stays in the table until the timeout, but is not waited for.
    pub fn recent(&self, now: Instant, within: Duration) -> Vec<u32> {
        let mut nodes: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, peer)| now.saturating_duration_since(peer.last_seen) <= within)
            .map(|(&node, _)| node)
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// Whether a node is known: heard from within the timeout.
    pub fn knows(&self, node: u32) -> bool {
        self.peers.contains_key(&node)
    }

    /// Other nodes known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

/// This node's sessions of each app with a quota, by app id, for its heartbeat; empty when no
/// app has a quota, so that the heartbeat leaves the field out.
pub fn own_connections(apps: &[App], sessions: impl Fn(usize) -> i64) -> BTreeMap<String, u64> {
    apps.iter()
        .enumerate()
        .filter(|(_, app)| app.max_connections > 0)
        .map(|(index, app)| (app.id.clone(), sessions(index).max(0) as u64))
        .collect()
}

/// What a heartbeat reports, by this node's app index. Only the apps with a quota here count:
/// apps without one are not limited, and ids this node does not know are ignored.
pub fn reported(apps: &[App], connections: &BTreeMap<String, u64>) -> Box<[u64]> {
    if connections.is_empty() {
        return Box::default();
    }
    let count = |app: &App| match app.max_connections {
        0 => 0,
        _ => connections.get(&app.id).copied().unwrap_or(0),
    };
    apps.iter().map(count).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn none() -> Box<[u64]> {
        Box::default()
    }

    #[test]
    fn nodes_join_stay_alive_and_expire_after_the_timeout() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut table = NodeTable::new(1, 11, 5 * second);
        assert_eq!(table.heartbeat(2, 22, none(), start), Heard::Joined);
        assert_eq!(table.heartbeat(3, 33, none(), start), Heard::Joined);
        assert_eq!(
            table.heartbeat(2, 22, none(), start + 4 * second),
            Heard::Alive
        );
        assert_eq!(table.len(), 2);
        assert_eq!(table.expire(start + 5 * second), Vec::<u32>::new());
        assert_eq!(table.expire(start + 6 * second), vec![3]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.expire(start + 10 * second), vec![2]);
        assert!(table.is_empty());
        assert_eq!(
            table.heartbeat(3, 34, none(), start + 10 * second),
            Heard::Joined,
            "a node that comes back joins again"
        );
    }

    #[test]
    fn nodes_decide_once_they_have_settled() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let (recent, settle) = (2 * second, 2 * second);
        let mut table = NodeTable::new(1, 11, 5 * second);
        table.heartbeat(2, 22, none(), start);
        assert_eq!(
            table.deciders(start, recent, settle, start),
            vec![1, 2],
            "a cluster that has just started: everyone"
        );
        let later = start + 3 * second;
        table.heartbeat(2, 22, none(), later);
        table.heartbeat(3, 33, none(), later);
        assert_eq!(table.deciders(later, recent, settle, start), vec![1, 2]);
        let settled = later + 2 * second;
        table.heartbeat(2, 22, none(), settled);
        table.heartbeat(3, 33, none(), settled);
        assert_eq!(
            table.deciders(settled, recent, settle, start),
            vec![1, 2, 3]
        );
        table.online_for(2, second, settled);
        assert_eq!(
            table.deciders(settled, recent, settle, start),
            vec![1, 3],
            "a node that reconnected a second ago settles again"
        );
        table.online_for(3, Duration::from_secs(100), settled);
        table.online_for(9, second, settled);
        assert_eq!(table.deciders(settled, recent, settle, start), vec![1, 3]);
        assert_eq!(
            table.deciders(settled, recent, settle, settled),
            vec![3],
            "so does this one"
        );
        assert_eq!(
            table.deciders(settled + 3 * second, recent, settle, settled),
            vec![1],
            "quiet nodes do not decide"
        );
    }

    #[test]
    fn only_recently_heard_nodes_are_waited_for() {
        let start = Instant::now();
        let mut table = NodeTable::new(1, 11, Duration::from_secs(5));
        table.heartbeat(2, 22, none(), start);
        table.heartbeat(3, 33, none(), start + Duration::from_secs(3));
        let within = Duration::from_millis(2500);
        assert_eq!(
            table.recent(start + Duration::from_secs(3), within),
            vec![3]
        );
        assert_eq!(table.recent(start, within), vec![2, 3]);
    }

    #[test]
    fn peers_sessions_are_summed_until_they_expire() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut table = NodeTable::new(1, 11, 5 * second);
        table.heartbeat(2, 22, Box::new([3, 0]), start);
        table.heartbeat(3, 33, Box::new([1, 2]), start);
        assert_eq!(table.connections(2), vec![4, 2]);
        table.heartbeat(2, 22, Box::new([1, 0]), start + 3 * second);
        assert_eq!(table.connections(2), vec![2, 2], "the last report stands");
        table.heartbeat(1, 12, Box::new([50, 50]), start + 3 * second);
        assert_eq!(table.connections(2), vec![2, 2], "not a collision's");
        table.heartbeat(4, 44, none(), start + 3 * second);
        assert_eq!(table.connections(2), vec![2, 2], "a node reporting none");
        assert_eq!(table.expire(start + 6 * second), vec![3]);
        assert_eq!(table.connections(2), vec![1, 0], "an expired node's go");
        table.expire(start + 9 * second);
        assert_eq!(table.connections(2), vec![0, 0]);
    }

    fn apps() -> Vec<App> {
        let mut apps = vec![
            App::new("1", "k1", "s1"),
            App::new("2", "k2", "s2"),
            App::new("3", "k3", "s3"),
        ];
        apps[1].max_connections = 4;
        apps[2].max_connections = 10;
        apps
    }

    #[test]
    fn heartbeats_carry_the_sessions_of_apps_with_a_quota_only() {
        let apps = apps();
        let own = own_connections(&apps, |app| [7, 3, -1][app]);
        let expected = BTreeMap::from([("2".to_owned(), 3), ("3".to_owned(), 0)]);
        assert_eq!(own, expected, "a count read mid-change is never negative");
        let unlimited = [App::new("1", "k1", "s1")];
        assert!(own_connections(&unlimited, |_| 7).is_empty());

        let heard = BTreeMap::from([("1".into(), 9), ("3".into(), 5), ("99".into(), 1)]);
        assert_eq!(*reported(&apps, &heard), [0, 0, 5]);
        assert!(reported(&apps, &BTreeMap::new()).is_empty());
    }

    #[test]
    fn own_heartbeats_and_id_collisions_are_told_apart() {
        let mut table = NodeTable::new(1, 11, Duration::from_secs(5));
        let now = Instant::now();
        assert_eq!(table.heartbeat(1, 11, none(), now), Heard::Own);
        assert_eq!(table.heartbeat(1, 12, none(), now), Heard::Collision);
        assert!(table.is_empty(), "neither is another node");
    }
}
