//! The other nodes of the cluster as this node knows them: who sent a heartbeat and when. A node
//! silent for longer than the timeout is dropped, and with it its share of every answer. No IO
//! lives here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

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

/// Other nodes, by id.
#[derive(Debug)]
pub struct NodeTable {
    own: u32,
    own_nonce: u64,
    timeout: Duration,
    /// When each other node was last heard from.
    peers: HashMap<u32, Instant>,
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

    /// Records a heartbeat heard at `now`.
    pub fn heartbeat(&mut self, node: u32, nonce: u64, now: Instant) -> Heard {
        if node == self.own {
            return if nonce == self.own_nonce {
                Heard::Own
            } else {
                Heard::Collision
            };
        }
        match self.peers.insert(node, now) {
            None => Heard::Joined,
            Some(_) => Heard::Alive,
        }
    }

    /// Drops the nodes not heard from within the timeout; returns them.
    pub fn expire(&mut self, now: Instant) -> Vec<u32> {
        let timeout = self.timeout;
        let mut gone = Vec::new();
        self.peers.retain(|&node, &mut last_seen| {
            let alive = now.saturating_duration_since(last_seen) <= timeout;
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
            .filter(|(_, &last_seen)| now.saturating_duration_since(last_seen) <= within)
            .map(|(&node, _)| node)
            .collect();
        nodes.sort_unstable();
        nodes
    }

    /// Other nodes known.
    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_join_stay_alive_and_expire_after_the_timeout() {
        let start = Instant::now();
        let second = Duration::from_secs(1);
        let mut table = NodeTable::new(1, 11, 5 * second);
        assert_eq!(table.heartbeat(2, 22, start), Heard::Joined);
        assert_eq!(table.heartbeat(3, 33, start), Heard::Joined);
        assert_eq!(table.heartbeat(2, 22, start + 4 * second), Heard::Alive);
        assert_eq!(table.len(), 2);
        assert_eq!(table.expire(start + 5 * second), Vec::<u32>::new());
        assert_eq!(table.expire(start + 6 * second), vec![3]);
        assert_eq!(table.len(), 1);
        assert_eq!(table.expire(start + 10 * second), vec![2]);
        assert!(table.is_empty());
        assert_eq!(
            table.heartbeat(3, 34, start + 10 * second),
            Heard::Joined,
            "a node that comes back joins again"
        );
    }

    #[test]
    fn only_recently_heard_nodes_are_waited_for() {
        let start = Instant::now();
        let mut table = NodeTable::new(1, 11, Duration::from_secs(5));
        table.heartbeat(2, 22, start);
        table.heartbeat(3, 33, start + Duration::from_secs(3));
        let within = Duration::from_millis(2500);
        assert_eq!(
            table.recent(start + Duration::from_secs(3), within),
            vec![3]
        );
        assert_eq!(table.recent(start, within), vec![2, 3]);
    }

    #[test]
    fn own_heartbeats_and_id_collisions_are_told_apart() {
        let mut table = NodeTable::new(1, 11, Duration::from_secs(5));
        let now = Instant::now();
        assert_eq!(table.heartbeat(1, 11, now), Heard::Own);
        assert_eq!(table.heartbeat(1, 12, now), Heard::Collision);
        assert!(table.is_empty(), "neither is another node");
    }
}
