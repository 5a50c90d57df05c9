//! Who a socket says it is: a presence subscription's `channel_data` and a sign-in's `user_data`,
//! both signed by the app's server, checked here against the limits the gateway keeps.

use serde_json::{Map, Value};

/// Longest user id, as Pusher documents it.
pub const MAX_USER_ID_LEN: usize = 128;
/// Largest `user_info`, serialized, as Pusher documents it.
pub const MAX_USER_INFO_BYTES: usize = 1024;
/// Most user ids one watchlist holds; the rest are dropped with a 4302.
pub const MAX_WATCHLIST: usize = 100;

/// A presence channel member as its `channel_data` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Member {
    pub user_id: String,
    /// What every other member sees about this one (`null` when the app gave none).
    pub user_info: Value,
}

/// A signed-in user as its `user_data` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct User {
    pub id: String,
    pub user_info: Value,
    /// The users whose online status this one follows, at most `MAX_WATCHLIST`.
    pub watchlist: Vec<String>,
    /// Whether the watchlist was longer and has been cut to `MAX_WATCHLIST`.
    pub watchlist_truncated: bool,
}

/// Why `channel_data` or `user_data` is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemberError {
    #[error("{0} is not a JSON object")]
    NotAnObject(&'static str),
    #[error("{0} is missing or not a non-empty string")]
    NoId(&'static str),
    #[error("user id is longer than {MAX_USER_ID_LEN} characters")]
    IdTooLong,
    #[error("user_info is larger than {MAX_USER_INFO_BYTES} bytes")]
    InfoTooLarge,
    #[error("watchlist must be an array of user id strings")]
    BadWatchlist,
}

fn object(text: &str, what: &'static str) -> Result<Map<String, Value>, MemberError> {
    match serde_json::from_str(text) {
        Ok(Value::Object(map)) => Ok(map),
        _ => Err(MemberError::NotAnObject(what)),
    }
}

/// A user id: a non-empty string, or a number (Laravel sends integer ids) in its JSON form.
fn user_id(value: Option<Value>, field: &'static str) -> Result<String, MemberError> {
    let id = match value {
        Some(Value::String(id)) if !id.is_empty() => id,
        Some(Value::Number(n)) => n.to_string(),
        _ => return Err(MemberError::NoId(field)),
    };
    if id.chars().count() > MAX_USER_ID_LEN {
        return Err(MemberError::IdTooLong);
    }
    Ok(id)
}

fn user_info(value: Option<Value>) -> Result<Value, MemberError> {
    let info = value.unwrap_or(Value::Null);
    if info.to_string().len() > MAX_USER_INFO_BYTES {
        return Err(MemberError::InfoTooLarge);
    }
    Ok(info)
}

/// Parses a presence subscription's `channel_data`: `{"user_id": ..., "user_info": ...}`.
pub fn parse_channel_data(text: &str) -> Result<Member, MemberError> {
    let mut data = object(text, "channel_data")?;
    Ok(Member {
        user_id: user_id(data.remove("user_id"), "user_id")?,
        user_info: user_info(data.remove("user_info"))?,
    })
}

/// Parses a sign-in's `user_data`: `{"id": ..., "user_info"?: ..., "watchlist"?: [...]}`.
pub fn parse_user_data(text: &str) -> Result<User, MemberError> {
    let mut data = object(text, "user_data")?;
    let id = user_id(data.remove("id"), "id")?;
    let user_info = user_info(data.remove("user_info"))?;
    let mut watchlist = match data.remove("watchlist") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(ids)) => ids
            .into_iter()
            .map(|id| match id {
                Value::String(id) if !id.is_empty() => Ok(id),
                _ => Err(MemberError::BadWatchlist),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(MemberError::BadWatchlist),
    };
    let watchlist_truncated = watchlist.len() > MAX_WATCHLIST;
    watchlist.truncate(MAX_WATCHLIST);
    Ok(User {
        id,
        user_info,
        watchlist,
        watchlist_truncated,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn channel_data_gives_the_member() {
        let member = parse_channel_data(r#"{"user_id":"u1","user_info":{"name":"Ann"}}"#).unwrap();
        assert_eq!(member.user_id, "u1");
        assert_eq!(member.user_info, json!({"name": "Ann"}));
        let numeric = parse_channel_data(r#"{"user_id":42}"#).unwrap();
        assert_eq!(
            (numeric.user_id.as_str(), numeric.user_info),
            ("42", Value::Null)
        );
    }

    #[test]
    fn channel_data_limits() {
        let fault = |text: &str| parse_channel_data(text).unwrap_err();
        assert_eq!(fault("[]"), MemberError::NotAnObject("channel_data"));
        assert_eq!(fault("{"), MemberError::NotAnObject("channel_data"));
        assert_eq!(fault(r#"{"user_id":""}"#), MemberError::NoId("user_id"));
        assert_eq!(fault(r#"{"user_id":true}"#), MemberError::NoId("user_id"));
        let long = json!({"user_id": "x".repeat(129)}).to_string();
        assert_eq!(fault(&long), MemberError::IdTooLong);
        let just_fits = json!({"user_id": "é".repeat(128)}).to_string();
        assert!(
            parse_channel_data(&just_fits).is_ok(),
            "characters, not bytes"
        );
        let big = json!({"user_id": "u", "user_info": {"bio": "x".repeat(1024)}}).to_string();
        assert_eq!(fault(&big), MemberError::InfoTooLarge);
    }

    #[test]
    fn user_data_with_a_watchlist() {
        let user = parse_user_data(r#"{"id":"u1","watchlist":["u2","u3"]}"#).unwrap();
        assert_eq!(user.id, "u1");
        assert_eq!(user.watchlist, vec!["u2", "u3"]);
        assert!(!user.watchlist_truncated);
        let ids: Vec<String> = (0..150).map(|i| format!("w{i}")).collect();
        let long = json!({"id": "u1", "watchlist": ids}).to_string();
        let user = parse_user_data(&long).unwrap();
        assert_eq!(user.watchlist.len(), MAX_WATCHLIST);
        assert_eq!(user.watchlist[99], "w99");
        assert!(user.watchlist_truncated);
    }

    #[test]
    fn user_data_faults() {
        let fault = |text: &str| parse_user_data(text).unwrap_err();
        assert_eq!(fault(r#""u1""#), MemberError::NotAnObject("user_data"));
        assert_eq!(fault(r#"{"user_id":"u1"}"#), MemberError::NoId("id"));
        assert_eq!(
            fault(r#"{"id":"u1","watchlist":"u2"}"#),
            MemberError::BadWatchlist
        );
        assert_eq!(
            fault(r#"{"id":"u1","watchlist":[2]}"#),
            MemberError::BadWatchlist
        );
    }
}
