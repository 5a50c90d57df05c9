//! Signed-in users on one shard: which sockets are which user, who watches whom, and (as a
//! replica kept like a presence channel's members, see `presence`) who is online node-wide.
//! No IO lives here.

use std::collections::HashMap;

use serde_json::Value;

use super::presence::{LocalChange, Roster, Source, Transition};
use crate::protocol::member::User;

/// A signed-in socket's user.
#[derive(Debug)]
pub struct SignedIn {
    pub user_id: Box<str>,
    /// Used as the member info when the socket joins a presence channel without channel_data.
    pub user_info: Value,
    watchlist: Box<[Box<str>]>,
}

/// A socket tried to sign in a second time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this connection is already signed in")]
pub struct AlreadySignedIn;

/// One app's signed-in users on one shard.
#[derive(Debug, Default)]
pub struct Users {
    /// Users online node-wide.
    pub online: Roster,
    signed_in: HashMap<u64, SignedIn>,
    /// Each user's signed-in sockets on this shard.
    sockets: HashMap<Box<str>, Vec<u64>>,
    /// Each watched user's watchers on this shard.
    watchers: HashMap<Box<str>, Vec<u64>>,
}

fn remove_from(map: &mut HashMap<Box<str>, Vec<u64>>, key: &str, socket: u64) {
    if let Some(list) = map.get_mut(key) {
        list.retain(|s| *s != socket);
        if list.is_empty() {
            map.remove(key);
        }
    }
}

impl Users {
    /// Signs a local socket in. The user comes online on this shard with its first socket.
    pub fn sign_in(
        &mut self,
        socket: u64,
        user: User,
        me: Source,
    ) -> Result<LocalChange, AlreadySignedIn> {
        if self.signed_in.contains_key(&socket) {
            return Err(AlreadySignedIn);
        }
        let user_id: Box<str> = user.id.into();
        let change = self.online.add_local(&user_id, &Value::Null, me);
        self.sockets
            .entry(user_id.clone())
            .or_default()
            .push(socket);
        for watched in &user.watchlist {
            let watchers = self.watchers.entry(watched.as_str().into()).or_default();
            if !watchers.contains(&socket) {
                watchers.push(socket);
            }
        }
        self.signed_in.insert(
            socket,
            SignedIn {
                user_id,
                user_info: user.user_info,
                watchlist: user.watchlist.into_iter().map(Into::into).collect(),
            },
        );
        Ok(change)
    }

    /// Forgets a local socket; returns its user and what its departure did.
    pub fn sign_out(&mut self, socket: u64, me: Source) -> Option<(Box<str>, LocalChange)> {
        let user = self.signed_in.remove(&socket)?;
        remove_from(&mut self.sockets, &user.user_id, socket);
        for watched in user.watchlist.iter() {
            remove_from(&mut self.watchers, watched, socket);
        }
        let change = self.online.remove_local(&user.user_id, me);
        Some((user.user_id, change))
    }

    /// Applies another source's change to who is online.
    pub fn apply(&mut self, user_id: &str, source: Source, joined: bool) -> Transition {
        self.online
            .apply(user_id, source, joined.then_some(&Value::Null))
    }

    pub fn signed_in(&self, socket: u64) -> Option<&SignedIn> {
        self.signed_in.get(&socket)
    }

    /// This shard's signed-in sockets of a user.
    pub fn sockets_of(&self, user_id: &str) -> &[u64] {
        self.sockets.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// This shard's sockets watching a user.
    pub fn watchers_of(&self, user_id: &str) -> &[u64] {
        self.watchers.get(user_id).map_or(&[], Vec::as_slice)
    }

    /// A socket's watchlist split into who is online and who is not.
    pub fn watchlist_status(&self, socket: u64) -> (Vec<&str>, Vec<&str>) {
        let Some(user) = self.signed_in.get(&socket) else {
            return (Vec::new(), Vec::new());
        };
        user.watchlist
            .iter()
            .map(|id| &**id)
            .partition(|id| self.online.contains(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S0: Source = Source { node: 1, shard: 0 };
    const S1: Source = Source { node: 1, shard: 1 };

    fn user(id: &str, watchlist: &[&str]) -> User {
        User {
            id: id.into(),
            user_info: Value::Null,
            watchlist: watchlist.iter().map(|s| s.to_string()).collect(),
            watchlist_truncated: false,
        }
    }

    #[test]
    fn sign_in_tracks_sockets_watchers_and_who_is_online() {
        let mut users = Users::default();
        let first = users.sign_in(1, user("u1", &["u2", "u3"]), S0).unwrap();
        assert_eq!((first.share, first.transition), (true, Transition::Added));
        assert_eq!(users.sign_in(1, user("u1", &[]), S0), Err(AlreadySignedIn));
        let second = users.sign_in(2, user("u1", &["u2"]), S0).unwrap();
        assert_eq!(
            (second.share, second.transition),
            (false, Transition::Unchanged)
        );
        assert_eq!(users.sockets_of("u1"), &[1, 2]);
        assert_eq!(users.watchers_of("u2"), &[1, 2]);
        assert_eq!(users.watchers_of("u3"), &[1]);
        assert_eq!(users.apply("u2", S1, true), Transition::Added);
        assert_eq!(users.watchlist_status(1), (vec!["u2"], vec!["u3"]));
        assert_eq!(users.signed_in(2).map(|s| &*s.user_id), Some("u1"));

        let (id, change) = users.sign_out(1, S0).unwrap();
        assert_eq!((&*id, change.share), ("u1", false));
        assert_eq!(users.watchers_of("u3"), &[] as &[u64]);
        let (_, change) = users.sign_out(2, S0).unwrap();
        assert_eq!(
            (change.share, change.transition),
            (true, Transition::Removed)
        );
        assert_eq!(users.sockets_of("u1"), &[] as &[u64]);
        assert!(users.sign_out(2, S0).is_none());
        assert_eq!(users.apply("u2", S1, false), Transition::Removed);
    }
}
