//! Channel kinds and name rules.

/// Longest channel name accepted, as Pusher documents it.
pub const MAX_CHANNEL_NAME_LEN: usize = 164;

/// The channel through which the HTTP API reaches one signed-in user: `#server-to-user-{id}`.
/// Outside the name rules on purpose (`#` is reserved), so no client can make one up.
pub const SERVER_TO_USER_PREFIX: &str = "#server-to-user-";

/// What a channel name says about the channel, decided by its prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    PrivateEncryptedCache,
    PrivateEncrypted,
    PrivateCache,
    PresenceCache,
    Private,
    Presence,
    Cache,
    Public,
}

/// Prefixes in the order they must be tried: longer ones that share a start come first.
const PREFIXES: [(&str, ChannelKind); 7] = [
    (
        "private-encrypted-cache-",
        ChannelKind::PrivateEncryptedCache,
    ),
    ("private-encrypted-", ChannelKind::PrivateEncrypted),
    ("private-cache-", ChannelKind::PrivateCache),
    ("presence-cache-", ChannelKind::PresenceCache),
    ("private-", ChannelKind::Private),
    ("presence-", ChannelKind::Presence),
    ("cache-", ChannelKind::Cache),
];

impl ChannelKind {
    /// Classifies a channel name by its prefix.
    pub fn of(name: &str) -> ChannelKind {
        PREFIXES
            .iter()
            .find(|(prefix, _)| name.starts_with(prefix))
            .map_or(ChannelKind::Public, |&(_, kind)| kind)
    }

    /// Whether subscribing needs a signature from the app's server.
    pub fn needs_auth(self) -> bool {
        !matches!(self, ChannelKind::Cache | ChannelKind::Public)
    }

    /// Whether the channel keeps its last event for new subscribers.
    pub fn is_cache(self) -> bool {
        matches!(
            self,
            ChannelKind::PrivateEncryptedCache
                | ChannelKind::PrivateCache
                | ChannelKind::PresenceCache
                | ChannelKind::Cache
        )
    }

    /// Whether the channel tracks members (and its signature covers channel_data).
    pub fn is_presence(self) -> bool {
        matches!(self, ChannelKind::Presence | ChannelKind::PresenceCache)
    }

    /// Whether clients may send `client-` events on it: private and presence channels, but
    /// not encrypted ones, whose payloads the server must never see in the clear.
    pub fn allows_client_events(self) -> bool {
        matches!(
            self,
            ChannelKind::Private
                | ChannelKind::PrivateCache
                | ChannelKind::Presence
                | ChannelKind::PresenceCache
        )
    }
}

/// Why a channel name is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChannelNameError {
    #[error("channel name is empty")]
    Empty,
    #[error("channel name is longer than {MAX_CHANNEL_NAME_LEN} characters")]
    TooLong,
    #[error("channel name has a character outside A-Z a-z 0-9 _ - = @ , . ;")]
    BadCharacter,
}

