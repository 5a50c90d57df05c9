//! Webhook events: their kinds (as apps name them in `webhook_events`) and their JSON.

use serde::Deserialize;
use serde_json::{json, Value};

/// A kind of webhook event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WebhookKind {
    ChannelOccupied,
    ChannelVacated,
    MemberAdded,
    MemberRemoved,
    ClientEvent,
    CacheMiss,
    SubscriptionCount,
}

/// One webhook event, as the app's server receives it in `events`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WebhookEvent {
    /// A channel's first subscriber anywhere on the node.
    ChannelOccupied {
        channel: Box<str>,
    },
    /// A channel's last subscriber on the node left.
    ChannelVacated {
        channel: Box<str>,
    },
    MemberAdded {
        channel: Box<str>,
        user_id: Box<str>,
    },
    MemberRemoved {
        channel: Box<str>,
        user_id: Box<str>,
    },
    ClientEvent {
        channel: Box<str>,
        event: Box<str>,
        /// The event's data as a string (a client's JSON value serialized).
        data: String,
        socket_id: String,
        /// The sender's user id, on presence channels.
        user_id: Option<Box<str>>,
    },
    /// A subscriber of a cache channel found nothing cached.
    CacheMiss {
        channel: Box<str>,
    },
    SubscriptionCount {
        channel: Box<str>,
        count: u64,
    },
}

impl WebhookEvent {
    /// Whether the event is held back for a while in case what it reports is undone at once (a
    /// page reload): vacated channels and removed members.
    pub fn is_held(&self) -> bool {
        matches!(
            self,
            WebhookEvent::ChannelVacated { .. } | WebhookEvent::MemberRemoved { .. }
        )
    }

    /// Whether `self` undoes `held` (a channel occupied again, a member back again).
    pub fn undoes(&self, held: &WebhookEvent) -> bool {
        match (self, held) {
            (
                WebhookEvent::ChannelOccupied { channel },
                WebhookEvent::ChannelVacated { channel: held },
            ) => channel == held,
            (
                WebhookEvent::MemberAdded { channel, user_id },
                WebhookEvent::MemberRemoved {
                    channel: held,
                    user_id: held_user,
                },
            ) => channel == held && user_id == held_user,
            _ => false,
        }
    }

    pub fn kind(&self) -> WebhookKind {
        match self {
            WebhookEvent::ChannelOccupied { .. } => WebhookKind::ChannelOccupied,
            WebhookEvent::ChannelVacated { .. } => WebhookKind::ChannelVacated,
            WebhookEvent::MemberAdded { .. } => WebhookKind::MemberAdded,
            WebhookEvent::MemberRemoved { .. } => WebhookKind::MemberRemoved,
            WebhookEvent::ClientEvent { .. } => WebhookKind::ClientEvent,
            WebhookEvent::CacheMiss { .. } => WebhookKind::CacheMiss,
            WebhookEvent::SubscriptionCount { .. } => WebhookKind::SubscriptionCount,
        }
    }

    /// The channel it is about.
    pub fn channel(&self) -> &str {
        match self {
            WebhookEvent::ChannelOccupied { channel }
            | WebhookEvent::ChannelVacated { channel }
            | WebhookEvent::MemberAdded { channel, .. }
            | WebhookEvent::MemberRemoved { channel, .. }
            | WebhookEvent::ClientEvent { channel, .. }
            | WebhookEvent::CacheMiss { channel }
            | WebhookEvent::SubscriptionCount { channel, .. } => channel,
        }
    }

    /// The event in the shape Pusher documents.
    pub fn to_json(&self) -> Value {
        match self {
            WebhookEvent::ChannelOccupied { channel } => {
                json!({"name": "channel_occupied", "channel": channel})
            }
            WebhookEvent::ChannelVacated { channel } => {
                json!({"name": "channel_vacated", "channel": channel})
            }
            WebhookEvent::MemberAdded { channel, user_id } => {
                json!({"name": "member_added", "channel": channel, "user_id": user_id})
            }
            WebhookEvent::MemberRemoved { channel, user_id } => {
                json!({"name": "member_removed", "channel": channel, "user_id": user_id})
            }
            WebhookEvent::ClientEvent {
                channel,
                event,
                data,
                socket_id,
                user_id,
            } => {
                let mut value = json!({
                    "name": "client_event",
                    "channel": channel,
                    "event": event,
                    "data": data,
                    "socket_id": socket_id,
                });
                if let Some(user_id) = user_id {
                    value["user_id"] = json!(user_id);
                }
                value
            }
            WebhookEvent::CacheMiss { channel } => {
                json!({"name": "cache_miss", "channel": channel})
            }
            WebhookEvent::SubscriptionCount { channel, count } => {
                json!({"name": "subscription_count", "channel": channel, "subscription_count": count})
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_follow_the_pusher_documentation() {
        let occupied = WebhookEvent::ChannelOccupied {
            channel: "a".into(),
        };
        assert_eq!(
            occupied.to_json(),
            json!({"name": "channel_occupied", "channel": "a"})
        );
        let event = WebhookEvent::ClientEvent {
            channel: "presence-a".into(),
            event: "client-x".into(),
            data: "{\"n\":1}".into(),
            socket_id: "1.2".into(),
            user_id: Some("u1".into()),
        };
        assert_eq!(
            event.to_json(),
            json!({"name": "client_event", "channel": "presence-a", "event": "client-x",
                   "data": "{\"n\":1}", "socket_id": "1.2", "user_id": "u1"})
        );
        let count = WebhookEvent::SubscriptionCount {
            channel: "a".into(),
            count: 3,
        };
        assert_eq!(
            count.to_json(),
            json!({"name": "subscription_count", "channel": "a", "subscription_count": 3})
        );
    }

    #[test]
    fn returns_undo_held_departures() {
        let vacated = WebhookEvent::ChannelVacated {
            channel: "a".into(),
        };
        let removed = WebhookEvent::MemberRemoved {
            channel: "presence-a".into(),
            user_id: "u1".into(),
        };
        assert!(vacated.is_held() && removed.is_held());
        let occupied = |channel: &str| WebhookEvent::ChannelOccupied {
            channel: channel.into(),
        };
        let added = |user_id: &str| WebhookEvent::MemberAdded {
            channel: "presence-a".into(),
            user_id: user_id.into(),
        };
        assert!(occupied("a").undoes(&vacated));
        assert!(!occupied("b").undoes(&vacated));
        assert!(added("u1").undoes(&removed));
        assert!(!added("u2").undoes(&removed));
        assert!(!occupied("a").undoes(&removed));
    }
}
