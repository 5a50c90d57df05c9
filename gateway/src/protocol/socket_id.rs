//! Socket ids: small integers inside, `\d+\.\d+` on the wire, unique across the cluster.

use std::fmt;

/// How many shards one node may have; the shard index is the low digits of the first part.
pub const MAX_SHARDS: u32 = 1000;

/// A connection's id: which node and shard accepted it, and its number there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SocketId {
    pub node: u32,
    pub shard: u32,
    pub local: u64,
}

impl SocketId {
    /// Parses the wire form `<node * 1000 + shard>.<local>`.
    pub fn parse(text: &str) -> Option<SocketId> {
        let (head, tail) = text.split_once('.')?;
        if head.is_empty() || tail.is_empty() {
            return None;
        }
        if !head.bytes().chain(tail.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let head: u64 = head.parse().ok()?;
        let local: u64 = tail.parse().ok()?;
        let node = u32::try_from(head / u64::from(MAX_SHARDS)).ok()?;
        let shard = (head % u64::from(MAX_SHARDS)) as u32;
        Some(SocketId { node, shard, local })
    }
}

impl fmt::Display for SocketId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let head = u64::from(self.node) * u64::from(MAX_SHARDS) + u64::from(self.shard);
        write!(f, "{head}.{}", self.local)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let id = SocketId {
            node: 4821,
            shard: 3,
            local: 77,
        };
        assert_eq!(id.to_string(), "4821003.77");
        assert_eq!(SocketId::parse("4821003.77"), Some(id));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            ".",
            "1.",
            ".1",
            "1.2.3",
            "a.1",
            "1.-2",
            "1 .2",
            "99999999999999999999.1",
        ] {
            assert_eq!(SocketId::parse(bad), None, "{bad}");
        }
    }
}