/// Checks a channel name a client may subscribe to or an API call may publish on.
pub fn validate_name(name: &str) -> Result<(), ChannelNameError> {
    if name.is_empty() {
        return Err(ChannelNameError::Empty);
    }
    if name.len() > MAX_CHANNEL_NAME_LEN {
        return Err(ChannelNameError::TooLong);
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"_-=@,.;".contains(&b);
    if name.bytes().all(allowed) {
        Ok(())
    } else {
        Err(ChannelNameError::BadCharacter)
    }
}

/// The channel that reaches a signed-in user's sockets.
pub fn server_to_user_channel(user_id: &str) -> String {
    format!("{SERVER_TO_USER_PREFIX}{user_id}")
}

/// The user a `#server-to-user-{id}` channel reaches, if the name is one. The id is counted in
/// characters, as a signed-in user's is (`member`), so every user has its channel.
pub fn server_to_user(name: &str) -> Option<&str> {
    name.strip_prefix(SERVER_TO_USER_PREFIX)
        .filter(|id| !id.is_empty() && id.chars().count() <= super::member::MAX_USER_ID_LEN)
}

/// Checks a channel name the HTTP API may publish to: a valid name, or a user's channel.
pub fn validate_publish_name(name: &str) -> Result<(), ChannelNameError> {
    if server_to_user(name).is_some() {
        return Ok(());
    }
    validate_name(name)
}

#[cfg(test)]
mod tests {
    use super::super::member::MAX_USER_ID_LEN;
    use super::*;

    #[test]
    fn every_prefix_classifies_in_order() {
        let cases = [
            (
                "private-encrypted-cache-x",
                ChannelKind::PrivateEncryptedCache,
            ),
            ("private-encrypted-x", ChannelKind::PrivateEncrypted),
            ("private-cache-x", ChannelKind::PrivateCache),
            ("presence-cache-x", ChannelKind::PresenceCache),
            ("private-x", ChannelKind::Private),
            ("presence-x", ChannelKind::Presence),
            ("cache-x", ChannelKind::Cache),
            ("x", ChannelKind::Public),
            ("my-private-x", ChannelKind::Public),
            ("cacheless", ChannelKind::Public),
            ("private-encrypted", ChannelKind::Private),
        ];
        for (name, kind) in cases {
            assert_eq!(ChannelKind::of(name), kind, "{name}");
        }
    }

    #[test]
    fn kind_properties() {
        assert!(ChannelKind::Private.needs_auth());
        assert!(ChannelKind::PresenceCache.needs_auth());
        assert!(!ChannelKind::Cache.needs_auth());
        assert!(!ChannelKind::Public.needs_auth());
        assert!(ChannelKind::PrivateEncryptedCache.is_cache());
        assert!(!ChannelKind::PrivateEncrypted.is_cache());
        assert!(ChannelKind::PresenceCache.is_presence());
        assert!(!ChannelKind::Private.is_presence());
        assert!(!ChannelKind::Public.allows_client_events());
        assert!(!ChannelKind::PrivateEncrypted.allows_client_events());
        assert!(ChannelKind::PresenceCache.allows_client_events());
    }

    #[test]
    fn name_rules() {
        assert_eq!(validate_name("a-Z_0=@,.;"), Ok(()));
        assert_eq!(validate_name(""), Err(ChannelNameError::Empty));
        assert_eq!(validate_name("a b"), Err(ChannelNameError::BadCharacter));
        assert_eq!(
            validate_name("#server-to-user-1"),
            Err(ChannelNameError::BadCharacter)
        );
        assert_eq!(validate_name("é"), Err(ChannelNameError::BadCharacter));
        assert_eq!(validate_name(&"a".repeat(164)), Ok(()));
        assert_eq!(
            validate_name(&"a".repeat(165)),
            Err(ChannelNameError::TooLong)
        );
    }

    #[test]
    fn server_to_user_channels_are_for_the_api_only() {
        assert_eq!(server_to_user("#server-to-user-u1"), Some("u1"));
        assert_eq!(server_to_user_channel("u1"), "#server-to-user-u1");
        assert_eq!(server_to_user("#server-to-user-"), None);
        assert_eq!(server_to_user("server-to-user-u1"), None);
        let long = format!("#server-to-user-{}", "u".repeat(129));
        assert_eq!(server_to_user(&long), None);
        // Ids are counted in characters, as a user's own id is: any id a user may sign in with
        // has its channel.
        let wide = "é".repeat(MAX_USER_ID_LEN);
        let channel = server_to_user_channel(&wide);
        assert_eq!(server_to_user(&channel), Some(wide.as_str()));
        assert_eq!(validate_publish_name(&channel), Ok(()));
        let too_wide = server_to_user_channel(&"é".repeat(MAX_USER_ID_LEN + 1));
        assert_eq!(server_to_user(&too_wide), None);
        assert_eq!(validate_publish_name("#server-to-user-a b"), Ok(()));
        assert_eq!(validate_publish_name("news"), Ok(()));
        assert_eq!(
            validate_publish_name("#other"),
            Err(ChannelNameError::BadCharacter)
        );
    }
}
